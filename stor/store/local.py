"""The local mirrored store: blobs on both directories of a storage pair.

Writes stream: the body is hashed while it is written to a temporary file on
each target mirror, flushed to disk, verified, and only then renamed into
place, so no reader ever sees a partial or unverified blob. Blocking file
system calls run in worker threads; the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import random
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from stor.aio import in_thread
from stor.cache import LocationCache, NoLocationCache
from stor.config import Settings
from stor.digest import Digest
from stor.lru import LRU
from stor.metrics import Metrics
from stor.store import tempfiles
from stor.store.hot import HotBlobs
from stor.store.fileaccess import BLOCKING, CACHED_ONLY, FileAccess, WouldBlock
from stor.store.metadata import BlobMeta, meta_relative_path, read_meta
from stor.store.base import DigestMismatch, NoSpace, OpenBlob, PutResult, StoreError, TooLarge
from stor.store.pairs import (
    StoragePair,
    available_bytes,
    choose_pair,
    make_pairs,
    metric_name,
    pair_free_bytes,
    probe_order,
)

log = logging.getLogger("stor.store")

T = TypeVar("T")

# Bytes handed to a worker thread at a time: large enough that the thread hop
# is cheap per byte, small enough that two in flight keep memory flat.
WRITE_CHUNK = 1 << 20
# A slow upload still reaches its temporary file this often, which keeps the
# file's mtime fresh so the sweep on other nodes never takes it for stale.
MAX_BUFFER_SECONDS = 10.0

# Blobs up to this size are read whole while opening: one thread hop per small GET.
PREFETCH_BYTES = 256 * 1024

# Uploads up to this size, sent without waiting for 100 Continue, are read whole before the disks are consulted.
SMALL_UPLOAD_BYTES = WRITE_CHUNK

# Chunks at least this large are written to the mirrors in parallel with hashing.
PARALLEL_WRITE_BYTES = 256 * 1024
_MIRROR_WRITERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="stor-mirror")

_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

@dataclass(frozen=True, slots=True)
class StorageState:
    directory: Path
    pair: int
    writable: bool
    problems: tuple[str, ...]
    free_bytes: int | None

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class _Seen:
    """A blob as a read found it: the directory, the file's inode, and its sidecar's metadata."""

    directory: Path
    inode: int
    meta: BlobMeta


class LocalStore:
    def __init__(
        self,
        settings: Settings,
        cache: LocationCache | None = None,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.pairs = make_pairs(settings.storage_pairs, settings.writable_pairs_regex)
        self.cache = cache or NoLocationCache()
        self.metrics = metrics or Metrics()
        self.rng = rng or random.Random()
        self._pair_of = {d: pair for pair in self.pairs for d in pair.dirs}
        self._metric_names = {d: metric_name(d) for d in self._pair_of}
        self._dir_named = {str(d): d for d in self._pair_of}
        self._locks = _KeyedLock()
        # Where this worker last read each blob, and its sidecar: a hit costs one open, with no cache round trip.
        self._seen: LRU[str, _Seen] = LRU(settings.local_cache_size)
        # statsd only: the clock is not read otherwise.
        self._cache_time_wanted = self.metrics.wanted("timing", "cache.time")
        self._lookup_time_wanted = self.metrics.wanted("timing", "lookup.time")
        self._hot = HotBlobs(
            settings.hot_blobs, settings.hot_blob_max_bytes, settings.hot_total_bytes, settings.hot_blob_seconds
        )

    # ---- reads -------------------------------------------------------------

    async def open(self, digest: Digest, prefetch: bool = False) -> OpenBlob | None:
        """The blob opened for reading; with prefetch, a small blob's bytes are read in the same step.

        Each step is first tried on the event loop with CACHED_ONLY file
        access, which answers only what the kernel's caches hold, and is run in
        a worker thread only when that would have to wait for the disk.
        """
        started = time.perf_counter()
        # What this worker read lately answers first, as a location cache hit (the original's metrics).
        hot = self._hot.get(digest)
        if hot is not None:
            self._cache_hit(started)
            return hot
        seen = self._seen.get(digest.hex)
        if seen is not None:
            found, from_caches = await _without_waiting(self._open_cached, seen.directory, digest, prefetch, seen)
            if found is not None:
                self._cache_hit(started)
                return self._opened(digest, found, from_caches)
            self._seen.drop(digest.hex)

        cached = await self.cache.get(digest)
        if self._cache_time_wanted:
            self.metrics.timing("cache.time", (time.perf_counter() - started) * 1000)
        if cached is not None:
            # Only a configured storage is trusted: the cache is shared and is not a source of paths.
            directory = self._dir_named.get(cached)
            found, from_caches = None, False
            if directory is not None:
                found, from_caches = await _without_waiting(self._open_cached, directory, digest, prefetch, None)
            if found is not None:
                self.metrics.incr("cache.hit")
                return self._opened(digest, found, from_caches)
            await self.cache.delete(digest)
        self.metrics.incr("cache.miss")

        started = time.perf_counter()
        (found, probes), from_caches = await _without_waiting(self._find, digest, prefetch)
        if self._lookup_time_wanted:
            self.metrics.timing("lookup.time", (time.perf_counter() - started) * 1000)
        self.metrics.incr(f"lookup.attempt.{probes}.count")
        if found is None:
            return None
        await self.cache.set(digest, str(found[1].directory))
        return self._opened(digest, found, from_caches)

    def _cache_hit(self, started: float) -> None:
        if self._cache_time_wanted:
            self.metrics.timing("cache.time", (time.perf_counter() - started) * 1000)
        self.metrics.incr("cache.hit")

    def _opened(self, digest: Digest, found: tuple[OpenBlob, _Seen], from_caches: bool) -> OpenBlob:
        """A blob just opened: where and how it was found is remembered, and it is kept hot if it can be."""
        blob, seen = found
        self._seen.put(digest.hex, seen)
        if from_caches:
            self._hot.admit(blob)
        return blob

    async def expire_forever(self) -> None:
        """Close hot blobs' descriptors as they expire (a background task for the service's lifetime)."""
        await self._hot.expire_forever()

    def close(self) -> None:
        """Release the descriptors held for hot blobs."""
        self._hot.clear()

    def _open_cached(
        self, directory: Path, digest: Digest, prefetch: bool, seen: _Seen | None, files: FileAccess
    ) -> tuple[OpenBlob, _Seen] | None:
        try:
            return self._open_in(directory, digest, prefetch, files, seen)
        except OSError:
            return None  # the full lookup that follows reports the fault, or finds the other mirror

    def _find(
        self, digest: Digest, prefetch: bool, files: FileAccess
    ) -> tuple[tuple[OpenBlob, _Seen] | None, int]:
        probes = 0
        faults: list[str] = []
        for directory in probe_order(self.pairs, self.rng):
            probes += 1
            try:
                found = self._open_in(directory, digest, prefetch, files)
            except OSError as e:
                # A failing disk must not hide the other mirror's copy, nor pass for "not found".
                log.error("cannot read %s: %s", directory / digest.relative_path, e)
                faults.append(f"{directory}: {e.strerror or e}")
                continue
            if found is not None:
                return found, probes
        if faults:
            raise StoreError(f"{digest} not readable: {'; '.join(faults)}")
        return None, probes

    def _open_in(
        self,
        directory: Path,
        digest: Digest,
        prefetch: bool = False,
        files: FileAccess = BLOCKING,
        seen: _Seen | None = None,
    ) -> tuple[OpenBlob, _Seen] | None:
        """The blob opened in one storage directory; None if it is not there, OSError on a fault.

        seen is what an earlier read found there: if the file is still that
        same inode, its sidecar (written before the blob became visible, and
        never changed after) need not be read again.
        """
        path = f"{directory}/{digest.relative_path}"
        fd = files.open(path)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EISDIR, "not a regular file", path)
            if seen is None or seen.inode != st.st_ino:
                seen = _Seen(directory, st.st_ino, read_meta(f"{directory}/{meta_relative_path(digest)}", files))
            blob = OpenBlob(digest, fd, st.st_size, st.st_mtime, path, self._metric_names[directory], meta=seen.meta)
            if prefetch and st.st_size <= PREFETCH_BYTES:
                blob.data = files.pread(fd, st.st_size, 0)
            elif not files.waits and st.st_size <= self._hot.takes_up_to:
                # A HEAD: the bytes are read too if the page cache holds them, so that the
                # blob can be kept hot; never from the disk, which a HEAD does not need.
                with contextlib.suppress(WouldBlock):
                    blob.data = files.pread(fd, st.st_size, 0)
        except BaseException:
            os.close(fd)
            raise
        return blob, seen

    # ---- health ------------------------------------------------------------

    def storage_states(self) -> list[StorageState]:
        """Every storage directory and what is wrong with it, if anything (blocking)."""
        states = []
        for pair in self.pairs:
            for d in pair.dirs:
                problems: list[str] = []
                free: int | None = None
                if not d.is_dir():
                    problems.append(f"Storage {d} isn't a directory")
                else:
                    if self.settings.require_mount_points and _mount_point(d) == Path("/"):
                        problems.append(f"Storage {d} is not mounted")
                    try:
                        free = available_bytes(d)
                    except OSError as e:
                        problems.append(f"Storage {d} cannot be read: {e.strerror}")
                states.append(StorageState(d, pair.index, pair.writable, tuple(problems), free))
        return states

    # ---- writes ------------------------------------------------------------

    async def contains(self, digests: list[Digest]) -> list[bool]:
        return await in_thread(self._contains, digests)

    def _contains(self, digests: list[Digest]) -> list[bool]:
        dirs = self.settings.storage_dirs
        return [any(os.path.isfile(d / digest.relative_path) for d in dirs) for digest in digests]

    async def put(
        self,
        digest: Digest,
        body: AsyncIterator[bytes],
        length: int | None,
        meta: BlobMeta = BlobMeta(),
        body_on_its_way: bool = False,
    ) -> PutResult:
        """Store the body under digest, verified; the body is consumed only if needed.

        body_on_its_way: the client sends the body without waiting for an
        answer (no Expect: 100-continue). A small body of known length is then
        read first and the whole upload (the disks consulted, both mirrors
        written and flushed) is one hop to a thread instead of two: each hop
        costs about as much CPU as the Python work of the upload. A duplicate
        then has its few bytes read, which also keeps the connection usable.
        A blob already complete is answered with no hop at all when the
        kernel's caches hold its directory entries.
        """
        # One upload per digest at a time in this process: a second one waits
        # and then finds the blob complete without reading its body.
        async with self._locks.hold(digest.hex):
            limit = self.settings.max_blob_bytes
            data: bytearray | None = None
            if body_on_its_way and length is not None and length <= min(SMALL_UPLOAD_BYTES, limit or length):
                data = bytearray()
                async for chunk in body:
                    data += chunk
            stored = self._stored_per_caches(digest)
            if stored is not None:
                return stored
            if data is not None:
                outcome = await in_thread(self._put_whole, digest, bytes(data), meta)
                if isinstance(outcome, PutResult):
                    return outcome
                pair = outcome
            else:
                plan = await in_thread(self._plan_write, digest, length)
                if isinstance(plan, PutResult):
                    return plan
                pair, targets = plan
                await self._write(digest, body, targets, meta)
            await self.cache.set(digest, str(pair.dirs[0]))
            return PutResult(created=True, locations=[f"{d}/{digest.relative_path}" for d in pair.dirs])

    def _put_whole(self, digest: Digest, data: bytes, meta: BlobMeta) -> PutResult | StoragePair:
        """put() of a body already in memory, from planning to the last flush (blocking).

        The PutResult of a blob already stored, else the pair now holding it.
        """
        plan = self._plan_write(digest, len(data))
        if isinstance(plan, PutResult):
            return plan
        pair, targets = plan
        writer = _MirrorWriter(digest, targets, meta)
        try:
            writer.commit(data)
        except BaseException as e:
            writer.abort()
            if isinstance(e, OSError):
                raise _storage_error(e, digest, targets) from e
            raise
        return pair

    def _presence(self, digest: Digest, files: FileAccess) -> list[tuple[StoragePair, list[bool]]]:
        """Each pair, and which of its mirrors hold the blob."""
        rel = digest.relative_path
        return [(pair, [files.is_file(f"{d}/{rel}") for d in pair.dirs]) for pair in self.pairs]

    def _stored_per_caches(self, digest: Digest) -> PutResult | None:
        """The PutResult of a blob already complete on a pair, when the kernel's caches can tell at once.

        A duplicate upload (a pipeline pushing a batch again) is then answered
        without the hop to a thread, which costs more than the check. None
        means "ask the disks", never "absent".
        """
        try:
            return _stored(self._presence(digest, CACHED_ONLY), digest)
        except WouldBlock:
            return None

    def _plan_write(self, digest: Digest, length: int | None) -> PutResult | tuple[StoragePair, list[Path]]:
        """What an upload must do, decided in one pass over the disks (blocking).

        A PutResult when the blob is already complete on some pair; otherwise
        the pair and the mirrors to write. Raises TooLarge or NoSpace before
        any body byte is read.
        """
        presence = self._presence(digest, BLOCKING)
        stored = _stored(presence, digest)
        if stored is not None:
            return stored
        limit = self.settings.max_blob_bytes
        if limit is not None and length is not None and length > limit:
            raise TooLarge(limit)
        for pair, have in presence:
            if any(have) and pair.writable:
                # Present on one mirror only: complete the pair from the verified upload.
                log.warning("blob %s is on one mirror only of pair %d; completing it", digest, pair.index)
                return pair, [d for d, h in zip(pair.dirs, have) if not h]
        free = [pair_free_bytes(pair, length or 0) for pair in self.pairs]
        index = choose_pair(free, self.settings.balance_threshold_bytes, self.rng)
        if index is None:
            raise NoSpace("Not enough space on storages")
        return self.pairs[index], list(self.pairs[index].dirs)

    async def _write(
        self, digest: Digest, body: AsyncIterator[bytes], targets: Sequence[Path], meta: BlobMeta
    ) -> None:
        limit = self.settings.max_blob_bytes
        loop = asyncio.get_running_loop()
        writer = _MirrorWriter(digest, targets, meta)
        pending: asyncio.Future[None] | None = None
        try:
            buf = bytearray()
            received = 0
            last_handoff = loop.time()
            async for chunk in body:
                received += len(chunk)
                if limit is not None and received > limit:
                    raise TooLarge(limit)
                buf += chunk
                if len(buf) >= WRITE_CHUNK or (buf and loop.time() - last_handoff > MAX_BUFFER_SECONDS):
                    # One chunk in the thread while the next one arrives: bounded memory, overlapped work.
                    if pending is not None:
                        await pending
                    pending = in_thread(writer.absorb, bytes(buf))
                    buf.clear()
                    last_handoff = loop.time()
            if pending is not None:
                await pending
                pending = None
            await in_thread(writer.commit, bytes(buf))
        except BaseException as e:
            if pending is not None:
                # Its outcome no longer matters; retrieving it keeps asyncio from warning.
                pending.add_done_callback(lambda f: f.cancelled() or f.exception())
            # The writer serialises its calls, so the abort runs after any chunk
            # still in a thread; it runs to the end even if this task is cancelled.
            with contextlib.suppress(asyncio.CancelledError):
                await in_thread(writer.abort)
            if isinstance(e, OSError):
                raise _storage_error(e, digest, targets) from e
            raise


def _stored(presence: list[tuple[StoragePair, list[bool]]], digest: Digest) -> PutResult | None:
    """The answer to an upload of a blob complete on some pair (every copy found listed); None if on none."""
    if not any(all(have) for _, have in presence):
        return None
    rel = digest.relative_path
    found = [f"{d}/{rel}" for pair, have in presence for d, h in zip(pair.dirs, have) if h]
    return PutResult(created=False, locations=found)


def _storage_error(e: OSError, digest: Digest, targets: Sequence[Path]) -> StoreError:
    if e.errno in _NO_SPACE_ERRNOS:
        return NoSpace(f"disk full while writing {digest}: {e}")
    return StoreError(f"writing {digest} to {', '.join(map(str, targets))}: {e}")


class _MirrorWriter:
    """Temporary files on each target mirror, fed the same bytes, hashed once.

    Every method takes the same lock, so an abort from the event loop never
    races a write still running in another thread.
    """

    def __init__(self, digest: Digest, targets: Sequence[Path], meta: BlobMeta) -> None:
        self.digest = digest
        self.targets = list(targets)
        self.meta = meta
        self.hasher = hashlib.sha256()
        self.files: list[tuple[int, str]] = []
        self.lock = threading.Lock()
        self.done = False

    def _open_files(self) -> None:
        """Create the temporary files on first use, in the first thread call: no extra thread hop."""
        for root in self.targets[len(self.files) :]:
            self.files.append(tempfiles.create_locked(root, self.digest))

    def absorb(self, data: bytes) -> None:
        with self.lock:
            if self.done:
                raise StoreError("upload already finished")
            self._open_files()
            if len(data) < PARALLEL_WRITE_BYTES:
                self.hasher.update(data)
                for fd, _ in self.files:
                    _write_all(fd, data)
                return
            # Large chunks: both mirrors written while this thread hashes (all three release the GIL).
            writes = [_MIRROR_WRITERS.submit(_write_all, fd, data) for fd, _ in self.files]
            try:
                self.hasher.update(data)
            finally:
                for w in writes:
                    w.result()

    def commit(self, tail: bytes) -> None:
        self.absorb(tail)
        with self.lock:
            actual = self.hasher.hexdigest()
            if actual != self.digest.hex:
                raise DigestMismatch(self.digest, actual)
            finals = [f"{root}/{self.digest.relative_path}" for root in self.targets]
            for fd, _ in self.files:
                os.fsync(fd)
            # Everything that can fail for lack of room happens before the first rename,
            # so a refused upload never leaves the blob visible on one mirror.
            for root, final in zip(self.targets, finals):
                _make_dirs_durably(os.path.dirname(final), str(root))
            if self.meta:
                # The sidecar is in place before the blob is visible, so a reader never misses it.
                # Its directory entry is flushed with the blob's, by the directory fsync below.
                for root in self.targets:
                    _write_file_durably(root, self.digest, root / meta_relative_path(self.digest), self.meta.to_json())
            renamed: list[tuple[str, int]] = []
            try:
                for (fd, tmp), final in zip(self.files, finals):
                    os.rename(tmp, final)
                    renamed.append((final, os.fstat(fd).st_ino))
                    _fsync_dir(os.path.dirname(final))
            except OSError:
                for final, inode in renamed:
                    _unlink_if_same_file(final, inode)
                raise
            self._close()

    def abort(self) -> None:
        with self.lock:
            if self.done:
                return
            for _, tmp in self.files:
                try:
                    tempfiles.remove(tmp)
                except OSError as e:
                    log.error("cannot remove temporary file %s: %s", tmp, e)
            self._close()

    def _close(self) -> None:
        self.done = True
        for fd, _ in self.files:
            os.close(fd)
        self.files = []


def _mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding path, as `df` reports it."""
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def _write_file_durably(root: Path, digest: Digest, final: Path, data: bytes) -> None:
    """data under final, flushed; the caller flushes final's directory."""
    fd, tmp = tempfiles.create_locked(root, digest)
    try:
        _write_all(fd, data)
        os.fsync(fd)
        os.rename(tmp, final)
    except BaseException:
        tempfiles.remove(tmp)
        raise
    finally:
        os.close(fd)


def _unlink_if_same_file(path: str, inode: int) -> None:
    """Undo our own rename, but never remove a copy another upload put there since."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError as e:
        log.error("cannot roll back %s: %s", path, e)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _make_dirs_durably(directory: str, root: str) -> None:
    """Create directory and its missing parents below root, flushing each new entry."""
    missing: list[str] = []
    d = directory
    while d != root and not os.path.isdir(d):
        missing.append(d)
        d = os.path.dirname(d)
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue  # another upload made it
        _fsync_dir(os.path.dirname(d))


def _fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _without_waiting(step: Callable[..., T], *args: Any) -> tuple[T, bool]:
    """step(*args, files) on the loop if the kernel's caches can answer it, else in a thread; and which it was."""
    try:
        return step(*args, CACHED_ONLY), True
    except WouldBlock:
        return await in_thread(step, *args, BLOCKING), False


class _KeyedLock:
    """asyncio locks by key, kept only while someone holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
