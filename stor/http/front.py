"""stor's HTTP front on uvicorn: blob reads answered inside the connection's protocol.

uvicorn parses each request with httptools and runs an ASGI task for it. For
a small read that task, its scope and two send() calls cost more than the
answer itself: on two cores an empty ASGI app on uvicorn answers HEAD at
0.2-0.4 x nginx's rate, the same protocol answering in its parser callback
at about 1 x. So GET and HEAD of /<sha> are answered in on_headers_complete:
the read runs at once, and when it finishes without waiting (a hot blob, a
miss, pages the kernel holds) the answer is written before the next request
is parsed, with no task at all. A read that has to wait (a disk) carries on
in a task; a body that is not in memory is sent by the kernel (sendfile)
from a thread, behind an empty write buffer.

Everything else takes uvicorn's ordinary ASGI path, to the same application:
uploads, /status, a read with a body, a query or percent-escapes in its
path, with an Upgrade header, pipelined behind an unfinished answer, or over
the concurrency limit (uvicorn answers 503). So there is one implementation of
each route, and what is special here is only how a read's answer is written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_client_addr

from stor.http import filesend
from stor.http.blobs import BlobEndpoint
from stor.http.responses import BlobResponse, TextResponse
from stor.store.base import StoreError

log = logging.getLogger("stor.http")

# Only the plain spelling: anything else (a query, %-escapes, a malformed sha) takes the ASGI path.
_BLOB_URL = re.compile(rb"/[0-9A-Fa-f]{64}")
_READS = {b"GET": "GET", b"HEAD": "HEAD"}
_JOIN_BYTES = 64 * 1024  # a body up to this is joined to its head: one write, one segment

AnyResponse = Response | BlobResponse | TextResponse
_INTERNAL_ERROR = TextResponse("Internal error", 500)  # never changed, so one serves every answer


class BlobReads:
    """What the front needs of the application: the blob endpoint and the Prometheus recorder."""

    def __init__(
        self,
        blobs: BlobEndpoint,
        record: Callable[[str, str, int, float, int, int], None] | None,
        route: str,
    ) -> None:
        self.blobs = blobs
        self.record = record
        self.route = route

    async def answer(self, read: _Read) -> AnyResponse:
        try:
            return await self.blobs.read(read.url[1:].decode("ascii"), read.headers, read.method == "GET")
        except Exception:
            # read() answers the store's faults itself: this is a bug, still answered.
            log.exception("%s failed", read)
            return _INTERNAL_ERROR


_reads: BlobReads | None = None


def install(reads: BlobReads) -> None:
    """The application this worker's connections answer blob reads for (uvicorn makes one per worker)."""
    global _reads
    _reads = reads


class _NoWaiter:
    @staticmethod
    def set() -> None:
        """Nobody waits for this request's body: a read has none."""


class _Read:
    """A GET or HEAD of /<sha> being answered; to uvicorn's protocol, the current cycle until it is answered.

    The protocol touches these while it runs: more requests on the
    connection queue behind it (response_complete), it learns that the
    client went away (disconnected), and shutdown asks it not to keep the
    connection open (keep_alive).
    """

    __slots__ = (
        "method", "url", "version", "headers", "started", "response_complete", "disconnected", "keep_alive", "more_body"
    )
    message_event = _NoWaiter

    def __init__(self, method: str, url: bytes, version: str, headers: Headers, keep_alive: bool) -> None:
        self.method = method
        self.url = url
        self.version = version
        self.headers = headers
        self.started = time.perf_counter()
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive
        self.more_body = False

    def __str__(self) -> str:
        return f"{self.method} {self.url.decode('ascii')}"


class StorHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering GET and HEAD of /<sha> itself."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Writing pauses as soon as anything stays buffered, so flow.drain() means "all written":
        # a file goes out by sendfile only behind an empty buffer, and a client that does not read
        # makes the next answer wait instead of piling up in memory.
        transport.set_write_buffer_limits(high=0)

    # When the connection last went idle (its answers all given); None while a request is under way.
    _idle_since: float | None = None

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn cancels its keep-alive timer here and arms a new one after every answer: over a
        # microsecond a request, a tenth of a small one. Here the connection is marked busy, and the
        # one timer, when it fires, closes it only if it has been idle for the whole timeout.
        self._idle_since = None

    def on_response_complete(self) -> None:
        # uvicorn's, but for the keep-alive timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._keep_alive_expired)

    def _keep_alive_expired(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:
            return  # busy: the end of its answer arms the timer again
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_expired)
        else:
            self.timeout_keep_alive_handler()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()  # a closed connection is not kept by the loop for the timeout
            self.timeout_keep_alive_task = None

    def on_headers_complete(self) -> None:
        # A request parsed in the same chunk as an answer given at once finds the connection marked
        # idle by that answer (uvicorn answers only after feed_data returns, and never sees this).
        self._unset_keepalive_if_required()
        if self.transport.is_closing():
            return  # pipelined behind an answer that closes the connection: never answered
        reads = _reads
        method = _READS.get(self.parser.get_method())
        if (
            reads is None
            or method is None
            or not _BLOB_URL.fullmatch(self.url)
            or self.parser.should_upgrade()
            or _has_body(self.headers)
            or self._over_limit()
        ):
            super().on_headers_complete()
            return
        version = self.parser.get_http_version()
        keep_alive = version != "1.0" and self.parser.should_keep_alive()
        read = _Read(method, self.url, version, Headers(raw=self.headers), keep_alive)
        idle = self.cycle is None or self.cycle.response_complete
        self.cycle = read  # type: ignore[assignment]
        if idle:
            self._answer(reads, read)
        else:
            # Behind an unfinished answer: queued as uvicorn queues pipelined requests, and
            # started by on_response_complete through _start_asgi_task, in order.
            self.flow.pause_reading()
            self.pipeline.appendleft((read, reads))  # type: ignore[arg-type]

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if isinstance(app, BlobReads):
            # Soon, not now: answering at once would recurse through on_response_complete
            # once per request queued.
            self.loop.call_soon(self._answer, app, cycle)
        else:
            super()._start_asgi_task(cycle, app)

    def _over_limit(self) -> bool:
        limit = self.limit_concurrency
        return limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)

    def _answer(self, reads: BlobReads, read: _Read) -> None:
        """Answer at once when the read finishes without waiting and the answer is in memory; else in a task."""
        pending: Awaitable[AnyResponse]
        if self.flow.write_paused:
            pending = reads.answer(read)
        else:
            coroutine = reads.answer(read)
            try:
                step = coroutine.send(None)
            except StopIteration as done:
                if self._answer_now(reads, read, done.value):
                    return
                pending = _ready(done.value)  # a file to send
            else:
                pending = _resume(coroutine, step)
        running = self.loop.create_task(self._answer_later(reads, read, pending))
        running.add_done_callback(self.tasks.discard)
        self.tasks.add(running)

    def _answer_now(self, reads: BlobReads, read: _Read, response: AnyResponse) -> bool:
        """Write a whole answer at once; False (nothing written) when its body must come from the file.

        Nothing may escape from here into the parser, which would answer 400 and leave the blob open.
        """
        delivered = True
        try:
            status, head, body, file = _parts(response, read.method)
            if file is not None:
                return False
        except Exception:
            log.exception("%s: the answer could not be sent", read)
            _close(response)
            delivered, read.keep_alive = False, False
            status, head, body, _ = _parts(_INTERNAL_ERROR, read.method)
        try:
            self._write(self._head(status, head, read.keep_alive), body)
            self._sent(reads, read, response, status, len(body), delivered)
        finally:
            self._complete(read)
        return True

    async def _answer_later(self, reads: BlobReads, read: _Read, pending: Awaitable[AnyResponse]) -> None:
        """The rest of an answer: a read that waits, the file's bytes, a full write buffer."""
        response: AnyResponse | None = None
        status, sent, writing, delivered = 500, 0, False, False
        try:
            response = await pending
            status, head, body, file = _parts(response, read.method)
            if self.flow.write_paused:
                await self.flow.drain()
            if read.disconnected or self.transport.is_closing():
                return
            writing = True
            if file is None:
                self._write(self._head(status, head, read.keep_alive), body)
                sent = len(body)
            else:
                fd, offset, length = file
                head = self._head(status, head, read.keep_alive)
                # Nothing else may reach the socket while the thread writes to it (a 400 for a
                # malformed request pipelined behind this one): reading resumes once it is done.
                self.flow.pause_reading()
                sent = await filesend.send(self.transport.get_extra_info("socket").fileno(), head, fd, offset, length)
            delivered = True
        except (ConnectionError, TimeoutError) as e:
            log.info("%s: client gone while sending (%s)", read, e)
            read.keep_alive = False
        except asyncio.CancelledError:
            # The thread may still be writing: nothing more can go out on this connection.
            read.keep_alive = False
            self.transport.close()
            raise
        except Exception:
            log.exception("%s: the answer could not be sent", read)
            if not writing and not self.transport.is_closing():
                status, head, body, _ = _parts(_INTERNAL_ERROR, read.method)
                self._write(self._head(status, head, False), body)
            read.keep_alive = False
        finally:
            try:
                if response is not None:
                    self._sent(reads, read, response, status, sent, delivered)
            finally:
                self._complete(read)

    def _write(self, head: bytes, body: bytes) -> None:
        if len(body) <= _JOIN_BYTES:
            self.transport.write(head + body)
        else:
            # Not joined: a copy of a large body would be held until the client has taken it all.
            self.transport.writelines((head, body))

    def _complete(self, read: _Read) -> None:
        """As uvicorn's cycle ends: the next queued request starts, or the connection closes."""
        read.response_complete = True
        if self.transport.is_closing():
            return
        if not read.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def _head(self, status: int, headers: bytes, keep_alive: bool) -> bytes:
        return b"".join(
            (STATUS_LINE[status], _default_lines(self.server_state.default_headers), headers,
             b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
        )

    def _sent(
        self, reads: BlobReads, read: _Read, response: AnyResponse, status: int, sent: int, delivered: bool
    ) -> None:
        """The answer is over: the blob closed, and counted as the other fronts count it.

        The original's success metrics only for an answer delivered whole, as under ASGI.
        """
        _close(response)
        if delivered and isinstance(response, BlobResponse) and response.on_sent is not None:
            response.on_sent()
        if reads.record is not None:
            reads.record(read.method, reads.route, status, time.perf_counter() - read.started, 0, sent)
        if self.access_log:
            # uvicorn's own format and arguments: its access formatter takes them apart.
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                read.method,
                read.url.decode("ascii"),
                read.version,
                status,
            )


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


