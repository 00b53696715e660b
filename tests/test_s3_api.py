"""The S3 API (`stor serve --s3-port`) with the clients users have: aws-cli, boto3, s3cmd, rclone and curl.

Every test talks to a real `stor serve` over TCP. Most share one server per module (each adds
blobs of its own, random ones, so they never collide); those that need another configuration
(anonymous reads, a domain, a size limit) share a second one. Reads and listings run on both of
the server's answering paths (stor's fast path and plain ASGI): they differ in how GET and HEAD
are answered. Multipart uploads are not covered here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from botocore.exceptions import ClientError
from conftest import AUTH, StorServer, free_port, layout_path, sha256, temp_files, wait_for
from s3api_fixture import (
    BUCKET,
    READER_KEY,
    READER_SECRET,
    WRITER_KEY,
    aws,
    boto3_client,
    layout_key,
    presign,
    rclone,
    s3_api_config,
    s3cmd,
    send,
    signed,
    signed_headers,
)

ORIGIN = "https://app.example"
DOMAIN = "s3.stor.test"
MAX_BLOB = 300_000
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@dataclass
class S3:
    server: StorServer
    port: int
    disks: tuple[Path, Path]
    home: Path  # the command-line clients' HOME

    @property
    def url(self) -> str:
        """The blob API's (main port)."""
        return self.server.url

    def client(self, **kwargs: Any) -> Any:
        return boto3_client(self.port, **kwargs)


def _start(factory: pytest.TempPathFactory, name: str, fast_path: bool = True, uploads: dict[str, Any] | None = None,
           **s3_api: Any) -> Iterator[S3]:
    root = factory.mktemp(name)
    disks = (root / "disk1", root / "disk2")
    home = root / "home"
    for d in (*disks, home):
        d.mkdir()
    port = free_port()
    config = s3_api_config(disks, **s3_api)
    if uploads:
        config["uploads"] = uploads
    server = StorServer(workdir=root, config=config, workers=2, fast_path=fast_path, args=["--s3-port", str(port)])
    server.start()
    try:
        yield S3(server, port, disks, home)
    finally:
        server.stop()


CORS = {"origins": [ORIGIN], "methods": ["GET", "HEAD", "PUT"], "headers": ["*"]}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """The module's server: the default S3 settings, CORS for one origin, stor's fast path on."""
    yield from _start(tmp_path_factory, "s3", cors=CORS)


@pytest.fixture(scope="module")
def s3_asgi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """The same with `--no-fast-path`: every request through uvicorn's ASGI cycle."""
    yield from _start(tmp_path_factory, "s3-asgi", fast_path=False, cors=CORS)


@pytest.fixture(scope="module")
def s3_open(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """A server with anonymous reads, a domain for virtual-host style and a small size limit."""
    yield from _start(tmp_path_factory, "s3-open", uploads={"max_blob_bytes": MAX_BLOB}, anonymous_read=True,
                      domain=DOMAIN)


BOTH = pytest.mark.parametrize("api", ["s3", "s3_asgi"], ids=["fast", "asgi"], indirect=True)


@pytest.fixture
def api(request: pytest.FixtureRequest) -> S3:
    """The module's server in the test's mode (parametrised by BOTH), else the fast one."""
    return request.getfixturevalue(getattr(request, "param", "s3"))


def blob(size: int = 1000) -> tuple[bytes, str]:
    data = os.urandom(size)
    return data, sha256(data)


def put(api: S3, data: bytes, key: str | None = None, **kwargs: Any) -> str:
    key = key or layout_key(sha256(data))
    api.client().put_object(Bucket=BUCKET, Key=key, Body=data, **kwargs)
    return key


def error(e: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = e.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def stored_shas(disks: tuple[Path, Path]) -> list[str]:
    """Every blob on the disks, read off the layout itself: the truth a listing is compared with."""
    return sorted({p.stem.lower() for d in disks for p in d.glob("??/??/??/*.dat")})


def blob_api_get(api: S3, sha: str) -> httpx.Response:
    return httpx.get(f"{api.url}/{sha}", timeout=30)


def xml(body: bytes) -> ElementTree.Element:
    return ElementTree.fromstring(body)


# ---- the service, the bucket ---------------------------------------------------------------------


@BOTH
def test_list_buckets_head_bucket_location_acl_cors(api: S3) -> None:
    c = api.client()
    assert [b["Name"] for b in c.list_buckets()["Buckets"]] == [BUCKET]
    head = c.head_bucket(Bucket=BUCKET)
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == "us-east-1"
    assert c.get_bucket_location(Bucket=BUCKET).get("LocationConstraint") in (None, "")
    grants = c.get_bucket_acl(Bucket=BUCKET)["Grants"]
    assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]  # no public read configured
    rules = c.get_bucket_cors(Bucket=BUCKET)["CORSRules"]
    assert rules[0]["AllowedOrigins"] == [ORIGIN] and rules[0]["AllowedMethods"] == ["GET", "HEAD", "PUT"]
    with pytest.raises(ClientError) as e:
        c.get_bucket_policy(Bucket=BUCKET)
    assert error(e) == (404, "NoSuchBucketPolicy")


@BOTH
def test_another_bucket_is_no_such_bucket(api: S3) -> None:
    c = api.client()
    data, sha = blob()
    put(api, data)
    for call in (
        lambda: c.list_objects_v2(Bucket="other"),
        lambda: c.get_object(Bucket="other", Key=layout_key(sha)),
        lambda: c.put_object(Bucket="other", Key=layout_key(sha), Body=data),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert error(e) == (404, "NoSuchBucket")
    with pytest.raises(ClientError) as e:
        c.head_bucket(Bucket="other")
    assert error(e)[0] == 404  # HEAD has no body: the status alone


# ---- boto3: objects ------------------------------------------------------------------------------


@BOTH
def test_boto3_put_and_get_in_both_key_forms(api: S3) -> None:
    c = api.client()
    for bare in (False, True):
        data, sha = blob(5000)
        key = sha if bare else layout_key(sha)
        answer = c.put_object(Bucket=BUCKET, Key=key, Body=data)
        assert answer["ETag"] == f'"{sha}-1"'
        # Either form reads the same blob.
        for read_key in (key, layout_key(sha) if bare else sha, sha.upper()):
            got = c.get_object(Bucket=BUCKET, Key=read_key)
            assert got["Body"].read() == data
            assert got["ETag"] == f'"{sha}-1"'
            assert got["ContentLength"] == len(data)
            assert got["ContentType"] == "application/octet-stream"
        # A second PUT of the same blob is answered alike (the archive keeps one copy).
        assert c.put_object(Bucket=BUCKET, Key=key, Body=data)["ETag"] == f'"{sha}-1"'


@BOTH
def test_boto3_range_and_conditional_gets(api: S3) -> None:
    c = api.client()
    data, sha = blob(10_000)
    key = put(api, data)
    got = c.get_object(Bucket=BUCKET, Key=key, Range="bytes=100-199")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == f"bytes 100-199/{len(data)}"
    assert got["Body"].read() == data[100:200]
    got = c.get_object(Bucket=BUCKET, Key=key, Range="bytes=-10")
    assert got["Body"].read() == data[-10:]
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={len(data)}-")
    assert error(e) == (416, "InvalidRange")
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-1,5-6")
    assert error(e) == (416, "InvalidRange")
    with pytest.raises(ClientError) as e:  # malformed: refused as by the blob API, not ignored
        c.get_object(Bucket=BUCKET, Key=key, Range="bytes=9-3")
    assert error(e) == (400, "InvalidArgument")

    etag = c.head_object(Bucket=BUCKET, Key=key)["ETag"]
    for header in (etag, f'"{sha}"', "*"):
        with pytest.raises(ClientError) as e:
            c.get_object(Bucket=BUCKET, Key=key, IfNoneMatch=header)
        assert error(e)[0] == 304
    assert c.get_object(Bucket=BUCKET, Key=key, IfNoneMatch='"other"')["Body"].read() == data

    modified = c.head_object(Bucket=BUCKET, Key=key)["LastModified"]
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=BUCKET, Key=key, IfModifiedSince=modified)
    assert error(e)[0] == 304
    earlier = c.get_object(Bucket=BUCKET, Key=key, IfModifiedSince=modified - timedelta(hours=1))
    assert earlier["Body"].read() == data

    assert c.get_object(Bucket=BUCKET, Key=key, IfMatch=etag)["Body"].read() == data
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=BUCKET, Key=key, IfMatch='"0123"')
    assert error(e) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=BUCKET, Key=key, IfUnmodifiedSince=modified - timedelta(hours=1))
    assert error(e) == (412, "PreconditionFailed")


