"""The HTTP API end to end, against a real `stor serve` process: codes, bodies, headers, layout."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUTH, StorServer, layout_path, pair_config, sha256, tcp_sockets, temp_files, wait_for

ZERO_SHA = "0" * 64

# Tests marked shared_server only add blobs of their own (distinct bytes, or none) to a default
# server: they share one per module and fast-path mode (conftest.py). The others start their own.


@pytest.mark.shared_server
def test_original_end_to_end_scenario(client: httpx.Client) -> None:
    """The original Stor's own test: 401 without credentials, 201, round trip, Last-Modified, 404."""
    body = os.urandom(10_000)
    sha = sha256(body)

    assert client.post(f"/{sha}", content=body).status_code == 401
    assert client.post(f"/{sha}", content=body, auth=AUTH).status_code == 201

    got = client.get(f"/{sha}")
    assert got.status_code == 200
    assert got.content == body
    assert re.fullmatch(r"\w+, \d+ \w+ \d+ \d+:\d+:\d+ GMT", got.headers["last-modified"])
    assert parsedate_to_datetime(got.headers["last-modified"]).tzinfo is not None

    missing = client.get(f"/{ZERO_SHA}")
    assert missing.status_code == 404
    assert missing.text == f"File '{ZERO_SHA}' not found"


@pytest.mark.shared_server
def test_index_names_the_service(client: httpx.Client) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.text.startswith("This is Stor ")


