"""Durability of writes, end to end against a real `stor serve` process.

Invariant 1 of DESIGN.md: a blob is visible under its final name only when it
is complete and verified on both mirrors; a full disk, a mismatch, a client
that goes away or a crash leaves no final file and no leaked temporary file.
Invariant 2: memory does not grow with the upload's size.

The disks here are real: tmpfs mounts of a few MiB fill up for real, sockets
are closed for real, and "crashed" uploads are temporary files left on disk
before the server starts.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import math
import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUTH, StorServer, final_files, layout_path, pair_config, sha256, temp_files

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


# ---- helpers ---------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll an observable condition until it holds; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.005)  # polling interval, not synchronisation


def all_files(root: Path) -> list[Path]:
    """Every regular file under a storage root, temporary ones included; not the commit locks.

    The commit locks (`.stor-tmp/locks/<3 hex>.lock`) are empty files kept for good: each is
    checked to be empty here, so that no blob data can hide among them.
    """
    locks = root / ".stor-tmp" / "locks"
    assert all(p.stat().st_size == 0 for p in locks.glob("*")), "a commit lock holds data"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent != locks)


def nothing_left(*roots: Path) -> bool:
    return not temp_files(*roots) and not any(final_files(r) for r in roots)


def basic_header() -> str:
    return "Basic " + base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()


def available(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def pieces(data: bytes, size: int = 256 * KiB) -> Iterator[bytes]:
    """A body without a length: httpx sends a generator with Transfer-Encoding: chunked."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def make_temp_file(root: Path, sha: str, age: float | None = None) -> Path:
    """An upload temporary file as a crashed writer leaves it: <root>/.stor-tmp/<SHA>.<hex>.part."""
    directory = root / ".stor-tmp"
    directory.mkdir(exist_ok=True)
    path = directory / f"{sha.upper()}.{uuid.uuid4().hex}.part"
    path.write_bytes(os.urandom(1000))
    if age is not None:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def client_for(server: StorServer, timeout: float = 30) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=timeout)


# ---- 1. a disk that is really full ------------------------------------------------------


def test_full_disk_answers_507_and_leaves_nothing_behind(start_server: Any, tmpfs: Any) -> None:
    a, b = tmpfs("m1", "4m"), tmpfs("m2", "4m")
    server = start_server(pair_config((a, b), require_mount_points=True))
    free_before = available(a), available(b)
    data = random.Random(1).randbytes(6 * MiB)
    sha = sha256(data)

    with client_for(server) as c:
        # Known size bigger than the disk: refused up front.
        r = c.post(f"/{sha}", content=data, auth=AUTH)
        assert r.status_code == 507, r.text
        assert r.text == "Not enough space on storages"
        assert nothing_left(a, b), f"left behind after 507 (sized): {all_files(a) + all_files(b)}"

        # Unknown size (chunked): the server only finds out when the disk fills during the write.
        r = c.post(f"/{sha}", content=pieces(data), auth=AUTH)
        assert "content-length" not in r.request.headers
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert r.status_code == 507, r.text
        assert r.text == "Not enough space on storages"
        # The server cleans up before it answers: nothing to wait for.
        assert nothing_left(a, b), f"left behind after 507 (chunked): {all_files(a) + all_files(b)}"
        # The partial temporary files were not only unlinked but closed: their space is back.
        free_after = available(a), available(b)
        assert all(after >= before - 64 * KiB for before, after in zip(free_before, free_after)), (
            f"space not released: free before {free_before}, after {free_after}"
        )

        # The disk still takes what fits.
        small = random.Random(2).randbytes(100 * KiB)
        small_sha = sha256(small)
        r = c.post(f"/{small_sha}", content=small, auth=AUTH)
        assert r.status_code == 201, r.text
        for root in (a, b):
            assert layout_path(root, small_sha).read_bytes() == small
            assert final_files(root) == [layout_path(root, small_sha)]
        assert temp_files(a, b) == []
        assert c.get(f"/{small_sha}").content == small
        assert c.get(f"/{sha}").status_code == 404


