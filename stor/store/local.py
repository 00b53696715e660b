"""The local backend: blobs on both directories of a mirrored storage pair, in the original's layout.

Writes stream: the body is hashed while it is written to a temporary file on
each target mirror, flushed to disk, verified, and only then renamed into
place, so no reader ever sees a partial or unverified blob. Blocking file
system calls run in worker threads, or on the event loop only when the
kernel's caches can answer them without waiting (stor.store.fileaccess).

Symlinks below a storage directory are never followed: a link at a layout
path (to /etc/shadow, to ../../..) or a linked AA directory would otherwise
serve or report files from outside the tree. Reads open, list and check
presence through stor.store.fileaccess (no symlink in any component; such an
entry is absent, logged once), and writes refuse to create or rename into a
linked AA/BB/CC directory (StoreError). A storage directory that is itself a
link (a common mount trick) keeps working: each is resolved once, at start,
and opened beneath the resolved path; clients and /status still see the
configured one. A later mount on that path is seen, as the resolved path is
the mount point itself; re-pointing a root link takes a restart.

Caching of locations and of hot blobs, and metrics, are layers around this
backend (stor.store.located, stor.store.hot, stor.store.metered).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import itertools
import logging
import os
import random
import re
import stat
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from stor.aio import in_thread, outcome_ignored
from stor.config import TUS_DIR_NAME, StorageSettings, UploadSettings
from stor.digest import Digest, InvalidDigest
from stor.store import tempfiles
from stor.store.base import (
    CACHED,
    BlobInfo,
    DigestMismatch,
    FileRegion,
    Health,
    Listed,
    Lookup,
    Missing,
    NoSpace,
    OUT_OF_DESCRIPTORS,
    NoWritableStorage,
    OpenBlob,
    StagedBytes,
    StorageState,
    Stored,
    StoreError,
    TooLarge,
    Unavailable,
    Upload,
)
from stor.store.durable import fsync_all, fsync_dir, make_dirs_durably, write_copies, write_file_durably
from stor.store.fileaccess import BLOCKING, CACHED_ONLY, FileAccess, WouldBlock
from stor.store.metadata import NO_META, BlobMeta, meta_relative_path, read_meta
from stor.store.pairs import StoragePair, choose_pair, make_pairs, pair_free_bytes, probe_order
from stor.store.staged import StagedCopy
from stor.store.verify import OFF, CorruptBlob, ReadVerification, hash_fd

log = logging.getLogger("stor.store")

T = TypeVar("T")

TIER = "local"

# Bytes handed to a worker thread at a time: large enough that the thread hop
# is cheap per byte, small enough that two in flight keep memory flat.
WRITE_CHUNK = 1 << 20
# A slow upload still reaches its temporary file this often, which keeps the
# file's mtime fresh so the sweep on other nodes never takes it for stale.
MAX_BUFFER_SECONDS = 10.0

# Reads of up to this many bytes are read whole while opening: one thread hop per small GET.
PREFETCH_BYTES = 256 * 1024

_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# A temporary file cannot be made in a storage: it takes no writes, the next pair does.
_UNWRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ELOOP, *_NO_SPACE_ERRNOS)
# A storage found unwritable is skipped by placement, and reported by /status, for this long; then
# it is tried again (a remount read-write is noticed without a restart).
WRITE_FAULT_SECONDS = 5.0

_HEX2 = re.compile(r"[0-9A-F]{2}")
_BLOB_NAME = re.compile(r"([0-9A-F]{64})\.dat")


class LocalStore:
    """The BlobStore of the mirrored local pairs (stor.store.base)."""

    def __init__(
        self,
        storage_pairs: Sequence[tuple[Path, Path]],
        writable_regex: re.Pattern[str],
        storage: StorageSettings,
        uploads: UploadSettings,
        sweep_period: float,
        rng: random.Random | None = None,
        verify: ReadVerification = OFF,
    ) -> None:
        self.pairs = make_pairs(storage_pairs, writable_regex)
        self.storage = storage
        self.uploads = uploads
        self.sweep_period = sweep_period
        self.rng = rng or random.Random()
        self.dirs = tuple(d for pair in self.pairs for d in pair.dirs)
        self._dir_named = {str(d): d for d in self.dirs}
        # Where each storage directory is opened: resolved once, so that a root that is a symlink works
        # while nothing below it may be one (fileaccess). What clients see stays the configured path.
        self._real = {d: os.path.realpath(d) for d in self.dirs}
        for d, real in self._real.items():
            if real != str(d):
                log.info("storage %s is read as %s (its resolved path)", d, real)
        # Storages found unwritable (read-only, refused, failing): when, and why.
        self._write_faults: dict[Path, tuple[float, str]] = {}
        self._probed: dict[Path, float] = {}  # when a write probe last succeeded
        self._sweeping: asyncio.Task[None] | None = None
        self._twin = {a: b for pair in self.pairs for a, b in (pair.dirs, pair.dirs[::-1])}
        self._writable = {d: pair.writable for pair in self.pairs for d in pair.dirs}
        self.verify = verify
        # Told of a copy found missing (its twin was read) or corrupt: the heal queue (stor.store.heal).
        # Called from the event loop or from a worker thread.
        self.on_damage: Callable[[Digest, str, Path], None] | None = None
        # Copies found corrupt by a verified read, by (storage, sha): the file's inode then. Reads skip
        # them until repaired (a repaired copy is a new file, with another inode).
        # Written from any thread (rarely), read on verified reads (a dict's get needs no lock).
        self._corrupt: dict[tuple[Path, str], int] = {}
        self._corrupt_lock = threading.Lock()

    def real_path(self, directory: Path) -> str:
        """Where a configured storage directory is opened (its path resolved once, at start)."""
        return self._real[directory]

    # ---- reads -------------------------------------------------------------

    def head(self, digest: Digest, at: str | None = None) -> Awaitable[BlobInfo | Missing]:
        return self._look(digest, None, at, reading=False)  # type: ignore[return-value]

    def open(
        self, digest: Digest, span: tuple[int, int] | None = None, at: str | None = None
    ) -> Awaitable[OpenBlob | Missing]:
        return self._look(digest, span, at, reading=True)  # type: ignore[return-value]

    async def _look(
        self, digest: Digest, span: tuple[int, int] | None, at: str | None, reading: bool
    ) -> OpenBlob | BlobInfo | Missing:
        """The blob (opened when reading) in one storage (at), or found by probing them all in the original's order.

        Each step is first tried on the event loop with CACHED_ONLY file
        access, and run in a worker thread only when that would wait for the disk.
        """
        # Whether the bytes of a whole blob are checked against its sha (integrity.verify_reads).
        check = reading and self.verify.fraction > 0.0 and span is None and self.verify.wanted()
        if at is not None:
            # Only a configured storage is trusted: a remembered location may come from a shared cache.
            directory = self._dir_named.get(at)
            if directory is None:
                return _NOT_THERE
            args = (directory, digest, span, reading, check, CACHED)
            there = _from_caches(self._look_in_quietly, args)
            if there is _WOULD_WAIT:
                there = await in_thread(self._look_in_quietly, *args, BLOCKING)
            return _NOT_THERE if there is None else cast("OpenBlob | BlobInfo", there)
        started = time.perf_counter()
        probed = _from_caches(self._probe, (digest, span, reading, check))
        if probed is _WOULD_WAIT:
            probed = await in_thread(self._probe, digest, span, reading, check, BLOCKING)
        found, probes = cast("tuple[OpenBlob | BlobInfo | None, int]", probed)
        lookup = Lookup("probe", probes, time.perf_counter() - started)
        if found is None:
            return Missing(lookup)
        # Just made by this look-up, and not handed out yet.
        (found.info if isinstance(found, OpenBlob) else found).lookup = lookup
        return found

    def _look_in_quietly(
        self, directory: Path, digest: Digest, span: tuple[int, int] | None, reading: bool, check: bool,
        lookup: Lookup, files: FileAccess,
    ) -> OpenBlob | BlobInfo | None:
        try:
            return self._look_in(directory, digest, span, reading, check, files, lookup)
        except (OSError, _CorruptCopy):
            return None  # the full look-up that follows reports the fault, or finds the other mirror

    def _probe(
        self, digest: Digest, span: tuple[int, int] | None, reading: bool, check: bool, files: FileAccess
    ) -> tuple[OpenBlob | BlobInfo | None, int]:
        probes = 0
        faults: list[str] = []
        missed: list[Path] = []
        corrupt = 0
        for directory in probe_order(self.pairs, self.rng):
            probes += 1
            try:
                found = self._look_in(directory, digest, span, reading, check, files)
            except OSError as e:
                if e.errno in OUT_OF_DESCRIPTORS:
                    raise Unavailable("out of file descriptors") from e
                # A failing disk must not hide the other mirror's copy, nor pass for "not found".
                log.error("cannot read %s: %s", directory / digest.relative_path, e)
                faults.append(f"{directory}: {e.strerror or e}")
                continue
            except _CorruptCopy:
                corrupt += 1  # reported; the other mirror, or another pair, may hold a good copy
                continue
            if found is not None:
                if self.on_damage is not None and self._writable[directory]:
                    self._check_twin(digest, directory, missed, files)
                return found, probes
            missed.append(directory)
        if faults:
            raise StoreError(f"{digest} not readable: {'; '.join(faults)}")
        if corrupt:
            raise CorruptBlob(digest, f"every copy found ({corrupt}) is corrupt")
        return None, probes

    def _check_twin(self, digest: Digest, directory: Path, missed: list[Path], files: FileAccess) -> None:
        """A blob read from one mirror whose twin lacks it (looked for already, or now): its repair is asked for."""
        twin = self._twin[directory]
        try:
            missing = twin in missed or not files.is_file(f"{self._real[twin]}/{digest.relative_path}")
        except WouldBlock:
            return  # not without waiting for the disk: the blob is found, and the next read checks again
        if missing:
            assert self.on_damage is not None
            self.on_damage(digest, "missing", twin)

    def _look_in(
        self, directory: Path, digest: Digest, span: tuple[int, int] | None, reading: bool, check: bool,
        files: FileAccess, lookup: Lookup = CACHED,
    ) -> OpenBlob | BlobInfo | None:
        """The blob in one storage directory (opened when reading); None if it is not there, OSError on a fault.

        check: the bytes are to be checked against the sha: now when they
        are read ahead (_CorruptCopy if they do not match), else by whoever
        sends them, before the last byte (FileRegion.check).
        """
        real = self._real[directory]
        path = f"{real}/{digest.relative_path}"
        fd = files.open(path)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EISDIR, "not a regular file", path)
            if check and self._corrupt.get((directory, digest.hex)) == st.st_ino:
                raise _CorruptCopy()  # found so before, and not repaired yet
            meta = read_meta(f"{real}/{meta_relative_path(digest)}", files)
            info = BlobInfo(digest, st.st_size, st.st_mtime, meta, TIER, path, str(directory), lookup, not files.waits)
            if not reading:
                os.close(fd)
                return info
            offset, length = span if span is not None else (0, st.st_size)
            region = FileRegion(fd, offset, length)
            if length <= PREFETCH_BYTES:
                region.data = data = files.pread(fd, length, offset)
                if len(data) < length:
                    raise StoreError(f"{path} is shorter than its {st.st_size} bytes")
                if check and hashlib.sha256(data).hexdigest() != digest.hex:
                    self._found_corrupt(digest, directory, st.st_ino)
                    raise _CorruptCopy()
            elif check:
                region.check = functools.partial(self._check_region, digest, directory, region, st.st_ino)
        except BaseException:
            os.close(fd)
            raise
        return OpenBlob(info, region)

    async def _check_region(self, digest: Digest, directory: Path, region: FileRegion, inode: int) -> None:
        """CorruptBlob unless the region's file hashes to its sha (it is read alongside the sending)."""
        fd = os.dup(region.fd)  # the sender may close the region's own while this thread reads
        actual = await in_thread(_hash_and_close, fd, region.length)
        if actual != digest.hex:
            self._found_corrupt(digest, directory, inode)
            raise CorruptBlob(digest, f"the copy in {directory} hashes to {actual}; the answer was cut short")

    def _found_corrupt(self, digest: Digest, directory: Path, inode: int) -> None:
        """A verified read found this copy corrupt: reads skip it from now on, and its repair is asked for."""
        with self._corrupt_lock:
            self._corrupt[(directory, digest.hex)] = inode
            if len(self._corrupt) > CORRUPT_COPIES_REMEMBERED:
                del self._corrupt[next(iter(self._corrupt))]
        log.error("%s in %s does not hash to its sha: not delivered", digest, directory)
        if self.on_damage is not None:
            self.on_damage(digest, "corrupt", directory)

    async def contains(self, digests: list[Digest]) -> list[bool]:
        return await in_thread(self._contains, digests)

    async def delete(self, digest: Digest) -> tuple[str, ...]:
        return await in_thread(self._delete_blocking, digest)

    def _delete_blocking(self, digest: Digest) -> tuple[str, ...]:
        """Every copy and its metadata unlinked, under the digest's lock (a commit completing a pair
        meanwhile would leave a copy); the directories that held one."""
        removed = []
        with tempfiles.digest_lock([self._real[d] for d in self.dirs], digest.hex):
            for directory, real in self._real.items():
                path = f"{real}/{digest.relative_path}"
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{real}/{meta_relative_path(digest)}")
                fsync_dir(os.path.dirname(path))
                removed.append(str(directory))
        return tuple(removed)

    def _contains(self, digests: list[Digest]) -> list[bool]:
        reals = self._real.values()
        return [any(BLOCKING.is_file(f"{real}/{digest.relative_path}") for real in reals) for digest in digests]

    async def iter_digests(self, after: str = "") -> AsyncIterator[Digest]:
        """Every blob once, in lexical order, merged over all storages, a batch at a time per thread hop.

        With after, only the blobs after it: directories wholly before it are not listed (a resumed walk,
        `stor s3-backfill`, or a page of the S3 API's listing starts where it left off without listing
        the tree up to there).
        """
        async for digest in _batched((digest for digest, _ in self._walk(after.upper()))):
            yield digest

    async def list_blobs(self, after: str = "") -> AsyncIterator[Listed]:
        async for listed in _batched(self._listed(after.upper())):
            yield listed

    def _listed(self, bound: str) -> Iterator[Listed]:
        for digest, path in self._walk(bound):
            try:
                st = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone since it was listed
            yield Listed(digest, st.st_size, st.st_mtime)

    def _walk(self, bound: str) -> Iterator[tuple[Digest, str]]:
        """The blobs whose upper-case hex sorts after bound, in order, each with a path of a copy (blocking)."""
        for first in self._subdirs(()):
            if first < bound[0:2]:
                continue
            for second in self._subdirs((first,)):
                if first + second < bound[0:4]:
                    continue
                for third in self._subdirs((first, second)):
                    if first + second + third < bound[0:6]:
                        continue
                    for digest, path in self._blobs_in((first, second, third)):
                        if digest.upper > bound:
                            yield digest, path

    def _subdirs(self, parents: tuple[str, ...]) -> list[str]:
        names: set[str] = set()
        for root in self._real.values():
            names.update(
                e.name for e in _entries(root, parents) if _HEX2.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
            )
        return sorted(names)

    def _blobs_in(self, parents: tuple[str, ...]) -> list[tuple[Digest, str]]:
        """The blobs in one leaf directory of every storage, in order, each with the path of its first copy."""
        prefix = "".join(parents)
        paths: dict[str, str] = {}
        for root in self._real.values():
            for entry in _entries(root, parents):
                match = _BLOB_NAME.fullmatch(entry.name)
                if match is not None and match.group(1).startswith(prefix) and entry.is_file(follow_symlinks=False):
                    # The entry's own path is its bare name (listed from a descriptor): the copy's path in full.
                    paths.setdefault(match.group(1), "/".join((root, *parents, entry.name)))
        blobs = []
        for sha in sorted(paths):
            with contextlib.suppress(InvalidDigest):
                blobs.append((Digest.parse(sha), paths[sha]))
        return blobs

    # ---- health and lifetime -----------------------------------------------

    async def health(self) -> Health:
        return Health(storages=tuple(await in_thread(self._storage_states)))

    def _storage_states(self) -> list[StorageState]:
        """Every storage directory and what is wrong with it, if anything (blocking)."""
        states = []
        for pair in self.pairs:
            for d in pair.dirs:
                problems: list[str] = []
                free: int | None = None
                total: int | None = None
                if not d.is_dir():
                    problems.append(f"Storage {d} isn't a directory")
                else:
                    if self.storage.require_mount_points and _mount_point(d) == Path("/"):
                        problems.append(f"Storage {d} is not mounted")
                    try:
                        st = os.statvfs(d)
                        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
                    except OSError as e:
                        problems.append(f"Storage {d} cannot be read: {e.strerror}")
                fault = self._probe_writable(d, time.monotonic()) if pair.writable and not problems else None
                states.append(
                    StorageState(str(d), pair.index, pair.writable and fault is None, tuple(problems), free, total, fault)
                )
        return states

    async def start(self) -> None:
        self._sweeping = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None

    async def _sweep_forever(self) -> None:
        """Remove temporary files left by crashed uploads: now, then every sweep period."""
        while True:
            try:
                removed = await in_thread(tempfiles.sweep, self.dirs, self.uploads.tempfile_max_age)
                if removed:
                    log.info("swept %d stale upload temporary files", removed)
            except Exception:
                log.exception("temporary file sweep failed")
            await asyncio.sleep(self.sweep_period)

    # ---- writes ------------------------------------------------------------

    async def begin(
        self, expected: Digest | None, length: int | None, meta: BlobMeta = NO_META, staged: StagedBytes | None = None,
    ) -> Upload | Stored:
        # Uploads of one digest run side by side, each into temporary files of its own, and meet
        # only at commit, under a lock that every worker and node sharing the storage sees
        # (_commit_blocking): none ever waits for another's body, which a stalled or slow client
        # would hold for as long as it likes, and the blob ends up on one pair.
        if expected is not None:
            stored = self._stored_per_caches(expected)
            if stored is not None:
                return stored
        if staged is not None:
            expected = expected or Digest.parse(staged.sha256)
            adopted = await _kept(in_thread(self._plan_staged, expected, staged, meta))
            if adopted is not None:
                return adopted if isinstance(adopted, Stored) else LocalUpload(self, expected, adopted)
        plan = await _kept(in_thread(self._plan_write, expected, length, meta))
        if isinstance(plan, Stored):
            return plan
        upload = LocalUpload(self, expected, plan)
        return upload if staged is None else StagedCopy(upload, staged)

    async def staging_dirs(self, length: int | None) -> tuple[str, ...]:
        return await in_thread(self._staging_dirs, length)

    def _staging_dirs(self, length: int | None) -> tuple[str, ...]:
        """The staging directory of each mirror of the pair a write of length would go to now (blocking)."""
        free = self._free_per_pair(length, time.monotonic())
        index = choose_pair(free, self.storage.balance_threshold_bytes, self.rng)
        if index is None:
            raise NoSpace("Not enough space on storages")
        return tuple(f"{d}/{TUS_DIR_NAME}" for d in self.pairs[index].dirs)

    def _free_per_pair(self, length: int | None, now: float) -> list[int]:
        """What placement weighs each pair by: its free bytes after the write, 0 if a mirror cannot be written."""
        return [
            0 if any(self._write_fault(d, now) for d in pair.dirs) else pair_free_bytes(pair, length or 0)
            for pair in self.pairs
        ]

    def _plan_staged(self, expected: Digest, staged: StagedBytes, meta: BlobMeta) -> Stored | _Plan | None:
        """A plan whose files are the staged ones, when they lie one on each mirror of a writable pair
        (blocking); None when they do not (they are then copied), or when a mirror holds the blob already
        (the general plan completes the pair)."""
        presence = self._presence(expected, BLOCKING)
        stored = _stored(presence, expected)
        if stored is not None:
            return stored
        limit = self.uploads.max_blob_bytes
        if limit is not None and staged.length > limit:
            raise TooLarge(limit)
        if any(any(have) for _, have in presence):
            return None
        by_dir = {os.path.dirname(p): p for p in staged.paths}
        now = time.monotonic()
        for pair in self.pairs:
            paths = [by_dir.get(f"{d}/{TUS_DIR_NAME}") for d in pair.dirs]
            if None in paths or not pair.writable or any(self._write_fault(d, now) for d in pair.dirs):
                continue
            files: list[tuple[int, str]] = []
            try:
                for path in paths:
                    assert path is not None
                    files.append((os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), path))
            except OSError:
                for fd, _ in files:
                    os.close(fd)
                raise
            return _Plan(pair, list(pair.dirs), meta, files, staged.sha256)
        return None

    async def put(self, expected: Digest, data: bytes, meta: BlobMeta = NO_META) -> Stored:
        """A small body already in memory: the disks consulted, both mirrors written and flushed, in one thread hop.

        Each hop costs about as much CPU as the Python work of a small upload.
        A blob already complete is answered with no hop at all when the
        kernel's caches hold its directory entries.
        """
        stored = self._stored_per_caches(expected)
        if stored is not None:
            return stored
        return await in_thread(self._put_whole, expected, data, meta)

    def _put_whole(self, expected: Digest, data: bytes, meta: BlobMeta) -> Stored:
        plan = self._plan_write(expected, len(data), meta)
        if isinstance(plan, Stored):
            return plan
        writer = _MirrorWriter(plan)
        try:
            writer.absorb(data)
            return self._commit_blocking(writer, expected, plan)
        except BaseException as e:
            writer.abort()
            if isinstance(e, OSError):
                raise _storage_error(e, expected, plan.targets) from e
            raise

    def _presence(self, digest: Digest, files: FileAccess) -> list[tuple[StoragePair, list[bool]]]:
        """Each pair, and which of its mirrors hold the blob."""
        rel = digest.relative_path
        real = self._real
        return [(pair, [files.is_file(f"{real[d]}/{rel}") for d in pair.dirs]) for pair in self.pairs]

    def _stored_per_caches(self, digest: Digest) -> Stored | None:
        """The Stored of a blob already complete on a pair, when the kernel's caches can tell at once.

        A duplicate upload (a pipeline pushing a batch again) is then answered
        without the hop to a thread, which costs more than the check. None
        means "ask the disks", never "absent".
        """
        try:
            return _stored(self._presence(digest, CACHED_ONLY), digest)
        except WouldBlock:
            return None

    def _plan_write(self, expected: Digest | None, length: int | None, meta: BlobMeta) -> Stored | _Plan:
        """What an upload must do, decided in one pass over the disks (blocking).

        A Stored when the expected blob is already complete on some pair;
        otherwise the pair, the mirrors to write and the metadata to write
        with it. Raises TooLarge or NoSpace before any body byte is read.
        """
        presence = self._presence(expected, BLOCKING) if expected is not None else []
        stored = _stored(presence, expected) if expected is not None else None
        if stored is not None:
            return stored
        limit = self.uploads.max_blob_bytes
        if limit is not None and length is not None and length > limit:
            raise TooLarge(limit)
        for pair, have in presence:
            if any(have) and pair.writable:
                # Present on one mirror only: complete the pair from the verified upload, with the
                # metadata the existing copy has (else the mirrors would disagree, and reads flap).
                assert expected is not None
                missing = [d for d, h in zip(pair.dirs, have) if not h]
                files = self._open_temporaries(missing)
                if files is None:
                    break  # that mirror cannot be written now: the blob goes to a pair that can
                log.warning("blob %s is on one mirror only of pair %d; completing it", expected, pair.index)
                existing = next(d for d, h in zip(pair.dirs, have) if h)
                kept = read_meta(f"{self._real[existing]}/{meta_relative_path(expected)}", BLOCKING)
                return _Plan(pair, missing, kept, files)
        now = time.monotonic()
        free = self._free_per_pair(length, now)
        while True:
            index = choose_pair(free, self.storage.balance_threshold_bytes, self.rng)
            if index is None:
                faults = [f"{d}: {fault}" for d in self.dirs if (fault := self._write_fault(d, now))]
                if faults:
                    raise NoWritableStorage(f"No storage pair can be written now: {'; '.join(faults)}")
                raise NoSpace("Not enough space on storages")
            pair = self.pairs[index]
            files = self._open_temporaries(list(pair.dirs))
            if files is not None:
                return _Plan(pair, list(pair.dirs), meta, files)
            free[index] = 0  # try the next pair

    def _open_temporaries(self, targets: list[Path]) -> list[tuple[int, str]] | None:
        """A locked temporary file on each target; None when one of them cannot be written (it is noted)."""
        files: list[tuple[int, str]] = []
        for root in targets:
            try:
                files.append(tempfiles.create_locked(root))
                if root in self._write_faults and self._write_faults.pop(root, None) is not None:
                    log.warning("storage %s can be written again", root)
            except OSError as e:
                _discard(files)
                if e.errno in OUT_OF_DESCRIPTORS:
                    raise Unavailable("out of file descriptors") from e
                if e.errno not in _UNWRITABLE_ERRNOS:
                    raise
                self._note_write_fault(root, f"cannot write {tempfiles.temp_dir(root)}: {e.strerror}")
                return None
        return files

    def _note_write_fault(self, root: Path, reason: str) -> None:
        if root not in self._write_faults:  # logged when it starts, not at every failed try
            log.error("storage %s: %s; it takes no writes until it can be written again", root, reason)
        self._write_faults[root] = (time.monotonic(), reason)

    def _write_fault(self, root: Path, now: float) -> str | None:
        """Why root could not be written, if it could not within the last WRITE_FAULT_SECONDS."""
        fault = self._write_faults.get(root)
        if fault is None or now - fault[0] >= WRITE_FAULT_SECONDS:
            return None
        return fault[1]

    def _probe_writable(self, root: Path, now: float) -> str | None:
        """Why root cannot be written (a temporary file created and removed), at most every WRITE_FAULT_SECONDS."""
        fault = self._write_fault(root, now)
        if fault is not None:
            return fault
        probed = self._probed.get(root)
        if probed is not None and now - probed < WRITE_FAULT_SECONDS:
            return None
        files = self._open_temporaries([root])
        if files is None:
            return self._write_fault(root, now)
        _discard(files)
        self._probed[root] = now
        return None

    def _commit_blocking(self, writer: _MirrorWriter, expected: Digest | None, plan: _Plan) -> Stored:
        """Verify what the writer took and rename it into place (blocking); the caller aborts on failure.

        The data is flushed first, then, under the digest's lock, the blob is
        looked for once more: an upload of the same blob that committed
        meanwhile (through any worker or node) wins, and this one is dropped,
        so the blob is on one pair only and never written twice.
        """
        actual = writer.finish()
        if expected is not None and actual != expected.hex:
            raise DigestMismatch(expected, actual)
        digest = expected if expected is not None else Digest.parse(actual)
        writer.flush()
        with tempfiles.digest_lock([self._real[d] for d in self.dirs], digest.hex):
            stored = _stored(self._presence(digest, BLOCKING), digest)
            if stored is not None:
                writer.abort()
                return stored
            writer.publish(digest)
        rel = digest.relative_path
        return Stored(digest, True, tuple(f"{d}/{rel}" for d in plan.pair.dirs), str(plan.pair.dirs[0]))


