"""Worker processes for uvicorn, each listening on a socket of its own in one SO_REUSEPORT group.

uvicorn's own supervisor hands every worker the same listening socket, and a
worker that wakes first accepts every connection that is waiting: a client
that opens its keep-alive connections at once (an archival pipeline's 16, the
bench's load generator) can find all of them on one worker while the other
cores idle (the bench measured a round at 0.67 of 2 cores). With a socket per
worker the kernel assigns each new connection to one of the workers as it
arrives.

The supervisor is small: it starts the workers (spawned, as uvicorn does, so
none inherits another's threads), starts a new one in place of one that dies,
and passes SIGINT or SIGTERM on for a graceful shutdown. Workers that keep
dying (more than DEATHS_PER_WORKER per worker within DEATH_WINDOW_SECONDS)
stop the service instead of being restarted over and over.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any

from stor import metricsdir

log = logging.getLogger("stor")

DEATH_WINDOW_SECONDS = 60.0
DEATHS_PER_WORKER = 3
SHUTDOWN_SECONDS = 30.0
BACKLOG = 2048  # uvicorn's default


def bound_socket(host: str, port: int, shared: bool = True) -> socket.socket:
    """A socket bound to host:port, not yet listening; shared: other sockets may bind it too (SO_REUSEPORT)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def reserve(listeners: Sequence[tuple[str, int]]) -> list[socket.socket]:
    """A bound, never listening socket for each (host, port), port 0 resolved; OSError when one cannot be had.

    Bound once without SO_REUSEPORT first (which any socket already on the port
    refuses, so that a second service there is an error, not a silent sharer),
    then kept bound: port 0 becomes one port for all workers, and the port
    stays this service's while a worker is replaced. Never listening, a kept
    socket receives no connections itself.
    """
    reserved: list[socket.socket] = []
    try:
        for host, port in listeners:
            with bound_socket(host, port, shared=False) as probe:
                port = probe.getsockname()[1]
            reserved.append(bound_socket(host, port))
    except BaseException:
        for sock in reserved:
            sock.close()
        raise
    return reserved


def run(config: dict[str, Any], reserved: Sequence[socket.socket], workers: int) -> int:
    """Serve the reserved listeners with workers processes until SIGINT or SIGTERM; the exit status."""
    listeners = [sock.getsockname()[:2] for sock in reserved]
    context = multiprocessing.get_context("spawn")
    stop: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    running: dict[int, Any] = {}
    deaths: collections.deque[float] = collections.deque()
    status = 0
    try:
        for slot in range(workers):
            running[slot] = _start(context, config, listeners, slot)
        while not stop:
            multiprocessing.connection.wait([p.sentinel for p in running.values()], timeout=0.5)
            for slot, process in list(running.items()):
                if process.is_alive() or stop:
                    continue
                now = time.monotonic()
                deaths.append(now)
                while deaths[0] < now - DEATH_WINDOW_SECONDS:
                    deaths.popleft()
                if len(deaths) > DEATHS_PER_WORKER * workers:
                    log.error("worker %d (pid %d) exited with %s, the %dth death within %.0f s; stopping",
                              slot, process.pid, process.exitcode, len(deaths), DEATH_WINDOW_SECONDS)
                    stop.append(0)
                    status = 1
                    break
                log.error("worker %d (pid %d) exited with %s; starting another", slot, process.pid, process.exitcode)
                running[slot] = _start(context, config, listeners, slot)
    finally:
        for process in running.values():
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes what is in flight
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        for process in running.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker pid %d did not stop within %.0f s; killed", process.pid, SHUTDOWN_SECONDS)
                process.kill()
                process.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return status


def _start(context: Any, config: dict[str, Any], listeners: list[tuple[str, int]], slot: int) -> Any:
    process = context.Process(target=_serve, args=(config, listeners, os.getpid()), name=f"stor-worker-{slot}")
    process.start()
    return process


_PR_SET_PDEATHSIG = 1


def listening(listeners: Sequence[tuple[str, int]]) -> list[socket.socket]:
    """This process's own listening socket for each (host, port), in the service's SO_REUSEPORT group."""
    sockets: list[socket.socket] = []
    try:
        for host, port in listeners:
            sockets.append(bound_socket(host, port))
            sockets[-1].listen(BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _serve(config: dict[str, Any], listeners: list[tuple[str, int]], supervisor: int) -> None:
    """One worker: its own sockets, uvicorn serving them."""
    import uvicorn

    # A supervisor killed outright (SIGKILL, the OOM killer) takes its workers with it (SIGTERM,
    # a graceful stop), rather than leaving them serving on a port nobody may then take.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # Held before the check below: a worker that finds its supervisor dead may be the last one
    # to let go of the metrics directory, which it then removes (stor/metricsdir.py).
    held = metricsdir.Held(os.environ.get(metricsdir.ENV))
    if held.fd is not None:
        # uvicorn stops on SIGTERM, then raises it again with this handler back in place:
        # the directory is let go of, and the worker still ends by SIGTERM.
        signal.signal(signal.SIGTERM, lambda signum, frame: _end_by(signum, held))
    try:
        if os.getppid() != supervisor:
            return  # it died before the request above
        uvicorn.Server(uvicorn.Config(**config)).run(sockets=listening(listeners))
    finally:
        held.release()


def _end_by(signum: int, held: metricsdir.Held) -> None:
    held.release()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
