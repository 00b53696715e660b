"""Answering a request and accounting for it: the one place for the 500 fallback and for request metrics.

Both writers (the ASGI app, stor/http/asgi.py, and the fast path,
stor/http/front.py) take a request through answer() and report the outcome
through finished(), so both route, fail and count alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stor.http import reply as replies
from stor.http.reply import Reply
from stor.http.request import Request
from stor.http.routes import Route, Routes
from stor.prometheus import HttpTraffic
from stor.store.base import unavailable_reason

log = logging.getLogger("stor.http")

# nginx's "client closed request": the client left before the answer was whole.
CLIENT_GONE = 499


class HttpService:
    def __init__(self, routes: Routes, traffic: HttpTraffic | None, steps_inline: bool = True) -> None:
        self.routes = routes
        self.traffic = traffic
        # Whether the fast path may take a handler's first step outside a task (stor/http/front.py):
        # only while no handler calls a library that needs to run in a task (aiohttp's timeouts,
        # botocore's context variables: the S3 tier's client).
        self.steps_inline = steps_inline
        # The route a path takes (the table's own method: no call in between on the hot path).
        self.route: Callable[[str], Route] = routes.match

    async def answer(self, request: Request, route: Route) -> Reply:
        handler = route.handlers.get(request.method)
        if handler is None:
            if not route.handlers:
                return replies.text(404, "Not Found")
            return replies.text(405, f"Method {request.method} not allowed", [("allow", route.allowed)])
        try:
            return await handler(request)
        except Exception as e:
            reason = unavailable_reason(e)
            if reason is not None:
                log.error("%s: %s: %s", request, reason, e)
                return replies.unavailable(reason)
            # Handlers answer the faults they expect themselves: this is a bug, still answered.
            log.exception("%s failed", request)
            return replies.text(500, replies.INTERNAL_ERROR)

    def finished(self, request: Request, route: Route, reply: Reply, status: int, sent: int) -> None:
        """The answer is over (status: the reply's if it went out whole, CLIENT_GONE, or 500): release, report."""
        reply.close()
        if status == reply.status and reply.on_sent is not None:
            reply.on_sent()
        if self.traffic is not None:
            self.traffic.record(
                request.method, route.name, status, time.perf_counter() - request.started, request.body.received, sent
            )
