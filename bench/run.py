#!/usr/bin/env python3
"""Benchmark stor against nginx and against the raw hash and disk speeds, in one run.

    python bench/run.py                  # full: workers 2 then 1, 3 runs of 5 s each (~10 min)
    python bench/run.py --quick          # smoke: 1 run of 2 s each
    python bench/run.py --workers 2 --only get,head

See bench/README.md for what is measured, how, and against what.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
LUA = BENCH / "lua"

AUTH_USER, AUTH_PASS = "bench", "bench-" + secrets.token_hex(8)
AUTH_HEADER = "Basic " + base64.b64encode(f"{AUTH_USER}:{AUTH_PASS}".encode()).decode()

KiB, MiB = 1 << 10, 1 << 20
GET_SIZES = [("4k", 4 * KiB, "4 KiB"), ("1m", 1 * MiB, "1 MiB"), ("64m", 64 * MiB, "64 MiB")]
SMALL_POST = 64 * KiB
GROUPS = ["get", "head", "miss", "existing", "post", "big"]
GROUP_ALIASES = {"404": "miss", "dup": "existing", "256m": "big", "rss": "big"}

# Targets of issue 4: (key, comparison, threshold).
TARGETS = {
    "get_4k": (">=", 0.35),
    "get_1m": (">=", 0.7),
    "get_64m": (">=", 0.7),
    "head": (">=", 0.35),
    "miss": (">=", 0.35),
    "post_c16": (">=", 0.8),
    "post_big": (">=", 0.8),
    "rss_get_64m": ("<", 100.0),
    "rss_post_big": ("<", 100.0),
}


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- processes ---------------------------------------------------------------

class Procs:
    """Every process this script starts, so that all of them are stopped on any exit."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def start(self, cmd: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.live.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Its own session: the group id is its pid; this takes any child left behind (uvicorn workers, nginx workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)
        if p in self.live:
            self.live.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.live)):
            self.stop(p, grace=5.0)

    def run(self, cmd: list[str], timeout: float) -> str:
        """Runs a short-lived tool (wrk, loadgen) to the end; its stdout."""
        p = self.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(p, signal.SIGKILL, 1)
            raise BenchError(f"{cmd[0]} did not finish within {timeout:.0f} s")
        finally:
            if p in self.live and p.poll() is not None:
                self.live.remove(p)
        if p.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} exited {p.returncode}: {err.strip()[-500:]}")
        if err.strip():
            log(f"{Path(cmd[0]).name} stderr: {err.strip()[:300]}")
        return out


def children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def proc_status(pid: int, key: str) -> int:
    """A kB figure from /proc/PID/status (VmHWM, VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no {key} for pid {pid}")


def reset_peak_rss(pid: int) -> None:
    # Linux >= 4.0: writing 5 resets VmHWM to the current RSS (root, or the process's owner).
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise BenchError(f"{what} did not listen on port {port} within {timeout:.0f} s")


# ---- tools ---------------------------------------------------------------------

def which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin", "/usr/local/sbin") if (p := Path(d) / name).exists()), None
    )


def ensure_tools(no_install: bool) -> dict[str, str]:
    wanted = {"wrk": "wrk", "nginx": "nginx", "cc": "gcc"}
    missing = [pkg for tool, pkg in wanted.items() if which(tool) is None]
    if missing:
        if no_install:
            raise BenchError(f"missing {', '.join(missing)} and --no-install given")
        log(f"installing {' '.join(missing)} with apt-get")
        # Debian starts nginx's own service on install unless policy-rc.d says no: keep it from
        # grabbing port 80 behind our back (a temporary policy, removed after, if there was none).
        policy = Path("/usr/sbin/policy-rc.d")
        made_policy = not policy.exists()
        try:
            if made_policy:
                policy.write_text("#!/bin/sh\nexit 101\n")
                policy.chmod(0o755)
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
        finally:
            if made_policy:
                policy.unlink(missing_ok=True)
    tools = {tool: which(tool) for tool in wanted}
    for tool, path in tools.items():
        if path is None:
            raise BenchError(f"{tool} not found even after installing")
    stor = shutil.which("stor")
    tools["stor"] = stor or ""
    return tools  # type: ignore[return-value]


def tool_versions(tools: dict[str, str]) -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        r = subprocess.run(cmd, capture_output=True, text=True)
        return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() else "?"

    versions = {"wrk": first_line([tools["wrk"], "--version"]), "nginx": first_line([tools["nginx"], "-v"])}
    try:
        import stor

        versions["stor"] = stor.__version__
    except Exception:  # noqa: BLE001 - informational only
        versions["stor"] = "?"
    for mod in ("uvicorn", "starlette", "fastapi", "uvloop", "httptools"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:  # noqa: BLE001
            pass
    git = subprocess.run(["git", "-C", str(BENCH.parent), "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    versions["git"] = git.stdout.strip() if git.returncode == 0 else "?"
    return versions


# ---- storage layout and fixtures ----------------------------------------------

def load_errors(r: dict) -> dict:
    """A load generator's error counts that are not zero (wrk's and loadgen's summaries alike)."""
    return {k: v for k, v in r["errors"].items() if v}


def rel_path(sha: str) -> str:
    s = sha.upper()
    return f"{s[0:2]}/{s[2:4]}/{s[4:6]}/{s}.dat"


def stor_cmd() -> list[str]:
    """`python -m stor` with the interpreter running the bench: a checkout and an installed package
    alike, and no launcher shim's start-up in a figure that includes the client's."""
    return [sys.executable, "-m", "stor"]


