"""stor.aio: the same coroutine runs on an event loop (calls in the pool) and on a WSGI thread (calls in place)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from stor.aio import in_thread, run_here


async def _threads_used() -> tuple[str, str]:
    """The thread that ran an in_thread call, and the one awaiting it."""
    ran = await in_thread(lambda: threading.current_thread().name)
    return ran, threading.current_thread().name


def test_off_a_loop_calls_run_in_the_calling_thread() -> None:
    ran, awaiting = run_here(_threads_used())
    assert ran == awaiting == threading.current_thread().name


def test_on_a_loop_calls_run_in_the_pool() -> None:
    ran, awaiting = asyncio.run(_threads_used())
    assert ran.startswith("stor-io-") and ran != awaiting


def test_errors_reach_the_awaiter_either_way() -> None:
    async def failing() -> None:
        await in_thread(int, "not a number")

    with pytest.raises(ValueError):
        run_here(failing())
    with pytest.raises(ValueError):
        asyncio.run(failing())


def test_a_coroutine_that_needs_a_loop_is_refused_not_left_hanging() -> None:
    async def sleeps() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="sleeps waited on something other than in_thread"):
        run_here(sleeps())
