"""The S3 tier against a real SeaweedFS: read order and fall-through, write modes, the copy queue, verified reads.

Tests that stop or kill SeaweedFS use their own instance (`own_seaweed`), never the session's.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import PASSWORD, USER, layout_path, pair_config, sha256, wait_for
from realservers import statsd_rx, names  # noqa: F401  (fixture)
from seaweed import SeaweedFS

AUTH = (USER, PASSWORD)
FAST_ONLY = pytest.mark.parametrize("fast_path", [True], ids=["fast"], indirect=True)
MIB = 1024 * 1024


def key_of(sha: str) -> str:
    return f"{sha[0:2]}/{sha[2:4]}/{sha[4:6]}/{sha}"


def s3_config(mirrors: tuple[Path, Path] | None, weed: SeaweedFS, bucket: str, **s3: Any) -> dict[str, Any]:
    """The original's keys for the tier, plus stor's s3 section; no pairs at all with mirrors None."""
    base = pair_config(mirrors) if mirrors is not None else pair_config()
    base.update(
        s3_enabled=True,
        s3_credentials={"access_key": weed.access_key, "secret_key": weed.secret_key, "host": weed.host},
        s3={"bucket": bucket, **s3},
    )
    return base


def put_object(weed: SeaweedFS, bucket: str, sha: str, data: bytes, **extra: Any) -> None:
    weed.client().put_object(Bucket=bucket, Key=key_of(sha), Body=data, **extra)


def object_bytes(weed: SeaweedFS, bucket: str, sha: str) -> bytes | None:
    client = weed.client()
    try:
        return bytes(client.get_object(Bucket=bucket, Key=key_of(sha))["Body"].read())
    except client.exceptions.NoSuchKey:
        return None


def store_locally(mirrors: tuple[Path, Path], data: bytes) -> str:
    """A blob written into both mirrors in the original layout, as another Stor would have left it."""
    sha = sha256(data)
    for root in mirrors:
        path = layout_path(root, sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return sha


def status(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/status", headers={"Accept": "application/json"}).json()


def scrape(url: str, series: str) -> float:
    """One Prometheus sample's value (0 when absent)."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


@pytest.fixture(scope="module")
def own_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this module's own, which its tests may stop, kill and restart."""
    weed = SeaweedFS(tmp_path_factory.mktemp("own-seaweed")).start()
    yield weed
    weed.close()


@pytest.fixture
def running(own_seaweed: SeaweedFS) -> Iterator[SeaweedFS]:
    """own_seaweed, running at the start of the test and again at its end, whatever the test did to it."""
    if own_seaweed.proc is None or own_seaweed.proc.poll() is not None:
        own_seaweed.restart()
    yield own_seaweed
    if own_seaweed.proc is None or own_seaweed.proc.poll() is not None:
        own_seaweed.restart()


# ---- reads -------------------------------------------------------------------------------


