"""Prometheus /metrics, against a real `stor serve --workers 2` (prometheus-client multiprocess mode).

A known set of requests, each on a fresh connection so that both workers get
traffic; the scrape (whichever worker answers it) must add up every worker's
counts exactly.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from conftest import AUTH, StorServer, pair_config, sha256
from realservers import memcached, put_by_hand  # noqa: F401  (fixtures)

SHA_ROUTE = "/{sha}"


def scrape(url: str) -> dict[str, Any]:
    """Families by name, from a fresh connection."""
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def samples(families: dict[str, Any], family: str, sample: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    f = families.get(family)
    if f is None:
        return {}
    wanted = sample or family
    return {tuple(sorted(s.labels.items())): s.value for s in f.samples if s.name == wanted}


def requests_by_route(families: dict[str, Any]) -> Tally[tuple[str, str, str]]:
    out: Tally[tuple[str, str, str]] = Tally()
    for labels, value in samples(families, "stor_http_requests", "stor_http_requests_total").items():
        d = dict(labels)
        out[(d["method"], d["route"], d["status"])] += int(value)
    return out


def worker_pids(server: StorServer) -> list[int]:
    assert server.proc is not None
    pid = server.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    # The server's worker processes (spawned by stor/workers.py, whose multiprocessing
    # resource tracker is another child and no worker).
    return [int(c) for c in children if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]


def per_worker_requests(server: StorServer, d: Path) -> dict[int, int]:
    """Blob requests each worker process counted, read from its own file in the multiprocess directory d."""
    out = {}
    for pid in worker_pids(server):
        f = d / f"counter_{pid}.db"
        if not f.exists():
            out[pid] = 0
            continue
        total = 0
        for metric in MultiProcessCollector.merge([str(f)]):
            for s in metric.samples:
                if s.name == "stor_http_requests_total" and s.labels["route"] == SHA_ROUTE:
                    total += int(s.value)
        out[pid] = total
    return out


def test_metrics_add_up_over_two_workers(
    start_server: Any, mirrors: tuple[Path, Path], memcached: Any
) -> None:
    m = memcached()
    a, b = mirrors
    # The directory is named here so the test can read each worker's own file;
    # without it `stor serve` makes one itself (test_metrics_on_a_configured_path does that).
    metrics_dir = a.parent / "prometheus-multiproc"
    metrics_dir.mkdir()
    server = start_server(
        pair_config(mirrors, memcached_servers=[m.address]),
        workers=2,
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    url = server.url

    n_post, n_dup, n_hand = 12, 3, 4
    posted = [os.urandom(1000 + 37 * i) for i in range(n_post)]
    hand = [os.urandom(900 + i) for i in range(n_hand)]  # on disk, not in the cache: a miss and a 1-probe lookup
    for data in hand:
        put_by_hand(sha256(data), data, a, b)
    missing = [f"{i:064x}" for i in range(1, 6)]
    mismatch = os.urandom(777)

    def post(data: bytes, sha: str | None = None) -> int:
        return httpx.post(f"{url}/{sha or sha256(data)}", content=data, auth=AUTH, timeout=30).status_code

    def get(sha: str) -> httpx.Response:
        return httpx.get(f"{url}/{sha}", timeout=30)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, posted)) == [201] * n_post
        assert list(pool.map(post, posted[:n_dup])) == [200] * n_dup
        assert post(mismatch, sha256(b"not these bytes")) == 412
        got = list(pool.map(get, [sha256(d) for d in posted]))
        assert [(r.status_code, r.content) for r in got] == [(200, d) for d in posted]
        got = list(pool.map(get, [sha256(d) for d in hand]))
        assert [(r.status_code, r.content) for r in got] == [(200, d) for d in hand]
        assert [r.status_code for r in pool.map(get, missing)] == [404] * len(missing)

    sent_blobs = {
        ("POST", SHA_ROUTE, "201"): n_post,
        ("POST", SHA_ROUTE, "200"): n_dup,
        ("POST", SHA_ROUTE, "412"): 1,
        ("GET", SHA_ROUTE, "200"): n_post + len(hand),
        ("GET", SHA_ROUTE, "404"): len(missing),
    }
    # Small duplicates sent without Expect: 100-continue have their bodies read too.
    uploaded = sum(map(len, posted)) + sum(map(len, posted[:n_dup])) + len(mismatch)
    downloaded = sum(map(len, posted)) + sum(map(len, hand))

    # Both workers served part of the traffic (read from each worker's own counter file,
    # which a worker brings up to date at least every FLUSH_SECONDS: poll, bounded).
    deadline = time.monotonic() + 10
    while sum((per_worker := per_worker_requests(server, metrics_dir)).values()) < sum(sent_blobs.values()):
        assert time.monotonic() < deadline, per_worker
    assert len(per_worker) == 2, per_worker
    assert sum(per_worker.values()) == sum(sent_blobs.values()), per_worker
    assert all(v > 0 for v in per_worker.values()), f"one worker got all the traffic: {per_worker}"

    # Several scrapes; each one counts the scrapes before it. A scrape's own count is
    # recorded as its response ends, so poll (bounded) until the previous ones are in.
    scrapes = 0
    deadline = time.monotonic() + 10
    matched = 0
    while matched < 3:
        fams = scrape(f"{url}/metrics")
        expected = Tally(sent_blobs)
        if scrapes:
            expected[("GET", "/metrics", "200")] = scrapes
        scrapes += 1
        got_requests = requests_by_route(fams)
        # The harness's readiness probe(s) of "/" before the test began: at least one, not ours to count.
        assert got_requests.pop(("GET", "/", "200"), 0) >= 1
        if got_requests == expected:
            matched += 1
            continue
        assert time.monotonic() < deadline, f"requests counted {dict(got_requests)}, sent {dict(expected)}"
    last = fams

    received = samples(last, "stor_http_received_bytes", "stor_http_received_bytes_total")
    assert received[()] == uploaded
    sent = samples(last, "stor_http_sent_bytes", "stor_http_sent_bytes_total")
    assert sent[()] >= downloaded

    assert samples(last, "stor_blobs_written", "stor_blobs_written_total") == {(): n_post}
    assert samples(last, "stor_blob_duplicates", "stor_blob_duplicates_total") == {(): n_dup}
    assert samples(last, "stor_verification_failures", "stor_verification_failures_total") == {(): 1}
    lookups = {dict(k)["probes"]: v for k, v in samples(last, "stor_lookups", "stor_lookups_total").items() if v}
    assert lookups == {"1": len(hand), "2": len(missing)}
    cache = {dict(k)["result"]: v for k, v in samples(last, "stor_cache_requests", "stor_cache_requests_total").items() if v}
    # A POST records the location in memcached: every GET of a posted blob hits, whichever worker serves it.
    assert cache == {"hit": n_post, "miss": len(hand) + len(missing)}

    durations = {
        dict(k)["method"] + " " + dict(k)["route"]: v
        for k, v in samples(last, "stor_http_request_duration_seconds", "stor_http_request_duration_seconds_count").items()
    }
    assert durations["GET /{sha}"] == n_post + len(hand) + len(missing)
    assert durations["POST /{sha}"] == n_post + n_dup + 1
    assert durations["GET /metrics"] == scrapes - 1
    buckets = samples(last, "stor_http_request_duration_seconds", "stor_http_request_duration_seconds_bucket")
    inf = {dict(k)["method"] + " " + dict(k)["route"]: v for k, v in buckets.items() if dict(k)["le"] == "+Inf"}
    assert inf["GET /{sha}"] == durations["GET /{sha}"]

    free = {dict(k)["storage"]: v for k, v in samples(last, "stor_storage_free_bytes").items()}
    assert set(free) == {str(a), str(b)}
    assert all(v > 0 for v in free.values()), free


def test_metrics_disabled_is_404(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors, prometheus={"enabled": False}))
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 404
    assert "stor_http_requests" not in r.text


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_on_a_configured_path(start_server: Any, mirrors: tuple[Path, Path], workers: int) -> None:
    server = start_server(pair_config(mirrors, prometheus={"path": "/prom"}), workers=workers)
    assert httpx.get(f"{server.url}/metrics").status_code == 404
    assert httpx.get(f"{server.url}/").status_code == 200
    deadline = time.monotonic() + 10
    # The other worker's counts reach a scrape within FLUSH_SECONDS: poll, bounded.
    earlier_scrapes = 0
    while True:
        reqs = requests_by_route(scrape(f"{server.url}/prom"))
        if reqs[("GET", SHA_ROUTE, "404")] and reqs[("GET", "/", "200")]:
            break
        assert time.monotonic() < deadline, reqs
        earlier_scrapes += 1
    assert reqs[("GET", SHA_ROUTE, "404")] == 1  # "metrics" is now just a malformed sha
    assert reqs[("GET", "/", "200")] >= 1  # the harness's readiness probes and the GET above
    assert reqs[("GET", "/prom", "200")] <= earlier_scrapes  # a scrape is counted after its own answer
    while requests_by_route(scrape(f"{server.url}/prom"))[("GET", "/prom", "200")] == 0:
        assert time.monotonic() < deadline, "scrapes of /prom are never counted under route /prom"


def test_bytes_sent_count_blobs_the_server_sends_itself(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """A large blob goes out from its file (on the fast path by sendfile from a thread, not through Python): still counted."""
    server = start_server(pair_config(mirrors))
    data = os.urandom(3 * 1024 * 1024 + 5)
    sha = sha256(data)
    assert httpx.post(f"{server.url}/{sha}", content=data, auth=AUTH).status_code == 201

    def sent() -> float:
        return scrape(server.url + "/metrics")["stor_http_sent_bytes"].samples[0].value

    before = sent()
    assert httpx.get(f"{server.url}/{sha}").content == data
    deadline = time.monotonic() + 5
    while sent() - before < len(data) and time.monotonic() < deadline:
        pass  # the count lands when the response has finished: poll for it
    assert sent() - before >= len(data)


def test_an_answer_abandoned_by_its_client_is_counted_as_499_not_as_delivered(
    start_server: Any, mirrors: tuple[Path, Path]
) -> None:
    """A client that reads the first 64 KiB of a 64 MiB download (sent from the file: beyond the
    hot limit) and closes the connection did not get its answer: the request is counted with
    status 499 (nginx's "client closed request"), and not as a GET answered 200."""
    server = start_server(pair_config(mirrors))
    data = os.urandom(64 << 20)
    sha = sha256(data)
    assert httpx.post(f"{server.url}/{sha}", content=data, auth=AUTH, timeout=120).status_code == 201
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET /{sha} HTTP/1.1\r\nHost: stor\r\n\r\n".encode())
        got = b""
        while len(got) < 64 << 10:
            chunk = sock.recv((64 << 10) - len(got))
            assert chunk, f"connection closed after {len(got)} bytes"
            got += chunk
        assert got.startswith(b"HTTP/1.1 200 "), got[:200]
    # Closed with the rest unread: the kernel resets the connection, and the send fails.

    def blob_reads() -> dict[tuple[str, str, str], int]:
        counted = requests_by_route(scrape(f"{server.url}/metrics"))
        return {k: v for k, v in counted.items() if k[:2] == ("GET", SHA_ROUTE) and v}

    deadline = time.monotonic() + 20
    while not (reads := blob_reads()):
        # The count lands when the answer is given up, and reaches a scrape within a second: poll, bounded.
        assert time.monotonic() < deadline, "the abandoned GET was never counted"
        time.sleep(0.1)
    assert reads.get(("GET", SHA_ROUTE, "200"), 0) == 0, f"the abandoned GET was counted as delivered: {reads}"
    assert reads == {("GET", SHA_ROUTE, "499"): 1}, reads
