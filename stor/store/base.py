"""The storage interface every backend implements and every handler depends on, and its errors.

A backend (the mirrored local pairs today, an S3 bucket next) answers five
questions: what is known of a blob (head), its bytes (open, whole or a byte
range), a staged write (begin -> write -> commit or abort; nothing is
visible before commit, which verifies), which of many blobs are stored
(contains), and what is stored (iter_digests, list_blobs); plus its health and a
start/close for background work. Layers that add caching or metrics
implement the same interface around a backend (stor.store.hot,
stor.store.located, stor.store.metered), so handlers never know which
backend or which layers they talk to.

Nothing here knows HTTP: a body is a region of an open local file (which
the kernel can send) or an async stream of chunks; what to do with it is
the caller's business.
"""

from __future__ import annotations

import errno

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from stor.digest import Digest
from stor.store.metadata import BlobMeta, NO_META


class StoreError(Exception):
    """A fault in the storage itself: the service answers 5xx and logs it."""


class NoSpace(StoreError):
    """No writable pair can hold the blob, before or during the write."""


class NoWritableStorage(NoSpace):
    """No pair can be written now (read-only, refused, failing); the message names each and why."""


class Unavailable(StoreError):
    """A passing shortage (no file descriptor left, S3 out of reach): the service answers 503, the client may retry.

    reason: what the client is told (the message, which may hold detail for the log, is not).
    """

    reason: str | None = None


# Out of file descriptors, in the process or the system: a passing shortage, not a fault.
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


def unavailable_reason(e: BaseException) -> str | None:
    """Why e is, or was caused by, a passing shortage (Unavailable, or EMFILE/ENFILE wherever it arose); else None."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, Unavailable):
            return seen.reason or str(seen)
        if isinstance(seen, OSError) and seen.errno in OUT_OF_DESCRIPTORS:
            return "out of file descriptors"
        seen = seen.__cause__ or seen.__context__
    return None


class DigestMismatch(Exception):
    """The uploaded bytes do not hash to the digest they were posted under."""

    def __init__(self, expected: Digest, actual: str) -> None:
        super().__init__(f"Content sha256 {actual} doesn't match given sha256 {expected.hex}")
        self.expected = expected
        self.actual = actual


class TooLarge(Exception):
    """The upload is larger than the configured maximum blob size."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Blob larger than the limit of {limit} bytes")
        self.limit = limit


# The types made on every read are not frozen dataclasses, which set each field through
# object.__setattr__ and are several times slower to make; none is changed once handed out.


class Lookup(NamedTuple):
    """How a read found its blob (or failed to): the facts the metrics layer reports as the original's events.

    source: "hot" (a blob this worker holds in memory), "cache" (a remembered
    location held it), "probe" (a full look-up, after any cached location
    missed). probes: directories probed by that look-up; seconds: its time.
    """

    source: str
    probes: int = 0
    seconds: float = 0.0


HOT = Lookup("hot")
CACHED = Lookup("cache")


@dataclass(slots=True)
class BlobInfo:
    """What is known of a stored blob, without its bytes."""

    digest: Digest
    size: int
    mtime: float
    meta: BlobMeta
    tier: str  # the backend that holds it: "local" or "s3"
    location: str  # where exactly: a file's path, a bucket key
    storage: str  # the storage holding it, as `at` names it (a storage directory)
    lookup: Lookup = CACHED
    # Found with nothing waiting for a disk (the kernel's caches answered): a local blob that
    # may be kept hot, since checking it again cannot wait either.
    from_caches: bool = False


class Listed(NamedTuple):
    """A blob as a listing sees it: what it is, its size, and when it was stored."""

    digest: Digest
    size: int
    mtime: float


@dataclass(slots=True)
class Missing:
    """No such blob; how hard it was looked for."""

    lookup: Lookup


@dataclass(slots=True)
class FileRegion:
    """Bytes offset..offset+length of an open local file: the kernel can send them (sendfile).

    data: those bytes, when they were read ahead (a small blob); the
    descriptor may then already be closed (fd -1). A region without a
    descriptor may be shared between answers (a hot blob's): never change one.
    """

    fd: int
    offset: int
    length: int
    data: bytes | None = None
    # Set on a whole blob to be checked against its sha while it is sent (integrity.verify_reads): the
    # sender starts it with the sending and awaits it before the last bytes; it raises CorruptBlob (and
    # the answer is cut short) when they do not match. A narrowed region (a Range) is not checked.
    check: Callable[[], Awaitable[None]] | None = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class StreamBody(Protocol):
    """Bytes from elsewhere (an S3 object), streamed in chunks; nothing is fetched that is not read.

    narrow() keeps a part of it (a Range decided after the open), close()
    releases what it holds (a connection) whether or not it was read.
    """

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def narrow(self, offset: int, length: int) -> None: ...

    def close(self) -> None: ...


