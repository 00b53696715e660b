"""Credential floods: failed bcrypt checks limited per client address, checks at once bounded per worker (429).

Every server here runs one worker and reads need credentials, so blob GETs take the fast path
(in [fast]) and uploads the ASGI path: the client address must reach the limits both ways.
Different client addresses are real ones: Linux answers on all of 127.0.0.0/8, and a client
may bind any of them as its source.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from conftest import AUTH, StorServer, pair_config, sha256, wait_for
from stor.config import AuthSettings, ConfigError, parse
from stor.http.ratelimit import FailureBudget

READER = ("reader", "reader-pass")
WRITER2 = ("writer2", "writer2-pass")
SLOW = ("slow", "slow-pass")  # a bcrypt cost of 12: a check takes a noticeable fraction of a second
TOO_MANY_FAILED = "Too many failed password checks from this address; retry in "
TOO_MANY_AT_ONCE = "Too many password checks at once; retry shortly"


def user(who: tuple[str, str], role: str, rounds: int = 4) -> dict[str, str]:
    hashed = bcrypt.hashpw(who[1].encode(), bcrypt.gensalt(rounds=rounds)).decode()
    return {"name": who[0], "password_hash": hashed, "role": role}


def from_address(server: StorServer, address: str) -> httpx.Client:
    """A client whose connections come from `address` (any of 127.0.0.0/8)."""
    return httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address=address), timeout=30)


def cpu_seconds(server: StorServer) -> float:
    """User and system CPU time of the server and its workers so far (all their threads)."""
    ticks = 0
    for pid in server.processes():
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def one_check_seconds(rounds: int) -> float:
    """CPU time (not wall time, which other load on the machine stretches) of one bcrypt check."""
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=rounds))
    started = time.thread_time()
    bcrypt.checkpw(b"pw", hashed)
    return time.thread_time() - started


def assert_429(r: httpx.Response, reason: str) -> int:
    """A 429 with a one-line plain-text reason and Retry-After in whole seconds; that number."""
    assert r.status_code == 429, (r.status_code, r.text)
    assert r.text.startswith(reason) and "\n" not in r.text, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert "www-authenticate" not in r.headers  # not a question of credentials: asking again is no use
    return int(r.headers["retry-after"])


# ---- the failure budget of one address ---------------------------------------------------------

BURST = 5


@pytest.fixture(scope="module")
def budget_server(tmp_path_factory: pytest.TempPathFactory, fast_path: bool) -> Iterator[StorServer]:
    """A burst of 5 failures, then 1 a minute: no failure budget comes back within a test."""
    root = tmp_path_factory.mktemp("budget")
    disks = (root / "disk1", root / "disk2")
    for d in disks:
        d.mkdir()
    config = pair_config(
        disks,
        users=[user(READER, "read"), user(WRITER2, "write")],
        read_auth_required=True,
        auth={"failed_checks_burst": BURST, "failed_checks_per_minute": 1, "max_concurrent_checks": 8},
    )
    server = StorServer(workdir=root, config=config, fast_path=fast_path).start()
    yield server
    server.stop()


def test_a_flood_of_wrong_passwords_gets_429_as_the_budget_predicts(budget_server: StorServer) -> None:
    flooder, other = "127.0.0.11", "127.0.0.12"
    body = b"stored before the flood"
    sha = sha256(body)
    with from_address(budget_server, flooder) as c:
        # A right password, checked: it gives its token back, so all 5 failures remain.
        assert c.put(f"/{sha}", content=body, auth=WRITER2).status_code == 201
        statuses, waits = [], []
        for _ in range(BURST + 7):
            r = c.get(f"/{sha}", auth=(READER[0], "a wrong guess"))
            statuses.append(r.status_code)
            if r.status_code == 429:
                waits.append(assert_429(r, TOO_MANY_FAILED))
        assert statuses == [401] * BURST + [429] * 7
        assert all(1 <= w <= 60 for w in waits), waits  # one failure back a minute
        assert r.text == f"{TOO_MANY_FAILED}{waits[-1]} s"

        # Unknown users and wrong methods of asking (an upload, /exists) draw on the same budget.
        assert_429(c.put(f"/{sha}", content=body, auth=("nobody", "guess")), TOO_MANY_FAILED)
        assert_429(c.post("/exists", json=[sha], auth=("nobody", "guess")), TOO_MANY_FAILED)

        # What needs no bcrypt check still passes from the flooding address: the remembered password
        # (reads, fast path, and uploads) and the original's basic_auth writer.
        assert c.get(f"/{sha}", auth=WRITER2).content == body
        assert c.put(f"/{sha}", content=body, auth=WRITER2).status_code == 200
        more = b"written during the flood"
        assert c.put(f"/{sha256(more)}", content=more, auth=WRITER2).status_code == 201
        during = b"basic_auth during the flood"
        assert c.put(f"/{sha256(during)}", content=during, auth=AUTH).status_code == 201
        assert c.get(f"/{sha256(during)}", auth=AUTH).content == during

        # A right password that would need a check is refused too (as documented): knowing it is
        # right would take the check the budget is there to spare.
        assert_429(c.get(f"/{sha}", auth=READER), TOO_MANY_FAILED)

    # Another address has a budget of its own, on both paths.
    with from_address(budget_server, other) as c:
        assert c.get(f"/{sha}", auth=READER).content == body
        assert c.get(f"/{sha}", auth=(READER[0], "wrong")).status_code == 401
        assert c.post("/exists", json=[sha], auth=(READER[0], "wrong")).status_code == 401


def test_the_first_refusal_of_an_address_is_logged_once_without_credentials(budget_server: StorServer) -> None:
    flooder = "127.0.0.21"
    guesses = [f"guess-number-{i}" for i in range(BURST + 4)]
    with from_address(budget_server, flooder) as c:
        statuses = [c.get(f"/{'0' * 64}", auth=(READER[0], guess)).status_code for guess in guesses]
    assert statuses == [401] * BURST + [429] * 4
    lines = [line for line in budget_server.log_text().splitlines() if flooder in line]
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0] and "too many" in lines[0], lines[0]
    log = budget_server.log_text()
    assert not any(guess in log for guess in guesses)


def test_a_forged_x_forwarded_for_does_not_buy_a_fresh_budget(budget_server: StorServer) -> None:
    """uvicorn would take X-Forwarded-For from 127.0.0.1 as the client's address on the ASGI path
    (uploads); stor turns that off, so both paths limit the peer's own address."""
    flooder = "127.0.0.1"
    body = b"forged addresses"
    statuses = []
    with from_address(budget_server, flooder) as c:
        for i in range(BURST + 3):
            forged = {"x-forwarded-for": f"10.9.{i}.1", "forwarded": f"for=10.9.{i}.1"}
            statuses.append(c.put(f"/{sha256(body)}", content=body, auth=("nobody", "guess"), headers=forged).status_code)
    assert statuses == [401] * BURST + [429] * 3


