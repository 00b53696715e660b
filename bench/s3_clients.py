#!/usr/bin/env python3
"""Which S3 client for stor's S3 tier: obstore, aiobotocore, boto3 in threads, minio in threads, measured.

    python3 -m venv /tmp/s3bench-venv
    /tmp/s3bench-venv/bin/pip install obstore aiobotocore boto3 minio psutil
    /tmp/s3bench-venv/bin/python bench/s3_clients.py            # full (~5 min)
    /tmp/s3bench-venv/bin/python bench/s3_clients.py --quick    # smoke
    python3 bench/s3_clients.py --python /tmp/s3bench-venv/bin/python   # the clients in the venv

A real SeaweedFS (`weed mini`, tests/seaweed.py) on loopback; every (client, scenario) runs in a
subprocess of its own (`--worker`), so that its peak RSS (VmHWM) is that client's. See
bench/README.md, "S3 client choice".
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

MiB = 1 << 20
GET_SIZE = 64 * MiB
PUT_SIZE = 256 * MiB
EXIT_PUTS, EXIT_SIZE = 5, 16 * MiB  # the exit scenario: 5 uploads of 16 MiB, then the process exits at once
CHUNK = 1 * MiB
PART = 8 * MiB
IN_FLIGHT = 4
CONCURRENT_GETS = 16
POOL = 32  # connections / threads each client may use (16 concurrent GETs need more than the defaults)
GET_KEY = "bench/get-64MiB"
REGION = "us-east-1"

CLIENTS = ["obstore", "aiobotocore", "boto3-threads", "minio-threads"]
# obstore's ways of feeding a multipart upload
PUT_VARIANTS = {
    "obstore": ["obstore/async-gen", "obstore/sync-iter", "obstore/list", "obstore/writer"],
    "aiobotocore": ["aiobotocore"],
    "boto3-threads": ["boto3-threads"],
    "minio-threads": ["minio-threads"],
}
# the exit scenario: every way obstore uploads, plain bytes too, and one client without a Rust runtime beside
EXIT_VARIANTS = {
    "obstore": ["obstore/async-gen", "obstore/sync-iter", "obstore/list", "obstore/writer", "obstore/bytes"],
    "aiobotocore": ["aiobotocore"],
}


# --------------------------------------------------------------------------------------------
# the worker side: one client, one scenario, one JSON line on stdout


def vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


_BLOCK = os.urandom(CHUNK)


def chunks(total: int) -> Iterator[bytes]:
    """The upload's body, 1 MiB at a time, never held whole: each chunk a fresh object (as read off a
    socket), so that a client keeping references to the chunks it was given pays for them."""
    for _ in range(total // CHUNK):
        yield bytes(memoryview(_BLOCK))


async def achunks(total: int) -> AsyncIterator[bytes]:
    for c in chunks(total):
        yield c


def boto_config(**extra: Any) -> Any:
    kw: dict[str, Any] = dict(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
        region_name=REGION,
        max_pool_connections=POOL,
    )
    kw.update(extra)
    return kw


async def multipart(
    create: Callable[[], Any], upload_part: Callable[[int, bytes], Any], complete: Callable[[list[Any]], Any]
) -> None:
    """create / upload_part / complete from the 1 MiB generator, 8 MiB parts, up to 4 in flight."""
    upload_id = await create()
    sem = asyncio.Semaphore(IN_FLIGHT)
    tasks: list[asyncio.Task[tuple[int, str]]] = []

    async def one(number: int, data: bytes) -> tuple[int, str]:
        try:
            return number, await upload_part(upload_id, number, data)
        finally:
            sem.release()

    buf: list[bytes] = []
    size = 0
    number = 0

    async def flush() -> None:
        nonlocal buf, size, number
        await sem.acquire()
        number += 1
        tasks.append(asyncio.create_task(one(number, b"".join(buf))))
        buf, size = [], 0

    for c in chunks(PUT_SIZE):
        buf.append(c)
        size += len(c)
        if size >= PART:
            await flush()
    if buf:
        await flush()
    parts = sorted(await asyncio.gather(*tasks))
    await complete(upload_id, [{"PartNumber": n, "ETag": e} for n, e in parts])


class Client:
    """The four operations the bench needs, in each library's natural async (or threaded) way."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def get(self, key: str) -> int:  # bytes consumed
        raise NotImplementedError
    async def head(self, key: str) -> int:  # size
        raise NotImplementedError
    async def put(self, key: str, variant: str) -> None:
        raise NotImplementedError


