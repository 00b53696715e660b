"""The S3 API over the S3 tier: a node that keeps nothing locally, its objects in a real SeaweedFS bucket.

The API is over the store, whatever it is: an object put through it lands in
the bucket under the original's layout, listings come from the bucket's own
sorted listing, and a multipart upload's parts wait in the multipart
directory until their whole is copied to the bucket.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import StorServer, free_port
from s3api_fixture import BUCKET, READER_KEY, READER_SECRET, WRITER_KEY, WRITER_SECRET, boto3_client
from test_s3_tier import key_of, object_bytes, s3_config

MIB = 1024 * 1024


@pytest.fixture
def tier_api(seaweed: Any, s3_bucket: str, tmp_path: Path) -> Iterator[tuple[StorServer, int, Path]]:
    spool = tmp_path / "multipart"
    s3_port = free_port()
    config = s3_config(None, seaweed, s3_bucket, write_mode="s3", part_bytes=5 * MIB) | {
        "storage_pairs": [],
        "s3_api": {
            "access_keys": [{"access_key": WRITER_KEY, "secret_key": WRITER_SECRET, "role": "write"},
                            {"access_key": READER_KEY, "secret_key": READER_SECRET, "role": "read"}],
            "multipart_directory": str(spool),
            "min_part_bytes": MIB,
            "allow_delete": True,
        },
    }
    server = StorServer(workdir=tmp_path, config=config, workers=2, args=["--s3-port", str(s3_port)])
    server.start()
    try:
        yield server, s3_port, spool
    finally:
        server.stop()


def test_put_get_list_through_the_api_land_in_the_bucket(
    tier_api: tuple[StorServer, int, Path], seaweed: Any, s3_bucket: str
) -> None:
    _, port, _ = tier_api
    client = boto3_client(port)
    blobs = {}
    for i in range(5):
        data = os.urandom(1000 + i)
        sha = hashlib.sha256(data).hexdigest()
        client.put_object(Bucket=BUCKET, Key=sha if i % 2 else key_of(sha), Body=data,
                          ContentType="application/x-sample", Metadata={"n": str(i)})
        blobs[sha] = data
    for sha, data in blobs.items():
        assert object_bytes(seaweed, s3_bucket, sha) == data  # in the bucket, under the original's key
    listed = client.list_objects_v2(Bucket=BUCKET, MaxKeys=3)
    more = client.list_objects_v2(Bucket=BUCKET, ContinuationToken=listed["NextContinuationToken"])
    keys = [o["Key"] for o in listed["Contents"] + more["Contents"]]
    assert keys == sorted(key_of(sha) for sha in blobs)
    assert [o["Size"] for o in listed["Contents"] + more["Contents"]] == \
        [len(blobs[k.rpartition("/")[2]]) for k in keys]
    sha = sorted(blobs)[0]
    head = client.head_object(Bucket=BUCKET, Key=sha)
    assert head["ContentType"] == "application/x-sample" and head["ContentLength"] == len(blobs[sha])
    assert "n" in head["Metadata"]
    assert client.get_object(Bucket=BUCKET, Key=key_of(sha), Range="bytes=10-19")["Body"].read() == \
        blobs[sha][10:20]


def test_a_multipart_upload_is_copied_into_the_bucket_when_whole(
    tier_api: tuple[StorServer, int, Path], seaweed: Any, s3_bucket: str
) -> None:
    _, port, spool = tier_api
    client = boto3_client(port)
    data = os.urandom(2 * MIB + 4321)
    sha = hashlib.sha256(data).hexdigest()
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key_of(sha))["UploadId"]
    cuts = [0, MIB, 2 * MIB, len(data)]
    parts = []
    for n, (a, b) in enumerate(zip(cuts, cuts[1:]), 1):
        etag = client.upload_part(Bucket=BUCKET, Key=key_of(sha), UploadId=upload, PartNumber=n, Body=data[a:b])
        parts.append({"PartNumber": n, "ETag": etag["ETag"]})
    assert object_bytes(seaweed, s3_bucket, sha) is None  # nothing in the bucket before the completion
    client.complete_multipart_upload(Bucket=BUCKET, Key=key_of(sha), UploadId=upload,
                                     MultipartUpload={"Parts": parts})
    assert object_bytes(seaweed, s3_bucket, sha) == data
    assert not [p for p in spool.iterdir() if p.name.endswith((".s3mp", ".s3part"))]
    assert client.get_object(Bucket=BUCKET, Key=sha)["Body"].read() == data


def test_a_delete_removes_the_bucket_object(
    tier_api: tuple[StorServer, int, Path], seaweed: Any, s3_bucket: str
) -> None:
    server, port, _ = tier_api
    client = boto3_client(port)
    data = os.urandom(5000)
    sha = hashlib.sha256(data).hexdigest()
    client.put_object(Bucket=BUCKET, Key=sha, Body=data)
    assert object_bytes(seaweed, s3_bucket, sha) == data
    client.delete_object(Bucket=BUCKET, Key=key_of(sha))
    assert object_bytes(seaweed, s3_bucket, sha) is None
    assert f"DELETE {sha} through the S3 API by {WRITER_KEY}: removed from s3://{s3_bucket}" in server.log_text()
