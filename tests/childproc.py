"""What the tests' real servers (SeaweedFS, RabbitMQ) share as child processes: a port check, and dying with us."""

from __future__ import annotations

import ctypes
import signal
import socket
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def port_free(port: int) -> bool:
    """Whether port can be bound on loopback now."""
    if not 1024 <= port <= 65535:
        return False
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A preexec_fn: the child gets sig when the process that started it dies (a test run killed by a
    timeout leaves no orphaned server holding ports and a data directory). Linux ties it to the starting
    thread: start such servers from the main thread."""

    def arrange() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)

    return arrange
