"""`stor put`: hash files, ask which the server lacks, upload only those, in parallel.

The run is a pipeline with bounded stages, so that memory does not grow with
the number or size of the files:

- a walker thread expands the paths (directories recursively, `-` a list on
  stdin) into a bounded queue;
- a thread per CPU hashes files as it reads them (hashlib works outside the GIL),
  small files several to a job;
- hashed files wait in a batch for one `POST /exists`; a batch goes out when
  it is full, when nothing else is being hashed, or when uploaders are idle;
- the files the server lacks are uploaded by `parallel` threads: small ones in
  one request on the shared connection pool, large ones with
  `Expect: 100-continue` (stor/client/expect.py), each retried with backoff.

A sha met twice in one run (duplicate files) is uploaded once; the others
report `present` once it is stored (or fail with it). The server checks
every upload's sha, so a file changed between hashing and sending fails
(412) rather than storing something under the wrong name.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx

from stor.client.connection import (
    POLL,
    USER_ENV,
    Connection,
    Failed,
    Interrupted,
    Retryable,
    Stopped,
    Unreachable,
    UsageError,
    check_status,
    first_line,
    transport_reason,
)
from stor.client.exists import find_present
from stor.client.report import NO_TRANSFER, Reporter, Transfer, run_summary, size_text

READ = 1 << 20
EXPECT_ABOVE = 1 << 20  # bodies above this ask first (curl's threshold; the server reads smaller ones at once)
BAR_ABOVE = 4 << 20  # a file this large gets a bar of its own while it is hashed and sent
BATCH = 1000
BATCH_WAIT = 0.02  # seconds a batch may gather while uploaders are idle
FAULTS_IN_A_ROW = 4  # (at least; -j N: N) uploads failing with 5xx through their retries stop the run
GROUP_FILES, GROUP_BYTES = 64, 4 << 20  # small files are hashed this many to a job (fewer wake-ups)
REMEMBER = 65536  # shas done in this run kept to answer duplicates without asking (bounded)


@dataclass
class Item:
    path: str
    size: int = 0
    sha: str = ""
    status: str = ""
    reason: str = ""
    followers: list[Item] = field(default_factory=list)  # same sha, later in the run

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"path": self.path, "sha256": self.sha or None, "size": self.size,
                                  "status": self.status}
        if self.reason:
            record["reason"] = self.reason
        return record

    def text(self) -> str:
        status = f"failed: {self.reason}" if self.status == "failed" else self.status
        return f"{self.path}  {self.sha or '-'}  {status}"


_END = object()


def walk(paths: Iterable[str], stdin: Iterable[str]) -> Iterator[Item]:
    """Each file named, each file under each directory named (sorted, symlinked files followed,
    symlinked directories not: they could loop), and for `-` each path on stdin, one per line. What cannot
    be read comes as an item already failed."""
    for path in paths:
        if path == "-":
            for line in stdin:
                line = line.rstrip("\n")
                if line:
                    yield from _expand(line)
        else:
            yield from _expand(path)


def _expand(path: str) -> Iterator[Item]:
    try:
        st = os.stat(path)
    except OSError as e:
        yield Item(path, status="failed", reason=e.strerror or str(e))
        return
    if stat.S_ISREG(st.st_mode):
        yield Item(path, size=st.st_size)
    elif stat.S_ISDIR(st.st_mode):
        yield from _tree(path)
    else:
        yield Item(path, status="failed", reason="not a regular file or directory")


def _tree(directory: str) -> Iterator[Item]:
    """Files under directory, depth first in name order (one scandir and one stat per file)."""
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        yield Item(directory, status="failed", reason=e.strerror or str(e))
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _tree(entry.path)
            elif entry.is_file():  # a symlink to a file too
                yield Item(entry.path, size=entry.stat().st_size)
            elif not entry.is_dir():  # a symlink to a directory is left: it could loop
                yield Item(entry.path, status="failed", reason="not a regular file or directory")
        except OSError as e:
            yield Item(entry.path, status="failed", reason=e.strerror or str(e))


class Put:
    def __init__(self, conn: Connection, report: Reporter, parallel: int, filename: bool = False) -> None:
        self.conn, self.report, self.parallel, self.send_filename = conn, report, parallel, filename
        self.counts = {"files": 0, "stored": 0, "present": 0, "failed": 0}
        self.bytes_stored = 0
        self.server_faults = 0  # uploads in a row that failed with a 5xx through every retry
        self.inflight: dict[str, Item] = {}  # sha -> its first item, from its hash to its end
        self.done_shas: OrderedDict[str, str] = OrderedDict()  # sha -> "stored"/"present", most recent last
        self.started = time.monotonic()

    # The main thread: the pipeline's loop.

    def run(self, paths: Iterable[str], stdin: Iterable[str]) -> None:
        found: queue.Queue[Any] = queue.Queue(maxsize=4 * BATCH)
        threading.Thread(target=self._walk, args=(paths, stdin, found), daemon=True, name="walk").start()
        hashing: dict[Future[list[tuple[str, int] | Failed]], list[Item]] = {}
        group: list[Item] = []  # files for one hashing job: small ones go several at a time
        uploading: dict[Future[str], Item] = {}
        batch: list[Item] = []
        batch_since = 0.0  # when its first item came
        walked = False
        pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="put")
        # Hashing is CPU work: a thread per CPU, not one per upload (more only fight for the GIL).
        hashers = ThreadPoolExecutor(min(self.parallel, os.cpu_count() or 1), thread_name_prefix="hash")

        def take(item: Any) -> bool:
            """Start on one walked item; True at the walk's end."""
            if item is _END:
                hash_group()
                return True
            self.counts["files"] += 1
            self.report.found(1, item.size)
            if item.status == "failed":
                self._finish(item)
            else:
                group.append(item)
                if len(group) >= GROUP_FILES or sum(i.size for i in group) >= GROUP_BYTES:
                    hash_group()
            return False

        def hash_group() -> None:
            if group:
                hashing[hashers.submit(self._hash_all, list(group))] = list(group)
                group.clear()

        try:
            while True:
                # Hash ahead while uploads keep up: at most 2 x parallel hashing, 4 x parallel uploading.
                def room() -> bool:
                    return len(hashing) < 2 * self.parallel and len(uploading) < 4 * self.parallel \
                        and len(batch) < BATCH

                while not walked and room():
                    try:
                        walked = take(found.get_nowait())
                    except queue.Empty:
                        break
                hash_group()  # what was taken is started, whole group or not
                # A batch is asked about when full, when nothing more is being hashed, or when uploaders
                # are idle and it has gathered for BATCH_WAIT (so that a run of present files asks a
                # few times, not once per file, and a run of missing ones keeps the uploaders busy).
                now = time.monotonic()
                if batch and (len(batch) >= BATCH or not hashing
                              or (len(uploading) < self.parallel and now - batch_since >= BATCH_WAIT)):
                    for item in self._missing(batch):
                        uploading[pool.submit(self._upload, item)] = item
                    batch = []
                if not hashing and not uploading:
                    if walked:
                        return
                    try:  # a slow walk (a pipe, a network file system): wait for it
                        walked = take(found.get(timeout=POLL))
                    except queue.Empty:
                        if self.conn.interrupted.is_set():
                            raise Interrupted() from None
                    continue
                # Woken by a finished job; every 50 ms while the walk may have more to give; when the
                # batch's wait is over.
                timeout = 0.05 if not walked and room() else None
                if batch and len(uploading) < self.parallel:
                    timeout = max(0.0, min(timeout or BATCH_WAIT, batch_since + BATCH_WAIT - now))
                self.report.flush()
                for future in self.conn.wait([*hashing, *uploading], timeout):
                    if future in hashing:
                        if not batch:
                            batch_since = time.monotonic()
                        for item, outcome in zip(hashing.pop(future), future.result()):  # type: ignore[arg-type]
                            self._hashed(item, outcome, batch)
                    else:
                        self._uploaded(uploading.pop(future), future)  # type: ignore[arg-type]
        except (Interrupted, Stopped):  # Stopped: a request of this thread's own gave up for the signal
            hashers.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)
            for future, item in uploading.items():  # what did finish is said
                if future.done() and not future.cancelled() and future.exception() is None:
                    self._uploaded(item, future)
        finally:
            self.conn.stopping.set()  # on any way out (the server unreachable, say), what is in flight stops
            hashers.shutdown(wait=True)
            pool.shutdown(wait=True)

    def _walk(self, paths: Iterable[str], stdin: Iterable[str], found: queue.Queue[Any]) -> None:
        try:
            for item in walk(paths, stdin):
                if self.conn.stopping.is_set():
                    return
                found.put(item)
        finally:
            found.put(_END)

    def _hashed(self, item: Item, outcome: tuple[str, int] | Failed, batch: list[Item]) -> None:
        if isinstance(outcome, Failed):
            item.status, item.reason = "failed", str(outcome)
            self._finish(item)
            return
        item.sha, item.size = outcome
        first = self.inflight.get(item.sha)
        if first is not None:
            first.followers.append(item)
        elif item.sha in self.done_shas:
            item.status = "present"
            self._finish(item)
        else:
            self.inflight[item.sha] = item
            batch.append(item)

    def _missing(self, batch: list[Item]) -> list[Item]:
        """The batch's items the server lacks; those it has are finished as present."""
        present = find_present(self.conn, [item.sha for item in batch])
        missing = []
        for item in batch:
            if item.sha in present:
                item.status = "present"
                self._finish(item)
            else:
                missing.append(item)
        return missing

    def _uploaded(self, item: Item, future: Future[str]) -> None:
        try:
            item.status = future.result()
        except Failed as e:
            item.status, item.reason = "failed", str(e)
            self.server_faults = self.server_faults + 1 if e.server_fault else 0
        else:
            self.server_faults = 0
        if item.status == "stored":
            self.bytes_stored += item.size
        self._finish(item)
        if self.server_faults >= max(FAULTS_IN_A_ROW, self.parallel):
            # Not one blob's trouble but the server's (no room, a failing disk): every other upload
            # would spend its retries on it too. Stop, say why; a rerun continues.
            raise Unreachable(f"the server failed {self.server_faults} uploads in a row, through every "
                              f"retry; the last: {item.reason}")

    def _finish(self, item: Item) -> None:
        self.counts[item.status] += 1
        self.report.item(item.record(), item.text())
        self.report.finished(1, item.size)
        if not item.sha or self.inflight.get(item.sha) is not item:
            return
        del self.inflight[item.sha]
        if item.status != "failed":
            self.done_shas[item.sha] = item.status
            if len(self.done_shas) > REMEMBER:
                self.done_shas.popitem(last=False)
        for follower in item.followers:
            follower.status = "failed" if item.status == "failed" else "present"
            follower.reason = item.reason
            self._finish(follower)

    # The worker threads.

    def _hash_all(self, items: list[Item]) -> list[tuple[str, int] | Failed]:
        outcomes: list[tuple[str, int] | Failed] = []
        for item in items:
            try:
                outcomes.append(self._hash(item))
            except Failed as e:
                outcomes.append(e)
        return outcomes

    def _hash(self, item: Item) -> tuple[str, int]:
        """The file's sha and size, from one pass over its bytes as they are read."""
        bar = self.report.transfer("hash", item.path, item.size) if item.size > BAR_ABOVE else NO_TRANSFER
        try:
            digest = hashlib.sha256()
            size = 0
            with open(item.path, "rb", buffering=0) as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise Failed("not a regular file")
                while chunk := f.read(READ):
                    if self.conn.stopping.is_set():
                        raise Stopped()
                    digest.update(chunk)
                    size += len(chunk)
                    bar.advance(len(chunk))
            return digest.hexdigest(), size
        except OSError as e:
            raise Failed(f"cannot read: {e.strerror or e}") from None
        finally:
            bar.done()

    def _upload(self, item: Item) -> str:
        bar = self.report.transfer("send", item.path, item.size) if item.size > BAR_ABOVE else NO_TRANSFER
        try:
            return self.conn.attempt(f"POST {item.sha}", lambda: self._post(item, bar))
        finally:
            bar.done()

    def _post(self, item: Item, bar: Transfer) -> str:
        url = self.conn.url(f"/{item.sha}")
        headers = {"Content-Type": "application/octet-stream"}
        if self.send_filename:
            headers["X-Filename"] = quote_filename(os.path.basename(item.path))
        bar.restart()
        try:
            if item.size <= EXPECT_ABOVE:
                with open(item.path, "rb") as f:
                    body = f.read()  # its length is what is sent; the server checks its sha
                response = self.conn.http.post(url, content=body, headers=headers)
                status, text, answer = response.status_code, response.text, response.headers
            else:
                from stor.client.expect import post_expecting_continue

                headers = {**self.conn.headers, **headers, "Content-Length": str(item.size)}
                status, text, answer = post_expecting_continue(
                    self.conn.base, f"/{item.sha}", headers, lambda: self._chunks(item, bar), self.conn.timeout)
        except (httpx.TransportError, h11.ProtocolError, OSError) as e:
            if isinstance(e, FileNotFoundError) or (isinstance(e, OSError) and e.filename):
                raise Failed(f"cannot read: {e.strerror or e}") from None
            raise Retryable(transport_reason(e), connection=True) from None
        return upload_outcome(status, text, answer)

    def _chunks(self, item: Item, bar: Transfer) -> Iterator[bytes]:
        sent = 0
        with open(item.path, "rb", buffering=0) as f:
            while chunk := f.read(READ):
                if self.conn.stopping.is_set():
                    raise Stopped()
                sent += len(chunk)
                if sent > item.size:
                    raise Failed("the file grew since it was hashed")
                yield chunk
                bar.advance(len(chunk))
        if sent < item.size:  # the body would fall short of its Content-Length: the server would wait
            raise Failed("the file shrank since it was hashed")

    @property
    def interrupted(self) -> bool:
        """A signal asked the run to stop (whatever was still to do is in not_done)."""
        return self.conn.interrupted.is_set()

    def summary(self) -> tuple[dict[str, Any], str]:
        c = self.counts
        text = (f"{c['files']} files: {c['stored']} stored ({size_text(self.bytes_stored)}), {c['present']} present, "
                f"{c['failed']} failed")
        not_done = c["files"] - c["stored"] - c["present"] - c["failed"]
        return run_summary(c, ("bytes_stored", self.bytes_stored), self.started, self.interrupted, not_done, text)


def upload_outcome(status: int, text: str, headers: Any) -> str:
    """stored (201), present (200); Retryable or Failed with the server's one-line reason otherwise."""
    if status == 201:
        return "stored"
    if status == 200:
        return "present"
    if status in (401, 403):  # every other upload would be refused alike: the run stops (exit 2)
        raise UsageError(f"{status} {first_line(text)}: check --user, ${USER_ENV}, ~/.netrc")
    if status == 412 and "match" in text:
        raise Failed(f"{status} {first_line(text)} (the file changed since it was hashed?)")
    check_status(status, text, headers.get("retry-after"))
    raise Failed(f"{status} {first_line(text)}")  # a 1xx/3xx: not what a stor server answers


def quote_filename(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")
