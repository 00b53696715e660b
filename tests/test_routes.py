"""The route table, as both ways of answering see it: fixed paths, the metrics path, /storages, the blob route."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from conftest import pair_config


def test_storages_lists_each_directory_with_its_sizes(start_server: Any, tmpfs: Any) -> None:
    a, b = tmpfs("a", "8m"), tmpfs("b", "16m")
    server = start_server(pair_config((a, b), writable_pairs_regex="^$"))
    r = httpx.get(f"{server.url}/storages")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    storages = r.json()["storages"]
    assert [(s["path"], s["pair"], s["writable"], s["ok"], s["problems"], s["total_bytes"]) for s in storages] == [
        (str(a), 0, False, True, [], 8 << 20),
        (str(b), 0, False, True, [], 16 << 20),
    ]
    assert all(0 < s["free_bytes"] <= s["total_bytes"] for s in storages)


def test_storages_names_a_missing_directory(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors))
    mirrors[1].rmdir()
    storages = httpx.get(f"{server.url}/storages").json()["storages"]
    assert storages[1] == {
        "path": str(mirrors[1]), "pair": 0, "writable": True, "ok": False,
        "problems": [f"Storage {mirrors[1]} isn't a directory"], "total_bytes": None, "free_bytes": None,
        "write_fault": None,
    }
    assert storages[0]["ok"] is True


def test_a_metrics_path_of_a_sha_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    disks = [str(tmp_path / "a"), str(tmp_path / "b")]
    config.write_text(json.dumps({"storage_pairs": [disks], "metrics": {"prometheus": {"path": "/" + "ab" * 32}}}))
    result = subprocess.run(
        [sys.executable, "-m", "stor", "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.startswith("stor: metrics.prometheus.path: ")
    assert "ab" * 32 in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_configured_metrics_path_is_metrics_and_other_single_segments_are_blobs(
    start_server: Any, mirrors: tuple[Path, Path]
) -> None:
    server = start_server(pair_config(mirrors, metrics={"prometheus": {"path": "/prom"}}))
    scrape = httpx.get(f"{server.url}/prom")
    assert scrape.status_code == 200 and "stor_http_requests_total" in scrape.text
    head = httpx.head(f"{server.url}/prom")
    assert head.status_code == 200 and head.content == b""
    # The old default path is now a blob path like any other single segment.
    old = httpx.get(f"{server.url}/metrics")
    assert (old.status_code, old.text) == (404, "Given hash 'metrics' isn't SHA256")


def test_paths_no_route_takes_and_methods_a_route_does_not_take(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors))
    deep = httpx.get(f"{server.url}/deeper/abc")
    assert (deep.status_code, deep.text) == (404, "Not Found")
    # tus takes every path under /files/, and reads no upload with GET.
    tus = httpx.get(f"{server.url}/files/abc")
    assert (tus.status_code, tus.headers["allow"]) == (405, "POST, HEAD, PATCH, DELETE, OPTIONS")
    wrong = httpx.post(f"{server.url}/status", content=b"")
    assert (wrong.status_code, wrong.text, wrong.headers["allow"]) == (405, "Method POST not allowed", "GET, HEAD")
    blob = httpx.delete(f"{server.url}/{'0' * 64}")
    assert (blob.status_code, blob.headers["allow"]) == (405, "GET, HEAD, POST, PUT")
