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
from stor.events.hook import PreUploadHook
from stor.events.model import Event
from stor.events.webhooks import WebhookSender
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
            from stor.events.amqp import AmqpPublisher  # here: a node without a broker never loads pamqp

            self.amqp = AmqpPublisher(target, events.queue_size, metrics, self.node)
        self._requests_key = target.routing_key if target is not None and events.publish_requests else None
        self._amqp_events = frozenset(events.rabbitmq_events) if target is not None else frozenset()
        # Whether requested() does anything: a handler asks once, not per request.
        self.wants_requests = self._requests_key is not None
        self.hook = PreUploadHook(events.pre_upload_hook, self.node, metrics) if events.pre_upload_hook else None
        self.webhooks = [
            WebhookSender(hook, i, events.queue_size, metrics, events.webhook_spool)
            for i, hook in enumerate(events.webhooks)
        ]

    def requested(self, sha: str) -> None:
        """A GET or HEAD of this sha (as the client spelled it): the original's message, the bare sha."""
        if self.amqp is not None and self._requests_key is not None:
            self.amqp.publish(self._requests_key, sha.encode())

    def emit(self, name: str, sha256: str, size: int | None, **detail: Any) -> None:
        event = Event(name, sha256, size, self.node, detail=detail)
        if name in self._amqp_events:
            assert self.amqp is not None
            self.amqp.publish(name, event.to_json(), json=True)
        for hook in self.webhooks:
            hook.offer(event)

    def start(self) -> None:
        if self.amqp is not None:
            self.amqp.start()
        for hook in self.webhooks:
            hook.start()

    async def close(self) -> None:
        if self.amqp is not None:
            await self.amqp.close()
        for hook in self.webhooks:
            await hook.close()
        if self.hook is not None:
            await self.hook.close()

    def status(self) -> dict[str, Any]:
        """What /status shows: each destination's state."""
        return {
            **({"rabbitmq": self.amqp.status()} if self.amqp is not None else {}),
            **({"webhooks": [hook.status() for hook in self.webhooks]} if self.webhooks else {}),
        }
