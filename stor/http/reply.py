"""The one reply type every handler returns, whichever way it is then written (ASGI, or stor's fast path).

A reply is a status, its headers (lower-case names, valid values,
Content-Length included whenever the length is known) and a body: bytes, a
region of an open local file (stor.store.base.FileRegion, which the kernel
can send), or an async stream of chunks. on_sent runs once the body went out
whole; on_close runs whatever happened (it releases the blob's descriptor).
A reply to HEAD carries the same headers as to GET; writers never send its body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from stor.store.base import FileRegion

TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json"

ReplyBody = bytes | FileRegion | AsyncIterable[bytes]


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]  # possibly shared between replies (see text()): never changed in place
    body: ReplyBody = b""
    on_sent: Callable[[], None] | None = None
    on_close: Callable[[], None] | None = None

    def close(self) -> None:
        """Release what the body holds; once, and after that a no-op."""
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()

    def in_memory(self) -> bytes | None:
        """The body when it is all in memory; None when it is a file's or a stream's."""
        body = self.body
        if isinstance(body, bytes):
            return body
        if isinstance(body, FileRegion) and body.data is not None:
            return body.data
        return None

    def with_header(self, name: str, value: str) -> Reply:
        self.headers = [*self.headers, (name, value)]
        return self


# The header lists of one-line text answers by length: the same list object for the same
# length, which the fast path's encoded-header memo then recognises (a 404 is answered often).
_text_headers: dict[int, list[tuple[str, str]]] = {}


def text(status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> Reply:
    """A one-line reason (or any short text), as plain text."""
    body = message.encode()
    extra = list(headers)
    if extra:
        return Reply(status, [*extra, ("content-type", TEXT_TYPE), ("content-length", str(len(body)))], body)
    shared = _text_headers.get(len(body))
    if shared is None:
        if len(_text_headers) >= 1024:
            _text_headers.clear()
        shared = _text_headers[len(body)] = [("content-type", TEXT_TYPE), ("content-length", str(len(body)))]
    return Reply(status, shared, body)


def json_reply(status: int, value: Any, headers: Iterable[tuple[str, str]] = ()) -> Reply:
    body = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Reply(status, [*headers, ("content-type", JSON_TYPE), ("content-length", str(len(body)))], body)


def raw(status: int, body: bytes, content_type: str) -> Reply:
    return Reply(status, [("content-type", content_type), ("content-length", str(len(body)))], body)


def as_bytes(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header names and values as ASGI carries them (HTTP's own encoding is latin-1)."""
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


INTERNAL_ERROR = "Internal error"


def body_timed_out(e: Exception) -> Reply:
    """408 for a body that stopped arriving; the connection closes, the rest of the body is not read."""
    return text(408, f"Request Timeout: {e}", [("connection", "close")])


def unavailable(reason: str) -> Reply:
    """503 for a fault that passes (out of descriptors, say): the client may retry shortly."""
    return text(503, f"Service Unavailable: {reason}", [("retry-after", "1")])
