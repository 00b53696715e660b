#!/usr/bin/env python3
"""Hostile-client soak: stor serving a well-behaved client while hostile clients attack it, all at once.

    python bench/soak.py                         # 10 s baseline, then 60 s of every attack at once
    python bench/soak.py --seconds 30
    python bench/soak.py --only flood            # GET p99 with and without 64 wrong-password connections
    python bench/soak.py --config-extra '{"http": {"max_connections": 1000}}' --serve-args '--limit-concurrency 500'

Not part of the test suite. See bench/README.md, "Hostile-client soak", for what it does and what to
look for. Results go to bench/results/soak-<timestamp>.json.

The script runs as three kinds of process: this one (sets up, starts `stor serve`, samples its
workers, prints), one well-behaved client (`--role client`, alone in its process so that the
attackers' own work cannot show as server latency) and one process for all attackers
(`--role attack`). Both are asyncio on raw sockets (asyncio streams, uvloop when installed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import copy
import datetime as dt
import errno
import hashlib
import http.client
import json
import os
import platform
import random
import resource
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))
# The existing bench's process handling, so that both start and stop the service alike.
from run import (  # noqa: E402
    BenchError, Procs, children, cmdline, cpu_seconds, free_port, log, proc_status, save_results, wait_port,
)

KiB, MiB = 1 << 10, 1 << 20
BLOB_SIZE = 4 * KiB
WRITER = ("writer", "s3cret")
BCRYPT_USER = "ingest"
ATTACKERS = ["slowloris", "silent", "huge", "flood"]
HOST = "127.0.0.1"


# ---- shared helpers ------------------------------------------------------------------------

def raise_nofile() -> tuple[int, int]:
    """The soft RLIMIT_NOFILE up to the hard one (thousands of sockets); the limits then in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard or hard == resource.RLIM_INFINITY:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def err_kind(e: BaseException) -> str:
    """A short name for what went wrong on a socket."""
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, asyncio.IncompleteReadError):
        return "eof" if not e.partial else "eof_mid_head"
    if isinstance(e, asyncio.LimitOverrunError):
        return "head_too_long"
    if isinstance(e, BadResponse):
        return "bad_response"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, BrokenPipeError):
        return "broken_pipe"
    if isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE):
        return "soak_out_of_fds"  # the soak's own limit, not the server's doing
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno)).lower()
    return type(e).__name__


class BadResponse(Exception):
    pass


