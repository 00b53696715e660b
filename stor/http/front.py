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

The front consults the application's one route table (stor.http.routes)
and calls the same handler through the same HttpService as the ASGI path;
only routes marked fast are taken here. Everything else takes uvicorn's
ordinary ASGI path: uploads, /status, a read with a body, a query or
percent-escapes in its path, or with an Upgrade header. So what is special
here is only how a reply is written; `stor serve --no-fast-path` turns it
off, and the answers are the same byte for byte.

The protocol also holds every connection to stor's limits, whether the fast
path is on or off (stor.config.HttpSettings): the size and number of a
request's headers, the time a request head may take, a connection cap per
worker, clients that stop taking their answer, and clients that half-close.
This is the one module that depends on uvicorn's internals (its cycle,
pipeline queue, parser callbacks and keep-alive timer), which is why uvicorn
is pinned to a minor version.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import time
from collections.abc import Awaitable, Coroutine, Mapping
from typing import Any

import httptools
from starlette.datastructures import Headers
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_client_addr

from stor.config import HttpSettings, max_connections_for
from stor.http import filesend, tcp
from stor.http import reply as replies
from stor.http.reply import Reply
from stor.http.request import Request
from stor.http.routes import Route
from stor.http.service import CLIENT_GONE, HttpService
from stor.store.base import FileRegion
from stor.store.verify import CorruptBlob

log = logging.getLogger("stor.http")

# Only a plain path: a query, %-escapes or anything outside visible ASCII takes the ASGI path.
_PLAIN_URL = re.compile(rb"/[!-$&->@-~]*")  # no "%" (0x25), no "?" (0x3f)
_READS = {b"GET": "GET", b"HEAD": "HEAD"}
_JOIN_BYTES = 64 * 1024  # a body up to this is joined to its head: one write, one segment

# A connection busy with a request looks at its client's progress this often.
_CHECK_SECONDS = 5.0
# How long a connection whose request was refused stays open to drop what the client still sends.
LINGER_SECONDS = 5.0

