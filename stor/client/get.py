"""`stor get` and `stor cat`: downloads verified against their sha, resumed where they stopped.

A download goes to `<target>.part` and is renamed to its target only once
its bytes hash to the sha asked for: a target is always whole and right. A
`.part` left by an interrupted run (or a dropped connection, retried) is
hashed and continued with `Range: bytes=N-` and `If-Range: "<sha>"`, so a
server that would send something else sends it all (200) and the part is
started over. Bytes that hash to anything else delete the part and fail the
item: they are never retried into place.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import h11

from stor.client.connection import (
    Connection,
    Failed,
    Interrupted,
    Retryable,
    Stopped,
    check_status,
    transport_reason,
)
from stor.client.exists import is_sha256
from stor.client.rawhttp import Answer, FileError, write_all
from stor.client.report import Reporter, Transfer, run_summary, size_text

READ = 1 << 20
PART_SUFFIX = ".part"
REMEMBER = 65536  # shas of this run remembered to skip a repeat (bounded: a list on stdin may be endless)
SPLICE_ABOVE = 1 << 20  # larger bodies are spliced into their file and hashed behind by a thread


class Sink(Protocol):
    """Where a download's bytes go: a .part file (can start over) or stdout (cannot)."""

    offset: int

    def receive(self, answer: Answer, download: Download, skip: int) -> None: ...
    def start_over(self) -> bool: ...


class FileSink:
    """A .part file: a large body spliced in and hashed behind by another thread, a small one
    written and hashed as it comes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.offset = os.lseek(fd, 0, os.SEEK_END)

    def receive(self, answer: Answer, download: Download, skip: int) -> None:
        if answer.length is None or answer.length <= SPLICE_ABOVE:
            for piece in answer.pieces():
                write_all(self.fd, piece)
                self.offset += len(piece)
                download.digest.update(piece)
                download.bar.advance(len(piece))
            return
        behind = HashBehind(self.fd, download.digest, self.offset)

        def progress(n: int) -> None:
            self.offset += n
            behind.advance(n)
            download.bar.advance(n)

        try:
            answer.into_file(self.fd, download.conn.getter.pipe(), progress, download.conn.stopping)
        finally:
            behind.finish()  # what reached the file is hashed, however the transfer ended

    def start_over(self) -> bool:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.offset = 0
        return True


class StreamSink:
    def __init__(self, out: BinaryIO) -> None:
        self.out, self.offset = out, 0

    def receive(self, answer: Answer, download: Download, skip: int) -> None:
        for piece in answer.pieces():
            if download.conn.stopping.is_set():
                raise Stopped()
            if skip:  # sent on already, by an attempt that was cut: read past it
                dropped = min(skip, len(piece))
                piece, skip = piece[dropped:], skip - dropped
                if not piece:
                    continue
            self.out.write(piece)
            self.offset += len(piece)
            download.digest.update(piece)
            download.bar.advance(len(piece))

    def start_over(self) -> bool:
        return False  # what went to stdout is gone: a 200 after a cut is read past what was sent


class HashBehind:
    """Hashes a file's bytes from `start` on as they are written, in a thread of its own, reading
    them back from the page cache: the hash runs beside the transfer instead of after each piece."""

    def __init__(self, fd: int, digest: Any, start: int) -> None:
        self.fd, self.digest, self.hashed, self.written = fd, digest, start, start
        self.ended = False
        self.error: OSError | None = None
        self.wake = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True, name="hash-behind")
        self.thread.start()

    def advance(self, n: int) -> None:
        with self.wake:
            self.written += n
            self.wake.notify()

    def finish(self) -> None:
        with self.wake:
            self.ended = True
            self.wake.notify()
        self.thread.join()
        if self.error is not None:
            raise FileError(self.error)

    def _run(self) -> None:
        buffer = bytearray(READ)
        view = memoryview(buffer)
        while True:
            with self.wake:
                while self.written - self.hashed < READ and not self.ended:
                    self.wake.wait()
                upto = self.written
                if self.hashed >= upto and self.ended:
                    return
            try:
                while self.hashed < upto:
                    n = os.preadv(self.fd, [view[:min(READ, upto - self.hashed)]], self.hashed)
                    if n == 0:
                        raise OSError(errno.EIO, "the file is shorter than what was written to it")
                    self.digest.update(view[:n])
                    self.hashed += n
            except OSError as e:
                self.error = e
                return


@dataclass
class Download:
    """One sha's transfer: the hash of what the sink holds so far, carried across attempts."""

    conn: Connection
    sha: str
    sink: Sink
    bar: Transfer
    digest: Any = None

    def run(self) -> None:
        """Fill the sink with the blob (retrying, resuming), then check the whole hashes to the sha."""
        if self.digest is None:
            self.digest = hashlib.sha256()
        self.conn.attempt(f"GET {self.sha}", self._attempt)
        actual = self.digest.hexdigest()
        if actual != self.sha:
            raise Mismatch(f"sha mismatch: the {self.sink.offset} bytes received hash to {actual}")

    def _attempt(self) -> None:
        headers = {}
        if self.sink.offset:
            headers = {"Range": f"bytes={self.sink.offset}-", "If-Range": f'"{self.sha}"'}
        skip = 0
        try:
            with self.conn.getter.request("GET", f"/{self.sha}", headers) as answer:
                status = answer.status
                if status == 416 and self.sink.offset:
                    total = _range_total(answer.headers.get("content-range"))
                    if total == self.sink.offset:
                        return  # the part is the whole blob already: its hash decides
                    self._start_over()
                    raise Retryable(f"416: the partial download ({self.sink.offset} bytes) is not of this blob")
                if status == 404:
                    raise Failed("not found")
                if status not in (200, 206):
                    check_status(status, answer.text(), answer.headers.get("retry-after"))
                    raise Failed(f"{status}: not what a stor server answers to a GET")
                if status == 200 and self.sink.offset:
                    if not self.sink.start_over():
                        skip = self.sink.offset
                    else:
                        self.digest = hashlib.sha256()
                    self.bar.restart()
                elif status == 206:
                    start = _range_start(answer.headers.get("content-range"))
                    if start != self.sink.offset:
                        raise Failed(f"the server resumed at byte {start}, not {self.sink.offset}")
                if answer.length is not None:
                    self.bar.resize(answer.length + (self.sink.offset if status == 206 else 0))
                self.sink.receive(answer, self, skip)
        except FileError as e:
            raise Failed(f"cannot write: {e}") from None
        except (OSError, h11.ProtocolError) as e:
            raise Retryable(transport_reason(e), connection=True) from None

    def _start_over(self) -> None:
        if self.sink.start_over():
            self.digest = hashlib.sha256()
            self.bar.restart()


