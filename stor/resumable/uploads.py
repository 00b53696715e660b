"""Resumable uploads into the store: bytes taken in pieces over many requests, committed when whole and verified.

Knows nothing of HTTP (stor.http.tus speaks the tus protocol over it). An
upload's record and bytes live on shared storage (stor.resumable.record),
so any worker or node continues it, and a restart loses nothing received.

The bytes are hashed as they arrive, and the running SHA-256 state is kept in
the record with the offset it belongs to (stor.sha256state): the next piece,
wherever it lands, goes on from there without reading back what is stored.
Only when that state cannot be taken up (no OpenSSL, a record written on a
machine of another byte order, bytes lost in a power cut) is the stored part
re-read to rebuild it. Bytes past the recorded offset (a process killed
mid-request) are cut off when the upload is next opened: the record is the
truth, and it only ever names bytes that were written and hashed.

The bytes are written where the store asks (BlobStore.staging_dirs: for
local pairs, a file on each mirror of the pair the blob will go to, on that
mirror's filesystem), as many copies as a POST writes, and at completion
they are committed through the store's own staged write with StagedBytes:
the local store renames them into place under the sha they hashed to (no
byte copied or hashed twice, as with a POST, which hashes once as it
writes); a backend that cannot take the files (S3) reads them back and
hashes them again as it sends them. Nothing becomes visible unless it is
the blob the upload declared (or, without a declared sha, the blob it
hashed to).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stor.aio import in_thread
from stor.config import TusSettings
from stor.digest import Digest
from stor.metrics import Metrics
from stor.resumable.record import (
    DATA_SUFFIX,
    DONE,
    DONE_SUFFIX,
    FAILED,
    OPEN,
    RECORD_SUFFIX,
    Locked,
    UploadDirectory,
    UploadRecord,
    create_files,
    data_path,
    ensure_dir,
    new_id,
    open_locked,
    remove_files,
    staging_places,
)
from stor.resumable.sweeping import PeriodicSweep
from stor.sha256state import STATE_FORMAT, ResumableSha256
from stor.store.base import BlobInfo, BlobStore, DigestMismatch, NoSpace, StagedBytes, Stored, TooLarge
from stor.store.durable import write_copies
from stor.store.metadata import BlobMeta

if TYPE_CHECKING:
    from stor.events.bus import EventBus

log = logging.getLogger("stor.resumable")

# Received bytes are handed to a thread (hashed and written) in pieces of this size.
WRITE_PIECE = 1 << 20
# A long request records its progress every so many bytes: a process killed mid-request then
# loses at most this much of it (without a per-request checksum, which makes a request all or nothing).
CHECKPOINT_BYTES = 64 << 20
# Stored bytes are read back (to rebuild a hash that could not be taken up) in pieces of this size.
REHASH_PIECE = 8 << 20
# An ended upload's record is kept this long (at most expire_after), for a client whose last answer was lost.
FINISHED_KEPT_SECONDS = 3600.0
# Leftovers without a record (a creation cut short) are removed once this old.
ORPHAN_SECONDS = 3600.0

CHECKSUM_ALGORITHMS = ("sha1", "sha256", "md5")



class UploadError(Exception):
    """Something about the request or the upload's state that the client must hear (a 4xx)."""


class UnknownUpload(UploadError):
    def __init__(self) -> None:
        super().__init__("No such upload")


class UploadGone(UploadError):
    """The upload expired, or failed earlier (its bytes are gone); the message says which."""


class UploadFailed(UploadError):
    """The upload ends now without a blob: its bytes are not the declared blob (the message says how)."""


class OffsetMismatch(UploadError):
    def __init__(self, given: int, current: int) -> None:
        super().__init__(f"Upload-Offset {given} does not match the upload's offset {current}")
        self.current = current


class LengthExceeded(UploadError):
    def __init__(self, length: int) -> None:
        super().__init__(f"More bytes than the upload's length of {length}")


class BadLength(UploadError):
    """A declared length that cannot be (set twice, shorter than what is stored, ...)."""


class ChecksumMismatch(UploadError):
    def __init__(self, algorithm: str) -> None:
        super().__init__(f"The request's bytes do not match its Upload-Checksum ({algorithm}); nothing of it was kept")


