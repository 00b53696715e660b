"""Operations on objects: HeadObject, GetObject, PutObject (verified by its key), CopyObject, DeleteObject(s).

An object is a blob and its key its sha: a PutObject is stored through the
store's staged write, hashed as it arrives, and is visible only if it
hashes to its key (BadDigest otherwise, nothing kept). The object's ETag is
its sha (stor.s3api.keys.etag_of), so it is the same however the blob
arrived, through this API, the blob API or tus.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import unquote

from stor.aio import in_thread
from stor.digest import Digest
from stor.http.conditional import Full, NotModified, Partial, Refused, decide
from stor.http.reply import Reply
from stor.http.representation import DEFAULT_TYPE, http_date
from stor.http.text import is_decimal, shown
from stor.http.uploadmeta import header_filename, media_type
from stor.s3api import xmlbody
from stor.s3api.bucket import xml_reply
from stor.s3api.chunked import AwsChunkedDecoder
from stor.s3api.endpoint import Call, Operation
from stor.s3api.errors import S3Error
from stor.s3api.keys import KEY_RULE, digest_of, etag_matches, etag_of
from stor.s3api.sigv4 import STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER, UNSIGNED_PAYLOAD
from stor.store.base import NO_BYTES, BlobInfo, BlobStore, DigestMismatch, Missing, OpenBlob, Stored
from stor.store.metadata import BlobMeta
from stor.store.verify import CorruptBlob

if TYPE_CHECKING:
    from stor.events.hook import PreUploadHook

log = logging.getLogger("stor.s3api")

# A length of more digits is no size a store takes (and int() of thousands of digits is refused).
MAX_LENGTH_DIGITS = 20

META_PREFIX = "x-amz-meta-"
# S3's largest single PutObject; larger objects are multipart uploads.
MAX_PUT_BYTES = 5 * 1024**3
# Chunks at least this large are hashed for Content-MD5 in a thread (hashlib lets go of the GIL).
_MD5_IN_THREAD_BYTES = 256 * 1024
_STREAMING = frozenset({STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER})
# GetObject's response-* parameters: the header of the answer each one sets.
_RESPONSE_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
    "response-content-language": "content-language",
    "response-cache-control": "cache-control",
    "response-expires": "expires",
}
# GetObject's siblings on the same URL: what they ask for is not the object.
_UNSUPPORTED_READS = frozenset({"attributes", "retention", "legal-hold", "torrent"})
_EMPTY_TAGGING = xmlbody.document("Tagging", "<TagSet></TagSet>")
DELETION_OFF = "Deletion is off: the archive is write-once (s3_api.allow_delete)"


class ObjectOperations:
    def __init__(
        self, store: BlobStore, bucket: str, max_blob_bytes: int | None, max_metadata_bytes: int,
        allow_delete: bool, acl: bytes, hook: PreUploadHook | None = None,
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.max_blob_bytes = max_blob_bytes
        self.max_metadata_bytes = max_metadata_bytes
        self.allow_delete = allow_delete
        self._acl = acl
        self.hook = hook  # asked before a PutObject or a multipart upload is taken

    async def check_hook(self, call: Call, digest: Digest, size: int | None, meta: BlobMeta) -> None:
        """AccessDenied, with the pre-upload hook's reason, when it refuses the upload."""
        if self.hook is None:
            return
        who = call.auth.key.access_key if call.auth is not None else None
        reason = await self.hook.refusal(digest.hex, size, who, meta, "s3")
        if reason is not None:
            raise S3Error("AccessDenied", reason)

    def operation(self, call: Call) -> Operation:
        method, query = call.method, call.query
        if method in ("GET", "HEAD"):
            if "acl" in query:
                return self.acl
            if "tagging" in query:
                return self.tagging
            unsupported = _UNSUPPORTED_READS.intersection(query)
            if unsupported:  # not the object's bytes, which a client would take for the answer it asked for
                raise S3Error("NotImplemented", f"?{min(unsupported)} is not supported: objects of the archive carry "
                              "no retention, legal hold or torrent, and GetObjectAttributes is not answered")
            return self.read
        if method == "PUT":
            if "acl" in query or "tagging" in query or "retention" in query or "legal-hold" in query:
                raise S3Error("NotImplemented", "Objects of the archive carry no ACLs, tags or retention of their own")
            if call.header("x-amz-copy-source") is not None:
                return self.copy
            return self.put
        if method == "DELETE":
            return self.delete
        raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource")

    # ---- reads -------------------------------------------------------------

    async def read(self, call: Call) -> Reply:
        assert call.key is not None
        digest = digest_of(call.key)
        if digest is None:
            raise S3Error("NoSuchKey", "The specified key does not exist.", Key=call.key)
        part = call.query.get("partNumber")
        if part is not None and part != "1":
            raise S3Error("InvalidPartNumber", "The requested partnumber is not satisfiable")
        head = call.method == "HEAD"
        try:
            opened = await self.store.open(digest, NO_BYTES if head else None)
        except CorruptBlob as e:  # a verified read found no good copy (each bad one is queued for repair)
            log.error("GET %s: %s", digest, e)
            raise S3Error("InternalError", "Every stored copy of the object that was read is corrupt") from None
        if isinstance(opened, Missing):
            raise S3Error("NoSuchKey", "The specified key does not exist.", Key=call.key)
        try:
            return self._answer(call, opened, head)
        except BaseException:
            opened.close()
            raise

    def _answer(self, call: Call, opened: OpenBlob, head: bool) -> Reply:
        info = opened.info
        etag = etag_of(info.digest)
        modified = http_date(info.mtime)
        headers = [("etag", etag), ("last-modified", modified), ("accept-ranges", "bytes"), *_meta_headers(info)]
        _check_preconditions(call, info)
        answer = NotModified() if _none_match(call, info) else decide(
            call.request.headers, info.size, etag, modified, info.mtime
        )
        for name, header in _RESPONSE_OVERRIDES.items():
            value = call.query.get(name)
            if value is not None:
                headers = [(k, v) for k, v in headers if k != header] + [(header, value)]
        closer = opened.close if opened.holds_resources else None
        if isinstance(answer, Full):
            headers.append(("content-length", str(info.size)))
            return Reply(200, headers, opened.body, opened.on_delivered, closer)
        if isinstance(answer, Partial):
            headers.append(("content-range", f"bytes {answer.start}-{answer.end}/{info.size}"))
            headers.append(("content-length", str(answer.length)))
            if not head:
                opened.narrow(answer.start, answer.length)
            return Reply(206, headers, opened.body, opened.on_delivered, closer)
        opened.close()
        if isinstance(answer, NotModified):
            return Reply(304, [("etag", etag), ("last-modified", modified)])
        assert isinstance(answer, Refused)
        if answer.status == 416:
            raise S3Error("InvalidRange", "The requested range is not satisfiable", ActualObjectSize=str(info.size))
        raise S3Error("InvalidArgument", answer.reason)

    async def acl(self, call: Call) -> Reply:
        await self._existing(call)
        return xml_reply(self._acl)

    async def tagging(self, call: Call) -> Reply:
        await self._existing(call)
        return xml_reply(_EMPTY_TAGGING)

    async def _existing(self, call: Call) -> BlobInfo:
        assert call.key is not None
        digest = digest_of(call.key)
        info = await self.store.head(digest) if digest is not None else None
        if not isinstance(info, BlobInfo):
            raise S3Error("NoSuchKey", "The specified key does not exist.", Key=call.key)
        return info

    # ---- writes ------------------------------------------------------------

    async def put(self, call: Call) -> Reply:
        digest = key_digest(call)
        meta = self.object_meta(call)
        payload, length = body_payload(call, MAX_PUT_BYTES if self.max_blob_bytes is None else
                                       min(MAX_PUT_BYTES, self.max_blob_bytes))
        signed = signed_sha256(call)
        if signed is not None and signed != digest.hex:
            raise S3Error("BadDigest", "The x-amz-content-sha256 the request was signed with is not the key's SHA-256")
        declared = _header_checksum(call)
        if declared is not None and declared != digest.hex:
            raise S3Error("BadDigest", "The x-amz-checksum-sha256 is not the key's SHA-256")
        md5 = content_md5(call)
        await self.check_hook(call, digest, length, meta)
        try:
            stored = await self._store(digest, length, meta, payload, md5)
        except DigestMismatch as e:
            if signed is not None:
                raise S3Error("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not "
                              "match what was computed.", ClientComputedContentSHA256=signed,
                              S3ComputedContentSHA256=e.actual) from None
            raise
        if stored.created:
            log.info("PUT %s: stored through the S3 API", digest)
        return Reply(200, [("etag", etag_of(digest)), ("content-length", "0")])

    async def _store(
        self, digest: Digest, length: int | None, meta: BlobMeta, payload: AsyncIterator[bytes], md5: bytes | None,
    ) -> Stored:
        upload = await self.store.begin(digest, length, meta)
        if isinstance(upload, Stored):
            return upload  # stored already: the archive is write-once, its metadata stays
        hasher = hashlib.md5() if md5 is not None else None
        try:
            async for chunk in payload:
                if hasher is not None:
                    if len(chunk) >= _MD5_IN_THREAD_BYTES:
                        await in_thread(hasher.update, chunk)
                    else:
                        hasher.update(chunk)
                await upload.write(chunk)
            if hasher is not None and hasher.digest() != md5:
                raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.")
            check_trailer(payload, digest)
        except BaseException:
            await upload.abort()
            raise
        return await upload.commit()

    def object_meta(self, call: Call) -> BlobMeta:
        """Content-Type and the x-amz-meta-* pairs, checked and within the metadata limit."""
        headers = call.request.headers
        content_type = headers.get("content-type")
        filename: str | None = None
        user: list[tuple[str, str]] = []
        size = 0
        try:
            kept_type = media_type(content_type, "Content-Type") if content_type is not None else None
            for name, value in headers.items():
                if not name.startswith(META_PREFIX):
                    continue
                key = name[len(META_PREFIX):]
                size += len(key) + len(value)
                if key == "filename":
                    filename = header_filename(value, "x-amz-meta-filename")
                elif key:
                    user.append((key, value))
        except ValueError as e:
            raise S3Error("InvalidArgument", str(e)) from None
        if size > self.max_metadata_bytes:
            raise S3Error("MetadataTooLarge", f"Your metadata headers exceed the maximum allowed metadata size "
                          f"({self.max_metadata_bytes} bytes)", MaxSizeAllowed=str(self.max_metadata_bytes))
        return BlobMeta(kept_type, filename, tuple(user))

    async def copy(self, call: Call) -> Reply:
        """CopyObject: a blob copied is itself, so only onto its own key (the archive keeps one copy of each)."""
        digest = key_digest(call)
        source = unquote(call.header("x-amz-copy-source") or "").partition("?")[0].lstrip("/")
        bucket, _, key = source.partition("/")
        if bucket != self.bucket:
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", BucketName=bucket)
        source_digest = digest_of(key)
        info = await self.store.head(source_digest) if source_digest is not None else None
        if not isinstance(info, BlobInfo):
            raise S3Error("NoSuchKey", "The specified key does not exist.", Key=key)
        if source_digest != digest:
            raise S3Error("InvalidArgument", "A copy is named by its sha too: copy an object only onto a key of "
                          "the same blob (" + KEY_RULE + ")")
        body = xmlbody.document(
            "CopyObjectResult", xmlbody.element("LastModified", xmlbody.iso_time(info.mtime)),
            xmlbody.element("ETag", etag_of(digest)),
        )
        return xml_reply(body)

    async def delete(self, call: Call) -> Reply:
        """DeleteObject: every copy removed (S3 answers 204 for a key that names nothing, too)."""
        if not self.allow_delete:
            raise S3Error("AccessDenied", DELETION_OFF)
        assert call.key is not None
        await self._delete(call, call.key)
        return Reply(204, [])

    async def delete_objects(self, call: Call) -> Reply:
        """DeleteObjects: each key answered in the result (S3 answers 200 and says per key what happened)."""
        keys, quiet = xmlbody.parse_delete(await read_small_body(call, xmlbody.MAX_REQUEST_XML))
        if not self.allow_delete:
            errors = "".join(_delete_error(key, "AccessDenied", DELETION_OFF) for key in keys)
            return xml_reply(xmlbody.document("DeleteResult", errors))
        entries = []
        for key in keys:
            try:
                await self._delete(call, key)
            except Exception as e:  # one key's fault is its entry's; the others go on
                log.error("DeleteObjects %s: %s", shown(key), e)
                entries.append(_delete_error(key, "InternalError", "We encountered an internal error. Please "
                                             "try again."))
                continue
            if not quiet:
                entries.append(f"<Deleted>{xmlbody.element('Key', key)}</Deleted>")
        return xml_reply(xmlbody.document("DeleteResult", "".join(entries)))

    async def _delete(self, call: Call, key: str) -> None:
        """The blob a key names removed from every storage, and said in the log (a key outside the two
        forms names none)."""
        digest = digest_of(key)
        if digest is None:
            return
        removed = await self.store.delete(digest)
        if removed:
            who = call.auth.key.access_key if call.auth is not None else "anonymous"
            log.warning("DELETE %s through the S3 API by %s: removed from %s", digest, who, ", ".join(removed))


