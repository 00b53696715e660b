#!/usr/bin/env python3
"""GET 4 KiB hit with rabbitmq_uri set against unset, in one run (issue 21, item 6: target >= 0.9 x).

    python bench/events.py                  # 5 runs of 5 s of each, alternated (~2 min)
    python bench/events.py --quick          # smoke: 2 runs of 2 s of each
    python bench/events.py --split-cores    # the broker and its consumer on a CPU of their own, in both runs
    python bench/events.py --sink maxlen    # no consumer: a queue the broker caps at 1,000 messages
    python bench/events.py --profile DIR    # and py-spy on every worker during one more run of each
    python bench/events.py --events '{"queue_size": 1}'   # the set server's "events" section

A private RabbitMQ node (tests/rabbitmq.py), and two `stor serve --workers 2` over the same mirrored
pair, started as a user starts them: one without rabbitmq_uri, one with the node's URL and
`?exchange=stor-bench&routing_key=sha`. The GET 4 KiB load is bench/run.py's (its Bench class: wrk
-t2 -c16 with lua/get.lua, a 1 s warm-up of each), so the "unset" figure is that of run.py's
"w2 GET 4 KiB hit" row. Runs alternate (unset, set, set, unset, ...); the ratio is set's median over
unset's. After each "set" run, every worker's /status says how many of its messages were published
and dropped. See bench/README.md, "Events (RabbitMQ)".
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import http.client
import json
import os
import platform
import re
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
sys.path.insert(0, str(BENCH.parent / "tests"))

from run import (  # noqa: E402
    AUTH_PASS, AUTH_USER, KiB, Bench, BenchError, Procs, Series, cell, children, cpu_seconds, ensure_tools,
    log, place_blob, print_table, save_results, tool_versions, wait_for_workers, wait_port,
)

EXCHANGE, ROUTING_KEY = "stor-bench", "sha"
TARGET = 0.9
SINKS = ("consumer", "maxlen", "none")
MAXLEN = 1000


# ---- the consumer (a process of its own: `events.py --consume URL`) -------------------------

def consume(url: str, exchange: str, binding_key: str) -> int:
    """Drains an exclusive queue bound to exchange with auto_ack; prints the count received every 0.2 s."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    channel.queue_bind(queue=queue, exchange=exchange, routing_key=binding_key)
    count = 0

    def on_message(ch, method, properties, body) -> None:
        nonlocal count
        count += 1

    channel.basic_consume(queue=queue, on_message_callback=on_message, auto_ack=True)
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        connection.process_data_events(time_limit=0.2)
        print(count, flush=True)


class ConsumerProc:
    """The consumer process and the last count it printed (a thread reads its stdout)."""

    def __init__(self, procs: Procs, url: str) -> None:
        self.p = procs.start([sys.executable, __file__, "--consume", url, EXCHANGE, "#"],
                             stdout=subprocess.PIPE, text=True)
        self.count = 0
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(30):
            raise BenchError("the consumer did not bind its queue within 30 s")

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            line = line.strip()
            if line == "ready":
                self.ready.set()
            elif line.isdigit():
                self.count = int(line)

    def pids(self) -> list[int]:
        return [self.p.pid]


# ---- the bench --------------------------------------------------------------------------------

