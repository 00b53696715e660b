#!/usr/bin/env python3
"""Benchmark the S3 API (`stor serve --s3-port`) against the blob API of the same server, in one run.

    python bench/s3api.py                  # 256 MiB uploads x5, 64 MiB GETs x20, listings over 10k and 100k blobs
    python bench/s3api.py --quick          # smoke: 32 MiB x1, 16 MiB GETs x3, 2k and 20k blobs
    python bench/s3api.py --runs 5 --mib 512 --work /srv/scratch

Why: the S3 API is another door to the same store; it must cost about what
the blob API does for the same bytes, or users of S3 tools pay for the
door. One `stor serve --workers 2 --s3-port P` over a mirrored pair of
directories on one disk; each figure is a ratio against a reference
measured in the same run, on the same server, bytes and disk:

- upload: `aws s3 cp` (aws-cli's defaults: multipart, 8 MiB parts, 10 at
  once) of a --mib file to `s3://samples/aa/bb/cc/<sha>`, timed from the
  command's start to its exit. Reference: `curl -T` of the same file to
  `/<sha>` (Basic auth), timed the same way. Ratio: curl's seconds over
  aws's (target >= 0.8, which aws-cli's own costs put out of reach here:
  see bench/README.md). Second reference, the same client against a real
  S3 server: `aws s3 cp` of the same file to SeaweedFS (`weed mini`, data
  on the same disk) reached directly; ratio SeaweedFS's seconds over
  stor's (target >= 0.8). boto3 `upload_file` (its defaults, a client
  made before the clock starts) for information.
- download: `GET` of a --get-mib object by curl, signed by curl's own
  `--aws-sigv4` (with `x-amz-content-sha256: UNSIGNED-PAYLOAD` added: S3
  requires the header and curl 7.88 does not send it), against curl's
  `GET /<sha>` with Basic auth; both to /dev/null, timed by curl
  (`time_total`), --get-runs of each alternated. Ratio: S3's median MB/s
  over the blob API's (target >= 0.8).
- listing: ListObjectsV2 pages of 1,000 layout keys over --small-blobs,
  then over --large-blobs stored blobs (tiny blobs written straight into
  the layout on both mirrors). Each page is a request signed by botocore's
  SigV4 signer before the clock starts, sent on a kept-alive connection,
  timed to its last byte: the first --pages pages by continuation token,
  and --pages more from random start-after keys. Ratio: the large median
  over the small (target <= 1.5: a page must not cost more when more is
  stored). boto3's list_objects_v2 paginator (its XML parsing included)
  for information.

Uploads run --runs times each, alternated (curl, aws, boto3, curl, ...);
the best (shortest) counts. Every upload is a new blob (the file's last 16
bytes changed), os.sync() runs before it, and after it the blob is checked
on both mirrors and removed there (S3 DELETE is refused by design). The
SigV4 verification cost per request is bench/sigv4.py's.

See bench/README.md, "S3 API".
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import os
import random
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from run import (  # noqa: E402
    AUTH_PASS, AUTH_USER, BenchError, Procs, Series, cpu_seconds, fmt, free_port, log, print_table, rel_path,
    save_results, stor_cmd, wait_for_workers, wait_port,
)

MiB = 1 << 20
BUCKET, REGION = "samples", "us-east-1"
ACCESS_KEY, SECRET_KEY = "bench-writer", "bench-" + secrets.token_hex(16)
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def layout_key(sha: str) -> str:
    return f"{sha[0:2]}/{sha[2:4]}/{sha[4:6]}/{sha}"


def real_command(name: str) -> str:
    """The program a command name runs, past a pyenv shim (a shell script: its start-up is not the client's)."""
    path = shutil.which(name)
    if path is None:
        raise BenchError(f"{name} not found")
    if "/.pyenv/shims/" in path:
        done = subprocess.run(["pyenv", "which", name], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return path


class S3ApiBench:
    def __init__(self, args: argparse.Namespace, procs: Procs, work: Path) -> None:
        self.args = args
        self.procs = procs
        self.work = work
        self.size = args.mib * MiB
        self.mirrors = [str(work / "disk1"), str(work / "disk2")]
        for m in self.mirrors:
            os.mkdir(m)
        self.home = work / "home"
        self.home.mkdir()
        self.source = work / "source.bin"
        with open(self.source, "wb") as f:
            f.writelines(os.urandom(MiB) for _ in range(args.mib))
        self.config = work / "config.json"
        self.config.write_text(json.dumps({
            "storage_pairs": [self.mirrors], "basic_auth": f"{AUTH_USER}:{AUTH_PASS}",
            "storage": {"require_mount_points": False},
            "s3_api": {"access_keys": [{"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "role": "write"}]},
        }))
        self.aws = real_command("aws")
        self.curl = real_command("curl")
        # The environment of the command-line clients: the credentials, and none of the machine's configuration.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.env.update(
            HOME=str(self.home), AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=str(self.home / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.home / "no-aws-credentials"), AWS_EC2_METADATA_DISABLED="true",
        )
        self.port = self.s3_port = 0
        self.weed: Any = None  # the second upload reference's SeaweedFS, while it runs
        self.pids: list[int] = []
        self.marks: list[tuple[str, str, float]] = []  # boto3's calls: (before|after, operation, time)

    # ---- the server ----------------------------------------------------------------

    def start(self) -> None:
        self.port, self.s3_port = free_port(), free_port()
        self.log_path = self.work / "stor.log"
        cmd = [*stor_cmd(), "serve", "--config", str(self.config), "--port", str(self.port), "--workers", "2",
               "--s3-port", str(self.s3_port), "--log-level", "warning"]
        with open(self.log_path, "wb") as out:  # the server keeps its own descriptor
            p = self.procs.start(cmd, stdout=out, stderr=out, cwd=self.work)
        wait_port(self.port, p, "stor serve")
        self.pids = wait_for_workers(p, self.port, 2, "stor serve --workers 2", self.log_path)
        wait_port(self.s3_port, p, "stor serve's S3 listener")
        log(f"stor serve --workers 2 on port {self.port}, S3 API on {self.s3_port} (workers {self.pids})")

    def s3_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.s3_port}{path}"

    def boto3(self, config=None):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.s3_url(""), aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION,
                            config=Config(retries={"max_attempts": 1}).merge(config or Config()))

    # ---- uploads -------------------------------------------------------------------

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

    def check_and_remove(self, sha: str, size: int) -> None:
        for root in self.mirrors:
            path = os.path.join(root, rel_path(sha))
            try:
                found = os.path.getsize(path)
            except FileNotFoundError:
                raise BenchError(f"{path}: missing after the upload") from None
            if found != size:
                raise BenchError(f"{path}: {found} bytes, not {size}")
            os.unlink(path)

    def timed(self, cmd: list[str], what: str, env: dict[str, str] | None = None) -> tuple[float, str]:
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env or self.env, capture_output=True, text=True, timeout=600, check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise BenchError(f"{what} exited {done.returncode}: {(done.stdout + done.stderr).strip()[-500:]}")
        return elapsed, done.stdout

    def up_curl(self, sha: str) -> float:
        elapsed, out = self.timed(
            [self.curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", f"{AUTH_USER}:{AUTH_PASS}",
             "-T", str(self.source), f"http://127.0.0.1:{self.port}/{sha}"], "curl -T")
        if out.strip() != "201":
            raise BenchError(f"curl -T: answered {out.strip()}")
        return elapsed

    def up_aws(self, sha: str) -> float:
        elapsed, _ = self.timed(
            [self.aws, "--endpoint-url", self.s3_url(""), "s3", "cp", "--only-show-errors", str(self.source),
             f"s3://{BUCKET}/{layout_key(sha)}"], "aws s3 cp")
        return elapsed

    def up_aws_weed(self, sha: str) -> float:
        """The same aws s3 cp to SeaweedFS itself: what a real S3 server costs this client."""
        weed = self.weed
        env = {**self.env, "AWS_ACCESS_KEY_ID": weed.access_key, "AWS_SECRET_ACCESS_KEY": weed.secret_key}
        elapsed, _ = self.timed(
            [self.aws, "--endpoint-url", weed.endpoint, "s3", "cp", "--only-show-errors", str(self.source),
             f"s3://{self.weed_bucket}/{layout_key(sha)}"], "aws s3 cp to SeaweedFS", env)
        return elapsed

    def weed_check_and_remove(self, sha: str, size: int) -> None:
        client = self.weed.client()
        found = client.head_object(Bucket=self.weed_bucket, Key=layout_key(sha))["ContentLength"]
        if found != size:
            raise BenchError(f"SeaweedFS {layout_key(sha)}: {found} bytes, not {size}")
        client.delete_object(Bucket=self.weed_bucket, Key=layout_key(sha))

    def up_boto3(self, sha: str) -> float:
        self.marks.clear()
        start = time.perf_counter()
        self.client.upload_file(str(self.source), BUCKET, layout_key(sha))
        elapsed = time.perf_counter() - start
        # Where its time went: up to the last part's answer, then the CompleteMultipartUpload (the server's
        # hash of the whole object and the commit: fsync, rename).
        parts = max(t for what, op, t in self.marks if op == "UploadPart" and what == "after")
        complete = [t for what, op, t in self.marks if op == "CompleteMultipartUpload"]
        self.boto3_phases.append({"parts_s": parts - start, "complete_s": complete[-1] - complete[0]})
        return elapsed

    def _mark(self, what: str):
        def note(model=None, **_) -> None:
            self.marks.append((what, model.name if model is not None else "?", time.perf_counter()))
        return note

    def aws_floor(self) -> float:
        """aws-cli's start-up and one small request (`aws s3 ls` of a prefix with no key), best of 3: what any aws
        command costs before its first byte."""
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            done = subprocess.run([self.aws, "--endpoint-url", self.s3_url(""), "s3", "ls", f"s3://{BUCKET}/zz/"],
                                  env=self.env, capture_output=True, text=True, timeout=60, check=False)
            best = min(best, time.perf_counter() - start)
            if done.returncode not in (0, 1):  # 1: nothing listed
                raise BenchError(f"aws s3 ls exited {done.returncode}: {done.stderr.strip()[-300:]}")
        return best

    def multipart_leftovers(self) -> list[str]:
        """Bytes the multipart uploads left on the mirrors once all were completed (none expected; a completed
        upload's record, upload.json and its lock, stays a while by design, for a Complete asked again)."""
        left = []
        for root in self.mirrors:
            for d in Path(root).glob(".*"):
                left += [str(p) for p in d.rglob("*") if p.is_file() and p.name not in ("upload.json", "lock")
                         and p.parent.name != "locks"]  # .stor-tmp/locks: the store's, kept
        return left

    def bench_uploads(self) -> dict:
        names = ["curl", "aws"] + ([] if self.args.no_seaweed else ["aws_weed"]) + \
            ([] if self.args.no_boto3 else ["boto3"])
        series = {name: Series("s") for name in names}
        for run in range(self.args.runs):
            for name in names:
                sha = self.new_blob()
                os.sync()
                # CPU seconds of the client (the command's, or this process's for boto3) and of the workers.
                who = resource.RUSAGE_SELF if name == "boto3" else resource.RUSAGE_CHILDREN
                client, server = _cpu(resource.getrusage(who)), cpu_seconds(self.pids)
                elapsed = getattr(self, f"up_{name}")(sha)
                client, server = _cpu(resource.getrusage(who)) - client, cpu_seconds(self.pids) - server
                series[name].add(elapsed, sha=sha, mb_s=self.size / elapsed / 1e6, client_cpu_s=client,
                                 server_cpu_s=server)
                if name == "aws_weed":
                    self.weed_check_and_remove(sha, self.size)
                else:
                    self.check_and_remove(sha, self.size)
                log(f"upload run {run + 1} {name}: {elapsed:.2f} s ({self.size / elapsed / 1e6:,.0f} MB/s), "
                    f"CPU s client {client:.2f}, workers {server:.2f}")
        leftovers = self.multipart_leftovers()
        if leftovers:
            log(f"note: multipart files left after every upload completed: {leftovers[:5]}")
        return {"series": series, "aws_floor": self.aws_floor(), "leftovers": leftovers}

    # ---- downloads -----------------------------------------------------------------

    def place_get_blob(self) -> str:
        data = os.urandom(self.args.get_mib * MiB)
        sha = hashlib.sha256(data).hexdigest()
        for root in self.mirrors:
            final = os.path.join(root, rel_path(sha))
            os.makedirs(os.path.dirname(final), exist_ok=True)
            with open(final, "wb") as f:
                f.write(data)
        return sha

    def curl_get(self, url: str, auth: list[str], size: int) -> float:
        done = subprocess.run(
            [self.curl, "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", *auth, url],
            env=self.env, capture_output=True, text=True, timeout=120, check=False)
        status, length, seconds = (done.stdout.split() + ["", "", ""])[:3]
        if done.returncode != 0 or status != "200" or int(length or 0) != size:
            raise BenchError(f"curl GET {url}: exit {done.returncode}, {done.stdout.strip()} {done.stderr.strip()}")
        return float(seconds)

    def bench_get(self) -> dict:
        size = self.args.get_mib * MiB
        sha = self.place_get_blob()
        blob = (f"http://127.0.0.1:{self.port}/{sha}", ["-u", f"{AUTH_USER}:{AUTH_PASS}"])
        s3 = (self.s3_url(f"/{BUCKET}/{layout_key(sha)}"),
              # curl 7.88 sends no x-amz-content-sha256 (curl/curl#8810), and S3 wants one: given, curl signs it
              ["--aws-sigv4", f"aws:amz:{REGION}:s3", "--user", f"{ACCESS_KEY}:{SECRET_KEY}",
               "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        signer = "curl --aws-sigv4"
        try:
            self.curl_get(*s3, size)
        except BenchError as e:
            log(f"curl --aws-sigv4 failed ({e}); a presigned URL instead")
            from botocore.config import Config

            presigner = self.boto3(Config(signature_version="s3v4"))
            url = presigner.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": layout_key(sha)},
                                                     ExpiresIn=3600)
            s3, signer = (url, []), "curl, presigned URL"
        self.curl_get(*blob, size)  # both warm: the blob is in the page cache
        series = {"blob": Series("MB/s"), "s3": Series("MB/s")}
        for _ in range(self.args.get_runs):
            for name, (url, auth) in (("blob", blob), ("s3", s3)):
                seconds = self.curl_get(url, auth, size)
                series[name].add(size / seconds / 1e6, seconds=seconds)
        log(f"GET {self.args.get_mib} MiB: blob API median {series['blob'].median:,.0f} MB/s, "
            f"S3 ({signer}) {series['s3'].median:,.0f} MB/s")
        for root in self.mirrors:
            os.unlink(os.path.join(root, rel_path(sha)))
        return {"series": series, "signer": signer}

    # ---- listings ------------------------------------------------------------------

    def add_blobs(self, count: int) -> float:
        """count new tiny blobs written into the layout on both mirrors (no fsync); seconds taken."""
        start = time.perf_counter()
        nonce = secrets.token_hex(8)
        new = []
        for i in range(count):
            data = f"stor bench s3api {nonce} {i}\n".encode()
            new.append((hashlib.sha256(data).hexdigest(), data))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

        def write(root: str) -> None:
            made = self.dirs.setdefault(root, set())
            for sha, data in new:
                s = sha.upper()
                for d in (s[0:2], f"{s[0:2]}/{s[2:4]}", f"{s[0:2]}/{s[2:4]}/{s[4:6]}"):
                    if d not in made:
                        try:
                            os.mkdir(f"{root}/{d}")
                        except FileExistsError:
                            pass
                        made.add(d)
                fd = os.open(f"{root}/{s[0:2]}/{s[2:4]}/{s[4:6]}/{s}.dat", flags, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)

        with ThreadPoolExecutor(len(self.mirrors)) as pool:  # one thread per mirror: the syscalls overlap
            list(pool.map(write, self.mirrors))
        self.keys.extend(layout_key(sha) for sha, _ in new)
        self.keys.sort()
        return time.perf_counter() - start

    def signed_list(self, conn: http.client.HTTPConnection, query: dict[str, str]
                    ) -> tuple[float, list[str], str | None]:
        """One ListObjectsV2 request signed before the clock starts; (seconds to the last byte, keys, next token)."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        path = f"/{BUCKET}?" + urlencode(sorted(query.items()))
        request = AWSRequest(method="GET", url=self.s3_url(path))
        S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION).add_auth(request)
        headers = dict(request.headers.items())
        start = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise BenchError(f"ListObjectsV2 {query}: {response.status} {body[:300]!r}")
        root = ElementTree.fromstring(body)
        keys = [e.text or "" for e in root.iter(f"{S3_NS}Key")]
        return elapsed, keys, root.findtext(f"{S3_NS}NextContinuationToken")

    def bench_list(self, label: str) -> dict:
        pages = self.args.pages
        conn = http.client.HTTPConnection("127.0.0.1", self.s3_port, timeout=60)
        walk, middle, boto = Series("ms"), Series("ms"), Series("ms")
        base = {"list-type": "2", "max-keys": "1000", "prefix": ""}
        self.signed_list(conn, base)  # a warm-up page, not counted
        token = None
        for n in range(pages):
            query = dict(base, **({"continuation-token": token} if token else {}))
            seconds, keys, token = self.signed_list(conn, query)
            if keys != self.keys[n * 1000:(n + 1) * 1000]:
                raise BenchError(f"{label}: page {n + 1} of the walk is not the stored keys in order")
            walk.add(seconds * 1000, page=n + 1, keys=len(keys))
            if token is None:
                break
        rng = random.Random(len(self.keys))
        for _ in range(pages):
            i = rng.randrange(0, len(self.keys) - 1000)
            seconds, keys, _ = self.signed_list(conn, dict(base, **{"start-after": self.keys[i]}))
            if keys != self.keys[i + 1:i + 1001]:
                raise BenchError(f"{label}: the page after {self.keys[i]} is not the next 1000 stored keys")
            middle.add(seconds * 1000, after=i, keys=len(keys))
        conn.close()
        if not self.args.no_boto3:
            paginator = self.client.get_paginator("list_objects_v2")
            start = time.perf_counter()
            for n, page in enumerate(paginator.paginate(Bucket=BUCKET, PaginationConfig={"PageSize": 1000})):
                now = time.perf_counter()
                boto.add((now - start) * 1000, keys=page.get("KeyCount"))
                start = now
                if n + 1 == pages:
                    break
        both = Series("ms")
        both.values = walk.values + middle.values
        log(f"ListObjectsV2 over {label}: walk median {walk.median:.1f} ms/page ({len(walk.values)} pages), "
            f"start-after median {middle.median:.1f} ms, boto3 paginator {boto.median:.1f} ms")
        return {"walk": walk, "middle": middle, "all": both, "boto3": boto}

    # ---- the run -------------------------------------------------------------------

    def run(self) -> dict:
        self.load_start = os.getloadavg()[0]  # other work on the machine shows in the figures: say how much
        self.start()
        if "upload" in self.args.only and not self.args.no_seaweed:
            from seaweed import SeaweedFS

            self.weed = SeaweedFS(self.work / "seaweed").start()
            self.weed_bucket = self.weed.new_bucket("bench")
            log(f"SeaweedFS (weed mini) at {self.weed.endpoint}, bucket {self.weed_bucket}")
        self.client = self.boto3()
        self.boto3_phases: list[dict] = []
        self.client.meta.events.register("before-call.s3", self._mark("before"))
        self.client.meta.events.register("after-call.s3", self._mark("after"))
        only = self.args.only
        rows: list[dict] = []
        result: dict = {}
        details: list[str] = []
        as_json = lambda d: {k: v.to_json() if isinstance(v, Series) else v for k, v in d.items()}  # noqa: E731
        if "upload" in only:
            up = self.bench_uploads()
            best = {k: min(s.values) for k, s in up["series"].items()}
            mib = self.args.mib
            rows.append({"benchmark": f"w2 aws s3 cp {mib} MiB, multipart (s)", "stor": fmt(best["aws"]),
                         "reference": f"{fmt(best['curl'])} curl -T /<sha>",
                         "ratio": f"{best['curl'] / best['aws']:.3f}", "target": "ratio >= 0.8",
                         "verdict": "PASS" if best["curl"] >= 0.8 * best["aws"] else "FAIL"})
            if "aws_weed" in best:
                rows.append({"benchmark": f"w2 aws s3 cp {mib} MiB, multipart (s)", "stor": fmt(best["aws"]),
                             "reference": f"{fmt(best['aws_weed'])} the same to SeaweedFS",
                             "ratio": f"{best['aws_weed'] / best['aws']:.3f}", "target": "ratio >= 0.8",
                             "verdict": "PASS" if best["aws_weed"] >= 0.8 * best["aws"] else "FAIL"})
            if "boto3" in best:
                rows.append({"benchmark": f"w2 boto3 upload_file {mib} MiB, multipart (s)",
                             "stor": fmt(best["boto3"]), "reference": f"{fmt(best['curl'])} curl -T /<sha>",
                             "ratio": f"{best['curl'] / best['boto3']:.3f}", "target": "-", "verdict": "-"})
            rows.append({"benchmark": "w2 aws s3 ls of an empty prefix (s)", "stor": fmt(up["aws_floor"]),
                         "reference": "-", "ratio": "-", "target": "-", "verdict": "-"})
            details.append("upload s, best [all]: " + "; ".join(
                f"{k} {min(s.values):.2f} [{', '.join(f'{v:.2f}' for v in s.values)}]"
                for k, s in up["series"].items()))
            details.append("CPU s per upload, median, client / workers: " + "; ".join(
                f"{k} {statistics.median(e['client_cpu_s'] for e in s.extra):.2f} / "
                f"{statistics.median(e['server_cpu_s'] for e in s.extra):.2f}" for k, s in up["series"].items()))
            if self.boto3_phases:
                details.append("boto3 upload_file, s to the last part's answer + CompleteMultipartUpload: " + ", ".join(
                    f"{p['parts_s']:.2f} + {p['complete_s']:.2f}" for p in self.boto3_phases))
            result["uploads"] = {"series": as_json(up["series"]), "aws_ls_floor_s": up["aws_floor"],
                                 "boto3_phases": self.boto3_phases,
                                 "multipart_leftovers": up["leftovers"]}
        if "get" in only:
            get = self.bench_get()
            s3, blob = get["series"]["s3"], get["series"]["blob"]
            rows.append({"benchmark": f"w2 GET {self.args.get_mib} MiB, {get['signer']} (MB/s)",
                         "stor": fmt(s3.median), "reference": f"{fmt(blob.median)} curl GET /<sha>",
                         "ratio": f"{s3.median / blob.median:.3f}", "target": "ratio >= 0.8",
                         "verdict": "PASS" if s3.median >= 0.8 * blob.median else "FAIL"})
            details.append(f"GET MB/s, median [min-max] of {len(s3.values)}: blob {blob.median:,.0f} "
                           f"[{min(blob.values):,.0f}-{max(blob.values):,.0f}], S3 {s3.median:,.0f} "
                           f"[{min(s3.values):,.0f}-{max(s3.values):,.0f}]")
            result["get"] = {"series": as_json(get["series"]), "signer": get["signer"]}
        if "list" in only:
            self.dirs: dict[str, set[str]] = {}
            self.keys: list[str] = []
            small, large = self.args.small_blobs, self.args.large_blobs
            made = self.add_blobs(small)
            log(f"{small:,} blobs written into the layout on both mirrors in {made:.1f} s")
            list_small = self.bench_list(f"{small:,} blobs")
            made = self.add_blobs(large - small)
            log(f"{large - small:,} more blobs written in {made:.1f} s")
            list_large = self.bench_list(f"{large:,} blobs")
            ls_small, ls_large = list_small["all"].median, list_large["all"].median
            rows.append({"benchmark": f"w2 ListObjectsV2 1000 keys, {large:,} blobs (ms/page)", "stor": fmt(ls_large),
                         "reference": f"{fmt(ls_small)} over {small:,} blobs", "ratio": f"{ls_large / ls_small:.3f}",
                         "target": "ratio <= 1.5", "verdict": "PASS" if ls_large <= 1.5 * ls_small else "FAIL"})
            if not self.args.no_boto3:
                b_small, b_large = list_small["boto3"].median, list_large["boto3"].median
                rows.append({"benchmark": f"w2 boto3 list_objects_v2 page, {large:,} blobs (ms/page)",
                             "stor": fmt(b_large), "reference": f"{fmt(b_small)} over {small:,} blobs",
                             "ratio": f"{b_large / b_small:.3f}", "target": "-", "verdict": "-"})
            details.append("ListObjectsV2 ms/page, median of the walk / from start-after [min-max of all]: "
                           + "; ".join(
                f"{label} blobs {r['walk'].median:.1f} / {r['middle'].median:.1f} "
                f"[{min(r['all'].values):.1f}-{max(r['all'].values):.1f}]"
                for label, r in ((f"{small:,}", list_small), (f"{large:,}", list_large))))
            result["list"] = {"small": {"blobs": small, **as_json(list_small)},
                              "large": {"blobs": large, **as_json(list_large)}}
        details.append("load average (1 min) at the start and the end: "
                       f"{self.load_start:.2f}, {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
        print()
        table = print_table(rows)
        detail = "\n".join(details)
        print(detail, flush=True)
        return {**result, "table": table, "detail": detail}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke: 32 MiB x1, 16 MiB GETs x3, 2k and 20k blobs")
    parser.add_argument("--mib", type=int, default=None, help="upload size in MiB (default 256)")
    parser.add_argument("--runs", type=int, default=None, help="runs of each upload (default 5); the best counts")
    parser.add_argument("--get-mib", type=int, default=None, help="GET size in MiB (default 64)")
    parser.add_argument("--get-runs", type=int, default=None,
                        help="GETs of each kind, alternated (default 20); the medians count")
    parser.add_argument("--small-blobs", type=int, default=None, help="blobs stored for the first listing (10000)")
    parser.add_argument("--large-blobs", type=int, default=None, help="blobs stored for the second (100000)")
    parser.add_argument("--pages", type=int, default=20, help="pages walked, and pages from start-after (20)")
    parser.add_argument("--only", default="upload,get,list", help="groups to run: upload, get, list (default all)")
    parser.add_argument("--no-boto3", action="store_true", help="no boto3 figures (for information only)")
    parser.add_argument("--no-seaweed", action="store_true", help="no upload to SeaweedFS (the second reference)")
    parser.add_argument("--work", help="the directory to work in (default: a new one under $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    quick = {"mib": 32, "runs": 1, "get_mib": 16, "get_runs": 3, "small_blobs": 2000, "large_blobs": 20000}
    full = {"mib": 256, "runs": 5, "get_mib": 64, "get_runs": 20, "small_blobs": 10000, "large_blobs": 100000}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.only = set(args.only.split(","))
    if args.only - {"upload", "get", "list"}:
        parser.error(f"--only: unknown groups {', '.join(sorted(args.only - {'upload', 'get', 'list'}))}")
    if args.large_blobs <= args.small_blobs or args.small_blobs < 1001:
        parser.error("--small-blobs must be over 1000 and --large-blobs more than it")
    started = dt.datetime.now()
    work = Path(tempfile.mkdtemp(prefix="stor-bench-s3api-", dir=args.work))
    procs = Procs()
    bench = None
    try:
        bench = S3ApiBench(args, procs, work)
        result = bench.run()
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        if bench is not None and bench.weed is not None:
            bench.weed.stop()
        procs.stop_all()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    save_results("s3api-", {"args": vars(args), "started": started.isoformat(), **result}, args.json, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
