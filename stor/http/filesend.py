"""Sending part of a file to a client socket with sendfile(2), from a thread of its own.

The kernel copies the pages straight to the socket: no byte passes through
Python, as nginx does it. The call runs in a thread because the file side
of sendfile may wait for the disk, which the event loop must never do; the
socket stays non-blocking (it is the event loop's), so the thread waits for
room with poll(2) and gives up on a client that takes nothing for
STALL_SECONDS.

Its own small pool, not the I/O pool: a slow client holds its thread for as
long as its download lasts, and must not hold up other requests' disk work.
"""

from __future__ import annotations

import asyncio
import os
import select

from stor.aio import ThreadPool
from stor.store.base import StoreError

STALL_SECONDS = 60.0
CHUNK = 1 << 24  # per sendfile call; the kernel sends what the socket takes anyway

_pool: ThreadPool | None = None
_threads = 32


def configure(threads: int) -> None:
    """How many files may be in flight at once per worker (more wait for a thread); before the first send."""
    global _threads
    _threads = threads


def send(sock: int, head: bytes, file: int, offset: int, length: int) -> asyncio.Future[int]:
    """head, then length bytes of file from offset, written to the socket; the bytes of file sent.

    The thread works on duplicates of both descriptors, which it closes, so
    the caller may close its own at any time (a cancelled request, a
    connection the event loop closes) without the thread writing to a reused
    number. Raises ConnectionError (the client went away), TimeoutError (it
    stalled) or StoreError (the file is shorter than length).
    """
    global _pool
    if _pool is None:
        _pool = ThreadPool(_threads)
    sock = os.dup(sock)
    try:
        file = os.dup(file)
    except BaseException:
        os.close(sock)
        raise
    return _pool.submit(_send_blocking, sock, head, file, offset, length)


def _send_blocking(sock: int, head: bytes, file: int, offset: int, length: int) -> int:
    try:
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        view = memoryview(head)
        while view:
            try:
                view = view[os.write(sock, view) :]
            except BlockingIOError:
                _wait(poller)
        sent = 0
        while sent < length:
            try:
                n = os.sendfile(sock, file, offset + sent, min(CHUNK, length - sent))
            except BlockingIOError:
                _wait(poller)
                continue
            if n == 0:
                raise StoreError(f"the file is shorter than its {offset + length} bytes")
            sent += n
        return sent
    finally:
        os.close(sock)
        os.close(file)


def _wait(poller: select.poll) -> None:
    events = poller.poll(STALL_SECONDS * 1000)
    if not events:
        raise TimeoutError(f"the client took nothing for {STALL_SECONDS:.0f} s")
    if events[0][1] & (select.POLLERR | select.POLLHUP):
        raise ConnectionResetError("the client went away")
