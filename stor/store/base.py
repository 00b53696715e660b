"""What every storage backend offers, and the errors it speaks in."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from stor.digest import Digest
from stor.store.metadata import BlobMeta


class StoreError(Exception):
    """A fault in the storage itself: the service answers 5xx and logs it."""


class NoSpace(StoreError):
    """No writable pair can hold the blob, before or during the write."""


class DigestMismatch(Exception):
    """The uploaded bytes do not hash to the digest they were posted under."""

    def __init__(self, expected: Digest, actual: str) -> None:
        super().__init__(f"Content sha256 {actual} doesn't match given sha256 {expected.hex}")
        self.expected = expected
        self.actual = actual


class TooLarge(Exception):
    """The upload is larger than the configured maximum blob size."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Blob larger than the limit of {limit} bytes")
        self.limit = limit


@dataclass(slots=True)
class OpenBlob:
    """A blob opened for reading: the descriptor stays valid even if the file is replaced."""

    digest: Digest
    fd: int
    size: int
    mtime: float
    location: str  # the full path (or URI) it was read from
    storage: str  # the storage it came from, for metrics
    data: bytes | None = None  # the whole content when read ahead; the descriptor is then closed
    meta: BlobMeta = field(default_factory=BlobMeta)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True, slots=True)
class PutResult:
    created: bool  # False: the blob was already complete and the body was not read
    locations: list[str] = field(default_factory=list)


class BlobStore(Protocol):
    """One small interface for every backend (local mirrored pairs, S3, a tier of both)."""

    async def open(self, digest: Digest) -> OpenBlob | None:
        """The blob opened for reading, or None when this backend does not have it."""

    async def put(
        self,
        digest: Digest,
        body: AsyncIterator[bytes],
        length: int | None,
        meta: BlobMeta = BlobMeta(),
        body_on_its_way: bool = False,
    ) -> PutResult:
        """Store the body under digest, verifying it; the body is consumed only if needed.

        body_on_its_way: the client is sending the body whatever the answer
        (no Expect: 100-continue), so reading a small one early wastes nothing.
        """

    async def contains(self, digests: list[Digest]) -> list[bool]:
        """Whether each blob is stored, in one round trip."""
