"""The `stor` client (put, get, exists, cat) against a real `stor serve`, as a pipeline runs it.

Every run is the real command in a child process (`python -m stor put ...`), talking
over real sockets; faults are real: a mirror remounted read-only (the server answers
5xx), a TCP proxy that resets connections or cuts an answer (tests/faultproxy.py),
a blob damaged on disk. Output is parsed as a pipeline would: JSON lines when stdout
is not a terminal; a pseudo-terminal shows the bars and the text lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import (
    AUTH,
    PASSWORD,
    STOR_DIR,
    USER,
    child_env,
    flip_byte,
    free_port,
    layout_path,
    pair_config,
    run_on_a_terminal,
    sha256,
    wait_for,
)
from faultproxy import FaultProxy

# What is tested is the client: the server's two read paths answer alike (tests/test_paths_agree.py).
FAST_ONLY = pytest.mark.parametrize("fast_path", [True], ids=["fast"], indirect=True)

STOR = [sys.executable, "-m", "stor"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def client_env(url: str, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user of the client: the server in STOR_URL, no credentials unless given,
    a HOME of its own (no ~/.netrc but the test's)."""
    env = child_env(STOR_URL=url, HOME=str(home))
    for name in ("STOR_USER", "STOR_PASSWORD", "NETRC"):
        env.pop(name, None)
    return {**env, **extra}


def run(args: list[str], env: dict[str, str], stdin: str | None = None, timeout: float = 120) -> tuple[int, list[dict[str, Any]], str]:
    """Exit code, the JSON lines of stdout, and stderr."""
    done = subprocess.run([*STOR, *args], input=stdin, capture_output=True, text=True, env=env, cwd=STOR_DIR,
                          timeout=timeout)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines, done.stderr


def items(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert lines and "summary" in lines[-1], lines[-3:]
    assert all("summary" not in line for line in lines[:-1])
    return lines[:-1]


def summary(lines: list[dict[str, Any]]) -> dict[str, Any]:
    assert lines and "summary" in lines[-1], lines[-3:]
    return lines[-1]["summary"]


def on_both(mirrors: tuple[Path, Path], data: bytes) -> bool:
    return all(layout_path(m, sha256(data)).read_bytes() == data for m in mirrors) if all(
        layout_path(m, sha256(data)).exists() for m in mirrors) else False


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def env(server: Any, home: Path) -> dict[str, str]:
    return client_env(server.url, home, STOR_USER=USER, STOR_PASSWORD=PASSWORD)


def make_tree(root: Path) -> dict[str, bytes]:
    """Nested folders, the same bytes three times, an empty file, one file large enough to be sent
    with Expect: 100-continue, a symlinked file (followed) and a symlinked folder (not: it loops)."""
    files = {
        "a.bin": os.urandom(10_000),
        "sub/b.bin": os.urandom(70_000),
        "sub/deeper/c.bin": os.urandom(1),
        "empty": b"",
        "large.bin": os.urandom(3 << 20),
    }
    files["sub/deeper/copy-of-a.bin"] = files["a.bin"]
    files["z-also-a.bin"] = files["a.bin"]
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "sub" / "link-to-b").symlink_to(root / "sub" / "b.bin")
    files["sub/link-to-b"] = files["sub/b.bin"]
    (root / "sub" / "deeper" / "loop").symlink_to(root)
    return files


