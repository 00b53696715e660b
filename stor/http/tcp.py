"""What a TCP peer has taken of what was sent to it: the progress of a download.

Waiting for a socket to become writable does not tell a slow reader from one
that reads nothing: the kernel reports room only once a large part of its send
buffer has drained, which a client taking 16 KiB/s may need minutes for. The
count of bytes the peer has acknowledged (tcp_info's tcpi_bytes_acked, Linux
4.1+) grows whenever the client takes anything, and stops once its receive
window is full, that is once it takes nothing.
"""

from __future__ import annotations

import socket
import struct
from typing import Protocol

# Offset of tcpi_bytes_acked (a u64) in struct tcp_info (linux/tcp.h).
_BYTES_ACKED_OFFSET = 120
_TCP_INFO_SIZE = 232


class HasSockopt(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...


def bytes_acked(sock: HasSockopt) -> int | None:
    """Bytes the peer has acknowledged so far; None where the kernel does not say (not TCP, old kernel)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _BYTES_ACKED_OFFSET + 8:
        return None
    return int(struct.unpack_from("=Q", info, _BYTES_ACKED_OFFSET)[0])


class Progress:
    """Whether a peer has taken nothing for `limit` seconds, from checks made now and then.

    Where the kernel cannot count acknowledged bytes, every check counts as
    no progress: the peer is then cut `limit` seconds after the first check,
    as a wait for writability would.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.acked: int | None = None
        self.since: float | None = None

    def reset(self) -> None:
        """Nothing is waiting for the peer now: the next check starts afresh."""
        self.since = None

    def stalled(self, sock: HasSockopt, now: float) -> bool:
        acked = bytes_acked(sock)
        if self.since is None or (acked is not None and acked != self.acked):
            self.since, self.acked = now, acked
            return False
        return now - self.since >= self.limit
