"""Configuration: bad files stop start-up with one line naming the key; good ones are honoured."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUTH, StorServer, free_port, pair_config, sha256
from stor.aio import DEFAULT_THREADS
from stor.config import (
    GB,
    AuthSettings,
    CacheSettings,
    ConfigError,
    HotSettings,
    HttpSettings,
    MetricsSettings,
    PrometheusSettings,
    Settings,
    StorageSettings,
    UploadSettings,
    embedded_default,
    load_file,
    parse,
    parse_rabbitmq_uri,
    with_fast_path,
)

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
        (json.dumps({"storage_pairs": GOOD_PAIRS, "s3": {"write_mode": "s3"}}), "s3.write_mode: 's3' needs s3_enabled and s3_credentials"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "s3_enabled": True, "s3_credentials": {"access_key": "a", "secret_key": "b", "host": "s3.example:8333"}, "s3": {"write_mode": "both"}}), "s3.write_mode: expected one of 'local', 'local+s3', 's3'"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "s3_enabled": True, "s3_credentials": {"access_key": "a", "secret_key": "b", "host": "s3.example:8333"}, "s3": {"read_order": "random"}}), "s3.read_order: expected one of 's3-first', 'local-first'"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "s3_enabled": True, "s3_credentials": {"access_key": "a", "secret_key": "b", "host": "s3.example:8333"}, "s3": {"part_bytes": 1024}}), 's3.part_bytes: S3 parts are 5 MiB to 5 GiB'),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "s3_enabled": True, "s3_credentials": {"access_key": "a", "secret_key": "b", "host": "s3.example:8333"}, "s3": {"bucket": "Samples_1"}}), "s3.bucket: 'Samples_1' is not an S3 bucket name"),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "s3_enabled": True, "s3_credentials": {"access_key": "a", "secret_key": "b", "host": "s3.example:8333"}, "s3": {"endpoint": "s3.example"}}), 's3.endpoint: expected http://host[:port] or https://host[:port]'),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "s3_enabled": True, "s3_credentials": {"access_key": "a", "secret_key": "b", "host": "s3.example:8333"}, "s3": {"buckets": "x"}}), 's3.buckets: unknown key'),
        (json.dumps({"storage_pairs": GOOD_PAIRS, "s3_enabled": True, "s3_credentials": {"access_key": "a", "secret_key": "b", "host": "http://h/"}}), 's3_credentials.host: expected a host name with an optional port'),
        (json.dumps({"storage_pairs": [], "s3_enabled": True, "s3_credentials": {"access_key": "a", "secret_key": "b", "host": "s3.example:8333"}}), 'storage_pairs: expected a non-empty list'),
        (json.dumps({"s3_enabled": True, "s3_credentials": {"access_key": "a", "secret_key": "b", "host": "s3.example:8333"}, "s3": {"write_mode": "local+s3"}}), 'storage_pairs: missing'),
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


def test_serve_worker_count_must_be_positive(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stor", "serve", "--workers", "0"], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "stor: --workers: must be at least 1"


@pytest.mark.parametrize("option", ["--server", "--runtime-threads"])
def test_granian_options_are_gone(tmp_path: Path, option: str) -> None:
    """uvicorn is the only server: the options that chose granian and sized its threads are refused."""
    result = subprocess.run(
        [sys.executable, "-m", "stor", "serve", option, "1"], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert result.returncode == 2
    assert f"unrecognized arguments: {option} 1" in result.stderr


def test_config_file_environment_variable_is_honoured(start_server: object, mirrors: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "from-env.json"
    path.write_text(json.dumps(pair_config(mirrors)))
    server = start_server(None, env={"CONFIG_FILE": str(path)})  # type: ignore[operator]
    body = b"configured through CONFIG_FILE"
    r = httpx.post(f"{server.url}/{sha256(body)}", content=body, auth=AUTH)
    assert r.status_code == 201
    assert r.json()[0].startswith(str(mirrors[0]))


def test_a_stor_2_file_still_serves_and_says_once_where_each_key_went(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors, hot_blobs=0, exists_max_items=1))
    assert httpx.post(f"{server.url}/exists", json=["a" * 64, "b" * 64]).status_code == 413  # the flat key holds
    warnings = [line.split("WARNING stor: ", 1)[1] for line in server.log_text().splitlines() if "WARNING stor: config:" in line]
    assert sorted(warnings) == [
        'config: "exists_max_items" is now "http.exists_max_items"; the old key still works',
        'config: "hot_blobs" is now "hot.blobs"; the old key still works',
        'config: "require_mount_points" is now "storage.require_mount_points"; the old key still works',
    ]


def test_unknown_keys_are_ignored_as_the_original_did(start_server: object, mirrors: tuple[Path, Path]) -> None:
    config = pair_config(mirrors, secret="cookie", log={"whatever": 1}, some_future_key=[1, 2])
    server = start_server(config)  # type: ignore[operator]
    assert httpx.get(f"{server.url}/status").text == "OK"


def test_example_config_is_valid() -> None:
    settings = load_file(ROOT / "config.json.example")
    assert len(settings.storage_pairs) >= 1
    hot = (settings.hot.blobs, settings.hot.max_blob_bytes, settings.hot.total_bytes, settings.hot.seconds)
    assert hot == (256, 1 << 20, 16 << 20, 10)
    assert settings.warnings == ()  # the example is in the new shape: no legacy key


# The sections and their keys as documented; the example must show every one.
SECTIONS = {
    "cache": ["local_size", "memcached_timeout", "memcached_retry_after"],
    "hot": ["blobs", "max_blob_bytes", "total_bytes", "seconds"],
    "uploads": ["max_blob_bytes", "tempfile_max_age"],
    "storage": ["require_mount_points", "balance_threshold_bytes", "io_threads"],
    "auth": [
        "users", "htpasswd_files", "read_auth_required",
        "max_concurrent_checks", "failed_checks_per_minute", "failed_checks_burst",
    ],
    "http": [
        "fast_path", "exists_max_items", "max_head_bytes", "max_headers", "head_timeout", "body_timeout",
        "send_timeout", "keep_alive_timeout", "max_connections",
    ],
    "metrics": ["prometheus"],
    "s3": [
        "endpoint", "bucket", "region", "addressing_style", "read_order", "write_mode", "verify_reads",
        "connect_timeout", "read_timeout", "max_connections", "retry_after", "part_bytes", "parts_in_flight",
        "copy_concurrency", "copy_retry_min", "copy_retry_max",
    ],
    "integrity": ["verify_reads", "heal", "heal_queue", "heal_concurrency", "scrub_rate", "scrub_workers"],
    "tus": ["enabled", "path", "directory", "expire_after", "max_uploads", "sweep_period"],
    "s3_api": [
        "enabled", "port", "host", "bucket", "region", "domain", "access_keys", "anonymous_read", "allow_delete",
        "cors", "max_clock_skew", "max_metadata_bytes", "multipart_directory", "multipart_expire_after",
        "max_multipart_uploads", "min_part_bytes", "sweep_period",
    ],
    "events": [
        "publish_requests", "rabbitmq_events", "queue_size", "node", "webhooks", "webhook_spool", "pre_upload_hook",
    ],
}
ORIGINAL_KEYS = [
    "storage_pairs", "writable_pairs_regex", "basic_auth", "memcached_servers", "statsite", "s3_enabled",
    "s3_credentials", "secret", "rabbitmq_uri", "log", "cleanup_tempdir_period",
]


def test_parse_example_config_lists_every_key_in_the_new_shape() -> None:
    raw = json.loads((ROOT / "config.json.example").read_text())
    assert list(raw) == ORIGINAL_KEYS + list(SECTIONS)
    assert {name: list(raw[name]) for name in SECTIONS} == SECTIONS
    assert list(raw["metrics"]["prometheus"]) == ["enabled", "path"]


# Pure unit tests of stor.config.parse (no server): `pytest tests/test_config.py -k parse`.


@pytest.mark.parametrize(
    ("value", "fraction"), [("off", 0.0), ("always", 1.0), (0.25, 0.25), (1, 1.0)]
)
def test_parse_integrity_verify_reads(value: Any, fraction: float) -> None:
    assert parse({"storage_pairs": GOOD_PAIRS, "integrity": {"verify_reads": value}}).integrity.verify_reads == fraction


@pytest.mark.parametrize(
    ("integrity", "message"),
    [
        ({"verify_reads": "sometimes"}, 'integrity.verify_reads: expected "off", "always" or a fraction in (0, 1]'),
        ({"verify_reads": 0}, 'integrity.verify_reads: expected "off", "always" or a fraction in (0, 1]'),
        ({"verify_reads": 1.5}, 'integrity.verify_reads: expected "off", "always" or a fraction in (0, 1]'),
        ({"verify_reads": True}, 'integrity.verify_reads: expected "off", "always" or a fraction in (0, 1]'),
        ({"scrub_rate": 0}, "integrity.scrub_rate: expected a positive number of bytes a second"),
        ({"heal_queue": 0}, "integrity.heal_queue: must be at least 1"),
        ({"heal": "yes"}, "integrity.heal: expected true or false"),
    ],
)
def test_parse_integrity_errors_name_the_key(integrity: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse({"storage_pairs": GOOD_PAIRS, "integrity": integrity})

BCRYPT = "$2b$12$C6UzMDM.H6dfI/f/IKcEeO3Nvwmqu4jPK5i5ZTxMgHq5Ogw3FQs3W"


def parse_with(**extra: Any) -> Settings:
    return parse({"storage_pairs": GOOD_PAIRS, **extra})


def parse_error(**extra: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_with(**extra)
    return str(caught.value)


def test_parse_sections_default_to_todays_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOR_BASIC_AUTH", raising=False)
    settings = parse_with()
    assert settings.cache == CacheSettings(local_size=10_000, memcached_timeout=0.25, memcached_retry_after=5.0)
    assert settings.hot == HotSettings(blobs=256, max_blob_bytes=1 << 20, total_bytes=16 << 20, seconds=10.0)
    assert settings.uploads == UploadSettings(max_blob_bytes=None, tempfile_max_age=1800.0)
    assert settings.storage == StorageSettings(require_mount_points=True, balance_threshold_bytes=GB, io_threads=DEFAULT_THREADS)
    assert settings.auth == AuthSettings(users=(), read_auth_required=False)
    assert settings.http == HttpSettings(fast_path=True, exists_max_items=10_000)
    assert settings.metrics == MetricsSettings(prometheus=PrometheusSettings(enabled=True, path="/metrics"))
    assert settings.warnings == ()
    assert not settings.has_writer


def test_parse_reads_every_section_key(tmp_path: Path) -> None:
    htpasswd = tmp_path / "writers.htpasswd"
    htpasswd.write_text(f"bob:{BCRYPT}\n")
    settings = parse_with(
        cache={"local_size": 5, "memcached_timeout": 1, "memcached_retry_after": 2.5},
        hot={"blobs": 7, "max_blob_bytes": 100, "total_bytes": 700, "seconds": 3},
        uploads={"max_blob_bytes": 1000, "tempfile_max_age": 60},
        storage={"require_mount_points": False, "balance_threshold_bytes": 0, "io_threads": 2},
        auth={
            "users": [{"name": "alice", "password_hash": BCRYPT, "role": "read"}],
            "htpasswd_files": {"write": str(htpasswd)},
            "read_auth_required": True,
        },
        http={"fast_path": False, "exists_max_items": 3},
        metrics={"prometheus": {"enabled": False, "path": "/prom"}},
    )
    assert settings.cache == CacheSettings(local_size=5, memcached_timeout=1.0, memcached_retry_after=2.5)
    assert settings.hot == HotSettings(blobs=7, max_blob_bytes=100, total_bytes=700, seconds=3.0)
    assert settings.uploads == UploadSettings(max_blob_bytes=1000, tempfile_max_age=60.0)
    assert settings.storage == StorageSettings(require_mount_points=False, balance_threshold_bytes=0, io_threads=2)
    assert [(u.name, u.role) for u in settings.auth.users] == [("alice", "read"), ("bob", "write")]
    assert settings.auth.read_auth_required is True
    assert settings.has_writer  # bob, from the htpasswd file
    assert settings.http == HttpSettings(fast_path=False, exists_max_items=3)
    assert settings.metrics.prometheus == PrometheusSettings(enabled=False, path="/prom")
    assert settings.warnings == ()


def test_parse_fast_path_defaults_to_true_and_can_be_turned_off() -> None:
    settings = parse_with()
    assert settings.http.fast_path is True
    off = with_fast_path(settings, False)
    assert off.http == HttpSettings(fast_path=False, exists_max_items=10_000)
    assert settings.http.fast_path is True  # frozen: the original is unchanged
    assert replace(off, http=settings.http) == settings


# Each flat key of stor 2.0: its value, where it is read now, and its new name.
LEGACY = [
    ("local_cache_size", 5, lambda s: s.cache.local_size, "cache.local_size"),
    ("memcached_timeout", 1.5, lambda s: s.cache.memcached_timeout, "cache.memcached_timeout"),
    ("memcached_retry_after", 9, lambda s: s.cache.memcached_retry_after, "cache.memcached_retry_after"),
    ("hot_blobs", 0, lambda s: s.hot.blobs, "hot.blobs"),
    ("hot_blob_max_bytes", 10, lambda s: s.hot.max_blob_bytes, "hot.max_blob_bytes"),
    ("hot_total_bytes", 20, lambda s: s.hot.total_bytes, "hot.total_bytes"),
    ("hot_blob_seconds", 2, lambda s: s.hot.seconds, "hot.seconds"),
    ("max_blob_bytes", 1000, lambda s: s.uploads.max_blob_bytes, "uploads.max_blob_bytes"),
    ("tempfile_max_age", 60, lambda s: s.uploads.tempfile_max_age, "uploads.tempfile_max_age"),
    ("require_mount_points", False, lambda s: s.storage.require_mount_points, "storage.require_mount_points"),
    ("balance_threshold_bytes", 7, lambda s: s.storage.balance_threshold_bytes, "storage.balance_threshold_bytes"),
    ("io_threads", 3, lambda s: s.storage.io_threads, "storage.io_threads"),
    ("read_auth_required", True, lambda s: s.auth.read_auth_required, "auth.read_auth_required"),
    ("exists_max_items", 4, lambda s: s.http.exists_max_items, "http.exists_max_items"),
    (
        "users",
        [{"name": "alice", "password_hash": BCRYPT, "role": "write"}],
        lambda s: [(u.name, u.role) for u in s.auth.users],
        "auth.users",
    ),
    ("prometheus", {"enabled": False, "path": "/prom"}, lambda s: s.metrics.prometheus, "metrics.prometheus"),
]
LEGACY_EXPECTED = {
    "users": [("alice", "write")],
    "prometheus": PrometheusSettings(enabled=False, path="/prom"),
}


@pytest.mark.parametrize(("old", "value", "read", "new"), LEGACY, ids=[case[0] for case in LEGACY])
def test_parse_legacy_flat_key_is_read_and_warned_about(old: str, value: Any, read: Callable[[Settings], Any], new: str) -> None:
    settings = parse_with(**{old: value})
    assert read(settings) == LEGACY_EXPECTED.get(old, value)
    assert settings.warnings == (f'config: "{old}" is now "{new}"; the old key still works',)


def test_parse_legacy_htpasswd_files_is_read_and_warned_about(tmp_path: Path) -> None:
    htpasswd = tmp_path / "readers.htpasswd"
    htpasswd.write_text(f"carol:{BCRYPT}\n")
    settings = parse_with(htpasswd_files={"read": str(htpasswd)})
    assert [(u.name, u.role) for u in settings.auth.users] == [("carol", "read")]
    assert settings.warnings == ('config: "htpasswd_files" is now "auth.htpasswd_files"; the old key still works',)


def test_parse_a_stor_2_file_warns_once_per_legacy_key() -> None:
    settings = parse_with(**{old: value for old, value, _, _ in LEGACY}, htpasswd_files={})
    expected = [(old, new) for old, _, _, new in LEGACY] + [("htpasswd_files", "auth.htpasswd_files")]
    assert sorted(settings.warnings) == sorted(f'config: "{o}" is now "{n}"; the old key still works' for o, n in expected)
    assert len(settings.warnings) == 17


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"hot_blobs": 1, "hot": {"blobs": 2}}, "hot_blobs and hot.blobs: the same setting given twice; keep hot.blobs"),
        (
            {"max_blob_bytes": None, "uploads": {"max_blob_bytes": 10}},
            "max_blob_bytes and uploads.max_blob_bytes: the same setting given twice; keep uploads.max_blob_bytes",
        ),
        ({"users": [], "auth": {"users": []}}, "users and auth.users: the same setting given twice; keep auth.users"),
        (
            {"prometheus": {}, "metrics": {"prometheus": {}}},
            "prometheus and metrics.prometheus: the same setting given twice; keep metrics.prometheus",
        ),
    ],
    ids=["hot_blobs", "max_blob_bytes-null", "users", "prometheus"],
)
def test_parse_key_given_both_ways_is_an_error(extra: dict[str, Any], message: str) -> None:
    assert parse_error(**extra) == message


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"hot": {"blob": 1}}, "hot.blob: unknown key; the keys of hot are blobs, max_blob_bytes, total_bytes, seconds"),
        ({"hot": {"hot_blobs": 1}}, "hot.hot_blobs: unknown key; the keys of hot are blobs, max_blob_bytes, total_bytes, seconds"),
        ({"http": {"fastpath": False}}, "http.fastpath: unknown key; the keys of http are fast_path, exists_max_items, max_head_bytes, "
         "max_headers, head_timeout, body_timeout, send_timeout, keep_alive_timeout, max_connections"),
        (
            {"metrics": {"prometheus": {"enable": False}}},
            "metrics.prometheus.enable: unknown key; the keys of metrics.prometheus are enabled, path",
        ),
    ],
    ids=["hot.blob", "hot.hot_blobs", "http.fastpath", "metrics.prometheus.enable"],
)
def test_parse_unknown_key_in_a_section_is_an_error(extra: dict[str, Any], message: str) -> None:
    assert parse_error(**extra) == message


def test_parse_section_that_is_not_an_object_is_an_error() -> None:
    assert parse_error(hot=256) == "hot: expected an object with keys blobs, max_blob_bytes, total_bytes, seconds, got int 256"
    assert parse_error(cache=None).startswith("cache: expected an object with keys local_size, ")


def test_parse_unknown_top_level_keys_are_still_ignored() -> None:
    settings = parse_with(secret="cookie", log={"whatever": 1}, some_future_key=[1, 2])
    assert settings == parse_with()


def test_parse_legacy_prometheus_still_ignores_keys_it_does_not_know() -> None:
    settings = parse_with(prometheus={"enabled": True, "path": "/prom", "comment": "as stor 2.0 allowed"})
    assert settings.metrics.prometheus == PrometheusSettings(enabled=True, path="/prom")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"hot": {"total_bytes": -1}}, "hot.total_bytes: expected a non-negative whole number, got -1"),
        ({"hot_total_bytes": -1}, "hot_total_bytes: expected a non-negative whole number, got -1"),
        ({"cache": {"memcached_timeout": 0}}, "cache.memcached_timeout: expected a positive number, got 0"),
        ({"uploads": {"max_blob_bytes": 0}}, "uploads.max_blob_bytes: must be a positive number of bytes"),
        ({"uploads": {"max_blob_bytes": True}}, "uploads.max_blob_bytes: expected a whole number, got bool true"),
        ({"storage": {"io_threads": 0}}, "storage.io_threads: must be at least 1"),
        ({"io_threads": 0}, "io_threads: must be at least 1"),
        ({"storage": {"require_mount_points": "yes"}}, 'storage.require_mount_points: expected true or false, got str "yes"'),
        ({"http": {"fast_path": 1}}, "http.fast_path: expected true or false, got int 1"),
        ({"http": {"max_head_bytes": 100}}, "http.max_head_bytes: must be at least 1024"),
        ({"http": {"max_headers": 0}}, "http.max_headers: must be at least 1"),
        ({"http": {"head_timeout": 0}}, "http.head_timeout: expected a positive number, got 0"),
        ({"http": {"send_timeout": "60"}}, "http.send_timeout: expected a positive number, got '60'"),
        ({"http": {"max_connections": 0}}, "http.max_connections: must be at least 1"),
        ({"auth": {"users": [{"name": "x", "password_hash": BCRYPT}]}}, 'auth.users[0].role: expected "read" or "write", got None'),
        ({"auth": {"htpasswd_files": {"admin": "/x"}}}, 'auth.htpasswd_files: expected an object like {"read": "/path", "write": "/path"}'),
    ],
)
def test_parse_values_are_checked_and_named_by_their_section_path(extra: dict[str, Any], message: str) -> None:
    assert parse_error(**extra) == message


@pytest.mark.parametrize(
    ("path", "legacy"),
    [("/" + "a" * 64, False), ("/" + "0123456789ABCDEF" * 4, False), ("/" + "f" * 64, True)],
    ids=["lower", "upper", "legacy"],
)
def test_parse_metrics_path_of_a_sha_is_refused(path: str, legacy: bool) -> None:
    """GET /<that sha> would reach the metrics instead of the blob."""
    prometheus = {"path": path}
    extra = {"prometheus": prometheus} if legacy else {"metrics": {"prometheus": prometheus}}
    key = "prometheus.path" if legacy else "metrics.prometheus.path"
    assert parse_error(**extra) == f"{key}: {path!r} would shadow the blob with that sha; choose a path that is not 64 hex digits"


def test_parse_metrics_path_near_a_sha_is_accepted() -> None:
    for path in ("/" + "a" * 63, "/" + "a" * 65, "/" + "g" * 64):
        assert parse_with(metrics={"prometheus": {"path": path}}).metrics.prometheus.path == path


@pytest.mark.parametrize("path", ["/status", "/exists", "/storages"])
def test_parse_metrics_path_of_a_fixed_route_is_refused(path: str) -> None:
    assert parse_error(metrics={"prometheus": {"path": path}}) == (
        f"metrics.prometheus.path: {path} is one of stor's own routes (/, /status, /exists, /storages); choose another path"
    )


@pytest.mark.parametrize("path", ["/", "metrics", "/a/b", ""])
def test_parse_metrics_path_must_be_one_segment(path: str) -> None:
    assert parse_error(metrics={"prometheus": {"path": path}}) == (
        f"metrics.prometheus.path: expected a single-segment path like /metrics, got {path!r}"
    )


def test_parse_embedded_default_skips_the_mount_point_check(tmp_path: Path) -> None:
    settings = embedded_default(tmp_path)
    assert settings.storage == StorageSettings(require_mount_points=False)
    assert settings.storage_dirs == (tmp_path / "data" / "a", tmp_path / "data" / "b")
    assert settings.warnings == ()


def test_serve_raises_the_open_file_limit_to_the_hard_one(mirrors: tuple[Path, Path]) -> None:
    """Connections and hot blobs' open files share the limit; Debian's default soft limit is 1024 (uvicorn keeps it)."""
    server = StorServer(
        workdir=mirrors[0].parent,
        config=pair_config(mirrors),
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


def test_s3_section_defaults_are_the_originals() -> None:
    """The original's keys alone: plain HTTP to host (port kept), bucket samples, S3 first, writes local."""
    settings = parse({"storage_pairs": GOOD_PAIRS, "s3_enabled": True,
                      "s3_credentials": {"access_key": "a", "secret_key": "b", "host": "s3.example:8333"}})
    assert settings.s3_tier and settings.s3_endpoint == "http://s3.example:8333"
    assert (settings.s3.bucket, settings.s3.read_order, settings.s3.write_mode) == ("samples", "s3-first", "local")
    assert "b" not in repr(settings.s3_credentials).replace("S3Credentials", "")  # the secret is never shown
    node = parse({"storage_pairs": [], "s3_enabled": True, "s3": {"write_mode": "s3", "endpoint": "https://s3.example/"},
                  "s3_credentials": {"access_key": "a", "secret_key": "b", "host": "ignored"}})
    assert node.storage_pairs == () and node.s3_endpoint == "https://s3.example"
    # The key stays a switch: credentials without s3_enabled leave the tier off, as in the original.
    off = parse({"storage_pairs": GOOD_PAIRS, "s3_credentials": {"access_key": "a", "secret_key": "b", "host": "h"}})
    assert not off.s3_tier


