"""The tus 1.0.0 resumable upload protocol under its base path (default /files/), over stor.resumable.

Core protocol and the extensions creation, creation-with-upload,
creation-defer-length, expiration, checksum (sha1, sha256, md5) and
termination. Metadata: `sha256` (hex) is the blob the upload must be,
`filetype` and `filename` become the blob's Content-Type and file name. A
finished upload's answers carry `Stor-Sha256` and `Content-Location: /<sha>`.
Every request but OPTIONS needs write credentials, as a POST of a blob does.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers

from stor.config import TusSettings
from stor.digest import Digest, InvalidDigest
from stor.http import reply as replies
from stor.http.auth import Authenticator, refusal, user_of
from stor.http.reply import Reply
from stor.http.request import BodyTimeout, ClientDisconnect, Request, close_if_body_unread
from stor.http.text import is_decimal, shown
from stor.http.uploadmeta import media_type, plain_filename
from stor.resumable.record import DONE, OPEN, Locked, UploadRecord, is_upload_id
from stor.resumable.uploads import (
    CHECKSUM_ALGORITHMS,
    BadLength,
    Checksum,
    ChecksumMismatch,
    LengthExceeded,
    OffsetMismatch,
    ResumableUploads,
    TooManyUploads,
    UnknownUpload,
    UploadError,
    UploadFailed,
    UploadGone,
)
from stor.store.base import NoSpace, NoWritableStorage, TooLarge, unavailable_reason
from stor.store.metadata import BlobMeta

if TYPE_CHECKING:
    from stor.events.hook import PreUploadHook

log = logging.getLogger("stor.http")

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination"
OFFSET_STREAM = "application/offset+octet-stream"
MAX_METADATA_BYTES = 4096
_METHOD_OVERRIDES = frozenset({"PATCH", "DELETE", "HEAD"})

_Step = Callable[[Request, Any], Awaitable[Reply]]


class TusEndpoint:
    def __init__(
        self, uploads: ResumableUploads, auth: Authenticator, settings: TusSettings, max_blob_bytes: int | None,
        hook: PreUploadHook | None = None,
    ) -> None:
        self.uploads = uploads
        self.auth = auth
        self.hook = hook  # asked before an upload is created (tusd's pre-create)
        self.base = settings.path  # ends with "/"
        self.max_blob_bytes = max_blob_bytes

    # ---- the handlers (the route table's) ---------------------------------

    async def options(self, request: Request) -> Reply:
        headers = [
            ("tus-resumable", TUS_VERSION),
            ("tus-version", TUS_VERSION),
            ("tus-extension", EXTENSIONS),
            ("tus-checksum-algorithm", ",".join(CHECKSUM_ALGORITHMS)),
        ]
        if self.max_blob_bytes is not None:
            headers.append(("tus-max-size", str(self.max_blob_bytes)))
        return Reply(204, headers)

    async def post(self, request: Request) -> Reply:
        upload_id = self._upload_id(request.path)
        if upload_id is None:
            return close_if_body_unread(request, await self._guarded(request, self._create))
        override = request.headers.get("x-http-method-override", "").upper()
        if override not in _METHOD_OVERRIDES:
            return _tus(replies.text(405, "Method POST not allowed on an upload (X-HTTP-Method-Override: PATCH, "
                                          "DELETE or HEAD)", [("allow", "HEAD, PATCH, DELETE, OPTIONS")]))
        request.method = override
        handler = {"PATCH": self.patch, "DELETE": self.delete, "HEAD": self.head}[override]
        return await handler(request)

    async def head(self, request: Request) -> Reply:
        return await self._guarded(request, self._head, on_upload=True)

    async def patch(self, request: Request) -> Reply:
        return close_if_body_unread(request, await self._guarded(request, self._patch, on_upload=True))

    async def delete(self, request: Request) -> Reply:
        return await self._guarded(request, self._delete, on_upload=True)

    # ---- what every request goes through ----------------------------------

    async def _guarded(self, request: Request, step: _Step, on_upload: bool = False) -> Reply:
        """Credentials, the protocol version, the path; then step, with its faults said in HTTP."""
        refused = await refusal(self.auth, request, need_write=True)
        if refused is not None:
            return _tus(refused)
        version = request.headers.get("tus-resumable")
        if version != TUS_VERSION:
            said = f"'{shown(version)}'" if version is not None else "missing"
            return _tus(replies.text(412, f"Tus-Resumable {said}: this server speaks tus {TUS_VERSION}",
                                     [("tus-version", TUS_VERSION)]))
        upload_id = self._upload_id(request.path)
        if on_upload and upload_id is None:
            reason = f"Method {request.method} not allowed on {self.base} (POST creates an upload)"
            return _tus(replies.text(405, reason, [("allow", "POST, OPTIONS")]))
        if on_upload and not is_upload_id(upload_id or ""):
            return _tus(replies.text(404, "No such upload"))
        try:
            return _tus(await step(request, upload_id))
        except Exception as e:
            return _tus(_fault(request, e))

    def _upload_id(self, path: str) -> str | None:
        """The upload a path names ("" for a malformed one); None for the collection itself."""
        if path in (self.base, self.base[:-1]):
            return None
        rest = path[len(self.base):]
        return rest if is_upload_id(rest) else ""

    # ---- the steps ---------------------------------------------------------

    async def _create(self, request: Request, upload_id: None) -> Reply:
        headers = request.headers
        if "upload-concat" in headers:
            raise _BadRequest(400, "Upload-Concat: concatenation is not supported by this server")
        length = _length(headers)
        metadata, expected, meta = _metadata(headers.get("upload-metadata", ""))
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        if has_body and not _is_offset_stream(headers):
            raise _BadRequest(415, f"A creation's body must be Content-Type: {OFFSET_STREAM}")
        checksum = _checksum(headers.get("upload-checksum")) if has_body else None
        declared = _content_length(headers) if has_body else None
        if self.hook is not None:
            reason = await self.hook.refusal(expected.hex if expected else None, length, user_of(request), meta, "tus")
            if reason is not None:
                raise _BadRequest(403, reason)
        record = await self.uploads.create(length, metadata, expected, meta)
        location = [("location", f"{self.base}{record.id}")]
        if has_body and record.status == OPEN:
            try:
                record = await self.uploads.append(record.id, 0, request.body.chunks(), declared, checksum)
            except Exception as e:
                # Created, but its first bytes were not (all) taken: the client still needs to know where it is.
                return _fault(request, e).with_header("location", location[0][1])
        return Reply(201, [*location, *_state_headers(record), ("content-length", "0")])

    async def _head(self, request: Request, upload_id: str) -> Reply:
        record = await self.uploads.status(upload_id)
        headers = _state_headers(record)
        if record.length is None:
            headers.append(("upload-defer-length", "1"))
        if record.metadata:
            headers.append(("upload-metadata", record.metadata))
        headers.append(("cache-control", "no-store"))
        return Reply(200, [*headers, ("content-length", "0")])

    async def _patch(self, request: Request, upload_id: str) -> Reply:
        headers = request.headers
        if not _is_offset_stream(headers):
            raise _BadRequest(415, f"A PATCH's body must be Content-Type: {OFFSET_STREAM}")
        offset = _decimal(headers, "upload-offset")
        if offset is None:
            raise _BadRequest(400, "Upload-Offset missing")
        length = _decimal(headers, "upload-length")
        checksum = _checksum(headers.get("upload-checksum"))
        declared = _content_length(headers)
        record = await self.uploads.append(upload_id, offset, request.body.chunks(), declared, checksum, length)
        return Reply(204, _state_headers(record))

    async def _delete(self, request: Request, upload_id: str) -> Reply:
        await self.uploads.terminate(upload_id)
        return Reply(204, [])


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _tus(reply: Reply) -> Reply:
    return reply.with_header("tus-resumable", TUS_VERSION)


def _fault(request: Request, e: Exception) -> Reply:
    """What a step's exception tells the client; a fault of the service or storage is logged too."""
    if isinstance(e, _BadRequest):
        return replies.text(e.status, str(e))
    if isinstance(e, UploadError):
        return _upload_error(request, e)
    if isinstance(e, Locked):
        return replies.text(423, "Locked: another request is writing this upload now; retry when it ends")
    if isinstance(e, TooLarge):
        return replies.text(413, str(e))
    if isinstance(e, NoSpace):
        log.warning("%s: %s", request, e)
        return replies.text(507, str(e) if isinstance(e, NoWritableStorage) else "Not enough space on storages")
    if isinstance(e, ClientDisconnect):
        log.info("%s: client disconnected mid-request; what arrived is kept", request)
        return replies.text(400, "Client disconnected")
    if isinstance(e, BodyTimeout):
        log.info("%s: %s; what arrived is kept", request, e)
        return replies.body_timed_out(e)
    reason = unavailable_reason(e)
    if reason is not None:
        log.error("%s: %s: %s", request, reason, e)
        return replies.unavailable(reason)
    log.error("%s failed", request, exc_info=e)
    return replies.text(500, "Internal error storing the upload")


