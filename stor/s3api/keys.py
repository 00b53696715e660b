"""Object keys of the S3 API: the two forms that name a blob, and nothing else.

The original Stor's layout `aa/bb/cc/<sha>` (stor.layout) is what listings
show; a bare `<sha>` (either case, as in the blob API's URLs) is the short
form. A key is parsed into a Digest (the only way client input reaches a
path) or refused.
"""

from __future__ import annotations

from stor.digest import Digest, InvalidDigest
from stor.layout import digest_of_key

KEY_RULE = (
    "Object keys are the blob's SHA-256: 'aa/bb/cc/<sha>' (lower-case hex, aa/bb/cc its first six digits) "
    "or '<sha>' alone"
)


def digest_of(key: str) -> Digest | None:
    """The blob a key names, in either form; None for any other key."""
    if len(key) == 64:
        try:
            return Digest.parse(key)
        except InvalidDigest:
            return None
    return digest_of_key(key)


def etag_of(digest: Digest) -> str:
    """The object's ETag: its sha, with a "-1" that tells clients it is no MD5.

    s3cmd compares an ETag without a dash to the MD5 of what it sent and, on a
    mismatch, uploads again and then fails; rclone takes a 32-digit ETag for an
    MD5. A dash is S3's mark of an ETag that is not one (a multipart upload's).
    """
    return f'"{digest.hex}-1"'


def etag_matches(given: str, digest: Digest) -> bool:
    """Whether an ETag a client sent (If-Match, a part list) names this blob: quoted or not, with or without the
    "-1", the blob API's `"<sha>"` too."""
    tag = given.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"').lower()
    return tag in (digest.hex, f"{digest.hex}-1")