class EventsBench(Bench):
    def __init__(self, args: argparse.Namespace, tools: dict[str, str], procs: Procs, work: Path) -> None:
        super().__init__(args, tools, procs, work)
        self.configs: dict[str, Path] = {}

    def make_fixtures(self) -> None:
        self.sha = place_blob(self.mirrors, self.rng.randbytes(4 * KiB))
        os.sync()

    def write_config(self, tag: str, rabbitmq_uri: str | None) -> Path:
        config = {"storage_pairs": [self.mirrors], "require_mount_points": False,
                  "basic_auth": f"{AUTH_USER}:{AUTH_PASS}"}
        if rabbitmq_uri:
            config["rabbitmq_uri"] = rabbitmq_uri
            if self.args.events:
                config["events"] = json.loads(self.args.events)
        path = self.work / f"config-{tag}.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start_stor_with(self, config: Path, tag: str) -> tuple[subprocess.Popen, int, list[int]]:
        """As Bench.start_stor, with this config and a log of its own."""
        from run import free_port, stor_cmd

        workers = self.args.workers
        port = free_port()
        cmd = [self.tools["stor"]] if self.tools["stor"] else stor_cmd()
        cmd += ["serve", "--config", str(config), "--port", str(port), "--workers", str(workers),
                "--log-level", self.args.log_level]
        log_path = self.work / f"stor-{tag}.log"
        out = open(log_path, "wb")
        p = self.procs.start(cmd, stdout=out, stderr=out, cwd=self.work)
        wait_port(port, p, f"stor serve [{tag}]")
        pids = wait_for_workers(p, port, workers, f"stor serve --workers {workers} [{tag}]", log_path)
        time.sleep(1.0)
        if self._workers(p.pid) != pids:
            raise BenchError(f"stor serve [{tag}]: worker processes changed after start-up")
        log(f"stor serve --workers {workers} [{tag}] on port {port} (pid {p.pid}, workers {pids})")
        return p, port, pids

    # -- /status, per worker --

    @staticmethod
    def status_once(port: int) -> dict:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            c.request("GET", "/status", headers={"Accept": "application/json"})
            r = c.getresponse()
            return json.loads(r.read())
        finally:
            c.close()

    def worker_states(self, port: int, workers: int) -> dict[float, dict]:
        """Every worker's events.rabbitmq, keyed by its `since` (each worker connected at its own moment).

        /status is answered by the worker the kernel gives the new connection to (a socket per worker,
        SO_REUSEPORT): a new connection at a time until every worker has answered."""
        seen: dict[float, dict] = {}
        for _ in range(60):
            rabbit = self.status_once(port).get("events", {}).get("rabbitmq")
            if rabbit is None:
                raise BenchError("/status has no events.rabbitmq on the server with rabbitmq_uri")
            seen[rabbit["since"]] = rabbit
            if len(seen) >= workers:
                break
        return seen

    def drained(self, port: int, timeout: float) -> tuple[dict[float, dict], float]:
        """Waits until no worker has anything queued (or timeout); the states and the seconds waited."""
        t0 = time.monotonic()
        while True:
            states = self.worker_states(port, self.args.workers)
            if all(s["queued"] == 0 and s["state"] == "up" for s in states.values()) \
                    or time.monotonic() - t0 > timeout:
                return states, time.monotonic() - t0
            time.sleep(0.1)


def totals(states: dict[float, dict]) -> dict[str, int]:
    return {k: sum(s.get(k, 0) for s in states.values()) for k in ("published", "dropped", "queued", "writes")}


def run(args: argparse.Namespace, procs: Procs, work: Path, started: dt.datetime) -> dict:
    from rabbitmq import RabbitMQ

    tools = ensure_tools(args.no_install)
    bench = EventsBench(args, tools, procs, work)
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    if float(loadavg[0]) > 0.5:
        bench.warn(f"the machine is busy before the bench (load average {' '.join(loadavg)}): figures will be noisy")
    bench.make_fixtures()

    class Broker(RabbitMQ):
        def env(self) -> dict[str, str]:
            env = super().env()
            if args.erl_args:
                env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] += " " + args.erl_args
            return env

    broker = Broker(work / "rabbitmq")
    t0 = time.monotonic()
    broker.start()
    log(f"RabbitMQ node {broker.nodename} on port {broker.port} (pid {broker.proc.pid}), "
        f"up in {time.monotonic() - t0:.1f} s")
    try:
        return measure(args, bench, broker, tools, loadavg, started)
    finally:
        broker.stop()


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def machine_busy(t0: tuple[int, int]) -> float:
    busy, total = machine_ticks()
    return (busy - t0[0]) / max(1, total - t0[1])


