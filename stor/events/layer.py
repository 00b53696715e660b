"""A store layer that tells the event bus of every write, whichever door it came through: blob.created
or blob.duplicate (the blob was stored already; nothing was written)."""

from __future__ import annotations

from stor.digest import Digest
from stor.events.bus import EventBus
from stor.store.base import NO_META, BlobStore, Layer, StagedBytes, Stored, Upload, UploadLayer
from stor.store.metadata import BlobMeta


class AnnouncedStore(Layer):
    def __init__(self, inner: BlobStore, bus: EventBus) -> None:
        super().__init__(inner)
        self.bus = bus

    async def begin(
        self, expected: Digest | None, length: int | None, meta: BlobMeta = NO_META, staged: StagedBytes | None = None,
    ) -> Upload | Stored:
        upload = await self.inner.begin(expected, length, meta, staged)
        if isinstance(upload, Stored):
            self.announce(upload, length)
            return upload
        return _AnnouncedUpload(upload, self, staged.length if staged is not None else None)

    async def put(self, expected: Digest, data: bytes, meta: BlobMeta = NO_META) -> Stored:
        stored = await self.inner.put(expected, data, meta)
        self.announce(stored, len(data))
        return stored

    def announce(self, stored: Stored, size: int | None) -> None:
        self.bus.emit("blob.created" if stored.created else "blob.duplicate", stored.digest.hex, size)


class _AnnouncedUpload(UploadLayer):
    def __init__(self, upload: Upload, store: AnnouncedStore, staged: int | None) -> None:
        super().__init__(upload)
        self.store = store
        self.size = staged or 0

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        await self.inner.write(chunk)

    async def commit(self) -> Stored:
        stored = await self.inner.commit()
        self.store.announce(stored, self.size)
        return stored