class Obstore(Client):
    def __init__(self, a: argparse.Namespace) -> None:
        import obstore
        from obstore.store import S3Store

        self.ob = obstore
        self.store = S3Store(
            a.bucket,
            endpoint=a.endpoint,
            access_key_id=a.access_key,
            secret_access_key=a.secret_key,
            region=REGION,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )

    async def get(self, key: str) -> int:
        resp = await self.ob.get_async(self.store, key)
        n = 0
        async for c in resp.stream(min_chunk_size=CHUNK):
            n += len(c)
        return n

    async def head(self, key: str) -> int:
        return int((await self.ob.head_async(self.store, key))["size"])

    async def put(self, key: str, variant: str) -> None:
        kw = dict(chunk_size=PART, max_concurrency=IN_FLIGHT)
        if variant == "obstore/async-gen":
            await self.ob.put_async(self.store, key, achunks(PUT_SIZE), **kw)
        elif variant == "obstore/sync-iter":
            await self.ob.put_async(self.store, key, chunks(PUT_SIZE), **kw)
        elif variant == "obstore/list":
            await self.ob.put_async(self.store, key, self.body_list, **kw)
        elif variant == "obstore/bytes":
            await self.ob.put_async(self.store, key, self.body_bytes, **kw)
        elif variant == "obstore/writer":
            async with self.ob.open_writer_async(self.store, key, buffer_size=PART, max_concurrency=IN_FLIGHT) as w:
                for c in chunks(PUT_SIZE):
                    await w.write(c)
        else:
            raise ValueError(variant)

    def prepare(self, variant: str) -> None:
        # A list input holds the whole body: 256 distinct 1 MiB buffers, built before the clock.
        self.body_list = list(chunks(PUT_SIZE)) if variant == "obstore/list" else []
        self.body_bytes = b"".join(chunks(PUT_SIZE)) if variant == "obstore/bytes" else b""


class Aiobotocore(Client):
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a

    async def open(self) -> None:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        self._cm = get_session().create_client(
            "s3",
            endpoint_url=self.a.endpoint,
            aws_access_key_id=self.a.access_key,
            aws_secret_access_key=self.a.secret_key,
            region_name=REGION,
            config=AioConfig(**boto_config()),
        )
        self.s3 = await self._cm.__aenter__()

    async def close(self) -> None:
        await self._cm.__aexit__(None, None, None)

    async def get(self, key: str) -> int:
        resp = await self.s3.get_object(Bucket=self.a.bucket, Key=key)
        n = 0
        async with resp["Body"] as body:
            async for c in body.iter_chunks(CHUNK):
                n += len(c)
        return n

    async def head(self, key: str) -> int:
        return int((await self.s3.head_object(Bucket=self.a.bucket, Key=key))["ContentLength"])

    async def put(self, key: str, variant: str) -> None:
        b = self.a.bucket

        async def create() -> str:
            return (await self.s3.create_multipart_upload(Bucket=b, Key=key))["UploadId"]

        async def part(uid: str, n: int, data: bytes) -> str:
            return (await self.s3.upload_part(Bucket=b, Key=key, UploadId=uid, PartNumber=n, Body=data))["ETag"]

        async def complete(uid: str, parts: list[Any]) -> None:
            await self.s3.complete_multipart_upload(Bucket=b, Key=key, UploadId=uid, MultipartUpload={"Parts": parts})

        await multipart(create, part, complete)