@pytest.mark.shared_server
def test_post_writes_both_mirrors_in_the_original_layout(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    body = b"layout check"
    sha = sha256(body)
    r = client.post(f"/{sha}", content=body, auth=AUTH)
    assert r.status_code == 201
    expected = [layout_path(m, sha) for m in mirrors]
    assert r.json() == [str(p) for p in expected]
    for path in expected:
        assert path.read_bytes() == body
        assert path.name == sha.upper() + ".dat"
    assert temp_files(*mirrors) == []


@pytest.mark.shared_server
def test_get_and_head_headers(client: httpx.Client) -> None:
    body = os.urandom(3000)
    sha = sha256(body)
    client.post(f"/{sha}", content=body, auth=AUTH).raise_for_status()

    get = client.get(f"/{sha}")
    head = client.head(f"/{sha}")
    for r in (get, head):
        assert r.status_code == 200
        assert r.headers["content-length"] == "3000"
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["etag"] == f'"{sha}"'
        parsedate_to_datetime(r.headers["last-modified"])
    assert head.content == b""
    assert {k: v for k, v in get.headers.items() if k != "date"} == {
        k: v for k, v in head.headers.items() if k != "date"
    }


@pytest.mark.shared_server
def test_upper_case_sha_is_the_same_blob(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    body = b"case does not matter"
    sha = sha256(body)
    assert client.post(f"/{sha.upper()}", content=body, auth=AUTH).status_code == 201
    assert client.get(f"/{sha}").content == body
    assert client.get(f"/{sha.upper()}").content == body
    assert client.post(f"/{sha}", content=body, auth=AUTH).status_code == 200
    assert layout_path(mirrors[0], sha).exists()


@pytest.mark.shared_server
def test_blob_placed_by_the_original_is_served(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    """A directory written by the Perl Stor is served as it is, from either mirror."""
    for i, mirror in enumerate(mirrors):
        body = f"written by the original on mirror {i}".encode()
        sha = sha256(body)
        path = layout_path(mirror, sha)
        path.parent.mkdir(parents=True)
        path.write_bytes(body)
        r = client.get(f"/{sha}")
        assert r.status_code == 200
        assert r.content == body


@pytest.mark.shared_server
def test_zero_length_blob(client: httpx.Client) -> None:
    sha = sha256(b"")
    assert client.post(f"/{sha}", content=b"", auth=AUTH).status_code == 201
    r = client.get(f"/{sha}")
    assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "0"


@pytest.mark.shared_server
def test_large_blob_round_trips_in_chunks(client: httpx.Client) -> None:
    body = os.urandom(5 * 1024 * 1024 + 123)
    sha = sha256(body)
    assert client.post(f"/{sha}", content=body, auth=AUTH).status_code == 201
    assert client.get(f"/{sha}").content == body


@pytest.mark.parametrize("bad", ["abc", "g" * 64, "0" * 63, "0" * 65, ZERO_SHA + ".dat"])
def test_malformed_sha(client: httpx.Client, bad: str, mirrors: tuple[Path, Path]) -> None:
    get = client.get(f"/{bad}")
    assert get.status_code == 404
    assert get.text == f"Given hash '{bad}' isn't SHA256"  # the original's GET wording
    assert client.head(f"/{bad}").status_code == 404
    post = client.post(f"/{bad}", content=b"x", auth=AUTH)
    assert post.status_code == 412
    assert post.text == f"Given hash '{bad}' isn't sha256"
    assert list(mirrors[0].rglob("*.dat")) == []


@pytest.mark.shared_server
def test_malformed_sha_is_checked_before_credentials(client: httpx.Client) -> None:
    assert client.post("/nothex", content=b"x").status_code == 412


@pytest.mark.shared_server
def test_wrong_credentials(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    body = b"nope"
    sha = sha256(body)
    for auth in [("writer", "wrong"), ("other", "s3cret-pass"), ("writer", "s3cret-pass-longer")]:
        r = client.post(f"/{sha}", content=body, auth=auth)
        assert r.status_code == 401
        assert r.text == "Authentication required!"
        assert r.headers["www-authenticate"].startswith("Basic")
    garbled = client.post(f"/{sha}", content=body, headers={"Authorization": "Basic !!notbase64!!"})
    assert garbled.status_code == 401
    assert not layout_path(mirrors[0], sha).exists()


@pytest.mark.shared_server
def test_existing_blob_answers_200_with_paths_and_ignores_body(
    client: httpx.Client, mirrors: tuple[Path, Path]
) -> None:
    body = b"already here"
    sha = sha256(body)
    created = client.post(f"/{sha}", content=body, auth=AUTH)
    assert created.status_code == 201
    again = client.post(f"/{sha}", content=b"not even the same bytes", auth=AUTH)
    assert again.status_code == 200
    assert again.json() == [str(layout_path(m, sha)) for m in mirrors]
    assert layout_path(mirrors[0], sha).read_bytes() == body


def test_digest_mismatch_412_names_both_hashes(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    body = b"the real bytes"
    claimed = sha256(b"other bytes")
    r = client.post(f"/{claimed}", content=body, auth=AUTH)
    assert r.status_code == 412
    assert r.text == f"Content sha256 {sha256(body)} doesn't match given sha256 {claimed}"
    assert list(mirrors[0].rglob("*.dat")) == [] and temp_files(*mirrors) == []


@pytest.mark.shared_server
def test_put_behaves_as_post(client: httpx.Client) -> None:
    body = b"put me"
    sha = sha256(body)
    assert client.put(f"/{sha}", content=body).status_code == 401
    assert client.put(f"/{sha}", content=body, auth=AUTH).status_code == 201
    assert client.put(f"/{sha}", content=body, auth=AUTH).status_code == 200
    assert client.get(f"/{sha}").content == body


@pytest.mark.shared_server
def test_curl_round_trip(server: StorServer, tmp_path: Path) -> None:
    """The users' own client: curl uploads with --data-binary and downloads with -o."""
    src = tmp_path / "sample.bin"
    src.write_bytes(os.urandom(200_000))
    sha = sha256(src.read_bytes())
    up = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", ":".join(AUTH),
         "--data-binary", f"@{src}", f"{server.url}/{sha}"],
        capture_output=True, text=True, check=True,
    )
    assert up.stdout == "201"
    out = tmp_path / "out.bin"
    down = subprocess.run(
        ["curl", "-sS", "-f", "-o", str(out), f"{server.url}/{sha}"], capture_output=True, text=True
    )
    assert down.returncode == 0, down.stderr
    assert out.read_bytes() == src.read_bytes()


@pytest.mark.shared_server
def test_expect_100_continue_for_existing_blob_sends_no_body(server: StorServer, tmp_path: Path) -> None:
    """curl sends Expect: 100-continue for large bodies; a duplicate is answered before the body."""
    body = os.urandom(2 * 1024 * 1024)
    sha = sha256(body)
    httpx.post(f"{server.url}/{sha}", content=body, auth=AUTH).raise_for_status()
    src = tmp_path / "dup.bin"
    src.write_bytes(body)
    r = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}", "-u", ":".join(AUTH),
         "-H", "Expect: 100-continue", "--expect100-timeout", "30",
         "--data-binary", f"@{src}", f"{server.url}/{sha}"],
        capture_output=True, text=True, check=True,
    )
    code, uploaded = r.stdout.split()
    assert code == "200"
    assert int(float(uploaded)) == 0


