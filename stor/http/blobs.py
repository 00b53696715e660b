"""HEAD/GET/POST/PUT /<sha>: parse the request, call the store, say what happened in HTTP."""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from urllib.parse import unquote

from starlette.datastructures import Headers

from stor.config import UploadSettings
from stor.digest import Digest, InvalidDigest
from stor.http import reply as replies
from stor.http.auth import Authenticator, refusal
from stor.http.conditional import CONDITIONAL_HEADERS, Full, NotModified, Partial, Refused, decide
from stor.http.reply import Reply
from stor.http.representation import (
    DEFAULT_TYPE,
    ascii_filename,
    full_headers,
    representation_headers,
    validator_headers,
)
from stor.http.request import BodyTimeout, ClientDisconnect, Request
from stor.http.text import is_decimal, shown
from stor.metrics import Metrics
from stor.store.base import (
    NO_BYTES,
    BlobStore,
    DigestMismatch,
    Missing,
    NoSpace,
    NoWritableStorage,
    OpenBlob,
    Stored,
    TooLarge,
    unavailable_reason,
)
from stor.store.metadata import BlobMeta
from stor.store.verify import CorruptBlob

log = logging.getLogger("stor.http")

# Uploads up to this size, sent without waiting for 100 Continue, are read whole and
# stored in one step (store.put: one thread hop) instead of staged chunk by chunk.
SMALL_UPLOAD_BYTES = 1 << 20

# Media types as RFC 9110 spells them: type/subtype, then optional parameters.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[ -~]*)?")
# Not a statement about the blob: what curl --data-binary sends unless told
# otherwise, and the type every blob without one is served as anyway (so no
# sidecar, and its two fsyncs per mirror, is written for it).
_NOT_A_TYPE = frozenset({"application/x-www-form-urlencoded", DEFAULT_TYPE})


def upload_meta(headers: Headers) -> BlobMeta:
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
        filename = _filename(filename)
    return BlobMeta(content_type, filename)


# Not in a file name: controls (C0, DEL, C1), the invisible format characters (bidi overrides,
# isolates and marks, which make "\u202efdp.exe" read as "exe.pdf"; zero-width ones), line and
# paragraph separators.
_NOT_IN_A_NAME = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _filename(header: str) -> str:
    """X-Filename as it is kept and given back: non-ASCII percent-encoded; ValueError with a one-line reason."""
    # A header value arrives as latin-1 text (HTTP's own encoding, what Starlette decodes with):
    # a name sent as raw UTF-8 is those bytes again, decoded as UTF-8.
    try:
        text = header.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ValueError(f"Bad X-Filename '{shown(header)}': not UTF-8 (percent-encode the name)") from None
    decoded = _decoded(text)
    if (
        decoded is None
        or not decoded
        or len(decoded.encode()) > 255
        or "/" in decoded
        or any(unicodedata.category(c) in _NOT_IN_A_NAME for c in decoded)
    ):
        raise ValueError(
            f"Bad X-Filename '{shown(text)}': a file name without '/', control or invisible format characters"
        )
    # Kept in the spelling the README documents, ASCII, so that it is a valid header again on GET:
    # a name sent as raw UTF-8 and the same name percent-encoded are one name, in the sidecar too.
    return ascii_filename(text)


def _decoded(text: str) -> str | None:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        return None


def _close_if_body_unread(request: Request, reply: Reply) -> Reply:
    """After an answer given before the body was read (duplicate, 401, 412, 413, 507).

    A client that sent Expect: 100-continue sends nothing more, so the
    connection stays usable. Any other client is sending (or about to send) a
    body nobody will read: the connection is closed after the answer, and the
    answer says so, so that no client reuses it. (Draining instead would wait
    for a body the client may hold back until it has the answer.)
    """
    headers = request.headers
    if request.body.complete or request.expects_continue:
        return reply
    if headers.get("content-length", "0") != "0" or "chunked" in headers.get("transfer-encoding", ""):
        return reply.with_header("connection", "close")
    return reply


