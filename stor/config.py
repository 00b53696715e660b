"""Configuration: the original Stor's JSON file, read once into one typed Settings.

Keys of the original keep their place and meaning at the top level; options
this service adds live in sections, one per component ("cache", "hot",
"uploads", "storage", "auth", "http", "metrics"), with defaults that reproduce
the original's behaviour. stor 2.0 had those options as flat keys: each is
still read, with a warning naming its new place. Unknown top-level keys are
ignored, as they were; an unknown key inside a section is an error, since a
typo there would otherwise silently leave the default in force. Every problem
is reported as one line naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from stor.aio import DEFAULT_THREADS

CONFIG_ENV = "CONFIG_FILE"
CREDENTIALS_ENV = "STOR_BASIC_AUTH"
# Set by `stor serve --no-fast-path` for its workers, which read the settings themselves.
NO_FAST_PATH_ENV = "STOR_NO_FAST_PATH"
# The S3 API's port as the service listens on it (`stor serve --s3-port`, port 0 resolved), for the workers.
S3_PORT_ENV = "STOR_S3_PORT"

GB = 1_000_000_000
# The default place of tus uploads in progress, in the first storage directory.
TUS_DIR_NAME = ".stor-tus"
# The default place of the S3 API's multipart uploads in progress, in the first storage directory.
MULTIPART_DIR_NAME = ".stor-s3-multipart"


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
class S3Credentials:
    """The original's s3_credentials: who to be, and where (host, with a port if not 80)."""

    access_key: str
    secret_key: str
    host: str
    bucket: str | None = None  # stor 2.0's addition; s3.bucket is its place now

    def __repr__(self) -> str:
        return f"S3Credentials(access_key={self.access_key!r}, host={self.host!r})"  # never the secret


READ_ORDERS = ("s3-first", "local-first")
WRITE_MODES = ("local", "local+s3", "s3")
ADDRESSING_STYLES = ("path", "virtual")
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Section "s3": what the original hard-coded about its bucket, and the tier stor adds (stor.store.tier).

    Used only with s3_enabled and s3_credentials. endpoint None: the
    original's plain http://<s3_credentials.host>. Reads: read_order, each
    request falling through to the other tier on a miss or a fault; after a
    fault S3 is skipped for retry_after seconds (an outage costs one timeout,
    not one per request). Writes: write_mode. Uploads to S3 go in parts of
    part_bytes, parts_in_flight at once (memory per upload: about their
    product); copies queued by local+s3 are retried from copy_retry_min,
    doubling, up to copy_retry_max seconds apart, copy_concurrency at once.
    """

    endpoint: str | None = None
    bucket: str = "samples"
    region: str = "us-east-1"
    addressing_style: str = "path"
    read_order: str = "s3-first"
    write_mode: str = "local"
    verify_reads: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 30.0  # the original's timeout
    max_connections: int = 32
    retry_after: float = 5.0
    part_bytes: int = 8 * MIB
    parts_in_flight: int = 2
    copy_concurrency: int = 2
    copy_retry_min: float = 1.0
    copy_retry_max: float = 300.0


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """Section "cache": where blobs are, remembered in this process and in memcached."""

    # Blobs whose location each worker remembers, in front of memcached (0: none).
    local_size: int = 10_000
    # Seconds a memcached call may take, and the pause before an unreachable
    # server is tried again.
    memcached_timeout: float = 0.25
    memcached_retry_after: float = 5.0


@dataclass(frozen=True, slots=True)
class HotSettings:
    """Section "hot": small blobs each worker keeps in memory, with their files open (stor.store.hot)."""

    blobs: int = 256  # how many (0: none)
    max_blob_bytes: int = 1024 * 1024  # up to what size
    total_bytes: int = 16 * 1024 * 1024  # how many bytes in all: the memory bound
    seconds: float = 10.0  # how long a file stays open after it was taken in


@dataclass(frozen=True, slots=True)
class UploadSettings:
    """Section "uploads"."""

    # Largest accepted upload in bytes; None accepts any size.
    max_blob_bytes: int | None = None
    # Age after its last write at which an upload temporary file counts as
    # stale (the original used 30 minutes).
    tempfile_max_age: float = 1800.0


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Section "storage": the directories of storage_pairs, and the threads that use them."""

    # A storage must be on a mounted filesystem other than "/" to be healthy.
    require_mount_points: bool = True
    # Below this much free space on every pair, write to the emptiest pair
    # instead of choosing at random weighted by free space.
    balance_threshold_bytes: int = GB
    # Threads per worker for blocking disk and memcached calls: uploads wait
    # on fsync there, so this bounds how many writes a worker flushes at once.
    io_threads: int = DEFAULT_THREADS


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Section "auth": more users than the original's one writer, with bcrypt hashes.

    Users come from the config ("users") and from htpasswd files
    ("htpasswd_files"); reads need a user only when asked to. bcrypt costs
    CPU on purpose, so checks are bounded (stor.http.auth): so many at once
    per worker, and per client address a budget of failed ones (a burst, then
    so many a minute, per worker); beyond either, 429 without a check.
    """

    users: tuple[User, ...] = ()
    read_auth_required: bool = False
    max_concurrent_checks: int = 2  # bcrypt checks a worker runs at once
    failed_checks_per_minute: float = 30.0  # per client address, per worker, once the burst is spent
    failed_checks_burst: int = 10


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Section "http"."""

    # GET/HEAD of a blob answered inside uvicorn's protocol, without the ASGI
    # application; `stor serve --no-fast-path` turns it off (with_fast_path).
    fast_path: bool = True
    exists_max_items: int = 10_000  # most shas in one POST /exists
    # Limits on what a client may make a worker hold (stor.http.front): a request's line and
    # headers in bytes and in count (431 beyond), seconds for a whole request head from the
    # connection's start or its previous answer, the longest gap between body bytes while the
    # body is awaited (408), how long a download may take nothing before it is cut, how long an
    # idle keep-alive connection stays open, and open connections per worker (None: derived from
    # the descriptor limit, see max_connections_for).
    max_head_bytes: int = 64 * 1024
    max_headers: int = 100
    head_timeout: float = 20.0
    body_timeout: float = 60.0
    send_timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    max_connections: int | None = None


