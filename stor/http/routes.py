"""The one route table: which handler answers a path and method, for the ASGI app and the fast path alike.

Fixed paths first (/, /status, /storages, /exists, the metrics path), then
prefixes (a later /files/ for tus), then any other single path segment,
which is a blob (/<sha>; the handler answers a malformed sha itself, in the
original's words). A GET route answers HEAD too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from stor.http.reply import Reply
from stor.http.request import Request

Handler = Callable[[Request], Awaitable[Reply]]

BLOB_ROUTE = "/{sha}"
OTHER_ROUTE = "other"  # the metrics label of a path no route takes


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # what metrics call it: the fixed path, the prefix followed by "...", or BLOB_ROUTE
    handlers: dict[str, Handler] = field(default_factory=dict)
    # GET and HEAD may be answered inside uvicorn's protocol (stor.http.front) instead of an ASGI cycle.
    fast: bool = False

    @property
    def allowed(self) -> str:
        return ", ".join(self.handlers)


def route(
    name: str,
    get: Handler | None = None,
    post: Handler | None = None,
    put: Handler | None = None,
    fast: bool = False,
    **others: Handler,
) -> Route:
    """A route; others: handlers of further methods by lower-case name (head= answers HEAD without a GET)."""
    handlers: dict[str, Handler] = {}
    if get is not None:
        handlers["GET"] = handlers["HEAD"] = get
    if post is not None:
        handlers["POST"] = post
    if put is not None:
        handlers["PUT"] = put
    for method, handler in others.items():
        handlers[method.upper()] = handler
    return Route(name, handlers, fast)


NO_ROUTE = Route(OTHER_ROUTE)


class Routes:
    def __init__(self) -> None:
        self._fixed: dict[str, Route] = {}
        self._prefixes: list[tuple[str, Route]] = []
        self._blob: Route | None = None

    def add_fixed(self, path: str, r: Route) -> None:
        if path in self._fixed:
            raise ValueError(f"{path} is routed twice")
        self._fixed[path] = r

    def add_prefix(self, prefix: str, r: Route) -> None:
        """Every path under prefix (which ends with '/')."""
        self._prefixes.append((prefix, r))

    def add_blob(self, r: Route) -> None:
        self._blob = r

    def match(self, path: str) -> Route:
        found = self._fixed.get(path)
        if found is not None:
            return found
        for prefix, r in self._prefixes:
            if path.startswith(prefix):
                return r
        if self._blob is not None and path.rfind("/") == 0:
            return self._blob
        return NO_ROUTE
