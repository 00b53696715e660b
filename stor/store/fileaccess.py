"""Two ways to open and read a blob's files: waiting for the disk, or never.

A small GET costs more in its hop to a worker thread than in the open, fstat
and read it carries there. When the path is in the kernel's dentry cache and
the bytes are in the page cache, the kernel can answer at once; CACHED_ONLY
asks for exactly that (openat2 with RESOLVE_CACHED, preadv2 with RWF_NOWAIT)
and raises WouldBlock whenever answering would need the disk. So the event
loop tries CACHED_ONLY itself and hands anything else to a thread with
BLOCKING: it still never waits for a disk (DESIGN.md invariant 3).

openat2 has no wrapper in Python's os module; it is called through ctypes.
On a kernel without it (before 5.12, or a seccomp profile that refuses it)
CACHED_ONLY always raises WouldBlock and every read takes the thread.

Neither access follows a symbolic link anywhere in a path: a link left in
the storage tree (to /etc/shadow, to ../../../../etc/hostname, or a
directory `AA -> /elsewhere`) would otherwise be served to anyone. Both pass
RESOLVE_NO_SYMLINKS to openat2 (in CACHED_ONLY's one syscall, so the fast
path costs nothing more); where openat2 is refused, BLOCKING walks the path
one directory at a time with O_NOFOLLOW. Callers hand in paths below a
storage root already resolved with realpath (stor.store.local), so a root
that is itself a link still works. Such an entry reads as absent and is
logged once per path and process (a bounded memory), as an anomaly left for
the operator; CACHED_ONLY leaves it to BLOCKING, which logs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
import threading
from collections import OrderedDict
from typing import Any, Protocol

log = logging.getLogger("stor.store")

# Absent from the file system (or a path component is not a directory): "not here".
_ABSENT = (errno.ENOENT, errno.ENOTDIR)

# Paths found to reach a symlink, each logged once; the oldest forgotten beyond this many.
_REFUSED_REMEMBERED = 4096
_refused_paths: OrderedDict[str, None] = OrderedDict()
_refused_lock = threading.Lock()  # BLOCKING runs in many threads


def _refused(path: str) -> None:
    """None ("absent") for a path that reaches a symlink, logging it the first time."""
    with _refused_lock:
        if path in _refused_paths:
            _refused_paths.move_to_end(path)
            return None
        _refused_paths[path] = None
        if len(_refused_paths) > _REFUSED_REMEMBERED:
            _refused_paths.popitem(last=False)
    link = _first_symlink(path)
    log.warning(
        "symlink in the storage tree, not followed: %s%s is treated as absent (left for the operator to replace or remove)",
        path,
        "" if link == path else f" (through the symlink {link})",
    )
    return None


def _first_symlink(path: str) -> str:
    """The first component of path that is a symlink (path itself if none is any more): for the log."""
    end = 0
    while True:
        end = path.find("/", end + 1)
        prefix = path if end < 0 else path[:end]
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.lstat(prefix).st_mode):
                return prefix
        if end < 0:
            return path


class WouldBlock(Exception):
    """Answering needs the disk (or a fault needs diagnosing): do it in a thread."""


class FileAccess(Protocol):
    waits: bool  # whether calls may wait for the disk (else they raise WouldBlock)

    # A path that reaches a symlink in any of its components is absent (and logged once).

    def open(self, path: str) -> int | None:
        """A read-only descriptor for path, or None if there is no such file."""

    def open_directory(self, path: str) -> int | None:
        """A read-only descriptor for the directory path (for os.scandir), or None if there is no such directory."""

    def is_file(self, path: str) -> bool:
        """Whether path names a regular file (as os.path.isfile, but never through a symlink), without opening it for reading."""

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Up to size bytes at offset (fewer only at the end of the file)."""


# O_NONBLOCK: opening a FIFO (or a device) left where a blob should be returns
# at once instead of waiting for a writer; the caller's fstat then refuses it.
# For regular files it changes nothing.
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
# O_PATH: a handle for fstat that never opens the file itself (no FIFO
# wait, no open-permission event or lease break that could block).
_PATH_FLAGS = os.O_PATH | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(os.uname().machine)
_AT_FDCWD = -100
# ELOOP at any symlink in the path, the last component included (and at /proc's magic links).
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_CACHED = 0x20


def _fstat_is_file(fd: int | None) -> bool:
    if fd is None:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


class _Blocking:
    """BLOCKING: openat2(RESOLVE_NO_SYMLINKS), one syscall per open, with the GIL released while it waits."""

    waits = True

    def __init__(self) -> None:
        self.available = False
        if _SYS_OPENAT2 is None:
            return
        self._syscall = ctypes.CDLL(None, use_errno=True).syscall
        self._syscall.restype = ctypes.c_long
        self._hows = [_OpenHow(flags, 0, _RESOLVE_NO_SYMLINKS) for flags in (_READ_FLAGS, _PATH_FLAGS, _DIR_FLAGS)]
        self._read_how, self._path_how, self._dir_how = (ctypes.byref(h) for h in self._hows)
        self._how_size = ctypes.sizeof(_OpenHow)
        try:
            fd = self._openat2("/", self._dir_how)
        except OSError:
            return  # no openat2 here (ENOSYS, EPERM from seccomp, ...)
        if fd is not None:
            os.close(fd)
            self.available = True

    def _openat2(self, path: str, how: Any) -> int | None:
        fd = self._syscall(_SYS_OPENAT2, _AT_FDCWD, path.encode("utf-8", "surrogateescape"), how, self._how_size)
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err in _ABSENT:
            return None
        if err == errno.ELOOP:
            return _refused(path)
        raise OSError(err, os.strerror(err), path)

    def open(self, path: str) -> int | None:
        return self._openat2(path, self._read_how)

    def open_directory(self, path: str) -> int | None:
        return self._openat2(path, self._dir_how)

    def is_file(self, path: str) -> bool:
        return _fstat_is_file(self._openat2(path, self._path_how))

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)


