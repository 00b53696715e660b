"""Downloads (and `POST /exists`) on HTTP/1.1 sockets of the client's own: one kept-alive connection per thread.

httpx reads a body 64 KiB at a time and hands each piece through several
layers of Python; with the hash and the file write on top, a 1 GiB blob came
at 0.4 x `curl -o` (bench/README.md). Here h11 (httpx's own HTTP/1.1 engine)
parses the answer's head, and the body goes from the socket to the file by
`splice(2)` through a pipe, never copied into Python, while a second thread
hashes what has reached the file (from the page cache). Over TLS, or where
splice is missing, the body is read in 1 MiB pieces instead.

`POST /exists` goes the same way, so that a run which finds everything
present (a rerun of `stor put`, `stor exists`) never imports httpx, a third
of its time. A connection is kept for the thread's next request once an
answer has been read to its end; one found closed by the server when reused (its keep-alive
timeout) is replaced once, silently, before any byte of an answer came.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator

import h11

from stor.client.connection import ServerURL, Stopped

PIECE = 1 << 20
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ from Python 3.10 on Linux; spelled out for older fcntl modules
CAN_SPLICE = hasattr(os, "splice")


class Closed(ConnectionError):
    """The server closed the connection, or sent something that is not HTTP/1.1."""


class FileError(Exception):
    """Writing the body to its file failed (a full disk, say): not the connection's fault."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.error = error


def open_socket(url: ServerURL, timeout: float) -> socket.socket:
    sock = socket.create_connection((url.host, url.port), timeout=min(timeout, 10.0))
    if url.scheme == "https":
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=url.host)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    return sock


def next_event(conn: h11.Connection, sock: socket.socket) -> h11.Event:
    """The server's next event; a connection closed before its answer ended is Closed."""
    closed = False
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as e:
            raise Closed(f"the server's answer is not HTTP/1.1: {e}") from None
        if event is h11.NEED_DATA:
            if closed:
                raise Closed("the server closed the connection before it answered")
            data = sock.recv(65536)
            closed = not data
            conn.receive_data(data)  # b"": the close, which ends a body that was sent up to it
            continue
        if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            raise Closed("the server closed the connection before it answered")
        return event  # type: ignore[return-value]


class Answer:
    """An answer's status and headers, and its body to be read once: as pieces, or into a file."""

    def __init__(self, sock: socket.socket, conn: h11.Connection, head: h11.Response) -> None:
        self.sock, self.conn = sock, conn
        self.status = head.status_code
        self.headers = header_fields(head)
        length = self.headers.get("content-length", "")
        self.length = int(length) if length.isdigit() else None
        self.received = 0
        self.complete = False
        self.keep = self.length is not None and "close" not in self.headers.get("connection", "").lower()
        self._buffered: list[bytes] = []
        # What h11 has already read past the head; the rest is still in the socket.
        while self.length is not None:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                self._buffered.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
                break
            else:
                break  # NEED_DATA: the rest of the body is in the socket, which is read directly from here

    def text(self, limit: int = 4096) -> str:
        """The start of the body, as text (an error's reason); the connection is not kept."""
        self.keep = False
        data = b"".join(self._buffered)
        try:
            while len(data) < min(limit, self.length if self.length is not None else limit):
                piece = self.sock.recv(limit)
                if not piece:
                    break
                data += piece
        except OSError:
            pass
        return data[:limit].decode(errors="replace")

    def pieces(self) -> Iterator[bytes]:
        """The body as it comes."""
        if self.length is None:  # chunked, or up to the close (a proxy's doing): h11 decodes it
            self.keep = False
            while True:
                event = next_event(self.conn, self.sock) if not self.complete else h11.EndOfMessage()
                if isinstance(event, h11.EndOfMessage):
                    self.complete = True
                    return
                if isinstance(event, h11.Data):
                    self.received += len(event.data)
                    yield bytes(event.data)
        yield from self._take_buffered()
        while self.received < self.length:
            piece = self.sock.recv(min(PIECE, self.length - self.received))
            if not piece:
                raise Closed(f"the server closed the connection after {self.received} of {self.length} bytes")
            self.received += len(piece)
            yield piece
        self.complete = True

    def into_file(self, fd: int, pipe: tuple[int, int] | None, progress: Callable[[int], None],
                  stopping: threading.Event) -> None:
        """The body appended to the file fd (at its current position); progress(n) after each piece."""
        for piece in self._take_buffered():
            write_all(fd, piece)
            progress(len(piece))
        if pipe is None or self.length is None or isinstance(self.sock, ssl.SSLSocket):
            for piece in self.pieces():
                if stopping.is_set():
                    raise Stopped()
                write_all(fd, piece)
                progress(len(piece))
            return
        read_end, write_end = pipe
        timeout = self.sock.gettimeout()
        # A socket with a Python timeout is non-blocking underneath, and splice would then take
        # whatever few bytes are there each call. Blocking, with the kernel's own receive timeout.
        self.sock.settimeout(None)
        seconds = int(timeout or 0)
        micro = int(((timeout or 0) - seconds) * 1e6)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micro))
        try:
            while self.received < self.length:
                if stopping.is_set():
                    raise Stopped()
                try:
                    n = os.splice(self.sock.fileno(), write_end, min(PIECE, self.length - self.received))
                except BlockingIOError:
                    raise TimeoutError(f"no bytes from the server for {timeout} s") from None
                if n == 0:
                    raise Closed(f"the server closed the connection after {self.received} of {self.length} bytes")
                moved = 0
                try:
                    while moved < n:
                        moved += os.splice(read_end, fd, n - moved)
                except OSError as e:
                    _empty(read_end, n - moved)
                    raise FileError(e) from None
                self.received += n
                progress(n)
        finally:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 0))
            self.sock.settimeout(timeout)
        self.complete = True

    def _take_buffered(self) -> Iterator[bytes]:
        while self._buffered:
            piece = self._buffered.pop(0)
            self.received += len(piece)
            yield piece


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise FileError(e) from None