@pytest.mark.shared_server
def test_no_room_is_refused_before_the_body_from_content_length(server: StorServer) -> None:
    """A Content-Length larger than any pair's free space is refused with 507 before any body byte."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", f"/{ZERO_SHA}")
    conn.putheader("Content-Length", str(1 << 60))
    conn.putheader("Authorization", httpx.BasicAuth(*AUTH)._auth_header)
    conn.endheaders()  # headers only: the body is never sent
    r = conn.getresponse()
    assert r.status == 507
    assert r.read() == b"Not enough space on storages"
    conn.close()


def test_max_blob_bytes_413(start_server: object, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors, max_blob_bytes=1000))  # type: ignore[operator]
    small, big = b"s" * 1000, b"b" * 1001
    with httpx.Client(base_url=server.url) as c:
        assert c.post(f"/{sha256(small)}", content=small, auth=AUTH).status_code == 201
        assert c.post(f"/{sha256(big)}", content=big, auth=AUTH).status_code == 413

        def chunked():  # no Content-Length: the limit is enforced while streaming
            yield big[:600]
            yield big[600:]

        assert c.post(f"/{sha256(big)}", content=chunked(), auth=AUTH).status_code == 413
    assert list(mirrors[0].rglob("*.dat")) == [layout_path(mirrors[0], sha256(small))]
    assert temp_files(*mirrors) == []


@pytest.mark.shared_server
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_chunked_upload_without_content_length(client: httpx.Client, method: str) -> None:
    parts = [os.urandom(65_537) for _ in range(7)]
    body = b"".join(parts)
    sha = sha256(body)
    r = client.request(method, f"/{sha}", content=iter(parts), auth=AUTH)
    assert r.status_code == 201
    assert client.get(f"/{sha}").content == body


# ---- /status ---------------------------------------------------------------


@pytest.mark.shared_server
def test_status_ok_plain_and_json(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    plain = client.get("/status")
    assert plain.status_code == 200 and plain.text == "OK"
    js = client.get("/status", headers={"Accept": "application/json"})
    assert js.status_code == 200
    data = js.json()
    assert data["status"] == "ok"
    assert [s["path"] for s in data["storages"]] == [str(m) for m in mirrors]
    assert all(s["ok"] and s["free_bytes"] > 0 for s in data["storages"])


def test_status_503_names_every_failing_storage(start_server: object, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    c, d = tmp_path / "c", tmp_path / "d"
    a.mkdir()
    c.mkdir()
    (tmp_path / "d").write_text("a file, not a directory")
    server = start_server(pair_config((a, b), (c, d), require_mount_points=True))  # type: ignore[operator]
    r = httpx.get(f"{server.url}/status")
    assert r.status_code == 503
    lines = r.text.splitlines()
    # a and c exist but are on the root filesystem; b is missing; d is a file.
    assert f"Storage {a} is not mounted" in lines
    assert f"Storage {b} isn't a directory" in lines
    assert f"Storage {c} is not mounted" in lines
    assert f"Storage {d} isn't a directory" in lines
    js = httpx.get(f"{server.url}/status", headers={"Accept": "application/json"})
    assert js.status_code == 503
    assert js.json()["status"] == "failing"
    assert {s["path"]: s["ok"] for s in js.json()["storages"]} == {str(p): False for p in (a, b, c, d)}


def test_status_mount_points_pass_on_real_mounts(start_server: object, tmpfs: object) -> None:
    a, b = tmpfs("m1", "2m"), tmpfs("m2", "2m")  # type: ignore[operator]
    sub = b / "stor"
    sub.mkdir()  # a directory below a mount point is on that filesystem, as df reports it
    server = start_server(pair_config((a, sub), require_mount_points=True))  # type: ignore[operator]
    r = httpx.get(f"{server.url}/status")
    assert r.status_code == 200 and r.text == "OK"


def test_embedded_default_runs_with_no_configuration(start_server: object, tmp_path: Path) -> None:
    work = tmp_path / "fresh"
    work.mkdir()
    server = start_server(None, workdir=work)  # type: ignore[operator]
    log = server.log_text()
    assert "WARNING" in log and "generated credentials" in log
    password = log.split("generated credentials '")[1].split("'")[0]
    user, _, pw = password.partition(":")
    body = b"embedded"
    sha = sha256(body)
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/status").text == "OK"
        assert c.post(f"/{sha}", content=body).status_code == 401
        assert c.post(f"/{sha}", content=body, auth=(user, pw)).status_code == 201
    assert layout_path(work / "data" / "a", sha).read_bytes() == body
    assert layout_path(work / "data" / "b", sha).read_bytes() == body


def test_embedded_default_takes_credentials_from_environment(start_server: object, tmp_path: Path) -> None:
    server = start_server(None, env={"STOR_BASIC_AUTH": "ops:envpass"})  # type: ignore[operator]
    assert "generated credentials" not in server.log_text()
    body = b"env creds"
    r = httpx.post(f"{server.url}/{sha256(body)}", content=body, auth=("ops", "envpass"))
    assert r.status_code == 201


def test_credentials_never_logged(start_server: object, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors))  # type: ignore[operator]
    body = b"log check"
    httpx.post(f"{server.url}/{sha256(body)}", content=body, auth=AUTH).raise_for_status()
    httpx.post(f"{server.url}/{sha256(body)}", content=body, auth=("writer", "wrong-guess"))
    server.stop()
    log = server.log_text()
    assert AUTH[1] not in log and "wrong-guess" not in log


def test_several_workers_serve(start_server: object, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors), workers=2)  # type: ignore[operator]
    bodies = [os.urandom(1000) for _ in range(10)]
    with httpx.Client(base_url=server.url) as c:
        for body in bodies:
            assert c.post(f"/{sha256(body)}", content=body, auth=AUTH).status_code == 201
        for body in bodies:
            assert c.get(f"/{sha256(body)}").content == body


def _connections_per_process(server: StorServer) -> dict[int, int]:
    """Established connections to the server's port, by the process that holds each (from /proc)."""
    inodes = tcp_sockets(server.port, "01")
    held = {}
    for pid in server.processes():
        fds = Path(f"/proc/{pid}/fd")
        links = [os.readlink(fds / fd) for fd in os.listdir(fds)]
        held[pid] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
    return held


