"""The application: settings, store and its layers, auth, metrics and routes wired together."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from typing import TYPE_CHECKING

from stor import __version__, aio, prometheus
from stor.cache import LocationCache, MemcachedLocationCache, NoLocationCache
from stor.config import NO_FAST_PATH_ENV, S3_PORT_ENV, Settings, load_settings, with_fast_path, with_s3_port
from stor.events.bus import EventBus
from stor.events.layer import AnnouncedStore
from stor.http import filesend, front
from stor.http import reply as replies
from stor.http.asgi import AsgiApp
from stor.http.auth import Authenticator
from stor.http.blobs import BlobEndpoint
from stor.http.exists import ExistsEndpoint
from stor.http.health import HealthEndpoint
from stor.http.reply import Reply
from stor.http.request import Request
from stor.http.routes import BLOB_ROUTE, Routes, route
from stor.http.scrape import ScrapeEndpoint
from stor.http.service import HttpService
from stor.http.tus import TusEndpoint
from stor.metrics import Metrics, MetricsSink, StatsdSink
from stor.resumable.uploads import ResumableUploads
from stor.store.base import BlobStore
from stor.store.heal import HealQueue
from stor.store.hot import HotStore
from stor.store.local import LocalStore
from stor.store.located import LocatedStore
from stor.store.metered import MeteredStore
from stor.store.verify import ReadVerification

if TYPE_CHECKING:
    from stor.store.tier import TieredStore

log = logging.getLogger("stor")

def create_app(settings: Settings) -> AsgiApp:
    """The ASGI application for uvicorn; with the fast path on, this worker's protocol answers blob reads too."""
    app = Application(settings)
    front.install(app.service if settings.http.fast_path else None, settings.http, app.services)
    return app.asgi


