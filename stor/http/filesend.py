"""Sending part of a file to a client socket with sendfile(2).

The kernel copies the pages straight to the socket: no byte passes through
Python, as nginx does it. The copying runs in a thread because the file side
of sendfile may wait for the disk, which the event loop must never do. The
socket stays non-blocking (it is the event loop's): when it is full the
thread returns and the event loop waits for room, so a slow client holds no
thread while it reads, and one that takes nothing for the send timeout is
given up on (stor.http.tcp tells taking little from taking nothing).

Its own small pool, not the I/O pool: copying a large file out must not hold
up other requests' disk work.
"""

from __future__ import annotations

import asyncio
import os
import socket

from stor.aio import ThreadPool, outcome_ignored
from stor.http import tcp
from stor.store.base import FileRegion, StoreError

CHUNK = 1 << 24  # per sendfile call
# The bytes of a checked region that wait for its check (stor.store.base.FileRegion.check).
HELD_BYTES = 64 * 1024
# While the socket is full, the client's progress is looked at this often (at most).
CHECK_SECONDS = 5.0

_pool: ThreadPool | None = None
_threads = 32
_send_timeout = 60.0


def configure(threads: int, send_timeout: float) -> None:
    """Before the first send: how many files may be copied out at once per worker (more wait for a
    thread), and how long a client may take nothing before it is given up on."""
    global _threads, _send_timeout
    _threads = threads
    _send_timeout = send_timeout


async def send(sock: int, head: bytes, file: int, offset: int, length: int) -> int:
    """head, then length bytes of file from offset, written to the socket; the bytes of file sent.

    Works on duplicates of both descriptors, so the caller may close its own
    at any time (a connection the event loop closes) without the copying
    writing to a reused number. Raises ConnectionError (the client went
    away), TimeoutError (it stalled) or StoreError (the file is shorter than
    length).
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
    owned = (sock, file)
    total = len(head) + length
    done = 0
    loop = asyncio.get_running_loop()
    progress = tcp.Progress(_send_timeout)
    try:
        while True:
            copying = _pool.submit(_send_some, sock, head, file, offset, total, done)
            try:
                done = await asyncio.shield(copying)
            except asyncio.CancelledError:
                # The thread still uses the descriptors: they are closed when it is done
                # (bound now: `owned` itself is emptied just below).
                copying.add_done_callback(lambda _, fds=owned: _close(fds))
                owned = ()
                raise
            if done == total:
                return length
            await _writable(loop, sock, progress)
    finally:
        _close(owned)


async def send_region(sock: int, head: bytes, region: FileRegion) -> int:
    """head, then the region's bytes; a region to be checked (FileRegion.check) holds its last bytes back
    until the check passed, so that a corrupt blob's answer ends short of its Content-Length (CorruptBlob)."""
    check = region.check
    if check is None:
        return await send(sock, head, region.fd, region.offset, region.length)
    checking = asyncio.ensure_future(check())  # reads the file alongside the sending
    try:
        held = min(HELD_BYTES, region.length)
        sent = await send(sock, head, region.fd, region.offset, region.length - held)
        await checking
        return sent + await send(sock, b"", region.fd, region.offset + region.length - held, held)
    finally:
        if not checking.done():
            checking.cancel()
        outcome_ignored(checking)


def _close(fds: tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)


async def _writable(loop: asyncio.AbstractEventLoop, sock: int, progress: tcp.Progress) -> None:
    """Until the socket has room; TimeoutError once the client has taken nothing for the send timeout."""
    room: asyncio.Future[None] = loop.create_future()
    loop.add_writer(sock, lambda: room.done() or room.set_result(None))
    try:
        while True:
            done, _ = await asyncio.wait((room,), timeout=min(CHECK_SECONDS, progress.limit / 4))
            if done:
                progress.reset()
                return
            with socket.socket(fileno=os.dup(sock)) as peer:
                if progress.stalled(peer, loop.time()):
                    raise TimeoutError(f"the client took nothing for {progress.limit:.0f} s")
    finally:
        loop.remove_writer(sock)


def _send_some(sock: int, head: bytes, file: int, offset: int, total: int, done: int) -> int:
    """Write on from done (counted over head, then the file) until all is sent or the socket is full."""
    while done < total:
        try:
            if done < len(head):
                done += os.write(sock, memoryview(head)[done:])
                continue
            n = os.sendfile(sock, file, offset + done - len(head), min(CHUNK, total - done))
        except BlockingIOError:
            return done
        if n == 0:
            raise StoreError(f"the file is shorter than its {offset + total - len(head)} bytes")
        done += n
    return done