class Mismatch(Failed):
    """The bytes do not hash to the sha: never retried, never kept."""


def _range_total(value: str | None) -> int | None:
    if value and "/" in value:
        total = value.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    return None


def _range_start(value: str | None) -> int | None:
    try:
        return int(value.split()[1].split("-")[0]) if value else None
    except (IndexError, ValueError):
        return None


def fetch_to(conn: Connection, sha: str, target: Path, bar: Transfer, sync: bool) -> tuple[str, int]:
    """Download sha into target, verified: ("fetched", size), or ("present", size) when target already
    holds exactly the blob. The .part beside it is continued, and removed on a mismatch."""
    if target.is_file() and _file_sha(target) == sha:
        return "present", target.stat().st_size
    part = target.with_name(target.name + PART_SUFFIX)
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # no O_APPEND: splice refuses it
    try:
        sink = FileSink(fd)
        download = Download(conn, sha, sink, bar)
        if sink.offset:
            download.digest = _hash_of(fd, sink.offset)
            bar.advance(sink.offset)
        try:
            download.run()
        except Mismatch:
            part.unlink(missing_ok=True)
            raise
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, target)
    return "fetched", sink.offset


def _hash_of(fd: int, length: int) -> Any:
    digest = hashlib.sha256()
    offset = 0
    while offset < length and (chunk := os.pread(fd, min(READ, length - offset), offset)):
        digest.update(chunk)
        offset += len(chunk)
    return digest


