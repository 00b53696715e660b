"""Real collaborators for stor's tests: memcached processes and a statsd (UDP) receiver.

Fixtures defined here are imported by the test modules that need them
(pytest registers a fixture wherever it is imported into a test module).
No mocks: memcached is the real binary on a free port, the statsd receiver is
a real UDP socket the server sends its packets to.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymemcache.client.base import Client as MemcacheClient

from conftest import free_port, layout_path

MEMCACHED = "/usr/bin/memcached"
KEY_PREFIX = "stor:loc:"
STATSD_PREFIX = "stor.test"


def cache_key(sha: str) -> str:
    return KEY_PREFIX + sha.lower()


def metric_segment(directory: Path) -> str:
    """The original's `<server>` segment, spelled out independently of stor.store.pairs."""
    out, run = [], False
    for ch in str(directory):
        if ch.isascii() and ch.isalnum():
            out.append(ch)
            run = False
        elif not run:
            out.append("-")
            run = True
    return "".join(out).strip("-")


def put_by_hand(sha: str, data: bytes, *roots: Path) -> None:
    """Place a blob in storage directories behind stor's back (as another tool or an operator would)."""
    for root in roots:
        path = layout_path(root, sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# ---- memcached ---------------------------------------------------------------------------


@dataclass
class Memcached:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Memcached:
        self.proc = subprocess.Popen(
            [MEMCACHED, "-p", str(self.port), "-U", "0", "-l", "127.0.0.1", "-u", "root"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"memcached on port {self.port} exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"version\r\n")
                    if s.recv(100).startswith(b"VERSION"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)  # polling for readiness
        self.kill()
        raise RuntimeError(f"memcached did not answer on port {self.port} within {timeout}s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def client(self) -> MemcacheClient:
        return MemcacheClient(("127.0.0.1", self.port), connect_timeout=2, timeout=2)

    def get(self, key: str) -> str | None:
        c = self.client()
        try:
            value = c.get(key)
        finally:
            c.close()
        return value.decode() if isinstance(value, bytes) else value

    def set(self, key: str, value: str) -> None:
        c = self.client()
        try:
            c.set(key, value, noreply=False)
        finally:
            c.close()

    def location(self, sha: str) -> str | None:
        return self.get(cache_key(sha))

    def wait_for_key(self, key: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.get(key)
            if value is not None:
                return value
            time.sleep(0.02)
        raise AssertionError(f"{key} never appeared in memcached {self.address}")


@pytest.fixture
def memcached() -> Iterator[Any]:
    """Start real memcached servers (`memcached()` or `memcached(port=...)` to restart on a port)."""
    started: list[Memcached] = []

    def start(port: int | None = None) -> Memcached:
        m = Memcached(port or free_port())
        started.append(m)
        return m.start()

    yield start
    for m in started:
        m.kill()


# ---- statsd ------------------------------------------------------------------------------

_LINE = re.compile(r"(?P<name>[^:|]+):(?P<value>-?[0-9.]+(?:e[-+]?\d+)?)\|(?P<type>c|ms|g|s|h)(?:\|@(?P<rate>[0-9.]+))?")


@dataclass(frozen=True)
class Stat:
    name: str  # without the prefix
    value: float
    type: str  # "c" or "ms"
    raw: str


class StatsdReceiver:
    """A UDP socket on 127.0.0.1 that stor's statsd client sends to; lines parsed as they arrive."""

    def __init__(self, prefix: str = STATSD_PREFIX) -> None:
        self.prefix = prefix
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.pending: list[Stat] = []
        self.foreign: list[str] = []  # lines without the prefix or unparsable: always a failure

    def config(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "prefix": self.prefix, "sample_rate": 1}

    def _receive(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        for line in data.decode().splitlines():
            m = _LINE.fullmatch(line)
            if m is None or not m["name"].startswith(self.prefix + "."):
                self.foreign.append(line)
                continue
            self.pending.append(Stat(m["name"][len(self.prefix) + 1 :], float(m["value"]), m["type"], line))
        return True

    def collect(self, until: str, timeout: float = 5.0) -> list[Stat]:
        """Every stat received since the last collect, up to and including the first named `until`."""
        deadline = time.monotonic() + timeout
        while True:
            for i, stat in enumerate(self.pending):
                if stat.name == until:
                    taken, self.pending = self.pending[: i + 1], self.pending[i + 1 :]
                    assert not self.foreign, f"statsd lines without prefix {self.prefix!r}: {self.foreign}"
                    return taken
            if not self._receive(deadline):
                raise AssertionError(
                    f"statsd {self.prefix}.{until} not received within {timeout}s; got {[s.raw for s in self.pending]}"
                )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def statsd_rx() -> Iterator[StatsdReceiver]:
    rx = StatsdReceiver()
    yield rx
    rx.close()


def names(stats: list[Stat]) -> list[str]:
    return [s.name for s in stats]


def fresh_dirs(base: Path, *names_: str) -> list[Path]:
    out = []
    for n in names_:
        d = base / n
        d.mkdir(parents=True)
        out.append(d)
    return out


def random_blob(n: int = 1000) -> bytes:
    return os.urandom(n)
