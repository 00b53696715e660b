"""The S3 API's one handler: which bucket and key a request addresses, who sent it, and which operation it is.

Every request to the S3 listener comes here (one route: S3 addresses by
path, host and query, not by path alone). The operations themselves are in
stor.s3api.bucket, stor.s3api.objects and stor.s3api.multipart_ops; this
module turns a request into a Call for them, and their S3Error (or any
fault) into S3's error document. CORS is answered here too, for every
operation alike.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from stor.http.reply import Reply
from stor.http.request import BodyTimeout, ClientDisconnect, Request, close_if_body_unread
from stor.s3api import xmlbody
from stor.s3api.errors import S3Error
from stor.s3api.sigv4 import Authenticated, SignatureVerifier
from stor.store.base import DigestMismatch, NoSpace, TooLarge, unavailable_reason

log = logging.getLogger("stor.s3api")

READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(slots=True)
class Call:
    """One request as the operations see it: addressed, authenticated, its query parsed."""

    request: Request
    bucket: str | None  # None: the service itself (ListBuckets)
    key: str | None  # None: the bucket itself
    query: dict[str, str]  # first value of each parameter, percent-decoded ("" for a bare ?uploads)
    auth: Authenticated | None  # None: anonymous
    request_id: str

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def resource(self) -> str:
        """What error documents name as the Resource."""
        if self.bucket is None:
            return "/"
        return f"/{self.bucket}/{self.key}" if self.key is not None else f"/{self.bucket}"

    def header(self, name: str) -> str | None:
        return self.request.headers.get(name)


Operation = Callable[[Call], Awaitable[Reply]]


class Operations:
    """What the endpoint dispatches to: one object for each group of operations (bucket, objects, multipart)."""

    def __init__(
        self,
        service: Operation,
        bucket: Callable[[Call], Operation],
        object_: Callable[[Call], Operation],
    ) -> None:
        self.service = service
        self.bucket = bucket
        self.object = object_


class S3Endpoint:
    def __init__(
        self, bucket: str, domain: str | None, verifier: SignatureVerifier, anonymous_read: bool,
        operations: Operations, cors: Cors,
    ) -> None:
        self.bucket = bucket
        self.domain = domain.lower() if domain else None
        self.verifier = verifier
        self.anonymous_read = anonymous_read
        self.operations = operations
        self.cors = cors

    async def answer(self, request: Request) -> Reply:
        request_id = secrets.token_hex(8).upper()
        call: Call | None = None
        try:
            if request.method == "OPTIONS":
                reply = self.cors.preflight(request)
            else:
                call = self._call(request, request_id)
                reply = await self._operation(call)(call)
        except Exception as e:  # every answer of this API is S3's document, a fault's too
            reply = self._error(self._as_s3_error(e, request), call.resource if call else request.path, request_id)
        reply = self.cors.decorate(request, reply)
        reply.headers = [*reply.headers, ("x-amz-request-id", request_id)]
        return close_if_body_unread(request, reply)

    def _call(self, request: Request, request_id: str) -> Call:
        bucket, key = self._address(request)
        query = parse_query(request.query)
        auth = self.verifier.verify(request.method, request.raw_path, request.query, request.headers)
        return Call(request, bucket, key, query, auth, request_id)

    def _address(self, request: Request) -> tuple[str | None, str | None]:
        """(bucket, key) from the Host (virtual-host style) or the path (path style)."""
        host = _host_name(request.headers.get("host", ""))
        path = request.path
        virtual = None
        if self.domain is not None and host.endswith("." + self.domain):
            virtual = host[: -len(self.domain) - 1]
        elif self.domain is None and host.startswith(self.bucket + ".") and host != self.bucket:
            virtual = self.bucket
        if virtual is not None:
            return virtual, path[1:] or None
        if path in ("", "/"):
            return None, None
        bucket, _, key = path[1:].partition("/")
        return bucket, key or None

    def _operation(self, call: Call) -> Operation:
        """The operation the call asks for, once its credentials allow it (an S3Error otherwise)."""
        write = call.method not in READ_METHODS
        if call.auth is None:
            if write or not self.anonymous_read:
                raise S3Error("AccessDenied", "Access Denied: this request needs to be signed (AWS Signature V4)")
        elif write and call.auth.key.role != "write":
            raise S3Error("AccessDenied", f"Access Denied: access key {call.auth.key.access_key} may only read")
        if call.bucket is None:
            return self.operations.service
        if call.bucket != self.bucket:
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", BucketName=call.bucket)
        if call.key is None:
            return self.operations.bucket(call)
        return self.operations.object(call)

    @staticmethod
    def _as_s3_error(e: Exception, request: Request) -> S3Error:
        """The S3 error a fault is answered with; a fault of the service or its storage is logged with detail."""
        if isinstance(e, S3Error):
            return e
        if isinstance(e, DigestMismatch):
            return S3Error("BadDigest", f"The body's SHA-256 is {e.actual}, not the key's {e.expected.hex}")
        if isinstance(e, TooLarge):
            return S3Error("EntityTooLarge", f"Your proposed upload exceeds the maximum allowed size ({e.limit} bytes)")
        if isinstance(e, ClientDisconnect):
            log.info("%s: client disconnected mid-upload; nothing kept", request)
            return S3Error("IncompleteBody", "The connection closed before the whole body arrived")
        if isinstance(e, BodyTimeout):
            log.info("%s: %s; nothing kept", request, e)
            return S3Error(
                "RequestTimeout",
                "Your socket connection to the server was not read from or written to within the timeout period",
            )
        if isinstance(e, NoSpace):
            log.warning("%s: %s", request, e)
            return S3Error("InsufficientStorage", "Not enough space on storages")
        reason = unavailable_reason(e)
        if reason is not None:
            log.error("%s: %s: %s", request, reason, e)
            return S3Error("ServiceUnavailable", f"Service Unavailable: {reason}")
        log.error("%s failed", request, exc_info=e)
        return S3Error("InternalError", "We encountered an internal error. Please try again.")

    @staticmethod
    def _error(error: S3Error, resource: str, request_id: str) -> Reply:
        body = xmlbody.error_document(error, resource, request_id)
        headers = [("content-type", xmlbody.XML_TYPE), ("content-length", str(len(body)))]
        if error.status in (503, 507):
            headers.append(("retry-after", "1"))
        if error.code == "RequestTimeout":
            headers.append(("connection", "close"))
        return Reply(error.status, headers, body)


def parse_query(query: str) -> dict[str, str]:
    """Each parameter's first value, percent-decoded ('+' stays '+', as S3 signs it); a bare name has ''."""
    params: dict[str, str] = {}
    if not query:
        return params
    for pair in query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        params.setdefault(unquote(name), unquote(value))
    return params


