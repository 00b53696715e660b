"""The `stor` command."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

from stor import __version__
from stor.config import CONFIG_ENV, CREDENTIALS_ENV, ConfigError, load_settings
from stor.http.auth import generate_credentials

log = logging.getLogger("stor")

PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stor", description="Store and serve files by their SHA-256.")
    parser.add_argument("--version", action="version", version=f"stor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--config", help=f"JSON configuration file (default: ${CONFIG_ENV}, else the embedded default)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
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
        help="per worker: open connections and requests in progress beyond it get 503 (uvicorn); "
        "requests beyond it wait (granian)",
    )
    serve.add_argument(
        "--server",
        choices=["granian", "uvicorn"],
        default="uvicorn",
        help="HTTP server (default uvicorn, with stor's own answers to blob reads; see Performance in the README)",
    )
    serve.add_argument(
        "--runtime-threads",
        type=int,
        default=None,
        help="granian's I/O threads per worker, which parse requests and send files "
        "(default: the CPUs this process may use, divided among the workers, at least 1)",
    )
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default: a line per request costs a fifth of a small GET; "
        "the load balancer in front usually logs them)",
    )

    args = parser.parse_args(argv)
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
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
    if args.runtime_threads is not None and args.runtime_threads < 1:
        print("stor: --runtime-threads: must be at least 1", file=sys.stderr)
        return 2

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
    metrics_dir = None
    if settings.prometheus.enabled and args.workers > 1 and not os.environ.get(PROMETHEUS_MULTIPROC_ENV):
        # Workers each count into files here; /metrics sums them (prometheus-client's multiprocess mode).
        metrics_dir = tempfile.mkdtemp(prefix="stor-metrics-")
        os.environ[PROMETHEUS_MULTIPROC_ENV] = metrics_dir

    log.info("serving http://%s:%d with %s, %d worker(s)", args.host, args.port, args.server, args.workers)
    try:
        return _run_granian(args) if args.server == "granian" else _run_uvicorn(args)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


ASGI_FACTORY = "stor.http.app:create_app_from_env"
UVICORN_PROTOCOL = "stor.http.front:StorHttpProtocol"
RSGI_FACTORY = "stor.http.app:create_rsgi_app_from_env"


def _run_granian(args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels

    Granian(
        RSGI_FACTORY,
        factory=True,
        # granian's own interface: a blob read is one call into granian instead of two ASGI messages.
        interface=Interfaces.RSGI,
        # Named, not granian's "auto", which takes rloop whenever it is installed: rloop 0.5
        # closes its self-pipe's descriptors twice as each worker starts, and the second close
        # hits whatever file another thread opened in between (see test_no_descriptor_is_closed_twice).
        # uvloop comes with uvicorn[standard], a dependency.
        loop=Loops.uvloop,
        address=args.host,
        port=args.port,
        workers=args.workers,
        backpressure=args.limit_concurrency,
        log_level=LogLevels(args.log_level),
        log_access=args.access_log,
        websockets=False,
        respawn_failed_workers=True,
        runtime_threads=args.runtime_threads or runtime_threads_for(args.workers),
    ).serve()
    return 0


def _raise_open_file_limit() -> None:
    """Soft limit up to the hard one: connections and hot blobs' open files share it (1024 by default on Debian).

    granian does this in its workers too; uvicorn does not.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open file limit from %d: %s", soft, e)


def runtime_threads_for(workers: int) -> int:
    """Every CPU gets an I/O thread: one worker alone sends large files from two threads on two CPUs."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


def _run_uvicorn(args: argparse.Namespace) -> int:
    import uvicorn

    from stor import workers

    config = dict(
        app=ASGI_FACTORY,
        factory=True,
        # uvicorn's httptools protocol, answering blob reads itself (stor/http/front.py).
        http=UVICORN_PROTOCOL,
        loop="uvloop",
        limit_concurrency=args.limit_concurrency,
        log_level=args.log_level,
        access_log=args.access_log,
        server_header=False,
    )
    if args.workers > 1:
        # A listening socket per worker (stor/workers.py), not uvicorn's one shared socket.
        return workers.run(config, args.host, args.port, args.workers)
    uvicorn.run(host=args.host, port=args.port, **config)  # type: ignore[arg-type]
    return 0