class Boto3Threads(Client):
    def __init__(self, a: argparse.Namespace) -> None:
        import boto3
        from botocore.config import Config

        self.a = a
        self.s3 = boto3.client(
            "s3",
            endpoint_url=a.endpoint,
            aws_access_key_id=a.access_key,
            aws_secret_access_key=a.secret_key,
            region_name=REGION,
            config=Config(**boto_config()),
        )

    async def get(self, key: str) -> int:
        resp = await asyncio.to_thread(self.s3.get_object, Bucket=self.a.bucket, Key=key)
        body = resp["Body"]
        n = 0
        try:
            while c := await asyncio.to_thread(body.read, CHUNK):
                n += len(c)
        finally:
            body.close()
        return n

    async def head(self, key: str) -> int:
        return int((await asyncio.to_thread(self.s3.head_object, Bucket=self.a.bucket, Key=key))["ContentLength"])

    async def put(self, key: str, variant: str) -> None:
        b, s3 = self.a.bucket, self.s3

        async def create() -> str:
            return (await asyncio.to_thread(s3.create_multipart_upload, Bucket=b, Key=key))["UploadId"]

        async def part(uid: str, n: int, data: bytes) -> str:
            r = await asyncio.to_thread(s3.upload_part, Bucket=b, Key=key, UploadId=uid, PartNumber=n, Body=data)
            return r["ETag"]

        async def complete(uid: str, parts: list[Any]) -> None:
            await asyncio.to_thread(
                s3.complete_multipart_upload, Bucket=b, Key=key, UploadId=uid, MultipartUpload={"Parts": parts}
            )

        await multipart(create, part, complete)


class _GenReader:
    """A file-like read(n) over the chunk generator: how minio's put_object takes a stream."""

    def __init__(self, it: Iterator[bytes]) -> None:
        self.it, self.buf = it, b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            try:
                self.buf += next(self.it)
            except StopIteration:
                break
        if n < 0:
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out


class MinioThreads(Client):
    def __init__(self, a: argparse.Namespace) -> None:
        import urllib3
        from minio import Minio

        self.a = a
        host = a.endpoint.removeprefix("http://")
        http = urllib3.PoolManager(maxsize=POOL, timeout=urllib3.Timeout(connect=60, read=60), retries=False)
        self.mc = Minio(host, access_key=a.access_key, secret_key=a.secret_key, secure=False, region=REGION, http_client=http)

    async def get(self, key: str) -> int:
        resp = await asyncio.to_thread(self.mc.get_object, self.a.bucket, key)
        n = 0
        try:
            while c := await asyncio.to_thread(resp.read, CHUNK):
                n += len(c)
        finally:
            resp.close()
            resp.release_conn()
        return n

    async def head(self, key: str) -> int:
        return int((await asyncio.to_thread(self.mc.stat_object, self.a.bucket, key)).size)

    async def put(self, key: str, variant: str) -> None:
        # minio's own multipart: put_object(length=-1, part_size, num_parallel_uploads), in one thread
        await asyncio.to_thread(
            self.mc.put_object,
            self.a.bucket,
            key,
            _GenReader(chunks(PUT_SIZE)),
            -1,
            part_size=PART,
            num_parallel_uploads=IN_FLIGHT,
        )


def make_client(name: str, a: argparse.Namespace) -> Client:
    return {"obstore": Obstore, "aiobotocore": Aiobotocore, "boto3-threads": Boto3Threads, "minio-threads": MinioThreads}[
        name
    ](a)


