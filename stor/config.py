"""Configuration: the original Stor's JSON file, read once into one typed Settings.

Keys of the original keep their meaning; keys this service adds have defaults
that reproduce the original's behaviour. Unknown keys are ignored, as they
were. Every problem is reported as one line naming the key.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stor.aio import DEFAULT_THREADS

CONFIG_ENV = "CONFIG_FILE"
CREDENTIALS_ENV = "STOR_BASIC_AUTH"

GB = 1_000_000_000


class ConfigError(Exception):
    """A configuration problem, worded as one line for the operator."""


@dataclass(frozen=True, slots=True)
class StatsiteSettings:
    host: str
    port: int = 8125
    prefix: str = ""
    sample_rate: float = 1.0


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: bytes  # bcrypt
    role: str  # "read" or "write"; write implies read

    def __repr__(self) -> str:
        return f"User({self.name!r}, role={self.role!r})"


ROLES = ("read", "write")


@dataclass(frozen=True, slots=True)
class PrometheusSettings:
    enabled: bool = True
    path: str = "/metrics"


@dataclass(frozen=True, slots=True)
class S3Settings:
    access_key: str
    secret_key: str
    host: str
    bucket: str = "samples"


@dataclass(frozen=True, slots=True)
class Settings:
    storage_pairs: tuple[tuple[Path, Path], ...]
    writable_pairs_regex: re.Pattern[str] = re.compile(".*")
    basic_auth: str | None = None
    # More users than the original's one writer, with bcrypt hashes, from the
    # config and from htpasswd files; reads need a user only when asked to.
    users: tuple[User, ...] = ()
    read_auth_required: bool = False
    exists_max_items: int = 10_000
    memcached_servers: tuple[str, ...] = ()
    # Seconds a memcached call may take, and the pause before an unreachable
    # server is tried again; entries kept in this process in front of memcached.
    memcached_timeout: float = 0.25
    memcached_retry_after: float = 5.0
    local_cache_size: int = 10_000
    # Small blobs each worker keeps in memory, with their files open, after
    # reading them (stor.store.hot): how many, up to what size, how many bytes
    # in all (the memory bound), for how long.
    hot_blobs: int = 256
    hot_blob_max_bytes: int = 1024 * 1024
    hot_total_bytes: int = 16 * 1024 * 1024
    hot_blob_seconds: float = 10.0
    statsite: StatsiteSettings | None = None
    prometheus: PrometheusSettings = PrometheusSettings()
    s3_enabled: bool = False
    s3_credentials: S3Settings | None = None
    rabbitmq_uri: str | None = None
    # Seconds between sweeps of stale upload temporary files, and the age at
    # which a temporary file counts as stale (the original used 30 minutes).
    cleanup_tempdir_period: float = 1800.0
    tempfile_max_age: float = 1800.0
    # A storage must be on a mounted filesystem other than "/" to be healthy.
    require_mount_points: bool = True
    # Below this much free space on every pair, write to the emptiest pair
    # instead of choosing at random weighted by free space.
    balance_threshold_bytes: int = GB
    # Largest accepted upload in bytes; None accepts any size.
    max_blob_bytes: int | None = None
    # Threads per worker for blocking disk and memcached calls: uploads wait
    # on fsync there, so this bounds how many writes a worker flushes at once.
    io_threads: int = DEFAULT_THREADS
    # Where the settings came from, for the start-up log line.
    source: str = "embedded default"

    @property
    def has_writer(self) -> bool:
        return self.basic_auth is not None or any(u.role == "write" for u in self.users)

    @property
    def storage_dirs(self) -> tuple[Path, ...]:
        return tuple(d for pair in self.storage_pairs for d in pair)


def embedded_default(base: Path | None = None) -> Settings:
    """One pair under ./data, no cache, no metrics, no mount-point check."""
    root = (base or Path.cwd()) / "data"
    pair = (root / "a", root / "b")
    for d in pair:
        d.mkdir(parents=True, exist_ok=True)
    return Settings(
        storage_pairs=(pair,),
        basic_auth=os.environ.get(CREDENTIALS_ENV) or None,
        require_mount_points=False,
        source="embedded default (./data/a + ./data/b)",
    )


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Settings from the named file, else from $CONFIG_FILE, else the embedded default."""
    # An empty value means "not set", as it does for every worker reading $CONFIG_FILE.
    path = path or os.environ.get(CONFIG_ENV) or None
    if path is None:
        return embedded_default()
    return load_file(Path(path))


def load_file(path: Path) -> Settings:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read: {e.strerror or e}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path}: bad JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: top level must be a JSON object")
    return parse(raw, source=str(path))


