"""A SHA-256 whose running state can be saved and taken up again in another process.

A resumable upload is hashed as its bytes arrive, and its next chunk may
reach another worker or another node, or a restarted one: the hash state
travels with the upload's record on the storage. hashlib's objects cannot be
exported, so this uses the same library hashlib does, OpenSSL, through its
documented SHA256_Init/Update/Final calls, whose SHA256_CTX is a plain
struct of 112 bytes (openssl/sha.h: h[8], Nl, Nh, data[16], num, md_len,
all 32-bit): its bytes are the state. Speed is hashlib's (the same code, and
ctypes releases the GIL around each call).

Where that library or those calls are missing, AVAILABLE is false and
state() gives None: the caller then re-reads what is stored so far to
rebuild the hash (correct, only slower).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import sys

_CTX_BYTES = 112
# What a saved state is only valid for: the struct's layout on this byte order.
STATE_FORMAT = f"openssl-sha256-ctx/{sys.byteorder}"


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        for fn in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
            fn.restype = ctypes.c_int
        lib.SHA256_Update.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    except (OSError, AttributeError):
        return None
    if not _agrees_with_hashlib(lib):
        return None
    return lib


def _agrees_with_hashlib(lib: ctypes.CDLL) -> bool:
    """A saved and restored state hashes as hashlib does (so that the struct is what this module takes it for)."""
    data = bytes(range(256)) * 5
    ctx = ctypes.create_string_buffer(_CTX_BYTES)
    lib.SHA256_Init(ctx)
    lib.SHA256_Update(ctx, data[:100], 100)
    again = ctypes.create_string_buffer(ctx.raw, _CTX_BYTES)
    rest = data[100:]
    lib.SHA256_Update(again, rest, len(rest))
    out = ctypes.create_string_buffer(32)
    lib.SHA256_Final(out, again)
    return out.raw == hashlib.sha256(data).digest()


_LIB = _load()
AVAILABLE = _LIB is not None


class ResumableSha256:
    """hashlib.sha256's update/hexdigest, plus state() and from_state() to carry it elsewhere."""

    __slots__ = ("_ctx", "_fallback")

    def __init__(self) -> None:
        self._fallback: hashlib._Hash | None = None
        if _LIB is None:
            self._ctx = None
            self._fallback = hashlib.sha256()
        else:
            self._ctx = ctypes.create_string_buffer(_CTX_BYTES)
            _LIB.SHA256_Init(self._ctx)

    @classmethod
    def from_state(cls, state: bytes) -> ResumableSha256:
        """The hash as state() saved it; ValueError if it cannot be taken up here."""
        if _LIB is None or len(state) != _CTX_BYTES:
            raise ValueError("not a saved SHA-256 state this process can take up")
        h = cls.__new__(cls)
        h._fallback = None
        h._ctx = ctypes.create_string_buffer(state, _CTX_BYTES)
        return h

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._fallback is not None:
            self._fallback.update(data)
            return
        if isinstance(data, bytes):
            _LIB.SHA256_Update(self._ctx, data, len(data))  # type: ignore[union-attr]
            return
        view = memoryview(data).cast("B")
        if view.nbytes:
            buf = (ctypes.c_char * view.nbytes).from_buffer(view) if not view.readonly else bytes(view)
            _LIB.SHA256_Update(self._ctx, buf, view.nbytes)  # type: ignore[union-attr]

    def state(self) -> bytes | None:
        """The running state, to be taken up by from_state(); None where it cannot be saved."""
        return None if self._ctx is None else self._ctx.raw

    def hexdigest(self) -> str:
        """The digest of everything so far; the hash can go on being updated."""
        if self._fallback is not None:
            return self._fallback.hexdigest()
        ctx = ctypes.create_string_buffer(self._ctx.raw, _CTX_BYTES)  # type: ignore[union-attr]
        out = ctypes.create_string_buffer(32)
        _LIB.SHA256_Final(out, ctx)  # type: ignore[union-attr]
        return out.raw.hex()
