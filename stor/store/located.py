"""A layer that remembers where blobs are: in this worker (an LRU), then in memcached, shared by all nodes.

A read asks the backend at the remembered storage first (one open instead
of a probe of every directory), and falls back to a full look-up when the
blob is not there any more. Only a location is ever remembered, never an
absence (DESIGN.md invariant 5), so a blob written through another node is
found at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from stor.cache import LocationCache, NoLocationCache
from stor.digest import Digest
from stor.lru import LRU
from stor.store.base import (
    BlobInfo,
    BlobStore,
    Health,
    Layer,
    Missing,
    OpenBlob,
    ServiceState,
    Stored,
    StagedBytes,
    Upload,
    UploadLayer,
)
from stor.store.metadata import NO_META, BlobMeta

Found = TypeVar("Found", BlobInfo, OpenBlob)


class LocatedStore(Layer):
    """A layer asking its backend at remembered locations first."""

    def __init__(self, inner: BlobStore, cache: LocationCache, local_size: int) -> None:
        super().__init__(inner)
        self.cache = cache
        # None when there is no shared cache: a miss then costs no call to one that knows nothing.
        self._shared = None if isinstance(cache, NoLocationCache) else cache
        self._recent: LRU[str, str] = LRU(local_size)

    def head(self, digest: Digest, at: str | None = None) -> Awaitable[BlobInfo | Missing]:
        if at is not None:
            return self.inner.head(digest, at)
        return self._located(digest, lambda where: self.inner.head(digest, where), _info_of_info)

    def open(
        self, digest: Digest, span: tuple[int, int] | None = None, at: str | None = None
    ) -> Awaitable[OpenBlob | Missing]:
        if at is not None:
            return self.inner.open(digest, span, at)
        return self._located(digest, lambda where: self.inner.open(digest, span, where), _info_of_open)

    async def _located(
        self,
        digest: Digest,
        ask: Callable[[str | None], Awaitable[Found | Missing]],
        info_of: Callable[[Found], BlobInfo],
    ) -> Found | Missing:
        where = self._recent.get(digest.hex)
        if where is not None:
            found = await ask(where)
            if not isinstance(found, Missing):
                return found
            self._recent.drop(digest.hex)
        shared = self._shared
        where = await shared.get(digest) if shared is not None else None
        if where is not None:
            found = await ask(where)
            if not isinstance(found, Missing):
                self._recent.put(digest.hex, info_of(found).storage)
                return found
            await shared.delete(digest)  # type: ignore[union-attr]
        found = await ask(None)
        if isinstance(found, Missing):
            return found
        info = info_of(found)
        self._recent.put(digest.hex, info.storage)
        if shared is not None:
            await shared.set(digest, info.storage)
        return found

    async def begin(
        self, expected: Digest | None, length: int | None, meta: BlobMeta = NO_META, staged: StagedBytes | None = None,
    ) -> Upload | Stored:
        upload = await self.inner.begin(expected, length, meta, staged)
        if isinstance(upload, Stored):
            return upload
        return _RememberingUpload(upload, self)

    async def put(self, expected: Digest, data: bytes, meta: BlobMeta = NO_META) -> Stored:
        return await self.remember(await self.inner.put(expected, data, meta))

    async def remember(self, stored: Stored) -> Stored:
        """A blob just written: where it is now is known."""
        if stored.created and stored.storage is not None and self._shared is not None:
            await self._shared.set(stored.digest, stored.storage)
        return stored

    async def delete(self, digest: Digest) -> tuple[str, ...]:
        removed = await self.inner.delete(digest)
        self._recent.drop(digest.hex)
        if self._shared is not None:
            await self._shared.delete(digest)
        return removed

    async def health(self) -> Health:
        inner = await self.inner.health()
        servers = await self.cache.health()
        memcached = tuple(ServiceState("memcached", s.server, s.reachable, s.error) for s in servers)
        return Health(inner.storages, inner.services + memcached)

class _RememberingUpload(UploadLayer):
    def __init__(self, upload: Upload, store: LocatedStore) -> None:
        super().__init__(upload)
        self.store = store

    async def commit(self) -> Stored:
        return await self.store.remember(await self.inner.commit())


def _info_of_info(info: BlobInfo) -> BlobInfo:
    return info


def _info_of_open(opened: OpenBlob) -> BlobInfo:
    return opened.info
