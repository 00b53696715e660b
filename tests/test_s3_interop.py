"""What stor puts in the bucket is what other S3 clients read by its documented key, and the other way round.

The clients are the real ones users have (awscli, s3cmd, from PyPI), against the session's SeaweedFS.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import PASSWORD, USER, sha256, wait_for
from seaweed import SeaweedFS
from test_s3_tier import key_of, s3_config, status

AUTH = (USER, PASSWORD)
FAST_ONLY = pytest.mark.parametrize("fast_path", [True], ids=["fast"], indirect=True)
MIB = 1024 * 1024


def aws(weed: SeaweedFS, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "aws-config"
    config.touch()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": weed.access_key,
        "AWS_SECRET_ACCESS_KEY": weed.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(config),
    }
    return subprocess.run(
        ["aws", "--endpoint-url", weed.endpoint, *args], env=env, capture_output=True, text=True, timeout=120
    )


def s3cmd(weed: SeaweedFS, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "s3cmd.cfg"
    config.write_text(
        "[default]\n"
        f"access_key = {weed.access_key}\n"
        f"secret_key = {weed.secret_key}\n"
        f"host_base = {weed.host}\n"
        f"host_bucket = {weed.host}\n"  # no %(bucket)s: path-style requests
        "use_https = False\n"
        "signature_v2 = False\n"
        "bucket_location = us-east-1\n"
    )
    return subprocess.run(["s3cmd", "-c", str(config), *args], capture_output=True, text=True, timeout=120)


@FAST_ONLY
@pytest.mark.parametrize("mode", ["s3", "local+s3"])
def test_what_stor_stores_is_read_by_awscli_and_s3cmd_by_its_key(
    start_server: Any, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str, tmp_path: Path, mode: str
) -> None:
    config = s3_config(mirrors, seaweed, s3_bucket, write_mode=mode, part_bytes=5 * MIB)
    if mode == "s3":
        config["storage_pairs"] = []
    server = start_server(config)
    blobs = [os.urandom(100_000), os.urandom(9 * MIB + 5)]  # the second one a multipart upload
    for data in blobs:
        assert httpx.post(f"{server.url}/{sha256(data)}", content=data, auth=AUTH, timeout=60).status_code == 201
    if mode == "local+s3":
        wait_for(lambda: status(server.url)["s3"]["copy_queue"]["depth"] == 0, timeout=60, what="the copies")
    for i, data in enumerate(blobs):
        key = key_of(sha256(data))
        by_aws = tmp_path / f"aws-{i}"
        done = aws(seaweed, tmp_path, "s3", "cp", f"s3://{s3_bucket}/{key}", str(by_aws))
        assert done.returncode == 0, done.stderr
        assert by_aws.read_bytes() == data
        by_s3cmd = tmp_path / f"s3cmd-{i}"
        done = s3cmd(seaweed, tmp_path, "get", f"s3://{s3_bucket}/{key}", str(by_s3cmd))
        assert done.returncode == 0, done.stderr
        assert by_s3cmd.read_bytes() == data
    listed = s3cmd(seaweed, tmp_path, "ls", "--recursive", f"s3://{s3_bucket}/")
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split()[-1] for line in listed.stdout.splitlines()) == sorted(
        f"s3://{s3_bucket}/{key_of(sha256(d))}" for d in blobs
    )


def test_a_bucket_filled_by_awscli_is_served_by_stor(
    start_server: Any, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(12 * MIB + 1)  # awscli uploads it in multipart parts: its ETag is no MD5
    sha = sha256(data)
    source = tmp_path / "sample.bin"
    source.write_bytes(data)
    done = aws(
        seaweed, tmp_path, "s3", "cp", str(source), f"s3://{s3_bucket}/{key_of(sha)}", "--content-type", "application/zip"
    )
    assert done.returncode == 0, done.stderr
    server = start_server(s3_config(mirrors, seaweed, s3_bucket))
    got = httpx.get(f"{server.url}/{sha}", timeout=60)
    assert got.status_code == 200 and got.content == data
    assert got.headers["etag"] == f'"{sha}"' and got.headers["content-type"] == "application/zip"
    assert httpx.head(f"{server.url}/{sha}").headers["content-length"] == str(len(data))
    part = httpx.get(f"{server.url}/{sha}", headers={"Range": "bytes=-100"})
    assert part.status_code == 206 and part.content == data[-100:]
