"""Where blobs are: a location cache keyed by digest.

Only a location is ever cached, never an absence, so a blob written through
another node is found at once; the store checks every cached location before
trusting it, so a stale entry costs one failed open, never a wrong answer.

The memcached cache spreads keys over its servers by rendezvous hashing (a
server that goes away moves only its own keys) and treats an unreachable
server as a miss: requests go on through the disk lookup, the outage is
logged once, and the server is tried again after a short pause. pymemcache
is a blocking client, so every call runs in a worker thread, never on the
event loop. What a worker has itself read lately it keeps in memory in front
of this cache (LocalStore's recently read blobs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pymemcache.client.base import PooledClient
from pymemcache.client.rendezvous import RendezvousHash

from stor.aio import in_thread
from stor.digest import Digest
from stor.metrics import Metrics

log = logging.getLogger("stor.cache")

KEY_PREFIX = "stor:loc:"


@dataclass(frozen=True, slots=True)
class CacheServerHealth:
    server: str
    reachable: bool
    error: str | None = None


class LocationCache(Protocol):
    async def get(self, digest: Digest) -> str | None:
        """The storage directory last seen holding the blob, if known."""

    async def set(self, digest: Digest, directory: str) -> None: ...

    async def delete(self, digest: Digest) -> None: ...

    async def health(self) -> list[CacheServerHealth]:
        """Each cache server and whether it answers now."""


class NoLocationCache:
    """No memcached configured: every read looks the blob up on disk."""

    async def get(self, digest: Digest) -> str | None:
        return None

    async def set(self, digest: Digest, directory: str) -> None:
        return None

    async def delete(self, digest: Digest) -> None:
        return None

    async def health(self) -> list[CacheServerHealth]:
        return []


def parse_server(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    return (host, int(port)) if sep else (text, 11211)


class _Failed:
    """What a memcached call in a worker thread answers when it failed (after noting it on the server)."""


_FAILED = _Failed()


class _Server:
    """One memcached server, its connection pool and whether it is in an outage."""

    def __init__(self, name: str, timeout: float, retry_after: float, pool_size: int) -> None:
        self.name = name
        self.retry_after = retry_after
        self.client = PooledClient(
            parse_server(name),
            connect_timeout=timeout,
            timeout=timeout,
            no_delay=True,
            max_pool_size=pool_size,
            encoding="utf-8",
        )
        self.lock = threading.Lock()
        self.down_until = 0.0  # while in an outage: when to try again
        self.down = False

    def available(self) -> bool:
        return not self.down or time.monotonic() >= self.down_until

    def failed(self, error: Exception) -> None:
        with self.lock:
            first = not self.down
            self.down = True
            self.down_until = time.monotonic() + self.retry_after
        if first:
            log.warning("memcached %s unreachable (%s); serving from disk lookups until it is back", self.name, error)

    def succeeded(self) -> None:
        if self.down:
            with self.lock:
                was_down, self.down = self.down, False
            if was_down:
                log.warning("memcached %s reachable again", self.name)


class MemcachedLocationCache:
    def __init__(
        self,
        servers: Sequence[str],
        metrics: Metrics,
        timeout: float = 0.25,
        retry_after: float = 5.0,
        pool_size: int = 64,
    ) -> None:
        self.servers = {name: _Server(name, timeout, retry_after, pool_size) for name in servers}
        self.ring = RendezvousHash(list(self.servers))
        self.metrics = metrics

    async def get(self, digest: Digest) -> str | None:
        return await self._call(KEY_PREFIX + digest.hex, "get")

    async def set(self, digest: Digest, directory: str) -> None:
        await self._call(KEY_PREFIX + digest.hex, "set", directory)

    async def delete(self, digest: Digest) -> None:
        await self._call(KEY_PREFIX + digest.hex, "delete")

    async def health(self) -> list[CacheServerHealth]:
        return [await in_thread(self._probe, server) for server in self.servers.values()]

    async def _call(self, key: str, op: str, *args: str) -> str | None:
        server = self.servers[self.ring.get_node(key)]
        if not server.available():
            self.metrics.incr("cache.error")
            return None
        result = await in_thread(self._call_blocking, server, key, op, *args)
        if result is _FAILED:
            # Counted here, on the event loop: every metric event is (Prometheus's counts take no lock).
            self.metrics.incr("cache.error")
            return None
        return result

    def _call_blocking(self, server: _Server, key: str, op: str, *args: str) -> str | None | _Failed:
        try:
            if op == "get":
                raw = server.client.get(key)
                result = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            elif op == "set":
                server.client.set(key, args[0], noreply=False)
                result = None
            else:
                server.client.delete(key, noreply=False)
                result = None
        except Exception as e:  # a cache fault must never fail a request
            server.failed(e)
            return _FAILED
        server.succeeded()
        return result

    def _probe(self, server: _Server) -> CacheServerHealth:
        try:
            server.client.version()
        except Exception as e:
            server.failed(e)
            return CacheServerHealth(server.name, False, str(e) or type(e).__name__)
        server.succeeded()
        return CacheServerHealth(server.name, True)
