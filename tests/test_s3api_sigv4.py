"""SigV4 checked as S3 checks it: requests botocore signs verify, any change to them does not, and aws-chunked
bodies (AWS's own signed example, botocore's unsigned-trailer encoding) decode to their exact bytes or are refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum
from starlette.datastructures import Headers

import stor.s3api.sigv4 as sigv4
from stor.config import S3AccessKey
from stor.s3api.chunked import MAX_SIZE_LINE, AwsChunkedDecoder
from stor.s3api.errors import S3Error
from stor.s3api.sigv4 import (
    MAX_PRESIGNED_EXPIRES,
    STREAMING_SIGNED,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    Authenticated,
    ChunkSigning,
    SignatureVerifier,
)

ACCESS, SECRET = "AKIDSTOR0123456789", "stor/Secret+Key=0123456789abcdefghijkl"
WRITER = S3AccessKey(ACCESS, SECRET, "write")
READER = S3AccessKey("AKIDREADER", "reader-secret-0123456789", "read")
REGION = "eu-west-3"  # not us-east-1: any region the client signs for is taken


# ---- requests as they reach the server -------------------------------------------------------------------

@dataclass(frozen=True)
class Wire:
    """A request as the server sees it: the path and query as sent, every header."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]

    def with_header(self, name: str, value: str) -> Wire:
        kept = tuple((n, v) for n, v in self.headers if n.lower() != name.lower())
        return replace(self, headers=(*kept, (name, value)))

    def header(self, name: str) -> str:
        return next(v for n, v in self.headers if n.lower() == name.lower())

    def param(self, name: str) -> str:
        return dict(parse_qsl(self.query, keep_blank_values=True))[name]


def wire_of(method: str, url: str, headers: Any) -> Wire:
    """What an HTTP client sends for a signed request: its headers, and Host from the URL when not among them."""
    parts = urlsplit(url)
    pairs = [(str(n), v.decode("latin-1") if isinstance(v, bytes) else str(v)) for n, v in headers.items()]
    if not any(n.lower() == "host" for n, _ in pairs):
        pairs.append(("Host", parts.netloc))
    return Wire(method, parts.path, parts.query, tuple(pairs))


def verify(wire: Wire, clock: Callable[[], float] | None = None, keys: Iterable[S3AccessKey] = (WRITER, READER),
           max_skew: float = 900.0) -> Authenticated | None:
    verifier = SignatureVerifier(keys, max_skew) if clock is None else SignatureVerifier(keys, max_skew, clock)
    raw = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in wire.headers]
    return verifier.verify(wire.method, wire.path, wire.query, Headers(raw=raw))


def refused(wire: Wire, code: str, **kwargs: Any) -> S3Error:
    with pytest.raises(S3Error) as caught:
        verify(wire, **kwargs)
    assert caught.value.code == code, (caught.value.code, caught.value.message)
    return caught.value


def header_signed(method: str, url: str, headers: dict[str, str] | None = None, body: bytes = b"",
                  access: str = ACCESS, secret: str = SECRET, region: str = REGION) -> Wire:
    """Signed by botocore's S3SigV4Auth (Authorization header; over http, the body's SHA-256 signed)."""
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    S3SigV4Auth(Credentials(access, secret), "s3", region).add_auth(request)
    return wire_of(method, request.url, request.headers)


def presigned(method: str, url: str, expires: int = 3600, access: str = ACCESS, secret: str = SECRET) -> Wire:
    """A URL presigned by botocore's S3SigV4QueryAuth, sent with no header but Host."""
    request = AWSRequest(method=method, url=url)
    S3SigV4QueryAuth(Credentials(access, secret), "s3", REGION, expires=expires).add_auth(request)
    return wire_of(method, request.url, {})


def signed_at(wire: Wire) -> float:
    """The time a request says it was signed (X-Amz-Date, header or query), in seconds since the epoch."""
    text = wire.param("X-Amz-Date") if "X-Amz-Date=" in wire.query else wire.header("x-amz-date")
    return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()


class _Sent(Exception):
    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


def _capture(request: Any, **_: Any) -> None:
    raise _Sent(request)


def boto3_client(endpoint: str = "http://127.0.0.1:9000", addressing: str = "path", access: str = ACCESS,
                 secret: str = SECRET) -> Any:
    """boto3 as shipped, its requests caught as they would go on the wire instead of being sent."""
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                          region_name=REGION, config=Config(s3={"addressing_style": addressing},
                                                            retries={"max_attempts": 1}))
    client.meta.events.register("before-send.s3", _capture)
    return client


