"""Publishing to RabbitMQ from one worker, as the original did: the exchange and routing key of rabbitmq_uri.

The original published each requested sha synchronously, in the request,
retrying until the broker took it: an outage stalled every GET. Here a
request only adds to the worker's outbox (stor.events.outbox); one task
connects (aio-pika), declares the original's durable topic exchange,
and publishes with publisher confirms, a batch at a time, so the broker
has each message before it leaves the outbox. A message whose confirm
did not come (the connection went down under it) is sent again after the
reconnection: at least once, while the worker lives. A broker outage is
logged when it starts and when it ends, counted, and the outbox's
overflow meanwhile dropped and counted; reconnection is retried with
backoff, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aio_pika

from stor.config import AmqpTarget
from stor.events.outbox import Outbox
from stor.metrics import Metrics

log = logging.getLogger("stor.events")

# Messages published side by side, each awaiting its confirm.
BATCH = 256
CONNECT_TIMEOUT = 10.0
RETRY_MIN, RETRY_MAX = 0.5, 30.0
# On shutdown, what is queued is published for at most this long.
DRAIN_SECONDS = 2.0

UP, DOWN, CONNECTING = "up", "down", "connecting"

# (routing key, body, JSON?) of one message.
Item = tuple[str, bytes, bool]


class AmqpPublisher:
    def __init__(self, target: AmqpTarget, capacity: int, metrics: Metrics) -> None:
        self.target = target
        self.metrics = metrics
        self.outbox: Outbox[Item] = Outbox(capacity)
        self.state = CONNECTING
        self.since = time.time()
        self.error: str | None = None
        self.published = 0
        self._dropped_at_outage = 0
        self._connection: Any = None
        self._lost: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def publish(self, routing_key: str, body: bytes, json: bool = False) -> None:
        """Queue a message (never waits; dropped and counted when the outbox is full)."""
        if not self.outbox.add((routing_key, body, json)):
            self.metrics.incr("events.amqp.dropped.count")

    # ---- life cycle --------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is None:
            return
        if self.state == UP and len(self.outbox):
            deadline = time.monotonic() + DRAIN_SECONDS
            while len(self.outbox) and self.state == UP and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the task publishes meanwhile; a bounded wait at shutdown
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self._disconnect()
        if len(self.outbox):
            log.warning("%d events for RabbitMQ %s not sent at shutdown", len(self.outbox), self.target.shown)

    def status(self) -> dict[str, Any]:
        return {
            "broker": self.target.shown, "exchange": self.target.exchange, "state": self.state,
            "since": round(self.since, 3), "queued": len(self.outbox), "dropped": self.outbox.dropped,
            "published": self.published, **({"error": self.error} if self.error and self.state != UP else {}),
        }

    # ---- the task ----------------------------------------------------------

    async def _run(self) -> None:
        backoff = RETRY_MIN
        while True:
            try:
                exchange = await self._connect()
                backoff = RETRY_MIN
                await self._publish_forever(exchange)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any fault of the broker or the link: down until a reconnection works
                self._down(e)
            await self._disconnect()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX)

    async def _connect(self) -> Any:
        self._connection = await aio_pika.connect(self.target.url, timeout=CONNECT_TIMEOUT)
        # Closed by the broker (or the link lost) while nothing is being published: noticed at once,
        # not at the next event.
        lost = self._lost = asyncio.get_running_loop().create_future()
        self._connection.close_callbacks.add(lambda *_: lost.done() or lost.set_result(None))
        channel = await self._connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(self.target.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        if self.state == DOWN:
            log.warning("RabbitMQ %s reachable again after %.0f s; %d events dropped meanwhile", self.target.shown,
                        time.time() - self.since, self.outbox.dropped - self._dropped_at_outage)
        else:
            log.info("publishing to RabbitMQ %s, exchange %s", self.target.shown, self.target.exchange)
        self.state, self.since, self.error = UP, time.time(), None
        return exchange

    async def _publish_forever(self, exchange: Any) -> None:
        lost = self._lost
        while True:
            taking = asyncio.ensure_future(self.outbox.take(BATCH))
            await asyncio.wait((taking, lost), return_when=asyncio.FIRST_COMPLETED)
            if not taking.done():
                taking.cancel()
                raise ConnectionError("the broker closed the connection")
            batch = taking.result()
            try:
                await asyncio.gather(*(
                    # Not mandatory, as the original's publish: an exchange nobody is bound to drops the
                    # message (mandatory, the broker would send each one back).
                    exchange.publish(_message(body, json), routing_key=key, mandatory=False)
                    for key, body, json in batch
                ))
            except BaseException:
                self.outbox.put_back(batch)  # sent again after the reconnection (some may be twice)
                raise
            self.published += len(batch)
            self.metrics.incr("events.amqp.published.count", len(batch))

    def _down(self, e: Exception) -> None:
        reason = f"{type(e).__name__}: {e}".strip()
        if self.state != DOWN:
            log.error("RabbitMQ %s unreachable (%s); events wait in each worker's outbox (at most %d) and are "
                      "dropped beyond; reconnecting", self.target.shown, reason, self.outbox.capacity)
            self.metrics.incr("events.amqp.outages.count")
            self.state, self.since, self._dropped_at_outage = DOWN, time.time(), self.outbox.dropped
        self.error = reason

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


def _message(body: bytes, json: bool) -> aio_pika.Message:
    if json:
        return aio_pika.Message(body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    return aio_pika.Message(body)
