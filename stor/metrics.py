"""One facade for metrics, so that handlers never know which sinks are on.

Events are named with the original Stor's statsd names (STOR_REFERENCE.md);
each sink (statsd, Prometheus) turns them into its own kind of metric.
"""

from __future__ import annotations

import logging
from typing import Protocol

import statsd

from stor.config import StatsiteSettings

log = logging.getLogger("stor.metrics")


class MetricsSink(Protocol):
    def incr(self, name: str, count: int = 1) -> None: ...

    def timing(self, name: str, milliseconds: float) -> None: ...

    def size(self, name: str, nbytes: int) -> None: ...


class Metrics:
    def __init__(self, sinks: list[MetricsSink] | None = None) -> None:
        self.sinks = sinks or []

    def incr(self, name: str, count: int = 1) -> None:
        for sink in self.sinks:
            sink.incr(name, count)

    def timing(self, name: str, milliseconds: float) -> None:
        for sink in self.sinks:
            sink.timing(name, milliseconds)

    def size(self, name: str, nbytes: int) -> None:
        for sink in self.sinks:
            sink.size(name, nbytes)


class StatsdSink:
    """The original's statsite metrics over UDP: counters, timings in ms, sizes as counters of bytes.

    A UDP send never waits for the receiver, so it is made from the event loop.
    """

    def __init__(self, settings: StatsiteSettings) -> None:
        self.client = statsd.StatsClient(settings.host, settings.port, prefix=settings.prefix or None)
        self.rate = settings.sample_rate

    def incr(self, name: str, count: int = 1) -> None:
        self.client.incr(name, count, rate=self.rate)

    def timing(self, name: str, milliseconds: float) -> None:
        self.client.timing(name, milliseconds, rate=self.rate)

    def size(self, name: str, nbytes: int) -> None:
        # The original sent sizes with Net::Statsd's update(): a counter bumped by the byte count.
        self.client.incr(name, nbytes, rate=self.rate)
