"""A request as every handler sees it, whichever way it arrived (uvicorn's ASGI cycle, or stor's fast path)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol

from starlette.datastructures import Headers
from starlette.types import Receive

from stor.http.text import shown


class ClientDisconnect(Exception):
    """The client went away before its request body was whole."""


class RequestBody(Protocol):
    complete: bool  # read to its end
    received: int  # bytes so far

    def chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks; ends with ClientDisconnect when the client goes away first."""


class BodyTimeout(Exception):
    """The client sent no body bytes for the body timeout while the body was awaited."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no body bytes for {seconds:.0f} s")


class AsgiBody:
    """The body from ASGI http.request messages.

    A gap of more than `timeout` seconds between chunks ends it with
    BodyTimeout: a client that stalls cannot hold an upload (its temporary
    files, a thread's attention) for ever. The clock runs only while the body
    is awaited, so a server busy elsewhere never times its client out.
    """

    def __init__(self, receive: Receive, timeout: float) -> None:
        self.receive = receive
        self.timeout = timeout
        self.complete = False
        self.received = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        while not self.complete:
            try:
                async with asyncio.timeout(self.timeout):
                    message = await self.receive()
            except TimeoutError:
                raise BodyTimeout(self.timeout) from None
            if message["type"] != "http.request":
                self.complete = True  # nothing more will come
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            self.received += len(chunk)
            self.complete = not message.get("more_body", False)
            if chunk:
                yield chunk


class NoBody:
    """A request without a body (what the fast path takes)."""

    complete = True
    received = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        return
        yield b""  # an async generator that yields nothing


NO_BODY = NoBody()


class Request:
    __slots__ = ("method", "path", "headers", "body", "client", "started")

    def __init__(self, method: str, path: str, headers: Headers, body: RequestBody = NO_BODY, client: str = "") -> None:
        self.method = method
        self.path = path  # percent-decoded, without the query
        self.headers = headers  # lower-case names
        self.body = body
        self.client = client  # the peer's address, without the port ("" when unknown, e.g. a Unix socket)
        self.started = time.perf_counter()

    @property
    def expects_continue(self) -> bool:
        """The client waits for 100 Continue before it sends the body."""
        return self.headers.get("expect", "").lower() == "100-continue"

    def __str__(self) -> str:
        return f"{self.method} {shown(self.path)}"  # for logs: a crafted path cannot forge a line