Body = FileRegion | StreamBody

# The span of a read that wants what is known of a blob and none of its bytes (a HEAD): open()
# rather than head(), so that the answer is counted as delivered as a GET's is.
NO_BYTES = (0, 0)


@dataclass(slots=True)
class OpenBlob:
    """A blob opened for reading: what is known of it, and the requested bytes.

    close() releases the body (a descriptor, a connection) whatever happened;
    on_delivered, if set (the metrics layer reports the original's success
    events there), is for whoever sends the body to call once it went out whole.
    """

    info: BlobInfo
    body: Body
    on_delivered: Callable[[], None] | None = None

    @property
    def holds_resources(self) -> bool:
        """Whether close() has anything to release (a body from memory has not)."""
        body = self.body
        return not isinstance(body, FileRegion) or body.fd >= 0

    def close(self) -> None:
        self.body.close()

    def narrow(self, offset: int, length: int) -> None:
        """Keep only bytes offset..offset+length of what was opened (a Range decided after the open).

        A local file region is replaced by the narrower one (regions may be
        shared: a hot blob's); a stream body narrows itself.
        """
        body = self.body
        if not isinstance(body, FileRegion):
            body.narrow(offset, length)
            return
        data = body.data
        if data is not None:
            data = data[offset - body.offset : offset - body.offset + length]
        self.body = FileRegion(body.fd, offset, length, data)


@dataclass(frozen=True, slots=True)
class Stored:
    """The outcome of a write: the blob's digest and every place it is now (created: written by this write)."""

    digest: Digest
    created: bool
    locations: tuple[str, ...]
    storage: str | None = None  # one storage holding it now, as `at` names it (for a location cache)


@dataclass(frozen=True, slots=True)
class StagedBytes:
    """A blob's bytes already on the storage, hashed as they arrived: a resumable upload's, once whole.

    paths: files holding the same bytes, one in each directory staging_dirs()
    named (or anywhere, when it named none). A commit moves them into place
    where they lie on a target's filesystem (no byte is copied; the paths are
    gone afterwards), and copies them elsewhere; a write that fails leaves
    them as they were.
    """

    paths: tuple[str, ...]
    length: int
    sha256: str  # hex, what they hashed to as they arrived


class Upload(Protocol):
    """A staged write: chunks in, then commit (verified, made visible) or abort (nothing kept)."""

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> Stored:
        """Verify and make the blob visible; DigestMismatch when it is not the expected one."""

    async def abort(self) -> None:
        """Forget everything written so far; safe to call after commit (does nothing then)."""


@dataclass(frozen=True, slots=True)
class StorageState:
    """One storage directory (or bucket) and what is wrong with it, if anything."""

    path: str
    pair: int | None
    writable: bool
    problems: tuple[str, ...]
    free_bytes: int | None
    total_bytes: int | None
    # Why a storage meant for writes cannot be written now (writable is then false); not a
    # problem of the node while another pair takes the writes.
    write_fault: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class ServiceState:
    """A service a layer depends on (a memcached server): unreachable makes the node degraded, not failing."""

    kind: str
    name: str
    reachable: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class QueueState:
    """Work a layer keeps queued on the storage (the copies to S3): how much, and how old the oldest."""

    name: str
    depth: int
    oldest_seconds: float | None  # None when empty
    error: str | None = None  # why it could not be read, if it could not


@dataclass(frozen=True, slots=True)
class Health:
    storages: tuple[StorageState, ...] = ()
    services: tuple[ServiceState, ...] = ()
    queues: tuple[QueueState, ...] = ()