class BlobEndpoint:
    """The handlers of the blob route: read (GET, HEAD) and write (POST, PUT)."""

    def __init__(self, store: BlobStore, auth: Authenticator, metrics: Metrics, uploads: UploadSettings) -> None:
        self.store = store
        self.auth = auth
        self.metrics = metrics
        self.max_blob_bytes = uploads.max_blob_bytes

    async def read(self, request: Request) -> Reply:
        self.metrics.incr("request.get.count")
        if self.auth.read_required:
            refused = await refusal(self.auth, request, need_write=False)
            if refused is not None:
                return refused
        sha = request.path[1:]
        try:
            digest = Digest.parse(sha)
        except InvalidDigest:
            self.metrics.incr("error.get.malformed_sha.count")
            # The original's wording differs between GET ("SHA256") and POST ("sha256"); probes may match either.
            return replies.text(404, f"Given hash '{shown(sha)}' isn't SHA256")
        try:
            opened = await self.store.open(digest, NO_BYTES if request.method == "HEAD" else None)
        except CorruptBlob as e:  # a verified read found no good copy (each bad one is queued for repair)
            log.error("GET %s: %s", digest, e)
            return replies.text(500, "Every stored copy of the blob that was read is corrupt")
        except Exception as e:
            reason = unavailable_reason(e)
            if reason is not None:
                log.error("GET %s: %s: %s", digest, reason, e)
                return replies.unavailable(reason)
            log.exception("GET %s failed", digest)
            return replies.text(500, "Internal error reading the blob")
        if isinstance(opened, Missing):
            return replies.text(404, f"File '{sha}' not found")
        if CONDITIONAL_HEADERS.isdisjoint(request.headers.keys()):
            return _whole(opened)
        return _conditional(request, opened)

    async def write(self, request: Request) -> Reply:
        return _close_if_body_unread(request, await self._write(request))

    async def _write(self, request: Request) -> Reply:
        self.metrics.incr("request.post.count")
        sha = request.path[1:]
        try:
            digest = Digest.parse(sha)
        except InvalidDigest:
            self.metrics.incr("error.post.malformed_sha.count")
            return replies.text(412, f"Given hash '{shown(sha)}' isn't sha256")
        refused = await refusal(self.auth, request, need_write=True)
        if refused is not None:
            return refused
        try:
            meta = upload_meta(request.headers)
        except ValueError as e:
            return replies.text(400, str(e))
        length_header = request.headers.get("content-length")
        length: int | None = None
        if length_header is not None:
            if not is_decimal(length_header):
                return replies.text(400, f"Bad Content-Length '{shown(length_header)}'")
            length = int(length_header)

        try:
            stored = await self._store(request, digest, length, meta)
        except DigestMismatch as e:
            return replies.text(412, str(e))
        except NoSpace as e:
            log.warning("POST %s: %s", digest, e)
            return replies.text(507, str(e) if isinstance(e, NoWritableStorage) else "Not enough space on storages")
        except TooLarge as e:
            return replies.text(413, str(e))
        except ClientDisconnect:
            log.info("POST %s: client disconnected mid-upload; nothing kept", digest)
            return replies.text(400, "Client disconnected")
        except BodyTimeout as e:
            log.info("POST %s: %s; nothing kept", digest, e)
            return replies.body_timed_out(e)
        except Exception as e:
            reason = unavailable_reason(e)
            if reason is not None:
                log.error("POST %s: %s: %s", digest, reason, e)
                return replies.unavailable(reason)
            log.exception("POST %s failed", digest)
            return replies.text(500, "Internal error storing the blob")
        return replies.json_reply(201 if stored.created else 200, list(stored.locations))

    async def _store(self, request: Request, digest: Digest, length: int | None, meta: BlobMeta) -> Stored:
        body = request.body
        limit = self.max_blob_bytes
        if not request.expects_continue and length is not None and length <= min(SMALL_UPLOAD_BYTES, limit or length):
            # The client sends the body whatever the answer: reading a small one first wastes
            # nothing (a duplicate's few bytes are read, which keeps the connection usable).
            data = bytearray()
            async for chunk in body.chunks():
                data += chunk
            return await self.store.put(digest, bytes(data), meta)
        upload = await self.store.begin(digest, length, meta)
        if isinstance(upload, Stored):
            return upload
        try:
            async for chunk in body.chunks():
                await upload.write(chunk)
        except BaseException:
            await upload.abort()
            raise
        return await upload.commit()


def _whole(opened: OpenBlob) -> Reply:
    """200 with the whole blob (headers only, for HEAD): what a read without conditional headers answers."""
    return Reply(200, full_headers(opened.info), opened.body, opened.on_delivered, _closer(opened))


def _closer(opened: OpenBlob) -> Callable[[], None] | None:
    """What releases the opened blob once its answer is over; None when nothing needs to (no call then)."""
    return opened.close if opened.holds_resources else None


def _conditional(request: Request, opened: OpenBlob) -> Reply:
    info = opened.info
    validators = validator_headers(info)
    answer = decide(request.headers, info.size, validators[0][1], validators[1][1], info.mtime)
    if isinstance(answer, Full):
        return _whole(opened)
    if isinstance(answer, Partial):
        headers = validators + representation_headers(info.meta)
        headers.append(("content-range", f"bytes {answer.start}-{answer.end}/{info.size}"))
        headers.append(("content-length", str(answer.length)))
        if request.method != "HEAD":  # a HEAD opened no bytes
            opened.narrow(answer.start, answer.length)
        return Reply(206, headers, opened.body, opened.on_delivered, _closer(opened))
    opened.close()
    if isinstance(answer, Refused):
        if answer.status == 416:
            validators.append(("content-range", f"bytes */{info.size}"))
        return replies.text(answer.status, answer.reason, validators)
    assert isinstance(answer, NotModified)
    return Reply(304, validators + representation_headers(info.meta))
