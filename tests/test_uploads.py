"""Uploads: PUT as POST, size limits, chunked bodies, Expect: 100-continue, stored Content-Type and filename."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUTH, StorServer, layout_path, own_disks, pair_config, sha256, temp_files

MiB = 1 << 20


def meta_path(root: Path, sha: str) -> Path:
    return layout_path(root, sha).with_name(sha.upper() + ".meta")


def nothing_stored(mirrors: tuple[Path, Path]) -> bool:
    return all(not any(m.rglob("*.dat")) and not any(m.rglob("*.meta")) for m in mirrors) and not temp_files(*mirrors)


def nothing_stored_for(mirrors: tuple[Path, Path], sha: str) -> bool:
    return all(not layout_path(m, sha).exists() and not meta_path(m, sha).exists() for m in mirrors) and not temp_files(
        *mirrors
    )


# Tests that add distinct blobs to a default server share one (it starts once per module);
# tests that need a fresh or differently configured server start their own.
pytestmark = pytest.mark.shared_server


def no_date(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k != "date"}


def strings_in(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(strings_in(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(strings_in(v) for v in value)) if value else set()
    return set()


# ---- raw HTTP, to see exactly what is answered before the body ------------------------------


def open_request(server: StorServer, method: str, path: str, headers: dict[str, str]) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", *(f"{k}: {v}" for k, v in headers.items())]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return s


def read_head(s: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str]]:
    """Read one response head (status line and headers) from the socket; the rest stays in buffer."""
    while b"\r\n\r\n" not in buffer:
        data = s.recv(65536)
        if not data:
            raise AssertionError(f"connection closed before a full response head: {bytes(buffer)!r}")
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers


def basic(user: str, password: str) -> str:
    return httpx.BasicAuth(user, password)._auth_header


# ---- PUT == POST ---------------------------------------------------------------------------


def test_put_answers_as_post(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    body = os.urandom(5000)
    sha = sha256(body)
    unauth = client.put(f"/{sha}", content=body)
    assert unauth.status_code == 401 and unauth.text == "Authentication required!"
    bad = client.put("/nothex", content=body, auth=AUTH)
    assert bad.status_code == 412 and bad.text == "Given hash 'nothex' isn't sha256"
    wrong = client.put(f"/{sha256(b'other')}", content=body, auth=AUTH)
    assert wrong.status_code == 412
    assert wrong.text == f"Content sha256 {sha} doesn't match given sha256 {sha256(b'other')}"
    created = client.put(f"/{sha}", content=body, auth=AUTH)
    assert created.status_code == 201
    assert created.json() == [str(layout_path(m, sha)) for m in mirrors]
    again = client.put(f"/{sha}", content=body, auth=AUTH)
    assert again.status_code == 200 and again.json() == created.json()
    assert client.post(f"/{sha}", content=body, auth=AUTH).json() == created.json()
    for m in mirrors:
        assert layout_path(m, sha).read_bytes() == body
    assert client.get(f"/{sha}").content == body


def test_curl_upload_from_stdin_is_chunked_and_works(server: StorServer) -> None:
    body = os.urandom(3 * MiB + 5)
    sha = sha256(body)
    r = subprocess.run(
        ["curl", "-sS", "-v", "-T", "-", "-u", ":".join(AUTH), "-o", "/dev/null", "-w", "%{http_code}", f"{server.url}/{sha}"],
        input=body, capture_output=True, timeout=60,
    )
    assert b"transfer-encoding: chunked" in r.stderr.lower()  # curl really sent no Content-Length
    assert r.stdout == b"201", r.stderr[-2000:]
    assert httpx.get(f"{server.url}/{sha}").content == body


# ---- size limit ----------------------------------------------------------------------------


@pytest.fixture
def limited_disks(tmp_path: Path) -> tuple[Path, Path]:
    return own_disks(tmp_path)


@pytest.fixture
def limited(start_server: Any, limited_disks: tuple[Path, Path]) -> StorServer:
    return start_server(pair_config(limited_disks, max_blob_bytes=1000))


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_max_blob_bytes_with_content_length(limited: StorServer, limited_disks: tuple[Path, Path], method: str) -> None:
    with httpx.Client(base_url=limited.url) as c:
        big = b"b" * 1001
        assert c.request(method, f"/{sha256(big)}", content=big, auth=AUTH).status_code == 413
        assert nothing_stored(limited_disks)
        exact = b"e" * 1000
        assert c.request(method, f"/{sha256(exact)}", content=exact, auth=AUTH).status_code == 201


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_max_blob_bytes_413_before_the_body(limited: StorServer, limited_disks: tuple[Path, Path], method: str) -> None:
    """Headers only, no Expect: the 413 must come without a single body byte sent."""
    s = open_request(limited, method, f"/{sha256(b'x')}", {"Content-Length": "1001", "Authorization": basic(*AUTH)})
    try:
        status, _ = read_head(s, bytearray())
    finally:
        s.close()
    assert status == 413
    assert nothing_stored(limited_disks)


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_max_blob_bytes_chunked(limited: StorServer, limited_disks: tuple[Path, Path], method: str) -> None:
    big = os.urandom(5000)

    def chunks(data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), 300):
            yield data[i : i + 300]

    with httpx.Client(base_url=limited.url) as c:
        r = c.request(method, f"/{sha256(big)}", content=chunks(big), auth=AUTH)
        assert r.status_code == 413
        assert nothing_stored(limited_disks)
        ok = big[:1000]
        assert c.request(method, f"/{sha256(ok)}", content=chunks(ok), auth=AUTH).status_code == 201
        assert c.get(f"/{sha256(ok)}").content == ok
    assert temp_files(*limited_disks) == []


def test_max_blob_bytes_chunked_with_curl(limited: StorServer, limited_disks: tuple[Path, Path]) -> None:
    body = os.urandom(200_000)
    r = subprocess.run(
        ["curl", "-sS", "-T", "-", "-u", ":".join(AUTH), "-o", "/dev/null", "-w", "%{http_code}", f"{limited.url}/{sha256(body)}"],
        input=body, capture_output=True, timeout=60,
    )
    assert r.stdout == b"413", r.stderr
    assert nothing_stored(limited_disks)


# ---- Expect: 100-continue ------------------------------------------------------------------


def expect_case(kind: str, start_server: Any, tmp_path: Path, tmpfs: Any) -> tuple[StorServer, str, list[str], int]:
    """A server, URL, curl credentials and the status for one kind of early answer."""
    body = random.Random(kind).randbytes(2 * MiB)
    sha = sha256(body)
    (tmp_path / "upload.bin").write_bytes(body)
    creds = ["-u", ":".join(AUTH)]
    if kind == "507":
        a, b = tmpfs("small1", "1m"), tmpfs("small2", "1m")
        server = start_server(pair_config((a, b)))
    else:
        a, b = tmp_path / "m1", tmp_path / "m2"
        a.mkdir()
        b.mkdir()
        server = start_server(pair_config((a, b), **({"max_blob_bytes": MiB} if kind == "413" else {})))
    if kind == "401":
        return server, f"{server.url}/{sha}", [], 401
    if kind == "412":
        return server, f"{server.url}/{sha[:-1]}", creds, 412
    if kind == "200":
        assert httpx.put(f"{server.url}/{sha}", content=body, auth=AUTH).status_code == 201
        return server, f"{server.url}/{sha}", creds, 200
    return server, f"{server.url}/{sha}", creds, int(kind)


@pytest.mark.parametrize("upload", [["-T"], ["--data-binary"]], ids=["PUT", "POST"])
@pytest.mark.parametrize("kind", ["401", "412", "413", "507", "200"])
def test_expect_100_continue_early_answer_sends_no_body(
    start_server: Any, tmp_path: Path, tmpfs: Any, kind: str, upload: list[str]
) -> None:
    server, url, creds, expected = expect_case(kind, start_server, tmp_path, tmpfs)
    src = tmp_path / "upload.bin"
    arg = str(src) if upload == ["-T"] else f"@{src}"
    r = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}", *creds,
         "-H", "Expect: 100-continue", "--expect100-timeout", "30", *upload, arg, url],
        capture_output=True, text=True, timeout=60,
    )
    code, uploaded = r.stdout.split()
    assert code == str(expected), r.stderr
    assert int(float(uploaded)) == 0


@pytest.mark.parametrize("kind", ["401", "412", "413", "507", "200"])
def test_expect_100_continue_final_status_comes_first(start_server: Any, tmp_path: Path, tmpfs: Any, kind: str) -> None:
    """On the wire: the first thing answered is the final status, never 100 Continue."""
    server, url, creds, expected = expect_case(kind, start_server, tmp_path, tmpfs)
    headers = {"Content-Length": str(2 * MiB), "Expect": "100-continue"}
    if creds:
        headers["Authorization"] = basic(*AUTH)
    s = open_request(server, "PUT", url.removeprefix(server.url), headers)
    try:
        status, _ = read_head(s, bytearray())
    finally:
        s.close()
    assert status == expected


def test_expect_100_continue_accepted_upload_gets_100_then_201(server: StorServer, mirrors: tuple[Path, Path]) -> None:
    body = os.urandom(300_000)
    sha = sha256(body)
    headers = {"Content-Length": str(len(body)), "Expect": "100-continue", "Authorization": basic(*AUTH)}
    s = open_request(server, "PUT", f"/{sha}", headers)
    buffer = bytearray()
    try:
        first, _ = read_head(s, buffer)
        assert first == 100
        s.sendall(body)
        final, _ = read_head(s, buffer)
    finally:
        s.close()
    assert final == 201
    assert layout_path(mirrors[1], sha).read_bytes() == body


def test_curl_expect_100_continue_upload_sends_the_body(server: StorServer, tmp_path: Path) -> None:
    body = os.urandom(2 * MiB)
    sha = sha256(body)
    src = tmp_path / "new.bin"
    src.write_bytes(body)
    r = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}", "-u", ":".join(AUTH),
         "-H", "Expect: 100-continue", "--expect100-timeout", "30", "-T", str(src), f"{server.url}/{sha}"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.stdout.split() == ["201", str(len(body))], r.stderr
    assert httpx.get(f"{server.url}/{sha}").content == body


# ---- Content-Type and X-Filename ---------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "POST"])
@pytest.mark.parametrize(
    ("given", "disposition"),
    [
        ("report.pdf", "report.pdf"),
        ("r%C3%A9sum%C3%A9 final.pdf", "r%C3%A9sum%C3%A9%20final.pdf"),
        ("%E6%97%A5%E6%9C%AC%E8%AA%9E.txt", "%E6%97%A5%E6%9C%AC%E8%AA%9E.txt"),
        ("my sample (1).exe", "my%20sample%20%281%29.exe"),
    ],
)
def test_content_type_and_filename_round_trip(
    client: httpx.Client, mirrors: tuple[Path, Path], method: str, given: str, disposition: str
) -> None:
    body = os.urandom(4096)
    sha = sha256(body)
    r = client.request(
        method, f"/{sha}", content=body, auth=AUTH, headers={"Content-Type": "image/png", "X-Filename": given}
    )
    assert r.status_code == 201, r.text
    assert r.json() == [str(layout_path(m, sha)) for m in mirrors]
    get, head = client.get(f"/{sha}"), client.head(f"/{sha}")
    for resp in (get, head):
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "image/png"
        assert resp.headers["x-filename"] == given
        assert resp.headers["content-disposition"] == f"attachment; filename*=UTF-8''{disposition}"
        assert resp.headers["etag"] == f'"{sha}"'
    assert get.content == body
    assert no_date(get) == no_date(head)
    for m in mirrors:  # identity and bytes untouched
        dat = layout_path(m, sha).read_bytes()
        assert dat == body and sha256(dat) == sha


@pytest.mark.parametrize(
    "content_type",
    ["text/plain; charset=utf-8", "application/vnd.api+json", "application/x-msdownload", "application/" + "x" * 188],
)
def test_valid_content_types_are_stored_as_given(client: httpx.Client, content_type: str) -> None:
    body = content_type.encode()
    sha = sha256(body)
    assert client.put(f"/{sha}", content=body, auth=AUTH, headers={"Content-Type": content_type}).status_code == 201
    assert len(content_type) <= 200
    assert client.get(f"/{sha}").headers["content-type"] == content_type
    assert client.head(f"/{sha}").headers["content-type"] == content_type


def test_no_content_type_or_form_default_is_octet_stream(client: httpx.Client, server: StorServer, tmp_path: Path) -> None:
    plain = b"no type given"
    assert client.put(f"/{sha256(plain)}", content=plain, auth=AUTH).status_code == 201
    assert client.get(f"/{sha256(plain)}").headers["content-type"] == "application/octet-stream"

    form = b"sent as a form"
    r = client.post(
        f"/{sha256(form)}", content=form, auth=AUTH, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 201
    assert client.get(f"/{sha256(form)}").headers["content-type"] == "application/octet-stream"

    src = tmp_path / "curl.bin"
    src.write_bytes(b"curl --data-binary sends x-www-form-urlencoded")
    sha = sha256(src.read_bytes())
    up = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", ":".join(AUTH), "--data-binary", f"@{src}",
         f"{server.url}/{sha}"],
        capture_output=True, text=True, timeout=30,
    )
    assert up.stdout == "201"
    got = client.get(f"/{sha}")
    assert got.headers["content-type"] == "application/octet-stream"
    assert "x-filename" not in got.headers and "content-disposition" not in got.headers


def test_the_default_type_writes_no_sidecar(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    """application/octet-stream is what a blob without a type is served as: nothing to keep, no extra fsyncs."""
    body = b"declared as octet-stream"
    sha = sha256(body)
    r = client.post(f"/{sha}", content=body, auth=AUTH, headers={"Content-Type": "Application/Octet-Stream"})
    assert r.status_code == 201
    assert all(layout_path(m, sha).is_file() and not meta_path(m, sha).exists() for m in mirrors)
    assert client.get(f"/{sha}").headers["content-type"] == "application/octet-stream"


def test_curl_upload_with_metadata(server: StorServer, tmp_path: Path) -> None:
    src = tmp_path / "sample.zip"
    src.write_bytes(os.urandom(70_000))
    sha = sha256(src.read_bytes())
    up = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", ":".join(AUTH), "-T", str(src),
         "-H", "Content-Type: application/zip", "-H", "X-Filename: sample%20%C3%BC.zip", f"{server.url}/{sha}"],
        capture_output=True, text=True, timeout=30,
    )
    assert up.stdout == "201", up.stderr
    head = subprocess.run(["curl", "-sS", "-I", f"{server.url}/{sha}"], capture_output=True, text=True, timeout=30)
    lines = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in head.stdout.splitlines() if ":" in line}
    assert lines["content-type"] == "application/zip"
    assert lines["x-filename"] == "sample%20%C3%BC.zip"
    assert lines["content-disposition"] == "attachment; filename*=UTF-8''sample%20%C3%BC.zip"


BAD_CONTENT_TYPES = ["png", "text/", "/plain", "text/plain/extra", "text plain", "application/" + "x" * 189, "a/b@c"]
BAD_FILENAMES = [
    "a/b", "a%2Fb", "%2Fetc%2Fpasswd", "x" * 256, "%E2%82%AC" * 85 + "a", "a%00b", "a%0Ab", "a%09b", "a%1Fb", "a%7Fb",
]


@pytest.mark.parametrize(
    "header,value",
    [("Content-Type", v) for v in BAD_CONTENT_TYPES] + [("X-Filename", v) for v in BAD_FILENAMES],
)
def test_bad_metadata_header_400_and_nothing_written(
    client: httpx.Client, mirrors: tuple[Path, Path], header: str, value: str
) -> None:
    body = f"described badly: {header}: {value}".encode()
    sha = sha256(body)
    r = client.put(f"/{sha}", content=body, auth=AUTH, headers={header: value})
    assert r.status_code == 400, (header, value, r.status_code)
    assert r.text.startswith(f"Bad {header}")
    assert nothing_stored_for(mirrors, sha)
    assert client.get(f"/{sha}").status_code == 404


@pytest.mark.parametrize("filename", ["x" * 255, "%E2%82%AC" * 85])  # exactly 255 UTF-8 bytes once decoded
def test_filename_of_255_bytes_is_accepted(client: httpx.Client, filename: str) -> None:
    body = filename.encode()
    sha = sha256(body)
    assert client.put(f"/{sha}", content=body, auth=AUTH, headers={"X-Filename": filename}).status_code == 201
    assert client.get(f"/{sha}").headers["x-filename"] == filename


def test_sidecar_meta_on_both_mirrors(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    body = os.urandom(10_000)
    sha = sha256(body)
    r = client.put(
        f"/{sha}", content=body, auth=AUTH,
        headers={"Content-Type": "application/pdf", "X-Filename": "invoice%20%C3%A9.pdf"},
    )
    assert r.status_code == 201
    copies = [meta_path(m, sha).read_bytes() for m in mirrors]
    assert copies[0] == copies[1]
    meta = json.loads(copies[0])
    values = strings_in(meta)
    assert "application/pdf" in values
    assert "invoice%20%C3%A9.pdf" in values or "invoice é.pdf" in values
    for m in mirrors:
        assert layout_path(m, sha).read_bytes() == body
        assert sorted(p.name for p in layout_path(m, sha).parent.iterdir()) == sorted([f"{sha.upper()}.dat", f"{sha.upper()}.meta"])
    assert temp_files(*mirrors) == []


def test_duplicate_upload_does_not_change_metadata(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    body = os.urandom(2000)
    sha = sha256(body)
    first = {"Content-Type": "image/gif", "X-Filename": "first.gif"}
    assert client.put(f"/{sha}", content=body, auth=AUTH, headers=first).status_code == 201
    before = {m: (meta_path(m, sha).read_bytes(), layout_path(m, sha).stat().st_mtime_ns) for m in mirrors}
    for method in ("PUT", "POST"):
        again = client.request(
            method, f"/{sha}", content=body, auth=AUTH, headers={"Content-Type": "text/plain", "X-Filename": "second.txt"}
        )
        assert again.status_code == 200
    bare = client.put(f"/{sha}", content=body, auth=AUTH)  # no metadata at all: nothing is erased either
    assert bare.status_code == 200
    r = client.get(f"/{sha}")
    assert r.headers["content-type"] == "image/gif"
    assert r.headers["x-filename"] == "first.gif"
    assert r.headers["content-disposition"] == "attachment; filename*=UTF-8''first.gif"
    assert r.content == body
    after = {m: (meta_path(m, sha).read_bytes(), layout_path(m, sha).stat().st_mtime_ns) for m in mirrors}
    assert after == before


def test_completing_a_blob_from_one_mirror_keeps_that_mirror_s_metadata(start_server: Any, tmp_path: Path) -> None:
    """A blob found on one mirror only is completed by the next upload of its bytes, but what was
    said about it stays what the existing copy says: the completed mirror gets the existing
    mirror's sidecar (byte for byte), not the new upload's headers, so that the two mirrors agree
    and a read from either answers the same type and name."""
    a, b = disks = own_disks(tmp_path)
    # Nothing remembered per worker (no hot blobs, no remembered locations): every read below
    # picks one of the two mirrors at random and reads its files.
    server = start_server(pair_config(disks, hot_blobs=0, local_cache_size=0))
    body = os.urandom(20_000)
    sha = sha256(body)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        first = c.post(
            f"/{sha}", content=body, auth=AUTH, headers={"Content-Type": "application/pdf", "X-Filename": "a.pdf"}
        )
        assert first.status_code == 201, first.text
        kept = meta_path(a, sha).read_bytes()
        assert meta_path(b, sha).read_bytes() == kept
        kept_mtime = meta_path(a, sha).stat().st_mtime_ns
        layout_path(b, sha).unlink()  # mirror b lost its copy (a disk replaced, say)
        meta_path(b, sha).unlink()

        again = c.post(f"/{sha}", content=body, auth=AUTH, headers={"Content-Type": "text/plain"})
        assert again.status_code == 201, again.text
        assert again.json() == [str(layout_path(m, sha)) for m in disks]
        assert layout_path(b, sha).read_bytes() == body
        assert meta_path(a, sha).read_bytes() == kept and meta_path(a, sha).stat().st_mtime_ns == kept_mtime
        completed = meta_path(b, sha).read_bytes() if meta_path(b, sha).exists() else None
        assert completed == kept, f"the completed mirror's sidecar is {completed!r}, the existing one's {kept!r}"
        assert {"application/pdf", "a.pdf"} <= strings_in(json.loads(kept))

        answers = set()
        for _ in range(40):  # a random mirror each time: both are read, with near certainty
            r = c.get(f"/{sha}")
            assert r.status_code == 200 and r.content == body
            answers.add((r.headers["content-type"], r.headers.get("x-filename")))
        assert answers == {("application/pdf", "a.pdf")}, answers
    assert temp_files(*disks) == []


def test_same_bytes_with_different_metadata_are_one_blob(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    """The sha names the bytes only: no metadata header changes where or what is stored."""
    body = b"identity is the content"
    sha = sha256(body)
    r = client.put(f"/{sha}", content=body, auth=AUTH, headers={"Content-Type": "text/plain", "X-Filename": "a.txt"})
    assert r.status_code == 201
    for m in mirrors:
        assert [p.name for p in layout_path(m, sha).parent.glob("*.dat")] == [f"{sha.upper()}.dat"]
        assert layout_path(m, sha).read_bytes() == body
    assert client.post("/exists", json=[sha]).json()["present"] == [sha]


def test_stored_type_on_partial_and_not_modified_answers(client: httpx.Client) -> None:
    body = os.urandom(1000)
    sha = sha256(body)
    assert client.put(f"/{sha}", content=body, auth=AUTH, headers={"Content-Type": "audio/ogg"}).status_code == 201
    partial = client.get(f"/{sha}", headers={"Range": "bytes=0-9"})
    assert partial.status_code == 206 and partial.headers["content-type"] == "audio/ogg"
    cached = client.get(f"/{sha}", headers={"If-None-Match": f'"{sha}"'})
    assert cached.status_code == 304 and cached.headers["content-type"] == "audio/ogg"
    head = client.head(f"/{sha}", headers={"Range": "bytes=0-9"})
    assert no_date(head) == no_date(partial)
