"""The BlobStore of an S3 bucket: the original Stor's key scheme, streamed reads, verified multipart writes.

A blob is the object `aa/bb/cc/<sha>` (lower case, no suffix), as the
original read it; its media type is the object's Content-Type, its
filename the user metadata `filename`, and the S3 API's x-amz-meta-* pairs
the rest of the object's user metadata. Reads are one request: a GET whose
answer carries what a HEAD would (a HEAD alone for a read of no bytes), its
body streamed in chunks, never held whole. A write hashes the body as it
goes and makes the object visible only once the whole hashes to its name:
a small body is one PUT after hashing, a large one a multipart upload
completed only after the sha matched (aborted otherwise: an unfinished
multipart upload is invisible). Both are conditional (If-None-Match: *), so
concurrent uploads of one sha cannot leave anything but its bytes.

The client is aiobotocore (botocore's signing and S3 model over aiohttp; the
README says why). Reads use a client that never retries, so that a tier
above falls through to local storage at once; writes retry as botocore's
standard mode does. Faults are StoreErrors: S3Unreachable (connection,
timeout, 5xx: passing, answered 503) or S3Refused (the server said no:
credentials, bucket; a configuration fault, answered 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from stor.aio import in_thread
from stor.config import S3Credentials, S3Settings
from stor.digest import Digest
from stor.layout import digest_of_key, key_of_hex, object_key
from stor.store.base import (
    NO_BYTES,
    BlobInfo,
    DigestMismatch,
    Health,
    Listed,
    Lookup,
    Missing,
    OpenBlob,
    ServiceState,
    StagedBytes,
    Stored,
    StoreError,
    TooLarge,
    Unavailable,
    Upload,
)
from stor.store.metadata import NO_META, BlobMeta
from stor.store.staged import StagedCopy
from stor.store.verify import OFF, ReadVerification

log = logging.getLogger("stor.s3")

TIER = "s3"
READ_CHUNK = 1 << 20  # at most this much per chunk of a streamed body
HASH_IN_THREAD_BYTES = 256 * 1024  # smaller chunks are hashed on the loop (a thread hop costs more)
MAX_CONCURRENT_HEADS = 16  # per contains() call
# The types S3 servers give an object stored without one: served as stor's default.
_UNTYPED = frozenset({"binary/octet-stream", "application/octet-stream", ""})
_FOUND = Lookup("s3")
_TRANSIENT_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"})


class S3Unreachable(Unavailable):
    """S3 could not be reached or answered a passing fault (connection, timeout, 5xx, throttling)."""

    reason = "S3 unreachable"


class S3Refused(StoreError):
    """S3 refused the request (credentials, permissions, a missing bucket): a fault of the configuration."""


class CorruptObject(StoreError):
    """An object's bytes do not hash to its sha (found while streaming it with s3.verify_reads)."""

    def __init__(self, digest: Digest, actual: str) -> None:
        super().__init__(f"S3 object of {digest.hex} hashes to {actual}")
        self.digest = digest


def fault(e: BaseException, doing: str) -> StoreError:
    """An exception of the client as one of ours, worded for the log and the operator."""
    if isinstance(e, ClientError):
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        message = f"{doing}: S3 answered {status} {code}: {error.get('Message', '')}".rstrip(": ")
        if status >= 500 or code in _TRANSIENT_CODES:
            return S3Unreachable(message)
        return S3Refused(message)
    if isinstance(e, StoreError):
        return e
    return S3Unreachable(f"{doing}: {type(e).__name__}: {e}")


