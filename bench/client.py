#!/usr/bin/env python3
"""Benchmark the client (`stor put`, `stor get`) against the curl loops pipelines run today, in one run.

    python bench/client.py                 # 3 runs of each timed command, best of 3 (~3 min)
    python bench/client.py --quick         # smoke: 1 run of each, a 256 MiB blob for get
    python bench/client.py --only put --runs 5

Why: the client is only worth adopting if it is at least as fast as what every
pipeline already does with curl, and a re-run over what is already stored (the
common case of a retried job) costs next to nothing. So each figure is a ratio
against a reference measured in the same run, on the same server, files and disk:

- put: `stor put --json DIR` of 2,000 files of 64 KiB (random bytes, one
  directory) into an empty server, against `xargs -P16 -n2 curl -s -f -o
  /dev/null -u USER:PASS --data-binary < LIST` POSTing the same files into an
  empty server (LIST: "@PATH URL/SHA" lines, the shas computed before timing).
  Every run starts a new `stor serve` on storage wiped empty. Ratio: curl's
  seconds over stor put's, wall time of the whole command, start-up included.
- re-run: the same `stor put` again right after, everything present. Ratio:
  the first run's seconds over the re-run's.
- get: `stor get SHA -o FILE` of a 1 GiB random blob against `curl -s -f -o
  FILE URL/SHA`, into the same directory (the file removed between runs).
  Ratio: curl's seconds over stor get's.

Each timed command runs --runs times (default 3), the reference and the client
alternated (ref, client, client, ref, ...); the best (shortest) run counts.
Every run is checked: exit status, the JSON lines of `stor put`/`stor get`, the
files on disk (put), the bytes' sha (get). `os.sync()` runs before each timed
command, so one run's dirty pages are not written back during the next.

See bench/README.md, "Client: stor put / stor get against curl".
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import (  # noqa: E402
    AUTH_PASS, AUTH_USER, BenchError, Procs, Series, fmt, free_port, log, print_table, rel_path, save_results,
    stor_cmd, wait_for_workers, wait_port, which,
)

KiB, MiB = 1 << 10, 1 << 20
GROUPS = ["put", "get"]

# Targets of the client's issue: (comparison, threshold) on the ratio.
TARGETS = {
    "put_new": (">=", 1.0),
    "put_rerun": (">=", 10.0),
    "get_big": (">=", 0.9),
}


def fstype(path: Path) -> str:
    """The filesystem type of the mount holding path (/proc/self/mountinfo: the longest mount point prefix)."""
    path = path.resolve()
    best, kind = "", "?"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mount = left.split()[4].replace("\\040", " ")
            if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, kind = mount, right.split()[0]
    return kind


def default_tmpdir() -> str:
    """The system temp dir, unless it is in memory: then /var/tmp (the figures are of the disk)."""
    d = tempfile.gettempdir()
    return d if fstype(Path(d)) not in ("tmpfs", "ramfs") else "/var/tmp"


def count_blobs(roots: list[str]) -> list[set[str]]:
    """The shas (lower case) of the `.dat` files under each root."""
    out = []
    for root in roots:
        found = set()
        for _, _, files in os.walk(root):
            found.update(f[:-4].lower() for f in files if f.endswith(".dat"))
        out.append(found)
    return out


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def json_lines(path: Path) -> tuple[list[dict], dict]:
    """A client's JSON lines: the items, and the summary (the last line, `{"summary": {...}}`)."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines or "summary" not in lines[-1]:
        raise BenchError(f"{path}: no summary line at the end ({len(lines)} lines)")
    return lines[:-1], lines[-1]["summary"]


