"""Operations on the service and on the bucket: ListBuckets, HeadBucket, its location and settings, listings.

There is one bucket, the archive; what can be configured on an S3 bucket
(ACLs, CORS, policies, lifecycle) is stor's configuration here, so reading
it is answered, as s3cmd and rclone ask before their commands, and changing
it through the API is refused.
"""

from __future__ import annotations

import base64
import binascii

from stor.http.reply import Reply
from stor.s3api import xmlbody
from stor.s3api.endpoint import Call, Cors, Operation
from stor.s3api.errors import S3Error
from stor.s3api.keys import etag_of
from stor.s3api.listing import MAX_KEYS, Page, list_page
from stor.store.base import BlobStore

# Bucket settings that are not kept (nothing is configured): S3's answer for a bucket without them.
_NOT_CONFIGURED = {
    "policy": ("NoSuchBucketPolicy", "The bucket policy does not exist"),
    "lifecycle": ("NoSuchLifecycleConfiguration", "The lifecycle configuration does not exist"),
    "tagging": ("NoSuchTagSet", "The TagSet does not exist"),
    "website": ("NoSuchWebsiteConfiguration", "The specified bucket does not have a website configuration"),
    "encryption": ("ServerSideEncryptionConfigurationNotFoundError",
                   "The server side encryption configuration was not found"),
    "replication": ("ReplicationConfigurationNotFoundError", "The replication configuration was not found"),
    "object-lock": ("ObjectLockConfigurationNotFoundError", "Object Lock configuration does not exist for this bucket"),
    "ownershipControls": ("OwnershipControlsNotFoundError", "The bucket ownership controls were not found"),
    "publicAccessBlock": ("NoSuchPublicAccessBlockConfiguration",
                          "The public access block configuration was not found"),
}
_EMPTY_DOCUMENTS = {
    "versioning": xmlbody.document("VersioningConfiguration"),
    "logging": xmlbody.document("BucketLoggingStatus"),
    "notification": xmlbody.document("NotificationConfiguration"),
    "accelerate": xmlbody.document("AccelerateConfiguration"),
    "requestPayment": xmlbody.document("RequestPaymentConfiguration", xmlbody.element("Payer", "BucketOwner")),
}

# Bucket subresources that are not a listing and have no answer here (a listing in their place would be read as one).
_UNSUPPORTED = frozenset({
    "versions", "analytics", "inventory", "metrics", "intelligent-tiering", "policyStatus", "metadataTable",
    "metadataConfiguration",
})


def xml_reply(body: bytes, status: int = 200) -> Reply:
    return Reply(status, [("content-type", xmlbody.XML_TYPE), ("content-length", str(len(body)))], body)