def test_a_blob_only_in_the_bucket_is_served_as_the_original_did(
    start_server: Any, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    """A bucket filled in the original's key scheme by another client: GET, HEAD, Range, conditionals."""
    data = os.urandom(300_000)
    sha = sha256(data)
    put_object(seaweed, s3_bucket, sha, data, ContentType="application/x-dosexec", Metadata={"filename": "a.exe"})
    server = start_server(s3_config(mirrors, seaweed, s3_bucket))

    got = httpx.get(f"{server.url}/{sha.upper()}")
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-length"] == str(len(data))
    assert got.headers["etag"] == f'"{sha}"'
    assert got.headers["content-type"] == "application/x-dosexec"
    assert got.headers["x-filename"] == "a.exe"
    assert "last-modified" in got.headers

    head = httpx.head(f"{server.url}/{sha}")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data)) and head.content == b""

    part = httpx.get(f"{server.url}/{sha}", headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = httpx.get(f"{server.url}/{sha}", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]

    assert httpx.get(f"{server.url}/{sha}", headers={"If-None-Match": f'"{sha}"'}).status_code == 304
    since = httpx.get(f"{server.url}/{sha}", headers={"If-Modified-Since": got.headers["last-modified"]})
    assert since.status_code == 304

    missing = "ab" * 32
    answer = httpx.get(f"{server.url}/{missing}")
    assert answer.status_code == 404 and answer.text == f"File '{missing}' not found"
    # Nothing was copied to local storage by reading.
    assert not layout_path(mirrors[0], sha).exists()


def test_s3_reads_report_the_original_metric_names_and_a_tier_label(
    start_server: Any, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str, statsd_rx: Any
) -> None:
    in_s3, local_only = os.urandom(5000), os.urandom(6000)
    sha_s3 = sha256(in_s3)
    put_object(seaweed, s3_bucket, sha_s3, in_s3)
    sha_local = store_locally(mirrors, local_only)
    server = start_server(s3_config(mirrors, seaweed, s3_bucket) | {"statsite": statsd_rx.config()})

    assert httpx.get(f"{server.url}/{sha_s3}").content == in_s3
    stats = statsd_rx.collect("success.get.ok_hcp.time")
    assert {"success.get.ok_hcp.count", "success.get.ok_hcp.size"} <= set(names(stats))
    assert next(s.value for s in stats if s.name == "success.get.ok_hcp.size") == len(in_s3)

    # S3 first, as the original: a miss there is counted, then local storage answers.
    assert httpx.get(f"{server.url}/{sha_local}").content == local_only
    stats = statsd_rx.collect("cache.miss")
    assert "error.get.not_found_hcp.count" in names(stats)

    assert scrape(server.url, 'stor_reads_total{result="found",tier="s3"}') == 1
    assert scrape(server.url, 'stor_reads_total{result="missing",tier="s3"}') == 1
    assert scrape(server.url, 'stor_reads_total{result="found",tier="local"}') == 1


@FAST_ONLY
def test_read_order_decides_which_tier_answers(
    start_server: Any, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    """Different bytes under one sha in each tier (a corrupt object) show which tier answered."""
    good = os.urandom(2000)
    sha = store_locally(mirrors, good)
    put_object(seaweed, s3_bucket, sha, b"not the blob")
    s3_first = start_server(s3_config(mirrors, seaweed, s3_bucket))
    assert httpx.get(f"{s3_first.url}/{sha}").content == b"not the blob"
    s3_first.stop()
    local_first = start_server(s3_config(mirrors, seaweed, s3_bucket, read_order="local-first"))
    assert httpx.get(f"{local_first.url}/{sha}").content == good
    # local-first still finds what is only in the bucket.
    only = os.urandom(100)
    put_object(seaweed, s3_bucket, sha256(only), only)
    assert httpx.get(f"{local_first.url}/{sha256(only)}").content == only


def test_an_s3_outage_never_hides_local_blobs(
    start_server: Any, mirrors: tuple[Path, Path], running: SeaweedFS
) -> None:
    bucket = running.new_bucket()
    data = os.urandom(10_000)
    sha = store_locally(mirrors, data)
    only_s3 = os.urandom(3000)
    put_object(running, bucket, sha256(only_s3), only_s3)
    server = start_server(s3_config(mirrors, running, bucket, connect_timeout=1, read_timeout=2, retry_after=60))
    assert httpx.get(f"{server.url}/{sha256(only_s3)}").content == only_s3
    assert status(server.url)["s3"]["reachable"] is True

    running.stop()
    for _ in range(5):
        got = httpx.get(f"{server.url}/{sha}", timeout=10)
        assert got.status_code == 200 and got.content == data
        assert httpx.head(f"{server.url}/{sha}", timeout=10).status_code == 200
    # What is only in the bucket is missing meanwhile, honestly: not a 500.
    assert httpx.get(f"{server.url}/{sha256(only_s3)}", timeout=10).status_code == 404
    health = httpx.get(f"{server.url}/status", headers={"Accept": "application/json"}, timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert health.json()["s3"]["reachable"] is False and health.json()["s3"]["error"]
    assert httpx.get(f"{server.url}/status", timeout=10).text == "OK"
    # Logged once for the outage, not once per request.
    assert server.log_text().count("S3 fault") == 1
    assert scrape(server.url, "stor_s3_faults_total") >= 1

    running.restart()
    # /status probes the bucket itself and ends the outage: reads ask S3 again at once.
    wait_for(lambda: status(server.url)["status"] == "ok", timeout=30, what="S3 reachable again")
    assert httpx.get(f"{server.url}/{sha256(only_s3)}").content == only_s3
    assert "S3 answers again" in server.log_text()


# ---- write modes -------------------------------------------------------------------------


@FAST_ONLY
def test_write_mode_local_writes_local_pairs_only(
    start_server: Any, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    server = start_server(s3_config(mirrors, seaweed, s3_bucket))
    data = os.urandom(4000)
    sha = sha256(data)
    assert httpx.post(f"{server.url}/{sha}", content=data, auth=AUTH).status_code == 201
    assert layout_path(mirrors[0], sha).read_bytes() == data
    assert object_bytes(seaweed, s3_bucket, sha) is None
    assert status(server.url)["s3"]["copy_queue"] is None


@FAST_ONLY
def test_write_mode_local_and_s3_copies_each_acknowledged_blob(
    start_server: Any, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    server = start_server(s3_config(mirrors, seaweed, s3_bucket, write_mode="local+s3", part_bytes=5 * MIB))
    blobs = [os.urandom(n) for n in (10, 100_000, 12 * MIB + 7)]
    for data in blobs:
        answer = httpx.post(f"{server.url}/{sha256(data)}", content=data, auth=AUTH, timeout=60)
        assert answer.status_code == 201
        assert layout_path(mirrors[0], sha256(data)).read_bytes() == data  # committed locally when acknowledged
    for data in blobs:
        wait_for(lambda: object_bytes(seaweed, s3_bucket, sha256(data)) == data, timeout=30, what="the copy")
    wait_for(lambda: status(server.url)["s3"]["copy_queue"]["depth"] == 0, what="an empty queue")
    assert not list((mirrors[0] / ".stor-s3-queue").iterdir())
    assert scrape(server.url, 'stor_s3_copies_total{result="done"}') == len(blobs)
    # A duplicate is not queued again.
    assert httpx.post(f"{server.url}/{sha256(blobs[0])}", content=blobs[0], auth=AUTH).status_code == 200
    assert status(server.url)["s3"]["copy_queue"]["depth"] == 0


@FAST_ONLY
def test_copies_wait_out_an_outage_and_survive_a_kill(
    start_server: Any, mirrors: tuple[Path, Path], running: SeaweedFS
) -> None:
    """Acknowledged while S3 is down, stor killed with -9 before any copy: the queue on disk still copies it."""
    bucket = running.new_bucket()
    config = s3_config(
        mirrors, running, bucket, write_mode="local+s3", connect_timeout=1, read_timeout=2,
        copy_retry_min=0.2, copy_retry_max=1,
    )
    server = start_server(config)
    running.stop()
    data = os.urandom(50_000)
    sha = sha256(data)
    assert httpx.post(f"{server.url}/{sha}", content=data, auth=AUTH, timeout=10).status_code == 201
    queue = status(server.url)["s3"]["copy_queue"]
    assert queue["depth"] == 1 and queue["oldest_seconds"] >= 0
    assert (mirrors[0] / ".stor-s3-queue" / sha).exists()
    assert scrape(server.url, "stor_s3_copy_queue_depth") == 1

    for pid in server.processes():
        os.kill(pid, signal.SIGKILL)
    server.proc.wait()
    running.restart()
    log_before = server.log_text()
    assert log_before.count("to S3 failed (") == 1  # the outage is said once, however often copies are retried
    again = start_server(config)
    wait_for(lambda: object_bytes(running, bucket, sha) == data, timeout=30, what="the copy after the restart")
    wait_for(lambda: status(again.url)["s3"]["copy_queue"]["depth"] == 0, what="an empty queue")


@FAST_ONLY
def test_write_mode_s3_on_a_node_without_local_storage(
    start_server: Any, seaweed: SeaweedFS, s3_bucket: str
) -> None:
    server = start_server(s3_config(None, seaweed, s3_bucket, write_mode="s3", part_bytes=5 * MIB) | {"storage_pairs": []})
    small, large = os.urandom(1000), os.urandom(11 * MIB + 3)
    answer = httpx.post(f"{server.url}/{sha256(small)}", content=small, auth=AUTH)
    assert answer.status_code == 201 and answer.json() == [f"s3://{s3_bucket}/{key_of(sha256(small))}"]
    assert object_bytes(seaweed, s3_bucket, sha256(small)) == small
    # Streamed (a chunked body, unknown length): a multipart upload of three parts.
    answer = httpx.post(
        f"{server.url}/{sha256(large)}", content=iter([large[i : i + MIB] for i in range(0, len(large), MIB)]),
        auth=AUTH, timeout=60,
    )
    assert answer.status_code == 201
    assert object_bytes(seaweed, s3_bucket, sha256(large)) == large
    assert httpx.get(f"{server.url}/{sha256(large)}", timeout=60).content == large
    # Already in the bucket: 200 at once.
    assert httpx.post(f"{server.url}/{sha256(small)}", content=small, auth=AUTH).status_code == 200
    s = status(server.url)
    assert s["status"] == "ok" and s["storages"] == [] and s["s3"]["reachable"] is True


@FAST_ONLY
def test_a_mismatch_on_the_last_part_leaves_no_object_and_no_upload(
    start_server: Any, seaweed: SeaweedFS, s3_bucket: str
) -> None:
    server = start_server(s3_config(None, seaweed, s3_bucket, write_mode="s3", part_bytes=5 * MIB) | {"storage_pairs": []})
    data = bytearray(os.urandom(12 * MIB))
    sha = sha256(bytes(data))
    data[-1] ^= 1  # the last part is wrong
    answer = httpx.post(f"{server.url}/{sha}", content=bytes(data), auth=AUTH, timeout=60)
    assert answer.status_code == 412
    assert answer.text == f"Content sha256 {sha256(bytes(data))} doesn't match given sha256 {sha}"
    assert object_bytes(seaweed, s3_bucket, sha) is None
    assert seaweed.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    # Small bodies are checked before their one PUT.
    small = os.urandom(100)
    assert httpx.post(f"{server.url}/{'0' * 64}", content=small, auth=AUTH).status_code == 412
    assert object_bytes(seaweed, s3_bucket, "0" * 64) is None


@FAST_ONLY
def test_a_duplicate_upload_to_s3_is_answered_before_the_body(
    start_server: Any, seaweed: SeaweedFS, s3_bucket: str
) -> None:
    """HEAD first: a blob already in the bucket answers 200 to Expect: 100-continue without taking the body."""
    data = os.urandom(2 * MIB)
    sha = sha256(data)
    put_object(seaweed, s3_bucket, sha, data)
    server = start_server(s3_config(None, seaweed, s3_bucket, write_mode="s3") | {"storage_pairs": []})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        import base64

        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        sock.sendall(
            f"POST /{sha} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\nContent-Length: {len(data)}\r\n"
            f"Expect: 100-continue\r\n\r\n".encode()
        )
        head = sock.recv(65536).decode()
    assert head.startswith("HTTP/1.1 200 "), head
    assert "100 Continue" not in head


# ---- verified reads ----------------------------------------------------------------------


@FAST_ONLY
def test_verify_reads_cuts_a_corrupt_object_short_and_uses_local_next_time(
    start_server: Any, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    good = os.urandom(3 * MIB)
    sha = store_locally(mirrors, good)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    put_object(seaweed, s3_bucket, sha, bytes(bad))
    server = start_server(s3_config(mirrors, seaweed, s3_bucket, verify_reads=True))

    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server.url}/{sha}", timeout=30)  # fewer bytes than Content-Length, then closed
    got = httpx.get(f"{server.url}/{sha}", timeout=30)
    assert got.status_code == 200 and got.content == good
    assert "hashes to" in server.log_text()
    assert scrape(server.url, "stor_s3_corrupt_objects_total") == 1
    # Good objects pass whole.
    fine = os.urandom(2 * MIB + 1)
    put_object(seaweed, s3_bucket, sha256(fine), fine)
    assert httpx.get(f"{server.url}/{sha256(fine)}", timeout=30).content == fine


@FAST_ONLY
def test_without_verify_reads_a_range_is_passed_to_s3(
    start_server: Any, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    """The Range goes to S3 (a 206 of 10 bytes out of 8 MiB), verified or not: a slice cannot be hashed."""
    data = os.urandom(8 * MIB)
    sha = sha256(data)
    put_object(seaweed, s3_bucket, sha, data)
    server = start_server(s3_config(mirrors, seaweed, s3_bucket, verify_reads=True))
    part = httpx.get(f"{server.url}/{sha}", headers={"Range": f"bytes={5 * MIB}-{5 * MIB + 9}"})
    assert part.status_code == 206 and part.content == data[5 * MIB : 5 * MIB + 10]


# ---- configuration -----------------------------------------------------------------------


@FAST_ONLY
def test_a_wrong_secret_is_a_fault_that_falls_through(
    start_server: Any, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    data = os.urandom(1000)
    sha = store_locally(mirrors, data)
    config = s3_config(mirrors, seaweed, s3_bucket)
    config["s3_credentials"]["secret_key"] = "Not-The-Secret-9f2c"
    server = start_server(config)
    assert httpx.get(f"{server.url}/{sha}").content == data
    s = status(server.url)
    assert s["status"] == "degraded" and "403" in s["s3"]["error"]
    assert "SignatureDoesNotMatch" in server.log_text()  # the read's GET said why
    assert "Not-The-Secret-9f2c" not in server.log_text()  # the secret is never logged

