"""stor's HTTP front on uvicorn (stor/http/front.py), over raw sockets: the parts a client library hides.

Blob reads are answered inside uvicorn's protocol (the fast path), the rest by
uvicorn's ASGI cycle; with `--no-fast-path` every request takes the ASGI cycle.
Either way the server must keep HTTP's order on a connection, its framing and
its connection handling, and a file sent from the disk must leave nothing
behind: every test here runs in both modes (the fast_path fixture, ids [fast]
and [asgi]).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUTH, StorServer, pair_config, sha256, tcp_sockets, wait_for
from conftest import HttpReader as _Reader
from conftest import http_request as _request

SMALL = os.urandom(3000)
HOT = os.urandom(1 << 20)  # kept in memory once read (hot_blob_max_bytes)
BIG = os.urandom(6 << 20)  # sent from the file
MISSING = "ab" * 32


def _store(server: StorServer, *bodies: bytes) -> None:
    for body in bodies:
        assert httpx.post(f"{server.url}/{sha256(body)}", content=body, auth=AUTH).status_code == 201


def test_pipelined_requests_are_answered_in_order(server: StorServer) -> None:
    """Reads answered at once, reads sent from the file, misses and requests for the ASGI path,
    all written in one go: each answer comes back in order, framed, and byte-exact."""
    _store(server, SMALL, HOT, BIG)
    small, hot, big = sha256(SMALL), sha256(HOT), sha256(BIG)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        # Twice: the first round reads from the disk's caches, the second from hot blobs.
        for _ in range(2):
            sock.sendall(
                _request("HEAD", f"/{hot}")
                + _request("GET", f"/{small}")
                + _request("GET", f"/{big}")
                + _request("GET", f"/{MISSING}")
                + _request("GET", "/status")
                + _request("GET", f"/{hot}")
                + _request("GET", f"/{small}", "Content-Length: 3", body=b"abc")  # a read with a body
                + _request("GET", f"/{big}", "Range: bytes=100-199")
                + _request("GET", f"/{small}?x=1")
                + _request("GET", f"/{hot}")
            )
            reader = _Reader(sock)
            status, headers, _ = reader.response(head_only=True)
            assert (status, headers["content-length"], headers["etag"]) == (200, str(len(HOT)), f'"{hot}"')
            assert reader.response()[::2] == (200, SMALL)
            assert reader.response()[::2] == (200, BIG)
            status, _, body = reader.response()
            assert status == 404 and MISSING in body.decode()
            assert reader.response()[0] == 200
            assert reader.response()[::2] == (200, HOT)
            assert reader.response()[::2] == (200, SMALL)
            status, headers, body = reader.response()
            assert (status, body, headers["content-range"]) == (206, BIG[100:200], f"bytes 100-199/{len(BIG)}")
            assert reader.response()[::2] == (200, SMALL)
            assert reader.response()[::2] == (200, HOT)


@pytest.mark.parametrize("how", ["HTTP/1.0", "Connection: close"])
def test_a_read_that_asks_to_close_is_answered_then_closed(server: StorServer, how: str) -> None:
    _store(server, SMALL, BIG)
    for body in (SMALL, BIG):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            if how == "HTTP/1.0":
                sock.sendall(_request("GET", f"/{sha256(body)}", version="1.0"))
            else:
                sock.sendall(_request("GET", f"/{sha256(body)}", "Connection: close"))
            reader = _Reader(sock)
            status, headers, got = reader.response()
            assert (status, got) == (200, body)
            assert reader.closed()


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_client_gone_mid_download_leaves_nothing_behind(
    start_server: Any, mirrors: tuple[Path, Path], fast_path: bool
) -> None:
    """A client that resets the connection halfway through a file sent from the disk: the send
    stops, no descriptor stays open, and the worker goes on serving. (On the fast path the kernel
    sends the file from a thread, which notices and closes both of its duplicate descriptors.)"""
    server: StorServer = start_server(pair_config(mirrors))
    big = os.urandom(32 << 20)
    _store(server, big)
    (pid,) = server.processes()
    assert httpx.get(f"{server.url}/{sha256(big)}").content == big  # every lazy descriptor (pools) now open
    wait_for(lambda: not tcp_sockets(server.port), what="the server to close its side of that connection")
    before = _descriptors(pid)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(_request("GET", f"/{sha256(big)}"))
            assert sock.recv(65536)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    deadline = time.monotonic() + 10
    while _descriptors(pid) > before and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the threads to finish, not synchronising on them
    assert _descriptors(pid) <= before
    if fast_path:
        assert "client gone while sending" in server.log_text()
    assert httpx.get(f"{server.url}/{sha256(big)}").content == big


def test_a_client_that_does_not_read_holds_back_only_its_own_answers(
    start_server: Any, mirrors: tuple[Path, Path]
) -> None:
    """100 pipelined GETs of a 1 MiB blob, none read yet: the answers wait for that client, and
    another client is served meanwhile; then all 100 arrive, in order."""
    server: StorServer = start_server(pair_config(mirrors))
    _store(server, HOT)
    hot = sha256(HOT)
    for _ in range(2):
        assert httpx.get(f"{server.url}/{hot}").content == HOT  # hot from now on
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(_request("GET", f"/{hot}") * 100)
        assert httpx.get(f"{server.url}/{hot}", timeout=10).content == HOT
        reader = _Reader(sock)
        for _ in range(100):
            assert reader.response()[::2] == (200, HOT)


def test_the_connection_cap_holds_for_blob_reads_too(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """--limit-concurrency 2 caps open connections at two: both are served (by the fast path),
    and a third is answered 503 and closed at once, before it could send anything."""
    server: StorServer = start_server(pair_config(mirrors), args=["--limit-concurrency", "2"])
    _store(server, SMALL)
    small = sha256(SMALL)
    wait_for(lambda: not tcp_sockets(server.port), what="the upload's connection to be gone")
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(2)]
    try:
        for sock in held:  # open and served
            sock.sendall(_request("GET", f"/{small}"))
            assert _Reader(sock).response()[::2] == (200, SMALL)
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as third:
            assert _Reader(third).response()[0] == 503
            assert third.recv(1) == b""  # closed after it
    finally:
        for sock in held:
            sock.close()


def test_a_request_pipelined_behind_an_answer_given_at_once_is_not_cut_by_keep_alive(
    start_server: Any, mirrors: tuple[Path, Path]
) -> None:
    """A hot read and, in the same segment, a request that takes the ASGI path and outlasts
    uvicorn's 5 s keep-alive timeout (its client reads slowly): the second answer arrives whole.
    (On the fast path the read is answered at once, which armed the keep-alive timer, and nothing
    cancelled it; with --no-fast-path both go through uvicorn's cycle, which must hold too.)"""
    server: StorServer = start_server(pair_config(mirrors))
    _store(server, HOT, BIG)
    hot, big = sha256(HOT), sha256(BIG)
    for _ in range(2):
        assert httpx.get(f"{server.url}/{hot}").content == HOT  # hot from now on
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(_request("HEAD", f"/{hot}") + _request("GET", f"/{big}?slow=1"))
        reader = _Reader(sock)
        assert reader.response(head_only=True)[0] == 200
        time.sleep(6)  # the client is slow: longer than the keep-alive timeout (behaviour, not a wait)
        assert reader.response()[::2] == (200, BIG)


def test_clients_that_stop_reading_hold_no_sending_thread(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """With 2 I/O threads (io_threads: 2), three clients that start 32 MiB downloads and stop
    reading do not keep a fourth from downloading the same blob: a full socket gives its thread
    back (the fast path's sendfile, the ASGI path's reads), and the event loop waits for room."""
    server: StorServer = start_server(pair_config(mirrors, io_threads=2))
    big = os.urandom(32 << 20)
    _store(server, big)
    stalled = []
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(_request("GET", f"/{sha256(big)}"))
            assert sock.recv(65536)  # its download has begun
            stalled.append(sock)
        r = httpx.get(f"{server.url}/{sha256(big)}", timeout=20)
        assert r.status_code == 200 and r.content == big
    finally:
        for sock in stalled:
            sock.close()


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (never waits: the socket's timeout would)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""


def test_idle_connections_close_after_the_keep_alive_timeout_and_busy_ones_stay(
    start_server: Any, mirrors: tuple[Path, Path]
) -> None:
    """uvicorn's 5 s keep-alive timeout, kept with one timer per connection instead of one per answer:
    a connection idle since its answer is closed 5 s later (not before); one that asks again every
    second stays open past the moment its first answer's timeout would have ended."""
    server: StorServer = start_server(pair_config(mirrors))
    _store(server, SMALL)
    path = f"/{sha256(SMALL)}"
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=30) as idle,
        socket.create_connection(("127.0.0.1", server.port), timeout=30) as busy,
    ):
        idle.sendall(_request("HEAD", path))
        assert _Reader(idle).response(head_only=True)[0] == 200
        went_idle = time.monotonic()
        busy_reader = _Reader(busy)
        closed_after = None
        for _ in range(8):
            busy.sendall(_request("HEAD", path))
            assert busy_reader.response(head_only=True)[0] == 200
            if closed_after is None and _closed_by_server(idle):
                closed_after = time.monotonic() - went_idle
            time.sleep(1)  # the client's pace (behaviour under test, not a wait for the server)
        assert not _closed_by_server(busy)
        assert closed_after is not None and 4.5 <= closed_after <= 7.5, closed_after
