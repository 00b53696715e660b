"""Where blobs are: a location cache keyed by digest.

Only a location is ever cached, never an absence, so a blob written through
another node is found at once; the store checks every cached location before
trusting it. The memcached-backed implementation plugs in behind this seam.
"""

from __future__ import annotations

from typing import Protocol

from stor.digest import Digest


class LocationCache(Protocol):
    async def get(self, digest: Digest) -> str | None:
        """The storage directory last seen holding the blob, if known."""

    async def set(self, digest: Digest, directory: str) -> None: ...

    async def delete(self, digest: Digest) -> None: ...


class NoLocationCache:
    """The embedded default: every read looks the blob up on disk."""

    async def get(self, digest: Digest) -> str | None:
        return None

    async def set(self, digest: Digest, directory: str) -> None:
        return None

    async def delete(self, digest: Digest) -> None:
        return None
