"""What the handlers need of a request's headers, whichever server interface carried them."""

from __future__ import annotations

from typing import Any, Protocol


class HeaderLookup(Protocol):
    """Starlette's Headers (ASGI) and granian's RSGIHeaders both offer this; names are lower case."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def __contains__(self, key: str) -> bool: ...

    def keys(self) -> Any: ...
