#!/usr/bin/env python3
"""Benchmark the S3 API's SigV4 check per request against botocore signing the same request, in one run.

    python bench/sigv4.py                  # 7 runs of 3,000 requests of each kind (~15 s)
    python bench/sigv4.py --quick          # smoke: 1 run of 300
    python bench/sigv4.py --runs 9 --requests 10000 --json /tmp/sigv4.json

In-process, one thread, no network: the cost of stor/s3api/sigv4.py's SignatureVerifier.verify
(what the S3 listener does before anything else with a signed request) in µs per request, against
the client's own cost for the same request, botocore's S3SigV4Auth.add_auth (boto3's and aws-cli's
signer, and the code verify reuses for the canonical request). The ratio is stor's over botocore's:
1.0 means checking costs what signing does.

- GET, Authorization header: `GET /samples/<key>` with the headers boto3 sends for get_object
  (User-Agent, x-amz-checksum-mode, amz-sdk-*; signed: host, x-amz-checksum-mode,
  x-amz-content-sha256, x-amz-date), each request a different key. The verifier has the signing key
  cached, as it has for every request of a key but the first of the day.
- the same GET, signing key not cached: a new verifier for each request, so it derives the key (four
  HMACs): what the first request of a key and day costs.
- presigned GET: the same path presigned by S3SigV4QueryAuth (X-Amz-Expires=3600), sent with Host only.

Each run signs (botocore) and verifies (stor) the same fresh batch, alternating which goes first,
with the garbage collector off while timed; a figure is the median of the runs [min-max]. Results go
to bench/results/sigv4-<timestamp>.json (and --json PATH).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import platform
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import botocore  # noqa: E402
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from run import Series, cell, log, print_table, save_results  # noqa: E402
from starlette.datastructures import Headers  # noqa: E402

from stor.config import S3AccessKey  # noqa: E402
from stor.s3api.sigv4 import SignatureVerifier  # noqa: E402

ACCESS, SECRET = "AKIDSTORBENCH0000001", "bench-secret-0123456789abcdefghijklmnopq"
REGION = "us-east-1"
ENDPOINT = "http://127.0.0.1:9000"
USER_AGENT = (f"Boto3/1.43 md/Botocore#{botocore.__version__} ua/2.1 os/linux md/arch#x86_64 "
              f"lang/python#{platform.python_version()} cfg/retry-mode#legacy Botocore/{botocore.__version__}")

KINDS = [
    ("get", "GET, Authorization header, signing key cached"),
    ("get_cold", "GET, Authorization header, signing key derived"),
    ("presigned", "presigned GET"),
]


def key_path(i: int) -> str:
    sha = hashlib.sha256(b"%d" % i).hexdigest()
    return f"/samples/{sha[0:2]}/{sha[2:4]}/{sha[4:6]}/{sha}"


def unsigned_requests(kind: str, n: int, first: int) -> list[AWSRequest]:
    """The requests of a batch as a client has them before signing."""
    requests = []
    for i in range(first, first + n):
        url = ENDPOINT + key_path(i)
        if kind == "presigned":
            requests.append(AWSRequest(method="GET", url=url))
        else:
            requests.append(AWSRequest(method="GET", url=url, headers={
                "x-amz-checksum-mode": "ENABLED", "User-Agent": USER_AGENT,
                "amz-sdk-invocation-id": str(uuid.uuid4()), "amz-sdk-request": "attempt=1",
            }))
    return requests


def on_the_wire(request: AWSRequest) -> tuple[str, str, str, Headers]:
    """A signed request as the server's HTTP layer hands it over: path and query as sent, Headers."""
    parts = urlsplit(request.url)
    raw = [(b"host", parts.netloc.encode())]
    raw += [(name.lower().encode("latin-1"), value.encode("latin-1") if isinstance(value, str) else value)
            for name, value in request.headers.items()]
    raw += [(b"accept-encoding", b"identity"), (b"content-length", b"0")]
    return request.method, parts.path, parts.query, Headers(raw=raw)


def timed(work: Callable[[], None], n: int) -> float:
    """µs per request of work() over n requests, the garbage collector off."""
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter_ns()
        work()
        elapsed = time.perf_counter_ns() - started
    finally:
        gc.enable()
    return elapsed / n / 1000


def one_run(kind: str, n: int, first: int, verify_first: bool) -> tuple[float, float]:
    """(stor's µs per request, botocore's) for batches of n requests; verify_first: stor is timed first."""
    credentials = Credentials(ACCESS, SECRET)
    signer: Any = (S3SigV4QueryAuth(credentials, "s3", REGION, expires=3600) if kind == "presigned"
                   else S3SigV4Auth(credentials, "s3", REGION))
    keys = [S3AccessKey(ACCESS, SECRET, "read")]
    warm = SignatureVerifier(keys)

    def sign(batch: list[AWSRequest]) -> None:
        for request in batch:
            signer.add_auth(request)

    def verify(batch: list[AWSRequest]) -> float:
        wire = [on_the_wire(request) for request in batch]
        warm.verify(*wire[0])  # the signing key cached, as on a server that has seen this key today

        def check() -> None:
            for method, path, query, headers in wire:
                verifier = SignatureVerifier(keys) if kind == "get_cold" else warm
                if verifier.verify(method, path, query, headers) is None:
                    raise SystemExit("a request did not verify")

        return timed(check, n)

    if verify_first:
        checked = unsigned_requests(kind, n, first)
        sign(checked)  # untimed: what stor checks is what botocore signs
        server_us = verify(checked)
        signed = unsigned_requests(kind, n, first + n)
        client_us = timed(lambda: sign(signed), n)
    else:
        signed = unsigned_requests(kind, n, first)
        client_us = timed(lambda: sign(signed), n)
        server_us = verify(signed)
    return server_us, client_us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke: 1 run of 300 requests of each kind")
    parser.add_argument("--runs", type=int, default=7, help="runs of each kind (default 7); the median counts")
    parser.add_argument("--requests", type=int, default=3000, help="requests per run (default 3000)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.requests = 1, 300
    started = dt.datetime.now()
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    if float(loadavg[0]) > 0.5:
        log(f"warning: the machine is busy before the bench (load average {' '.join(loadavg)}): figures will be noisy")
    log(f"python {platform.python_version()}, botocore {botocore.__version__}; "
        f"{args.runs} runs of {args.requests} requests of each kind")

    results: dict[str, dict[str, Series]] = {}
    rows = []
    first = 0
    for kind, label in KINDS:
        stor, ref = Series("us/request"), Series("us/request")
        one_run(kind, min(args.requests, 200), first, False)  # warm-up: imports, caches, the interpreter's
        for run in range(args.runs):
            first += 2 * args.requests
            server_us, client_us = one_run(kind, args.requests, first, verify_first=run % 2 == 1)
            stor.add(server_us)
            ref.add(client_us)
        results[kind] = {"stor": stor, "reference": ref}
        ratio = stor.median / ref.median
        rows.append({
            "benchmark": f"{label} (µs/request)", "stor": cell(stor), "reference": f"{cell(ref)} botocore signing",
            "ratio": f"{ratio:.3f}", "target": "-", "verdict": "-",
        })
        log(f"{label}: stor {stor.median:.1f} µs, botocore {ref.median:.1f} µs")
    print()
    print_table(rows)
    save_results("sigv4-", {
        "args": vars(args), "started": started.isoformat(), "loadavg": loadavg,
        "python": platform.python_version(), "botocore": botocore.__version__,
        "results": {kind: {side: s.to_json() for side, s in r.items()} for kind, r in results.items()},
    }, args.json, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
