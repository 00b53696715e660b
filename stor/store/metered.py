"""A layer that reports what the store did as the original Stor's metric events (statsd names).

One is put around each tier's backend. Reads of local storage (open; head
counts only its look-up): cache.hit / cache.miss with cache.time,
lookup.attempt.<n>.count and lookup.time for a full look-up,
error.get.not_found_old.count, error.get.500.count, and
success.get.ok_old.<server>.count/.size/.time once a read was delivered
whole. Reads of S3, as the original named them: error.get.not_found_hcp.count,
success.get.ok_hcp.count/.size/.time; and error.get.error_hcp.count for a
fault (the read then falls through to local storage, so it is no 500). Writes: success.post.write.count,
success.post.duplicate.count, error.post.bad_sha.count,
error.post.no_space.count, error.post.unknown.count. Each sink (statsd,
Prometheus) takes the events it wants (stor.metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from stor.digest import Digest
from stor.metrics import Metrics
from stor.store.base import (
    BlobInfo,
    BlobStore,
    DigestMismatch,
    Layer,
    Lookup,
    Missing,
    NoSpace,
    OpenBlob,
    Stored,
    TooLarge,
    StagedBytes,
    Upload,
    UploadLayer,
)
from stor.store.metadata import NO_META, BlobMeta
from stor.store.pairs import metric_name


class MeteredStore(Layer):
    """A layer counting what the store does."""

    def __init__(self, inner: BlobStore, metrics: Metrics, tier: str = "local") -> None:
        super().__init__(inner)
        self.metrics = metrics
        self._local = tier == "local"  # S3 reads have no location cache or look-up to report
        self._not_found = "error.get.not_found_old.count" if self._local else "error.get.not_found_hcp.count"
        self._error = "error.get.500.count" if self._local else "error.get.error_hcp.count"
        # statsd only: the clock is not read otherwise.
        self._cache_time = metrics.wanted("timing", "cache.time")
        self._lookup_time = metrics.wanted("timing", "lookup.time")
        # Whether timings are recorded at all, else the clock is never read (a sink that takes
        # timings, statsd's, takes all of them).
        self._timed = self._cache_time
        # Per storage: the original's names for a read served from it, and whether any sink records them.
        self._success: dict[str, tuple[str, str, str, bool]] = {}

    async def head(self, digest: Digest, at: str | None = None) -> BlobInfo | Missing:
        started = time.perf_counter() if self._timed else 0.0
        try:
            found = await self.inner.head(digest, at)
        except Exception:
            self.metrics.incr(self._error)
            raise
        if self._local:
            self._looked_up(found.lookup, started)
        return found

    async def open(
        self, digest: Digest, span: tuple[int, int] | None = None, at: str | None = None
    ) -> OpenBlob | Missing:
        started = time.perf_counter() if self._timed else 0.0
        try:
            opened = await self.inner.open(digest, span, at)
        except Exception:
            self.metrics.incr(self._error)
            raise
        if isinstance(opened, Missing):
            if self._local:
                self._looked_up(opened.lookup, started)
            self.metrics.incr(self._not_found)
            return opened
        if self._local:
            self._looked_up(opened.info.lookup, started)
        delivered = self._on_delivered(opened.info, started)
        if delivered is not None:
            inner = opened.on_delivered
            opened.on_delivered = delivered if inner is None else _both(inner, delivered)
        return opened

    def _looked_up(self, lookup: Lookup, started: float) -> None:
        metrics = self.metrics
        if lookup.source != "probe":
            if self._cache_time:
                metrics.timing("cache.time", (time.perf_counter() - started) * 1000)
            metrics.incr("cache.hit")
            return
        if self._cache_time:
            metrics.timing("cache.time", (time.perf_counter() - started - lookup.seconds) * 1000)
        metrics.incr("cache.miss")
        if self._lookup_time:
            metrics.timing("lookup.time", lookup.seconds * 1000)
        metrics.incr(f"lookup.attempt.{lookup.probes}.count")

    def _on_delivered(self, info: BlobInfo, started: float) -> Callable[[], None] | None:
        """What reports a read once its answer went out whole; None when no sink records it (no clock read)."""
        success = self._success.get(info.storage)
        if success is None:
            base = "success.get.ok_hcp" if info.tier == "s3" else f"success.get.ok_old.{metric_name(info.storage)}"
            names = (f"{base}.count", f"{base}.size", f"{base}.time")
            wanted = any(self.metrics.wanted(kind, n) for kind, n in zip(("incr", "size", "timing"), names))
            success = self._success[info.storage] = (*names, wanted)
        count, size, timing, wanted = success
        if not wanted:
            return None
        metrics = self.metrics

        def delivered() -> None:
            metrics.incr(count)
            metrics.size(size, info.size)
            metrics.timing(timing, (time.perf_counter() - started) * 1000)

        return delivered

    async def begin(
        self, expected: Digest | None, length: int | None, meta: BlobMeta = NO_META, staged: StagedBytes | None = None,
    ) -> Upload | Stored:
        try:
            upload = await self.inner.begin(expected, length, meta, staged)
        except Exception as e:
            self._failed(e)
            raise
        if isinstance(upload, Stored):
            return self._stored(upload)
        return _MeteredUpload(upload, self)

    async def put(self, expected: Digest, data: bytes, meta: BlobMeta = NO_META) -> Stored:
        try:
            return self._stored(await self.inner.put(expected, data, meta))
        except Exception as e:
            self._failed(e)
            raise

    def _stored(self, stored: Stored) -> Stored:
        self.metrics.incr("success.post.write.count" if stored.created else "success.post.duplicate.count")
        return stored

    def _failed(self, error: Exception) -> None:
        if isinstance(error, DigestMismatch):
            self.metrics.incr("error.post.bad_sha.count")
        elif isinstance(error, NoSpace):
            self.metrics.incr("error.post.no_space.count")
        elif not isinstance(error, TooLarge):  # the client's doing, and answered 413
            self.metrics.incr("error.post.unknown.count")

def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        first()
        second()

    return both


class _MeteredUpload(UploadLayer):
    def __init__(self, upload: Upload, store: MeteredStore) -> None:
        super().__init__(upload)
        self.store = store

    async def write(self, chunk: bytes) -> None:
        try:
            await self.inner.write(chunk)
        except Exception as e:
            self.store._failed(e)
            raise

    async def commit(self) -> Stored:
        try:
            return self.store._stored(await self.inner.commit())
        except Exception as e:
            self.store._failed(e)
            raise
