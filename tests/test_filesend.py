"""stor/http/filesend.py on its own: a real socket pair, a real file, its real thread pool."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import pytest

from stor.aio import ThreadPool
from stor.http import filesend


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_send_cancelled_while_its_thread_copies_closes_the_descriptors_once_the_thread_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The send works on duplicates of the socket and the file. Cancelled while the copy is under
    way (here: still queued behind a busy thread, which then runs it), it must close them when the
    thread is done with them, not leave them open for the process's life."""
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(4096))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    file = os.open(path, os.O_RDONLY)

    async def scenario() -> None:
        # Not a fake: filesend's own kind of pool, with one real thread instead of the configured
        # number, so that the send's copy can be held queued behind a busy thread deterministically.
        pool = ThreadPool(1)
        monkeypatch.setattr(filesend, "_pool", pool)
        gate = threading.Event()
        busy = pool.submit(gate.wait)  # the one copying thread is taken, so the send's copy waits its turn
        before = _open_descriptors()
        sending = asyncio.create_task(filesend.send(ours.fileno(), b"head", file, 0, 4096))
        await asyncio.sleep(0)  # the send starts: its duplicates are made and its copy is queued
        assert _open_descriptors() == before + 2
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        gate.set()
        await busy
        # The pool runs jobs in order on its one thread: once this one is settled, the cancelled
        # copy has run and its completion (which closes the duplicates) has been handled first.
        await pool.submit(lambda: None)
        assert _open_descriptors() == before

    try:
        asyncio.run(scenario())
        received = b""
        while len(received) < 4 + 4096:
            received += theirs.recv(65536)
        assert received == b"head" + path.read_bytes()  # the copy ran to the end, on the duplicates
    finally:
        os.close(file)
        ours.close()
        theirs.close()