@FAST_ONLY
def test_put_a_tree_stores_each_blob_once_and_says_so_per_file(
    server: Any, mirrors: tuple[Path, Path], env: dict[str, str], tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    files = make_tree(tree)
    code, lines, err = run(["put", str(tree)], env)
    assert code == 0, err
    got = {str(Path(i["path"]).relative_to(tree)): i for i in items(lines)}
    assert set(got) == set(files)  # every file once; the looping link not walked
    for name, data in files.items():
        assert got[name]["sha256"] == sha256(data) and got[name]["size"] == len(data)
        assert on_both(mirrors, data), name
    statuses = [got[n]["status"] for n in ("a.bin", "sub/deeper/copy-of-a.bin", "z-also-a.bin")]
    assert sorted(statuses) == ["present", "present", "stored"]  # the same bytes sent once
    assert got["sub/link-to-b"]["status"] in ("present", "stored")
    assert [got[n]["status"] for n in ("sub/b.bin", "sub/link-to-b")].count("stored") == 1
    s = summary(lines)
    assert s["files"] == len(files) and s["failed"] == 0 and not s["interrupted"]
    assert s["stored"] == len({sha256(d) for d in files.values()}) == 5
    assert s["bytes_stored"] == sum(len(d) for d in {sha256(d): d for d in files.values()}.values())

    # Again: all present, nothing sent; and from a list on stdin, a directory among the paths.
    code, lines, err = run(["put", "-"], env, stdin=f"{tree / 'a.bin'}\n{tree / 'sub'}\n")
    assert code == 0, err
    assert {i["status"] for i in items(lines)} == {"present"}
    assert len(items(lines)) == 1 + 4  # a.bin; sub: b.bin, link-to-b, deeper/c.bin, deeper/copy-of-a.bin
    assert summary(lines)["stored"] == 0


@FAST_ONLY
def test_put_reports_a_file_it_cannot_read_and_goes_on(
    server: Any, mirrors: tuple[Path, Path], env: dict[str, str], tmp_path: Path
) -> None:
    good = tmp_path / "good"
    good.write_bytes(b"fine")
    code, lines, err = run(["put", str(tmp_path / "missing"), str(good), "/dev/null"], env)
    assert code == 1, err
    by_path = {i["path"]: i for i in items(lines)}
    assert by_path[str(tmp_path / "missing")]["status"] == "failed"
    assert "No such file" in by_path[str(tmp_path / "missing")]["reason"]
    assert by_path["/dev/null"]["status"] == "failed" and "regular" in by_path["/dev/null"]["reason"]
    assert by_path[str(good)]["status"] == "stored" and on_both(mirrors, b"fine")
    assert summary(lines)["failed"] == 2


@FAST_ONLY
def test_an_interrupted_put_rerun_uploads_only_the_rest(
    server: Any, mirrors: tuple[Path, Path], env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):
        (folder / f"{i:05d}").write_bytes(os.urandom(4096))
    proc = subprocess.Popen([*STOR, "put", "-j", "1", str(folder)], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=STOR_DIR)
    assert proc.stdout is not None
    first: list[dict[str, Any]] = []
    for line in proc.stdout:
        first.append(json.loads(line))
        if len(first) == 20:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            break
    rest, _ = proc.communicate(timeout=60)  # it ends by itself, soon: a hang fails here
    first += [json.loads(line) for line in rest.splitlines()]
    assert proc.returncode == 130
    s1 = summary(first)
    assert s1["interrupted"] and s1["not_done"] > 0
    assert s1["stored"] == sum(1 for i in items(first) if i["status"] == "stored") >= 20
    assert s1["files"] == s1["stored"] + s1["present"] + s1["failed"] + s1["not_done"]

    code, second, err = run(["put", str(folder)], env)
    assert code == 0, err
    stored_first = {i["path"] for i in items(first) if i["status"] == "stored"}
    stored_second = {i["path"] for i in items(second) if i["status"] == "stored"}
    assert not stored_first & stored_second  # nothing sent twice
    assert len(stored_first) + len(stored_second) == 1500  # each file stored exactly once, over both runs
    assert {i["status"] for i in items(second) if i["path"] in stored_first} == {"present"}


@FAST_ONLY
def test_put_retries_while_a_mirror_is_read_only_and_succeeds_when_it_is_back(
    start_server: Any, tmpfs: Any, home: Path, tmp_path: Path
) -> None:
    a, b = tmpfs("m1", "64m"), tmpfs("m2", "64m")
    server = start_server(pair_config((a, b)))
    env = client_env(server.url, home, STOR_USER=USER, STOR_PASSWORD=PASSWORD)
    data = [os.urandom(20_000 + i) for i in range(5)]
    for i, d in enumerate(data):
        (tmp_path / f"f{i}").write_bytes(d)
    subprocess.run(["mount", "-o", "remount,ro", str(b)], check=True)
    proc = subprocess.Popen([*STOR, "put", "--retries", "30", *[str(tmp_path / f"f{i}") for i in range(5)]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=STOR_DIR)
    try:
        def refused() -> bool:
            metrics = httpx.get(server.url + "/metrics").text
            return re.search(r'stor_http_requests_total\{method="POST",route="/\{sha\}",status="5\d\d"\} [1-9]',
                             metrics) is not None
        wait_for(refused, timeout=30, what="the server refusing an upload with a 5xx")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(b)], check=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert {i["status"] for i in items(lines)} == {"stored"}
    assert all(on_both((a, b), d) for d in data)


@FAST_ONLY
def test_put_and_get_ride_out_dropped_connections(
    server: Any, mirrors: tuple[Path, Path], home: Path, tmp_path: Path
) -> None:
    proxy = FaultProxy(free_port_of(server), drop_connections=3).start()
    try:
        env = client_env(proxy.url, home, STOR_USER=USER, STOR_PASSWORD=PASSWORD)
        small, large = os.urandom(5000), os.urandom(2 << 20)
        (tmp_path / "small").write_bytes(small)
        (tmp_path / "large").write_bytes(large)
        code, lines, err = run(["put", str(tmp_path / "small"), str(tmp_path / "large")], env)
        assert code == 0, err
        assert {i["status"] for i in items(lines)} == {"stored"}
        assert proxy.connections > 3 and on_both(mirrors, small) and on_both(mirrors, large)

        # A download cut after 1 MiB: the retry continues where it stopped (Range), verified whole.
        proxy.cut_after, proxy.cut_connections, proxy.drop_connections = 1 << 20, 1, proxy.connections
        before = proxy.to_client
        code, lines, err = run(["get", "-o", f"{tmp_path / 'out'}/", sha256(large)], env)  # a directory
        assert code == 0, err
        assert (tmp_path / "out" / sha256(large)).read_bytes() == large
        assert proxy.to_client - before < len(large) + (1 << 20) // 2  # not sent twice
    finally:
        proxy.close()


def free_port_of(server: Any) -> int:
    return int(server.url.rsplit(":", 1)[1])


@FAST_ONLY
def test_a_download_that_stalls_times_out_and_resumes(
    server: Any, client: httpx.Client, home: Path, tmp_path: Path
) -> None:
    data = os.urandom(3 << 20)
    sha = sha256(data)
    assert client.post(f"/{sha}", content=data, auth=AUTH).status_code == 201
    proxy = FaultProxy(free_port_of(server), cut_after=3 << 19, cut_connections=1, stall=True).start()
    try:
        code, lines, err = run(["get", "--timeout", "1", "-o", str(tmp_path / "blob"), sha],
                               client_env(proxy.url, home))
    finally:
        proxy.close()
    assert code == 0, err
    assert (tmp_path / "blob").read_bytes() == data
    assert proxy.connections == 2 and proxy.to_client < len(data) + 8192  # the rest only, once


@FAST_ONLY
def test_get_resumes_a_partial_file_and_verifies_before_the_rename(
    server: Any, client: httpx.Client, home: Path, tmp_path: Path
) -> None:
    data = os.urandom(3 << 20)
    sha = sha256(data)
    assert client.post(f"/{sha}", content=data, auth=AUTH).status_code == 201
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{sha}.part").write_bytes(data[: 2 << 20])  # an earlier run stopped after 2 MiB
    proxy = FaultProxy(free_port_of(server)).start()
    try:
        code, lines, err = run(["get", "-o", str(out), sha], client_env(proxy.url, home))
    finally:
        proxy.close()
    assert code == 0, err
    assert (out / sha).read_bytes() == data and not (out / f"{sha}.part").exists()
    assert proxy.to_client < (1 << 20) + 4096  # only the missing MiB (and the answer's head) came
    assert items(lines) == [{"sha256": sha, "path": str(out / sha), "size": len(data), "status": "fetched"}]

    # Already there and whole: nothing fetched. For one sha, -o FILE is the file itself.
    code, lines, err = run(["get", "-o", str(out), sha], client_env(server.url, home))
    assert code == 0 and items(lines)[0]["status"] == "present", err
    code, lines, err = run(["get", "-o", str(tmp_path / "named.bin"), sha], client_env(server.url, home))
    assert code == 0 and (tmp_path / "named.bin").read_bytes() == data, err


@FAST_ONLY
def test_an_interrupted_get_keeps_its_part_and_a_rerun_finishes_it(
    server: Any, client: httpx.Client, home: Path, tmp_path: Path
) -> None:
    data = os.urandom(8 << 20)
    sha = sha256(data)
    assert client.post(f"/{sha}", content=data, auth=AUTH).status_code == 201
    out = tmp_path / "out"
    part = out / f"{sha}.part"
    proxy = FaultProxy(free_port_of(server), rate=4e6).start()  # two seconds for the whole blob
    try:
        proc = subprocess.Popen([*STOR, "get", "-o", f"{out}/", sha], stdout=subprocess.PIPE, text=True,
                                env=client_env(proxy.url, home), cwd=STOR_DIR)
        wait_for(lambda: part.exists() and part.stat().st_size >= 1 << 20, timeout=30, what="a MiB received")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proxy.close()
    assert proc.returncode == 143
    lines = [json.loads(line) for line in output.splitlines()]
    s = summary(lines)
    assert s["interrupted"] and s["not_done"] == 1 and s["fetched"] == 0
    kept = part.stat().st_size
    assert 1 << 20 <= kept < len(data) and part.read_bytes() == data[:kept] and not (out / sha).exists()

    code, lines, err = run(["get", "-o", f"{out}/", sha], client_env(server.url, home))
    assert code == 0, err
    assert (out / sha).read_bytes() == data and not part.exists()


@FAST_ONLY
def test_get_and_cat_refuse_a_blob_whose_bytes_do_not_match(
    server: Any, client: httpx.Client, mirrors: tuple[Path, Path], home: Path, tmp_path: Path
) -> None:
    data, fine = os.urandom(200_000), os.urandom(1000)
    for d in (data, fine):
        assert client.post(f"/{sha256(d)}", content=d, auth=AUTH).status_code == 201
    for m in mirrors:
        flip_byte(layout_path(m, sha256(data)), offset=150_000)  # rotten on both: nothing good to serve
    env = client_env(server.url, home)
    out = tmp_path / "out"
    code, lines, err = run(["get", "-o", str(out), sha256(data), sha256(fine)], env)
    assert code == 1, err
    by_sha = {i["sha256"]: i for i in items(lines)}
    assert by_sha[sha256(data)]["status"] == "failed" and "sha mismatch" in by_sha[sha256(data)]["reason"]
    assert by_sha[sha256(fine)]["status"] == "fetched"
    assert sorted(p.name for p in out.iterdir()) == [sha256(fine)]  # no bad file, no .part left

    done = subprocess.run([*STOR, "cat", sha256(data)], capture_output=True, env=env, cwd=STOR_DIR)
    assert done.returncode == 1 and b"sha mismatch" in done.stderr
    done = subprocess.run([*STOR, "cat", sha256(fine)], capture_output=True, env=env, cwd=STOR_DIR)
    assert done.returncode == 0 and done.stdout == fine
    done = subprocess.run([*STOR, "cat", "ab" * 32], capture_output=True, env=env, cwd=STOR_DIR)
    assert done.returncode == 1 and b"not found" in done.stderr


@FAST_ONLY
def test_exists_answers_per_sha_with_its_exit_code(server: Any, client: httpx.Client, home: Path) -> None:
    data = os.urandom(100)
    assert client.post(f"/{sha256(data)}", content=data, auth=AUTH).status_code == 201
    env = client_env(server.url, home)
    code, lines, err = run(["exists", sha256(data).upper()], env)
    assert code == 0, err
    assert items(lines) == [{"sha256": sha256(data), "status": "present"}]
    code, lines, _ = run(["exists"], env, stdin=f"{sha256(data)}\n{'cd' * 32}\nnot-a-sha\n")
    assert code == 1
    assert [(i["sha256"], i["status"]) for i in items(lines)] == [
        (sha256(data), "present"), ("cd" * 32, "missing"), ("not-a-sha", "invalid")]
    assert summary(lines) == {"present": 1, "missing": 1, "invalid": 1}


@FAST_ONLY
def test_credentials_from_flag_environment_or_netrc_and_never_shown(
    server: Any, mirrors: tuple[Path, Path], home: Path, tmp_path: Path
) -> None:
    port = free_port_of(server)
    files = [tmp_path / f"f{i}" for i in range(4)]
    for f in files:
        f.write_bytes(os.urandom(64))
    bare = client_env(server.url, home)
    assert run(["put", "-u", f"{USER}:{PASSWORD}", str(files[0])], bare)[0] == 0
    assert run(["put", "-u", USER, str(files[1])], {**bare, "STOR_PASSWORD": PASSWORD})[0] == 0
    (home / ".netrc").write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    (home / ".netrc").chmod(0o600)
    assert run(["put", str(files[2])], bare)[0] == 0
    (home / ".netrc").unlink()

    # Wrong password: the run stops at the first refusal (exit 2); no password in anything printed.
    wrong = "n0t-the-Passw0rd"
    code, lines, err = run(["put", "-u", f"{USER}:{wrong}", str(files[3])], bare)
    assert code == 2 and "401" in err and "401" in summary(lines)["error"]
    assert not on_both(mirrors, files[3].read_bytes())
    code, lines, err = run(["put", "--url", f"http://{USER}:{wrong}@127.0.0.1:{free_port()}", "--retries", "0",
                            str(files[3])], bare)
    assert code == 2 and "cannot reach" in err
    for text in (err, json.dumps(lines)):
        assert wrong not in text and PASSWORD not in text
    assert port  # the server was the one asked above


@FAST_ONLY
def test_a_large_upload_the_server_refuses_is_never_sent(
    server: Any, mirrors: tuple[Path, Path], home: Path, tmp_path: Path
) -> None:
    """Expect: 100-continue: the server's 401 comes before the body, and the body stays here."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(8 << 20))
    proxy = FaultProxy(free_port_of(server)).start()
    try:
        code, lines, err = run(["put", "-u", f"{USER}:wrong", str(big)], client_env(proxy.url, home))
        assert code == 2 and "401" in err
        assert proxy.to_server < 64 * 1024  # heads and the /exists batch; not 8 MiB of body
        code, lines, err = run(["put", "-u", f"{USER}:{PASSWORD}", str(big)], client_env(proxy.url, home))
        assert code == 0 and items(lines)[0]["status"] == "stored", err
        assert proxy.to_server > 8 << 20
    finally:
        proxy.close()


def test_unreachable_server_and_bad_usage_exit_2(home: Path, tmp_path: Path) -> None:
    env = client_env(f"http://127.0.0.1:{free_port()}", home)
    (tmp_path / "f").write_bytes(b"x")
    code, lines, err = run(["put", "--retries", "1", str(tmp_path / "f")], env)
    assert code == 2 and "cannot reach" in err and summary(lines)["stored"] == 0
    code, _, err = run(["exists", "--retries", "0", "ab" * 32], env)
    assert code == 2 and "cannot reach" in err
    code, _, err = run(["put", "-j", "0", str(tmp_path / "f")], env)
    assert code == 2 and "-j" in err
    code, _, err = run(["get", "--url", "ftp://example.com", "ab" * 32], env)
    assert code == 2 and "URL" in err


@FAST_ONLY
def test_the_client_imports_nothing_of_the_server(server: Any, home: Path) -> None:
    done = subprocess.run([*STOR[:1], "-X", "importtime", *STOR[1:], "exists", "ab" * 32], capture_output=True,
                          text=True, env=client_env(server.url, home), cwd=STOR_DIR)
    assert done.returncode == 1, done.stderr  # missing
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "h11" in imported and "stor" in imported  # /exists on the client's own sockets: not even httpx
    assert not imported & {"uvicorn", "starlette", "fastapi", "bcrypt", "botocore", "aiobotocore", "pymemcache",
                           "prometheus_client", "uvloop"}


@FAST_ONLY
def test_on_a_terminal_bars_and_whole_lines(server: Any, home: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 << 20))
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(1000))
    proxy = FaultProxy(free_port_of(server), rate=12e6, slowed="to_server").start()  # half a second of sending
    try:
        code, output = run_on_a_terminal([*STOR, "put", "--url", proxy.url, "-u", f"{USER}:{PASSWORD}",
                                          str(big), str(small)])
    finally:
        proxy.close()
    assert code == 0, output
    assert "━" in output and "send " in output  # a bar for the transfer in flight ...
    assert re.search(r"\d/2 files", ANSI.sub("", output))  # ... and the total
    lines = [ANSI.sub("", line).strip() for line in output.replace("\r\n", "\n").split("\n")]
    for path, data in ((big, big.read_bytes()), (small, small.read_bytes())):
        line = f"{path}  {sha256(data)}  stored"
        assert any(text.endswith(line) for text in lines), (line, lines)  # whole, never cut by a bar
    assert any(re.match(r"2 files: 2 stored .* 0 failed", text) for text in lines)

    # --json on a terminal: JSON lines, no bars.
    code, output = run_on_a_terminal([*STOR, "exists", "--json", "--url", server.url, sha256(small.read_bytes())])
    assert code == 0 and "━" not in output
    assert json.loads(output.splitlines()[0]) == {"sha256": sha256(small.read_bytes()), "status": "present"}


@FAST_ONLY
def test_put_stops_when_the_server_fails_upload_after_upload(
    start_server: Any, tmpfs: Any, home: Path, tmp_path: Path
) -> None:
    """A full disk answers 507 to every upload: after a few in a row, each through its retries, the
    run stops (exit 2) instead of spending the retries of every remaining file."""
    a, b = tmpfs("s1", "1m"), tmpfs("s2", "1m")
    server = start_server(pair_config((a, b)))
    env = client_env(server.url, home, STOR_USER=USER, STOR_PASSWORD=PASSWORD)
    folder = tmp_path / "files"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i:02d}").write_bytes(os.urandom(300_000))
    code, lines, err = run(["put", "-j", "1", "--retries", "1", str(folder)], env)
    assert code == 2 and "failed 4 uploads in a row" in err and "507" in err, err
    s = summary(lines)
    assert s["stored"] >= 1 and s["failed"] == 4 and s["not_done"] > 0
    assert {i["reason"].split()[0] for i in items(lines) if i["status"] == "failed"} == {"507"}


def peak_rss_of(args: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Exit code and peak resident memory (bytes) of the client run as a child of a small parent."""
    probe = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode;"
             " print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe, *STOR, *args], capture_output=True, text=True, env=env,
                          cwd=STOR_DIR, timeout=300)
    code, kib = done.stdout.split()
    return int(code), int(kib) * 1024


