"""ListObjects (V1 and V2) answered from the store's own order: a page costs its keys, not the archive's size.

Layout keys (`aa/bb/cc/<sha>`) sort as their shas do, and the store lists
shas in order from any point (BlobStore.list_blobs(after)): a page starts
at the first key after its marker and reads only as far as it needs. A
common prefix (`aa/` with delimiter "/") is a range of shas, stepped over in
one jump by starting the listing again after it. Bare-sha keys are listed
too, but only under a prefix of three or more hex digits (no layout key
starts so): at the top level each blob would otherwise appear twice.
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

    A marker that ends with the delimiter (a common prefix a page ended on) steps over every key it rolls up.
    """
    page = Page()
    if max_keys <= 0:
        return page
    bare = _BARE_PREFIX.fullmatch(prefix) is not None
    start = _start_hex(prefix, after, bare)
    if start is None:
        return page
    skip = after if delimiter and after.endswith(delimiter) else None
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
    """The hex position to list from: no blob before it can be on the page. None: no key begins with prefix."""
    if bare:
        floor = prefix
        position = after if after.startswith(prefix) and _BARE_PREFIX.fullmatch(after) else ""
        return max(floor, position[:64])
    floor_hex = hex_of_key(prefix)
    if floor_hex is None:
        return None
    if after and not after[0].isdigit() and not "a" <= after[0] <= "f":
        # No layout key starts so: every one sorts after the marker, or none does.
        if after[0] > "f":
            return None
        return floor_hex if after[0] < "0" else max(floor_hex, "9".ljust(64, "f"))
    # The longest start of the marker that is a layout prefix: blobs before it sort before the marker.
    for end in range(min(len(after), 73), 0, -1):
        marker_hex = hex_of_key(after[:end])
        if marker_hex is not None:
            return max(floor_hex, marker_hex)
    return floor_hex


def _truncated(page: Page) -> Page:
    return Page(page.keys, page.common_prefixes, True)


async def _close(blobs: AsyncIterator[Listed]) -> None:
    aclose = getattr(blobs, "aclose", None)
    if aclose is not None:
        await aclose()
