"""The S3 tier: an S3 bucket and the local pairs composed into one BlobStore.

Reads ask the tiers in s3.read_order ("s3-first", as the original Stor
1.5.x did, or "local-first") and go on to the other on a miss. A fault of
S3 (an error, a timeout, an outage) never hides local data: the read falls
through to local storage, the fault is logged once per outage (not once
per request) and counted, and S3 is skipped for s3.retry_after seconds
before it is tried again, so that an outage costs one timeout, not one per
request. An object found corrupt while streamed (s3.verify_reads) is
remembered, and its next reads go to local storage.

Writes follow s3.write_mode: "local" (the local pairs only), "local+s3"
(acknowledged once committed locally and queued, durably, for a copy to S3:
stor.store.copyqueue), "s3" (to the bucket only; a node without local
pairs). Each tier below has its own layers (location cache, hot blobs,
metrics under the tier's own names); this one only chooses between them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from stor.config import S3Settings
from stor.digest import Digest
from stor.lru import LRU
from stor.metrics import Metrics
from stor.store.base import BlobInfo, BlobStore, Health, Listed, Missing, OpenBlob, StagedBytes, Stored, Upload, UploadLayer
from stor.store.copyqueue import CopyQueue
from stor.store.metadata import NO_META, BlobMeta
from stor.store.verify import CorruptBlob

log = logging.getLogger("stor.s3")

Found = TypeVar("Found", BlobInfo, OpenBlob)

BAD_OBJECTS_REMEMBERED = 10_000


class S3Outage:
    """Whether S3 is to be asked now; logs an outage once when it starts and once when it ends."""

    def __init__(self, retry_after: float, metrics: Metrics) -> None:
        self.retry_after = retry_after
        self.metrics = metrics
        self.since: float | None = None
        self._until = 0.0
        self._fell_through = 0

    def usable(self) -> bool:
        if self.since is None or time.monotonic() >= self._until:
            return True
        self._fell_through += 1
        self.metrics.incr("error.get.s3_skipped.count")
        return False

    def failed(self, e: Exception) -> None:
        now = time.monotonic()
        self._until = now + self.retry_after
        self.metrics.incr("error.s3.fault.count")
        if self.since is None:
            self.since = now
            self._fell_through = 0
            log.warning(
                "S3 fault: %s; reads fall through to local storage, S3 is tried again every %g s", e, self.retry_after
            )

    def succeeded(self) -> None:
        if self.since is not None:
            log.warning(
                "S3 answers again after %.1f s; %d reads skipped it meanwhile",
                time.monotonic() - self.since, self._fell_through,
            )
            self.since = None


class TieredStore:
    """A BlobStore over an S3 store and, unless the node keeps nothing locally, a local one."""

    def __init__(
        self, s3: BlobStore, local: BlobStore | None, settings: S3Settings, queue: CopyQueue | None,
        outage: S3Outage, metrics: Metrics,
    ) -> None:
        self.s3 = s3
        self.local = local
        self.settings = settings
        self.queue = queue
        self.outage = outage
        self.metrics = metrics
        self.s3_first = settings.read_order == "s3-first" or local is None
        self._bad: LRU[str, bool] = LRU(BAD_OBJECTS_REMEMBERED)

    def object_corrupt(self, digest: Digest, detail: str) -> None:
        """An S3 object found not to hash to its sha: its next reads skip S3."""
        self._bad.put(digest.hex, True)
        self.metrics.incr("error.get.corrupt_hcp.count")
        log.error("%s; the read was cut short, later reads of it use local storage", detail)

    # ---- reads -------------------------------------------------------------

    # `at` (a remembered location) is never given here: the location cache is a layer of the local tier.
    def head(self, digest: Digest, at: str | None = None) -> Awaitable[BlobInfo | Missing]:
        return self._read(digest, lambda store: store.head(digest))

    def open(
        self, digest: Digest, span: tuple[int, int] | None = None, at: str | None = None
    ) -> Awaitable[OpenBlob | Missing]:
        return self._read(digest, lambda store: store.open(digest, span))

    async def _read(self, digest: Digest, ask: Callable[[BlobStore], Awaitable[Found | Missing]]) -> Found | Missing:
        local = self.local
        if local is None:
            return await ask(self.s3)  # nothing to fall through to: a fault is the answer's
        if self.s3_first:
            in_s3 = await self._ask_s3(digest, ask)
            if in_s3 is not None and not isinstance(in_s3, Missing):
                return in_s3
            return await ask(local)
        try:
            found = await ask(local)
        except CorruptBlob:
            # No good local copy (a verified read; its repair is queued): S3's, if it has one, is the answer.
            in_s3 = await self._ask_s3(digest, ask)
            if in_s3 is None or isinstance(in_s3, Missing):
                raise
            return in_s3
        if not isinstance(found, Missing):
            return found
        in_s3 = await self._ask_s3(digest, ask)
        return in_s3 if in_s3 is not None and not isinstance(in_s3, Missing) else found

    async def _ask_s3(self, digest: Digest, ask: Callable[[BlobStore], Awaitable[Found | Missing]]) -> Found | Missing | None:
        """S3's answer, or None when it is skipped or failed (the caller falls through)."""
        if self._bad.get(digest.hex) is not None or not self.outage.usable():
            return None
        try:
            found = await ask(self.s3)
        except Exception as e:
            self.outage.failed(e)
            return None
        self.outage.succeeded()
        return found

    async def contains(self, digests: list[Digest]) -> list[bool]:
        present = await self.local.contains(digests) if self.local is not None else [False] * len(digests)
        missing = [d for d, p in zip(digests, present) if not p]
        if not missing:
            return present
        if self.local is None:
            in_s3 = await self.s3.contains(missing)
        else:
            if not self.outage.usable():
                return present
            try:
                in_s3 = await self.s3.contains(missing)
            except Exception as e:
                self.outage.failed(e)
                return present
            self.outage.succeeded()
        found = {d.hex for d, p in zip(missing, in_s3) if p}
        return [p or d.hex in found for d, p in zip(digests, present)]

    def iter_digests(self, after: str = "") -> AsyncIterator[Digest]:
        return (self.local or self.s3).iter_digests(after)

    def list_blobs(self, after: str = "") -> AsyncIterator[Listed]:
        return (self.local or self.s3).list_blobs(after)

    # ---- writes ------------------------------------------------------------

    async def begin(
        self, expected: Digest | None, length: int | None, meta: BlobMeta = NO_META, staged: StagedBytes | None = None,
    ) -> Upload | Stored:
        if self.local is None or self.settings.write_mode == "s3":
            return await self.s3.begin(expected, length, meta, staged)
        upload = await self.local.begin(expected, length, meta, staged)
        if isinstance(upload, Stored) or self.queue is None:
            return upload
        return _QueuedUpload(upload, self.queue)

    async def staging_dirs(self, length: int | None) -> tuple[str, ...]:
        if self.local is None or self.settings.write_mode == "s3":
            return await self.s3.staging_dirs(length)
        return await self.local.staging_dirs(length)

    async def put(self, expected: Digest, data: bytes, meta: BlobMeta = NO_META) -> Stored:
        if self.local is None or self.settings.write_mode == "s3":
            return await self.s3.put(expected, data, meta)
        stored = await self.local.put(expected, data, meta)
        if self.queue is not None and stored.created:
            await self.queue.add(stored)
        return stored

    # ---- health and lifetime -----------------------------------------------

    async def delete(self, digest: Digest) -> tuple[str, ...]:
        """Both tiers' copies; S3's first, so that a failure there leaves the local copy to answer reads."""
        removed = await self.s3.delete(digest)
        if self.local is not None:
            removed += await self.local.delete(digest)
        return removed

    async def health(self) -> Health:
        local = await self.local.health() if self.local is not None else Health()
        s3 = await self.s3.health()
        if all(s.reachable for s in s3.services):
            self.outage.succeeded()
        queues = (await self.queue.state(),) if self.queue is not None else ()
        return Health(local.storages, local.services + s3.services, local.queues + queues)

    async def start(self) -> None:
        await self.s3.start()
        if self.local is not None:
            await self.local.start()
        if self.queue is not None:
            self.queue.start()

    async def close(self) -> None:
        if self.queue is not None:
            await self.queue.close()
        if self.local is not None:
            await self.local.close()
        await self.s3.close()


class _QueuedUpload(UploadLayer):
    """A local upload whose blob, once committed, is queued for S3 before the commit returns."""

    def __init__(self, upload: Upload, queue: CopyQueue) -> None:
        super().__init__(upload)
        self.queue = queue

    async def commit(self) -> Stored:
        stored = await self.inner.commit()
        if stored.created:
            await self.queue.add(stored)
        return stored
