"""A bounded queue between the requests that make events and the task that sends them.

Adding never waits and never grows past its capacity: a full outbox drops
what is added and counts it, so that a destination that is down or slow
costs the requests nothing but the count.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Outbox(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: deque[T] = deque()
        self.dropped = 0
        self._ready: asyncio.Event | None = None

    def add(self, item: T) -> bool:
        """Whether it was kept (False: the outbox was full, and it was dropped)."""
        if len(self.items) >= self.capacity:
            self.dropped += 1
            return False
        self.items.append(item)
        ready = self._ready
        if ready is not None:
            ready.set()
        return True

    def put_back(self, items: Iterable[T]) -> None:
        """Items taken but not delivered, ahead of the rest again (as many as fit; the others are dropped)."""
        for item in reversed(list(items)):
            if len(self.items) >= self.capacity:
                self.dropped += 1
            else:
                self.items.appendleft(item)

    async def take(self, most: int) -> list[T]:
        """Up to most items, waiting for the first."""
        while not self.items:
            self._ready = asyncio.Event()
            await self._ready.wait()
            self._ready = None
        items = self.items
        return [items.popleft() for _ in range(min(most, len(items)))]

    def __len__(self) -> int:
        return len(self.items)
