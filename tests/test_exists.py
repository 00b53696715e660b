"""POST /exists: which of many shas are stored, in one round trip."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from conftest import AUTH, StorServer, layout_path, own_disks, pair_config, sha256

READER, READER_PW = "analyst", "read-only-pw"
READER_HASH = bcrypt.hashpw(READER_PW.encode(), bcrypt.gensalt(rounds=4)).decode()


# One server for the tests that only add distinct blobs (it starts once per module).
pytestmark = pytest.mark.shared_server


def upload(c: httpx.Client, body: bytes) -> str:
    sha = sha256(body)
    assert c.post(f"/{sha}", content=body, auth=AUTH).status_code == 201
    return sha


def fake_sha(i: int) -> str:
    return sha256(f"never stored {i}".encode())


def test_present_missing_invalid(client: httpx.Client) -> None:
    p1, p2 = upload(client, b"one"), upload(client, b"two")
    m1 = fake_sha(1)
    request = [p1, m1, "nothex", p2.upper(), m1, p1.upper(), 42, None, True, 1.5, "g" * 64, "0" * 63, p1 + "0", " " + p2]
    r = client.post("/exists", json=request)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {
        "present": [p1, p2],
        "missing": [m1],
        "invalid": ["nothex", "42", "null", "true", "1.5", "g" * 64, "0" * 63, p1 + "0", " " + p2],
    }


def test_empty_list(client: httpx.Client) -> None:
    r = client.post("/exists", json=[])
    assert r.status_code == 200
    assert r.json() == {"present": [], "missing": [], "invalid": []}


def test_order_of_the_request_is_kept(client: httpx.Client) -> None:
    rng = random.Random(4)
    stored = [upload(client, f"stored {i}".encode()) for i in range(30)]
    missing = [fake_sha(i) for i in range(30)]
    request = stored + missing
    rng.shuffle(request)
    request = [s.upper() if rng.random() < 0.5 else s for s in request]
    r = client.post("/exists", json=request)
    assert r.status_code == 200
    lowered = [s.lower() for s in request]
    assert r.json() == {
        "present": [s for s in lowered if s in stored],
        "missing": [s for s in lowered if s in missing],
        "invalid": [],
    }


def test_a_blob_on_one_mirror_only_is_present(client: httpx.Client, mirrors: tuple[Path, Path]) -> None:
    body = b"placed by hand on the second mirror"
    sha = sha256(body)
    path = layout_path(mirrors[1], sha)
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    r = client.post("/exists", json=[sha, fake_sha(0)])
    assert r.json() == {"present": [sha], "missing": [fake_sha(0)], "invalid": []}


def test_the_answer_follows_uploads(client: httpx.Client) -> None:
    body = b"arrives later"
    sha = sha256(body)
    assert client.post("/exists", json=[sha]).json()["missing"] == [sha]
    upload(client, body)
    assert client.post("/exists", json=[sha]).json()["present"] == [sha]


# ---- limits ------------------------------------------------------------------------------


@pytest.fixture
def small_limit(start_server: Any, tmp_path: Path) -> Iterator[httpx.Client]:
    server = start_server(pair_config(own_disks(tmp_path), exists_max_items=5))
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_item_limit(small_limit: httpx.Client) -> None:
    five = [fake_sha(i) for i in range(5)]
    ok = small_limit.post("/exists", json=five)
    assert ok.status_code == 200 and ok.json()["missing"] == five
    assert small_limit.post("/exists", json=five + [fake_sha(5)]).status_code == 413
    assert small_limit.post("/exists", json=[1, 2, 3, 4, 5, 6]).status_code == 413  # invalid entries count too


def test_body_size_limit(small_limit: httpx.Client) -> None:
    limit = 5 * 100 + 1024
    at_limit = b"[" + b" " * (limit - 2) + b"]"
    over = b"[" + b" " * (limit - 1) + b"]"
    assert len(at_limit) == limit
    r = small_limit.post("/exists", content=at_limit, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json() == {"present": [], "missing": [], "invalid": []}
    assert small_limit.post("/exists", content=over).status_code == 413
    one_long_entry = json.dumps(["x" * limit]).encode()  # a single item, but too many bytes
    assert small_limit.post("/exists", content=one_long_entry).status_code == 413


def test_body_size_limit_without_content_length(small_limit: httpx.Client) -> None:
    limit = 5 * 100 + 1024

    def chunks(total: int) -> Iterator[bytes]:
        yield b"["
        left = total - 2
        while left > 0:
            n = min(100, left)
            yield b" " * n
            left -= n
        yield b"]"

    r = small_limit.post("/exists", content=chunks(limit))
    assert r.status_code == 200 and r.json()["present"] == []
    assert small_limit.post("/exists", content=chunks(limit + 1)).status_code == 413
    assert small_limit.post("/exists", content=chunks(50 * limit)).status_code == 413


def test_default_limit_is_ten_thousand(client: httpx.Client) -> None:
    stored = [upload(client, f"s{i}".encode()) for i in range(5)]
    request = [fake_sha(i) for i in range(9995)] + stored
    r = client.post("/exists", json=request)
    assert r.status_code == 200
    data = r.json()
    assert data["present"] == stored
    assert data["missing"] == request[:9995]
    assert data["invalid"] == []
    assert client.post("/exists", json=request + [fake_sha(-1)]).status_code == 413


def test_huge_list_413(client: httpx.Client) -> None:
    huge = [fake_sha(i) for i in range(100_000)]  # about 6.7 MB of JSON
    r = client.post("/exists", json=huge)
    assert r.status_code == 413
    assert client.post("/exists", json=huge[:3]).status_code == 200  # and the server is fine afterwards


# ---- malformed bodies ----------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1,", b'["abc"', b"\xff\xfe[]", b"[] []", b"NaNa"])
def test_invalid_json_400(client: httpx.Client, body: bytes) -> None:
    r = client.post("/exists", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, (body, r.status_code, r.text)
    assert r.text.startswith("Invalid JSON: ")
    assert "\n" not in r.text.strip()


def test_deeply_nested_json_is_a_clear_4xx(client: httpx.Client) -> None:
    """Well inside the byte limit, but deeper than a recursive parser goes."""
    unclosed = client.post("/exists", content=b"[" * 100_000)
    assert unclosed.status_code == 400, (unclosed.status_code, unclosed.text[:200])
    assert unclosed.text.startswith("Invalid JSON: ")
    closed = client.post("/exists", content=b"[" * 100_000 + b"]" * 100_000)
    assert 400 <= closed.status_code < 500, (closed.status_code, closed.text[:200])
    assert client.post("/exists", json=[]).status_code == 200


@pytest.mark.parametrize("body", ['{"shas": []}', '"' + "0" * 64 + '"', "42", "null", "true"])
def test_not_an_array_400(client: httpx.Client, body: str) -> None:
    r = client.post("/exists", content=body.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, (body, r.status_code, r.text)
    assert r.text.strip() and "\n" not in r.text.strip()


def test_get_exists_405(client: httpx.Client) -> None:
    r = client.get("/exists")
    assert r.status_code == 405
    assert "POST" in r.headers.get("allow", "")


# ---- read credentials ------------------------------------------------------------------------


def auth_config(mirrors: tuple[Path, Path], required: bool) -> dict[str, Any]:
    users = [{"name": READER, "password_hash": READER_HASH, "role": "read"}]
    return pair_config(mirrors, users=users, read_auth_required=required)


def test_exists_is_anonymous_by_default(start_server: Any, tmp_path: Path) -> None:
    server: StorServer = start_server(auth_config(own_disks(tmp_path), required=False))
    r = httpx.post(f"{server.url}/exists", json=[fake_sha(1)])
    assert r.status_code == 200 and r.json()["missing"] == [fake_sha(1)]


def test_exists_honours_read_auth_required(start_server: Any, tmp_path: Path) -> None:
    server: StorServer = start_server(auth_config(own_disks(tmp_path), required=True))
    body = b"secret sample"
    sha = sha256(body)
    with httpx.Client(base_url=server.url) as c:
        assert c.post(f"/{sha}", content=body, auth=AUTH).status_code == 201
        for auth in [None, (READER, "wrong"), ("nobody", READER_PW)]:
            r = c.post("/exists", json=[sha], auth=auth)
            assert r.status_code == 401, auth
            assert r.text == "Authentication required!"
            assert r.headers["www-authenticate"] == 'Basic realm="stor"'
            assert sha not in r.text
        for auth in [(READER, READER_PW), AUTH]:
            r = c.post("/exists", json=[sha], auth=auth)
            assert r.status_code == 200
            assert r.json() == {"present": [sha], "missing": [], "invalid": []}
