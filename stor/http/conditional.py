"""What a GET or HEAD of a blob answers, given its conditional and Range headers (RFC 9110).

Pure functions of the request headers and the blob's size, ETag and date, so
the rules can be read, and tested, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from starlette.datastructures import Headers

from stor.http.text import is_decimal, shown


@dataclass(frozen=True, slots=True)
class Full:
    """200 with the whole blob."""


@dataclass(frozen=True, slots=True)
class NotModified:
    """304: the client's copy is current."""


@dataclass(frozen=True, slots=True)
class Partial:
    """206 with bytes start..end inclusive."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True, slots=True)
class Refused:
    """A 4xx with a one-line reason (416 carries Content-Range: bytes */size)."""

    status: int
    reason: str


Answer = Full | NotModified | Partial | Refused

# The request headers that can make the answer anything but Full.
CONDITIONAL_HEADERS = frozenset({"range", "if-none-match", "if-modified-since"})  # if-range matters only with range


def decide(headers: Headers, size: int, etag: str, last_modified: str, mtime: float) -> Answer:
    if _not_modified(headers, etag, mtime):
        return NotModified()
    range_header = headers.get("range")
    if range_header is None:
        return Full()
    if_range = headers.get("if-range")
    if if_range is not None and if_range.strip() not in (etag, last_modified):
        return Full()  # the client's partial copy is of something else: send it all
    return parse_range(range_header, size)


def _not_modified(headers: Headers, etag: str, mtime: float) -> bool:
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = {t.strip() for t in if_none_match.split(",")}
        return "*" in tags or etag in tags or f"W/{etag}" in tags
    if_modified_since = headers.get("if-modified-since")
    if if_modified_since is not None:
        try:
            since = parsedate_to_datetime(if_modified_since).timestamp()
        except (TypeError, ValueError, IndexError):
            return False  # an unparsable date is ignored, as RFC 9110 says
        return int(mtime) <= since
    return False


def parse_range(header: str, size: int) -> Answer:
    unit, eq, spec = header.partition("=")
    if not eq:
        return Refused(400, f"Malformed Range header '{shown(header)}': expected bytes=START-END")
    if unit.strip().lower() != "bytes":
        return Full()  # a unit we do not know is ignored
    if "," in spec:
        return Refused(416, "Only a single byte range is supported")
    first, dash, last = (part.strip() for part in spec.partition("-"))
    if not dash or not (first or last) or not all(is_decimal(p) for p in (first, last) if p):
        return Refused(400, f"Malformed Range header '{shown(header)}': expected bytes=START-END")
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            return Refused(416, f"Range {shown(spec)} is not satisfiable for a blob of {size} bytes")
        return Partial(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return Refused(400, f"Malformed Range header '{shown(header)}': the end comes before the start")
    if start >= size:
        return Refused(416, f"Range {shown(spec)} is not satisfiable for a blob of {size} bytes")
    return Partial(start, min(end, size - 1))


