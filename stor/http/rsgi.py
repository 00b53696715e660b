"""granian's RSGI interface: blob reads answered directly, everything else through the ASGI application.

A GET or HEAD of a small blob is mostly server overhead. Under ASGI every
answer is two message dicts that granian converts; under RSGI it is one call
with the status, headers and bytes (or the file, sent by granian's own
threads); a small upload's body is likewise one call instead of a message per
chunk. So GET, HEAD, POST and PUT of /<sha> take this path, and every other
request (/status, /exists, /metrics) goes to the same ASGI application that
uvicorn serves, through a small adapter: there is one implementation of each
route, and the blob routes differ only in how the body and the answer are
handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message

from stor.http.blobs import READ_METHODS, WRITE_METHODS, BlobEndpoint
from stor.http.bodies import RsgiBody, declared_length
from stor.http.headers import as_bytes, as_str
from stor.http.responses import BlobResponse, TextResponse

log = logging.getLogger("stor.http")


class RsgiApp:
    """The RSGI application granian runs; start-up and shutdown are the ASGI application's lifespan work."""

    def __init__(
        self,
        asgi: ASGIApp,
        blobs: BlobEndpoint,
        is_blob_path: Callable[[str], bool],
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
        record: Callable[[str, str, int, float, int, int], None] | None,
        blob_route: str,
    ) -> None:
        self.asgi = asgi
        self.blobs = blobs
        self.is_blob_path = is_blob_path
        self.startup = startup
        self.shutdown = shutdown
        self.record = record  # HttpTraffic.record when Prometheus is on (the ASGI side counts itself)
        self.blob_route = blob_route

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.startup())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.shutdown())

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        method = scope.method
        path = scope.path
        reading = method in READ_METHODS
        if not (reading or method in WRITE_METHODS) or not self.is_blob_path(path):
            await call_asgi(self.asgi, scope, proto)
            return
        started = time.perf_counter()
        body: RsgiBody | None = None
        try:
            response: Response | BlobResponse | TextResponse
            if reading:
                response = await self.blobs.read(path[1:], scope.headers, send_body=method == "GET")
            else:
                body = RsgiBody(proto, declared_length(scope.headers.get("content-length")))
                response = await self.blobs.write(path[1:], scope.headers, body)
        except Exception:
            # read() and write() answer the store's faults themselves: this is a bug, still answered.
            log.exception("%s %s failed", method, path)
            response = TextResponse("Internal error", 500)
        status, sent = response.status_code, 0
        try:
            if isinstance(response, (BlobResponse, TextResponse)):
                response.send_rsgi(proto)
                sent = response.body_bytes if method != "HEAD" else 0
            else:
                proto.response_bytes(status, as_str(response.raw_headers), response.body)
                sent = len(response.body) if method != "HEAD" else 0
        except Exception:
            # The blob shrank under us, or the client is gone: a 500 if nothing was sent yet.
            log.exception("%s %s: the answer could not be sent", method, path)
            status = 500
            with contextlib.suppress(Exception):
                TextResponse("Internal error", 500).send_rsgi(proto)
        finally:
            if self.record is not None:
                received = body.received if body is not None else 0
                self.record(method, self.blob_route, status, time.perf_counter() - started, received, sent)


async def call_asgi(app: ASGIApp, scope: Any, proto: Any) -> None:
    """One RSGI request served by an ASGI application."""
    host, port = _address(scope.client)
    server_host, server_port = _address(scope.server)
    asgi_scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": scope.http_version,
        "method": scope.method,
        "scheme": scope.scheme,
        "path": scope.path,  # granian hands it over percent-decoded already
        "raw_path": quote(scope.path).encode("ascii"),
        "query_string": scope.query_string.encode("latin-1"),
        "root_path": "",
        "headers": as_bytes(scope.headers.items()),
        "client": (host, port),
        "server": (server_host, server_port),
        "extensions": {"http.response.pathsend": {}},
        "state": {},
    }
    exchange = _Exchange(proto, RsgiBody(proto, declared_length(scope.headers.get("content-length"))))
    await app(asgi_scope, exchange.receive, exchange.send)
    if not exchange.answered:
        raise RuntimeError(f"{scope.method} {scope.path}: the application sent no response")


def _address(text: str) -> tuple[str, int]:
    """granian's "host:port" (IPv6 hosts in brackets) as ASGI's (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


class _Exchange:
    """ASGI receive and send over one RSGI request."""

    def __init__(self, proto: Any, body: RsgiBody) -> None:
        self.proto = proto
        self.body = body
        self.chunks: AsyncIterator[bytes] | None = None  # once reading has begun
        self.body_done = False
        self.status = 500
        self.headers: list[tuple[str, str]] = []
        self.stream: Any = None
        self.answered = False

    async def receive(self) -> Message:
        if self.body_done:
            # Nothing more will come: the only event left is the client going away.
            await self.proto.client_disconnect()
            return {"type": "http.disconnect"}
        if self.chunks is None:
            self.chunks = self.body.chunks()
        try:
            chunk = await anext(self.chunks)
        except StopAsyncIteration:
            self.body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        except ClientDisconnect:
            self.body_done = True
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self.headers = as_str(message.get("headers", ()))
        elif kind == "http.response.body":
            body = message.get("body", b"")
            if self.stream is None:
                self.answered = True
                if not message.get("more_body", False):
                    self.proto.response_bytes(self.status, self.headers, body)
                    return
                self.stream = self.proto.response_stream(self.status, self.headers)
            if body:
                await self.stream.send_bytes(body)
        elif kind == "http.response.pathsend":
            self.answered = True
            self.proto.response_file(self.status, self.headers, message["path"])
