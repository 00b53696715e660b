#!/usr/bin/env python3
"""Benchmark the cost of stor's integrity checks (issue 17): verified reads, and scrub throughput.

    python bench/integrity.py                 # full: GETs with --workers 2 then 1, scrub over 2 GiB a mirror (~11 min)
    python bench/integrity.py --quick         # smoke: 1 run of 2 s per GET figure, scrub over 256 MiB a mirror
    python bench/integrity.py --only get --workers 2
    python bench/integrity.py --only scrub --scrub-mib 1024

Two parts, each against a reference measured in the same run:

- get: the same blobs (4 KiB, 64 MiB, on both mirrors of one pair) served by
  `stor serve` with "integrity": {"verify_reads": "off"} and with "always"
  (4 KiB also with the hot layer off, "hot": {"blobs": 0}, and with a
  fraction), runs interleaved; the ratio is always (or the fraction) over off.
- scrub: `stor scrub --config F --workers N --json` over a fixture of blobs
  against the raw read+hash rate of the very same files (Python hashlib, a
  thread per CPU; `sha256sum` through `xargs -P<ncpu>`; the faster is the
  reference), with the page cache dropped first and warm; and one run with
  --rate, its measured rate against the one asked for.

See bench/README.md, "Integrity: verified reads and scrub".
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import mmap
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import (  # noqa: E402
    AUTH_PASS, AUTH_USER, Bench, BenchError, Procs, Series, cell, cpu_seconds, free_port, log, place_blob,
    print_table, rel_path, save_results, stor_cmd, wait_for_workers, wait_port, which,
)

KiB, MiB = 1 << 10, 1 << 20
GROUPS = ["get", "scrub"]
NCPU = len(os.sched_getaffinity(0))

# The servers of the GET part: name -> (the config's "integrity" and "hot" sections, what the table calls it).
# 4 KiB is measured on every one of them, 64 MiB on the first two (64 MiB is above hot.max_blob_bytes:
# the hot layer never holds it, so its setting makes no difference there).
SERVERS = {
    "off": ({"verify_reads": "off"}, {}, "verify off, hot layer on (default)"),
    "always": ({"verify_reads": "always"}, {}, "verify always, hot layer on (default)"),
    "off-nohot": ({"verify_reads": "off"}, {"blobs": 0}, "verify off, hot layer off"),
    "always-nohot": ({"verify_reads": "always"}, {"blobs": 0}, "verify always, hot layer off"),
    "fraction-nohot": (None, {"blobs": 0}, "verify {fraction}, hot layer off"),  # --fraction
}
# (figure, blob key, server measured, its reference server)
GET_FIGURES = [
    ("get_4k_hot", "4k", "always", "off"),
    ("get_4k_nohot", "4k", "always-nohot", "off-nohot"),
    ("get_4k_fraction", "4k", "fraction-nohot", "off-nohot"),
    ("get_64m", "64m", "always", "off"),
]
BLOBS = {"4k": 4 * KiB, "64m": 64 * MiB}

SCRUB_TARGET = 0.8  # issue 17: scrub >= 0.8 x the raw read+hash rate, without --rate
RATE_TOLERANCE = 0.10  # issue 17: the rate limit honoured within 10 %


def drop_caches() -> None:
    """Every clean page out of the page cache (root): the next read of a file comes from the disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class MachineCPU:
    """CPU time of the whole machine (every process, /proc/stat) from creation: what else ran beside a figure."""

    def __init__(self) -> None:
        self.t0, self.busy0 = time.monotonic(), self._busy()

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...: all but idle and iowait
        return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")

    def cores(self) -> float:
        return (self._busy() - self.busy0) / max(1e-6, time.monotonic() - self.t0)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class IntegrityBench(Bench):
    """run.py's Bench for its load-generator helpers (loadgen_run, get_run, wrk, interleaved, warn, _workers)."""

    def __init__(self, args: argparse.Namespace, tools: dict[str, str], procs: Procs, work: Path) -> None:
        # Not Bench.__init__: no nginx, no raw upload mirrors; only what the helpers use.
        self.args = args
        self.tools = tools
        self.procs = procs
        self.work = work
        self.warnings: list[str] = []
        self.rng = random.Random(secrets.randbits(64))
        self.loadgen = str(work / "loadgen")
        subprocess.run([tools["cc"], "-O2", "-pthread", "-o", self.loadgen, str(BENCH / "loadgen.c")], check=True)

    # ---- part 1: GET cost of verified reads -------------------------------------------

    def config_for(self, name: str, mirrors: list[str]) -> Path:
        integrity, hot, _ = SERVERS[name]
        if integrity is None:
            integrity = {"verify_reads": self.args.fraction}
        path = self.work / f"config-{name}.json"
        path.write_text(json.dumps({
            "storage_pairs": [mirrors],
            "require_mount_points": False,
            "basic_auth": f"{AUTH_USER}:{AUTH_PASS}",
            "integrity": integrity,
            **({"hot": hot} if hot else {}),
        }, indent=2))
        return path

    def start_server(self, name: str, workers: int, mirrors: list[str]) -> dict:
        """`python -m stor serve --config F --port P --workers W`; up when GET / answers and every worker is there."""
        config = self.config_for(name, mirrors)
        port = free_port()
        cmd = stor_cmd() + ["serve", "--config", str(config), "--port", str(port), "--workers", str(workers),
                            "--log-level", self.args.log_level]
        log_path = self.work / f"stor-w{workers}-{name}.log"
        out = open(log_path, "wb")
        p = self.procs.start(cmd, stdout=out, stderr=out, cwd=self.work)
        wait_port(port, p, f"stor serve [{name}]")
        pids = wait_for_workers(p, port, workers, f"stor serve --workers {workers} [{name}]", log_path)
        log(f"stor serve --workers {workers} [{name}] on port {port} (pid {p.pid}, workers {pids})")
        return {"name": name, "proc": p, "port": port, "pids": pids, "log": log_path, "cmd": cmd}

    @staticmethod
    def fetch(port: int, sha: str) -> tuple[int, bytes]:
        """GET /<sha>; (status, body), (0, partial) when the connection was cut short."""
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            c.request("GET", f"/{sha}")
            r = c.getresponse()
            try:
                return r.status, r.read()
            except http.client.IncompleteRead as e:
                return 0, e.partial
        except (OSError, http.client.HTTPException):
            return 0, b""
        finally:
            c.close()

    def check_server(self, srv: dict) -> None:
        """Each blob whole; the log says which verification it runs; a verifying server refuses a corrupt blob."""
        for key, sha in self.blobs.items():
            status, data = self.fetch(srv["port"], sha)
            if status != 200 or hashlib.sha256(data).hexdigest() != sha:
                raise BenchError(f"[{srv['name']}] GET {key}: {status}, {len(data)} bytes, not the blob")
        time.sleep(0.3)  # the start-up lines of every worker are written
        text = srv["log"].read_text(errors="replace")
        verifying = SERVERS[srv["name"]][0] != {"verify_reads": "off"}
        if verifying != ("verified reads:" in text):
            raise BenchError(f"[{srv['name']}] the log {'lacks' if verifying else 'has'} the 'verified reads' line: "
                             f"the setting did not take")
        if srv["name"].startswith("always"):
            # Both copies of a 4 KiB blob with one byte flipped (placed anew: the last check quarantined them):
            # a verifying server must not answer 200 with those bytes.
            sha = place_blob(self.mirrors, self.canary)
            for root in self.mirrors:
                with open(os.path.join(root, rel_path(sha)), "r+b") as f:
                    f.seek(100)
                    b = f.read(1)
                    f.seek(100)
                    f.write(bytes([b[0] ^ 0xFF]))
            status, data = self.fetch(srv["port"], sha)
            if status == 200 and len(data) == len(self.canary):
                raise BenchError(f"[{srv['name']}] served a corrupt blob whole with 200: verification is not on")
            log(f"[{srv['name']}] a corrupt 4 KiB blob: answered {status or 'cut'} ({len(data)} bytes), not 200")

    def bench_get(self, workers: int) -> dict:
        a = self.args
        names = [n for n in SERVERS if n != "fraction-nohot" or a.fraction]
        servers = {}
        try:
            for n in names:
                servers[n] = self.start_server(n, workers, self.mirrors)
            time.sleep(1.0)  # the other workers finish their start-up
            for srv in servers.values():
                if self._workers(srv["proc"].pid) != srv["pids"]:
                    raise BenchError(f"[{srv['name']}] worker processes changed after start-up")
                self.check_server(srv)
            results: dict = {}
            for key, size in BLOBS.items():
                on = [n for n in names if key == "4k" or n in ("off", "always")]
                sha = self.blobs[key]
                rps = {n: Series("req/s") for n in on}
                mbs = {n: Series("MB/s") for n in on}
                # The servers' CPU per unit of work: less disturbed by the load generator sharing the cores.
                cpu_unit = {n: Series("us/request" if key == "4k" else "s/GB") for n in on}
                client = self.get_client(size)
                log(f"w{workers} GET {key} ({client}): warm-up of {', '.join(on)}")
                for n in on:
                    self.get_run(servers[n]["port"], f"/{sha}", size, a.warmup)

                def one(n: str, key: str = key, sha: str = sha, size: int = size, client: str = client,
                        rps: dict = rps, mbs: dict = mbs, cpu_unit: dict = cpu_unit) -> None:
                    srv = servers[n]
                    cpu0, machine = cpu_seconds(srv["pids"]), MachineCPU()
                    r = self.get_run(srv["port"], f"/{sha}", size, a.duration)
                    cpu, busy = cpu_seconds(srv["pids"]) - cpu0, machine.cores()
                    if r["problems"]:
                        self.warn(f"w{workers} GET {key} [{n}]: {r['problems']} in {r['requests']} requests")
                    d = r["duration_s"]
                    rps[n].add(r["requests"] / d, server_cpu_cores=cpu / d, client=client, machine_cpu_cores=busy,
                               server_cpu_us_per_request=cpu / max(1, r["requests"]) * 1e6,
                               **({"p99_ms": r["latency_p99_us"] / 1e3} if "latency_p99_us" in r else {}))
                    mbs[n].add(r["bytes"] / d / 1e6)
                    cpu_unit[n].add(cpu / max(1, r["requests"]) * 1e6 if key == "4k" else cpu / max(1, r["bytes"]) * 1e9)
                    log(f"w{workers} GET {key} [{n}]: {rps[n].values[-1]:,.0f} req/s, {mbs[n].values[-1]:,.0f} MB/s, "
                        f"server CPU {cpu / d:.2f} cores, machine {busy:.2f}")

                self.interleaved([lambda n=n: one(n) for n in on], a.runs)
                for fig, blob, measured, ref in GET_FIGURES:
                    if blob != key or measured not in on:
                        continue
                    main, other = (rps, mbs) if key == "4k" else (mbs, rps)
                    results[fig] = {"stor": main[measured], "reference": main[ref],
                                    "reference_name": SERVERS[ref][2] if key == "4k" else "verify off",
                                    "also": {f"{measured} {other[measured].unit}": other[measured],
                                             f"{ref} {other[ref].unit}": other[ref]},
                                    "cpu": cpu_unit[measured], "cpu_reference": cpu_unit[ref]}
                # Every server's figures for this blob, for the JSON (the off/hot-off one is in two rows).
                results[f"all_{key}"] = {n: (rps[n] if key == "4k" else mbs[n]) for n in on}
                results[f"all_{key}_cpu"] = cpu_unit
            for srv in servers.values():
                if srv["proc"].poll() is not None:
                    raise BenchError(f"[{srv['name']}] stor serve exited with {srv['proc'].returncode} during the round")
            return results
        finally:
            for srv in servers.values():
                self.procs.stop(srv["proc"])

    def make_get_fixtures(self) -> None:
        self.mirrors = [str(self.work / "get" / "a"), str(self.work / "get" / "b")]
        for d in self.mirrors:
            os.makedirs(d)
        log("writing the GET blobs (4 KiB, 64 MiB) on both mirrors")
        self.blobs = {key: place_blob(self.mirrors, self.rng.randbytes(size)) for key, size in BLOBS.items()}
        self.canary = self.rng.randbytes(4 * KiB)
        os.sync()

    # ---- part 2: scrub throughput ----------------------------------------------------

    def make_scrub_fixtures(self) -> None:
        a = self.args
        self.scrub_mirrors = [str(self.work / "scrub" / "a"), str(self.work / "scrub" / "b")]
        for d in self.scrub_mirrors:
            os.makedirs(d)
        per_mirror = a.scrub_mib * MiB
        small_bytes = int(per_mirror * a.small_share)
        small_size = a.small_kib * KiB
        n_small = small_bytes // small_size
        sizes = [small_size] * n_small
        big_left = per_mirror - n_small * small_size
        lo, hi = a.big_min_mib * MiB, a.big_max_mib * MiB
        while big_left >= 16:
            s = min(big_left, self.rng.randrange(lo, hi + 1, 4096))
            if 0 < big_left - s < lo:  # no runt at the end: the last one or two take what is left
                s = big_left if big_left <= hi else big_left - lo
            sizes.append(s)
            big_left -= s
        self.rng.shuffle(sizes)
        # Random bytes once; each blob is a slice of them behind a 16-byte unique head (a distinct sha each).
        pool = self.rng.randbytes(hi + MiB)
        log(f"writing the scrub fixture: {n_small:,} x {a.small_kib} KiB + {len(sizes) - n_small} blobs of "
            f"{a.big_min_mib}-{a.big_max_mib} MiB = {sum(sizes) / MiB:,.0f} MiB per mirror, on both")
        t0 = time.monotonic()
        self.scrub_files: list[tuple[str, str, int]] = []  # (path, sha, size) of every copy
        for i, size in enumerate(sizes):
            off = self.rng.randrange(0, len(pool) - size + 1)
            data = f"{i:08x}".encode() + secrets.token_bytes(4).hex().encode() + memoryview(pool)[off:off + size - 16]
            sha = place_blob(self.scrub_mirrors, data)
            for root in self.scrub_mirrors:
                self.scrub_files.append((os.path.join(root, rel_path(sha)), sha, size))
        os.sync()
        # The raw references read the files in the order a walk of the directories finds them.
        self.scrub_files.sort()
        self.scrub_blobs = len(sizes)
        self.scrub_bytes = sum(s for _, _, s in self.scrub_files)
        log(f"  {len(self.scrub_files):,} files, {self.scrub_bytes / 1e9:.2f} GB in {time.monotonic() - t0:.0f} s")
        self.scrub_config = self.work / "config-scrub.json"
        self.scrub_config.write_text(json.dumps({
            "storage_pairs": [self.scrub_mirrors], "require_mount_points": False,
        }, indent=2))
        empty = [str(self.work / "scrub-empty" / "a"), str(self.work / "scrub-empty" / "b")]
        for d in empty:
            os.makedirs(d)
        self.empty_config = self.work / "config-scrub-empty.json"
        self.empty_config.write_text(json.dumps({"storage_pairs": [empty], "require_mount_points": False}, indent=2))

    def raw_hashlib(self, direct: bool = False) -> tuple[float, float]:
        """Every file read and hashed by hashlib, a thread per CPU over the list; (seconds, CPU seconds).

        direct: read with O_DIRECT (from the disk, whatever the page cache holds), as stor scrub reads.
        """
        files = self.scrub_files
        nxt = [0]
        lock = threading.Lock()
        bad: list[str] = []
        errors: list[BaseException] = []
        flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)

        def worker() -> None:
            buf = mmap.mmap(-1, MiB)  # page-aligned, as O_DIRECT wants
            view = memoryview(buf)
            try:
                while True:
                    with lock:
                        i = nxt[0]
                        nxt[0] += 1
                    if i >= len(files):
                        return
                    path, sha, _ = files[i]
                    h = hashlib.sha256()
                    fd = os.open(path, flags)
                    try:
                        offset = 0
                        while n := os.preadv(fd, [view], offset):
                            h.update(view[:n])
                            offset += n
                            if n < MiB:
                                break
                    finally:
                        os.close(fd)
                    if h.hexdigest() != sha:
                        bad.append(path)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        cpu0 = time.process_time()
        t0 = time.perf_counter()
        ts = [threading.Thread(target=worker, daemon=True) for _ in range(NCPU)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise BenchError(f"hashlib reference failed: {errors[0]!r}")
        if bad:
            raise BenchError(f"hashlib reference: {len(bad)} files do not hash to their name, e.g. {bad[0]}")
        return elapsed, time.process_time() - cpu0

    def sha256sum_cmd(self) -> str:
        roots = " ".join(self.scrub_mirrors)
        return (f"find {roots} -type f -name '*.dat' -print0 | "
                f"xargs -0 -P{NCPU} -n{self.args.xargs_n} sha256sum")

    def raw_sha256sum(self) -> tuple[float, float]:
        """`find | xargs -0 -P<ncpu> sha256sum` over both mirrors; (seconds, CPU seconds); every sum checked."""
        cpu0 = children_cpu()
        t0 = time.perf_counter()
        out = self.procs.run(["bash", "-o", "pipefail", "-c", self.sha256sum_cmd()], timeout=3600)
        elapsed = time.perf_counter() - t0
        cpu = children_cpu() - cpu0
        lines = out.splitlines()
        if len(lines) != len(self.scrub_files):
            raise BenchError(f"sha256sum: {len(lines)} lines for {len(self.scrub_files)} files")
        for line in lines:
            digest, _, path = line.partition("  ")
            if Path(path).stem.lower() != digest:
                raise BenchError(f"sha256sum: {path} hashes to {digest}")
        return elapsed, cpu

    def scrub(self, workers: int, rate: int | None = None, config: Path | None = None) -> dict:
        """`python -m stor scrub --config F --workers N [--rate R] --json`: seconds, CPU, its report."""
        cmd = stor_cmd() + ["scrub", "--config", str(config or self.scrub_config), "--workers", str(workers)]
        if rate is not None:
            cmd += ["--rate", str(rate)]
        cmd += ["--json"]
        cpu0 = children_cpu()
        t0 = time.perf_counter()
        p = self.procs.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.work)
        try:
            out, err = p.communicate(timeout=3600)
        finally:
            if p in self.procs.live:
                self.procs.stop(p)
        elapsed = time.perf_counter() - t0
        cpu = children_cpu() - cpu0
        if p.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} exited {p.returncode} (0 is clean): {(err or out).strip()[-800:]}")
        try:
            report = json.loads(out)
        except json.JSONDecodeError:
            raise BenchError(f"{' '.join(cmd)}: stdout is not one JSON report: {out[:300]!r}") from None
        if config is None:
            self.check_scrub_report(report)
        # Its own figure: bytes over the time of its walk (after start-up), as it reports it.
        own = (report.get("this_run") or {}).get("bytes_per_second")
        return {"seconds": elapsed, "cpu": cpu, "report": report, "cmd": cmd,
                "reported_mb_s": own / 1e6 if own else None}

    def check_scrub_report(self, report: dict) -> None:
        """The report is clean and counts every blob, copy and byte of the fixture (else the figure is not of a scrub)."""
        total = report.get("total") or {}
        got = (total.get("blobs_verified"), total.get("copies_verified"), total.get("bytes_read"))
        want = (self.scrub_blobs, len(self.scrub_files), self.scrub_bytes)
        if not report.get("clean") or got != want:
            raise BenchError(f"stor scrub report: clean {report.get('clean')}, (blobs, copies, bytes) verified {got}, "
                             f"not {want}: {json.dumps(report)[:600]}")

    def bench_scrub(self) -> dict:
        a = self.args
        total = self.scrub_bytes
        results: dict = {}
        # Start-up: a scrub of an empty pair, the fixed cost in each scrub's wall time.
        start = Series("s")
        for _ in range(3):
            start.add(self.scrub(2, config=self.empty_config)["seconds"])
        log(f"stor scrub of an empty pair: {start.median:.2f} s (interpreter, imports, report)")
        results["startup"] = start
        first = self.scrub(2)
        log(f"checked: stor scrub exits 0 on the clean fixture, its report counts {self.scrub_blobs:,} blobs, "
            f"{len(self.scrub_files):,} copies, {self.scrub_bytes:,} bytes (so does every run's below)")
        results["report_example"] = first["report"]

        for cache in ("cold", "warm"):
            ref_py, ref_sum, ref_direct = Series("MB/s"), Series("MB/s"), Series("MB/s")
            scrubs = {w: Series("MB/s") for w in a.scrub_workers}
            walks = Series("s")

            def prepare(cache: str = cache) -> None:
                if cache == "cold":
                    drop_caches()

            def py(cache: str = cache, direct: bool = False) -> None:
                s = ref_direct if direct else ref_py
                prepare()
                machine = MachineCPU()
                secs, cpu = self.raw_hashlib(direct)
                busy = machine.cores()
                s.add(total / secs / 1e6, seconds=secs, cpu_cores=cpu / secs, machine_cpu_cores=busy)
                log(f"{cache}: raw hashlib, {NCPU} threads{', O_DIRECT' if direct else ''}: {s.values[-1]:,.0f} MB/s "
                    f"({secs:.2f} s, CPU {cpu / secs:.2f}, machine {busy:.2f})")

            def ssum(cache: str = cache, s: Series = ref_sum) -> None:
                prepare()
                machine = MachineCPU()
                secs, cpu = self.raw_sha256sum()
                busy = machine.cores()
                s.add(total / secs / 1e6, seconds=secs, cpu_cores=cpu / secs, machine_cpu_cores=busy)
                log(f"{cache}: raw sha256sum, xargs -P{NCPU}: {s.values[-1]:,.0f} MB/s ({secs:.2f} s, CPU {cpu / secs:.2f}, "
                    f"machine {busy:.2f})")

            def sc(w: int, cache: str = cache, scrubs: dict = scrubs) -> None:
                prepare()
                machine = MachineCPU()
                r = self.scrub(w)
                busy = machine.cores()
                secs = r["seconds"]
                net = max(1e-6, secs - start.median)
                scrubs[w].add(total / secs / 1e6, seconds=secs, cpu_cores=r["cpu"] / secs, machine_cpu_cores=busy,
                              mb_s_without_startup=total / net / 1e6, reported_mb_s=r["reported_mb_s"])
                log(f"{cache}: stor scrub --workers {w}: {scrubs[w].values[-1]:,.0f} MB/s ({secs:.2f} s, "
                    f"CPU {r['cpu'] / secs:.2f}, machine {busy:.2f}; {total / net / 1e6:,.0f} MB/s without start-up, "
                    f"{r['reported_mb_s'] or 0:,.0f} by its report)")

            def walk(s: Series = walks) -> None:
                # The directory walk alone (what the hashlib reference, given its file list, does not pay for).
                drop_caches()
                t0 = time.perf_counter()
                out = self.procs.run(["find", *self.scrub_mirrors, "-type", "f", "-name", "*.dat"], timeout=600)
                secs = time.perf_counter() - t0
                if len(out.splitlines()) != len(self.scrub_files):
                    raise BenchError(f"find listed {len(out.splitlines())} files, not {len(self.scrub_files)}")
                s.add(secs)
                log(f"cold: the walk alone (find, {len(self.scrub_files):,} files): {secs:.2f} s")

            if cache == "warm":
                self.raw_hashlib()  # everything in the page cache
            fns = [py, lambda: py(direct=True), ssum] + [lambda w=w: sc(w) for w in a.scrub_workers]
            self.interleaved(fns + ([walk] if cache == "cold" else []), a.scrub_runs)
            # The reference is the fastest read+hash of the same bytes from where the scrub reads them: the disk
            # (stor scrub reads with O_DIRECT). Cold, any of the three reads the disk; warm, only O_DIRECT does
            # (the others hash the page cache's copies: shown beside it, not a reference).
            refs = [(ref_direct, f"hashlib {NCPU} threads, O_DIRECT")]
            if cache == "cold":
                refs += [(ref_py, f"hashlib {NCPU} threads"), (ref_sum, f"sha256sum -P{NCPU}")]
            best, best_name = max(refs, key=lambda r: r[0].median)
            results[f"raw_hashlib_{cache}"] = {"stor": ref_py, "reference": None}
            results[f"raw_hashlib_direct_{cache}"] = {"stor": ref_direct, "reference": None}
            results[f"raw_sha256sum_{cache}"] = {"stor": ref_sum, "reference": None}
            if walks.values:
                results["walk_cold_seconds"] = walks
            for w, s in scrubs.items():
                results[f"scrub_w{w}_{cache}"] = {"stor": s, "reference": best, "reference_name": best_name}
                if cache == "warm":
                    results[f"scrub_w{w}_{cache}_vs_cache"] = {
                        "stor": s, "reference": ref_py, "reference_name": f"hashlib {NCPU} threads, from the page cache",
                    }

        if a.rate:
            drop_caches()
            r = self.scrub(2, rate=a.rate)
            s = Series("MB/s")
            s.add(total / r["seconds"] / 1e6, seconds=r["seconds"], cpu_cores=r["cpu"] / r["seconds"],
                  mb_s_without_startup=total / max(1e-6, r["seconds"] - start.median) / 1e6,
                  reported_mb_s=r["reported_mb_s"])
            asked = Series("MB/s")
            asked.add(a.rate / 1e6)
            log(f"stor scrub --workers 2 --rate {a.rate}: {s.values[-1]:,.1f} MB/s measured "
                f"({r['seconds']:.1f} s), {r['reported_mb_s'] or 0:,.1f} by its report, asked {a.rate / 1e6:,.1f}")
            results["scrub_rate"] = {"stor": s, "reference": asked, "reference_name": "asked (--rate)"}
        return results


