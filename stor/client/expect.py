"""A large upload that asks before it sends: `Expect: 100-continue` (RFC 9110, 10.1.1).

httpx sends a body right after the head, so a server that refuses (wrong
credentials, too large, no room, already present) is sent every byte anyway.
This one request is made with h11, the HTTP/1.1 state machine httpx itself
runs on, over a socket of its own: the head goes first, then the body only
once the server says `100 Continue`, or when it has said nothing within a
second (as curl does: a server or proxy that ignores Expect still gets the
body). A final answer instead of 100 ends the request without a body byte.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import h11

from stor.client.connection import ServerURL
from stor.client.rawhttp import header_fields, next_event, open_socket

CONTINUE_WAIT = 1.0  # curl's default --expect100-timeout


def post_expecting_continue(
    url: ServerURL,
    path: str,
    headers: dict[str, str],
    body: Callable[[], Iterable[bytes]],
    timeout: float,
    continue_wait: float = CONTINUE_WAIT,
) -> tuple[int, str, dict[str, str]]:
    """POST body() (its chunks made only if the server wants them) with Content-Length already in
    headers; the final status, the first part of its body as text and its headers (lower-case names).
    Raises OSError (rawhttp.Closed among them) or h11.ProtocolError: the connection failed."""
    sock = open_socket(url, timeout)
    try:
        conn = h11.Connection(h11.CLIENT)
        head = [("Host", url.netloc), ("Expect", "100-continue"), *headers.items()]
        sock.sendall(conn.send(h11.Request(method="POST", target=url.target(path), headers=head)))

        sock.settimeout(continue_wait)
        final: h11.Response | None = None
        try:
            while final is None:
                event = next_event(conn, sock)
                if isinstance(event, h11.InformationalResponse):
                    break  # 100 Continue: send the body
                if isinstance(event, h11.Response):
                    final = event  # answered before the body: nothing more to send
        except TimeoutError:
            pass  # no word from the server: send the body, as curl does
        sock.settimeout(timeout)
        if final is None:
            try:
                for chunk in body():
                    sock.sendall(conn.send(h11.Data(data=chunk)))
                sock.sendall(conn.send(h11.EndOfMessage()))
            except (BrokenPipeError, ConnectionResetError):
                # The server answered and closed while we sent (413 past the limit, say): its answer
                # may be waiting to be read; if it is not, this was a connection failure after all.
                pass
            while final is None:
                event = next_event(conn, sock)
                if isinstance(event, h11.Response):
                    final = event
        text = b""
        while True:
            event = next_event(conn, sock)
            if isinstance(event, h11.Data):
                if len(text) < 4096:
                    text += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        return final.status_code, text.decode(errors="replace"), header_fields(final)
    finally:
        sock.close()