async def worker(a: argparse.Namespace) -> dict[str, Any]:
    asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=POOL))
    client_name = a.worker.split("/")[0]
    c = make_client(client_name, a)
    await c.open()
    out: dict[str, Any] = {"client": a.worker, "scenario": a.scenario}
    try:
        if a.scenario == "exit":
            global PUT_SIZE
            PUT_SIZE = EXIT_SIZE
            if isinstance(c, Obstore):
                c.prepare(a.worker)
            for i in range(EXIT_PUTS):
                await c.put(f"{a.key}-{i}", a.worker)
        elif a.scenario == "put":
            if isinstance(c, Obstore):
                c.prepare(a.worker)
            out["rss_base"] = vm("VmRSS")
            t = time.perf_counter()
            await c.put(a.key, a.worker)
            out["seconds"] = time.perf_counter() - t
            out["mib_s"] = PUT_SIZE / MiB / out["seconds"]
        else:
            out["rss_base"] = vm("VmRSS")
            if a.scenario == "get1":
                assert await c.get(GET_KEY) == GET_SIZE  # warm-up
                runs = []
                for _ in range(a.runs):
                    t = time.perf_counter()
                    n = await c.get(GET_KEY)
                    runs.append(n / MiB / (time.perf_counter() - t))
                    assert n == GET_SIZE, n
                out["runs"] = runs
                out["mib_s"] = statistics.median(runs)
            elif a.scenario == "get16":
                await asyncio.gather(*(c.get(GET_KEY) for _ in range(CONCURRENT_GETS)))  # warm-up: the pool fills
                runs = []
                for _ in range(a.runs16):
                    t = time.perf_counter()
                    ns = await asyncio.gather(*(c.get(GET_KEY) for _ in range(CONCURRENT_GETS)))
                    runs.append(sum(ns) / MiB / (time.perf_counter() - t))
                    assert ns == [GET_SIZE] * CONCURRENT_GETS, ns
                out["runs"] = runs
                out["mib_s"] = statistics.median(runs)
            elif a.scenario == "head":
                for _ in range(20):
                    await c.head(GET_KEY)
                lat = []
                for _ in range(a.heads):
                    t = time.perf_counter()
                    assert await c.head(GET_KEY) == GET_SIZE
                    lat.append((time.perf_counter() - t) * 1000)
                lat.sort()
                out["median_ms"] = statistics.median(lat)
                out["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            else:
                raise ValueError(a.scenario)
    finally:
        await c.close()
    out["rss_peak"] = vm("VmHWM")
    return out


# --------------------------------------------------------------------------------------------
# the driver: one SeaweedFS, the workers one after another


def run_worker(
    python: str, spec: str, scenario: str, weed: Any, args: argparse.Namespace, key: str = "", settle: float = 0.0
) -> dict[str, Any]:
    cmd = [
        python, __file__, "--worker", spec, "--scenario", scenario,
        "--endpoint", weed.endpoint, "--bucket", weed.bucket, "--access-key", weed.access_key,
        "--secret-key", weed.secret_key, "--key", key, "--runs", str(args.runs), "--runs16", str(args.runs16),
        "--heads", str(args.heads), "--settle", str(settle),
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    res: dict[str, Any] = json.loads(lines[-1]) if lines else {"client": spec, "scenario": scenario}
    res["rc"] = p.returncode
    if p.returncode != 0 or not lines:
        res["stderr_tail"] = p.stderr[-1500:]
    return res


def fmt_rss(b: int | None) -> str:
    return f"{b / MiB:.0f}" if b else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="the interpreter with the clients installed")
    ap.add_argument("--only", default=",".join(CLIENTS), help="comma-separated clients")
    ap.add_argument("--scenarios", default="get1,get16,head,put,exit", help="comma-separated, of these")
    ap.add_argument("--runs", type=int, default=5, help="single 64 MiB GETs measured (after one warm-up)")
    ap.add_argument("--runs16", type=int, default=3, help="rounds of 16 concurrent GETs measured (after one)")
    ap.add_argument("--put-runs", type=int, default=5, help="256 MiB uploads, one process each")
    ap.add_argument("--abort-runs", type=int, default=10, help="uploads (one process each) for obstore's variants")
    ap.add_argument("--heads", type=int, default=500)
    ap.add_argument("--exit-runs", type=int, default=15, help="processes per variant in the exit scenario")
    ap.add_argument("--settle", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="1 run of each, 100 HEADs")
    ap.add_argument("--json", help="write every result here too")
    # worker mode
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--scenario", help=argparse.SUPPRESS)
    for opt in ("--endpoint", "--bucket", "--access-key", "--secret-key", "--key"):
        ap.add_argument(opt, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        print(json.dumps(asyncio.run(worker(a))), flush=True)
        if a.settle:
            time.sleep(a.settle)  # the exit scenario: let the client's own threads finish before finalization
        return 0

    if a.quick:
        a.runs, a.runs16, a.put_runs, a.abort_runs, a.heads, a.exit_runs = 1, 1, 1, 2, 100, 3
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from seaweed import SeaweedFS  # tests/seaweed.py

    clients = [c for c in a.only.split(",") if c]
    ver = subprocess.run(
        [a.python, "-c", "import importlib.metadata as m,json;print(json.dumps({p: m.version(p) for p in "
         "('obstore','aiobotocore','botocore','boto3','minio','urllib3','aiohttp')}))"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    versions = json.loads(ver)
    print("versions:", ", ".join(f"{k} {v}" for k, v in versions.items()), file=sys.stderr)
    load_start = os.getloadavg()[0]
    if load_start > 0.5:
        print(f"warning: load average {load_start:.2f}: other work on the machine skews every figure", file=sys.stderr)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="s3bench-") as tmp, SeaweedFS(Path(tmp)) as weed:
        print(f"weed mini up in {weed.start_seconds:.1f} s at {weed.endpoint}", file=sys.stderr)
        s3 = weed.client()
        s3.put_object(Bucket=weed.bucket, Key=GET_KEY, Body=os.urandom(GET_SIZE))
        for name in clients:
            for scenario in [x for x in ("get1", "get16", "head") if x in a.scenarios.split(",")]:
                r = run_worker(a.python, name, scenario, weed, a)
                print(json.dumps(r), file=sys.stderr)
                results.append(r)
            for spec in PUT_VARIANTS[name] if "put" in a.scenarios.split(",") else []:
                n = a.abort_runs if spec in ("obstore/async-gen", "obstore/sync-iter") else a.put_runs
                runs = []
                for i in range(n):
                    key = f"bench/put-{spec.replace('/', '-')}-{i}"
                    r = run_worker(a.python, spec, "put", weed, a, key=key)
                    try:
                        size = s3.head_object(Bucket=weed.bucket, Key=key)["ContentLength"]
                        s3.delete_object(Bucket=weed.bucket, Key=key)
                    except Exception as e:  # noqa: BLE001 - recorded, shown in the table
                        size = repr(e)
                    r["stored_size"] = size
                    print(json.dumps(r), file=sys.stderr)
                    runs.append(r)
                ok = [r["mib_s"] for r in runs if "mib_s" in r and r["stored_size"] == PUT_SIZE]
                results.append(
                    {
                        "client": spec, "scenario": "put", "runs": ok,
                        "mib_s": statistics.median(ok) if ok else None,
                        "rss_peak": max((r.get("rss_peak", 0) for r in runs), default=0),
                        "rss_base": min((r.get("rss_base", 0) for r in runs if r.get("rss_base")), default=0),
                        "exit_codes": [r["rc"] for r in runs],
                        "stored_ok": sum(r["stored_size"] == PUT_SIZE for r in runs),
                        "tails": [r["stderr_tail"] for r in runs if "stderr_tail" in r][:2],
                    }
                )  # fmt: skip
        exits: list[dict[str, Any]] = []
        for name in clients:
            for spec in EXIT_VARIANTS.get(name, []) if "exit" in a.scenarios.split(",") else []:
                for settle in (0.0, 1.0) if spec == "obstore/bytes" else (0.0,):
                    codes, stored = [], 0
                    for i in range(a.exit_runs):
                        key = f"bench/exit-{spec.replace('/', '-')}-{i}"
                        r = run_worker(a.python, spec, "exit", weed, a, key=key, settle=settle)
                        codes.append(r["rc"])
                        for j in range(EXIT_PUTS):
                            try:
                                stored += s3.head_object(Bucket=weed.bucket, Key=f"{key}-{j}")["ContentLength"] == EXIT_SIZE
                                s3.delete_object(Bucket=weed.bucket, Key=f"{key}-{j}")
                            except Exception:  # noqa: BLE001, S110 - counted as not stored
                                pass
                    e = {"client": spec, "scenario": "exit", "settle": settle, "exit_codes": codes, "stored_ok": stored}
                    print(json.dumps(e), file=sys.stderr)
                    exits.append(e)
        results += exits
        weed_rss = weed.peak_rss_bytes()

    by = {(r["client"], r["scenario"]): r for r in results}
    print(f"\nversions: {', '.join(f'{k} {v}' for k, v in versions.items())}")
    print(f"weed mini peak RSS {weed_rss / MiB:.0f} MiB; load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print("MiB/s: GET median of runs; 16 GETs total; PUT median over processes. RSS: peak MiB of the client's process.\n")
    hdr = f"{'client':<20} {'GET 64M':>8} {'RSS':>5} {'16xGET':>8} {'RSS':>5} {'HEAD med':>9} {'p99':>7} {'RSS':>5}"
    if {"get1", "get16", "head"} & set(a.scenarios.split(",")):
        print(hdr)
        print("-" * len(hdr))
    for name in clients if {"get1", "get16", "head"} & set(a.scenarios.split(",")) else []:
        g1, g16, h = by.get((name, "get1"), {}), by.get((name, "get16"), {}), by.get((name, "head"), {})
        print(
            f"{name:<20} {g1.get('mib_s', 0):>8.0f} {fmt_rss(g1.get('rss_peak')):>5} {g16.get('mib_s', 0):>8.0f} "
            f"{fmt_rss(g16.get('rss_peak')):>5} {h.get('median_ms', 0):>7.2f}ms {h.get('p99_ms', 0):>5.2f}ms "
            f"{fmt_rss(h.get('rss_peak')):>5}"
        )
    print()
    hdr = f"{'PUT 256 MiB (8 MiB parts, 4 in flight)':<40} {'MiB/s':>6} {'RSS':>5} {'base':>5}  exit codes"
    if "put" in a.scenarios.split(","):
        print(hdr)
        print("-" * len(hdr))
    for name in clients if "put" in a.scenarios.split(",") else []:
        for spec in PUT_VARIANTS[name]:
            r = by[(spec, "put")]
            m = f"{r['mib_s']:.0f}" if r["mib_s"] else "-"
            bad = sum(rc != 0 for rc in r["exit_codes"])
            codes = ",".join(map(str, r["exit_codes"]))
            print(
                f"{spec:<40} {m:>6} {fmt_rss(r['rss_peak']):>5} {fmt_rss(r['rss_base']):>5}  "
                f"{bad}/{len(r['exit_codes'])} non-zero [{codes}], stored {r['stored_ok']}/{len(r['exit_codes'])}"
            )
    if exits:
        print(f"\nexit: {EXIT_PUTS} uploads of {EXIT_SIZE // MiB} MiB, then the process exits at once (a process each)")
        hdr = f"{'client':<20} {'settle':>6}  non-zero exits  [codes]                     uploads stored"
        print(hdr)
        print("-" * len(hdr))
        for e in exits:
            bad, n = sum(rc != 0 for rc in e["exit_codes"]), len(e["exit_codes"])
            print(
                f"{e['client']:<20} {e['settle']:>5.0f}s  {bad:>3}/{n:<3} [{','.join(map(str, e['exit_codes']))}]  "
                f"{e['stored_ok']}/{n * EXIT_PUTS}"
            )
    for r in results:
        for t in r.get("tails", []) + ([r["stderr_tail"]] if "stderr_tail" in r else []):
            print(f"\n{r['client']} {r['scenario']} stderr tail:\n{t[-600:]}")
    if a.json:
        Path(a.json).write_text(json.dumps({"versions": versions, "weed_rss": weed_rss, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