async def _ready(response: AnyResponse) -> AnyResponse:
    return response


async def _resume(read: Coroutine[Any, Any, AnyResponse], step: Any) -> AnyResponse:
    """Carry on a coroutine that was started by hand and is waiting, as a task would have.

    step is what it yielded: the future it waits for (or None, to yield once).
    Its outcome is the coroutine's to take; a cancellation is passed in.
    """
    while True:
        throw: BaseException | None = None
        try:
            if step is None:
                await asyncio.sleep(0)
            else:
                step._asyncio_future_blocking = False  # as a task does with what it is handed
                await step
        except asyncio.CancelledError as e:
            throw = e
        except BaseException:
            pass  # the future's own outcome: the coroutine takes it from the future
        try:
            step = read.send(None) if throw is None else read.throw(throw)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


_defaults: tuple[list[tuple[bytes, bytes]], bytes] = ([], b"")


def _default_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default headers (date, server) as lines; uvicorn makes a new list when the date changes."""
    global _defaults
    if _defaults[0] is not headers:
        _defaults = (headers, b"".join(b"%s: %s\r\n" % pair for pair in headers))
    return _defaults[1]


_encoded: dict[int, tuple[list[tuple[str, str]], bytes]] = {}


def _encode(headers: list[tuple[str, str]]) -> bytes:
    """Header lines as bytes; remembered by list, since a hot blob's list (full_headers) is the same object each time."""
    known = _encoded.get(id(headers))
    if known is not None and known[0] is headers:
        return known[1]
    encoded = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")
    if len(_encoded) >= 4096:
        _encoded.clear()
    _encoded[id(headers)] = (headers, encoded)  # the list is held, so its id is not reused while remembered
    return encoded


def _parts(response: AnyResponse, method: str) -> tuple[int, bytes, bytes, tuple[int, int, int] | None]:
    """Status, header lines, body in memory, and (descriptor, offset, length) when the body is the file's."""
    body: bytes = b""
    file = None
    if isinstance(response, BlobResponse):
        head = _encode(response.headers)
        if response.send_body and response.length:
            data = response._in_memory()
            if data is not None:
                body = data
            else:
                file = (response.blob.fd, response.offset, response.length)
    elif isinstance(response, TextResponse):
        head = response.header_lines()
        body = response.body
    else:
        head = b"".join(b"%s: %s\r\n" % pair for pair in response.raw_headers)
        body = response.body
    if method == "HEAD":
        body = b""
    return response.status_code, head, body, file


def _close(response: AnyResponse) -> None:
    if isinstance(response, BlobResponse):
        response.blob.close()
