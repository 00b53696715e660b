"""HEAD/GET/POST/PUT /<sha>: parse, call the store, map its answer to HTTP.

A plain ASGI endpoint rather than a framework route: this is the hot path,
and it needs nothing from routing but the one path segment.
"""

from __future__ import annotations

import logging
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

from stor.digest import Digest, InvalidDigest
from stor.http.auth import BasicAuth
from stor.http.responses import BlobResponse
from stor.metrics import Metrics
from stor.store.base import DigestMismatch, NoSpace, TooLarge
from stor.store.local import LocalStore

log = logging.getLogger("stor.http")

READ_METHODS = frozenset({"GET", "HEAD"})
WRITE_METHODS = frozenset({"POST", "PUT"})


def _shown(text: str) -> str:
    # Client text echoed in a reason is cut short: a reason is one line, not a mirror.
    return text if len(text) <= 100 else text[:100] + "..."


# An unread request body up to this size is read and dropped after an early
# answer, so the connection stays usable; a larger one closes the connection.
DRAIN_LIMIT = 1 << 20


class _BodyTracker:
    """The ASGI receive channel, noting whether the request body was read to its end."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.complete = False

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.complete = True
        return message


async def _settle_unread_body(request: Request, body: _BodyTracker, response: Response) -> None:
    """After an answer given before the body was read (duplicate, 401, 412, 413, 507).

    A client that sent Expect: 100-continue sends nothing more; any other
    client is sending the body, so it is either drained (small) or the
    connection is closed after the answer, which the answer says.
    """
    headers = request.headers
    if headers.get("expect", "").lower() == "100-continue":
        return
    length = headers.get("content-length")
    if length == "0" or (length is None and "chunked" not in headers.get("transfer-encoding", "")):
        return
    drained = 0
    if length is not None and length.isdigit() and int(length) <= DRAIN_LIMIT:
        while not body.complete and drained <= DRAIN_LIMIT:
            message = await body()
            drained += len(message.get("body", b""))
    if not body.complete:
        response.headers["connection"] = "close"


class BlobEndpoint:
    def __init__(self, store: LocalStore, auth: BasicAuth, metrics: Metrics) -> None:
        self.store = store
        self.auth = auth
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        sha = scope["path"][1:]
        if method in READ_METHODS:
            response = await self.read(sha, send_body=method == "GET")
        elif method in WRITE_METHODS:
            body = _BodyTracker(receive)
            request = Request(scope, body)
            response = await self.write(sha, request)
            if not body.complete:
                await _settle_unread_body(request, body, response)
        else:
            response = PlainTextResponse(
                f"Method {method} not allowed", status_code=405, headers={"Allow": "GET, HEAD, POST, PUT"}
            )
        await response(scope, receive, send)

    async def read(self, sha: str, send_body: bool) -> Response:
        started = time.perf_counter()
        metrics = self.metrics
        metrics.incr("request.get.count")
        try:
            digest = Digest.parse(sha)
        except InvalidDigest:
            metrics.incr("error.get.malformed_sha.count")
            # The original's wording differs between GET ("SHA256") and POST ("sha256"); probes may match either.
            return PlainTextResponse(f"Given hash '{_shown(sha)}' isn't SHA256", status_code=404)
        try:
            blob = await self.store.open(digest, prefetch=send_body)
        except Exception:
            metrics.incr("error.get.500.count")
            log.exception("GET %s failed", digest)
            return PlainTextResponse("Internal error reading the blob", status_code=500)
        if blob is None:
            metrics.incr("error.get.not_found_old.count")
            return PlainTextResponse(f"File '{sha}' not found", status_code=404)

        name = f"success.get.ok_old.{blob.storage}"
        size = blob.size

        def sent() -> None:
            metrics.incr(f"{name}.count")
            metrics.size(f"{name}.size", size)
            metrics.timing(f"{name}.time", (time.perf_counter() - started) * 1000)

        return BlobResponse(blob, send_body=send_body, on_sent=sent)

    async def write(self, sha: str, request: Request) -> Response:
        metrics = self.metrics
        metrics.incr("request.post.count")
        try:
            digest = Digest.parse(sha)
        except InvalidDigest:
            metrics.incr("error.post.malformed_sha.count")
            return PlainTextResponse(f"Given hash '{_shown(sha)}' isn't sha256", status_code=412)
        if not self.auth.allows(request.headers.get("authorization")):
            return PlainTextResponse(
                "Authentication required!", status_code=401, headers={"WWW-Authenticate": 'Basic realm="stor"'}
            )
        length_header = request.headers.get("content-length")
        length: int | None = None
        if length_header is not None:
            if not length_header.isdigit():
                return PlainTextResponse(f"Bad Content-Length '{_shown(length_header)}'", status_code=400)
            length = int(length_header)

        try:
            result = await self.store.put(digest, request.stream(), length)
        except DigestMismatch as e:
            metrics.incr("error.post.bad_sha.count")
            return PlainTextResponse(str(e), status_code=412)
        except NoSpace as e:
            metrics.incr("error.post.no_space.count")
            log.warning("POST %s: %s", digest, e)
            return PlainTextResponse("Not enough space on storages", status_code=507)
        except TooLarge as e:
            return PlainTextResponse(str(e), status_code=413)
        except ClientDisconnect:
            log.info("POST %s: client disconnected mid-upload; nothing kept", digest)
            return PlainTextResponse("Client disconnected", status_code=400)
        except Exception:
            metrics.incr("error.post.unknown.count")
            log.exception("POST %s failed", digest)
            return PlainTextResponse("Internal error storing the blob", status_code=500)

        if result.created:
            metrics.incr("success.post.write.count")
            return JSONResponse(result.locations, status_code=201)
        metrics.incr("success.post.duplicate.count")
        return JSONResponse(result.locations, status_code=200)
