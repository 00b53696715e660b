"""Prometheus metrics: HTTP traffic as stor.http.service reports it, store events through the facade.

With several workers, prometheus-client's multiprocess mode sums the workers'
counters at scrape time; `stor serve` points PROMETHEUS_MULTIPROC_DIR at a
fresh directory before the workers start. Free space is read at scrape time,
so it is always current and needs no gauge shared between processes.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from stor.store.pairs import available_bytes

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("stor_http_requests", "HTTP requests answered", ["method", "route", "status"])
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LATENCY = Histogram(
    "stor_http_request_duration_seconds",
    "Time from request to the end of the response",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
RECEIVED = Counter("stor_http_received_bytes", "Request body bytes received")
SENT = Counter("stor_http_sent_bytes", "Response body bytes sent")
CACHE = Counter("stor_cache_requests", "Location cache look-ups by result", ["result"])
LOOKUPS = Counter("stor_lookups", "Disk look-ups by number of directories probed", ["probes"])
WRITTEN = Counter("stor_blobs_written", "Blobs written (new or completed mirrors)")
DUPLICATES = Counter("stor_blob_duplicates", "Uploads of blobs already stored")
VERIFICATION_FAILURES = Counter("stor_verification_failures", "Uploads whose bytes did not match their sha256")
NO_SPACE = Counter("stor_no_space", "Uploads refused for lack of space")
READS = Counter("stor_reads", "Blob reads by tier (local, s3) and result (found, missing, error)", ["tier", "result"])
S3_COPIES = Counter("stor_s3_copies", "Queued copies to S3 by result (done, failed)", ["result"])
S3_FAULTS = Counter("stor_s3_faults", "S3 requests of reads that failed (the read fell through to local storage)")
S3_SKIPPED = Counter("stor_s3_skipped", "Reads that did not ask S3 during an outage")
S3_CORRUPT = Counter("stor_s3_corrupt_objects", "S3 objects found not to hash to their sha (verified reads)")
LOCAL_CORRUPT = Counter(
    "stor_corrupt_copies", "Local copies found not to hash to their sha by verified reads (not delivered)"
)
HEAL_JOBS = Counter(
    "stor_heal_jobs",
    "Repairs asked for by reads, by outcome (queued, dropped: queue full, repaired, failed, clean: nothing wrong)",
    ["result"],
)
TUS_UPLOADS = Counter(
    "stor_tus_uploads",
    "tus uploads by event (created, completed, duplicate: the blob was stored already, failed: not the declared "
    "blob, expired, terminated)",
    ["event"],
)
TUS_RECEIVED = Counter("stor_tus_received_bytes", "Bytes taken into tus uploads")
TUS_EVENTS = ("created", "completed", "duplicate", "failed", "expired", "terminated")
S3_MULTIPART = Counter(
    "stor_s3_multipart_uploads",
    "The S3 API's multipart uploads by event (created, parts: parts stored, completed, aborted, expired)",
    ["event"],
)
S3_MULTIPART_EVENTS = ("created", "parts", "completed", "aborted", "expired")
EVENT_MESSAGES = Counter(
    "stor_event_messages",
    "Events and requested shas by destination (rabbitmq, webhook) and outcome (published or delivered; dropped: "
    "an outbox full; failed: a webhook gave up)",
    ["destination", "result"],
)
RABBITMQ_OUTAGES = Counter("stor_rabbitmq_outages", "Times the RabbitMQ broker became unreachable")
UPLOAD_HOOK = Counter("stor_upload_hook_answers", "Answers of the pre-upload hook (accepted, refused, unanswered)",
                      ["result"])

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# How far behind a worker's own traffic a scrape can be (another worker's: the
# scraping worker hands over its own counts first).
FLUSH_SECONDS = 1.0


# A request tally: one (method, route, status)'s requests since the last flush, in a
# plain list: requests per latency bucket (the last one unbounded), then their
# seconds, bytes received and bytes sent. A request is four list updates.
_BOUNDS = (*_LATENCY_BUCKETS, float("inf"))
_SECONDS = len(_BOUNDS)
_RECEIVED = _SECONDS + 1
_SENT = _SECONDS + 2
_ZERO_TALLY = (0.0,) * (_SENT + 1)


class DeferredCounts:
    """Counts kept as plain numbers and added to prometheus-client's values in batches.

    In multiprocess mode every inc() of a prometheus-client value takes a lock
    and writes an mmap'd file: a few microseconds each, six times per small
    GET, which was a fifth of its cost. Here an event is a dict update; flush()
    hands the sums over, every FLUSH_SECONDS and before each scrape.

    Touched only from the event loop thread, flush() included: every metric
    event is reported there (work done in a worker thread hands its outcome
    back first, as the memcached calls do), so there is no lock, which cost
    as much as the update itself.
    """

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}
        self._requests: list[tuple[Any, Any, list[float]]] = []

    def inc(self, child: Any, amount: float = 1.0) -> None:
        counts = self._counts
        counts[child] = counts.get(child, 0.0) + amount

    def request_tally(self, counter: Any, histogram: Any) -> list[float]:
        """A request tally (see _BOUNDS) that HttpTraffic adds requests to, handed over and zeroed by flush()."""
        tally = list(_ZERO_TALLY)
        self._requests.append((counter, histogram, tally))
        return tally

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for child, amount in counts.items():
            child.inc(amount)
        for counter, histogram, tally in self._requests:
            requests = sum(tally[:_SECONDS])
            if not requests:
                continue
            counter.inc(requests)
            # prometheus-client's Histogram.observe() takes one value at a time; its
            # per-bucket values (non-cumulative, as observe() keeps them) take sums.
            for bucket, n in zip(histogram._buckets, tally):
                if n:
                    bucket.inc(n)
            histogram._sum.inc(tally[_SECONDS])
            if tally[_RECEIVED]:
                RECEIVED.inc(tally[_RECEIVED])
            if tally[_SENT]:
                SENT.inc(tally[_SENT])
            tally[:] = _ZERO_TALLY  # in place: HttpTraffic goes on adding to this list

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self.flush()


DEFERRED = DeferredCounts()


class PrometheusSink:
    """Turns the facade's (original statsd) event names into Prometheus counters."""

    _COUNTERS = {
        "cache.hit": CACHE.labels("hit"),
        "cache.miss": CACHE.labels("miss"),
        "cache.error": CACHE.labels("error"),
        "success.post.write.count": WRITTEN,
        "success.post.duplicate.count": DUPLICATES,
        "error.post.bad_sha.count": VERIFICATION_FAILURES,
        "error.post.no_space.count": NO_SPACE,
        "success.get.ok_hcp.count": READS.labels("s3", "found"),
        "error.get.not_found_hcp.count": READS.labels("s3", "missing"),
        "error.get.error_hcp.count": READS.labels("s3", "error"),
        "error.get.not_found_old.count": READS.labels("local", "missing"),
        "error.get.500.count": READS.labels("local", "error"),
        "s3.copy.done.count": S3_COPIES.labels("done"),
        "s3.copy.failed.count": S3_COPIES.labels("failed"),
        "error.s3.fault.count": S3_FAULTS,
        "error.get.s3_skipped.count": S3_SKIPPED,
        "error.get.corrupt_hcp.count": S3_CORRUPT,
        "error.get.corrupt_old.count": LOCAL_CORRUPT,
        **{f"heal.{result}.count": HEAL_JOBS.labels(result) for result in ("queued", "dropped", "repaired", "failed", "clean")},
        **{f"tus.{event}.count": TUS_UPLOADS.labels(event) for event in TUS_EVENTS},
        "tus.received.bytes": TUS_RECEIVED,
        **{f"s3.multipart.{event}.count": S3_MULTIPART.labels(event) for event in S3_MULTIPART_EVENTS},
        "events.amqp.published.count": EVENT_MESSAGES.labels("rabbitmq", "published"),
        "events.amqp.dropped.count": EVENT_MESSAGES.labels("rabbitmq", "dropped"),
        "events.amqp.nacked.count": EVENT_MESSAGES.labels("rabbitmq", "nacked"),
        "events.amqp.outages.count": RABBITMQ_OUTAGES,
        "events.webhook.delivered.count": EVENT_MESSAGES.labels("webhook", "delivered"),
        "events.webhook.dropped.count": EVENT_MESSAGES.labels("webhook", "dropped"),
        "events.webhook.failed.count": EVENT_MESSAGES.labels("webhook", "failed"),
        **{f"events.hook.{result}.count": UPLOAD_HOOK.labels(result)
           for result in ("accepted", "refused", "unanswered")},
    }
    _LOCAL_FOUND = READS.labels("local", "found")

    def __init__(self) -> None:
        self._lookups: dict[str, Any] = {}

    def wants(self, kind: str, name: str) -> bool:
        # Request latency and bytes sent come from HttpTraffic, not from these events.
        return kind == "incr" and (
            name in self._COUNTERS or name.startswith("lookup.attempt.") or _is_local_found(name)
        )

    def incr(self, name: str, count: int = 1) -> None:
        counter = self._COUNTERS.get(name)
        if counter is not None:
            DEFERRED.inc(counter, count)
        elif _is_local_found(name):
            DEFERRED.inc(self._LOCAL_FOUND, count)
        elif name.startswith("lookup.attempt."):
            child = self._lookups.get(name)
            if child is None:
                child = self._lookups[name] = LOOKUPS.labels(name.split(".")[2])
            DEFERRED.inc(child, count)

    def timing(self, name: str, milliseconds: float) -> None:
        return None  # never wanted

    def size(self, name: str, nbytes: int) -> None:
        return None  # never wanted


