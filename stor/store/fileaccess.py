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
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from typing import Any, Protocol

# Absent from the file system (or a path component is not a directory): "not here".
_ABSENT = (errno.ENOENT, errno.ENOTDIR)


class WouldBlock(Exception):
    """Answering needs the disk (or a fault needs diagnosing): do it in a thread."""


class FileAccess(Protocol):
    waits: bool  # whether calls may wait for the disk (else they raise WouldBlock)

    def open(self, path: str) -> int | None:
        """A read-only descriptor for path, or None if there is no such file."""

    def is_file(self, path: str) -> bool:
        """Whether path names a regular file (as os.path.isfile), without opening it for reading."""

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Up to size bytes at offset (fewer only at the end of the file)."""


# O_NONBLOCK: opening a FIFO (or a device) left where a blob should be returns
# at once instead of waiting for a writer; the caller's fstat then refuses it.
# For regular files it changes nothing.
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


class _Blocking:
    waits = True

    def open(self, path: str) -> int | None:
        try:
            return os.open(path, _READ_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def is_file(self, path: str) -> bool:
        return os.path.isfile(path)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(os.uname().machine)
_AT_FDCWD = -100
_RESOLVE_CACHED = 0x20


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
        self._how = _OpenHow(_READ_FLAGS, 0, _RESOLVE_CACHED)
        self._how_ref = ctypes.byref(self._how)
        self._how_size = ctypes.sizeof(self._how)
        # O_PATH: a handle for fstat that never opens the file itself (no FIFO
        # wait, no open-permission event or lease break that could block).
        self._path_how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE_CACHED)
        self._path_how_ref = ctypes.byref(self._path_how)
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
            # EAGAIN: not all of the path is cached. Any other error is left
            # to the blocking path, which reports it with its detail.
            raise WouldBlock(path) from e

    def open(self, path: str) -> int | None:
        return self._open_cached(path, self._how_ref)

    def is_file(self, path: str) -> bool:
        fd = self._open_cached(path, self._path_how_ref)
        if fd is None:
            return False
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode)
        finally:
            os.close(fd)

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


BLOCKING: FileAccess = _Blocking()
CACHED_ONLY: FileAccess = _CachedOnly()
