"""`stor s3-backfill`: copy every local blob missing from the bucket, so that an archive can move to S3.

The local blobs are walked once in lexical order (LocalStore.iter_digests);
their presence in the bucket is checked a batch at a time (S3Store.contains,
concurrent HEADs), and the missing ones are copied, up to --jobs at once,
by the copy queue's own copy (stor.store.copyqueue.copy_blob: the local
bytes are hashed on their way and the object is completed only when they
match the sha, so a corrupt local copy is reported, never uploaded). The
next batch is checked while the copies of the previous one run. A copy that
fails for a passing reason is tried again after 1 s, then 2 s, before it is
counted failed; a local copy that is gone or corrupt, or one S3 refuses, is
failed at once.

Resumable: the cursor is the last sha such that it and every blob before
it is in the bucket. It is saved (temporary file, fsync, rename) in the
state file after each batch whose blobs are all settled, and when the run
stops; a rerun continues after it (--restart ignores and removes it), and
the state file is removed when a run ends with every blob copied or
present. A failed blob holds the cursor before it, so a rerun tries it
again. An exclusive flock of a lock file beside the state file keeps two
runs from sharing one state file (stor.walkrun, shared with stor scrub).

Stopping: the first SIGINT or SIGTERM starts no more checks or copies, lets
the copies in flight finish, saves the cursor and prints the summary; a
second one abandons the copies in flight (their uploads are aborted: an
unfinished upload is invisible). Exit codes: 0 every blob copied or
present; 1 some failed (or the run had to stop: S3 went away, local storage
could not be listed); 2 it could not run (no S3 tier configured, a
configuration error, S3 unreachable at start, the state file unwritable or
in use); 130 stopped by SIGINT (Ctrl-C); 143 stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stor import aio, walkrun
from stor.config import CONFIG_ENV, ConfigError, Settings, load_settings
from stor.digest import Digest
from stor.walkrun import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGNALLED,
    CannotRun,
    Frontier,
    StateFile,
    human_bytes,
)

log = logging.getLogger("stor.s3-backfill")

STATE_NAME = ".stor-s3-backfill.json"
DEFAULT_JOBS = 4
DEFAULT_BATCH = 1000
COPY_TRIES = 3  # a copy failing for a passing reason: tried again after RETRY_DELAY, then twice that
CHECK_TRIES = 3  # a presence check of a batch, the same way; still failing, the run stops
RETRY_DELAY = 1.0
# Copies failing in a row because S3 is out of reach (after their own retries) before the run stops:
# an outage must not be walked through, failing every remaining blob.
UNREACHABLE_IN_A_ROW = 8
MAX_FAILURES_LISTED = 1000  # in the JSON summary; "failed" counts them all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    walkrun.add_common_arguments(
        parser, "summary", STATE_NAME, "ignore (and remove) the saved cursor: check every blob again"
    )
    parser.add_argument(
        "-j", "--jobs", type=int, default=DEFAULT_JOBS, metavar="N",
        help=f"copies in flight at once (default {DEFAULT_JOBS})",
    )
    parser.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, metavar="N",
        help=f"blobs checked per batch; the cursor is saved after each (default {DEFAULT_BATCH})",
    )


def main(args: argparse.Namespace) -> int:
    """The `stor s3-backfill` command: its exit code."""
    out_json = args.json or not sys.stdout.isatty()
    show_progress = sys.stderr.isatty()
    ui: Ui = TerminalUi() if show_progress else QuietUi()
    ui.configure_logging(args.log_level.upper())
    try:
        if args.jobs < 1:
            raise CannotRun("-j/--jobs: must be at least 1")
        if args.batch < 1:
            raise CannotRun("--batch: must be at least 1")
        settings = _settings(args.config or os.environ.get(CONFIG_ENV))
        state = StateFile(Path(args.state) if args.state else settings.storage_dirs[0] / STATE_NAME, "s3-backfill")
        aio.configure(settings.storage.io_threads)
        run = Backfill(settings, state, args.jobs, args.batch, args.restart, ui)
        summary = asyncio.run(run.run())
    except CannotRun as e:
        return walkrun.could_not_run(ui, "s3-backfill", e)
    return walkrun.conclude(ui, summary, out_json, show_progress)


def _settings(path: str | None) -> Settings:
    try:
        settings = load_settings(path)
    except ConfigError as e:
        raise CannotRun(str(e)) from None
    if not settings.s3_tier:
        raise CannotRun(
            f"no S3 tier configured ({settings.source}): set s3_enabled to true and s3_credentials "
            "(access_key, secret_key, host), and the bucket in s3.bucket"
        )
    if not settings.storage_pairs:
        raise CannotRun(f"no storage_pairs in {settings.source}: there is no local blob to copy")
    return settings


# ---- the summary -------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a run did. checked = present + copied + failed + pending."""

    resumed_from: str | None = None
    checked: int = 0  # blobs whose presence in the bucket was looked up
    present: int = 0  # in the bucket already (or put there by someone else while this run copied it)
    copied: int = 0
    copied_bytes: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    pending: int = 0  # found missing, not copied because the run stopped
    cursor: str | None = None  # where a rerun continues (null: from the start)
    stopped: str | None = None  # why the run stopped short: "SIGINT", "SIGTERM", or a fault
    signal: int | None = None
    complete: bool = False  # every local blob was checked, and is in the bucket now
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def fail(self, sha: str, error: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_FAILURES_LISTED:
            self.failures.append({"sha": sha, "error": error})

    def as_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked, "present": self.present, "copied": self.copied,
            "copied_bytes": self.copied_bytes, "failed": self.failed, "failures": self.failures,
            "resumed_from": self.resumed_from, "seconds": round(self.seconds, 3),
            "pending": self.pending, "cursor": self.cursor, "complete": self.complete, "stopped": self.stopped,
        }  # fmt: skip

    def exit_code(self) -> int:
        if self.signal is not None:
            return EXIT_SIGNALLED.get(self.signal, EXIT_FAILED)
        return EXIT_OK if self.complete else EXIT_FAILED

    def one_line(self) -> str:
        start = f" after {self.resumed_from[:12]}…" if self.resumed_from else ""
        line = (
            f"s3-backfill: checked {self.checked} blobs{start} in {self.seconds:.1f} s: {self.present} present, "
            f"{self.copied} copied ({human_bytes(self.copied_bytes)}), {self.failed} failed"
        )
        if self.pending:
            line += f", {self.pending} left to copy"
        if self.complete:
            return line + "; every local blob is in the bucket"
        if self.stopped:
            line += f"; stopped ({self.stopped})"
        return line + "; run it again to continue" + (f" after {self.cursor[:12]}…" if self.cursor else "")


