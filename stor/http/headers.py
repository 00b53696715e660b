"""What the handlers need of a request's headers, whichever server interface carried them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


class HeaderLookup(Protocol):
    """Starlette's Headers (ASGI) and granian's RSGIHeaders both offer this; names are lower case."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def keys(self) -> Any: ...


# ASGI carries header names and values as bytes, RSGI as str; HTTP's own
# encoding for both is latin-1.


def as_bytes(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def as_str(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
