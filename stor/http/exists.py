"""POST /exists: which of many blobs are stored, in one round trip (as REAPI's FindMissingBlobs)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, PlainTextResponse, Response

from stor.digest import Digest, InvalidDigest
from stor.http.auth import Authenticator, refusal
from stor.http.text import is_decimal
from stor.store.local import LocalStore

# A sha in JSON with its quotes and comma is 67 bytes; room for spacing.
BYTES_PER_ITEM = 100


def exists_routes(store: LocalStore, auth: Authenticator, max_items: int) -> APIRouter:
    router = APIRouter()
    max_bytes = max_items * BYTES_PER_ITEM + 1024

    @router.post("/exists", include_in_schema=False)
    async def exists(request: Request) -> Response:
        if auth.read_required:
            refused = await refusal(auth, request.headers, need_write=False)
            if refused is not None:
                return refused
        too_large = PlainTextResponse(f"Too many shas: at most {max_items} per request", status_code=413)
        length = request.headers.get("content-length")
        if length is not None and is_decimal(length) and int(length) > max_bytes:
            return too_large
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    return too_large
        except ClientDisconnect:
            return PlainTextResponse("Client disconnected", status_code=400)
        try:
            items = json.loads(body)
        except ValueError as e:
            return PlainTextResponse(f"Invalid JSON: {e}", status_code=400)
        except RecursionError:
            return PlainTextResponse("Invalid JSON: nested too deeply", status_code=400)
        if not isinstance(items, list):
            return PlainTextResponse("Expected a JSON array of sha256 strings", status_code=400)
        if len(items) > max_items:
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
        found = await store.contains(list(digests.values()))
        return JSONResponse(
            {
                "present": [h for h, f in zip(digests, found) if f],
                "missing": [h for h, f in zip(digests, found) if not f],
                "invalid": invalid,
            }
        )

    return router