def parse(raw: dict[str, Any], source: str = "config") -> Settings:
    r = _Reader(raw)
    regex_text = r.get("writable_pairs_regex", str, ".*")
    try:
        writable = re.compile(regex_text)
    except re.error as e:
        raise ConfigError(f"writable_pairs_regex: not a valid regex: {e}") from None

    basic_auth = r.get("basic_auth", str, None) or os.environ.get(CREDENTIALS_ENV) or None
    if basic_auth is not None and ":" not in basic_auth:
        raise ConfigError("basic_auth: must be 'user:password'")

    settings = Settings(
        storage_pairs=_storage_pairs(raw),
        writable_pairs_regex=writable,
        basic_auth=basic_auth,
        users=tuple(_users(raw)),
        read_auth_required=r.get("read_auth_required", bool, False),
        exists_max_items=r.non_negative_int("exists_max_items", 10_000),
        memcached_servers=tuple(_memcached_servers(raw)),
        memcached_timeout=r.positive_number("memcached_timeout", 0.25),
        memcached_retry_after=r.positive_number("memcached_retry_after", 5.0),
        local_cache_size=r.non_negative_int("local_cache_size", 10_000),
        hot_blobs=r.non_negative_int("hot_blobs", 256),
        hot_blob_max_bytes=r.non_negative_int("hot_blob_max_bytes", 1024 * 1024),
        hot_total_bytes=r.non_negative_int("hot_total_bytes", 16 * 1024 * 1024),
        hot_blob_seconds=r.positive_number("hot_blob_seconds", 10.0),
        statsite=_statsite(raw),
        prometheus=_prometheus(raw),
        s3_enabled=r.get("s3_enabled", bool, False),
        s3_credentials=_s3(raw),
        rabbitmq_uri=r.get("rabbitmq_uri", str, None),
        cleanup_tempdir_period=r.positive_number("cleanup_tempdir_period", 1800.0),
        tempfile_max_age=r.positive_number("tempfile_max_age", 1800.0),
        require_mount_points=r.get("require_mount_points", bool, True),
        balance_threshold_bytes=r.non_negative_int("balance_threshold_bytes", GB),
        max_blob_bytes=r.get("max_blob_bytes", int, None),
        io_threads=r.non_negative_int("io_threads", DEFAULT_THREADS),
        source=source,
    )
    if settings.max_blob_bytes is not None and settings.max_blob_bytes <= 0:
        raise ConfigError("max_blob_bytes: must be a positive number of bytes")
    if settings.io_threads < 1:
        raise ConfigError("io_threads: must be at least 1")
    if settings.s3_enabled and settings.s3_credentials is None:
        raise ConfigError("s3_credentials: required when s3_enabled is true")
    return settings


class _Reader:
    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def get(self, key: str, kind: type, default: Any) -> Any:
        value = self.raw.get(key, default)
        if value is None:
            return default
        # bool is a subclass of int; a boolean where a number is due is a mistake.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {_kind_name(kind)}, got {_json_type(value)}")
        return value

    def positive_number(self, key: str, default: float) -> float:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{key}: expected a positive number, got {value!r}")
        return float(value)

    def non_negative_int(self, key: str, default: int) -> int:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{key}: expected a non-negative whole number, got {value!r}")
        return value


def _storage_pairs(raw: dict[str, Any]) -> tuple[tuple[Path, Path], ...]:
    if "storage_pairs" not in raw:
        raise ConfigError("storage_pairs: missing; a list of [dir, dir] pairs is required")
    pairs = raw["storage_pairs"]
    if not isinstance(pairs, list) or not pairs:
        raise ConfigError("storage_pairs: expected a non-empty list of [dir, dir] pairs")
    result: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for i, pair in enumerate(pairs):
        if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(d, str) and d for d in pair):
            raise ConfigError(f"storage_pairs[{i}]: expected exactly two directory paths, got {pair!r}")
        dirs = (Path(pair[0]), Path(pair[1]))
        for d in dirs:
            if d in seen:
                raise ConfigError(f"storage_pairs[{i}]: directory {d} is listed twice")
            seen.add(d)
        result.append(dirs)
    return tuple(result)