class TooManyUploads(UploadError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} uploads are in progress, the most this service takes; finish or end one first")


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str  # one of CHECKSUM_ALGORITHMS
    digest: bytes


@dataclass(frozen=True, slots=True)
class Progress:
    """The uploads in progress, for /status."""

    uploads: int
    bytes: int


class _Session:
    """One request's hold on an upload: its bytes files (the first locked), record and running hash.

    Blocking methods (run them in a thread).
    """

    def __init__(
        self, directory: UploadDirectory, fds: list[int], record: UploadRecord, hasher: ResumableSha256
    ) -> None:
        self.directory = directory
        self.fds = fds
        self.record = record
        self.hasher = hasher

    def write(self, data: bytes, position: int, checksum: hashlib._Hash | None) -> None:
        if checksum is None:
            write_copies(self.fds, data, position, self.hasher.update)
            return

        def both(piece: bytes) -> None:
            self.hasher.update(piece)
            checksum.update(piece)

        write_copies(self.fds, data, position, both)

    def keep(self, offset: int, durable: bool = False) -> None:
        """Record offset (every byte before it written and hashed) with the hash state there."""
        self.record.offset = offset
        _note_hash(self.record, self.hasher)
        self.directory.save(self.record, durable)

    def cut_back(self, offset: int) -> None:
        for fd in self.fds:
            os.ftruncate(fd, offset)

    def still_staged(self) -> bool:
        """Whether every bytes file is still where the record says (no commit moved one into the store)."""
        for fd, path in zip(self.fds, self.record.paths):
            try:
                if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                    return False
            except FileNotFoundError:
                return False
        return True

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)  # the first releases the lock


