"""stor's fast path and uvicorn's plain ASGI path answer byte for byte alike.

Two servers over the same pair of mirror directories: one answers GET and HEAD
of /<sha> on the fast path (inside uvicorn's httptools protocol,
stor/http/front.py), the other runs with `--no-fast-path`, so that every
request takes uvicorn's ASGI cycle. The same raw requests go to both over raw
sockets, and the raw responses must be the same bytes: status line, every
header in its order and spelling, body, and whether the connection is closed
after. Only the value of the date header is masked.

This module starts both servers itself (it does not use the fast_path fixture).
"""

from __future__ import annotations

import random
import re
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate

import httpx
import pytest

from conftest import AUTH, StorServer, pair_config, sha256

MiB = 1 << 20
SMALL = random.Random(1).randbytes(4096)
TYPED = random.Random(2).randbytes(5000)
TYPED_HEADERS = {"Content-Type": "text/csv", "X-Filename": "report%202024%20%C3%A9.csv"}
BIG = random.Random(3).randbytes(3 * MiB)  # above the hot limit (1 MiB): always sent from the file
S, T, B = sha256(SMALL), sha256(TYPED), sha256(BIG)
MISSING = "ab" * 32
FUTURE = formatdate(time.time() + 10 * 365 * 86400, usegmt=True)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StorServer, StorServer]]:
    """(fast path, --no-fast-path) over one pair of directories, the blobs stored through the first."""
    root = tmp_path_factory.mktemp("agree")
    disks = (root / "disk1", root / "disk2")
    for d in (*disks, root / "fast", root / "asgi"):
        d.mkdir()
    fast = StorServer(workdir=root / "fast", config=pair_config(disks), fast_path=True)
    asgi = StorServer(workdir=root / "asgi", config=pair_config(disks), fast_path=False)
    try:
        fast.start()
        asgi.start()
        for body, headers in ((SMALL, {}), (TYPED, TYPED_HEADERS), (BIG, {})):
            r = httpx.post(f"{fast.url}/{sha256(body)}", content=body, auth=AUTH, headers=headers, timeout=60)
            assert r.status_code == 201, r.text
        yield fast, asgi
    finally:
        asgi.stop()
        fast.stop()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: tuple[str, ...] = ()
    version: str = "1.1"

    def raw(self) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/{self.version}", "Host: stor", *self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    @property
    def closes(self) -> bool:
        return self.version == "1.0" or "Connection: close" in self.headers


@dataclass(frozen=True)
class Case:
    name: str
    requests: tuple[Request, ...]  # sent in one write: more than one is a pipeline
    statuses: tuple[int, ...]  # what each is answered (so that two equal wrong answers still fail)


def case(name: str, *requests: Request, statuses: tuple[int, ...]) -> Case:
    assert len(requests) == len(statuses)
    return Case(name, requests, statuses)


CASES = [
    *(
        c
        for label, sha in (("small", S), ("typed", T), ("big", B))
        for c in (
            case(f"GET {label}", Request("GET", f"/{sha}"), statuses=(200,)),
            case(f"HEAD {label}", Request("HEAD", f"/{sha}"), statuses=(200,)),
            case(f"GET {label} again", Request("GET", f"/{sha}"), statuses=(200,)),  # a small one is hot by now
        )
    ),
    case("GET missing", Request("GET", f"/{MISSING}"), statuses=(404,)),
    case("HEAD missing", Request("HEAD", f"/{MISSING}"), statuses=(404,)),
    case("GET malformed sha", Request("GET", "/xyz"), statuses=(404,)),
    case("GET upper-case sha", Request("GET", f"/{S.upper()}"), statuses=(200,)),
    case("GET big range 0-99", Request("GET", f"/{B}", ("Range: bytes=0-99",)), statuses=(206,)),
    case("GET big range -10", Request("GET", f"/{B}", ("Range: bytes=-10",)), statuses=(206,)),
    case("GET big range 5-", Request("GET", f"/{B}", ("Range: bytes=5-",)), statuses=(206,)),
    case("GET small range", Request("GET", f"/{S}", ("Range: bytes=10-19",)), statuses=(206,)),
    case("GET big range 416", Request("GET", f"/{B}", (f"Range: bytes={4 * MiB}-{4 * MiB + 9}",)), statuses=(416,)),
    case("GET malformed range", Request("GET", f"/{B}", ("Range: bytes=abc",)), statuses=(400,)),
    case("HEAD big range", Request("HEAD", f"/{B}", ("Range: bytes=0-99",)), statuses=(206,)),
    case("GET typed If-None-Match", Request("GET", f"/{T}", (f'If-None-Match: "{T}"',)), statuses=(304,)),
    case("GET small If-Modified-Since future", Request("GET", f"/{S}", (f"If-Modified-Since: {FUTURE}",)), statuses=(304,)),
    case("pipelined GETs", Request("GET", f"/{S}"), Request("GET", f"/{T}"), statuses=(200, 200)),
    case("pipelined GET big then small", Request("GET", f"/{B}"), Request("GET", f"/{S}"), statuses=(200, 200)),
    case("GET small HTTP/1.0", Request("GET", f"/{S}", version="1.0"), statuses=(200,)),
    case("GET big HTTP/1.0", Request("GET", f"/{B}", version="1.0"), statuses=(200,)),
    case("GET small Connection: close", Request("GET", f"/{S}", ("Connection: close",)), statuses=(200,)),
]