class _BlockingByComponents:
    """BLOCKING where openat2 is refused: each directory of the path opened in turn with O_NOFOLLOW.

    One open per component instead of one per path: the price of a kernel
    (or a seccomp profile) without openat2, on reads that take a thread anyway.
    """

    waits = True

    def open(self, path: str) -> int | None:
        return _open_by_components(path, _READ_FLAGS)

    def open_directory(self, path: str) -> int | None:
        return _open_by_components(path, _DIR_FLAGS)

    def is_file(self, path: str) -> bool:
        fd = _open_by_components(path, _PATH_FLAGS)
        if fd is not None and stat.S_ISLNK(os.fstat(fd).st_mode):
            # O_PATH | O_NOFOLLOW opens a symlink itself rather than failing.
            os.close(fd)
            return bool(_refused(path))
        return _fstat_is_file(fd)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)


_WALK_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_by_components(path: str, flags: int) -> int | None:
    """path's last component opened with flags | O_NOFOLLOW, reached one directory at a time without following a symlink."""
    names = path.split("/")
    last = len(names) - 1
    dir_fd = os.open("/" if path.startswith("/") else ".", _WALK_FLAGS)
    try:
        for i, name in enumerate(names):
            if not name and i < last:
                continue  # the root, or a doubled slash
            try:
                fd = os.open(name, (flags if i == last else _WALK_FLAGS) | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError as e:
                if e.errno not in (*_ABSENT, errno.ELOOP):
                    raise OSError(e.errno, e.strerror, path) from None
                # ELOOP is a symlink; so is ENOTDIR, sometimes (O_DIRECTORY is checked first).
                if e.errno != errno.ENOENT and _is_symlink(name, dir_fd):
                    return _refused(path)
                return None
            if i == last:
                return fd
            os.close(dir_fd)
            dir_fd = fd
        raise AssertionError("unreachable")
    finally:
        os.close(dir_fd)


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class _CachedOnly:
    waits = False

    def __init__(self) -> None:
        self.available = False
        if _SYS_OPENAT2 is None or not hasattr(os, "RWF_NOWAIT"):
            return
        # PyDLL keeps the GIL across the call: these calls never wait, and
        # releasing and retaking the GIL would cost more than the call itself.
        self._syscall = ctypes.PyDLL(None, use_errno=True).syscall
        self._syscall.restype = ctypes.c_long
        # A symlink fails the one syscall with ELOOP (left to BLOCKING, which logs it).
        resolve = _RESOLVE_CACHED | _RESOLVE_NO_SYMLINKS
        self._how = _OpenHow(_READ_FLAGS, 0, resolve)
        self._how_ref = ctypes.byref(self._how)
        self._how_size = ctypes.sizeof(self._how)
        self._path_how = _OpenHow(_PATH_FLAGS, 0, resolve)
        self._path_how_ref = ctypes.byref(self._path_how)
        self._dir_how = _OpenHow(_DIR_FLAGS, 0, resolve)
        self._dir_how_ref = ctypes.byref(self._dir_how)
        try:
            fd = self._openat2(b"/", self._how_ref)
        except OSError:
            return  # no openat2 here (ENOSYS, EPERM from seccomp, ...)
        if fd is not None:
            os.close(fd)
            self.available = True

    def _openat2(self, path: bytes, how: Any) -> int | None:
        fd = self._syscall(_SYS_OPENAT2, _AT_FDCWD, path, how, self._how_size)
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err in _ABSENT:
            return None
        raise OSError(err, os.strerror(err))

    def _open_cached(self, path: str, how: Any) -> int | None:
        if not self.available:
            raise WouldBlock(path)
        try:
            return self._openat2(path.encode("utf-8", "surrogateescape"), how)  # os.fsencode, without its checks
        except OSError as e:
            # EAGAIN: not all of the path is cached. Any other error (ELOOP:
            # a symlink) is left to the blocking path, which reports it.
            raise WouldBlock(path) from e

    def open(self, path: str) -> int | None:
        return self._open_cached(path, self._how_ref)

    def open_directory(self, path: str) -> int | None:
        return self._open_cached(path, self._dir_how_ref)

    def is_file(self, path: str) -> bool:
        return _fstat_is_file(self._open_cached(path, self._path_how_ref))

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        buf = bytearray(size)
        try:
            got = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
        except OSError as e:
            raise WouldBlock(fd) from e
        if got < size:
            # Part of the range is not cached, or the file is shorter than it
            # was: the blocking read tells which.
            raise WouldBlock(fd)
        return bytes(buf)


def _blocking() -> FileAccess:
    access = _Blocking()
    return access if access.available else _BlockingByComponents()


BLOCKING: FileAccess = _blocking()
CACHED_ONLY: FileAccess = _CachedOnly()