def split_cores(apart: list[int]) -> None:
    """The broker and the consumer (every thread of theirs) on the last CPU; this thread, and so stor and wrk
    started from it afterwards, on the others: as if the broker ran on a machine of its own, in both the
    set and the unset runs, so the ratio is what publishing costs stor itself."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise BenchError("--split-cores needs 2 CPUs at least")
    side, rest = {cpus[-1]}, set(cpus[:-1])
    for pid in apart:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), side)
            except OSError:  # a thread gone meanwhile
                pass
    os.sched_setaffinity(0, rest)
    log(f"split cores: broker and consumer on CPU {cpus[-1]}, this bench, stor and wrk on CPU "
        f"{', '.join(map(str, sorted(rest)))}")


def broker_pids(broker) -> list[int]:
    return [broker.proc.pid, *children(broker.proc.pid)]


def measure(args, bench: EventsBench, broker, tools, loadavg, started) -> dict:
    procs = bench.procs
    consumer = None
    if args.sink == "consumer":
        consumer = ConsumerProc(procs, broker.url)
        log(f"consumer (pika, auto_ack) bound to {EXCHANGE} with '#' (pid {consumer.p.pid})")
    elif args.sink == "maxlen":
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        ch = connection.channel()
        ch.exchange_declare(exchange=EXCHANGE, exchange_type="topic", durable=True)
        ch.queue_declare(queue="stor-bench-capped", arguments={"x-max-length": MAXLEN, "x-overflow": "drop-head"})
        ch.queue_bind(queue="stor-bench-capped", exchange=EXCHANGE, routing_key="#")
        connection.close()
        log(f"queue stor-bench-capped bound to {EXCHANGE} with '#', x-max-length {MAXLEN} (drop-head), no consumer")
    else:
        log(f"nothing bound to {EXCHANGE}: the broker drops every message (not mandatory) and confirms it")
    if args.split_cores:
        split_cores(broker_pids(broker) + (consumer.pids() if consumer else []))

    uri = f"{broker.url}?exchange={EXCHANGE}&routing_key={ROUTING_KEY}"
    servers = {}
    for tag, config in (("unset", bench.write_config("unset", None)), ("set", bench.write_config("set", uri))):
        servers[tag] = bench.start_stor_with(config, tag)

    path = f"/{bench.sha}"
    for tag, (_, port, _) in servers.items():
        status, _, data = _get(port, path)
        if status != 200 or len(data) != 4 * KiB:
            raise BenchError(f"GET {path} [{tag}]: {status}, {len(data)} bytes")
    _, set_port, _ = servers["set"]
    states, _ = bench.drained(set_port, 30)
    if len(states) != args.workers:
        bench.warn(f"/status showed {len(states)} distinct workers of {args.workers} (by their 'since')")
    if consumer is not None:
        deadline = time.monotonic() + 10
        while consumer.count < totals(states)["published"] and time.monotonic() < deadline:
            time.sleep(0.05)
        if consumer.count < 1 and json.loads(args.events or "{}").get("publish_requests", True):
            raise BenchError("the consumer received nothing after the check GET")
    log(f"checked: both answer the blob; [set] workers up, published so far {totals(states)['published']}")

    rps = {tag: Series("req/s") for tag in servers}
    published_runs: list[dict] = []

    log(f"GET 4 KiB (wrk -t{args.threads} -c{args.connections}): warm-up")
    for tag, (_, port, _) in servers.items():
        bench.get_run(port, path, 4 * KiB, args.warmup)

    def one(tag: str) -> None:
        _, port, pids = servers[tag]
        states, waited = bench.drained(set_port, 30)  # the warm-up's or the last run's messages out first
        before = totals(states)
        consumed0 = consumer.count if consumer else 0
        bpids = broker_pids(broker)
        cpu0, bcpu0, ccpu0, m0 = cpu_seconds(pids), cpu_seconds(bpids), consumer_cpu(), machine_ticks()
        r = bench.get_run(port, path, 4 * KiB, args.duration)
        cpu, bcpu, ccpu = cpu_seconds(pids) - cpu0, cpu_seconds(bpids) - bcpu0, consumer_cpu() - ccpu0
        busy = machine_busy(m0)
        secs, n = r["duration_s"], r["requests"]
        if r["problems"]:
            bench.warn(f"GET 4 KiB [{tag}]: {r['problems']} in {n} requests")
        extra = dict(requests=n, server_cpu_s=cpu, server_cpu_us_per_request=cpu / n * 1e6, broker_cpu_s=bcpu,
                     consumer_cpu_s=ccpu, machine_busy=busy, p99_ms=r["latency_p99_us"] / 1e3)
        line = (f"GET 4 KiB [{tag}]: {n / secs:,.0f} req/s, p99 {r['latency_p99_us'] / 1e3:.1f} ms; CPU cores: "
                f"workers {cpu / secs:.2f} ({cpu / n * 1e6:.0f} us/req), broker {bcpu / secs:.2f}"
                + (f", consumer {ccpu / secs:.2f}" if consumer else "") + f"; machine {busy:.0%} busy")
        if tag == "set":
            end = totals(bench.worker_states(port, args.workers))
            cpu1, bcpu1, ccpu1, t1 = cpu_seconds(pids), cpu_seconds(bpids), consumer_cpu(), time.monotonic()
            states, _ = bench.drained(port, 60)
            tail = time.monotonic() - t1
            after = totals(states)
            # The backlog left in the outboxes, sent after the run with no requests beside it.
            tail_n = after["published"] - end["published"]
            tail_cpu, tail_bcpu = cpu_seconds(pids) - cpu1, cpu_seconds(bpids) - bcpu1
            pub = after["published"] - before["published"]
            drop = after["dropped"] - before["dropped"]
            in_run = end["published"] - before["published"]
            writes = end["writes"] - before["writes"]
            consumed = None
            if consumer:
                deadline = time.monotonic() + 30
                while consumer.count - consumed0 < pub and time.monotonic() < deadline:
                    time.sleep(0.05)
                consumed = consumer.count - consumed0
            tail_ccpu = consumer_cpu() - ccpu1
            share = pub / (pub + drop) if pub + drop else float("nan")
            extra.update(published=pub, dropped=drop, published_in_run=in_run, writes_in_run=writes,
                         queued_at_end=end["queued"],
                         published_share=share, consumed=consumed, drain_before_s=waited,
                         after_run=dict(seconds=tail, published=tail_n, worker_cpu_s=tail_cpu, broker_cpu_s=tail_bcpu,
                                        consumer_cpu_s=tail_ccpu))
            published_runs.append(extra)
            line += (f"\n    {pub + drop:,} messages: {in_run:,} published during the run ({in_run / secs:,.0f}/s, "
                     f"{in_run / writes if writes else 0:.1f} a write), "
                     f"{drop:,} dropped, {tail_n:,} queued or unconfirmed at its end, published in the {tail:.1f} s after "
                     f"({tail_n / tail:,.0f}/s; workers {tail_cpu / tail_n * 1e6 if tail_n else 0:.0f} us, broker "
                     f"{tail_bcpu / tail_n * 1e6 if tail_n else 0:.0f} us CPU per message): {share:.1%} published")
            if consumer:
                line += f"; consumer received {consumed:,}"
        rps[tag].add(n / secs, **extra)
        log(line)

    def consumer_cpu() -> float:
        return cpu_seconds(consumer.pids()) if consumer else 0.0

    bench.interleaved([lambda: one("unset"), lambda: one("set")], args.runs)

    profile = None
    if args.profile:
        profile = profile_runs(args, bench, servers, path)

    for tag, (p, _, _) in servers.items():
        if p.poll() is not None:
            raise BenchError(f"stor serve [{tag}] exited with {p.returncode} during the bench")
    for tag, (p, _, _) in servers.items():
        procs.stop(p)
    floor = None
    if not args.no_floor:
        floor = publish_floor(args, broker, consumer)
    if consumer is not None:
        procs.stop(consumer.p)

    ratio = rps["set"].median / rps["unset"].median
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    w = args.workers
    where = ", broker on a CPU of its own" if args.split_cores else ""
    rows = [{"benchmark": f"w{w} GET 4 KiB hit, rabbitmq_uri set{where} (req/s)", "stor": cell(rps["set"]),
             "reference": f"{cell(rps['unset'])} rabbitmq_uri unset", "ratio": f"{ratio:.3f}",
             "target": f"ratio >= {TARGET}", "verdict": verdict}]
    print()
    table = print_table(rows)
    pub = sum(x["published"] for x in published_runs)
    drop = sum(x["dropped"] for x in published_runs)
    in_run = sum(x["published_in_run"] for x in published_runs)
    secs = args.duration * len(published_runs)

    def med(tag: str, key: str) -> float:
        return statistics.median(e[key] for e in rps[tag].extra)

    def busy(tag: str) -> str:
        return ", ".join(f"{e['machine_busy']:.0%}" for e in rps[tag].extra)

    def per(tag: str, key: str) -> str:
        return ", ".join(f"{e[key] / args.duration:.2f}" for e in rps[tag].extra)

    print(f"set runs: {pub + drop:,} messages (one per GET), {pub:,} published ({pub / max(1, pub + drop):.1%}), "
          f"{drop:,} dropped; published during the runs {in_run:,} ({in_run / secs:,.0f}/s against "
          f"{rps['set'].median:,.0f} GET/s), the rest from the outboxes after each run; "
          "per run: " + ", ".join(f"{x['published_share']:.1%}" for x in published_runs))
    us_unset, us_set = med("unset", "server_cpu_us_per_request"), med("set", "server_cpu_us_per_request")
    print(f"worker CPU per GET, median: unset {us_unset:.1f} us, set {us_set:.1f} us (+{us_set - us_unset:.1f} us)")
    tails = [x["after_run"] for x in published_runs if x["after_run"]["published"]]
    if tails:
        n = sum(t["published"] for t in tails)
        print(f"publishing with no requests beside it (the backlog after each run): {n / sum(t['seconds'] for t in tails):,.0f} "
              f"messages/s over both workers; CPU per message: workers {sum(t['worker_cpu_s'] for t in tails) / n * 1e6:.0f} us, "
              f"broker {sum(t['broker_cpu_s'] for t in tails) / n * 1e6:.0f} us"
              + (f", consumer {sum(t['consumer_cpu_s'] for t in tails) / n * 1e6:.0f} us" if consumer else ""))
    print(f"CPU cores during the runs, unset / set: workers {per('unset', 'server_cpu_s')} / {per('set', 'server_cpu_s')}; "
          f"broker {per('unset', 'broker_cpu_s')} / {per('set', 'broker_cpu_s')}"
          + (f"; consumer {per('unset', 'consumer_cpu_s')} / {per('set', 'consumer_cpu_s')}" if consumer else "")
          + f"; machine busy {busy('unset')} / {busy('set')}")
    broker_total = sum(x["broker_cpu_s"] + x["after_run"]["broker_cpu_s"] for x in published_runs)
    print(f"broker CPU over the set runs and their backlogs: {broker_total:.1f} s for {pub:,} messages "
          f"({broker_total / pub * 1e6 if pub else 0:.0f} us each)")
    if consumer is not None:
        print("consumer received / published, per set run: "
              + ", ".join(f"{x['consumed']:,} / {x['published']:,}" for x in published_runs))
    if floor:
        print(floor["text"])
    la_end = Path("/proc/loadavg").read_text().split()[0]
    print(f"load average (1 min) at the start and the end: {loadavg[0]}, {la_end} ({os.cpu_count()} CPUs)")
    if profile:
        print(profile["text"])
    for warning in bench.warnings:
        print(f"warning: {warning}")
    return {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "loadavg_at_start": loadavg, "loadavg_at_end": la_end},
        "versions": {**tool_versions(tools), **_amqp_versions(), "rabbitmq": _rabbitmq_version()},
        "settings": {k: getattr(args, k) for k in ("runs", "duration", "warmup", "connections", "threads",
                                                   "workers", "log_level", "sink", "events", "erl_args")},
        "rabbitmq_uri": uri.replace(broker.password, "***"),
        "set": rps["set"].to_json(),
        "unset": rps["unset"].to_json(),
        "ratio": ratio,
        "verdict": verdict,
        "published": pub, "dropped": drop,
        "profile": profile,
        "publish_floor": floor and floor["runs"],
        "table_text": table,
        "warnings": bench.warnings,
    }


def _get(port: int, path: str) -> tuple[int, None, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, None, r.read()
    finally:
        c.close()


def _amqp_versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for mod in ("aio-pika", "aiormq", "pamqp", "pika"):
        try:
            out[mod] = version(mod)
        except Exception:  # noqa: BLE001 - informational only
            pass
    return out


def _rabbitmq_version() -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"], capture_output=True, text=True,
                       check=False)
    return r.stdout.strip() or "?"


# ---- what publishing costs a client, stor's way and aio-pika's -----------------------------------

def publish_floor(args, broker, consumer) -> dict:
    """In this process (uvloop, as the workers), with the servers stopped: the same 64-byte messages to the
    same exchange, (a) through stor's own link (stor.events.amqp_link: frames marshalled once, a batch of
    256 in one write, confirms counted by delivery tag), (b) through aio-pika with a confirm awaited per
    message, 256 gathered (how stor published before 2026-12-08; only when aio-pika is installed).
    Client, broker and consumer CPU per message."""
    import asyncio

    from stor.config import parse_rabbitmq_uri
    from stor.events.amqp_link import AmqpLink

    try:
        import uvloop

        new_loop = uvloop.new_event_loop
    except ImportError:
        new_loop = asyncio.new_event_loop
    n_aio = 10_240 if args.quick else 40_960
    n_link = 10 * n_aio
    body = b"0123456789abcdef" * 4  # a sha's 64 characters
    batch = 256
    target = parse_rabbitmq_uri(f"{broker.url}?exchange={EXCHANGE}&routing_key={ROUTING_KEY}")

    async def through_link():
        link = await AmqpLink.open(target, "bench", 10)
        items = [(ROUTING_KEY, body, False)] * batch

        async def send(n: int) -> None:
            for _ in range(n // batch):
                assert await link.publish(items) == 0

        return send, link.close

    async def through_aio_pika():
        import aio_pika

        connection = await aio_pika.connect(broker.url)
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)

        async def send(n: int) -> None:
            for _ in range(n // batch):
                await asyncio.gather(*(exchange.publish(aio_pika.Message(body), routing_key=ROUTING_KEY,
                                                        mandatory=False) for _ in range(batch)))

        return send, connection.close

    async def measure_one(opener, count: int) -> dict:
        send, close = await opener()
        try:
            consumed0 = consumer.count if consumer else 0
            await send(batch)  # warm
            bpids = broker_pids(broker)
            t0, c0, b0 = time.perf_counter(), time.process_time(), cpu_seconds(bpids)
            k0 = cpu_seconds(consumer.pids()) if consumer else 0.0
            await send(count)
            secs, cpu, bcpu = time.perf_counter() - t0, time.process_time() - c0, cpu_seconds(bpids) - b0
        finally:
            await close()
        if consumer:
            deadline = time.monotonic() + 60
            while consumer.count - consumed0 < count + batch and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        kcpu = (cpu_seconds(consumer.pids()) - k0) if consumer else 0.0
        return {"messages": count, "seconds": secs, "per_s": count / secs, "client_us": cpu / count * 1e6,
                "broker_us": bcpu / count * 1e6, "consumer_us": kcpu / count * 1e6,
                "consumed": (consumer.count - consumed0 - batch) if consumer else None}

    ways = {"stor's link (frames marshalled once, 256 a write, confirms by tag)": (through_link, n_link)}
    try:
        import aio_pika  # noqa: F401

        ways["aio-pika (a confirm awaited per message, 256 gathered)"] = (through_aio_pika, n_aio)
    except ImportError:
        pass
    loop = new_loop()
    try:
        runs = {name: loop.run_until_complete(measure_one(opener, n)) for name, (opener, n) in ways.items()}
    finally:
        loop.close()
    lines = ["publishing alone, one client process (uvloop), servers stopped; CPU us per message:"]
    for name, r in runs.items():
        lines.append(f"  {name}: {r['messages']:,} in {r['seconds']:.1f} s, {r['per_s']:,.0f}/s; client {r['client_us']:.1f}, "
                     f"broker {r['broker_us']:.1f}" + (f", consumer {r['consumer_us']:.1f} (received {r['consumed']:,})"
                                                        if consumer else ""))
    if len(runs) == 1:
        lines.append("  (pip install aio-pika for the comparison with it)")
    return {"runs": runs, "text": "\n".join(lines)}


# ---- py-spy on the workers during one more run of each ---------------------------------------

# Frames whose inclusive cost is shown (a regex over py-spy's "function (file:line)").
PROFILE_GROUPS = [
    ("GET path: stor's protocol answering (front.py data_received)", r"^StorHttpProtocol\.data_received "),
    ("  of it: EventBus.requested (into the outbox)", r"^EventBus\.requested "),
    ("publisher: AmqpPublisher._publish_forever", r"^AmqpPublisher\._publish_forever "),
    ("  AmqpLink.publish (a batch marshalled and written)", r"^AmqpLink\.publish "),
    ("    of it: AmqpLink._write (the send() syscall)", r"^AmqpLink\._write "),
    ("    of it: AmqpLink._prefix (frames marshalled, once a key)", r"^AmqpLink\._prefix "),
    ("AmqpLink.data_received (confirms in)", r"^AmqpLink\.data_received "),
]


def py_spy_run(bench: EventsBench, server, path: str, seconds: int, out_dir: Path, tag: str) -> dict:
    """One more load run with py-spy record (100 Hz, raw) on every worker; the stacks, the requests, the CPU."""
    import shutil

    _, port, pids = server
    spy = shutil.which("py-spy")
    if spy is None:
        raise BenchError("--profile needs py-spy (pip install py-spy)")
    files = [out_dir / f"{tag}-worker-{pid}.txt" for pid in pids]
    spies = [bench.procs.start([spy, "record", "-p", str(pid), "-d", str(seconds + 2), "-r", "100", "-f", "raw",
                                "-o", str(f), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for pid, f in zip(pids, files)]
    time.sleep(1.0)  # py-spy attached
    before = totals(bench.worker_states(port, len(pids))) if tag == "set" else None
    cpu0 = cpu_seconds(pids)
    r = bench.get_run(port, path, 4 * KiB, seconds)
    cpu = cpu_seconds(pids) - cpu0
    published = totals(bench.worker_states(port, len(pids)))["published"] - before["published"] if before else 0
    for p in spies:
        p.wait(seconds + 30)
        bench.procs.stop(p)
    stacks: collections.Counter = collections.Counter()
    for f in files:
        if not f.exists():
            raise BenchError(f"py-spy wrote no {f}")
        for line in f.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if stack and n.isdigit():
                stacks[stack] += int(n)
    return {"stacks": stacks, "requests": r["requests"], "seconds": r["duration_s"], "cpu": cpu, "published": published,
            "files": [str(f) for f in files]}


def profile_runs(args, bench: EventsBench, servers: dict, path: str) -> dict:
    """py-spy on both servers' workers, one more run of each; each frame group's CPU in us per GET."""
    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    _, set_port, _ = servers["set"]
    runs = {}
    for tag in ("unset", "set"):
        bench.drained(set_port, 60)
        runs[tag] = py_spy_run(bench, servers[tag], path, args.duration, out_dir, tag)

    def us_per_get(tag: str, match) -> float:
        run_ = runs[tag]
        total = sum(run_["stacks"].values())
        n = sum(c for s, c in run_["stacks"].items() if match(s))
        return n / total * run_["cpu"] / run_["requests"] * 1e6 if total else float("nan")

    tags = ("unset", "set")
    lines = [(f"py-spy record (100 Hz, every worker) during one more run of each, in us of worker CPU per GET "
              f"(a frame's share of the samples x the workers' CPU / GETs; raw stacks in {out_dir}):"),
             f"  {'':58} {'unset':>7} {'set':>7}",
             f"  {'GETs/s':58} " + " ".join(f"{runs[t]['requests'] / runs[t]['seconds']:>7,.0f}" for t in tags),
             f"  {'worker CPU per GET (/proc)':58} "
             + " ".join(f"{runs[t]['cpu'] / runs[t]['requests'] * 1e6:>7.1f}" for t in tags)]
    shares: dict = {}
    for label, pattern in PROFILE_GROUPS:
        rx = re.compile(pattern)

        def match(s: str, rx=rx) -> bool:
            return any(rx.search(f) for f in s.split(";"))

        vals = [us_per_get(t, match) for t in ("unset", "set")]
        shares[label] = dict(zip(("unset", "set"), vals))
        lines.append(f"  {label:58} " + " ".join(f"{v:>7.1f}" for v in vals))
    amqp = re.compile(r"\(pamqp/|^(AmqpPublisher|AmqpLink)\.")
    amqp_us = us_per_get("set", lambda s: any(amqp.search(f) for f in s.split(";")))
    n_pub = runs["set"]["published"]
    lines.append(f"  {'every frame of AmqpPublisher, AmqpLink, pamqp':58} {0.0:>7.1f} {amqp_us:>7.1f}")
    if n_pub:
        lines.append(f"  = {amqp_us * runs['set']['requests'] / n_pub:,.0f} us per message published during the set run "
                     f"({n_pub:,} of {runs['set']['requests']:,} GETs)")
    # Self time (the leaf frame) that grew most from unset to set.
    leaf: dict = {}
    for t in ("unset", "set"):
        c: collections.Counter = collections.Counter()
        for s, n in runs[t]["stacks"].items():
            c[s.split(";")[-1]] += n
        total = sum(c.values())
        leaf[t] = {f: n / total * runs[t]["cpu"] / runs[t]["requests"] * 1e6 for f, n in c.items()}
    grew = sorted(set(leaf["unset"]) | set(leaf["set"]),
                  key=lambda f: leaf["set"].get(f, 0) - leaf["unset"].get(f, 0), reverse=True)
    lines.append("  self time that grew most (us per GET, unset -> set):")
    for f in grew[:10]:
        lines.append(f"    {leaf['unset'].get(f, 0):5.1f} -> {leaf['set'].get(f, 0):5.1f}  {f}")
    return {"dir": str(out_dir), "groups_us_per_get": shares, "text": "\n".join(lines),
            "runs": {t: {k: v for k, v in r.items() if k != "stacks"} for t, r in runs.items()}}


# ---- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GET 4 KiB with rabbitmq_uri set against unset, in one run.")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 runs of 2 s of each")
    p.add_argument("--split-cores", action="store_true",
                   help="the broker and the consumer on the last CPU, stor and wrk on the others, in both the set "
                        "and the unset runs: the ratio is then stor's own cost, as with the broker elsewhere")
    p.add_argument("--runs", type=int, help="runs of each, alternated; the median is reported (default 5, --quick 2)")
    p.add_argument("--duration", type=int, help="seconds per load run (default 5, --quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up of each server (default 1)")
    p.add_argument("--workers", type=int, default=2, help="stor serve --workers (default 2)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16, as bench/run.py)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2, as bench/run.py)")
    p.add_argument("--sink", choices=SINKS, default="consumer",
                   help="what drains the exchange: consumer (default: a pika consumer, auto_ack, in a process of "
                        f"its own), maxlen (a queue capped at {MAXLEN} messages by the broker, no consumer), "
                        "none (nothing bound: the broker drops what it routes nowhere; stor's publishes are not mandatory)")
    p.add_argument("--events", metavar="JSON",
                   help='the "events" section of the set server\'s config (e.g. \'{"queue_size": 100000}\'; default none)')
    p.add_argument("--erl-args", metavar="ARGS",
                   help="more Erlang VM flags for the node (e.g. '+sbwt none +sbwtdcpu none +sbwtdio none': "
                        "schedulers that do not spin waiting for work)")
    p.add_argument("--profile", metavar="DIR", help="py-spy record every worker during one more run of each; raw stacks in DIR")
    p.add_argument("--no-floor", action="store_true",
                   help="skip publishing alone from this process (stor's way and frames written a batch at a time)")
    p.add_argument("--log-level", default="info", help="stor serve --log-level (default info, as a user runs it)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--tmpdir", help="where to make the storage directories and the node's data")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs, the node's log)")
    p.add_argument("--no-install", action="store_true", help="fail instead of apt-get installing wrk/nginx/gcc")
    a = p.parse_args(argv)
    a.runs = a.runs or (2 if a.quick else 5)
    a.duration = a.duration or (2 if a.quick else 5)
    # What Bench's GET load run reads.
    a.get_client, a.no_fast_path = "wrk", False
    return a


def main(argv: list[str] | None = None) -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--consume":
        return consume(*sys.argv[2:5])
    args = parse_args(argv)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    procs = Procs()
    started = dt.datetime.now()
    work = Path(tempfile.mkdtemp(prefix="stor-bench-events-", dir=args.tmpdir))
    work.chmod(0o755)
    log(f"working in {work}")
    try:
        result = run(args, procs, work, started)
        save_results("events-", result, args.json, started)
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
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
