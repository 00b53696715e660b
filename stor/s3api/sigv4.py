"""AWS Signature Version 4 checked on the server: who signed a request, and what its payload hash claims.

The canonical request and the string to sign are botocore's own (S3SigV4Auth), the
implementation every Python S3 client signs with, so the server cannot drift from
the clients on the algorithm's corners (query encoding and sorting, header value
trimming, repeated headers). What differs on this side: the headers are exactly
those the client lists in SignedHeaders (botocore's client-side choice and its
blacklist do not apply), the path is the one on the wire (S3 does not normalise it),
and the query is decoded from the wire and re-encoded by botocore.

Any region in the credential scope is accepted: the signature proves the secret,
and clients disagree on the region they default to. The service must be "s3".

Every x-amz-* header of the request must be signed, as S3 demands: one that is not
(x-amz-copy-source, x-amz-meta-*, x-amz-decoded-content-length, ...) could be added
to a captured request without breaking its signature. x-amz-date and
x-amz-content-sha256 are bound anyway (the string to sign and the canonical
request hold their values). Header values are read as latin-1, as the wire's
bytes, which is how botocore sends them; no other reading is tried, so that two
different requests never share one canonical form.

Deriving a signing key is four HMACs; keys are cached per access key, date and
region, so a request costs one canonical request, two SHA-256 and one HMAC.
Nothing here logs a secret or a signing key, and neither is in any repr.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import unquote

from botocore.auth import S3SigV4Auth
from starlette.datastructures import Headers

from stor.config import S3AccessKey
from stor.s3api.errors import S3Error

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
MAX_PRESIGNED_EXPIRES = 604800  # seconds: S3's limit, one week
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
SIGNING_KEYS_KEPT = 256  # (key, date, region) entries; a few per key per day in practice

_PAYLOADS = frozenset({UNSIGNED_PAYLOAD, STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER})
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# A header name as HTTP allows it (RFC 9110 token), lower case: a name holding ":" or a line break would
# let two different requests have one canonical form.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_BOUND_ANYWAY = frozenset({"x-amz-date", "x-amz-content-sha256"})
# Characters urllib's urlsplit (inside botocore) would cut a path at or drop from it: a path
# holding one would be signed as something other than what the server acts on.
_UNSPLITTABLE = re.compile(r"[?#\t\r\n]")
_QUERY_AUTH = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders")

NOT_SUPPORTED = "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method."
)
CREDENTIAL_FORM = 'the Credential is mal-formed; expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'


@dataclass(frozen=True, slots=True)
class ChunkSigning:
    """What checking the chunks of a signed aws-chunked body needs: each chunk's signature chains on the previous."""

    signing_key: bytes = field(repr=False)
    amz_date: str
    scope: str  # "<yyyymmdd>/<region>/s3/aws4_request"
    seed_signature: str  # the request's own signature: the first chunk's "previous"

    def chunk_signature(self, previous: str, chunk_sha256_hex: str) -> str:
        return self._sign(f"AWS4-HMAC-SHA256-PAYLOAD\n{self.amz_date}\n{self.scope}\n{previous}\n"
                          f"{EMPTY_SHA256}\n{chunk_sha256_hex}")

    def trailer_signature(self, previous: str, trailer: bytes) -> str:
        """trailer: the trailer lines as sent, each ended by "\\n" (not CRLF), x-amz-trailer-signature's left out."""
        trailer_hash = hashlib.sha256(trailer).hexdigest()
        return self._sign(f"AWS4-HMAC-SHA256-TRAILER\n{self.amz_date}\n{self.scope}\n{previous}\n{trailer_hash}")

    def _sign(self, string_to_sign: str) -> str:
        return hmac.new(self.signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Authenticated:
    key: S3AccessKey
    payload: str  # x-amz-content-sha256 as signed: a 64-hex sha256, UNSIGNED-PAYLOAD, or a STREAMING-* value
    presigned: bool
    chunk_signing: ChunkSigning | None  # set when payload is STREAMING_SIGNED or STREAMING_SIGNED_TRAILER


class SignatureVerifier:
    def __init__(
        self, keys: Iterable[S3AccessKey], max_skew: float = 900.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._keys = {k.access_key: k for k in keys}
        self._max_skew = max_skew
        self._clock = clock
        self._signing_keys: dict[tuple[S3AccessKey, str, str], bytes] = {}

    def verify(self, method: str, raw_path: str, raw_query: str, headers: Headers) -> Authenticated | None:
        """None when the request carries no credentials at all: anonymous. Raises S3Error when it does not verify.

        raw_path and raw_query are as on the wire (percent-encoded; the query without "?").
        """
        query = _query_pairs(raw_query)
        names = {name for name, _ in query}
        authorization = headers.get("authorization")
        presigned = "X-Amz-Algorithm" in names or "X-Amz-Signature" in names
        signed_v2 = "AWSAccessKeyId" in names and "Signature" in names  # what `s3cmd signurl` makes
        if authorization is None and not presigned and not signed_v2:
            return None
        if authorization is not None and (presigned or signed_v2):
            raise S3Error(
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string "
                "parameter or the Authorization header should be specified",
                ArgumentName="Authorization",
            )
        if _UNSPLITTABLE.search(raw_path) or not raw_path.startswith("/"):
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.")
        if authorization is not None:
            return self._verify_header(method, raw_path, query, headers, authorization)
        if not presigned:
            raise S3Error("InvalidRequest", NOT_SUPPORTED)
        return self._verify_presigned(method, raw_path, query, headers)

    def _verify_header(
        self, method: str, raw_path: str, query: list[tuple[str, str]], headers: Headers, authorization: str
    ) -> Authenticated:
        algorithm, _, rest = authorization.strip().partition(" ")
        if algorithm != ALGORITHM:
            raise S3Error("InvalidRequest", NOT_SUPPORTED)
        fields: dict[str, str] = {}
        for part in rest.split(","):
            name, equals, value = part.strip().partition("=")
            if not equals or name in fields or name not in ("Credential", "SignedHeaders", "Signature"):
                raise _malformed_header("the authorization header requires three components: Credential, "
                                        "SignedHeaders, and Signature.")
            fields[name] = value
        if len(fields) != 3:
            raise _malformed_header("the authorization header requires three components: Credential, "
                                    "SignedHeaders, and Signature.")
        scope = _credential(fields["Credential"], _malformed_header)
        signed = _signed_header_names(fields["SignedHeaders"], _malformed_header)
        _check_amz_signed(headers, signed)

        amz_date = _header_date(headers)
        if amz_date[:8] != scope.date:
            raise _malformed_header("Invalid credential date. Date is not the same as X-Amz-Date.")
        now = self._clock()
        if abs(now - _amz_time(amz_date)) > self._max_skew:
            raise S3Error(
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
                RequestTime=amz_date,
                ServerTime=_amz_date(now),
                MaxAllowedSkewMilliseconds=str(int(self._max_skew * 1000)),
            )
        payload = headers.get("x-amz-content-sha256")
        if payload is None:
            raise S3Error("InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
        if payload not in _PAYLOADS and not _SHA256_HEX.fullmatch(payload):
            raise S3Error(
                "InvalidArgument",
                "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER "
                "or a valid sha256 value.",
                ArgumentName="x-amz-content-sha256",
            )
        key = self._key(scope.access_key)
        signing_key = self._signing_key(key, scope.date, scope.region)
        signature = _expected(signing_key, method, raw_path, query, headers, signed, payload, amz_date, scope.region)
        _check(signature, fields["Signature"])
        chunk_signing = None
        if payload in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER):
            chunk_signing = ChunkSigning(signing_key, amz_date, scope.scope, signature)
        return Authenticated(key, payload, presigned=False, chunk_signing=chunk_signing)

    def _verify_presigned(
        self, method: str, raw_path: str, query: list[tuple[str, str]], headers: Headers
    ) -> Authenticated:
        params: dict[str, str] = {}
        for name, value in query:
            if name.startswith("X-Amz-"):
                if name in params:
                    raise _malformed_query(f"{name} appears more than once.")
                params[name] = value
        if any(name not in params for name in (*_QUERY_AUTH, "X-Amz-Signature")):
            raise _malformed_query(
                "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
                "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
            )
        if params["X-Amz-Algorithm"] != ALGORITHM:
            raise _malformed_query('X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
        scope = _credential(params["X-Amz-Credential"], _malformed_query)
        signed = _signed_header_names(params["X-Amz-SignedHeaders"], _malformed_query)
        _check_amz_signed(headers, signed)
        amz_date = params["X-Amz-Date"]
        if not _is_amz_date(amz_date):
            raise _malformed_query("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
        if amz_date[:8] != scope.date:
            raise _malformed_query("Invalid credential date. Date is not the same as X-Amz-Date.")
        expires = params["X-Amz-Expires"]
        if not (expires.isascii() and expires.isdigit()):
            raise _malformed_query("X-Amz-Expires should be a number")
        # Counted before int(): a number of thousands of digits is a ValueError there, not an answer.
        if len(expires.lstrip("0")) > len(str(MAX_PRESIGNED_EXPIRES)) or int(expires) > MAX_PRESIGNED_EXPIRES:
            raise _malformed_query(f"X-Amz-Expires must be less than a week (in seconds) that is "
                                   f"{MAX_PRESIGNED_EXPIRES}")
        signed_at = _amz_time(amz_date)
        now = self._clock()
        if now > signed_at + int(expires):
            raise S3Error("AccessDenied", "Request has expired", Expires=_iso(signed_at + int(expires)),
                          ServerTime=_iso(now), **{"X-Amz-Expires": expires})
        if signed_at - now > self._max_skew:
            raise S3Error("AccessDenied", "Request is not valid yet")
        payload = _presigned_payload(params, headers, signed)
        key = self._key(scope.access_key)
        signing_key = self._signing_key(key, scope.date, scope.region)
        unsigned_query = [(name, value) for name, value in query if name != "X-Amz-Signature"]
        signature = _expected(signing_key, method, raw_path, unsigned_query, headers, signed, payload,
                              amz_date, scope.region)
        _check(signature, params["X-Amz-Signature"])
        return Authenticated(key, payload, presigned=True, chunk_signing=None)

    def _key(self, access_key: str) -> S3AccessKey:
        key = self._keys.get(access_key)
        if key is None:
            raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        return key

    def _signing_key(self, key: S3AccessKey, date: str, region: str) -> bytes:
        cached = self._signing_keys.get((key, date, region))
        if cached is not None:
            return cached
        signing_key = _hmac(f"AWS4{key.secret_key}".encode(), date)
        for part in (region, SERVICE, "aws4_request"):
            signing_key = _hmac(signing_key, part)
        # Bounded: regions are the client's choice, so a flood of made-up ones only evicts, oldest first.
        if len(self._signing_keys) >= SIGNING_KEYS_KEPT:
            del self._signing_keys[next(iter(self._signing_keys))]
        self._signing_keys[(key, date, region)] = signing_key
        return signing_key


@dataclass(frozen=True, slots=True)
class _Scope:
    access_key: str
    date: str  # yyyymmdd
    region: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{SERVICE}/aws4_request"


class _SignedHeaders(dict[str, list[str]]):
    """The headers the client signed, name to every value: what botocore's canonical_headers reads."""

    def get_all(self, name: str) -> list[str]:
        return self[name]


class _Request:
    """The parts of an AWSRequest botocore's canonical request and string to sign read."""

    __slots__ = ("method", "url", "headers", "params", "context", "signed_headers")

    def __init__(self, method: str, raw_path: str, query: list[tuple[str, str]], payload: str,
                 signed_headers: _SignedHeaders, amz_date: str) -> None:
        self.method = method
        # Only the path is read back from the URL (urlsplit); the host is the signed Host header's business.
        self.url = "http://stor" + raw_path
        # botocore takes the payload hash from here when present, instead of hashing a body.
        self.headers = {"X-Amz-Content-SHA256": payload}
        self.params = query
        self.context = {"timestamp": amz_date}
        self.signed_headers = signed_headers


class _Canonical(S3SigV4Auth):
    """botocore's S3 canonical request over the headers the client signed: all of them, and only them."""

    def __init__(self, region: str) -> None:
        super().__init__(None, SERVICE, region)

    def headers_to_sign(self, request: _Request) -> _SignedHeaders:
        return request.signed_headers


def _expected(signing_key: bytes, method: str, raw_path: str, query: list[tuple[str, str]], headers: Headers,
              signed: list[str], payload: str, amz_date: str, region: str) -> str:
    """The signature the request should carry."""
    if not all(_utf8(name) and _utf8(value) for name, value in query):
        raise S3Error("InvalidArgument", "The query string holds a percent-escape that is not UTF-8.")
    values = _SignedHeaders((name, headers.getlist(name)) for name in signed)
    request = _Request(method, raw_path, query, payload, values, amz_date)
    canonical = _Canonical(region)
    string_to_sign = canonical.string_to_sign(request, canonical.canonical_request(request))
    return hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _utf8(text: str) -> bool:
    """Whether text has no lone surrogate: what botocore's quote() can encode."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check(expected: str, given: str) -> None:
    # surrogateescape: a signature from the query may hold an escape that is not UTF-8 (_query_pairs).
    if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape")):
        raise S3Error("SignatureDoesNotMatch", MISMATCH)


def _query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """The query's (name, value) pairs, percent-decoded; "+" is a plus sign, as S3 signs it, not a space.

    An escape that is not UTF-8 is kept as a lone surrogate (surrogateescape), not replaced by U+FFFD:
    decoding stays one-to-one, and _expected refuses what botocore could not re-encode.
    """
    pairs = []
    for part in raw_query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name, errors="surrogateescape"), unquote(value, errors="surrogateescape")))
    return pairs


def _presigned_payload(params: dict[str, str], headers: Headers, signed: list[str]) -> str:
    """The payload hash a presigned URL was signed with: UNSIGNED-PAYLOAD unless the signer named one.

    aws-sdk-js puts X-Amz-Content-Sha256 in the query; botocore signs an x-amz-content-sha256 header
    when the request had one.
    """
    payload = params.get("X-Amz-Content-Sha256")
    if payload is None and "x-amz-content-sha256" in signed:
        payload = headers.get("x-amz-content-sha256")
    if payload is None:
        return UNSIGNED_PAYLOAD
    if payload != UNSIGNED_PAYLOAD and not _SHA256_HEX.fullmatch(payload):
        raise S3Error("InvalidArgument", "x-amz-content-sha256 of a presigned request must be UNSIGNED-PAYLOAD "
                      "or a valid sha256 value.", ArgumentName="x-amz-content-sha256")
    return payload


def _credential(value: str, malformed: Callable[[str], S3Error]) -> _Scope:
    parts = value.rsplit("/", 4)  # an access key id with a "/" in it still parses
    if len(parts) != 5 or not parts[0] or not parts[2] or parts[4] != "aws4_request":
        raise malformed(CREDENTIAL_FORM)
    access_key, date, region, service, _ = parts
    if not (len(date) == 8 and date.isascii() and date.isdigit()):
        raise malformed(CREDENTIAL_FORM)
    if service != SERVICE:
        raise malformed(f'incorrect service; this endpoint belongs to "{SERVICE}".')
    return _Scope(access_key, date, region)


def _signed_header_names(value: str, malformed: Callable[[str], S3Error]) -> list[str]:
    names = [name.lower() for name in value.split(";")]
    if not all(_HEADER_NAME.fullmatch(name) for name in names):
        raise malformed("SignedHeaders is malformed.")
    if "host" not in names:
        raise S3Error("AccessDenied", "There were headers present in the request which were not signed",
                      HeadersNotSigned="host")
    return names


def _check_amz_signed(headers: Headers, signed: list[str]) -> None:
    """AccessDenied when an x-amz-* header of the request is not among those signed."""
    present = {name.lower() for name in headers.keys()}
    unsigned = sorted(name for name in present - set(signed) - _BOUND_ANYWAY if name.startswith("x-amz-"))
    if unsigned:
        raise S3Error("AccessDenied", "There were headers present in the request which were not signed",
                      HeadersNotSigned=", ".join(unsigned))


def _header_date(headers: Headers) -> str:
    """The request's time as SigV4 signs it: X-Amz-Date, else the Date header in X-Amz-Date's form."""
    amz_date = headers.get("x-amz-date")
    if amz_date is not None:
        if _is_amz_date(amz_date):
            return amz_date
    elif (date := headers.get("date")) is not None:
        try:
            when = parsedate_to_datetime(date)
        except (TypeError, ValueError):
            pass
        else:
            if when.tzinfo is None:  # "-0000": UTC, by RFC 5322
                when = when.replace(tzinfo=timezone.utc)
            return _amz_date(when.timestamp())
    raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")


def _is_amz_date(value: str) -> bool:
    """Whether value is a real time in the form 20130524T000000Z."""
    if not (len(value) == 16 and value[8] == "T" and value[15] == "Z"):
        return False
    digits = value[:8] + value[9:15]
    if not (digits.isascii() and digits.isdigit()):
        return False
    try:
        _amz_time(value)
    except ValueError:
        return False
    return True


def _amz_time(value: str) -> float:
    """Seconds since the epoch of a checked 20130524T000000Z."""
    return datetime(int(value[0:4]), int(value[4:6]), int(value[6:8]), int(value[9:11]), int(value[11:13]),
                    int(value[13:15]), tzinfo=timezone.utc).timestamp()


def _amz_date(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _malformed_header(detail: str) -> S3Error:
    return S3Error("AuthorizationHeaderMalformed", f"The authorization header is malformed; {detail}")


def _malformed_query(detail: str) -> S3Error:
    return S3Error("AuthorizationQueryParametersError", detail)
