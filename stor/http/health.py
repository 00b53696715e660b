"""GET /status: 200 "OK" for probes; 503 naming every failing storage; JSON for dashboards."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from stor.aio import in_thread
from stor.cache import LocationCache
from stor.metrics import Metrics
from stor.store.local import LocalStore


def health_routes(store: LocalStore, cache: LocationCache, metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get("/status", include_in_schema=False)
    async def status(request: Request) -> Response:
        states = await in_thread(store.storage_states)
        healthy = all(s.ok for s in states)
        if healthy:
            metrics.incr("healthcheck.count")  # as the original: counts healthy answers only
        code = 200 if healthy else 503
        if "application/json" in request.headers.get("accept", ""):
            # The cache only speeds reads up: without it the service is degraded, not failing.
            cache_servers = await cache.health()
            cache_ok = all(c.reachable for c in cache_servers)
            return JSONResponse(
                {
                    "status": "failing" if not healthy else "ok" if cache_ok else "degraded",
                    "storages": [
                        {
                            "path": str(s.directory),
                            "pair": s.pair,
                            "writable": s.writable,
                            "ok": s.ok,
                            "problems": list(s.problems),
                            "free_bytes": s.free_bytes,
                        }
                        for s in states
                    ],
                    "cache": [
                        {"server": c.server, "reachable": c.reachable, "error": c.error} for c in cache_servers
                    ],
                },
                status_code=code,
            )
        if healthy:
            return PlainTextResponse("OK")
        return PlainTextResponse("\n".join(p for s in states for p in s.problems), status_code=code)

    return router
