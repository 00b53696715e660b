"""Two `stor serve` nodes sharing the same storage directories and the same memcached."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUTH, StorServer, layout_path, pair_config, sha256
from realservers import StatsdReceiver, memcached, names, statsd_rx  # noqa: F401  (fixtures)


@pytest.fixture
def two_nodes(start_server: Any, tmp_path: Path, mirrors: tuple[Path, Path], memcached: Any) -> tuple[StorServer, StorServer, Any]:
    m = memcached()
    config = pair_config(mirrors, memcached_servers=[m.address])
    nodes = []
    for name in ("node-a", "node-b"):
        work = tmp_path / name
        work.mkdir()
        nodes.append(start_server(config, workdir=work))
    assert nodes[0].port != nodes[1].port
    return nodes[0], nodes[1], m


def test_blob_posted_to_one_node_is_served_by_the_other_at_once(two_nodes: Any, mirrors: tuple[Path, Path]) -> None:
    a_node, b_node, m = two_nodes
    data = os.urandom(50_000)
    sha = sha256(data)
    # B has looked for it (and not found it) before it exists: that must not stick.
    assert httpx.get(f"{b_node.url}/{sha}").status_code == 404

    r = httpx.post(f"{a_node.url}/{sha}", content=data, auth=AUTH)
    assert r.status_code == 201, r.text
    r = httpx.get(f"{b_node.url}/{sha}")
    assert r.status_code == 200 and r.content == data
    assert m.location(sha) == str(mirrors[0])

    # And the other way round; a second POST on the other node is a duplicate.
    other = os.urandom(20_000)
    assert httpx.post(f"{b_node.url}/{sha256(other)}", content=other, auth=AUTH).status_code == 201
    assert httpx.get(f"{a_node.url}/{sha256(other)}").content == other
    assert httpx.post(f"{b_node.url}/{sha}", content=data, auth=AUTH).status_code == 200


def test_blob_deleted_behind_the_cache_is_served_by_neither_node(
    two_nodes: Any, mirrors: tuple[Path, Path]
) -> None:
    a_node, b_node, m = two_nodes
    data = os.urandom(30_000)
    sha = sha256(data)
    assert httpx.post(f"{a_node.url}/{sha}", content=data, auth=AUTH).status_code == 201
    # Served, hence cached, on both nodes (memcached and each node's in-process cache), twice each.
    for node in (a_node, b_node, a_node, b_node):
        r = httpx.get(f"{node.url}/{sha}")
        assert r.status_code == 200 and r.content == data
    assert m.location(sha) is not None

    for d in mirrors:
        layout_path(d, sha).unlink()
    for node in (a_node, b_node, a_node, b_node):
        r = httpx.get(f"{node.url}/{sha}")
        assert r.status_code == 404, (node.url, r.status_code, r.text)
        assert r.text == f"File '{sha}' not found"
        head = httpx.head(f"{node.url}/{sha}")
        assert head.status_code == 404
    assert m.location(sha) is None


def test_nodes_agree_on_which_server_holds_a_key(
    start_server: Any, tmp_path: Path, mirrors: tuple[Path, Path], memcached: Any, statsd_rx: StatsdReceiver
) -> None:
    """With two memcached servers listed in a different order, B finds every location A recorded."""
    m1, m2 = memcached(), memcached()
    work_a, work_b = tmp_path / "node-a", tmp_path / "node-b"
    work_a.mkdir()
    work_b.mkdir()
    a_node = start_server(pair_config(mirrors, memcached_servers=[m1.address, m2.address]), workdir=work_a)
    b_node = start_server(
        pair_config(mirrors, memcached_servers=[m2.address, m1.address], statsite=statsd_rx.config()),
        workdir=work_b,
    )
    blobs = [os.urandom(300 + i) for i in range(24)]
    for data in blobs:
        assert httpx.post(f"{a_node.url}/{sha256(data)}", content=data, auth=AUTH).status_code == 201
    placed = {sha256(d): (m1.location(sha256(d)), m2.location(sha256(d))) for d in blobs}
    assert all((v1 is None) != (v2 is None) for v1, v2 in placed.values()), placed
    assert any(v1 for v1, _ in placed.values()) and any(v2 for _, v2 in placed.values()), placed

    with httpx.Client(base_url=b_node.url) as c:
        for data in blobs:
            assert c.get(f"/{sha256(data)}").content == data
        # a marker request closes the window
        assert c.get("/marker").status_code == 404
        seen = names(statsd_rx.collect("error.get.malformed_sha.count"))
    assert seen.count("cache.hit") == len(blobs), seen
    assert "cache.miss" not in seen, seen