@FAST_ONLY
def test_memory_stays_bounded_whatever_the_size(server: Any, home: Path, tmp_path: Path) -> None:
    """A 256 MiB file goes up and comes back with the client's memory at tens of MiB: streamed."""
    big = tmp_path / "big"
    digest = hashlib.sha256()
    with open(big, "wb") as f:
        for _ in range(256):
            piece = os.urandom(1 << 20)
            digest.update(piece)
            f.write(piece)
    env = client_env(server.url, home, STOR_USER=USER, STOR_PASSWORD=PASSWORD)
    code, put_rss = peak_rss_of(["put", str(big)], env)
    assert code == 0
    code, get_rss = peak_rss_of(["get", "-o", str(tmp_path / "back"), digest.hexdigest()], env)
    assert code == 0 and (tmp_path / "back").stat().st_size == 256 << 20
    assert put_rss < 100 << 20 and get_rss < 100 << 20, (put_rss, get_rss)  # ~40 MiB is Python with httpx


@FAST_ONLY
def test_put_filename_is_kept_by_the_server(server: Any, client: httpx.Client, env: dict[str, str],
                                             tmp_path: Path) -> None:
    sample = tmp_path / "invoice 2026 (final).pdf"
    sample.write_bytes(b"%PDF-1.7 not really")
    code, lines, err = run(["put", "--filename", str(sample)], env)
    assert code == 0, err
    answer = client.head(f"/{items(lines)[0]['sha256']}")
    assert answer.headers["x-filename"] == "invoice%202026%20%28final%29.pdf"


@FAST_ONLY
def test_get_reads_shas_from_stdin_as_they_come_and_stops_on_ctrl_c_while_waiting(
    server: Any, client: httpx.Client, home: Path, tmp_path: Path
) -> None:
    blobs = [os.urandom(1000 + i) for i in range(2)]
    for d in blobs:
        assert client.post(f"/{sha256(d)}", content=d, auth=AUTH).status_code == 201
    proc = subprocess.Popen([*STOR, "get", "-o", f"{tmp_path / 'out'}/"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=client_env(server.url, home), cwd=STOR_DIR)
    assert proc.stdin is not None and proc.stdout is not None
    for d in blobs:  # each fetched while the list is still being written
        proc.stdin.write(sha256(d) + "\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline()) == {
            "sha256": sha256(d), "path": str(tmp_path / "out" / sha256(d)), "size": len(d), "status": "fetched"}
    proc.send_signal(signal.SIGINT)  # stdin still open: the run is waiting for more
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    s = json.loads(rest)["summary"]
    assert s["fetched"] == 2 and s["interrupted"] and s["not_done"] == 0
