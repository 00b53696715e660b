"""One facade for metrics, so that handlers never know which sinks are on.

Names are the original Stor's statsd names (see STOR_REFERENCE.md); sinks
(statsd, Prometheus) subscribe behind this facade.
"""

from __future__ import annotations

from typing import Protocol


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
