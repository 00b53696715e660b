"""The ASGI application: wires settings, store, cache, metrics and auth together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from stor import __version__
from stor import aio
from stor.aio import in_thread
from stor.cache import LocationCache, MemcachedLocationCache, NoLocationCache
from stor.config import Settings, load_settings
from stor.http import filesend, front
from stor.http.auth import Authenticator
from stor.http.blobs import BlobEndpoint
from stor.http.exists import exists_routes
from stor.http.health import health_routes
from stor.http.rsgi import RsgiApp
from stor.metrics import Metrics, MetricsSink, StatsdSink
from stor.store import tempfiles
from stor.store.local import LocalStore

log = logging.getLogger("stor")


def create_app(settings: Settings) -> ASGIApp:
    """The ASGI application, for uvicorn; its blob reads are answered by stor's protocol (stor.http.front)."""
    app = Application(settings)
    front.install(front.BlobReads(app.blobs, app.record, BLOB_ROUTE))
    return app.asgi


def create_rsgi_app(settings: Settings) -> RsgiApp:
    """The RSGI application (granian): the blob routes directly, everything else through the ASGI one."""
    app = Application(settings)
    return RsgiApp(
        app.asgi,
        app.blobs,
        is_blob_path=app.dispatch.is_blob_path,
        startup=app.startup,
        shutdown=app.shutdown,
        record=app.record,
        blob_route=BLOB_ROUTE,
    )


class Application:
    """settings, store, cache, metrics and auth wired together, with the work to do at start-up and shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        metrics = Metrics(_metric_sinks(settings))
        cache = _location_cache(settings, metrics)
        self.store = store = LocalStore(settings, cache=cache, metrics=metrics)
        auth = Authenticator(settings)
        if not settings.has_writer:
            log.warning("no writer configured (basic_auth or a user with role write): every upload will be refused")
        if settings.s3_enabled:
            log.warning("s3_enabled is set, but this version serves local storage only; the S3 tier is not read")
        if settings.rabbitmq_uri:
            log.warning("rabbitmq_uri is set, but publishing requested shas to RabbitMQ is not supported; ignored")
        self._background: list[asyncio.Task[None]] = []

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            await self.startup()
            try:
                yield
            finally:
                await self.shutdown()

        app = FastAPI(title="stor", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

        @app.get("/", include_in_schema=False)
        async def index() -> PlainTextResponse:
            return PlainTextResponse(f"This is Stor {__version__}")

        app.include_router(health_routes(store, cache, metrics))
        app.include_router(exists_routes(store, auth, settings.exists_max_items))
        fixed_paths = {"/", "/status", "/exists"}
        self.traffic = None
        if settings.prometheus.enabled:
            from stor import prometheus

            @app.get(settings.prometheus.path, include_in_schema=False)
            async def metrics_endpoint() -> Response:
                prometheus.DEFERRED.flush()  # this worker's counts are current; the others' at most FLUSH_SECONDS old
                body, content_type = await in_thread(prometheus.render, settings.storage_dirs)
                return Response(body, media_type=content_type)

            fixed_paths.add(settings.prometheus.path)
            self.traffic = prometheus.HttpTraffic()
        self.blobs = BlobEndpoint(store, auth, metrics)
        self.dispatch = BlobDispatch(self.blobs, app, fixed_paths)
        self.asgi: ASGIApp = self.dispatch
        if self.traffic is not None:
            self.asgi = prometheus.HttpMetricsMiddleware(self.dispatch, self.dispatch.route, self.traffic)

    @property
    def record(self) -> Callable[[str, str, int, float, int, int], None] | None:
        """What a front that answers blob requests itself reports each one to (Prometheus), if anything."""
        return self.traffic.record if self.traffic is not None else None

    async def startup(self) -> None:
        aio.configure(self.settings.io_threads)
        filesend.configure(self.settings.io_threads)
        self._background.append(asyncio.create_task(_sweep_forever(self.settings)))
        self._background.append(asyncio.create_task(self.store.expire_forever()))
        if self.settings.prometheus.enabled:
            from stor.prometheus import DEFERRED

            self._background.append(asyncio.create_task(DEFERRED.flush_forever()))
        # Half a million objects live from start-up to exit (the frameworks, the configuration):
        # out of the collector's sight, each collection scans only what requests allocate.
        gc.freeze()

    async def shutdown(self) -> None:
        for task in self._background:
            task.cancel()
        self._background.clear()
        self.store.close()
        if self.settings.prometheus.enabled:
            from stor.prometheus import DEFERRED

            DEFERRED.flush()


BLOB_ROUTE = "/{sha}"


class BlobDispatch:
    """Single-segment paths (/<sha>) go straight to the blob endpoint; the rest to FastAPI.

    The blob paths are the hot path: skipping the framework's router and
    request machinery for them is most of what a small GET costs.
    """

    def __init__(self, blobs: ASGIApp, rest: ASGIApp, fixed_paths: set[str]) -> None:
        self.blobs = blobs
        self.rest = rest
        self.fixed_paths = frozenset(fixed_paths)

    def is_blob_path(self, path: str) -> bool:
        return path.rfind("/") == 0 and path not in self.fixed_paths

    def route(self, path: str) -> str:
        """The route a path takes: a fixed path itself, BLOB_ROUTE, or "other"."""
        if path in self.fixed_paths:
            return path
        return BLOB_ROUTE if path.rfind("/") == 0 else "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.is_blob_path(scope["path"]):
            await self.blobs(scope, receive, send)
            return
        await self.rest(scope, receive, send)


def _metric_sinks(settings: Settings) -> list[MetricsSink]:
    sinks: list[MetricsSink] = []
    if settings.statsite is not None:
        sinks.append(StatsdSink(settings.statsite))
    if settings.prometheus.enabled:
        from stor.prometheus import PrometheusSink

        sinks.append(PrometheusSink())
    return sinks


def _location_cache(settings: Settings, metrics: Metrics) -> LocationCache:
    if not settings.memcached_servers:
        return NoLocationCache()
    return MemcachedLocationCache(
        settings.memcached_servers,
        metrics,
        timeout=settings.memcached_timeout,
        retry_after=settings.memcached_retry_after,
    )


async def _sweep_forever(settings: Settings) -> None:
    """Remove temporary files left by crashed uploads: now, then every cleanup_tempdir_period."""
    while True:
        try:
            removed = await in_thread(tempfiles.sweep, settings.storage_dirs, settings.tempfile_max_age)
            if removed:
                log.info("swept %d stale upload temporary files", removed)
        except Exception:
            log.exception("temporary file sweep failed")
        await asyncio.sleep(settings.cleanup_tempdir_period)


def create_app_from_env() -> ASGIApp:
    """The uvicorn factory: settings from $CONFIG_FILE, else the embedded default."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(load_settings())


def create_rsgi_app_from_env() -> RsgiApp:
    """The granian factory: settings from $CONFIG_FILE, else the embedded default."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_rsgi_app(load_settings())
