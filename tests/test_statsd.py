"""Every statsd name of the original Stor, seen on the wire for the event that produces it.

A real UDP socket receives what `stor serve` sends (statsite {"host", "port",
"prefix": "stor.test", "sample_rate": 1}). Counters are `|c`, timings `|ms`,
sizes counters bumped by the byte count. Each check looks at the packets sent
between two marker requests, so a name sent for the wrong event fails it.

Not covered here: the S3 names (`success.get.ok_hcp.count/.size/.time`,
`error.get.not_found_hcp.count`) belong to the S3 tier, a later issue.
"""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUTH, layout_path, pair_config, sha256
from realservers import (  # noqa: F401  (fixtures)
    Stat,
    StatsdReceiver,
    memcached,
    metric_segment,
    put_by_hand,
    statsd_rx,
)

MARK = "error.get.malformed_sha.count"


def window(rx: StatsdReceiver, c: httpx.Client, wait_for: tuple[str, ...] = ()) -> list[Stat]:
    """Stats sent since the last window: first until each named in wait_for has arrived, in any
    order (they are sent after a response completes, or by a background job), then everything up
    to a marker request (a malformed GET), marker excluded."""
    stats: list[Stat] = []
    for name in wait_for:
        if all(s.name != name for s in stats):
            stats += rx.collect(name)
    assert c.get(f"/mark-{uuid.uuid4().hex}").status_code == 404
    stats += rx.collect(MARK)
    assert [s.name for s in stats[-2:]] == ["request.get.count", MARK], [s.raw for s in stats]
    return stats[:-2]


def one(stats: list[Stat], name: str, type_: str, value: float | None = None) -> Stat:
    found = [s for s in stats if s.name == name]
    assert len(found) == 1, f"{name}: expected once, got {[s.raw for s in stats]}"
    s = found[0]
    assert s.type == type_, s.raw
    assert s.raw.startswith(f"stor.test.{name}:"), s.raw
    if value is not None:
        assert s.value == value, s.raw
    return s


def absent(stats: list[Stat], *names_: str) -> None:
    for name in names_:
        assert all(s.name != name for s in stats), f"{name} unexpected in {[s.raw for s in stats]}"


def test_read_path_names(
    start_server: Any, mirrors: tuple[Path, Path], memcached: Any, statsd_rx: StatsdReceiver
) -> None:
    m = memcached()
    a, b = mirrors
    server = start_server(pair_config(mirrors, memcached_servers=[m.address], statsite=statsd_rx.config()))
    data = os.urandom(12_345)
    sha = sha256(data)
    put_by_hand(sha, data, b)  # on mirror b only: the served storage is known
    ok_b = f"success.get.ok_old.{metric_segment(b)}"
    assert metric_segment(Path("/mnt/data1")) == "mnt-data1"
    assert metric_segment(Path("/srv//st_or.x/")) == "srv-st-or-x"

    with httpx.Client(base_url=server.url) as c:
        # First GET: a miss, a lookup of 1 or 2 probes (mirror order is random), served from b;
        # the missing twin on a is healed in the background, and that is counted too.
        r = c.get(f"/{sha}")
        assert r.status_code == 200 and r.content == data
        stats = window(statsd_rx, c, wait_for=(f"{ok_b}.time", "heal.repaired.count"))
        one(stats, "heal.queued.count", "c", 1)
        one(stats, "heal.repaired.count", "c", 1)
        one(stats, "request.get.count", "c", 1)
        one(stats, "cache.time", "ms")
        one(stats, "cache.miss", "c", 1)
        one(stats, "lookup.time", "ms")
        attempts = [s for s in stats if s.name.startswith("lookup.attempt.")]
        assert len(attempts) == 1 and attempts[0].name in ("lookup.attempt.1.count", "lookup.attempt.2.count")
        assert attempts[0].type == "c" and attempts[0].value == 1
        one(stats, f"{ok_b}.count", "c", 1)
        one(stats, f"{ok_b}.size", "c", len(data))
        assert one(stats, f"{ok_b}.time", "ms").value >= 0
        absent(stats, "cache.hit", f"success.get.ok_old.{metric_segment(a)}.count", "error.get.not_found_old.count")

        # Second GET: a hit, no lookup.
        assert c.get(f"/{sha}").status_code == 200
        stats = window(statsd_rx, c, wait_for=(f"{ok_b}.time",))
        one(stats, "request.get.count", "c", 1)
        one(stats, "cache.time", "ms")
        one(stats, "cache.hit", "c", 1)
        one(stats, f"{ok_b}.size", "c", len(data))
        absent(stats, "cache.miss", "lookup.time")
        assert not [s for s in stats if s.name.startswith("lookup.attempt.")]

        # On both mirrors: found at the first probe.
        both = os.urandom(100)
        put_by_hand(sha256(both), both, a, b)
        assert c.get(f"/{sha256(both)}").status_code == 200
        stats = window(statsd_rx, c, wait_for=("lookup.time",))
        one(stats, "lookup.attempt.1.count", "c", 1)

        # Not found anywhere: two probes (one pair), not_found_old.
        missing = "ab" * 32
        r = c.get(f"/{missing}")
        assert r.status_code == 404
        stats = window(statsd_rx, c)
        one(stats, "request.get.count", "c", 1)
        one(stats, "cache.miss", "c", 1)
        one(stats, "lookup.attempt.2.count", "c", 1)
        one(stats, "lookup.time", "ms")
        one(stats, "error.get.not_found_old.count", "c", 1)
        absent(stats, "error.get.500.count", "error.get.malformed_sha.count")

        # Malformed sha.
        assert c.get("/not-a-sha").status_code == 404
        stats = window(statsd_rx, c, wait_for=(MARK,))
        assert [s.name for s in stats] == ["request.get.count", MARK], [s.raw for s in stats]
        one(stats, MARK, "c", 1)


