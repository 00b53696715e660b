"""The S3 API behind a TLS proxy (nginx, as a deployment puts one), where aws-cli and boto3 send aws-chunked bodies.

Over HTTPS botocore does not hash the payload for the signature: it sends
`x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER`, the body in
aws-chunked framing and a CRC32 trailer. The server decodes it, stores the
bytes under the key only if they hash to it, and never takes the framing
for the object.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from certs import self_signed_certificate
from conftest import PASSWORD, USER, free_port, wait_for
from s3api_fixture import BUCKET, REGION, WRITER_KEY, WRITER_SECRET, client_env, start_s3_server

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _nginx_config(directory: Path, port: int, upstream: int, cert: Path, key: Path) -> Path:
    config = directory / "nginx.conf"
    config.write_text(f"""
daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        client_max_body_size 0;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_set_header Host $http_host;  # as the client signed it
        }}
    }}
}}
""")
    return config


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int, Path]]:
    """A stor with the S3 API, nginx terminating TLS in front of it: (server, TLS port, certificate)."""
    workdir = tmp_path_factory.mktemp("s3tls")
    mirrors = (workdir / "m1", workdir / "m2")
    for m in mirrors:
        m.mkdir()
    server, s3_port = start_s3_server(workdir, mirrors, min_part_bytes=5 * 1024 * 1024)
    cert, key = self_signed_certificate(workdir)
    port = free_port()
    proxy = subprocess.Popen([NGINX, "-c", str(_nginx_config(workdir, port, s3_port, cert, key))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port) or proxy.poll() is not None, 20, "nginx")
        assert proxy.poll() is None, (workdir / "nginx-error.log").read_text()
        yield server, port, cert
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        server.stop()


def _client(port: int, cert: Path) -> Any:
    return boto3.client(
        "s3", endpoint_url=f"https://127.0.0.1:{port}", aws_access_key_id=WRITER_KEY,
        aws_secret_access_key=WRITER_SECRET, region_name=REGION, verify=str(cert),
        config=Config(retries={"max_attempts": 1}),
    )


def _sent_payloads(client: Any) -> list[str]:
    """The x-amz-content-sha256 of each request the client sends from now on."""
    seen: list[str] = []
    client.meta.events.register(
        "before-send.s3.*", lambda request, **_: seen.append(request.headers.get("x-amz-content-sha256", b"")))
    return seen


def _blob_api(server: Any, sha: str) -> httpx.Response:
    return httpx.get(f"{server.url}/{sha}", auth=(USER, PASSWORD), timeout=30)


def test_boto3_over_https_sends_aws_chunked_with_a_trailer_and_it_is_stored(tls: tuple[Any, int, Path]) -> None:
    server, port, cert = tls
    client = _client(port, cert)
    seen = _sent_payloads(client)
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    client.put_object(Bucket=BUCKET, Key=sha, Body=data, Metadata={"origin": "tls"})
    assert [p.decode() if isinstance(p, bytes) else p for p in seen] == ["STREAMING-UNSIGNED-PAYLOAD-TRAILER"]
    assert _blob_api(server, sha).content == data  # the bytes, not their aws-chunked framing
    got = client.get_object(Bucket=BUCKET, Key=sha)
    assert got["Body"].read() == data and got["Metadata"] == {"origin": "tls"}


def test_an_aws_chunked_body_that_is_not_the_key_is_refused_and_nothing_kept(tls: tuple[Any, int, Path]) -> None:
    server, port, cert = tls
    client = _client(port, cert)
    data = os.urandom(100_000)
    wrong = hashlib.sha256(data + b"!").hexdigest()
    with pytest.raises(ClientError) as e:
        client.put_object(Bucket=BUCKET, Key=wrong, Body=data)
    assert e.value.response["Error"]["Code"] == "BadDigest"
    assert _blob_api(server, wrong).status_code == 404


def test_aws_cli_over_https_up_and_down_in_parts(tls: tuple[Any, int, Path], tmp_path: Path) -> None:
    server, port, cert = tls
    data = os.urandom(9 * 1024 * 1024 + 1)  # above aws-cli's 8 MiB threshold: two parts, each aws-chunked
    sha = hashlib.sha256(data).hexdigest()
    source, back = tmp_path / "up.bin", tmp_path / "down.bin"
    source.write_bytes(data)
    https = ["--endpoint-url", f"https://127.0.0.1:{port}", "--ca-bundle", str(cert)]
    key = f"{sha[:2]}/{sha[2:4]}/{sha[4:6]}/{sha}"
    done = _aws_https(tmp_path, *https, "s3", "cp", str(source), f"s3://{BUCKET}/{key}", "--debug")
    assert "STREAMING-UNSIGNED-PAYLOAD-TRAILER" in done.stderr and "UploadPart" in done.stderr
    assert _blob_api(server, sha).content == data
    _aws_https(tmp_path, *https, "s3", "cp", f"s3://{BUCKET}/{key}", str(back))
    assert back.read_bytes() == data


def _aws_https(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["aws", *args], env=client_env(home), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"aws {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    return done
