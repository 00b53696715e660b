"""Limits and timeouts against hostile and slow clients, over raw sockets (stor/http/front.py).

Every limit holds with the fast path and without it (the fast_path fixture),
because the same protocol serves both ways. Short limits are configured where
the defaults would make a test slow; test_the_defaults checks the defaults.
The pauses in these tests are the slow clients themselves, not waits for the
server.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUTH, HttpReader, StorServer, evict, http_request, layout_path, pair_config, sha256, temp_files
from conftest import wait_for
from stor.config import HttpSettings, max_connections_for

SMALL = os.urandom(4096)


def _connect(server: StorServer, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closes the connection (reading and dropping anything it sends first)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def _store(server: StorServer, body: bytes) -> str:
    sha = sha256(body)
    assert httpx.post(f"{server.url}/{sha}", content=body, auth=AUTH, timeout=30).status_code in (200, 201)
    return sha


def test_the_defaults() -> None:
    """The limits are on by default, with the documented values, and the connection cap follows the descriptor limit."""
    d = HttpSettings()
    assert (d.max_head_bytes, d.max_headers) == (64 * 1024, 100)
    assert (d.head_timeout, d.body_timeout, d.send_timeout, d.keep_alive_timeout) == (20.0, 60.0, 60.0, 5.0)
    assert d.max_connections is None
    assert max_connections_for(d, 20_000) == (20_000 - 256) // 4
    assert max_connections_for(d, 1 << 20) == 16384
    assert max_connections_for(d, 300) == 64
    assert max_connections_for(HttpSettings(max_connections=7), 20_000) == 7


@pytest.mark.parametrize("fast_path", [True], ids=["fast"], indirect=True)  # storage behaviour: one mode is enough
def test_a_worker_raises_its_open_file_limit_to_the_hard_limit(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """Started with a soft limit of 1024 (Debian's default), every process serves with the hard limit."""
    server: StorServer = start_server(pair_config(mirrors), wrapper=["prlimit", "--nofile=1024:4096", "--"])
    for pid in server.processes():
        limits = Path(f"/proc/{pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line


# ---- request heads --------------------------------------------------------------------------


def test_a_head_over_64_kib_is_refused_with_431_before_it_ends(server: StorServer) -> None:
    """One header of 200 KiB, never finished: the 431 comes without the head's end, and the
    connection closes after it."""
    with _connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: stor\r\nX-Big: " + b"a" * (200 * 1024))
        status, headers, body = HttpReader(sock).response()
        assert status == 431
        assert body.startswith(b"Request Header Fields Too Large")
        assert headers["connection"] == "close"
        assert _closed_within(sock, 10) < 10


def test_a_head_of_nearly_64_kib_is_answered(server: StorServer) -> None:
    sha = _store(server, SMALL)
    with _connect(server) as sock:
        sock.sendall(http_request("GET", f"/{sha}", "X-Big: " + "a" * (60 * 1024)))
        assert HttpReader(sock).response()[::2] == (200, SMALL)


def test_a_64_mb_header_costs_the_worker_no_parsing(server: StorServer) -> None:
    """The client streams a 64 MB header; the 431 arrives while it is still sending, and a
    well-behaved client on the same worker is answered meanwhile."""
    sha = _store(server, SMALL)
    sock = _connect(server)
    sent = [0]

    def send() -> None:
        chunk = b"a" * (1 << 20)
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nX-Big: ")
            for _ in range(64):
                sock.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:
            pass  # closed by the server: the point

    sender = threading.Thread(target=send)
    sender.start()
    try:
        status = HttpReader(sock).response()[0]
        at = sent[0]
        assert status == 431
        assert at < 32 << 20, f"the answer came after {at} bytes"
        assert httpx.get(f"{server.url}/{sha}", timeout=5).content == SMALL
    finally:
        sock.close()
        sender.join()


def test_more_than_100_headers_are_refused_with_431(server: StorServer) -> None:
    sha = _store(server, SMALL)
    with _connect(server) as sock:
        sock.sendall(http_request("GET", f"/{sha}", *(f"X-{i}: y" for i in range(99))))  # 100 with Host
        assert HttpReader(sock).response()[0] == 200
    with _connect(server) as sock:
        sock.sendall(http_request("GET", f"/{sha}", *(f"X-{i}: y" for i in range(100))))
        status, _, body = HttpReader(sock).response()
        assert (status, body) == (431, b"Request Header Fields Too Large: more than 100 headers")


# ---- timeouts ------------------------------------------------------------------------------


TIMEOUTS = {"http": {"head_timeout": 2, "keep_alive_timeout": 1, "body_timeout": 2}}


@pytest.fixture
def timed(start_server: Any, mirrors: tuple[Path, Path]) -> StorServer:
    server: StorServer = start_server(pair_config(mirrors, **TIMEOUTS))
    return server


def test_a_silent_connection_is_closed_after_the_head_timeout(timed: StorServer) -> None:
    with _connect(timed) as sock:
        took = _closed_within(sock, 15)
    assert 1.5 < took < 6


def test_a_trickling_head_is_closed_after_the_head_timeout(timed: StorServer) -> None:
    """A byte every 0.2 s, for ever: closed about 2 s after the connection was made."""
    with _connect(timed) as sock:
        started = time.monotonic()
        try:
            for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 200:
                sock.send(bytes([byte]))
                time.sleep(0.2)  # the slow client
        except OSError:
            pass
        took = time.monotonic() - started
    assert 1.5 < took < 6, took


def test_after_an_answer_silence_gets_keep_alive_and_a_trickle_the_head_timeout(timed: StorServer) -> None:
    sha = _store(timed, SMALL)
    with _connect(timed) as sock:
        sock.sendall(http_request("GET", f"/{sha}"))
        assert HttpReader(sock).response()[0] == 200
        took = _closed_within(sock, 15)
    assert 0.7 < took < 1.9, took  # keep-alive's 1 s, not the head's 2 s
    with _connect(timed) as sock:
        sock.sendall(http_request("GET", f"/{sha}"))
        assert HttpReader(sock).response()[0] == 200
        started = time.monotonic()
        try:
            for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 200:
                sock.send(bytes([byte]))
                time.sleep(0.2)
        except OSError:
            pass
        took = time.monotonic() - started
    assert 1.5 < took < 6, took


def test_a_stalled_upload_gets_408_and_leaves_nothing(timed: StorServer, mirrors: tuple[Path, Path]) -> None:
    body = os.urandom(4 << 20)
    sha = sha256(body)
    with _connect(timed) as sock:
        sock.sendall(http_request("POST", f"/{sha}", "Authorization: Basic d3JpdGVyOnMzY3JldC1wYXNz",
                                  f"Content-Length: {len(body)}") + body[: 1 << 20])
        started = time.monotonic()
        status, headers, text = HttpReader(sock).response()
        took = time.monotonic() - started
        assert (status, text) == (408, b"Request Timeout: no body bytes for 2 s")
        assert headers["connection"] == "close"
        assert 1.2 < took < 6
    wait_for(lambda: not temp_files(*mirrors), what="the stalled upload's temporary files to go")
    assert not layout_path(mirrors[0], sha).exists()


def test_an_upload_never_waits_for_a_stalled_one_of_the_same_blob(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """One client sends 1 MiB of a 4 MiB POST and stops; six more uploads of the same blob,
    through both workers, are all answered at once (the stalled one times out much later)."""
    server: StorServer = start_server(pair_config(mirrors), workers=2)
    body = os.urandom(4 << 20)
    sha = sha256(body)
    with _connect(server) as stalled:
        stalled.sendall(http_request("POST", f"/{sha}", "Authorization: Basic d3JpdGVyOnMzY3JldC1wYXNz",
                                     f"Content-Length: {len(body)}") + body[: 1 << 20])
        statuses = []
        for _ in range(6):
            with httpx.Client(timeout=10) as c:  # a new connection each: both workers take some
                statuses.append(c.post(f"{server.url}/{sha}", content=body, auth=AUTH).status_code)
        assert sorted(statuses) == [200] * 5 + [201]
    assert layout_path(mirrors[0], sha).read_bytes() == body


@pytest.mark.parametrize("fast_path", [True], ids=["fast"], indirect=True)  # storage behaviour: one mode is enough
def test_concurrent_uploads_of_one_blob_through_both_workers_end_on_one_pair(start_server: Any, tmp_path: Path) -> None:
    """Six rounds of eight simultaneous uploads of a new 8 MiB blob, two workers, two pairs: each
    blob is on one pair only (one 201, seven 200), and no temporary file is left."""
    dirs = [tmp_path / n for n in ("a1", "b1", "a2", "b2")]
    for d in dirs:
        d.mkdir()
    server: StorServer = start_server(pair_config((dirs[0], dirs[1]), (dirs[2], dirs[3])), workers=2)
    for round_ in range(6):
        body = os.urandom(8 << 20)
        sha = sha256(body)
        barrier = threading.Barrier(8)
        statuses: list[int] = []

        def upload() -> None:
            with httpx.Client(timeout=60) as c:
                barrier.wait()
                statuses.append(c.post(f"{server.url}/{sha}", content=body, auth=AUTH).status_code)

        threads = [threading.Thread(target=upload) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        copies = [d for d in dirs if layout_path(d, sha).exists()]
        assert copies in ([dirs[0], dirs[1]], [dirs[2], dirs[3]]), f"round {round_}: {copies}"
        assert sorted(statuses) == [200] * 7 + [201]
        assert not temp_files(*dirs)


# ---- downloads -----------------------------------------------------------------------------


BIG = os.urandom(48 << 20)


@pytest.fixture
def big_server(start_server: Any, mirrors: tuple[Path, Path]) -> tuple[StorServer, str]:
    server: StorServer = start_server(pair_config(mirrors, http={"send_timeout": 2}))
    return server, _store(server, BIG)


def test_a_slow_but_steady_reader_keeps_its_download(big_server: tuple[StorServer, str]) -> None:
    """Reading 64 KiB every 0.1 s (640 KiB/s) for 6 s, three times the send timeout: never cut."""
    server, sha = big_server
    with _connect(server, rcvbuf=64 * 1024) as sock:
        sock.sendall(http_request("GET", f"/{sha}"))
        got = 0
        started = time.monotonic()
        while time.monotonic() - started < 6:
            data = sock.recv(64 * 1024)
            assert data, f"cut after {got} bytes"
            got += len(data)
            time.sleep(0.1)  # the slow reader
        assert got < len(BIG)  # still under way
    assert "took nothing" not in server.log_text()


def test_a_reader_that_takes_nothing_is_cut_after_the_send_timeout(big_server: tuple[StorServer, str]) -> None:
    server, sha = big_server
    with _connect(server, rcvbuf=64 * 1024) as sock:
        sock.sendall(http_request("GET", f"/{sha}"))
        sock.recv(1024)
        started = time.monotonic()
        wait_for(lambda: "took nothing" in server.log_text(), timeout=15, what="the stalled reader to be cut")
        assert 1.5 < time.monotonic() - started < 8


# ---- connections and descriptors -----------------------------------------------------------


def test_out_of_descriptors_is_a_503_not_a_500(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """The worker's descriptor limit lowered (prlimit) to what it has open: a read from the disk
    and an upload get 503 with Retry-After, and once the limit is back they succeed."""
    server: StorServer = start_server(pair_config(mirrors))
    sha = _store(server, SMALL)
    evict(layout_path(mirrors[0], sha))
    evict(layout_path(mirrors[1], sha))
    (pid,) = server.processes()[-1:]
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/").status_code == 200  # this connection is open before the limit drops
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")), hard))
            r = c.get(f"/{sha}")
            assert (r.status_code, r.headers.get("retry-after")) == (503, "1"), r.text
            assert r.text == "Service Unavailable: out of file descriptors"
            other = os.urandom(2 << 20)
            r = c.post(f"/{sha256(other)}", content=other, auth=AUTH)
            assert r.status_code == 503, r.text
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        assert c.get(f"/{sha}").content == SMALL
    assert "Traceback" not in server.log_text()


def test_a_client_that_half_closes_after_its_request_gets_the_answer(server: StorServer, mirrors: tuple[Path, Path]) -> None:
    """shutdown(SHUT_WR) right after a read from the disk (answered later, in a thread) and after
    an upload: both answers arrive, then the connection closes."""
    sha = _store(server, SMALL)
    for _ in range(5):
        for d in mirrors:
            evict(layout_path(d, sha))
        with _connect(server) as sock:
            sock.sendall(http_request("GET", f"/{sha}"))
            sock.shutdown(socket.SHUT_WR)
            reader = HttpReader(sock)
            assert reader.response()[::2] == (200, SMALL)
            assert reader.closed()
    body = os.urandom(100_000)
    with _connect(server) as sock:
        sock.sendall(http_request("POST", f"/{sha256(body)}", "Authorization: Basic d3JpdGVyOnMzY3JldC1wYXNz",
                                  f"Content-Length: {len(body)}", body=body))
        sock.shutdown(socket.SHUT_WR)
        assert HttpReader(sock).response()[0] == 201


# ---- read-only storage ---------------------------------------------------------------------


def _remount(point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(point)], check=True)


@pytest.mark.parametrize("fast_path", [True], ids=["fast"], indirect=True)  # storage behaviour: one mode is enough
def test_a_read_only_mirror_is_skipped_and_shown(start_server: Any, tmpfs: Any) -> None:
    """One mirror of pair 0 remounted read-only: uploads go to pair 1, /status says degraded
    and why; both pairs read-only: 507 naming them, /status 503; read-write again: writes resume."""
    a1, b1, a2, b2 = (tmpfs(n, "16m") for n in ("a1", "b1", "a2", "b2"))
    server: StorServer = start_server(pair_config((a1, b1), (a2, b2)))
    with httpx.Client(base_url=server.url, timeout=10) as c:
        _remount(b1, "ro")
        try:
            for _ in range(10):
                body = os.urandom(10_000)
                r = c.post(f"/{sha256(body)}", content=body, auth=AUTH)
                assert r.status_code == 201, r.text
                assert layout_path(a2, sha256(body)).exists()
            status = c.get("/status", headers={"accept": "application/json"})
            assert status.status_code == 200
            report = status.json()
            assert report["status"] == "degraded"
            by_path = {s["path"]: s for s in report["storages"]}
            assert by_path[str(b1)]["writable"] is False
            assert "Read-only file system" in by_path[str(b1)]["write_fault"]
            assert by_path[str(a2)]["writable"] is True
            assert c.get("/status").text == "OK"

            _remount(b2, "ro")
            body = os.urandom(10_000)
            r = c.post(f"/{sha256(body)}", content=body, auth=AUTH)
            assert r.status_code == 507
            assert r.text.startswith("No storage pair can be written now:") and str(b2) in r.text
            status = c.get("/status")
            assert status.status_code == 503 and "Read-only file system" in status.text
        finally:
            _remount(b1, "rw")
            _remount(b2, "rw")
        body = os.urandom(10_000)
        wait_for(lambda: c.post(f"/{sha256(body)}", content=body, auth=AUTH).status_code == 201, timeout=15,
                 what="writes to resume")
    log = server.log_text()
    assert "Traceback" not in log
    assert log.count(f"storage {b1}: cannot write") == 1  # once per outage, not per upload
    assert f"storage {b1} can be written again" in log


def test_progress_is_what_the_peer_acknowledged() -> None:
    """tcp.Progress on a real loopback connection: a reader that takes bytes is never stalled,
    one that takes nothing is once the limit has passed since the last progress."""
    from stor.http import tcp

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            server.setblocking(False)
            progress = tcp.Progress(10.0)

            def fill() -> None:
                try:
                    while True:
                        server.send(b"x" * 65536)
                except BlockingIOError:
                    pass

            fill()
            assert not progress.stalled(server, 0.0)  # the first look starts the clock
            assert not progress.stalled(server, 9.0)
            assert progress.stalled(server, 10.0)  # nothing taken for 10 s
            wait_for(lambda: client.recv(65536) and (fill() or True) and not progress.stalled(server, 11.0),
                     what="the reader's bytes to be acknowledged")
            assert not progress.stalled(server, 20.0)  # 9 s after the last progress
            assert progress.stalled(server, 21.0)
            progress.reset()
            assert not progress.stalled(server, 100.0)


def test_too_many_headers_in_a_read_over_64_kib_get_one_431(server: StorServer) -> None:
    """A head of 101 small headers and, in the same write, 70 KiB more: the head ends within the
    byte limit and is refused for its count; one answer, then the close."""
    with _connect(server) as sock:
        sock.sendall(http_request("GET", "/", *(f"X-{i}: y" for i in range(101))) + b"a" * (70 * 1024))
        reader = HttpReader(sock)
        status, _, body = reader.response()
        assert (status, body) == (431, b"Request Header Fields Too Large: more than 100 headers")
        assert reader.closed()
    assert "Error" not in server.log_text()  # a second refusal would write after the end


@pytest.mark.parametrize("fast_path", [True], ids=["fast"], indirect=True)  # storage behaviour: one mode is enough
def test_a_symlinked_temporary_directory_is_never_written_through(start_server: Any, tmp_path: Path) -> None:
    """A storage whose .stor-tmp is a link elsewhere is not written (its pair is skipped and
    /status says why), and the sweep removes nothing where the link points."""
    dirs = [tmp_path / n for n in ("a1", "b1", "a2", "b2")]
    for d in dirs:
        d.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stale = elsewhere / ("0" * 32 + ".part")
    stale.write_bytes(b"not stor's")
    os.utime(stale, (0, 0))
    (dirs[0] / ".stor-tmp").symlink_to(elsewhere)
    server: StorServer = start_server(pair_config((dirs[0], dirs[1]), (dirs[2], dirs[3])))
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for _ in range(5):
            body = os.urandom(5000)
            assert c.post(f"/{sha256(body)}", content=body, auth=AUTH).status_code == 201
            assert layout_path(dirs[2], sha256(body)).exists()
        storages = {s["path"]: s for s in c.get("/status", headers={"accept": "application/json"}).json()["storages"]}
        assert "symbolic link" in storages[str(dirs[0])]["write_fault"]
    assert stale.exists() and os.listdir(elsewhere) == [stale.name]
