"""A budget of failed password checks per client address: a token bucket each, in one worker's memory.

Why: a bcrypt check costs milliseconds of CPU on purpose, so wrong passwords
sent in a loop would take a worker's CPU from every other request. Each
address may fail `burst` checks at once, then `per_minute` a minute; beyond
that its new checks are refused before they run. A check takes its token
before it runs (so that checks running at once cannot overdraw the budget)
and a check that succeeds gives it back: only failures are counted.

Memory is bounded: an address whose bucket has filled up again is the same as
one never seen, so it is forgotten when the table is swept; and the table
never holds more than `max_addresses`, the least recently charged going first
(many addresses at once are then bounded by the concurrency limit in
stor.http.auth instead). No library among stor's dependencies offers this, and
it is a few lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_ADDRESSES = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float  # when `tokens` was right
    limited: bool = False  # refused since it last had a token: only the first refusal is news


@dataclass(frozen=True, slots=True)
class Refused:
    """No check for this address now: when the next token comes, and whether it just ran out."""

    retry_after: float  # seconds
    first: bool  # the first refusal since the address last had a token (log it once)


class FailureBudget:
    def __init__(
        self,
        per_minute: float,
        burst: int,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0  # tokens a second
        self.burst = float(burst)
        self.max_addresses = max_addresses
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str) -> Refused | None:
        """Reserve one check for `address`: None when it may run, else why not."""
        now = self.clock()
        bucket = self._buckets.pop(address, None)  # re-inserted last: the dict is ordered by last use
        if bucket is None:
            if len(self._buckets) >= self.max_addresses:
                self._make_room(now)
            bucket = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        self._buckets[address] = bucket
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.limited = False
            return None
        first = not bucket.limited
        bucket.limited = True
        return Refused((1.0 - bucket.tokens) / self.rate, first)

    def give_back(self, address: str) -> None:
        """The check that take() allowed succeeded: it does not count against the address."""
        bucket = self._buckets.get(address)
        if bucket is not None:
            bucket.tokens += 1.0
            if bucket.tokens >= self.burst:  # as if never seen: right passwords take no room
                del self._buckets[address]

    def _make_room(self, now: float) -> None:
        """Forget the addresses whose budget is full again; if that is not enough, the least recently charged."""
        full = [a for a, b in self._buckets.items() if b.tokens + (now - b.stamp) * self.rate >= self.burst]
        for address in full:
            del self._buckets[address]
        # Down to nine tenths at most, so that a table full of active addresses is not swept for every new one.
        excess = len(self._buckets) - self.max_addresses * 9 // 10
        for address in list(self._buckets)[:excess] if excess > 0 else ():
            del self._buckets[address]