# ---- report ---------------------------------------------------------------------

def build_rows(get_rounds: list[dict], scrub: dict | None, args: argparse.Namespace) -> list[dict]:
    rows = []

    def row(key: str, label: str, s: Series, ref: Series | None, ref_name: str, target: str = "-",
            verdict: str = "-", ratio: float | None = None) -> None:
        if ratio is None and ref is not None and ref.values and ref.median:
            ratio = s.median / ref.median
        # The runs of a figure and of its reference alternate (a, b, b, a, ...): run i of each ran side by side,
        # so the median of their run-by-run ratios is less moved by the machine's slow swings than the medians'.
        paired = None
        if ref is not None and len(ref.values) == len(s.values) > 1 and all(ref.values):
            paired = statistics.median(x / y for x, y in zip(s.values, ref.values))
        rows.append({"key": key, "benchmark": label, "stor": cell(s),
                     "reference": f"{cell(ref)} {ref_name}".strip() if ref is not None else "-",
                     "ratio": f"{ratio:.3f}" if ratio is not None else "-", "target": target, "verdict": verdict,
                     "ratio_value": ratio, "paired_ratio": paired})

    labels = {
        "get_4k_hot": "GET 4 KiB, verify always, hot layer on (default) (req/s)",
        "get_4k_nohot": "GET 4 KiB, verify always, hot layer off (req/s)",
        "get_4k_fraction": f"GET 4 KiB, verify {args.fraction}, hot layer off (req/s)",
        "get_64m": "GET 64 MiB, verify always (MB/s)",
    }
    for rnd in get_rounds:
        for key, label in labels.items():
            r = rnd["results"].get(key)
            if r is not None:
                ref_name = r["reference_name"].replace("verify off, ", "off, ")
                row(key, f"w{rnd['workers']} {label}", r["stor"], r["reference"], ref_name)
                what = label.rsplit(" (", 1)[0]
                unit = "server CPU us/request" if key.startswith("get_4k") else "server CPU s/GB"
                row(f"{key}_cpu", f"w{rnd['workers']} {what}: {unit}", r["cpu"], r["cpu_reference"], ref_name)
    if scrub:
        for cache in ("cold", "warm"):
            for name, label in (("hashlib", f"raw read+hash, hashlib {NCPU} threads"),
                                ("hashlib_direct", f"raw read+hash, hashlib {NCPU} threads, O_DIRECT"),
                                ("sha256sum", f"raw read+hash, sha256sum xargs -P{NCPU}")):
                r = scrub.get(f"raw_{name}_{cache}")
                if r:
                    row(f"raw_{name}_{cache}", f"{label}, {cache} cache (MB/s)", r["stor"], None, "")
            for w in args.scrub_workers:
                r = scrub.get(f"scrub_w{w}_{cache}")
                if r:
                    ratio = r["stor"].median / r["reference"].median
                    row(f"scrub_w{w}_{cache}", f"stor scrub --workers {w}, {cache} cache (MB/s)", r["stor"],
                        r["reference"], r["reference_name"], f"ratio >= {SCRUB_TARGET}",
                        "PASS" if ratio >= SCRUB_TARGET else "FAIL")
                r = scrub.get(f"scrub_w{w}_{cache}_vs_cache")
                if r:
                    row(f"scrub_w{w}_{cache}_vs_cache", f"stor scrub --workers {w}, {cache} cache, against the cache's "
                        "copies (MB/s)", r["stor"], r["reference"], r["reference_name"])
        r = scrub.get("scrub_rate")
        if r:
            ratio = r["stor"].median / r["reference"].median
            row("scrub_rate", f"stor scrub --workers 2 --rate {args.rate}, cold (MB/s)", r["stor"], r["reference"],
                r["reference_name"], f"within {RATE_TOLERANCE:.0%}",
                "PASS" if abs(ratio - 1) <= RATE_TOLERANCE else "FAIL")
    return rows


