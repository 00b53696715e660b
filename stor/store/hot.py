"""A layer that keeps small local blobs read lately in memory, with their file held open.

nginx's open_file_cache, plus the bytes. A small GET is mostly fixed cost,
and of stor's own share most is the path lookup, open, fstat, read and
close; a blob read again within seconds (what a pipeline re-checking a batch,
or a probe, does) is answered from here instead.

It never serves a blob that is gone: each hit checks, with one fstat of the
descriptor it holds, that the file still has a name (an unlinked or
replaced file has none), and a blob's bytes cannot change under its name
without ceasing to be that blob. Only blobs that the kernel could open and
read from its caches are taken in (BlobInfo.from_caches, and CACHED_ONLY
reads here), so the fstat never waits for a disk or a network file system.
Entries are closed after `seconds` even when idle, so that a storage disk
can be unmounted once reads stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections import OrderedDict
from dataclasses import dataclass

from stor.config import HotSettings
from stor.digest import Digest
from stor.store.base import (
    HOT,
    NO_BYTES,
    BlobInfo,
    BlobStore,
    FileRegion,
    Layer,
    Missing,
    OpenBlob,
)
from stor.store.fileaccess import CACHED_ONLY, WouldBlock
from stor.store.local import TIER as LOCAL


@dataclass(frozen=True, slots=True)
class _Entry:
    fd: int  # held open: its link count tells whether the file still has a name
    info: BlobInfo  # as a hit answers it (lookup HOT)
    whole: FileRegion  # the whole blob's bytes, without a descriptor: shared by every answer in flight
    expires: float


class HotBlobs:
    """The entries; touched only from the event loop thread."""

    def __init__(self, settings: HotSettings) -> None:
        self.max_entries = settings.blobs
        # The memory bound: a count alone would let a few large blobs take max_entries x max_blob_bytes.
        self.max_total_bytes = settings.total_bytes
        self.seconds = settings.seconds
        # The largest blob taken in; -1 when none is.
        self.takes_up_to = min(settings.max_blob_bytes, settings.total_bytes) if settings.blobs > 0 else -1
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.total_bytes = 0

    def get(self, digest: Digest) -> _Entry | None:
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
        return entry

    def wants(self, info: BlobInfo) -> bool:
        return info.from_caches and info.tier == LOCAL and info.size <= self.takes_up_to

    def admit(self, fd: int, info: BlobInfo, data: bytes) -> None:
        """Keep a blob just read whole from the kernel's caches; takes over its descriptor."""
        key = info.digest.hex
        if key in self._entries:
            self._drop(key)
        hit = dataclasses.replace(info, lookup=HOT)
        self._entries[key] = _Entry(fd, hit, FileRegion(-1, 0, info.size, data), time.monotonic() + self.seconds)
        self.total_bytes += info.size
        while len(self._entries) > self.max_entries or self.total_bytes > self.max_total_bytes:
            self._drop(next(iter(self._entries)))

    def expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            self._drop(key)

    def clear(self) -> None:
        for key in list(self._entries):
            self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self.total_bytes -= entry.info.size
        os.close(entry.fd)


class HotStore(Layer):
    """A layer answering reads of hot blobs from memory."""

    def __init__(self, inner: BlobStore, settings: HotSettings, verifying: bool = False) -> None:
        super().__init__(inner)
        self.hot = HotBlobs(settings)
        # With verified reads on, only bytes a read handed over are kept (a HEAD's, read here, were never checked).
        self.verifying = verifying
        self._expiring: asyncio.Task[None] | None = None

    async def head(self, digest: Digest, at: str | None = None) -> BlobInfo | Missing:
        entry = self.hot.get(digest)
        if entry is not None:
            return entry.info
        return await self.inner.head(digest, at)

    async def open(
        self, digest: Digest, span: tuple[int, int] | None = None, at: str | None = None
    ) -> OpenBlob | Missing:
        entry = self.hot.get(digest)
        if entry is not None:
            if span is None:
                return OpenBlob(entry.info, entry.whole)
            offset, length = span
            data = entry.whole.data
            assert data is not None
            return OpenBlob(entry.info, FileRegion(-1, offset, length, data[offset : offset + length]))
        opened = await self.inner.open(digest, span, at)
        if isinstance(opened, OpenBlob) and self.hot.wants(opened.info) and (span is None or span == NO_BYTES):
            self._take_in(opened)
        return opened

    def _take_in(self, opened: OpenBlob) -> None:
        """Admit a blob just opened from the kernel's caches, reading its bytes only if they are cached too.

        A HEAD (NO_BYTES) reads them here, so that the next HEAD is a hit; never from the
        disk, which a HEAD does not need.
        """
        region = opened.body
        # A region still to be checked (a verified read, FileRegion.check) is not kept: answers from memory
        # would skip its check. A blob read ahead was checked before it got here.
        if not isinstance(region, FileRegion) or region.fd < 0 or region.check is not None:
            return
        size = opened.info.size
        data = region.data if region.length == size else None
        if data is None:
            if self.verifying:
                return
            try:
                data = CACHED_ONLY.pread(region.fd, size, 0)
            except WouldBlock:
                return
        self.hot.admit(region.fd, opened.info, data)
        # The descriptor is the entry's now; the answer is served from the bytes.
        region.fd = -1
        if region.data is None and region.length:
            region.data = data

    async def start(self) -> None:
        await self.inner.start()
        self._expiring = asyncio.create_task(self._expire_forever())

    async def close(self) -> None:
        if self._expiring is not None:
            self._expiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiring
            self._expiring = None
        self.hot.clear()
        await self.inner.close()

    async def _expire_forever(self) -> None:
        """Close hot blobs' descriptors as they expire."""
        while True:
            await asyncio.sleep(self.hot.seconds / 2)
            self.hot.expire()
