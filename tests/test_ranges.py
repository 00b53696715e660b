"""Ranges, conditional requests and caching headers, end to end with httpx and curl.

Every blob in this module gets a fixed mtime (set on both mirrors right after the
upload) so that Last-Modified, If-Modified-Since and If-Range dates are exact.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from conftest import AUTH, StorServer, layout_path, pair_config, sha256

MTIME = 1_600_000_000  # Sun, 13 Sep 2020 12:26:40 GMT
LAST_MODIFIED = formatdate(MTIME, usegmt=True)
CACHE_CONTROL = "public, max-age=31536000, immutable"
SIZE = 10_000
BODY = random.Random(5).randbytes(SIZE)
SHA = sha256(BODY)
ETAG = f'"{SHA}"'
MiB = 1 << 20


# Nothing here changes a stored blob, so one server serves the whole module (it starts once).
pytestmark = pytest.mark.shared_server


def store(client: httpx.Client, mirrors: tuple[Path, Path], body: bytes, mtime: float = MTIME + 0.7) -> str:
    """Upload with POST (the original's method; 200 if an earlier test stored it) and pin the mtime of both copies."""
    sha = sha256(body)
    r = client.post(f"/{sha}", content=body, auth=AUTH)
    assert r.status_code in (200, 201), r.text
    for m in mirrors:
        os.utime(layout_path(m, sha), (mtime, mtime))
    return sha


@pytest.fixture
def blob(client: httpx.Client, mirrors: tuple[Path, Path]) -> str:
    return store(client, mirrors, BODY)


def no_date(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k != "date"}


def assert_blob_headers(r: httpx.Response, sha: str = SHA) -> None:
    assert r.headers["etag"] == f'"{sha}"'
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["cache-control"] == CACHE_CONTROL
    assert r.headers["last-modified"] == LAST_MODIFIED
    assert r.headers["content-type"] == "application/octet-stream"


def one_line(text: str) -> bool:
    return text.strip() != "" and "\n" not in text.strip()


# ---- caching headers ---------------------------------------------------------------------


def test_full_answer_carries_every_caching_header(client: httpx.Client, blob: str) -> None:
    get = client.get(f"/{blob}")
    head = client.head(f"/{blob}")
    for r in (get, head):
        assert r.status_code == 200
        assert_blob_headers(r)
        assert r.headers["content-length"] == str(SIZE)
        assert "content-range" not in r.headers
    assert get.content == BODY and head.content == b""
    assert no_date(get) == no_date(head)


def test_last_modified_is_the_file_mtime_in_whole_seconds(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    body = b"another mtime"
    sha = store(client, mirrors, body, mtime=1_234_567_890.999)
    r = client.get(f"/{sha}")
    assert r.headers["last-modified"] == "Fri, 13 Feb 2009 23:31:30 GMT"


# ---- single ranges -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=0-99", 0, 99),
        ("bytes=1234-5677", 1234, 5677),
        ("bytes=9999-9999", 9999, 9999),
        ("bytes=0-", 0, SIZE - 1),
        ("bytes=9000-", 9000, SIZE - 1),
        ("bytes=9999-", 9999, SIZE - 1),
        ("bytes=-1", SIZE - 1, SIZE - 1),
        ("bytes=-100", SIZE - 100, SIZE - 1),
        ("bytes=-10000", 0, SIZE - 1),
        ("bytes=-20000", 0, SIZE - 1),  # a suffix longer than the blob is the whole blob (RFC 9110 14.1.3)
        ("bytes=9990-20000", 9990, SIZE - 1),  # the end is clipped
        ("bytes=5-99999999999999999999999", 5, SIZE - 1),  # even far beyond any integer type
    ],
)
def test_single_range_206(client: httpx.Client, blob: str, spec: str, first: int, last: int) -> None:
    get = client.get(f"/{blob}", headers={"Range": spec})
    head = client.head(f"/{blob}", headers={"Range": spec})
    for r in (get, head):
        assert r.status_code == 206, (spec, r.status_code, r.text)
        assert r.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
        assert r.headers["content-length"] == str(last - first + 1)
        assert_blob_headers(r)
    assert get.content == BODY[first : last + 1]
    assert head.content == b""
    assert no_date(get) == no_date(head)