# ---- a budget that comes back ------------------------------------------------------------------


def test_the_budget_comes_back_at_its_rate(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """600 a minute: one failure back every 0.1 s. Polled with wrong passwords, which cost nothing while refused."""
    config = pair_config(
        mirrors,
        users=[user(READER, "read")],
        read_auth_required=True,
        auth={"failed_checks_burst": 2, "failed_checks_per_minute": 600},
    )
    server = start_server(config)
    url = f"{server.url}/{'0' * 64}"
    wrong = (READER[0], "wrong")
    refusals: list[httpx.Response] = []

    def refused() -> bool:
        r = c.get(url, auth=wrong)
        if r.status_code == 429:
            refusals.append(r)
        return r.status_code == 429

    with from_address(server, "127.0.0.31") as c:
        assert [c.get(url, auth=wrong).status_code for _ in range(2)] == [401, 401]
        wait_for(refused, timeout=5, what="the burst spent")
        assert assert_429(refusals[0], TOO_MANY_FAILED) == 1  # a tenth of a second, rounded up
        # Polled with wrong passwords: a refusal does not spend the token that comes next.
        wait_for(lambda: c.get(url, auth=wrong).status_code == 401, timeout=5, what="a failure back")
        # A right password is checked again (404: no such blob, but the credentials are good).
        wait_for(lambda: c.get(url, auth=READER).status_code == 404, timeout=5, what="a right password checked")


# ---- checks at once, and their CPU -------------------------------------------------------------


def test_more_checks_at_once_than_allowed_get_429(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """max_concurrent_checks 1 and a cost-12 hash: checks sent together overlap, and all but one are refused."""
    config = pair_config(
        mirrors,
        users=[user(SLOW, "write", rounds=12)],
        read_auth_required=True,
        auth={"max_concurrent_checks": 1, "failed_checks_burst": 1000},
    )
    server = start_server(config)
    url = f"/{'0' * 64}"
    count = 6
    ready = threading.Barrier(count)
    results: list[httpx.Response] = []

    def ask(n: int) -> None:
        # Addresses of their own, so that only the bound on checks at once can refuse them.
        with from_address(server, f"127.0.1.{n + 1}") as c:
            assert c.get("/").status_code == 200  # connected, so that the checks start together
            ready.wait(timeout=30)
            results.append(c.get(url, auth=(SLOW[0], f"wrong-{n}")))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(count)]
    cpu_before = cpu_seconds(server)
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    cpu_used = cpu_seconds(server) - cpu_before
    statuses = sorted(r.status_code for r in results)
    assert len(statuses) == count
    assert set(statuses) <= {401, 429}, statuses
    assert 401 in statuses and 429 in statuses, statuses
    for r in results:
        if r.status_code == 429:
            assert assert_429(r, TOO_MANY_AT_ONCE) == 1
    # Each refusal ran no check: far less CPU than `count` checks would take.
    assert cpu_used < (statuses.count(401) + 2) * one_check_seconds(12), (cpu_used, statuses)

    # Once the checks are done the bound is free again, and a remembered password needs none.
    with httpx.Client(base_url=server.url, auth=SLOW, timeout=30) as c:
        wait_for(lambda: c.get(url).status_code == 404, timeout=10, what="the checks done")
        assert [c.get(url).status_code for _ in range(count)] == [404] * count


def test_an_exhausted_address_costs_no_cpu(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    config = pair_config(
        mirrors,
        users=[user(SLOW, "write", rounds=12)],
        read_auth_required=True,
        auth={"failed_checks_burst": 1, "failed_checks_per_minute": 1},
    )
    server = start_server(config)
    url = f"/{'0' * 64}"
    with from_address(server, "127.0.0.41") as c:
        assert c.get(url, auth=(SLOW[0], "wrong")).status_code == 401
        cpu_before = cpu_seconds(server)
        for n in range(8):
            assert_429(c.get(url, auth=(SLOW[0], f"wrong-{n}")), TOO_MANY_FAILED)
        cpu_used = cpu_seconds(server) - cpu_before
    assert cpu_used < one_check_seconds(12), f"8 refusals took {cpu_used:.2f}s of CPU"


# ---- configuration ------------------------------------------------------------------------------

PAIRS = [["/mnt/a", "/mnt/b"]]


def test_parse_limits_default_and_are_read() -> None:
    assert parse({"storage_pairs": PAIRS}).auth == AuthSettings(
        max_concurrent_checks=2, failed_checks_per_minute=30.0, failed_checks_burst=10
    )
    auth = parse(
        {"storage_pairs": PAIRS, "auth": {"max_concurrent_checks": 4, "failed_checks_per_minute": 0.5, "failed_checks_burst": 3}}
    ).auth
    assert (auth.max_concurrent_checks, auth.failed_checks_per_minute, auth.failed_checks_burst) == (4, 0.5, 3)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_concurrent_checks": 0}, "auth.max_concurrent_checks: must be at least 1"),
        ({"max_concurrent_checks": -1}, "auth.max_concurrent_checks: expected a non-negative whole number, got -1"),
        ({"max_concurrent_checks": 1.5}, "auth.max_concurrent_checks: expected a non-negative whole number, got 1.5"),
        ({"max_concurrent_checks": True}, "auth.max_concurrent_checks: expected a non-negative whole number, got True"),
        ({"failed_checks_per_minute": 0}, "auth.failed_checks_per_minute: expected a positive number, got 0"),
        ({"failed_checks_per_minute": -3}, "auth.failed_checks_per_minute: expected a positive number, got -3"),
        ({"failed_checks_per_minute": "30"}, "auth.failed_checks_per_minute: expected a positive number, got '30'"),
        ({"failed_checks_burst": 0}, "auth.failed_checks_burst: must be at least 1"),
        ({"failed_checks_burst": None}, "auth.failed_checks_burst: expected a non-negative whole number, got None"),
        ({"failed_check_burst": 5}, "auth.failed_check_burst: unknown key; the keys of auth are users, htpasswd_files, "
         "read_auth_required, max_concurrent_checks, failed_checks_per_minute, failed_checks_burst"),
    ],
)
def test_parse_bad_limits_are_named(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"storage_pairs": PAIRS, "auth": values})
    assert str(caught.value) == message