@BOTH
def test_head_object_and_missing_objects(api: S3) -> None:
    c = api.client()
    data, sha = blob(777)
    key = put(api, data)
    head = c.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == 777 and head["ETag"] == f'"{sha}-1"'
    assert head["AcceptRanges"] == "bytes" and head["ContentType"] == "application/octet-stream"
    got = c.get_object(Bucket=BUCKET, Key=key, ResponseContentType="text/plain",
                       ResponseContentDisposition='attachment; filename="x.bin"', ResponseCacheControl="no-cache")
    assert got["ContentType"] == "text/plain" and got["ContentDisposition"] == 'attachment; filename="x.bin"'
    assert got["CacheControl"] == "no-cache" and got["Body"].read() == data
    _, missing = blob()
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=BUCKET, Key=layout_key(missing))
    assert error(e) == (404, "NoSuchKey")
    with pytest.raises(ClientError) as e:
        c.head_object(Bucket=BUCKET, Key=missing)
    assert error(e)[0] == 404


def test_metadata_round_trip_and_its_limit(api: S3) -> None:
    c = api.client()
    data, sha = blob()
    key = put(api, data, ContentType="image/png", Metadata={"origin": "scanner-7", "batch": "42"})
    head = c.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {"origin": "scanner-7", "batch": "42"}
    got = c.get_object(Bucket=BUCKET, Key=key)
    assert got["ContentType"] == "image/png" and got["Metadata"] == {"origin": "scanner-7", "batch": "42"}
    # The blob API serves the type given through S3: one sidecar for both.
    assert blob_api_get(api, sha).headers["content-type"] == "image/png"

    big, big_sha = blob()
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket=BUCKET, Key=layout_key(big_sha), Body=big, Metadata={"note": "x" * 2100})
    assert error(e) == (400, "MetadataTooLarge")
    assert blob_api_get(api, big_sha).status_code == 404


def test_copy_object_onto_its_own_key_only(api: S3) -> None:
    c = api.client()
    data, sha = blob()
    put(api, data)
    done = c.copy_object(Bucket=BUCKET, Key=sha, CopySource={"Bucket": BUCKET, "Key": layout_key(sha)})
    assert done["CopyObjectResult"]["ETag"] == f'"{sha}-1"'
    _, other = blob()
    with pytest.raises(ClientError) as e:
        c.copy_object(Bucket=BUCKET, Key=layout_key(other), CopySource={"Bucket": BUCKET, "Key": sha})
    assert error(e) == (400, "InvalidArgument")


# ---- listings ------------------------------------------------------------------------------------


def _pages_v2(c: Any, **params: Any) -> list[dict[str, Any]]:
    pages = []
    token = None
    while True:
        page = c.list_objects_v2(Bucket=BUCKET, **params, **({"ContinuationToken": token} if token else {}))
        pages.append(page)
        if not page["IsTruncated"]:
            return pages
        token = page["NextContinuationToken"]
        assert len(pages) < 1000


