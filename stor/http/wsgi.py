"""granian's WSGI interface: blob reads answered on granian's threads, everything else by the ASGI application.

A GET or HEAD of a small blob is mostly server overhead, and the cheapest
way granian has to call Python is WSGI: the thread that parsed the request
calls the application directly. Its other interfaces (ASGI, RSGI) hand each
request to an event loop in another thread and the answer back, two
wake-ups per request that cost more than stor's own work on a small read
(measured: README, "Performance"). So GET and HEAD of /<sha> run here, in
place: BlobEndpoint.read is a coroutine that waits only on in_thread, which
off an event loop runs its call at once (stor.aio.run_here).

Every other request (uploads, /status, /exists, /metrics) goes to the same
ASGI application uvicorn serves, on an event loop of its own thread (the
bridge below): there is one implementation of each route, and the blob reads
differ only in how their answer is handed over.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing.util
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote

from starlette.responses import Response
from starlette.types import ASGIApp, Message

from stor.aio import in_thread, run_here
from stor.http.blobs import READ_METHODS, BlobEndpoint
from stor.http.headers import EnvironHeaders, as_bytes, as_str
from stor.http.responses import BlobResponse, StartResponse, TextResponse, send_wsgi_response, status_line
from stor.http.text import is_decimal
from stor.store.local import SMALL_UPLOAD_BYTES

log = logging.getLogger("stor.http")

Environ = dict[str, Any]
# A large upload's body is handed to the application in pieces of this size.
BODY_CHUNK = 256 * 1024


class WsgiApp:
    """The WSGI application granian runs; it starts the ASGI application's loop and lifespan work."""

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
        self.blobs = blobs
        self.is_blob_path = is_blob_path
        self.record = record  # HttpTraffic.record when Prometheus is on (the ASGI side counts itself)
        self.blob_route = blob_route
        self.bridge = AsgiBridge(asgi, startup, shutdown)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ["PATH_INFO"]
        if method not in READ_METHODS or not self.is_blob_path(path):
            return self.bridge(environ, start_response)
        started = time.perf_counter()
        try:
            response: Response | BlobResponse | TextResponse = run_here(
                self.blobs.read(path[1:], EnvironHeaders(environ), send_body=method == "GET")
            )
            if isinstance(response, (BlobResponse, TextResponse)):
                body = response.send_wsgi(start_response)
                sent = response.body_bytes if method == "GET" else 0
            else:
                body = send_wsgi_response(response, start_response)
                sent = len(response.body) if method == "GET" else 0
            status = response.status_code
        except Exception:
            # read() answers the store's faults itself: this is a bug (or the blob shrank), still answered.
            log.exception("%s %s failed", method, path)
            status, sent = 500, 0
            body = TextResponse("Internal error", 500).send_wsgi(start_response)
        if self.record is not None:
            self.record(method, self.blob_route, status, time.perf_counter() - started, 0, sent)
        return body

    def close(self) -> None:
        self.bridge.close()


class AsgiBridge:
    """An ASGI application served to WSGI requests, on an event loop in a thread of its own.

    Each request's answer is gathered whole before it is handed back: the
    routes that take this path (uploads' JSON, /status, /exists, /metrics)
    answer in a few KiB. The request body is read by the I/O threads when
    the application asks for it (never before: a 401 or 413 is answered to
    a client still waiting to send), a small declared one in one piece.
    """

    def __init__(
        self, app: ASGIApp, startup: Callable[[], Awaitable[None]], shutdown: Callable[[], Awaitable[None]]
    ) -> None:
        self.app = app
        self.shutdown = shutdown
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stor-loop", daemon=True)
        self.thread.start()
        self._closed = False
        asyncio.run_coroutine_threadsafe(startup(), self.loop).result()
        # granian's WSGI workers have no shutdown hook, and their processes end with os._exit (no atexit):
        # multiprocessing's own finalizers are what runs then.
        multiprocessing.util.Finalize(self, self.close, exitpriority=10)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self.shutdown(), self.loop).result(timeout=30)
        except Exception:
            log.exception("shutdown failed")
        self.loop.call_soon_threadsafe(self.loop.stop)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        declared_text = environ.get("CONTENT_LENGTH") or None
        declared = int(declared_text) if declared_text is not None and is_decimal(declared_text) else None
        exchange = _Exchange(environ["wsgi.input"], declared)
        status, headers, chunks = asyncio.run_coroutine_threadsafe(
            exchange.run(self.app, _asgi_scope(environ)), self.loop
        ).result()
        start_response(status_line(status), headers)
        return chunks


def _read_up_to(body: Any, length: int) -> bytes:
    """Up to length bytes of the request body; fewer only when the client went away."""
    parts = []
    left = length
    while left > 0:
        part = body.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _asgi_scope(environ: Environ) -> dict[str, Any]:
    path = environ["PATH_INFO"]  # granian hands it over percent-decoded already
    headers = EnvironHeaders(environ)
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": environ.get("SERVER_PROTOCOL", "HTTP/1.1").partition("/")[2] or "1.1",
        "method": environ["REQUEST_METHOD"],
        "scheme": environ.get("wsgi.url_scheme", "http"),
        "path": path,
        "raw_path": quote(path).encode("ascii"),
        "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
        "root_path": "",
        "headers": as_bytes(headers.items()),
        "client": (environ.get("REMOTE_ADDR", ""), 0),
        "server": (environ.get("SERVER_NAME", ""), int(environ.get("SERVER_PORT") or 0)),
        "state": {},
    }


class _Exchange:
    """ASGI receive and send for one WSGI request, run on the bridge's loop."""

    def __init__(self, body: Any, declared_length: int | None) -> None:
        self.body = body
        self.declared_length = declared_length
        self.received = 0
        self.body_done = False
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.finished: asyncio.Event | None = None

    async def run(self, app: ASGIApp, scope: dict[str, Any]) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        self.finished = asyncio.Event()
        try:
            await app(scope, self.receive, self.send)
        except Exception:
            if self.status is not None:
                raise
            log.exception("%s %s failed", scope["method"], scope["path"])
            return 500, [("content-type", "text/plain; charset=utf-8")], [b"Internal error"]
        finally:
            self.finished.set()
        if self.status is None:
            raise RuntimeError(f"{scope['method']} {scope['path']}: the application sent no response")
        return self.status, self.headers, self.chunks

    async def receive(self) -> Message:
        if self.body_done:
            # Nothing more will come: the only event left is the client going away, or the answer done.
            assert self.finished is not None
            await self.finished.wait()
            return {"type": "http.disconnect"}
        if self.declared_length is not None and self.declared_length <= SMALL_UPLOAD_BYTES:
            chunk = await in_thread(_read_up_to, self.body, self.declared_length)
            self.body_done = True
        else:
            chunk = await in_thread(self.body.read, BODY_CHUNK)
            self.body_done = not chunk
        self.received += len(chunk)
        if self.body_done and self.declared_length is not None and self.received < self.declared_length:
            # The body ended early: the client went away mid-upload.
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": not self.body_done}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self.headers = as_str(message.get("headers", ()))
        elif kind == "http.response.body":
            body = message.get("body", b"")
            if body:
                self.chunks.append(body)