async def read_small_body(call: Call, limit: int) -> bytes:
    """A request document read whole (an XML body); MaxMessageLengthExceeded past limit."""
    data = bytearray()
    async for chunk in call.request.body.chunks():
        data += chunk
        if len(data) > limit:
            raise S3Error("MaxMessageLengthExceeded", f"Your request was too big (at most {limit} bytes)")
    return bytes(data)


def key_digest(call: Call) -> Digest:
    """The blob a write names by its key; InvalidArgument naming the rule for any other key."""
    assert call.key is not None
    digest = digest_of(call.key)
    if digest is None:
        raise S3Error("InvalidArgument", KEY_RULE, ArgumentName="key", ArgumentValue=shown(call.key)[:200])
    return digest


def signed_sha256(call: Call) -> str | None:
    """The payload's SHA-256 the request was signed with, when it is a real one (not UNSIGNED or streaming)."""
    payload = call.auth.payload if call.auth is not None else None
    if payload is None or payload == UNSIGNED_PAYLOAD or payload in _STREAMING:
        return None
    if len(payload) != 64 or not all(c in "0123456789abcdef" for c in payload):
        raise S3Error("InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, a STREAMING-* value or "
                      "the payload's SHA-256 in lower-case hex", ArgumentName="x-amz-content-sha256")
    return payload