@BOTH
def test_list_objects_v2_pages_delimiters_and_start_after(api: S3) -> None:
    c = api.client()
    mine = []
    for _ in range(30):
        data, sha = blob(200)
        put(api, data)
        mine.append(sha)
    truth = stored_shas(api.disks)
    assert set(mine) <= set(truth)
    expected = [layout_key(sha) for sha in truth]

    # With no prefix: every blob, once, under its layout key, in order.
    assert [o["Key"] for o in c.list_objects_v2(Bucket=BUCKET)["Contents"]] == expected
    # Pages of 7: the same keys, each page full but the last, a token to go on with.
    pages = _pages_v2(c, MaxKeys=7)
    assert [o["Key"] for p in pages for o in p.get("Contents", [])] == expected
    assert all(p["KeyCount"] == 7 for p in pages[:-1]) and 1 <= pages[-1]["KeyCount"] <= 7
    assert len(pages) == -(-len(expected) // 7)
    entry = pages[0]["Contents"][0]
    assert entry["ETag"] == f'"{truth[0]}-1"'
    assert entry["Size"] == layout_path(api.disks[0], truth[0]).stat().st_size

    # StartAfter: the keys after it, whether it is a key or not.
    middle = expected[len(expected) // 2]
    after = c.list_objects_v2(Bucket=BUCKET, StartAfter=middle)
    assert [o["Key"] for o in after["Contents"]] == [k for k in expected if k > middle]
    partial = middle[:5] + "~"
    after = c.list_objects_v2(Bucket=BUCKET, StartAfter=partial)
    assert [o["Key"] for o in after.get("Contents", [])] == [k for k in expected if k > partial]

    # Delimiter "/": the first level as common prefixes, paged too.
    tops = sorted({k[:3] for k in expected})
    pages = _pages_v2(c, Delimiter="/", MaxKeys=3)
    assert [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])] == tops
    assert not any("Contents" in page for page in pages)
    # One level down, and to the blobs themselves.
    top = expected[0][:3]
    seconds = sorted({k[:6] for k in expected if k.startswith(top)})
    listed = c.list_objects_v2(Bucket=BUCKET, Prefix=top, Delimiter="/")
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == seconds
    leaf = expected[0][:9]
    listed = c.list_objects_v2(Bucket=BUCKET, Prefix=leaf, Delimiter="/")
    assert [o["Key"] for o in listed["Contents"]] == [k for k in expected if k.startswith(leaf)]
    assert "CommonPrefixes" not in listed

    # A prefix: that part of the listing, down to one whole key.
    for prefix in (expected[0][:1], expected[0][:4], expected[0][:12], expected[0]):
        listed = c.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        assert [o["Key"] for o in listed["Contents"]] == [k for k in expected if k.startswith(prefix)], prefix
    assert c.list_objects_v2(Bucket=BUCKET, Prefix="zz/")["KeyCount"] == 0
    assert c.list_objects_v2(Bucket=BUCKET, Prefix="AB/")["KeyCount"] == 0  # layout keys are lower case

    # Bare keys: under a prefix of three hex digits or more, down to the whole sha.
    sha = mine[0]
    for prefix in (sha[:3], sha[:10], sha):
        listed = c.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        assert [o["Key"] for o in listed["Contents"]] == [s for s in truth if s.startswith(prefix)], prefix


def blob_under(hex_prefix: str) -> tuple[bytes, str]:
    """A random blob whose sha begins with hex_prefix (a few hex digits: found by trying)."""
    while True:
        data, sha = blob(32)
        if sha.startswith(hex_prefix):
            return data, sha


def listed_as_s3_lists(shas: list[str], prefix: str, delimiter: str, after: str) -> list[str]:
    """What a listing holds, worked out from the stored shas by S3's rules: the keys beginning with prefix that
    sort after the marker, those with the delimiter past the prefix rolled up into common prefixes (a marker that
    is one of them stands for every key it rolls up). Keys are the layout's, or, under a prefix of three or more
    hex digits (which no layout key begins with), the bare shas."""
    bare = 3 <= len(prefix) <= 64 and all(c in "0123456789abcdef" for c in prefix)
    keys = sorted(shas if bare else (layout_key(s) for s in shas))
    cut = after.find(delimiter, len(prefix)) if delimiter and after.startswith(prefix) else -1
    marker_rolls_up = after if cut >= 0 and cut + len(delimiter) == len(after) else None
    found: list[str] = []
    for key in keys:
        if not key.startswith(prefix) or key <= after:
            continue
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut >= 0:
            common = key[: cut + len(delimiter)]
            if common != marker_rolls_up and common not in found:
                found.append(common)
            continue
        found.append(key)
    return found


def test_listings_agree_with_the_layout_on_disk(s3: S3) -> None:
    """Prefixes, delimiters, markers and pages of every kind against the truth read off the disks."""
    c = s3.client()
    for hex_prefix in ("5e", "5e", "5e7", "5e7a", "5e7a", "c0"):
        put(s3, blob_under(hex_prefix)[0])
    truth = stored_shas(s3.disks)
    deep = next(layout_key(s) for s in truth if s.startswith("5e7a"))
    prefixes = ["", "5", "5e", "5e/", "5e/7", "5e/7a/", deep[:12], deep, "5e7", "5e7a", deep[9:30], "zz", "5e/7a/x"]
    markers = ["", "5e/", "5e/7a/", "5e/7~", deep, deep[:14], "5e7a~", "c", "c0/", "~", "-"]
    for prefix in prefixes:
        for delimiter in ("", "/", "a"):
            def listing(after: str, max_keys: int) -> list[str]:
                found: list[str] = []
                params: dict[str, Any] = {"Prefix": prefix, "Delimiter": delimiter, "MaxKeys": max_keys}
                if after:
                    params["StartAfter"] = after
                for page in _pages_v2(c, **params):
                    found += [o["Key"] for o in page.get("Contents", [])]
                    found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
                    assert page["KeyCount"] <= max_keys
                return sorted(found)

            where = (prefix, delimiter)
            assert listing("", 4 if prefix else 40) == listed_as_s3_lists(truth, prefix, delimiter, ""), where
            for after in markers:
                expected = listed_as_s3_lists(truth, prefix, delimiter, after)
                assert listing(after, 1000) == expected, (*where, after)


@BOTH
def test_list_objects_v2_url_encoding_on_the_wire(api: S3) -> None:
    data, sha = blob()
    put(api, data)
    prefix = layout_key(sha)[:6]
    answer = signed(api.port, "GET", f"/{BUCKET}?list-type=2&encoding-type=url&prefix={quote(prefix, safe='')}"
                    "&delimiter=%2F&max-keys=1000")
    assert answer.status == 200, answer.body
    root = xml(answer.body)
    assert root.findtext(f"{NS}EncodingType") == "url"
    assert root.findtext(f"{NS}Prefix") == prefix and root.findtext(f"{NS}Delimiter") == "/"
    assert layout_key(sha)[:9] in [p.text for p in root.iter(f"{NS}Prefix")]
    # A prefix with characters keys never have comes back encoded, and matches nothing.
    odd = "ab/c d&é"
    answer = signed(api.port, "GET", f"/{BUCKET}?list-type=2&encoding-type=url&prefix={quote(odd, safe='')}")
    root = xml(answer.body)
    assert answer.status == 200 and root.findtext(f"{NS}Prefix") == quote(odd, safe="/")
    assert root.findtext(f"{NS}KeyCount") == "0"
    # Bad parameters: InvalidArgument, named.
    for query in ("list-type=2&max-keys=ten", "list-type=2&encoding-type=base64", "list-type=2&continuation-token=%25"):
        answer = signed(api.port, "GET", f"/{BUCKET}?{query}")
        assert (answer.status, answer.code) == (400, "InvalidArgument"), query


