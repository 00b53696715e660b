"""Responses that stream a blob, whole or a byte range, in bounded memory."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from email.utils import formatdate
from urllib.parse import quote, unquote

from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from stor.aio import in_thread
from stor.http.conditional import Answer, Full, NotModified, Partial, Refused
from stor.store.base import OpenBlob, StoreError

log = logging.getLogger("stor.http")

READ_CHUNK = 1 << 20  # the original streamed 1 MiB chunks too
# A blob never changes under its name: caches may keep it for good.
CACHE_CONTROL = "public, max-age=31536000, immutable"
DEFAULT_TYPE = "application/octet-stream"


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


def blob_response(
    blob: OpenBlob, validators: dict[str, str], answer: Answer, send_body: bool, on_sent: Callable[[], None]
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
        return BlobResponse(blob, 206, headers, answer.start, answer.length, send_body, on_sent)
    assert isinstance(answer, Full)
    return BlobResponse(blob, 200, headers, 0, blob.size, send_body, on_sent)


class BlobResponse:
    """Bytes offset..offset+length of the blob (or headers only, for HEAD); closes the blob when done.

    An ASGI response like Starlette's, without its header normalisation:
    the headers here are already lower-case and valid, and this is the path
    every GET takes.
    """

    __slots__ = ("blob", "status_code", "raw_headers", "offset", "length", "send_body", "on_sent")

    def __init__(
        self,
        blob: OpenBlob,
        status: int,
        headers: dict[str, str],
        offset: int,
        length: int,
        send_body: bool,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        self.status_code = status
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.raw_headers.append((b"content-length", b"%d" % length))
        self.blob = blob
        self.offset = offset
        self.length = length
        self.send_body = send_body
        self.on_sent = on_sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        blob = self.blob
        whole = self.offset == 0 and self.length == blob.size
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if not self.send_body or self.length == 0:
                await send({"type": "http.response.body", "body": b""})
            elif blob.data is not None:
                if len(blob.data) != blob.size:
                    raise StoreError(f"{blob.location} is shorter than its {blob.size} bytes")
                await send({"type": "http.response.body", "body": blob.data[self.offset : self.offset + self.length]})
            elif whole and "http.response.pathsend" in scope.get("extensions", {}):
                # The server sends the file itself (granian): no bytes pass through Python.
                await send({"type": "http.response.pathsend", "path": blob.location})
            else:
                await self._stream(send)
        finally:
            blob.close()
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