def wait_for_workers(p: subprocess.Popen, port: int, workers: int, what: str, log_path: Path) -> list[int]:
    """The worker pids of a `stor serve` once GET / answers and every worker is there (the children
    of `stor serve`, multiprocessing's resource tracker aside; with --workers 1 the process itself)."""
    deadline = time.monotonic() + 60
    while True:
        if p.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{what} did not start; see {log_path}")
        if Bench._answers(port):
            pids = Bench._workers(p.pid)
            if len(pids) == workers:
                return pids
        time.sleep(0.2)


def save_results(prefix: str, result: dict, also: str | None, started: dt.datetime, indent: int = 2) -> None:
    """The run's JSON in bench/results/<prefix><timestamp>.json (and in `also`, --json), and where it went."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{prefix}{started.strftime('%Y%m%d-%H%M%S')}.json"
    for p in [path] + ([Path(also)] if also else []):
        p.write_text(json.dumps(result, indent=indent, default=str) + "\n")
    print(f"\nresults: {path}" + (f" and {also}" if also else ""))


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durably(directory: str, root: str) -> None:
    """Creates directory and its missing parents below root, fsyncing each new entry's parent (as stor does)."""
    missing = []
    d = directory
    while d != root and not os.path.isdir(d):
        missing.append(d)
        d = os.path.dirname(d)
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue
        fsync_dir(os.path.dirname(d))