def create_app_from_env() -> AsgiApp:
    """The uvicorn factory: settings from $CONFIG_FILE, else the embedded default."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    if os.environ.get(NO_FAST_PATH_ENV):
        settings = with_fast_path(settings, False)
    if os.environ.get(S3_PORT_ENV):
        settings = with_s3_port(settings, int(os.environ[S3_PORT_ENV]))
    return create_app(settings)


def build_store(settings: Settings, metrics: Metrics) -> tuple[BlobStore, HealQueue | None]:
    """The local backend with its layers (metrics outermost, then hot blobs, then remembered locations),
    and with the S3 tier on, the bucket (with its metrics) and the local one composed by the tier; and the
    queue of repairs the local backend's reads ask for (none without local storage)."""
    local: BlobStore | None = None
    located: BlobStore | None = None
    heal: HealQueue | None = None
    if settings.storage_pairs:
        integrity = settings.integrity
        raw_local = LocalStore(
            settings.storage_pairs,
            settings.writable_pairs_regex,
            settings.storage,
            settings.uploads,
            settings.cleanup_tempdir_period,
            verify=ReadVerification(integrity.verify_reads),
        )
        # A repair holds an I/O thread while it runs (and, restoring from S3, waits on others): at most half.
        concurrency = min(integrity.heal_concurrency, max(1, settings.storage.io_threads // 2))
        heal = HealQueue(raw_local, integrity.heal_queue, concurrency, metrics, integrity.heal)
        located = LocatedStore(raw_local, _location_cache(settings, metrics), settings.cache.local_size)
        local = MeteredStore(HotStore(located, settings.hot, verifying=integrity.verify_reads > 0), metrics)
    if not settings.s3_tier:
        assert local is not None  # the configuration allows no pairs only with the S3 tier
        return local, heal
    return build_tier(settings, metrics, local, located, heal), heal


def build_tier(
    settings: Settings, metrics: Metrics, local: BlobStore | None, located: BlobStore | None,
    heal: HealQueue | None = None,
) -> TieredStore:
    # Imported here: a node without the S3 tier never loads the S3 client.
    from stor.store.copyqueue import CopyQueue
    from stor.store.s3 import S3Store
    from stor.store.tier import S3Outage, TieredStore

    s3_settings = settings.s3
    assert settings.s3_credentials is not None and settings.s3_endpoint is not None
    bucket = S3Store(
        s3_settings, settings.s3_endpoint, settings.s3_credentials, settings.uploads.max_blob_bytes,
        ReadVerification(1.0 if s3_settings.verify_reads else settings.integrity.verify_reads),
    )
    if heal is not None:
        heal.bucket = bucket  # a blob no local copy of which is good is restored from it
    queue = None
    if s3_settings.write_mode == "local+s3" and located is not None:
        # Copies read local blobs through remembered locations only, and write to the bare bucket:
        # a copy is no client's read or upload, and is counted as a copy (s3.copy.*).
        queue = CopyQueue(
            settings.storage_dirs, located, bucket, s3_settings.copy_retry_min, s3_settings.copy_retry_max,
            s3_settings.copy_concurrency, metrics,
        )
    tier = TieredStore(
        MeteredStore(bucket, metrics, tier="s3"), local, s3_settings, queue, S3Outage(s3_settings.retry_after, metrics),
        metrics,
    )
    bucket.on_corrupt = tier.object_corrupt
    return tier


class Application:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        metrics = Metrics(_metric_sinks(settings))
        store, self.heal = build_store(settings, metrics)
        # Events (RabbitMQ as the original, webhooks): a bus per worker, and a layer that tells it of writes.
        self.events: EventBus | None = None
        if settings.amqp is not None or settings.events.webhooks or settings.events.pre_upload_hook:
            self.events = EventBus(settings, metrics)
            if settings.amqp is not None or settings.events.webhooks:  # somewhere to send what writes do
                store = AnnouncedStore(store, self.events)
            if self.heal is not None:
                self.heal.events = self.events
        # Asked before an upload is taken, by every door that takes one.
        self.upload_hook = self.events.hook if self.events is not None else None
        self.store = store
        auth = Authenticator(settings.basic_auth, settings.auth)
        if settings.memcached_servers and not settings.storage_pairs:
            log.info("memcached_servers: not used: it remembers where local blobs are, and this node has none")
        if not settings.has_writer:
            log.warning("no writer configured (basic_auth or a user with role write): every upload will be refused")
        if settings.s3_enabled:
            log.info("S3 tier: %s bucket %s, reads %s, writes %s%s", settings.s3_endpoint, settings.s3.bucket,
                     settings.s3.read_order, settings.s3.write_mode, ", verified" if settings.s3.verify_reads else "")
        if settings.integrity.verify_reads:
            log.info("verified reads: %s of whole-blob reads are checked against their sha",
                     "all" if settings.integrity.verify_reads >= 1 else f"{settings.integrity.verify_reads:.0%}")
        self._background: list[asyncio.Task[None]] = []

        # The route table: a new endpoint is a handler and one line here.
        routes = Routes()
        self.resumable = self._resumable(store, metrics)
        if self.resumable is not None:
            self.resumable.events = self.events
        health = HealthEndpoint(store, metrics, self.resumable, self.events)
        routes.add_fixed("/", route("/", get=_index))
        routes.add_fixed("/status", route("/status", get=health.status))
        routes.add_fixed("/storages", route("/storages", get=health.storages))
        routes.add_fixed("/exists", route("/exists", post=ExistsEndpoint(store, auth, settings.http.exists_max_items).exists))
        traffic = None
        if settings.metrics.prometheus.enabled:
            path = settings.metrics.prometheus.path
            copy_queue = settings.s3_tier and settings.s3.write_mode == "local+s3"
            routes.add_fixed(path, route(path, get=ScrapeEndpoint(settings.storage_dirs, copy_queue).scrape))
            traffic = prometheus.HttpTraffic()
        blobs = BlobEndpoint(store, auth, metrics, settings.uploads, self.events)
        routes.add_blob(route(BLOB_ROUTE, get=blobs.read, post=blobs.write, put=blobs.write, fast=True))
        if self.resumable is not None:
            tus = TusEndpoint(self.resumable, auth, settings.tus, settings.uploads.max_blob_bytes,
                              self.upload_hook)
            base = settings.tus.path
            handlers = {
                "post": tus.post, "head": tus.head, "patch": tus.patch, "delete": tus.delete, "options": tus.options,
            }
            routes.add_fixed(base[:-1], route(base[:-1], **handlers))
            routes.add_prefix(base, route(f"{base}...", **handlers))

        self.service = HttpService(routes, traffic, steps_inline=not settings.s3_tier)
        # Other listeners' services, by port: the S3 API's.
        self.services: dict[int, HttpService] = {}
        self.multipart = None
        if settings.s3_api.enabled:
            self.services[settings.s3_api.port] = self._s3_api(store, metrics, traffic)
        self.asgi = AsgiApp(self.service, self.startup, self.shutdown, settings.http.body_timeout, self.services)

    def _s3_api(self, store: BlobStore, metrics: Metrics, traffic: prometheus.HttpTraffic | None) -> HttpService:
        """The S3 API's service: one route, every path (S3 addresses by host, path and query)."""
        # Imported here: a node without the S3 API never loads it (nor botocore's signer).
        from stor.resumable.multipart import MultipartUploads
        from stor.s3api.api import s3_endpoint

        settings = self.settings
        s3 = settings.s3_api
        directory = settings.multipart_directory
        if directory is not None:
            self.multipart = MultipartUploads(
                directory, store, s3, settings.uploads.max_blob_bytes, metrics, settings.storage_dirs
            )
        else:
            log.info("S3 API: no multipart uploads (no local storage to keep their parts; set "
                     "s3_api.multipart_directory)")
        if not s3.access_keys:
            log.warning("S3 API: no access_keys configured: every signed request will be refused%s",
                        "; anonymous reads are allowed" if s3.anonymous_read else "")
        endpoint = s3_endpoint(store, s3, settings.uploads, self.multipart,
                               self.upload_hook)
        routes = Routes()
        routes.add_prefix("/", route("s3", get=endpoint.answer, post=endpoint.answer, put=endpoint.answer,
                                     fast=True, delete=endpoint.answer, options=endpoint.answer))
        return HttpService(routes, traffic, steps_inline=not settings.s3_tier)

    def _resumable(self, store: BlobStore, metrics: Metrics) -> ResumableUploads | None:
        settings = self.settings
        directory = settings.tus_directory
        if directory is None:
            if settings.tus.enabled:
                log.info("tus: off (no local storage to keep uploads in progress; set tus.directory)")
            return None
        return ResumableUploads(
            directory, store, settings.tus, settings.uploads.max_blob_bytes, metrics, settings.storage_dirs
        )

    async def startup(self) -> None:
        aio.configure(self.settings.storage.io_threads)
        filesend.configure(self.settings.storage.io_threads, self.settings.http.send_timeout)
        await self.store.start()
        if self.events is not None:
            self.events.start()
        if self.heal is not None:
            self.heal.start()
        if self.resumable is not None:
            self.resumable.start()
        if self.multipart is not None:
            self.multipart.start()
        if self.settings.s3_tier:
            _fixed_mmap_threshold()
        if self.settings.metrics.prometheus.enabled:
            self._background.append(asyncio.create_task(prometheus.DEFERRED.flush_forever()))
        # Half a million objects live from start-up to exit (the frameworks, the configuration):
        # out of the collector's sight, each collection scans only what requests allocate.
        gc.freeze()

    async def shutdown(self) -> None:
        for task in self._background:
            task.cancel()
        self._background.clear()
        if self.resumable is not None:
            await self.resumable.close()
        if self.multipart is not None:
            await self.multipart.close()
        if self.heal is not None:
            await self.heal.close()
        if self.events is not None:
            await self.events.close()
        await self.store.close()
        if self.settings.metrics.prometheus.enabled:
            prometheus.DEFERRED.flush()


def _fixed_mmap_threshold() -> None:
    """Allocations of 1 MiB and more straight from mmap, and back to the system when freed.

    glibc raises its mmap threshold each time such a block is freed, after which the
    multi-MiB parts of S3 uploads come from the heap and stay in it: a worker kept about
    16 MiB more per upload in flight (bench/README.md, S3 tier). A fixed threshold keeps
    the dynamic one from moving.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: its allocator decides


async def _index(request: Request) -> Reply:
    return replies.text(200, f"This is Stor {__version__}")


def _metric_sinks(settings: Settings) -> list[MetricsSink]:
    sinks: list[MetricsSink] = []
    if settings.statsite is not None:
        sinks.append(StatsdSink(settings.statsite))
    if settings.metrics.prometheus.enabled:
        sinks.append(prometheus.PrometheusSink())
    return sinks


def _location_cache(settings: Settings, metrics: Metrics) -> LocationCache:
    if not settings.memcached_servers:
        return NoLocationCache()
    return MemcachedLocationCache(
        settings.memcached_servers,
        metrics,
        timeout=settings.cache.memcached_timeout,
        retry_after=settings.cache.memcached_retry_after,
    )
