"""A real TCP proxy in front of a real server, with the faults of a bad network on demand.

Connections are relayed byte for byte between the client and the server. It can
drop connections (accept, then close at once: the client sees a reset), cut the
server's answer after some bytes on the first connections (or stall it there,
the connection left open and silent), and slow the answer
to a given rate (a slow link, so that a progress bar has time to show). It
counts the bytes each way, so a test can tell how much a client really sent or
received.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class FaultProxy:
    upstream_port: int
    drop_connections: int = 0  # the first N connections are closed as soon as they are accepted
    cut_after: int | None = None  # the server's answer is cut after this many bytes ...
    cut_connections: int = 0  # ... on this many connections (after the dropped ones)
    stall: bool = False  # at the cut, stop relaying but keep the connection open (a hung server)
    rate: float | None = None  # bytes a second, in the direction slowed
    slowed: str = "to_client"  # or "to_server"
    to_server: int = 0
    to_client: int = 0
    connections: int = 0
    port: int = 0
    _listener: socket.socket = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: threading.Event = field(default_factory=threading.Event, repr=False)

    def start(self) -> FaultProxy:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
            if number <= self.drop_connections:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # linger 0: a reset, as a crashed server or a broken middlebox gives
                continue
            cut = self.cut_after if number <= self.drop_connections + self.cut_connections else None
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._relay, args=(client, server, "to_server", None), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client, "to_client", cut), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket, counter: str, cut: int | None) -> None:
        relayed = 0
        started = time.monotonic()
        try:
            while True:
                data = source.recv(65536 if self.rate is None else 16384)
                if not data:
                    break
                if cut is not None and relayed + len(data) >= cut:
                    data = data[: cut - relayed]
                    sink.sendall(data)
                    self._count(counter, len(data))
                    if self.stall:
                        self._closed.wait()  # silent until the test ends, as a hung server is
                    break
                sink.sendall(data)
                relayed += len(data)
                self._count(counter, len(data))
                if self.rate is not None and counter == self.slowed:
                    ahead = relayed / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)  # the slow link itself, not a wait for an event
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _count(self, counter: str, n: int) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + n)
