"""The `stor` command."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import socket
import sys
from pathlib import Path

from stor import __version__
from stor.client import cli as client  # light: the client imports nothing of the server

log = logging.getLogger("stor")

PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in client.COMMANDS:
        # Straight to the client, without the server's modules: `stor exists` in a shell loop
        # should cost what httpx costs to start, not what the service does.
        return client.run(argv)
    from stor.config import CONFIG_ENV

    parser = argparse.ArgumentParser(prog="stor", description="Store and serve files by their SHA-256.")
    parser.add_argument("--version", action="version", version=f"stor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--config", help=f"JSON configuration file (default: ${CONFIG_ENV}, else the embedded default)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument(
        "--s3-port",
        type=int,
        default=None,
        help="serve the S3-compatible API on this port too (config: s3_api.enabled and s3_api.port)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="worker processes (default: one per CPU this process may use)",
    )
    serve.add_argument(
        "--limit-concurrency",
        type=int,
        default=None,
        help="per worker: connections beyond this many open ones are refused with 503 "
        "(default: http.max_connections, else a quarter of the open file limit, at most 16384)",
    )
    serve.add_argument(
        "--no-fast-path",
        action="store_true",
        help="answer blob GET/HEAD through uvicorn's ASGI cycle too, not inside its protocol "
        "(the answers are the same; the fast path is faster for small reads; config: http.fast_path)",
    )
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default: a line per request costs a fifth of a small GET; "
        "the load balancer in front usually logs them)",
    )

    backfill = commands.add_parser(
        "s3-backfill",
        help="copy every local blob missing from the S3 bucket (resumable)",
        description="Copy every local blob missing from the configured S3 bucket, verified by its sha; "
        "resumable (a cursor in a state file). Exit 0: every blob copied or present; 1: some failed; "
        "2: could not run; 130/143: stopped by SIGINT/SIGTERM.",
    )
    from stor import backfill as s3_backfill  # the command's options are its own

    s3_backfill.add_arguments(backfill)

    from stor import scrub as scrubbing

    codes = "Exit 0: clean ({}); 1: problems found{}; 2: could not run; 130/143: stopped by SIGINT/SIGTERM."
    scrub = commands.add_parser(
        "scrub",
        help="hash every copy of every blob against its name and report what is wrong (resumable, rate-limited)",
        description="Walk the storages, hash every copy of every blob (at most --rate bytes a second), and report "
        "missing, corrupt and truncated copies, sidecars that disagree and files that do not belong; --s3: the "
        "bucket too. Resumable (--resume). " + codes.format("no problem", ""),
    )
    scrubbing.add_arguments(scrub)
    repair = commands.add_parser(
        "repair",
        help="scrub, and put right what is found (= scrub --repair; --dry-run shows what it would do)",
        description="As `stor scrub`, and put right what is found: a verified copy over a missing or bad one (the "
        "bad one quarantined), a restore from S3 when no local copy is good, sidecars made to agree (the older "
        "wins), strays moved to their place or quarantined. Never with bad data; nothing is deleted but stale "
        "upload temporaries. " + codes.format("everything found was repaired", " and left unrepaired"),
    )
    scrubbing.add_arguments(repair, repair=True)

    client.add_commands(commands)

    args = parser.parse_args(argv)
    if args.command in client.COMMANDS:
        return client.main(args)
    if args.command == "s3-backfill":
        return s3_backfill.main(args)
    if args.command in ("scrub", "repair"):
        return scrubbing.main(args)
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from stor import metricsdir
    from stor.config import (
        CONFIG_ENV,
        CREDENTIALS_ENV,
        NO_FAST_PATH_ENV,
        S3_PORT_ENV,
        ConfigError,
        load_settings,
        with_fast_path,
        with_s3_port,
    )
    from stor.http.auth import generate_credentials

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = args.config or os.environ.get(CONFIG_ENV)
    if config:
        # Workers read the same file: hand it on by absolute path.
        os.environ[CONFIG_ENV] = str(Path(config).resolve())
    try:
        settings = load_settings(config)
    except ConfigError as e:
        print(f"stor: {e}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("stor: --workers: must be at least 1", file=sys.stderr)
        return 2
    for warning in settings.warnings:
        log.warning("%s", warning)
    if args.no_fast_path:
        settings = with_fast_path(settings, False)
        os.environ[NO_FAST_PATH_ENV] = "1"  # the workers read the settings themselves
    if args.s3_port is not None:
        if not 0 <= args.s3_port <= 65535:
            print("stor: --s3-port: expected a port number", file=sys.stderr)
            return 2
        settings = with_s3_port(settings, args.s3_port)

    if not settings.has_writer:
        # Generated once here so that every worker accepts the same password.
        os.environ[CREDENTIALS_ENV] = generate_credentials()
        print(
            f"WARNING: no basic_auth configured; uploads accept the generated credentials "
            f"'{os.environ[CREDENTIALS_ENV]}' until restart. Set basic_auth in the config file or "
            f"{CREDENTIALS_ENV} to choose them.",
            file=sys.stderr,
            flush=True,
        )
    log.info("stor %s: configuration from %s; storage pairs: %s", __version__, settings.source,
             "; ".join(f"{a} + {b}" for a, b in settings.storage_pairs))

    _raise_open_file_limit()
    from stor import workers

    listeners = [(args.host, args.port)]
    if settings.s3_api.enabled:
        listeners.append((settings.s3_api.host or args.host, settings.s3_api.port))
    try:
        reserved = workers.reserve(listeners)
    except OSError as e:
        log.error("cannot listen on %s: %s", ", ".join(f"{h}:{p}" for h, p in listeners), e.strerror or e)
        return 1
    if settings.s3_api.enabled:
        # The port as bound (0 resolved): the workers tell the S3 API's connections by it.
        os.environ[S3_PORT_ENV] = str(reserved[1].getsockname()[1])

    metrics_dir = None
    if settings.metrics.prometheus.enabled and args.workers > 1 and not os.environ.get(PROMETHEUS_MULTIPROC_ENV):
        # Workers each count into files here; /metrics sums them (prometheus-client's multiprocess mode).
        # Gone however the service ends, a kill -9 included (stor/metricsdir.py says how).
        metrics_dir = metricsdir.create()
        os.environ[PROMETHEUS_MULTIPROC_ENV] = str(metrics_dir.path)

    s3 = " and the S3 API on http://%s:%d" % reserved[1].getsockname()[:2] if len(reserved) > 1 else ""
    log.info("serving http://%s:%d%s, %d worker(s), fast path %s", *reserved[0].getsockname()[:2], s3,
             args.workers, "on" if settings.http.fast_path else "off")
    try:
        return _run_uvicorn(args, reserved)
    finally:
        for sock in reserved:
            sock.close()
        if metrics_dir is not None:
            metrics_dir.release()  # the workers have stopped: it is removed


ASGI_FACTORY = "stor.http.app:create_app_from_env"
PROTOCOL = "stor.http.front:StorHttpProtocol"


def _raise_open_file_limit() -> None:
    """Soft limit up to the hard one: connections and hot blobs' open files share it (1024 by default on Debian)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open file limit from %d: %s", soft, e)


def _run_uvicorn(args: argparse.Namespace, reserved: list[socket.socket]) -> int:
    import uvicorn

    from stor import workers

    config = dict(
        app=ASGI_FACTORY,
        factory=True,
        # uvicorn's httptools protocol with stor's limits, answering blob reads itself unless
        # the fast path is off (stor/http/front.py).
        http=PROTOCOL,
        loop="uvloop",
        limit_concurrency=args.limit_concurrency,
        log_level=args.log_level,
        access_log=args.access_log,
        server_header=False,
        # The client's address is the peer's, on both paths (the fast path never reads
        # X-Forwarded-For): limits kept per address must not be dodged by a forged header.
        proxy_headers=False,
    )
    if args.workers > 1:
        # Listening sockets per worker (stor/workers.py), not uvicorn's one shared socket.
        return workers.run(config, reserved, args.workers)
    listening = workers.listening([sock.getsockname()[:2] for sock in reserved])
    uvicorn.Server(uvicorn.Config(**config)).run(sockets=listening)  # type: ignore[arg-type]
    return 0