@BOTH
def test_list_objects_v1_with_marker(api: S3) -> None:
    c = api.client()
    for _ in range(12):
        put(api, os.urandom(100))
    expected = [layout_key(sha) for sha in stored_shas(api.disks)]
    keys: list[str] = []
    marker = ""
    while True:
        page = c.list_objects(Bucket=BUCKET, Marker=marker, MaxKeys=5)
        assert page["Marker"] == marker
        keys += [o["Key"] for o in page["Contents"]]
        assert page["Contents"][0]["Owner"]["ID"]
        if not page["IsTruncated"]:
            break
        marker = page.get("NextMarker") or page["Contents"][-1]["Key"]
    assert keys == expected
    tops = sorted({k[:3] for k in expected})
    page = c.list_objects(Bucket=BUCKET, Delimiter="/")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == tops
    # Paged by common prefixes: NextMarker is the last one, and the next page steps over all it rolls up.
    prefixes: list[str] = []
    marker = ""
    while True:
        page = c.list_objects(Bucket=BUCKET, Delimiter="/", Marker=marker, MaxKeys=2)
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        if not page["IsTruncated"]:
            break
        marker = page["NextMarker"]
        assert marker == prefixes[-1]
    assert prefixes == tops


# ---- aws-cli -------------------------------------------------------------------------------------


def test_aws_s3_cp_up_and_down_in_both_key_forms(s3: S3, tmp_path: Path) -> None:
    for bare in (False, True):
        data, sha = blob(3 * 1024 * 1024 + 17)  # below aws-cli's multipart threshold (8 MiB)
        source = tmp_path / f"up-{bare}"
        source.write_bytes(data)
        key = sha if bare else layout_key(sha)
        aws(s3.port, s3.home, "s3", "cp", str(source), f"s3://{BUCKET}/{key}")
        assert blob_api_get(s3, sha).content == data
        down = tmp_path / f"down-{bare}"
        aws(s3.port, s3.home, "s3", "cp", f"s3://{BUCKET}/{key}", str(down))
        assert down.read_bytes() == data


def test_aws_s3_cp_to_a_wrong_key_fails_and_keeps_nothing(s3: S3, tmp_path: Path) -> None:
    data, _ = blob(2000)
    _, other = blob()
    source = tmp_path / "up"
    source.write_bytes(data)
    done = aws(s3.port, s3.home, "s3", "cp", str(source), f"s3://{BUCKET}/{layout_key(other)}", check=False,
               attempts=1)
    assert done.returncode != 0 and "BadDigest" in done.stderr, done.stderr
    done = aws(s3.port, s3.home, "s3", "cp", str(source), f"s3://{BUCKET}/notes/readme.txt", check=False)
    assert done.returncode != 0 and "InvalidArgument" in done.stderr, done.stderr
    assert blob_api_get(s3, other).status_code == 404
    assert blob_api_get(s3, sha256(data)).status_code == 404