def _is_local_found(name: str) -> bool:
    """success.get.ok_old.<server>.count: a read delivered whole from that local storage."""
    return name.startswith("success.get.ok_old.") and name.endswith(".count")


class StorageFreeBytes(Collector):
    def __init__(self, directories: Sequence[Path]) -> None:
        self.directories = directories

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("stor_storage_free_bytes", "Bytes available to stor on each storage", labels=["storage"])
        for d in self.directories:
            try:
                family.add_metric([str(d)], available_bytes(d))
            except OSError:
                continue  # absent storage: /status says why
        yield family


class CopyQueueGauges(Collector):
    """The S3 copy queue's depth and oldest entry, read from the storages (the same for every worker)."""

    def __init__(self, directories: Sequence[Path]) -> None:
        self.directories = directories

    def collect(self) -> Iterable[Metric]:
        from stor.store.copyqueue import scan  # only a node with the S3 tier has a queue

        try:
            entries = scan(self.directories)
        except OSError:
            return
        now = time.time()
        yield GaugeMetricFamily("stor_s3_copy_queue_depth", "Blobs waiting to be copied to S3", value=len(entries))
        yield GaugeMetricFamily(
            "stor_s3_copy_queue_oldest_seconds", "Age of the oldest blob waiting to be copied to S3 (0: none)",
            value=now - entries[0].mtime if entries else 0.0,
        )


