"""Storage pairs: free space, the placement policy for writes and the probe order for reads.

The rules are the original Stor's (see STOR_REFERENCE.md), in bytes throughout.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def metric_name(directory: Path | str) -> str:
    """The original's `<server>` metric segment: non-alphanumeric runs become '-', trimmed."""
    return re.sub(r"[^A-Za-z0-9]+", "-", str(directory)).strip("-")


@dataclass(frozen=True, slots=True)
class StoragePair:
    index: int
    dirs: tuple[Path, Path]
    writable: bool


def make_pairs(storage_pairs: Sequence[tuple[Path, Path]], writable_regex: re.Pattern[str]) -> list[StoragePair]:
    # A pair is writable only if both of its directories match: a directory
    # that does not match counts as having no free space, and a pair's free
    # space is the smaller of its two.
    return [
        StoragePair(i, (a, b), all(writable_regex.search(str(d)) for d in (a, b)))
        for i, (a, b) in enumerate(storage_pairs)
    ]


def available_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def pair_free_bytes(pair: StoragePair, upload_size: int) -> int:
    """Free space left on the pair after the upload; 0 for read-only pairs or on error."""
    if not pair.writable:
        return 0
    try:
        return min(available_bytes(d) for d in pair.dirs) - upload_size
    except OSError:
        return 0


def choose_pair(free: Sequence[int], threshold: int, rng: random.Random) -> int | None:
    """Index of the pair to write to, given each pair's free bytes after the upload.

    None when no pair has room. When no pair has more than `threshold` left,
    the emptiest pair wins (keep the last bytes balanced); otherwise a pair is
    drawn with probability proportional to its free space.
    """
    candidates = [(i, f) for i, f in enumerate(free) if f > 0]
    if not candidates:
        return None
    if all(f <= threshold for _, f in candidates):
        return max(candidates, key=lambda c: c[1])[0]
    point = rng.random() * sum(f for _, f in candidates)
    for i, f in candidates:
        point -= f
        if point < 0:
            return i
    return candidates[-1][0]


def probe_order(pairs: Sequence[StoragePair], rng: random.Random) -> list[Path]:
    """The directories in the order a read probes them.

    Pairs shuffled; one randomly chosen mirror of every pair first, then the
    other mirror of every pair, so that reads spread over all disks and a
    missing mirror costs one more probe rather than a failure.
    """
    if len(pairs) == 1:  # the common deployment, on every read that misses the caches
        a, b = pairs[0].dirs
        return [a, b] if rng.random() < 0.5 else [b, a]
    shuffled = list(pairs)
    rng.shuffle(shuffled)
    first: list[Path] = []
    second: list[Path] = []
    for pair in shuffled:
        a, b = pair.dirs if rng.random() < 0.5 else pair.dirs[::-1]
        first.append(a)
        second.append(b)
    return first + second
