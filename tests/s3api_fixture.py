"""A real `stor serve --s3-port` for the S3 API's tests, and the clients users point at one: boto3, aws-cli,
s3cmd, rclone, each configured as its documentation says for an S3-compatible endpoint."""

from __future__ import annotations

import http.client
import os
import subprocess
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.auth import SIGV4_TIMESTAMP, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
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
        AWS_CONFIG_FILE=str(home / "aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
    )
    return env


# aws-cli (v1) presigns with Signature V2 unless told otherwise, as its documentation says
# (`aws configure set default.s3.signature_version s3v4`); the S3 API takes V4 only.
AWS_CONFIG = "[default]\ns3 =\n    signature_version = s3v4\n"


def aws(port: int, home: Path, *args: str, key: str = WRITER_KEY, secret: str = WRITER_SECRET,
        check: bool = True, attempts: int | None = None) -> subprocess.CompletedProcess[str]:
    """aws-cli; attempts: AWS_MAX_ATTEMPTS (it retries BadDigest, for one, up to 5 times with backoff)."""
    env = client_env(home, key, secret)
    if attempts is not None:
        env["AWS_MAX_ATTEMPTS"] = str(attempts)
    config = Path(env["AWS_CONFIG_FILE"])
    if not config.exists():
        config.write_text(AWS_CONFIG)
    done = subprocess.run(
        ["aws", "--endpoint-url", endpoint(port), *args], env=env, capture_output=True, text=True, timeout=120,
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
        RCLONE_CONFIG_STOR_FORCE_PATH_STYLE="true",
    )
    done = subprocess.run(["rclone", *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"rclone {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def layout_key(sha: str) -> str:
    """The original Stor's S3 key of a blob, spelled out independently of stor.layout."""
    return f"{sha[0:2]}/{sha[2:4]}/{sha[4:6]}/{sha}"


@dataclass
class Answer:
    """An HTTP answer as it came off the wire."""

    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def code(self) -> str | None:
        """The S3 error document's Code, if the body is one."""
        if not self.body.startswith(b"<?xml"):
            return None
        return ElementTree.fromstring(self.body).findtext("Code")


class _PayloadSigner(S3SigV4Auth):
    """botocore's S3 SigV4 signer, with the x-amz-content-sha256 it signs chosen by the caller (None: its own)."""

    def __init__(self, credentials: Credentials, region: str, payload: str | None) -> None:
        super().__init__(credentials, "s3", region)
        self._payload = payload

    def payload(self, request: Any) -> str:
        return self._payload if self._payload is not None else super().payload(request)


class _DatedQuerySigner(S3SigV4QueryAuth):
    """botocore's presigner, signing as of a given time instead of now (a URL presigned in the past)."""

    def __init__(self, credentials: Credentials, region: str, expires: int, when: datetime) -> None:
        super().__init__(credentials, "s3", region, expires=expires)
        self._when = when

    def add_auth(self, request: Any) -> None:
        request.context["timestamp"] = self._when.strftime(SIGV4_TIMESTAMP)
        self._modify_request_before_signing(request)
        string_to_sign = self.string_to_sign(request, self.canonical_request(request))
        self._inject_signature_to_request(request, self.signature(string_to_sign, request))


def presign(port: int, method: str, path: str, expires: int, when: datetime, key: str = WRITER_KEY,
            secret: str = WRITER_SECRET) -> str:
    """A presigned URL (SigV4 query string) for path, as signed at `when` (UTC) for `expires` seconds."""
    request = AWSRequest(method=method, url=endpoint(port) + path)
    _DatedQuerySigner(Credentials(key, secret), REGION, expires, when).add_auth(request)
    return str(request.url)


def send(port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> Answer:
    """One request as given (nothing added but Content-Length), over a fresh connection to 127.0.0.1:port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        headers = dict(headers or {})
        if body or method in ("PUT", "POST"):
            headers.setdefault("Content-Length", str(len(body)))
        headers.setdefault("Host", f"127.0.0.1:{port}")
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()


def signed(port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
           key: str = WRITER_KEY, secret: str = WRITER_SECRET, host: str | None = None,
           payload: str | None = None) -> Answer:
    """A request signed by botocore's SigV4 signer and sent with http.client to 127.0.0.1:port.

    host: the Host header it is signed and sent with (virtual-host style: "samples.localhost:<port>").
    payload: the x-amz-content-sha256 signed (UNSIGNED-PAYLOAD, or a hash other than the body's);
    None: the body's own SHA-256, as botocore signs over plain HTTP.
    """
    host = host or f"127.0.0.1:{port}"
    wire = signed_headers(method, f"http://{host}{path}", headers, body, key, secret, payload)
    return send(port, method, path, wire, body)


def signed_headers(method: str, url: str, headers: dict[str, str] | None = None, body: bytes = b"",
                   key: str = WRITER_KEY, secret: str = WRITER_SECRET, payload: str | None = None) -> dict[str, str]:
    """The headers of a request to url signed by botocore's SigV4 signer (Host, X-Amz-Date, Authorization, ...)."""
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    _PayloadSigner(Credentials(key, secret), REGION, payload).add_auth(request)
    wire = dict(request.headers.items())
    wire["Host"] = urlsplit(url).netloc
    return wire
