"""Running blocking calls off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run fn(*args) in the default thread pool; the call finishes even if the awaiter is cancelled."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