class BucketOperations:
    def __init__(
        self, store: BlobStore, bucket: str, region: str, anonymous_read: bool, cors: Cors, created: float,
        uploads_listing: Operation, delete_objects: Operation,
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.region = region
        self.created = created
        self.cors = cors
        self._location = xmlbody.location(region)
        self._acl = xmlbody.access_control_policy(anonymous_read)
        self.uploads_listing = uploads_listing
        self.delete_objects = delete_objects

    async def list_buckets(self, call: Call) -> Reply:
        if call.method not in ("GET", "HEAD"):
            raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource")
        return xml_reply(xmlbody.list_buckets(self.bucket, self.created))

    def operation(self, call: Call) -> Operation:
        method, query = call.method, call.query
        if method == "HEAD":
            return self.head_bucket
        if method == "GET":
            if "uploads" in query:
                return self.uploads_listing
            if "location" in query:
                return self.location
            if "acl" in query:
                return self.acl
            if "cors" in query:
                return self.cors_configuration
            for name in _NOT_CONFIGURED:
                if name in query:
                    return self.not_configured
            for name in _EMPTY_DOCUMENTS:
                if name in query:
                    return self.empty_document
            unsupported = _UNSUPPORTED.intersection(query)
            if unsupported:
                raise S3Error("NotImplemented", f"?{min(unsupported)} is not supported by this archive (one version "
                              "of each object, no analytics, inventory or metrics configurations)")
            return self.list_v2 if query.get("list-type") == "2" else self.list_v1
        if method == "PUT":
            return self.create
        if method == "POST" and "delete" in query:
            return self.delete_objects
        if method == "DELETE":
            return self.delete
        raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource")

    async def head_bucket(self, call: Call) -> Reply:
        return Reply(200, [("x-amz-bucket-region", self.region), ("content-length", "0")])

    async def location(self, call: Call) -> Reply:
        return xml_reply(self._location)

    async def acl(self, call: Call) -> Reply:
        return xml_reply(self._acl)

    async def cors_configuration(self, call: Call) -> Reply:
        cors = self.cors
        if not cors.origins:
            raise S3Error("NoSuchCORSConfiguration", "The CORS configuration does not exist", 404)
        return xml_reply(xmlbody.cors_configuration(
            sorted(cors.origins), cors.methods, sorted(cors.headers), cors.expose.split(", ") if cors.expose else (),
            cors.max_age,
        ))

    async def not_configured(self, call: Call) -> Reply:
        for name, (code, message) in _NOT_CONFIGURED.items():
            if name in call.query:
                raise S3Error(code, message, 404, BucketName=self.bucket)
        raise AssertionError("dispatched without a known setting")

    async def empty_document(self, call: Call) -> Reply:
        for name, body in _EMPTY_DOCUMENTS.items():
            if name in call.query:
                return xml_reply(body)
        raise AssertionError("dispatched without a known setting")

    async def create(self, call: Call) -> Reply:
        if call.query:
            raise S3Error("NotImplemented", "The bucket's settings are stor's configuration (section s3_api); "
                          "they cannot be changed through the API")
        raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded and "
                      "you already own it.", BucketName=self.bucket)

    async def delete(self, call: Call) -> Reply:
        raise S3Error("AccessDenied", "The archive's bucket cannot be deleted")

    # ---- listings ----------------------------------------------------------

    async def list_v2(self, call: Call) -> Reply:
        q = call.query
        prefix, delimiter, max_keys, url = _listing_params(q)
        token = q.get("continuation-token")
        start_after = q.get("start-after")
        after = _token_key(token) if token is not None else (start_after or "")
        page = await list_page(self.store, prefix, delimiter, after, max_keys)
        next_token = _token(page.last) if page.truncated and page.last is not None else None
        parts = [
            xmlbody.element("Name", self.bucket),
            xmlbody.element("Prefix", xmlbody.encoded(prefix, url)),
            xmlbody.element("Delimiter", xmlbody.encoded(delimiter, url) if delimiter else None),
            xmlbody.element("MaxKeys", max_keys),
            xmlbody.element("EncodingType", "url" if url else None),
            xmlbody.element("KeyCount", len(page.keys) + len(page.common_prefixes)),
            xmlbody.element("IsTruncated", page.truncated),
            xmlbody.element("ContinuationToken", token),
            xmlbody.element("NextContinuationToken", next_token),
            xmlbody.element("StartAfter", xmlbody.encoded(start_after, url)),
        ]
        entries = _entries(page, q.get("fetch-owner") == "true", url)
        return xml_reply(xmlbody.document("ListBucketResult", *parts, *entries))

    async def list_v1(self, call: Call) -> Reply:
        q = call.query
        prefix, delimiter, max_keys, url = _listing_params(q)
        marker = q.get("marker", "")
        page = await list_page(self.store, prefix, delimiter, marker, max_keys)
        parts = [
            xmlbody.element("Name", self.bucket),
            xmlbody.element("Prefix", xmlbody.encoded(prefix, url)),
            xmlbody.element("Marker", xmlbody.encoded(marker, url)),
            xmlbody.element("MaxKeys", max_keys),
            xmlbody.element("Delimiter", xmlbody.encoded(delimiter, url) if delimiter else None),
            xmlbody.element("EncodingType", "url" if url else None),
            xmlbody.element("IsTruncated", page.truncated),
            xmlbody.element("NextMarker", xmlbody.encoded(page.last, url) if page.truncated else None),
        ]
        return xml_reply(xmlbody.document("ListBucketResult", *parts, *_entries(page, True, url)))


def _listing_params(q: dict[str, str]) -> tuple[str, str, int, bool]:
    """prefix, delimiter, max-keys (at most 1000) and whether keys are URL-encoded; InvalidArgument if malformed."""
    text = q.get("max-keys", str(MAX_KEYS))
    if not text.isdigit() or len(text) > 10:
        raise S3Error("InvalidArgument", "Provided max-keys not an integer or within integer range",
                      ArgumentName="max-keys", ArgumentValue=text[:64])
    encoding = q.get("encoding-type")
    if encoding is not None and encoding != "url":
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                      ArgumentName="encoding-type", ArgumentValue=encoding[:64])
    return q.get("prefix", ""), q.get("delimiter", ""), min(int(text), MAX_KEYS), encoding == "url"


def _entries(page: Page, with_owner: bool, url: bool) -> list[str]:
    entries = [
        xmlbody.contents(key, blob.mtime, etag_of(blob.digest), blob.size, with_owner, url) for key, blob in page.keys
    ]
    entries.append(xmlbody.common_prefixes(page.common_prefixes, url))
    return entries


def _token(after: str) -> str:
    """A continuation token: where the next page starts, opaque to the client."""
    return base64.urlsafe_b64encode(after.encode()).decode()


def _token_key(token: str) -> str:
    """The key a continuation token of _token's resumes after; InvalidArgument for anything else (urlsafe_b64decode
    alone would drop characters outside the alphabet and take "%" or "" for the start of the listing)."""
    try:
        after = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError):
        after = ""
    if not after or _token(after) != token:
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      ArgumentName="continuation-token")
    return after