def test_parse_tus() -> None:
    default = parse({"storage_pairs": GOOD_PAIRS})
    assert default.tus_directory == Path(GOOD_PAIRS[0][0]) / ".stor-tus" and default.tus.path == "/files/"
    assert parse({"storage_pairs": GOOD_PAIRS, "tus": {"enabled": False}}).tus_directory is None
    chosen = parse({"storage_pairs": GOOD_PAIRS, "tus": {"directory": "/shared/tus", "path": "/up/"}})
    assert chosen.tus_directory == Path("/shared/tus") and chosen.tus.path == "/up/"
    for bad in ("files", "/files", "/a b/", "/../"):
        with pytest.raises(ConfigError, match="^tus.path: expected a path"):
            parse({"storage_pairs": GOOD_PAIRS, "tus": {"path": bad}})
    with pytest.raises(ConfigError, match="^tus.max_uploads: "):
        parse({"storage_pairs": GOOD_PAIRS, "tus": {"max_uploads": 0}})


def test_parse_rabbitmq_uri_as_the_original_and_other_amqp_clients_read_it() -> None:
    t = parse_rabbitmq_uri("amqp://stor:s%40cret%2F1@mq.example/samples%2Fin?exchange=ex&routing_key=rk&heartbeat=7")
    assert (t.host, t.port, t.user, t.password, t.vhost) == ("mq.example", 5672, "stor", "s@cret/1", "samples/in")
    assert (t.exchange, t.routing_key, t.heartbeat, t.tls) == ("ex", "rk", 7, False)
    assert t.shown == "amqp://stor@mq.example/samples%2Fin" and "cret" not in repr(t)
    d = parse_rabbitmq_uri("amqps://mq.example?cafile=/etc/ca.pem")
    assert (d.port, d.tls, d.cafile, d.user, d.password, d.vhost) == (5671, True, "/etc/ca.pem", "guest", "guest", "/")
    assert (d.exchange, d.routing_key, d.heartbeat) == ("stor", "sha", 60)
    assert parse_rabbitmq_uri("amqp://h:1234/").vhost == "/" and parse_rabbitmq_uri("amqp://h/%2F").vhost == "/"


@pytest.mark.parametrize("uri, message", [
    ("http://mq.example/", "expected amqp://"),
    ("amqp://mq.example/?exchange=stor&routingkey=sha", "unknown parameter routingkey"),
    ("amqp://mq.example/?heartbeat=1m", "heartbeat is a whole number"),
    ("amqp://mq.example/?cafile=/ca.pem", "are for amqps://"),
    ("amqp://mq.example:99999/", "rabbitmq_uri: Port out of range"),
])
def test_parse_rabbitmq_uri_refuses_with_the_reason(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_rabbitmq_uri(uri)
