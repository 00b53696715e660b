"""Where events go: one worker's publisher to RabbitMQ and its webhooks, fed without waiting by the requests.

Handlers and layers call requested() (a GET or HEAD of a valid sha: the
original's message) and emit() (what happened to a blob); each
destination has its own outbox, so one that is down or slow holds up
neither the requests nor the others.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from stor.config import Settings
from stor.events.model import Event
from stor.metrics import Metrics

if TYPE_CHECKING:
    from stor.events.amqp import AmqpPublisher


class EventBus:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        events = settings.events
        self.node = events.node or socket.gethostname()
        self.metrics = metrics
        target = settings.amqp
        self.amqp: AmqpPublisher | None = None
        if target is not None:
            from stor.events.amqp import AmqpPublisher  # here: a node without a broker never loads aio-pika

            self.amqp = AmqpPublisher(target, events.queue_size, metrics)
        self._requests_key = target.routing_key if target is not None and events.publish_requests else None
        self._amqp_events = frozenset(events.rabbitmq_events) if target is not None else frozenset()
        # Whether requested() does anything: a handler asks once, not per request.
        self.wants_requests = self._requests_key is not None

    def requested(self, sha: str) -> None:
        """A GET or HEAD of this sha (as the client spelled it): the original's message, the bare sha."""
        if self.amqp is not None and self._requests_key is not None:
            self.amqp.publish(self._requests_key, sha.encode())

    def emit(self, name: str, sha256: str, size: int | None, **detail: Any) -> None:
        if name in self._amqp_events:
            assert self.amqp is not None
            event = Event(name, sha256, size, self.node, detail=detail)
            self.amqp.publish(name, event.to_json(), json=True)

    def start(self) -> None:
        if self.amqp is not None:
            self.amqp.start()

    async def close(self) -> None:
        if self.amqp is not None:
            await self.amqp.close()

    def status(self) -> dict[str, Any] | None:
        """What /status shows: each destination's state (None when there are none)."""
        if self.amqp is None:
            return None
        return {"rabbitmq": self.amqp.status()}
