"""HEAD/GET/POST/PUT /<sha>: parse, call the store, map its answer to HTTP.

A plain ASGI endpoint rather than a framework route: this is the hot path,
and it needs nothing from routing but the one path segment.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from urllib.parse import unquote

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from stor.digest import Digest, InvalidDigest
from stor.http.auth import Authenticator, refusal
from stor.http.bodies import AsgiBody, UploadBody
from stor.http.conditional import CONDITIONAL_HEADERS, decide
from stor.http.headers import HeaderLookup
from stor.http.responses import (
    DEFAULT_TYPE,
    BlobResponse,
    TextResponse,
    blob_response,
    validator_headers,
    whole_blob_response,
)
from stor.http.text import is_decimal, shown
from stor.metrics import Metrics
from stor.store.base import DigestMismatch, NoSpace, TooLarge
from stor.store.local import LocalStore
from stor.store.metadata import BlobMeta

log = logging.getLogger("stor.http")

READ_METHODS = frozenset({"GET", "HEAD"})
WRITE_METHODS = frozenset({"POST", "PUT"})


# Media types as RFC 9110 spells them: type/subtype, then optional parameters.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[ -~]*)?")
# Not a statement about the blob: what curl --data-binary sends unless told
# otherwise, and the type every blob without one is served as anyway (so no
# sidecar, and its two fsyncs per mirror, is written for it).
_NOT_A_TYPE = frozenset({"application/x-www-form-urlencoded", DEFAULT_TYPE})


def upload_meta(headers: HeaderLookup) -> BlobMeta:
    """The Content-Type and X-Filename an upload declares; ValueError with a one-line reason if malformed."""
    content_type = headers.get("content-type")
    if content_type is not None:
        content_type = content_type.strip()
        if content_type.lower() in _NOT_A_TYPE or not content_type:
            content_type = None
        elif len(content_type) > 200 or not _MEDIA_TYPE.fullmatch(content_type):
            raise ValueError(f"Bad Content-Type '{shown(content_type)}': expected type/subtype")
    filename = headers.get("x-filename")
    if filename is not None:
        decoded = unquote(filename, errors="strict") if _decodes(filename) else None
        if (
            decoded is None
            or not decoded
            or len(decoded.encode()) > 255
            or "/" in decoded
            or any(ord(c) < 32 or ord(c) == 127 for c in decoded)
        ):
            raise ValueError(f"Bad X-Filename '{shown(filename)}': a file name without '/' or control characters")
    return BlobMeta(content_type, filename)


def _decodes(text: str) -> bool:
    try:
        unquote(text, errors="strict")
    except UnicodeDecodeError:
        return False
    return True


def _close_if_body_unread(headers: HeaderLookup, response: Response) -> None:
    """After an answer given before the body was read (duplicate, 401, 412, 413, 507).

    A client that sent Expect: 100-continue sends nothing more, so the
    connection stays usable. Any other client is sending (or about to send) a
    body nobody will read: the connection is closed after the answer, and the
    answer says so, so that no client reuses it. (Draining instead would wait
    for a body the client may hold back until it has the answer.)
    """
    if headers.get("expect", "").lower() == "100-continue":
        return
    if headers.get("content-length", "0") != "0" or "chunked" in headers.get("transfer-encoding", ""):
        response.headers["connection"] = "close"


class BlobEndpoint:
    def __init__(self, store: LocalStore, auth: Authenticator, metrics: Metrics) -> None:
        self.store = store
        self.auth = auth
        self.metrics = metrics
        # Per storage: the original's metric names for a read, and whether any sink records them.
        self._success: dict[str, tuple[tuple[str, str, str], bool]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        sha = scope["path"][1:]
        if method in READ_METHODS:
            response = await self.read(sha, Headers(scope=scope), send_body=method == "GET")
        elif method in WRITE_METHODS:
            response = await self.write(sha, Headers(scope=scope), AsgiBody(receive))
        else:
            response = PlainTextResponse(
                f"Method {method} not allowed", status_code=405, headers={"Allow": "GET, HEAD, POST, PUT"}
            )
        await response(scope, receive, send)

    async def read(self, sha: str, headers: HeaderLookup, send_body: bool) -> Response | BlobResponse | TextResponse:
        """The answer to GET (send_body) or HEAD of /<sha>, under either server interface."""
        started = time.perf_counter()
        metrics = self.metrics
        metrics.incr("request.get.count")
        if self.auth.read_required:
            refused = await refusal(self.auth, headers, need_write=False)
            if refused is not None:
                return refused
        try:
            digest = Digest.parse(sha)
        except InvalidDigest:
            metrics.incr("error.get.malformed_sha.count")
            # The original's wording differs between GET ("SHA256") and POST ("sha256"); probes may match either.
            return TextResponse(f"Given hash '{shown(sha)}' isn't SHA256", 404)
        try:
            blob = await self.store.open(digest, prefetch=send_body)
        except Exception:
            metrics.incr("error.get.500.count")
            log.exception("GET %s failed", digest)
            return PlainTextResponse("Internal error reading the blob", status_code=500)
        if blob is None:
            metrics.incr("error.get.not_found_old.count")
            return TextResponse(f"File '{sha}' not found", 404)

        success = self._success.get(blob.storage)
        if success is None:
            base = f"success.get.ok_old.{blob.storage}"
            names = (f"{base}.count", f"{base}.size", f"{base}.time")
            wanted = any(metrics.wanted(kind, n) for kind, n in zip(("incr", "size", "timing"), names))
            success = self._success[blob.storage] = (names, wanted)
        names, wanted = success
        # When no sink records these (statsd off), no closure is made and no clock read.
        sent = self._reporter(names, blob.size, started) if wanted else None
        if not CONDITIONAL_HEADERS.isdisjoint(headers.keys()):
            validators = validator_headers(blob)
            answer = decide(headers, blob.size, validators["etag"], validators["last-modified"], blob.mtime)
            return blob_response(blob, validators, answer, send_body, sent)
        return whole_blob_response(blob, send_body, sent)

    def _reporter(self, names: tuple[str, str, str], size: int, started: float) -> Callable[[], None]:
        """What reports a read once its answer is handed over (the original's count, size and time)."""
        metrics = self.metrics

        def sent() -> None:
            metrics.incr(names[0])
            metrics.size(names[1], size)
            metrics.timing(names[2], (time.perf_counter() - started) * 1000)

        return sent

    async def write(self, sha: str, headers: HeaderLookup, body: UploadBody) -> Response:
        """The answer to POST or PUT of /<sha>, under either server interface."""
        response = await self._write(sha, headers, body)
        if not body.complete:
            _close_if_body_unread(headers, response)
        return response

    async def _write(self, sha: str, headers: HeaderLookup, body: UploadBody) -> Response:
        metrics = self.metrics
        metrics.incr("request.post.count")
        try:
            digest = Digest.parse(sha)
        except InvalidDigest:
            metrics.incr("error.post.malformed_sha.count")
            return PlainTextResponse(f"Given hash '{shown(sha)}' isn't sha256", status_code=412)
        refused = await refusal(self.auth, headers, need_write=True)
        if refused is not None:
            return refused
        try:
            meta = upload_meta(headers)
        except ValueError as e:
            return PlainTextResponse(str(e), status_code=400)
        length_header = headers.get("content-length")
        length: int | None = None
        if length_header is not None:
            if not is_decimal(length_header):
                return PlainTextResponse(f"Bad Content-Length '{shown(length_header)}'", status_code=400)
            length = int(length_header)

        try:
            on_its_way = headers.get("expect", "").lower() != "100-continue"
            result = await self.store.put(digest, body.chunks(), length, meta, body_on_its_way=on_its_way)
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