class ClientBench:
    def __init__(self, args: argparse.Namespace, procs: Procs, work: Path) -> None:
        self.args = args
        self.procs = procs
        self.work = work
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self.rng = random.Random(secrets.randbits(64))
        self.servers_started = 0

    def warn(self, msg: str) -> None:
        log("WARNING: " + msg)
        self.warnings.append(msg)

    # ---- servers ----------------------------------------------------------------

    def start_server(self, name: str, mirrors: list[str]) -> dict:
        """`python -m stor serve --port P --workers W --config F`, as run.py starts it; up when GET / answers
        200 and every worker is there."""
        config = self.work / f"config-{name}.json"
        config.write_text(json.dumps({
            "storage_pairs": [mirrors],
            "require_mount_points": False,
            "basic_auth": f"{AUTH_USER}:{AUTH_PASS}",
        }, indent=2))
        port = free_port()
        workers = self.args.workers
        cmd = stor_cmd() + ["serve", "--port", str(port), "--workers", str(workers), "--config", str(config),
                            "--log-level", self.args.log_level]
        self.servers_started += 1
        log_path = self.work / f"stor-{name}-{self.servers_started}.log"
        out = open(log_path, "wb")
        p = self.procs.start(cmd, stdout=out, stderr=out, cwd=self.work)
        out.close()
        wait_port(port, p, f"stor serve [{name}]")
        pids = wait_for_workers(p, port, workers, f"stor serve --workers {workers} [{name}]", log_path)
        time.sleep(0.5)  # the other workers finish their start-up
        return {"name": name, "proc": p, "port": port, "url": f"http://127.0.0.1:{port}", "pids": pids,
                "log": log_path, "mirrors": mirrors}

    def fresh_server(self, name: str, old: dict | None) -> dict:
        """A new `stor serve` on empty storage: the old one stopped, its mirrors removed and made anew."""
        if old is not None:
            self.stop_server(old)
        mirrors = [str(self.work / name / "a"), str(self.work / name / "b")]
        for d in mirrors:
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
        return self.start_server(name, mirrors)

    def stop_server(self, srv: dict) -> None:
        if srv["proc"].poll() is not None:
            raise BenchError(f"stor serve [{srv['name']}] exited with {srv['proc'].returncode}; see {srv['log']}")
        self.procs.stop(srv["proc"])

    # ---- running a command, timed ------------------------------------------------

    def client(self, srv: dict, *args: str) -> list[str]:
        return stor_cmd() + [*args, "--url", srv["url"], "-u", f"{AUTH_USER}:{AUTH_PASS}"]

    def timed(self, what: str, cmd: list[str], stdin: Path | None = None, stdout: Path | None = None,
              timeout: float = 600) -> float:
        """Runs cmd to the end (stdout to a file, stderr kept); its wall seconds, from the fork to its exit.
        A non-zero exit is an error."""
        err_path = self.work / "last.stderr"
        with contextlib.ExitStack() as files:
            fin = files.enter_context(open(stdin, "rb")) if stdin else subprocess.DEVNULL
            fout = files.enter_context(open(stdout, "wb")) if stdout else subprocess.DEVNULL
            ferr = files.enter_context(open(err_path, "wb"))
            t0 = time.monotonic()
            p = self.procs.start(cmd, stdin=fin, stdout=fout, stderr=ferr)
            try:
                rc = p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.procs.stop(p, signal.SIGKILL, 1)
                raise BenchError(f"{what} did not finish within {timeout:.0f} s") from None
            elapsed = time.monotonic() - t0
            self.procs.live.remove(p)  # it has exited and been reaped: nothing to stop
        err = err_path.read_text(errors="replace").strip()
        if rc != 0:
            raise BenchError(f"{what} exited {rc}: {err[-800:]}")
        if err:
            self.warn(f"{what}: stderr: {err[:300]}")
        return elapsed

    # ---- put --------------------------------------------------------------------

    def make_files(self) -> None:
        a = self.args
        self.files_dir = self.work / "files"
        self.files_dir.mkdir()
        self.shas: dict[str, str] = {}  # path -> sha
        log(f"writing {a.files:,} files of {a.file_kib} KiB (random bytes) into {self.files_dir}")
        for i in range(a.files):
            data = self.rng.randbytes(a.file_kib * KiB)
            path = self.files_dir / f"f{i:05d}.bin"
            path.write_bytes(data)
            self.shas[str(path)] = hashlib.sha256(data).hexdigest()
        if len(set(self.shas.values())) != a.files:
            raise BenchError("two random files hash the same")
        os.sync()

    def check_stored(self, srv: dict, what: str) -> None:
        """Every file's blob on both mirrors, nothing else."""
        want = set(self.shas.values())
        for root, found in zip(srv["mirrors"], count_blobs(srv["mirrors"])):
            if found != want:
                raise BenchError(f"{what}: {root} holds {len(found & want):,} of the {len(want):,} blobs "
                                 f"and {len(found - want):,} others")

    def check_put(self, out: Path, status: str, what: str) -> dict:
        items, summary = json_lines(out)
        n = self.args.files
        statuses = {}
        for it in items:
            statuses[it.get("status")] = statuses.get(it.get("status"), 0) + 1
            if it.get("status") == status and self.shas.get(it.get("path")) != it.get("sha256"):
                raise BenchError(f"{what}: {it.get('path')} reported with sha {it.get('sha256')}, not its own")
        if statuses != {status: n} or summary.get(status) != n or summary.get("files") != n \
                or summary.get("failed") or summary.get("not_done"):
            raise BenchError(f"{what}: expected {n:,} {status}; items {statuses}, summary {summary}")
        return summary

    def bench_put(self) -> dict:
        a = self.args
        self.make_files()
        new, rerun, curl = Series("s"), Series("s"), Series("s")
        srv: dict | None = None
        checked_exists = False
        xargs = ["xargs", f"-P{a.curl_parallel}", "-n2", "curl", "-s", "-f", "-o", "/dev/null",
                 "-u", f"{AUTH_USER}:{AUTH_PASS}", "--data-binary"]
        try:
            def one_curl() -> None:
                nonlocal srv, checked_exists
                srv = self.fresh_server("put", srv)
                listing = self.work / "curl.list"  # untimed: what a pipeline has before it uploads
                listing.write_text("".join(f"@{p} {srv['url']}/{s}\n" for p, s in self.shas.items()))
                os.sync()
                t = self.timed("xargs curl", xargs, stdin=listing)
                self.check_stored(srv, "xargs curl")
                if not checked_exists:  # once, untimed: the client agrees that curl stored everything
                    out = self.work / "exists.jsonl"
                    shas_file = self.work / "shas.txt"
                    shas_file.write_text("".join(s + "\n" for s in self.shas.values()))
                    self.timed("stor exists", self.client(srv, "exists", "--json", "-"), stdin=shas_file,
                               stdout=out)
                    _, summary = json_lines(out)
                    if summary.get("present") != a.files:
                        raise BenchError(f"stor exists after curl: {summary}")
                    checked_exists = True
                curl.add(t)
                log(f"xargs -P{a.curl_parallel} curl: {a.files:,} files in {t:.2f} s ({a.files / t:,.0f} files/s)")

            def one_put() -> None:
                nonlocal srv
                srv = self.fresh_server("put", srv)
                out = self.work / "put.jsonl"
                os.sync()
                t = self.timed("stor put", self.client(srv, "put", "--json", str(self.files_dir)), stdout=out)
                summary = self.check_put(out, "stored", "stor put")
                self.check_stored(srv, "stor put")
                new.add(t, own_seconds=summary.get("seconds"))
                log(f"stor put, new: {a.files:,} files in {t:.2f} s ({a.files / t:,.0f} files/s; "
                    f"{summary.get('seconds')} s by its summary)")
                os.sync()
                t = self.timed("stor put (re-run)", self.client(srv, "put", "--json", str(self.files_dir)), stdout=out)
                summary = self.check_put(out, "present", "stor put (re-run)")
                self.check_stored(srv, "stor put (re-run)")
                rerun.add(t, own_seconds=summary.get("seconds"))
                log(f"stor put, re-run (all present): {t:.3f} s ({summary.get('seconds')} s by its summary)")

            for i in range(a.runs):
                for fn in ((one_curl, one_put) if i % 2 == 0 else (one_put, one_curl)):
                    fn()
        finally:
            if srv is not None:
                self.stop_server(srv)
        return {
            "put_new": {"stor": new, "reference": curl, "reference_name": f"xargs -P{a.curl_parallel} curl"},
            "put_rerun": {"stor": rerun, "reference": new, "reference_name": "first stor put"},
        }

    # ---- get --------------------------------------------------------------------

    def bench_get(self) -> dict:
        a = self.args
        size = a.get_mib * MiB
        srv = self.fresh_server("get", None)
        try:
            src = self.work / "big.src"
            log(f"writing a {a.get_mib} MiB random file")
            h = hashlib.sha256()
            with open(src, "wb") as f:
                for _ in range(a.get_mib):
                    chunk = self.rng.randbytes(MiB)
                    h.update(chunk)
                    f.write(chunk)
            sha = h.hexdigest()
            os.sync()
            out = self.work / "put-big.jsonl"
            t = self.timed("stor put (big blob)", self.client(srv, "put", "--json", str(src)), stdout=out)
            items, summary = json_lines(out)
            if summary.get("stored") != 1 or items[0].get("sha256") != sha:
                raise BenchError(f"stor put of the {a.get_mib} MiB blob: {items} {summary}")
            for root in srv["mirrors"]:
                if os.path.getsize(os.path.join(root, rel_path(sha))) != size:
                    raise BenchError(f"the {a.get_mib} MiB blob is not whole in {root}")
            self.notes.append(f"the {a.get_mib} MiB blob was stored with stor put (untimed fixture) in {t:.2f} s, "
                              f"{size / t / 1e6:,.0f} MB/s (to both mirrors, fsynced)")
            log(self.notes[-1])
            src.unlink()
            dl = self.work / "dl"  # the same filesystem as the storage, for both
            dl.mkdir()
            target = dl / "blob"
            url = f"{srv['url']}/{sha}"
            # Warm-up: the server's first read of the blob, for neither side.
            self.timed("curl (warm-up)", ["curl", "-s", "-f", "-o", "/dev/null", url])
            curl, get = Series("s"), Series("s")

            def check_file(what: str) -> None:
                got = target.stat().st_size if target.exists() else -1
                if got != size or file_sha(target) != sha:
                    raise BenchError(f"{what}: {target} is not the blob ({got} bytes)")
                leftovers = [p.name for p in dl.iterdir() if p != target]
                if leftovers:
                    raise BenchError(f"{what}: left {leftovers} beside the download")
                target.unlink()
                os.sync()

            def one_curl() -> None:
                os.sync()
                t = self.timed("curl GET", ["curl", "-s", "-f", "-o", str(target), url])
                check_file("curl GET")
                curl.add(t)
                log(f"curl -o FILE: {a.get_mib} MiB in {t:.2f} s ({size / t / 1e6:,.0f} MB/s)")

            def one_get() -> None:
                os.sync()
                out = self.work / "get.jsonl"
                t = self.timed("stor get", self.client(srv, "get", "--json", sha, "-o", str(target)), stdout=out)
                items, summary = json_lines(out)
                if summary.get("fetched") != 1 or [i.get("status") for i in items] != ["fetched"] \
                        or items[0].get("size") != size:
                    raise BenchError(f"stor get: {items} {summary}")
                check_file("stor get")
                get.add(t, own_seconds=summary.get("seconds"))
                log(f"stor get -o FILE: {a.get_mib} MiB in {t:.2f} s ({size / t / 1e6:,.0f} MB/s; "
                    f"{summary.get('seconds')} s by its summary)")

            for i in range(a.runs):
                for fn in ((one_curl, one_get) if i % 2 == 0 else (one_get, one_curl)):
                    fn()
        finally:
            self.stop_server(srv)
        return {"get_big": {"stor": get, "reference": curl, "reference_name": "curl -o FILE"}}


