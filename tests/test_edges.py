"""Hardening (issue 15's smaller findings), against a real `stor serve`: echoed client text, raw
UTF-8 and invisible characters in X-Filename, the routes health probes and scrapers take, and the
multiprocess metrics directory of a supervisor killed outright.

Requests whose bytes httpx would normalise or refuse (percent-escapes of CR/LF and NUL, raw UTF-8
in a header, a tab inside a Range) are written on a raw socket.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from conftest import AUTH, StorServer, layout_path, pair_config, sha256, wait_for

PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def exchange(server: StorServer, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request as these exact bytes (head: request line and header lines, without the blank
    line), on a connection of its own that the server closes; the status, headers and body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, rest


def get(server: StorServer, target: bytes) -> tuple[int, dict[str, str], bytes]:
    return exchange(server, b"GET " + target + b" HTTP/1.1\r\nHost: x")


def post(server: StorServer, body: bytes, *header_lines: bytes) -> tuple[int, dict[str, str], bytes]:
    head = b"\r\n".join(
        [
            b"POST /" + sha256(body).encode() + b" HTTP/1.1",
            b"Host: x",
            b"Authorization: Basic " + base64.b64encode(":".join(AUTH).encode()),
            b"Content-Length: " + str(len(body)).encode(),
            *header_lines,
        ]
    )
    return exchange(server, head, body)


def assert_one_safe_line(body: bytes) -> str:
    text = body.decode()
    assert text.isprintable(), repr(text)  # no CR, LF, NUL, C1 control or invisible format character
    return text


# 1. Client text echoed in a reason


def test_a_404_shows_cr_lf_and_nul_of_the_url_escaped(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors))
    status, headers, body = get(server, b"/abc%0d%0aX:%20y")
    assert (status, headers["content-type"]) == (404, "text/plain; charset=utf-8")
    assert assert_one_safe_line(body) == r"Given hash 'abc\r\nX: y' isn't SHA256"
    assert "x" not in headers  # nothing of the URL became a header either
    status, _, body = get(server, b"/abc%00def%09%7f%c2%85%e2%80%ae")
    assert (status, assert_one_safe_line(body)) == (404, r"Given hash 'abc\x00def\t\x7f\x85\u202e' isn't SHA256")
    # Printable text is shown as it is, non-ASCII letters too.
    status, _, body = get(server, b"/r%c3%a9sum%c3%a9")
    assert (status, body.decode()) == (404, "Given hash 'résumé' isn't SHA256")


def test_an_escaped_echo_is_cut_short_and_never_inside_an_escape(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors))
    status, _, body = get(server, b"/a" + b"%00" * 300)
    assert status == 404
    text = assert_one_safe_line(body)
    assert text == "Given hash 'a" + "\\x00" * 24 + "...' isn't SHA256"  # 1 + 24 * 4 = 97 characters, then the cut


def test_a_post_to_a_bad_sha_shows_it_escaped(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors))
    status, _, body = exchange(server, b"POST /x%0d%0ay HTTP/1.1\r\nHost: x\r\nContent-Length: 0")
    assert (status, assert_one_safe_line(body)) == (412, r"Given hash 'x\r\ny' isn't sha256")


def test_header_text_in_a_reason_is_shown_escaped_and_cut(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors))
    status, _, body = post(server, b"typed", b"Content-Type: text/pl\tain")
    assert (status, assert_one_safe_line(body)) == (400, r"Bad Content-Type 'text/pl\tain': expected type/subtype")
    # A byte above 0x7f in a header is latin-1 text to the server: U+0085 is a line break to some readers.
    status, _, body = post(server, b"typed", b"Content-Type: text/\x85plain")
    assert (status, assert_one_safe_line(body)) == (400, r"Bad Content-Type 'text/\x85plain': expected type/subtype")
    # A Range's spec is echoed in a 416: a tab inside it, and a long one.
    blob = b"ranged"
    assert post(server, blob)[0] == 201
    target = b"/" + sha256(blob).encode()
    status, _, body = exchange(server, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nRange: bytes=\t99-")
    assert (status, assert_one_safe_line(body)) == (416, r"Range \t99- is not satisfiable for a blob of 6 bytes")
    status, _, body = exchange(server, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nRange: bytes=" + b"0" * 300 + b"9-")
    assert status == 416
    assert assert_one_safe_line(body) == "Range " + "0" * 100 + "... is not satisfiable for a blob of 6 bytes"


# 2. X-Filename: raw UTF-8, not UTF-8, invisible format characters


def test_a_raw_utf8_filename_is_kept_as_its_percent_encoded_equal(
    start_server: Any, mirrors: tuple[Path, Path]
) -> None:
    server = start_server(pair_config(mirrors))
    raw, encoded = b"raw bytes", b"percent-encoded"
    status, _, body = post(server, raw, "X-Filename: résumé 100%.pdf".encode())
    assert status == 201, body
    assert post(server, encoded, b"X-Filename: r%C3%A9sum%C3%A9 100%.pdf")[0] == 201
    for blob in (raw, encoded):
        r = httpx.get(f"{server.url}/{sha256(blob)}")
        assert r.status_code == 200 and r.content == blob
        assert r.headers["x-filename"] == "r%C3%A9sum%C3%A9 100%.pdf"
        assert r.headers["content-disposition"] == "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%20100%25.pdf"
        head = httpx.head(f"{server.url}/{sha256(blob)}")
        assert head.headers["content-disposition"] == r.headers["content-disposition"]
    # The sidecars of both say the same.
    sidecars = sorted(mirrors[0].rglob("*.meta"))
    assert len(sidecars) == 2 and sidecars[0].read_bytes() == sidecars[1].read_bytes()


def test_a_name_an_older_stor_kept_garbled_is_given_back_right(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """Before the fix a raw UTF-8 name was kept as the latin-1 text the header arrived as."""
    blob = b"kept by an older stor"
    sha = sha256(blob)
    for root in mirrors:
        path = layout_path(root, sha)
        path.parent.mkdir(parents=True)
        path.write_bytes(blob)
        path.with_suffix(".meta").write_text(json.dumps({"filename": "résumé.pdf".encode().decode("latin-1")}))
    server = start_server(pair_config(mirrors))
    r = httpx.get(f"{server.url}/{sha}")
    assert (r.status_code, r.content) == (200, blob)
    assert r.headers["x-filename"] == "r%C3%A9sum%C3%A9.pdf"
    assert r.headers["content-disposition"] == "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"


def test_a_filename_that_is_not_utf8_is_refused(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors))
    status, _, body = post(server, b"latin-1 name", b"X-Filename: r\xe9sum\xe9.pdf")
    assert status == 400
    # Shown as the latin-1 text that HTTP says those bytes are.
    assert assert_one_safe_line(body) == "Bad X-Filename 'résumé.pdf': not UTF-8 (percent-encode the name)"
    assert not list(mirrors[0].rglob("*.dat"))


def test_bidi_controls_and_invisible_format_characters_are_refused(
    start_server: Any, mirrors: tuple[Path, Path]
) -> None:
    server = start_server(pair_config(mirrors))
    refused = [
        ("X-Filename: \u202efdp.exe".encode(), r"\u202efdp.exe"),  # right-to-left override, raw UTF-8
        (b"X-Filename: %E2%80%AEfdp.exe", "%E2%80%AEfdp.exe"),  # the same, percent-encoded
        (b"X-Filename: a%E2%81%A6b", "a%E2%81%A6b"),  # left-to-right isolate
        ("X-Filename: a\u200fb".encode(), r"a\u200fb"),  # right-to-left mark
        ("X-Filename: a\u200bb".encode(), r"a\u200bb"),  # zero-width space
        (b"X-Filename: a%C2%85b", "a%C2%85b"),  # C1 control NEL
    ]
    for i, (line, shown) in enumerate(refused):
        status, _, body = post(server, b"refused %d" % i, line)
        assert status == 400, line
        assert assert_one_safe_line(body) == (
            f"Bad X-Filename '{shown}': a file name without '/', control or invisible format characters"
        )
    assert not list(mirrors[0].rglob("*.dat"))
    # Right-to-left text itself is a name like any other.
    hebrew = "שלום.txt"
    assert post(server, b"hebrew", f"X-Filename: {hebrew}".encode())[0] == 201
    r = httpx.get(f"{server.url}/{sha256(b'hebrew')}")
    assert r.headers["content-disposition"] == "attachment; filename*=UTF-8''" + quote(hebrew)


# 3. The routes health probes and scrapers take


def test_head_of_the_index_and_of_status_answers_200_without_a_body(
    start_server: Any, mirrors: tuple[Path, Path]
) -> None:
    server = start_server(pair_config(mirrors))
    for path in (b"/", b"/status"):
        got = get(server, path)
        status, headers, body = exchange(server, b"HEAD " + path + b" HTTP/1.1\r\nHost: x")
        assert (status, body) == (200, b""), path  # the server closed the connection after the head: nothing more
        assert headers["content-length"] == str(len(got[2])) and headers["content-type"] == got[1]["content-type"]


def test_a_trailing_slash_and_unknown_paths_answer_plain_404s(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors))
    for path in (b"/metrics/", b"/status/", b"/no/such/deep/path", b"/" + b"0" * 64 + b"/x"):
        status, headers, body = exchange(server, b"GET " + path + b" HTTP/1.1\r\nHost: evil.example")
        assert (status, headers["content-type"], body) == (404, "text/plain; charset=utf-8", b"Not Found"), path
        assert "location" not in headers
    assert httpx.get(f"{server.url}/metrics").status_code == 200  # the scrape path itself


# 4. The multiprocess metrics directory


def _live_workers(server: StorServer, pids: list[int]) -> list[int]:
    """The processes of pids still running (a zombie has finished)."""
    live = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z":
            live.append(pid)
    return live


def _metrics_dir_of(server: StorServer) -> tuple[Path, list[int]]:
    """The workers' multiprocess directory (from a worker's environment) and the workers' pids."""
    assert server.proc is not None
    workers = [p for p in server.processes() if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(workers) == 2, workers
    env = dict(
        entry.split(b"=", 1) for entry in Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0") if b"=" in entry
    )
    return Path(env[PROMETHEUS_MULTIPROC_ENV.encode()].decode()), workers


def test_a_supervisor_killed_outright_leaves_no_metrics_directory(
    start_server: Any, mirrors: tuple[Path, Path]
) -> None:
    server = start_server(pair_config(mirrors), workers=2)
    assert httpx.get(f"{server.url}/metrics").status_code == 200
    metrics_dir, workers = _metrics_dir_of(server)
    assert metrics_dir.name.startswith("stor-metrics-") and metrics_dir.is_dir()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    wait_for(lambda: not _live_workers(server, workers), timeout=30, what="the workers to stop")
    assert not metrics_dir.exists()


def test_a_supervisor_stopped_gracefully_removes_its_metrics_directory(
    start_server: Any, mirrors: tuple[Path, Path]
) -> None:
    server = start_server(pair_config(mirrors), workers=2)
    metrics_dir, _ = _metrics_dir_of(server)
    server.stop()
    assert server.proc is not None and server.proc.returncode == 0
    assert not metrics_dir.exists()


def test_a_start_sweeps_directories_nobody_holds_and_keeps_held_ones(
    start_server: Any, mirrors: tuple[Path, Path]
) -> None:
    """What a stor whose processes were all killed outright left (kill -9 of the group, the OOM killer)."""
    dead = Path(tempfile.mkdtemp(prefix="stor-metrics-"))
    (dead / ".lock").touch()
    (dead / "counter_1.db").write_bytes(b"x")
    held = Path(tempfile.mkdtemp(prefix="stor-metrics-"))
    (held / ".lock").touch()
    foreign = Path(tempfile.mkdtemp(prefix="stor-metrics-"))  # no lock file: not one stor's protocol made
    fd = os.open(held / ".lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # as a live stor process holds it
        server = start_server(pair_config(mirrors), workers=2)
        assert not dead.exists()
        assert held.is_dir() and foreign.is_dir()
        assert _metrics_dir_of(server)[0].is_dir()
    finally:
        os.close(fd)
        for d in (dead, held, foreign):
            for f in d.glob("*") if d.exists() else ():
                f.unlink()
            for f in d.glob(".*") if d.exists() else ():
                f.unlink()
            if d.exists():
                d.rmdir()
