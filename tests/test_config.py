"""Configuration: bad files stop start-up with one line naming the key; good ones are honoured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUTH, StorServer, free_port, pair_config, sha256

ROOT = Path(__file__).resolve().parent.parent


def run_serve(tmp_path: Path, config_text: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "stor", "serve", "--port", str(free_port()), *args]
    if config_text is not None:
        path = tmp_path / "config.json"
        path.write_text(config_text)
        cmd += ["--config", str(path)]
    env = {k: v for k, v in os.environ.items() if k != "CONFIG_FILE"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)


GOOD_PAIRS = [["/tmp/x1", "/tmp/x2"]]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("{not json", "bad JSON at line 1"),
        ("[1, 2]", "top level must be a JSON object"),
        ("{}", "storage_pairs: missing"),
        (json.dumps({"storage_pairs": [["/tmp/only-one"]]}), "storage_pairs[0]: expected exactly two directory paths"),
        (json.dumps({"storage_pairs": [["/a", "/b", "/c"]]}), "storage_pairs[0]: expected exactly two"),
        (json.dumps({"storage_pairs": "/a,/b"}), "storage_pairs: expected a non-empty list"),
        (json.dumps({"storage_pairs": [["/a", "/b"], ["/b", "/c"]]}), "storage_pairs[1]: directory /b is listed twice"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "writable_pairs_regex": "(["}), "writable_pairs_regex: not a valid regex"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "basic_auth": 42}), "basic_auth: expected a string"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "basic_auth": "nocolon"}), "basic_auth: must be 'user:password'"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "require_mount_points": "yes"}), "require_mount_points: expected true or false"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "cleanup_tempdir_period": -5}), "cleanup_tempdir_period: expected a positive number"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "memcached_servers": "localhost"}), "memcached_servers: expected a list"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "memcached_servers": ["h:notaport"]}), "memcached_servers: 'h:notaport'"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "statsite": {"prefix": "x"}}), "statsite: expected an object with at least a 'host'"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "max_blob_bytes": True}), "max_blob_bytes: expected a whole number"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "s3_enabled": True}), "s3_credentials: required when s3_enabled is true"),
    ],
)
def test_bad_configuration_stops_start_up_with_one_line(tmp_path: Path, config: str, expected: str) -> None:
    result = run_serve(tmp_path, config)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_unreadable_config_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stor", "serve", "--config", str(tmp_path / "missing.json")],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"stor: config file {tmp_path / 'missing.json'}: cannot read: No such file or directory"


@pytest.mark.parametrize("option", ["--workers", "--runtime-threads"])
def test_serve_counts_must_be_positive(tmp_path: Path, option: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stor", "serve", option, "0"], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"stor: {option}: must be at least 1"


def test_one_worker_gets_an_io_thread_per_cpu() -> None:
    from stor.cli import runtime_threads_for

    cpus = len(os.sched_getaffinity(0))
    assert runtime_threads_for(1) == cpus
    assert runtime_threads_for(cpus) == 1
    assert runtime_threads_for(cpus * 4) == 1


def test_config_file_environment_variable_is_honoured(start_server: object, mirrors: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "from-env.json"
    path.write_text(json.dumps(pair_config(mirrors)))
    server = start_server(None, env={"CONFIG_FILE": str(path)})  # type: ignore[operator]
    body = b"configured through CONFIG_FILE"
    r = httpx.post(f"{server.url}/{sha256(body)}", content=body, auth=AUTH)
    assert r.status_code == 201
    assert r.json()[0].startswith(str(mirrors[0]))


def test_unknown_keys_are_ignored_as_the_original_did(start_server: object, mirrors: tuple[Path, Path]) -> None:
    config = pair_config(mirrors, secret="cookie", log={"whatever": 1}, some_future_key=[1, 2])
    server = start_server(config)  # type: ignore[operator]
    assert httpx.get(f"{server.url}/status").text == "OK"


def test_example_config_is_valid() -> None:
    from stor.config import load_file

    settings = load_file(ROOT / "config.json.example")
    assert len(settings.storage_pairs) >= 1
    hot = (settings.hot_blobs, settings.hot_blob_max_bytes, settings.hot_total_bytes, settings.hot_blob_seconds)
    assert hot == (256, 1 << 20, 16 << 20, 10)


def test_serve_raises_the_open_file_limit_to_the_hard_one(mirrors: tuple[Path, Path]) -> None:
    """Connections and hot blobs' open files share the limit; Debian's default soft limit is 1024.

    granian raises it itself; uvicorn does not, so this runs `--server uvicorn`.
    """
    server = StorServer(
        workdir=mirrors[0].parent,
        config=pair_config(mirrors),
        args=["--server", "uvicorn"],
        wrapper=["prlimit", "--nofile=256:4096", "--"],
    )
    server.start()
    try:
        for pid in server.processes():
            limits = Path(f"/proc/{pid}/limits").read_text()
            line = next(l for l in limits.splitlines() if l.startswith("Max open files"))
            assert line.split()[3:5] == ["4096", "4096"], line
    finally:
        server.stop()
