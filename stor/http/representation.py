"""The headers that describe a blob in an answer: validators, type and name, length."""

from __future__ import annotations

import re
from email.utils import formatdate
from urllib.parse import quote, unquote

from stor.store.base import BlobInfo
from stor.store.metadata import BlobMeta

# A blob never changes under its name: caches may keep it for good.
CACHE_CONTROL = "public, max-age=31536000, immutable"
DEFAULT_TYPE = "application/octet-stream"


def validator_headers(info: BlobInfo) -> list[tuple[str, str]]:
    """The headers every answer about a blob carries, 304 included."""
    return [
        ("etag", f'"{info.digest.hex}"'),
        ("last-modified", http_date(info.mtime)),
        ("cache-control", CACHE_CONTROL),
        ("accept-ranges", "bytes"),
    ]


_dates: dict[int, str] = {}


def http_date(mtime: float) -> str:
    """mtime as an HTTP date; remembered, since many blobs share a second and formatting is slow."""
    second = int(mtime)
    text = _dates.get(second)
    if text is None:
        if len(_dates) >= 4096:
            _dates.clear()
        text = _dates[second] = formatdate(second, usegmt=True)
    return text


def representation_headers(meta: BlobMeta) -> list[tuple[str, str]]:
    headers = [("content-type", meta.content_type or DEFAULT_TYPE)]
    if meta.filename is not None:
        name = meta.filename if meta.filename.isascii() else _unmangled(meta.filename)
        headers.append(("x-filename", name))
        headers.append(("content-disposition", f"attachment; filename*=UTF-8''{quote(unquote(name))}"))
    return headers


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def ascii_filename(name: str) -> str:
    """A file name as X-Filename spells it, kept and given back: ASCII, the rest percent-encoded UTF-8."""
    return _NON_ASCII.sub(lambda m: quote(m.group()), name)


def _unmangled(name: str) -> str:
    """A non-ASCII name from a sidecar written before uploads decoded raw UTF-8 names (kept as the
    latin-1 text the header arrived as): the UTF-8 it was, if it is UTF-8; spelled as X-Filename is."""
    try:
        name = name.encode("latin-1").decode("utf-8")
    except UnicodeError:
        pass
    return ascii_filename(name)


_full: dict[str, tuple[int, float, BlobMeta, list[tuple[str, str]]]] = {}


def full_headers(info: BlobInfo) -> list[tuple[str, str]]:
    """Every header of a whole-blob answer; remembered, since a hot blob is answered again and again.

    Keyed by the sha and checked against the blob's size, date and metadata
    (a hot blob's are the very same objects each time). The list is shared:
    never change it.
    """
    known = _full.get(info.digest.hex)
    if known is not None:
        size, mtime, meta, headers = known
        if size == info.size and mtime == info.mtime and (meta is info.meta or meta == info.meta):
            return headers
    if len(_full) >= 4096:
        _full.clear()
    headers = [*validator_headers(info), *representation_headers(info.meta), ("content-length", str(info.size))]
    _full[info.digest.hex] = (info.size, info.mtime, info.meta, headers)
    return headers
