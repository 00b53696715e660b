"""HEAD/GET/POST/PUT /<sha>: parse, call the store, map its answer to HTTP.

A plain ASGI endpoint rather than a framework route: this is the hot path,
and it needs nothing from routing but the one path segment.
"""

from __future__ import annotations

import logging
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

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
            response = await self.write(sha, Request(scope, receive))
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
