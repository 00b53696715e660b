"""One facade for metrics, so that handlers never know which sinks are on.

Events are named with the original Stor's statsd names (STOR_REFERENCE.md);
each sink (statsd, Prometheus) turns them into its own kind of metric.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import statsd

from stor.config import StatsiteSettings

log = logging.getLogger("stor.metrics")


class MetricsSink(Protocol):
    def wants(self, kind: str, name: str) -> bool:
        """Whether this sink records the event (kind: "incr", "timing" or "size") at all."""

    def incr(self, name: str, count: int = 1) -> None: ...

    def timing(self, name: str, milliseconds: float) -> None: ...

    def size(self, name: str, nbytes: int) -> None: ...


# Event names are a fixed vocabulary (storage names and probe counts included):
# beyond this many, something is naming events after client input; stop remembering.
_MAX_NAMES = 10_000


class Metrics:
    """Each event goes to the sinks that record it, looked up once per name.

    A small GET reports half a dozen events; most sinks want few of them
    (Prometheus takes its HTTP figures elsewhere), and asking every sink
    every time was a visible share of the request.
    """

    def __init__(self, sinks: list[MetricsSink] | None = None) -> None:
        self.sinks = sinks or []
        self._incr: dict[str, tuple[Any, ...]] = {}
        self._timing: dict[str, tuple[Any, ...]] = {}
        self._size: dict[str, tuple[Any, ...]] = {}
        self._targets = {"incr": self._incr, "timing": self._timing, "size": self._size}

    def _to(self, kind: str, name: str) -> tuple[Any, ...]:
        known = self._targets[kind]
        targets = known.get(name)
        if targets is None:
            targets = tuple(getattr(sink, kind) for sink in self.sinks if sink.wants(kind, name))
            if len(known) < _MAX_NAMES:
                known[name] = targets
        return targets

    def wanted(self, kind: str, name: str) -> bool:
        """Whether any sink records this event: a caller may skip the work of reporting it."""
        return bool(self._to(kind, name))

    def incr(self, name: str, count: int = 1) -> None:
        targets = self._incr.get(name)
        for target in targets if targets is not None else self._to("incr", name):
            target(name, count)

    def timing(self, name: str, milliseconds: float) -> None:
        targets = self._timing.get(name)
        for target in targets if targets is not None else self._to("timing", name):
            target(name, milliseconds)

    def size(self, name: str, nbytes: int) -> None:
        targets = self._size.get(name)
        for target in targets if targets is not None else self._to("size", name):
            target(name, nbytes)


class StatsdSink:
    """The original's statsite metrics over UDP: counters, timings in ms, sizes as counters of bytes.

    A UDP send never waits for the receiver, so it is made from the event loop.
    """

    def __init__(self, settings: StatsiteSettings) -> None:
        self.client = statsd.StatsClient(settings.host, settings.port, prefix=settings.prefix or None)
        self.rate = settings.sample_rate

    def wants(self, kind: str, name: str) -> bool:
        return True

    def incr(self, name: str, count: int = 1) -> None:
        self.client.incr(name, count, rate=self.rate)

    def timing(self, name: str, milliseconds: float) -> None:
        self.client.timing(name, milliseconds, rate=self.rate)

    def size(self, name: str, nbytes: int) -> None:
        # The original sent sizes with Net::Statsd's update(): a counter bumped by the byte count.
        self.client.incr(name, nbytes, rate=self.rate)
