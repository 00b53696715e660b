"""The durable queue of blobs to copy to S3 (s3.write_mode "local+s3"), kept on the local storages.

An entry is an empty file `<storage>/.stor-s3-queue/<sha>` in the storage
the blob was written to, made and flushed (file and directory) before the
upload is acknowledged: a crash or a restart after the acknowledgment
leaves the entry, and whichever worker (or node sharing the storage) finds
it copies the blob. A worker copying an entry holds an exclusive flock on
it, so no two copy one blob at once; the entry is removed only once the
object is in the bucket, verified (the upload hashes the local bytes and
completes only when they match the sha; see stor.store.s3). A failed copy
is retried from s3.copy_retry_min seconds, doubling up to copy_retry_max.
The queue's depth and oldest entry are read from the directories
themselves, so every worker reports the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stor.aio import in_thread
from stor.digest import Digest, InvalidDigest
from stor.metrics import Metrics
from stor.store.base import BlobStore, DigestMismatch, FileRegion, Missing, QueueState, Stored, StoreError
from stor.store.durable import fsync_dir
from stor.store.s3 import S3Store, S3Unreachable

log = logging.getLogger("stor.s3.copy")

QUEUE_DIR_NAME = ".stor-s3-queue"
SCAN_SECONDS = 5.0  # how often entries made by other workers and nodes (or left by a crash) are looked for
READ_CHUNK = 8 * 1024 * 1024
BATCH = 1000  # entries taken per pass (a long outage can leave very many)


@dataclass(frozen=True, slots=True)
class _Entry:
    path: str
    digest: Digest
    mtime: float


def queue_dir(root: Path | str) -> str:
    return f"{root}/{QUEUE_DIR_NAME}"


def _ensure_dir(root: str) -> str:
    directory = queue_dir(root)
    try:
        os.mkdir(directory, 0o755)
    except FileExistsError:
        pass
    else:
        fsync_dir(root)
    if os.path.islink(directory):
        raise StoreError(f"{directory} is a symbolic link; refusing to queue copies through it")
    return directory


def add_entry(root: str, digest: Digest) -> None:
    """The entry for digest under root, on disk for good before this returns (blocking)."""
    directory = _ensure_dir(root)
    fd = os.open(f"{directory}/{digest.hex}", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(directory)


def scan(roots: Sequence[Path]) -> list[_Entry]:
    """Every entry under the roots, oldest first (blocking)."""
    entries: list[_Entry] = []
    for root in roots:
        directory = queue_dir(root)
        try:
            listing = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in listing:
            try:
                digest = Digest.parse(e.name)
                st = e.stat(follow_symlinks=False)
            except (InvalidDigest, FileNotFoundError):
                continue
            entries.append(_Entry(e.path, digest, st.st_mtime))
    entries.sort(key=lambda e: e.mtime)
    return entries


def _claim(path: str) -> int | None:
    """The entry opened and exclusively locked; None when another copier holds it or it is gone (blocking)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_nlink == 0:  # copied and removed by whoever held it before us
            raise BlockingIOError(errno.ENOENT, "gone")
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _done(path: str, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)