def get_and_head_416(client: httpx.Client, blob: str, spec: str) -> tuple[httpx.Response, httpx.Response]:
    """GET and HEAD with Range: spec, both checked to be 416 with Content-Range: bytes */SIZE."""
    get = client.get(f"/{blob}", headers={"Range": spec})
    head = client.head(f"/{blob}", headers={"Range": spec})
    for r in (get, head):
        assert r.status_code == 416, (spec, r.status_code)
        assert r.headers["content-range"] == f"bytes */{SIZE}"
    return get, head


@pytest.mark.parametrize(
    "spec", ["bytes=10000-", "bytes=10000-10005", "bytes=123456-", "bytes=99999999999999999999999-", "bytes=-0"]
)
def test_unsatisfiable_range_416(client: httpx.Client, blob: str, spec: str) -> None:
    get, head = get_and_head_416(client, blob, spec)
    assert one_line(get.text), get.text
    assert BODY[:20] not in get.content
    assert head.content == b""
    assert no_date(get) == no_date(head)


@pytest.mark.parametrize("spec", ["bytes=0-", "bytes=0-0", "bytes=-1", "bytes=-0", "bytes=5-10"])
def test_any_range_of_an_empty_blob_is_unsatisfiable(
    client: httpx.Client, mirrors: tuple[Path, Path], spec: str
) -> None:
    sha = store(client, mirrors, b"")
    r = client.get(f"/{sha}", headers={"Range": spec})
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */0"
    assert one_line(r.text)
    assert client.get(f"/{sha}").status_code == 200  # without a range it is an ordinary empty blob


@pytest.mark.parametrize(
    "spec",
    ["bytes=", "bytes=abc", "bytes=a-b", "bytes=1-x", "bytes=x-5", "bytes=-x", "bytes=5-2", "bytes=1.5-3", "bytes=-"],
)
def test_malformed_range_400(client: httpx.Client, blob: str, spec: str) -> None:
    r = client.get(f"/{blob}", headers={"Range": spec})
    assert r.status_code == 400, (spec, r.status_code, r.headers.get("content-range"))
    assert r.text.startswith("Malformed Range header"), r.text
    assert one_line(r.text)
    assert client.head(f"/{blob}", headers={"Range": spec}).status_code == 400


@pytest.mark.parametrize("raw", [b"bytes=\xb2-5", b"bytes=0-\xb9", b"bytes=-\xb3", b"bytes=\xbd-"])
def test_non_ascii_digits_in_range_never_read_as_digits(client: httpx.Client, blob: str, raw: bytes) -> None:
    """Latin-1 superscripts and fractions (what a header byte 0xB2 decodes to) are not DIGITs:
    uvicorn hands the bytes to stor, which answers 400 with its one-line reason, never a 206."""
    r = client.get(f"/{blob}", headers=[(b"Range", raw)])
    assert r.status_code == 400, (raw, r.status_code, r.headers.get("content-range"), r.content[:100])
    assert r.text.startswith("Malformed Range header"), r.text
    assert one_line(r.text)
    assert "content-range" not in r.headers
    assert client.head(f"/{blob}", headers=[(b"Range", raw)]).status_code == 400


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "bytes=0-1, 5-6", "bytes=-5,0-1", "bytes=0-0,0-0"])
def test_several_ranges_416(client: httpx.Client, blob: str, spec: str) -> None:
    get, head = get_and_head_416(client, blob, spec)
    assert get.text.strip() == "Only a single byte range is supported"
    assert no_date(get) == no_date(head)


@pytest.mark.parametrize("spec", ["items=0-1", "lines=-5"])
def test_other_range_units_are_ignored(client: httpx.Client, blob: str, spec: str) -> None:
    r = client.get(f"/{blob}", headers={"Range": spec})
    assert r.status_code == 200
    assert r.content == BODY
    assert "content-range" not in r.headers