def test_aws_s3_sync_of_a_layout_tree(s3: S3, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    blobs = {}
    for _ in range(3):
        data, sha = blob(600)
        path = tree / layout_key(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        blobs[sha] = data
    done = aws(s3.port, s3.home, "s3", "sync", str(tree), f"s3://{BUCKET}/")
    assert done.stdout.count("upload:") == 3
    for sha, data in blobs.items():
        assert blob_api_get(s3, sha).content == data
    # Nothing to do the second time: the listing's sizes and dates match the files'.
    assert "upload:" not in aws(s3.port, s3.home, "s3", "sync", str(tree), f"s3://{BUCKET}/").stdout
    down = tmp_path / "down"
    top = layout_key(next(iter(blobs)))[:3]
    aws(s3.port, s3.home, "s3", "sync", f"s3://{BUCKET}/{top}", str(down))
    assert sorted(p.name for p in down.rglob("*") if p.is_file()) == [s for s in stored_shas(s3.disks)
                                                                       if s.startswith(top[:2])]
    assert "download:" not in aws(s3.port, s3.home, "s3", "sync", f"s3://{BUCKET}/{top}", str(down)).stdout


def test_aws_s3_ls(s3: S3) -> None:
    data, sha = blob(1234)
    put(s3, data)
    key = layout_key(sha)
    top = aws(s3.port, s3.home, "s3", "ls", f"s3://{BUCKET}/").stdout.splitlines()
    assert f"PRE {key[:3]}" in [line.strip() for line in top]
    assert all(line.strip().startswith("PRE ") for line in top)
    leaf = aws(s3.port, s3.home, "s3", "ls", f"s3://{BUCKET}/{key[:9]}").stdout.splitlines()
    assert any(line.split()[-2:] == ["1234", sha] for line in leaf), leaf
    everything = aws(s3.port, s3.home, "s3", "ls", "--recursive", f"s3://{BUCKET}/").stdout.splitlines()
    assert [line.split()[-1] for line in everything] == [layout_key(s) for s in stored_shas(s3.disks)]
    bare = aws(s3.port, s3.home, "s3", "ls", f"s3://{BUCKET}/{sha[:8]}").stdout.splitlines()
    assert [line.split()[-1] for line in bare] == [s for s in stored_shas(s3.disks) if s.startswith(sha[:8])]
    buckets = aws(s3.port, s3.home, "s3", "ls").stdout.split()
    assert buckets[-1] == BUCKET


def test_aws_s3api_head_object(s3: S3, tmp_path: Path) -> None:
    data, sha = blob(4321)
    source = tmp_path / "f"
    source.write_bytes(data)
    aws(s3.port, s3.home, "s3", "cp", str(source), f"s3://{BUCKET}/{sha}", "--content-type", "text/csv",
        "--metadata", "camera=cam-3,site=north")
    head = json.loads(aws(s3.port, s3.home, "s3api", "head-object", "--bucket", BUCKET, "--key", layout_key(sha))
                      .stdout)
    assert head["ContentLength"] == 4321
    assert head["ETag"] == f'"{sha}-1"'
    assert head["ContentType"] == "text/csv"
    assert head["Metadata"] == {"camera": "cam-3", "site": "north"}
    _, missing = blob()
    done = aws(s3.port, s3.home, "s3api", "head-object", "--bucket", BUCKET, "--key", missing, check=False)
    assert done.returncode != 0 and "404" in done.stderr


def test_aws_s3_presign_and_curl(s3: S3) -> None:
    data, sha = blob(2222)
    key = put(s3, data)
    url = aws(s3.port, s3.home, "s3", "presign", f"s3://{BUCKET}/{key}", "--expires-in", "300").stdout.strip()
    assert "X-Amz-Signature=" in url
    got = subprocess.run(["curl", "-sS", "-f", url], capture_output=True, timeout=30)
    assert got.returncode == 0 and got.stdout == data, got.stderr
    # A presigned URL lets its holder read; changing what it names breaks its signature.
    tampered = url.replace(key, layout_key(sha256(b"x")))
    answer = httpx.get(tampered, timeout=30)
    assert answer.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in answer.content


def test_aws_s3_presign_expires(s3: S3) -> None:
    data, sha = blob(100)
    key = put(s3, data)
    url = aws(s3.port, s3.home, "s3", "presign", f"s3://{BUCKET}/{key}", "--expires-in", "1").stdout.strip()
    # Valid for the second it was signed in and the next: then refused, whatever the client's clock says.
    wait_for(lambda: httpx.get(url, timeout=30).status_code != 200, timeout=10, what="the URL's expiry")
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 403
    assert xml(answer.content).findtext("Code") == "AccessDenied"
    assert xml(answer.content).findtext("Message") == "Request has expired"


def test_an_expired_presigned_url_is_access_denied(s3: S3) -> None:
    data, sha = blob(100)
    key = put(s3, data)
    now = datetime.now(timezone.utc)
    fresh = presign(s3.port, "GET", f"/{BUCKET}/{key}", 60, now - timedelta(seconds=30))
    assert httpx.get(fresh, timeout=30).content == data  # the same signing, still valid: 200
    for when, expires in ((now - timedelta(hours=2), 3600), (now - timedelta(seconds=10), 1)):
        url = presign(s3.port, "GET", f"/{BUCKET}/{key}", expires, when)
        answer = httpx.get(url, timeout=30)
        assert answer.status_code == 403
        root = xml(answer.content)
        assert root.findtext("Code") == "AccessDenied" and root.findtext("Message") == "Request has expired"
    # curl is told so too.
    url = presign(s3.port, "GET", f"/{BUCKET}/{key}", 1, now - timedelta(minutes=5))
    got = subprocess.run(["curl", "-sS", "-w", "%{http_code}", url], capture_output=True, text=True, timeout=30)
    assert got.stdout.endswith("403") and "<Code>AccessDenied</Code>" in got.stdout


# ---- s3cmd ---------------------------------------------------------------------------------------


def test_s3cmd_put_get_ls_info(s3: S3, tmp_path: Path) -> None:
    data, sha = blob(50_000)
    source = tmp_path / "sample.bin"
    source.write_bytes(data)
    key = layout_key(sha)
    s3cmd(s3.port, s3.home, "put", str(source), f"s3://{BUCKET}/{key}")
    assert blob_api_get(s3, sha).content == data
    down = tmp_path / "down.bin"
    s3cmd(s3.port, s3.home, "get", f"s3://{BUCKET}/{key}", str(down))
    assert down.read_bytes() == data
    top = s3cmd(s3.port, s3.home, "ls", f"s3://{BUCKET}/").stdout
    assert f"DIR  s3://{BUCKET}/{key[:3]}" in top
    leaf = s3cmd(s3.port, s3.home, "ls", f"s3://{BUCKET}/{key[:9]}").stdout
    assert f"s3://{BUCKET}/{key}" in leaf
    everything = s3cmd(s3.port, s3.home, "ls", "--recursive", f"s3://{BUCKET}/").stdout.splitlines()
    assert [line.split()[-1] for line in everything] == [f"s3://{BUCKET}/{layout_key(s)}"
                                                         for s in stored_shas(s3.disks)]
    info = s3cmd(s3.port, s3.home, "info", f"s3://{BUCKET}/{key}").stdout
    assert f"File size: {len(data)}" in info
    # s3cmd's MD5 is the one it kept in its x-amz-meta-s3cmd-attrs at upload: the metadata came back.
    assert f"MD5 sum:   {hashlib.md5(data).hexdigest()}" in info
    assert "MIME type: application/octet-stream" in info and "x-amz-meta-s3cmd-attrs:" in info
    assert "Policy:    none" in info and "ACL:       stor: FULL_CONTROL" in info
    # A wrong key: s3cmd reports the server's refusal.
    _, other = blob()
    done = s3cmd(s3.port, s3.home, "--max-retries=0", "put", str(source), f"s3://{BUCKET}/{layout_key(other)}",
                 check=False)
    assert done.returncode != 0 and "BadDigest" in done.stderr + done.stdout
    assert blob_api_get(s3, other).status_code == 404


# ---- rclone --------------------------------------------------------------------------------------


def test_rclone_copy_ls_lsjson(s3: S3, tmp_path: Path) -> None:
    data, sha = blob(70_000)
    up = tmp_path / "up"
    up.mkdir()
    (up / sha).write_bytes(data)
    key = layout_key(sha)
    rclone(s3.port, s3.home, "copy", str(up), f"stor:{BUCKET}/{key[:9]}")
    assert blob_api_get(s3, sha).content == data
    listed = rclone(s3.port, s3.home, "ls", f"stor:{BUCKET}").stdout.splitlines()
    assert f"{len(data)} {key}" in [line.strip() for line in listed]
    assert sorted(line.split()[-1] for line in listed) == [layout_key(s) for s in stored_shas(s3.disks)]
    entries = json.loads(rclone(s3.port, s3.home, "lsjson", f"stor:{BUCKET}/{key[:9]}").stdout)
    mine = [e for e in entries if e["Name"] == sha]
    assert len(mine) == 1 and mine[0]["Size"] == len(data) and not mine[0]["IsDir"]
    top = json.loads(rclone(s3.port, s3.home, "lsjson", f"stor:{BUCKET}").stdout)
    assert sorted(e["Path"] for e in top) == sorted({s[:2] for s in stored_shas(s3.disks)})
    assert all(e["IsDir"] for e in top)
    down = tmp_path / "down"
    rclone(s3.port, s3.home, "copy", f"stor:{BUCKET}/{key}", str(down))
    assert (down / sha).read_bytes() == data
    # A second copy finds it there already and sends nothing.
    again = rclone(s3.port, s3.home, "copy", "-v", str(up), f"stor:{BUCKET}/{key[:9]}").stderr
    assert "Copied" not in again


# ---- what is refused, and how -------------------------------------------------------------------


def test_a_body_that_is_not_its_key_is_refused_and_nothing_is_kept(s3: S3) -> None:
    c = s3.client()
    data, sha = blob(3000)
    _, other = blob()
    # boto3 signs the body's SHA-256 over plain HTTP: refused before the body is stored.
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket=BUCKET, Key=layout_key(other), Body=data)
    assert error(e) == (400, "BadDigest")
    # Signed as the key's sha, but another body sent: what the server computed differs.
    answer = signed(s3.port, "PUT", f"/{BUCKET}/{layout_key(other)}", body=data, payload=other)
    assert (answer.status, answer.code) == (400, "XAmzContentSHA256Mismatch")
    root = xml(answer.body)
    assert root.findtext("ClientComputedContentSHA256") == other and root.findtext("S3ComputedContentSHA256") == sha
    # Unsigned payload: the body is hashed as it is stored, and refused at the end.
    answer = signed(s3.port, "PUT", f"/{BUCKET}/{other}", body=data, payload="UNSIGNED-PAYLOAD")
    assert (answer.status, answer.code) == (400, "BadDigest")
    # An x-amz-checksum-sha256 that is not the key's (the body is).
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket=BUCKET, Key=sha, Body=data, ChecksumSHA256=base64.b64encode(bytes(32)).decode())
    assert error(e) == (400, "BadDigest")
    # A Content-MD5 that is not the body's.
    answer = signed(s3.port, "PUT", f"/{BUCKET}/{sha}", body=data, payload="UNSIGNED-PAYLOAD",
                    headers={"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="})
    assert (answer.status, answer.code) == (400, "BadDigest")
    for digest in (other, sha):
        assert blob_api_get(s3, digest).status_code == 404
        with pytest.raises(ClientError) as e:
            c.head_object(Bucket=BUCKET, Key=digest)
        assert error(e)[0] == 404
    assert temp_files(*s3.disks) == []
    # The same request, right, is taken (with the right MD5 and SHA-256 checksum too).
    answer = signed(s3.port, "PUT", f"/{BUCKET}/{sha}", body=data, payload="UNSIGNED-PAYLOAD",
                    headers={"Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode()})
    assert answer.status == 200 and answer.headers["etag"] == f'"{sha}-1"'
    assert blob_api_get(s3, sha).content == data
    again, again_sha = blob()
    c.put_object(Bucket=BUCKET, Key=again_sha, Body=again, ChecksumAlgorithm="SHA256")
    assert blob_api_get(s3, again_sha).content == again


def test_keys_outside_the_two_forms(s3: S3) -> None:
    c = s3.client()
    data, sha = blob()
    while sha[:2].isdigit():  # its upper-case spellings below must differ from it
        data, sha = blob()
    for key in ("notes/readme.txt", sha.upper()[:6] + "/" + sha, f"{sha[:2].upper()}/{sha[2:4]}/{sha[4:6]}/{sha}",
                f"{sha[:2]}/{sha[2:4]}/{sha[4:6]}/{sha.upper()}", f"00/00/00/{sha}", f"{sha}.dat", f"/{sha}",
                f"{sha[:2]}/{sha[2:4]}/{sha}"):
        with pytest.raises(ClientError) as e:
            c.put_object(Bucket=BUCKET, Key=key, Body=data)
        assert error(e) == (400, "InvalidArgument"), key
        assert "aa/bb/cc/<sha>" in e.value.response["Error"]["Message"]
        with pytest.raises(ClientError) as e:
            c.get_object(Bucket=BUCKET, Key=key)
        assert error(e) == (404, "NoSuchKey"), key
    assert blob_api_get(s3, sha).status_code == 404


def test_wrong_secret_and_unknown_access_key(s3: S3) -> None:
    data, sha = blob()
    key = put(s3, data)
    with pytest.raises(ClientError) as e:
        s3.client(secret="not-the-secret").get_object(Bucket=BUCKET, Key=key)
    assert error(e) == (403, "SignatureDoesNotMatch")
    with pytest.raises(ClientError) as e:
        s3.client(key="nobody-at-all").list_objects_v2(Bucket=BUCKET)
    assert error(e) == (403, "InvalidAccessKeyId")
    other, other_sha = blob()
    with pytest.raises(ClientError) as e:
        s3.client(secret="not-the-secret").put_object(Bucket=BUCKET, Key=other_sha, Body=other)
    assert error(e) == (403, "SignatureDoesNotMatch")
    assert blob_api_get(s3, other_sha).status_code == 404
    done = aws(s3.port, s3.home, "s3", "ls", f"s3://{BUCKET}/", secret="not-the-secret", check=False)
    assert done.returncode != 0 and "SignatureDoesNotMatch" in done.stderr


def test_deletion_is_refused(s3: S3) -> None:
    c = s3.client()
    data, sha = blob()
    key = put(s3, data)
    with pytest.raises(ClientError) as e:
        c.delete_object(Bucket=BUCKET, Key=key)
    assert error(e) == (403, "AccessDenied")
    answer = c.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": key}, {"Key": sha}]})
    assert [(x["Key"], x["Code"]) for x in answer["Errors"]] == [(key, "AccessDenied"), (sha, "AccessDenied")]
    assert not answer.get("Deleted")
    done = aws(s3.port, s3.home, "s3", "rm", f"s3://{BUCKET}/{key}", check=False)
    assert done.returncode != 0 and "AccessDenied" in done.stderr
    with pytest.raises(ClientError) as e:
        c.delete_bucket(Bucket=BUCKET)
    assert error(e) == (403, "AccessDenied")
    assert c.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
    assert blob_api_get(s3, sha).content == data


def test_deletion_when_allowed_removes_every_copy_and_is_logged(tmp_path_factory: pytest.TempPathFactory) -> None:
    servers = _start(tmp_path_factory, "s3-delete", allow_delete=True)
    s3 = next(servers)
    try:
        c = s3.client()
        blobs = [blob() for _ in range(4)]
        for data, sha in blobs[:3]:
            put(s3, data)
        posted, posted_sha = blobs[3]
        assert httpx.post(f"{s3.url}/{posted_sha}", content=posted, auth=AUTH).status_code == 201
        first = blobs[0][1]
        reader = s3.client(key=READER_KEY, secret=READER_SECRET)
        with pytest.raises(ClientError) as e:
            reader.delete_object(Bucket=BUCKET, Key=first)
        assert error(e) == (403, "AccessDenied")
        assert c.delete_object(Bucket=BUCKET, Key=layout_key(first))["ResponseMetadata"]["HTTPStatusCode"] == 204
        with pytest.raises(ClientError) as e:
            c.head_object(Bucket=BUCKET, Key=first)
        assert error(e)[0] == 404
        assert blob_api_get(s3, first).status_code == 404
        assert first not in stored_shas(s3.disks)
        assert not [p for d in s3.disks for p in d.glob(f"??/??/??/{first.upper()}.*")]  # the sidecar too
        assert f"DELETE {first} through the S3 API by {WRITER_KEY}: removed from" in s3.server.log_text()
        # Again: S3 answers 204 for a key that names nothing.
        assert c.delete_object(Bucket=BUCKET, Key=first)["ResponseMetadata"]["HTTPStatusCode"] == 204
        keys = [blobs[1][1], layout_key(blobs[2][1]), posted_sha, "not-a-key"]
        answer = c.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]})
        assert sorted(x["Key"] for x in answer["Deleted"]) == sorted(keys) and not answer.get("Errors")
        assert stored_shas(s3.disks) == []
        assert blob_api_get(s3, posted_sha).status_code == 404
    finally:
        servers.close()