class CopyQueue:
    """Copies queued blobs from local storage to S3, in this worker's background."""

    def __init__(
        self, roots: Sequence[Path], local: BlobStore, s3: S3Store, retry_min: float, retry_max: float,
        concurrency: int, metrics: Metrics,
    ) -> None:
        self.roots = tuple(roots)
        self.local = local
        self.s3 = s3
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.concurrency = concurrency
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._failures: dict[str, tuple[int, float]] = {}  # sha -> (failed tries, when to try again)
        self._running: asyncio.Task[None] | None = None
        self._failing_since: float | None = None

    async def add(self, stored: Stored) -> None:
        """Queue a blob just written (durably: the caller acknowledges the upload after this)."""
        root = stored.storage if stored.storage is not None else str(self.roots[0])
        await in_thread(add_entry, root, stored.digest)
        self._wake.set()

    async def state(self) -> QueueState:
        try:
            entries = await in_thread(scan, self.roots)
        except OSError as e:
            return QueueState("s3-copy", 0, None, f"cannot read the queue: {e.strerror or e}")
        oldest = time.time() - entries[0].mtime if entries else None
        return QueueState("s3-copy", len(entries), oldest)

    def start(self) -> None:
        self._running = asyncio.create_task(self._drain_forever())

    async def close(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

    async def _drain_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.drain()
            except Exception:
                log.exception("copying queued blobs to S3 failed")
            if self._failing_since is not None:
                # Copies are failing (S3 out of reach, most likely): new entries wait for the next
                # retry too, rather than each upload setting off a pass over the whole queue.
                await asyncio.sleep(self._next_wait())
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_wait())

    def _next_wait(self) -> float:
        now = time.monotonic()
        soonest = min((when for _, when in self._failures.values()), default=now + SCAN_SECONDS)
        return max(0.05, min(SCAN_SECONDS, soonest - now))

    async def drain(self) -> int:
        """Copy every entry that is due (not waiting out a retry); how many were copied."""
        now = time.monotonic()
        queued = await in_thread(scan, self.roots)
        present = {e.digest.hex for e in queued}
        for sha in [sha for sha in self._failures if sha not in present]:  # copied by another worker or node
            del self._failures[sha]
        entries = [e for e in queued if self._failures.get(e.digest.hex, (0, 0.0))[1] <= now][:BATCH]
        if not entries:
            return 0
        slots = asyncio.Semaphore(self.concurrency)
        unreachable = False

        async def one(entry: _Entry) -> bool:
            nonlocal unreachable
            async with slots:
                if unreachable:  # the rest of this pass would only time out one by one
                    return False
                try:
                    return await self._copy_entry(entry)
                except S3Unreachable:
                    unreachable = True
                    return False

        return sum(await asyncio.gather(*(one(e) for e in entries)))

    async def _copy_entry(self, entry: _Entry) -> bool:
        """Copy one entry's blob; False if another copier has it. Raises S3Unreachable after noting it."""
        fd = await in_thread(_claim, entry.path)
        if fd is None:
            return False
        try:
            await copy_blob(self.local, self.s3, entry.digest)
        except Exception as e:
            await in_thread(os.close, fd)
            self._failed(entry, e)
            if isinstance(e, S3Unreachable):
                raise
            return False
        await in_thread(_done, entry.path, fd)
        self._failures.pop(entry.digest.hex, None)
        self.metrics.incr("s3.copy.done.count")
        if self._failing_since is not None:  # a copy went through: S3 takes them again
            log.info("copies to S3 succeed again (failing for %.0f s)", time.monotonic() - self._failing_since)
            self._failing_since = None
        return True

    def _failed(self, entry: _Entry, e: Exception) -> None:
        tries, _ = self._failures.get(entry.digest.hex, (0, 0.0))
        delay = min(self.retry_max, self.retry_min * 2**tries)
        self._failures[entry.digest.hex] = (tries + 1, time.monotonic() + delay)
        self.metrics.incr("s3.copy.failed.count")
        if isinstance(e, GoneLocally):
            log.error("queued copy of %s: %s", entry.digest, e)
        elif self._failing_since is None:
            # Once per stretch of failures (an outage fails every entry, again and again).
            self._failing_since = time.monotonic()
            log.warning("copy of %s to S3 failed (%s); queued copies are retried, backing off up to %.0f s",
                        entry.digest, e, self.retry_max)
        else:
            log.debug("copy of %s to S3 failed again (try %d): %s", entry.digest, tries + 1, e)


class GoneLocally(StoreError):
    """The blob to copy is not (or no longer correctly) in local storage."""


async def copy_blob(local: BlobStore, s3: S3Store, digest: Digest) -> Stored:
    """Copy one local blob to the bucket, verified by its sha; a Stored with created False if it was there already."""
    opened = await local.open(digest)
    if isinstance(opened, Missing):
        raise GoneLocally(f"{digest} is in no local storage")
    try:
        info = opened.info
        upload = await s3.begin(digest, info.size, info.meta)
        if isinstance(upload, Stored):
            return upload
        try:
            body = opened.body
            if isinstance(body, FileRegion) and body.data is not None:
                await upload.write(body.data)
            elif isinstance(body, FileRegion):
                offset, end = body.offset, body.offset + body.length
                while offset < end:
                    chunk = await in_thread(os.pread, body.fd, min(READ_CHUNK, end - offset), offset)
                    if not chunk:
                        raise GoneLocally(f"{info.location} is shorter than its {info.size} bytes")
                    offset += len(chunk)
                    await upload.write(chunk)
            else:
                async for chunk in body:
                    await upload.write(chunk)
            return await upload.commit()
        except DigestMismatch as e:
            await upload.abort()
            raise GoneLocally(f"{info.location} does not hash to its name ({e.actual}); not copied") from e
        except BaseException:
            await upload.abort()
            raise
    finally:
        opened.close()
