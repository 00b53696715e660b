"""Responses that stream a blob from an open descriptor in bounded memory."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from email.utils import formatdate

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from stor.store.base import OpenBlob, StoreError
from stor.aio import in_thread

log = logging.getLogger("stor.http")

READ_CHUNK = 1 << 20  # the original streamed 1 MiB chunks too


def blob_headers(blob: OpenBlob) -> dict[str, str]:
    return {
        "content-length": str(blob.size),
        "last-modified": formatdate(blob.mtime, usegmt=True),
        "etag": f'"{blob.digest.hex}"',
        "content-type": "application/octet-stream",
    }


class BlobResponse(Response):
    """200 with the blob's bytes (or headers only, for HEAD); closes the blob when done."""

    def __init__(self, blob: OpenBlob, send_body: bool, on_sent: Callable[[], None] | None = None) -> None:
        super().__init__(status_code=200, headers=blob_headers(blob))
        self.blob = blob
        self.send_body = send_body
        self.on_sent = on_sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        blob = self.blob
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if not self.send_body or blob.size == 0:
                await send({"type": "http.response.body", "body": b""})
            elif blob.data is not None:
                if len(blob.data) != blob.size:
                    raise StoreError(f"{blob.location} is shorter than its {blob.size} bytes")
                await send({"type": "http.response.body", "body": blob.data})
            elif "http.response.pathsend" in scope.get("extensions", {}):
                # The server sends the file itself (granian): no bytes pass through Python.
                await send({"type": "http.response.pathsend", "path": blob.location})
            else:
                offset = 0
                while offset < blob.size:
                    chunk = await in_thread(os.pread, blob.fd, min(READ_CHUNK, blob.size - offset), offset)
                    if not chunk:
                        # The file shrank under us: abort the connection rather than pad it.
                        raise StoreError(f"{blob.location} is shorter than its {blob.size} bytes")
                    offset += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": offset < blob.size})
        finally:
            blob.close()
        if self.on_sent is not None:
            self.on_sent()
