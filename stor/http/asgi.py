"""The ASGI application uvicorn runs: lifespan, then every request through the route table, and the one ASGI writer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping

from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from stor.aio import in_thread, outcome_ignored
from stor.http.reply import Reply, as_bytes
from stor.http.request import AsgiBody, Request
from stor.http.service import CLIENT_GONE, HttpService
from stor.store.base import FileRegion, StoreError
from stor.store.verify import CorruptBlob

log = logging.getLogger("stor.http")

READ_CHUNK = 1 << 20  # a file's bytes in chunks of this size (the original streamed 1 MiB chunks too)


class AsgiApp:
    """services: the service of each listener by its port (the S3 API's); any other port is service's."""

    def __init__(
        self, service: HttpService, startup: Callable[[], Awaitable[None]], shutdown: Callable[[], Awaitable[None]],
        body_timeout: float, services: Mapping[int, HttpService] | None = None,
    ) -> None:
        self.service = service
        self.services = dict(services or {})
        self.startup = startup
        self.shutdown = shutdown
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.service
        if self.services:
            server = scope.get("server")
            service = self.services.get(server[1] if server else -1, service)
        client = scope.get("client")
        request = Request(
            scope["method"], scope["path"], Headers(scope=scope), AsgiBody(receive, self.body_timeout),
            client[0] if client else "", scope["query_string"].decode("latin-1"),
            scope.get("raw_path", b"").decode("latin-1") or None,
        )
        route = service.route(request.path)
        reply = await service.answer(request, route)
        status, sent = reply.status, 0
        try:
            sent = await write(reply, request.method == "HEAD", send, receive)
        except _ClientGone:
            status = CLIENT_GONE
        except CorruptBlob as e:  # found while sending (a verified read): the answer stops short
            log.error("%s: %s", request, e)
            status = 500
        except Exception:
            # Nothing more can be said on this connection: uvicorn closes it when this returns.
            log.exception("%s: the answer could not be sent", request)
            status = 500
        finally:
            service.finished(request, route, reply, status, sent)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as e:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


class _ClientGone(Exception):
    """The client went away while its answer was being sent."""


async def write(reply: Reply, head_only: bool, send: Send, receive: Receive) -> int:
    """The reply as ASGI messages; the body bytes sent. Raises _ClientGone if the client left first."""
    await send({"type": "http.response.start", "status": reply.status, "headers": as_bytes(reply.headers)})
    data = b"" if head_only else reply.in_memory()
    if data is not None:
        await send({"type": "http.response.body", "body": data})
        return len(data)
    body = reply.body
    # A body that takes a while: a client that leaves meanwhile is noticed between chunks.
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        if isinstance(body, FileRegion):
            return await _send_file(body, send, gone)
        assert not isinstance(body, bytes)  # in memory, sent above
        sent = 0
        async for chunk in body:
            if gone.done():
                raise _ClientGone()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
        await send({"type": "http.response.body", "body": b""})
        return sent
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone


async def _send_file(region: FileRegion, send: Send, gone: asyncio.Future[None]) -> int:
    offset, end = region.offset, region.offset + region.length
    if offset == end:
        await send({"type": "http.response.body", "body": b""})
        return 0
    # A region to be checked: the last chunk waits for the check, and is never sent if it fails.
    checking = asyncio.ensure_future(region.check()) if region.check is not None else None
    try:
        while offset < end:
            chunk = await in_thread(os.pread, region.fd, min(READ_CHUNK, end - offset), offset)
            if gone.done():
                raise _ClientGone()
            if not chunk:
                # The file shrank under us: abort the connection rather than pad it.
                raise StoreError(f"the file is shorter than its {end} bytes")
            offset += len(chunk)
            if offset == end and checking is not None:
                await checking
            await send({"type": "http.response.body", "body": chunk, "more_body": offset < end})
    finally:
        if checking is not None and not checking.done():
            checking.cancel()
            outcome_ignored(checking)
    return region.length


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has gone away (the request body, if any, was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
