"""The floor under stor: answers that take no work.

bench/run.py starts it beside stor and nginx, with stor's worker count,
through stor's own worker supervisor (stor/workers.py). FloorProtocol answers
in uvicorn's httptools protocol as stor's front does (stor/http/front.py),
without the read: HEAD with the headers stor sends for a 4 KiB blob, GET with
the 404 stor sends for a missing one. Its rate is the most stor can reach on
uvicorn, this machine and this load generator.
"""

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

SIZE = 4096
HEAD_HEADERS = [
    ("etag", '"' + "0" * 64 + '"'),
    ("last-modified", "Sat, 21 Nov 2026 08:00:00 GMT"),
    ("cache-control", "public, max-age=31536000, immutable"),
    ("accept-ranges", "bytes"),
    ("content-type", "application/octet-stream"),
    ("content-length", str(SIZE)),
]
TEXT_HEADERS = [("content-type", "text/plain; charset=utf-8")]


def _wire(headers: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")


_HEAD_LINES = _wire(HEAD_HEADERS)


class FloorProtocol(HttpToolsProtocol):
    """uvicorn's protocol answering every request in its parser callback, as stor's front answers a read."""

    def on_headers_complete(self) -> None:
        if self.parser.get_method() == b"HEAD":
            status, lines, body = 200, _HEAD_LINES, b""
        elif self.url == b"/":
            body = b"floor"
            status, lines = 200, _wire([*TEXT_HEADERS, ("content-length", "5")])
        else:
            body = b"File '" + self.url[1:] + b"' not found"
            status, lines = 404, _wire([*TEXT_HEADERS, ("content-length", str(len(body)))])
        default = b"".join(b"%s: %s\r\n" % pair for pair in self.server_state.default_headers)
        self.transport.write(STATUS_LINE[status] + default + lines + b"\r\n" + body)
        self.cycle = _Done  # type: ignore[assignment]
        self.on_response_complete()


class _NoWaiter:
    @staticmethod
    def set() -> None:
        pass


class _Done:
    """What the protocol sees as the current cycle: complete."""

    response_complete = True
    disconnected = False
    message_event = _NoWaiter


async def asgi_app(scope, receive, send):  # type: ignore[no-untyped-def]
    """Only uvicorn's lifespan reaches it: FloorProtocol answers every request itself."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
