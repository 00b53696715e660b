"""HEAD/GET/POST/PUT /<sha>: parse the request, call the store, say what happened in HTTP."""

from __future__ import annotations

import logging
from collections.abc import Callable

from stor.config import UploadSettings
from stor.digest import Digest, InvalidDigest
from stor.events.bus import EventBus
from stor.http import reply as replies
from stor.http.auth import Authenticator, refusal, user_of
from stor.http.conditional import CONDITIONAL_HEADERS, Full, NotModified, Partial, Refused, decide
from stor.http.reply import Reply
from stor.http.representation import full_headers, representation_headers, validator_headers
from stor.http.request import BodyTimeout, ClientDisconnect, Request, close_if_body_unread
from stor.http.text import is_decimal, shown
from stor.http.uploadmeta import upload_meta
from stor.metrics import Metrics
from stor.store.base import (
    NO_BYTES,
    BlobStore,
    DigestMismatch,
    Missing,
    NoSpace,
    NoWritableStorage,
    OpenBlob,
    Stored,
    TooLarge,
    unavailable_reason,
)
from stor.store.metadata import BlobMeta
from stor.store.verify import CorruptBlob

log = logging.getLogger("stor.http")

# Uploads up to this size, sent without waiting for 100 Continue, are read whole and
# stored in one step (store.put: one thread hop) instead of staged chunk by chunk.
SMALL_UPLOAD_BYTES = 1 << 20

class BlobEndpoint:
    """The handlers of the blob route: read (GET, HEAD) and write (POST, PUT)."""

    def __init__(
        self, store: BlobStore, auth: Authenticator, metrics: Metrics, uploads: UploadSettings,
        events: EventBus | None = None,
    ) -> None:
        self.store = store
        self.auth = auth
        self.metrics = metrics
        self.max_blob_bytes = uploads.max_blob_bytes
        # The original's message of each GET and HEAD of a valid sha (found or not), when one is wanted.
        self._requested = events.requested if events is not None and events.wants_requests else None
        self.hook = events.hook if events is not None else None  # asked before an upload is taken

    async def read(self, request: Request) -> Reply:
        self.metrics.incr("request.get.count")
        if self.auth.read_required:
            refused = await refusal(self.auth, request, need_write=False)
            if refused is not None:
                return refused
        sha = request.path[1:]
        try:
            digest = Digest.parse(sha)
        except InvalidDigest:
            self.metrics.incr("error.get.malformed_sha.count")
            # The original's wording differs between GET ("SHA256") and POST ("sha256"); probes may match either.
            return replies.text(404, f"Given hash '{shown(sha)}' isn't SHA256")
        if self._requested is not None:
            self._requested(sha)
        try:
            opened = await self.store.open(digest, NO_BYTES if request.method == "HEAD" else None)
        except CorruptBlob as e:  # a verified read found no good copy (each bad one is queued for repair)
            log.error("GET %s: %s", digest, e)
            return replies.text(500, "Every stored copy of the blob that was read is corrupt")
        except Exception as e:
            reason = unavailable_reason(e)
            if reason is not None:
                log.error("GET %s: %s: %s", digest, reason, e)
                return replies.unavailable(reason)
            log.exception("GET %s failed", digest)
            return replies.text(500, "Internal error reading the blob")
        if isinstance(opened, Missing):
            return replies.text(404, f"File '{sha}' not found")
        if CONDITIONAL_HEADERS.isdisjoint(request.headers.keys()):
            return _whole(opened)
        return _conditional(request, opened)

    async def write(self, request: Request) -> Reply:
        return close_if_body_unread(request, await self._write(request))

    async def _write(self, request: Request) -> Reply:
        self.metrics.incr("request.post.count")
        sha = request.path[1:]
        try:
            digest = Digest.parse(sha)
        except InvalidDigest:
            self.metrics.incr("error.post.malformed_sha.count")
            return replies.text(412, f"Given hash '{shown(sha)}' isn't sha256")
        refused = await refusal(self.auth, request, need_write=True)
        if refused is not None:
            return refused
        try:
            meta = upload_meta(request.headers)
        except ValueError as e:
            return replies.text(400, str(e))
        length_header = request.headers.get("content-length")
        length: int | None = None
        if length_header is not None:
            if not is_decimal(length_header):
                return replies.text(400, f"Bad Content-Length '{shown(length_header)}'")
            length = int(length_header)
        if self.hook is not None:
            reason = await self.hook.refusal(digest.hex, length, user_of(request), meta, "blob")
            if reason is not None:
                return replies.text(403, reason)

        try:
            stored = await self._store(request, digest, length, meta)
        except DigestMismatch as e:
            return replies.text(412, str(e))
        except NoSpace as e:
            log.warning("POST %s: %s", digest, e)
            return replies.text(507, str(e) if isinstance(e, NoWritableStorage) else "Not enough space on storages")
        except TooLarge as e:
            return replies.text(413, str(e))
        except ClientDisconnect:
            log.info("POST %s: client disconnected mid-upload; nothing kept", digest)
            return replies.text(400, "Client disconnected")
        except BodyTimeout as e:
            log.info("POST %s: %s; nothing kept", digest, e)
            return replies.body_timed_out(e)
        except Exception as e:
            reason = unavailable_reason(e)
            if reason is not None:
                log.error("POST %s: %s: %s", digest, reason, e)
                return replies.unavailable(reason)
            log.exception("POST %s failed", digest)
            return replies.text(500, "Internal error storing the blob")
        return replies.json_reply(201 if stored.created else 200, list(stored.locations))

    async def _store(self, request: Request, digest: Digest, length: int | None, meta: BlobMeta) -> Stored:
        body = request.body
        limit = self.max_blob_bytes
        if not request.expects_continue and length is not None and length <= min(SMALL_UPLOAD_BYTES, limit or length):
            # The client sends the body whatever the answer: reading a small one first wastes
            # nothing (a duplicate's few bytes are read, which keeps the connection usable).
            data = bytearray()
            async for chunk in body.chunks():
                data += chunk
            return await self.store.put(digest, bytes(data), meta)
        upload = await self.store.begin(digest, length, meta)
        if isinstance(upload, Stored):
            return upload
        try:
            async for chunk in body.chunks():
                await upload.write(chunk)
        except BaseException:
            await upload.abort()
            raise
        return await upload.commit()


