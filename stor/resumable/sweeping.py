"""A sweep run every so often on the serving event loop: what expired uploads (tus's, S3's multipart) share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


class PeriodicSweep:
    """sweep() every period seconds from start() to close(); a sweep that fails is logged, and the next runs."""

    def __init__(self, sweep: Callable[[], Awaitable[object]], period: float, what: str, log: logging.Logger) -> None:
        self.sweep = sweep
        self.period = period
        self.what = what
        self.log = log
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                self.log.exception("sweep of %s failed", self.what)
            await asyncio.sleep(self.period)
