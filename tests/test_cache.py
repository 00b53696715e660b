"""The memcached location cache, against real memcached processes and real `stor serve` processes.

Keys are `stor:loc:<lower hex sha>`, values the storage directory that held the
blob; only locations are cached, never absence; a stale location costs one
failed open; an unreachable memcached is a miss, logged once per outage.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from conftest import AUTH, layout_path, pair_config, sha256
from realservers import (  # noqa: F401  (fixtures)
    KEY_PREFIX,
    StatsdReceiver,
    cache_key,
    memcached,
    metric_segment,
    names,
    put_by_hand,
    statsd_rx,
)


def workdir(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    return d


def sentinel(rx: StatsdReceiver, c: httpx.Client) -> list[str]:
    """Names received before a marker request (a malformed GET, answered after its counters were sent)."""
    assert c.get(f"/sentinel-{uuid.uuid4().hex}").status_code == 404
    got = names(rx.collect("error.get.malformed_sha.count"))
    assert got[-2:] == ["request.get.count", "error.get.malformed_sha.count"], got
    return got[:-2]


# ---- key distribution ----------------------------------------------------------------------


def test_keys_spread_over_two_servers_each_on_exactly_one(
    start_server: Any, mirrors: tuple[Path, Path], memcached: Any
) -> None:
    m1, m2 = memcached(), memcached()
    a, b = mirrors
    server = start_server(pair_config(mirrors, memcached_servers=[m1.address, m2.address]))
    blobs = {}
    for i in range(40):
        data = f"spread {i} {uuid.uuid4()}".encode()
        blobs[sha256(data)] = data
        put_by_hand(sha256(data), data, a, b)  # on disk only: the GET does the lookup and caches it

    with httpx.Client(base_url=server.url) as c:
        for i, (sha, data) in enumerate(blobs.items()):
            r = c.get(f"/{sha.upper() if i % 2 else sha}")  # either case in the URL, one key
            assert r.status_code == 200 and r.content == data

    on = {m1.address: 0, m2.address: 0}
    for sha in blobs:
        v1, v2 = m1.location(sha), m2.location(sha)
        assert (v1 is None) != (v2 is None), f"{sha}: on {m1.address}: {v1!r}, on {m2.address}: {v2!r}"
        value = v1 or v2
        assert value in (str(a), str(b)), value
        on[m1.address if v1 else m2.address] += 1
        # the key is the lower-case sha, not the upper-case file name
        assert m1.get(KEY_PREFIX + sha.upper()) is None and m2.get(KEY_PREFIX + sha.upper()) is None
    assert all(n > 0 for n in on.values()), f"keys not spread: {on}"


# ---- hit / miss ----------------------------------------------------------------------------


def test_first_get_misses_second_hits_and_post_sets_location(
    start_server: Any, mirrors: tuple[Path, Path], memcached: Any, statsd_rx: StatsdReceiver
) -> None:
    m = memcached()
    a, b = mirrors
    server = start_server(pair_config(mirrors, memcached_servers=[m.address], statsite=statsd_rx.config()))
    data = os.urandom(3000)
    sha = sha256(data)
    put_by_hand(sha, data, a, b)

    with httpx.Client(base_url=server.url) as c:
        assert c.get(f"/{sha}").status_code == 200
        first = sentinel(statsd_rx, c)
        assert "cache.miss" in first and "cache.hit" not in first, first
        assert "lookup.attempt.1.count" in first and "lookup.time" in first, first
        assert m.location(sha) in (str(a), str(b))

        r = c.get(f"/{sha}")
        assert r.status_code == 200 and r.content == data
        second = sentinel(statsd_rx, c)
        assert "cache.hit" in second and "cache.miss" not in second, second
        assert not any(n.startswith("lookup.") for n in second), second

        # POST records where it wrote: the next GET is a hit without any lookup.
        new = os.urandom(2000)
        new_sha = sha256(new)
        assert c.post(f"/{new_sha}", content=new, auth=AUTH).status_code == 201
        assert m.location(new_sha) == str(a)  # the pair's first directory
        sentinel(statsd_rx, c)
        r = c.get(f"/{new_sha}")
        assert r.status_code == 200 and r.content == new
        after_post = sentinel(statsd_rx, c)
        assert "cache.hit" in after_post and "cache.miss" not in after_post, after_post


def test_memcached_itself_answers_hits_without_the_local_lru(
    start_server: Any, mirrors: tuple[Path, Path], memcached: Any, statsd_rx: StatsdReceiver
) -> None:
    """With the worker's own memory of reads off, the location really comes from memcached: change it there, it is followed."""
    m = memcached()
    a, b = mirrors
    server = start_server(
        pair_config(
            mirrors, memcached_servers=[m.address], local_cache_size=0, hot_blobs=0, statsite=statsd_rx.config()
        )
    )
    data = os.urandom(500)
    sha = sha256(data)
    put_by_hand(sha, data, a, b)
    seg = {d: "success.get.ok_old." + metric_segment(d) + ".count" for d in (a, b)}

    with httpx.Client(base_url=server.url) as c:
        assert c.get(f"/{sha}").status_code == 200
        sentinel(statsd_rx, c)
        for directory in (b, a, b):
            m.set(cache_key(sha), str(directory))
            assert c.get(f"/{sha}").content == data
            got = names(statsd_rx.collect(seg[directory]))
            assert "cache.hit" in got and "cache.miss" not in got, got
            assert seg[a if directory == b else b] not in got, got


