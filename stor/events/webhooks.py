"""Webhooks: the events one receiver wants, POSTed to it as JSON, signed, retried with backoff.

Each receiver has its own outbox per worker, delivered in order, one at a
time: a receiver that is down or slow holds up only its own events. A
delivery is retried on a transport error, a timeout, 408, 429 or a 5xx,
after 0.5 s, 1 s, 2 s ... (at most a minute), up to max_attempts; any other
answer is the receiver's refusal, logged, and not retried.

The body is signed with the receiver's secret: `Stor-Signature:
sha256=<hex HMAC-SHA256 of the body>` (GitHub's scheme), so the receiver
can tell stor's events from anyone's. `Stor-Delivery` names the delivery;
a receiver that gets one twice (a retry whose first answer was lost, a
spooled event sent again after a restart) can tell.

Without a spool the outbox is memory: a restart loses what was not yet
delivered. With events.webhook_spool each event is a file on the storage
before it counts as queued (written and flushed, then renamed into place),
removed once delivered: at least once, across restarts. Each worker keeps
its files in a directory of its own, under a lock it holds while it runs; a
worker that starts takes over the files of any whose lock is free (it
stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from stor import __version__
from stor.aio import in_thread
from stor.config import WebhookSettings
from stor.events.model import Event
from stor.events.outbox import Outbox
from stor.metrics import Metrics
from stor.store.durable import fsync_dir, replace_file

log = logging.getLogger("stor.events")

RETRY_MIN, RETRY_MAX = 0.5, 60.0
SPOOL_BATCH = 64
_RETRIED_STATUSES = frozenset({408, 429})
_WORKER_DIR_PREFIX = "worker-"


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    event: str
    body: bytes
    path: str | None = None  # its spool file, when spooled


def signature(secret: str, body: bytes) -> str:
    """The Stor-Signature header's value for body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(
        self, settings: WebhookSettings, index: int, capacity: int, metrics: Metrics, spool: Path | None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.wants = frozenset(settings.events)
        self.outbox: Outbox[Delivery] = Outbox(capacity)  # to deliver (spooled, with a spool)
        self.incoming: Outbox[Delivery] = Outbox(capacity)  # to spool first, with a spool
        self.delivered = self.failed = 0
        self.last_error: str | None = None
        # The receiver's own directory of the spool, and this worker's in it (made at start).
        self.spool = spool / f"webhook-{index}" if spool is not None else None
        self._own: Path | None = None
        self._lock_fd: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    def offer(self, event: Event) -> None:
        """The event queued for delivery when the receiver wants it (dropped and counted when full).

        With a spool it goes to the spooling task first (a file is written and flushed in a thread,
        never on the event loop), then to the outbox.
        """
        if event.event not in self.wants:
            return
        delivery = Delivery(secrets.token_hex(12), event.event, event.to_json())
        if len(self.incoming) + len(self.outbox) >= self.outbox.capacity:
            self.outbox.dropped += 1
            self._dropped()
            return
        (self.incoming if self.spool is not None else self.outbox).add(delivery)

    def _dropped(self) -> None:
        self.metrics.incr("events.webhook.dropped.count")
        if self.outbox.dropped % 1000 == 1:
            log.warning("webhook %s: outbox full (%d events): events dropped, %d so far", self.settings.url,
                        self.outbox.capacity, self.outbox.dropped)

    # ---- life cycle --------------------------------------------------------

    def start(self) -> None:
        if self.spool is not None:
            self._take_spool()
        self._client = httpx.AsyncClient(timeout=self.settings.timeout, headers={"user-agent": f"stor/{__version__}"})
        self._tasks = [asyncio.create_task(self._run())]
        if self.spool is not None:
            self._tasks.append(asyncio.create_task(self._spool_forever()))

    async def close(self) -> None:
        if self._own is not None and len(self.incoming):
            await self._spool(await self.incoming.take(len(self.incoming)))  # spooled, for the next start
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the spooled events left are the next worker's to take over
            self._lock_fd = None

    def status(self) -> dict[str, Any]:
        return {"url": self.settings.url, "queued": len(self.outbox), "dropped": self.outbox.dropped,
                "delivered": self.delivered, "failed": self.failed,
                **({"error": self.last_error} if self.last_error else {})}

    # ---- the spool ---------------------------------------------------------

    def _take_spool(self) -> None:
        """This worker's directory in the spool, locked; its files and those of stopped workers queued."""
        assert self.spool is not None
        self.spool.mkdir(parents=True, exist_ok=True)
        own = self.spool / f"{_WORKER_DIR_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        own.mkdir()
        self._lock_fd = _locked(own / "lock")
        assert self._lock_fd is not None
        self._own = own
        adopted = 0
        for other in sorted(self.spool.iterdir()):
            if other == own or not other.name.startswith(_WORKER_DIR_PREFIX):
                continue
            fd = _locked(other / "lock")
            if fd is None:
                continue  # a running worker's
            try:
                for path in sorted(other.glob("*.json")):
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(path, own / path.name)
                        adopted += 1
                for leftover in other.iterdir():
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
                other.rmdir()
            except OSError as e:
                log.warning("webhook spool %s: cannot take over %s: %s", self.spool, other, e)
            finally:
                os.close(fd)
        fsync_dir(own)
        for path in sorted(own.glob("*.json")):
            try:
                saved = json.loads(path.read_bytes())
                self.outbox.add(Delivery(saved["id"], saved["event"], saved["body"].encode(), str(path)))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("webhook spool: unreadable %s (%s); left there", path, e)
        if adopted:
            log.info("webhook %s: %d spooled events of a stopped worker taken over", self.settings.url, adopted)

    async def _spool_forever(self) -> None:
        while True:
            await self._spool(await self.incoming.take(SPOOL_BATCH))

    async def _spool(self, deliveries: list[Delivery]) -> None:
        spooled = await in_thread(self._write_spool, deliveries)
        for delivery in spooled:
            self.outbox.add(delivery)

    def _write_spool(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Each delivery as a file in this worker's spool directory, flushed (blocking); a delivery that
        cannot be written is kept in memory only (said in the log)."""
        own = self._own
        assert own is not None
        spooled = []
        for delivery in deliveries:
            path = own / f"{time.time_ns():020d}-{delivery.id}.json"
            record = {"id": delivery.id, "event": delivery.event, "body": delivery.body.decode()}
            try:
                replace_file(str(path), json.dumps(record).encode(), durable=True)
            except OSError as e:
                log.error("webhook %s: cannot spool event %s (%s); it is kept in memory only", self.settings.url,
                          delivery.id, e)
                spooled.append(delivery)
                continue
            spooled.append(Delivery(delivery.id, delivery.event, delivery.body, str(path)))
        fsync_dir(own)
        return spooled

    # ---- delivering --------------------------------------------------------

    async def _run(self) -> None:
        while True:
            (delivery,) = await self.outbox.take(1)
            delivered = await self._deliver(delivery)
            if delivery.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(delivery.path)  # delivered, or given up on (logged)
            if delivered:
                self.delivered += 1
                self.metrics.incr("events.webhook.delivered.count")
            else:
                self.failed += 1
                self.metrics.incr("events.webhook.failed.count")

    async def _deliver(self, delivery: Delivery) -> bool:
        settings = self.settings
        headers = {"content-type": "application/json", "stor-event": delivery.event, "stor-delivery": delivery.id}
        if settings.secret is not None:
            headers["stor-signature"] = signature(settings.secret, delivery.body)
        assert self._client is not None
        for attempt in range(1, settings.max_attempts + 1):
            try:
                answer = await self._client.post(settings.url, content=delivery.body, headers=headers)
                if answer.is_success:
                    self.last_error = None
                    return True
                problem = f"answered {answer.status_code}"
                if answer.status_code < 500 and answer.status_code not in _RETRIED_STATUSES:
                    log.error("webhook %s refused %s %s: %s; not retried", settings.url, delivery.event,
                              delivery.id, problem)
                    self.last_error = problem
                    return False
            except httpx.HTTPError as e:
                problem = f"{type(e).__name__}: {e}".strip()
            self.last_error = problem
            if attempt == settings.max_attempts:
                break
            delay = min(RETRY_MAX, RETRY_MIN * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
            log.info("webhook %s: %s %s %s (attempt %d of %d); again in %.1f s", settings.url, delivery.event,
                     delivery.id, problem, attempt, settings.max_attempts, delay)
            await asyncio.sleep(delay)
        log.error("webhook %s: %s %s not delivered after %d attempts (%s); dropped", settings.url, delivery.event,
                  delivery.id, settings.max_attempts, self.last_error)
        return False


def _locked(path: Path) -> int | None:
    """path locked (its descriptor, held); None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
