"""A request body as the upload handler reads it, whichever server interface carried it.

The handler needs the chunks, how many bytes came, and whether the body was
read to its end (an answer given before that closes the connection). A client
that goes away mid-body ends the chunks with ClientDisconnect under both
interfaces, so a short body is never taken for a whole one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from granian.rsgi import ProtocolClosed
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from stor.http.text import is_decimal
from stor.store.local import SMALL_UPLOAD_BYTES

# A body declared this small is read in one call into granian instead of
# chunk by chunk (a wake-up of the event loop each): the store holds an
# upload of this size in memory whole anyway.
WHOLE_BODY_BYTES = SMALL_UPLOAD_BYTES


class UploadBody(Protocol):
    complete: bool  # read to its end
    received: int  # bytes so far

    def chunks(self) -> AsyncIterator[bytes]: ...


class AsgiBody:
    """The body from ASGI http.request messages."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.complete = False
        self.received = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        while not self.complete:
            message = await self.receive()
            if message["type"] != "http.request":
                self.complete = True  # nothing more will come
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            self.received += len(chunk)
            self.complete = not message.get("more_body", False)
            if chunk:
                yield chunk


class RsgiBody:
    """The body from granian's RSGI protocol object."""

    def __init__(self, proto: Any, declared_length: int | None) -> None:
        self.proto = proto
        self.declared_length = declared_length
        self.complete = False
        self.received = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.complete:
            return
        declared = self.declared_length
        try:
            if declared is not None and declared <= WHOLE_BODY_BYTES:
                data = await self.proto()
                self.received = len(data)
                self.complete = True
                self._check_length()
                if data:
                    yield data
                return
            async for chunk in self.proto:
                self.received += len(chunk)
                if chunk:
                    yield chunk
        except ProtocolClosed:
            # A whole-body read ends this way when the client goes away before the end.
            self.complete = True
            raise ClientDisconnect() from None
        self.complete = True
        self._check_length()

    def _check_length(self) -> None:
        # granian ends the body early, without an error, when the client goes away mid-upload.
        if self.declared_length is not None and self.received < self.declared_length:
            raise ClientDisconnect()


def declared_length(value: str | None) -> int | None:
    """Content-Length as a number; None when absent or not a plain decimal (the handler answers that with a 400)."""
    return int(value) if value is not None and is_decimal(value) else None