def place_blob(roots: list[str], data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    for root in roots:
        final = os.path.join(root, rel_path(sha))
        os.makedirs(os.path.dirname(final), exist_ok=True)
        with open(final, "wb") as f:
            f.write(data)
    return sha


class UniqueBodies:
    """64 KiB bodies never seen before: a shared random prefix plus a 16-character unique suffix.

    The sha-256 of each is the prefix's hash state copied and fed the suffix, so
    tens of thousands of names cost milliseconds, and a load generator only
    concatenates prefix and suffix.
    """

    def __init__(self, size: int, rng: random.Random) -> None:
        self.prefix = rng.randbytes(size - 16)
        self._state = hashlib.sha256(self.prefix)
        self._rng = rng

    def batch(self, count: int) -> list[tuple[str, bytes]]:
        nonce = self._rng.getrandbits(32)
        out = []
        for i in range(count):
            suffix = f"{nonce:08x}{i:08x}".encode()
            h = self._state.copy()
            h.update(suffix)
            out.append((h.hexdigest(), suffix))
        return out


# ---- measurement ---------------------------------------------------------------

@dataclass
class Series:
    """Repeated measurements of one figure."""

    unit: str
    values: list[float] = field(default_factory=list)
    extra: list[dict] = field(default_factory=list)

    def add(self, value: float, **extra) -> None:
        self.values.append(value)
        self.extra.append(extra)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def to_json(self) -> dict:
        return {
            "unit": self.unit,
            "median": self.median,
            "min": min(self.values) if self.values else None,
            "max": max(self.values) if self.values else None,
            "runs": self.values,
            "details": self.extra,
        }


class Bench:
    def __init__(self, args: argparse.Namespace, tools: dict[str, str], procs: Procs, work: Path) -> None:
        self.args = args
        self.tools = tools
        self.procs = procs
        self.work = work
        self.warnings: list[str] = []
        self.rng = random.Random(secrets.randbits(64))
        self.mirrors = [str(work / "a"), str(work / "b")]
        self.raw_roots = [str(work / "raw-a"), str(work / "raw-b")]
        for d in self.mirrors + self.raw_roots:
            os.makedirs(d)
        for d in self.raw_roots:
            os.makedirs(os.path.join(d, ".tmp"))
        self.config = work / "config.json"
        self.config.write_text(json.dumps({
            "storage_pairs": [self.mirrors],
            "require_mount_points": False,
            "basic_auth": f"{AUTH_USER}:{AUTH_PASS}",
        }, indent=2))
        self.loadgen = str(work / "loadgen")
        subprocess.run([tools["cc"], "-O2", "-pthread", "-o", self.loadgen, str(BENCH / "loadgen.c")], check=True)
        self.nginx_port = 0
        self.nginx: subprocess.Popen | None = None
        self.floor: tuple[subprocess.Popen, int, list[int]] | None = None  # the floor app, per round
        self.server = "uvicorn"  # stor's one server; named in the floor's figures

    def warn(self, msg: str) -> None:
        log("WARNING: " + msg)
        self.warnings.append(msg)

    # -- fixtures --

    def make_fixtures(self) -> None:
        log("writing test blobs")
        self.blobs = {key: place_blob(self.mirrors, self.rng.randbytes(size)) for key, size, _ in GET_SIZES}
        self.existing_body = self.rng.randbytes(SMALL_POST)
        self.existing_sha = place_blob(self.mirrors, self.existing_body)
        (self.work / "existing.body").write_bytes(self.existing_body)
        while True:
            self.missing_sha = secrets.token_hex(32)
            if not os.path.exists(os.path.join(self.mirrors[0], rel_path(self.missing_sha))):
                break
        self.small = UniqueBodies(SMALL_POST, self.rng)
        (self.work / "post.prefix").write_bytes(self.small.prefix)
        self.big_src = self.work / "big.src"
        with open(self.big_src, "wb") as f:
            for _ in range(self.args.big_mib):
                f.write(self.rng.randbytes(MiB))
        os.sync()

    # -- servers --

    def start_nginx(self) -> None:
        ng = self.work / "nginx"
        (ng / "tmp").mkdir(parents=True)
        self.nginx_port = free_port()
        conf = ng / "nginx.conf"
        conf.write_text(f"""# minimal nginx serving the first mirror, for reference figures
worker_processes 2;
daemon off;
master_process on;
pid {ng}/nginx.pid;
error_log {ng}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    log_not_found off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    client_body_temp_path {ng}/tmp;
    proxy_temp_path {ng}/tmp;
    fastcgi_temp_path {ng}/tmp;
    uwsgi_temp_path {ng}/tmp;
    scgi_temp_path {ng}/tmp;
    server {{
        listen 127.0.0.1:{self.nginx_port};
        root {self.mirrors[0]};
    }}
}}
""")
        out = open(ng / "stderr.log", "wb")
        self.nginx = self.procs.start([self.tools["nginx"], "-p", str(ng), "-c", str(conf)], stdout=out, stderr=out)
        wait_port(self.nginx_port, self.nginx, "nginx")
        deadline = time.monotonic() + 10
        while len(children(self.nginx.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        log(f"nginx on port {self.nginx_port} (pid {self.nginx.pid}, workers {children(self.nginx.pid)})")

    def nginx_pids(self) -> list[int]:
        assert self.nginx is not None
        return [self.nginx.pid, *children(self.nginx.pid)]

    def start_stor(self, workers: int) -> tuple[subprocess.Popen, int, list[int]]:
        port = free_port()
        cmd = [self.tools["stor"]] if self.tools["stor"] else stor_cmd()
        cmd += ["serve", "--config", str(self.config), "--port", str(port), "--workers", str(workers),
                "--log-level", self.args.log_level]
        if self.args.no_fast_path:
            cmd += ["--no-fast-path"]
        log_path = self.work / f"stor-w{workers}.log"
        out = open(log_path, "wb")
        p = self.procs.start(cmd, stdout=out, stderr=out, cwd=self.work)
        wait_port(port, p, "stor serve")
        pids = wait_for_workers(p, port, workers, f"stor serve --workers {workers}", log_path)
        time.sleep(1.0)  # the other workers finish their start-up; every test warms up too
        if self._workers(p.pid) != pids:
            raise BenchError(f"stor serve --workers {workers}: worker processes changed after start-up")
        path = "ASGI path only (--no-fast-path)" if self.args.no_fast_path else "fast path on"
        log(f"stor serve --workers {workers} on port {port} (pid {p.pid}, workers {pids}, {path})")
        return p, port, pids

    @staticmethod
    def _workers(pid: int) -> list[int]:
        return sorted(c for c in children(pid) if "resource_tracker" not in cmdline(c)) or [pid]

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/")
            ok = c.getresponse().status == 200
            c.close()
            return ok
        except OSError:
            return False

    # -- sanity checks (before timing: every figure must be of a correct answer) --

    def check(self, stor_port: int) -> None:
        def req(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            c.close()
            return r.status, r.getheader("content-length"), data

        for key, size, _ in GET_SIZES:
            sha = self.blobs[key]
            for port, path in ((stor_port, f"/{sha}"), (self.nginx_port, f"/{rel_path(sha)}")):
                status, _, data = req(port, "GET", path)
                if status != 200 or hashlib.sha256(data).hexdigest() != sha:
                    raise BenchError(f"GET {path} on port {port}: {status}, {len(data)} bytes, not the blob")
                status, length, data = req(port, "HEAD", path)
                if status != 200 or length != str(size) or data:
                    raise BenchError(f"HEAD {path} on port {port}: {status}, content-length {length}")
        for port, path in ((stor_port, f"/{self.missing_sha}"), (self.nginx_port, f"/{rel_path(self.missing_sha)}")):
            status, _, _ = req(port, "GET", path)
            if status != 404:
                raise BenchError(f"GET {path} on port {port}: {status}, not 404")
        auth = {"Authorization": AUTH_HEADER, "Content-Type": "application/octet-stream"}
        status, _, _ = req(stor_port, "POST", f"/{self.existing_sha}", self.existing_body, auth)
        if status != 200:
            raise BenchError(f"POST of an existing blob answered {status}, not 200")
        (sha, suffix), = self.small.batch(1)
        status, _, data = req(stor_port, "POST", f"/{sha}", self.small.prefix + suffix, auth)
        if status != 201:
            raise BenchError(f"POST of a new blob answered {status}, not 201: {data[:200]!r}")

    # -- load generators --

    def wrk(self, url: str, seconds: int, threads: int, conns: int, script: Path, *script_args: str) -> dict:
        cmd = [self.tools["wrk"], f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "60s",
               "-s", str(script), url]
        if script_args:
            cmd += ["--", *script_args]
        out = self.procs.run(cmd, timeout=seconds + 120)
        for line in out.splitlines():
            if line.startswith("BENCHJSON "):
                r = json.loads(line[len("BENCHJSON "):])
                r["duration_s"] = r["duration_us"] / 1e6
                return r
        raise BenchError(f"no summary from wrk: {out[-500:]}")

    def loadgen_run(self, port: int, path: str, method: str, seconds: int,
                    conns: int | None = None, threads: int | None = None, *post_args: str) -> dict:
        out = self.procs.run([self.loadgen, "127.0.0.1", str(port), path, method,
                              str(conns or self.args.connections), str(threads or self.args.threads), str(seconds),
                              *post_args], timeout=seconds + 60)
        return json.loads(out)

    def get_client(self, size: int) -> str:
        if self.args.get_client != "auto":
            return self.args.get_client
        # wrk reads bodies 8 KiB at a time into user space: past ~1.5 GB/s it, not the server, is the limit.
        return "wrk" if size < MiB else "loadgen"

    def get_run(self, port: int, path: str, size: int, seconds: int) -> dict:
        """One GET load run: requests, bytes, duration_s, problems (a dict, empty when all went well)."""
        if self.get_client(size) == "wrk":
            r = self.wrk(f"http://127.0.0.1:{port}{path}", seconds, self.args.threads, self.args.connections,
                         LUA / "get.lua")
            r["problems"] = load_errors(r)
            return r
        r = self.loadgen_run(port, path, "GET", seconds)
        r["problems"] = load_errors(r)
        if r["status"]["2xx"] != r["requests"]:
            r["problems"]["non-2xx"] = r["requests"] - r["status"]["2xx"]
        return r

    def check_wrk(self, what: str, r: dict, expect_status_errors: bool = False) -> None:
        e = r["errors"]
        bad = {k: v for k, v in e.items() if v and not (k == "status" and expect_status_errors)}
        if expect_status_errors and e["status"] != r["requests"]:
            bad["non-404"] = r["requests"] - e["status"]
        if bad:
            self.warn(f"{what}: errors {bad} in {r['requests']} requests")

    # -- benchmarks --

    def interleaved(self, fns: list, runs: int) -> None:
        """Runs each fn `runs` times, alternating their order so drift hits all alike."""
        for i in range(runs):
            for fn in (fns if i % 2 == 0 else list(reversed(fns))):
                fn()

    def bench_get(self, round_: dict, stor_port: int, pids: list[int]) -> None:
        a = self.args
        for key, size, label in GET_SIZES:
            sha = self.blobs[key]
            stor_path, ng_path = f"/{sha}", f"/{rel_path(sha)}"
            s_rps, s_mbs = Series("req/s"), Series("MB/s")
            n_rps, n_mbs = Series("req/s"), Series("MB/s")
            client = self.get_client(size)
            log(f"GET {label} ({client}): warm-up")
            for port, path in ((stor_port, stor_path), (self.nginx_port, ng_path)):
                self.get_run(port, path, size, a.warmup)

            def one(port: int, path: str, rps: Series, mbs: Series, who: str, server_pids: list[int]) -> None:
                cpu0 = cpu_seconds(server_pids)
                r = self.get_run(port, path, size, a.duration)
                cpu = cpu_seconds(server_pids) - cpu0
                if r["problems"]:
                    self.warn(f"GET {label} {who}: {r['problems']} in {r['requests']} requests")
                rps.add(r["requests"] / r["duration_s"], server_cpu_cores=cpu / r["duration_s"], client=client,
                        **({"p99_ms": r["latency_p99_us"] / 1e3} if "latency_p99_us" in r else {}))
                mbs.add(r["bytes"] / r["duration_s"] / 1e6)
                log(f"GET {label} {who}: {rps.values[-1]:,.0f} req/s, {mbs.values[-1]:,.0f} MB/s, "
                    f"server CPU {cpu / r['duration_s']:.2f} cores")

            if key == "64m":
                for pid in pids:
                    reset_peak_rss(pid)
                rss_before = [proc_status(pid, "VmRSS") / MiB for pid in pids]
            self.interleaved([lambda: one(stor_port, stor_path, s_rps, s_mbs, "stor", pids),
                              lambda: one(self.nginx_port, ng_path, n_rps, n_mbs, "nginx", self.nginx_pids())],
                             a.runs)
            if key == "64m":
                rss = Series("MiB")
                peaks = [proc_status(pid, "VmHWM") / MiB for pid in pids]
                rss.add(max(peaks), per_worker=peaks, rss_before=rss_before)
                log(f"GET {label}: peak RSS per worker {', '.join(f'{p:.0f}' for p in peaks)} MiB")
                round_["rss_get_64m"] = {"stor": rss, "reference": self.idle_rss, "reference_name": "at idle"}
            if key == "4k":
                round_["get_4k"] = {"stor": s_rps, "reference": n_rps, "reference_name": "nginx",
                                    "also": {"stor_MB/s": s_mbs, "nginx_MB/s": n_mbs}}
            else:
                round_[f"get_{key}"] = {"stor": s_mbs, "reference": n_mbs, "reference_name": "nginx",
                                        "also": {"stor_req/s": s_rps, "nginx_req/s": n_rps}}

    def bench_head(self, round_: dict, stor_port: int, pids: list[int]) -> None:
        a = self.args
        sha = self.blobs["4k"]
        s, n = Series("req/s"), Series("req/s")
        for port, path in ((stor_port, f"/{sha}"), (self.nginx_port, f"/{rel_path(sha)}")):
            self.loadgen_run(port, path, "HEAD", a.warmup)

        def one(port: int, path: str, series: Series, who: str, server_pids: list[int]) -> None:
            cpu0 = cpu_seconds(server_pids)
            r = self.loadgen_run(port, path, "HEAD", a.duration)
            cpu = cpu_seconds(server_pids) - cpu0
            if r["status"]["2xx"] != r["requests"] or any(r["errors"].values()):
                self.warn(f"HEAD {who}: {r}")
            series.add(r["requests"] / r["duration_s"], server_cpu_cores=cpu / r["duration_s"])
            log(f"HEAD {who}: {series.values[-1]:,.0f} req/s, server CPU {cpu / r['duration_s']:.2f} cores")

        assert self.floor is not None
        _, floor_port, floor_pids = self.floor
        f = Series("req/s")
        self.loadgen_run(floor_port, f"/{sha}", "HEAD", a.warmup)
        self.interleaved([lambda: one(stor_port, f"/{sha}", s, "stor", pids),
                          lambda: one(self.nginx_port, f"/{rel_path(sha)}", n, "nginx", self.nginx_pids()),
                          lambda: one(floor_port, f"/{sha}", f, f"{self.server} floor", floor_pids)], a.runs)
        round_["head"] = {"stor": s, "reference": n, "reference_name": "nginx HEAD"}
        round_["head_floor"] = {"stor": f, "reference": n, "reference_name": "nginx HEAD"}

    def bench_miss(self, round_: dict, stor_port: int, pids: list[int]) -> None:
        a = self.args
        stor_url = f"http://127.0.0.1:{stor_port}/{self.missing_sha}"
        ng_url = f"http://127.0.0.1:{self.nginx_port}/{rel_path(self.missing_sha)}"
        s, n = Series("req/s"), Series("req/s")
        for url in (stor_url, ng_url):
            self.wrk(url, a.warmup, a.threads, a.connections, LUA / "get.lua")

        def one(url: str, series: Series, who: str, server_pids: list[int]) -> None:
            cpu0 = cpu_seconds(server_pids)
            r = self.wrk(url, a.duration, a.threads, a.connections, LUA / "get.lua")
            cpu = cpu_seconds(server_pids) - cpu0
            self.check_wrk(f"GET missing {who}", r, expect_status_errors=True)
            series.add(r["requests"] / r["duration_s"], server_cpu_cores=cpu / r["duration_s"])
            log(f"GET missing (404) {who}: {series.values[-1]:,.0f} req/s, server CPU {cpu / r['duration_s']:.2f} cores")

        assert self.floor is not None
        _, floor_port, floor_pids = self.floor
        floor_url = f"http://127.0.0.1:{floor_port}/{self.missing_sha}"
        f = Series("req/s")
        self.wrk(floor_url, a.warmup, a.threads, a.connections, LUA / "get.lua")
        self.interleaved([lambda: one(stor_url, s, "stor", pids),
                          lambda: one(ng_url, n, "nginx", self.nginx_pids()),
                          lambda: one(floor_url, f, f"{self.server} floor", floor_pids)], a.runs)
        round_["miss"] = {"stor": s, "reference": n, "reference_name": "nginx 404"}
        round_["miss_floor"] = {"stor": f, "reference": n, "reference_name": "nginx 404"}

    def bench_existing(self, round_: dict, stor_port: int, pids: list[int]) -> None:
        a = self.args
        url = f"http://127.0.0.1:{stor_port}/{self.existing_sha}"
        args = ("existing", str(self.work / "existing.body"), self.existing_sha, AUTH_HEADER, str(a.threads))
        self.wrk(url, a.warmup, a.threads, a.connections, LUA / "post.lua", *args)
        s = Series("req/s")
        for _ in range(a.runs):
            cpu0 = cpu_seconds(pids)
            r = self.wrk(url, a.duration, a.threads, a.connections, LUA / "post.lua", *args)
            cpu = cpu_seconds(pids) - cpu0
            self.check_wrk("POST existing", r)
            if r["status"]["200"] != r["requests"]:
                self.warn(f"POST existing: statuses {r['status']} in {r['requests']} requests")
            s.add(r["requests"] / r["duration_s"], server_cpu_cores=cpu / r["duration_s"])
            log(f"POST existing 64 KiB c{a.connections}: {s.values[-1]:,.0f} req/s, server CPU {cpu / r['duration_s']:.2f} cores")
        round_["existing"] = {"stor": s}

    def raw_small(self, threads: int, seconds: float) -> tuple[int, float]:
        """Blobs/s of a plain Python loop storing new 64 KiB blobs on both raw mirrors as stor must."""
        names = iter(self.small.batch(max(20000, int(seconds * 20000))))
        lock = threading.Lock()
        done = [0]
        prefix = self.small.prefix
        roots = self.raw_roots
        deadline = time.perf_counter() + seconds
        errors: list[BaseException] = []
        stop = threading.Event()

        def worker() -> None:
            try:
                while time.perf_counter() < deadline and not stop.is_set():
                    with lock:
                        sha, suffix = next(names)
                    data = prefix + suffix
                    rel = rel_path(sha)
                    fds = []
                    for root in roots:
                        tmp = os.path.join(root, ".tmp", f"{sha.upper()}.{secrets.token_hex(4)}.part")
                        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                        write_all(fd, data)
                        fds.append((fd, tmp))
                    for fd, _ in fds:
                        os.fsync(fd)
                    finals = [os.path.join(root, rel) for root in roots]
                    for root, final in zip(roots, finals):
                        make_dirs_durably(os.path.dirname(final), root)
                    for (fd, tmp), final in zip(fds, finals):
                        os.rename(tmp, final)
                        fsync_dir(os.path.dirname(final))
                        os.close(fd)
                    with lock:
                        done[0] += 1
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        start = time.perf_counter()
        ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        try:
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        except BaseException:
            # Interrupted: let the threads finish their blob before the directories are removed.
            stop.set()
            for t in ts:
                t.join()
            raise
        elapsed = time.perf_counter() - start
        if errors:
            raise BenchError(f"raw write reference failed: {errors[0]!r}")
        return done[0], elapsed

    def bench_post(self, round_: dict, stor_port: int, pids: list[int]) -> None:
        a = self.args
        url = f"http://127.0.0.1:{stor_port}/"
        for conc, threads, key in ((1, 1, "post_c1"), (a.connections, a.threads, "post_c16")):
            s, raw = Series("blobs/s"), Series("blobs/s")

            def one_stor(conc=conc, threads=threads, s=s) -> None:
                names_file = self.work / "post.names"
                names = self.small.batch(max(20000, a.duration * 8000))
                names_file.write_text("".join(f"{sha} {suffix.decode()}\n" for sha, suffix in names))
                os.sync()
                cpu0 = cpu_seconds(pids)
                post_args = (str(self.work / "post.prefix"), str(names_file), AUTH_HEADER)
                if a.post_client == "loadgen":
                    r = self.loadgen_run(stor_port, "/", "POST", a.duration, conc, threads, *post_args)
                else:
                    r = self.wrk(url, a.duration, threads, conc, LUA / "post.lua", "new", *post_args, str(threads))
                created = r["status"]["201"]
                problems = load_errors(r)
                cpu = cpu_seconds(pids) - cpu0
                if problems:
                    self.warn(f"POST new c{conc}: errors {problems} in {r['requests']} requests")
                if created != r["requests"] or r["wrapped"]:
                    self.warn(f"POST new c{conc}: statuses {r['status']}, wrapped {r['wrapped']}")
                s.add(created / r["duration_s"], p99_ms=r["latency_p99_us"] / 1e3,
                      server_cpu_cores=cpu / r["duration_s"], client=a.post_client)
                log(f"POST new 64 KiB c{conc} stor: {s.values[-1]:,.0f} blobs/s, server CPU {cpu / r['duration_s']:.2f} cores")

            def one_raw(conc=conc, raw=raw) -> None:
                os.sync()
                cpu0 = time.process_time()
                n, elapsed = self.raw_small(conc, a.duration)
                cpu = time.process_time() - cpu0
                raw.add(n / elapsed, cpu_cores=cpu / elapsed)
                log(f"POST new 64 KiB c{conc} raw ({conc} thread{'s' if conc > 1 else ''}): {raw.values[-1]:,.0f} blobs/s, "
                    f"CPU {cpu / elapsed:.2f} cores")

            self.interleaved([one_stor, one_raw], a.runs)
            round_[key] = {"stor": s, "reference": raw,
                           "reference_name": f"raw Python, {conc} thread{'s' if conc > 1 else ''}"}

    def big_body(self) -> str:
        """Makes the big source file a new blob (its last 16 bytes unique); its sha-256."""
        size = self.args.big_mib * MiB
        with open(self.big_src, "r+b") as f:
            f.seek(size - 16)
            f.write(secrets.token_bytes(16))
        h = hashlib.sha256()
        buf = bytearray(MiB)
        with open(self.big_src, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(memoryview(buf)[:n])
        return h.hexdigest()

    def post_big_stor(self, port: int, sha: str) -> float:
        size = self.args.big_mib * MiB
        head = (f"POST /{sha} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {AUTH_HEADER}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n").encode()
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock, open(self.big_src, "rb") as f:
            sock.sendall(head)
            sock.sendfile(f)  # the kernel copies: the client costs next to nothing
            resp = b""
            while b"\r\n\r\n" not in resp:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                resp += chunk
            header, _, body = resp.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in header.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
        elapsed = time.perf_counter() - start
        status = int(header.split(b" ")[1]) if header.startswith(b"HTTP/") else 0
        if status != 201:
            raise BenchError(f"POST of {self.args.big_mib} MiB answered {status}: {body[:200]!r}")
        return elapsed

    def post_big_raw(self, sha: str) -> float:
        """Hashes the same bytes and writes them to both raw mirrors with fsync, rename, directory fsync."""
        start = time.perf_counter()
        h = hashlib.sha256()
        fds = []
        for root in self.raw_roots:
            tmp = os.path.join(root, ".tmp", f"{sha.upper()}.{secrets.token_hex(4)}.part")
            fds.append((os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), tmp))
        buf = bytearray(MiB)
        with open(self.big_src, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                chunk = memoryview(buf)[:n]
                h.update(chunk)
                for fd, _ in fds:
                    write_all(fd, chunk)
        for fd, _ in fds:
            os.fsync(fd)
        if h.hexdigest() != sha:
            raise BenchError("raw reference: sha-256 differs")
        for root, (fd, tmp) in zip(self.raw_roots, fds):
            final = os.path.join(root, rel_path(sha))
            make_dirs_durably(os.path.dirname(final), root)
            os.rename(tmp, final)
            fsync_dir(os.path.dirname(final))
            os.close(fd)
        return time.perf_counter() - start

    def bench_big(self, round_: dict, stor_port: int, pids: list[int]) -> None:
        a = self.args
        size = a.big_mib * MiB
        s, raw, rss = Series("MB/s"), Series("MB/s"), Series("MiB")

        def one_stor() -> None:
            sha = self.big_body()
            os.sync()
            for pid in pids:
                reset_peak_rss(pid)
            rss_before = [proc_status(pid, "VmRSS") / MiB for pid in pids]
            cpu0 = cpu_seconds(pids)
            elapsed = self.post_big_stor(stor_port, sha)
            cpu = cpu_seconds(pids) - cpu0
            peaks = [proc_status(pid, "VmHWM") / MiB for pid in pids]
            s.add(size / elapsed / 1e6, seconds=elapsed, server_cpu_cores=cpu / elapsed)
            rss.add(max(peaks), per_worker=peaks, rss_before=rss_before)
            for root in self.mirrors:
                os.unlink(os.path.join(root, rel_path(sha)))
            log(f"POST {a.big_mib} MiB stor: {s.values[-1]:,.0f} MB/s ({elapsed:.2f} s), "
                f"server CPU {cpu / elapsed:.2f} cores, peak RSS per worker {', '.join(f'{p:.0f}' for p in peaks)} MiB")

        def one_raw() -> None:
            sha = self.big_body()
            os.sync()
            cpu0 = time.process_time()
            elapsed = self.post_big_raw(sha)
            cpu = time.process_time() - cpu0
            raw.add(size / elapsed / 1e6, seconds=elapsed, cpu_cores=cpu / elapsed)
            for root in self.raw_roots:
                os.unlink(os.path.join(root, rel_path(sha)))
            log(f"POST {a.big_mib} MiB raw (hash + write both + fsync): {raw.values[-1]:,.0f} MB/s ({elapsed:.2f} s), "
                f"CPU {cpu / elapsed:.2f} cores")

        self.interleaved([one_stor, one_raw], a.big_runs)
        round_["post_big"] = {"stor": s, "reference": raw, "reference_name": "raw hash+write both"}
        round_["rss_post_big"] = {"stor": rss, "reference": self.idle_rss, "reference_name": "at idle"}

    def start_floor(self, workers: int) -> tuple[subprocess.Popen, int, list[int]]:
        """uvicorn answering with no work (bench/floor_app.py), with stor's worker count."""
        port = free_port()
        # Through stor's own worker supervisor (a listening socket per worker), as stor runs.
        config = dict(app="floor_app:asgi_app", http="floor_app:FloorProtocol", loop="uvloop",
                      log_level="warning", access_log=False, server_header=False)
        cmd = [sys.executable, "-c", "import sys; from stor import workers; "
               f"sys.exit(workers.run({config!r}, workers.reserve([('127.0.0.1', {port})]), {workers}))"]
        out = open(self.work / f"floor-w{workers}.log", "wb")
        p = self.procs.start(cmd, stdout=out, stderr=out, cwd=BENCH)
        wait_port(port, p, f"{self.server} floor app")
        deadline = time.monotonic() + 30
        while not (self._answers(port) and len(self._workers(p.pid)) == workers):
            if p.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{self.server} floor app did not start; see {self.work / f'floor-w{workers}.log'}")
            time.sleep(0.2)
        return p, port, self._workers(p.pid)

    def run_round(self, workers: int, groups: list[str]) -> dict:
        proc, port, pids = self.start_stor(workers)
        self.floor = self.start_floor(workers) if {"head", "miss"} & set(groups) else None
        try:
            self.check(port)
            round_: dict = {}
            self.idle_rss = Series("MiB")
            rss = [proc_status(pid, "VmRSS") / MiB for pid in pids]
            self.idle_rss.add(max(rss), per_worker=rss)
            log(f"RSS per worker after start-up and checks: {', '.join(f'{r:.0f}' for r in rss)} MiB")
            steps = {"get": self.bench_get, "head": self.bench_head, "miss": self.bench_miss,
                     "existing": self.bench_existing, "post": self.bench_post, "big": self.bench_big}
            for g in GROUPS:
                if g in groups:
                    steps[g](round_, port, pids)
            if proc.poll() is not None:
                raise BenchError(f"stor serve exited with {proc.returncode} during the round")
            return round_
        finally:
            self.procs.stop(proc)
            if self.floor is not None:
                self.procs.stop(self.floor[0])


# ---- report ---------------------------------------------------------------------

LABELS = {
    "get_4k": ("GET 4 KiB hit", "req/s"),
    "get_1m": ("GET 1 MiB", "MB/s"),
    "get_64m": ("GET 64 MiB", "MB/s"),
    "head": ("HEAD hit", "req/s"),
    "miss": ("GET missing (404)", "req/s"),
    "head_floor": ("HEAD, {server} answering with no work (floor)", "req/s"),
    "miss_floor": ("404, {server} answering with no work (floor)", "req/s"),
    "existing": ("POST existing 64 KiB, c{c}", "req/s"),
    "post_c1": ("POST new 64 KiB, c1", "blobs/s"),
    "post_c16": ("POST new 64 KiB, c{c}", "blobs/s"),
    "post_big": ("POST new {big} MiB", "MB/s"),
    "rss_get_64m": ("peak RSS/worker, GET 64 MiB", "MiB"),
    "rss_post_big": ("peak RSS/worker, POST {big} MiB", "MiB"),
}
ORDER = ["get_4k", "get_1m", "get_64m", "head", "head_floor", "miss", "miss_floor", "post_c1", "post_c16", "post_big", "existing",
         "rss_get_64m", "rss_post_big"]


def fmt(x: float) -> str:
    if x != x:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cell(series: Series | None) -> str:
    if series is None or not series.values:
        return "-"
    if len(series.values) == 1:
        return fmt(series.values[0])
    return f"{fmt(series.median)} [{fmt(min(series.values))}-{fmt(max(series.values))}]"


def build_rows(rounds: list[dict], args: argparse.Namespace) -> list[dict]:
    rows = []
    for rnd in rounds:
        for key in ORDER:
            if key not in rnd["results"]:
                continue
            r = rnd["results"][key]
            label, unit = LABELS[key]
            label = label.format(c=args.connections, big=args.big_mib, server=rnd["server"])
            stor, ref = r["stor"], r.get("reference")
            ratio = (stor.median / ref.median if ref is not None and ref.values and ref.median
                     and not key.startswith("rss") else None)
            target = TARGETS.get(key)
            verdict = "-"
            if target:
                op, threshold = target
                value = stor.median if key.startswith("rss") else ratio
                if value is not None:
                    verdict = "PASS" if (value >= threshold if op == ">=" else value < threshold) else "FAIL"
            ref_name = r.get("reference_name", "")
            rows.append({
                "key": key,
                "workers": rnd["workers"],
                "benchmark": f"w{rnd['workers']} {label} ({unit})",
                "stor": cell(stor),
                "reference": f"{cell(ref)} {ref_name}".strip() if ref is not None else "-",
                "ratio": f"{ratio:.3f}" if ratio is not None else "-",
                "target": (f"ratio {target[0]} {target[1]}" if not key.startswith("rss") else f"< {target[1]:.0f} MiB")
                if target else "-",
                "verdict": verdict,
                "ratio_value": ratio,
            })
    return rows


def print_table(rows: list[dict]) -> str:
    cols = [("benchmark", "benchmark"), ("stor", "stor"), ("reference", "reference"), ("ratio", "ratio"),
            ("target", "target"), ("verdict", "pass/fail")]
    widths = [max(len(title), *(len(r[k]) for r in rows)) for k, title in cols]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line([t for _, t in cols]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line([r[k] for k, _ in cols]) for r in rows]
    text = "\n".join(out)
    print(text, flush=True)
    return text


# ---- main -----------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark stor against nginx and the raw disk, in one run.")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 run of 2 s each")
    p.add_argument("--workers", type=int, action="append",
                   help="stor worker count for a round (repeatable; default: a round with 2, then one with 1)")
    p.add_argument("--only", help=f"comma-separated groups: {','.join(GROUPS)} (default all)")
    p.add_argument("--runs", type=int, help="runs per figure; the median is reported (default 3, --quick 1)")
    p.add_argument("--big-runs", type=int,
                   help="runs of the big upload, whose fsync-bound times vary most (default 5, --quick 1)")
    p.add_argument("--duration", type=int, help="seconds per load-generator run (default 5, --quick 2)")
    p.add_argument("--warmup", type=int, help="seconds of warm-up per server and test (default 1)")
    p.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    p.add_argument("--threads", type=int, default=2, help="load-generator threads (default 2)")
    p.add_argument("--get-client", choices=["auto", "wrk", "loadgen"], default="auto",
                   help="load generator for GETs (default auto: wrk below 1 MiB, bench/loadgen.c from 1 MiB)")
    p.add_argument("--post-client", choices=["loadgen", "wrk"], default="loadgen",
                   help="load generator for new small uploads (default bench/loadgen.c: wrk's Lua builds each "
                        "64 KiB body anew, about 0.5 ms of CPU per upload on the cores the server needs)")
    p.add_argument("--big-mib", type=int, default=256, help="size of the big upload in MiB (default 256)")
    p.add_argument("--no-fast-path", action="store_true",
                   help="pass --no-fast-path to stor serve: every request takes uvicorn's ASGI path "
                        "(to measure that path; the floor is unchanged)")
    p.add_argument("--log-level", default="info", help="stor serve --log-level (default info, as a user runs it)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--tmpdir", help="where to make the storage directories (default: the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    p.add_argument("--no-install", action="store_true", help="fail instead of apt-get installing wrk/nginx/gcc")
    a = p.parse_args(argv)
    a.runs = a.runs or (1 if a.quick else 3)
    a.big_runs = a.big_runs or (1 if a.quick else max(5, a.runs))
    a.duration = a.duration or (2 if a.quick else 5)
    a.warmup = a.warmup or 1
    a.workers = a.workers or [2, 1]
    groups = []
    for g in (a.only.split(",") if a.only else GROUPS):
        g = GROUP_ALIASES.get(g.strip(), g.strip())
        if g not in GROUPS:
            p.error(f"--only: unknown group {g!r} (groups: {', '.join(GROUPS)})")
        groups.append(g)
    a.groups = groups
    if a.threads > a.connections:
        p.error("--threads must not exceed --connections")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("note: not root: apt-get and resetting peak RSS (/proc/PID/clear_refs) may fail")

    def on_term(signum, frame):  # SIGTERM stops like Ctrl-C: through the finally below
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)
    # Explicitly: a shell that starts us in the background makes us inherit SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    procs = Procs()
    work: Path | None = None
    started = dt.datetime.now()
    try:
        tools = ensure_tools(args.no_install)
        work = Path(tempfile.mkdtemp(prefix="stor-bench-", dir=args.tmpdir))
        work.chmod(0o755)  # nginx's workers run as nobody when started by root
        log(f"working in {work}")
        bench = Bench(args, tools, procs, work)
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
        if float(loadavg[0]) > 0.5:
            bench.warn(f"the machine is busy before the bench (load average {' '.join(loadavg)}): "
                       "figures will be noisy")
        bench.make_fixtures()
        bench.start_nginx()
        rounds = []
        for w in args.workers:
            log(f"round: stor serve --workers {w}")
            results = bench.run_round(w, args.groups)
            rounds.append({"workers": w, "server": bench.server, "results": results})
        rows = build_rows(rounds, args)
        print()
        table = print_table(rows)
        for w in bench.warnings:
            print(f"warning: {w}")
        result = {
            "started": started.isoformat(timespec="seconds"),
            "finished": dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([sys.executable, *sys.argv]),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                        "loadavg_at_start": loadavg},
            "versions": tool_versions(tools),
            "settings": {k: getattr(args, k) for k in ("runs", "big_runs", "duration", "warmup", "connections", "threads",
                                                       "big_mib", "log_level", "workers", "groups", "get_client",
                                                       "no_fast_path")},
            "rounds": [{"workers": r["workers"], "server": r["server"],
                        "results": {k: {"stor": v["stor"].to_json(),
                                        "reference": v["reference"].to_json() if v.get("reference") else None,
                                        "reference_name": v.get("reference_name"),
                                        "also": {n: s.to_json() for n, s in v.get("also", {}).items()}}
                                    for k, v in r["results"].items()}} for r in rounds],
            "table": [{k: v for k, v in row.items()} for row in rows],
            "table_text": table,
            "warnings": bench.warnings,
        }
        save_results("", result, args.json, started)
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
                # Tens of thousands of uploaded blobs and their directories: this takes a minute or
                # more on a busy disk (and more on a filesystem mounted with `discard`).
                log(f"removing {work}")
                t0 = time.monotonic()
                shutil.rmtree(work, ignore_errors=True)
                log(f"removed in {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