def boto3_sent(call: Callable[[], Any]) -> tuple[Wire, bytes | None]:
    """The request a boto3 call sends, and its body."""
    with pytest.raises(_Sent) as sent:
        call()
    request = sent.value.request
    body = request.body
    if hasattr(body, "read"):
        body = body.read()
    return wire_of(request.method, request.url, request.headers), body


KEYS_ODD = ["dir with space/é ü 日本.txt", "plus+and%percent", "q?mark#hash&amp=eq", "tilde~star*(paren)'",
            "a//double/./dot/../x", " lead and trail ", "semi;colon,comma:colon@at$dollar"]


# ---- requests that verify ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key", KEYS_ODD)
@pytest.mark.parametrize("addressing", ["path", "virtual"])
def test_boto3_get_object_of_any_key_verifies(key: str, addressing: str) -> None:
    client = boto3_client("http://s3.example.com:9000", addressing)
    wire, _ = boto3_sent(lambda: client.get_object(Bucket="samples", Key=key, Range="bytes=0-9"))
    assert wire.header("host") == ("samples.s3.example.com:9000" if addressing == "virtual" else "s3.example.com:9000")
    assert wire.path.isascii() and " " not in wire.path  # percent-encoded on the wire, as botocore sends it
    auth = verify(wire)
    assert auth is not None and auth.key == WRITER and not auth.presigned
    assert auth.payload == hashlib.sha256(b"").hexdigest() and auth.chunk_signing is None


def test_boto3_query_with_special_characters_verifies() -> None:
    client = boto3_client()
    wire, _ = boto3_sent(lambda: client.list_objects_v2(
        Bucket="samples", Prefix="a b/ü+&=?#~*%2F/", Delimiter="/", StartAfter="x y", MaxKeys=7))
    assert "%26" in wire.query and "%2B" in wire.query and "%252F" in wire.query
    assert verify(wire) is not None


def test_boto3_put_object_over_http_signs_the_payload() -> None:
    client = boto3_client()
    body = b"some bytes " * 100
    wire, sent = boto3_sent(lambda: client.put_object(Bucket="samples", Key="k", Body=body,
                                                      Metadata={"colour": "blue"}, ContentType="text/plain"))
    auth = verify(wire)
    assert auth is not None and sent == body
    assert auth.payload == hashlib.sha256(body).hexdigest()


def test_repeated_and_bare_query_params_verify() -> None:
    wire = header_signed("GET", "http://127.0.0.1:9000/samples?tag=b&tag=a&acl&x=%2F%20%2B&tag=a%20b&empty=")
    assert verify(wire) is not None
    # The order on the wire is nobody's business: the canonical query is sorted.
    assert verify(replace(wire, query="acl&empty=&x=%2F%20%2B&tag=a%20b&tag=a&tag=b")) is not None


def test_date_header_instead_of_x_amz_date_verifies() -> None:
    wire = header_signed("GET", "http://127.0.0.1:9000/samples/k", headers={"Date": "placeholder"})
    assert not any(n.lower() == "x-amz-date" for n, _ in wire.headers)
    assert wire.header("date").endswith("-0000")  # botocore's formatdate: RFC 5322 "-0000" is UTC
    assert verify(wire) is not None
    at = datetime.strptime(wire.header("date"), "%a, %d %b %Y %H:%M:%S -0000").replace(tzinfo=timezone.utc)
    refused(wire, "RequestTimeTooSkewed", clock=lambda: at.timestamp() + 901)


def test_the_reader_key_verifies_as_the_reader() -> None:
    wire = header_signed("HEAD", "http://127.0.0.1:9000/samples/k", access=READER.access_key,
                         secret=READER.secret_key)
    auth = verify(wire)
    assert auth is not None and auth.key == READER


@pytest.mark.parametrize("addressing", ["path", "virtual"])
def test_boto3_presigned_url_verifies(addressing: str) -> None:
    client = boto3_client("http://s3.example.com:9000", addressing)
    url = client.generate_presigned_url("get_object", Params={"Bucket": "samples", "Key": "a b/é+?.txt"},
                                        ExpiresIn=300)
    wire = wire_of("GET", url, {})
    auth = verify(wire)
    assert auth is not None and auth.presigned and auth.key == WRITER
    assert auth.payload == UNSIGNED_PAYLOAD and auth.chunk_signing is None


