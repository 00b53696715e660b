"""The real SeaweedFS the S3 tier's tests run against behaves as they assume (tests/seaweed.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from seaweed import SeaweedFS


def test_put_get_in_a_fresh_bucket(seaweed: Any, s3_bucket: str) -> None:
    s3 = seaweed.client()
    assert s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    data = os.urandom(100_000)
    s3.put_object(Bucket=s3_bucket, Key="a/b", Body=data)
    assert s3.get_object(Bucket=s3_bucket, Key="a/b")["Body"].read() == data
    assert s3.head_object(Bucket=s3_bucket, Key="a/b")["ContentLength"] == len(data)
    # the default bucket exists too, and is another namespace
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket=seaweed.bucket, Key="a/b")
    assert e.value.response["Error"]["Code"] in ("404", "NoSuchKey")


def test_wrong_secret_is_refused(seaweed: Any, s3_bucket: str) -> None:
    bad = seaweed.client(secret_key="not-the-secret", retries={"max_attempts": 1})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bad.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert seaweed.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


def test_if_none_match_star_refuses_a_second_put(seaweed: Any, s3_bucket: str) -> None:
    s3 = seaweed.client()
    s3.put_object(Bucket=s3_bucket, Key="once", Body=b"first", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=s3_bucket, Key="once", Body=b"second", IfNoneMatch="*")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=s3_bucket, Key="once")["Body"].read() == b"first"


def test_data_survives_restart_and_kill(tmp_path: Path) -> None:
    """Its own server (the session's stays up): same ports and directory after stop and after SIGKILL."""
    with SeaweedFS(tmp_path) as weed:
        endpoint = weed.endpoint
        weed.client().put_object(Bucket=weed.bucket, Key="kept", Body=b"durable")
        weed.restart()
        assert weed.endpoint == endpoint
        assert weed.client().get_object(Bucket=weed.bucket, Key="kept")["Body"].read() == b"durable"
        weed.kill()
        weed.restart()
        assert weed.client().get_object(Bucket=weed.bucket, Key="kept")["Body"].read() == b"durable"
