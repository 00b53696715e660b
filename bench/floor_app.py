"""The floor under any Python application on granian here: an RSGI app that does no work.

bench/run.py starts it with stor's worker count beside stor and nginx. It
answers HEAD with the headers stor sends for a 4 KiB blob and GET with the
404 stor sends for a missing one, so its rate is the most any application,
stor included, can reach on this server, machine and load generator.
"""

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


class Floor:
    async def __rsgi__(self, scope, proto) -> None:  # type: ignore[no-untyped-def]
        if scope.method == "HEAD":
            proto.response_empty(200, HEAD_HEADERS)
        elif scope.path == "/":
            proto.response_str(200, TEXT_HEADERS, "floor")
        else:
            proto.response_str(404, TEXT_HEADERS, f"File '{scope.path[1:]}' not found")


app = Floor()
