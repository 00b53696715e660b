"""ListObjects (V1 and V2) answered from the store's own order: a page costs its keys, not the archive's size.

Every blob is listed once, under its layout key `aa/bb/cc/<sha>`: those keys
sort as their shas do, and the store lists shas in order from any point
(BlobStore.list_blobs(after)), so a page starts at the first key after its
marker and reads only as far as it needs. A common prefix (`aa/` with
delimiter "/") is a range of shas, stepped over in one jump by starting the
listing again after it.

A blob's other key, its bare `<sha>`, is listed instead under a prefix that
only bare keys can begin with: three hex digits or more (the third character
of a layout key is a "/"), up to the whole sha. So `prefix=<sha>` finds the
blob under the name it was written as, and a listing without a prefix, or
under `aa/`, shows each blob once rather than twice.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from stor.layout import hex_of_key, object_key
from stor.store.base import BlobStore, Listed

MAX_KEYS = 1000  # S3's most per page, and its default

_BARE_PREFIX = re.compile(r"[0-9a-f]{3,64}")
_HEX_HEAD = re.compile(r"[0-9a-f]+")
_LAST_DIGEST = "f" * 64


@dataclass(frozen=True, slots=True)
class Page:
    keys: list[tuple[str, Listed]] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def last(self) -> str | None:
        """The last key or common prefix of the page, whichever sorts later: where the next one starts."""
        candidates = ([self.keys[-1][0]] if self.keys else []) + self.common_prefixes[-1:]
        return max(candidates) if candidates else None


async def list_page(store: BlobStore, prefix: str, delimiter: str, after: str, max_keys: int) -> Page:
    """Keys beginning with prefix, after `after` in lexical order, up to max_keys keys and common prefixes.

    A marker that is a common prefix of the listing (one a page ended on) steps over every key it rolls up.
    """
    page = Page()
    if max_keys <= 0:
        return page
    bare = _BARE_PREFIX.fullmatch(prefix) is not None
    start = _start_hex(prefix, after, bare)
    if start is None:
        return page
    # A marker that is a common prefix of this listing (a page ended on it): none of the keys it rolls up is listed.
    cut = after.find(delimiter, len(prefix)) if delimiter and after.startswith(prefix) else -1
    skip = after if cut >= 0 and cut + len(delimiter) == len(after) else None
    span = hex_of_key(skip) if skip is not None and not bare else None
    if span is not None:
        start = max(start, span.ljust(64, "f"))  # a page that ended on a common prefix: past all it rolls up
    count = 0
    while True:
        blobs = store.list_blobs(start)
        restart: str | None = None
        try:
            async for blob in blobs:
                key = blob.digest.hex if bare else object_key(blob.digest)
                if not key.startswith(prefix):
                    if key > prefix:
                        return page  # past every key the prefix begins
                    continue
                if key <= after or (skip is not None and key.startswith(skip)):
                    continue
                cut = key.find(delimiter, len(prefix)) if delimiter else -1
                if cut < 0:
                    if count == max_keys:
                        return _truncated(page)
                    page.keys.append((key, blob))
                    count += 1
                    continue
                common = key[: cut + len(delimiter)]
                if count == max_keys:
                    return _truncated(page)
                page.common_prefixes.append(common)
                count += 1
                skip = common
                span = None if bare else hex_of_key(common)
                if span is not None:
                    restart = span.ljust(64, "f")
                    break  # every key under it skipped at once
        finally:
            with contextlib.suppress(Exception):
                await _close(blobs)
        if restart is None or restart == _LAST_DIGEST:
            return page
        start = restart


def _start_hex(prefix: str, after: str, bare: bool) -> str | None:
    """Where to list blobs from (list_blobs(start) gives the shas sorting after start): no blob before it can be
    on the page. None: no key begins with prefix."""
    floor_hex = prefix if bare else hex_of_key(prefix)
    if floor_hex is None:
        return None
    # list_blobs lists the shas *after* its start: a whole sha as the floor would leave out its own blob.
    floor = floor_hex[:63]
    if not after:
        return floor
    if bare:
        marker_hex = _after_hex(after)
        return None if marker_hex is None else max(floor, marker_hex)
    if not after[0].isascii() or not after[0].isdigit() and not "a" <= after[0] <= "f":
        # No layout key starts so: every one sorts after the marker, or none does.
        if after[0] > "f":
            return None
        return floor if after[0] < "0" else max(floor, "9".ljust(64, "f"))
    # The longest start of the marker that is a layout prefix: blobs before it sort before the marker.
    for end in range(min(len(after), 73), 0, -1):
        marker_hex = hex_of_key(after[:end])
        if marker_hex is not None:
            return max(floor, marker_hex)
    return floor


def _after_hex(after: str) -> str | None:
    """For bare keys (64 hex digits): where the ones sorting after `after` start; None if none does."""
    head = _HEX_HEAD.match(after)
    digits = head.group(0)[:64] if head else ""
    if len(digits) == len(after) or len(digits) == 64:
        return digits  # all hex: the keys after it are the shas after it
    following = after[len(digits)]
    if following < "0":
        return digits  # every key beginning with those digits sorts after the marker
    if following > "f":
        return None if not digits else digits.ljust(64, "f")  # none of them does
    return digits + "9".ljust(64 - len(digits), "f")  # between "9" and "a": those going on with a-f do


def _truncated(page: Page) -> Page:
    return Page(page.keys, page.common_prefixes, True)


async def _close(blobs: AsyncIterator[Listed]) -> None:
    aclose = getattr(blobs, "aclose", None)
    if aclose is not None:
        await aclose()