def test_range_of_a_large_blob_crosses_chunk_boundaries(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    body = random.Random(9).randbytes(3 * MiB + 17)
    sha = store(client, mirrors, body)
    for first, last in [(MiB - 1, 2 * MiB + 1), (1, len(body) - 2), (3 * MiB, 3 * MiB + 16), (0, MiB)]:
        r = client.get(f"/{sha}", headers={"Range": f"bytes={first}-{last}"})
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes {first}-{last}/{len(body)}"
        assert r.content == body[first : last + 1]


def test_ranged_body_streams_in_bounded_memory(start_server: object, tmp_path: Path) -> None:
    """A 256 MiB blob (placed by hand, sparse) served as one almost-whole range: the worker's peak RSS stays low."""
    mirrors = (tmp_path / "own1", tmp_path / "own2")
    for d in mirrors:
        d.mkdir()
    size = 256 * MiB
    zeros = bytes(MiB)
    h = hashlib.sha256()
    for _ in range(size // MiB):
        h.update(zeros)
    sha = h.hexdigest()
    path = layout_path(mirrors[0], sha)
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.truncate(size)
    server: StorServer = start_server(pair_config(mirrors))  # type: ignore[operator]
    received = 0
    digest = hashlib.sha256()
    with httpx.stream("GET", f"{server.url}/{sha}", headers={"Range": f"bytes=1-{size - 2}"}, timeout=60) as r:
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes 1-{size - 2}/{size}"
        for chunk in r.iter_raw():
            received += len(chunk)
            digest.update(chunk)
    assert received == size - 2
    check = hashlib.sha256()
    for _ in range(size // MiB - 1):
        check.update(zeros)
    check.update(bytes(MiB - 2))
    assert digest.hexdigest() == check.hexdigest()
    peak = server.peak_rss_bytes()
    assert peak < 150 * MiB, f"peak RSS {peak / MiB:.0f} MiB serving a 256 MiB range"


# ---- If-Range --------------------------------------------------------------------------------


@pytest.mark.parametrize("validator", [ETAG, LAST_MODIFIED])
def test_if_range_matching_honours_the_range(client: httpx.Client, blob: str, validator: str) -> None:
    for method in ("GET", "HEAD"):
        r = client.request(method, f"/{blob}", headers={"Range": "bytes=10-19", "If-Range": validator})
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes 10-19/{SIZE}"
        if method == "GET":
            assert r.content == BODY[10:20]


@pytest.mark.parametrize(
    "validator",
    [
        '"' + "0" * 64 + '"',
        f"W/{ETAG}",  # a weak validator never matches If-Range
        formatdate(MTIME - 1, usegmt=True),
        formatdate(MTIME + 1, usegmt=True),
        formatdate(MTIME + 86400 * 365, usegmt=True),
        "not a date or an etag",
        SHA,  # unquoted
    ],
)
def test_if_range_not_matching_gives_the_whole_blob(client: httpx.Client, blob: str, validator: str) -> None:
    r = client.get(f"/{blob}", headers={"Range": "bytes=10-19", "If-Range": validator})
    assert r.status_code == 200, validator
    assert r.content == BODY
    assert "content-range" not in r.headers
    head = client.head(f"/{blob}", headers={"Range": "bytes=10-19", "If-Range": validator})
    assert head.status_code == 200 and head.headers["content-length"] == str(SIZE)


# ---- If-None-Match / If-Modified-Since ---------------------------------------------------


@pytest.mark.parametrize(
    "value", [ETAG, f"W/{ETAG}", "*", f'"abc", {ETAG}', f'W/"x", W/{ETAG}, "y"', f'"{"1" * 64}",{ETAG}']
)
def test_if_none_match_304(client: httpx.Client, blob: str, value: str) -> None:
    get = client.get(f"/{blob}", headers={"If-None-Match": value})
    head = client.head(f"/{blob}", headers={"If-None-Match": value})
    for r in (get, head):
        assert r.status_code == 304, value
        assert r.content == b""
        assert_blob_headers(r)
    assert no_date(get) == no_date(head)


@pytest.mark.parametrize("value", ['"' + "0" * 64 + '"', f'W/"{"1" * 64}"', '"abc", "def"', SHA])
def test_if_none_match_not_matching_is_a_normal_answer(client: httpx.Client, blob: str, value: str) -> None:
    r = client.get(f"/{blob}", headers={"If-None-Match": value})
    assert r.status_code == 200, value
    assert r.content == BODY
    ranged = client.get(f"/{blob}", headers={"If-None-Match": value, "Range": "bytes=0-4"})
    assert ranged.status_code == 206 and ranged.content == BODY[:5]


def test_if_none_match_wins_over_range(client: httpx.Client, blob: str) -> None:
    """RFC 9110 13.2.2: If-None-Match is evaluated before Range."""
    r = client.get(f"/{blob}", headers={"If-None-Match": ETAG, "Range": "bytes=0-9"})
    assert r.status_code == 304 and r.content == b""


@pytest.mark.parametrize(
    ("since", "status"),
    [
        (LAST_MODIFIED, 304),  # mtime (MTIME + 0.7) in whole seconds equals the date
        (formatdate(MTIME + 1, usegmt=True), 304),
        (formatdate(MTIME + 10 * 365 * 86400, usegmt=True), 304),
        (formatdate(MTIME - 1, usegmt=True), 200),
        (formatdate(0, usegmt=True), 200),
        ("yesterday", 200),  # unparsable: ignored
        ("Sun, 99 Foo 2020 99:99:99 GMT", 200),
    ],
)
def test_if_modified_since(client: httpx.Client, blob: str, since: str, status: int) -> None:
    get = client.get(f"/{blob}", headers={"If-Modified-Since": since})
    head = client.head(f"/{blob}", headers={"If-Modified-Since": since})
    assert get.status_code == status == head.status_code, since
    assert get.content == (BODY if status == 200 else b"")
    assert_blob_headers(get)
    assert no_date(get) == no_date(head)


def test_if_modified_since_is_ignored_when_if_none_match_is_present(client: httpx.Client, blob: str) -> None:
    later = formatdate(MTIME + 3600, usegmt=True)
    earlier = formatdate(MTIME - 3600, usegmt=True)
    r = client.get(f"/{blob}", headers={"If-None-Match": '"nope"', "If-Modified-Since": later})
    assert r.status_code == 200 and r.content == BODY
    r = client.get(f"/{blob}", headers={"If-None-Match": ETAG, "If-Modified-Since": earlier})
    assert r.status_code == 304


def test_missing_blob_is_still_404_with_conditional_headers(client: httpx.Client) -> None:
    sha = "f" * 64
    for headers in ({"If-None-Match": "*"}, {"Range": "bytes=0-1"}, {"If-Modified-Since": LAST_MODIFIED}):
        r = client.get(f"/{sha}", headers=headers)
        assert r.status_code == 404, headers
        assert r.text == f"File '{sha}' not found"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Range": "bytes=5-10"},
        {"Range": "bytes=-3"},
        {"Range": "bytes=9000-"},
        {"Range": "bytes=20000-"},
        {"Range": "bytes=0-1,3-4"},
        {"If-None-Match": ETAG},
        {"If-Modified-Since": LAST_MODIFIED},
        {"Range": "bytes=5-10", "If-Range": ETAG},
        {"Range": "bytes=5-10", "If-Range": '"stale"'},
    ],
)
def test_head_and_get_agree_header_for_header(client: httpx.Client, blob: str, headers: dict[str, str]) -> None:
    get = client.get(f"/{blob}", headers=headers)
    head = client.head(f"/{blob}", headers=headers)
    assert get.status_code == head.status_code
    assert no_date(get) == no_date(head)
    assert head.content == b""


# ---- with curl ---------------------------------------------------------------------------------


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def big_blob(client: httpx.Client, mirrors: tuple[Path, Path]) -> bytes:
    body = random.Random(11).randbytes(3 * MiB + 333)
    store(client, mirrors, body)
    return body


@pytest.mark.parametrize("already", [1, 1_000_003, 3 * MiB + 332])
def test_curl_resumes_a_partial_download(server: StorServer, big_blob: bytes, tmp_path: Path, already: int) -> None:
    out = tmp_path / "partial.bin"
    out.write_bytes(big_blob[:already])
    r = curl("-f", "-C", "-", "-o", str(out), "-w", "%{http_code} %{size_download}", f"{server.url}/{sha256(big_blob)}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["206", str(len(big_blob) - already)]
    assert out.read_bytes() == big_blob


def test_curl_resume_of_a_complete_file_changes_nothing(server: StorServer, big_blob: bytes, tmp_path: Path) -> None:
    """curl asks for bytes=SIZE-: the 416 tells it the file is complete, which it takes as success
    (without -f, which would turn any 4xx into an error)."""
    out = tmp_path / "complete.bin"
    out.write_bytes(big_blob)
    r = curl("-C", "-", "-o", str(out), "-w", "%{http_code}", f"{server.url}/{sha256(big_blob)}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "416"
    assert out.read_bytes() == big_blob


def test_curl_z_gets_304_and_keeps_the_local_file(server: StorServer, big_blob: bytes, tmp_path: Path) -> None:
    local = tmp_path / "local.bin"
    local.write_bytes(b"my existing copy")
    os.utime(local, (MTIME + 60, MTIME + 60))  # newer than the blob
    r = curl("-z", str(local), "-o", str(local), "-w", "%{http_code} %{size_download}", f"{server.url}/{sha256(big_blob)}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["304", "0"]
    assert local.read_bytes() == b"my existing copy"


def test_curl_z_with_an_older_file_downloads(server: StorServer, big_blob: bytes, tmp_path: Path) -> None:
    local = tmp_path / "old.bin"
    local.write_bytes(b"stale")
    os.utime(local, (MTIME - 60, MTIME - 60))
    r = curl("-z", str(local), "-o", str(local), "-w", "%{http_code}", f"{server.url}/{sha256(big_blob)}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "200"
    assert local.read_bytes() == big_blob


def test_curl_z_with_a_date(server: StorServer, big_blob: bytes, tmp_path: Path) -> None:
    out = tmp_path / "never.bin"
    r = curl("-z", LAST_MODIFIED, "-o", str(out), "-w", "%{http_code}", f"{server.url}/{sha256(big_blob)}")
    assert r.stdout == "304", r.stderr
    assert not out.exists() or out.read_bytes() == b""


def test_curl_etag_compare_gets_304(server: StorServer, big_blob: bytes, tmp_path: Path) -> None:
    etag_file, out = tmp_path / "etag.txt", tmp_path / "out.bin"
    url = f"{server.url}/{sha256(big_blob)}"
    first = curl("--etag-save", str(etag_file), "-o", str(out), "-w", "%{http_code}", url)
    assert first.stdout == "200" and out.read_bytes() == big_blob
    assert etag_file.read_text().strip() == f'"{sha256(big_blob)}"'
    again = curl("--etag-compare", str(etag_file), "-o", str(tmp_path / "again.bin"), "-w", "%{http_code} %{size_download}", url)
    assert again.stdout.split() == ["304", "0"], again.stderr
    none_match = curl("-H", f'If-None-Match: "{sha256(big_blob)}"', "-o", "/dev/null", "-w", "%{http_code}", url)
    assert none_match.stdout == "304"


@pytest.mark.parametrize(
    ("arg", "first", "last"),
    [("0-0", 0, 0), ("100-199", 100, 199), ("-100", 3 * MiB + 233, 3 * MiB + 332), ("3000000-", 3_000_000, 3 * MiB + 332)],
)
def test_curl_r(server: StorServer, big_blob: bytes, tmp_path: Path, arg: str, first: int, last: int) -> None:
    out = tmp_path / "range.bin"
    r = curl("-f", "-r", arg, "-o", str(out), "-w", "%{http_code}", f"{server.url}/{sha256(big_blob)}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "206"
    assert out.read_bytes() == big_blob[first : last + 1]


def test_curl_head_shows_the_caching_headers(server: StorServer, big_blob: bytes) -> None:
    r = curl("-I", f"{server.url}/{sha256(big_blob)}")
    assert r.returncode == 0, r.stderr
    lines = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in r.stdout.splitlines()[1:] if ":" in line}
    assert r.stdout.startswith("HTTP/1.1 200")
    assert lines["accept-ranges"] == "bytes"
    assert lines["cache-control"] == CACHE_CONTROL
    assert lines["etag"] == f'"{sha256(big_blob)}"'
    assert lines["content-length"] == str(len(big_blob))
