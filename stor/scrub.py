"""`stor scrub` and `stor repair`: every copy of every blob hashed against its name, at a set rate; what is wrong is reported, and put right.

The walk: each selected storage (all by default) is listed directory by
directory, AA, AA/BB, AA/BB/CC, in lexical order, merged over the
storages, never through a symbolic link (fileaccess's open_directory; a
link anywhere is reported, never followed). Every entry is either part of
the layout (a directory of two upper-case hex digits on the way down, a
`<SHA>.dat` blob or `<SHA>.meta` sidecar in the AA/BB/CC directory its sha
starts with), stor's own (`.stor-*` and `lost+found` at the root: the
temporaries, quarantine, S3 queue, state files), or a stray: a wrong name,
a wrong directory (a valid name where its sha does not start with the
directory's, or anything else outside the tree), a stale upload temporary
(`.stor-tmp/*.part` older than uploads.tempfile_max_age and not locked, as
the sweep judges it), a sidecar without its blob on that mirror, or a
symbolic link.

Each blob found is examined (stor.store.copies.examine: every copy on each
pair holding it hashed, a mismatch read once more from the disk before it
counts) by --workers threads, all reading through one Pacer, so that the
rate asked for is the rate of the whole run (re-reads included). The
digests go to the workers through a bounded queue, and the walk waits
when the cursor lags too far behind (one huge blob while many small ones
are done): memory stays flat however large the storage.

With --repair (`stor repair`), each blob with a problem is put right by
stor.store.copies.repair (a verified copy over a missing or bad one, the
bad one quarantined, a restore from the S3 tier when no local copy is
good, sidecars made to agree: the oldest wins), and strays are moved out
of the way: a misplaced blob that hashes to its name is moved to its place
when that is empty (else quarantined), other strays and orphan sidecars
are quarantined (stor.store.quarantine, never deleted), stale temporaries
are removed (they are temporaries; the sweep's own check, so a locked one
never is). --dry-run lists the same actions, done false, changing nothing.

Resumable: the cursor is the last sha such that it and every blob before
it was examined; it is saved every few seconds in the state file with the
counts and problems up to it (the outcomes of blobs done past it are kept
until the cursor reaches them, walkrun.Frontier), so that a `--resume`
continues after it and its totals include the earlier part exactly once.
Strays are reported when their directory is listed, and counted with the
next blob handed out; a resumed run skips the strays of the directories
its cursor is in (listed by the earlier run). A run without --resume
starts over. What a stopped run did past its cursor is in its own report,
and done (and so counted) again by the resumed one.

--s3 (with the S3 tier configured) then scrubs the bucket: its listing in
order (S3Store.iter_digests), and for every object, or a random
--s3-sample fraction of them, one GET (S3Store.open: its answer carries
what a HEAD would) whose bytes are hashed through the same Pacer (re-read
once on a mismatch). With --repair a corrupt object is replaced only when
a local copy hashes to the sha (examined again first): the bad object is
copied aside to `.stor-quarantine/<time>-<sha>` in the bucket, deleted
(S3Store's writes are conditional, If-None-Match, and never overwrite),
and the local copy uploaded by the copy queue's verified copy
(stor.store.copyqueue.copy_blob). With no good local copy it is reported,
and left.

Exit codes: 0 clean (with --repair: everything found was repaired); 1
problems found, or left unrepaired (or the run had to stop for a fault); 2
it could not run (bad options, configuration, a storage not readable, the
state file in use, S3 unreachable with --s3); 130 / 143 stopped by SIGINT /
SIGTERM, after saving the cursor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import queue
import random
import re
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from stor import walkrun
from stor.config import CONFIG_ENV, ConfigError, Settings, load_settings
from stor.digest import Digest
from stor.store.verify import Pacer
from stor.walkrun import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGNALLED,
    CannotRun,
    Frontier,
    StateFile,
    human_bytes,
)

if TYPE_CHECKING:
    from stor.store.base import BlobStore
    from stor.store.copies import Action, Examined, S3Source
    from stor.store.local import LocalStore
    from stor.store.s3 import S3Store

log = logging.getLogger("stor.scrub")

STATE_NAME = ".stor-scrub.json"
MAX_LISTED = 1000  # problems and actions listed in the report; the counts are always complete
SAVE_SECONDS = 2.0  # the cursor is saved this often (and when the run stops)
MAX_AHEAD = 10_000  # blobs handed out beyond the cursor before the walk waits for it
UI_SECONDS = 0.1  # the bar is updated at most this often by the workers
WAIT = 0.2  # how long a wait lasts before the stop, the save and the bar are looked at again

BLOB_KINDS = ("one_mirror_only", "corrupt", "truncated", "unreadable", "flaky_read", "sidecar_mismatch")
STRAY_KINDS = ("wrong_name", "wrong_directory", "stale_temporary", "orphan_sidecar", "symlink")
ERROR = "error"  # an unexpected failure examining a blob (a bug, or a fault the examination does not expect)
S3_CORRUPT, S3_UNREADABLE, S3_FLAKY = "s3_corrupt", "s3_unreadable", "s3_flaky_read"
UNREPAIRABLE = ("flaky_read", S3_FLAKY)  # a good copy whose first read was wrong: nothing to put right

_HEX2 = re.compile(r"[0-9A-F]{2}")
_LAYOUT_NAME = re.compile(r"([0-9A-F]{64})\.(dat|meta)")
_IGNORED_AT_ROOT = ("lost+found",)  # and every ".stor-*" entry: stor's own
_TEMP_DIR, _TEMP_SUFFIX, _LOCKS_DIR = ".stor-tmp", ".part", "locks"


# ---- options -----------------------------------------------------------------------------------

_RATE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([kKmMgGtT])(i?B)?)?")
_UNITS = {"k": 1, "m": 2, "g": 3, "t": 4}


def parse_rate(text: str) -> int | None:
    """Bytes a second from "50M", "1.5G", "200k", "8MB" or "1048576"; None for "0" or "unlimited".

    As dd(1) reads sizes: a bare suffix or one with "iB" is binary (1M = 1MiB
    = 1048576), one with "B" alone decimal (1MB = 1000000).
    """
    spelled = text.strip()
    if spelled.lower() in ("unlimited", "none", "off"):
        return None
    match = _RATE.fullmatch(spelled)
    if match is None:
        raise ValueError(f"not a rate in bytes a second: {text!r} (say 50M, 1.5G, 200k, 8MB or 1048576)")
    number, unit, suffix = match.groups()
    scale = 1 if unit is None else (1000 if suffix == "B" else 1024) ** _UNITS[unit.lower()]
    rate = int(float(number) * scale)
    if rate == 0 and float(number) == 0.0:
        return None
    if rate < 1:
        raise ValueError(f"a rate below one byte a second: {text!r}")
    return rate


def add_arguments(parser: argparse.ArgumentParser, repair: bool = False) -> None:
    walkrun.add_common_arguments(
        parser, "report", STATE_NAME, "start from the first blob, removing the saved cursor (the default without "
        "--resume; for symmetry with s3-backfill)",
    )
    parser.add_argument(
        "--pair", type=int, action="append", default=[], metavar="N",
        help="scrub both directories of storage pair N (0 is the first of storage_pairs); may be repeated "
        "(default: every storage)",
    )
    parser.add_argument(
        "--storage", action="append", default=[], metavar="PATH",
        help="scrub this configured storage directory only: its twin's copies are looked for but not hashed; "
        "may be repeated",
    )
    parser.add_argument(
        "--rate", metavar="BYTES_PER_S",
        help="the most bytes a second read (from the disks and from S3), over all workers together: a number with "
        "an optional suffix k, M, G, T, binary as dd(1) reads them (50M = 50 MiB/s = 52428800; 50MiB the same), or "
        "decimal with B (50MB = 50000000); 0 or 'unlimited': no limit (default: integrity.scrub_rate, else none)",
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="blobs examined at once (default: integrity.scrub_workers)",
    )
    parser.add_argument(
        "--resume", action="store_true",
        help="continue after the cursor saved by a run that was stopped (with the same selection; else it starts "
        "over, with a warning)",
    )
    if not repair:
        parser.add_argument(
            "--repair", action="store_true", help="put right what is found (as `stor repair` does)",
        )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="with --repair: list what would be done (done: false), changing nothing",
    )
    parser.add_argument(
        "--read-only-pairs", action="store_true",
        help="with --repair: also write into pairs that take no uploads (writable_pairs_regex), which are "
        "otherwise reported and left as they are",
    )
    parser.add_argument(
        "--s3", action="store_true",
        help="scrub the S3 tier's bucket too, after the local storages (needs the S3 tier configured)",
    )
    parser.add_argument(
        "--s3-sample", type=float, default=1.0, metavar="FRACTION",
        help="with --s3: hash this random fraction of the objects listed (default 1: all of them)",
    )


def main(args: argparse.Namespace) -> int:
    """The `stor scrub` and `stor repair` commands: the exit code."""
    repair = args.command == "repair" or bool(getattr(args, "repair", False))
    out_json = args.json or not sys.stdout.isatty()
    show_progress = sys.stderr.isatty()
    command = "repair" if repair else "scrub"
    ui: walkrun.Ui[Live] = TerminalUi(command) if show_progress else walkrun.QuietUi[Live]()
    ui.configure_logging(args.log_level.upper())
    try:
        options = _options(args, repair)
        settings = _settings(args.config or os.environ.get(CONFIG_ENV), options)
        selection = _select(settings, args.pair, args.storage)
        if not selection.storages and not options.s3:
            raise CannotRun(f"no storage_pairs in {settings.source}: there is nothing to scrub (try --s3)")
        if args.state:
            state_path = Path(args.state)
        elif selection.storages:
            state_path = selection.storages[0] / STATE_NAME
        else:
            raise CannotRun("no local storage to keep the state file in: give one with --state")
        if options.rate is None and args.rate is None:
            options.rate = settings.integrity.scrub_rate
        if options.workers is None:
            options.workers = settings.integrity.scrub_workers
        run = Scrub(settings, selection, options, StateFile(state_path, command), ui)
        report = run.run()
    except CannotRun as e:
        return walkrun.could_not_run(ui, command, e)
    return walkrun.conclude(ui, report, out_json, show_progress)


@dataclass
class Options:
    repair: bool
    dry_run: bool
    rate: int | None
    workers: int | None
    resume: bool
    s3: bool
    s3_sample: float
    read_only_pairs: bool = False


def _options(args: argparse.Namespace, repair: bool) -> Options:
    try:
        rate = parse_rate(args.rate) if args.rate is not None else None
    except ValueError as e:
        raise CannotRun(f"--rate: {e}") from None
    if args.workers is not None and args.workers < 1:
        raise CannotRun("--workers: must be at least 1")
    if args.dry_run and not repair:
        raise CannotRun("--dry-run: only with --repair (or as `stor repair --dry-run`): a scrub changes nothing")
    if args.resume and args.restart:
        raise CannotRun("--resume and --restart: one or the other")
    if not 0.0 < args.s3_sample <= 1.0:
        raise CannotRun(f"--s3-sample: a fraction in (0, 1], not {args.s3_sample}")
    if args.s3_sample != 1.0 and not args.s3:
        raise CannotRun("--s3-sample: only with --s3")
    if args.read_only_pairs and not repair:
        raise CannotRun("--read-only-pairs: only with --repair")
    return Options(repair, args.dry_run, rate, args.workers, args.resume, args.s3, args.s3_sample, args.read_only_pairs)


def _settings(path: str | None, options: Options) -> Settings:
    try:
        settings = load_settings(path)
    except ConfigError as e:
        raise CannotRun(str(e)) from None
    if options.s3 and not settings.s3_tier:
        raise CannotRun(
            f"--s3: no S3 tier configured ({settings.source}): set s3_enabled to true and s3_credentials "
            "(access_key, secret_key, host), and the bucket in s3.bucket"
        )
    return settings


@dataclass(frozen=True)
class Selection:
    """What this run hashes: the storages walked, and the pairs they belong to."""

    storages: tuple[Path, ...]
    pairs: frozenset[int]
    everything: bool


def _select(settings: Settings, pairs: list[int], storages: list[str]) -> Selection:
    configured = settings.storage_pairs
    if not pairs and not storages:
        return Selection(settings.storage_dirs, frozenset(range(len(configured))), True)
    chosen: set[Path] = set()
    for n in pairs:
        if not 0 <= n < len(configured):
            raise CannotRun(f"--pair {n}: there is no such pair ({len(configured)} configured, numbered from 0)")
        chosen.update(configured[n])
    for text in storages:
        wanted = os.path.realpath(text)
        match = [d for d in settings.storage_dirs if d == Path(text) or os.path.realpath(d) == wanted]
        if not match:
            raise CannotRun(f"--storage {text}: not a configured storage directory (storage_pairs in {settings.source})")
        chosen.update(match)
    ordered = tuple(d for d in settings.storage_dirs if d in chosen)
    in_pairs = frozenset(i for i, pair in enumerate(configured) if any(d in chosen for d in pair))
    return Selection(ordered, in_pairs, set(ordered) == set(settings.storage_dirs))


# ---- counts, problems and the report ----------------------------------------------------------


@dataclass
class Counts:
    """What was found in one pair, or in all (blobs and strays; S3 objects are S3Counts)."""

    blobs_verified: int = 0
    copies_verified: int = 0
    bytes_read: int = 0
    one_mirror_only: int = 0
    corrupt: int = 0
    truncated: int = 0
    unreadable: int = 0
    flaky_read: int = 0
    sidecar_mismatch: int = 0
    stray: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STRAY_KINDS, 0))
    errors: int = 0
    problems: int = 0
    repaired: int = 0

    def count(self, kind: str) -> None:
        self.problems += 1
        if kind in STRAY_KINDS:
            self.stray[kind] += 1
        elif kind in BLOB_KINDS:
            setattr(self, kind, getattr(self, kind) + 1)
        else:
            self.errors += 1

    def add(self, other: Counts) -> None:
        for name in _COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for kind in STRAY_KINDS:
            self.stray[kind] += other.stray[kind]

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in _COUNT_FIELDS}
        out["stray"] = {"total": sum(self.stray.values()), **self.stray}
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Counts:
        counts = cls()
        for name in _COUNT_FIELDS:
            setattr(counts, name, int(raw.get(name, 0)))
        for kind in STRAY_KINDS:
            counts.stray[kind] = int(raw.get("stray", {}).get(kind, 0))
        return counts


_COUNT_FIELDS = tuple(name for name in Counts.__dataclass_fields__ if name != "stray")


@dataclass
class S3Counts:
    """What the scrub of the bucket found."""

    objects_listed: int = 0
    objects_verified: int = 0
    bytes_read: int = 0
    corrupt: int = 0
    unreadable: int = 0
    flaky_read: int = 0
    problems: int = 0
    repaired: int = 0

    def count(self, kind: str) -> None:
        self.problems += 1
        name = kind.removeprefix("s3_")
        setattr(self, name, getattr(self, name) + 1)

    def add(self, other: S3Counts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> S3Counts:
        return cls(**{name: int(raw.get(name, 0)) for name in cls.__dataclass_fields__})


class Findings:
    """Counts per pair and in total, and the problems and actions listed (at most MAX_LISTED of each).

    A blob's or a directory's findings are folded into a run's in walk
    order (merge), so that those kept with a saved cursor are exactly those
    of the walk up to it.
    """

    def __init__(self) -> None:
        self.total = Counts()
        self.pairs: dict[int, Counts] = {}
        self.s3 = S3Counts()
        self.problems: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []

    def pair(self, n: int) -> Counts:
        counts = self.pairs.get(n)
        if counts is None:
            counts = self.pairs[n] = Counts()
        return counts

    def problem(self, entry: dict[str, Any]) -> None:
        """One problem found (kind, sha, pair, storage, path, detail), counted in its pair and in the total."""
        kind, pair = entry["kind"], entry.get("pair")
        if kind.startswith("s3_"):
            self.s3.count(kind)
        else:
            self.total.count(kind)
            if pair is not None:
                self.pair(pair).count(kind)
        if len(self.problems) < MAX_LISTED:
            self.problems.append(entry)

    def action(self, entry: dict[str, Any]) -> None:
        if len(self.actions) < MAX_LISTED:
            self.actions.append(entry)

    def repaired(self, n: int, pair: int | None, s3: bool = False) -> None:
        if s3:
            self.s3.repaired += n
            return
        self.total.repaired += n
        if pair is not None:
            self.pair(pair).repaired += n

    def fold(self, outcome: Outcome) -> None:
        """One blob's (or a directory's) findings, or the tally of a clean blob, added."""
        if not isinstance(outcome, Tally):
            self.merge(outcome)
            return
        total = self.total
        if outcome.pairs:
            total.blobs_verified += 1
        total.bytes_read += outcome.bytes_read
        for pair, copies, read in outcome.pairs:
            counts = self.pair(pair)
            counts.blobs_verified += 1
            counts.copies_verified += copies
            counts.bytes_read += read
            total.copies_verified += copies

    def merge(self, other: Findings) -> None:
        self.total.add(other.total)
        for n, counts in other.pairs.items():
            self.pair(n).add(counts)
        self.s3.add(other.s3)
        self.problems.extend(other.problems[: max(0, MAX_LISTED - len(self.problems))])
        self.actions.extend(other.actions[: max(0, MAX_LISTED - len(self.actions))])

    def copy(self) -> Findings:
        c = Findings()
        c.merge(self)
        return c

    def as_state(self) -> dict[str, Any]:
        return {
            "total": self.total.as_json(), "pairs": {str(n): c.as_json() for n, c in self.pairs.items()},
            "s3": self.s3.as_json(), "problems": list(self.problems), "actions": list(self.actions),
        }  # fmt: skip

    @classmethod
    def from_state(cls, raw: dict[str, Any]) -> Findings:
        f = cls()
        f.total = Counts.from_json(raw.get("total", {}))
        f.pairs = {int(n): Counts.from_json(c) for n, c in raw.get("pairs", {}).items()}
        f.s3 = S3Counts.from_json(raw.get("s3", {}))
        f.problems = list(raw.get("problems", []))[:MAX_LISTED]
        f.actions = list(raw.get("actions", []))[:MAX_LISTED]
        return f


@dataclass(slots=True)
class Tally:
    """A blob examined and found clean: what was read, per pair (the common case, kept small)."""

    pairs: list[tuple[int, int, int]]  # (pair, copies hashed, bytes read) of each pair with a copy hashed
    bytes_read: int


Outcome = Findings | Tally  # what checking one blob (or object) found


def _count_live(live: Live, outcome: Outcome) -> None:
    if isinstance(outcome, Tally):
        live.blobs += bool(outcome.pairs)
        live.bytes_read += outcome.bytes_read
        return
    live.blobs += outcome.total.blobs_verified > 0
    live.objects += outcome.s3.objects_verified
    live.bytes_read += outcome.total.bytes_read + outcome.s3.bytes_read
    live.problems += outcome.total.problems + outcome.s3.problems


@dataclass
class Live:
    """This run's progress, for the bar (updated by the workers under the run's lock)."""

    command: str
    started: float = field(default_factory=time.monotonic)
    blobs: int = 0
    objects: int = 0
    bytes_read: int = 0
    problems: int = 0


@dataclass
class Report:
    """What a run found and did: the JSON report, the one-line summary and the exit code."""

    command: str
    dry_run: bool
    storages: list[str]
    pairs_selected: list[int]
    pair_storages: dict[int, list[str]]
    rate: int | None
    workers: int
    s3: str | None  # the bucket scrubbed, s3://name
    findings: Findings
    live: Live
    resumed_from: str | None = None
    resumed_phase: str | None = None  # "local" or "s3": the walk a --resume continued
    phase: str = "local"
    cursor: str | None = None
    complete: bool = False
    stopped: str | None = None
    signal: int | None = None
    seconds: float = 0.0  # this run's walk
    earlier_seconds: float = 0.0  # the walks of the runs it resumed

    def problems(self) -> int:
        f = self.findings
        return f.total.problems + (f.s3.problems if self.s3 else 0)

    def repaired(self) -> int:
        f = self.findings
        return f.total.repaired + (f.s3.repaired if self.s3 else 0)

    def clean(self) -> bool:
        problems = self.problems()
        return problems == 0 or (self.command == "repair" and not self.dry_run and self.repaired() == problems)

    def exit_code(self) -> int:
        if self.signal is not None:
            return EXIT_SIGNALLED.get(self.signal, EXIT_FAILED)
        if self.stopped is not None:
            return EXIT_FAILED
        return EXIT_OK if self.clean() else EXIT_FAILED

    def as_json(self) -> dict[str, Any]:
        f = self.findings
        pairs = []
        for n in sorted(set(self.pairs_selected) | set(f.pairs)):
            pairs.append({"pair": n, "storages": self.pair_storages.get(n, []), **f.pair(n).as_json()})
        seconds = max(self.seconds, 1e-9)
        return {
            "command": self.command, "dry_run": self.dry_run, "storages": self.storages,
            "pairs_selected": self.pairs_selected, "rate": self.rate, "workers": self.workers,
            "resumed_from": self.resumed_from, "resumed_phase": self.resumed_phase, "phase": self.phase,
            "cursor": self.cursor, "complete": self.complete,
            "stopped": self.stopped, "clean": self.clean(), "problems_found": self.problems(),
            "repaired": self.repaired(), "total": f.total.as_json(), "pairs": pairs,
            "s3": {"bucket": self.s3, **f.s3.as_json()} if self.s3 else None,
            "problems": f.problems, "problems_listed": len(f.problems),
            "actions": f.actions, "actions_listed": len(f.actions),
            "this_run": {
                "blobs_verified": self.live.blobs, "objects_verified": self.live.objects,
                "bytes_read": self.live.bytes_read, "seconds": round(self.seconds, 3),
                "bytes_per_second": round(self.live.bytes_read / seconds),
            },
            "seconds": round(self.seconds + self.earlier_seconds, 3),
        }  # fmt: skip

    def one_line(self) -> str:
        f = self.findings
        start = f" after {self.resumed_from[:12]}…" if self.resumed_from else ""
        line = (
            f"{self.command}: {f.total.blobs_verified} blobs verified{start} "
            f"({human_bytes(self.live.bytes_read)} read in {self.seconds:.1f} s, "
            f"{human_bytes(self.live.bytes_read / max(self.seconds, 1e-9))}/s)"
        )
        if self.s3:
            line += f", {f.s3.objects_verified} of {f.s3.objects_listed} objects in {self.s3}"
        kinds = {k: getattr(f.total, k) for k in BLOB_KINDS} | {k: n for k, n in f.total.stray.items()}
        kinds |= {"errors": f.total.errors, S3_CORRUPT: f.s3.corrupt, S3_UNREADABLE: f.s3.unreadable}
        found = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
        line += f": {self.problems()} problems" + (f" ({found})" if found else "")
        if self.command == "repair":
            line += f", {self.repaired()} repaired" if not self.dry_run else ", nothing changed (dry run)"
        if self.stopped:
            return line + f"; stopped ({self.stopped}); --resume continues" + (
                f" after {self.cursor[:12]}…" if self.cursor else ""
            )
        return line


# ---- the run -----------------------------------------------------------------------------------


class _Stopped(Exception):
    """The run is stopping: the hashing in progress is abandoned (that blob is not done)."""


class _StoppablePacer(Pacer):
    """The run's one Pacer, which also ends the hashing in progress once the run stops.

    A chunk's bytes are paid for in slices of STOP_SECONDS' worth, with a
    look at the stop between them: at a low rate a whole chunk's pause is
    seconds long (1 MiB at 100 kB/s: 10 s), and a Ctrl-C must not wait
    for it. The pace is the same (Pacer's due time adds up the slices).
    """

    STOP_SECONDS = 0.1

    def __init__(self, rate: float | None, stopping: threading.Event) -> None:
        super().__init__(rate)
        self.stopping = stopping
        self.slice = max(1, int(rate * self.STOP_SECONDS)) if rate is not None else 0

    def took(self, nbytes: int) -> None:
        if self.stopping.is_set():
            raise _Stopped()
        if self.rate is None:
            return
        while nbytes > 0:
            n = min(nbytes, self.slice)
            super().took(n)
            nbytes -= n
            if nbytes and self.stopping.is_set():
                raise _Stopped()


@dataclass(slots=True, eq=False)  # compared and hashed as itself: one per storage walked
class _Root:
    """A storage walked: as configured (what the report says) and as opened (stor.store.local.real_path)."""

    storage: Path
    real: str
    pair: int


@dataclass(slots=True)
class _Stray:
    root: _Root
    rel: str  # below the root
    kind: str
    detail: str
    sha: str | None = None
    is_dir: bool = False


class Scrub:
    def __init__(self, settings: Settings, selection: Selection, options: Options, state: StateFile,
                 ui: walkrun.Ui[Live]) -> None:
        assert options.workers is not None
        self.settings = settings
        self.selection = selection
        self.options = options
        self.workers = options.workers
        self.state = state
        self.ui = ui
        self.command = "repair" if options.repair else "scrub"
        self.mode = ("dry-run" if options.dry_run else "repair") if options.repair else "scrub"
        self.identity = {
            "command": "scrub", "mode": self.mode, "storages": [str(d) for d in selection.storages], "s3": options.s3,
        }  # fmt: skip
        self.stopping = threading.Event()  # no more blobs handed out, hashing in progress abandoned
        self.hurry = threading.Event()  # a second signal: not waiting for the repairs in progress either
        self.pacer = _StoppablePacer(options.rate, self.stopping)
        self.lock = threading.Condition()
        self.live = Live(self.command)
        self.committed = Findings()  # up to the cursor: what the state file keeps
        self.attached: dict[str, Findings] = {}  # strays (or listings) counted with the blob handed out after them
        self.pending: Findings | None = None  # found since the last blob was handed out
        self.frontier: Frontier[Outcome] = Frontier(None)
        self.signal: int | None = None
        self.stopped: str | None = None
        self.bucket: S3Store | None = None
        self.loop: _LoopThread | None = None
        self.s3_source: S3Source | None = None
        self._saved: str | None = None
        self._saved_at = time.monotonic()
        self._ui_at = 0.0
        self._warned_save = False
        self.moved: set[str] = set()  # misplaced blobs moved into place by this run, and examined then
        # What the walk's listings found of each blob handed out and not examined yet (copies.examine's `listed`).
        self.listed: dict[str, dict[Path, tuple[bool, bool]]] = {}

    # ---- the whole run ---------------------------------------------------------------------

    def run(self) -> Report:
        from stor.store.local import LocalStore

        s = self.settings
        self.local: LocalStore = LocalStore(
            s.storage_pairs, s.writable_pairs_regex, s.storage, s.uploads, s.cleanup_tempdir_period
        )  # not started: its sweep of stale temporary files is the service's work
        self.roots = [_Root(d, self.local.real_path(d), p.index) for p in self.local.pairs for d in p.dirs
                      if d in self.selection.storages]
        self.all_reals = [self.local.real_path(d) for d in self.local.dirs]
        for root in self.roots:
            _check_readable(root)
        report = Report(
            self.command, self.options.dry_run, [str(d) for d in self.selection.storages],
            sorted(self.selection.pairs), {p.index: [str(d) for d in p.dirs] for p in self.local.pairs},
            self.options.rate, self.workers, None, self.committed, self.live,
        )
        self.report = report
        self.state.lock()
        try:
            saved = self._start_state()
            previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
            for sig in EXIT_SIGNALLED:
                signal.signal(sig, self._signalled)
            try:
                try:
                    self._start_s3()
                    self._walks(saved)
                finally:
                    self._close_s3()
                self._finish()
            finally:
                signal.signal(signal.SIGINT, previous[0])
                signal.signal(signal.SIGTERM, previous[1])
        finally:
            self.state.unlock()
        return report

    def _start_state(self) -> Digest | None:
        """The saved cursor to resume after (the earlier part's findings loaded), if asked for and it fits."""
        if not self.options.resume:
            self.state.remove()
            return None
        saved = self.state.load(self.identity)
        if saved is None:
            log.info("no saved cursor for this selection in %s: starting from the first blob", self.state.path)
            return None
        payload = saved.payload
        try:
            self.committed = self.report.findings = Findings.from_state(payload.get("findings", {}))
            self.report.earlier_seconds = float(payload.get("seconds", 0.0))
        except (TypeError, ValueError, AttributeError) as e:
            log.warning("state file %s holds unreadable counts (%s): starting from the first blob", self.state.path, e)
            self.committed = self.report.findings = Findings()
            return None
        self.report.phase = "s3" if payload.get("phase") == "s3" else "local"
        if self.report.phase == "s3" and not payload.get("s3_started"):
            self.report.resumed_from = None
            self.report.resumed_phase = "s3"
            return None  # the local walk was done, and the bucket's not begun
        self.report.resumed_from = saved.cursor.hex
        self.report.resumed_phase = self.report.phase
        return saved.cursor

    def _walks(self, after: Digest | None) -> None:
        report = self.report
        started = time.monotonic()
        try:
            if report.phase == "local":
                log.info("%s of %s%s, %d workers%s", self.command, ", ".join(map(str, self.selection.storages)) or
                         "no local storage", f", after {after}" if after else "", self.workers, _rate_text(self.pacer))
                self._walk(self._local_blobs(after), self._examine, after)
                if self.options.s3 and not self.stopping.is_set():
                    report.phase, after = "s3", None
                    self._committed_phase_end()
            if report.phase == "s3" and self.options.s3 and not self.stopping.is_set():
                assert self.bucket is not None
                log.info("%s of %s%s", self.command, self.bucket.name, f", after {after}" if after else "")
                self._walk(self._objects(after), self._check_object, after)
        finally:
            report.seconds = time.monotonic() - started

    def _committed_phase_end(self) -> None:
        """The local walk is done: everything found is committed, and the S3 walk's cursor starts afresh."""
        with self.lock:
            self._fold_pending()
            self.frontier = Frontier(None)
            self._saved = None
        self._save(force=True)  # a stop before the first object is done resumes with the bucket, not the disks

    def _finish(self) -> None:
        report = self.report
        with self.lock:
            report.stopped, report.signal = self.stopped, self.signal
            report.cursor = self.frontier.cursor
            if not self.stopping.is_set():
                self._fold_pending()
                report.complete = True
                report.findings = self.committed
            else:
                # The report says all this run did, past the cursor too; the state file keeps what is before it.
                everything = self.committed.copy()
                for key in list(self.attached):
                    everything.merge(self.attached[key])
                for outcome in self.frontier.unpassed():
                    everything.fold(outcome)
                if self.pending is not None:
                    everything.merge(self.pending)
                report.findings = everything
        if report.complete:
            self.state.remove()
            report.cursor = None
            log.info("done: %s", report.one_line())
        else:
            self._save(force=True)

    # ---- signals ---------------------------------------------------------------------------

    def _signalled(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self.signal is None:
            self.signal = sig
            self.stopped = self.stopped or name
            self.stopping.set()
            log.warning("%s: stopping; the hashing in progress is abandoned (--resume does it again), repairs in "
                        "progress finish first (%s again does not wait for them)", name, name)
            return
        log.warning("%s again: not waiting for the repairs in progress", name)
        self.hurry.set()

    def _stop(self, why: str) -> None:
        """Stop short for a fault (exit 1)."""
        if not self.stopping.is_set():
            self.stopped = why
            log.error("stopping: %s", why)
            self.stopping.set()

    # ---- the walk: blobs handed to the workers in order ------------------------------------

    def _walk(self, items: Iterator[Digest], check: Callable[[Digest], Outcome], after: Digest | None) -> None:
        """Each item checked by a worker, in walk order; the cursor saved as they are done.

        The workers take one digest at a time (a large blob never holds others
        back) from a queue without a bound of its own: the walk waits instead
        once MAX_AHEAD blobs are handed out beyond the cursor.
        """
        with self.lock:
            self.frontier = Frontier(after.hex if after is not None else None, self._passed)
        todo: queue.SimpleQueue[Digest | None] = queue.SimpleQueue()
        threads = [
            threading.Thread(target=self._work, args=(todo, check), name=f"stor-scrub-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for t in threads:
            t.start()
        self.ui.start(self.live)
        if self.ui.wants_total and check == self._examine:
            threading.Thread(target=self._count, args=(after,), name="stor-scrub-count", daemon=True).start()
        try:
            for digest in items:
                if self.stopping.is_set() or not self._hand_out(digest):
                    break
                todo.put(digest)
        except _Stopped:
            pass
        except Exception as e:
            log.exception("the walk failed")
            self._stop(f"the walk failed: {type(e).__name__}: {e}")
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # its directories closed, the bucket's listing ended while the S3 loop still runs
            for _ in threads:
                todo.put(None)
            for t in threads:
                while t.is_alive() and not self.hurry.is_set():
                    t.join(WAIT)
                    self._save()
            self.ui.stop(self.live)

    def _hand_out(self, digest: Digest) -> bool:
        """The digest entered in the frontier, to be handed to a worker (False: the run stopped first)."""
        while True:
            with self.lock:
                if self.stopping.is_set():
                    return False
                if self.frontier.ahead < MAX_AHEAD:
                    self.frontier.add(digest.hex)
                    if self.pending is not None:
                        self.attached[digest.hex], self.pending = self.pending, None
                    break
                self.lock.wait(WAIT)
            self._save()
        self._save()
        return True

    def _work(self, todo: queue.SimpleQueue[Digest | None], check: Callable[[Digest], Outcome]) -> None:
        while (digest := todo.get()) is not None:
            if self.stopping.is_set():
                continue  # not done: the cursor stays before it (the walk's None still ends the loop)
            try:
                outcome = check(digest)
            except _Stopped:
                continue
            except Exception as e:  # a bug, or a fault the examination does not expect: reported, walk goes on
                log.exception("examining %s failed", digest)
                found = Findings()
                found.problem(_entry(ERROR, digest.hex, None, None, None, f"{type(e).__name__}: {e}"))
                outcome = found
            self._done(digest, outcome)

    def _done(self, digest: Digest, outcome: Outcome) -> None:
        now = time.monotonic()
        with self.lock:
            _count_live(self.live, outcome)
            self.frontier.settle(digest.hex, True, outcome)
            self.lock.notify_all()
            update = now - self._ui_at >= UI_SECONDS
            if update:
                self._ui_at = now
        if update:
            self.ui.update(self.live)

    def _passed(self, key: str, outcome: Outcome | None) -> None:
        """A blob the cursor passed: what was found before it, and in it, is committed (under the lock)."""
        strays = self.attached.pop(key, None)
        if strays is not None:
            self.committed.merge(strays)
        if outcome is not None:
            self.committed.fold(outcome)

    def _fold_pending(self) -> None:
        if self.pending is not None:
            self.committed.merge(self.pending)
            self.pending = None

    def _found(self) -> Findings:
        """Where strays (and S3 listings) found now are counted: with the next blob handed out (under the lock)."""
        if self.pending is None:
            self.pending = Findings()
        return self.pending

    def _save(self, force: bool = False) -> None:
        """The cursor and the findings up to it in the state file, every SAVE_SECONDS (or now) if it moved."""
        now = time.monotonic()
        if not force and now - self._saved_at < SAVE_SECONDS:
            return
        self._saved_at = now
        with self.lock:
            phase = self.report.phase
            cursor = self.frontier.cursor
            if cursor is None and phase == "s3":
                cursor = _BEFORE_THE_BUCKET
            if cursor is None or cursor == self._saved:
                return
            payload = {
                "phase": phase, "s3_started": phase == "s3" and cursor != _BEFORE_THE_BUCKET,
                "findings": self.committed.as_state(), "seconds": self.report.earlier_seconds + (now - self.live.started),
            }  # fmt: skip
        try:
            self.state.save(self.identity, cursor, payload)
        except OSError as e:
            if not self._warned_save:
                log.error("cannot save the cursor in %s: %s (a stopped run will start over)", self.state.path, e)
                self._warned_save = True
            return
        self._saved = cursor

    # ---- one blob --------------------------------------------------------------------------

    def _examine(self, digest: Digest) -> Outcome:
        from stor.store import copies

        checked = None if self.selection.everything else self._checked
        examined = copies.examine(self.local, digest, self.pacer, checked, self.listed.pop(digest.hex, None))
        read = [examined]
        if self._missing_appeared(examined):
            # A copy missing while its twin is there: an upload of it may have been renaming its mirrors
            # one after the other. Looked at once more, before it counts as on one mirror only.
            examined = copies.examine(self.local, digest, self.pacer, checked)
            read.append(examined)
        examined = self._restricted(examined)
        touched: dict[int, tuple[int, int]] = {}
        for ex in read:
            last = ex is read[-1]  # a copy counts once, its bytes each time they were read
            for c in ex.copies:
                if c.state in _HASHED and c.pair in self.selection.pairs:
                    n, b = touched.get(c.pair, (0, 0))
                    touched[c.pair] = (n + last, b + _bytes_read(c))
        tally = Tally([(pair, n, b) for pair, (n, b) in touched.items()], sum(ex.bytes_read for ex in read))
        found = copies.problems(examined)
        if not found:
            return tally
        outcome = Findings()
        outcome.fold(tally)
        for p in found:
            outcome.problem(_entry(p.kind, p.sha, p.pair, p.storage, None, p.detail))
        if found and self.options.repair:
            actions = copies.repair(
                self.local, examined, self.s3_source, self.options.dry_run, self.options.read_only_pairs
            )
            for a in actions:
                outcome.action(a.as_json())
            if _all_done(actions):
                for where in {p.pair for p in found}:
                    fixed = sum(1 for p in found if p.pair == where and p.kind not in UNREPAIRABLE)
                    outcome.repaired(fixed, where)
        return outcome

    def _checked(self, storage: Path) -> bool:
        return storage in self.selection.storages

    def _missing_appeared(self, examined: Examined) -> bool:
        from stor.store.copies import MISSING
        from stor.store.fileaccess import BLOCKING

        for pair in examined.pairs():
            copies = examined.of_pair(pair)
            if any(c.state != MISSING for c in copies):
                for c in copies:
                    path = f"{self.local.real_path(c.storage)}/{examined.digest.relative_path}"
                    if c.state == MISSING and BLOCKING.is_file(path):
                        return True
        return False

    def _restricted(self, examined: Examined) -> Examined:
        """Only the selected pairs' copies: the others were not hashed, and are not this run's to report or repair."""
        if self.selection.everything:
            return examined
        from stor.store.copies import Examined

        kept = [c for c in examined.copies if c.pair in self.selection.pairs]
        return Examined(examined.digest, kept, examined.bytes_read)

    # ---- the local walk --------------------------------------------------------------------

    def _local_blobs(self, after: Digest | None) -> Iterator[Digest]:
        """Every blob of the selected storages after `after`, in lexical order; strays handled on the way.

        Each directory is opened relative to its parent's descriptor, one
        name at a time with O_NOFOLLOW: a link is never followed, even one
        put in place of a directory after its parent was listed. Listings
        are read one at a time: read ahead by threads of their own (tried)
        they cost the workers more in the interpreter's lock on a warm cache
        than they saved on a cold one.
        """
        from stor.store.fileaccess import BLOCKING

        bound = after.upper if after is not None else ""
        opened: list[tuple[_Root, int]] = []
        try:
            listed = []
            for root in self.roots:
                fd = BLOCKING.open_directory(root.real)
                if fd is not None:
                    opened.append((root, fd))
                    listed.append((root, self._list(root, fd, (), True)))
            yield from self._level((), listed, dict(opened), bound, after is not None)
        finally:
            for _, fd in opened:
                os.close(fd)

    def _level(self, parts: tuple[str, ...], listed: list[tuple[_Root, list[_Entry] | None]], fds: dict[_Root, int],
               bound: str, resumed: bool) -> Iterator[Digest]:
        """The blobs below one directory, listed in each storage that has it (open in fds unless it is a leaf),
        strays reported as it is listed."""
        prefix = "".join(parts)
        # A resumed run's cursor is below this directory: the earlier run listed it, and reported its strays.
        report = not (resumed and bound.startswith(prefix))
        leaf = len(parts) == 3
        below: dict[str, list[_Root]] = {}
        blobs: set[str] = set()
        strays: list[_Stray] = []
        # In a leaf, what each storage's listing holds, for the workers (copies.examine's `listed`): a storage
        # walked that has no such directory holds none of its blobs; one whose listing failed is not known.
        held: dict[Path, tuple[set[str], set[str]]] = {} if not leaf else {
            root.storage: (set(), set()) for root in self.roots if all(root is not r for r, _ in listed)
        }
        for root, entries in listed:
            if entries is None:
                continue
            if leaf:
                held[root.storage] = self._leaf(root, parts, entries, strays)
                blobs.update(held[root.storage][0])
                continue
            for name, kind, _ in entries:
                if kind == _LINK:
                    rel = "/".join((*parts, name))
                    strays.append(_Stray(root, rel, "symlink", _link_detail(root, rel)))
                elif not parts and (name.startswith(".stor-") or name in _IGNORED_AT_ROOT):
                    if name == _TEMP_DIR and kind == _DIR:
                        strays += self._temporaries(root, fds[root])
                elif kind == _DIR and _HEX2.fullmatch(name):
                    below.setdefault(name, []).append(root)
                else:
                    strays.append(_misfit(root, parts, name, kind))
        if report and strays:
            self._strays(strays)
        if leaf:
            for sha in sorted(blobs):
                if sha > bound and sha not in self.moved:
                    self.listed[sha.lower()] = {d: (sha in dats, sha in metas) for d, (dats, metas) in held.items()}
                    yield Digest.parse(sha)
            return
        for name in sorted(below):
            if prefix + name < bound[: len(prefix) + 2]:
                continue
            child = (*parts, name)
            got: list[tuple[_Root, list[_Entry] | None]] = []
            children: dict[_Root, int] = {}
            try:
                for root in below[name]:
                    fd = self._open_below(root, fds[root], child, report)
                    if fd is None:
                        continue
                    if len(child) < 3:
                        children[root] = fd  # kept open to go further down
                        got.append((root, self._list(root, fd, child, report)))
                        continue
                    try:  # a leaf's listing is all it takes
                        got.append((root, self._list(root, fd, child, report)))
                    finally:
                        os.close(fd)
                yield from self._level(child, got, children, bound, resumed)
            finally:
                for fd in children.values():
                    os.close(fd)

    def _open_below(self, root: _Root, parent: int, parts: tuple[str, ...], report: bool) -> int | None:
        """The directory parts[-1] opened in its parent (never through a link); None if it is gone or cannot be."""
        try:
            return os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None  # gone (or replaced by a file) since its parent was listed
            if e.errno == errno.ELOOP:
                log.warning("%s/%s became a symbolic link while the walk listed it: not followed", root.storage,
                            "/".join(parts))
                return None
            self._unlistable(root, parts, e, report)
            return None

    def _list(self, root: _Root, fd: int, parts: tuple[str, ...], report: bool) -> list[_Entry] | None:
        """The entries of one directory of one storage; None if it cannot be listed (reported)."""
        try:
            return _entries(fd)
        except OSError as e:
            self._unlistable(root, parts, e, report)
            return None

    def _unlistable(self, root: _Root, parts: tuple[str, ...], e: OSError, report: bool) -> None:
        if report:
            rel = "/".join(parts)
            with self.lock:
                self._found().problem(_entry(
                    "unreadable", None, root.pair, str(root.storage), f"{root.storage}/{rel}".rstrip("/"),
                    f"the directory cannot be listed: {e.strerror or e}",
                ))

    def _leaf(self, root: _Root, parts: tuple[str, ...], entries: list[_Entry],
              strays: list[_Stray]) -> tuple[set[str], set[str]]:
        """The blobs of one AA/BB/CC directory of one storage, and its sidecars; its strays added to strays."""
        prefix = "".join(parts)
        blobs: set[str] = set()
        sidecars: list[str] = []
        for name, kind, _ in entries:
            if kind == _LINK:
                rel = "/".join((*parts, name))
                strays.append(_Stray(root, rel, "symlink", _link_detail(root, rel)))
                continue
            match = _LAYOUT_NAME.fullmatch(name)
            if match is None or kind != _FILE or not match.group(1).startswith(prefix):
                strays.append(_misfit(root, parts, name, kind))
            elif match.group(2) == "dat":
                blobs.add(match.group(1))
            else:
                sidecars.append(match.group(1))
        for sha in sidecars:
            if sha not in blobs and not os.path.lexists(f"{root.real}/{prefix[0:2]}/{prefix[2:4]}/{prefix[4:6]}/{sha}.dat"):
                rel = "/".join((*parts, f"{sha}.meta"))
                strays.append(_Stray(root, rel, "orphan_sidecar", "a sidecar without its blob on this mirror",
                                     sha.lower()))
        return blobs, set(sidecars)

    def _temporaries(self, root: _Root, root_fd: int) -> list[_Stray]:
        """The stale upload temporaries of a storage (its .stor-tmp's *.part), and symlinks there."""
        found: list[_Stray] = []
        fd = self._open_below(root, root_fd, (_TEMP_DIR,), True)
        if fd is None:
            return found
        try:
            entries = self._list(root, fd, (_TEMP_DIR,), True)
        finally:
            os.close(fd)
        max_age = self.settings.uploads.tempfile_max_age
        now = time.time()
        for name, kind, _ in entries or ():
            rel = f"{_TEMP_DIR}/{name}"
            if name == _LOCKS_DIR:
                continue
            if kind == _LINK:
                found.append(_Stray(root, rel, "symlink", _link_detail(root, rel)))
            elif name.endswith(_TEMP_SUFFIX) and kind == _FILE:
                age = _stale_age(f"{root.real}/{rel}", max_age, now)
                if age is not None:
                    found.append(_Stray(root, rel, "stale_temporary",
                                        f"an upload temporary file last written {age:.0f} s ago, not locked "
                                        f"(uploads.tempfile_max_age is {max_age:.0f} s)"))
        return found

    def _count(self, after: Digest | None) -> None:
        """The bytes of the blobs to hash, for the bar's total and ETA (a listing and stat of each, on a terminal only).

        A walk of the directories rather than statvfs's used bytes: those
        count whatever else the filesystems hold (quarantine, other files,
        another storage sharing the filesystem), and nothing of a resumed
        run's progress. Costs a stat per blob, read from the inode tables,
        a small fraction of reading the blobs; it runs beside the walk,
        so the bar shows a total as soon as it is known.
        """
        from stor.store.fileaccess import BLOCKING

        bound = after.upper if after is not None else ""
        total = 0
        try:
            for root in self.roots:
                stack: list[tuple[str, ...]] = [()]
                while stack and not self.stopping.is_set():
                    parts = stack.pop()
                    leaf = len(parts) == 3
                    fd = BLOCKING.open_directory("/".join((root.real, *parts)))
                    if fd is None:
                        continue
                    try:
                        entries = _entries(fd, sizes=leaf)
                    finally:
                        os.close(fd)
                    for name, kind, size in entries:
                        if not leaf:
                            here = "".join(parts) + name
                            if kind == _DIR and _HEX2.fullmatch(name) and here >= bound[: len(here)]:
                                stack.append((*parts, name))
                        elif kind == _FILE and name.endswith(".dat") and name[:-4] > bound:
                            total += size
        except OSError as e:
            log.debug("counting the bytes to read stopped: %s", e)
            return
        if not self.stopping.is_set():
            self.ui.total(total)

    # ---- strays ----------------------------------------------------------------------------

    def _strays(self, strays: list[_Stray]) -> None:
        """Strays of one directory listed: reported, and with --repair moved out of the way."""
        found = Findings()
        for stray in strays:
            path = f"{stray.root.storage}/{stray.rel}"
            log.warning("%s: %s (%s)", stray.kind.replace("_", " "), path, stray.detail)
            found.problem(_entry(stray.kind, stray.sha, stray.root.pair, str(stray.root.storage), path, stray.detail))
            if self.options.repair:
                action = self._put_aside(stray)
                found.action(action)
                if action["done"] and action["error"] is None:
                    found.repaired(1, stray.root.pair)
        with self.lock:
            self._found().merge(found)

    def _put_aside(self, stray: _Stray) -> dict[str, Any]:
        """What repair does with a stray: moved into place, quarantined or removed; the action."""
        from stor.store import tempfiles
        from stor.store.quarantine import quarantine

        root, dry = stray.root, self.options.dry_run
        path = f"{root.real}/{stray.rel}"
        shown = f"{root.storage}/{stray.rel}"

        def action(what: str, detail: str, done: bool, error: str | None = None) -> dict[str, Any]:
            a = {"action": what, "sha": stray.sha, "storage": str(root.storage), "path": shown, "detail": detail,
                 "done": done, "error": error}
            if error is not None:
                log.error("repair: %s of %s failed: %s", what, shown, error)
            elif done:
                log.warning("repair: %s %s: %s", what, shown, detail)
            return a

        try:
            if stray.kind == "stale_temporary":
                if dry:
                    return action("remove", "stale upload temporary file removed", False)
                removed = tempfiles.remove_if_stale(Path(path), self.settings.uploads.tempfile_max_age, time.time())
                if not removed:
                    return action("none", "no longer stale, or gone: left as it is", False)
                return action("remove", "stale upload temporary file removed", True)
            if stray.kind == "wrong_directory" and stray.sha is not None and not stray.is_dir:
                place = self._place_of(stray)
                if place is not None:
                    if dry:
                        return action("move", f"moved to its place, {root.storage}/{place}", False)
                    if self._move_into_place(root, path, place, stray.sha):
                        if place.endswith(".dat"):
                            self._moved(Digest.parse(stray.sha))
                        return action("move", f"moved to its place, {root.storage}/{place}", True)
            if stray.kind == "orphan_sidecar" and not dry:
                assert stray.sha is not None
                with tempfiles.digest_lock(self.all_reals, stray.sha):
                    # Under the commit lock: an upload writes the sidecar just before it renames the blob.
                    if os.path.lexists(path[: -len(".meta")] + ".dat"):
                        return action("none", "its blob is there now (an upload in progress): left as it is", False)
                    moved = quarantine(root.real, path, f"{stray.kind}: {stray.detail}")
                return action("quarantine", f"moved to {_shown(root, moved)}", True)
            if dry:
                return action("quarantine", f"{stray.kind.replace('_', ' ')} moved to the quarantine", False)
            moved = quarantine(root.real, path, f"{stray.kind}: {stray.detail}")
            return action("quarantine", f"moved to {_shown(root, moved)}", True)
        except _Stopped:
            raise
        except Exception as e:
            return action("quarantine" if stray.kind != "stale_temporary" else "remove", "", False, _reason(e))

    def _place_of(self, stray: _Stray) -> str | None:
        """Where a misplaced blob or sidecar goes, if it may go there: a blob hashing to its name whose place is
        empty; a sidecar whose blob is in place and has none. None: it is quarantined instead."""
        from stor.store.fileaccess import BLOCKING
        from stor.store.metadata import meta_relative_path
        from stor.store.verify import hash_fd, read_from_disk

        assert stray.sha is not None
        digest = Digest.parse(stray.sha)
        root = stray.root
        blob = f"{root.real}/{digest.relative_path}"
        if stray.rel.endswith(".meta"):
            meta = meta_relative_path(digest)
            if BLOCKING.is_file(blob) and not os.path.lexists(f"{root.real}/{meta}"):
                return meta
            return None
        if os.path.lexists(blob):
            return None
        fd = BLOCKING.open(f"{root.real}/{stray.rel}")
        if fd is None:
            return None
        try:
            read_from_disk(fd)
            size = os.fstat(fd).st_size
            actual, read = hash_fd(fd, size, self.pacer)
        finally:
            os.close(fd)
        with self.lock:
            self.live.bytes_read += read
            found = self._found()
            found.total.bytes_read += read
            found.pair(root.pair).bytes_read += read
        if actual != digest.hex:
            log.warning("%s/%s does not hash to its name (%s): quarantined, not moved", root.storage, stray.rel, actual)
            return None
        return digest.relative_path

    def _moved(self, digest: Digest) -> None:
        """A blob just moved into its place, examined now (and repaired): its directory may have been listed
        already, or not existed when its parent was. Skipped if the walk comes to it again."""
        self.moved.add(digest.upper)
        outcome = self._examine(digest)
        with self.lock:
            _count_live(self.live, outcome)
            self._found().fold(outcome)

    def _move_into_place(self, root: _Root, path: str, place: str, sha: str) -> bool:
        """A misplaced file renamed to its place, under the digest's commit lock; False if the place is taken now."""
        from stor.store import tempfiles
        from stor.store.durable import fsync_dir, make_dirs_durably

        final = f"{root.real}/{place}"
        with tempfiles.digest_lock(self.all_reals, sha):
            if os.path.lexists(final):
                return False
            make_dirs_durably(os.path.dirname(final), root.real)
            os.rename(path, final)
            fsync_dir(os.path.dirname(final))
            fsync_dir(os.path.dirname(path))
        return True

    # ---- the bucket ------------------------------------------------------------------------

    def _start_s3(self) -> None:
        """The S3 tier's client, on an event loop of its own, for --s3 and as repair's last source."""
        s = self.settings
        if not s.s3_tier or not (self.options.s3 or self.options.repair):
            return
        from stor import aio
        from stor.store.copies import BucketSource
        from stor.store.s3 import S3Store

        assert s.s3_endpoint is not None and s.s3_credentials is not None
        aio.configure(s.storage.io_threads)
        self.loop = _LoopThread()
        bucket = S3Store(s.s3, s.s3_endpoint, s.s3_credentials, s.uploads.max_blob_bytes)
        self.loop.run(bucket.start())
        self.bucket = bucket
        problem = self.loop.run(bucket.probe())
        if problem is not None:
            if self.options.s3:
                raise CannotRun(f"--s3: cannot use bucket {bucket.bucket} at {s.s3_endpoint}: {problem}")
            log.warning("the S3 tier cannot be used (%s): nothing is restored from it", problem)
            return
        self.report.s3 = bucket.name if self.options.s3 else None
        self.s3_source = BucketSource(bucket, self.loop.loop)

    def _close_s3(self) -> None:
        if self.loop is None:
            return
        if self.bucket is not None and not self.hurry.is_set():
            with contextlib.suppress(Exception):
                self.loop.run(self.bucket.close(), timeout=10)
        self.loop.close()

    def _objects(self, after: Digest | None) -> Iterator[Digest]:
        """The bucket's blobs after `after`, in order, the sampled ones only (each listed one counted)."""
        assert self.bucket is not None and self.loop is not None
        rng = random.Random()
        listing: Any = self.bucket.iter_digests()
        loop = self.loop
        try:
            while not self.stopping.is_set():
                try:
                    digest = loop.run(_next(listing))
                except Exception as e:
                    self._stop(f"cannot list {self.bucket.name}: {e}")
                    return
                if digest is None:
                    return
                if after is not None and digest.hex <= after.hex:
                    continue
                with self.lock:
                    self._found().s3.objects_listed += 1
                if self.options.s3_sample >= 1.0 or rng.random() < self.options.s3_sample:
                    yield digest
        finally:
            with contextlib.suppress(Exception):
                loop.run(listing.aclose(), timeout=10)

    def _check_object(self, digest: Digest) -> Outcome:
        """One object of the bucket read whole and hashed (once more on a mismatch); a corrupt one repaired."""
        assert self.bucket is not None
        from stor.layout import object_key

        outcome = Findings()
        name = f"{self.bucket.name}/{object_key(digest)}"
        try:
            got = self._hash_object(digest)
            if got is None:
                return outcome  # gone since it was listed: nothing to verify
            actual, read = got
            outcome.s3.bytes_read += read
            if actual != digest.hex:
                log.warning("%s does not hash to its name (it hashes to %s); reading it again", name, actual)
                again = self._hash_object(digest)
                if again is not None:
                    outcome.s3.bytes_read += again[1]
                    if again[0] == digest.hex:
                        outcome.s3.objects_verified += 1
                        outcome.problem(_entry(S3_FLAKY, digest.hex, None, self.bucket.name, name,
                                               "a first read did not match, the re-read did"))
                        return outcome
                    actual, read = again
        except _Stopped:
            raise
        except Exception as e:
            outcome.problem(_entry(S3_UNREADABLE, digest.hex, None, self.bucket.name, name,
                                   f"cannot be read: {_reason(e)}"))
            return outcome
        outcome.s3.objects_verified += 1
        if actual == digest.hex:
            return outcome
        outcome.problem(_entry(S3_CORRUPT, digest.hex, None, self.bucket.name, name,
                               f"content does not hash to its name: {read} bytes, hashing to {actual}"))
        if self.options.repair:
            actions = self._replace_object(digest, outcome)
            for a in actions:
                outcome.action(a)
            if actions and all(a["done"] and a["error"] is None for a in actions):
                outcome.repaired(1, None, s3=True)
        return outcome

    def _hash_object(self, digest: Digest) -> tuple[str, int] | None:
        """The sha of the object's bytes and their number (None: no such object), read through the pacer."""
        assert self.bucket is not None and self.loop is not None
        from stor.store.base import Missing

        loop = self.loop
        opened = loop.run(self.bucket.open(digest))
        if isinstance(opened, Missing):
            return None
        chunks = opened.body.__aiter__()
        hasher = hashlib.sha256()
        read = 0
        try:
            while (chunk := loop.run(_next(chunks))) is not None:
                hasher.update(chunk)
                read += len(chunk)
                self.pacer.took(len(chunk))
        finally:
            with contextlib.suppress(Exception):
                loop.run(_close(chunks, opened), timeout=10)
        return hasher.hexdigest(), read

    def _replace_object(self, digest: Digest, outcome: Findings) -> list[dict[str, Any]]:
        """A corrupt object replaced from a local copy that hashes to its sha; none: it is left, and reported."""
        assert self.bucket is not None and self.loop is not None
        from stor.store import copies
        from stor.store.copyqueue import copy_blob
        from stor.layout import object_key

        bucket, loop = self.bucket, self.loop
        sha, where = digest.hex, bucket.name
        examined = copies.examine(self.local, digest, self.pacer)
        outcome.total.bytes_read += examined.bytes_read
        good = examined.good()
        if not good:
            detail = f"no local copy of {sha} hashes to it: the corrupt object is left as it is"
            log.error("repair of %s in %s: %s", sha, where, detail)
            return [_s3_action("none", sha, where, detail, False)]
        aside = f"{_QUARANTINE_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{sha}"
        source = good[0].storage
        if self.options.dry_run:
            return [
                _s3_action("quarantine", sha, where, f"corrupt object copied to {aside} and deleted", False),
                _s3_action("copy", sha, where, f"corrupt object replaced from {source}", False),
            ]
        actions = []
        key = object_key(digest)
        try:
            loop.run(bucket.writer.copy_object(Bucket=bucket.bucket, Key=aside,
                                               CopySource={"Bucket": bucket.bucket, "Key": key}))
            loop.run(bucket.writer.delete_object(Bucket=bucket.bucket, Key=key))
        except Exception as e:
            return [_s3_action("quarantine", sha, where, f"corrupt object copied to {aside} and deleted", False,
                               _reason(e))]
        actions.append(_s3_action("quarantine", sha, where, f"corrupt object copied to {aside} and deleted", True))
        try:
            loop.run(copy_blob(cast("BlobStore", _At(self.local, str(source))), bucket, digest))
        except Exception as e:
            actions.append(_s3_action("copy", sha, where, f"corrupt object replaced from {source}", False, _reason(e)))
            return actions
        actions.append(_s3_action("copy", sha, where, f"corrupt object replaced from {source}", True))
        log.warning("repair of %s in %s: the corrupt object was moved to %s and replaced from %s", sha, where, aside,
                    source)
        return actions


_QUARANTINE_PREFIX = ".stor-quarantine/"
# The state file's cursor once the local walk is done and the bucket's has not passed an object yet (a state
# file's cursor is a sha; "s3_started" false says this one is no object's).
_BEFORE_THE_BUCKET = "f" * 64
_HASHED = ("good", "corrupt", "truncated", "unreadable")


def _bytes_read(c: Any) -> int:
    """What examine read of one copy: whole, and once more if it did not match at first."""
    if c.state == "unreadable" or c.size is None:
        return 0
    return int(c.size) * (2 if c.state in ("corrupt", "truncated") or c.flaky else 1)


def _all_done(actions: Sequence[Action]) -> bool:
    return bool(actions) and all(a.done and a.error is None and a.action != "none" for a in actions)


def _entry(kind: str, sha: str | None, pair: int | None, storage: str | None, path: str | None,
           detail: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": kind, "sha": sha, "pair": pair, "storage": storage}
    if path is not None:
        entry["path"] = path
    entry["detail"] = detail
    return entry


def _s3_action(what: str, sha: str, where: str, detail: str, done: bool, error: str | None = None) -> dict[str, Any]:
    if error is not None:
        log.error("repair of %s in %s: %s failed: %s", sha, where, what, error)
    return {"action": what, "sha": sha, "storage": where, "detail": detail, "done": done, "error": error}


def _misfit(root: _Root, parts: tuple[str, ...], name: str, kind: str) -> _Stray:
    """An entry that is not part of the layout where it is (not a link, not stor's own)."""
    rel = "/".join((*parts, name))
    match = _LAYOUT_NAME.fullmatch(name)
    if kind == _DIR:
        return _Stray(root, rel, "wrong_directory", "a directory that is not part of the AA/BB/CC layout", None, True)
    if kind != _FILE:
        return _Stray(root, rel, "wrong_name", "not a regular file")
    if match is None:
        return _Stray(root, rel, "wrong_name", "not a <SHA-256 in upper-case hex>.dat blob or .meta sidecar")
    sha = match.group(1)
    place = f"{sha[0:2]}/{sha[2:4]}/{sha[4:6]}"
    return _Stray(root, rel, "wrong_directory", f"its name belongs in {place}/", sha.lower())


_DIR, _FILE, _LINK, _OTHER = "dir", "file", "link", "other"


# A directory entry: its name, its type (_DIR, _FILE, _LINK: never followed, or _OTHER: a FIFO, a socket,
# a device) and, when asked for, a file's size. A plain tuple: there is one per entry walked.
_Entry = tuple[str, str, int]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _entries(fd: int, sizes: bool = False) -> list[_Entry]:
    """The entries of the open directory fd (blocking).

    Types are read while the directory is open (scandir's DirEntry answers
    them from the listing, or with an fstatat relative to the directory on a
    filesystem whose listing does not say).
    """
    found = []
    with os.scandir(fd) as listing:
        for e in listing:
            if e.is_symlink():
                kind = _LINK
            elif e.is_dir(follow_symlinks=False):
                kind = _DIR
            elif e.is_file(follow_symlinks=False):
                kind = _FILE
            else:
                kind = _OTHER
            found.append((e.name, kind, e.stat(follow_symlinks=False).st_size if sizes and kind == _FILE else 0))
    return found


def _link_detail(root: _Root, rel: str) -> str:
    try:
        return f"a symbolic link (to {os.readlink(f'{root.real}/{rel}')}), not followed"
    except OSError:
        return "a symbolic link, not followed"


def _stale_age(path: str, max_age: float, now: float) -> float | None:
    """How old an unlocked temporary file older than max_age is; None if it is younger, locked or gone.

    The sweep's rule (stor.store.tempfiles.remove_if_stale), without removing anything.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        age = now - st.st_mtime
        if not stat.S_ISREG(st.st_mode) or age < max_age:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None  # a writer on this host still holds it
            raise
        return age
    except OSError:
        return None
    finally:
        os.close(fd)  # and with it the lock


def _check_readable(root: _Root) -> None:
    from stor.store.fileaccess import BLOCKING

    try:
        fd = BLOCKING.open_directory(root.real)
    except OSError as e:
        raise CannotRun(f"storage {root.storage} cannot be read: {e.strerror or e}") from None
    if fd is None:
        raise CannotRun(f"storage {root.storage} is not a directory")
    try:
        with os.scandir(fd) as listing:
            next(iter(listing), None)
    except OSError as e:
        raise CannotRun(f"storage {root.storage} cannot be listed: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _shown(root: _Root, path: str) -> str:
    return f"{root.storage}{path[len(root.real):]}" if path.startswith(root.real + "/") else path


def _rate_text(pacer: Pacer) -> str:
    return f", at most {human_bytes(pacer.rate)}/s" if pacer.rate is not None else ", at full speed"


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f": {e.filename}" if e.filename else "")
    text = str(e)
    return text if text and type(e).__module__.startswith("stor") else f"{type(e).__name__}: {text}"


class _At:
    """The local store read at one storage only (copy_blob opens the blob wherever a probe finds it first)."""

    def __init__(self, local: LocalStore, storage: str) -> None:
        self.local = local
        self.storage = storage

    def open(self, digest: Digest, span: tuple[int, int] | None = None, at: str | None = None) -> Any:
        return self.local.open(digest, span, self.storage)


async def _next(iterator: Any) -> Any:
    """The next item of an async iterator, None at its end (StopAsyncIteration does not cross threads well)."""
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


async def _close(chunks: Any, opened: Any) -> None:
    try:
        await chunks.aclose()
    finally:
        opened.close()


class _LoopThread:
    """An event loop in a thread of its own, for the S3 client: the scrub's threads hand it coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stor-scrub-s3", daemon=True)
        self.thread.start()

    def run(self, coroutine: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


# ---- what the operator sees ------------------------------------------------------------------


class TerminalUi(walkrun.TerminalUi[Live]):
    """On a terminal (stderr): a bar of the bytes read, out of those counted, with the rate and the ETA."""

    texts = ("{task.fields[bytes]}", "{task.fields[rate]}", "{task.fields[blobs]}, {task.fields[problems]} problems")

    def __init__(self, command: str) -> None:
        super().__init__()
        self.title = command

    def fields(self, summary: Live) -> dict[str, str]:
        elapsed = max(time.monotonic() - summary.started, 1e-6)
        total = f"/{human_bytes(self.counted)}" if self.counted is not None else ""
        blobs = f"{summary.blobs} blobs" + (f", {summary.objects} objects" if summary.objects else "")
        return {
            "bytes": f"{human_bytes(summary.bytes_read)}{total}",
            "rate": f"{human_bytes(summary.bytes_read / elapsed)}/s",
            "blobs": blobs,
            "problems": str(summary.problems),
        }

    def completed(self, summary: Live) -> float:
        return float(summary.bytes_read)
