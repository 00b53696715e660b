#!/usr/bin/env python3
"""Benchmark resumable uploads (tus at /files/) against one plain POST of the same bytes, in one run.

    python bench/tus.py                    # 256 MiB, 8 MiB PATCHes, 3 runs each, best of 3
    python bench/tus.py --runs 5 --mib 512 --patch-mib 16

Why: a resumable upload must cost about what the plain upload it replaces
costs, or users keep the fragile one. Each figure is a ratio against a
reference measured in the same run, on the same server, bytes and disk:

- tus: create (POST /files/ with the sha in Upload-Metadata), then PATCHes of
  --patch-mib on one kept-alive connection, the bytes sent by the kernel
  (sendfile), timed from the creation to the last answer (which commits the
  blob). Reference: one POST /<sha> of the same bytes, also sent with
  sendfile. Ratio: POST's seconds over tus's (target >= 0.8).
- tuspy: the same upload through tuspy (the real client: a new connection
  per PATCH, each chunk read into memory first), for information.
- peak RSS per worker during the tus uploads (target < 100 MiB).

Each timed upload runs --runs times, alternated (POST, tus, tuspy, POST,
...); the best (shortest) counts. Every run makes the bytes a new blob (its
last 16 bytes changed), checks the answer (201 / Stor-Sha256) and the blob on
both mirrors, then removes it; os.sync() runs before each timed upload, so
one run's dirty pages are not written back during the next.

See bench/README.md, "Resumable uploads (tus)".
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import (  # noqa: E402
    AUTH_HEADER, AUTH_PASS, AUTH_USER, BenchError, Procs, Series, fmt, free_port, log, print_table, proc_status,
    rel_path, reset_peak_rss, save_results, stor_cmd, wait_for_workers, wait_port,
)

MiB = 1 << 20


class Connection:
    """One kept-alive HTTP/1.1 connection; bodies from a file by sendfile."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.port = port

    def request(self, method: str, path: str, headers: dict[str, str], body: tuple[int, int, int] | None = None
                ) -> tuple[int, dict[str, str]]:
        """(status, headers); body: (fd, offset, count) sent with sendfile."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", f"Authorization: {AUTH_HEADER}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {body[2] if body else 0}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        if body is not None:
            fd, offset, count = body
            while count:
                sent = os.sendfile(self.sock.fileno(), fd, offset, count)
                offset += sent
                count -= sent
        return self._answer()

    def _answer(self) -> tuple[int, dict[str, str]]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("connection closed before an answer")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers

    def close(self) -> None:
        self.sock.close()


class TusBench:
    def __init__(self, args: argparse.Namespace, procs: Procs, work: Path) -> None:
        self.args = args
        self.procs = procs
        self.work = work
        self.size = args.mib * MiB
        self.mirrors = [str(work / "disk1"), str(work / "disk2")]
        for m in self.mirrors:
            os.mkdir(m)
        self.source = work / "source.bin"
        with open(self.source, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(MiB))
        self.config = work / "config.json"
        self.config.write_text(json.dumps({
            "storage_pairs": [self.mirrors], "basic_auth": f"{AUTH_USER}:{AUTH_PASS}",
            "storage": {"require_mount_points": False},
        }))

    def new_blob(self) -> str:
        """The source made a new blob (its last 16 bytes unique); its sha-256."""
        with open(self.source, "r+b") as f:
            f.seek(self.size - 16)
            f.write(secrets.token_bytes(16))
        h = hashlib.sha256()
        with open(self.source, "rb") as f:
            while piece := f.read(MiB):
                h.update(piece)
        return h.hexdigest()

    def start(self) -> tuple[int, list[int]]:
        port = free_port()
        log_path = self.work / "stor.log"
        out = open(log_path, "wb")
        cmd = [*stor_cmd(), "serve", "--config", str(self.config), "--port", str(port), "--workers", "2",
               "--log-level", "warning"]
        p = self.procs.start(cmd, stdout=out, stderr=out, cwd=self.work)
        wait_port(port, p, "stor serve")
        pids = wait_for_workers(p, port, 2, "stor serve --workers 2", log_path)
        log(f"stor serve --workers 2 on port {port} (workers {pids})")
        return port, pids

    def check_and_remove(self, sha: str) -> None:
        for root in self.mirrors:
            path = os.path.join(root, rel_path(sha))
            if os.path.getsize(path) != self.size:
                raise BenchError(f"{path}: not {self.size} bytes")
            os.unlink(path)

    def post(self, port: int, sha: str) -> float:
        conn = Connection(port)
        fd = os.open(self.source, os.O_RDONLY)
        try:
            start = time.perf_counter()
            status, _ = conn.request("POST", f"/{sha}", {"Content-Type": "application/octet-stream"}, (fd, 0, self.size))
            elapsed = time.perf_counter() - start
        finally:
            os.close(fd)
            conn.close()
        if status != 201:
            raise BenchError(f"POST answered {status}")
        return elapsed

    def tus(self, port: int, sha: str) -> float:
        conn = Connection(port)
        fd = os.open(self.source, os.O_RDONLY)
        piece = self.args.patch_mib * MiB
        tus = {"Tus-Resumable": "1.0.0"}
        try:
            start = time.perf_counter()
            meta = "sha256 " + base64.b64encode(sha.encode()).decode()
            status, headers = conn.request("POST", "/files/", {**tus, "Upload-Length": str(self.size), "Upload-Metadata": meta})
            if status != 201:
                raise BenchError(f"tus creation answered {status}")
            location, offset = headers["location"], 0
            while offset < self.size:
                count = min(piece, self.size - offset)
                status, headers = conn.request(
                    "PATCH", location,
                    {**tus, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
                    (fd, offset, count),
                )
                if status != 204:
                    raise BenchError(f"PATCH at {offset} answered {status}")
                offset = int(headers["upload-offset"])
            elapsed = time.perf_counter() - start
        finally:
            os.close(fd)
            conn.close()
        if headers.get("stor-sha256") != sha:
            raise BenchError(f"the last PATCH did not name the blob: {headers}")
        return elapsed

    def tuspy(self, port: int, sha: str) -> float:
        from tusclient.client import TusClient

        client = TusClient(f"http://127.0.0.1:{port}/files/", headers={"Authorization": AUTH_HEADER})
        uploader = client.uploader(str(self.source), chunk_size=self.args.patch_mib * MiB, metadata={"sha256": sha})
        start = time.perf_counter()
        uploader.upload()
        elapsed = time.perf_counter() - start
        if uploader.request.response_headers.get("stor-sha256") != sha:
            raise BenchError("tuspy: the last PATCH did not name the blob")
        return elapsed

    def run(self) -> dict:
        port, pids = self.start()
        series = {"post": Series("MB/s"), "tus": Series("MB/s"), "tuspy": Series("MB/s")}
        rss = Series("MiB")
        idle = max(proc_status(pid, "VmRSS") / MiB for pid in pids)
        for run in range(self.args.runs):
            for name in ("post", "tus", "tuspy"):
                sha = self.new_blob()
                os.sync()
                for pid in pids:
                    reset_peak_rss(pid)
                elapsed = getattr(self, name)(port, sha)
                series[name].add(self.size / elapsed / 1e6, seconds=elapsed)
                if name == "tus":
                    peaks = [proc_status(pid, "VmHWM") / MiB for pid in pids]
                    rss.add(max(peaks), per_worker=peaks)
                self.check_and_remove(sha)
                log(f"run {run + 1} {name}: {series[name].values[-1]:,.0f} MB/s ({elapsed:.2f} s)")
        best = {k: max(s.values) for k, s in series.items()}
        rows = [
            {"benchmark": f"w2 tus {self.args.mib} MiB in {self.args.patch_mib} MiB PATCHes (MB/s)",
             "stor": fmt(best["tus"]), "reference": f"{fmt(best['post'])} one POST /<sha>",
             "ratio": f"{best['tus'] / best['post']:.3f}", "target": "ratio >= 0.8",
             "verdict": "PASS" if best["tus"] >= 0.8 * best["post"] else "FAIL"},
            {"benchmark": f"w2 tuspy {self.args.mib} MiB, chunk {self.args.patch_mib} MiB (MB/s)",
             "stor": fmt(best["tuspy"]), "reference": f"{fmt(best['post'])} one POST /<sha>",
             "ratio": f"{best['tuspy'] / best['post']:.3f}", "target": "-", "verdict": "-"},
            {"benchmark": "w2 peak RSS/worker, tus upload (MiB)", "stor": fmt(max(rss.values)),
             "reference": f"{fmt(idle)} at idle", "ratio": "-", "target": "< 100 MiB",
             "verdict": "PASS" if max(rss.values) < 100 else "FAIL"},
        ]
        print()
        table = print_table(rows)
        return {"series": {k: s.to_json() for k, s in series.items()}, "rss": rss.to_json(), "idle_rss": idle,
                "table": table}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="upload size in MiB (default 256)")
    parser.add_argument("--patch-mib", type=int, default=8, help="bytes per PATCH in MiB (default 8)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each upload (default 3); the best counts")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    started = dt.datetime.now()
    work = Path(tempfile.mkdtemp(prefix="stor-bench-tus-"))
    procs = Procs()
    try:
        result = TusBench(args, procs, work).run()
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    save_results("tus-", {"args": vars(args), "started": started.isoformat(), **result}, args.json, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