# ---- absence is never cached ---------------------------------------------------------------


def test_absence_is_never_cached(start_server: Any, tmp_path: Path, mirrors: tuple[Path, Path], memcached: Any) -> None:
    m = memcached()
    config = pair_config(mirrors, memcached_servers=[m.address])
    node1 = start_server(config, workdir=workdir(tmp_path, "n1"))
    node2 = start_server(config, workdir=workdir(tmp_path, "n2"))
    data = os.urandom(4000)
    sha = sha256(data)

    assert httpx.get(f"{node1.url}/{sha}").status_code == 404
    assert httpx.get(f"{node1.url}/{sha}").status_code == 404  # twice: the miss may now be "known"
    assert m.location(sha) is None

    assert httpx.post(f"{node2.url}/{sha}", content=data, auth=AUTH).status_code == 201
    r = httpx.get(f"{node1.url}/{sha}")
    assert r.status_code == 200 and r.content == data


# ---- stale entries -------------------------------------------------------------------------


def test_stale_location_falls_back_to_lookup_and_is_corrected(
    start_server: Any, tmp_path: Path, memcached: Any
) -> None:
    m = memcached()
    dirs = [tmp_path / n for n in ("p1a", "p1b", "p2a", "p2b")]
    for d in dirs:
        d.mkdir()
    p1, p2 = (dirs[0], dirs[1]), (dirs[2], dirs[3])
    server = start_server(pair_config(p1, p2, memcached_servers=[m.address]))
    data = os.urandom(5000)
    sha = sha256(data)
    put_by_hand(sha, data, *p1)

    with httpx.Client(base_url=server.url) as c:
        assert c.get(f"/{sha}").status_code == 200
        assert m.location(sha) in map(str, p1)

        # Moved by hand from pair 1 to pair 2: the cached (and LRU'd) location is now wrong.
        for src, dst in zip(p1, p2):
            target = layout_path(dst, sha)
            target.parent.mkdir(parents=True)
            os.rename(layout_path(src, sha), target)
        r = c.get(f"/{sha}")
        assert r.status_code == 200 and r.content == data
        assert m.location(sha) in map(str, p2)
        r = c.get(f"/{sha}")
        assert r.status_code == 200 and r.content == data


def test_blob_deleted_behind_the_cache_is_not_served(
    start_server: Any, mirrors: tuple[Path, Path], memcached: Any
) -> None:
    m = memcached()
    a, b = mirrors
    server = start_server(pair_config(mirrors, memcached_servers=[m.address]))
    data = os.urandom(700)
    sha = sha256(data)
    put_by_hand(sha, data, a, b)
    with httpx.Client(base_url=server.url) as c:
        assert c.get(f"/{sha}").status_code == 200
        assert m.location(sha) is not None
        for d in (a, b):
            layout_path(d, sha).unlink()
        r = c.get(f"/{sha}")
        assert r.status_code == 404, r.text
        assert r.text == f"File '{sha}' not found"
        assert m.location(sha) is None  # the stale entry was dropped
        assert c.get(f"/{sha}").status_code == 404


# ---- memcached going away and coming back --------------------------------------------------


def test_memcached_outage_is_survived_logged_once_and_recovered(
    start_server: Any, mirrors: tuple[Path, Path], memcached: Any
) -> None:
    m = memcached()
    a, b = mirrors
    retry = 0.5
    server = start_server(
        pair_config(mirrors, memcached_servers=[m.address], memcached_retry_after=retry, memcached_timeout=0.25)
    )
    unreachable = f"memcached {m.address} unreachable"
    again = f"memcached {m.address} reachable again"

    def hand_blob(tag: str) -> tuple[str, bytes]:
        data = f"{tag} {uuid.uuid4()}".encode()
        put_by_hand(sha256(data), data, a, b)
        return sha256(data), data

    with httpx.Client(base_url=server.url, timeout=10) as c:
        sha0, data0 = hand_blob("before")
        assert c.get(f"/{sha0}").status_code == 200
        assert m.location(sha0) is not None
        assert unreachable not in server.log_text()

        m.kill()
        # Requests keep working for several retry intervals: GETs that must ask memcached
        # (not in the in-process LRU), GETs of a cached blob, POSTs.
        deadline = time.monotonic() + 4 * retry
        count = 0
        while time.monotonic() < deadline or count < 20:
            sha, data = hand_blob(f"outage {count}")
            r = c.get(f"/{sha}")
            assert r.status_code == 200 and r.content == data
            assert c.get(f"/{sha0}").status_code == 200
            new = f"posted {count} {uuid.uuid4()}".encode()
            assert c.post(f"/{sha256(new)}", content=new, auth=AUTH).status_code == 201
            count += 1
        status = c.get("/status", headers={"Accept": "application/json"})
        assert status.status_code == 200 and status.json()["status"] == "degraded"
        log = server.log_text()
        assert log.count(unreachable) == 1, log
        assert again not in log

        m2 = memcached(port=m.port)
        deadline = time.monotonic() + 10 * retry + 5
        written = None
        while time.monotonic() < deadline:
            sha, data = hand_blob("after")
            assert c.get(f"/{sha}").status_code == 200
            written = m2.location(sha)
            if written is not None:
                break
            time.sleep(0.05)  # polling: a new request now and then until the server retries
        assert written in (str(a), str(b)), "no entry was written to memcached after it came back"
        log = server.log_text()
        assert log.count(again) == 1, log
        assert log.count(unreachable) == 1, log

        # A second outage is a new outage: logged once more.
        m2.kill()
        for i in range(5):
            sha, data = hand_blob(f"second outage {i}")
            assert c.get(f"/{sha}").content == data
        assert server.log_text().count(unreachable) == 2, server.log_text()


