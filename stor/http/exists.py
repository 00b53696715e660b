"""POST /exists: which of many blobs are stored, in one round trip (as REAPI's FindMissingBlobs)."""

from __future__ import annotations

import json

from stor.digest import Digest, InvalidDigest
from stor.http import reply as replies
from stor.http.auth import Authenticator, refusal
from stor.http.reply import Reply
from stor.http.request import BodyTimeout, ClientDisconnect, Request
from stor.http.text import is_decimal
from stor.store.base import BlobStore

# A sha in JSON with its quotes and comma is 67 bytes; room for spacing.
BYTES_PER_ITEM = 100


class ExistsEndpoint:
    def __init__(self, store: BlobStore, auth: Authenticator, max_items: int) -> None:
        self.store = store
        self.auth = auth
        self.max_items = max_items
        self.max_bytes = max_items * BYTES_PER_ITEM + 1024

    async def exists(self, request: Request) -> Reply:
        if self.auth.read_required:
            refused = await refusal(self.auth, request, need_write=False)
            if refused is not None:
                return refused
        too_large = replies.text(413, f"Too many shas: at most {self.max_items} per request")
        length = request.headers.get("content-length")
        if length is not None and is_decimal(length) and int(length) > self.max_bytes:
            return too_large
        body = bytearray()
        try:
            async for chunk in request.body.chunks():
                body += chunk
                if len(body) > self.max_bytes:
                    return too_large
        except ClientDisconnect:
            return replies.text(400, "Client disconnected")
        except BodyTimeout as e:
            return replies.body_timed_out(e)
        try:
            items = json.loads(body)
        except ValueError as e:
            return replies.text(400, f"Invalid JSON: {e}")
        except RecursionError:
            return replies.text(400, "Invalid JSON: nested too deeply")
        if not isinstance(items, list):
            return replies.text(400, "Expected a JSON array of sha256 strings")
        if len(items) > self.max_items:
            return too_large

        digests: dict[str, Digest] = {}  # in request order, each once
        invalid: list[str] = []
        for item in items:
            try:
                digest = Digest.parse(item) if isinstance(item, str) else None
            except InvalidDigest:
                digest = None
            if digest is None:
                invalid.append(item if isinstance(item, str) else json.dumps(item))
            else:
                digests.setdefault(digest.hex, digest)
        found = await self.store.contains(list(digests.values()))
        return replies.json_reply(
            200,
            {
                "present": [h for h, f in zip(digests, found) if f],
                "missing": [h for h, f in zip(digests, found) if not f],
                "invalid": invalid,
            },
        )
