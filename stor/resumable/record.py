"""Where a resumable upload lives on the storage: its record, and its bytes `<id>.bin`.

Records are in one directory on storage every node shares (by default
`<first storage>/.stor-tus`): `<id>.json` while the upload is open,
`<id>.done` once it ended (committed or failed), so that counting uploads in
progress is a listing. Any worker, any node and a restarted process take an
upload up where it stopped. A record is replaced by a rename (a reader sees
the old one or the new one, never half of either). The bytes are in one
file per copy the store will keep (in a staging directory on each copy's
filesystem, which the store names: its commit then moves them into place),
or in the records' directory; they are only ever appended to or cut back.
The first of them carries the upload's lock: whoever writes the upload
holds an exclusive flock on it for the request, which the kernel drops when
the holder closes it or dies (Linux's NFS client maps it to a lock the
server arbitrates). Names come only from ids this service made (32
lower-case hex digits, checked before any path is built).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import stat
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from stor.config import TUS_DIR_NAME
from stor.store.durable import PARTIAL_MARK, fsync_dir, replace_file
from stor.store.metadata import BlobMeta

RECORD_SUFFIX = ".json"  # an open upload's record
DONE_SUFFIX = ".done"  # a finished upload's record
DATA_SUFFIX = ".bin"
_PARTIAL = PARTIAL_MARK  # a record being written: `<id>.json.tmp-<random>`
_ID = re.compile(r"[0-9a-f]{32}")

OPEN, DONE, FAILED = "open", "done", "failed"

R = TypeVar("R")


def new_id() -> str:
    return secrets.token_hex(16)


def is_upload_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


class Locked(Exception):
    """Another request (in any worker or node) is writing the upload now."""


@dataclass(slots=True)
class UploadRecord:
    id: str
    length: int | None  # None until a deferred length is declared
    offset: int  # bytes received, hashed and kept
    created: float  # wall-clock seconds (nodes compare them)
    expires: float
    metadata: str  # Upload-Metadata as the client sent it, given back on HEAD
    paths: list[str]  # the files holding the bytes (the same bytes each); the first carries the lock
    expected: str | None  # the sha256 the client declared, hex
    content_type: str | None
    filename: str | None
    hash_state: str | None = None  # the SHA-256 state at offset (stor.sha256state), hex
    hash_format: str | None = None
    status: str = OPEN  # OPEN, DONE (committed as sha256) or FAILED (error says why)
    sha256: str | None = None
    error: str | None = None

    @property
    def meta(self) -> BlobMeta:
        return BlobMeta(self.content_type, self.filename)

    def to_json(self) -> bytes:
        return record_json(self)

    @classmethod
    def from_json(cls, data: bytes) -> UploadRecord:
        return record_from_json(cls, data)


class UploadDirectory:
    """The directory of upload records and bytes; blocking calls (run them in a thread)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def ensure(self) -> None:
        ensure_dir(self.path)

    def record_path(self, upload_id: str, suffix: str = RECORD_SUFFIX) -> str:
        assert is_upload_id(upload_id)
        return f"{self.path}/{upload_id}{suffix}"

    def load(self, upload_id: str) -> UploadRecord | None:
        """The record (an open upload's, else a finished one's); None when there is none or it is unreadable."""
        for suffix in (RECORD_SUFFIX, DONE_SUFFIX):
            data = read_small_file(self.record_path(upload_id, suffix))
            if data is None:
                continue
            try:
                return UploadRecord.from_json(data)
            except (ValueError, TypeError):
                return None
        return None

    def save(self, record: UploadRecord, durable: bool = False) -> None:
        """Replace the record; durable: flushed with its directory entry (creation, the end)."""
        final = self.record_path(record.id, RECORD_SUFFIX if record.status == OPEN else DONE_SUFFIX)
        replace_file(final, record.to_json(), durable)
        if record.status != OPEN:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.record_path(record.id))
        if durable:
            fsync_dir(self.path)

    def remove(self, record: UploadRecord) -> None:
        """The bytes first: a record without bytes reads as ended, never as resumable."""
        remove_files(record.paths)
        for suffix in (RECORD_SUFFIX, DONE_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.record_path(record.id, suffix))

    def entries(self) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self.path) as listing:
                return list(listing)
        except FileNotFoundError:
            return []

    @staticmethod
    def id_of(name: str, suffix: str) -> str | None:
        """The upload id of a directory entry named `<id><suffix>`, if it is one."""
        if not name.endswith(suffix):
            return None
        upload_id = name[: -len(suffix)]
        return upload_id if is_upload_id(upload_id) else None

    @staticmethod
    def is_partial_record(name: str) -> bool:
        return _PARTIAL in name


def record_json(record: Any) -> bytes:
    """A record (a dataclass of plain fields) as compact JSON."""
    return json.dumps(asdict(record), separators=(",", ":")).encode()


def record_from_json(cls: type[R], data: bytes) -> R:
    """The record of class cls that record_json wrote; fields it does not know (a newer writer's) are dropped.

    ValueError or TypeError when data is not such a record.
    """
    raw = json.loads(data)
    if not isinstance(raw, dict):
        raise ValueError("not a record")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in raw.items() if k in known})


def read_small_file(path: str, limit: int = 1 << 20) -> bytes | None:
    """The first limit bytes of a file (a record); None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


def staging_places(directory: str, storage_roots: tuple[Path, ...]) -> tuple[str, ...]:
    """Where an upload's bytes files may lie: its own directory, or the staging directory of a storage
    (BlobStore.staging_dirs), for a sweep of leftovers."""
    return tuple(dict.fromkeys([directory, *(f"{r}/{TUS_DIR_NAME}" for r in storage_roots)]))


def ensure_dir(path: str) -> None:
    """path exists (made if missing) and is not a symlink (files would be written wherever it points)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
    if stat.S_ISLNK(os.lstat(path).st_mode):
        raise OSError(errno.ELOOP, "a symbolic link, not followed", path)


def data_path(directory: str, upload_id: str) -> str:
    assert is_upload_id(upload_id)
    return f"{directory}/{upload_id}{DATA_SUFFIX}"


def create_files(paths: list[str]) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    made: list[str] = []
    try:
        for path in paths:
            os.close(os.open(path, flags, 0o644))
            made.append(path)
    except BaseException:
        remove_files(made)
        raise


def open_locked(paths: list[str]) -> list[int] | None:
    """The bytes files, open for reading and writing, the first exclusively locked; None when it is gone.

    Raises Locked when another holder has the lock: never waits (a client
    that holds its request open would make this one wait as long).
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        first = os.open(paths[0], flags)
    except FileNotFoundError:
        return None
    fds = [first]
    try:
        try_lock(first, fcntl.LOCK_EX)
        for path in paths[1:]:
            fds.append(os.open(path, flags))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def try_lock(fd: int, operation: int) -> None:
    """flock(fd, operation) (LOCK_SH or LOCK_EX) without waiting; Locked when another holder has it."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise Locked() from None
        raise


def remove_files(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