def test_hung_memcached_costs_at_most_its_timeout(
    start_server: Any, mirrors: tuple[Path, Path], memcached: Any
) -> None:
    """A memcached that accepts connections but never answers (SIGSTOP) must not stall reads or writes."""
    m = memcached()
    a, b = mirrors
    timeout = 0.25
    server = start_server(
        pair_config(mirrors, memcached_servers=[m.address], memcached_timeout=timeout, memcached_retry_after=0.5)
    )
    blobs = []
    for i in range(40):
        data = f"hung {i} {uuid.uuid4()}".encode()
        put_by_hand(sha256(data), data, a, b)
        blobs.append((sha256(data), data))
    assert m.proc is not None
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get(f"/{blobs[0][0]}").status_code == 200
        os.kill(m.proc.pid, signal.SIGSTOP)
        try:
            slowest = 0.0
            for sha, data in blobs[1:21]:
                started = time.monotonic()
                r = c.get(f"/{sha}")
                slowest = max(slowest, time.monotonic() - started)
                assert r.status_code == 200 and r.content == data
            new = os.urandom(1000)
            started = time.monotonic()
            assert c.post(f"/{sha256(new)}", content=new, auth=AUTH).status_code == 201
            slowest = max(slowest, time.monotonic() - started)
            assert slowest < timeout + 1.0, f"a request took {slowest:.2f}s with memcached hung"

            # Concurrent reads while it hangs: each waits at most about one timeout.
            def get(item: tuple[str, bytes]) -> tuple[int, float]:
                started = time.monotonic()
                r = httpx.get(f"{server.url}/{item[0]}", timeout=30)
                assert r.content == item[1]
                return r.status_code, time.monotonic() - started

            with ThreadPoolExecutor(16) as pool:
                results = list(pool.map(get, blobs[21:]))
            assert [code for code, _ in results] == [200] * len(blobs[21:])
            assert max(t for _, t in results) < 3.0, results
            assert server.log_text().count(f"memcached {m.address} unreachable") == 1, server.log_text()
        finally:
            os.kill(m.proc.pid, signal.SIGCONT)


def test_status_reports_cache_reachability(
    start_server: Any, mirrors: tuple[Path, Path], memcached: Any
) -> None:
    m = memcached()
    server = start_server(pair_config(mirrors, memcached_servers=[m.address], memcached_retry_after=0.5))
    js = {"Accept": "application/json"}
    with httpx.Client(base_url=server.url) as c:
        r = c.get("/status", headers=js)
        assert r.status_code == 200
        assert r.json()["status"] == "ok"
        assert r.json()["cache"] == [{"server": m.address, "reachable": True, "error": None}]

        m.kill()
        r = c.get("/status", headers=js)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "degraded"
        assert len(body["cache"]) == 1
        assert body["cache"][0]["server"] == m.address
        assert body["cache"][0]["reachable"] is False
        assert body["cache"][0]["error"]
        assert all(s["ok"] for s in body["storages"])
        plain = c.get("/status")
        assert plain.status_code == 200 and plain.text == "OK"

        memcached(port=m.port)
        r = c.get("/status", headers=js)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert r.json()["cache"][0]["reachable"] is True


def test_status_json_failing_storage_outranks_cache(
    start_server: Any, mirrors: tuple[Path, Path], memcached: Any
) -> None:
    m = memcached()
    a, b = mirrors
    server = start_server(pair_config(mirrors, memcached_servers=[m.address]))
    shutil.rmtree(b)
    m.kill()
    r = httpx.get(f"{server.url}/status", headers={"Accept": "application/json"})
    assert r.status_code == 503
    assert r.json()["status"] == "failing"
    assert r.json()["cache"][0]["reachable"] is False
