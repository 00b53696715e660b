"""A validated SHA-256 digest and the name it has on disk.

This is the only way client input becomes part of a path: a Digest holds
exactly 64 hex digits, so the names below can never escape a storage root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


# Texts recently parsed, and their Digest (immutable, so shared): a hot blob's
# sha is parsed again on every request. Only valid texts are kept.
_PARSED_MAX = 4096
_parsed: dict[str, Digest] = {}


class InvalidDigest(ValueError):
    """The text is not a SHA-256 in hex."""


@dataclass(frozen=True, slots=True)
class Digest:
    hex: str  # always lower case
    # The original Stor's layout: AA/BB/CC/<SHA>.dat, upper-case hex, lower-case
    # suffix. Computed once: every read builds paths from it, in each directory it probes.
    relative_path: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        u = self.hex.upper()
        object.__setattr__(self, "relative_path", f"{u[0:2]}/{u[2:4]}/{u[4:6]}/{u}.dat")

    @classmethod
    def parse(cls, text: str) -> Digest:
        digest = _parsed.get(text)
        if digest is not None:
            return digest
        # fullmatch, not match with "$": "$" would accept a trailing newline.
        if not _SHA256_HEX.fullmatch(text):
            raise InvalidDigest(text)
        digest = cls(text.lower())
        if len(_parsed) >= _PARSED_MAX:
            _parsed.clear()
        _parsed[text] = digest
        return digest

    @property
    def upper(self) -> str:
        return self.hex.upper()

    def __str__(self) -> str:
        return self.hex