def _host_name(host: str) -> str:
    """The Host header's name, without its port; lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if ":" in host else host


class Cors:
    """The configured cross-origin rules: preflights answered, actual requests' answers marked as allowed."""

    def __init__(self, origins: tuple[str, ...], methods: tuple[str, ...], headers: tuple[str, ...],
                 expose: tuple[str, ...], max_age: int) -> None:
        self.origins = frozenset(origins)
        self.methods = methods
        self.headers = frozenset(h.lower() for h in headers)
        self.expose = ", ".join(expose)
        self.max_age = max_age

    def _allowed_origin(self, origin: str | None) -> str | None:
        if origin is None or not self.origins:
            return None
        if origin in self.origins:
            return origin
        return "*" if "*" in self.origins else None

    def preflight(self, request: Request) -> Reply:
        origin = request.headers.get("origin")
        method = request.headers.get("access-control-request-method")
        if origin is None or method is None:
            raise S3Error("BadRequest", "Insufficient information. Origin request header needed.", 400)
        wanted = [h.strip().lower() for h in request.headers.get("access-control-request-headers", "").split(",")]
        wanted = [h for h in wanted if h]
        allowed = self._allowed_origin(origin)
        if (
            allowed is None
            or method.upper() not in self.methods
            or ("*" not in self.headers and any(h not in self.headers for h in wanted))
        ):
            raise S3Error("AccessForbidden", "CORSResponse: This CORS request is not allowed. This is usually because "
                          "the evalution of Origin, request method / Access-Control-Request-Method or "
                          "Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.", 403)
        headers = [
            ("access-control-allow-origin", allowed),
            ("access-control-allow-methods", ", ".join(self.methods)),
            ("access-control-max-age", str(self.max_age)),
            ("vary", "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"),
            ("content-length", "0"),
        ]
        if wanted:
            headers.append(("access-control-allow-headers", ", ".join(wanted)))
        if self.expose:
            headers.append(("access-control-expose-headers", self.expose))
        return Reply(200, headers)

    def decorate(self, request: Request, reply: Reply) -> Reply:
        """The reply to an actual cross-origin request, with what lets the browser hand it to the page."""
        if not self.origins:
            return reply
        allowed = self._allowed_origin(request.headers.get("origin"))
        if allowed is None or request.method == "OPTIONS":
            return reply
        extra = [("access-control-allow-origin", allowed), ("vary", "Origin")]
        if self.expose:
            extra.append(("access-control-expose-headers", self.expose))
        reply.headers = [*reply.headers, *extra]
        return reply

