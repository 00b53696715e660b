"""Credentials: users with roles and bcrypt hashes, htpasswd files, the original basic_auth, read_auth_required."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from conftest import AUTH, StorServer, free_port, layout_path, pair_config, sha256

AUTH_HEADER = 'Basic realm="stor"'
REQUIRED = "Authentication required!"

READER = ("reader", "r3ad-only pass")
WRITER2 = ("writer2", "w:rite-pass")  # a colon in the password is part of the password
HT_READER = ("hbob", "bob-from-htpasswd")
HT_WRITER = ("halice", "alice-from-htpasswd")
EVERY_PASSWORD = [AUTH[1], READER[1], WRITER2[1], HT_READER[1], HT_WRITER[1]]


def bcrypt_hash(password: str, prefix: str = "$2b$", rounds: int = 4) -> str:
    h = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    return prefix + h[4:]


def htpasswd_file(path: Path, *users: tuple[str, str]) -> Path:
    """As `htpasswd -B` writes it: user:$2y$..."""
    path.write_text("".join(f"{user}:{bcrypt_hash(pw, '$2y$')}\n" for user, pw in users))
    return path


def auth_config(mirrors: tuple[Path, Path], tmp_path: Path, **extra: Any) -> dict[str, Any]:
    users = [
        {"name": READER[0], "password_hash": bcrypt_hash(READER[1]), "role": "read"},
        {"name": WRITER2[0], "password_hash": bcrypt_hash(WRITER2[1], "$2a$"), "role": "write"},
    ]
    files = {
        "read": str(htpasswd_file(tmp_path / "readers.htpasswd", HT_READER)),
        "write": str(htpasswd_file(tmp_path / "writers.htpasswd", HT_WRITER)),
    }
    # These servers see many wrong passwords from 127.0.0.1 on purpose: a budget that never runs out here
    # (the budget itself is tested in test_auth_limits.py).
    extra.setdefault("auth", {"failed_checks_burst": 10_000})
    return pair_config(mirrors, users=users, htpasswd_files=files, **extra)


def assert_401(r: httpx.Response, head: bool = False) -> None:
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers["www-authenticate"] == AUTH_HEADER
    if not head:
        assert r.text == REQUIRED


def stored(mirrors: tuple[Path, Path], sha: str) -> bool:
    return any(layout_path(m, sha).exists() for m in mirrors)


def disks(root: Path) -> tuple[Path, Path]:
    pair = (root / "disk1", root / "disk2")
    for d in pair:
        d.mkdir()
    return pair


# The two configurations most tests use, each started once per module and fast-path mode: every
# test adds only blobs of its own (or none), so they cannot disturb one another.


def module_server(
    tmp_path_factory: pytest.TempPathFactory, fast_path: bool, name: str, **extra: Any
) -> Iterator[StorServer]:
    root = tmp_path_factory.mktemp(name)
    server = StorServer(workdir=root, config=auth_config(disks(root), root, **extra), fast_path=fast_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def open_reads(tmp_path_factory: pytest.TempPathFactory, fast_path: bool) -> Iterator[StorServer]:
    yield from module_server(tmp_path_factory, fast_path, "open")


@pytest.fixture(scope="module")
def closed_reads(tmp_path_factory: pytest.TempPathFactory, fast_path: bool) -> Iterator[StorServer]:
    yield from module_server(tmp_path_factory, fast_path, "closed", read_auth_required=True)


def server_disks(server: StorServer) -> tuple[Path, Path]:
    return (server.workdir / "disk1", server.workdir / "disk2")


# ---- writes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("who", [AUTH, WRITER2, HT_WRITER], ids=["basic_auth", "users", "htpasswd"])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_writers_write(open_reads: StorServer, who: tuple[str, str], method: str) -> None:
    mirrors = server_disks(open_reads)
    body = f"written by {who[0]} with {method}".encode()
    sha = sha256(body)
    r = httpx.request(method, f"{open_reads.url}/{sha}", content=body, auth=who)
    assert r.status_code == 201, r.text
    assert all(layout_path(m, sha).read_bytes() == body for m in mirrors)


@pytest.mark.parametrize("who", [READER, HT_READER], ids=["users", "htpasswd"])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_readers_get_403_on_writes(open_reads: StorServer, who: tuple[str, str], method: str) -> None:
    mirrors = server_disks(open_reads)
    body = b"a reader tries to write"
    sha = sha256(body)
    r = httpx.request(method, f"{open_reads.url}/{sha}", content=body, auth=who)
    assert r.status_code == 403
    assert r.text == f"Forbidden: user '{who[0]}' may only read"
    assert not stored(mirrors, sha)


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_no_or_wrong_credentials_on_writes_are_401(open_reads: StorServer, method: str) -> None:
    mirrors = server_disks(open_reads)
    body = b"nobody may write this"
    sha = sha256(body)
    url = f"{open_reads.url}/{sha}"
    attempts: list[Any] = [
        None,
        (READER[0], "wrong"),  # a reader with a wrong password: 401, not 403
        (HT_READER[0], HT_WRITER[1]),
        (WRITER2[0], "w"),  # a prefix of the right password
        (WRITER2[0], WRITER2[1] + "x"),
        (HT_WRITER[0], ""),
        ("nobody", AUTH[1]),
        ("", ""),
        (AUTH[0], READER[1]),
    ]
    for auth in attempts:
        assert_401(httpx.request(method, url, content=body, auth=auth))
    for header in ["Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Basic"]:
        assert_401(httpx.request(method, url, content=body, headers={"Authorization": header}))
    assert not stored(mirrors, sha)


def test_passwords_longer_than_bcrypt_takes_are_401_not_500(open_reads: StorServer, closed_reads: StorServer) -> None:
    """bcrypt reads at most 72 bytes; a longer password (a client's choice) is just a wrong password."""
    body = b"long passwords"
    sha = sha256(body)
    for who in [(READER[0], "x" * 100), (HT_WRITER[0], "y" * 73), ("nobody", "z" * 200), (WRITER2[0], WRITER2[1] + "w" * 80)]:
        assert_401(httpx.put(f"{open_reads.url}/{sha}", content=body, auth=who))
        assert_401(httpx.get(f"{closed_reads.url}/{sha}", auth=who))
    assert httpx.put(f"{open_reads.url}/{sha}", content=body, auth=WRITER2).status_code == 201


def test_password_hash_variants_2a_2b_2y(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    users = [
        {"name": f"w{prefix[2]}", "password_hash": bcrypt_hash(f"pw-{prefix[2]}", prefix), "role": "write"}
        for prefix in ("$2a$", "$2b$", "$2y$")
    ]
    server = start_server(pair_config(mirrors, users=users))
    for prefix in ("a", "b", "y"):
        body = f"hash kind {prefix}".encode()
        r = httpx.put(f"{server.url}/{sha256(body)}", content=body, auth=(f"w{prefix}", f"pw-{prefix}"))
        assert r.status_code == 201, prefix


def test_only_users_no_basic_auth(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    config = pair_config(mirrors, users=[{"name": "solo", "password_hash": bcrypt_hash("solo-pw"), "role": "write"}])
    del config["basic_auth"]
    server = start_server(config)
    body = b"solo"
    assert httpx.put(f"{server.url}/{sha256(body)}", content=body, auth=("solo", "solo-pw")).status_code == 201
    assert_401(httpx.put(f"{server.url}/{sha256(body)}", content=body, auth=AUTH))
    assert "generated credentials" not in server.log_text()


# ---- reads -----------------------------------------------------------------------------------


def test_reads_are_anonymous_by_default(open_reads: StorServer) -> None:
    body = b"anyone may read"
    sha = sha256(body)
    assert httpx.post(f"{open_reads.url}/{sha}", content=body, auth=AUTH).status_code == 201
    assert httpx.get(f"{open_reads.url}/{sha}").content == body
    assert httpx.head(f"{open_reads.url}/{sha}").status_code == 200
    assert httpx.get(f"{open_reads.url}/{sha}", auth=READER).content == body


def test_read_auth_required_false_explicitly(start_server: Any, mirrors: tuple[Path, Path], tmp_path: Path) -> None:
    server = start_server(auth_config(mirrors, tmp_path, read_auth_required=False))
    body = b"explicitly open"
    sha = sha256(body)
    assert httpx.post(f"{server.url}/{sha}", content=body, auth=AUTH).status_code == 201
    assert httpx.get(f"{server.url}/{sha}").status_code == 200


def test_read_auth_required(closed_reads: StorServer) -> None:
    body = b"for known readers only"
    sha = sha256(body)
    url = f"{closed_reads.url}/{sha}"
    assert httpx.put(url, content=body, auth=AUTH).status_code == 201
    for auth in [None, (READER[0], "nope"), (HT_READER[0], READER[1]), ("stranger", "x"), (AUTH[0], AUTH[1] + "!")]:
        assert_401(httpx.get(url, auth=auth))
        assert_401(httpx.head(url, auth=auth), head=True)
        assert_401(httpx.get(url, auth=auth, headers={"If-None-Match": f'"{sha}"'}))  # no 304 leaks existence
        assert_401(httpx.get(url, auth=auth, headers={"Range": "bytes=0-3"}))
        assert_401(httpx.get(f"{closed_reads.url}/{'0' * 64}", auth=auth))  # nor does a 404
    for who in [READER, HT_READER, WRITER2, HT_WRITER, AUTH]:  # write implies read
        r = httpx.get(url, auth=who)
        assert r.status_code == 200 and r.content == body, who
        assert httpx.head(url, auth=who).status_code == 200
        partial = httpx.get(url, auth=who, headers={"Range": "bytes=0-3"})
        assert partial.status_code == 206 and partial.content == body[:4]


def test_reader_may_read_but_not_write_when_reads_are_closed(closed_reads: StorServer) -> None:
    mirrors = server_disks(closed_reads)
    body = b"reader, closed"
    sha = sha256(body)
    r = httpx.put(f"{closed_reads.url}/{sha}", content=body, auth=READER)
    assert r.status_code == 403 and r.text == f"Forbidden: user '{READER[0]}' may only read"
    assert not stored(mirrors, sha)
    assert httpx.put(f"{closed_reads.url}/{sha}", content=body, auth=WRITER2).status_code == 201
    assert httpx.get(f"{closed_reads.url}/{sha}", auth=READER).content == body


# ---- the remembered password -----------------------------------------------------------------


def test_remembered_password_never_admits_a_wrong_one(open_reads: StorServer) -> None:
    body = b"cache check"
    sha = sha256(body)
    url = f"{open_reads.url}/{sha}"
    assert httpx.put(url, content=body, auth=WRITER2).status_code == 201  # the password is now remembered
    assert httpx.get(url).content == body
    with httpx.Client() as c:
        for _ in range(3):
            assert c.put(url, content=body, auth=WRITER2).status_code == 200
            assert_401(c.put(url, content=body, auth=(WRITER2[0], "guess")))
            assert_401(c.put(url, content=body, auth=(HT_WRITER[0], WRITER2[1])))  # right password, wrong user
            assert c.put(url, content=body, auth=READER).status_code == 403


def test_valid_password_is_remembered(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """A cost-11 bcrypt check takes a noticeable fraction of a second; repeated requests must not pay it."""
    password = "slow-hash-pw"
    slow_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=11))
    started = time.perf_counter()
    bcrypt.checkpw(password.encode(), slow_hash)
    one_check = time.perf_counter() - started
    users = [{"name": "slow", "password_hash": slow_hash.decode(), "role": "write"}]
    server = start_server(pair_config(mirrors, users=users, read_auth_required=True))
    body = b"remembered"
    sha = sha256(body)
    with httpx.Client(base_url=server.url, auth=("slow", password)) as c:
        assert c.put(f"/{sha}", content=body).status_code == 201  # pays the check once
        started = time.perf_counter()
        for _ in range(8):
            assert c.get(f"/{sha}").status_code == 200
        eight = time.perf_counter() - started
    assert eight < 4 * one_check, f"8 requests took {eight:.3f}s; one bcrypt check takes {one_check:.3f}s"


# ---- nothing secret in the log ---------------------------------------------------------------


def test_credentials_never_logged(start_server: Any, mirrors: tuple[Path, Path], tmp_path: Path) -> None:
    closed_reads = start_server(auth_config(mirrors, tmp_path, read_auth_required=True))
    body = b"log secrecy"
    sha = sha256(body)
    url = f"{closed_reads.url}/{sha}"
    tried = [AUTH, READER, WRITER2, HT_READER, HT_WRITER, (READER[0], "wrong-guess-1"), ("ghost", "wrong-guess-2")]
    for who in tried:
        httpx.put(url, content=body, auth=who)
        httpx.get(url, auth=who)
        httpx.post(f"{closed_reads.url}/exists", json=[sha], auth=who)
    closed_reads.stop()
    log = closed_reads.log_text()
    for user, password in tried:
        assert password not in log
        assert base64.b64encode(f"{user}:{password}".encode()).decode() not in log


# ---- configuration errors ----------------------------------------------------------------------


def run_serve(tmp_path: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`stor serve` with a bad config must exit at once; if it serves instead, stop it (and its workers) cleanly."""
    path = tmp_path / "bad-config.json"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_FILE", "STOR_BASIC_AUTH")}
    cmd = [sys.executable, "-m", "stor", "serve", "--port", str(free_port()), "--config", str(path)]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its workers: nothing outlives the test
        out, err = proc.communicate()
        pytest.fail(f"stor accepted the configuration and served (no config error): {err[-500:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def assert_config_error(result: subprocess.CompletedProcess[str], *names: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


GOOD_HASH = bcrypt_hash("pw")


@pytest.mark.parametrize(
    ("users", "names"),
    [
        ([{"name": "x", "password_hash": GOOD_HASH, "role": "admin"}], ("users", "role")),
        ([{"name": "x", "password_hash": GOOD_HASH, "role": "READ-ONLY"}], ("users", "role")),
        ([{"name": "x", "password_hash": GOOD_HASH}], ("users", "role")),
        ([{"name": "x", "password_hash": "plain-text-password", "role": "read"}], ("users", "password_hash")),
        ([{"name": "x", "password_hash": "$1$saltsalt$abcdefghijklmnopqrstuv", "role": "write"}], ("users", "password_hash")),
        ([{"name": "x", "password_hash": "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "role": "write"}], ("users", "password_hash")),
        ([{"name": "x", "password_hash": "$2b$04$tooshort", "role": "write"}], ("users", "password_hash")),
        ([{"name": "x", "password_hash": "$2b$99$" + GOOD_HASH[7:], "role": "write"}], ("users", "password_hash")),
        ([{"name": "x", "password_hash": "$2b$03$" + GOOD_HASH[7:], "role": "write"}], ("users", "password_hash")),
        ([{"name": "x", "role": "write"}], ("users", "password_hash")),
        ([{"password_hash": GOOD_HASH, "role": "write"}], ("users", "name")),
        ({"name": "x"}, ("users",)),
    ],
    ids=["role-admin", "role-READ-ONLY", "role-missing", "hash-plain", "hash-md5crypt", "hash-sha1", "hash-short",
         "hash-cost-99", "hash-cost-03", "hash-missing", "name-missing", "not-a-list"],
)
def test_bad_users_stop_start_up(tmp_path: Path, mirrors: tuple[Path, Path], users: Any, names: tuple[str, ...]) -> None:
    assert_config_error(run_serve(tmp_path, pair_config(mirrors, users=users)), *names)


@pytest.mark.parametrize(
    "bad_line",
    [
        "carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",  # htpasswd -s
        "carol:$apr1$saltsalt$abcdefghijklmnopqrstuv",  # htpasswd -m (the default)
        "carol:plaintext",  # htpasswd -p
        "carol:abJnggxhB/yWI",  # htpasswd -d (crypt)
        "carol-without-a-colon",
    ],
)
def test_bad_htpasswd_line_stops_start_up(tmp_path: Path, mirrors: tuple[Path, Path], bad_line: str) -> None:
    path = tmp_path / "users.htpasswd"
    path.write_text(f"good:{bcrypt_hash('pw', '$2y$')}\n{bad_line}\n")
    line = assert_config_error(run_serve(tmp_path, pair_config(mirrors, htpasswd_files={"read": str(path)})), "htpasswd_files")
    assert "line 2" in line or "carol" in line, line


def test_missing_htpasswd_file_stops_start_up(tmp_path: Path, mirrors: tuple[Path, Path]) -> None:
    missing = tmp_path / "nope.htpasswd"
    line = assert_config_error(run_serve(tmp_path, pair_config(mirrors, htpasswd_files={"write": str(missing)})), "htpasswd_files")
    assert str(missing) in line


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        ({"read_auth_required": "yes"}, "read_auth_required"),
        ({"users": "reader:hash"}, "users"),
        ({"htpasswd_files": "/etc/htpasswd"}, "htpasswd_files"),
        ({"htpasswd_files": {"read": 42}}, "htpasswd_files"),
    ],
)
def test_bad_auth_settings_stop_start_up(tmp_path: Path, mirrors: tuple[Path, Path], extra: dict[str, Any], name: str) -> None:
    assert_config_error(run_serve(tmp_path, pair_config(mirrors, **extra)), name)

