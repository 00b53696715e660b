"""Writing files so that a crash leaves either the old state or the new one: data and directory entries flushed.

Every file stor makes visible (a blob, a sidecar, a queue entry, a state
file) goes through these: written, fsynced, renamed into place, and its
directory fsynced, so that after a power cut the name and its bytes are
both there or both not.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stor.store import tempfiles
from stor.store.base import StoreError


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_all_at(fd: int, data: bytes, position: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        position += written
        view = view[written:]


# Chunks at least this large are written to the copies in parallel with the work beside them (hashing).
PARALLEL_WRITE_BYTES = 256 * 1024
_COPY_WRITERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="stor-mirror")


def write_copies(fds: Sequence[int], data: bytes, position: int | None, beside: Callable[[bytes], None]) -> None:
    """data to each file (at position, or where each file is), and beside(data) meanwhile (a hash's update).

    Large chunks go to the files from threads of their own while this one
    runs beside(): writes and hashing all release the GIL, so the time is
    that of the slowest, not their sum.
    """

    def write(fd: int) -> None:
        if position is None:
            write_all(fd, data)
        else:
            write_all_at(fd, data, position)

    if len(data) < PARALLEL_WRITE_BYTES:
        beside(data)
        for fd in fds:
            write(fd)
        return
    writes = [_COPY_WRITERS.submit(write, fd) for fd in fds]
    try:
        beside(data)
    finally:
        for w in writes:
            w.result()


# What a file being written by replace_file carries in its name: `<final>.tmp-<random>`.
PARTIAL_MARK = ".tmp-"


def replace_file(final: str, data: bytes, durable: bool = False) -> None:
    """data under final, by a rename (a reader sees the old file or the new one, never half of either).

    durable: the data flushed before the rename; the caller flushes the
    directory entry (fsync_dir) once it has made all its changes there.
    """
    tmp = f"{final}{PARTIAL_MARK}{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, final)


def fsync_all(fds: Sequence[int]) -> None:
    """Each file's data to its disk, the files side by side: mirrors are on disks of their own, and a
    flush of a large file waits for its disk, so the time is that of the slowest, not their sum."""
    others = [_COPY_WRITERS.submit(os.fsync, fd) for fd in fds[1:]]
    try:
        if fds:
            os.fsync(fds[0])
    finally:
        for flushed in others:
            flushed.result()


def fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(root: Path, final: Path, data: bytes) -> None:
    """data under final, flushed; the caller flushes final's directory."""
    fd, tmp = tempfiles.create_locked(root)
    try:
        write_all(fd, data)
        os.fsync(fd)
        os.rename(tmp, final)
    except BaseException:
        tempfiles.remove(tmp)
        raise
    finally:
        os.close(fd)


def make_dirs_durably(directory: str, root: str) -> None:
    """Create directory and its missing parents below root, flushing each new entry.

    None of them may be a symlink (lstat): a blob renamed into a linked AA/BB/CC
    would land outside the storage tree. That is a fault of the storage, not of
    the upload: a StoreError naming the link (the service answers 500 and logs it).
    """
    d = root.rstrip("/")
    if not directory.startswith(d + "/"):
        raise StoreError(f"{directory} is not below the storage {root}")
    for name in directory[len(d) + 1 :].split("/"):
        d = f"{d}/{name}"
        try:
            mode = os.lstat(d).st_mode
        except FileNotFoundError:
            try:
                os.mkdir(d)
            except FileExistsError:
                mode = os.lstat(d).st_mode  # another upload made it (or something else did: checked)
            else:
                fsync_dir(os.path.dirname(d))
                continue
        if stat.S_ISLNK(mode):
            raise StoreError(f"{d} is a symbolic link in the storage tree: no blob is written through it")