# ---- the run -----------------------------------------------------------------------------------


class Backfill:
    def __init__(self, settings: Settings, state: StateFile, jobs: int, batch: int, restart: bool, ui: Ui) -> None:
        self.settings = settings
        self.state = state
        self.jobs = jobs
        self.batch = batch
        self.restart = restart
        self.ui = ui
        self.summary = Summary()
        self.stopping = asyncio.Event()
        self.unreachable_in_a_row = 0
        self._inflight: set[asyncio.Task[None]] = set()
        self._saved: str | None = None
        self._save_lock = asyncio.Lock()

    async def run(self) -> Summary:
        loop = asyncio.get_running_loop()
        for sig in EXIT_SIGNALLED:
            loop.add_signal_handler(sig, self._signalled, sig)
        try:
            return await self._run()
        finally:
            for sig in EXIT_SIGNALLED:
                loop.remove_signal_handler(sig)

    def _signalled(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self.summary.signal is None:
            self.summary.signal = sig
            self.summary.stopped = self.summary.stopped or name  # a fault that stopped the run first stays its reason
            self.stopping.set()
            log.warning("%s: stopping; %d copies in flight finish first (%s again abandons them)",
                        name, len(self._inflight), name)
            return
        log.warning("%s again: abandoning %d copies in flight (their uploads are aborted)", name, len(self._inflight))
        for task in self._inflight:
            task.cancel()

    def _stop(self, why: str) -> None:
        """Stop short for a fault (exit 1): no more checks or copies."""
        if not self.stopping.is_set():
            self.summary.stopped = why
            log.error("stopping: %s", why)
            self.stopping.set()

    async def _run(self) -> Summary:
        from stor.store.local import LocalStore
        from stor.store.s3 import S3Store

        s = self.settings
        assert s.s3_endpoint is not None and s.s3_credentials is not None
        self.bucket, self.endpoint = s.s3.bucket, s.s3_endpoint
        self.identity = {"bucket": self.bucket, "endpoint": self.endpoint}
        await aio.in_thread(self.state.lock)
        try:
            self.local = LocalStore(
                s.storage_pairs, s.writable_pairs_regex, s.storage, s.uploads, s.cleanup_tempdir_period
            )  # not started: its sweep of stale temporary files is the service's work
            self.s3 = S3Store(s.s3, self.endpoint, s.s3_credentials, s.uploads.max_blob_bytes)
            await self.s3.start()
            try:
                problem = await self.s3.probe()
                if problem is not None:
                    raise CannotRun(f"cannot use bucket {self.bucket} at {self.endpoint}: {problem}")
                if self.restart:
                    await aio.in_thread(self.state.remove)
                    start = None
                else:
                    saved = await aio.in_thread(self.state.load, self.identity)
                    start = saved.cursor if saved is not None else None
                self.summary.resumed_from = self.summary.cursor = start.hex if start is not None else None
                self.frontier: Frontier[None] = Frontier(self.summary.cursor)
                log.info("copying local blobs missing from s3://%s at %s%s, %d at once", self.bucket, self.endpoint,
                         f", after {start}" if start is not None else "", self.jobs)
                if not self.stopping.is_set():  # a signal during the start
                    await self._walk(start)
            finally:
                await self.s3.close()
            await self._finish()
        finally:
            self.state.unlock()
        return self.summary

    async def _walk(self, start: Digest | None) -> None:
        self.ui.start(self.summary)
        counting = asyncio.create_task(self._count(start)) if self.ui.wants_total else None
        batches: asyncio.Queue[list[Digest] | None] = asyncio.Queue(maxsize=1)
        checking = asyncio.create_task(self._check_all(start, batches))
        try:
            await self._copy_all(batches)
        finally:
            checking.cancel()
            if counting is not None:
                counting.cancel()
            await asyncio.gather(checking, *([counting] if counting else []), return_exceptions=True)
            self.ui.stop(self.summary)

    async def _count(self, start: Digest | None) -> None:
        """The number of blobs to check, for the progress bar's total and ETA (a second walk, on a terminal only)."""
        n = 0
        async for _ in self.local.iter_digests(start.hex if start is not None else ""):
            n += 1
        self.ui.total(n)

    async def _check_all(self, start: Digest | None, batches: asyncio.Queue[list[Digest] | None]) -> None:
        """The walk, a batch of presence checks at a time; each batch's missing blobs handed to the copier."""
        try:
            batch: list[Digest] = []
            async for digest in self.local.iter_digests(start.hex if start is not None else ""):
                if self.stopping.is_set():
                    return
                batch.append(digest)
                if len(batch) >= self.batch:
                    await batches.put(await self._check(batch))
                    batch = []
            if batch:
                await batches.put(await self._check(batch))
            await batches.put(None)
        except asyncio.CancelledError:
            raise
        except _CheckFailed as e:
            self._stop(str(e))
        except OSError as e:
            self._stop(f"cannot list local storage: {e}")
        except Exception as e:
            log.exception("walking local storage failed")
            self._stop(f"walking local storage failed: {type(e).__name__}: {e}")

    async def _check(self, batch: list[Digest]) -> list[Digest]:
        """The blobs of the batch missing from the bucket (the present ones settled)."""
        for attempt in range(1, CHECK_TRIES + 1):
            try:
                present = await self.s3.contains(batch)
                break
            except Exception as e:
                if attempt == CHECK_TRIES:
                    raise _CheckFailed(f"checking blobs in S3 failed {CHECK_TRIES} times: {e}") from e
                delay = RETRY_DELAY * 2 ** (attempt - 1)
                log.warning("checking %d blobs from %s in S3 failed (%s); again in %.0f s", len(batch), batch[0], e, delay)
                await asyncio.sleep(delay)  # cancelled by a stop, with the whole walk
        summary = self.summary
        summary.checked += len(batch)
        missing = []
        for digest, there in zip(batch, present):
            self.frontier.add(digest.hex)
            if there:
                summary.present += 1
                self.frontier.settle(digest.hex, True)
            else:
                missing.append(digest)
        self.ui.update(summary)
        if not missing:
            await self._save()
        return missing

    async def _copy_all(self, batches: asyncio.Queue[list[Digest] | None]) -> None:
        slots = asyncio.Semaphore(self.jobs)
        while (batch := await self._next(batches)) is not None:
            left = _BatchCount(len(batch))
            for digest in batch:
                await _acquire_unless(slots, self.stopping)
                if self.stopping.is_set():
                    break
                task = asyncio.create_task(self._copy(digest, slots, left))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
        while self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _next(self, batches: asyncio.Queue[list[Digest] | None]) -> list[Digest] | None:
        """The next batch of missing blobs; None at the end of the walk or once stopping."""
        if self.stopping.is_set():
            return None
        getting = asyncio.ensure_future(batches.get())
        stopping = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait((getting, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not getting.done():
            getting.cancel()
            return None
        batch = getting.result()
        return None if self.stopping.is_set() else batch

    async def _copy(self, digest: Digest, slots: asyncio.Semaphore, left: _BatchCount) -> None:
        try:
            ok = await self._copy_with_retries(digest)
        except asyncio.CancelledError:  # abandoned by a second signal: pending, and the run goes on to its summary
            ok = False
        finally:
            slots.release()
        self.frontier.settle(digest.hex, ok)
        self.ui.update(self.summary)
        if left.done_one():
            await self._save()

    async def _copy_with_retries(self, digest: Digest) -> bool:
        from stor.store.base import TooLarge
        from stor.store.copyqueue import GoneLocally, copy_blob
        from stor.store.s3 import S3Refused, S3Unreachable

        summary = self.summary
        for attempt in range(1, COPY_TRIES + 1):
            try:
                stored = await copy_blob(self.local, self.s3, digest)
            except (GoneLocally, S3Refused, TooLarge) as e:  # trying again would not change the answer
                self._failed(digest, e)
                return False
            except Exception as e:
                if attempt == COPY_TRIES:
                    self._failed(digest, e)
                    if isinstance(e, S3Unreachable):
                        self.unreachable_in_a_row += 1
                        if self.unreachable_in_a_row >= UNREACHABLE_IN_A_ROW:
                            self._stop(f"S3 unreachable: {self.unreachable_in_a_row} copies in a row failed ({e})")
                    return False
                delay = RETRY_DELAY * 2 ** (attempt - 1)
                log.warning("copy of %s failed (try %d of %d): %s; again in %.0f s", digest, attempt, COPY_TRIES,
                            _reason(e), delay)
                await asyncio.sleep(delay)
                continue
            self.unreachable_in_a_row = 0
            if stored.created:
                summary.copied += 1
                info = await self.local.head(digest)
                summary.copied_bytes += getattr(info, "size", 0)
            else:
                summary.present += 1  # put there by someone else since the check
            return True
        raise AssertionError("unreachable")

    def _failed(self, digest: Digest, e: Exception) -> None:
        reason = _reason(e)
        log.error("copy of %s failed: %s", digest, reason)
        self.summary.fail(digest.hex, reason)

    async def _save(self) -> None:
        """The cursor in the state file, if it moved since the last save."""
        async with self._save_lock:
            cursor = self.frontier.cursor
            if cursor is None or cursor == self._saved:
                return
            try:
                await aio.in_thread(self.state.save, self.identity, cursor)
            except OSError as e:
                self._stop(f"cannot save the cursor in {self.state.path}: {e}")
                return
            self._saved = self.summary.cursor = cursor

    async def _finish(self) -> None:
        summary = self.summary
        summary.seconds = time.monotonic() - summary.started
        summary.cursor = self.frontier.cursor
        # Whatever was checked and is neither present, copied nor failed was left by a stop: checked but not
        # yet handed to a copy, waiting for a slot, or abandoned in flight.
        summary.pending = summary.checked - summary.present - summary.copied - summary.failed
        summary.complete = not self.stopping.is_set() and summary.failed == 0 and summary.pending == 0
        if summary.complete:
            await aio.in_thread(self.state.remove)
            summary.cursor = None
            log.info("done: every local blob is in s3://%s", self.bucket)
        else:
            await self._save()


class _CheckFailed(Exception):
    pass


class _BatchCount:
    """The copies of one batch still to settle: the cursor is saved when the last one does."""

    def __init__(self, n: int) -> None:
        self.left = n

    def done_one(self) -> bool:
        self.left -= 1
        return self.left == 0


async def _acquire_unless(slots: asyncio.Semaphore, stopping: asyncio.Event) -> None:
    """A copy slot, or return without one once stopping is set (the caller checks which)."""
    if stopping.is_set():
        return
    acquiring = asyncio.ensure_future(slots.acquire())
    waiting = asyncio.ensure_future(stopping.wait())
    await asyncio.wait((acquiring, waiting), return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if not acquiring.done():
        acquiring.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquiring
    if acquiring.done() and not acquiring.cancelled() and stopping.is_set():
        slots.release()  # got one as the stop came: not used


def _reason(e: BaseException) -> str:
    text = str(e)
    if isinstance(e, OSError) and e.errno is not None:
        text = f"{e.strerror or errno.errorcode.get(e.errno, e.errno)}" + (f": {e.filename}" if e.filename else "")
    return text if text and type(e).__module__.startswith("stor") else f"{type(e).__name__}: {text}"


# ---- what the operator sees ------------------------------------------------------------------


Ui = walkrun.Ui[Summary]
QuietUi = walkrun.QuietUi[Summary]


class TerminalUi(walkrun.TerminalUi[Summary]):
    """On a terminal (stderr): a rich progress bar of the blobs checked, with log lines printed above it."""

    title = "s3-backfill"
    texts = (
        "{task.fields[checked]}",
        "copied {task.fields[copied]} ({task.fields[bytes]}), failed {task.fields[failed]}",
        "{task.fields[rate]}",
    )

    def fields(self, summary: Summary) -> dict[str, str]:
        elapsed = max(time.monotonic() - summary.started, 1e-6)
        total = f"/{self.counted:.0f}" if self.counted is not None else ""
        return {
            "checked": f"checked {summary.checked}{total}",
            "copied": str(summary.copied),
            "bytes": human_bytes(summary.copied_bytes),
            "failed": str(summary.failed),
            "rate": f"{summary.checked / elapsed:.0f} blobs/s, {human_bytes(summary.copied_bytes / elapsed)}/s",
        }

    def completed(self, summary: Summary) -> float:
        return summary.present + summary.copied + summary.failed
