"""The floor under any Python application on granian here: a WSGI app that does no work.

bench/run.py starts it with stor's worker count and thread count beside stor
and nginx. It answers HEAD with the headers stor sends for a 4 KiB blob and
GET with the 404 stor sends for a missing one, so its rate is the most any
application, stor included, can reach on this server, machine and load
generator.
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


def app(environ, start_response):  # type: ignore[no-untyped-def]
    path = environ["PATH_INFO"]
    if environ["REQUEST_METHOD"] == "HEAD":
        start_response("200 OK", HEAD_HEADERS)
        return []
    if path == "/":
        start_response("200 OK", TEXT_HEADERS)
        return [b"floor"]
    start_response("404 Not Found", TEXT_HEADERS)
    return [f"File '{path[1:]}' not found".encode()]