def _connect_together(server: StorServer, n: int) -> list[socket.socket]:
    """n connections opened at once, each answered once (so each is accepted by some worker)."""
    wait_for(lambda: len(tcp_sockets(server.port, "0A")) == server.workers, what="every worker listening")
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", server.port))
    for s in socks:
        s.setblocking(True)
        s.settimeout(10)
        s.sendall(b"GET / HTTP/1.1\r\nHost: stor\r\n\r\n")
    for s in socks:
        assert s.recv(1000).startswith(b"HTTP/1.1 200")
    return socks


def test_connections_opened_at_once_spread_over_the_workers(start_server: object, mirrors: tuple[Path, Path]) -> None:
    """32 keep-alive connections opened together: every worker gets some. (uvicorn's shared
    listening socket let the worker that woke first accept all of them, while another idled.)"""
    server = start_server(pair_config(mirrors), workers=2)  # type: ignore[operator]
    socks = _connect_together(server, 32)
    try:
        held = _connections_per_process(server)
        assert sum(held.values()) == 32
        workers = [n for n in held.values() if n]
        assert len(workers) == 2 and min(workers) >= 4, held
    finally:
        for s in socks:
            s.close()


def _workers(server: StorServer) -> set[int]:
    """The live worker processes (not the supervisor, not multiprocessing's resource tracker)."""
    found: set[int] = set()
    try:
        pids = server.processes()
    except FileNotFoundError:  # one exited while the tree was walked: the caller asks again
        return found
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if status != "Z" and b"spawn_main" in cmdline:
            found.add(pid)
    return found


