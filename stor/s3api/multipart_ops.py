"""Multipart uploads over the S3 API: Create, UploadPart, ListParts, Complete, Abort, ListMultipartUploads.

The uploads themselves (parts on the storage, the commit that makes the
object visible only when the whole hashes to its key) are
stor.resumable.multipart's; this module speaks S3 over them.
"""

from __future__ import annotations

from stor.http.reply import Reply
from stor.http.text import shown
from stor.layout import object_key
from stor.resumable import multipart as mp
from stor.s3api import xmlbody
from stor.s3api.bucket import xml_reply
from stor.s3api.endpoint import Call, Operation
from stor.s3api.errors import S3Error
from stor.s3api.keys import digest_of, etag_of
from stor.s3api.objects import (
    ObjectOperations,
    body_payload,
    content_md5,
    key_digest,
    read_small_body,
    signed_sha256,
)
from stor.store.base import DigestMismatch

# The query parameters that make a request to an object one of these operations.
MULTIPART_QUERY = frozenset({"uploads", "uploadId"})
MAX_PART_BYTES = 5 * 1024**3  # S3's largest part
MAX_PARTS_LISTED = 1000


class MultipartOperations:
    def __init__(self, uploads: mp.MultipartUploads | None, objects: ObjectOperations, bucket: str) -> None:
        self.uploads = uploads
        self.objects = objects
        self.bucket = bucket

    def _uploads(self) -> mp.MultipartUploads:
        if self.uploads is None:
            raise S3Error("NotImplemented", "Multipart uploads need storage to keep their parts on "
                          "(set s3_api.multipart_directory)")
        return self.uploads

    def operation(self, call: Call) -> Operation:
        method, query = call.method, call.query
        if method == "POST" and "uploads" in query:
            return self.create
        if "uploadId" in query:
            if method == "PUT" and "partNumber" in query:
                if call.header("x-amz-copy-source") is not None:
                    raise S3Error("NotImplemented", "UploadPartCopy is not supported: send the part's bytes")
                return self.upload_part
            if method == "GET":
                return self.list_parts
            if method == "POST":
                return self.complete
            if method == "DELETE":
                return self.abort
        raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource")

    async def create(self, call: Call) -> Reply:
        digest = key_digest(call)
        meta = self.objects.object_meta(call)
        await self.objects.check_hook(call, digest, None, meta)
        record = await self._uploads().create(digest, meta)
        assert call.key is not None
        return xml_reply(xmlbody.initiate_multipart(self.bucket, call.key, record.id))

    async def upload_part(self, call: Call) -> Reply:
        digest = key_digest(call)
        number = _part_number(call.query["partNumber"])
        payload, length = body_payload(call, MAX_PART_BYTES)
        if length is None:
            raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.")
        try:
            part = await self._uploads().upload_part(
                call.query["uploadId"], digest, number, payload, length, signed_sha256(call), content_md5(call)
            )
        except mp.MultipartError as e:
            raise _s3_error(e, call) from None
        return Reply(200, [("etag", f'"{part.etag}"'), ("content-length", "0")])

    async def list_parts(self, call: Call) -> Reply:
        digest = key_digest(call)
        marker_text = call.query.get("part-number-marker", "0")
        max_text = call.query.get("max-parts", str(MAX_PARTS_LISTED))
        if not marker_text.isdigit() or not max_text.isdigit():
            raise S3Error("InvalidArgument", "part-number-marker and max-parts are whole numbers")
        marker, most = int(marker_text), min(int(max_text), MAX_PARTS_LISTED)
        try:
            record, parts = await self._uploads().list_parts(call.query["uploadId"], digest)
        except mp.MultipartError as e:
            raise _s3_error(e, call) from None
        after = [p for p in parts if p.number > marker]
        shown_parts, truncated = after[:most], len(after) > most
        entries = "".join(
            f"<Part>{xmlbody.element('PartNumber', p.number)}"
            f"{xmlbody.element('LastModified', xmlbody.iso_time(p.last_modified))}"
            f"{xmlbody.element('ETag', chr(34) + p.etag + chr(34))}{xmlbody.element('Size', p.size)}</Part>"
            for p in shown_parts
        )
        body = xmlbody.document(
            "ListPartsResult",
            xmlbody.element("Bucket", self.bucket), xmlbody.element("Key", call.key),
            xmlbody.element("UploadId", record.id), _initiator(), xmlbody.owner(),
            xmlbody.element("StorageClass", "STANDARD"), xmlbody.element("PartNumberMarker", marker),
            xmlbody.element("NextPartNumberMarker", shown_parts[-1].number if shown_parts else marker),
            xmlbody.element("MaxParts", most), xmlbody.element("IsTruncated", truncated), entries,
        )
        return xml_reply(body)

    async def complete(self, call: Call) -> Reply:
        digest = key_digest(call)
        listed = xmlbody.parse_complete_multipart(await read_small_body(call, xmlbody.MAX_REQUEST_XML))
        try:
            await self._uploads().complete(call.query["uploadId"], digest, listed)
        except mp.MultipartError as e:
            raise _s3_error(e, call) from None
        except DigestMismatch as e:
            raise S3Error("BadDigest", f"The parts' SHA-256 is {e.actual}, not the key's {digest.hex}; the upload "
                          "stays open: send the right parts and complete it again, or abort it") from None
        assert call.key is not None
        host = call.header("host") or "localhost"
        body = xmlbody.complete_multipart(f"http://{host}/{self.bucket}/{call.key}", self.bucket, call.key,
                                          etag_of(digest))
        return xml_reply(body)

    async def abort(self, call: Call) -> Reply:
        digest = key_digest(call)
        try:
            await self._uploads().abort(call.query["uploadId"], digest)
        except mp.MultipartError as e:
            raise _s3_error(e, call) from None
        return Reply(204, [])

    async def list_uploads(self, call: Call) -> Reply:
        prefix = call.query.get("prefix", "")
        key_marker = call.query.get("key-marker", "")
        id_marker = call.query.get("upload-id-marker", "")
        max_text = call.query.get("max-uploads", str(MAX_PARTS_LISTED))
        if not max_text.isdigit():
            raise S3Error("InvalidArgument", "max-uploads is a whole number")
        most = min(int(max_text), MAX_PARTS_LISTED)
        records = await self._uploads().list_uploads() if self.uploads is not None else []
        listed = []
        for record in records:
            digest = digest_of(record.digest)
            if digest is None:
                continue
            key = object_key(digest)
            if not key.startswith(prefix) or (key, record.id) <= (key_marker, id_marker or "~" if key_marker else ""):
                continue
            listed.append((key, record))
        shown_uploads, truncated = listed[:most], len(listed) > most
        entries = "".join(
            f"<Upload>{xmlbody.element('Key', key)}{xmlbody.element('UploadId', record.id)}{_initiator()}"
            f"{xmlbody.owner()}{xmlbody.element('StorageClass', 'STANDARD')}"
            f"{xmlbody.element('Initiated', xmlbody.iso_time(record.created))}</Upload>"
            for key, record in shown_uploads
        )
        last = shown_uploads[-1] if truncated and shown_uploads else None
        body = xmlbody.document(
            "ListMultipartUploadsResult",
            xmlbody.element("Bucket", self.bucket), xmlbody.element("KeyMarker", key_marker),
            xmlbody.element("UploadIdMarker", id_marker), xmlbody.element("Prefix", prefix),
            xmlbody.element("NextKeyMarker", last[0] if last else None),
            xmlbody.element("NextUploadIdMarker", last[1].id if last else None),
            xmlbody.element("MaxUploads", most), xmlbody.element("IsTruncated", truncated), entries,
        )
        return xml_reply(body)