def test_a_reader_key_reads_but_cannot_write(s3: S3) -> None:
    data, sha = blob()
    key = put(s3, data)
    reader = s3.client(key=READER_KEY, secret=READER_SECRET)
    assert reader.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
    assert reader.list_objects_v2(Bucket=BUCKET, Prefix=key)["KeyCount"] == 1
    other, other_sha = blob()
    with pytest.raises(ClientError) as e:
        reader.put_object(Bucket=BUCKET, Key=other_sha, Body=other)
    assert error(e) == (403, "AccessDenied")
    with pytest.raises(ClientError) as e:
        reader.delete_object(Bucket=BUCKET, Key=key)
    assert error(e) == (403, "AccessDenied")
    assert blob_api_get(s3, other_sha).status_code == 404


@BOTH
def test_anonymous_requests_are_refused_by_default(api: S3) -> None:
    data, sha = blob()
    key = put(api, data)
    for method, path in (("GET", f"/{BUCKET}/{key}"), ("HEAD", f"/{BUCKET}/{key}"), ("GET", f"/{BUCKET}"),
                         ("GET", "/")):
        answer = send(api.port, method, path)
        assert answer.status == 403, (method, path)
        if method == "GET":
            assert answer.code == "AccessDenied"
    other, other_sha = blob()
    answer = send(api.port, "PUT", f"/{BUCKET}/{other_sha}", body=other)
    assert (answer.status, answer.code) == (403, "AccessDenied")
    assert blob_api_get(api, other_sha).status_code == 404


