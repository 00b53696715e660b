"""GET /status: 200 "OK" for probes, 503 naming every failing storage, JSON for dashboards; GET /storages."""

from __future__ import annotations

from typing import Any

from stor.events.bus import EventBus
from stor.http import reply as replies
from stor.http.reply import Reply
from stor.http.request import Request
from stor.metrics import Metrics
from stor.resumable.uploads import ResumableUploads
from stor.store.base import BlobStore, Health, StorageState


class HealthEndpoint:
    def __init__(
        self, store: BlobStore, metrics: Metrics, uploads: ResumableUploads | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.uploads = uploads  # tus uploads in progress, shown in the JSON
        self.events = events  # where events go (the broker's state), shown in the JSON

    async def status(self, request: Request) -> Reply:
        health = await self.store.health()
        some_unwritable, none_writable = _writability(health.storages)
        s3_down = [s for s in health.services if s.kind == "s3" and not s.reachable]
        # S3 only speeds a node up or extends it while local storage serves; a node without local
        # storage serves nothing without it.
        healthy = all(s.ok for s in health.storages) and not none_writable and not (s3_down and not health.storages)
        if healthy:
            self.metrics.incr("healthcheck.count")  # as the original: counts healthy answers only
        code = 200 if healthy else 503
        if "application/json" in request.headers.get("accept", ""):
            # A cache only speeds reads up: without it the service is degraded, not failing.
            services_ok = all(s.reachable for s in health.services) and not some_unwritable
            return replies.json_reply(
                code,
                {
                    "status": "failing" if not healthy else "ok" if services_ok else "degraded",
                    "storages": [_storage(s) for s in health.storages],
                    "cache": [
                        {"server": s.name, "reachable": s.reachable, "error": s.error}
                        for s in health.services
                        if s.kind == "memcached"
                    ],
                    **_s3(health),
                    **(await self._uploads()),
                    **({"events": self.events.status()} if self.events is not None else {}),
                },
            )
        if healthy:
            return replies.text(200, "OK")
        problems = [p for s in health.storages for p in s.problems]
        problems += [f"Storage {s.path} cannot be written: {s.write_fault}" for s in health.storages if s.write_fault]
        problems += [f"S3 {s.name} unreachable: {s.error}" for s in s3_down]
        return replies.text(code, "\n".join(problems))

    async def _uploads(self) -> dict[str, Any]:
        if self.uploads is None:
            return {}
        try:
            progress = await self.uploads.progress()
        except OSError as e:
            return {"tus": {"directory": self.uploads.directory.path, "error": str(e)}}
        return {"tus": {"directory": self.uploads.directory.path, "uploads_in_progress": progress.uploads,
                        "bytes_in_progress": progress.bytes}}

    async def storages(self, request: Request) -> Reply:
        """The original's documented "list of storages and disk usage", as JSON (always 200: /status judges)."""
        health = await self.store.health()
        storages = [{**_storage(s), "total_bytes": s.total_bytes} for s in health.storages]
        return replies.json_reply(200, {"storages": storages})


def _writability(storages: tuple[StorageState, ...]) -> tuple[bool, bool]:
    """Whether a storage meant for writes cannot be written now, and whether no pair meant for writes can be.

    A node whose pairs are all read-only by configuration (writable_pairs_regex)
    takes no writes by design: that is not a fault.
    """
    meant = {s.pair for s in storages if s.writable or s.write_fault}
    able = {p for p in meant if all(s.writable for s in storages if s.pair == p)}
    return any(s.write_fault for s in storages), bool(meant) and not able


def _s3(health: Health) -> dict[str, Any]:
    """The S3 tier's part of /status, when there is one: the bucket's reachability and the copy queue."""
    buckets = [s for s in health.services if s.kind == "s3"]
    if not buckets:
        return {}
    queues = {q.name: {"depth": q.depth, "oldest_seconds": q.oldest_seconds, "error": q.error} for q in health.queues}
    bucket = buckets[0]
    return {"s3": {"bucket": bucket.name, "reachable": bucket.reachable, "error": bucket.error,
                   "copy_queue": queues.get("s3-copy")}}


def _storage(state: StorageState) -> dict[str, Any]:
    """A storage as /status reports it."""
    return {
        "path": state.path,
        "pair": state.pair,
        "writable": state.writable,
        "write_fault": state.write_fault,
        "ok": state.ok,
        "problems": list(state.problems),
        "free_bytes": state.free_bytes,  # available to stor (statvfs f_bavail), as placement counts it
    }