async def read_head(r: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await r.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise BadResponse(lines[0][:80])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


async def read_body(r: asyncio.StreamReader, headers: dict[str, str]) -> int:
    if "content-length" in headers:
        n = int(headers["content-length"])
        await r.readexactly(n)
        return n
    if "chunked" in headers.get("transfer-encoding", "").lower():
        total = 0
        while True:
            size = int((await r.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            await r.readexactly(size + 2)
            total += size
            if size == 0:  # no trailers from stor
                return total
    return 0


def closes(headers: dict[str, str]) -> bool:
    return headers.get("connection", "").lower() == "close"


def status_of(data: bytes) -> str:
    """What a server's first bytes on a connection say: 'answered_431', or 'answered_garbage'."""
    parts = data.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return "answered_" + parts[1].decode()
    return "answered_garbage"


def quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))  # nearest rank
    return sorted_values[i]


def latency_summary(values: list[float]) -> dict:
    """Seconds in, milliseconds out."""
    v = sorted(values)
    out: dict = {"n": len(v)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
        x = quantile(v, q)
        out[name] = None if x is None else round(x * 1000, 3)
    out["max"] = round(v[-1] * 1000, 3) if v else None
    out["mean"] = round(sum(v) / len(v) * 1000, 3) if v else None
    return out


def seconds_summary(values: list[float]) -> dict:
    v = sorted(values)
    return {"n": len(v), "median": round(statistics.median(v), 3) if v else None,
            "max": round(v[-1], 3) if v else None}


async def sleep_until(epoch: float) -> None:
    delay = epoch - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def run_async(coro) -> object:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# ---- the well-behaved client (its own process) ------------------------------------------------

async def client_main(spec: dict) -> dict:
    port, sha, conns, rate, timeout = spec["port"], spec["sha"], spec["connections"], spec["rate"], spec["timeout"]
    request = f"GET /{sha} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: soak-client\r\n\r\n".encode()
    await sleep_until(spec["t_start"])
    cpu0 = own_cpu()
    t0 = time.perf_counter()
    end = t0 + max(0.0, spec["t_end"] - time.time())
    latencies: list[float] = []
    connects: list[float] = []
    errors: collections.Counter = collections.Counter()
    statuses: collections.Counter = collections.Counter()
    seconds = int(end - t0) + 1
    per_second: list[list[float]] = [[] for _ in range(seconds)]
    errors_per_second = [0] * seconds
    interval = conns / rate if rate > 0 else 0.0

    def error(kind: str, at: float) -> None:
        errors[kind] += 1
        errors_per_second[min(seconds - 1, int(at - t0))] += 1

    async def one_connection(i: int) -> None:
        next_at = t0 + random.random() * interval
        r = w = None
        fresh = False
        try:
            while True:
                now = time.perf_counter()
                if now >= end:
                    return
                if interval:
                    if next_at > now:
                        await asyncio.sleep(next_at - now)
                        now = time.perf_counter()
                        if now >= end:
                            return
                    next_at = max(next_at + interval, now)  # late after a slow answer: no catch-up burst
                if w is None:
                    c0 = time.perf_counter()
                    try:
                        async with asyncio.timeout(timeout):
                            r, w = await asyncio.open_connection(HOST, port, local_addr=(spec["addr"], 0))
                    except Exception as e:  # noqa: BLE001 - every failure is a figure
                        error("connect_" + err_kind(e), c0)
                        if not interval:
                            await asyncio.sleep(0.05)
                        continue
                    connects.append(time.perf_counter() - c0)
                    fresh = True
                s0 = time.perf_counter()
                try:
                    async with asyncio.timeout(timeout):
                        w.write(request)
                        status, headers = await read_head(r)
                        n = await read_body(r, headers)
                except Exception as e:  # noqa: BLE001
                    # On a new connection, a timeout is often a connection the kernel completed that no
                    # worker has accepted (the accept queue): told apart from one on a used connection.
                    error(err_kind(e) + ("_new_conn" if fresh else ""), s0)
                    w.close()
                    r = w = None
                    continue
                fresh = False
                took = time.perf_counter() - s0
                statuses[status] += 1
                if status != 200:
                    error(f"status_{status}", s0)
                elif n != BLOB_SIZE:
                    error("short_body", s0)
                else:
                    latencies.append(took)
                    per_second[min(seconds - 1, int(s0 - t0))].append(took)
                if closes(headers):
                    w.close()
                    r = w = None
        finally:
            if w is not None:
                w.close()

    await asyncio.gather(*(one_connection(i) for i in range(conns)))
    wall = time.perf_counter() - t0
    timeline = []
    for s, (vals, errs) in enumerate(zip(per_second, errors_per_second)):
        v = sorted(vals)
        timeline.append({"t": s, "ok": len(v), "errors": errs,
                         "p99_ms": round(quantile(v, 0.99) * 1000, 3) if v else None,
                         "max_ms": round(v[-1] * 1000, 3) if v else None})
    return {
        "phase": spec["phase"],
        "seconds": round(wall, 3),
        "connections": conns,
        "offered_rate": rate,
        "ok": len(latencies),
        "ok_per_s": round(len(latencies) / wall, 1) if wall else None,
        "latency_ms": latency_summary(latencies),
        "statuses": dict(statuses),
        "errors": dict(errors),
        "new_connections": len(connects),
        "connect_ms": latency_summary(connects),
        "timeline": timeline,
        "cpu_s": round(own_cpu() - cpu0, 3),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


# ---- the attackers (one process for all of them) --------------------------------------------

class Attacker:
    """Counts for one kind of hostile client."""

    def __init__(self, name: str, wanted: int) -> None:
        self.name = name
        self.wanted = wanted  # connections it keeps (or tries to keep) open
        self.made = 0
        self.connect_errors: collections.Counter = collections.Counter()
        self.outcomes: collections.Counter = collections.Counter()  # how each connection ended
        self.answers: collections.Counter = collections.Counter()  # HTTP statuses received
        self.lived_closed: list[float] = []  # seconds, connections that ended before the soak did
        self.age_at_end: list[float] = []  # seconds, connections still open when it ended
        self.answer_s: list[float] = []  # per answer: request sent (or connection made) to status line
        self.open_now = 0
        self.open_peak = 0
        self.extra: dict = {}

    def opened(self) -> float:
        self.made += 1
        self.open_now += 1
        self.open_peak = max(self.open_peak, self.open_now)
        return time.perf_counter()

    def ended(self, since: float, outcome: str, still_open: bool = False) -> None:
        self.open_now -= 1
        lived = time.perf_counter() - since
        self.outcomes[outcome] += 1
        (self.age_at_end if still_open else self.lived_closed).append(lived)

    def to_json(self) -> dict:
        return {
            "wanted": self.wanted,
            "connections_made": self.made,
            "connect_errors": dict(self.connect_errors),
            "outcomes": dict(self.outcomes),
            "answers": {str(k): v for k, v in sorted(self.answers.items())},
            "lived_s_closed": seconds_summary(self.lived_closed),
            "open_at_end": seconds_summary(self.age_at_end),
            "open_peak": self.open_peak,
            "answer_s": seconds_summary(self.answer_s),
            **self.extra,
        }


async def attack_main(spec: dict) -> dict:
    port, sha = spec["port"], spec["sha"]
    await sleep_until(spec["t_start"])
    cpu0 = own_cpu()
    t0 = time.perf_counter()
    end = t0 + max(0.0, spec["t_end"] - time.time())
    ramp = spec["ramp"]
    reopen = spec["reopen_delay"]
    connecting = asyncio.Semaphore(spec["connect_concurrency"])

    def left() -> float:
        return end - time.perf_counter()

    # A timeout armed for left() seconds may fire a little early by this clock (uvloop's clock is
    # in milliseconds, read once per loop iteration): within this margin it is the soak's end.
    ending = 0.05

    async def connect(a: Attacker):
        async with connecting:
            try:
                async with asyncio.timeout(max(0.1, min(10.0, left()))):
                    return await asyncio.open_connection(HOST, port, local_addr=(spec["addr"], 0))
            except Exception as e:  # noqa: BLE001
                a.connect_errors[err_kind(e)] += 1
                return None

    async def watch(r: asyncio.StreamReader, a: Attacker, since: float, seconds: float) -> tuple[str, bool] | None:
        """Reads for up to `seconds`: None if nothing came, else (how it ended, still open at the end)."""
        try:
            async with asyncio.timeout(seconds):
                data = await r.read(65536)
        except TimeoutError:
            return None
        except Exception as e:  # noqa: BLE001
            return err_kind(e), False
        if not data:
            return "closed", False
        outcome = status_of(data)
        a.answers[outcome.removeprefix("answered_")] += 1
        a.answer_s.append(time.perf_counter() - since)
        return outcome, False

    # -- silent: connect, send nothing, wait.
    async def silent_one(a: Attacker, delay: float) -> None:
        await asyncio.sleep(delay)
        while left() > 0:
            conn = await connect(a)
            if conn is None:
                await asyncio.sleep(reopen)
                continue
            r, w = conn
            since = a.opened()
            ended = await watch(r, a, since, max(0.0, left()))
            a.ended(since, *(ended or ("open_at_end", True)))
            w.close()
            if ended is None:
                return
            await asyncio.sleep(reopen)

    # -- slowloris: a request head that never ends, one byte every `interval` seconds.
    slow_head = (f"GET /{sha} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: slowloris\r\nX-Slow: ".encode()
                 + b"a" * 100_000)
    interval = spec["slowloris_interval"]

    async def slowloris_one(a: Attacker, delay: float) -> None:
        await asyncio.sleep(delay)
        while left() > 0:
            conn = await connect(a)
            if conn is None:
                await asyncio.sleep(reopen)
                continue
            r, w = conn
            since = a.opened()
            sent = 0
            ended = None
            while ended is None:
                if left() <= 0:
                    ended = ("open_at_end", True)
                    break
                try:
                    w.write(slow_head[sent:sent + 1])
                    sent += 1
                    await w.drain()
                except Exception as e:  # noqa: BLE001
                    ended = (err_kind(e), False)
                    break
                ended = await watch(r, a, since, max(0.0, min(interval, left())))
            a.ended(since, *ended)
            a.extra.setdefault("bytes_sent", []).append(sent)
            w.close()
            if ended[1]:
                return
            await asyncio.sleep(reopen)

    # -- huge: a request with one header of `size` bytes, sent in 64 KiB writes while its answer is awaited.
    async def huge_loop(a: Attacker, size: int) -> None:
        prefix = f"GET /{sha} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: huge-header\r\nX-Huge: ".encode()
        suffix = b"\r\n\r\n"
        whole = len(prefix) + size + len(suffix)
        chunk = b"a" * (64 * KiB)
        tries = a.extra.setdefault("tries", [])
        await asyncio.sleep(ramp / 2)
        while left() > 1.0:
            conn = await connect(a)
            if conn is None:
                await asyncio.sleep(reopen)
                continue
            r, w = conn
            since = a.opened()
            written = [0]

            async def send() -> None:
                w.write(prefix)
                written[0] += len(prefix)
                todo = size
                while todo:
                    n = min(len(chunk), todo)
                    w.write(chunk if n == len(chunk) else chunk[:n])
                    written[0] += n
                    todo -= n
                    await w.drain()
                w.write(suffix)
                written[0] += len(suffix)
                await w.drain()

            sender = asyncio.create_task(send())
            status = None
            try:
                async with asyncio.timeout(min(spec["huge_timeout"], max(0.1, left()))):
                    status, _ = await read_head(r)
                outcome = f"answered_{status}"
                a.answers[str(status)] += 1
                a.answer_s.append(time.perf_counter() - since)
            except TimeoutError:
                outcome = "no_answer_in_time" if left() > ending else "open_at_end"
            except Exception as e:  # noqa: BLE001
                outcome = err_kind(e)
            took = time.perf_counter() - since
            sent = written[0] - (w.transport.get_write_buffer_size() if not w.transport.is_closing() else 0)
            whole_sent = sender.done() and not sender.cancelled() and sender.exception() is None
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            w.close()
            a.ended(since, outcome, outcome == "open_at_end")
            tries.append({"outcome": outcome, "s": round(took, 3), "sent_bytes": sent,
                          "whole_head_sent": whole_sent and written[0] >= whole})
            await asyncio.sleep(spec["huge_pause"])

    # -- flood: POST with wrong Basic credentials for the bcrypt user, as fast as answers come.
    flood_paths = {"sha": ["sha"], "exists": ["exists"], "both": ["sha", "exists"]}[spec["flood_path"]]
    exists_body = json.dumps([sha]).encode()
    flood_interval = spec["flood_connections"] / spec["flood_rate"] if spec["flood_rate"] > 0 else 0.0

    def flood_request(n: int) -> tuple[str, bytes]:
        which = flood_paths[n % len(flood_paths)]
        creds = base64.b64encode(f"{BCRYPT_USER}:wrong-{secrets.token_hex(6)}".encode()).decode()
        if which == "sha":
            head = f"POST /{sha} HTTP/1.1\r\nContent-Length: 0\r\n"
            body = b""
        else:
            head = f"POST /exists HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {len(exists_body)}\r\n"
            body = exists_body
        return which, (head + f"Host: {HOST}:{port}\r\nAuthorization: Basic {creds}\r\n\r\n").encode() + body

    async def flood_one(a: Attacker, delay: float, index: int) -> None:
        by_path = a.extra.setdefault("answers_by_path", {})
        await asyncio.sleep(delay)
        n = index
        next_at = time.perf_counter()
        while left() > 0:
            conn = await connect(a)
            if conn is None:
                await asyncio.sleep(reopen)
                continue
            r, w = conn
            since = a.opened()
            ended = None
            while ended is None:
                if left() <= 0:
                    ended = ("open_at_end", True)
                    break
                if flood_interval:
                    next_at = max(next_at + flood_interval, time.perf_counter())
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                which, req = flood_request(n)
                n += 1
                s0 = time.perf_counter()
                try:
                    async with asyncio.timeout(max(0.01, min(spec["flood_timeout"], left()))):
                        w.write(req)
                        status, headers = await read_head(r)
                        await read_body(r, headers)
                except TimeoutError:
                    ended = ("open_at_end", True) if left() <= ending else ("no_answer_in_time", False)
                    break
                except Exception as e:  # noqa: BLE001
                    ended = (err_kind(e), False)
                    break
                a.answers[str(status)] += 1
                a.answer_s.append(time.perf_counter() - s0)
                counts = by_path.setdefault(which, {})
                counts[str(status)] = counts.get(str(status), 0) + 1
                if closes(headers):
                    ended = (f"closed_by_server_after_{status}", False)
            a.ended(since, *ended)
            w.close()
            if ended[1]:
                return
            await asyncio.sleep(reopen if not ended[0].startswith("closed_by_server") else 0)

    attackers: dict[str, Attacker] = {}
    tasks = []
    only = spec["attackers"]
    if "slowloris" in only and spec["slowloris"]:
        a = attackers["slowloris"] = Attacker("slowloris", spec["slowloris"])
        tasks += [slowloris_one(a, random.random() * ramp) for _ in range(spec["slowloris"])]
    if "silent" in only and spec["silent"]:
        a = attackers["silent"] = Attacker("silent", spec["silent"])
        tasks += [silent_one(a, random.random() * ramp) for _ in range(spec["silent"])]
    if "huge" in only:
        for mib in spec["huge_mib"]:
            size = int(mib * MiB)
            a = attackers[f"huge {mib:g} MiB"] = Attacker(f"huge {mib:g} MiB", 1)
            a.extra["header_bytes"] = size
            tasks.append(huge_loop(a, size))
    if "flood" in only and spec["flood_connections"]:
        a = attackers["flood"] = Attacker("flood", spec["flood_connections"])
        a.extra["paths"] = flood_paths
        tasks += [flood_one(a, random.random() * min(ramp, 0.5), i) for i in range(spec["flood_connections"])]

    timeline: list[dict] = []

    async def sample() -> None:
        while left() > 0:
            timeline.append({"t": round(time.perf_counter() - t0, 1),
                             **{name: {"open": a.open_now, "answers": sum(a.answers.values())}
                                for name, a in attackers.items()}})
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*tasks)
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    wall = time.perf_counter() - t0
    out = {name: a.to_json() for name, a in attackers.items()}
    if "slowloris" in out:
        out["slowloris"]["bytes_sent"] = seconds_summary(attackers["slowloris"].extra.get("bytes_sent", []))
    if "flood" in out:
        out["flood"]["answers_per_s"] = round(sum(attackers["flood"].answers.values()) / wall, 1) if wall else None
    return {"seconds": round(wall, 3), "attackers": out, "timeline": timeline,
            "cpu_s": round(own_cpu() - cpu0, 3), "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE))}


def role_main(args: argparse.Namespace) -> int:
    raise_nofile()
    spec = json.loads(Path(args.spec).read_text())
    fn = client_main if args.role == "client" else attack_main
    result = run_async(fn(spec))
    r = resource.getrusage(resource.RUSAGE_SELF)
    result["process_cpu_s"] = round(r.ru_utime + r.ru_stime, 3)  # start-up (imports) included
    result["peak_rss_mib"] = round(r.ru_maxrss / 1024, 1)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


# ---- the orchestrator ---------------------------------------------------------------------------

def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def port_sockets(port: int) -> tuple[int, list[int]]:
    """From /proc/net/tcp: connections established to `port`, and per listening socket those not accepted yet.

    A listening socket's rx_queue is its accept queue: connections the kernel has completed (the
    client's connect() returned, its request may be sent) that no worker has taken. Each worker
    has a listening socket of its own (stor/workers.py).
    """
    established = 0
    queued = []
    suffix = f":{port:04X}"
    with contextlib.suppress(OSError):
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if not fields[1].endswith(suffix):
                    continue
                if fields[3] == "0A":
                    queued.append(int(fields[4].split(":")[1], 16))
                elif fields[3] == "01":
                    established += 1
    return established, queued


def workers_of(pid: int) -> list[int]:
    return sorted(c for c in children(pid) if "resource_tracker" not in cmdline(c)) or [pid]


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None,
            timeout: float = 30) -> tuple[int, bytes, dict]:
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        c.close()


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Soak:
    def __init__(self, args: argparse.Namespace, procs: Procs, work: Path) -> None:
        self.args = args
        self.procs = procs
        self.work = work
        self.notes: list[str] = []
        pairs = []
        for i in (1, 2):
            pair = [str(work / f"disk{i}a"), str(work / f"disk{i}b")]
            for d in pair:
                os.makedirs(d)
            pairs.append(pair)
        import bcrypt  # stor's own dependency

        t = time.perf_counter()
        # A password nobody sends: every attempt is wrong and costs one cost-12 bcrypt check.
        self.bcrypt_hash = bcrypt.hashpw(secrets.token_hex(18).encode(), bcrypt.gensalt(rounds=args.bcrypt_cost)).decode()
        self.bcrypt_ms = (time.perf_counter() - t) * 1000
        config = {
            "storage_pairs": pairs,
            "basic_auth": f"{WRITER[0]}:{WRITER[1]}",
            "storage": {"require_mount_points": False},
            "auth": {"users": [{"name": BCRYPT_USER, "password_hash": self.bcrypt_hash, "role": "write"}]},
        }
        self.config = deep_merge(config, args.config_extra)
        self.config_path = work / "config.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.blob = secrets.token_bytes(BLOB_SIZE)
        self.sha = hashlib.sha256(self.blob).hexdigest()

    def note(self, msg: str) -> None:
        log("note: " + msg)
        self.notes.append(msg)

    def start_stor(self) -> None:
        self.port = free_port()
        stor = shutil.which("stor")
        env = None
        if self.args.stor_src:
            # Another tree's code (e.g. `git archive` of an earlier commit), run the same way.
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(Path(self.args.stor_src).resolve()), *filter(None, [os.environ.get("PYTHONPATH")])]))
            stor = None
        cmd = [stor] if stor else [sys.executable, "-m", "stor"]
        cmd += ["serve", "--config", str(self.config_path), "--port", str(self.port),
                "--workers", str(self.args.workers), "--log-level", self.args.log_level, *self.args.serve_args]
        self.stor_cmd = cmd
        self.log_path = self.work / "stor.log"
        out = open(self.log_path, "wb")
        self.proc = self.procs.start(cmd, stdout=out, stderr=out, cwd=self.work, env=env)
        wait_port(self.port, self.proc, "stor serve")
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"stor serve did not start; see {self.log_path}:\n"
                                 + self.log_path.read_text(errors="replace")[-2000:])
            with contextlib.suppress(OSError, http.client.HTTPException):
                if request(self.port, "GET", "/", timeout=2)[0] == 200 and \
                        len(workers_of(self.proc.pid)) == self.args.workers:
                    break
            time.sleep(0.2)
        time.sleep(1.0)
        self.pids = workers_of(self.proc.pid)
        log(f"{' '.join(cmd[1:])}: pid {self.proc.pid}, workers {self.pids}")

    def prepare(self) -> dict:
        """Stores the blob and checks the answers the soak relies on."""
        status, body, _ = request(self.port, "POST", f"/{self.sha}", self.blob,
                                  {**basic(*WRITER), "Content-Type": "application/octet-stream"})
        if status not in (200, 201):
            raise BenchError(f"storing the 4 KiB blob answered {status}: {body[:200]!r}; the end of stor's log:\n"
                             + self.log_path.read_text(errors="replace")[-3000:])
        status, body, _ = request(self.port, "GET", f"/{self.sha}")
        if status != 200 or body != self.blob:
            raise BenchError(f"GET of the stored blob answered {status} with {len(body)} bytes")
        checks = {}
        t = time.perf_counter()
        status, _, _ = request(self.port, "POST", f"/{self.sha}", b"", basic(BCRYPT_USER, "wrong"))
        checks["wrong_password_post"] = {"status": status, "ms": round((time.perf_counter() - t) * 1000, 1)}
        if status != 401:
            self.note(f"POST /<sha> with a wrong password answered {status}, not 401")
        t = time.perf_counter()
        status, _, _ = request(self.port, "POST", "/exists", json.dumps([self.sha]).encode(),
                               {**basic(BCRYPT_USER, "wrong"), "Content-Type": "application/json"})
        checks["wrong_password_exists"] = {"status": status, "ms": round((time.perf_counter() - t) * 1000, 1)}
        if status != 401 and self.args.flood_path != "sha" and "flood" in self.args.attackers:
            self.note(f"POST /exists with a wrong password answered {status}: the flood's /exists requests "
                      "cost the server no bcrypt check (it checks credentials only with auth.read_auth_required)")
        log(f"blob {self.sha[:12]}... stored; one wrong password: POST {checks['wrong_password_post']}, "
            f"/exists {checks['wrong_password_exists']}")
        return checks

    def spawn(self, role: str, spec: dict, name: str):
        spec_path = self.work / f"{name}.spec.json"
        out_path = self.work / f"{name}.out.json"
        spec_path.write_text(json.dumps(spec))
        logf = open(self.work / f"{name}.log", "wb")
        p = self.procs.start([sys.executable, str(Path(__file__).resolve()), "--role", role,
                              "--spec", str(spec_path), "--out", str(out_path)], stdout=logf, stderr=logf)
        return p, out_path

    def collect(self, p, out_path: Path, name: str, until: float) -> dict:
        try:
            p.wait(timeout=max(5.0, until - time.time() + 60))
        except subprocess.TimeoutExpired:
            self.procs.stop(p, signal.SIGKILL, 1)
            raise BenchError(f"the {name} process did not finish; see {self.work / (name + '.log')}")
        if p in self.procs.live:
            self.procs.live.remove(p)
        if p.returncode != 0 or not out_path.exists():
            raise BenchError(f"the {name} process exited {p.returncode}:\n"
                             + (self.work / f"{name}.log").read_text(errors="replace")[-2000:])
        return json.loads(out_path.read_text())

    def client_spec(self, phase: str, t_start: float, seconds: float) -> dict:
        a = self.args
        return {"phase": phase, "port": self.port, "sha": self.sha, "addr": a.client_addr,
                "connections": a.get_connections,
                "rate": a.get_rate, "timeout": a.get_timeout, "t_start": t_start, "t_end": t_start + seconds}

    def watch_server(self, t_start: float, t_end: float) -> dict:
        """Samples the workers from t_start to t_end: CPU (cores) and RSS (MiB), whether any was replaced."""
        while time.time() < t_start:
            time.sleep(min(0.2, t_start - time.time()))
        pids = workers_of(self.proc.pid)
        cpu0, w0 = cpu_seconds(pids), time.monotonic()
        rss_max = 0.0
        timeline = []
        last_cpu, last_t = cpu0, w0
        while time.time() < t_end and self.proc.poll() is None:
            rss = 0
            for pid in pids:
                with contextlib.suppress(Exception):
                    rss += proc_status(pid, "VmRSS")
            rss_max = max(rss_max, rss / MiB)
            established, queued = port_sockets(self.port)
            now_cpu, now_t = cpu_seconds(pids), time.monotonic()
            timeline.append({"t": round(now_t - w0, 1), "established": established, "accept_queue": sum(queued),
                             "accept_queues": queued,
                             "rss_mib": round(rss / MiB, 1),
                             "cores": round((now_cpu - last_cpu) / (now_t - last_t), 2) if now_t > last_t else None})
            last_cpu, last_t = now_cpu, now_t
            time.sleep(min(1.0, max(0.0, t_end - time.time())))
        cpu = cpu_seconds(pids) - cpu0
        wall = time.monotonic() - w0
        now = workers_of(self.proc.pid) if self.proc.poll() is None else []
        return {"cpu_s": round(cpu, 2), "cores": round(cpu / wall, 2) if wall else None,
                "rss_sum_max_mib": round(rss_max, 1), "workers_before": pids, "workers_after": now,
                "workers_replaced": sorted(set(pids) - set(now)), "server_exited": self.proc.poll(),
                "established_max": max((x["established"] for x in timeline), default=None),
                "accept_queue_max": max((x["accept_queue"] for x in timeline), default=None),
                "accept_queue_median": quantile(sorted(x["accept_queue"] for x in timeline), 0.5),
                "accept_queue_end": timeline[-1]["accept_queue"] if timeline else None,
                "timeline": timeline}

    def baseline(self) -> dict:
        t_start = time.time() + 1.0  # the client process's start-up (imports) before its clock starts
        p, out = self.spawn("client", self.client_spec("baseline", t_start, self.args.baseline_seconds), "baseline")
        log(f"baseline: the well-behaved client alone for {self.args.baseline_seconds:g} s")
        server = self.watch_server(t_start, t_start + self.args.baseline_seconds)
        result = self.collect(p, out, "baseline", t_start + self.args.baseline_seconds)
        result["server"] = server
        return result

    def attack(self) -> tuple[dict, dict]:
        a = self.args
        t_attack = time.time() + 1.0
        t_client = t_attack + a.ramp
        t_end = t_client + a.seconds
        spec = {
            "port": self.port, "sha": self.sha, "addr": a.attacker_addr, "t_start": t_attack, "t_end": t_end + 0.5,
            "ramp": a.ramp,
            "attackers": a.attackers, "reopen_delay": a.reopen_delay, "connect_concurrency": a.connect_concurrency,
            "slowloris": a.slowloris, "slowloris_interval": a.slowloris_interval, "silent": a.silent,
            "huge_mib": a.huge_mib, "huge_timeout": a.huge_timeout, "huge_pause": a.huge_pause,
            "flood_connections": a.flood, "flood_path": a.flood_path, "flood_rate": a.flood_rate,
            "flood_timeout": a.flood_timeout,
        }
        pa, out_a = self.spawn("attack", spec, "attack")
        pc, out_c = self.spawn("client", self.client_spec("attack", t_client, a.seconds), "client-attack")
        log(f"attack: {', '.join(a.attackers)} from now, the well-behaved client after {a.ramp:g} s "
            f"of ramp, for {a.seconds:g} s")
        server = self.watch_server(t_client, t_end)
        client = self.collect(pc, out_c, "client-attack", t_end)
        client["server"] = server
        attack = self.collect(pa, out_a, "attack", t_end)
        return client, attack

    def after(self) -> dict:
        """Does the service answer normally once the attackers are gone?"""
        time.sleep(1.0)
        times, statuses = [], collections.Counter()
        for _ in range(20):
            t = time.perf_counter()
            try:
                status, body, _ = request(self.port, "GET", f"/{self.sha}", timeout=10)
                statuses[str(status) if body == self.blob or status != 200 else "200_wrong_body"] += 1
            except Exception as e:  # noqa: BLE001
                statuses[err_kind(e)] += 1
            times.append(time.perf_counter() - t)
        peak = {}
        for pid in workers_of(self.proc.pid) if self.proc.poll() is None else []:
            with contextlib.suppress(Exception):
                peak[pid] = round(proc_status(pid, "VmHWM") / MiB, 1)
        return {"get_statuses": dict(statuses), "get_ms": latency_summary(times), "worker_peak_rss_mib": peak}

    def server_log(self) -> dict:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        levels = collections.Counter()
        messages = collections.Counter()
        for line in text.splitlines():
            for level in ("WARNING", "ERROR", "CRITICAL"):
                if f" {level} " in line:
                    levels[level] += 1
                    messages[line.split(f" {level} ", 1)[1][:160]] += 1
        return {"lines": len(text.splitlines()), "by_level": dict(levels), "tracebacks": text.count("Traceback"),
                "top_messages": messages.most_common(8)}