def test_cache_error_for_a_failed_call_and_while_memcached_is_marked_down(
    start_server: Any, mirrors: tuple[Path, Path], memcached: Any, statsd_rx: StatsdReceiver
) -> None:
    """A GET asks memcached twice (the location, then setting it once found). With memcached gone,
    the first call fails in a worker thread and marks the server down; every later call is skipped
    until retry_after. Both count cache.error, once per call."""
    m = memcached()
    a, b = mirrors
    server = start_server(
        pair_config(mirrors, memcached_servers=[m.address], memcached_retry_after=600, statsite=statsd_rx.config())
    )
    m.kill()
    with httpx.Client(base_url=server.url) as c:
        for _ in range(2):
            data = os.urandom(100)
            put_by_hand(sha256(data), data, a, b)
            assert c.get(f"/{sha256(data)}").content == data
            stats = window(statsd_rx, c, wait_for=("lookup.time",))
            errors = [s for s in stats if s.name == "cache.error"]
            assert [(e.type, e.value) for e in errors] == [("c", 1), ("c", 1)], [s.raw for s in stats]
            one(stats, "cache.miss", "c", 1)
    assert f"memcached {m.address} unreachable" in server.log_text()


def test_get_500_on_a_real_read_fault(
    start_server: Any, mirrors: tuple[Path, Path], statsd_rx: StatsdReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = mirrors
    server = start_server(pair_config(mirrors, statsite=statsd_rx.config()))
    sha = sha256(b"loop")
    for d in (a, b):
        path = layout_path(d, sha)
        path.parent.mkdir(parents=True)
        # A Unix socket where the blob should be: open() fails with ENXIO (a symlink would read as
        # absent). Bound by its name, as a socket's address is at most 108 bytes.
        monkeypatch.chdir(path.parent)
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(path.name)
    with httpx.Client(base_url=server.url) as c:
        r = c.get(f"/{sha}")
        assert r.status_code == 500, r.text
        stats = window(statsd_rx, c)
        one(stats, "request.get.count", "c", 1)
        one(stats, "error.get.500.count", "c", 1)
        absent(stats, "error.get.not_found_old.count")


def test_healthcheck_counts_healthy_status_only(
    start_server: Any, mirrors: tuple[Path, Path], statsd_rx: StatsdReceiver
) -> None:
    a, b = mirrors
    server = start_server(pair_config(mirrors, statsite=statsd_rx.config()))
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/status").text == "OK"
        stats = window(statsd_rx, c)
        assert [s.name for s in stats] == ["healthcheck.count"], [s.raw for s in stats]
        one(stats, "healthcheck.count", "c", 1)

        shutil.rmtree(b)
        assert c.get("/status").status_code == 503
        assert c.get("/status", headers={"Accept": "application/json"}).status_code == 503
        absent(window(statsd_rx, c), "healthcheck.count")


def test_post_names(
    start_server: Any, mirrors: tuple[Path, Path], statsd_rx: StatsdReceiver
) -> None:
    a, b = mirrors
    server = start_server(pair_config(mirrors, statsite=statsd_rx.config()))
    data = os.urandom(2048)
    sha = sha256(data)
    with httpx.Client(base_url=server.url) as c:
        assert c.post(f"/{sha}", content=data, auth=AUTH).status_code == 201
        stats = window(statsd_rx, c)
        one(stats, "request.post.count", "c", 1)
        one(stats, "success.post.write.count", "c", 1)
        absent(stats, "success.post.duplicate.count", "request.get.count")

        assert c.post(f"/{sha}", content=data, auth=AUTH).status_code == 200
        stats = window(statsd_rx, c)
        one(stats, "request.post.count", "c", 1)
        one(stats, "success.post.duplicate.count", "c", 1)
        absent(stats, "success.post.write.count")

        assert c.post("/xyz", content=data, auth=AUTH).status_code == 412
        stats = window(statsd_rx, c)
        one(stats, "request.post.count", "c", 1)
        one(stats, "error.post.malformed_sha.count", "c", 1)

        other = sha256(b"something else")
        assert c.post(f"/{other}", content=data, auth=AUTH).status_code == 412
        stats = window(statsd_rx, c)
        one(stats, "request.post.count", "c", 1)
        one(stats, "error.post.bad_sha.count", "c", 1)
        absent(stats, "success.post.write.count", "error.post.unknown.count")

    # A Content-Length larger than the whole disk: refused before any byte is read.
    st = os.statvfs(a)
    too_big = st.f_blocks * st.f_frsize + 1
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("POST", f"/{sha256(b'huge')}")
        conn.putheader("Content-Length", str(too_big))
        conn.putheader("Authorization", "Basic " + base64.b64encode(":".join(AUTH).encode()).decode())
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 507, resp.read()
    finally:
        conn.close()
    with httpx.Client(base_url=server.url) as c:
        stats = window(statsd_rx, c)
    one(stats, "request.post.count", "c", 1)
    one(stats, "error.post.no_space.count", "c", 1)


def test_post_to_read_only_storage_is_507_no_space(start_server: Any, tmpfs: Any, statsd_rx: StatsdReceiver) -> None:
    """Both mirrors remounted read-only: no pair can take the upload, which is 507 (as a full disk),
    counted as the original counted a 507."""
    a, b = tmpfs("ro1", "4m"), tmpfs("ro2", "4m")
    server = start_server(pair_config((a, b), statsite=statsd_rx.config()))
    for d in (a, b):
        subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
    data = os.urandom(1000)
    with httpx.Client(base_url=server.url) as c:
        r = c.post(f"/{sha256(data)}", content=data, auth=AUTH)
        assert r.status_code == 507, r.text
        stats = window(statsd_rx, c)
    one(stats, "request.post.count", "c", 1)
    one(stats, "error.post.no_space.count", "c", 1)
    absent(stats, "error.post.unknown.count", "success.post.write.count")


def test_post_unknown_on_a_real_write_fault(start_server: Any, mirrors: tuple[Path, Path], statsd_rx: StatsdReceiver,
                                            tmp_path: Path) -> None:
    """A layout directory that is a symlink out of the storage: the write is refused as a storage
    fault (500), counted as unknown."""
    data = os.urandom(1000)
    sha = sha256(data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (mirrors[0] / sha[:2].upper()).symlink_to(elsewhere)
    server = start_server(pair_config(mirrors, statsite=statsd_rx.config()))
    with httpx.Client(base_url=server.url) as c:
        r = c.post(f"/{sha}", content=data, auth=AUTH)
        assert r.status_code == 500, r.text
        stats = window(statsd_rx, c)
    one(stats, "request.post.count", "c", 1)
    one(stats, "error.post.unknown.count", "c", 1)
    absent(stats, "error.post.no_space.count", "success.post.write.count")
    assert not any(elsewhere.rglob("*"))


def test_tus_names(start_server: Any, mirrors: tuple[Path, Path], statsd_rx: StatsdReceiver) -> None:
    server = start_server(pair_config(mirrors, statsite=statsd_rx.config()))
    tus = {"Tus-Resumable": "1.0.0"}
    data = os.urandom(3000)
    with httpx.Client(base_url=server.url, auth=AUTH) as c:
        created = c.post("/files/", headers={**tus, "Upload-Length": str(len(data))})
        assert created.status_code == 201
        stats = window(statsd_rx, c)
        one(stats, "tus.created.count", "c", 1)
        url = created.headers["location"]
        patch = {**tus, "Content-Type": "application/offset+octet-stream"}
        assert c.patch(url, content=data[:1000], headers={**patch, "Upload-Offset": "0"}).status_code == 204
        stats = window(statsd_rx, c)
        one(stats, "tus.received.bytes", "c", 1000)
        absent(stats, "tus.completed.count", "success.post.write.count")
        assert c.patch(url, content=data[1000:], headers={**patch, "Upload-Offset": "1000"}).status_code == 204
        stats = window(statsd_rx, c)
        one(stats, "tus.received.bytes", "c", 2000)
        one(stats, "tus.completed.count", "c", 1)
        one(stats, "success.post.write.count", "c", 1)  # the blob is written as a POST's is

        wrong = base64.b64encode(sha256(b"other").encode()).decode()
        failing = c.post("/files/", headers={**tus, "Upload-Length": "5", "Upload-Metadata": f"sha256 {wrong}"})
        assert c.patch(failing.headers["location"], content=b"12345", headers={**patch, "Upload-Offset": "0"}).status_code == 412
        stats = window(statsd_rx, c)
        one(stats, "tus.failed.count", "c", 1)

        again = c.post("/files/", headers={**tus, "Upload-Length": "1"})
        assert c.delete(again.headers["location"], headers=tus).status_code == 204
        stats = window(statsd_rx, c)
        one(stats, "tus.terminated.count", "c", 1)
        stored = base64.b64encode(sha256(data).encode()).decode()
        assert c.post("/files/", headers={**tus, "Upload-Length": "3000", "Upload-Metadata": f"sha256 {stored}"}).status_code == 201
        stats = window(statsd_rx, c)
        one(stats, "tus.duplicate.count", "c", 1)
        absent(stats, "tus.created.count")