# ---- 2. a 1 GiB upload in bounded memory ---------------------------------------------------


def gib_chunks() -> Iterator[bytes]:
    """1 GiB in 1 MiB chunks, deterministic: every chunk distinct (its index up front)."""
    block = random.Random(7).randbytes(MiB)
    for i in range(1024):
        yield i.to_bytes(8, "big") + block[8:]


def test_one_gib_upload_streams_in_bounded_memory(start_server: Any, tmpfs: Any) -> None:
    a, b = tmpfs("big1", "1100m"), tmpfs("big2", "1100m")
    server = start_server(pair_config((a, b)))
    h = hashlib.sha256()
    for chunk in gib_chunks():
        h.update(chunk)
    sha = h.hexdigest()

    started = time.monotonic()
    with client_for(server, timeout=120) as c:
        r = c.post(f"/{sha}", content=gib_chunks(), auth=AUTH)
    elapsed = time.monotonic() - started
    peak = server.peak_rss_bytes()
    print(f"\n1 GiB upload: {elapsed:.1f}s, {GiB / MiB / elapsed:.0f} MiB/s, server peak RSS {peak / MiB:.1f} MiB")

    assert r.status_code == 201, r.text
    assert r.json() == [str(layout_path(a, sha)), str(layout_path(b, sha))]
    last = (1023).to_bytes(8, "big") + random.Random(7).randbytes(MiB)[8:]  # what gib_chunks() yields last
    for root in (a, b):
        path = layout_path(root, sha)
        assert path.stat().st_size == GiB
        with open(path, "rb") as f:
            assert f.read(8) == (0).to_bytes(8, "big")
            f.seek(GiB - MiB)
            assert f.read() == last
    assert temp_files(a, b) == []
    assert peak < 150 * MiB, f"server peak RSS {peak / MiB:.1f} MiB during a 1 GiB upload (limit 150 MiB)"


# ---- 3. the client goes away mid-upload -----------------------------------------------------


@pytest.mark.parametrize("close", ["fin", "rst"])
def test_client_disconnect_mid_upload_leaves_nothing(server: StorServer, mirrors: tuple[Path, Path], close: str) -> None:
    a, b = mirrors
    data = random.Random(3).randbytes(10 * MiB)
    sha = sha256(data)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        sock.sendall(upload_head(server, sha, len(data)) + data[:MiB])
        # The upload is under way: its temporary files exist on both mirrors.
        wait_until(lambda: len(temp_files(a)) == 1 and len(temp_files(b)) == 1, 5.0, "temp files of the upload")
        if close == "rst":
            # Linger 0: the close sends a reset instead of an orderly end of stream.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()

    deadline = time.monotonic() + 1.0
    while (temp_files(a, b) or final_files(a) or final_files(b)) and time.monotonic() < deadline:
        time.sleep(0.005)  # polling interval
    assert temp_files(a, b) == [], "temporary files left after the client went away"
    assert final_files(a) == [] and final_files(b) == [], "a partial blob became visible"

    # The server is fine and the blob can still be uploaded (nothing holds its lock).
    with client_for(server) as c:
        assert c.get(f"/{sha}").status_code == 404
        r = c.post(f"/{sha}", content=data, auth=AUTH)
        assert r.status_code == 201, r.text
    assert layout_path(a, sha).read_bytes() == data
    assert layout_path(b, sha).read_bytes() == data


