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

At completion the upload is committed through the store's own staged write
(begin -> write -> commit), which hashes again what it writes to its
targets: nothing becomes visible unless it is the blob the upload declared
(or, without a declared sha, the blob it hashed to), whatever the backend.
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

from stor.aio import in_thread
from stor.config import TusSettings
from stor.digest import Digest
from stor.metrics import Metrics
from stor.resumable.record import (
    DATA_SUFFIX,
    DONE,
    FAILED,
    OPEN,
    RECORD_SUFFIX,
    Locked,
    UploadDirectory,
    UploadRecord,
    new_id,
)
from stor.sha256state import STATE_FORMAT, ResumableSha256
from stor.store.base import BlobInfo, BlobStore, DigestMismatch, NoSpace, Stored, TooLarge
from stor.store.metadata import BlobMeta

log = logging.getLogger("stor.resumable")

# Received bytes are handed to a thread (hashed and written) in pieces of this size.
WRITE_PIECE = 1 << 20
# A long request records its progress every so many bytes: a process killed mid-request then
# loses at most this much of it (without a per-request checksum, which makes a request all or nothing).
CHECKPOINT_BYTES = 64 << 20
# The stored bytes are read back for the commit in pieces of this size.
COMMIT_PIECE = 8 << 20
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
    """One request's hold on an upload: its bytes file (locked), record and running hash. Blocking methods."""

    def __init__(self, directory: UploadDirectory, fd: int, record: UploadRecord, hasher: ResumableSha256) -> None:
        self.directory = directory
        self.fd = fd
        self.record = record
        self.hasher = hasher

    def write(self, data: bytes, position: int, checksum: hashlib._Hash | None) -> None:
        self.hasher.update(data)
        if checksum is not None:
            checksum.update(data)
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, position)
            position += written
            view = view[written:]

    def keep(self, offset: int, durable: bool = False) -> None:
        """Record offset (every byte before it written and hashed) with the hash state there."""
        self.record.offset = offset
        state = self.hasher.state()
        self.record.hash_state = state.hex() if state is not None else None
        self.record.hash_format = STATE_FORMAT if state is not None else None
        self.directory.save(self.record, durable)

    def cut_back(self, offset: int) -> None:
        os.ftruncate(self.fd, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1


class ResumableUploads:
    def __init__(
        self, directory: Path, store: BlobStore, settings: TusSettings, max_blob_bytes: int | None, metrics: Metrics
    ) -> None:
        self.directory = UploadDirectory(directory)
        self.store = store
        self.settings = settings
        self.max_blob_bytes = max_blob_bytes
        self.metrics = metrics
        self._sweeper: asyncio.Task[None] | None = None

    # ---- life cycle --------------------------------------------------------

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep of expired uploads failed")
            await asyncio.sleep(self.settings.sweep_period)

    # ---- the operations ----------------------------------------------------

    async def create(
        self, length: int | None, metadata: str, expected: Digest | None, meta: BlobMeta
    ) -> UploadRecord:
        """A new upload (length None: declared later); done at once when the declared blob is stored already."""
        if length is not None:
            self._check_size(length)
        now = time.time()
        record = UploadRecord(
            id=new_id(), length=length, offset=0, created=now, expires=now + self.settings.expire_after,
            metadata=metadata, expected=expected.hex if expected is not None else None,
            content_type=meta.content_type, filename=meta.filename,
        )
        if expected is not None:
            info = await self.store.head(expected)
            if isinstance(info, BlobInfo):
                return await in_thread(self._create_stored, record, info)
        if await in_thread(self._open_uploads) >= self.settings.max_uploads:
            raise TooManyUploads(self.settings.max_uploads)
        if length:
            await self._check_space(length)
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
            return self._appended_to_finished(session, offset, declared)
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
            if pending is not None:
                try:
                    await pending
                except Exception:
                    position = kept  # what that write did is unknown: keep what was recorded
                    session.hasher = await in_thread(self._rebuild_hash, session.fd, kept)
            received = position - start
            if check is not None or position == kept:
                await in_thread(session.cut_back, kept if check is None else start)
            else:
                await in_thread(self._keep_what_arrived, session, position)
                self.metrics.incr("tus.received.bytes", received)
            raise
        if check is not None and checksum is not None and check.digest() != checksum.digest:
            await in_thread(session.cut_back, start)
            raise ChecksumMismatch(checksum.algorithm)
        self.metrics.incr("tus.received.bytes", position - start)
        record.expires = time.time() + self.settings.expire_after
        if record.length is not None and position == record.length:
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
        await in_thread(session.keep, position)
        return record

    @staticmethod
    def _keep_what_arrived(session: _Session, position: int) -> None:
        session.cut_back(position)  # nothing past what was hashed
        session.keep(position)

    @staticmethod
    def _undo(session: _Session, start: int) -> None:
        session.cut_back(start)
        session.record.offset = start
        session.directory.save(session.record)

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
    def _appended_to_finished(record: UploadRecord, offset: int, declared: int | None) -> UploadRecord:
        assert record.length is not None
        if offset != record.length:
            raise OffsetMismatch(offset, record.length)
        if declared:
            raise LengthExceeded(record.length)
        return record  # a repeated final request (its answer was lost): the same answer

    # ---- completion --------------------------------------------------------

    async def _complete(self, session: _Session) -> UploadRecord:
        record = session.record
        assert record.length is not None
        actual = session.hasher.hexdigest()
        if record.expected is not None and actual != record.expected:
            mismatch = DigestMismatch(Digest.parse(record.expected), actual)
            await in_thread(self._fail, session, str(mismatch))
            raise UploadFailed(str(mismatch))
        digest = Digest.parse(actual)
        try:
            stored = await self._commit(session.fd, digest, record.length, record.meta)
        except DigestMismatch as e:
            # The stored bytes are not those that were hashed as they arrived: changed on the disk since.
            log.error("upload %s: its stored bytes changed before the commit: %s", record.id, e)
            await in_thread(self._fail, session, "its stored bytes changed on the storage before the commit")
            raise UploadFailed("The upload's stored bytes changed before the commit; send it again") from e
        record.status, record.sha256 = DONE, digest.hex
        record.offset = record.length
        record.hash_state = record.hash_format = None
        await in_thread(self._finish, session)
        self.metrics.incr("tus.completed.count")
        log.info("upload %s complete: %s, %d bytes%s", record.id, digest, record.length,
                 "" if stored.created else " (stored already)")
        return record

    async def _commit(self, fd: int, digest: Digest, length: int, meta: BlobMeta) -> Stored:
        """The stored bytes through the store's staged write, which verifies them against digest."""
        upload = await self.store.begin(digest, length, meta)
        if isinstance(upload, Stored):
            return upload
        try:
            position = 0
            while position < length:
                piece = await in_thread(os.pread, fd, min(COMMIT_PIECE, length - position), position)
                if not piece:
                    raise OSError(f"upload bytes file ends at {position} of {length}")
                await upload.write(piece)
                position += len(piece)
        except BaseException:
            await upload.abort()
            raise
        return await upload.commit()

    def _fail(self, session: _Session, reason: str) -> None:
        record = session.record
        record.status, record.error = FAILED, reason
        record.hash_state = record.hash_format = None
        self.directory.save(record, durable=True)
        self.directory.remove_data(record.id)
        self.metrics.incr("tus.failed.count")
        log.warning("upload %s failed: %s", record.id, reason)

    def _finish(self, session: _Session) -> None:
        self.directory.save(session.record, durable=True)
        self.directory.remove_data(session.record.id)

    # ---- blocking steps (in a thread) -------------------------------------

    def _create_blocking(self, record: UploadRecord) -> None:
        self.directory.create_data(record.id)
        self.directory.save(record, durable=True)

    def _create_stored(self, record: UploadRecord, info: BlobInfo) -> UploadRecord:
        """An upload of a blob stored already: finished at creation, nothing to send."""
        if record.length is not None and record.length != info.size:
            raise UploadFailed(
                f"Blob {info.digest} is stored with {info.size} bytes, not the declared Upload-Length {record.length}"
            )
        record.length = record.offset = info.size
        record.status, record.sha256 = DONE, info.digest.hex
        self.directory.ensure()
        self.directory.save(record, durable=True)
        self.metrics.incr("tus.duplicate.count")
        return record

    def _open(self, upload_id: str) -> _Session | UploadRecord:
        """The upload held for a request (its bytes file locked); its record instead when it is finished."""
        fd = self.directory.open_locked(upload_id)
        if fd is None:
            record = self._current(self.directory.load(upload_id))
            if record.status == OPEN:
                raise UnknownUpload()  # a record whose bytes were removed: terminated meanwhile
            return record
        try:
            record = self._current(self.directory.load(upload_id))
            if record.status != OPEN:  # finished by another request meanwhile (its bytes go next)
                os.close(fd)
                return record
            return _Session(self.directory, fd, record, self._hash_at(fd, record))
        except BaseException:
            if fd >= 0:
                with contextlib.suppress(OSError):
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

    def _hash_at(self, fd: int, record: UploadRecord) -> ResumableSha256:
        """The running hash at the record's offset; the bytes file cut to it (or the record to the file)."""
        size = os.fstat(fd).st_size
        if size > record.offset:
            os.ftruncate(fd, record.offset)  # written but never recorded: a request cut short
        if size >= record.offset and record.hash_state is not None and record.hash_format == STATE_FORMAT:
            try:
                return ResumableSha256.from_state(bytes.fromhex(record.hash_state))
            except ValueError:
                pass
        if size < record.offset:
            log.warning("upload %s: %d bytes recorded, %d stored (lost in a crash?); going on from %d",
                        record.id, record.offset, size, size)
            record.offset = size
        hasher = self._rebuild_hash(fd, record.offset)
        self.directory.save(record)
        return hasher

    @staticmethod
    def _rebuild_hash(fd: int, length: int) -> ResumableSha256:
        hasher = ResumableSha256()
        position = 0
        while position < length:
            piece = os.pread(fd, min(COMMIT_PIECE, length - position), position)
            if not piece:
                break
            hasher.update(piece)
            position += len(piece)
        return hasher

    def _terminate_blocking(self, upload_id: str) -> UploadRecord:
        fd = self.directory.open_locked(upload_id)
        try:
            record = self.directory.load(upload_id)
            if record is None:
                raise UnknownUpload()
            self.directory.remove(upload_id)
            return record
        finally:
            if fd is not None:
                os.close(fd)

    def _open_uploads(self) -> int:
        """How many uploads are in progress (the directory made if this is its first)."""
        self.directory.ensure()
        return sum(1 for e in self.directory.entries() if e.name.endswith(DATA_SUFFIX))

    def _progress_blocking(self) -> Progress:
        uploads = size = 0
        for entry in self.directory.entries():
            if entry.name.endswith(DATA_SUFFIX):
                uploads += 1
                with contextlib.suppress(FileNotFoundError):
                    size += entry.stat(follow_symlinks=False).st_size
        return Progress(uploads, size)

    def _sweep_blocking(self, now: float) -> int:
        expired = 0
        directory = self.directory
        entries = directory.entries()
        records = {i for e in entries if (i := directory.id_of(e.name, RECORD_SUFFIX))}
        for entry in entries:
            name = entry.name
            upload_id = directory.id_of(name, RECORD_SUFFIX)
            try:
                if upload_id is not None:
                    expired += self._sweep_upload(upload_id, now)
                elif (orphan := directory.id_of(name, DATA_SUFFIX)) is not None and orphan not in records:
                    self._remove_if_old(entry, now, lambda: directory.remove_data(orphan))
                elif directory.is_partial_record(name):
                    self._remove_if_old(entry, now, lambda: os.unlink(entry.path))
            except Locked:
                continue  # being written now: not expired
            except OSError as e:
                log.warning("cannot sweep %s: %s", entry.path, e)
        return expired

    def _sweep_upload(self, upload_id: str, now: float) -> int:
        record = self.directory.load(upload_id)
        if record is None or record.expires > now:
            return 0
        fd = self.directory.open_locked(upload_id)
        try:
            record = self.directory.load(upload_id)  # as it is now that nobody writes it
            if record is None or record.expires > now:
                return 0
            self.directory.remove(upload_id)
            if record.status == OPEN:
                log.info("upload %s expired at %d of %s bytes; removed", upload_id, record.offset,
                         record.length if record.length is not None else "?")
                return 1
            return 0
        finally:
            if fd is not None:
                os.close(fd)

    @staticmethod
    def _remove_if_old(entry: os.DirEntry[str], now: float, remove: object) -> None:
        if now - entry.stat(follow_symlinks=False).st_mtime >= ORPHAN_SECONDS:
            remove()  # type: ignore[operator]

    async def _check_space(self, length: int) -> None:
        """NoSpace when the upload cannot fit where its bytes wait, or on any pair that takes writes."""
        stat = await in_thread(os.statvfs, self.directory.path)
        if stat.f_bavail * stat.f_frsize < length:
            raise NoSpace(f"Not enough space for {length} bytes in {self.directory.path}")
        health = await self.store.health()
        pairs: dict[int, int] = {}
        for s in health.storages:
            if s.pair is not None and s.writable and s.free_bytes is not None:
                pairs[s.pair] = min(pairs.get(s.pair, s.free_bytes), s.free_bytes)
        if health.storages and max(pairs.values(), default=0) < length:
            raise NoSpace(f"Not enough space on storages for {length} bytes")


async def _no_bytes() -> AsyncIterator[bytes]:
    return
    yield b""