# ---- report ---------------------------------------------------------------------

def best_cell(s: Series | None) -> str:
    """The best (shortest) run, then every run in order."""
    if s is None or not s.values:
        return "-"
    best = f"{fmt(min(s.values))} s"
    return best if len(s.values) == 1 else f"{best} (runs {', '.join(fmt(v) for v in s.values)})"


def build_rows(results: dict, args: argparse.Namespace) -> list[dict]:
    labels = {
        "put_new": f"stor put {args.files:,} x {args.file_kib} KiB, empty server",
        "put_rerun": f"stor put {args.files:,} x {args.file_kib} KiB again, all present",
        "get_big": f"stor get {args.get_mib:,} MiB blob -o FILE",
    }
    rows = []
    for key, label in labels.items():
        r = results.get(key)
        if r is None:
            continue
        stor, ref = r["stor"], r["reference"]
        ratio = min(ref.values) / min(stor.values)  # seconds: the reference's over the client's
        op, threshold = TARGETS[key]
        rows.append({
            "key": key,
            "benchmark": f"{label} (s, best of {len(stor.values)})",
            "stor": best_cell(stor),
            "reference": f"{best_cell(ref)} {r['reference_name']}",
            "ratio": f"{ratio:.2f}",
            "target": f"ratio {op} {threshold:g}",
            "verdict": "PASS" if ratio >= threshold else "FAIL",
            "ratio_value": ratio,
        })
    return rows


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for mod in ("stor", "httpx", "httpcore", "h11", "rich"):
        with contextlib.suppress(PackageNotFoundError):  # informational only
            out[mod] = version(mod)
    r = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False)
    out["curl"] = r.stdout.splitlines()[0] if r.returncode == 0 else "?"
    git = subprocess.run(["git", "-C", str(BENCH.parent), "describe", "--always", "--dirty"],
                         capture_output=True, text=True, check=False)
    out["git"] = git.stdout.strip() if git.returncode == 0 else "?"
    return out


