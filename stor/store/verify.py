"""Checking stored bytes against their sha: which reads are checked, hashing a file (at a set pace), and the error.

Used on the read path (integrity.verify_reads: a blob whose bytes do not
hash to its name is never delivered as a complete answer) and by scrub and
repair, which hash every copy (stor.store.copies).
"""

from __future__ import annotations

import hashlib
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
    """
    if uncached:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    hasher = hashlib.sha256()
    done = 0
    while done < length:
        chunk = os.pread(fd, min(HASH_CHUNK, length - done), done)
        if not chunk:
            break
        hasher.update(chunk)
        done += len(chunk)
        pacer.took(len(chunk))
    return hasher.hexdigest(), done
