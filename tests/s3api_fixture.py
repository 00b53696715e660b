"""A real `stor serve --s3-port` for the S3 API's tests, and the clients users point at one: boto3, aws-cli,
s3cmd, rclone, each configured as its documentation says for an S3-compatible endpoint."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from conftest import StorServer, free_port, pair_config

BUCKET = "samples"
WRITER_KEY, WRITER_SECRET = "stor-writer", "writer-secret-0123456789"
READER_KEY, READER_SECRET = "stor-reader", "reader-secret-0123456789"
REGION = "us-east-1"


def s3_api_config(mirrors: tuple[Path, Path], **s3_api: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "access_keys": [
            {"access_key": WRITER_KEY, "secret_key": WRITER_SECRET, "role": "write"},
            {"access_key": READER_KEY, "secret_key": READER_SECRET, "role": "read"},
        ],
    }
    section.update(s3_api)
    return pair_config(mirrors, s3_api=section)


def start_s3_server(workdir: Path, mirrors: tuple[Path, Path], workers: int = 2, fast_path: bool = True,
                    **s3_api: Any) -> tuple[StorServer, int]:
    s3_port = free_port()
    server = StorServer(workdir=workdir, config=s3_api_config(mirrors, **s3_api), workers=workers,
                        fast_path=fast_path, args=["--s3-port", str(s3_port)])
    server.start()
    return server, s3_port


def endpoint(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def boto3_client(port: int, key: str = WRITER_KEY, secret: str = WRITER_SECRET, **config: Any) -> Any:
    """boto3 with its defaults (checksums "when_supported", as it ships), path-style for an IP endpoint."""
    return boto3.client(
        "s3", endpoint_url=endpoint(port), aws_access_key_id=key, aws_secret_access_key=secret,
        region_name=REGION, config=Config(retries={"max_attempts": 1}, **config),
    )


def client_env(home: Path, key: str = WRITER_KEY, secret: str = WRITER_SECRET) -> dict[str, str]:
    """The environment of a command-line client: credentials, and no configuration of the machine's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update(
        HOME=str(home), AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(home / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
    )
    return env


def aws(port: int, home: Path, *args: str, key: str = WRITER_KEY, secret: str = WRITER_SECRET,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["aws", "--endpoint-url", endpoint(port), *args], env=client_env(home, key, secret),
        capture_output=True, text=True, timeout=120,
    )
    if check:
        assert done.returncode == 0, f"aws {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def s3cmd(port: int, home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    config = home / "s3cmd.cfg"
    config.write_text(
        "[default]\n"
        f"access_key = {WRITER_KEY}\nsecret_key = {WRITER_SECRET}\n"
        f"host_base = 127.0.0.1:{port}\nhost_bucket = 127.0.0.1:{port}\n"
        "use_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n"
    )
    done = subprocess.run(["s3cmd", "-c", str(config), *args], env=client_env(home), capture_output=True,
                          text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"s3cmd {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def rclone(port: int, home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = client_env(home)
    env.update(
        RCLONE_CONFIG=str(home / "rclone.conf"), RCLONE_CONFIG_STOR_TYPE="s3", RCLONE_CONFIG_STOR_PROVIDER="Other",
        RCLONE_CONFIG_STOR_ACCESS_KEY_ID=WRITER_KEY, RCLONE_CONFIG_STOR_SECRET_ACCESS_KEY=WRITER_SECRET,
        RCLONE_CONFIG_STOR_ENDPOINT=endpoint(port), RCLONE_CONFIG_STOR_REGION=REGION,
    )
    done = subprocess.run(["rclone", *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"rclone {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done