class Connection:
    """Raw HTTP/1.1 responses off a socket, kept as the bytes that arrived."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        self.buf += data
        self.eof = not data
        return bool(data)

    def _take(self, n: int) -> bytes:
        taken, self.buf = self.buf[:n], self.buf[n:]
        return taken

    def response(self, method: str) -> tuple[int, bytes, bytes]:
        """(status, head, body) of the next response, read whole."""
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed before a response head: {self.buf[:300]!r}"
        head = self._take(self.buf.index(b"\r\n\r\n") + 4)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = [line.split(":", 1) for line in lines[1:] if line]
        headers = {name.strip().lower(): value.strip() for name, value in fields}
        if method == "HEAD" or status in (204, 304) or status < 200:
            return status, head, b""
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(self.buf) < length:
                assert self._fill(), f"connection closed after {len(self.buf)} of {length} body bytes"
            return status, head, self._take(length)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, head, self._chunked()
        while self._fill():  # no framing: the body ends with the connection
            pass
        return status, head, self._take(len(self.buf))

    def _chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buf:
                assert self._fill(), "connection closed inside a chunked body"
            size_line = self._take(self.buf.index(b"\r\n") + 2)
            size = int(size_line.split(b";")[0], 16)
            while len(self.buf) < size + 2:
                assert self._fill(), "connection closed inside a chunk"
            body += size_line + self._take(size + 2)
            if size == 0:
                return body

    def rest(self, closes: bool) -> bytes:
        """What follows the last response: to the end for a closing connection, else what arrives
        within 50 ms (nothing, on a connection kept open)."""
        if closes:
            while not self.eof and self._fill():
                pass
        elif not self.eof and select.select([self.sock], [], [], 0.05)[0]:
            self._fill()
        extra = self._take(len(self.buf))
        return extra + (b"<connection closed>" if self.eof else b"<connection open>")


_DATE = re.compile(rb"(?im)^date:[^\r\n]*")


@dataclass
class Exchange:
    statuses: list[int]
    heads: list[bytes]  # as they came, date included (for failure messages)
    transcript: bytes  # every response whole, the date masked, then what followed the last one


def exchange(server: StorServer, c: Case) -> Exchange:
    """The raw answer to c's requests, sent to server in one write."""
    got = Exchange([], [], b"")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"".join(r.raw() for r in c.requests))
        conn = Connection(sock)
        for r in c.requests:
            status, head, body = conn.response(r.method)
            assert _DATE.search(head), f"{server.url}: no date header in {head!r}"
            got.statuses.append(status)
            got.heads.append(head)
            got.transcript += _DATE.sub(b"date: <masked>", head) + body + b"\n<end of response>\n"
        got.transcript += conn.rest(c.requests[-1].closes)
    return got


def _shown(line: bytes) -> str:
    return repr(line[:200]) + (f" ... ({len(line)} bytes)" if len(line) > 200 else "")


def first_difference(fast: bytes, asgi: bytes) -> str:
    a, b = fast.split(b"\n"), asgi.split(b"\n")
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"line {i + 1} differs:\n  fast: {_shown(x)}\n  asgi: {_shown(y)}"
    n = min(len(a), len(b))
    longer, rest = ("fast", a[n]) if len(a) > n else ("asgi", b[n])
    return f"both agree for {n} lines, then only {longer} goes on: {_shown(rest)}"


def shown_heads(e: Exchange) -> str:
    return "\n".join(f"  {h!r}" for h in e.heads)


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_fast_path_and_asgi_path_answer_the_same_bytes(servers: tuple[StorServer, StorServer], c: Case) -> None:
    fast, asgi = (exchange(server, c) for server in servers)
    assert fast.statuses == list(c.statuses), f"the fast path answered {fast.statuses}:\n{shown_heads(fast)}"
    assert asgi.statuses == list(c.statuses), f"--no-fast-path answered {asgi.statuses}:\n{shown_heads(asgi)}"
    assert fast.transcript == asgi.transcript, (
        f"{c.name}: the two paths answer differently; {first_difference(fast.transcript, asgi.transcript)}\n"
        f"fast path heads:\n{shown_heads(fast)}\n--no-fast-path heads:\n{shown_heads(asgi)}"
    )
