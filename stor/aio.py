"""Running blocking calls off the event loop.

A small pool of its own rather than asyncio's run_in_executor: every read
hops to a thread once, and concurrent.futures' machinery (a future per call
wrapped in an asyncio future, an idle-thread semaphore, callback locks) costs
more than the open and read it carries for a small blob. Here a call is one
C-level queue put, and its result one call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_THREADS = 32


class ThreadPool:
    def __init__(self, threads: int) -> None:
        self.jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._work, name=f"stor-io-{i}", daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def submit(self, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        """fn(*args) in a pool thread. It runs to the end even if the returned future is cancelled."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.jobs.put((loop, future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            # A call per job, so that nothing of a finished job (an upload's chunk,
            # say) stays referenced by an idle thread.
            self._run(*self.jobs.get())

    @staticmethod
    def _run(
        loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        try:
            result, error = fn(*args), None
        except BaseException as e:  # handed to the awaiting task, never lost
            result, error = None, e
        try:
            loop.call_soon_threadsafe(_settle, future, result, error)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more


def _settle(future: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


_pool: ThreadPool | None = None
_pool_lock = threading.Lock()


def configure(threads: int) -> None:
    """Size the pool; called once at start-up, before the first call."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPool(threads)


def in_thread(fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
    """Run fn(*args) in the I/O thread pool; the call finishes even if the awaiter is cancelled."""
    if _pool is None:
        configure(DEFAULT_THREADS)
    assert _pool is not None
    return _pool.submit(fn, *args)


def outcome_ignored(future: asyncio.Future[Any]) -> None:
    """For a future whose outcome no longer matters (what awaited it failed first): retrieved once it is
    done, so that asyncio does not warn of an exception never retrieved."""
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
