"""GET /status: 200 "OK" for probes; 503 naming every failing storage; JSON for dashboards."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from stor.aio import in_thread
from stor.metrics import Metrics
from stor.store.local import LocalStore


def health_routes(store: LocalStore, metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get("/status", include_in_schema=False)
    async def status(request: Request) -> Response:
        metrics.incr("healthcheck.count")
        states = await in_thread(store.storage_states)
        healthy = all(s.ok for s in states)
        code = 200 if healthy else 503
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(
                {
                    "status": "ok" if healthy else "failing",
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
                },
                status_code=code,
            )
        if healthy:
            return PlainTextResponse("OK")
        return PlainTextResponse("\n".join(p for s in states for p in s.problems), status_code=code)

    return router
