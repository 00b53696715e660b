"""Publishing to RabbitMQ from one worker, as the original did: the exchange and routing key of rabbitmq_uri.

The original published each requested sha synchronously, in the request,
retrying until the broker took it: an outage stalled every GET. Here a
request only adds to the worker's outbox (stor.events.outbox); one task
connects (stor.events.amqp_link), declares the original's durable topic
exchange, and publishes with publisher confirms, a batch at a time in one
write, so the broker has each message before it leaves the outbox. A message whose confirm
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

from stor.config import AmqpTarget
from stor.events.amqp_link import AmqpLink, Item, connection_name
from stor.events.outbox import Outbox
from stor.metrics import Metrics

log = logging.getLogger("stor.events")

# Messages written at once; the next batch goes once the broker has confirmed them all.
BATCH = 256
CONNECT_TIMEOUT = 10.0
RETRY_MIN, RETRY_MAX = 0.5, 30.0
# On shutdown, what is queued is published for at most this long.
DRAIN_SECONDS = 2.0

UP, DOWN, CONNECTING = "up", "down", "connecting"


class AmqpPublisher:
    def __init__(self, target: AmqpTarget, capacity: int, metrics: Metrics, node: str) -> None:
        self.target = target
        self.node = node
        self.metrics = metrics
        self.outbox: Outbox[Item] = Outbox(capacity)
        self.state = CONNECTING
        self.since = time.time()
        self.error: str | None = None
        self.published = 0
        self.writes = 0  # batches written: published / writes is how much each write carried
        self.nacked = 0
        self._dropped_at_outage = 0
        self._link: AmqpLink | None = None
        self._in_flight = 0  # written, its confirms awaited
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
        if self.state == UP and self._unsent():
            deadline = time.monotonic() + DRAIN_SECONDS
            while self._unsent() and self.state == UP and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the task publishes meanwhile; a bounded wait at shutdown
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self._disconnect()
        if len(self.outbox):
            log.warning("%d events for RabbitMQ %s not sent at shutdown", len(self.outbox), self.target.shown)

    def _unsent(self) -> int:
        return len(self.outbox) + self._in_flight

    def status(self) -> dict[str, Any]:
        return {
            "broker": self.target.shown, "exchange": self.target.exchange, "state": self.state,
            "since": round(self.since, 3), "queued": len(self.outbox), "dropped": self.outbox.dropped,
            "published": self.published, "writes": self.writes, "nacked": self.nacked,
            **({"error": self.error} if self.error and self.state != UP else {}),
            **({"blocked": self._link.blocked} if self._link is not None and self._link.blocked else {}),
        }

    # ---- the task ----------------------------------------------------------

    async def _run(self) -> None:
        backoff = RETRY_MIN
        while True:
            try:
                link = await self._connect()
                backoff = RETRY_MIN
                await self._publish_forever(link)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any fault of the broker or the link: down until a reconnection works
                self._down(e)
            await self._disconnect()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX)

    async def _connect(self) -> AmqpLink:
        link = self._link = await AmqpLink.open(self.target, connection_name(self.node), CONNECT_TIMEOUT)
        if self.state == DOWN:
            log.warning("RabbitMQ %s reachable again after %.0f s; %d events dropped meanwhile", self.target.shown,
                        time.time() - self.since, self.outbox.dropped - self._dropped_at_outage)
        else:
            log.info("publishing to RabbitMQ %s, exchange %s", self.target.shown, self.target.exchange)
        self.state, self.since, self.error = UP, time.time(), None
        return link

    async def _publish_forever(self, link: AmqpLink) -> None:
        while True:
            taking = asyncio.ensure_future(self.outbox.take(BATCH))
            # The link lost while nothing is being published: noticed at once, not at the next event.
            await asyncio.wait((taking, link.lost), return_when=asyncio.FIRST_COMPLETED)
            if not taking.done():
                taking.cancel()
                raise link.lost.result()
            batch = taking.result()
            self._in_flight = len(batch)
            try:
                nacked = await link.publish(batch)
            except BaseException:
                self.outbox.put_back(batch)  # sent again after the reconnection (some may be twice)
                raise
            finally:
                self._in_flight = 0
            if nacked:  # the broker could not take them (an internal error of its own): dropped, counted
                log.error("RabbitMQ %s refused %d of %d events (nack)", self.target.shown, nacked, len(batch))
                self.metrics.incr("events.amqp.nacked.count", nacked)
                self.nacked += nacked
            self.writes += 1
            self.published += len(batch) - nacked
            self.metrics.incr("events.amqp.published.count", len(batch) - nacked)

    def _down(self, e: Exception) -> None:
        reason = f"{type(e).__name__}: {e}".strip()
        if self.state != DOWN:
            log.error("RabbitMQ %s unreachable (%s); events wait in each worker's outbox (at most %d) and are "
                      "dropped beyond; reconnecting", self.target.shown, reason, self.outbox.capacity)
            self.metrics.incr("events.amqp.outages.count")
            self.state, self.since, self._dropped_at_outage = DOWN, time.time(), self.outbox.dropped
        self.error = reason

    async def _disconnect(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()