def body_payload(call: Call, limit: int | None) -> tuple[AsyncIterator[bytes], int | None]:
    """The body's bytes (aws-chunked decoded) and its length; MissingContentLength or EntityTooLarge at once."""
    request = call.request
    headers = request.headers
    payload = call.auth.payload if call.auth is not None else headers.get("x-amz-content-sha256", "")
    chunked = payload in _STREAMING or "aws-chunked" in headers.get("content-encoding", "").lower()
    text = headers.get("x-amz-decoded-content-length") if chunked else headers.get("content-length")
    if text is None:
        if chunked or "chunked" not in headers.get("transfer-encoding", "").lower():
            raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.")
        length = None
    elif not is_decimal(text) or len(text) > MAX_LENGTH_DIGITS:
        raise S3Error("InvalidArgument", f"Bad length '{shown(text)[:40]}'")
    else:
        length = int(text)
    if limit is not None and length is not None and length > limit:
        raise S3Error("EntityTooLarge", f"Your proposed upload exceeds the maximum allowed size ({limit} bytes)",
                      ProposedSize=str(length), MaxSizeAllowed=str(limit))
    if not chunked:
        return request.body.chunks(), length
    signing = call.auth.chunk_signing if call.auth is not None else None
    trailer = payload in (STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
    return AwsChunkedDecoder(request.body.chunks(), length, signing, trailer), length


def check_trailer(payload: AsyncIterator[bytes], digest: Digest) -> None:
    """BadDigest when an aws-chunked body's trailing x-amz-checksum-sha256 is not the key's sha."""
    if not isinstance(payload, AwsChunkedDecoder):
        return
    value = payload.trailers.get("x-amz-checksum-sha256")
    if value is not None and _base64_hex(value) != digest.hex:
        raise S3Error("BadDigest", "The x-amz-checksum-sha256 trailer is not the key's SHA-256")


def _header_checksum(call: Call) -> str | None:
    value = call.header("x-amz-checksum-sha256")
    return _base64_hex(value) if value is not None else None


def _base64_hex(value: str) -> str:
    try:
        return base64.b64decode(value.strip(), validate=True).hex()
    except (binascii.Error, ValueError):
        raise S3Error("InvalidDigest", "The x-amz-checksum-sha256 you specified is not valid base64") from None


def content_md5(call: Call) -> bytes | None:
    value = call.header("content-md5")
    if value is None:
        return None
    try:
        md5 = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        md5 = b""
    if len(md5) != 16:
        raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
    return md5


def _check_preconditions(call: Call, info: BlobInfo) -> None:
    """If-Match and If-Unmodified-Since, which the blob API does not take: 412 PreconditionFailed."""
    if_match = call.header("if-match")
    if if_match is not None:
        if not any(t.strip() == "*" or etag_matches(t, info.digest) for t in if_match.split(",")):
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                          Condition="If-Match")
        return
    since = call.header("if-unmodified-since")
    if since is not None:
        try:
            limit = parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError, IndexError):
            return
        if int(info.mtime) > limit:
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                          Condition="If-Unmodified-Since")


def _none_match(call: Call, info: BlobInfo) -> bool:
    """If-None-Match names the blob: "*", or its ETag in either spelling (this API's, or the blob API's
    `"<sha>"`), as If-Match takes them. decide() compares only this API's."""
    tags = call.header("if-none-match")
    return tags is not None and any(t.strip() == "*" or etag_matches(t, info.digest) for t in tags.split(","))


def _meta_headers(info: BlobInfo) -> list[tuple[str, str]]:
    meta = info.meta
    headers = [("content-type", meta.content_type or DEFAULT_TYPE)]
    if meta.filename is not None:
        headers.append((META_PREFIX + "filename", meta.filename))
    headers.extend((META_PREFIX + k, v) for k, v in meta.user)
    return headers


def _delete_error(key: str, code: str, message: str) -> str:
    return f"<Error>{xmlbody.element('Key', key)}{xmlbody.element('Code', code)}" \
           f"{xmlbody.element('Message', message)}</Error>"