def _file_sha(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _hash_of(fd, os.fstat(fd).st_size).hexdigest()
    finally:
        os.close(fd)


class Get:
    """Each sha to output/<sha> (output a directory, default .) or, for a single sha, to output as a file."""

    def __init__(self, conn: Connection, report: Reporter, output: str | None, parallel: int, sync: bool) -> None:
        self.conn, self.report, self.output, self.parallel, self.sync = conn, report, output, parallel, sync
        self.counts = {"blobs": 0, "fetched": 0, "present": 0, "failed": 0}
        self.wanted = 0
        self.bytes_received = 0
        self.started = time.monotonic()

    def run(self, shas: Iterable[str]) -> None:
        """Downloads as the shas come (stdin is read as it is written), parallel, each sha once."""
        incoming = self.conn.each(shas)
        first: list[str] = []
        into_file = False
        if self.output is not None and not self.output.endswith("/") and not Path(self.output).is_dir():
            # -o FILE for one sha, a new directory for more: the first two tell.
            first = list(itertools.islice((text for text in incoming if text is not None), 2))
            into_file = len(first) == 1
        if not into_file:
            Path(self.output or ".").mkdir(parents=True, exist_ok=True)
        seen: OrderedDict[str, None] = OrderedDict()  # the last REMEMBER shas: a repeat is not fetched again
        pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="get")
        running: dict[Future[tuple[str, int]], tuple[str, Path]] = {}
        try:
            for text in itertools.chain(first, incoming):
                if text is None:  # the list is slow to come: say what finished meanwhile
                    self._collect(running, {f for f in running if f.done()})
                    self.report.flush()
                    continue
                sha = text.lower()
                if sha in seen:
                    continue
                seen[sha] = None
                if len(seen) > REMEMBER:
                    seen.popitem(last=False)
                self.wanted += 1
                if not is_sha256(text):
                    self._finish(text, None, "failed", 0, "not a sha256 (64 hex digits)")
                    continue
                target = Path(self.output) if into_file else Path(self.output or ".") / sha  # type: ignore[arg-type]
                self.report.found(1, 0)
                running[pool.submit(self._job, sha, target)] = (sha, target)
                while len(running) >= 2 * self.parallel:
                    self._collect(running, self.conn.wait(running))
                self._collect(running, {f for f in running if f.done()})
                self.report.flush()
            while running:
                self.report.flush()
                self._collect(running, self.conn.wait(running))
        except (Interrupted, Stopped):  # Stopped: a request of this thread's own gave up for the signal
            pool.shutdown(wait=True, cancel_futures=True)
            self._collect(running, {f for f in running if f.done() and not f.cancelled()})
        finally:
            self.conn.stopping.set()  # on any way out (the server unreachable, say), what is in flight stops
            pool.shutdown(wait=True)

    def _job(self, sha: str, target: Path) -> tuple[str, int]:
        bar = self.report.transfer("get", sha, None)
        try:
            return fetch_to(self.conn, sha, target, bar, self.sync)
        finally:
            bar.done()

    def _collect(self, running: dict[Future[tuple[str, int]], tuple[str, Path]], done: set[Any]) -> None:
        for future in done:
            sha, target = running.pop(future)
            try:
                status, size = future.result()
            except Stopped:
                continue
            except Failed as e:
                self._finish(sha, target, "failed", 0, str(e))
            except OSError as e:
                self._finish(sha, target, "failed", 0, f"cannot write {e.filename or target}: {e.strerror or e}")
            else:
                self._finish(sha, target, status, size)

    def _finish(self, sha: str, target: Path | None, status: str, size: int, reason: str = "") -> None:
        self.counts["blobs"] += 1
        self.counts[status] += 1
        record: dict[str, Any] = {"sha256": sha, "path": str(target) if target else None, "size": size,
                                  "status": status}
        text = f"{sha}  {target or '-'}  {status}"
        if reason:
            record["reason"] = reason
            text += f": {reason}"
        if status == "fetched":
            self.bytes_received += size
        self.report.item(record, text)
        self.report.finished(1, size)

    @property
    def interrupted(self) -> bool:
        """A signal asked the run to stop (whatever was still to do is in not_done)."""
        return self.conn.interrupted.is_set()

    def summary(self) -> tuple[dict[str, Any], str]:
        c = self.counts
        text = (f"{c['blobs']} blobs: {c['fetched']} fetched ({size_text(self.bytes_received)}), "
                f"{c['present']} already here, {c['failed']} failed")
        not_done = self.wanted - c["blobs"]
        return run_summary(c, ("bytes_received", self.bytes_received), self.started, self.interrupted, not_done, text)


def run_cat(conn: Connection, sha: str, out: BinaryIO | None = None) -> None:
    """The blob to stdout as it comes; a cut connection is resumed at the byte it stopped at. Raises
    Mismatch (after the bytes were written: a stream cannot be taken back) or Failed."""
    if not is_sha256(sha):
        raise Failed(f"{sha[:100]!r} is not a sha256 (64 hex digits)")
    stream = out if out is not None else sys.stdout.buffer
    from stor.client.report import NO_TRANSFER

    Download(conn, sha.lower(), StreamSink(stream), NO_TRANSFER).run()
    stream.flush()
