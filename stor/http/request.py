"""A request as every handler sees it, whichever way it arrived (uvicorn's ASGI cycle, or stor's fast path)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol

from starlette.datastructures import Headers
from starlette.types import Receive

from stor.http.reply import Reply
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
    is awaited, so a server busy elsewhere never times its client out. One
    timer per body, looking at when the wait began, rather than one per chunk:
    a chunk then costs a clock read.
    """

    def __init__(self, receive: Receive, timeout: float) -> None:
        self.receive = receive
        self.timeout = timeout
        self.complete = False
        self.received = 0
        self._waiting_since: float | None = None  # when the wait for the next chunk began
        self._timed_out = False
        self._timer: asyncio.TimerHandle | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._timer = loop.call_at(loop.time() + self.timeout, self._check, loop, task)
        try:
            while not self.complete:
                self._waiting_since = loop.time()
                try:
                    message = await self.receive()
                except asyncio.CancelledError:
                    if not self._timed_out:
                        raise
                    task.uncancel()  # the cancellation was this timer's, and is answered here
                    raise BodyTimeout(self.timeout) from None
                finally:
                    self._waiting_since = None
                if message["type"] != "http.request":
                    self.complete = True  # nothing more will come
                    raise ClientDisconnect()
                chunk = message.get("body", b"")
                self.received += len(chunk)
                self.complete = not message.get("more_body", False)
                if chunk:
                    yield chunk
        finally:
            if self._timer is not None:
                self._timer.cancel()

    def _check(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[object]) -> None:
        if task.done():
            return  # the request is over (its handler stopped reading early)
        now = loop.time()
        since = self._waiting_since
        if since is not None and now - since >= self.timeout:
            self._timed_out = True
            task.cancel()
            return
        self._timer = loop.call_at((since if since is not None else now) + self.timeout, self._check, loop, task)


class NoBody:
    """A request without a body (what the fast path takes)."""

    complete = True
    received = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        return
        yield b""  # an async generator that yields nothing


NO_BODY = NoBody()


class Request:
    __slots__ = ("method", "path", "headers", "body", "client", "query", "raw_path", "started")

    def __init__(
        self, method: str, path: str, headers: Headers, body: RequestBody = NO_BODY, client: str = "",
        query: str = "", raw_path: str | None = None,
    ) -> None:
        self.method = method
        self.path = path  # percent-decoded, without the query
        self.headers = headers  # lower-case names
        self.body = body
        self.client = client  # the peer's address, without the port ("" when unknown, e.g. a Unix socket)
        self.query = query  # as sent, without the "?" (what a signature covers)
        self.raw_path = path if raw_path is None else raw_path  # as sent, percent-escapes and all
        self.started = time.perf_counter()

    @property
    def expects_continue(self) -> bool:
        """The client waits for 100 Continue before it sends the body."""
        return self.headers.get("expect", "").lower() == "100-continue"

    def __str__(self) -> str:
        return f"{self.method} {shown(self.path)}"  # for logs: a crafted path cannot forge a line


def close_if_body_unread(request: Request, reply: Reply) -> Reply:
    """After an answer given before the body was read (a duplicate, 401, 412, 413, 507, a tus 409, an S3 error).

    The client is sending (or about to send) a body nobody will read, or,
    after Expect: 100-continue, may send it or not (RFC 9110 lets it: curl
    does not and closes; botocore does not and reuses the connection): the
    bytes that follow cannot be told apart from the next request. So the
    connection is closed after the answer, and the answer says so. (Draining
    instead would wait for a body the client may hold back.)
    """
    headers = request.headers
    if request.body.complete:
        return reply
    if headers.get("content-length", "0") != "0" or "chunked" in headers.get("transfer-encoding", ""):
        return reply.with_header("connection", "close")
    return reply