@pytest.mark.parametrize("close", ["fin", "rst"])
def test_client_disconnect_mid_small_upload_is_noticed(
    server: StorServer, mirrors: tuple[Path, Path], close: str
) -> None:
    """A small body (up to 1 MiB) sent without waiting for an answer is gathered whole from
    uvicorn's messages before anything is written; a client gone before its end is still an
    abandoned upload (not a body that fails verification, not a wait that never ends), and it
    holds nothing."""
    a, b = mirrors
    data = random.Random(5).randbytes(512 * KiB)
    sha = sha256(data)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        sock.sendall(upload_head(server, sha, len(data)) + data[: len(data) // 2])
        if close == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()

    wait_until(lambda: f"POST {sha}: client disconnected mid-upload" in server.log_text(), 5.0,
               "the server's note that the client went away")
    assert temp_files(a, b) == []
    assert not layout_path(a, sha).exists() and not layout_path(b, sha).exists()
    with client_for(server) as c:
        r = c.post(f"/{sha}", content=data, auth=AUTH)
        assert r.status_code == 201, r.text
    assert layout_path(a, sha).read_bytes() == data


def upload_head(server: StorServer, sha: str, length: int) -> bytes:
    """The request head of an upload, for a client that then sends the body by hand."""
    return (
        f"POST /{sha} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"Authorization: {basic_header()}\r\n"
        f"Content-Type: application/octet-stream\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


# ---- 4. many uploads of the same new blob at once -----------------------------------------------


def test_concurrent_uploads_of_one_blob_store_it_once(server: StorServer, mirrors: tuple[Path, Path]) -> None:
    a, b = mirrors
    data = random.Random(4).randbytes(256 * KiB)
    sha = sha256(data)
    n = 20
    barrier = threading.Barrier(n)
    results: list[httpx.Response | BaseException] = [RuntimeError("not run")] * n

    def upload(i: int) -> None:
        try:
            with client_for(server) as c:
                barrier.wait(timeout=10)
                results[i] = c.post(f"/{sha}", content=data, auth=AUTH)
        except BaseException as e:  # reported below, with the others
            results[i] = e

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)

    errors = [r for r in results if not isinstance(r, httpx.Response)]
    assert not errors, errors
    statuses = sorted(r.status_code for r in results if isinstance(r, httpx.Response))
    print(f"\n20 concurrent POSTs: {statuses.count(201)} x 201, {statuses.count(200)} x 200")
    assert set(statuses) <= {200, 201}, statuses
    assert 201 in statuses, statuses
    expected_paths = [str(layout_path(a, sha)), str(layout_path(b, sha))]
    for r in results:
        assert isinstance(r, httpx.Response)
        assert sorted(r.json()) == sorted(expected_paths), r.text

    for root in (a, b):
        assert final_files(root) == [layout_path(root, sha)]
        assert layout_path(root, sha).read_bytes() == data
    assert temp_files(a, b) == []
    assert all_files(a) == [layout_path(a, sha)] and all_files(b) == [layout_path(b, sha)]


# ---- 5. a body that does not match its sha ----------------------------------------------------


def test_mismatch_leaves_nothing_on_disk(server: StorServer, mirrors: tuple[Path, Path]) -> None:
    a, b = mirrors
    claimed = random.Random(5).randbytes(3 * MiB)
    sent = bytearray(claimed)
    sent[-1] ^= 1  # one bit off, at the very end
    sent = bytes(sent)
    sha, actual = sha256(claimed), sha256(sent)

    with client_for(server) as c:
        for body in (sent, pieces(sent)):
            r = c.post(f"/{sha}", content=body, auth=AUTH)
            assert r.status_code == 412, r.text
            assert r.text == f"Content sha256 {actual} doesn't match given sha256 {sha}"
            # The server cleans up before it answers: nothing to wait for.
            assert temp_files(a, b) == [], "temporary files left after 412"
            assert final_files(a) == [] and final_files(b) == []
            assert c.get(f"/{sha}").status_code == 404
            assert c.get(f"/{actual}").status_code == 404

        # The right bytes are still welcome afterwards.
        r = c.post(f"/{sha}", content=claimed, auth=AUTH)
        assert r.status_code == 201, r.text
    assert layout_path(a, sha).read_bytes() == claimed == layout_path(b, sha).read_bytes()


# ---- 6. temporary files left by a crash -----------------------------------------------------


def test_startup_sweep_removes_stale_temp_files(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    a, b = mirrors
    sha = sha256(b"crashed upload")
    old_a = make_temp_file(a, sha, age=3600)
    old_b = make_temp_file(b, sha, age=3600)
    # The default period (30 minutes): only the sweep at start-up can remove them within the deadline.
    start_server(pair_config((a, b), tempfile_max_age=60))
    wait_until(lambda: not old_a.exists() and not old_b.exists(), 5.0, "stale temp files swept at start-up")


def test_sweep_keeps_fresh_and_locked_temp_files(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    a, b = mirrors
    sha = sha256(b"crashed upload")
    old = make_temp_file(a, sha, age=3600)
    old_b = make_temp_file(b, sha, age=3600)
    fresh = make_temp_file(a, sha)  # an upload in progress on another node: recently touched
    locked = make_temp_file(a, sha, age=3600)  # an upload in progress on this host: old, but locked
    fd = os.open(locked, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        start_server(pair_config((a, b), tempfile_max_age=60, cleanup_tempdir_period=0.2))
        wait_until(lambda: not old.exists() and not old_b.exists(), 5.0, "stale temp files swept at start-up")

        # Proof that the sweep which removed `old` has finished: a stale file
        # made now, in the same directory, was not in that sweep's listing, so
        # its removal is the work of a later sweep, which only starts after the
        # earlier one has looked at every file.
        canary = make_temp_file(a, sha, age=3600)
        wait_until(lambda: not canary.exists(), 5.0, "a later sweep removes a new stale file")
        assert fresh.exists(), "a recently touched temp file (upload on another node) was swept"
        assert locked.exists(), "a locked temp file (upload in progress on this host) was swept"
    finally:
        os.close(fd)  # the "upload" ends without finishing: its file is now fair game

    wait_until(lambda: not locked.exists(), 5.0, "the stale temp file is swept once its lock is released")
    assert fresh.exists()


# ---- 7. repair of a half-present blob, and duplicates ------------------------------------------


def test_blob_on_one_mirror_only_is_completed_by_an_upload(
    server: StorServer, mirrors: tuple[Path, Path]
) -> None:
    a, b = mirrors
    data = random.Random(6).randbytes(300 * KiB)
    sha = sha256(data)
    path_a, path_b = layout_path(a, sha), layout_path(b, sha)
    path_a.parent.mkdir(parents=True)
    path_a.write_bytes(data)
    mtime_a = path_a.stat().st_mtime_ns

    with client_for(server) as c:
        r = c.post(f"/{sha}", content=data, auth=AUTH)
        assert r.status_code == 201, r.text
        assert r.json() == [str(path_a), str(path_b)]
        assert path_b.read_bytes() == data
        assert path_a.read_bytes() == data and path_a.stat().st_mtime_ns == mtime_a, "the good copy was rewritten"
        assert temp_files(a, b) == []

        r = c.post(f"/{sha}", content=data, auth=AUTH)
        assert r.status_code == 200, r.text
        assert r.json() == [str(path_a), str(path_b)]


def test_blob_on_one_mirror_only_is_not_completed_from_a_wrong_body(
    server: StorServer, mirrors: tuple[Path, Path]
) -> None:
    a, b = mirrors
    data = random.Random(8).randbytes(100 * KiB)
    sha = sha256(data)
    path_a = layout_path(a, sha)
    path_a.parent.mkdir(parents=True)
    path_a.write_bytes(data)

    with client_for(server) as c:
        r = c.post(f"/{sha}", content=b"not the blob", auth=AUTH)
        assert r.status_code == 412, r.text
    assert temp_files(a, b) == [], "temporary files left after 412"
    assert not layout_path(b, sha).exists()
    assert path_a.read_bytes() == data


def test_blob_on_both_mirrors_answers_200_without_reading_the_body(
    server: StorServer, mirrors: tuple[Path, Path]
) -> None:
    a, b = mirrors
    data = random.Random(9).randbytes(50 * KiB)
    sha = sha256(data)
    for root in (a, b):
        layout_path(root, sha).parent.mkdir(parents=True)
        layout_path(root, sha).write_bytes(data)
    expected = [str(layout_path(a, sha)), str(layout_path(b, sha))]

    with client_for(server) as c:
        for _ in range(3):
            r = c.post(f"/{sha}", content=random.Random(11).randbytes(200 * KiB), auth=AUTH)
            assert r.status_code == 200, r.text
            assert r.json() == expected
            # The unread body does not poison the kept-alive connection for the next request.
            r = c.get(f"/{sha}")
            assert r.status_code == 200 and r.content == data

    # The answer comes without the body: announce 1 GiB, send none of it.
    head = (
        f"POST /{sha.upper()} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"Authorization: {basic_header()}\r\n"
        f"Content-Length: {GiB}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            got = sock.recv(65536)
            assert got, f"connection closed before an answer: {answer!r}"
            answer += got
        header, _, rest = answer.partition(b"\r\n\r\n")
        assert header.startswith(b"HTTP/1.1 200 "), header
        length = int(next(l.split(b":", 1)[1] for l in header.split(b"\r\n") if l.lower().startswith(b"content-length:")))
        while len(rest) < length:
            got = sock.recv(65536)
            assert got, "connection closed mid-answer"
            rest += got
        assert json.loads(rest[:length]) == expected

    for root in (a, b):
        assert layout_path(root, sha).read_bytes() == data
    assert temp_files(a, b) == []


# ---- 8. placement across pairs of very different sizes ---------------------------------------


def test_placement_follows_free_space(start_server: Any, tmpfs: Any) -> None:
    big = (tmpfs("big1", "48m"), tmpfs("big2", "48m"))
    small = (tmpfs("small1", "12m"), tmpfs("small2", "12m"))
    server = start_server(pair_config(big, small, require_mount_points=True, balance_threshold_bytes=0))
    n, size = 200, 1000

    def big_share() -> float:
        fb = min(available(d) for d in big) - size
        fs = min(available(d) for d in small) - size
        return fb / (fb + fs)

    p_start = big_share()
    rng = random.Random(10)
    blobs = [rng.randbytes(size) for _ in range(n)]
    with client_for(server) as c:
        for data in blobs:
            r = c.post(f"/{sha256(data)}", content=data, auth=AUTH)
            assert r.status_code == 201, r.text
    p_end = big_share()

    on_big = {p.name for p in final_files(big[0])}
    on_small = {p.name for p in final_files(small[0])}
    assert on_big == {p.name for p in final_files(big[1])}, "mirrors of the big pair differ"
    assert on_small == {p.name for p in final_files(small[1])}, "mirrors of the small pair differ"
    assert not on_big & on_small
    assert len(on_big) + len(on_small) == n

    # The share drifts a little as the pairs fill: allow the whole range, plus
    # 6 standard deviations of a binomial (a false failure about once in 10^9 runs).
    lo, hi = sorted((p_start, p_end))
    sigma = math.sqrt(n * hi * (1 - lo))
    low, high = n * lo - 6 * sigma, n * hi + 6 * sigma
    print(f"\nplacement: {len(on_big)}/{n} on the big pair, expected {n * p_start:.1f} (bounds {low:.1f}..{high:.1f})")
    assert low <= len(on_big) <= high, (
        f"{len(on_big)} of {n} blobs on the big pair; expected share {p_start:.3f}..{p_end:.3f}, "
        f"bounds {low:.1f}..{high:.1f}"
    )


# ---- 9. a mirror that runs out of room while the blob is being put in place -------------------


@pytest.fixture
def tmpfs_with(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """tmpfs mounts with arbitrary options (here: a tiny inode table); unmounted at teardown."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_full_mirror_during_rename_leaves_no_half_visible_blob(
    start_server: Any, tmpfs_with: Callable[[str, str], Path]
) -> None:
    a = tmpfs_with("roomy", "size=4m")
    # Room for the bytes, but the inode table is nearly full: the root, .stor-tmp, the temporary
    # file and one directory fit; the second level of the blob's directories does not.
    b = tmpfs_with("no-inodes", "size=4m,nr_inodes=4")
    server = start_server(pair_config((a, b)))
    data = random.Random(12).randbytes(100 * KiB)
    sha = sha256(data)

    with client_for(server) as c:
        r = c.post(f"/{sha}", content=data, auth=AUTH)
        # Mirror b cannot hold the blob, so storing it is impossible...
        assert r.status_code == 507, r.text
        assert temp_files(a, b) == []
        # ...and a refused blob must not become visible anywhere.
        assert final_files(b) == []
        assert final_files(a) == [], f"507 answered, yet the blob is in place on one mirror: {final_files(a)}"
        assert c.get(f"/{sha}").status_code == 404


# ---- 10. every descriptor closed once ------------------------------------------------------------


def test_no_descriptor_is_closed_twice(mirrors: tuple[Path, Path], tmp_path: Path, fast_path: bool) -> None:
    """A descriptor closed twice closes whatever reused its number in between: another
    thread's blob or temporary file, so a write could land in the wrong file. stor closes
    descriptors of its own from several threads: an upload's temporary files, a blob's file
    once its answer is over (a hot blob's when it leaves memory), the start-up sweep's, and
    on the fast path the duplicates of the socket and the file that a send from the file
    works on, closed when the sending thread is done, also when the client has gone.
    Watched with strace over the whole server (uvicorn, uvloop and stor): no close() may
    answer EBADF."""
    trace = tmp_path / "close.trace"
    server = StorServer(
        workdir=tmp_path,
        config=pair_config(mirrors),
        wrapper=["strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=close", "-e", "status=failed", "-o", str(trace)],
        fast_path=fast_path,
    )
    server.start(timeout=60)
    try:
        body = os.urandom(100 * KiB)  # hot once read
        big = os.urandom(8 * MiB)  # above the hot limit: sent from the file
        sha, big_sha = sha256(body), sha256(big)
        with client_for(server) as c:
            assert c.post(f"/{sha}", content=body, auth=AUTH).status_code == 201
            assert c.post(f"/{big_sha}", content=pieces(big), auth=AUTH).status_code == 201
            for _ in range(2):
                assert c.get(f"/{sha}").content == body
                assert c.get(f"/{big_sha}").content == big
            assert c.head(f"/{sha}").status_code == 200
            assert c.get(f"/{big_sha}", headers={"Range": "bytes=100-199"}).content == big[100:200]
            assert c.get(f"/{sha256(b'absent')}").status_code == 404
            assert c.get("/status").status_code == 200
        for _ in range(3):  # a client gone mid-download: the send stops, and its descriptors are closed
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                sock.sendall(f"GET /{big_sha} HTTP/1.1\r\nHost: stor\r\n\r\n".encode())
                assert sock.recv(65536)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        with client_for(server) as c:  # served on, after the abandoned sends
            assert c.get(f"/{big_sha}").content == big
        # SIGTERM to stor itself, whose shutdown (hot blobs' files closed) is traced too: strace, the
        # process the harness started, does not pass the signal on, so stop() would wait 10 s and kill.
        assert server.proc is not None
        for pid in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split():
            os.kill(int(pid), signal.SIGTERM)
        server.proc.wait(timeout=20)
    finally:
        server.stop()
    twice = [line for line in trace.read_text().splitlines() if "EBADF" in line]
    assert twice == [], f"descriptors closed twice: {twice}"