_service: HttpService | None = None
_services: dict[int, HttpService] = {}  # by a listener's port: the S3 API's
_limits = HttpSettings()
_max_connections = max_connections_for(_limits, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def install(
    service: HttpService | None, limits: HttpSettings, services: Mapping[int, HttpService] | None = None
) -> None:
    """This worker's limits, and the service its connections answer fast routes for (None: no fast path);
    services: those of other listeners, by their port (a connection to any other port is service's).

    uvicorn makes one application per worker, before the first connection.
    """
    global _service, _services, _limits, _max_connections
    _service = service
    _services = dict(services or {}) if service is not None else {}
    _limits = limits
    _max_connections = max_connections_for(limits, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


class _TooManyHeaders(Exception):
    """Raised from a parser callback: the head has more headers than the limit."""


_cap_logged_at = -1e9


def _over_cap(cap: int) -> None:
    """Log a refused connection, at most once every ten seconds (a flood would flood the log)."""
    global _cap_logged_at
    now = time.monotonic()
    if now - _cap_logged_at >= 10.0:
        _cap_logged_at = now
        log.warning("%d connections open on this worker: new ones are refused with 503 "
                    "(http.max_connections)", cap)


def _check_seconds() -> float:
    """How often a client's progress is looked at while an answer waits for it."""
    return min(_CHECK_SECONDS, _limits.send_timeout / 4)


def _peer(client: tuple[str, int] | None) -> str:
    return "%s:%d" % client if client else "a client"


class _NoWaiter:
    @staticmethod
    def set() -> None:
        """Nobody waits for this request's body: a read has none."""


class _Read:
    """A GET or HEAD answered here; to uvicorn's protocol, the current cycle until it is answered.

    The protocol touches these while it runs: more requests on the
    connection queue behind it (response_complete), it learns that the
    client went away (disconnected), and shutdown asks it not to keep the
    connection open (keep_alive).
    """

    __slots__ = ("request", "route", "url", "version", "response_complete", "disconnected", "keep_alive", "more_body")
    message_event = _NoWaiter

    def __init__(self, request: Request, route: Route, url: bytes, version: str, keep_alive: bool) -> None:
        self.request = request
        self.route = route
        self.url = url
        self.version = version
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive
        self.more_body = False

    def __str__(self) -> str:
        return str(self.request)


class StorHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with stor's limits on every connection, answering GET and HEAD of /<sha> itself.

    The limits (stor.config.HttpSettings) hold with the fast path off too:
    this protocol serves both ways, and only the fast answers depend on it.
    Each connection has one timer (uvicorn's keep-alive handle, reused; see
    _on_timer) instead of one per request and per limit.
    """

    # Since when a request head is awaited (the connection was made or its last answer given);
    # None while a request is under way.
    _waiting_since: float | None = None
    # Whether the bytes now arriving belong to a request head, and how many have come.
    _in_head = True
    _head_bytes = 0
    _heads = 0  # request heads completed on this connection
    _client_eof = False  # the client has half-closed: answer what it asked, then close
    _refused = False  # an answer refusing the request was given: what follows is dropped
    _progress: tcp.Progress | None = None  # what the client has taken of a buffered answer
    _service: HttpService | None = None  # the service of the listener this connection came to, for fast answers

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # `stor serve --limit-concurrency` is this connection cap, checked when a connection is
        # made, rather than uvicorn's 503 to requests made beyond it.
        self._max_connections = self.limit_concurrency or _max_connections
        self.limit_concurrency = None
        self.timeout_keep_alive = _limits.keep_alive_timeout

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Writing pauses as soon as anything stays buffered, so flow.drain() means "all written":
        # a file goes out by sendfile only behind an empty buffer, and a client that does not read
        # makes the next answer wait instead of piling up in memory.
        transport.set_write_buffer_limits(high=0)
        self._service = _services.get(self.server[1], _service) if _services and self.server else _service
        if len(self.connections) > self._max_connections:
            _over_cap(self._max_connections)
            self._refused = True
            transport.write(self._refusal(503, "Service Unavailable: too many connections"))
            transport.close()  # at once: lingering would hold the descriptor the cap protects
            return
        self._waiting_since = self.loop.time()
        self._arm(_limits.head_timeout)

    def _unset_keepalive_if_required(self) -> None:
        """uvicorn's, made a no-op: _on_timer looks at the connection's state when it fires."""

    def _arm(self, delay: float) -> None:
        """The timer due in delay seconds at the latest (one already due sooner stays)."""
        due = self.loop.time() + delay
        timer = self.timeout_keep_alive_task
        if timer is not None:
            if timer.when() <= due:
                return
            timer.cancel()
        self.timeout_keep_alive_task = self.loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        """The connection's deadlines: a client that takes nothing, keep-alive, and the request head's."""
        self.timeout_keep_alive_task = None
        transport = self.transport
        if transport.is_closing():
            return
        now = self.loop.time()
        if transport.get_write_buffer_size():
            # An answer waits in the buffer: the client must keep taking it.
            progress = self._progress
            if progress is None:
                progress = self._progress = tcp.Progress(_limits.send_timeout)
            if progress.stalled(transport.get_extra_info("socket"), now):
                log.info("%s: the client took nothing for %.0f s; connection closed", _peer(self.client),
                         _limits.send_timeout)
                transport.abort()
            else:
                self.timeout_keep_alive_task = self.loop.call_at(now + _check_seconds(), self._on_timer)
            return
        if self._progress is not None:
            self._progress.reset()
        since = self._waiting_since
        if since is None:
            return  # the server is at work on a request: the end of its answer arms the timer again
        silent = self._head_bytes == 0
        # Silent after an answer: keep-alive's limit; anything else must bring a whole head in time.
        due = since + (self.timeout_keep_alive if silent and self._heads else _limits.head_timeout)
        if now < due:
            self.timeout_keep_alive_task = self.loop.call_at(due, self._on_timer)
            return
        if not silent or not self._heads:
            log.info("%s: no whole request head within %.0f s; connection closed", _peer(self.client),
                     _limits.head_timeout)
        transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        # Something waits in the buffer: from now on the client must keep taking it (_on_timer).
        self._arm(_check_seconds())

    def on_response_complete(self) -> None:
        # uvicorn's, but for the connection's one timer and a client that has half-closed.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        if self._client_eof:
            self.transport.close()  # it asked all it will ask
            return
        self._waiting_since = self.loop.time()
        self._arm(self.timeout_keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()  # a closed connection is not kept by the loop for the timeout
            self.timeout_keep_alive_task = None

    def eof_received(self) -> bool:
        """The client half-closed: answer the request it has sent (True keeps our side open), or close.

        asyncio closes the transport when this returns false; uvicorn's did
        so even with a whole request still being answered, whose answer was
        then lost.
        """
        cycle = self.cycle
        if self.pipeline or (cycle is not None and not cycle.response_complete and not cycle.more_body):
            self._client_eof = True
            return True
        return False  # idle, or a request it can no longer finish: connection_lost follows

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with the limits on a request head: bytes in all (431 once over, before the rest
        # is parsed) and, in on_headers_complete, the number of headers. Bytes after a message's end that
        # came in the same read are not counted towards the next head: a head can exceed the
        # limit by at most one read before it is refused.
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
            over = self._head_bytes - _limits.max_head_bytes
            if over > 0:
                heads = self._heads
                if len(data) > over:
                    self._feed(memoryview(data)[:-over])  # the head may end within the limit
                    if self._refused or self.transport.is_closing():
                        return  # refused or answered 400 by what was fed
                if self._heads == heads:
                    self._refuse_head(f"more than {_limits.max_head_bytes} bytes")
                    return
                data = memoryview(data)[-over:]  # type: ignore[assignment]
        self._feed(data)

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, _TooManyHeaders):
                self._refuse_head(f"more than {_limits.max_headers} headers")
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def _refuse_head(self, why: str) -> None:
        """431 for a request head over the limits; the rest of the request is dropped, never parsed.

        The connection lingers (reading and dropping) for up to LINGER_SECONDS
        or until the client closes, so that it reads the answer rather than a
        reset caused by unread bytes. Behind an unfinished answer it is simply closed.
        """
        self._refused = True
        transport = self.transport
        log.info("%s: request head refused: %s", _peer(self.client), why)
        if self.cycle is not None and not self.cycle.response_complete:
            transport.close()
            return
        transport.write(self._refusal(431, f"Request Header Fields Too Large: {why}"))
        if transport.can_write_eof():
            transport.write_eof()
        self.flow.resume_reading()
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
        self.timeout_keep_alive_task = self.loop.call_later(LINGER_SECONDS, transport.close)

    def _refusal(self, status: int, reason: str) -> bytes:
        """A whole plain-text answer that closes the connection."""
        reply = replies.text(status, reason)
        return self._head(reply, False) + (reply.in_memory() or b"")

    def on_headers_complete(self) -> None:
        self._waiting_since = None
        self._in_head = False
        self._heads += 1
        if len(self.headers) > _limits.max_headers:
            # Counted once the head is whole (max_head_bytes bounds what that takes), and raised
            # so that the parser stops here: data_received answers 431.
            raise _TooManyHeaders()
        if self.transport.is_closing():
            return  # pipelined behind an answer that closes the connection: never answered
        service = self._service
        method = _READS.get(self.parser.get_method())
        url = self.url
        if (
            service is None
            or method is None
            or not _PLAIN_URL.fullmatch(url)
            or self.parser.should_upgrade()
            or _has_body(self.headers)
        ):
            super().on_headers_complete()
            return
        path = url.decode("ascii")
        route = service.route(path)
        if not route.fast:
            super().on_headers_complete()
            return
        version = self.parser.get_http_version()
        keep_alive = version != "1.0" and self.parser.should_keep_alive()
        request = Request(method, path, Headers(raw=self.headers), client=self.client[0] if self.client else "")
        read = _Read(request, route, url, version, keep_alive)
        idle = self.cycle is None or self.cycle.response_complete
        self.cycle = read  # type: ignore[assignment]
        if idle:
            self._answer(service, read)
        else:
            # Behind an unfinished answer: queued as uvicorn queues pipelined requests, and
            # started by on_response_complete through _start_asgi_task, in order.
            self.flow.pause_reading()
            self.pipeline.appendleft((read, service))  # type: ignore[arg-type]

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if isinstance(app, HttpService):
            # Soon, not now: answering at once would recurse through on_response_complete
            # once per request queued.
            self.loop.call_soon(self._answer, app, cycle)
        else:
            super()._start_asgi_task(cycle, app)

    def _answer(self, service: HttpService, read: _Read) -> None:
        """Answer at once when the handler finishes without waiting and the reply is in memory; else in a task."""
        pending: Awaitable[Reply]
        coroutine = service.answer(read.request, read.route)
        if self.flow.write_paused or not service.steps_inline:
            pending = coroutine
        else:
            try:
                step = coroutine.send(None)
            except StopIteration as done:
                if self._answer_now(service, read, done.value):
                    return
                pending = _ready(done.value)  # a body to send from a file or a stream
            else:
                pending = _resume(coroutine, step)
        running = self.loop.create_task(self._answer_later(service, read, pending))
        running.add_done_callback(self.tasks.discard)
        self.tasks.add(running)

    def _answer_now(self, service: HttpService, read: _Read, reply: Reply) -> bool:
        """Write a whole reply at once; False (nothing written) when its body is not in memory.

        Nothing may escape from here into the parser, which would answer 400 and leave the blob open.
        """
        head_only = read.request.method == "HEAD"
        status, sent = reply.status, 0
        try:
            body = b"" if head_only else reply.in_memory()
            if body is None:
                return False
            self._write(self._head(reply, read.keep_alive), body)
            sent = len(body)
        except Exception:
            log.exception("%s: the answer could not be sent", read)
            read.keep_alive = False
            status = 500
            self._write_error()
        try:
            self._finished(service, read, reply, status, sent)
        finally:
            self._complete(read)
        return True

    async def _answer_later(self, service: HttpService, read: _Read, pending: Awaitable[Reply]) -> None:
        """The rest of an answer: a handler that waits, a file's or a stream's bytes, a full write buffer."""
        reply: Reply | None = None
        status, sent, writing = 500, 0, False
        try:
            reply = await pending
            status = reply.status
            if self.flow.write_paused:
                await self.flow.drain()
            if read.disconnected or self.transport.is_closing():
                status = CLIENT_GONE
                return
            writing = True
            sent = await self._send(reply, read)
        except (ConnectionError, TimeoutError) as e:
            log.info("%s: client gone while sending (%s)", read, e)
            status, read.keep_alive = CLIENT_GONE, False
        except CorruptBlob as e:  # found while sending (a verified read): the answer stops short
            log.error("%s: %s", read, e)
            status, read.keep_alive = 500, False
        except asyncio.CancelledError:
            # A thread may still be writing: nothing more can go out on this connection.
            status, read.keep_alive = CLIENT_GONE, False
            self.transport.close()
            raise
        except Exception:
            log.exception("%s: the answer could not be sent", read)
            status, read.keep_alive = 500, False
            if not writing and not self.transport.is_closing():
                self._write_error()
        finally:
            try:
                if reply is not None:
                    self._finished(service, read, reply, status, sent)
            finally:
                self._complete(read)

    async def _send(self, reply: Reply, read: _Read) -> int:
        """The reply's head and body; the body bytes sent."""
        head = self._head(reply, read.keep_alive)
        data = b"" if read.request.method == "HEAD" else reply.in_memory()
        if data is not None:
            self._write(head, data)
            return len(data)
        body = reply.body
        if isinstance(body, FileRegion):
            # Nothing else may reach the socket while the thread writes to it (a 400 for a
            # malformed request pipelined behind this one): reading resumes once it is done.
            self.flow.pause_reading()
            socket = self.transport.get_extra_info("socket").fileno()
            return await filesend.send_region(socket, head, body)
        assert not isinstance(body, bytes)
        chunked = _chunked(reply)
        self.transport.write(head)
        sent = 0
        async for chunk in body:
            if read.disconnected:
                raise ConnectionError("the client went away")
            if chunk:
                self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
            if self.flow.write_paused:
                await self.flow.drain()
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        return sent

    def _write(self, head: bytes, body: bytes) -> None:
        if len(body) <= _JOIN_BYTES:
            self.transport.write(head + body)
        else:
            # Not joined: a copy of a large body would be held until the client has taken it all.
            self.transport.writelines((head, body))

    def _write_error(self) -> None:
        """A 500 in place of an answer nothing of which was written; the connection closes after it."""
        error = replies.text(500, replies.INTERNAL_ERROR)
        self._write(self._head(error, False), error.in_memory() or b"")

    def _complete(self, read: _Read) -> None:
        """As uvicorn's cycle ends: the next queued request starts, or the connection closes."""
        read.response_complete = True
        if self.transport.is_closing():
            return
        if not read.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def _head(self, reply: Reply, keep_alive: bool) -> bytes:
        """The status line and headers as uvicorn writes them (its default headers first)."""
        return b"".join(
            (STATUS_LINE[reply.status], _default_lines(self.server_state.default_headers), _encode(reply.headers),
             b"transfer-encoding: chunked\r\n" if _chunked(reply) else b"",
             b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
        )

    def _finished(self, service: HttpService, read: _Read, reply: Reply, status: int, sent: int) -> None:
        service.finished(read.request, read.route, reply, status, sent)
        if self.access_log:
            # uvicorn's own format and arguments: its access formatter takes them apart.
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                read.request.method,
                read.url.decode("ascii"),
                read.version,
                status,
            )


def _chunked(reply: Reply) -> bool:
    """Whether the body goes out in chunked framing: a stream of unknown length (as uvicorn frames it)."""
    return not isinstance(reply.body, (bytes, FileRegion)) and not any(n == "content-length" for n, _ in reply.headers)


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


async def _ready(reply: Reply) -> Reply:
    return reply


async def _resume(read: Coroutine[Any, Any, Reply], step: Any) -> Reply:
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
