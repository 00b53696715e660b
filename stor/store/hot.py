"""Small blobs read lately, kept in memory with their file held open.

nginx's open_file_cache, plus the bytes. A small GET is mostly fixed cost,
and of stor's own share most is the path lookup, open, fstat, read and
close; a blob read again within seconds (what a pipeline re-checking a batch,
or a probe, does) is answered from here instead.

It never serves a blob that is gone: each hit checks, with one fstat of the
descriptor it holds, that the file still has a name (an unlinked or
replaced file has none), and a blob's bytes cannot change under its name
without ceasing to be that blob. Only blobs that the kernel could open and
read from its caches (CACHED_ONLY) are taken in, so the fstat never waits for
a disk or a network file system. Entries are closed after `seconds` even when
idle, so that a storage disk can be unmounted once reads stop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from dataclasses import dataclass

from stor.digest import Digest
from stor.store.base import OpenBlob

@dataclass(frozen=True, slots=True)
class _Entry:
    fd: int  # held open: its link count tells whether the file still has a name
    blob: OpenBlob  # what get() answers, shared: it has no descriptor, so closing it does nothing
    expires: float


class HotBlobs:
    """Touched only from the event loop thread."""

    def __init__(self, max_entries: int, max_blob_bytes: int, max_total_bytes: int, seconds: float) -> None:
        self.max_entries = max_entries
        self.max_blob_bytes = max_blob_bytes
        # The memory bound: a count alone would let a few large blobs take max_entries x max_blob_bytes.
        self.max_total_bytes = max_total_bytes
        self.seconds = seconds
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.total_bytes = 0

    @property
    def takes_up_to(self) -> int:
        """The largest blob admit() keeps; -1 when it keeps none."""
        return min(self.max_blob_bytes, self.max_total_bytes) if self.max_entries > 0 else -1

    def get(self, digest: Digest) -> OpenBlob | None:
        entry = self._entries.get(digest.hex)
        if entry is None:
            return None
        try:
            alive = os.fstat(entry.fd).st_nlink > 0 and entry.expires > time.monotonic()
        except OSError:
            alive = False
        if not alive:
            self._drop(digest.hex)
            return None
        return entry.blob

    def admit(self, blob: OpenBlob) -> None:
        """Keep a blob just read whole from the kernel's caches; takes over its descriptor."""
        if blob.data is None or blob.fd < 0 or blob.size > self.takes_up_to:
            return
        key = blob.digest.hex
        if key in self._entries:
            self._drop(key)
        shared = OpenBlob(blob.digest, -1, blob.size, blob.mtime, blob.location, blob.storage, blob.data, blob.meta)
        self._entries[key] = _Entry(blob.fd, shared, time.monotonic() + self.seconds)
        self.total_bytes += blob.size
        blob.fd = -1
        while len(self._entries) > self.max_entries or self.total_bytes > self.max_total_bytes:
            self._drop(next(iter(self._entries)))

    def expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            self._drop(key)

    async def expire_forever(self) -> None:
        while True:
            await asyncio.sleep(self.seconds / 2)
            self.expire()

    def clear(self) -> None:
        for key in list(self._entries):
            self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self.total_bytes -= entry.blob.size
        os.close(entry.fd)