def _whole(opened: OpenBlob) -> Reply:
    """200 with the whole blob (headers only, for HEAD): what a read without conditional headers answers."""
    return Reply(200, full_headers(opened.info), opened.body, opened.on_delivered, _closer(opened))


def _closer(opened: OpenBlob) -> Callable[[], None] | None:
    """What releases the opened blob once its answer is over; None when nothing needs to (no call then)."""
    return opened.close if opened.holds_resources else None


def _conditional(request: Request, opened: OpenBlob) -> Reply:
    info = opened.info
    validators = validator_headers(info)
    answer = decide(request.headers, info.size, validators[0][1], validators[1][1], info.mtime)
    if isinstance(answer, Full):
        return _whole(opened)
    if isinstance(answer, Partial):
        headers = validators + representation_headers(info.meta)
        headers.append(("content-range", f"bytes {answer.start}-{answer.end}/{info.size}"))
        headers.append(("content-length", str(answer.length)))
        if request.method != "HEAD":  # a HEAD opened no bytes
            opened.narrow(answer.start, answer.length)
        return Reply(206, headers, opened.body, opened.on_delivered, _closer(opened))
    opened.close()
    if isinstance(answer, Refused):
        if answer.status == 416:
            validators.append(("content-range", f"bytes */{info.size}"))
        return replies.text(answer.status, answer.reason, validators)
    assert isinstance(answer, NotModified)
    return Reply(304, validators + representation_headers(info.meta))