def versions() -> dict[str, str]:
    out = {}
    try:
        from importlib.metadata import version

        out["stor"] = version("stor")
    except Exception:  # noqa: BLE001 - informational only
        out["stor"] = "?"
    r = subprocess.run(["sha256sum", "--version"], capture_output=True, text=True, check=False)
    out["sha256sum"] = r.stdout.splitlines()[0] if r.returncode == 0 else "?"
    import ssl

    out["openssl"] = ssl.OPENSSL_VERSION
    git = subprocess.run(["git", "-C", str(BENCH.parent), "describe", "--always", "--dirty"],
                         capture_output=True, text=True, check=False)
    out["git"] = git.stdout.strip() if git.returncode == 0 else "?"
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark stor's verified reads and scrub against references of the same run.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 run of 2 s per GET figure; scrub over 256 MiB a mirror, 1 run each")
    p.add_argument("--only", help=f"comma-separated parts: {','.join(GROUPS)} (default both)")
    p.add_argument("--workers", type=int, action="append",
                   help="stor serve --workers for a GET round (repeatable; default: 2, then 1)")
    p.add_argument("--runs", type=int, help="runs per GET figure; the median is reported (default 5, --quick 1)")
    p.add_argument("--duration", type=int, help="seconds per load-generator run (default 3, --quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per server and blob (default 1)")
    p.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    p.add_argument("--threads", type=int, default=2, help="load-generator threads (default 2)")
    p.add_argument("--get-client", choices=["auto", "wrk", "loadgen"], default="loadgen",
                   help="load generator for GETs (default bench/loadgen.c for both sizes; auto: wrk below 1 MiB, "
                        "as bench/run.py)")
    p.add_argument("--fraction", type=float, default=0.01,
                   help="also 4 KiB with verify_reads set to this fraction, hot layer off (default 0.01; 0: not)")
    p.add_argument("--scrub-mib", type=int, help="MiB of blobs per mirror for the scrub part (default 2048, --quick 256)")
    p.add_argument("--small-share", type=float, default=0.5, help="share of it in small blobs (default 0.5)")
    p.add_argument("--small-kib", type=int, default=64, help="size of the small blobs, KiB (default 64)")
    p.add_argument("--big-min-mib", type=int, default=16, help="large blobs from this many MiB (default 16) ...")
    p.add_argument("--big-max-mib", type=int, default=64, help="... to this many (default 64)")
    p.add_argument("--scrub-workers", type=int, action="append",
                   help="stor scrub --workers to measure (repeatable; default 1, 2, 4)")
    p.add_argument("--scrub-runs", type=int, help="runs per scrub figure, cold and warm (default 2, --quick 1)")
    p.add_argument("--rate", type=int, default=100_000_000,
                   help="bytes/s for the one run with stor scrub --rate (default 100000000; 0: no such run)")
    p.add_argument("--xargs-n", type=int, default=32, help="files per sha256sum process of the reference (default 32)")
    p.add_argument("--log-level", default="info", help="stor serve --log-level (default info, as a user runs it)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--tmpdir", help="where to make the storage directories (default: the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    a = p.parse_args(argv)
    a.runs = a.runs or (1 if a.quick else 5)
    a.duration = a.duration or (2 if a.quick else 3)
    a.workers = a.workers or [2, 1]
    a.scrub_mib = a.scrub_mib or (256 if a.quick else 2048)
    a.scrub_runs = a.scrub_runs or (1 if a.quick else 2)
    a.scrub_workers = a.scrub_workers or [1, 2, 4]
    a.groups = [g.strip() for g in (a.only.split(",") if a.only else GROUPS)]
    for g in a.groups:
        if g not in GROUPS:
            p.error(f"--only: unknown part {g!r} (parts: {', '.join(GROUPS)})")
    if not 0 <= a.fraction < 1:
        p.error("--fraction: from 0 (none) to below 1")
    if a.big_min_mib > a.big_max_mib or not 0 <= a.small_share <= 1:
        p.error("--big-min-mib above --big-max-mib, or --small-share outside 0..1")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum, frame):  # SIGTERM stops like Ctrl-C: through the finally below
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    procs = Procs()
    work: Path | None = None
    started = dt.datetime.now()
    try:
        tools = {"cc": which("cc") or which("gcc") or ""}
        if not tools["cc"]:
            raise BenchError("no C compiler (cc) for bench/loadgen.c: apt-get install gcc")
        if args.get_client in ("auto", "wrk"):
            tools["wrk"] = which("wrk") or ""
            if not tools["wrk"]:
                raise BenchError("--get-client wrk/auto needs wrk: apt-get install wrk")
        if "scrub" in args.groups:
            if os.geteuid() != 0:
                raise BenchError("the scrub part drops the page cache (/proc/sys/vm/drop_caches): run as root")
            if shutil.which("sha256sum") is None:
                raise BenchError("sha256sum (coreutils) not found")
        work = Path(tempfile.mkdtemp(prefix="stor-integrity-", dir=args.tmpdir))
        log(f"working in {work}")
        bench = IntegrityBench(args, tools, procs, work)
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
        if float(loadavg[0]) > 0.5:
            bench.warn(f"the machine is busy before the bench (load average {' '.join(loadavg)}): "
                       "figures will be noisy")
        get_rounds: list[dict] = []
        scrub: dict | None = None
        if "get" in args.groups:
            bench.make_get_fixtures()
            for w in args.workers:
                log(f"GET round: stor serve --workers {w}")
                get_rounds.append({"workers": w, "results": bench.bench_get(w)})
        if "scrub" in args.groups:
            if not (BENCH.parent / "stor" / "scrub.py").exists():
                log("note: stor/scrub.py is not in this checkout: `stor scrub` may not exist yet")
            bench.make_scrub_fixtures()
            scrub = bench.bench_scrub()
        rows = build_rows(get_rounds, scrub, args)
        print()
        table = print_table(rows)
        loadavg_end = Path("/proc/loadavg").read_text().split()[:3]
        notes = [f"load average {' '.join(loadavg)} at the start, {' '.join(loadavg_end)} at the end"]
        if scrub:
            notes.append(f"scrub fixture: {bench.scrub_blobs:,} blobs, {len(bench.scrub_files):,} files, "
                         f"{bench.scrub_bytes / 1e9:.2f} GB over both mirrors; stor scrub of an empty pair takes "
                         f"{scrub['startup'].median:.2f} s (in every scrub figure)")
            if "walk_cold_seconds" in scrub:
                notes.append(f"cold walk alone (find over both mirrors, page cache dropped): "
                             f"{cell(scrub['walk_cold_seconds'])} s")
            notes.append(f"sha256sum reference: {bench.sha256sum_cmd()}")
        paired = [f"{r['benchmark'].split(' (')[0]}: {r['paired_ratio']:.3f}" for r in rows
                  if r.get("paired_ratio") is not None and r["key"].startswith("get_") and not r["key"].endswith("_cpu")]
        if paired:
            notes.append("GET ratios run by run (median of always/off of runs side by side): " + "; ".join(paired))
        for n in notes:
            print(n)
        for w in bench.warnings:
            print(f"warning: {w}")

        def enc(v: object) -> object:
            if isinstance(v, Series):
                return v.to_json()
            if isinstance(v, dict):
                return {k: enc(x) for k, x in v.items()}
            return v

        result = {
            "started": started.isoformat(timespec="seconds"),
            "finished": dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([sys.executable, *sys.argv]),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                        "loadavg_at_start": loadavg, "loadavg_at_end": loadavg_end},
            "versions": versions(),
            "settings": {k: getattr(args, k) for k in (
                "runs", "duration", "warmup", "connections", "threads", "get_client", "fraction", "workers", "groups",
                "scrub_mib", "small_share", "small_kib", "big_min_mib", "big_max_mib", "scrub_workers", "scrub_runs",
                "rate", "xargs_n", "log_level")},
            "servers": {n: {"integrity": i if i is not None else {"verify_reads": args.fraction}, "hot": h, "label": lb}
                        for n, (i, h, lb) in SERVERS.items()},
            "get_rounds": [{"workers": r["workers"], "results": enc(r["results"])} for r in get_rounds],
            "scrub": enc(scrub) if scrub else None,
            "scrub_fixture": {"blobs": bench.scrub_blobs, "files": len(bench.scrub_files), "bytes": bench.scrub_bytes,
                              "sha256sum_command": bench.sha256sum_cmd()} if scrub else None,
            "table": rows,
            "table_text": table,
            "notes": notes,
            "warnings": bench.warnings,
        }
        save_results("integrity-", result, args.json, started)
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
                log(f"removing {work}")
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
