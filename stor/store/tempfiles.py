"""Upload temporary files: where they live, how they are claimed, when they are swept.

Each storage root has a `.stor-tmp` directory on the same filesystem as its
blobs, so a finished upload is renamed into place atomically. A writer holds
an exclusive flock on its temporary file for as long as it writes; the sweep
skips locked files (an upload in progress on this host) and files touched
within `max_age` (an upload in progress on another node sharing the storage,
where a lock may not be visible).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path


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
    directory = temp_dir(root)
    path = f"{directory}/{secrets.token_hex(16)}{TEMP_SUFFIX}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory)  # the first upload to this storage
        fd = os.open(path, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        remove(path)
        raise
    return fd, path


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
            entries = list(os.scandir(temp_dir(root)))
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("cannot list %s: %s", temp_dir(root), e)
            continue
        for entry in entries:
            if entry.name.endswith(TEMP_SUFFIX) and _remove_if_stale(Path(entry.path), max_age, now):
                removed += 1
    return removed


def _remove_if_stale(path: Path, max_age: float, now: float) -> bool:
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
