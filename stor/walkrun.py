"""What a resumable walk over the blobs shares: `stor s3-backfill`, `stor scrub` and `stor repair`.

Each walks the blobs once in lexical order, works on several at once, and
must survive being stopped: the cursor (the last sha such that it and
everything before it is done) is saved durably in a state file, guarded by
a lock so that two runs never share one, and a rerun continues after it.
Both show a progress bar on a terminal and only log lines elsewhere, and
share their exit codes. One copy of all that, here; what each walk does is
its own module's (stor.backfill, stor.scrub).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from stor.config import CONFIG_ENV
from stor.digest import Digest, InvalidDigest
from stor.store.durable import fsync_dir, write_all

log = logging.getLogger("stor.walk")

EXIT_OK, EXIT_FAILED, EXIT_CANNOT_RUN = 0, 1, 2
EXIT_SIGNALLED: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}  # the shell's 128 + signal number
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

STATE_VERSION = 1
LOCK_SUFFIX = ".lock"

T = TypeVar("T")
S_contra = TypeVar("S_contra", contravariant=True)
S_ = TypeVar("S_")


class CannotRun(Exception):
    """The run cannot start (exit 2): the message says why, in one line."""


def add_common_arguments(parser: argparse.ArgumentParser, report: str, state_name: str, restart: str) -> None:
    """The options every walk has: --config, --json, --restart, --state, --log-level."""
    parser.add_argument(
        "--config", metavar="FILE", help=f"JSON configuration file (default: ${CONFIG_ENV}, else the embedded default)"
    )
    parser.add_argument(
        "--json", action="store_true",
        help=f"print the JSON {report} on stdout even on a terminal (it always is when stdout is not one)",
    )
    parser.add_argument("--restart", action="store_true", help=restart)
    parser.add_argument(
        "--state", metavar="FILE",
        help=f"the state file holding the cursor (default: <first storage directory>/{state_name})",
    )
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)


class Outcome(Protocol):
    """What a run reports when it ends: its JSON report, its one-line summary and its exit code."""

    def as_json(self) -> dict[str, Any]: ...
    def one_line(self) -> str: ...
    def exit_code(self) -> int: ...


def conclude(ui: Ui[Any], outcome: Outcome, out_json: bool, show_progress: bool) -> int:
    """The end of a command's run: the progress bar gone, the JSON report on stdout, the line on a terminal."""
    ui.close()
    if out_json:
        print(json.dumps(outcome.as_json()), flush=True)
    if show_progress:
        print(outcome.one_line(), file=sys.stderr)
    return outcome.exit_code()


def could_not_run(ui: Ui[Any], command: str, e: CannotRun) -> int:
    ui.close()
    print(f"stor {command}: {e}", file=sys.stderr)
    return EXIT_CANNOT_RUN


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ---- the state file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    """What a state file held: the cursor, and what the walk saved with it."""

    cursor: Digest
    payload: dict[str, Any] = field(default_factory=dict)


