"""S3 multipart uploads on the storage: parts kept where any worker or node finds them, committed when whole.

Knows nothing of HTTP or XML (stor.s3api.multipart_ops speaks S3 over it).

An upload is a directory in the multipart directory (shared storage):
`upload.json` (its record: the key's sha, metadata, where its bytes wait),
`lock` (flock: shared while a part is written, exclusive to complete, abort
or sweep it), `geometry` (the part size, fixed by the first full-sized part),
per part `<n>.part` (its record: size, sha256, where its bytes are) and
`<n>.lock` (held while part n is written: two writers of one part would mix
their bytes), and `hash` with `hash.lock` (the running hash below).

The bytes wait where the store asks (BlobStore.staging_dirs: for local pairs
one directory on each mirror of the pair the blob will go to). Clients cut
a file into parts of one size and a smaller last one, so a part of the
upload's part size P (or a smaller one, the last) is written straight into
`<id>.s3mp` at (n-1)*P: when the parts listed at completion are 1..N, all of
size P but the last, that file is the object, and the commit hands it to the
store as StagedBytes (renamed into place by the local store, no byte copied).
Any other part (larger than P, or P not known yet) goes to a file of its
own, and such an upload is committed by copying its parts, in order, through
the store's staged write. Either way nothing becomes visible unless the
whole hashes to the key's sha; an upload whose parts do not stays open.

The whole is hashed as its leading parts arrive: after each part of the
part size, the request that wrote it takes the running hash (its SHA-256
state saved in `hash`, stor.sha256state) over the parts that now follow
it, read back from the page cache, so that a completion hashes only the
last part and whatever came after the rest. A part sent again forgets the
running hash if it covered it.

A part's ETag is `"<its sha256>-1"`, not its MD5: the bytes are hashed
with SHA-256 anyway (to check a signed payload), and the dash tells s3cmd
and rclone, which compare a dash-less ETag with their own MD5, that it is
not one. aws-cli and boto3 send the ETags back without looking at them.

A part is acknowledged once written, not flushed to the disk: a power cut
can lose a part's bytes, and then the completion fails on the hash (the
object never appears wrong) and the client uploads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stor.aio import in_thread
from stor.config import S3ApiSettings
from stor.digest import Digest
from stor.metrics import Metrics
from stor.resumable.record import (
    Locked,
    ensure_dir,
    is_upload_id,
    new_id,
    read_small_file,
    record_from_json,
    record_json,
    replace_file,
    staging_places,
    try_lock,
)
from stor.resumable.sweeping import PeriodicSweep
from stor.sha256state import STATE_FORMAT, ResumableSha256
from stor.store.base import BlobInfo, BlobStore, DigestMismatch, NoSpace, StagedBytes, Stored, TooLarge
from stor.store.durable import fsync_dir, write_copies
from stor.store.metadata import BlobMeta

log = logging.getLogger("stor.multipart")

MAX_PART_NUMBER = 10000  # S3's
OPEN, DONE = "open", "done"
SLOT_SUFFIX = ".s3mp"  # `<id>.s3mp`: the parts of the upload's part size, each at its place
PART_SUFFIX = ".s3part"  # `<id>.<n>.<token>.s3part`: a part of another size
# Received bytes are handed to a thread (hashed and written) in pieces of this size.
WRITE_PIECE = 1 << 20
# Stored bytes are read back (to hash or copy them) in pieces of this size.
READ_PIECE = 8 << 20
# A completed upload's record is kept this long, for a client whose answer to the completion was lost.
FINISHED_KEPT_SECONDS = 3600.0
# Leftovers of an upload whose directory is gone (or never got its record) are removed once this old.
ORPHAN_SECONDS = 3600.0

_RECORD, _LOCK, _GEOMETRY = "upload.json", "lock", "geometry"
_HASH, _HASH_LOCK = "hash", "hash.lock"  # the running hash (RunningHash) and its lock


class MultipartError(Exception):
    """A request on a multipart upload refused; the upload is as it was."""


class NoSuchUpload(MultipartError):
    """No such upload in progress (never was, aborted, completed, expired, or of another key)."""


class InvalidPart(MultipartError):
    """A part listed at completion is not stored, or is stored with another ETag."""


class InvalidPartOrder(MultipartError):
    pass


class EntityTooSmall(MultipartError):
    pass


class PartDigestMismatch(MultipartError):
    def __init__(self, kind: str) -> None:
        super().__init__(f"the part's {kind} is not the one the request declared")
        self.kind = kind  # "sha256" or "md5"


class Busy(MultipartError):
    """Another request holds what this one needs (the same part being written, a completion under way)."""


class TooManyUploads(MultipartError):
    pass


class IncompleteBody(MultipartError):
    pass


@dataclass(slots=True)
class MultipartRecord:
    id: str
    digest: str  # the key's sha, hex
    created: float
    staging: list[str]  # where the bytes wait: one directory per copy
    content_type: str | None = None
    filename: str | None = None
    user: list[list[str]] = field(default_factory=list)
    status: str = OPEN
    finished: float | None = None

    @property
    def meta(self) -> BlobMeta:
        return BlobMeta(self.content_type, self.filename, tuple((k, v) for k, v in self.user))


@dataclass(slots=True)
class PartRecord:
    number: int
    size: int
    sha256: str
    last_modified: float
    file: str | None  # the name of its own bytes files (in each staging directory); None: in the slot file

    @property
    def etag(self) -> str:
        return f"{self.sha256}-1"


@dataclass(slots=True)
class RunningHash:
    parts: int  # the slot file's parts 1..parts are hashed
    state: str  # ResumableSha256's state there, hex
    format: str  # stor.sha256state.STATE_FORMAT: a state of another format (machine) is not taken up


@dataclass(frozen=True, slots=True)
class PartInfo:
    number: int
    size: int
    etag: str  # without quotes
    sha256: str
    last_modified: float


class MultipartUploads:
    def __init__(
        self,
        directory: Path,
        store: BlobStore,
        settings: S3ApiSettings,
        max_blob_bytes: int | None,
        metrics: Metrics,
        storage_roots: tuple[Path, ...] = (),
    ) -> None:
        self.root = str(directory)
        self.store = store
        self.settings = settings
        self.max_blob_bytes = max_blob_bytes
        self.metrics = metrics
        # Where bytes files may lie (the store's staging directories, or the root), for the sweep of leftovers.
        self.staging_places = staging_places(self.root, storage_roots)
        self._sweeper = PeriodicSweep(self.sweep, settings.sweep_period, "abandoned multipart uploads", log)

    # ---- life cycle --------------------------------------------------------

    def start(self) -> None:
        self._sweeper.start()

    async def close(self) -> None:
        await self._sweeper.close()

    # ---- the operations ----------------------------------------------------

    async def create(self, digest: Digest, meta: BlobMeta) -> MultipartRecord:
        if await in_thread(self._count) >= self.settings.max_multipart_uploads:
            raise TooManyUploads(f"at most {self.settings.max_multipart_uploads}; complete or abort some")
        staging = await self.store.staging_dirs(None) or (self.root,)
        record = MultipartRecord(
            id=new_id(), digest=digest.hex, created=time.time(), staging=list(staging),
            content_type=meta.content_type, filename=meta.filename, user=[[k, v] for k, v in meta.user],
        )
        await in_thread(self._create_blocking, record)
        self.metrics.incr("s3.multipart.created.count")
        return record

    async def upload_part(
        self, upload_id: str, digest: Digest, number: int, payload: AsyncIterator[bytes], length: int,
        sha256: str | None, md5: bytes | None,
    ) -> PartInfo:
        """The part's bytes stored (replacing an earlier part of that number once they are all in and check)."""
        if not 1 <= number <= MAX_PART_NUMBER:
            raise MultipartError(f"part numbers are 1 to {MAX_PART_NUMBER}")
        held = await in_thread(self._hold_part, upload_id, digest, number, length)
        try:
            await self._check_space(length, held.record.staging)
            fds = await in_thread(held.open_bytes)
            try:
                sha, md5_hasher = hashlib.sha256(), hashlib.md5() if md5 is not None else None
                received = await _receive(payload, fds, held.position, length, sha, md5_hasher)
            finally:
                for fd in fds:
                    os.close(fd)
            if received != length:
                raise IncompleteBody(f"{received} of the declared {length} bytes")
            actual = sha.hexdigest()
            if sha256 is not None and actual != sha256:
                raise PartDigestMismatch("sha256")
            if md5_hasher is not None and md5_hasher.digest() != md5:
                raise PartDigestMismatch("md5")
            part = PartRecord(number, length, actual, time.time(), held.file)
            await in_thread(held.keep, part)
            if held.file is None and length == held.geometry:
                await in_thread(self._advance_hash, held.record, length)
        except BaseException:
            await in_thread(held.discard)
            raise
        finally:
            await in_thread(held.release)
        self.metrics.incr("s3.multipart.parts.count")
        return _info(part)

    async def list_parts(self, upload_id: str, digest: Digest) -> tuple[MultipartRecord, list[PartInfo]]:
        record, parts = await in_thread(self._list_parts_blocking, upload_id, digest)
        return record, [_info(p) for p in parts]

    async def complete(self, upload_id: str, digest: Digest, listed: list[tuple[int, str]]) -> None:
        """The object made of the listed parts stored under the key; DigestMismatch (the upload stays open)
        when they do not hash to it."""
        fd, record = await in_thread(self._hold_upload, upload_id, digest, True)
        try:
            if record.status == DONE:
                return  # a completion whose answer was lost, asked again
            parts = await in_thread(self._chosen_parts, record, listed)
            total = sum(p.size for p in parts)
            if self.max_blob_bytes is not None and total > self.max_blob_bytes:
                raise TooLarge(self.max_blob_bytes)
            # Stored already: answered as a PutObject of it is, without reading the parts (write-once).
            stored = isinstance(await self.store.head(digest), BlobInfo)
            created = False if stored else await self._commit(record, parts, total, digest)
            await in_thread(self._finish, record)
        finally:
            os.close(fd)
        self.metrics.incr("s3.multipart.completed.count")
        log.info("multipart upload %s complete: %s, %d bytes in %d parts%s", upload_id, digest, total, len(parts),
                 "" if created else " (stored already)")

    async def abort(self, upload_id: str, digest: Digest) -> None:
        fd, record = await in_thread(self._hold_upload, upload_id, digest, False)
        try:
            await in_thread(self._remove, record)
        finally:
            os.close(fd)
        self.metrics.incr("s3.multipart.aborted.count")
        log.info("multipart upload %s of %s aborted", upload_id, record.digest)

    async def list_uploads(self) -> list[MultipartRecord]:
        """The uploads in progress, by key (their sha) and then by id."""
        records = await in_thread(self._open_records)
        return sorted(records, key=lambda r: (r.digest, r.id))

    async def sweep(self) -> int:
        """Remove uploads untouched for multipart_expire_after (and leftovers); how many uploads expired."""
        expired = await in_thread(self._sweep_blocking, time.time())
        if expired:
            self.metrics.incr("s3.multipart.expired.count", expired)
            log.info("removed %d abandoned multipart uploads", expired)
        return expired

    # ---- committing --------------------------------------------------------

    async def _commit(self, record: MultipartRecord, parts: list[PartRecord], total: int, digest: Digest) -> bool:
        """Whether the commit stored the blob (False: it was stored meanwhile)."""
        geometry = await in_thread(self._geometry, record.id)
        if _in_slot_order(parts, geometry):
            assert geometry is not None
            slots = [self._slot_path(d, record.id) for d in record.staging]
            actual = await in_thread(self._whole_hash, record, geometry, parts)
            if actual != digest.hex:
                raise DigestMismatch(digest, actual)
            await in_thread(_truncate_all, slots, total)
            staged = StagedBytes(tuple(slots), total, digest.hex)
            upload = await self.store.begin(digest, total, record.meta, staged)
            stored = upload if isinstance(upload, Stored) else await upload.commit()
            return stored.created
        upload = await self.store.begin(digest, total, record.meta)
        if isinstance(upload, Stored):
            return False
        try:
            for part in parts:
                path, position = self._part_bytes(record, part, geometry)
                for piece in _read_pieces(path, position, part.size):
                    await upload.write(await piece)
        except BaseException:
            await upload.abort()
            raise
        return (await upload.commit()).created

    def _part_bytes(self, record: MultipartRecord, part: PartRecord, geometry: int | None) -> tuple[str, int]:
        """The file holding a part's bytes (its first copy) and where in it they start."""
        if part.file is not None:
            return f"{record.staging[0]}/{part.file}", 0
        assert geometry is not None
        return self._slot_path(record.staging[0], record.id), (part.number - 1) * geometry

    def _chosen_parts(self, record: MultipartRecord, listed: list[tuple[int, str]]) -> list[PartRecord]:
        """The parts the completion lists, checked: stored with those ETags, in order, all but the last large."""
        numbers = [n for n, _ in listed]
        if any(b <= a for a, b in zip(numbers, numbers[1:])):
            raise InvalidPartOrder("parts listed out of order")
        parts = []
        for number, etag in listed:
            part = self._load_part(record.id, number)
            if part is None or etag.strip().strip('"').lower() != part.etag:
                raise InvalidPart(f"part {number}" + (" is not stored" if part is None else "'s ETag differs"))
            parts.append(part)
        small = next((p for p in parts[:-1] if p.size < self.settings.min_part_bytes), None)
        if small is not None:
            raise EntityTooSmall(f"part {small.number} has {small.size} bytes; each part but the last needs at "
                                 f"least {self.settings.min_part_bytes}")
        return parts

    # ---- blocking steps (in a thread) -------------------------------------

    def _dir(self, upload_id: str) -> str:
        return f"{self.root}/{upload_id}"

    @staticmethod
    def _slot_path(staging: str, upload_id: str) -> str:
        return f"{staging}/{upload_id}{SLOT_SUFFIX}"

    def _count(self) -> int:
        ensure_dir(self.root)
        with os.scandir(self.root) as entries:
            return sum(1 for e in entries if is_upload_id(e.name))

    def _create_blocking(self, record: MultipartRecord) -> None:
        for directory in record.staging:
            ensure_dir(directory)
        directory = self._dir(record.id)
        os.mkdir(directory)
        try:
            os.close(os.open(f"{directory}/{_LOCK}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
            replace_file(f"{directory}/{_RECORD}", record_json(record), durable=True)
            fsync_dir(directory)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def _load(self, upload_id: str) -> MultipartRecord | None:
        if not is_upload_id(upload_id):
            return None
        data = read_small_file(f"{self._dir(upload_id)}/{_RECORD}")
        if data is None:
            return None
        try:
            return record_from_json(MultipartRecord, data)
        except (ValueError, TypeError):
            log.error("multipart upload %s: unreadable record", upload_id)
            return None

    def _current(self, upload_id: str, digest: Digest, finished_ok: bool = False) -> MultipartRecord:
        record = self._load(upload_id)
        if record is None or record.digest != digest.hex or (record.status == DONE and not finished_ok):
            raise NoSuchUpload()
        return record

    def _hold_upload(self, upload_id: str, digest: Digest, finished_ok: bool) -> tuple[int, MultipartRecord]:
        """The upload's lock held exclusively (Busy while a part is written), and its record as it then is."""
        self._current(upload_id, digest, finished_ok)
        fd = _open_lock(f"{self._dir(upload_id)}/{_LOCK}")
        try:
            try_lock(fd, fcntl.LOCK_EX)
            return fd, self._current(upload_id, digest, finished_ok)
        except Locked:
            os.close(fd)
            raise Busy("parts of the upload are being written") from None
        except BaseException:
            os.close(fd)
            raise

    def _hold_part(self, upload_id: str, digest: Digest, number: int, length: int) -> _HeldPart:
        self._current(upload_id, digest)
        directory = self._dir(upload_id)
        fds: list[int] = []
        try:
            fds.append(_open_lock(f"{directory}/{_LOCK}"))
            try_lock(fds[0], fcntl.LOCK_SH)
            fds.append(_open_lock(f"{directory}/{number}.lock", create=True))
            try_lock(fds[1], fcntl.LOCK_EX)
            record = self._current(upload_id, digest)  # as it is now that nothing can end it
            geometry = self._geometry(upload_id)
            if geometry is None and length >= self.settings.min_part_bytes:
                geometry = self._fix_geometry(upload_id, length)
            in_slot = geometry is not None and length <= geometry
            return _HeldPart(self, record, number, fds, geometry, (number - 1) * geometry if in_slot else 0,
                             None if in_slot else f"{upload_id}.{number}.{new_id()[:8]}{PART_SUFFIX}")
        except Locked:
            _close_all(fds)
            raise Busy(f"part {number} is being written by another request, or the upload is being completed") \
                from None
        except BaseException:
            _close_all(fds)
            raise

    def _geometry(self, upload_id: str) -> int | None:
        data = read_small_file(f"{self._dir(upload_id)}/{_GEOMETRY}", 32)
        return int(data) if data else None

    def _fix_geometry(self, upload_id: str, size: int) -> int:
        """The upload's part size: size, unless another part fixed it first (a link is made once)."""
        directory = self._dir(upload_id)
        tmp = f"{directory}/{_GEOMETRY}.{new_id()[:8]}"
        with open(tmp, "x") as f:
            f.write(str(size))
        try:
            os.link(tmp, f"{directory}/{_GEOMETRY}")
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        geometry = self._geometry(upload_id)
        assert geometry is not None
        return geometry

    # The running hash: the slot file's leading parts hashed as they arrive, so that a completion
    # hashes only what is left (the last part, parts that came out of order after the rest).

    def _hash_lock(self, upload_id: str, wait: bool) -> int | None:
        """The upload's hash lock held (its descriptor); None when another request holds it and wait is False."""
        fd = _open_lock(f"{self._dir(upload_id)}/{_HASH_LOCK}", create=True)
        try:
            if wait:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                try_lock(fd, fcntl.LOCK_EX)
            return fd
        except Locked:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise

    def _load_hash(self, upload_id: str) -> tuple[int, ResumableSha256]:
        """How many leading parts the running hash covers, and the hash (none: 0, a fresh one)."""
        data = read_small_file(f"{self._dir(upload_id)}/{_HASH}")
        if data is not None:
            try:
                running = record_from_json(RunningHash, data)
                if running.format == STATE_FORMAT:
                    return running.parts, ResumableSha256.from_state(bytes.fromhex(running.state))
            except (ValueError, TypeError):
                pass
        return 0, ResumableSha256()

    def _hash_slot(self, record: MultipartRecord, hasher: ResumableSha256, start: int, end: int) -> None:
        """The slot file's bytes from start to end into hasher."""
        fd = os.open(self._slot_path(record.staging[0], record.id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for piece in _pieces(fd, start, end - start):
                hasher.update(piece)
        finally:
            os.close(fd)

    def _advance_hash(self, record: MultipartRecord, geometry: int) -> None:
        """The running hash taken over the parts of the part size that now follow it (blocking); nothing
        when another request is at it (it goes on, or the completion does)."""
        fd = self._hash_lock(record.id, wait=False)
        if fd is None:
            return
        try:
            hashed, hasher = self._load_hash(record.id)
            number = hashed
            while True:
                part = self._load_part(record.id, number + 1)
                if part is None or part.file is not None or part.size != geometry:
                    break
                number += 1
            if number == hashed:
                return
            self._hash_slot(record, hasher, hashed * geometry, number * geometry)
            state = hasher.state()
            if state is not None:
                replace_file(f"{self._dir(record.id)}/{_HASH}",
                             record_json(RunningHash(number, state.hex(), STATE_FORMAT)))
        finally:
            os.close(fd)

    def _forget_hash(self, upload_id: str, number: int) -> None:
        """Part number is sent again: a running hash over it is of bytes that are going."""
        fd = self._hash_lock(upload_id, wait=True)
        assert fd is not None
        try:
            hashed, _ = self._load_hash(upload_id)
            if hashed >= number:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self._dir(upload_id)}/{_HASH}")
        finally:
            os.close(fd)

    def _whole_hash(self, record: MultipartRecord, geometry: int, parts: list[PartRecord]) -> str:
        """The SHA-256 of the slot file's parts 1..N (blocking): the running hash, finished."""
        fd = self._hash_lock(record.id, wait=True)
        assert fd is not None
        try:
            full = len(parts) if parts[-1].size == geometry else len(parts) - 1
            hashed, hasher = self._load_hash(record.id)
            if hashed > full:  # it went past the parts completed: start again
                hashed, hasher = 0, ResumableSha256()
            total = (len(parts) - 1) * geometry + parts[-1].size
            self._hash_slot(record, hasher, hashed * geometry, total)
            return hasher.hexdigest()
        finally:
            os.close(fd)

    def _load_part(self, upload_id: str, number: int) -> PartRecord | None:
        data = read_small_file(f"{self._dir(upload_id)}/{number}.part")
        if data is None:
            return None
        try:
            return record_from_json(PartRecord, data)
        except (ValueError, TypeError):
            return None

    def _parts(self, upload_id: str) -> list[PartRecord]:
        parts = []
        with os.scandir(self._dir(upload_id)) as entries:
            for entry in entries:
                stem, dot, suffix = entry.name.partition(".")
                if suffix == "part" and stem.isdigit():
                    part = self._load_part(upload_id, int(stem))
                    if part is not None:
                        parts.append(part)
        return sorted(parts, key=lambda p: p.number)

    def _list_parts_blocking(self, upload_id: str, digest: Digest) -> tuple[MultipartRecord, list[PartRecord]]:
        record = self._current(upload_id, digest)
        return record, self._parts(upload_id)

    def _finish(self, record: MultipartRecord) -> None:
        """The upload recorded as completed, and its bytes (those the commit did not take) removed."""
        record.status, record.finished = DONE, time.time()
        directory = self._dir(record.id)
        replace_file(f"{directory}/{_RECORD}", record_json(record), durable=True)
        fsync_dir(directory)
        self._remove_bytes(record)
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name not in (_RECORD, _LOCK):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def _remove_bytes(self, record: MultipartRecord) -> None:
        for directory in record.staging:
            for path in _bytes_files(directory, record.id):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _remove(self, record: MultipartRecord) -> None:
        """The upload gone: its bytes first, then its directory (a crash between leaves a directory the sweep ends)."""
        self._remove_bytes(record)
        directory = self._dir(record.id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{directory}/{_RECORD}")
        shutil.rmtree(directory, ignore_errors=True)

    def _open_records(self) -> list[MultipartRecord]:
        records = []
        if not os.path.isdir(self.root):
            return records
        with os.scandir(self.root) as entries:
            for entry in entries:
                record = self._load(entry.name)
                if record is not None and record.status == OPEN:
                    records.append(record)
        return records

    def _last_touched(self, upload_id: str, record: MultipartRecord) -> float:
        """When the upload was created or last got a part (a part's record is made in its directory)."""
        return max(record.created, os.stat(self._dir(upload_id)).st_mtime)

    def _sweep_blocking(self, now: float) -> int:
        if not os.path.isdir(self.root):
            return 0
        expired = 0
        known: set[str] = set()
        with os.scandir(self.root) as entries:
            names = [e.name for e in entries if is_upload_id(e.name)]
        for upload_id in names:
            known.add(upload_id)
            try:
                expired += self._sweep_upload(upload_id, now)
            except Locked:
                continue  # being written now: not abandoned
            except OSError as e:
                log.warning("cannot sweep multipart upload %s: %s", upload_id, e)
        for place in self.staging_places:
            self._sweep_orphans(place, known, now)
        return expired

    def _sweep_upload(self, upload_id: str, now: float) -> int:
        record = self._load(upload_id)
        directory = self._dir(upload_id)
        if record is None:  # a creation cut short before its record was written
            if now - os.stat(directory).st_mtime >= ORPHAN_SECONDS:
                shutil.rmtree(directory, ignore_errors=True)
            return 0
        if record.status == DONE:
            if record.finished is not None and now - record.finished >= FINISHED_KEPT_SECONDS:
                shutil.rmtree(directory, ignore_errors=True)
            return 0
        touched = self._last_touched(upload_id, record)
        if now - touched < self.settings.multipart_expire_after:
            return 0
        fd = _open_lock(f"{directory}/{_LOCK}")
        try:
            try_lock(fd, fcntl.LOCK_EX)
            self._remove(record)
        finally:
            os.close(fd)
        log.info("multipart upload %s of %s untouched since %s; removed", upload_id, record.digest,
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(touched)))
        return 1

    def _sweep_orphans(self, place: str, known: set[str], now: float) -> None:
        """Bytes files of uploads that are gone (removed while a crash interrupted, or never recorded)."""
        try:
            entries = list(os.scandir(place))
        except FileNotFoundError:
            return
        for entry in entries:
            if not entry.name.endswith((SLOT_SUFFIX, PART_SUFFIX)):
                continue
            upload_id = entry.name.partition(".")[0]
            if upload_id in known:
                continue
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime >= ORPHAN_SECONDS:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warning("cannot sweep %s: %s", entry.path, e)

    async def _check_space(self, length: int, staging: list[str]) -> None:
        for directory in staging:
            stat = await in_thread(os.statvfs, directory)
            if stat.f_bavail * stat.f_frsize < length:
                raise NoSpace(f"Not enough space for a part of {length} bytes in {directory}")


class _HeldPart:
    """One request's hold on part n of an upload: the upload's lock shared, the part's exclusive.

    Blocking methods (run them in a thread).
    """

    def __init__(
        self, uploads: MultipartUploads, record: MultipartRecord, number: int, locks: list[int],
        geometry: int | None, position: int, file: str | None,
    ) -> None:
        self.uploads = uploads
        self.record = record
        self.number = number
        self.locks = locks
        self.geometry = geometry
        self.position = position  # where the part's bytes go in its files
        self.file = file  # its own files' name; None: the slot file
        self.previous: PartRecord | None = None

    def _paths(self) -> list[str]:
        if self.file is None:
            return [MultipartUploads._slot_path(d, self.record.id) for d in self.record.staging]
        return [f"{d}/{self.file}" for d in self.record.staging]

    def open_bytes(self) -> list[int]:
        """The files the part is written to, after its earlier record is gone (its bytes are overwritten)."""
        directory = self.uploads._dir(self.record.id)
        self.previous = self.uploads._load_part(self.record.id, self.number)
        if self.previous is not None:
            self.uploads._forget_hash(self.record.id, self.number)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{directory}/{self.number}.part")
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_EXCL if self.file else 0)
        fds: list[int] = []
        try:
            for path in self._paths():
                fds.append(os.open(path, flags, 0o644))
        except BaseException:
            _close_all(fds)
            raise
        return fds

    def keep(self, part: PartRecord) -> None:
        directory = self.uploads._dir(self.record.id)
        replace_file(f"{directory}/{self.number}.part", record_json(part))
        previous = self.previous
        if previous is not None and previous.file is not None and previous.file != part.file:
            self._unlink(previous.file)

    def discard(self) -> None:
        """A part that failed: its own files removed (bytes in the slot file are unnamed by any record)."""
        if self.file is not None:
            self._unlink(self.file)
        previous = self.previous
        if previous is not None and previous.file is not None:
            self._unlink(previous.file)

    def _unlink(self, name: str) -> None:
        for directory in self.record.staging:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{directory}/{name}")

    def release(self) -> None:
        _close_all(self.locks)
        self.locks = []


async def _receive(
    payload: AsyncIterator[bytes], fds: list[int], position: int, length: int, sha: hashlib._Hash,
    md5: hashlib._Hash | None,
) -> int:
    """The body written to each file from position and hashed; how many bytes it had (IncompleteBody past length)."""

    def hashed(piece: bytes) -> None:
        sha.update(piece)
        if md5 is not None:
            md5.update(piece)

    received = 0
    buffer = bytearray()
    pending: asyncio.Future[None] | None = None
    try:
        async for chunk in payload:
            if received + len(buffer) + len(chunk) > length:
                raise IncompleteBody(f"more than the declared {length} bytes")
            buffer += chunk
            if len(buffer) < WRITE_PIECE:
                continue
            if pending is not None:
                await pending
            pending = in_thread(write_copies, fds, bytes(buffer), position + received, hashed)
            received += len(buffer)
            buffer.clear()
        if pending is not None:
            await pending
            pending = None
        if buffer:
            await in_thread(write_copies, fds, bytes(buffer), position + received, hashed)
            received += len(buffer)
    finally:
        if pending is not None:
            with contextlib.suppress(BaseException):
                await pending  # the files stay open until the thread is done with them
    return received


def _in_slot_order(parts: list[PartRecord], geometry: int | None) -> bool:
    """Whether the parts are the slot file's first bytes: 1..N, in it, all of its part size but the last."""
    if geometry is None:
        return False
    last = len(parts) - 1
    return all(
        p.number == i + 1 and p.file is None and (p.size == geometry if i < last else p.size <= geometry)
        for i, p in enumerate(parts)
    )


def _pieces(fd: int, position: int, length: int) -> Iterator[bytes]:
    """A file's bytes from position, in pieces (blocking); OSError when it ends before length."""
    for offset, count in _spans(position, length):
        yield _read_exactly(fd, count, offset)


def _spans(position: int, length: int) -> Iterator[tuple[int, int]]:
    """(offset, count) of each piece of length bytes from position."""
    end = position + length
    while position < end:
        count = min(READ_PIECE, end - position)
        yield position, count
        position += count


def _truncate_all(paths: list[str], length: int) -> None:
    for path in paths:
        os.truncate(path, length)


def _read_pieces(path: str, position: int, size: int) -> Iterator[asyncio.Future[bytes]]:
    """A part's bytes read in pieces, each a thread's read to await."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for offset, count in _spans(position, size):
            yield in_thread(_read_exactly, fd, count, offset)
    finally:
        os.close(fd)


def _read_exactly(fd: int, count: int, position: int) -> bytes:
    data = os.pread(fd, count, position)
    if len(data) != count:
        raise OSError(errno.EIO, f"a part's bytes end {count - len(data)} bytes early")
    return data


def _bytes_files(directory: str, upload_id: str) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return [e.path for e in entries
                    if e.name.startswith(upload_id + ".") and e.name.endswith((SLOT_SUFFIX, PART_SUFFIX))]
    except FileNotFoundError:
        return []


def _open_lock(path: str, create: bool = False) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        raise NoSuchUpload() from None


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _info(part: PartRecord) -> PartInfo:
    return PartInfo(part.number, part.size, part.etag, part.sha256, part.last_modified)