def test_a_worker_that_dies_is_replaced(start_server: object, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors), workers=2)  # type: ignore[operator]
    victim = min(_workers(server))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = _workers(server)
        if victim not in now and len(now) == 2:
            break
        time.sleep(0.1)  # polling for the new worker, not synchronising on it
    assert victim not in now and len(now) == 2, now
    assert f"pid {victim}) exited with -9; starting another" in server.log_text()
    socks = _connect_together(server, 32)  # the new worker takes its share of new connections
    try:
        held = _connections_per_process(server)
        assert all(held.get(pid, 0) >= 4 for pid in now), held
    finally:
        for s in socks:
            s.close()


def test_a_port_in_use_is_refused_not_shared(start_server: object, mirrors: tuple[Path, Path], tmp_path: Path) -> None:
    """Workers listen with SO_REUSEPORT; a second stor on the same port must still be refused."""
    first = start_server(pair_config(mirrors), workers=2)  # type: ignore[operator]
    second = StorServer(
        workdir=tmp_path, config=pair_config(mirrors), workers=2, port=first.port, fast_path=first.fast_path
    )
    done = subprocess.run(second.command(), cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{first.port}: Address already in use" in done.stderr
    assert httpx.get(f"{first.url}/").status_code == 200


def test_read_only_pair_is_read_but_never_written(start_server: object, tmp_path: Path) -> None:
    ro = (tmp_path / "old1", tmp_path / "old2")
    rw = (tmp_path / "new1", tmp_path / "new2")
    for d in ro + rw:
        d.mkdir()
    old = b"archived long ago"
    layout_path(ro[0], sha256(old)).parent.mkdir(parents=True)
    layout_path(ro[0], sha256(old)).write_bytes(old)
    server = start_server(pair_config(ro, rw, writable_pairs_regex="new"))  # type: ignore[operator]
    with httpx.Client(base_url=server.url) as c:
        assert c.get(f"/{sha256(old)}").content == old
        for i in range(20):
            body = f"new blob {i}".encode()
            assert c.post(f"/{sha256(body)}", content=body, auth=AUTH).status_code == 201
    assert len(list(ro[0].rglob("*.dat"))) == 1 and list(ro[1].rglob("*.dat")) == []
    assert len(list(rw[0].rglob("*.dat"))) == 20 == len(list(rw[1].rglob("*.dat")))


def test_empty_config_file_variable_means_embedded_default(start_server: object, tmp_path: Path) -> None:
    work = tmp_path / "empty-env"
    work.mkdir()
    server = start_server(None, workdir=work, env={"CONFIG_FILE": ""})  # type: ignore[operator]
    assert httpx.get(f"{server.url}/status").text == "OK"
    assert (work / "data" / "a").is_dir()


def test_existing_blob_answers_200_even_above_the_size_limit(start_server: object, mirrors: tuple[Path, Path]) -> None:
    """The existence check comes first, as in the original: a duplicate is never refused for its size."""
    server = start_server(pair_config(mirrors, max_blob_bytes=1000))  # type: ignore[operator]
    body = b"x" * 500
    sha = sha256(body)
    with httpx.Client(base_url=server.url) as c:
        assert c.post(f"/{sha}", content=body, auth=AUTH).status_code == 201
        again = c.post(f"/{sha}", content=b"y" * 5000, auth=AUTH)
    assert again.status_code == 200


@pytest.mark.shared_server
def test_unreadable_copy_is_a_500_not_a_404(
    client: httpx.Client, mirrors: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A storage fault (here a Unix socket where the blob should be) is never reported as absent.

    (A symlink is no fault: it reads as absent, tests/test_symlinks.py.)
    """
    body = b"faulty disk"
    sha = sha256(body)
    bad = layout_path(mirrors[0], sha)
    bad.parent.mkdir(parents=True)
    monkeypatch.chdir(bad.parent)  # a socket's address is at most 108 bytes: bind it by its name
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(bad.name)  # open() fails with ENXIO
    r = client.get(f"/{sha}")
    assert r.status_code == 500
    assert "not found" not in r.text

    good = layout_path(mirrors[1], sha)  # the other mirror's copy is still served
    good.parent.mkdir(parents=True)
    good.write_bytes(body)
    for _ in range(10):  # whichever mirror the probe order tries first
        r = client.get(f"/{sha}")
        assert r.status_code == 200 and r.content == body


@pytest.mark.shared_server
def test_a_directory_in_place_of_a_blob_is_a_fault(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    sha = sha256(b"dir")
    for m in mirrors:
        layout_path(m, sha).mkdir(parents=True)
    assert client.get(f"/{sha}").status_code == 500


def test_a_fifo_in_place_of_a_blob_never_stalls_the_server(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """Opening a FIFO for reading waits for a writer. One left where a blob should be is a fault
    for a GET (500, not a stalled event loop), and an upload of that blob replaces it."""
    server = start_server(pair_config(mirrors))
    data = b"fifo" * 100
    sha = sha256(data)
    for m in mirrors:
        p = layout_path(m, sha)
        p.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(p)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get(f"/{sha}").status_code == 500
        assert c.head(f"/{sha}").status_code == 500
        assert c.get("/").status_code == 200
        r = c.post(f"/{sha}", content=data, auth=AUTH)
        assert r.status_code == 201, r.text
        assert c.get(f"/{sha}").content == data
    assert all(layout_path(m, sha).read_bytes() == data for m in mirrors)
    assert "not a regular file" in server.log_text()


@pytest.mark.parametrize("size,read_first", [(200_000, True), (5_000_000, False)])
def test_early_answer_keeps_the_next_request_on_the_client_working(
    client: httpx.Client, size: int, read_first: bool
) -> None:
    """A large duplicate is answered before its body is read: the answer closes the connection
    and says so, and the client's next request goes out on a fresh one. A small body (up to
    1 MiB) sent without Expect: 100-continue is read first, and the connection stays open."""
    body = b"dup" * 10
    sha = sha256(body)
    assert client.post(f"/{sha}", content=body, auth=AUTH).status_code == 201
    for _ in range(3):
        r = client.post(f"/{sha}", content=os.urandom(size), auth=AUTH)
        assert r.status_code == 200
        assert r.headers.get("connection") == (None if read_first else "close")
        assert client.get(f"/{sha}").content == body
        bad = client.post("/not-a-sha", content=os.urandom(size), auth=AUTH)
        assert bad.status_code == 412
        assert client.get(f"/{sha}").content == body


@pytest.mark.parametrize("access_log", [False, True])
def test_access_log_is_opt_in(mirrors: tuple[Path, Path], tmp_path: Path, access_log: bool, fast_path: bool) -> None:
    server = StorServer(
        workdir=tmp_path, config=pair_config(mirrors), args=["--access-log"] if access_log else [], fast_path=fast_path
    )
    server.start()
    try:
        assert httpx.get(f"{server.url}/{ZERO_SHA}").status_code == 404
    finally:
        server.stop()
    assert (ZERO_SHA in server.log_text()) == access_log