def render(directories: Sequence[Path], copy_queue: bool = False) -> tuple[bytes, str]:
    """The exposition text (blocking: reads worker files and statvfs)."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    extra = CollectorRegistry()
    extra.register(StorageFreeBytes(directories))
    if copy_queue:
        extra.register(CopyQueueGauges(directories))
    return text + generate_latest(extra), CONTENT_TYPE_LATEST


class HttpTraffic:
    """Requests, bytes and latency per method, route and status.

    On the hot path of every request: a request is added to its (method,
    route, status)'s tally (a dict look-up, a bisect and four list updates),
    which DEFERRED hands to prometheus-client's values. Counting into
    DEFERRED's per-value sums instead (two counters and a histogram, each
    child looked up) cost about twice as much (see bench/README.md). Fed by
    stor.http.service for both ways a request is answered, so both count alike.
    """

    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str, int], list[float]] = {}

    def record(self, method: str, route: str, status: int, seconds: float, received: int, sent: int) -> None:
        if method not in _METHODS:
            method = "other"
        tally = self._tallies.get((method, route, status))
        if tally is None:
            tally = self._tallies[(method, route, status)] = DEFERRED.request_tally(
                REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route)
            )
        tally[bisect.bisect_left(_BOUNDS, seconds)] += 1
        tally[_SECONDS] += seconds
        tally[_RECEIVED] += received
        tally[_SENT] += sent
