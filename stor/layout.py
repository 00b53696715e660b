"""The original Stor's S3 key scheme: a blob is `aa/bb/cc/<sha>` (lower case, its first three pairs of hex
digits as directories), in every bucket it wrote and in the S3 API's listings.

Keys of the scheme sort as their shas do, which is what lets a listing of
keys start anywhere in the store's own order of shas (key_of_hex and
hex_of_key translate a start of one into a start of the other).
"""

from __future__ import annotations

import re

from stor.digest import Digest

_KEY = re.compile(r"([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})")
_HEX = re.compile(r"[0-9a-f]*")


def object_key(digest: Digest) -> str:
    h = digest.hex
    return f"{h[0:2]}/{h[2:4]}/{h[4:6]}/{h}"


def digest_of_key(key: str) -> Digest | None:
    """The blob a key of the scheme names, or None (any other key)."""
    match = _KEY.fullmatch(key)
    if match is None:
        return None
    first, second, third, sha = match.groups()
    if not sha.startswith(first + second + third):
        return None
    return Digest.parse(sha)


def key_of_hex(prefix: str) -> str:
    """The key, or the start of one, of the blobs whose shas begin with `prefix` (lower-case hex, up to 64
    digits): "abc" -> "ab/c", "abcdef12" -> "ab/cd/ef/abcdef12"."""
    if len(prefix) <= 6:
        return "/".join(prefix[i : i + 2] for i in range(0, len(prefix), 2))
    return f"{prefix[0:2]}/{prefix[2:4]}/{prefix[4:6]}/{prefix}"


def hex_of_key(prefix: str) -> str | None:
    """What the shas of every key beginning with `prefix` begin with; None when no key of the scheme does:
    "ab/c" -> "abc", "ab/cd/ef/" -> "abcdef", "ab/cd/ef/abcd" -> "abcdef", "ab/cd/ef/abcdef12" -> "abcdef12"."""
    parts = prefix.split("/")
    if len(parts) > 4:
        return None
    directories, last = parts[:-1], parts[-1]
    if any(len(d) != 2 or not _HEX.fullmatch(d) for d in directories) or not _HEX.fullmatch(last):
        return None
    joined = "".join(directories)
    if len(directories) < 3:
        return joined + last if len(last) <= 2 else None
    # The file name is the sha itself, which begins with the three directories' digits.
    if len(last) > 64:
        return None
    if len(last) <= len(joined):
        return joined if joined.startswith(last) else None
    return last if last.startswith(joined) else None
