"""The S3 API put together: its endpoint over the store, with its verifier, CORS rules and operations."""

from __future__ import annotations

import time

from stor.config import S3ApiSettings, UploadSettings
from stor.events.hook import PreUploadHook
from stor.resumable.multipart import MultipartUploads
from stor.s3api import xmlbody
from stor.s3api.bucket import BucketOperations
from stor.s3api.endpoint import Call, Cors, Operation, Operations, S3Endpoint
from stor.s3api.multipart_ops import MULTIPART_QUERY, MultipartOperations
from stor.s3api.objects import ObjectOperations
from stor.s3api.sigv4 import SignatureVerifier
from stor.store.base import BlobStore


def s3_endpoint(
    store: BlobStore, settings: S3ApiSettings, uploads: UploadSettings, multipart: MultipartUploads | None,
    hook: PreUploadHook | None = None,
) -> S3Endpoint:
    cors_settings = settings.cors
    cors = Cors(cors_settings.origins, cors_settings.methods, cors_settings.headers, cors_settings.expose_headers,
                cors_settings.max_age)
    acl = xmlbody.access_control_policy(settings.anonymous_read)
    objects = ObjectOperations(
        store, settings.bucket, uploads.max_blob_bytes, settings.max_metadata_bytes, settings.allow_delete, acl, hook,
    )
    parts = MultipartOperations(multipart, objects, settings.bucket)
    bucket = BucketOperations(
        store, settings.bucket, settings.region, settings.anonymous_read, cors, time.time(),
        parts.list_uploads, objects.delete_objects,
    )

    def object_operation(call: Call) -> Operation:
        if not MULTIPART_QUERY.isdisjoint(call.query):
            return parts.operation(call)
        return objects.operation(call)

    return S3Endpoint(
        settings.bucket, settings.domain, SignatureVerifier(settings.access_keys, settings.max_clock_skew),
        settings.anonymous_read, Operations(bucket.list_buckets, bucket.operation, object_operation), cors,
    )
