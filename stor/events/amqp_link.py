"""One publishing-only AMQP 0-9-1 connection: a channel in confirm mode, a batch of messages in one write.

aio-pika (and aiormq under it) send one message at a time: a lock, a
future, a timeout and a write each, 120-300 us of the worker's CPU per
message, more than a whole GET (bench/README.md, "Events"). Under load
that capped what a worker could publish far below its GET rate, and the
outbox dropped most of the original's messages. Here a message's method
and header frames, the same for every message of a routing key and body
size (the requested sha's body is always 64 bytes), are marshalled once
(pamqp, the frame codec aiormq itself uses); a batch goes out in one
write, and the broker's confirms (Basic.Ack, usually `multiple`) are
counted by delivery tag. Nothing else of AMQP is needed: no consuming,
no second channel, no returns (publishes are not mandatory).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
from collections.abc import Sequence
from typing import Any, TypeVar

import pamqp.frame
from pamqp import commands as spec
from pamqp import constants
from pamqp.body import ContentBody
from pamqp.header import ContentHeader, ProtocolHeader
from pamqp.heartbeat import Heartbeat

from stor.config import AmqpTarget

CHANNEL = 1
# Our proposal for the largest frame; the broker's, if lower, wins.
FRAME_MAX = 131072
FRAME_END = bytes([constants.FRAME_END])
_FRAME_HEAD = struct.Struct(">BHI")  # type, channel, payload size
HEARTBEAT_FRAME = pamqp.frame.marshal(Heartbeat(), 0)
CLOSE_TIMEOUT = 2.0
# A message's frames before its body, cached per (routing key, body size, JSON?): a bounded set.
_PREFIXES_MAX = 4096

# (routing key, body, JSON?) of one message.
Item = tuple[str, bytes, bool]
Method = TypeVar("Method")
Result = TypeVar("Result")


class AmqpError(ConnectionError):
    """The broker closed the connection or the channel (or refused to open them): its code and reason."""

    def __init__(self, what: str, code: int, text: str) -> None:
        super().__init__(f"{what} closed by the broker: {code} {text}")
        self.code = code


class AmqpLink(asyncio.Protocol):
    """Open with `await AmqpLink.open(target, name, timeout)`; then publish() batches, one at a time.

    `lost` is done (with the reason) once the connection is gone, whoever closed it: the publisher waits
    on it beside its outbox, so a broker that goes away while nothing is sent is noticed at once.
    """

    def __init__(self, target: AmqpTarget, name: str) -> None:
        self.target = target
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[Exception] = self.loop.create_future()
        self.blocked: str | None = None  # the broker's reason while it blocks publishers (a resource alarm)
        self.frame_max = FRAME_MAX
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: tuple[type, asyncio.Future[Any]] | None = None  # the method a handshake step awaits
        self._next_tag = 1  # the delivery tag of the next message published
        self._unconfirmed: set[int] = set()
        self._nacked = 0
        self._confirmed: asyncio.Future[int] | None = None  # the batch in flight: done with its count of nacks
        self._prefixes: dict[tuple[str, int, bool], bytes] = {}
        self._heartbeat: asyncio.TimerHandle | None = None
        self._last_in = 0.0

    # ---- opening and closing -----------------------------------------------

    @classmethod
    async def open(cls, target: AmqpTarget, name: str, timeout: float) -> AmqpLink:
        link = cls(target, name)
        try:
            async with asyncio.timeout(timeout):
                await link._open()
        except BaseException:
            link._abort()
            raise
        return link

    async def _open(self) -> None:
        t = self.target
        tls = _tls_context(t) if t.tls else None
        await self.loop.create_connection(lambda: self, t.host, t.port, ssl=tls,
                                          server_hostname=t.host if tls else None)
        self._write(ProtocolHeader().marshal())
        start = await self._expect(spec.Connection.Start)
        if "PLAIN" not in str(start.mechanisms).split():
            raise AmqpError("connection", 504, f"the broker offers no PLAIN login ({start.mechanisms})")
        self._send(spec.Connection.StartOk(
            client_properties={
                "product": "stor", "connection_name": self.name, "platform": "Python",
                "capabilities": {"publisher_confirms": True, "connection.blocked": True,
                                 "authentication_failure_close": True, "basic.nack": True},
            },
            mechanism="PLAIN", response=f"\0{t.user}\0{t.password}",
        ), 0)
        tune = await self._expect(spec.Connection.Tune)
        self.frame_max = min(tune.frame_max or FRAME_MAX, FRAME_MAX)
        # The heartbeat is the URI's, as the original's client took it (0: none), not the broker's proposal.
        self._send(spec.Connection.TuneOk(channel_max=tune.channel_max, frame_max=self.frame_max,
                                          heartbeat=t.heartbeat), 0)
        if t.heartbeat:
            self._beat(t.heartbeat)
        self._send(spec.Connection.Open(virtual_host=t.vhost), 0)
        await self._expect(spec.Connection.OpenOk)
        self._send(spec.Channel.Open(), CHANNEL)
        await self._expect(spec.Channel.OpenOk)
        self._send(spec.Confirm.Select(), CHANNEL)
        await self._expect(spec.Confirm.SelectOk)
        self._send(spec.Exchange.Declare(exchange=t.exchange, exchange_type="topic", durable=True), CHANNEL)
        await self._expect(spec.Exchange.DeclareOk)

    async def close(self) -> None:
        """Close cleanly (Connection.Close, its CloseOk awaited a little), then the socket."""
        if self._transport is not None and not self.lost.done():
            with contextlib.suppress(Exception):
                self._send(spec.Connection.Close(reply_code=200, reply_text="stor shutting down"), 0)
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._expect(spec.Connection.CloseOk)
        self._abort()

    def _abort(self) -> None:
        self._lose(ConnectionError("connection closed"))
        if self._transport is not None:
            self._transport.abort()

    # ---- publishing --------------------------------------------------------

    async def publish(self, items: Sequence[Item]) -> int:
        """Send `items` in one write and wait until the broker has confirmed each; how many it nacked.

        Raises when the connection goes first: which of them the broker has is then unknown.
        """
        assert self._confirmed is None, "one batch at a time"
        if self.lost.done():
            raise self.lost.result()
        out = bytearray()
        for key, body, json in items:
            out += self._prefix(key, len(body), json)
            if self._one_frame(len(body)):  # always, for stor's events
                out += body
                out += FRAME_END
            else:
                out += self._split_body(body)
        first = self._next_tag
        self._next_tag += len(items)
        self._unconfirmed = set(range(first, self._next_tag))
        self._nacked = 0
        confirmed = self._confirmed = self.loop.create_future()
        self._write(out)
        try:
            return await self._unless_lost(confirmed)
        finally:
            self._confirmed = None

    def _prefix(self, key: str, size: int, json: bool) -> bytes:
        """The method and header frames of a message, and its body frame's head when the body fits in one."""
        cached = self._prefixes.get((key, size, json))
        if cached is not None:
            return cached
        if json:
            properties = spec.Basic.Properties(content_type="application/json", delivery_mode=2)  # persistent
        else:
            properties = spec.Basic.Properties(delivery_mode=1)  # as the original's bare sha: transient
        prefix = (pamqp.frame.marshal(spec.Basic.Publish(exchange=self.target.exchange, routing_key=key), CHANNEL)
                  + pamqp.frame.marshal(ContentHeader(0, size, properties), CHANNEL))
        if self._one_frame(size):
            prefix += _FRAME_HEAD.pack(constants.FRAME_BODY, CHANNEL, size)
        if len(self._prefixes) >= _PREFIXES_MAX:
            self._prefixes.clear()
        self._prefixes[(key, size, json)] = prefix
        return prefix

    def _one_frame(self, size: int) -> bool:
        """Whether a body of size fits in one frame (with its 7-byte head and end marker)."""
        return size + 8 <= self.frame_max

    def _split_body(self, body: bytes) -> bytes:
        step = self.frame_max - 8
        return b"".join(pamqp.frame.marshal(ContentBody(body[i:i + step]), CHANNEL) for i in range(0, len(body), step))

    def _settle(self, tag: int, multiple: bool, nack: bool) -> None:
        if multiple:
            before = len(self._unconfirmed)
            self._unconfirmed = {t for t in self._unconfirmed if t > tag}
            settled = before - len(self._unconfirmed)
        else:
            settled = 1 if tag in self._unconfirmed else 0
            self._unconfirmed.discard(tag)
        if nack:
            self._nacked += settled
        if not self._unconfirmed and self._confirmed is not None and not self._confirmed.done():
            self._confirmed.set_result(self._nacked)

    # ---- frames in and out -------------------------------------------------

    def _send(self, method: object, channel: int) -> None:
        self._write(pamqp.frame.marshal(method, channel))  # type: ignore[arg-type]

    def _write(self, data: bytes | bytearray) -> None:
        if self._transport is None or self._transport.is_closing():
            raise self.lost.result() if self.lost.done() else ConnectionError("not connected")
        self._transport.write(data)

    async def _expect(self, method: type[Method]) -> Method:
        future: asyncio.Future[Method] = self.loop.create_future()
        self._waiting = (method, future)
        try:
            return await self._unless_lost(future)
        finally:
            self._waiting = None

    async def _unless_lost(self, future: asyncio.Future[Result]) -> Result:
        """future's result, or the reason the link was lost first."""
        await asyncio.wait((future, self.lost), return_when=asyncio.FIRST_COMPLETED)
        if not future.done():
            future.cancel()
            raise self.lost.result()
        return future.result()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  (uvloop's is no asyncio.Transport subclass)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._last_in = self.loop.time()

    def data_received(self, data: bytes) -> None:
        self._last_in = self.loop.time()
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 8:
            if buffer.startswith(b"AMQP"):  # the broker's own protocol header: it speaks another version
                self._fail(AmqpError("connection", 505, f"the broker wants protocol {bytes(buffer[4:8]).hex()}"))
                return
            kind, channel, size = _FRAME_HEAD.unpack_from(buffer)
            end = 7 + size + 1
            if len(buffer) < end:
                return
            if buffer[end - 1] != constants.FRAME_END:
                self._fail(AmqpError("connection", 501, "a frame without its end marker"))
                return
            frame = bytes(buffer[:end])
            del buffer[:end]
            if kind == constants.FRAME_HEARTBEAT:
                continue
            try:
                _, _, value = pamqp.frame.unmarshal(frame)
            except Exception as e:  # noqa: BLE001  (a broken frame: the connection cannot go on)
                self._fail(AmqpError("connection", 501, f"a frame that does not parse ({e})"))
                return
            self._on_frame(channel, value)

    def _on_frame(self, channel: int, value: object) -> None:
        if isinstance(value, spec.Basic.Ack):
            self._settle(value.delivery_tag, value.multiple, nack=False)
        elif isinstance(value, spec.Basic.Nack):
            self._settle(value.delivery_tag, value.multiple, nack=True)
        elif isinstance(value, spec.Connection.Close):
            with contextlib.suppress(ConnectionError):
                self._send(spec.Connection.CloseOk(), 0)
            self._fail(AmqpError("connection", value.reply_code, value.reply_text))
        elif isinstance(value, spec.Channel.Close):
            with contextlib.suppress(ConnectionError):
                self._send(spec.Channel.CloseOk(), channel)
            self._fail(AmqpError("channel", value.reply_code, value.reply_text))
        elif isinstance(value, spec.Connection.Blocked):
            self.blocked = value.reason or "blocked"
        elif isinstance(value, spec.Connection.Unblocked):
            self.blocked = None
        elif self._waiting is not None and isinstance(value, self._waiting[0]):
            if not self._waiting[1].done():
                self._waiting[1].set_result(value)
        # Anything else (a Basic.Return cannot come: nothing is mandatory) is of no use to a publisher.

    def _fail(self, error: Exception) -> None:
        """A fault that ends the connection: lost with it, and the socket closed."""
        self._lose(error)
        if self._transport is not None:
            self._transport.close()

    def _lose(self, error: Exception) -> None:
        if not self.lost.done():
            self.lost.set_result(error)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(exc or ConnectionError("the broker closed the connection"))

    def _beat(self, interval: int) -> None:
        """Every half interval, a heartbeat out; the link lost when nothing came in for two intervals."""
        def tick() -> None:
            if self.lost.done():
                return
            if self.loop.time() - self._last_in > 2 * interval:
                self._fail(ConnectionError(f"nothing from the broker in {2 * interval} s (heartbeat {interval} s)"))
                return
            with contextlib.suppress(ConnectionError):
                self._write(HEARTBEAT_FRAME)
            self._heartbeat = self.loop.call_later(interval / 2, tick)

        self._heartbeat = self.loop.call_later(interval / 2, tick)


def _tls_context(target: AmqpTarget) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=target.cafile)
    if target.certfile:
        context.load_cert_chain(target.certfile, target.keyfile)
    return context


def connection_name(node: str) -> str:
    """How the broker's connection list names a worker's connection."""
    return f"stor {node} pid {os.getpid()}"