def test_presigned_url_with_a_query_of_its_own_verifies() -> None:
    wire = presigned("GET", "http://127.0.0.1:9000/samples/k?response-content-type=text%2Fplain%3B%20x%3D1"
                            "&versionId=a%2Bb")
    assert verify(wire) is not None


class _PayloadPresigner(S3SigV4QueryAuth):
    """A presigner that signs a payload hash, named in X-Amz-Content-Sha256 (as aws-sdk-js's presigner does)."""

    def __init__(self, payload: str) -> None:
        super().__init__(Credentials(ACCESS, SECRET), "s3", REGION, expires=60)
        self._payload = payload

    def payload(self, request: Any) -> str:
        return self._payload


def test_presigned_url_with_its_payload_hash_verifies_with_that_payload() -> None:
    digest = hashlib.sha256(b"the body").hexdigest()
    request = AWSRequest(method="PUT", url=f"http://127.0.0.1:9000/samples/k?X-Amz-Content-Sha256={digest}")
    _PayloadPresigner(digest).add_auth(request)
    wire = wire_of("PUT", request.url, {})
    auth = verify(wire)
    assert auth is not None and auth.presigned and auth.payload == digest
    other = hashlib.sha256(b"another body").hexdigest()
    refused(replace(wire, query=wire.query.replace(digest, other)), "SignatureDoesNotMatch")
    refused(replace(wire, query=wire.query.replace(digest, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")), "InvalidArgument")


def test_anonymous_requests_are_none() -> None:
    assert verify(Wire("GET", "/samples/k", "list-type=2&prefix=a", (("Host", "h"),))) is None
    assert verify(Wire("GET", "/samples/k", "Signature=x", (("Host", "h"), ("x-amz-date", "y")))) is None


# ---- requests that do not verify ---------------------------------------------------------------------------

def test_wrong_secret_is_signature_does_not_match() -> None:
    refused(header_signed("GET", "http://127.0.0.1:9000/samples/k", secret=SECRET + "x"), "SignatureDoesNotMatch")
    refused(presigned("GET", "http://127.0.0.1:9000/samples/k", secret="nope"), "SignatureDoesNotMatch")


def test_unknown_key_is_invalid_access_key_id() -> None:
    refused(header_signed("GET", "http://127.0.0.1:9000/samples/k", access="AKIDNOBODY"), "InvalidAccessKeyId")
    refused(presigned("GET", "http://127.0.0.1:9000/samples/k", access="AKIDNOBODY"), "InvalidAccessKeyId")
    # A key the verifier does not hold is unknown, whatever its secret.
    refused(header_signed("GET", "http://127.0.0.1:9000/samples/k"), "InvalidAccessKeyId", keys=[READER])


def test_any_change_to_a_signed_request_breaks_it() -> None:
    wire = header_signed("GET", "http://127.0.0.1:9000/samples/dir/k%20ey?tag=a&x=1", headers={"Range": "bytes=0-9"})
    assert verify(wire) is not None
    changed = [
        wire.with_header("Range", "bytes=0-99"),  # a signed header
        wire.with_header("Host", "127.0.0.1:9001"),
        replace(wire, method="DELETE"),
        replace(wire, path="/samples/dir/k%20eY"),
        replace(wire, path="/samples/dir/k+ey"),
        replace(wire, query="tag=a&x=2"),  # a changed query value
        replace(wire, query="tag=a"),  # one dropped
        replace(wire, query="tag=a&x=1&y=2"),  # one added
        replace(wire, query="tag=a&tag=a&x=1"),  # one repeated
        wire.with_header("x-amz-content-sha256", hashlib.sha256(b"other").hexdigest()),
    ]
    date = wire.header("x-amz-date")
    changed.append(wire.with_header("x-amz-date", date[:-3] + ("58Z" if date.endswith("59Z") else "59Z")))
    for other in changed:
        refused(other, "SignatureDoesNotMatch")
    authorization = wire.header("authorization")
    flipped = authorization[:-1] + ("0" if authorization[-1] != "0" else "1")
    refused(wire.with_header("Authorization", flipped), "SignatureDoesNotMatch")
    head, signature = authorization.rsplit("=", 1)
    if signature != signature.upper():
        refused(wire.with_header("Authorization", f"{head}={signature.upper()}"), "SignatureDoesNotMatch")


def test_a_presigned_url_changed_is_refused() -> None:
    wire = presigned("GET", "http://127.0.0.1:9000/samples/k?versionId=1")
    assert verify(wire) is not None
    refused(replace(wire, query=wire.query.replace("versionId=1", "versionId=2")), "SignatureDoesNotMatch")
    refused(replace(wire, path="/samples/K"), "SignatureDoesNotMatch")
    refused(replace(wire, method="PUT"), "SignatureDoesNotMatch")
    refused(wire.with_header("Host", "elsewhere"), "SignatureDoesNotMatch")
    longer = wire.query.replace("X-Amz-Expires=3600", "X-Amz-Expires=7200")
    refused(replace(wire, query=longer), "SignatureDoesNotMatch")


def test_an_unsigned_x_amz_header_is_refused() -> None:
    wire = header_signed("PUT", "http://127.0.0.1:9000/samples/k", body=b"data")
    assert verify(wire) is not None
    error = refused(wire.with_header("x-amz-copy-source", "/samples/secret"), "AccessDenied")
    assert error.extra["HeadersNotSigned"] == "x-amz-copy-source"
    refused(presigned("PUT", "http://127.0.0.1:9000/samples/k").with_header("x-amz-meta-a", "b"), "AccessDenied")
    # Unsigned headers of other names are the client's business, as in S3.
    assert verify(wire.with_header("User-Agent", "curl")) is not None


@pytest.mark.parametrize("offset", [-901, 901, 3600])
def test_a_skewed_clock_is_request_time_too_skewed(offset: int) -> None:
    wire = header_signed("GET", "http://127.0.0.1:9000/samples/k")
    error = refused(wire, "RequestTimeTooSkewed", clock=lambda: signed_at(wire) + offset)
    assert error.status == 403 and error.extra["RequestTime"] == wire.header("x-amz-date")
    assert verify(wire, clock=lambda: signed_at(wire) + offset, max_skew=abs(offset) + 1) is not None


@pytest.mark.parametrize("offset", [-899, 0, 899])
def test_a_clock_within_the_skew_verifies(offset: int) -> None:
    wire = header_signed("GET", "http://127.0.0.1:9000/samples/k")
    assert verify(wire, clock=lambda: signed_at(wire) + offset) is not None


def test_presigned_expiry() -> None:
    wire = presigned("GET", "http://127.0.0.1:9000/samples/k", expires=600)
    at = signed_at(wire)
    assert verify(wire, clock=lambda: at + 599) is not None  # not yet expired
    assert verify(wire, clock=lambda: at + 600, max_skew=60.0) is not None  # the skew is no limit here: expiry is
    error = refused(wire, "AccessDenied", clock=lambda: at + 601)
    assert error.message == "Request has expired" and error.status == 403
    assert error.extra["X-Amz-Expires"] == "600"
    refused(wire, "AccessDenied", clock=lambda: at - 3600)  # signed an hour in the future: not valid yet


def test_presigned_expires_over_a_week_is_refused() -> None:
    assert verify(presigned("GET", "http://127.0.0.1:9000/samples/k", expires=MAX_PRESIGNED_EXPIRES)) is not None
    error = refused(presigned("GET", "http://127.0.0.1:9000/samples/k", expires=MAX_PRESIGNED_EXPIRES + 1),
                    "AuthorizationQueryParametersError")
    assert str(MAX_PRESIGNED_EXPIRES) in error.message
    wire = presigned("GET", "http://127.0.0.1:9000/samples/k")
    for bad in ["-1", "9" * 5000, "1e3", ""]:
        refused(replace(wire, query=wire.query.replace("X-Amz-Expires=3600", f"X-Amz-Expires={bad}")),
                "AuthorizationQueryParametersError")


def test_other_authorization_schemes_are_refused_clearly() -> None:
    base = (("Host", "127.0.0.1:9000"), ("Date", "Wed, 04 Dec 2026 10:00:00 GMT"))
    v2 = Wire("GET", "/samples/k", "", (*base, ("Authorization", f"AWS {ACCESS}:frJIUN8DYpKDtOLCwo//yllqDzg=")))
    error = refused(v2, "InvalidRequest")
    assert "AWS4-HMAC-SHA256" in error.message
    refused(Wire("GET", "/samples/k", "", (*base, ("Authorization", "Bearer abc"))), "InvalidRequest")
    v2_query = Wire("GET", "/samples/k", "AWSAccessKeyId=AKIDSTOR0123456789&Expires=1&Signature=x", base)
    refused(v2_query, "InvalidRequest")
    wire = presigned("GET", "http://127.0.0.1:9000/samples/k")
    signed = header_signed("GET", "http://127.0.0.1:9000/samples/k")
    both = replace(wire, headers=signed.headers)
    refused(both, "InvalidArgument")


def test_malformed_credentials_are_refused() -> None:
    wire = header_signed("GET", "http://127.0.0.1:9000/samples/k")
    authorization = wire.header("authorization")
    scope = f"/{wire.header('x-amz-date')[:8]}/{REGION}/s3/aws4_request"
    for bad in [scope.replace("/s3/", "/ec2/"), scope.replace("aws4_request", "aws5_request"),
                scope.replace(f"/{REGION}/", "//"), "/20200101" + scope[9:]]:
        refused(wire.with_header("Authorization", authorization.replace(scope, bad)), "AuthorizationHeaderMalformed")
    no_host = authorization.replace("SignedHeaders=host;", "SignedHeaders=")
    refused(wire.with_header("Authorization", no_host), "AccessDenied")
    odd_name = authorization.replace("SignedHeaders=host;", "SignedHeaders=host;range:x;")
    refused(wire.with_header("Authorization", odd_name), "AuthorizationHeaderMalformed")
    refused(wire.with_header("Authorization", authorization.replace("Signature=", "Sig=")),
            "AuthorizationHeaderMalformed")
    refused(wire.with_header("x-amz-date", "2026-12-04T10:00:00Z"), "AccessDenied")
    missing = replace(wire, headers=tuple((n, v) for n, v in wire.headers if n.lower() != "x-amz-content-sha256"))
    refused(missing, "InvalidRequest")


def test_a_path_urlsplit_would_cut_is_refused() -> None:
    wire = header_signed("GET", "http://127.0.0.1:9000/samples/k")
    refused(replace(wire, path="/samples/k#frag"), "InvalidURI")
    refused(replace(wire, path="samples/k"), "InvalidURI")


def test_a_query_escape_that_is_not_utf8_is_refused() -> None:
    wire = header_signed("GET", "http://127.0.0.1:9000/samples?prefix=%EF%BF%BD")
    assert verify(wire) is not None
    # Decoded with replacement, %FF would read as the U+FFFD signed: two queries, one signature.
    refused(replace(wire, query="prefix=%FF"), "InvalidArgument")


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spy around the real hmac.compare_digest (it still decides): a comparison's timing cannot be
    measured reliably in a test, so the test checks that the constant-time one is the one called."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(sigv4.hmac, "compare_digest", spy)
    wire = header_signed("GET", "http://127.0.0.1:9000/samples/k")
    assert verify(wire) is not None
    assert compared and compared[-1][1] == wire.header("authorization").rsplit("=", 1)[1].encode()


def test_no_secret_in_any_repr_or_error() -> None:
    auth = verify(AWS_REQUEST, clock=lambda: AWS_TIME, keys=[S3AccessKey(AWS_ACCESS, AWS_SECRET, "write")])
    assert auth is not None and auth.chunk_signing is not None
    signing_key = auth.chunk_signing.signing_key
    for text in [repr(auth), str(auth), repr(auth.chunk_signing)]:
        assert AWS_SECRET not in text and signing_key.hex() not in text and repr(signing_key) not in text
    assert SECRET not in repr(WRITER)
    verifier = SignatureVerifier([WRITER])
    assert SECRET not in repr(verifier)
    error = refused(header_signed("GET", "http://127.0.0.1:9000/samples/k", secret="wrong"), "SignatureDoesNotMatch")
    assert SECRET not in error.message and SECRET not in repr(error.extra)


# ---- aws-chunked bodies ------------------------------------------------------------------------------------

def decode(pieces: Iterable[bytes], decoded_length: int | None, signing: ChunkSigning | None = None,
           trailer: bool = False) -> tuple[bytes, dict[str, str]]:
    """An aws-chunked body decoded whole: its payload and its trailers."""

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async def run() -> tuple[bytes, dict[str, str]]:
        decoder = AwsChunkedDecoder(body(), decoded_length, signing, trailer)
        out = bytearray()
        async for data in decoder:
            out += data
        return bytes(out), decoder.trailers

    return asyncio.run(run())


def split(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def decode_refused(pieces: Iterable[bytes], decoded_length: int | None, code: str,
                   signing: ChunkSigning | None = None, trailer: bool = False) -> S3Error:
    with pytest.raises(S3Error) as caught:
        decode(pieces, decoded_length, signing, trailer)
    assert caught.value.code == code, (caught.value.code, caught.value.message)
    return caught.value


# The example of https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html ("Example: PUT Object").
AWS_ACCESS, AWS_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
AWS_CHUNKS = [
    (b"a" * 65536, "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"),
    (b"a" * 1024, "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"),
    (b"", "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"),
]
AWS_REQUEST = Wire("PUT", "/examplebucket/chunkObject.txt", "", (
    ("Host", "s3.amazonaws.com"),
    ("x-amz-date", "20130524T000000Z"),
    ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
    ("Authorization", f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS}/20130524/us-east-1/s3/aws4_request,"
                      "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                      f"x-amz-decoded-content-length;x-amz-storage-class,Signature={AWS_SEED}"),
    ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
    ("Content-Encoding", "aws-chunked"),
    ("x-amz-decoded-content-length", "66560"),
    ("Content-Length", "66824"),
))
AWS_TIME = datetime(2013, 5, 24, tzinfo=timezone.utc).timestamp()


def aws_body(chunks: list[tuple[bytes, str]] = AWS_CHUNKS) -> bytes:
    return b"".join(b"%x;chunk-signature=%s\r\n%s\r\n" % (len(data), sig.encode(), data) for data, sig in chunks)


def aws_signing() -> ChunkSigning:
    auth = verify(AWS_REQUEST, clock=lambda: AWS_TIME, keys=[S3AccessKey(AWS_ACCESS, AWS_SECRET, "write")])
    assert auth is not None and auth.payload == STREAMING_SIGNED and auth.chunk_signing is not None
    return auth.chunk_signing


def test_the_aws_signed_streaming_example_verifies_and_decodes() -> None:
    body = aws_body()
    assert len(body) == int(AWS_REQUEST.header("content-length"))
    signing = aws_signing()
    assert signing.seed_signature == AWS_SEED
    previous = AWS_SEED
    for data, expected in AWS_CHUNKS:
        previous = signing.chunk_signature(previous, hashlib.sha256(data).hexdigest())
        assert previous == expected
    for size in [len(body), 1, 7, 88, 4096, 65536 + 89, 65626]:
        payload, trailers = decode(split(body, size), 66560, signing)
        assert payload == b"a" * 66560 and trailers == {}


@pytest.mark.parametrize("where", [200, 65000, 65700, 66700])
def test_the_aws_example_with_one_byte_flipped_is_refused(where: int) -> None:
    body = bytearray(aws_body())
    assert body[where : where + 1] == b"a"
    body[where] ^= 0x01
    decode_refused([bytes(body)], 66560, "SignatureDoesNotMatch", aws_signing())


def test_the_aws_example_with_a_signature_changed_or_reordered_is_refused() -> None:
    signing = aws_signing()
    for i in range(3):
        chunks = list(AWS_CHUNKS)
        data, sig = chunks[i]
        chunks[i] = (data, sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:])
        decode_refused([aws_body(chunks)], 66560, "SignatureDoesNotMatch", signing)
    swapped = [AWS_CHUNKS[1], AWS_CHUNKS[0], AWS_CHUNKS[2]]
    decode_refused([aws_body(swapped)], 66560, "SignatureDoesNotMatch", signing)
    unsigned = b"".join(b"%x\r\n%s\r\n" % (len(data), data) for data, _ in AWS_CHUNKS)
    decode_refused([unsigned], 66560, "SignatureDoesNotMatch", signing)
    # Another request's seed: the chain does not start where this one's does.
    decode_refused([aws_body()], 66560, "SignatureDoesNotMatch", replace(signing, seed_signature="0" * 64))


def test_the_aws_example_seed_request_changed_is_refused() -> None:
    keys = [S3AccessKey(AWS_ACCESS, AWS_SECRET, "write")]
    for name, value in [("x-amz-decoded-content-length", "66561"), ("x-amz-storage-class", "STANDARD"),
                        ("Content-Length", "66825")]:
        refused(AWS_REQUEST.with_header(name, value), "SignatureDoesNotMatch", clock=lambda: AWS_TIME, keys=keys)


@pytest.mark.parametrize("declared", [66559, 66561, 0])
def test_a_decoded_length_other_than_declared_is_refused(declared: int) -> None:
    decode_refused([aws_body()], declared, "IncompleteBody", aws_signing())


@pytest.mark.parametrize("cut", [1, 50, 88, 1000, 65625, 65626, 65700, 66737, 66800, 66822, 66823])
def test_a_truncated_aws_example_is_refused(cut: int) -> None:
    body = aws_body()
    with pytest.raises(S3Error) as caught:
        decode(split(body[:cut], 4096), 66560, aws_signing())
    assert caught.value.code == "IncompleteBody", caught.value.message


def botocore_chunked(payload: bytes, chunk_size: int) -> bytes:
    """An aws-chunked body with a crc32 trailer, encoded by botocore itself (what aws-cli and boto3 send)."""
    return AwsChunkedWrapper(io.BytesIO(payload), Crc32Checksum, "x-amz-checksum-crc32", chunk_size).read()


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@pytest.mark.parametrize("length", [0, 1, 999, 1000, 5000, 100_003])
def test_botocore_unsigned_trailer_body_decodes_exactly(length: int) -> None:
    payload = hashlib.sha256(b"seed").digest() * (length // 32 + 1)
    payload = payload[:length]
    body = botocore_chunked(payload, 1000)
    assert body.endswith(b"\r\n0\r\nx-amz-checksum-crc32:%s\r\n\r\n" % crc32_b64(payload).encode()) or length == 0
    for size in [len(body) or 1, 1, 3, 1002, 4096]:
        decoded, trailers = decode(split(body, size), length, None, trailer=True)
        assert decoded == payload
        assert trailers == {"x-amz-checksum-crc32": crc32_b64(payload)}


def test_boto3_put_object_over_https_verifies_and_decodes() -> None:
    """What boto3 (and aws-cli) send to an https endpoint: STREAMING-UNSIGNED-PAYLOAD-TRAILER, crc32 trailer."""
    client = boto3_client("https://s3.example.com")
    payload = bytes(range(256)) * 5000  # 1.22 MiB: two chunks of botocore's 1 MiB
    wire, body = boto3_sent(lambda: client.put_object(Bucket="samples", Key="big", Body=payload))
    assert wire.header("x-amz-content-sha256") == STREAMING_UNSIGNED_TRAILER
    assert wire.header("content-encoding") == "aws-chunked" and body is not None
    auth = verify(wire)
    assert auth is not None and auth.payload == STREAMING_UNSIGNED_TRAILER and auth.chunk_signing is None
    decoded, trailers = decode(split(body, 65536), int(wire.header("x-amz-decoded-content-length")), None, True)
    assert decoded == payload and trailers["x-amz-checksum-crc32"] == crc32_b64(payload)
    refused(wire.with_header("x-amz-decoded-content-length", "1"), "SignatureDoesNotMatch")


@pytest.mark.parametrize("cut", [1, 5, 500, 1007, 1010, -40, -5, -2, -1])
def test_a_truncated_unsigned_trailer_body_is_refused(cut: int) -> None:
    body = botocore_chunked(b"x" * 3000, 1000)
    decode_refused(split(body[:cut], 100), 3000, "IncompleteBody", None, trailer=True)


def test_an_unsigned_body_with_more_or_less_than_declared_is_refused() -> None:
    body = botocore_chunked(b"x" * 3000, 1000)
    decode_refused([body], 2999, "IncompleteBody", None, trailer=True)
    decode_refused([body], 3001, "IncompleteBody", None, trailer=True)
    decode_refused([body + b"x"], 3000, "InvalidRequest", None, trailer=True)  # bytes after the end


def _sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def signed_trailer_body(signing_key: bytes, amz_date: str, scope: str, seed: str, chunks: list[bytes],
                        trailer: list[tuple[str, str]], tamper: Callable[[str], str] = lambda s: s) -> bytes:
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER as the spec (sigv4-streaming-trailers.html) writes it,
    worked out here from the spec rather than with the module's own ChunkSigning."""
    empty = hashlib.sha256(b"").hexdigest()
    out, previous = bytearray(), seed
    for data in [*chunks, b""]:
        previous = _sign(signing_key, "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, empty,
                                                 hashlib.sha256(data).hexdigest()]))
        out += b"%x;chunk-signature=%s\r\n" % (len(data), previous.encode())
        if data:
            out += data + b"\r\n"
    canonical = "".join(f"{name}:{value}\n" for name, value in trailer)
    signature = _sign(signing_key, "\n".join(["AWS4-HMAC-SHA256-TRAILER", amz_date, scope, previous,
                                              hashlib.sha256(canonical.encode()).hexdigest()]))
    out += "".join(f"{name}:{tamper(value)}\r\n" for name, value in trailer).encode()
    out += f"x-amz-trailer-signature:{signature}\r\n\r\n".encode()
    return bytes(out)


def test_a_signed_trailer_body_decodes_and_its_trailer_signature_counts() -> None:
    key, date, scope = b"k" * 32, "20261204T101010Z", "20261204/eu-west-3/s3/aws4_request"
    signing = ChunkSigning(key, date, scope, "5e" * 32)
    chunks = [b"p" * 9000, b"q" * 100]
    trailer = [("x-amz-checksum-crc32", crc32_b64(b"".join(chunks)))]
    body = signed_trailer_body(key, date, scope, "5e" * 32, chunks, trailer)
    for size in [len(body), 1, 13, 8192]:
        decoded, trailers = decode(split(body, size), 9100, signing, trailer=True)
        assert decoded == b"".join(chunks) and trailers == dict(trailer)
    changed = signed_trailer_body(key, date, scope, "5e" * 32, chunks, trailer, tamper=lambda v: "AAAAAA==")
    decode_refused([changed], 9100, "SignatureDoesNotMatch", signing, trailer=True)
    no_signature = body[: body.index(b"x-amz-trailer-signature")] + b"\r\n"
    decode_refused([no_signature], 9100, "SignatureDoesNotMatch", signing, trailer=True)
    decode_refused([body[:-2]], 9100, "IncompleteBody", signing, trailer=True)


def test_a_trailer_where_none_was_announced_is_refused() -> None:
    body = aws_body()[:-2] + b"x-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    decode_refused([body], 66560, "InvalidRequest", aws_signing(), trailer=False)
    decode_refused([b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"], 3, "InvalidRequest")


def test_an_oversize_chunk_size_line_is_refused_without_buffering() -> None:
    consumed = 0

    def endless() -> Iterable[bytes]:
        nonlocal consumed
        while consumed < 10_000:
            consumed += 1
            yield b"f" * 100  # a size line that never ends

    error = decode_refused(endless(), None, "InvalidRequest")
    assert consumed <= MAX_SIZE_LINE // 100 + 1 and str(MAX_SIZE_LINE) in error.message
    long_extension = b"3;" + b"x" * MAX_SIZE_LINE + b"\r\nabc\r\n0\r\n\r\n"
    decode_refused([long_extension], 3, "InvalidRequest")
    at_limit = b"3;" + b"x" * (MAX_SIZE_LINE - 5) + b"\r\nabc\r\n0\r\n\r\n"  # 512 bytes, CRLF included
    assert decode([at_limit], 3) == (b"abc", {})


def test_an_oversize_trailer_is_refused() -> None:
    body = b"3\r\nabc\r\n0\r\n" + b"x-amz-meta-a:" + b"b" * 20_000 + b"\r\n\r\n"
    decode_refused(split(body, 1000), 3, "InvalidRequest", None, trailer=True)


@pytest.mark.parametrize("size_line", [b"zz", b"", b"-1", b"0x10", b" 3", b"1" + b"0" * 16, b"3\n"])
def test_a_chunk_size_that_is_not_hex_is_refused(size_line: bytes) -> None:
    decode_refused([size_line + b"\r\nabc\r\n0\r\n\r\n"], 3, "InvalidRequest")


def test_a_chunk_not_ended_by_crlf_is_refused() -> None:
    decode_refused([b"3\r\nabcd\r\n0\r\n\r\n"], 3, "InvalidRequest")
    decode_refused([b"3\r\nabc\n0\r\n\r\n"], 3, "InvalidRequest")
    assert decode([b"3\r\nabc\r\n0\r\n\r\n"], 3) == (b"abc", {})