# What the client raises for a request that failed (besides our own StoreErrors).
CLIENT_ERRORS = (BotoCoreError, ClientError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


def _status_of(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


class S3Store:
    """The BlobStore of one bucket (stor.store.base)."""

    def __init__(
        self, settings: S3Settings, endpoint: str, credentials: S3Credentials, max_blob_bytes: int | None = None,
        verify: ReadVerification = OFF,
    ) -> None:
        self.settings = settings
        self.verify = verify  # which whole-object reads are hashed as they stream (see S3Body)
        self.endpoint = endpoint
        self.bucket = settings.bucket
        self.credentials = credentials
        self.max_blob_bytes = max_blob_bytes
        self.name = f"s3://{self.bucket}"  # the storage, as BlobInfo.storage names it
        # Told of an object that does not hash to its sha (the tier above then avoids it).
        self.on_corrupt: Callable[[Digest, str], None] | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.reader: Any = None
        self.writer: Any = None

    def _config(self, attempts: int) -> AioConfig:
        s = self.settings
        return AioConfig(
            region_name=s.region,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            max_pool_connections=s.max_connections,
            retries={"total_max_attempts": attempts, "mode": "standard"},
            s3={"addressing_style": s.addressing_style},
            # Checksums beyond what S3 requires break some servers (REAL_SERVERS.md); the sha is ours to check.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )

    async def start(self) -> None:
        if self._stack is not None:
            return
        session = get_session()
        stack = contextlib.AsyncExitStack()
        kwargs = dict(
            endpoint_url=self.endpoint,
            aws_access_key_id=self.credentials.access_key,
            aws_secret_access_key=self.credentials.secret_key,
        )
        self.reader = await stack.enter_async_context(session.create_client("s3", config=self._config(1), **kwargs))
        self.writer = await stack.enter_async_context(session.create_client("s3", config=self._config(3), **kwargs))
        self._stack = stack

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def location(self, digest: Digest) -> str:
        return f"s3://{self.bucket}/{object_key(digest)}"

    # ---- reads -------------------------------------------------------------

    async def _read(self, verb: str, digest: Digest, **fields: Any) -> dict[str, Any] | None:
        """The answer of a HEAD or GET of the blob's object; None when there is none (404)."""
        key = object_key(digest)
        call = self.reader.head_object if verb == "HEAD" else self.reader.get_object
        try:
            return await call(Bucket=self.bucket, Key=key, **fields)  # type: ignore[no-any-return]
        except ClientError as e:
            if _status_of(e) == 404:
                return None
            raise fault(e, f"{verb} {key}") from e
        except CLIENT_ERRORS as e:
            raise fault(e, f"{verb} {key}") from e

    async def delete(self, digest: Digest) -> tuple[str, ...]:
        if await self._read("HEAD", digest) is None:
            return ()
        key = object_key(digest)
        try:
            await self.writer.delete_object(Bucket=self.bucket, Key=key)
        except CLIENT_ERRORS as e:
            raise fault(e, f"DELETE {key}") from e
        return (f"s3://{self.bucket}",)

    async def head(self, digest: Digest, at: str | None = None) -> BlobInfo | Missing:
        answer = await self._read("HEAD", digest)
        if answer is None:
            return Missing(_FOUND)
        return self._info(digest, answer, answer["ContentLength"])

    async def open(
        self, digest: Digest, span: tuple[int, int] | None = None, at: str | None = None
    ) -> OpenBlob | Missing:
        if span == NO_BYTES:
            found = await self.head(digest)
            if isinstance(found, Missing):
                return found
            return OpenBlob(found, S3Body(self, digest, found.size, 0, 0, None))
        ranged = {} if span is None else {"Range": f"bytes={span[0]}-{span[0] + span[1] - 1}"}
        answer = await self._read("GET", digest, **ranged)
        if answer is None:
            return Missing(_FOUND)
        size = answer["ContentLength"]
        if span is not None:
            size = int(str(answer.get("ContentRange", "")).rpartition("/")[2] or size)
        info = self._info(digest, answer, size)
        offset, length = span if span is not None else (0, size)
        return OpenBlob(info, S3Body(self, digest, size, offset, length, answer["Body"]))

    def _info(self, digest: Digest, answer: dict[str, Any], size: int) -> BlobInfo:
        content_type = answer.get("ContentType")
        user = dict(answer.get("Metadata", {}))
        filename = user.pop("filename", None)
        meta = BlobMeta(
            None if content_type in _UNTYPED or content_type is None else content_type, filename or None,
            tuple(user.items()),
        )
        return BlobInfo(
            digest, size, answer["LastModified"].timestamp(), meta if meta else NO_META, TIER,
            self.location(digest), self.name, _FOUND,
        )

    async def get_range(self, digest: Digest, offset: int, length: int) -> Any:
        """The streaming body of bytes offset..offset+length (a read narrowed after it was opened)."""
        answer = await self._read("GET", digest, Range=f"bytes={offset}-{offset + length - 1}")
        if answer is None:
            raise StoreError(f"GET {object_key(digest)}: the object is gone since it was opened")
        return answer["Body"]

    async def contains(self, digests: list[Digest]) -> list[bool]:
        slots = asyncio.Semaphore(MAX_CONCURRENT_HEADS)

        async def present(digest: Digest) -> bool:
            async with slots:
                return not isinstance(await self.head(digest), Missing)

        tasks = [asyncio.ensure_future(present(d)) for d in digests]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # One failed (S3 out of reach): the rest would only wait out their own timeouts.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def iter_digests(self, after: str = "") -> AsyncIterator[Digest]:
        """Every blob in the bucket, in lexical order (S3 lists keys in that order, and so does the scheme)."""
        async for listed in self.list_blobs(after):
            yield listed.digest

    async def list_blobs(self, after: str = "") -> AsyncIterator[Listed]:
        start = {"StartAfter": key_of_hex(after)} if after else {}
        pages = self.writer.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, **start)
        try:
            async for page in pages:
                for entry in page.get("Contents", ()):
                    digest = digest_of_key(entry["Key"])
                    if digest is not None:
                        yield Listed(digest, entry["Size"], entry["LastModified"].timestamp())
        except CLIENT_ERRORS as e:
            raise fault(e, f"listing bucket {self.bucket}") from e

    # ---- writes ------------------------------------------------------------

    async def begin(
        self, expected: Digest | None, length: int | None, meta: BlobMeta = NO_META, staged: StagedBytes | None = None,
    ) -> Upload | Stored:
        if expected is None:
            raise StoreError("an upload to S3 needs its sha beforehand (the object is named by it)")
        if self.max_blob_bytes is not None and length is not None and length > self.max_blob_bytes:
            raise TooLarge(self.max_blob_bytes)
        if not isinstance(await self.head(expected), Missing):
            return Stored(expected, False, (self.location(expected),), self.name)
        upload = S3Upload(self, expected, meta)
        return upload if staged is None else StagedCopy(upload, staged)

    async def staging_dirs(self, length: int | None) -> tuple[str, ...]:
        return ()  # staged bytes are read and sent wherever they are

    async def put(self, expected: Digest, data: bytes, meta: BlobMeta = NO_META) -> Stored:
        if self.max_blob_bytes is not None and len(data) > self.max_blob_bytes:
            raise TooLarge(self.max_blob_bytes)
        actual = (await in_thread(hashlib.sha256, data)).hexdigest()
        if actual != expected.hex:
            raise DigestMismatch(expected, actual)
        return await self._put_object(expected, data, meta)

    def _object_fields(self, meta: BlobMeta) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if meta.content_type:
            fields["ContentType"] = meta.content_type
        user = dict(meta.user)
        if meta.filename:
            user["filename"] = meta.filename
        if user:
            fields["Metadata"] = user
        return fields

    async def _put_object(self, digest: Digest, data: bytes, meta: BlobMeta) -> Stored:
        """One PUT of verified bytes; created only if no object had that key (If-None-Match: *)."""
        key = object_key(digest)
        try:
            await self.writer.put_object(
                Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*", **self._object_fields(meta)
            )
        except ClientError as e:
            if _status_of(e) == 412:  # the same blob, put by someone else meanwhile
                return Stored(digest, False, (self.location(digest),), self.name)
            raise fault(e, f"PUT {key}") from e
        except CLIENT_ERRORS as e:
            raise fault(e, f"PUT {key}") from e
        return Stored(digest, True, (self.location(digest),), self.name)

    # ---- health ------------------------------------------------------------

    async def probe(self) -> str | None:
        """None when the bucket answers; else why not, in one line."""
        try:
            await self.reader.head_bucket(Bucket=self.bucket)
        except CLIENT_ERRORS as e:
            return str(fault(e, f"HEAD bucket {self.bucket}"))
        return None

    async def health(self) -> Health:
        error = await self.probe()
        return Health(services=(ServiceState("s3", f"{self.endpoint}/{self.bucket}", error is None, error),))


class S3Body:
    """A streamed object body: the answer of the GET that opened it, or a ranged GET sent when first read.

    With verify (integrity.verify_reads or s3.verify_reads, a whole blob), the bytes are hashed as they
    pass and the last chunk is held back until the hash is known: a mismatch
    raises CorruptObject before it, so the connection is cut short of the
    blob's length and no client takes the bytes for a complete answer.
    """

    def __init__(self, store: S3Store, digest: Digest, size: int, offset: int, length: int, answer: Any) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.offset = offset
        self.length = length
        self._answer = answer
        self.verify = store.verify.wanted()

    def narrow(self, offset: int, length: int) -> None:
        """Only bytes offset..offset+length: the GET already answering (if any) is dropped, a ranged one sent."""
        self.close()
        self.offset, self.length = offset, length

    def close(self) -> None:
        answer, self._answer = self._answer, None
        if answer is not None:
            answer.close()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self.length == 0:
            return
        answer = self._answer
        if answer is None:
            answer = self._answer = await self.store.get_range(self.digest, self.offset, self.length)
        hasher = hashlib.sha256() if self.verify and self.offset == 0 and self.length == self.size else None
        held = b""
        try:
            while True:
                chunk = await answer.read(READ_CHUNK)
                if not chunk:
                    break
                if hasher is None:
                    yield chunk
                    continue
                if held:
                    yield held
                if len(chunk) >= HASH_IN_THREAD_BYTES:
                    await in_thread(hasher.update, chunk)
                else:
                    hasher.update(chunk)
                held = chunk
        except CLIENT_ERRORS as e:
            raise fault(e, f"GET {object_key(self.digest)}") from e
        if hasher is not None:
            actual = hasher.hexdigest()
            if actual != self.digest.hex:
                corrupt = CorruptObject(self.digest, actual)
                if self.store.on_corrupt is not None:
                    self.store.on_corrupt(self.digest, str(corrupt))
                raise corrupt
            if held:
                yield held


class S3Upload:
    """A staged write to the bucket: parts go out while the body arrives; visible only once verified.

    Memory: the part being filled, the one waiting for a slot, and at most
    parts_in_flight parts on their way (write() waits for a free slot, which slows the client down
    rather than buffering it).
    """

    def __init__(self, store: S3Store, expected: Digest, meta: BlobMeta) -> None:
        self.store = store
        self.expected = expected
        self.meta = meta
        self.key = object_key(expected)
        self._hasher = hashlib.sha256()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[asyncio.Task[str]] = []
        self._slots = asyncio.Semaphore(store.settings.parts_in_flight)
        self._done = False

    async def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        limit = self.store.max_blob_bytes
        if limit is not None and self._size > limit:
            raise TooLarge(limit)
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= self.store.settings.part_bytes:
            # A part is what has arrived once there is at least part_bytes (S3 asks only that every part
            # but the last be 5 MiB or more): joined once, never cut and copied again.
            await self._send_part(self._take())

    def _take(self) -> bytes:
        part = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        return part

    async def _send_part(self, part: bytes) -> None:
        await in_thread(self._hasher.update, part)
        writer, bucket = self.store.writer, self.store.bucket
        if self._upload_id is None:
            try:
                created = await writer.create_multipart_upload(
                    Bucket=bucket, Key=self.key, **self.store._object_fields(self.meta)
                )
            except CLIENT_ERRORS as e:
                raise fault(e, f"starting the multipart upload of {self.key}") from e
            self._upload_id = created["UploadId"]
        await self._slots.acquire()
        for sent in self._parts:
            if sent.done() and sent.exception() is not None:
                self._slots.release()
                raise sent.exception()  # type: ignore[misc]
        self._parts.append(asyncio.create_task(self._upload_part(len(self._parts) + 1, part)))

    async def _upload_part(self, number: int, part: bytes) -> str:
        try:
            answer = await self.store.writer.upload_part(
                Bucket=self.store.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=part
            )
        except CLIENT_ERRORS as e:
            raise fault(e, f"part {number} of {self.key}") from e
        finally:
            self._slots.release()
        return str(answer["ETag"])

    async def commit(self) -> Stored:
        tail = self._take()
        if self._upload_id is None:
            await in_thread(self._hasher.update, tail)
            self._verify()
            self._done = True
            return await self.store._put_object(self.expected, tail, self.meta)
        if tail:
            await self._send_part(tail)
        try:
            etags = await asyncio.gather(*self._parts)
            self._verify()
        except BaseException:
            await self.abort()
            raise
        parts = [{"ETag": etag, "PartNumber": n} for n, etag in enumerate(etags, 1)]
        writer = self.store.writer
        try:
            await writer.complete_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except ClientError as e:
            if _status_of(e) == 412:  # completed by another upload of the same blob meanwhile
                await self.abort()
                return Stored(self.expected, False, (self.store.location(self.expected),), self.store.name)
            await self.abort()
            raise fault(e, f"completing the multipart upload of {self.key}") from e
        except CLIENT_ERRORS as e:
            await self.abort()
            raise fault(e, f"completing the multipart upload of {self.key}") from e
        self._done = True
        return Stored(self.expected, True, (self.store.location(self.expected),), self.store.name)

    def _verify(self) -> None:
        actual = self._hasher.hexdigest()
        if actual != self.expected.hex:
            raise DigestMismatch(self.expected, actual)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        for part in self._parts:
            part.cancel()
        await asyncio.gather(*self._parts, return_exceptions=True)
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            await self.store.writer.abort_multipart_upload(Bucket=self.store.bucket, Key=self.key, UploadId=upload_id)
        except CLIENT_ERRORS as e:
            # Invisible either way; the bucket's lifecycle rule (or a later abort) removes its parts.
            log.warning("could not abort the multipart upload %s of %s: %s", upload_id, self.key, fault(e, "abort"))
