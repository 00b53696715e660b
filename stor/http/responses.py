"""Responses that stream a blob, whole or a byte range, in bounded memory."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any
from email.utils import formatdate
from urllib.parse import quote, unquote

from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from stor.aio import in_thread
from stor.http.conditional import Answer, Full, NotModified, Partial, Refused
from stor.http.headers import as_bytes
from stor.store.base import OpenBlob, StoreError
from stor.store.metadata import BlobMeta

log = logging.getLogger("stor.http")

READ_CHUNK = 1 << 20  # the original streamed 1 MiB chunks too
# A blob never changes under its name: caches may keep it for good.
CACHE_CONTROL = "public, max-age=31536000, immutable"
DEFAULT_TYPE = "application/octet-stream"
TEXT_TYPE = "text/plain; charset=utf-8"
_TEXT_LINES = b"content-type: " + TEXT_TYPE.encode() + b"\r\ncontent-length: %d\r\n"


def validator_headers(blob: OpenBlob) -> dict[str, str]:
    """The headers every answer about a blob carries, 304 included."""
    return {
        "etag": f'"{blob.digest.hex}"',
        "last-modified": http_date(blob.mtime),
        "cache-control": CACHE_CONTROL,
        "accept-ranges": "bytes",
    }


_dates: dict[int, str] = {}


def http_date(mtime: float) -> str:
    """mtime as an HTTP date; remembered, since many blobs share a second and formatting is slow."""
    second = int(mtime)
    text = _dates.get(second)
    if text is None:
        if len(_dates) >= 4096:
            _dates.clear()
        text = _dates[second] = formatdate(second, usegmt=True)
    return text


def representation_headers(blob: OpenBlob) -> dict[str, str]:
    headers = {"content-type": blob.meta.content_type or DEFAULT_TYPE}
    if blob.meta.filename is not None:
        headers["x-filename"] = blob.meta.filename
        headers["content-disposition"] = f"attachment; filename*=UTF-8''{quote(unquote(blob.meta.filename))}"
    return headers


_full: dict[str, tuple[int, float, BlobMeta, list[tuple[str, str]]]] = {}


def full_headers(blob: OpenBlob) -> list[tuple[str, str]]:
    """Every header of a whole-blob answer; remembered, since a hot blob is answered again and again.

    Keyed by the sha and checked against the file's size, date and metadata
    (a hot blob's are the very same objects each time). The list is shared:
    never change it.
    """
    known = _full.get(blob.digest.hex)
    if known is not None:
        size, mtime, meta, headers = known
        if size == blob.size and mtime == blob.mtime and (meta is blob.meta or meta == blob.meta):
            return headers
    if len(_full) >= 4096:
        _full.clear()
    headers = [
        *validator_headers(blob).items(),
        *representation_headers(blob).items(),
        ("content-length", str(blob.size)),
    ]
    _full[blob.digest.hex] = (blob.size, blob.mtime, blob.meta, headers)
    return headers


def blob_response(
    blob: OpenBlob,
    validators: dict[str, str],
    answer: Answer,
    send_body: bool,
    on_sent: Callable[[], None] | None,
) -> Response | BlobResponse:
    """The response for an opened blob, given its validator headers and what the request's headers decided."""
    headers = dict(validators)
    if isinstance(answer, Refused):
        blob.close()
        if answer.status == 416:
            headers["content-range"] = f"bytes */{blob.size}"
        return PlainTextResponse(answer.reason, status_code=answer.status, headers=headers)
    headers |= representation_headers(blob)
    if isinstance(answer, NotModified):
        blob.close()
        return Response(status_code=304, headers=headers)
    if isinstance(answer, Partial):
        headers["content-range"] = f"bytes {answer.start}-{answer.end}/{blob.size}"
        headers["content-length"] = str(answer.length)
        return BlobResponse(blob, 206, list(headers.items()), answer.start, answer.length, send_body, on_sent)
    assert isinstance(answer, Full)
    return whole_blob_response(blob, send_body, on_sent)


def whole_blob_response(blob: OpenBlob, send_body: bool, on_sent: Callable[[], None] | None) -> BlobResponse:
    """200 with the whole blob (headers only, for HEAD): what a read without conditional headers answers."""
    return BlobResponse(blob, 200, full_headers(blob), 0, blob.size, send_body, on_sent)


class TextResponse:
    """A one-line reason, as Starlette's PlainTextResponse sends it, for the answers a read gives often (404).

    Cheaper to build than Starlette's, and sent by either server interface.
    """

    __slots__ = ("status_code", "body")

    def __init__(self, text: str, status: int) -> None:
        self.status_code = status
        self.body = text.encode()

    @property
    def headers(self) -> list[tuple[str, str]]:
        # Made when asked for: stor's own front writes header_lines() instead, for every 404.
        return [("content-type", TEXT_TYPE), ("content-length", str(len(self.body)))]

    @property
    def body_bytes(self) -> int:
        return len(self.body)

    def header_lines(self) -> bytes:
        """The headers as they go on the wire (for stor's own front)."""
        return _TEXT_LINES % len(self.body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": as_bytes(self.headers)})
        await send({"type": "http.response.body", "body": self.body})

    def send_rsgi(self, proto: Any) -> None:
        proto.response_bytes(self.status_code, self.headers, self.body)


class BlobResponse:
    """Bytes offset..offset+length of the blob (or headers only, for HEAD); closes the blob when done.

    Sent either as ASGI messages (like Starlette's responses, without their
    header normalisation: these headers are already lower-case and valid) or
    through granian's RSGI protocol object. This is the path every GET takes.
    """

    __slots__ = ("blob", "status_code", "headers", "offset", "length", "send_body", "on_sent")

    def __init__(
        self,
        blob: OpenBlob,
        status: int,
        headers: list[tuple[str, str]],
        offset: int,
        length: int,
        send_body: bool,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        self.status_code = status
        self.headers = headers  # content-length included; possibly shared (full_headers): never changed here
        self.blob = blob
        self.offset = offset
        self.length = length
        self.send_body = send_body
        self.on_sent = on_sent

    @property
    def body_bytes(self) -> int:
        """What the body carries on the wire."""
        return self.length if self.send_body else 0

    def _in_memory(self) -> bytes | None:
        """The body when the blob was read ahead; None when it must come from the file."""
        data = self.blob.data
        if data is None:
            return None
        if len(data) != self.blob.size:
            raise StoreError(f"{self.blob.location} is shorter than its {self.blob.size} bytes")
        if self.offset == 0 and self.length == len(data):
            return data
        return data[self.offset : self.offset + self.length]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        blob = self.blob
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": as_bytes(self.headers)})
            if not self.send_body or self.length == 0:
                await send({"type": "http.response.body", "body": b""})
            elif (data := self._in_memory()) is not None:
                await send({"type": "http.response.body", "body": data})
            elif self.length == blob.size and "http.response.pathsend" in scope.get("extensions", {}):
                # The server sends the file itself: no bytes pass through Python.
                await send({"type": "http.response.pathsend", "path": blob.location})
            else:
                await self._stream(send)
        finally:
            blob.close()
        if self.on_sent is not None:
            self.on_sent()

    def send_rsgi(self, proto: Any) -> None:
        """The same answer through granian's RSGI protocol object, which sends files from its own threads."""
        try:
            if not self.send_body or self.length == 0:
                proto.response_empty(self.status_code, self.headers)
            elif (data := self._in_memory()) is not None:
                proto.response_bytes(self.status_code, self.headers, data)
            else:
                proto.response_file_range(
                    self.status_code, self.headers, self.blob.location, self.offset, self.offset + self.length
                )
        finally:
            self.blob.close()
        if self.on_sent is not None:
            self.on_sent()

    async def _stream(self, send: Send) -> None:
        blob = self.blob
        offset, end = self.offset, self.offset + self.length
        while offset < end:
            chunk = await in_thread(os.pread, blob.fd, min(READ_CHUNK, end - offset), offset)
            if not chunk:
                # The file shrank under us: abort the connection rather than pad it.
                raise StoreError(f"{blob.location} is shorter than its {blob.size} bytes")
            offset += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": offset < end})
