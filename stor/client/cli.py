"""`stor put`, `stor get`, `stor exists`, `stor cat`: their options, and their exit codes.

Exit 0: every item done (stored, present, fetched; for exists: all present).
1: some items failed (or, for exists, are missing). 2: bad usage, refused
credentials, or a server that could not be reached. 130/143: stopped by
SIGINT/SIGTERM, after saying what was done.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

COMMANDS = ("put", "get", "exists", "cat")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGNALLED = {signal.SIGINT: 130, signal.SIGTERM: 143}

CONNECTION_HELP = (
    "Server: --url, else $STOR_URL, else http://127.0.0.1:8080. Credentials: --user NAME[:PASSWORD], else "
    "$STOR_USER and $STOR_PASSWORD, else the server's host in ~/.netrc; never printed."
)
EXIT_HELP = "Exit 0: all done; 1: some items failed; 2: usage, credentials or the server unreachable; 130/143: stopped."


def add_commands(commands: Any) -> None:
    """The client's subcommands, on the `stor` command's subparsers."""
    put = commands.add_parser(
        "put", help="upload files and directories, only what the server lacks (parallel, retried)",
        description="Hash each file, ask the server which it lacks (POST /exists, in batches) and upload "
        "those, in parallel, retrying connection errors and 5xx with backoff. Prints per file: path, sha, "
        f"stored / present / failed: reason. {CONNECTION_HELP} {EXIT_HELP}",
    )
    put.add_argument("paths", nargs="+", metavar="PATH", help="files and directories (recursively); - reads "
                     "paths from stdin, one per line")
    put.add_argument("--filename", action="store_true",
                     help="send each file's name (X-Filename): the server keeps it and gives it back on GET")
    get = commands.add_parser(
        "get", help="download blobs, verified, resuming partial files",
        description="Download each blob to DIR/<sha> (or, for one sha, to FILE) through DIR/<sha>.part, which "
        "a rerun continues (Range); renamed into place only once its bytes hash to the sha. "
        f"{CONNECTION_HELP} {EXIT_HELP}",
    )
    get.add_argument("shas", nargs="*", metavar="SHA", help="shas (none, or -: read from stdin, one per line)")
    get.add_argument("-o", "--output", metavar="DIR|FILE",
                     help="directory to download into (default: the current one), or a file for a single sha")
    get.add_argument("--sync", action="store_true",
                     help="fsync each download before it is renamed into place (slower; as curl, off by default)")
    exists = commands.add_parser(
        "exists", help="which shas the server has (present / missing)",
        description="One line per sha, present or missing, asked in batches (POST /exists). Exit 0 if all "
        f"are present, 1 if any is missing or not a sha, 2 if the server cannot be asked. {CONNECTION_HELP}",
    )
    exists.add_argument("shas", nargs="*", metavar="SHA", help="shas (none, or -: read from stdin, one per line)")
    cat = commands.add_parser(
        "cat", help="a blob to stdout, verified",
        description="Write the blob to stdout; exit 1 with a message on stderr if its bytes do not hash to "
        f"the sha (they have been written by then: check the exit code). {CONNECTION_HELP}",
    )
    cat.add_argument("sha", metavar="SHA")
    for parser in (put, get, exists, cat):
        _add_connection_arguments(parser, parallel=parser in (put, get))


def _add_connection_arguments(parser: argparse.ArgumentParser, parallel: bool) -> None:
    parser.add_argument("--url", help="the server (default: $STOR_URL, else http://127.0.0.1:8080)")
    parser.add_argument("-u", "--user", metavar="NAME[:PASSWORD]",
                        help="credentials (default: $STOR_USER/$STOR_PASSWORD, else ~/.netrc)")
    parser.add_argument("--retries", type=int, default=5, metavar="N",
                        help="retries of a request after a connection error, 5xx, 408 or 429 (default 5, "
                        "with exponential backoff)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="longest wait for the server at any one step (default 60)")
    if parallel:
        parser.add_argument("-j", "--parallel", type=int, default=None, metavar="N",
                            help="transfers at once (default: 4 per CPU, at most 16)")
        parser.add_argument("--json", action="store_true",
                            help="JSON lines even on a terminal (always when stdout is not one)")
    elif parser.prog.endswith("exists"):
        parser.add_argument("--json", action="store_true",
                            help="JSON lines even on a terminal (always when stdout is not one)")


def run(argv: list[str]) -> int:
    """`stor <client command> ...` parsed by the client alone (the same options as in `stor --help`)."""
    parser = argparse.ArgumentParser(prog="stor")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return main(parser.parse_args(argv))


def main(args: argparse.Namespace) -> int:
    from stor.client.connection import Connection, RetryPolicy, Unreachable, UsageError

    signalled: list[int] = []
    connection: list[Any] = []

    def interrupt(signum: int, frame: Any) -> None:
        signalled.append(signum)
        if args.command in ("put", "get") and connection:
            connection[0].interrupt()  # the run stops itself, saying what was done
        else:
            raise KeyboardInterrupt()  # one request at a time, in this thread: it may just stop

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    parallel = getattr(args, "parallel", None)
    if parallel is None:
        # Transfers are mostly waits (the server's fsyncs, the network): more in flight than CPUs.
        parallel = min(16, 4 * (os.cpu_count() or 1))
    try:
        if parallel < 1 or args.retries < 0 or args.timeout <= 0:
            raise UsageError("-j must be at least 1, --retries at least 0, --timeout above 0")
        conn = Connection(args.url, args.user, parallel, RetryPolicy(attempts=args.retries + 1), args.timeout)
        connection.append(conn)
    except UsageError as e:
        print(f"stor {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args, conn, parallel, signalled)
    except UsageError as e:
        print(f"stor {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as e:
        print(f"stor {args.command}: cannot reach {conn.redacted}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_SIGNALLED.get(signalled[0] if signalled else signal.SIGINT, 130)
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (`| head`): nothing more to say
        return EXIT_FAILED
    finally:
        conn.close()


def _run(args: argparse.Namespace, conn: Any, parallel: int, signalled: list[int]) -> int:
    from stor.client.connection import Failed, Unreachable, UsageError
    from stor.client.report import reporter

    def stopped() -> int:
        return EXIT_SIGNALLED.get(signalled[0] if signalled else signal.SIGINT, 130)

    if args.command == "cat":
        from stor.client.get import run_cat

        try:
            run_cat(conn, args.sha)
        except Failed as e:
            print(f"stor cat: {args.sha}: {e}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK

    if args.command == "exists":
        from stor.client.exists import read_shas, run_exists

        report = reporter(args.json, "exists", "shas")
        try:
            counts = run_exists(conn, read_shas(args.shas, sys.stdin), report)
        finally:
            report.close()  # on a terminal, the bar goes (and the cursor comes back) whatever happened
        report.summary(counts, f"{sum(counts.values())} shas: {counts['present']} present, {counts['missing']} "
                       f"missing, {counts['invalid']} not shas")
        return EXIT_OK if counts["missing"] == counts["invalid"] == 0 else EXIT_FAILED

    job: Any
    if args.command == "put":
        from stor.client.put import Put

        report = reporter(args.json, "put", "files")
        job = Put(conn, report, parallel, args.filename)
        run = lambda: job.run(args.paths, sys.stdin)  # noqa: E731
    else:
        from stor.client.exists import read_shas
        from stor.client.get import Get

        report = reporter(args.json, "get", "blobs")
        job = Get(conn, report, args.output, parallel, args.sync)
        run = lambda: job.run(read_shas(args.shas, sys.stdin))  # noqa: E731
    stopped_by: Exception | None = None
    try:
        run()
    except (Unreachable, UsageError) as e:
        stopped_by = e  # said after the summary of what was done
    finally:
        record, text = job.summary()
        if stopped_by is not None:
            record["error"] = str(stopped_by)
        report.summary(record, text)
    if stopped_by is not None:
        raise stopped_by
    if job.interrupted:
        return stopped()
    return EXIT_FAILED if job.counts["failed"] else EXIT_OK
