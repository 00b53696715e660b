"""What the handlers need of a request's headers, whichever server interface carried them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol


class HeaderLookup(Protocol):
    """Starlette's Headers (ASGI) and EnvironHeaders (WSGI) both offer this; names are lower case."""

    def get(self, key: str, default: Any = None) -> Any: ...


class EnvironHeaders:
    """A WSGI environ's request headers, looked up by their HTTP names."""

    __slots__ = ("environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self.environ = environ

    def get(self, key: str, default: Any = None) -> Any:
        name = _ENVIRON_NAMES.get(key)
        if name is None:
            name = _environ_name(key)
        return self.environ.get(name, default)

    def items(self) -> Iterator[tuple[str, str]]:
        for name, value in self.environ.items():
            if name.startswith("HTTP_"):
                yield name[5:].lower().replace("_", "-"), value
            elif name in _UNPREFIXED:
                yield _UNPREFIXED[name], value


def _environ_name(header: str) -> str:
    """PEP 3333: HTTP_ and the name in upper case with '_' for '-', except the two CGI took over."""
    name = header.upper().replace("-", "_")
    return name if name in _UNPREFIXED else "HTTP_" + name


_UNPREFIXED = {"CONTENT_TYPE": "content-type", "CONTENT_LENGTH": "content-length"}
# The names stor's own code asks for, translated once.
_ENVIRON_NAMES = {
    h: _environ_name(h)
    for h in ("authorization", "range", "if-range", "if-none-match", "if-modified-since", "content-type",
              "content-length", "expect", "transfer-encoding", "x-filename")
}


# ASGI carries header names and values as bytes, WSGI as str; HTTP's own
# encoding for both is latin-1.


def as_bytes(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def as_str(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