class BlobStore(Protocol):
    """One interface for every backend (local mirrored pairs, S3, a tier of both) and every layer around one.

    Each method returns an awaitable: a coroutine, or, in a layer that adds
    nothing to a call, the inner store's own (no extra frame on the hot path).
    """

    def head(self, digest: Digest, at: str | None = None) -> Awaitable[BlobInfo | Missing]:
        """What is known of the blob; at: look only in that storage (a remembered location)."""

    def open(self, digest: Digest, span: tuple[int, int] | None = None, at: str | None = None) -> Awaitable[OpenBlob | Missing]:
        """The blob's bytes: all of them, or span = (offset, length), which must lie within the blob."""

    def begin(
        self, expected: Digest | None, length: int | None, meta: BlobMeta = NO_META, staged: StagedBytes | None = None,
    ) -> Awaitable[Upload | Stored]:
        """Start a write; a Stored at once when the expected blob is already complete (nothing to send).

        expected None: the digest is known only at commit (the upload is
        stored under what it hashes to). Raises TooLarge or NoSpace before any
        byte is taken when length already tells. staged: the bytes are on the
        storage already; nothing is written to the upload, whose commit takes them.
        """

    def staging_dirs(self, length: int | None) -> Awaitable[tuple[str, ...]]:
        """Where bytes that will be committed later (StagedBytes) should wait: one directory per copy
        the backend will keep, each on that copy's filesystem, so that the commit moves no byte.
        Empty: the backend copies them wherever they are (an S3 bucket)."""

    def put(self, expected: Digest, data: bytes, meta: BlobMeta = NO_META) -> Awaitable[Stored]:
        """A whole body already in memory, stored in one step (a small upload)."""

    def contains(self, digests: list[Digest]) -> Awaitable[list[bool]]:
        """Whether each blob is stored, in one round trip."""

    def iter_digests(self, after: str = "") -> AsyncIterator[Digest]:
        """Every stored blob once, in lexical order of the hex digest; after: only those whose hex sorts
        after it (lower-case hex digits, any number of them up to a whole digest): a listing starts there
        without reading what comes before."""

    def list_blobs(self, after: str = "") -> AsyncIterator[Listed]:
        """As iter_digests, with each blob's size and date (what a listing of a bucket shows)."""

    def delete(self, digest: Digest) -> Awaitable[tuple[str, ...]]:
        """Remove every copy of the blob (an archive deployment that allows deletion asks for it);
        the storages it was removed from, empty when none held it."""

    def health(self) -> Awaitable[Health]: ...

    def start(self) -> Awaitable[None]:
        """Start background work (sweeps, expiry); once, on the serving event loop."""

    def close(self) -> Awaitable[None]: ...


class Layer:
    """A BlobStore around another (caching, metrics): everything it does not override is passed through.

    A pass-through hands back the inner store's awaitable itself, so that a
    layer costs a call, not a coroutine frame, where it adds nothing.
    """

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner

    def head(self, digest: Digest, at: str | None = None) -> Awaitable[BlobInfo | Missing]:
        return self.inner.head(digest, at)

    def open(self, digest: Digest, span: tuple[int, int] | None = None, at: str | None = None) -> Awaitable[OpenBlob | Missing]:
        return self.inner.open(digest, span, at)

    def begin(
        self, expected: Digest | None, length: int | None, meta: BlobMeta = NO_META, staged: StagedBytes | None = None,
    ) -> Awaitable[Upload | Stored]:
        return self.inner.begin(expected, length, meta, staged)

    def staging_dirs(self, length: int | None) -> Awaitable[tuple[str, ...]]:
        return self.inner.staging_dirs(length)

    def put(self, expected: Digest, data: bytes, meta: BlobMeta = NO_META) -> Awaitable[Stored]:
        return self.inner.put(expected, data, meta)

    def contains(self, digests: list[Digest]) -> Awaitable[list[bool]]:
        return self.inner.contains(digests)

    def iter_digests(self, after: str = "") -> AsyncIterator[Digest]:
        return self.inner.iter_digests(after)

    def list_blobs(self, after: str = "") -> AsyncIterator[Listed]:
        return self.inner.list_blobs(after)

    def delete(self, digest: Digest) -> Awaitable[tuple[str, ...]]:
        return self.inner.delete(digest)

    def health(self) -> Awaitable[Health]:
        return self.inner.health()

    def start(self) -> Awaitable[None]:
        return self.inner.start()

    def close(self) -> Awaitable[None]:
        return self.inner.close()


class UploadLayer:
    """An Upload around another: everything it does not override is passed through."""

    def __init__(self, inner: Upload) -> None:
        self.inner = inner

    async def write(self, chunk: bytes) -> None:
        await self.inner.write(chunk)

    async def commit(self) -> Stored:
        return await self.inner.commit()

    async def abort(self) -> None:
        await self.inner.abort()