class ResumableUploads:
    def __init__(
        self,
        directory: Path,
        store: BlobStore,
        settings: TusSettings,
        max_blob_bytes: int | None,
        metrics: Metrics,
        staging_roots: tuple[Path, ...] = (),
    ) -> None:
        self.directory = UploadDirectory(directory)
        self.store = store
        self.settings = settings
        self.max_blob_bytes = max_blob_bytes
        self.metrics = metrics
        # Where the store may have put bytes files (its staging directories), for the sweep of leftovers.
        self.staging_dirs = staging_places(str(directory), staging_roots)
        self._sweeper = PeriodicSweep(self.sweep, settings.sweep_period, "expired uploads", log)
        self.events: EventBus | None = None  # told of each upload completed or failed

    # ---- life cycle --------------------------------------------------------

    def start(self) -> None:
        self._sweeper.start()

    async def close(self) -> None:
        await self._sweeper.close()

    # ---- the operations ----------------------------------------------------

    async def create(self, length: int | None, metadata: str, expected: Digest | None, meta: BlobMeta) -> UploadRecord:
        """A new upload (length None: declared later); done at once when the declared blob is stored already."""
        if length is not None:
            self._check_size(length)
        now = time.time()
        record = UploadRecord(
            id=new_id(), length=length, offset=0, created=now, expires=now + self.settings.expire_after,
            metadata=metadata, paths=[], expected=expected.hex if expected is not None else None,
            content_type=meta.content_type, filename=meta.filename,
        )
        if expected is not None:
            info = await self.store.head(expected)
            if isinstance(info, BlobInfo):
                return await in_thread(self._create_stored, record, info)
        if await in_thread(self._open_uploads) >= self.settings.max_uploads:
            raise TooManyUploads(self.settings.max_uploads)
        staging = await self.store.staging_dirs(length) or (self.directory.path,)
        if length:
            await self._check_space(length, staging)
        record.paths = [data_path(d, record.id) for d in staging]
        await in_thread(self._create_blocking, record)
        self.metrics.incr("tus.created.count")
        if length == 0:
            return await self.append(record.id, 0, _no_bytes())
        return record

    async def status(self, upload_id: str) -> UploadRecord:
        record = await in_thread(self.directory.load, upload_id)
        return self._current(record)

    async def append(
        self,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        declared: int | None = None,
        checksum: Checksum | None = None,
        length: int | None = None,
    ) -> UploadRecord:
        """The body's bytes at offset; committed when they complete the upload. The record as it then is.

        declared: the body's length when known beforehand (refused at once if
        it cannot fit); length: the upload's length, when this request
        declares a deferred one. With a checksum the request is all or
        nothing; without, what arrived before the client stopped is kept.
        """
        session = await in_thread(self._open, upload_id)
        if isinstance(session, UploadRecord):  # finished already
            return await self._appended_to_finished(session, offset, body, declared)
        try:
            return await self._append(session, offset, body, declared, checksum, length)
        finally:
            await in_thread(session.close)

    async def terminate(self, upload_id: str) -> None:
        record = await in_thread(self._terminate_blocking, upload_id)
        if record.status == OPEN:
            self.metrics.incr("tus.terminated.count")
            log.info("upload %s terminated at %d bytes", upload_id, record.offset)

    async def progress(self) -> Progress:
        return await in_thread(self._progress_blocking)

    async def sweep(self) -> int:
        """Remove expired uploads (and leftovers of creations cut short); how many uploads expired."""
        expired = await in_thread(self._sweep_blocking, time.time())
        if expired:
            self.metrics.incr("tus.expired.count", expired)
            log.info("removed %d expired uploads", expired)
        return expired

    # ---- appending ---------------------------------------------------------

    async def _append(
        self, session: _Session, offset: int, body: AsyncIterator[bytes], declared: int | None,
        checksum: Checksum | None, length: int | None,
    ) -> UploadRecord:
        record = session.record
        start, start_state = record.offset, (record.hash_state, record.hash_format)
        if offset != start:
            raise OffsetMismatch(offset, start)
        if length is not None:
            self._declare_length(record, length)
        if declared is not None:
            self._check_fits(record, start + declared)
        check = hashlib.new(checksum.algorithm) if checksum is not None else None
        position = start  # bytes before it are handed to a thread
        kept = start  # bytes before it are recorded
        buffer = bytearray()
        pending: asyncio.Future[None] | None = None
        try:
            async for chunk in body:
                self._check_fits(record, position + len(buffer) + len(chunk))
                buffer += chunk
                if len(buffer) < WRITE_PIECE:
                    continue
                if pending is not None:
                    await pending
                pending = in_thread(session.write, bytes(buffer), position, check)
                position += len(buffer)
                buffer.clear()
                if check is None and position - kept >= CHECKPOINT_BYTES:
                    await pending
                    pending = None
                    await in_thread(session.keep, position)
                    kept = position
            if pending is not None:
                await pending
                pending = None
            if buffer:
                await in_thread(session.write, bytes(buffer), position, check)
                position += len(buffer)
                buffer.clear()
        except BaseException:
            # The body stopped (the client went away, stalled, sent too much) or a write failed.
            await self._stopped(session, pending, start, kept, position, None if check is not None else bytes(buffer))
            raise
        if check is not None and checksum is not None and check.digest() != checksum.digest:
            await in_thread(session.cut_back, start)
            raise ChecksumMismatch(checksum.algorithm)
        self.metrics.incr("tus.received.bytes", position - start)
        record.expires = time.time() + self.settings.expire_after
        if record.length is None or position < record.length:
            await in_thread(session.keep, position)
            return record
        try:
            return await self._complete(session)
        except UploadError:
            raise  # the upload failed for good (its record says so)
        except BaseException:
            # Not committed (no space, a storage fault): this request's bytes are taken back, so that
            # the client, told it failed, sends them again and the commit is tried again.
            record.hash_state, record.hash_format = start_state
            await in_thread(self._undo, session, start)
            raise

    async def _stopped(
        self, session: _Session, pending: asyncio.Future[None] | None, start: int, kept: int, position: int,
        tail: bytes | None,
    ) -> None:
        """After a body that stopped short: what arrived is recorded, with tail (what was not written yet);
        with tail None (a request with a checksum, all or nothing), none of it."""
        if pending is not None:
            try:
                await pending
            except Exception:
                position = kept  # what that write did is unknown: keep only what was recorded
                session.hasher = await in_thread(self._rebuild_hash, session.fds[0], kept)
                tail = b"" if tail is not None else None
        if tail:
            try:
                await in_thread(session.write, tail, position, None)
                position += len(tail)
            except Exception:
                await in_thread(session.cut_back, position)
                session.hasher = await in_thread(self._rebuild_hash, session.fds[0], position)
        if tail is None:
            await in_thread(session.cut_back, start)
        elif position == kept:
            await in_thread(session.cut_back, kept)
        else:
            await in_thread(self._keep_what_arrived, session, position)
            self.metrics.incr("tus.received.bytes", position - start)

    @staticmethod
    def _keep_what_arrived(session: _Session, position: int) -> None:
        session.cut_back(position)  # nothing past what was hashed
        session.keep(position)

    def _undo(self, session: _Session, start: int) -> None:
        record = session.record
        if not session.still_staged():
            # The commit moved the bytes into the store and failed after (a layer's work): the blob is
            # there, and the upload ended with it.
            log.warning("upload %s: its commit failed after its bytes were stored; ended as %s", record.id,
                        session.hasher.hexdigest())
            record.status, record.sha256, record.offset = DONE, session.hasher.hexdigest(), record.length or 0
            record.hash_state = record.hash_format = None
            self._finish(session)
            return
        session.cut_back(start)
        record.offset = start
        self.directory.save(record)

    def _declare_length(self, record: UploadRecord, length: int) -> None:
        if record.length is not None:
            if length != record.length:
                raise BadLength(f"Upload-Length {length}: the upload's length is {record.length} already")
            return
        if length < record.offset:
            raise BadLength(f"Upload-Length {length} is less than the {record.offset} bytes stored already")
        self._check_size(length)
        record.length = length

    def _check_fits(self, record: UploadRecord, end: int) -> None:
        if record.length is not None:
            if end > record.length:
                raise LengthExceeded(record.length)
        elif self.max_blob_bytes is not None and end > self.max_blob_bytes:
            raise TooLarge(self.max_blob_bytes)

    def _check_size(self, length: int) -> None:
        if self.max_blob_bytes is not None and length > self.max_blob_bytes:
            raise TooLarge(self.max_blob_bytes)

    @staticmethod
    async def _appended_to_finished(
        record: UploadRecord, offset: int, body: AsyncIterator[bytes], declared: int | None
    ) -> UploadRecord:
        """Bytes of an upload that has them all already: taken and dropped, and the same answer as its end.

        A repeated last request (its answer was lost), or a client that
        sends without asking first (tuspy does) an upload that was finished
        at its creation (the blob was stored already).
        """
        assert record.length is not None
        if offset > record.length:
            raise OffsetMismatch(offset, record.length)
        if declared is not None and offset + declared > record.length:
            raise LengthExceeded(record.length)
        end = offset
        async for chunk in body:
            end += len(chunk)
            if end > record.length:
                raise LengthExceeded(record.length)
        return record

    # ---- completion --------------------------------------------------------

    async def _complete(self, session: _Session) -> UploadRecord:
        record = session.record
        assert record.length is not None
        actual = session.hasher.hexdigest()
        if record.expected is not None and actual != record.expected:
            mismatch = DigestMismatch(Digest.parse(record.expected), actual)
            await self._failed(session, str(mismatch))
            raise UploadFailed(str(mismatch))
        digest = Digest.parse(actual)
        await in_thread(self._flush_record, session, record.length)
        staged = StagedBytes(tuple(record.paths), record.length, digest.hex)
        try:
            upload = await self.store.begin(digest, record.length, record.meta, staged)
            stored = upload if isinstance(upload, Stored) else await upload.commit()
        except DigestMismatch as e:
            # The stored bytes are not those that were hashed as they arrived: changed on the disk since.
            log.error("upload %s: its stored bytes changed before the commit: %s", record.id, e)
            await self._failed(session, "its stored bytes changed on the storage before the commit")
            raise UploadFailed("The upload's stored bytes changed before the commit; send it again") from e
        record.status, record.sha256 = DONE, digest.hex
        record.hash_state = record.hash_format = None
        await in_thread(self._finish, session)
        self.metrics.incr("tus.completed.count")
        if self.events is not None:
            self.events.emit("upload.completed", digest.hex, record.length, upload=record.id)
        log.info("upload %s complete: %s, %d bytes%s", record.id, digest, record.length,
                 "" if stored.created else " (stored already)")
        return record

    @staticmethod
    def _flush_record(session: _Session, length: int) -> None:
        """The record names every byte before the commit takes the files (a crash after it then finds them
        moved, and the record whole)."""
        session.keep(length)

    async def _failed(self, session: _Session, reason: str) -> None:
        await in_thread(self._fail, session, reason)
        if self.events is not None:
            record = session.record
            self.events.emit("upload.failed", record.expected or "", record.offset, upload=record.id, reason=reason)

    def _fail(self, session: _Session, reason: str) -> None:
        record = session.record
        record.status, record.error = FAILED, reason
        record.hash_state = record.hash_format = None
        self.directory.save(record, durable=True)
        remove_files(record.paths)
        self.metrics.incr("tus.failed.count")
        log.warning("upload %s failed: %s", record.id, reason)

    def _finish(self, session: _Session) -> None:
        """The ended record in place, then the bytes files that the commit did not move removed."""
        record = session.record
        record.expires = time.time() + min(self.settings.expire_after, FINISHED_KEPT_SECONDS)
        self.directory.save(record, durable=True)
        # The files the commit did not move into place (it copied them, or the blob was stored already).
        for fd, path in zip(session.fds, record.paths):
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    os.unlink(path)

    # ---- blocking steps (in a thread) -------------------------------------

    def _create_blocking(self, record: UploadRecord) -> None:
        for path in record.paths:
            ensure_dir(os.path.dirname(path))
        create_files(record.paths)
        try:
            self.directory.save(record, durable=True)
        except BaseException:
            remove_files(record.paths)
            raise

    def _create_stored(self, record: UploadRecord, info: BlobInfo) -> UploadRecord:
        """An upload of a blob stored already: finished at creation, nothing to send."""
        if record.length is not None and record.length != info.size:
            raise UploadFailed(
                f"Blob {info.digest} is stored with {info.size} bytes, not the declared Upload-Length {record.length}"
            )
        record.length = record.offset = info.size
        record.status, record.sha256 = DONE, info.digest.hex
        record.expires = record.created + min(self.settings.expire_after, FINISHED_KEPT_SECONDS)
        self.directory.ensure()
        self.directory.save(record, durable=True)
        self.metrics.incr("tus.duplicate.count")
        return record

    def _open(self, upload_id: str) -> _Session | UploadRecord:
        """The upload held for a request (its bytes files open, the lock taken); its record when it ended."""
        record = self._current(self.directory.load(upload_id))
        if record.status != OPEN:
            return record
        fds = open_locked(record.paths)
        if fds is None:  # ended meanwhile (committed, terminated, swept)
            return self._current(self.directory.load(upload_id))
        try:
            record = self._current(self.directory.load(upload_id))  # as it is now that the lock is held
            if record.status != OPEN:
                raise _Ended(record)
            return _Session(self.directory, fds, record, self._hash_at(fds, record))
        except _Ended as ended:
            for fd in fds:
                os.close(fd)
            return ended.record
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def _current(self, record: UploadRecord | None) -> UploadRecord:
        if record is None:
            raise UnknownUpload()
        if record.status == FAILED:
            raise UploadGone(f"The upload failed: {record.error}")
        if record.status == OPEN and record.expires <= time.time():
            raise UploadGone("The upload expired")
        return record

    def _hash_at(self, fds: list[int], record: UploadRecord) -> ResumableSha256:
        """The running hash at the record's offset; the bytes files cut to it (or the record to the files)."""
        size = min(os.fstat(fd).st_size for fd in fds)
        if size >= record.offset:
            for fd in fds:
                if os.fstat(fd).st_size > record.offset:
                    os.ftruncate(fd, record.offset)  # written but never recorded: a request cut short
            if record.hash_state is not None and record.hash_format == STATE_FORMAT:
                try:
                    return ResumableSha256.from_state(bytes.fromhex(record.hash_state))
                except ValueError:
                    pass
        else:
            log.warning("upload %s: %d bytes recorded, %d stored (lost in a crash?); going on from %d",
                        record.id, record.offset, size, size)
            for fd in fds:
                os.ftruncate(fd, size)
            record.offset = size
        hasher = self._rebuild_hash(fds[0], record.offset)
        _note_hash(record, hasher)
        self.directory.save(record)
        return hasher

    @staticmethod
    def _rebuild_hash(fd: int, length: int) -> ResumableSha256:
        hasher = ResumableSha256()
        position = 0
        while position < length:
            piece = os.pread(fd, min(REHASH_PIECE, length - position), position)
            if not piece:
                break
            hasher.update(piece)
            position += len(piece)
        return hasher

    def _terminate_blocking(self, upload_id: str) -> UploadRecord:
        record = self.directory.load(upload_id)
        if record is None:
            raise UnknownUpload()
        fds = open_locked(record.paths) if record.status == OPEN else None
        try:
            record = self.directory.load(upload_id) or record
            self.directory.remove(record)
            return record
        finally:
            for fd in fds or ():
                os.close(fd)

    def _open_uploads(self) -> int:
        """How many uploads are in progress (the directory made if this is its first)."""
        self.directory.ensure()
        return sum(1 for e in self.directory.entries() if e.name.endswith(RECORD_SUFFIX))

    def _progress_blocking(self) -> Progress:
        uploads = size = 0
        for entry in self.directory.entries():
            upload_id = self.directory.id_of(entry.name, RECORD_SUFFIX)
            if upload_id is None:
                continue
            record = self.directory.load(upload_id)
            if record is not None and record.status == OPEN:
                uploads += 1
                size += record.offset
        return Progress(uploads, size)

    def _sweep_blocking(self, now: float) -> int:
        expired = 0
        directory = self.directory
        known: set[str] = set()
        for entry in directory.entries():
            name = entry.name
            upload_id = directory.id_of(name, RECORD_SUFFIX) or directory.id_of(name, DONE_SUFFIX)
            try:
                if upload_id is not None:
                    known.add(upload_id)
                    expired += self._sweep_upload(upload_id, now)
                elif directory.is_partial_record(name):
                    _remove_if_old(entry.path, now)
            except Locked:
                continue  # being written now: not expired
            except OSError as e:
                log.warning("cannot sweep %s: %s", entry.path, e)
        for staging in self.staging_dirs:  # bytes files of creations cut short before their record was
            for entry in UploadDirectory(Path(staging)).entries():
                orphan = UploadDirectory.id_of(entry.name, DATA_SUFFIX)
                if orphan is not None and orphan not in known and directory.load(orphan) is None:
                    try:
                        _remove_if_old(entry.path, now)
                    except OSError as e:
                        log.warning("cannot sweep %s: %s", entry.path, e)
        return expired

    def _sweep_upload(self, upload_id: str, now: float) -> int:
        record = self.directory.load(upload_id)
        if record is None or record.expires > now:
            return 0
        fds = open_locked(record.paths) if record.status == OPEN else None
        try:
            record = self.directory.load(upload_id)  # as it is now that nobody writes it
            if record is None or record.expires > now:
                return 0
            self.directory.remove(record)
            if record.status == OPEN:
                log.info("upload %s expired at %d of %s bytes; removed", upload_id, record.offset,
                         record.length if record.length is not None else "?")
                return 1
            return 0
        finally:
            for fd in fds or ():
                os.close(fd)

    async def _check_space(self, length: int, staging: tuple[str, ...]) -> None:
        """NoSpace when the upload's bytes cannot fit where they wait (the store's pair, or the records' place)."""
        for directory in staging:
            stat = await in_thread(os.statvfs, os.path.dirname(directory))
            if stat.f_bavail * stat.f_frsize < length:
                raise NoSpace(f"Not enough space for {length} bytes in {directory}")


def _note_hash(record: UploadRecord, hasher: ResumableSha256) -> None:
    """The hash's state in the record (none where it cannot be saved: the next request re-reads the bytes)."""
    state = hasher.state()
    record.hash_state = state.hex() if state is not None else None
    record.hash_format = STATE_FORMAT if state is not None else None


class _Ended(Exception):
    def __init__(self, record: UploadRecord) -> None:
        self.record = record


def _remove_if_old(path: str, now: float) -> None:
    if now - os.stat(path, follow_symlinks=False).st_mtime >= ORPHAN_SECONDS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _no_bytes() -> AsyncIterator[bytes]:
    return
    yield b""