def _part_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= mp.MAX_PART_NUMBER:
        raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and {mp.MAX_PART_NUMBER}, "
                      "inclusive", ArgumentName="partNumber", ArgumentValue=shown(text)[:20])
    return int(text)


def _initiator() -> str:
    return f"<Initiator>{xmlbody.element('ID', xmlbody.OWNER_ID)}{xmlbody.element('DisplayName', xmlbody.OWNER_ID)}" \
           "</Initiator>"


def _s3_error(e: mp.MultipartError, call: Call) -> S3Error:
    """The S3 error of a multipart upload's refusal."""
    upload_id = call.query.get("uploadId", "")
    if isinstance(e, mp.NoSuchUpload):
        return S3Error("NoSuchUpload", "The specified upload does not exist. The upload ID may be invalid, or the "
                       "upload may have been aborted or completed.", UploadId=upload_id[:64])
    if isinstance(e, mp.InvalidPart):
        return S3Error("InvalidPart", f"One or more of the specified parts could not be found or its entity tag "
                       f"did not match: {e}")
    if isinstance(e, mp.InvalidPartOrder):
        return S3Error("InvalidPartOrder", "The list of parts was not in ascending order. The parts list must be "
                       "specified in order by part number.")
    if isinstance(e, mp.EntityTooSmall):
        return S3Error("EntityTooSmall", f"Your proposed upload is smaller than the minimum allowed size: {e}")
    if isinstance(e, mp.PartDigestMismatch):
        if e.kind == "md5":
            return S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.")
        return S3Error("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match "
                       "what was computed.")
    if isinstance(e, mp.Busy):
        return S3Error("OperationAborted", "A conflicting operation is currently in progress against this upload. "
                       "Please try again.")
    if isinstance(e, mp.TooManyUploads):
        return S3Error("SlowDown", f"Too many multipart uploads in progress: {e}", 503)
    if isinstance(e, mp.IncompleteBody):
        return S3Error("IncompleteBody", "You did not provide the number of bytes specified by the Content-Length "
                       "HTTP header")
    return S3Error("InvalidRequest", str(e))