def max_connections_for(settings: HttpSettings, open_files: int) -> int:
    """The per-worker connection cap: as configured, else a quarter of the descriptor limit.

    A connection can hold up to four descriptors (its socket, a blob, and
    their copies while sendfile runs), so a quarter keeps EMFILE away from
    files and uploads; 16384 bounds the memory of idle ones.
    """
    if settings.max_connections is not None:
        return settings.max_connections
    return max(64, min(16384, (open_files - 256) // 4))


@dataclass(frozen=True, slots=True)
class IntegritySettings:
    """Section "integrity": checking stored bytes against their sha, and putting bad copies right.

    verify_reads: the fraction of whole-blob reads hashed before their last
    byte goes out (the config says "off", "always" or a number in (0, 1]).
    heal: a read that finds a mirror's copy missing or corrupt queues its
    repair (heal_queue jobs at most per worker, heal_concurrency at once).
    scrub_rate / scrub_workers: `stor scrub`'s defaults for --rate (bytes a
    second, None: unlimited) and --workers.
    """

    verify_reads: float = 0.0
    heal: bool = True
    heal_queue: int = 1000
    heal_concurrency: int = 1
    scrub_rate: int | None = None
    scrub_workers: int = 2


# The events stor sends beyond the original's bare sha of each request (stor.events).
EVENT_NAMES = ("blob.created", "blob.duplicate", "blob.repaired", "blob.corrupt", "upload.completed", "upload.failed")


@dataclass(frozen=True, slots=True)
class AmqpTarget:
    """rabbitmq_uri, read as the original read it: an AMQP URI whose query names the exchange (default
    `stor`, a durable topic exchange), the routing key of the requested shas (default `sha`) and the
    heartbeat in seconds (default 60); for amqps://, the CA bundle and a client certificate."""

    host: str
    shown: str  # the URI without the password and the query, for logs and /status
    port: int = 5672
    user: str = "guest"
    password: str = field(default="guest", repr=False)
    vhost: str = "/"
    tls: bool = False
    cafile: str | None = None  # amqps: the CAs to verify the broker with (default: the system's)
    certfile: str | None = None  # amqps: a client certificate (and keyfile, unless inside certfile)
    keyfile: str | None = None
    exchange: str = "stor"
    routing_key: str = "sha"
    heartbeat: int = 60


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """One receiver of events: JSON POSTed to url, signed with secret (HMAC-SHA256) when there is one."""

    url: str
    events: tuple[str, ...] = EVENT_NAMES
    secret: str | None = field(default=None, repr=False)
    timeout: float = 5.0
    max_attempts: int = 8


@dataclass(frozen=True, slots=True)
class PreUploadHookSettings:
    """An endpoint asked before an upload is taken; on_timeout: "refuse" or "accept" when it does not answer."""

    url: str
    timeout: float = 5.0
    on_timeout: str = "refuse"


@dataclass(frozen=True, slots=True)
class EventsSettings:
    """Section "events": what is sent where, beyond rabbitmq_uri itself.

    publish_requests: the original's message (the bare sha, routing key
    from rabbitmq_uri) on each GET and HEAD of a valid sha. rabbitmq_events:
    the JSON events also published on the exchange (routing key = the
    event's name). queue_size: per worker and destination; beyond it,
    events are dropped and counted, never held in memory without bound.
    node: the name events carry (default: the host's). webhook_spool: a
    directory where webhook deliveries wait, so that they survive a restart
    (at least once); without it they live in memory.
    """

    publish_requests: bool = True
    rabbitmq_events: tuple[str, ...] = EVENT_NAMES
    queue_size: int = 10000
    node: str | None = None
    webhooks: tuple[WebhookSettings, ...] = ()
    webhook_spool: Path | None = None
    pre_upload_hook: PreUploadHookSettings | None = None


@dataclass(frozen=True, slots=True)
class TusSettings:
    """Section "tus": resumable uploads (the tus 1.0 protocol) under path.

    directory: where uploads in progress are kept, on storage every node
    shares (None: `.stor-tus` in the first storage directory; a node without
    local storage needs one set, or has no tus). expire_after: seconds an
    unfinished upload is kept after its last request; max_uploads: how many
    may be in progress at once; sweep_period: seconds between sweeps of
    expired ones.
    """

    enabled: bool = True
    path: str = "/files/"
    directory: Path | None = None
    expire_after: float = 86400.0
    max_uploads: int = 1000
    sweep_period: float = 600.0


@dataclass(frozen=True, slots=True)
class S3AccessKey:
    """An S3 API access key: the id a client signs with, its secret, and the blob API's roles."""

    access_key: str
    secret_key: str = field(repr=False)  # never in a log line or a repr
    role: str = "read"  # "read" or "write"; write implies read


@dataclass(frozen=True, slots=True)
class CorsSettings:
    """Section "s3_api.cors": which browser origins may call the S3 API (none by default)."""

    origins: tuple[str, ...] = ()  # exact origins ("https://app.example.com"), or "*"
    methods: tuple[str, ...] = ("GET", "HEAD", "PUT", "POST")
    headers: tuple[str, ...] = ("*",)  # request headers a preflight may ask for
    expose_headers: tuple[str, ...] = ("ETag", "Content-Length", "Content-Type", "Last-Modified", "x-amz-request-id")
    max_age: int = 3600


@dataclass(frozen=True, slots=True)
class S3ApiSettings:
    """Section "s3_api": the S3-compatible API on a listener of its own (`stor serve --s3-port`).

    One bucket, the archive, over the same store as the blob API. port: its
    own (host: --host's when None). domain: the host name virtual-host style
    addresses the bucket under (`<bucket>.<domain>`); without one, a Host
    whose first label is the bucket's name. anonymous_read: reads without a
    signature; allow_delete: DeleteObject(s) remove every copy (refused by
    default: the archive is write-once). Multipart uploads in progress live in
    multipart_directory (shared storage; None: `.stor-s3-multipart` in the
    first storage directory) and are removed multipart_expire_after seconds
    after their last part.
    """

    enabled: bool = False
    port: int = 9000
    host: str | None = None
    bucket: str = "samples"
    region: str = "us-east-1"
    domain: str | None = None
    access_keys: tuple[S3AccessKey, ...] = ()
    anonymous_read: bool = False
    allow_delete: bool = False
    cors: CorsSettings = CorsSettings()
    max_clock_skew: float = 900.0
    max_metadata_bytes: int = 2048
    multipart_directory: Path | None = None
    multipart_expire_after: float = 86400.0
    max_multipart_uploads: int = 1000
    min_part_bytes: int = 5 * 1024 * 1024
    sweep_period: float = 600.0

    @property
    def has_writer(self) -> bool:
        return any(k.role == "write" for k in self.access_keys)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Section "metrics"."""

    prometheus: PrometheusSettings = PrometheusSettings()


@dataclass(frozen=True, slots=True)
class Settings:
    # The original Stor's keys.
    storage_pairs: tuple[tuple[Path, Path], ...]
    writable_pairs_regex: re.Pattern[str] = re.compile(".*")
    basic_auth: str | None = None
    memcached_servers: tuple[str, ...] = ()
    statsite: StatsiteSettings | None = None
    s3_enabled: bool = False
    s3_credentials: S3Credentials | None = None
    rabbitmq_uri: str | None = None
    # Seconds between sweeps of stale upload temporary files.
    cleanup_tempdir_period: float = 1800.0
    # stor's own, one section per component.
    cache: CacheSettings = CacheSettings()
    hot: HotSettings = HotSettings()
    uploads: UploadSettings = UploadSettings()
    storage: StorageSettings = StorageSettings()
    auth: AuthSettings = AuthSettings()
    http: HttpSettings = HttpSettings()
    metrics: MetricsSettings = MetricsSettings()
    s3: S3Settings = S3Settings()
    integrity: IntegritySettings = IntegritySettings()
    tus: TusSettings = TusSettings()
    s3_api: S3ApiSettings = S3ApiSettings()
    events: EventsSettings = EventsSettings()
    # Where the settings came from, for the start-up log line.
    source: str = "embedded default"
    # One line per legacy flat key read, for the CLI to log at start: the file
    # still works, and the operator learns where the key lives now.
    warnings: tuple[str, ...] = ()

    @property
    def has_writer(self) -> bool:
        return self.basic_auth is not None or any(u.role == "write" for u in self.auth.users)

    @property
    def amqp(self) -> AmqpTarget | None:
        """rabbitmq_uri read (None without one)."""
        return parse_rabbitmq_uri(self.rabbitmq_uri) if self.rabbitmq_uri else None

    @property
    def s3_tier(self) -> bool:
        """Whether the S3 tier is on (the original's switch, with its credentials)."""
        return self.s3_enabled and self.s3_credentials is not None

    @property
    def s3_endpoint(self) -> str | None:
        """The S3 endpoint URL: s3.endpoint, else the original's plain http://<host>."""
        if self.s3_credentials is None:
            return None
        return self.s3.endpoint or f"http://{self.s3_credentials.host}"

    @property
    def storage_dirs(self) -> tuple[Path, ...]:
        return tuple(d for pair in self.storage_pairs for d in pair)

    @property
    def tus_directory(self) -> Path | None:
        """Where tus uploads in progress are kept; None when tus is off or has nowhere to keep them."""
        if not self.tus.enabled:
            return None
        if self.tus.directory is not None:
            return self.tus.directory
        return self.storage_pairs[0][0] / TUS_DIR_NAME if self.storage_pairs else None

    @property
    def multipart_directory(self) -> Path | None:
        """Where the S3 API's multipart uploads in progress are kept; None when it has nowhere to keep them."""
        if self.s3_api.multipart_directory is not None:
            return self.s3_api.multipart_directory
        return self.storage_pairs[0][0] / MULTIPART_DIR_NAME if self.storage_pairs else None


def with_s3_port(settings: Settings, port: int) -> Settings:
    """The same settings with the S3 API on, at port (`stor serve --s3-port`)."""
    return dataclasses.replace(settings, s3_api=dataclasses.replace(settings.s3_api, enabled=True, port=port))


def with_fast_path(settings: Settings, enabled: bool) -> Settings:
    """The same settings with http.fast_path set, for `stor serve --no-fast-path`."""
    return dataclasses.replace(settings, http=dataclasses.replace(settings.http, fast_path=enabled))


# The keys of each section, in the order they are documented (and listed in
# the message for an unknown key).
_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "cache": ("local_size", "memcached_timeout", "memcached_retry_after"),
    "hot": ("blobs", "max_blob_bytes", "total_bytes", "seconds"),
    "uploads": ("max_blob_bytes", "tempfile_max_age"),
    "storage": ("require_mount_points", "balance_threshold_bytes", "io_threads"),
    "auth": (
        "users", "htpasswd_files", "read_auth_required",
        "max_concurrent_checks", "failed_checks_per_minute", "failed_checks_burst",
    ),
    "http": (
        "fast_path", "exists_max_items", "max_head_bytes", "max_headers", "head_timeout", "body_timeout",
        "send_timeout", "keep_alive_timeout", "max_connections",
    ),
    "metrics": ("prometheus",),
    "s3": (
        "endpoint", "bucket", "region", "addressing_style", "read_order", "write_mode", "verify_reads",
        "connect_timeout", "read_timeout", "max_connections", "retry_after", "part_bytes", "parts_in_flight",
        "copy_concurrency", "copy_retry_min", "copy_retry_max",
    ),
    "integrity": ("verify_reads", "heal", "heal_queue", "heal_concurrency", "scrub_rate", "scrub_workers"),
    "tus": ("enabled", "path", "directory", "expire_after", "max_uploads", "sweep_period"),
    "events": ("publish_requests", "rabbitmq_events", "queue_size", "node", "webhooks", "webhook_spool",
               "pre_upload_hook"),
    "s3_api": (
        "enabled", "port", "host", "bucket", "region", "domain", "access_keys", "anonymous_read", "allow_delete",
        "cors", "max_clock_skew", "max_metadata_bytes", "multipart_directory", "multipart_expire_after",
        "max_multipart_uploads", "min_part_bytes", "sweep_period",
    ),
}

# stor 2.0's flat keys and their place now: still read, with a warning.
_LEGACY_KEYS: dict[str, tuple[str, str]] = {
    "local_cache_size": ("cache", "local_size"),
    "memcached_timeout": ("cache", "memcached_timeout"),
    "memcached_retry_after": ("cache", "memcached_retry_after"),
    "hot_blobs": ("hot", "blobs"),
    "hot_blob_max_bytes": ("hot", "max_blob_bytes"),
    "hot_total_bytes": ("hot", "total_bytes"),
    "hot_blob_seconds": ("hot", "seconds"),
    "max_blob_bytes": ("uploads", "max_blob_bytes"),
    "tempfile_max_age": ("uploads", "tempfile_max_age"),
    "require_mount_points": ("storage", "require_mount_points"),
    "balance_threshold_bytes": ("storage", "balance_threshold_bytes"),
    "io_threads": ("storage", "io_threads"),
    "users": ("auth", "users"),
    "htpasswd_files": ("auth", "htpasswd_files"),
    "read_auth_required": ("auth", "read_auth_required"),
    "exists_max_items": ("http", "exists_max_items"),
    "prometheus": ("metrics", "prometheus"),
}


def embedded_default(base: Path | None = None) -> Settings:
    """One pair under ./data, no cache, no metrics, no mount-point check."""
    root = (base or Path.cwd()) / "data"
    pair = (root / "a", root / "b")
    for d in pair:
        d.mkdir(parents=True, exist_ok=True)
    return Settings(
        storage_pairs=(pair,),
        basic_auth=os.environ.get(CREDENTIALS_ENV) or None,
        storage=StorageSettings(require_mount_points=False),
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

    warnings: list[str] = []

    def section(name: str) -> _Reader:
        return _section(raw, name, warnings)

    credentials = _s3_credentials(raw)
    s3 = _s3(section("s3"), credentials)
    settings = Settings(
        storage_pairs=_storage_pairs(raw, allow_none=s3.write_mode == "s3"),
        writable_pairs_regex=writable,
        basic_auth=basic_auth,
        memcached_servers=tuple(_memcached_servers(raw)),
        statsite=_statsite(raw),
        s3_enabled=r.get("s3_enabled", bool, False),
        s3_credentials=credentials,
        rabbitmq_uri=r.get("rabbitmq_uri", str, None),
        cleanup_tempdir_period=r.positive_number("cleanup_tempdir_period", 1800.0),
        cache=_cache(section("cache")),
        hot=_hot(section("hot")),
        uploads=_uploads(section("uploads")),
        storage=_storage(section("storage")),
        auth=_auth(section("auth")),
        http=_http(section("http")),
        metrics=_metrics(section("metrics")),
        s3=s3,
        integrity=_integrity(section("integrity")),
        tus=_tus(section("tus")),
        s3_api=_s3_api(section("s3_api")),
        events=_events(section("events")),
        source=source,
        warnings=tuple(warnings),
    )
    if settings.rabbitmq_uri:
        parse_rabbitmq_uri(settings.rabbitmq_uri)  # refused now, not at the first event
    if settings.s3_enabled and settings.s3_credentials is None:
        raise ConfigError("s3_credentials: required when s3_enabled is true")
    if s3.write_mode != "local" and not settings.s3_tier:
        raise ConfigError(f"s3.write_mode: {s3.write_mode!r} needs s3_enabled and s3_credentials")
    return settings


class _Reader:
    """Typed values from one JSON object, each named in messages as the operator wrote it.

    `names` maps a key to that name ("hot.blobs", or "hot_blobs" when read
    from the legacy flat key, which `legacy` lists); other keys are named
    `prefix` + key.
    """

    def __init__(
        self, values: dict[str, Any], names: dict[str, str] | None = None, prefix: str = "", legacy: frozenset[str] = frozenset()
    ) -> None:
        self.values = values
        self.names = names or {}
        self.prefix = prefix
        self.legacy = legacy  # keys whose value came from a legacy flat key

    def is_legacy(self, key: str) -> bool:
        return key in self.legacy

    def name(self, key: str) -> str:
        return self.names.get(key, self.prefix + key)

    def raw(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def get(self, key: str, kind: type, default: Any) -> Any:
        value = self.values.get(key, default)
        if value is None:
            return default
        # bool is a subclass of int; a boolean where a number is due is a mistake.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(f"{self.name(key)}: expected {_kind_name(kind)}, got {_json_type(value)}")
        return value

    def positive_number(self, key: str, default: float) -> float:
        value = self.values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{self.name(key)}: expected a positive number, got {value!r}")
        return float(value)

    def non_negative_int(self, key: str, default: int) -> int:
        value = self.values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{self.name(key)}: expected a non-negative whole number, got {value!r}")
        return value


def _section(raw: dict[str, Any], section: str, warnings: list[str]) -> _Reader:
    """One section's values, from its JSON object and from the legacy flat keys that moved into it."""
    block = _section_block(raw, section)
    values = dict(block)
    names = {key: f"{section}.{key}" for key in block}
    legacy: set[str] = set()
    for old, (place, key) in _LEGACY_KEYS.items():
        if place != section or old not in raw:
            continue
        new = f"{section}.{key}"
        # Two values for one setting: whichever won, the file would mislead its reader.
        if key in block:
            raise ConfigError(f"{old} and {new}: the same setting given twice; keep {new}")
        values[key] = raw[old]
        names[key] = old
        legacy.add(key)
        warnings.append(f'config: "{old}" is now "{new}"; the old key still works')
    return _Reader(values, names, prefix=f"{section}.", legacy=frozenset(legacy))


def _section_block(raw: dict[str, Any], section: str) -> dict[str, Any]:
    """The section's JSON object as given ({} when absent), with only keys it knows."""
    known = _SECTION_KEYS[section]
    block = raw.get(section, {})
    if not isinstance(block, dict):
        raise ConfigError(f"{section}: expected an object with keys {', '.join(known)}, got {_json_type(block)}")
    for key in block:
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key; the keys of {section} are {', '.join(known)}")
    return block


# Each section's defaults are its dataclass's, stated once.
def _cache(r: _Reader, d: CacheSettings = CacheSettings()) -> CacheSettings:
    return CacheSettings(
        local_size=r.non_negative_int("local_size", d.local_size),
        memcached_timeout=r.positive_number("memcached_timeout", d.memcached_timeout),
        memcached_retry_after=r.positive_number("memcached_retry_after", d.memcached_retry_after),
    )


def _hot(r: _Reader, d: HotSettings = HotSettings()) -> HotSettings:
    return HotSettings(
        blobs=r.non_negative_int("blobs", d.blobs),
        max_blob_bytes=r.non_negative_int("max_blob_bytes", d.max_blob_bytes),
        total_bytes=r.non_negative_int("total_bytes", d.total_bytes),
        seconds=r.positive_number("seconds", d.seconds),
    )


def _uploads(r: _Reader, d: UploadSettings = UploadSettings()) -> UploadSettings:
    limit = r.get("max_blob_bytes", int, d.max_blob_bytes)
    if limit is not None and limit <= 0:
        raise ConfigError(f"{r.name('max_blob_bytes')}: must be a positive number of bytes")
    return UploadSettings(max_blob_bytes=limit, tempfile_max_age=r.positive_number("tempfile_max_age", d.tempfile_max_age))


def _storage(r: _Reader, d: StorageSettings = StorageSettings()) -> StorageSettings:
    threads = r.non_negative_int("io_threads", d.io_threads)
    if threads < 1:
        raise ConfigError(f"{r.name('io_threads')}: must be at least 1")
    return StorageSettings(
        require_mount_points=r.get("require_mount_points", bool, d.require_mount_points),
        balance_threshold_bytes=r.non_negative_int("balance_threshold_bytes", d.balance_threshold_bytes),
        io_threads=threads,
    )


def _auth(r: _Reader, d: AuthSettings = AuthSettings()) -> AuthSettings:
    return AuthSettings(
        users=tuple(_users(r)),
        read_auth_required=r.get("read_auth_required", bool, d.read_auth_required),
        max_concurrent_checks=_at_least_one(r, "max_concurrent_checks", d.max_concurrent_checks),
        failed_checks_per_minute=r.positive_number("failed_checks_per_minute", d.failed_checks_per_minute),
        failed_checks_burst=_at_least_one(r, "failed_checks_burst", d.failed_checks_burst),
    )


def _at_least_one(r: _Reader, key: str, default: int) -> int:
    """A count where 0 would refuse every check, right passwords too."""
    return _at_least(r, key, default, 1)


def _at_least(r: _Reader, key: str, default: int, least: int) -> int:
    value = r.non_negative_int(key, default)
    if value < least:
        raise ConfigError(f"{r.name(key)}: must be at least {least}")
    return value


def _http(r: _Reader, d: HttpSettings = HttpSettings()) -> HttpSettings:
    return HttpSettings(
        fast_path=r.get("fast_path", bool, d.fast_path),
        exists_max_items=r.non_negative_int("exists_max_items", d.exists_max_items),
        max_head_bytes=_at_least(r, "max_head_bytes", d.max_head_bytes, 1024),
        max_headers=_at_least(r, "max_headers", d.max_headers, 1),
        head_timeout=r.positive_number("head_timeout", d.head_timeout),
        body_timeout=r.positive_number("body_timeout", d.body_timeout),
        send_timeout=r.positive_number("send_timeout", d.send_timeout),
        keep_alive_timeout=r.positive_number("keep_alive_timeout", d.keep_alive_timeout),
        max_connections=None if r.raw("max_connections") is None else _at_least(r, "max_connections", 0, 1),
    )


def _metrics(r: _Reader) -> MetricsSettings:
    # The legacy top-level "prometheus" ignored keys it did not know; it still
    # does, so that files written for stor 2.0 keep working unchanged.
    strict = not r.is_legacy("prometheus")
    return MetricsSettings(prometheus=_prometheus(r.raw("prometheus"), r.name("prometheus"), strict))


def _storage_pairs(raw: dict[str, Any], allow_none: bool) -> tuple[tuple[Path, Path], ...]:
    """The pairs; none at all only on a node that keeps blobs in S3 alone (s3.write_mode "s3")."""
    if "storage_pairs" not in raw and not allow_none:
        raise ConfigError("storage_pairs: missing; a list of [dir, dir] pairs is required")
    pairs = raw.get("storage_pairs", [])
    if not isinstance(pairs, list) or (not pairs and not allow_none):
        raise ConfigError(
            "storage_pairs: expected a non-empty list of [dir, dir] pairs "
            "(an empty list only with s3.write_mode \"s3\")"
        )
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


def _users(r: _Reader) -> list[User]:
    key = r.name("users")
    users: list[User] = []
    entries = r.raw("users") or []
    if not isinstance(entries, list):
        raise ConfigError(f"{key}: expected a list of {{\"name\", \"password_hash\", \"role\"}} objects")
    for i, entry in enumerate(entries):
        users.append(_user(entry, f"{key}[{i}]"))

    files_key = r.name("htpasswd_files")
    files = r.raw("htpasswd_files") or {}
    if not isinstance(files, dict) or not set(files) <= set(ROLES):
        raise ConfigError(f"{files_key}: expected an object like {{\"read\": \"/path\", \"write\": \"/path\"}}")
    for role, path in sorted(files.items()):
        users += _htpasswd(path, role, f"{files_key}.{role}")

    seen: set[str] = set()
    for user in users:
        if user.name in seen:
            raise ConfigError(f"{key}: user {user.name!r} is defined twice")
        seen.add(user.name)
    return users


def _user(entry: Any, key: str) -> User:
    if not isinstance(entry, dict):
        raise ConfigError(f"{key}: expected an object with name, password_hash and role")
    name, hashed, role = entry.get("name"), entry.get("password_hash"), entry.get("role")
    if not isinstance(name, str) or not name or ":" in name:
        raise ConfigError(f"{key}.name: expected a non-empty user name without ':'")
    if role not in ROLES:
        raise ConfigError(f"{key}.role: expected \"read\" or \"write\", got {role!r}")
    return User(name, _bcrypt_hash(hashed, f"{key}.password_hash"), role)


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


# Paths stor itself routes; the metrics endpoint must not take one of them.
_FIXED_PATHS = ("/", "/status", "/exists", "/storages")
# A blob's URL, as the blob routes match it (either case).
_BLOB_PATH = re.compile(r"/[0-9a-fA-F]{64}")
_PROMETHEUS_KEYS = ("enabled", "path")


def _prometheus(block: Any, key: str, strict: bool) -> PrometheusSettings:
    """The Prometheus endpoint; `strict` refuses keys it does not know, as a section does."""
    if block is None:
        return PrometheusSettings()
    if not isinstance(block, dict):
        raise ConfigError(f"{key}: expected an object like {{\"enabled\": true, \"path\": \"/metrics\"}}")
    unknown = [k for k in block if k not in _PROMETHEUS_KEYS]
    if strict and unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; the keys of {key} are {', '.join(_PROMETHEUS_KEYS)}")
    r = _Reader(block, prefix=f"{key}.")
    path = r.get("path", str, "/metrics")
    _check_metrics_path(path, f"{key}.path")
    return PrometheusSettings(enabled=r.get("enabled", bool, True), path=path)


def _check_metrics_path(path: str, key: str) -> None:
    if not path.startswith("/") or path.count("/") != 1 or path == "/":
        raise ConfigError(f"{key}: expected a single-segment path like /metrics, got {path!r}")
    if path in _FIXED_PATHS:
        raise ConfigError(f"{key}: {path} is one of stor's own routes ({', '.join(_FIXED_PATHS)}); choose another path")
    # fullmatch, not match with "$": "$" would let a trailing newline through.
    if _BLOB_PATH.fullmatch(path):
        raise ConfigError(f"{key}: {path!r} would shadow the blob with that sha; choose a path that is not 64 hex digits")


def _s3_credentials(raw: dict[str, Any]) -> S3Credentials | None:
    block = raw.get("s3_credentials")
    if block is None:
        return None
    if not isinstance(block, dict):
        raise ConfigError("s3_credentials: expected an object with access_key, secret_key and host")
    for key in ("access_key", "secret_key", "host"):
        if not isinstance(block.get(key), str) or not block[key]:
            raise ConfigError(f"s3_credentials.{key}: expected a non-empty string")
    bucket = block.get("bucket")
    if bucket is not None and (not isinstance(bucket, str) or not bucket):
        raise ConfigError("s3_credentials.bucket: expected a non-empty string")
    host = block["host"]
    if "/" in host or not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", host):
        raise ConfigError(
            f"s3_credentials.host: expected a host name with an optional port (\"s3.example:8333\"), got {host!r}; "
            "put a URL in s3.endpoint"
        )
    return S3Credentials(block["access_key"], block["secret_key"], host, bucket)


# S3 bucket names (the rules every S3 server shares): 3-63 lower-case letters, digits, dots, hyphens.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


def _s3(r: _Reader, credentials: S3Credentials | None, d: S3Settings = S3Settings()) -> S3Settings:
    endpoint = r.get("endpoint", str, None)
    if endpoint is not None and not re.fullmatch(r"https?://[^/\s]+/?", endpoint):
        raise ConfigError(f"{r.name('endpoint')}: expected http://host[:port] or https://host[:port], got {endpoint!r}")
    legacy_bucket = credentials.bucket if credentials is not None else None
    if legacy_bucket is not None and r.raw("bucket") is not None and r.raw("bucket") != legacy_bucket:
        raise ConfigError("s3_credentials.bucket and s3.bucket: two different buckets; keep s3.bucket")
    bucket = r.get("bucket", str, legacy_bucket or d.bucket)
    if not _BUCKET.fullmatch(bucket):
        raise ConfigError(f"{r.name('bucket')}: {bucket!r} is not an S3 bucket name (3-63 of a-z 0-9 . -)")
    part_bytes = r.non_negative_int("part_bytes", d.part_bytes)
    if not 5 * MIB <= part_bytes <= 5 * 1024 * MIB:
        raise ConfigError(f"{r.name('part_bytes')}: S3 parts are 5 MiB to 5 GiB, got {part_bytes}")
    retry_min = r.positive_number("copy_retry_min", d.copy_retry_min)
    retry_max = r.positive_number("copy_retry_max", d.copy_retry_max)
    if retry_max < retry_min:
        raise ConfigError(f"{r.name('copy_retry_max')}: must be at least copy_retry_min ({retry_min})")
    return S3Settings(
        endpoint=endpoint.rstrip("/") if endpoint else None,
        bucket=bucket,
        region=r.get("region", str, d.region),
        addressing_style=_choice(r, "addressing_style", ADDRESSING_STYLES, d.addressing_style),
        read_order=_choice(r, "read_order", READ_ORDERS, d.read_order),
        write_mode=_choice(r, "write_mode", WRITE_MODES, d.write_mode),
        verify_reads=r.get("verify_reads", bool, d.verify_reads),
        connect_timeout=r.positive_number("connect_timeout", d.connect_timeout),
        read_timeout=r.positive_number("read_timeout", d.read_timeout),
        max_connections=_at_least_one(r, "max_connections", d.max_connections),
        retry_after=r.positive_number("retry_after", d.retry_after),
        part_bytes=part_bytes,
        parts_in_flight=_at_least_one(r, "parts_in_flight", d.parts_in_flight),
        copy_concurrency=_at_least_one(r, "copy_concurrency", d.copy_concurrency),
        copy_retry_min=retry_min,
        copy_retry_max=retry_max,
    )


def _integrity(r: _Reader, d: IntegritySettings = IntegritySettings()) -> IntegritySettings:
    rate = r.raw("scrub_rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0):
        raise ConfigError(f"{r.name('scrub_rate')}: expected a positive number of bytes a second, got {rate!r}")
    return IntegritySettings(
        verify_reads=_fraction(r, "verify_reads"),
        heal=r.get("heal", bool, d.heal),
        heal_queue=_at_least_one(r, "heal_queue", d.heal_queue),
        heal_concurrency=_at_least_one(r, "heal_concurrency", d.heal_concurrency),
        scrub_rate=rate,
        scrub_workers=_at_least_one(r, "scrub_workers", d.scrub_workers),
    )


_AMQP_PARAMETERS = ("exchange", "routing_key", "heartbeat", "cafile", "certfile", "keyfile")


def parse_rabbitmq_uri(uri: str) -> AmqpTarget:
    """The original's rabbitmq_uri: ConfigError when it is not an amqp:// or amqps:// URI with a host, or its
    query has a parameter stor does not know (a typo would otherwise be ignored)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ConfigError(f"rabbitmq_uri: expected amqp://user:pass@host/vhost?exchange=...&routing_key=..., "
                          f"got a URI of scheme {parts.scheme!r}")
    query = dict(parse_qsl(parts.query))
    unknown = sorted(set(query) - set(_AMQP_PARAMETERS))
    if unknown:
        raise ConfigError(f"rabbitmq_uri: unknown parameter {', '.join(unknown)}; known: {', '.join(_AMQP_PARAMETERS)}")
    heartbeat = query.get("heartbeat", "60")
    if not heartbeat.isdigit():
        raise ConfigError(f"rabbitmq_uri: heartbeat is a whole number of seconds, got {heartbeat!r}")
    tls = parts.scheme == "amqps"
    if not tls and {"cafile", "certfile", "keyfile"} & set(query):
        raise ConfigError("rabbitmq_uri: cafile, certfile and keyfile are for amqps:// URIs")
    try:
        port = parts.port or (5671 if tls else 5672)
    except ValueError as e:
        raise ConfigError(f"rabbitmq_uri: {e}") from None
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    # As other AMQP clients read it: the path's first segment, percent-decoded, is the vhost; none is "/".
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return AmqpTarget(
        host=parts.hostname, port=port, user=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"), vhost=vhost, tls=tls,
        cafile=query.get("cafile"), certfile=query.get("certfile"), keyfile=query.get("keyfile"),
        shown=urlunsplit(parts._replace(netloc=netloc, query="")),
        exchange=query.get("exchange", "stor"), routing_key=query.get("routing_key", "sha"), heartbeat=int(heartbeat),
    )


def _event_names(r: _Reader, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    names = r.raw(key, None)
    if names is None:
        return default
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{r.name(key)}: expected a list of event names")
    unknown = sorted(set(names) - set(EVENT_NAMES))
    if unknown:
        raise ConfigError(f"{r.name(key)}: unknown events {', '.join(unknown)}; known: {', '.join(EVENT_NAMES)}")
    return tuple(names)


def _http_url(r: _Reader, what: str, url: Any) -> str:
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ConfigError(f"{what}: expected an http:// or https:// URL, got {url!r}")
    return url


def _events(r: _Reader, d: EventsSettings = EventsSettings()) -> EventsSettings:
    hooks = r.raw("webhooks", None) or []
    if not isinstance(hooks, list):
        raise ConfigError(f"{r.name('webhooks')}: expected a list of {{\"url\": ..., \"events\": [...]}}")
    webhooks = []
    for i, entry in enumerate(hooks):
        what = f"{r.name('webhooks')}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{what}: expected an object with a url")
        w = _Reader(entry, prefix=f"{what}.")
        webhooks.append(WebhookSettings(
            url=_http_url(w, f"{what}.url", entry.get("url")),
            events=_event_names(w, "events", EVENT_NAMES),
            secret=w.get("secret", str, None) or None,
            timeout=w.positive_number("timeout", 5.0),
            max_attempts=max(1, w.non_negative_int("max_attempts", 8)),
        ))
    hook = r.raw("pre_upload_hook", None)
    pre_upload = None
    if hook is not None:
        what = r.name("pre_upload_hook")
        if not isinstance(hook, dict):
            raise ConfigError(f"{what}: expected an object with a url")
        h = _Reader(hook, prefix=f"{what}.")
        on_timeout = h.get("on_timeout", str, "refuse")
        if on_timeout not in ("refuse", "accept"):
            raise ConfigError(f"{what}.on_timeout: \"refuse\" or \"accept\", got {on_timeout!r}")
        pre_upload = PreUploadHookSettings(_http_url(h, f"{what}.url", hook.get("url")),
                                           h.positive_number("timeout", 5.0), on_timeout)
    spool = r.get("webhook_spool", str, None)
    return EventsSettings(
        publish_requests=r.get("publish_requests", bool, d.publish_requests),
        rabbitmq_events=_event_names(r, "rabbitmq_events", d.rabbitmq_events),
        queue_size=_at_least_one(r, "queue_size", d.queue_size),
        node=r.get("node", str, None) or None,
        webhooks=tuple(webhooks),
        webhook_spool=Path(spool) if spool else None,
        pre_upload_hook=pre_upload,
    )


def _tus(r: _Reader, d: TusSettings = TusSettings()) -> TusSettings:
    path = r.get("path", str, d.path)
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+/", path) or any(set(seg) == {"."} for seg in path.split("/") if seg):
        raise ConfigError(f"{r.name('path')}: expected a path such as /files/ (segments of letters, digits, . _ ~ -, "
                          f"and a / at each end), got {path!r}")
    directory = r.get("directory", str, None)
    return TusSettings(
        enabled=r.get("enabled", bool, d.enabled),
        path=path,
        directory=Path(directory) if directory else None,
        expire_after=r.positive_number("expire_after", d.expire_after),
        max_uploads=_at_least_one(r, "max_uploads", d.max_uploads),
        sweep_period=r.positive_number("sweep_period", d.sweep_period),
    )


# S3's rules for bucket names (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CORS_KEYS = ("origins", "methods", "headers", "expose_headers", "max_age")


def _s3_api(r: _Reader, d: S3ApiSettings = S3ApiSettings()) -> S3ApiSettings:
    bucket = r.get("bucket", str, d.bucket)
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(f"{r.name('bucket')}: expected an S3 bucket name (3-63 lower-case letters, digits, "
                          f"dots and hyphens), got {bucket!r}")
    port = r.get("port", int, d.port)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{r.name('port')}: expected a port number, got {port!r}")
    directory = r.get("multipart_directory", str, None)
    return S3ApiSettings(
        enabled=r.get("enabled", bool, d.enabled),
        port=port,
        host=r.get("host", str, d.host),
        bucket=bucket,
        region=r.get("region", str, d.region),
        domain=r.get("domain", str, d.domain) or None,
        access_keys=_access_keys(r),
        anonymous_read=r.get("anonymous_read", bool, d.anonymous_read),
        allow_delete=r.get("allow_delete", bool, d.allow_delete),
        cors=_cors(r),
        max_clock_skew=r.positive_number("max_clock_skew", d.max_clock_skew),
        max_metadata_bytes=_at_least_one(r, "max_metadata_bytes", d.max_metadata_bytes),
        multipart_directory=Path(directory) if directory else None,
        multipart_expire_after=r.positive_number("multipart_expire_after", d.multipart_expire_after),
        max_multipart_uploads=_at_least_one(r, "max_multipart_uploads", d.max_multipart_uploads),
        min_part_bytes=r.non_negative_int("min_part_bytes", d.min_part_bytes),
        sweep_period=r.positive_number("sweep_period", d.sweep_period),
    )


def _access_keys(r: _Reader) -> tuple[S3AccessKey, ...]:
    key = r.name("access_keys")
    entries = r.raw("access_keys") or []
    if not isinstance(entries, list):
        raise ConfigError(f"{key}: expected a list of {{\"access_key\", \"secret_key\", \"role\"}} objects")
    keys: list[S3AccessKey] = []
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"access_key", "secret_key", "role"}:
            raise ConfigError(f"{where}: expected an object with access_key, secret_key and role")
        access, secret, role = entry.get("access_key"), entry.get("secret_key"), entry.get("role", "read")
        if not isinstance(access, str) or not re.fullmatch(r"[A-Za-z0-9._-]{3,128}", access):
            raise ConfigError(f"{where}.access_key: expected 3-128 letters, digits, '.', '_' or '-'")
        if not isinstance(secret, str) or len(secret) < 8:
            raise ConfigError(f"{where}.secret_key: expected a string of at least 8 characters")
        if role not in ROLES:
            raise ConfigError(f"{where}.role: expected \"read\" or \"write\", got {role!r}")
        if any(k.access_key == access for k in keys):
            raise ConfigError(f"{where}.access_key: {access!r} is defined twice")
        keys.append(S3AccessKey(access, secret, role))
    return tuple(keys)


def _cors(r: _Reader, d: CorsSettings = CorsSettings()) -> CorsSettings:
    key = r.name("cors")
    block = r.raw("cors") or {}
    if not isinstance(block, dict) or set(block) - set(_CORS_KEYS):
        raise ConfigError(f"{key}: expected an object with keys {', '.join(_CORS_KEYS)}")
    c = _Reader(block, prefix=f"{key}.")

    def strings(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = c.get(name, list, list(default))
        if not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{c.name(name)}: expected a list of non-empty strings")
        return tuple(value)

    methods = tuple(m.upper() for m in strings("methods", d.methods))
    if set(methods) - {"GET", "HEAD", "PUT", "POST", "DELETE"}:
        raise ConfigError(f"{c.name('methods')}: expected methods among GET, HEAD, PUT, POST, DELETE")
    return CorsSettings(
        origins=strings("origins", d.origins),
        methods=methods,
        headers=tuple(h.lower() for h in strings("headers", d.headers)),
        expose_headers=strings("expose_headers", d.expose_headers),
        max_age=c.non_negative_int("max_age", d.max_age),
    )


def _fraction(r: _Reader, key: str) -> float:
    """"off" (0), "always" (1), or a number in (0, 1]."""
    value = r.raw(key, "off")
    if value == "off":
        return 0.0
    if value == "always":
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f'{r.name(key)}: expected "off", "always" or a fraction in (0, 1], got {value!r}')
    return float(value)


def _choice(r: _Reader, key: str, choices: tuple[str, ...], default: str) -> str:
    value = r.get(key, str, default)
    if value not in choices:
        raise ConfigError(f"{r.name(key)}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def _kind_name(kind: type) -> str:
    return {bool: "true or false", str: "a string", int: "a whole number", list: "a list", dict: "an object"}.get(
        kind, kind.__name__
    )


def _json_type(value: Any) -> str:
    return f"{type(value).__name__} {json.dumps(value)[:60]}"