# ---- the per-address table's memory (stor.http.ratelimit, in process) ---------------------------


def test_budget_table_forgets_addresses_whose_budget_is_full_again() -> None:
    # A billion a minute: a spent token is back within a microsecond, so every bucket is full by the next call.
    budget = FailureBudget(per_minute=1e9, burst=1, max_addresses=4)
    for address in ("a", "b", "c", "d"):
        assert budget.take(address) is None
    assert len(budget) == 4
    assert budget.take("e") is None  # the table is full: the full buckets are forgotten first
    assert len(budget) == 1


def test_budget_table_is_bounded_dropping_the_least_recently_charged() -> None:
    budget = FailureBudget(per_minute=1e-9, burst=1, max_addresses=10)  # nothing comes back during the test
    for n in range(10):
        assert budget.take(f"10.0.0.{n}") is None  # each spent
    assert budget.take("10.0.0.0") is not None  # refused, and now the most recently charged
    assert budget.take("10.0.0.10") is None  # no room: the least recently charged goes
    assert len(budget) == 10
    assert budget.take("10.0.0.0") is not None  # still remembered: still spent
    assert budget.take("10.0.0.1") is None  # forgotten: a fresh budget
    for n in range(100, 200):
        assert budget.take(f"10.0.1.{n}") is None
        assert len(budget) <= 10


def test_budget_right_passwords_take_no_room() -> None:
    budget = FailureBudget(per_minute=1e-9, burst=3)
    assert budget.take("a") is None
    budget.give_back("a")
    assert len(budget) == 0
    for _ in range(3):
        assert budget.take("b") is None
    refused = budget.take("b")
    assert refused is not None and refused.first and refused.retry_after > 0
    again = budget.take("b")
    assert again is not None and not again.first  # logged once, not per request
