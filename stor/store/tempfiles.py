"""Upload temporary files: where they live, how they are claimed, when they are swept.

Each storage root has a `.stor-tmp` directory on the same filesystem as its
blobs, so a finished upload is renamed into place atomically. A writer holds
an exclusive flock on its temporary file for as long as it writes; the sweep
skips locked files (an upload in progress on this host) and files touched
within `max_age` (an upload in progress on another node sharing the storage,
where a lock may not be visible). The commit of a digest takes a lock file
here too (digest_lock), so that uploads of one blob through several workers
or nodes end with it on one pair.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from stor.store.base import OUT_OF_DESCRIPTORS


TEMP_DIR_NAME = ".stor-tmp"
TEMP_SUFFIX = ".part"

log = logging.getLogger("stor.sweep")


def temp_dir(root: Path) -> str:
    return f"{root}/{TEMP_DIR_NAME}"


def create_locked(root: Path) -> tuple[int, str]:
    """A new, exclusively locked temporary file under root, and its path.

    Named at random, not after the blob: an upload whose digest is known only
    at the end (tus, the S3 API) writes here too, and is renamed into the
    layout at commit. Plain strings rather than pathlib: this runs twice per
    upload, and two pathlib joins cost more than the open itself.
    """
    path = f"{temp_dir(root)}/{secrets.token_hex(16)}{TEMP_SUFFIX}"
    fd = _open_creating(path, os.O_WRONLY | os.O_EXCL)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        remove(path)
        raise
    return fd, path


LOCKS_DIR_NAME = "locks"
# A commit locks one of this many files per storage, by the sha's first hex digits.
_LOCK_PREFIX_DIGITS = 3


@contextlib.contextmanager
def digest_lock(roots: Iterable[str], hex_digest: str) -> Iterator[None]:
    """Exclusive, across threads, workers and nodes sharing the storage, for one digest's commit.

    A flock on `<root>/.stor-tmp/locks/<first 3 hex digits>.lock` in the
    first storage that can be written (the same one for every node with the
    same configuration); the kernel releases it when its holder dies, and
    Linux's NFS client maps it to a lock the server arbitrates. The 4096 lock
    files are made on first use and kept: creating and removing one per
    upload cost the filesystem's journal as much as a small upload's own
    metadata. Commits of shas that share a file wait for each other's
    renames, which take milliseconds. Blocking: call it in a thread.
    """
    fd = _lock_file(list(roots), hex_digest[:_LOCK_PREFIX_DIGITS].upper())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_file(roots: list[str], name: str) -> int:
    failure: OSError | None = None
    for root in roots:
        directory = temp_dir(Path(root))
        try:
            _ensure_dir(directory)
            return _open_creating(f"{directory}/{LOCKS_DIR_NAME}/{name}.lock", os.O_RDWR)
        except OSError as e:
            if e.errno in OUT_OF_DESCRIPTORS:
                raise
            failure = e  # this storage cannot be written: the next one
    raise failure or OSError(errno.ENOENT, "no storage to lock in")


def _open_creating(path: str, mode: int) -> int:
    """Open or create path, and its temporary directory if this is the storage's first use.

    Neither may be a symlink: uploads would be written, and the sweep would
    remove files, wherever it points (ELOOP, and placement skips the storage).
    """
    _ensure_dir(os.path.dirname(path))
    return os.open(path, mode | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)


def _ensure_dir(directory: str) -> None:
    """directory exists (made if missing; its parent must exist) and is not a symlink."""
    try:
        _check_not_a_link(directory)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory)
        _check_not_a_link(directory)


def _check_not_a_link(directory: str) -> None:
    if stat.S_ISLNK(os.lstat(directory).st_mode):
        raise OSError(errno.ELOOP, "a symbolic link, not followed", directory)


def remove(path: str) -> None:
    """Unlink a temporary file that may already be gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def sweep(roots: Iterable[Path], max_age: float, now: float | None = None) -> int:
    """Remove stale, unlocked temporary files; the number removed."""
    now = time.time() if now is None else now
    removed = 0
    for root in roots:
        try:
            _check_not_a_link(temp_dir(root))
            entries = list(os.scandir(temp_dir(root)))
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("cannot list %s: %s", temp_dir(root), e)
            continue
        for entry in entries:
            if entry.name.endswith(TEMP_SUFFIX) and remove_if_stale(Path(entry.path), max_age, now):
                removed += 1
    return removed


def remove_if_stale(path: Path, max_age: float, now: float) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if now - os.fstat(fd).st_mtime < max_age:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False  # a writer on this host still holds it
            raise
        path.unlink(missing_ok=True)
        log.info("removed stale upload temporary file %s", path)
        return True
    except OSError as e:
        log.warning("cannot sweep %s: %s", path, e)
        return False
    finally:
        os.close(fd)