# ---- report ---------------------------------------------------------------------------------------

def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and x != x:
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def counts(d: dict) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def report(args: argparse.Namespace, base: dict, under: dict | None, attack: dict | None, soak_cpu: dict,
           after: dict | None, slog: dict) -> str:
    def ratio(a, b):
        return f"{b / a:.2f}" if a and b is not None else "-"

    cols = ["well-behaved GET 4 KiB", "baseline", "under attack", "attack / baseline"]
    u = under or {}
    ul, bl = u.get("latency_ms", {}), base["latency_ms"]
    rows = [["requests/s answered 200 (offered " + (f"{args.get_rate:g}" if args.get_rate else "unpaced") + ")",
             fmt(base["ok_per_s"]), fmt(u.get("ok_per_s")), ratio(base["ok_per_s"], u.get("ok_per_s"))]]
    for key, name in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")):
        rows.append([f"latency {name} (ms)", fmt(bl.get(key)), fmt(ul.get(key)), ratio(bl.get(key), ul.get(key))])
    rows.append(["errors by kind", counts(base["errors"]), counts(u.get("errors", {})) if under else "-", ""])
    rows.append(["new connections (connect p99 / max ms)",
                 f"{base['new_connections']} ({fmt(base['connect_ms']['p99'])} / {fmt(base['connect_ms']['max'])})",
                 f"{u['new_connections']} ({fmt(u['connect_ms']['p99'])} / {fmt(u['connect_ms']['max'])})"
                 if under else "-", ""])
    def conns(s: dict) -> str:
        return (f"{fmt(s['established_max'])}; {fmt(s['accept_queue_max'])} / {fmt(s['accept_queue_median'])} / "
                f"{fmt(s['accept_queue_end'])}")

    rows.append(["TCP connections to stor: established, max; not accepted by a worker, max / median / at end",
                 conns(base["server"]), conns(u["server"]) if under else "-", ""])
    rows.append(["stor workers' CPU (cores) / RSS of all (MiB, max)",
                 f"{fmt(base['server']['cores'])} / {fmt(base['server']['rss_sum_max_mib'])}",
                 f"{fmt(u['server']['cores'])} / {fmt(u['server']['rss_sum_max_mib'])}" if under else "-", ""])
    out = [table(cols, rows)]
    if attack:
        arows = []
        for name, a in attack["attackers"].items():
            lived = a["lived_s_closed"]
            end = a["open_at_end"]
            ans = a["answer_s"]
            answers = counts(a["answers"])
            if name == "flood":
                answers += f" ({fmt(a['answers_per_s'])}/s)"
            arows.append([
                name,
                f"{a['connections_made']:,}" + (f" (wanted {a['wanted']:,})" if a["wanted"] > 1 else ""),
                counts(a["connect_errors"]),
                f"{fmt(lived['median'])} / {fmt(lived['max'])} (n {lived['n']:,})" if lived["n"] else "none closed",
                f"{end['n']:,} (age {fmt(end['median'])} / {fmt(end['max'])})" if end["n"] else "0",
                counts({k: v for k, v in a["outcomes"].items() if k != "open_at_end"}),
                answers,
                f"{fmt(ans['median'])} / {fmt(ans['max'])}" if ans["n"] else "-",
            ])
        out.append(table(["attacker", "connections made", "connect errors", "lived s, closed (median / max)",
                          "open at end (age median / max s)", "how the closed ones ended", "answers by status",
                          "answer s (median / max)"], arows))
        for name, a in attack["attackers"].items():
            if name.startswith("huge"):
                tries = a.get("tries", [])
                sent = sorted(t["sent_bytes"] for t in tries)
                whole = sum(1 for t in tries if t["whole_head_sent"])
                out.append(f"{name}: {len(tries)} tries, whole head written in {whole}; bytes handed to the "
                           f"kernel before the answer or the end (socket buffers included): median "
                           f"{fmt(quantile(sent, 0.5))}, max {fmt(sent[-1] if sent else None)}")
            if name == "slowloris":
                out.append(f"slowloris: one byte every {args.slowloris_interval:g} s; bytes sent per connection "
                           f"median {fmt(a['bytes_sent']['median'])}, max {fmt(a['bytes_sent']['max'])}")
            if name == "flood":
                out.append(f"flood: answers by path {a.get('answers_by_path')}")
    cpu_line = (f"soak's own CPU: client {soak_cpu['client_s']:.2f} s, attackers {soak_cpu['attack_s']:.2f} s, "
                f"orchestrator {soak_cpu['main_s']:.2f} s over {soak_cpu['wall_s']:.0f} s "
                f"(attack phase: {soak_cpu['attack_phase_cores']:.2f} cores of the machine's {os.cpu_count()})")
    out.append(cpu_line)
    if under:
        s = under["server"]
        out.append(f"stor workers {s['workers_before']}: replaced during the attack {s['workers_replaced'] or 'none'}"
                   + (f"; server exited {s['server_exited']}" if s["server_exited"] is not None else ""))
    if after:
        out.append(f"after the attack: 20 GETs {counts(after['get_statuses'])}, p50 {fmt(after['get_ms']['p50'])} ms, "
                   f"max {fmt(after['get_ms']['max'])} ms; workers' peak RSS (MiB) {after['worker_peak_rss_mib']}")
    out.append(f"stor log: {slog['lines']} lines, {counts(slog['by_level'])}, {slog['tracebacks']} tracebacks")
    return "\n".join(out)


