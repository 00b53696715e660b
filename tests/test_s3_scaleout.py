"""Scale-out: stateless nodes without local storage, sharing memcached and one SeaweedFS bucket."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import PASSWORD, USER, sha256, wait_for
from realservers import memcached  # noqa: F401  (fixture)
from seaweed import SeaweedFS
from test_s3_tier import object_bytes, s3_config, status

AUTH = (USER, PASSWORD)
FAST_ONLY = pytest.mark.parametrize("fast_path", [True], ids=["fast"], indirect=True)
MIB = 1024 * 1024


def node_config(weed: SeaweedFS, bucket: str, memcached_address: str | None = None, **s3: Any) -> dict[str, Any]:
    config = s3_config(None, weed, bucket, write_mode="s3", part_bytes=5 * MIB, **s3)
    config["storage_pairs"] = []
    if memcached_address is not None:
        config["memcached_servers"] = [memcached_address]
    return config


def test_a_blob_posted_through_one_node_is_served_by_the_other_at_once(
    start_server: Any, seaweed: SeaweedFS, s3_bucket: str, memcached: Any, tmp_path: Path
) -> None:
    cache = memcached()
    nodes = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        nodes.append(start_server(node_config(seaweed, s3_bucket, cache.address), workdir=workdir))
    a, b = nodes
    data = os.urandom(200_000)
    sha = sha256(data)
    assert httpx.post(f"{a.url}/{sha}", content=data, auth=AUTH).status_code == 201
    got = httpx.get(f"{b.url}/{sha}")  # the first request after A's 201
    assert got.status_code == 200 and got.content == data
    assert httpx.head(f"{b.url}/{sha}").headers["content-length"] == str(len(data))
    again = httpx.post(f"{b.url}/{sha}", content=data, auth=AUTH)
    assert again.status_code == 200
    assert seaweed.client().list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 1
    for node in nodes:
        s = status(node.url)
        assert s["status"] == "ok" and s["storages"] == [] and s["s3"]["reachable"] is True
        # memcached remembers where local blobs are; the bucket needs no look-up to remember.
        assert s["cache"] == []
        assert "memcached_servers: not used" in node.log_text()


@FAST_ONLY
def test_concurrent_uploads_of_one_blob_through_two_nodes_leave_its_bytes(
    start_server: Any, seaweed: SeaweedFS, s3_bucket: str, tmp_path: Path
) -> None:
    nodes = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        nodes.append(start_server(node_config(seaweed, s3_bucket), workdir=workdir))
    data = os.urandom(11 * MIB)  # multipart on both
    sha = sha256(data)
    answers: list[int] = []

    def upload(url: str) -> None:
        answers.append(httpx.post(f"{url}/{sha}", content=data, auth=AUTH, timeout=120).status_code)

    threads = [threading.Thread(target=upload, args=(n.url,)) for n in nodes for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers)[-1] == 201 and set(answers) <= {200, 201}, answers
    assert object_bytes(seaweed, s3_bucket, sha) == data
    assert seaweed.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


@pytest.fixture(scope="module")
def own_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    weed = SeaweedFS(tmp_path_factory.mktemp("scaleout-seaweed")).start()
    yield weed
    weed.close()


@FAST_ONLY
def test_an_s3_only_node_answers_503_while_s3_is_away_and_serves_again_after(
    start_server: Any, own_seaweed: SeaweedFS
) -> None:
    bucket = own_seaweed.new_bucket()
    server = start_server(node_config(own_seaweed, bucket, connect_timeout=1, read_timeout=2, retry_after=1))
    data = os.urandom(5000)
    sha = sha256(data)
    assert httpx.post(f"{server.url}/{sha}", content=data, auth=AUTH).status_code == 201
    own_seaweed.stop()
    try:
        started = time.monotonic()
        got = httpx.get(f"{server.url}/{sha}", timeout=30)
        assert got.status_code == 503 and got.text == "Service Unavailable: S3 unreachable"
        assert got.headers["retry-after"] == "1"
        assert time.monotonic() - started < 10
        other = os.urandom(100)
        assert httpx.post(f"{server.url}/{sha256(other)}", content=other, auth=AUTH, timeout=30).status_code == 503
        health = httpx.get(f"{server.url}/status", timeout=30)
        assert health.status_code == 503 and "S3 " in health.text and "unreachable" in health.text
    finally:
        own_seaweed.restart()
    wait_for(lambda: httpx.get(f"{server.url}/status").status_code == 200, timeout=30, what="S3 back")
    # Each worker tries S3 again retry_after (1 s) after its own last failure: the worker that answered
    # /status may not be the one that answers the GET, which may answer 503 a moment longer.
    wait_for(lambda: httpx.get(f"{server.url}/{sha}").content == data, timeout=30, what="the blob served again")