def _empty(read_end: int, n: int) -> None:
    """Drain what a failed splice left in the thread's pipe, so that it starts empty next time."""
    with contextlib.suppress(OSError):
        while n > 0:
            n -= len(os.read(read_end, min(n, PIECE))) or n


def header_fields(head: h11.Response) -> dict[str, str]:
    """An answer's headers by lower-case name."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}


class Getter:
    """Requests (downloads, `POST /exists`) on a kept-alive connection of the calling thread's own."""

    def __init__(self, base: ServerURL, headers: dict[str, str], timeout: float) -> None:
        self.base, self.timeout = base, timeout
        self.headers = [("Host", base.netloc), *headers.items()]
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._pipes: list[tuple[int, int]] = []

    @contextlib.contextmanager
    def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Iterator[Answer]:
        """One request, its body small and sent whole (POST /exists); only what may be sent twice:
        a connection found stale is asked again."""
        fields = [*self.headers, *headers.items()]
        if body or method != "GET":
            fields.append(("Content-Length", str(len(body))))
        request = h11.Request(method=method, target=self.base.target(path), headers=fields)
        answer = self._ask(request, body, reused=getattr(self._local, "sock", None) is not None)
        try:
            yield answer
        finally:
            if not (answer.keep and answer.complete):
                self._drop()

    def pipe(self) -> tuple[int, int] | None:
        """This thread's pipe for splice (1 MiB where the kernel allows), made once."""
        if not CAN_SPLICE:
            return None
        pipe = getattr(self._local, "pipe", None)
        if pipe is None:
            pipe = os.pipe()
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe[1], F_SETPIPE_SZ, PIECE)
            self._local.pipe = pipe
            with self._lock:
                self._pipes.append(pipe)
        return pipe

    def _ask(self, request: h11.Request, body: bytes, reused: bool) -> Answer:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = open_socket(self.base, self.timeout)
            self._local.sock = sock
            with self._lock:
                self._open.add(sock)
        conn = h11.Connection(h11.CLIENT)
        try:
            sock.sendall(conn.send(request) + (conn.send(h11.Data(data=body)) if body else b"")
                         + conn.send(h11.EndOfMessage()))
            while True:
                event = next_event(conn, sock)
                if isinstance(event, h11.Response):
                    return Answer(sock, conn, event)
        except (Closed, OSError) as e:
            self._drop()
            stale = reused and (isinstance(e, (Closed, BrokenPipeError, ConnectionResetError))
                                or getattr(e, "errno", None) == errno.EPIPE)
            if stale:  # the server had closed it while it was idle: once more, on a new one
                return self._ask(request, body, reused=False)
            raise

    def _drop(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            self._local.sock = None
            with self._lock:
                self._open.discard(sock)
            sock.close()

    def close(self) -> None:
        with self._lock:
            for sock in self._open:
                sock.close()
            self._open.clear()
            for read_end, write_end in self._pipes:
                os.close(read_end)
                os.close(write_end)
            self._pipes.clear()