@dataclass(frozen=True, slots=True)
class _Plan:
    pair: StoragePair
    targets: list[Path]
    meta: BlobMeta
    files: list[tuple[int, str]]  # a temporary file on each target: (descriptor, path)
    # Set when the files are staged bytes (stor.store.base.StagedBytes): what they hashed to as they
    # arrived. Nothing is written to them; an abort leaves them to their owner.
    staged_sha256: str | None = None


class LocalUpload:
    """A staged write to the mirrors of one pair (stor.store.base.Upload).

    Chunks are buffered up to WRITE_CHUNK and handed to a worker thread, one
    in the thread while the next arrives: bounded memory, overlapped work.
    """

    def __init__(self, store: LocalStore, expected: Digest | None, plan: _Plan) -> None:
        self.store = store
        self.expected = expected
        self.plan = plan
        self.writer = _MirrorWriter(plan)
        self.limit = store.uploads.max_blob_bytes
        self.buffer = bytearray()
        self.received = 0
        self.pending: asyncio.Future[None] | None = None
        self.last_handoff = time.monotonic()

    async def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.limit is not None and self.received > self.limit:
            raise TooLarge(self.limit)
        buf = self.buffer
        buf += chunk
        if len(buf) >= WRITE_CHUNK or (buf and time.monotonic() - self.last_handoff > MAX_BUFFER_SECONDS):
            if self.pending is not None:
                await self._settle()
            self.pending = in_thread(self.writer.absorb, bytes(buf))
            buf.clear()
            self.last_handoff = time.monotonic()

    async def _settle(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            try:
                await pending
            except OSError as e:
                raise _storage_error(e, self.expected, self.plan.targets) from e

    async def commit(self) -> Stored:
        try:
            await self._settle()
            tail = bytes(self.buffer)
            self.buffer.clear()
            try:
                return await in_thread(self._absorb_and_commit, tail)
            except OSError as e:
                raise _storage_error(e, self.expected, self.plan.targets) from e
        except BaseException:
            await self.abort()
            raise

    def _absorb_and_commit(self, tail: bytes) -> Stored:
        if tail:
            self.writer.absorb(tail)
        return self.store._commit_blocking(self.writer, self.expected, self.plan)

    async def abort(self) -> None:
        if self.pending is not None:
            outcome_ignored(self.pending)
            self.pending = None
        # The writer serialises its calls, so the abort runs after any chunk still in a
        # thread; it runs to the end even if this task is cancelled.
        with contextlib.suppress(asyncio.CancelledError):
            await in_thread(self.writer.abort)


def _stored(presence: list[tuple[StoragePair, list[bool]]], digest: Digest) -> Stored | None:
    """A blob complete on some pair (every copy found listed); None if on none."""
    complete = next((pair for pair, have in presence if all(have)), None)
    if complete is None:
        return None
    rel = digest.relative_path
    found = tuple(f"{d}/{rel}" for pair, have in presence for d, h in zip(pair.dirs, have) if h)
    return Stored(digest, False, found, str(complete.dirs[0]))


def _storage_error(e: OSError, digest: Digest | None, targets: Sequence[Path]) -> StoreError:
    what = digest or "an upload"
    if e.errno in _NO_SPACE_ERRNOS:
        return NoSpace(f"disk full while writing {what}: {e}")
    return StoreError(f"writing {what} to {', '.join(map(str, targets))}: {e}")


def _discard(files: list[tuple[int, str]]) -> None:
    """Close and remove temporary files nothing was written to yet."""
    for fd, path in files:
        os.close(fd)
        tempfiles.remove(path)


async def _kept(planning: asyncio.Future[Stored | _Plan]) -> Stored | _Plan:
    """The plan of a write; if the awaiting task is cancelled meanwhile, its temporary files are discarded."""
    try:
        return await asyncio.shield(planning)
    except asyncio.CancelledError:
        planning.add_done_callback(_discard_plan)
        raise


def _discard_plan(planning: asyncio.Future[Stored | _Plan]) -> None:
    if not planning.cancelled() and planning.exception() is None:
        plan = planning.result()
        if isinstance(plan, _Plan):
            _discard(plan.files)


_NOT_THERE = Missing(Lookup("cache"))

# Copies found corrupt that reads skip, per worker, until repaired.
CORRUPT_COPIES_REMEMBERED = 10_000


class _CorruptCopy(Exception):
    """This mirror's copy does not hash to its sha (already reported): look in the next one."""


def _hash_and_close(fd: int, length: int) -> str:
    try:
        return hash_fd(fd, length)[0]
    finally:
        os.close(fd)


class _MirrorWriter:
    """Temporary files on each target mirror, fed the same bytes, hashed once.

    Every method takes the same lock, so an abort from the event loop never
    races a write still running in another thread.
    """

    def __init__(self, plan: _Plan) -> None:
        self.targets = plan.targets
        self.meta = plan.meta
        self.hasher = hashlib.sha256()
        self.files = plan.files  # opened by the plan, in the same thread call that chose the pair
        self.staged_sha256 = plan.staged_sha256
        self.lock = threading.Lock()
        self.done = False

    def absorb(self, data: bytes) -> None:
        with self.lock:
            if self.done:
                raise StoreError("upload already finished")
            if self.staged_sha256 is not None:
                raise StoreError("an upload of staged bytes takes no other bytes")
            write_copies([fd for fd, _ in self.files], data, None, self.hasher.update)

    def finish(self) -> str:
        """The hex digest of everything absorbed (of staged bytes: what they hashed to as they arrived)."""
        with self.lock:
            return self.staged_sha256 or self.hasher.hexdigest()

    def flush(self) -> None:
        """The temporary files' data to disk (before the digest's lock is taken: it can take a while)."""
        with self.lock:
            fsync_all([fd for fd, _ in self.files])

    def publish(self, digest: Digest) -> None:
        """Rename the flushed temporary files into place as digest's blob."""
        with self.lock:
            finals = [f"{root}/{digest.relative_path}" for root in self.targets]
            # Everything that can fail for lack of room happens before the first rename,
            # so a refused upload never leaves the blob visible on one mirror.
            for root, final in zip(self.targets, finals):
                make_dirs_durably(os.path.dirname(final), str(root))
            if self.meta:
                # The sidecar is in place before the blob is visible, so a reader never misses it.
                # Its directory entry is flushed with the blob's, by the directory fsync below.
                for root in self.targets:
                    write_file_durably(root, root / meta_relative_path(digest), self.meta.to_json())
            renamed: list[tuple[str, str, int]] = []
            try:
                for (fd, tmp), final in zip(self.files, finals):
                    os.rename(tmp, final)
                    renamed.append((final, tmp, os.fstat(fd).st_ino))
                    fsync_dir(os.path.dirname(final))
            except OSError:
                for final, tmp, inode in renamed:
                    _put_back(final, tmp, inode)
                raise
            self._close()

    def abort(self) -> None:
        with self.lock:
            if self.done:
                return
            if self.staged_sha256 is not None:  # the staged bytes stay their owner's
                self._close()
                return
            for _, tmp in self.files:
                try:
                    tempfiles.remove(tmp)
                except OSError as e:
                    log.error("cannot remove temporary file %s: %s", tmp, e)
            self._close()

    def _close(self) -> None:
        self.done = True
        for fd, _ in self.files:
            os.close(fd)
        self.files = []


def _mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding path, as `df` reports it."""
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def _put_back(final: str, tmp: str, inode: int) -> None:
    """Undo our own rename (the file is where it was, for the abort to remove or its owner to keep), but
    never move a copy another upload put there since."""
    try:
        if os.stat(final).st_ino == inode:
            os.rename(final, tmp)
    except OSError as e:
        log.error("cannot roll back %s: %s", final, e)


# Blobs a listing takes per thread hop: a page of 1000 keys in four hops.
WALK_BATCH = 256


async def _batched(items: Iterator[T]) -> AsyncIterator[T]:
    """A blocking iterator's items, WALK_BATCH of them per thread hop."""
    while True:
        batch = await in_thread(lambda: list(itertools.islice(items, WALK_BATCH)))
        for item in batch:
            yield item
        if len(batch) < WALK_BATCH:
            return


def _entries(root: str, parents: tuple[str, ...]) -> list[os.DirEntry[str]]:
    """The entries of root/parents, reached through no symlink; none if it is not a directory there."""
    fd = BLOCKING.open_directory("/".join((root, *parents)))
    if fd is None:
        return []
    try:
        with os.scandir(fd) as listing:
            return list(listing)
    finally:
        os.close(fd)


_WOULD_WAIT = object()


def _from_caches(step: Callable[..., T], args: tuple[Any, ...]) -> T | object:
    """step(*args, CACHED_ONLY): what the kernel's caches answer at once; _WOULD_WAIT when the disk
    would have to (the caller then runs step(*args, BLOCKING) in a thread). Not a coroutine: this is
    on every read, and a coroutine frame costs more than the call."""
    try:
        return step(*args, CACHED_ONLY)
    except WouldBlock:
        return _WOULD_WAIT