def test_what_is_not_supported_says_so(s3: S3) -> None:
    c = s3.client()
    data, sha = blob()
    key = put(s3, data)
    for call in (
        lambda: c.list_object_versions(Bucket=BUCKET),
        lambda: c.get_object_retention(Bucket=BUCKET, Key=key),
        lambda: c.get_object_legal_hold(Bucket=BUCKET, Key=key),
        lambda: c.get_object_attributes(Bucket=BUCKET, Key=key, ObjectAttributes=["ETag"]),
        lambda: c.list_bucket_inventory_configurations(Bucket=BUCKET),
        lambda: c.put_object_tagging(Bucket=BUCKET, Key=key, Tagging={"TagSet": [{"Key": "a", "Value": "b"}]}),
        lambda: c.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"}),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert error(e) == (501, "NotImplemented")
    # What a bucket without such settings answers.
    assert c.get_bucket_versioning(Bucket=BUCKET).get("Status") is None
    assert c.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"] == []
    with pytest.raises(ClientError) as e:
        c.get_bucket_lifecycle_configuration(Bucket=BUCKET)
    assert error(e) == (404, "NoSuchLifecycleConfiguration")
    with pytest.raises(ClientError) as e:
        c.create_bucket(Bucket=BUCKET)
    assert error(e) == (409, "BucketAlreadyOwnedByYou")


def test_an_upload_cut_short_keeps_nothing(s3: S3) -> None:
    data, sha = blob(3 * 1024 * 1024)
    headers = signed_headers("PUT", f"http://127.0.0.1:{s3.port}/{BUCKET}/{sha}", payload="UNSIGNED-PAYLOAD")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", s3.port), timeout=30) as sock:
        sock.sendall(f"PUT /{BUCKET}/{sha} HTTP/1.1\r\n{head}Content-Length: {len(data)}\r\n\r\n".encode()
                     + data[: 2 * 1024 * 1024])
        # The server has the first MiB in its temporary files (it writes a MiB at a time) when the connection drops.
        wait_for(lambda: any(p.stat().st_size > 0 for p in temp_files(*s3.disks)), what="the upload's temp files")
    wait_for(lambda: temp_files(*s3.disks) == [], what="the temporary files dropped")
    assert blob_api_get(s3, sha).status_code == 404
    with pytest.raises(ClientError) as e:
        s3.client().head_object(Bucket=BUCKET, Key=sha)
    assert error(e)[0] == 404


def test_a_large_body_refused_early_leaves_the_connection_usable(s3: S3) -> None:
    c = s3.client()
    data, _ = blob(3 * 1024 * 1024)  # botocore sends Expect: 100-continue for it
    _, other = blob()
    for _ in range(3):
        with pytest.raises(ClientError) as e:
            c.put_object(Bucket=BUCKET, Key=other, Body=data)
        assert error(e) == (400, "BadDigest")
        good, good_sha = blob(2 * 1024 * 1024)
        c.put_object(Bucket=BUCKET, Key=good_sha, Body=good)
        assert c.get_object(Bucket=BUCKET, Key=good_sha)["Body"].read() == good
    assert blob_api_get(s3, other).status_code == 404


# ---- the blob API and the S3 API: one store -----------------------------------------------------


@BOTH
def test_what_either_api_stores_the_other_serves(api: S3) -> None:
    c = api.client()
    # S3 -> blob API
    data, sha = blob(20_000)
    put(api, data, ContentType="application/pdf")
    got = blob_api_get(api, sha)
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-type"] == "application/pdf" and got.headers["etag"] == f'"{sha}"'
    data, sha = blob(2000)
    put(api, data, Metadata={"filename": "scan 7.tiff"})
    got = blob_api_get(api, sha)
    assert got.headers["x-filename"] == "scan 7.tiff"
    assert got.headers["content-disposition"] == "attachment; filename*=UTF-8''scan%207.tiff"
    # blob API -> S3: read in both key forms, with its type and name, and listed.
    data, sha = blob(30_000)
    posted = httpx.post(f"{api.url}/{sha}", content=data, auth=AUTH, timeout=30,
                        headers={"Content-Type": "text/csv", "X-Filename": "counts.csv"})
    assert posted.status_code == 201
    for key in (layout_key(sha), sha):
        got = c.get_object(Bucket=BUCKET, Key=key)
        assert got["Body"].read() == data and got["ETag"] == f'"{sha}-1"'
        assert got["ContentType"] == "text/csv" and got["Metadata"] == {"filename": "counts.csv"}
    listed = c.list_objects_v2(Bucket=BUCKET, Prefix=layout_key(sha)[:9])
    entry = next(o for o in listed["Contents"] if o["Key"] == layout_key(sha))
    assert entry["Size"] == len(data) and entry["ETag"] == f'"{sha}-1"'
    assert [o["Key"] for o in c.list_objects_v2(Bucket=BUCKET, Prefix=sha[:6])["Contents"]] == [sha]


# ---- virtual-host style --------------------------------------------------------------------------


@BOTH
def test_virtual_host_style(api: S3) -> None:
    data, sha = blob(999)
    put(api, data)
    host = f"{BUCKET}.localhost:{api.port}"
    got = signed(api.port, "GET", f"/{layout_key(sha)}", host=host)
    assert got.status == 200 and got.body == data and got.headers["etag"] == f'"{sha}-1"'
    listed = signed(api.port, "GET", f"/?list-type=2&prefix={quote(layout_key(sha)[:9], safe='')}", host=host)
    assert listed.status == 200
    assert layout_key(sha) in [k.text for k in xml(listed.body).iter(f"{NS}Key")]
    other, other_sha = blob()
    stored = signed(api.port, "PUT", f"/{other_sha}", body=other, host=host)
    assert stored.status == 200, stored.body
    assert blob_api_get(api, other_sha).content == other
    # Another first label is another bucket.
    answer = signed(api.port, "GET", f"/{layout_key(sha)}", host=f"other.localhost:{api.port}")
    assert (answer.status, answer.code) == (404, "NoSuchBucket")
    # Signed for one host, sent with another (of the same bucket): the signature covers Host.
    headers = signed_headers("GET", f"http://{host}/{layout_key(sha)}")
    headers["Host"] = f"{BUCKET}.example:{api.port}"
    answer = send(api.port, "GET", f"/{layout_key(sha)}", headers)
    assert (answer.status, answer.code) == (403, "SignatureDoesNotMatch")


def test_virtual_host_style_under_a_configured_domain(s3_open: S3) -> None:
    data, sha = blob()
    put(s3_open, data)
    host = f"{BUCKET}.{DOMAIN}:{s3_open.port}"
    got = signed(s3_open.port, "GET", f"/{sha}", host=host)
    assert got.status == 200 and got.body == data
    # Under the domain, the first label is the bucket: another is no such bucket.
    got = signed(s3_open.port, "GET", f"/{sha}", host=f"other.{DOMAIN}:{s3_open.port}")
    assert (got.status, got.code) == (404, "NoSuchBucket")
    # The domain itself is path style.
    got = signed(s3_open.port, "GET", f"/{BUCKET}/{sha}", host=f"{DOMAIN}:{s3_open.port}")
    assert got.status == 200 and got.body == data


# ---- anonymous reads, a size limit ---------------------------------------------------------------


def test_anonymous_read_when_configured(s3_open: S3) -> None:
    data, sha = blob()
    key = put(s3_open, data)
    got = httpx.get(f"http://127.0.0.1:{s3_open.port}/{BUCKET}/{key}", timeout=30)
    assert got.status_code == 200 and got.content == data
    listed = httpx.get(f"http://127.0.0.1:{s3_open.port}/{BUCKET}?list-type=2&prefix={key[:9]}", timeout=30)
    assert listed.status_code == 200 and key in listed.text
    acl = s3_open.client().get_bucket_acl(Bucket=BUCKET)["Grants"]
    assert {g["Permission"] for g in acl} == {"FULL_CONTROL", "READ"}
    other, other_sha = blob()
    answer = send(s3_open.port, "PUT", f"/{BUCKET}/{other_sha}", body=other)
    assert (answer.status, answer.code) == (403, "AccessDenied")
    assert blob_api_get(s3_open, other_sha).status_code == 404


def test_entity_too_large(s3_open: S3) -> None:
    data, sha = blob(MAX_BLOB + 1)
    with pytest.raises(ClientError) as e:
        s3_open.client().put_object(Bucket=BUCKET, Key=sha, Body=data)
    assert error(e) == (400, "EntityTooLarge")
    assert blob_api_get(s3_open, sha).status_code == 404
    data, sha = blob(MAX_BLOB)
    put(s3_open, data)
    assert blob_api_get(s3_open, sha).content == data


# ---- CORS ----------------------------------------------------------------------------------------


@BOTH
def test_cors_preflight_and_actual_requests(api: S3) -> None:
    data, sha = blob()
    key = put(api, data)
    path = f"/{BUCKET}/{key}"
    allowed = send(api.port, "OPTIONS", path, {"Origin": ORIGIN, "Access-Control-Request-Method": "PUT",
                                                "Access-Control-Request-Headers": "content-type, x-amz-date"})
    assert allowed.status == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "PUT" in allowed.headers["access-control-allow-methods"]
    assert allowed.headers["access-control-allow-headers"] == "content-type, x-amz-date"
    assert int(allowed.headers["access-control-max-age"]) > 0
    for headers in ({"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
                    {"Origin": ORIGIN, "Access-Control-Request-Method": "DELETE"}):
        refused = send(api.port, "OPTIONS", path, headers)
        assert refused.status == 403 and "access-control-allow-origin" not in refused.headers
        assert refused.code == "AccessForbidden"
    # An actual request from the origin: its answer says the page may read it, and which headers.
    got = signed(api.port, "GET", path, headers={"Origin": ORIGIN})
    assert got.status == 200 and got.body == data
    assert got.headers["access-control-allow-origin"] == ORIGIN
    assert "ETag" in got.headers["access-control-expose-headers"]
    got = signed(api.port, "GET", path, headers={"Origin": "https://evil.example"})
    assert got.status == 200 and "access-control-allow-origin" not in got.headers