def _upload_error(request: Request, e: UploadError) -> Reply:
    if isinstance(e, UnknownUpload):
        return replies.text(404, str(e))
    if isinstance(e, UploadGone):
        return replies.text(410, str(e))
    if isinstance(e, OffsetMismatch):
        return replies.text(409, str(e), [("upload-offset", str(e.current))])
    if isinstance(e, ChecksumMismatch):
        return replies.text(460, str(e))
    if isinstance(e, LengthExceeded):
        return replies.text(413, str(e))
    if isinstance(e, BadLength):
        return replies.text(400, str(e))
    if isinstance(e, UploadFailed):
        return replies.text(412, str(e))
    if isinstance(e, TooManyUploads):
        log.warning("%s: %s", request, e)
        return replies.text(503, str(e), [("retry-after", "60")])
    return replies.text(400, str(e))


def _state_headers(record: UploadRecord) -> list[tuple[str, str]]:
    """Upload-Offset (and Upload-Length, Upload-Expires) of an upload; its blob once it is one."""
    headers = [("upload-offset", str(record.offset))]
    if record.length is not None:
        headers.append(("upload-length", str(record.length)))
    if record.status == DONE and record.sha256 is not None:
        headers.append(("stor-sha256", record.sha256))
        headers.append(("content-location", f"/{record.sha256}"))
    elif record.status == OPEN:
        headers.append(("upload-expires", email.utils.formatdate(record.expires, usegmt=True)))
    return headers