class StateFile:
    """The saved cursor, beside the blobs (written whole: temporary file, fsync, rename, fsync of the directory).

    The file holds the run's identity (the keys of `identity`, at the top
    level: for s3-backfill the bucket and endpoint, for scrub what it was
    told to walk), the cursor, and a payload of the walk's own (scrub keeps
    its counts so far there). A run loads it only if the identity matches.
    """

    def __init__(self, path: Path, command: str) -> None:
        self.path = path
        self.command = command  # "s3-backfill", "scrub": for the messages
        self.lock_path = path.with_name(path.name + LOCK_SUFFIX)
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """An exclusive flock of `<state file>.lock` for this run; CannotRun if it cannot be written or is in use.

        A lock file of its own, not the directory: runs of different
        commands keep their state files side by side in the first storage,
        and must not exclude each other. The lock file is removed by unlock();
        a run that takes the lock on a file unlinked meanwhile (by the run
        that held it, ending) sees that the path names another file now,
        and takes the lock again on that one.
        """
        directory = self.path.parent
        if not directory.is_dir():
            raise CannotRun(f"state file {self.path}: {directory} is not a directory (give another with --state)")
        if not os.access(directory, os.W_OK):
            raise CannotRun(f"state file {self.path}: {directory} cannot be written (give another with --state)")
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise CannotRun(f"state file {self.path}: cannot create {self.lock_path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CannotRun(f"another stor {self.command} is running with the state file {self.path}") from None
            except OSError as e:  # a filesystem without flock (some NFS setups): run unguarded
                log.warning("cannot lock %s (%s): make sure no other %s uses %s", self.lock_path, e, self.command,
                            self.path)
                os.close(fd)
                return
            if _same_file(fd, self.lock_path):
                break
            os.close(fd)  # unlinked by the run that held it, before we had the lock: the new one
        self._lock_fd = fd
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Temporary state files of runs killed while saving (none can be writing one: the lock is ours)."""
        for leftover in self.path.parent.glob(f"{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                if _same_file(fd, self.lock_path):
                    os.unlink(self.lock_path)  # before the lock goes: whoever locks it then sees it unlinked
            os.close(fd)

    def load(self, identity: Mapping[str, Any]) -> Saved | None:
        """The saved cursor and payload, if the state file is for a run with this identity (blocking)."""
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("state file %s cannot be read (%s): starting from the first blob", self.path, e)
            return None
        if not isinstance(raw, dict):
            log.warning("state file %s holds no saved run: starting from the first blob", self.path)
            return None
        differ = {k: raw.get(k) for k, v in identity.items() if raw.get(k) != _as_json(v)}
        if differ:
            log.warning(
                "state file %s was saved by another run (%s; this one has %s): starting from the first blob",
                self.path, _spelled(differ), _spelled({k: identity[k] for k in differ}),
            )
            return None
        try:
            cursor = Digest.parse(str(raw.get("cursor")))
        except InvalidDigest:
            log.warning("state file %s holds no valid cursor: starting from the first blob", self.path)
            return None
        payload = raw.get("payload")
        return Saved(cursor, payload if isinstance(payload, dict) else {})

    def save(self, identity: Mapping[str, Any], cursor: str, payload: Mapping[str, Any] | None = None) -> None:
        """The cursor on disk for good before this returns (blocking)."""
        state: dict[str, Any] = {"version": STATE_VERSION, **identity, "cursor": cursor}
        if payload is not None:
            state["payload"] = payload
        state.update(saved=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), pid=os.getpid())
        body = json.dumps(state).encode() + b"\n"
        temp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        fsync_dir(self.path.parent)

    def remove(self) -> None:
        """No saved cursor any more (blocking)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        fsync_dir(self.path.parent)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _as_json(value: Any) -> Any:
    """value as it reads back from JSON (tuples are lists), so that a loaded identity compares equal."""
    return json.loads(json.dumps(value))


def _spelled(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


# ---- the cursor --------------------------------------------------------------------------------


class Frontier(Generic[T]):
    """The cursor: the last key such that it and every key before it, in walk order, is settled (and ok).

    Keys are added in walk order and settled in any order. A key settled
    not ok holds the cursor before it for the rest of the run (nothing is
    then recorded any more, so memory stays flat however long the walk goes
    on). A key may be settled with an outcome: `passed` gets each one in
    walk order as the cursor passes it, so that what is kept with a saved
    cursor is exactly what was done up to it (scrub's counts).
    """

    def __init__(self, start: str | None, passed: Callable[[str, T | None], None] | None = None) -> None:
        self.cursor = start
        self.held = False
        self.passed = passed
        self._order: collections.deque[str] = collections.deque()
        self._settled: dict[str, tuple[bool, T | None]] = {}

    def add(self, key: str) -> None:
        if not self.held:
            self._order.append(key)

    def settle(self, key: str, ok: bool, outcome: T | None = None) -> None:
        if self.held:
            return
        self._settled[key] = (ok, outcome)
        while self._order:
            found = self._settled.get(self._order[0])
            if found is None:
                return
            if not found[0]:
                self.held = True
                self._order.clear()
                self._settled.clear()
                return
            self.cursor = self._order.popleft()
            del self._settled[self.cursor]
            if self.passed is not None:
                self.passed(self.cursor, found[1])

    @property
    def ahead(self) -> int:
        """Keys added and not passed yet (in flight, or settled after one that is)."""
        return len(self._order)

    def unpassed(self) -> list[T]:
        """The outcomes settled beyond the cursor, in walk order (what a stopped run did past it)."""
        return [o for k in self._order if (s := self._settled.get(k)) is not None and (o := s[1]) is not None]


# ---- what the operator sees ------------------------------------------------------------------


class Ui(Protocol[S_contra]):
    wants_total: bool

    def configure_logging(self, level: str) -> None: ...
    def start(self, summary: S_contra) -> None: ...
    def update(self, summary: S_contra) -> None: ...
    def total(self, n: float) -> None: ...
    def stop(self, summary: S_contra) -> None: ...
    def close(self) -> None: ...


def configure_levels(level: str) -> None:
    logging.getLogger().setLevel(logging.WARNING)  # the S3 client's chatter stays out
    logging.getLogger("stor").setLevel(level)


class QuietUi(Generic[S_]):
    """Not on a terminal: log lines on stderr, no bar."""

    wants_total = False

    def configure_logging(self, level: str) -> None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        configure_levels(level)

    def start(self, summary: S_) -> None: ...
    def update(self, summary: S_) -> None: ...
    def total(self, n: float) -> None: ...
    def stop(self, summary: S_) -> None: ...
    def close(self) -> None: ...


class TerminalUi(Generic[S_]):
    """On a terminal (stderr): a rich progress bar, with log lines printed above it.

    A command says what its bar shows: its title and texts (rich text
    columns; a `{task.fields[x]}` comes from fields()), and completed(), the
    bar's position, out of the total given to total() once counted.
    update() may be called from any thread (rich's Progress locks).
    """

    wants_total = True

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.progress: Any = None
        self.task: Any = None
        self.counted: float | None = None

    def configure_logging(self, level: str) -> None:
        from rich.logging import RichHandler

        handler = RichHandler(console=self.console, show_path=False, markup=False, rich_tracebacks=False)
        logging.getLogger().addHandler(handler)
        configure_levels(level)

    title = ""  # the command's name, at the bar's left
    texts: Sequence[str] = ()  # the command's own text columns, between the bar and the times

    def columns(self) -> Sequence[Any]:
        from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        return (
            SpinnerColumn(),
            TextColumn(f"[bold]{self.title}"),
            BarColumn(finished_style="green"),  # the default turns grey on a 16-colour terminal
            *(TextColumn(text) for text in self.texts),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )

    def fields(self, summary: S_) -> dict[str, str]:
        return {}

    def completed(self, summary: S_) -> float:
        return 0.0

    def start(self, summary: S_) -> None:
        from rich.progress import Progress

        self.progress = Progress(*self.columns(), console=self.console, refresh_per_second=5)
        self.task = self.progress.add_task("", total=self.counted, **self.fields(summary))
        self.progress.start()

    def update(self, summary: S_) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=self.completed(summary), **self.fields(summary))

    def total(self, n: float) -> None:
        self.counted = n
        if self.progress is not None:
            self.progress.update(self.task, total=n)

    def stop(self, summary: S_) -> None:
        if self.progress is not None:
            self.update(summary)
            self.progress.stop()
            self.progress = None

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