def _users(raw: dict[str, Any]) -> list[User]:
    users: list[User] = []
    entries = raw.get("users") or []
    if not isinstance(entries, list):
        raise ConfigError("users: expected a list of {\"name\", \"password_hash\", \"role\"} objects")
    for i, entry in enumerate(entries):
        key = f"users[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}: expected an object with name, password_hash and role")
        name, hashed, role = entry.get("name"), entry.get("password_hash"), entry.get("role")
        if not isinstance(name, str) or not name or ":" in name:
            raise ConfigError(f"{key}.name: expected a non-empty user name without ':'")
        if role not in ROLES:
            raise ConfigError(f"{key}.role: expected \"read\" or \"write\", got {role!r}")
        users.append(User(name, _bcrypt_hash(hashed, f"{key}.password_hash"), role))

    files = raw.get("htpasswd_files") or {}
    if not isinstance(files, dict) or not set(files) <= set(ROLES):
        raise ConfigError("htpasswd_files: expected an object like {\"read\": \"/path\", \"write\": \"/path\"}")
    for role, path in sorted(files.items()):
        users += _htpasswd(path, role, f"htpasswd_files.{role}")

    seen: set[str] = set()
    for user in users:
        if user.name in seen:
            raise ConfigError(f"users: user {user.name!r} is defined twice")
        seen.add(user.name)
    return users


def _htpasswd(path: Any, role: str, key: str) -> list[User]:
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{key}: expected a file path")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    users = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not name:
            raise ConfigError(f"{key}: {path} line {n}: expected user:hash")
        users.append(User(name, _bcrypt_hash(hashed, f"{key}: {path} line {n} (user {name!r})"), role))
    return users


def _bcrypt_hash(value: Any, where: str) -> bytes:
    match = re.fullmatch(r"\$2[aby]\$([0-9]{2})\$[./A-Za-z0-9]{53}", value) if isinstance(value, str) else None
    if match is None or not 4 <= int(match.group(1)) <= 31:  # the costs bcrypt accepts
        raise ConfigError(f"{where}: not a bcrypt hash (make one with `htpasswd -nbB user pass`)")
    return value.encode()


def _memcached_servers(raw: dict[str, Any]) -> list[str]:
    servers = raw.get("memcached_servers") or []
    if not isinstance(servers, list) or not all(isinstance(s, str) and s for s in servers):
        raise ConfigError("memcached_servers: expected a list of 'host[:port]' strings")
    for s in servers:
        host, _, port = s.rpartition(":") if ":" in s else (s, "", "11211")
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ConfigError(f"memcached_servers: {s!r} is not 'host[:port]'")
    return servers


def _statsite(raw: dict[str, Any]) -> StatsiteSettings | None:
    block = raw.get("statsite")
    if block is None:
        return None
    if not isinstance(block, dict) or not isinstance(block.get("host"), str) or not block["host"]:
        raise ConfigError("statsite: expected an object with at least a 'host' string")
    r = _Reader(block)
    rate = block.get("sample_rate", 1.0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise ConfigError(f"statsite.sample_rate: expected a number in (0, 1], got {rate!r}")
    port = r.get("port", int, 8125)
    if not 0 < port < 65536:
        raise ConfigError(f"statsite.port: {port} is not a port number")
    return StatsiteSettings(host=block["host"], port=port, prefix=r.get("prefix", str, ""), sample_rate=float(rate))


def _prometheus(raw: dict[str, Any]) -> PrometheusSettings:
    block = raw.get("prometheus")
    if block is None:
        return PrometheusSettings()
    if not isinstance(block, dict):
        raise ConfigError("prometheus: expected an object like {\"enabled\": true, \"path\": \"/metrics\"}")
    r = _Reader(block)
    path = r.get("path", str, "/metrics")
    if not path.startswith("/") or path.count("/") != 1 or path in ("/", "/status"):
        raise ConfigError(f"prometheus.path: expected a single-segment path like /metrics, got {path!r}")
    return PrometheusSettings(enabled=r.get("enabled", bool, True), path=path)


def _s3(raw: dict[str, Any]) -> S3Settings | None:
    block = raw.get("s3_credentials")
    if block is None:
        return None
    if not isinstance(block, dict):
        raise ConfigError("s3_credentials: expected an object with access_key, secret_key and host")
    for key in ("access_key", "secret_key", "host"):
        if not isinstance(block.get(key), str) or not block[key]:
            raise ConfigError(f"s3_credentials.{key}: expected a non-empty string")
    bucket = block.get("bucket", "samples")
    if not isinstance(bucket, str) or not bucket:
        raise ConfigError("s3_credentials.bucket: expected a non-empty string")
    return S3Settings(block["access_key"], block["secret_key"], block["host"], bucket)


def _kind_name(kind: type) -> str:
    return {bool: "true or false", str: "a string", int: "a whole number", list: "a list", dict: "an object"}.get(
        kind, kind.__name__
    )


def _json_type(value: Any) -> str:
    return f"{type(value).__name__} {json.dumps(value)[:60]}"
