"""What an upload says of its blob besides the bytes (media type, file name): checked, kept as the sidecar has it.

One set of rules for every way a blob arrives: the blob API's Content-Type
and X-Filename headers, tus's filetype and filename metadata.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

from starlette.datastructures import Headers

from stor.http.representation import DEFAULT_TYPE, ascii_filename
from stor.http.text import shown
from stor.store.metadata import BlobMeta

# Media types as RFC 9110 spells them: type/subtype, then optional parameters.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[ -~]*)?")
# Not a statement about the blob: what curl --data-binary sends unless told
# otherwise, and the type every blob without one is served as anyway (so no
# sidecar, and its two fsyncs per mirror, is written for it).
_NOT_A_TYPE = frozenset({"application/x-www-form-urlencoded", DEFAULT_TYPE})

# Not in a file name: controls (C0, DEL, C1), the invisible format characters (bidi overrides,
# isolates and marks, which make "\u202efdp.exe" read as "exe.pdf"; zero-width ones), line and
# paragraph separators.
_NOT_IN_A_NAME = frozenset({"Cc", "Cf", "Zl", "Zp"})


def upload_meta(headers: Headers) -> BlobMeta:
    """The Content-Type and X-Filename an upload declares; ValueError with a one-line reason if malformed."""
    content_type = headers.get("content-type")
    filename = headers.get("x-filename")
    return BlobMeta(
        media_type(content_type, "Content-Type") if content_type is not None else None,
        header_filename(filename) if filename is not None else None,
    )


def media_type(text: str, what: str) -> str | None:
    """A declared media type as kept (None: nothing worth keeping); ValueError naming `what` if malformed."""
    text = text.strip()
    if text.lower() in _NOT_A_TYPE or not text:
        return None
    if len(text) > 200 or not _MEDIA_TYPE.fullmatch(text):
        raise ValueError(f"Bad {what} '{shown(text)}': expected type/subtype")
    return text


def plain_filename(name: str, what: str) -> str:
    """A file name given as plain text (tus's filename metadata), kept in X-Filename's spelling."""
    _check_name(name, name, what)
    # '%' is spelled out too: the kept form is percent-decoded when it is given back.
    return ascii_filename(name.replace("%", "%25"))


def header_filename(header: str, what: str = "X-Filename") -> str:
    """A file name in a header (X-Filename, the S3 API's x-amz-meta-filename) as it is kept and given back:
    non-ASCII percent-encoded; ValueError with a one-line reason."""
    # A header value arrives as latin-1 text (HTTP's own encoding, what Starlette decodes with):
    # a name sent as raw UTF-8 is those bytes again, decoded as UTF-8.
    try:
        text = header.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ValueError(f"Bad {what} '{shown(header)}': not UTF-8 (percent-encode the name)") from None
    try:
        decoded = unquote(text, errors="strict")
    except UnicodeDecodeError:
        decoded = ""
    _check_name(decoded, text, what)
    # Kept in the spelling the README documents, ASCII, so that it is a valid header again on GET:
    # a name sent as raw UTF-8 and the same name percent-encoded are one name, in the sidecar too.
    return ascii_filename(text)


def _check_name(name: str, given: str, what: str) -> None:
    if (
        not name
        or len(name.encode()) > 255
        or "/" in name
        or any(unicodedata.category(c) in _NOT_IN_A_NAME for c in name)
    ):
        raise ValueError(
            f"Bad {what} '{shown(given)}': a file name without '/', control or invisible format characters"
        )