def _is_offset_stream(headers: Headers) -> bool:
    return headers.get("content-type", "").split(";")[0].strip().lower() == OFFSET_STREAM


def _decimal(headers: Headers, name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    if not is_decimal(value) or len(value) > 19:
        raise _BadRequest(400, f"Bad {_spelled(name)} '{shown(value)}': expected a whole number of bytes, 0 or more")
    return int(value)


def _spelled(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def _length(headers: Headers) -> int | None:
    """The creation's Upload-Length; None with Upload-Defer-Length: 1 (exactly one of them is given)."""
    length = _decimal(headers, "upload-length")
    defer = headers.get("upload-defer-length")
    if defer is not None and defer != "1":
        raise _BadRequest(400, f"Bad Upload-Defer-Length '{shown(defer)}': the only value is 1")
    if (length is None) == (defer is None):
        raise _BadRequest(400, "A creation needs Upload-Length, or Upload-Defer-Length: 1 (one of them)")
    return length


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    if not is_decimal(value):
        raise _BadRequest(400, f"Bad Content-Length '{shown(value)}'")
    return int(value)


def _checksum(header: str | None) -> Checksum | None:
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise _BadRequest(400, f"Upload-Checksum algorithm '{shown(algorithm)}' is not supported "
                               f"(Tus-Checksum-Algorithm: {','.join(CHECKSUM_ALGORITHMS)})")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if not digest:
        raise _BadRequest(400, f"Bad Upload-Checksum '{shown(header)}': expected '<algorithm> <base64 digest>'")
    return Checksum(algorithm, digest)


def _metadata(header: str) -> tuple[str, Digest | None, BlobMeta]:
    """Upload-Metadata as kept (given back on HEAD), the declared sha256, and the blob's media type and name."""
    if len(header) > MAX_METADATA_BYTES:
        raise _BadRequest(400, f"Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes")
    values: dict[str, bytes] = {}
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, encoded = pair.partition(" ")
        if not key.isascii() or not key.isprintable() or key in values:
            raise _BadRequest(400, f"Bad Upload-Metadata key '{shown(key)}': keys are unique ASCII words")
        try:
            values[key] = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise _BadRequest(400, f"Bad Upload-Metadata value of '{shown(key)}': not base64") from None
    expected = None
    if "sha256" in values:
        text = _utf8(values["sha256"], "sha256")
        try:
            expected = Digest.parse(text.strip())
        except InvalidDigest:
            raise _BadRequest(400, f"Bad Upload-Metadata sha256 '{shown(text)}': expected 64 hex digits") from None
    try:
        content_type = media_type(_utf8(values["filetype"], "filetype"), "filetype") if "filetype" in values else None
        filename = plain_filename(_utf8(values["filename"], "filename"), "filename") if "filename" in values else None
    except ValueError as e:
        raise _BadRequest(400, str(e)) from None
    return header.strip(), expected, BlobMeta(content_type, filename)


def _utf8(value: bytes, key: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRequest(400, f"Bad Upload-Metadata {key}: not UTF-8") from None
