"""Checking stored bytes against their sha: which reads are checked, hashing a file (at a set pace), and the error.

Used on the read path (integrity.verify_reads: a blob whose bytes do not
hash to its name is never delivered as a complete answer) and by scrub and
repair, which hash every copy (stor.store.copies).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import random
import threading
import time

from stor.digest import Digest
from stor.store.base import StoreError

# Bytes read per call while hashing: large enough that the call costs nothing per byte,
# small enough that a paced scrub's pauses stay short.
HASH_CHUNK = 1 << 20


class CorruptBlob(StoreError):
    """No copy of the blob that a read could use hashes to its sha (each bad one was reported for repair)."""

    def __init__(self, digest: Digest, detail: str) -> None:
        super().__init__(f"{digest}: {detail}")
        self.digest = digest


class ReadVerification:
    """Which whole-blob reads are hashed before their last byte goes out: none (0), a fraction, or all (1)."""

    def __init__(self, fraction: float, rng: random.Random | None = None) -> None:
        self.fraction = fraction
        self.rng = rng or random.Random()

    def __bool__(self) -> bool:
        return self.fraction > 0

    def wanted(self) -> bool:
        fraction = self.fraction
        return fraction >= 1.0 or (fraction > 0.0 and self.rng.random() < fraction)


OFF = ReadVerification(0.0)


class Pacer:
    """At most `rate` bytes a second, over every thread that reads through it (None: no limit).

    Each caller reports what it read and sleeps until that is within the
    rate, so the bytes read by a run, divided by its time, are the rate.
    A pause (a run that found nothing to read for a while) earns no burst
    of more than BURST seconds' worth.
    """

    BURST = 0.1

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._due: float | None = None
        self._lock = threading.Lock()

    def took(self, nbytes: int) -> None:
        rate = self.rate
        if rate is None or nbytes <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = now if self._due is None else max(self._due, now - self.BURST)
            self._due = due = start + nbytes / rate
        if due > now:
            time.sleep(due - now)


UNPACED = Pacer(None)


def hash_fd(fd: int, length: int, pacer: Pacer = UNPACED, uncached: bool = False) -> tuple[str, int]:
    """The hex SHA-256 of the first `length` bytes of fd (to its end, if shorter), and how many there were (blocking).

    uncached: the file's pages are dropped from the page cache first, so
    that the bytes come from the disk again (a re-read after a mismatch
    must not hash the same cached, possibly bad, pages).

    Reads are of whole blocks into an aligned buffer, as a descriptor set
    to read from the disk (read_from_disk) wants; bytes past `length` are
    not hashed.
    """
    if uncached:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    hasher = hashlib.sha256()
    buffer = _buffer()
    done = 0
    while done < length:
        wanted = min(HASH_CHUNK, length - done)
        n = os.preadv(fd, [buffer[: -(-wanted // DISK_BLOCK) * DISK_BLOCK]], done)
        if not n:
            break
        used = min(n, wanted)
        hasher.update(buffer[:used])
        done += used
        pacer.took(used)
        if n % DISK_BLOCK:
            break  # ended inside a block: the end of the file (and a read from the disk may not start there)
    return hasher.hexdigest(), done


def read_from_disk(fd: int) -> bool:
    """fd's reads from now on come from the disk, not the page cache, and leave the cache as it was (O_DIRECT).

    What a scrub wants: the bytes on the disk checked (not a cached copy of
    them), and the service's cached hot blobs not evicted by a pass over the
    whole storage. False, and fd unchanged, on a filesystem that cannot.
    """
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
    except OSError:
        return False
    return True


# A read from the disk (O_DIRECT) is of whole blocks, into memory aligned to them: 4 KiB covers the
# disks' logical blocks (512 B or 4 KiB), and the buffer is page-aligned (mmap).
DISK_BLOCK = 4096

_buffers = threading.local()


def _buffer() -> memoryview:
    """This thread's read buffer: one allocation per thread, not one (of up to HASH_CHUNK) per read."""
    try:
        return _buffers.view
    except AttributeError:
        _buffers.view = memoryview(mmap.mmap(-1, HASH_CHUNK))
        return _buffers.view
