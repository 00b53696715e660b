"""Multipart uploads through the S3 API, with the real clients against a real `stor serve --s3-port`.

The object appears only when the parts listed at completion hash to the
key's sha; parts are kept on the storage (any worker continues an upload);
abandoned uploads are swept.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from conftest import PASSWORD, USER, wait_for
from s3api_fixture import BUCKET, aws, boto3_client, rclone, s3cmd, start_s3_server

MIN_PART = 64 * 1024  # the test servers' min_part_bytes: parts small enough to send many


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int, Path]]:
    workdir = tmp_path_factory.mktemp("s3mp")
    mirrors = (workdir / "m1", workdir / "m2")
    for m in mirrors:
        m.mkdir()
    server, port = start_s3_server(workdir, mirrors, min_part_bytes=MIN_PART)
    try:
        yield server, port, workdir
    finally:
        server.stop()


def _blob(size: int, seed: bytes) -> tuple[bytes, str]:
    data = (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]
    return data, hashlib.sha256(data).hexdigest()


def _layout(sha: str) -> str:
    return f"{sha[:2]}/{sha[2:4]}/{sha[4:6]}/{sha}"


def _code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return str(e.value.response["Error"]["Code"])


def _blob_api(server: Any, sha: str) -> httpx.Response:
    return httpx.get(f"{server.url}/{sha}", auth=(USER, PASSWORD), timeout=30)


def _pending(workdir: Path) -> list[str]:
    """Names of bytes files of uploads in progress, on the mirrors."""
    return sorted(p.name for m in ("m1", "m2") for p in (workdir / m).glob(".stor-tus/*") if ".s3" in p.name)


def test_parts_in_order_become_the_object_on_both_mirrors(s3: tuple[Any, int, Path]) -> None:
    server, port, workdir = s3
    client = boto3_client(port)
    data, sha = _blob(3 * MIN_PART + 1000, b"in order")
    key = _layout(sha)
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key, ContentType="application/x-sample",
                                            Metadata={"origin": "honeypot"})["UploadId"]
    pieces = [data[i:i + MIN_PART] for i in range(0, len(data), MIN_PART)]
    etags = [client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=n, Body=p)["ETag"]
             for n, p in enumerate(pieces, 1)]
    assert etags[0] == f'"{hashlib.sha256(pieces[0]).hexdigest()}-1"'
    with pytest.raises(ClientError) as e:
        client.head_object(Bucket=BUCKET, Key=key)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404  # nothing visible before completion
    listed = client.list_parts(Bucket=BUCKET, Key=key, UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed] == \
        [(n, len(p), etags[n - 1]) for n, p in enumerate(pieces, 1)]
    assert [u["UploadId"] for u in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])] == [upload]
    done = client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": t} for n, t in enumerate(etags, 1)]},
    )
    assert done["Key"] == key and done["ETag"] == f'"{sha}-1"'
    got = client.get_object(Bucket=BUCKET, Key=key)
    assert got["Body"].read() == data
    assert got["ContentType"] == "application/x-sample" and got["Metadata"] == {"origin": "honeypot"}
    assert _blob_api(server, sha).content == data
    big = sha.upper()
    rel = f"{big[:2]}/{big[2:4]}/{big[4:6]}/{big}.dat"
    assert all((workdir / m / rel).read_bytes() == data for m in ("m1", "m2"))
    assert _pending(workdir) == []
    assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    with pytest.raises(ClientError) as e:
        client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=pieces[0])
    assert _code(e) == "NoSuchUpload"


def test_parts_out_of_order_of_other_sizes_and_replaced(s3: tuple[Any, int, Path]) -> None:
    """The last part first, a part sent twice (the second counts), parts of unequal sizes: copied in order."""
    _, port, _ = s3
    client = boto3_client(port)
    data, sha = _blob(4 * MIN_PART + 123, b"odd sizes")
    cuts = [0, MIN_PART + 5, 2 * MIN_PART + 5, 4 * MIN_PART, len(data)]  # sizes P+5, P, 2P-5, 123
    pieces = [data[a:b] for a, b in itertools.pairwise(cuts)]
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=sha)["UploadId"]
    etags: dict[int, str] = {}
    for n in (4, 2, 1, 3):
        etags[n] = client.upload_part(Bucket=BUCKET, Key=sha, UploadId=upload, PartNumber=n,
                                      Body=pieces[n - 1])["ETag"]
    wrong = b"x" * len(pieces[1])
    client.upload_part(Bucket=BUCKET, Key=sha, UploadId=upload, PartNumber=2, Body=wrong)
    parts = [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2, 3, 4)]
    with pytest.raises(ClientError) as e:  # part 2's ETag is now the wrong bytes'
        client.complete_multipart_upload(Bucket=BUCKET, Key=sha, UploadId=upload, MultipartUpload={"Parts": parts})
    assert _code(e) == "InvalidPart"
    etags[2] = client.upload_part(Bucket=BUCKET, Key=sha, UploadId=upload, PartNumber=2, Body=pieces[1])["ETag"]
    with pytest.raises(ClientError) as e:
        client.complete_multipart_upload(Bucket=BUCKET, Key=sha, UploadId=upload,
                                         MultipartUpload={"Parts": list(reversed(parts))})
    assert _code(e) == "InvalidPartOrder"
    parts = [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2, 3, 4)]
    client.complete_multipart_upload(Bucket=BUCKET, Key=sha, UploadId=upload, MultipartUpload={"Parts": parts})
    assert client.get_object(Bucket=BUCKET, Key=sha)["Body"].read() == data
    # The completion's answer lost and asked again: the same answer.
    client.complete_multipart_upload(Bucket=BUCKET, Key=sha, UploadId=upload, MultipartUpload={"Parts": parts})


def test_parts_that_do_not_hash_to_the_key_leave_nothing_and_the_upload_open(s3: tuple[Any, int, Path]) -> None:
    server, port, _ = s3
    client = boto3_client(port)
    data, sha = _blob(2 * MIN_PART, b"mismatch")
    other, _ = _blob(2 * MIN_PART, b"something else")
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=sha)["UploadId"]
    etags = [client.upload_part(Bucket=BUCKET, Key=sha, UploadId=upload, PartNumber=n,
                                Body=other[(n - 1) * MIN_PART:n * MIN_PART])["ETag"] for n in (1, 2)]
    with pytest.raises(ClientError) as e:
        client.complete_multipart_upload(
            Bucket=BUCKET, Key=sha, UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": t} for n, t in enumerate(etags, 1)]})
    assert _code(e) == "BadDigest" and sha in e.value.response["Error"]["Message"]
    assert _blob_api(server, sha).status_code == 404
    assert upload in [u["UploadId"] for u in client.list_multipart_uploads(Bucket=BUCKET)["Uploads"]]
    # The right parts sent again under the same upload: it completes.
    etags = [client.upload_part(Bucket=BUCKET, Key=sha, UploadId=upload, PartNumber=n,
                                Body=data[(n - 1) * MIN_PART:n * MIN_PART])["ETag"] for n in (1, 2)]
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=sha, UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": t} for n, t in enumerate(etags, 1)]})
    assert _blob_api(server, sha).content == data


def test_refusals(s3: tuple[Any, int, Path]) -> None:
    _, port, workdir = s3
    client = boto3_client(port)
    data, sha = _blob(2 * MIN_PART, b"refusals")
    with pytest.raises(ClientError) as e:
        client.create_multipart_upload(Bucket=BUCKET, Key="not-a-sha")
    assert _code(e) == "InvalidArgument"
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=sha)["UploadId"]
    with pytest.raises(ClientError) as e:  # an upload belongs to its key
        client.upload_part(Bucket=BUCKET, Key=_blob(10, b"other")[1], UploadId=upload, PartNumber=1, Body=b"x")
    assert _code(e) == "NoSuchUpload"
    with pytest.raises(ClientError) as e:
        client.upload_part(Bucket=BUCKET, Key=sha, UploadId="0" * 32, PartNumber=1, Body=b"x")
    assert _code(e) == "NoSuchUpload"
    with pytest.raises(ClientError) as e:
        client.upload_part(Bucket=BUCKET, Key=sha, UploadId=upload, PartNumber=10001, Body=b"x")
    assert _code(e) == "InvalidArgument"
    with pytest.raises(ClientError) as e:
        client.upload_part(Bucket=BUCKET, Key=sha, UploadId=upload, PartNumber=1, Body=data[:10],
                           ContentMD5="AAAAAAAAAAAAAAAAAAAAAA==")
    assert _code(e) == "BadDigest"
    small = [client.upload_part(Bucket=BUCKET, Key=sha, UploadId=upload, PartNumber=n, Body=data[:100])["ETag"]
             for n in (1, 2)]
    with pytest.raises(ClientError) as e:
        client.complete_multipart_upload(
            Bucket=BUCKET, Key=sha, UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": t} for n, t in enumerate(small, 1)]})
    assert _code(e) == "EntityTooSmall"
    reader = boto3_client(port, "stor-reader", "reader-secret-0123456789")
    with pytest.raises(ClientError) as e:
        reader.create_multipart_upload(Bucket=BUCKET, Key=sha)
    assert _code(e) == "AccessDenied"
    client.abort_multipart_upload(Bucket=BUCKET, Key=sha, UploadId=upload)
    with pytest.raises(ClientError) as e:
        client.list_parts(Bucket=BUCKET, Key=sha, UploadId=upload)
    assert _code(e) == "NoSuchUpload"
    assert not [n for n in _pending(workdir) if n.startswith(upload)]


def test_a_signed_part_whose_bytes_are_not_those_signed_is_refused(s3: tuple[Any, int, Path]) -> None:
    """x-amz-content-sha256 of a part checked: a body changed after signing is refused, nothing kept."""
    _, port, _ = s3
    client = boto3_client(port)
    data, sha = _blob(MIN_PART, b"signed part")
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=sha)["UploadId"]

    def tamper(request: Any, **_: Any) -> None:
        request.body = b"y" * len(data)  # after botocore signed the real body's hash

    client.meta.events.register_first("before-send.s3.UploadPart", tamper)
    with pytest.raises(ClientError) as e:
        client.upload_part(Bucket=BUCKET, Key=sha, UploadId=upload, PartNumber=1, Body=data)
    assert _code(e) == "XAmzContentSHA256Mismatch"
    fresh = boto3_client(port)
    assert fresh.list_parts(Bucket=BUCKET, Key=sha, UploadId=upload).get("Parts", []) == []
    fresh.abort_multipart_upload(Bucket=BUCKET, Key=sha, UploadId=upload)


def test_aws_cli_copies_a_20_mb_file_up_and_down_in_parts(s3: tuple[Any, int, Path], tmp_path: Path) -> None:
    server, port, workdir = s3
    data = os.urandom(20 * 1000 * 1000)
    sha = hashlib.sha256(data).hexdigest()
    source, back = tmp_path / "sample.bin", tmp_path / "back.bin"
    source.write_bytes(data)
    done = aws(port, tmp_path, "s3", "cp", str(source), f"s3://{BUCKET}/{_layout(sha)}", "--debug")
    assert "CreateMultipartUpload" in done.stderr and "UploadPart" in done.stderr  # sent in parts indeed
    assert _blob_api(server, sha).content == data
    aws(port, tmp_path, "s3", "cp", f"s3://{BUCKET}/{_layout(sha)}", str(back))
    assert back.read_bytes() == data
    assert _pending(workdir) == []


def test_s3cmd_and_rclone_upload_in_parts(s3: tuple[Any, int, Path], tmp_path: Path) -> None:
    server, port, _ = s3
    for name, send in (("s3cmd", _s3cmd_put), ("rclone", _rclone_put)):
        data = os.urandom(6 * 1024 * 1024 + 17)
        sha = hashlib.sha256(data).hexdigest()
        source = tmp_path / f"{name}.bin"
        source.write_bytes(data)
        send(port, tmp_path, source, sha)
        assert _blob_api(server, sha).content == data, name


def _s3cmd_put(port: int, home: Path, source: Path, sha: str) -> None:
    done = s3cmd(port, home, "put", "--progress", "--multipart-chunk-size-mb=5", str(source), f"s3://{BUCKET}/{_layout(sha)}")
    assert "part 2 of 2" in done.stdout + done.stderr


def _rclone_put(port: int, home: Path, source: Path, sha: str) -> None:
    rclone(port, home, "copyto", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", str(source),
           f"stor:{BUCKET}/{_layout(sha)}", "-vv")


def test_abandoned_uploads_are_swept(tmp_path: Path) -> None:
    mirrors = (tmp_path / "m1", tmp_path / "m2")
    for m in mirrors:
        m.mkdir()
    server, port = start_s3_server(tmp_path, mirrors, workers=1, min_part_bytes=MIN_PART,
                                   multipart_expire_after=1, sweep_period=0.2)
    try:
        client = boto3_client(port)
        data, sha = _blob(MIN_PART, b"abandoned")
        upload = client.create_multipart_upload(Bucket=BUCKET, Key=sha)["UploadId"]
        client.upload_part(Bucket=BUCKET, Key=sha, UploadId=upload, PartNumber=1, Body=data)
        assert _pending(tmp_path)
        wait_for(lambda: not client.list_multipart_uploads(Bucket=BUCKET).get("Uploads"), 20, "the sweep")
        assert _pending(tmp_path) == []
        with pytest.raises(ClientError) as e:
            client.list_parts(Bucket=BUCKET, Key=sha, UploadId=upload)
        assert _code(e) == "NoSuchUpload"
        assert f"multipart upload {upload} of {sha} untouched since" in server.log_text()
    finally:
        server.stop()