# ---- main -----------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark stor put / stor get against xargs curl and curl, in one run.")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 run of each, a 256 MiB blob for get")
    p.add_argument("--only", help=f"comma-separated parts: {','.join(GROUPS)} (default both)")
    p.add_argument("--runs", type=int, help="runs of each timed command; the best counts (default 3, --quick 1)")
    p.add_argument("--files", type=int, default=2000, help="files for stor put (default 2000)")
    p.add_argument("--file-kib", type=int, default=64, help="size of each, KiB (default 64)")
    p.add_argument("--curl-parallel", type=int, default=16, help="xargs -P of the curl loop (default 16)")
    p.add_argument("--get-mib", type=int, help="size of the blob for stor get, MiB (default 1024, --quick 256)")
    p.add_argument("--workers", type=int, default=2, help="stor serve --workers (default 2)")
    p.add_argument("--log-level", default="info", help="stor serve --log-level (default info, as a user runs it)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--tmpdir", help="where to make the storage and scratch files (default: the system temp dir, "
                   "or /var/tmp if that is in memory)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs, JSON lines)")
    a = p.parse_args(argv)
    a.runs = a.runs or (1 if a.quick else 3)
    a.get_mib = a.get_mib or (256 if a.quick else 1024)
    a.groups = [g.strip() for g in (a.only.split(",") if a.only else GROUPS)]
    for g in a.groups:
        if g not in GROUPS:
            p.error(f"--only: unknown part {g!r} (parts: {', '.join(GROUPS)})")
    if a.runs < 1 or a.files < 1 or a.file_kib < 1 or a.get_mib < 1:
        p.error("--runs, --files, --file-kib and --get-mib must be at least 1")
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
        for tool in ("curl", "xargs"):
            if which(tool) is None:
                raise BenchError(f"{tool} not found (apt-get install curl findutils)")
        work = Path(tempfile.mkdtemp(prefix="stor-client-", dir=args.tmpdir or default_tmpdir()))
        kind = fstype(work)
        log(f"working in {work} ({kind})")
        bench = ClientBench(args, procs, work)
        if kind in ("tmpfs", "ramfs"):
            bench.warn(f"{work} is on {kind}: the figures are of memory, not of a disk (--tmpdir)")
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
        if float(loadavg[0]) > 0.5:
            bench.warn(f"the machine is busy before the bench (load average {' '.join(loadavg)}): "
                       "figures will be noisy")
        results: dict = {}
        if "put" in args.groups:
            results.update(bench.bench_put())
        if "get" in args.groups:
            results.update(bench.bench_get())
        rows = build_rows(results, args)
        print()
        table = print_table(rows)
        loadavg_end = Path("/proc/loadavg").read_text().split()[:3]
        notes = [(f"load average {' '.join(loadavg)} at the start, {' '.join(loadavg_end)} at the end; "
                  f"{os.cpu_count()} CPUs; storage and scratch on {kind}")]
        for key, what in (("put_new", "stor put (new)"), ("put_rerun", "stor put (re-run)"),
                          ("get_big", "stor get")):
            s = results.get(key, {}).get("stor")
            if s is not None and s.values:
                i = s.values.index(min(s.values))
                own = s.extra[i].get("own_seconds")
                if own is not None:
                    notes.append(f"{what}, best run: {s.values[i]:.3f} s wall, {own:.3f} s by its own summary "
                                 f"(the rest is start-up and exit)")
        notes += bench.notes
        for n in notes:
            print(n)
        for w in bench.warnings:
            print(f"warning: {w}")
        result = {
            "started": started.isoformat(timespec="seconds"),
            "finished": dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([sys.executable, *sys.argv]),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                        "loadavg_at_start": loadavg, "loadavg_at_end": loadavg_end, "fstype": kind},
            "versions": versions(),
            "settings": {k: getattr(args, k) for k in ("runs", "files", "file_kib", "curl_parallel", "get_mib",
                                                       "workers", "log_level", "groups")},
            "results": {k: {"stor": v["stor"].to_json(), "reference": v["reference"].to_json(),
                            "reference_name": v["reference_name"]} for k, v in results.items()},
            "table": rows,
            "table_text": table,
            "notes": notes,
            "warnings": bench.warnings,
        }
        save_results("client-", result, args.json, started)
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