# ---- main -------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Hostile-client soak of stor serve (see bench/README.md).")
    p.add_argument("--seconds", type=float, default=60, help="length of the attack phase (default 60)")
    p.add_argument("--baseline-seconds", type=float, default=10,
                   help="the well-behaved client alone, first, for reference (default 10)")
    p.add_argument("--only", help=f"comma-separated attackers: {','.join(ATTACKERS)} (default all at once)")
    p.add_argument("--workers", type=int, default=2, help="stor serve --workers (default 2)")
    p.add_argument("--config-extra", type=json.loads, default={},
                   help="JSON object merged (recursively) into the generated config, e.g. "
                        "'{\"http\": {\"max_connections\": 1000}}'")
    p.add_argument("--serve-args", action="append", default=[],
                   help="extra stor serve arguments, shell-split (repeatable), e.g. '--limit-concurrency 500'")
    p.add_argument("--log-level", default="info", help="stor serve --log-level (default info)")
    p.add_argument("--stor-src", metavar="DIR",
                   help="run `python -m stor` with DIR first on PYTHONPATH instead of the installed stor, e.g. a "
                        "`git archive` of another commit, to compare code under the same soak")
    p.add_argument("--get-connections", type=int, default=4, help="well-behaved keep-alive connections (default 4)")
    p.add_argument("--get-rate", type=float, default=200,
                   help="well-behaved requests/s offered, over all its connections (default 200; 0: as fast as "
                        "answers come, which makes the client a load of its own)")
    p.add_argument("--get-timeout", type=float, default=10, help="seconds before a GET counts as an error (default 10)")
    p.add_argument("--slowloris", type=int, default=300, help="slowloris connections (default 300)")
    p.add_argument("--slowloris-interval", type=float, default=5, help="seconds between its bytes (default 5)")
    p.add_argument("--silent", type=int, default=2000, help="silent connections kept open (default 2000)")
    p.add_argument("--huge-mib", default="1,64",
                   help="sizes in MiB of the one-header requests, one client each (default 1,64)")
    p.add_argument("--huge-timeout", type=float, default=30, help="seconds a huge-header try waits for its answer")
    p.add_argument("--huge-pause", type=float, default=0.2, help="seconds between huge-header tries (default 0.2)")
    p.add_argument("--flood", type=int, default=64, help="wrong-password connections (default 64)")
    p.add_argument("--flood-path", choices=["sha", "exists", "both"], default="sha",
                   help="what the flood POSTs: /<sha> (default), /exists, or both alternately")
    p.add_argument("--flood-rate", type=float, default=0,
                   help="cap on the flood's requests/s (default 0: as fast as answers come)")
    p.add_argument("--flood-timeout", type=float, default=60, help="seconds a flood request waits for its answer")
    p.add_argument("--bcrypt-cost", type=int, default=12, help="cost of the bcrypt user's hash (default 12)")
    p.add_argument("--ramp", type=float, default=2.0,
                   help="seconds over which attackers open their connections, before the client starts (default 2)")
    p.add_argument("--reopen-delay", type=float, default=0.5,
                   help="seconds an attacker waits before reopening a closed connection (default 0.5)")
    p.add_argument("--connect-concurrency", type=int, default=200, help="attackers' connects in flight at most")
    p.add_argument("--client-addr", default="127.0.0.1",
                   help="source address of the well-behaved client (default 127.0.0.1)")
    p.add_argument("--attacker-addr", default="127.0.0.2",
                   help="source address of every attacker (default 127.0.0.2: another client than the "
                        "well-behaved one, for limits kept per address; the same address tests sharing one)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--tmpdir", help="where to make the temporary directory (default: the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (config, logs)")
    p.add_argument("--role", choices=["client", "attack"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.role:
        return a
    a.attackers = [s.strip() for s in a.only.split(",")] if a.only else list(ATTACKERS)
    for s in a.attackers:
        if s not in ATTACKERS:
            p.error(f"--only: unknown attacker {s!r} (attackers: {', '.join(ATTACKERS)})")
    a.serve_args = [x for s in a.serve_args for x in shlex.split(s)]
    a.huge_mib = [float(x) for x in a.huge_mib.split(",") if x.strip()]
    if not isinstance(a.config_extra, dict):
        p.error("--config-extra must be a JSON object")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return role_main(args)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    nofile = raise_nofile()  # inherited by the client and attacker processes
    need = args.slowloris + args.silent + args.flood + args.get_connections + 100
    if nofile[0] < need:
        log(f"warning: RLIMIT_NOFILE is {nofile[0]}, the attackers want about {need} sockets")
    procs = Procs()
    work: Path | None = None
    started = dt.datetime.now()
    wall0, cpu0 = time.monotonic(), own_cpu()
    try:
        work = Path(tempfile.mkdtemp(prefix="stor-soak-", dir=args.tmpdir))
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
        soak = Soak(args, procs, work)
        log(f"working in {work}; a cost-{args.bcrypt_cost} bcrypt hash took {soak.bcrypt_ms:.0f} ms here")
        if float(loadavg[0]) > 0.5:
            soak.note(f"the machine is busy before the soak (load average {' '.join(loadavg)}): figures will be noisy")
        soak.start_stor()
        checks = soak.prepare()
        base = soak.baseline()
        log(f"baseline: {base['ok_per_s']} req/s, p99 {base['latency_ms']['p99']} ms, errors {base['errors'] or 'none'}")
        attack_cpu0, attack_wall0 = own_cpu(), time.monotonic()
        under, attack = soak.attack()
        attack_wall = time.monotonic() - attack_wall0
        main_attack_cpu = own_cpu() - attack_cpu0
        after = soak.after()
        procs.stop(soak.proc)
        slog = soak.server_log()
        soak_cpu = {
            "client_s": base["process_cpu_s"] + under["process_cpu_s"],
            "attack_s": attack["process_cpu_s"],
            "main_s": round(own_cpu() - cpu0, 3),
            "wall_s": round(time.monotonic() - wall0, 1),
            "attack_phase_cores": round((under["process_cpu_s"] + attack["process_cpu_s"] + main_attack_cpu)
                                        / attack_wall, 3),
        }
        if soak_cpu["attack_phase_cores"] > 0.25:
            soak.note(f"the soak itself used {soak_cpu['attack_phase_cores']:.2f} cores during the attack "
                      f"(the flood answered at {attack['attackers'].get('flood', {}).get('answers_per_s', '-')}/s): "
                      "it competes with stor for the CPU; --flood-rate caps the flood")
        text = report(args, base, under, attack, soak_cpu, after, slog)
        print()
        print(text, flush=True)
        for n in soak.notes:
            print(f"note: {n}")
        result = {
            "started": started.isoformat(timespec="seconds"),
            "finished": dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([sys.executable, *sys.argv]),
            "stor_command": soak.stor_cmd,
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                        "loadavg_at_start": loadavg, "nofile": list(nofile)},
            "versions": versions(args.stor_src),
            "settings": {k: v for k, v in vars(args).items() if k not in ("role", "spec", "out")},
            "config": {k: v for k, v in soak.config.items() if k != "auth"} | {"auth": "(one bcrypt user)"},
            "bcrypt_hash_ms_here": round(soak.bcrypt_ms, 1),
            "sha": soak.sha,
            "checks": checks,
            "baseline": base,
            "attack_client": under,
            "attack": attack,
            "after": after,
            "soak_cpu": soak_cpu,
            "stor_log": slog,
            "notes": soak.notes,
            "table_text": text,
        }
        save_results("soak-", result, args.json, started, indent=1)
        return 0
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        procs.stop_all()
        if work is not None:
            if args.keep:
                log(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)


def versions(stor_src: str | None) -> dict:
    out = {}
    if stor_src:
        out["stor_src"] = str(Path(stor_src).resolve())
    else:
        try:
            import stor

            out["stor"] = stor.__version__
            out["stor_path"] = str(Path(stor.__file__).parent)
        except Exception:  # noqa: BLE001
            out["stor"] = "?"
    from importlib.metadata import version

    for mod in ("uvicorn", "uvloop", "httptools", "bcrypt"):
        with contextlib.suppress(Exception):
            out[mod] = version(mod)
    git = subprocess.run(["git", "-C", str(BENCH.parent), "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    out["git"] = git.stdout.strip() if git.returncode == 0 else "?"
    return out


if __name__ == "__main__":
    sys.exit(main())
