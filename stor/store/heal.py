"""Healing on the read path: a read that finds a mirror's copy missing or corrupt asks for its repair here.

The repair itself is stor.store.copies' (every copy hashed, re-read before
a mismatch counts, a good one copied over the bad or missing one, the bad
one quarantined, S3 as the last source), run in a worker thread, a few at
once (integrity.heal_concurrency). The queue is bounded and deduplicated:
a blob asked for again while queued or being repaired is one job, and a
full queue drops the job and counts it (the next read, or the next scrub,
asks again), so that a read never waits for a repair and a disk going bad
under heavy traffic cannot grow a worker's memory.

Per worker process, in memory: nothing here needs to survive a restart,
since the damage is still on the disk to be found again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from stor.aio import in_thread
from stor.digest import Digest
from stor.lru import LRU
from stor.metrics import Metrics
from stor.store import copies

if TYPE_CHECKING:
    from stor.events.bus import EventBus
    from stor.store.local import LocalStore
    from stor.store.s3 import S3Store

log = logging.getLogger("stor.heal")

# Drops are logged once per this many, not one line per dropped job.
DROPS_PER_LOG_LINE = 100
# A blob whose repair failed (no good copy, a pair that takes no writes) is not tried again for so
# many seconds, however often it is read: each try hashes every copy.
RETRY_FAILED_AFTER = 600.0
FAILED_REMEMBERED = 10_000


class HealQueue:
    """Repairs asked for by reads of one worker, done in the background."""

    def __init__(self, local: LocalStore, size: int, concurrency: int, metrics: Metrics, enabled: bool = True) -> None:
        self.local = local
        self.size = size
        self.concurrency = concurrency
        self.metrics = metrics
        self.enabled = enabled
        self.bucket: S3Store | None = None  # the S3 tier's bucket, a source when no local copy is good
        self.events: EventBus | None = None  # told of each corrupt copy found and each blob repaired
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Digest] = asyncio.Queue()
        self._pending: set[str] = set()  # queued or being repaired
        self._dropped = 0
        self._failed: LRU[str, float] = LRU(FAILED_REMEMBERED)  # blobs whose repair failed, and when
        self._workers: list[asyncio.Task[None]] = []
        local.on_damage = self.report

    def report(self, digest: Digest, damage: str, storage: Path) -> None:
        """A copy found missing ("missing") or corrupt ("corrupt") by a read; from any thread, never waits."""
        loop = self._loop
        if loop is None:
            return  # not started (a command, not the service): nothing to heal with
        try:
            loop.call_soon_threadsafe(self._take, digest, damage, storage)
        except RuntimeError:
            pass  # the loop is closed: the service is stopping

    def _take(self, digest: Digest, damage: str, storage: Path) -> None:
        if damage == "corrupt":
            self.metrics.incr("error.get.corrupt_old.count")
            if self.events is not None:
                self.events.emit("blob.corrupt", digest.hex, None, storage=str(storage))
        if not self.enabled or digest.hex in self._pending:
            return
        failed = self._failed.get(digest.hex)
        if failed is not None and time.monotonic() - failed < RETRY_FAILED_AFTER:
            return  # put right it could not be, a moment ago: a read of it again changes nothing
        if len(self._pending) >= self.size:
            self._dropped += 1
            self.metrics.incr("heal.dropped.count")
            if self._dropped % DROPS_PER_LOG_LINE == 1:
                log.warning("heal queue full (%d jobs): the repair of %s (%s on %s) is dropped; %d dropped so far",
                            self.size, digest, damage, storage, self._dropped)
            return
        self._pending.add(digest.hex)
        self._queue.put_nowait(digest)
        self.metrics.incr("heal.queued.count")
        log.warning("%s: copy on %s %s; its repair is queued", digest, storage, damage)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.concurrency)]

    async def close(self) -> None:
        self._loop = None
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _work(self) -> None:
        while True:
            digest = await self._queue.get()
            try:
                outcome = await in_thread(self._heal, digest, asyncio.get_running_loop())
            except Exception:
                log.exception("repair of %s failed", digest)
                outcome = "failed"
            finally:
                self._pending.discard(digest.hex)
            if outcome == "failed":
                self._failed.put(digest.hex, time.monotonic())
            elif outcome == "repaired" and self.events is not None:
                self.events.emit("blob.repaired", digest.hex, None)
            self.metrics.incr(f"heal.{outcome}.count")

    def _heal(self, digest: Digest, loop: asyncio.AbstractEventLoop) -> str:
        """Examine and repair the blob's copies (blocking): "repaired", "failed" or "clean" (nothing was wrong)."""
        examined = copies.examine(self.local, digest)
        if not copies.problems(examined):
            return "clean"
        source = copies.BucketSource(self.bucket, loop) if self.bucket is not None else None
        actions = copies.repair(self.local, examined, source)
        if any(a.error is not None or a.action == "none" for a in actions):
            return "failed"
        return "repaired"
