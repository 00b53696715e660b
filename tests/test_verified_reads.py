"""Verified reads and healing on the read path, against a real `stor serve` over real sockets.

The damage is real: bytes flipped, files truncated or deleted in the
storage directories the server reads. What is checked is what a client
receives (never a complete 200 whose bytes do not hash to the sha, under
the fast path and without it) and what the disks hold afterwards (the bad
copy quarantined, a good one in its place).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUTH, flip_byte, layout_path, pair_config, sha256, wait_for
from test_s3_tier import scrape

KiB, MiB = 1024, 1024 * 1024
# Blobs damaged on one mirror: a first read tries either mirror first, so that with this many at least
# one read meets a bad copy (all but once in 65536 runs).
BLOBS = 16


def store(url: str, data: bytes) -> str:
    sha = sha256(data)
    assert httpx.post(f"{url}/{sha}", content=data, auth=AUTH, timeout=30).status_code == 201
    return sha


def raw_get(port: int, sha: str) -> tuple[int, int, bytes]:
    """GET over a plain socket, read until the server closes or the declared length is in:
    (status, Content-Length, body bytes received). A cut-short answer shows as fewer bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET /{sha} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = s.recv(65536)
            assert chunk, "no answer head"
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        match = re.search(rb"(?i)content-length: *(\d+)", head)
        length = int(match.group(1)) if match else -1
        while len(body) < length:
            try:
                chunk = s.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            body += chunk
        return status, length, body


def quarantined(root: Path) -> list[Path]:
    directory = root / ".stor-quarantine"
    return sorted(p for p in directory.iterdir() if not p.name.endswith(".why.json")) if directory.is_dir() else []


def good(path: Path, sha: str) -> bool:
    return path.is_file() and sha256(path.read_bytes()) == sha


def verified(mirrors: tuple[Path, Path], **integrity: Any) -> dict[str, Any]:
    return pair_config(mirrors, integrity={"verify_reads": "always", **integrity})


# ---- a corrupt copy is never delivered whole -------------------------------------------------


def test_small_blobs_corrupt_on_one_mirror_are_served_from_the_other_and_repaired(
    start_server: Any, mirrors: tuple[Path, Path]
) -> None:
    server = start_server(verified(mirrors))
    blobs = {sha256(d): d for d in (os.urandom(4 * KiB) for _ in range(BLOBS))}
    for sha, data in blobs.items():
        store(server.url, data)
        flip_byte(layout_path(mirrors[0], sha), 100)
    # A first read tries either mirror first; whichever it is, every answer is the right bytes
    # (the check is made before anything is sent), and each bad copy it met is queued for repair.
    for sha, data in blobs.items():
        got = httpx.get(f"{server.url}/{sha}", timeout=30)
        assert got.status_code == 200 and got.content == data
    met = scrape(server.url, "stor_corrupt_copies_total")
    assert met >= 1  # each blob's first read went to the bad mirror first with probability 1/2
    # Each bad copy met was quarantined (kept, not deleted) and a good one copied in its place.
    wait_for(lambda: len(quarantined(mirrors[0])) == met, timeout=30, what="the repairs")
    assert sum(good(layout_path(mirrors[0], sha), sha) for sha in blobs) == met
    for kept in quarantined(mirrors[0]):
        assert sha256(kept.read_bytes()) not in blobs and len(kept.read_bytes()) == 4 * KiB
    assert all(good(layout_path(mirrors[1], sha), sha) for sha in blobs)
    assert scrape(server.url, 'stor_heal_jobs_total{result="repaired"}') == met
    assert "does not hash to its sha" in server.log_text()


def test_a_large_blob_corrupt_everywhere_is_never_received_whole(
    start_server: Any, mirrors: tuple[Path, Path], tmp_path: Path
) -> None:
    server = start_server(verified(mirrors))
    data = os.urandom(8 * MiB)  # sent from the file (sendfile on the fast path), checked alongside
    sha = store(server.url, data)
    for root in mirrors:
        flip_byte(layout_path(root, sha), len(data) // 2)
    # The first read meets a bad copy it does not know yet: curl sees the answer end short of its length.
    out = tmp_path / "curl.out"
    curl = subprocess.run(["curl", "-s", "-o", str(out), f"{server.url}/{sha}"], timeout=60)
    assert curl.returncode == 18  # CURLE_PARTIAL_FILE
    assert out.stat().st_size < len(data)
    for _ in range(3):
        status, length, body = raw_get(server.port, sha)
        # Either refused outright (every copy known bad) or cut short: never the whole length.
        assert status == 500 or (status == 200 and length == len(data) and len(body) < length), (status, len(body))
    with pytest.raises(httpx.HTTPError):
        got = httpx.get(f"{server.url}/{sha}", timeout=30)
        got.raise_for_status()
    # No good copy anywhere: nothing is "repaired" with bad data, both stay where they are.
    wait_for(lambda: scrape(server.url, 'stor_heal_jobs_total{result="failed"}') >= 1, timeout=30, what="the repair attempt")
    for root in mirrors:
        assert layout_path(root, sha).is_file() and quarantined(root) == []


def test_large_blobs_corrupt_on_one_mirror_are_cut_short_at_most_once_then_served_and_repaired(
    start_server: Any, mirrors: tuple[Path, Path]
) -> None:
    server = start_server(verified(mirrors))
    blobs = {sha256(d): d for d in (os.urandom(300 * KiB) for _ in range(BLOBS))}  # beyond the read-ahead
    for sha, data in blobs.items():
        store(server.url, data)
        flip_byte(layout_path(mirrors[0], sha), len(data) - 1)  # the last byte: only a whole-blob check finds it
    cut = 0
    for sha, data in blobs.items():
        first, second = raw_get(server.port, sha), raw_get(server.port, sha)
        for status, length, body in (first, second):
            assert status == 200 and length == len(data)
            assert len(body) < length or body == data  # whole only when right
        # A copy found bad is not read again by that worker: the second answer is whole.
        assert second[2] == data
        cut += len(first[2]) < len(data)
    assert cut >= 1  # each first read went to the bad mirror first with probability 1/2
    wait_for(lambda: len(quarantined(mirrors[0])) == cut, timeout=30, what="the repairs")
    assert sum(good(layout_path(mirrors[0], sha), sha) for sha in blobs) == cut


def test_without_verification_a_range_of_a_blob_is_served_as_stored(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """The cost model documented: ranges are not checked (it would take reading the whole blob)."""
    server = start_server(verified(mirrors))
    data = os.urandom(1 * MiB)
    sha = store(server.url, data)
    for root in mirrors:
        flip_byte(layout_path(root, sha), 10)
    got = httpx.get(f"{server.url}/{sha}", headers={"Range": "bytes=100-199"}, timeout=30)
    assert got.status_code == 206 and got.content == data[100:200]


def test_verify_reads_off_serves_what_is_stored(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """The baseline the option changes: off, a corrupt copy goes out as it is (the test above can fail)."""
    server = start_server(pair_config(mirrors, integrity={"heal": False}))
    data = os.urandom(4 * KiB)
    sha = store(server.url, data)
    for root in mirrors:
        flip_byte(layout_path(root, sha), 0)
    got = httpx.get(f"{server.url}/{sha}", timeout=30)
    assert got.status_code == 200 and got.content != data


# ---- heal on read ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [4 * KiB, 3 * MiB])
def test_a_read_of_a_blob_missing_on_one_mirror_puts_the_copy_back(
    start_server: Any, mirrors: tuple[Path, Path], size: int
) -> None:
    server = start_server(pair_config(mirrors))  # verification off: healing does not need it
    data = os.urandom(size)
    sha = store(server.url, data)
    missing = layout_path(mirrors[0], sha)
    missing.unlink()
    got = httpx.get(f"{server.url}/{sha}", timeout=30)
    assert got.status_code == 200 and got.content == data
    wait_for(lambda: good(missing, sha), timeout=30, what="the missing copy put back")
    assert scrape(server.url, 'stor_heal_jobs_total{result="repaired"}') == 1
    assert quarantined(mirrors[0]) == []  # nothing was bad: nothing moved aside


def test_heal_off_leaves_the_storage_alone(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors, integrity={"heal": False}))
    data = os.urandom(4 * KiB)
    sha = store(server.url, data)
    layout_path(mirrors[0], sha).unlink()
    for _ in range(5):
        assert httpx.get(f"{server.url}/{sha}").content == data
    assert scrape(server.url, 'stor_heal_jobs_total{result="queued"}') == 0
    assert not layout_path(mirrors[0], sha).exists()


def test_a_full_heal_queue_drops_and_counts_jobs_without_waiting() -> None:
    """In-process, on real files: jobs beyond the queue's size are dropped, each blob is queued once."""
    import re as regex

    from stor.config import StorageSettings, UploadSettings
    from stor.digest import Digest
    from stor.metrics import Metrics
    from stor.store.heal import HealQueue
    from stor.store.local import LocalStore

    class Counts:
        def __init__(self) -> None:
            self.seen: dict[str, int] = {}

        def wants(self, kind: str, name: str) -> bool:
            return kind == "incr"

        def incr(self, name: str, count: int = 1) -> None:
            self.seen[name] = self.seen.get(name, 0) + count

        def timing(self, name: str, ms: float) -> None: ...
        def size(self, name: str, n: int) -> None: ...

    with tempfile.TemporaryDirectory() as top:
        a, b = Path(top, "a"), Path(top, "b")
        a.mkdir(), b.mkdir()
        blobs = [os.urandom(1000) for _ in range(5)]
        for data in blobs:
            p = layout_path(b, sha256(data))
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)  # on one mirror only
        local = LocalStore([(a, b)], regex.compile(".*"), StorageSettings(require_mount_points=False), UploadSettings(), 1e6)
        counts = Counts()
        heal = HealQueue(local, size=1, concurrency=1, metrics=Metrics([counts]))

        async def run() -> None:
            heal.start()
            first = Digest.parse(sha256(blobs[0]))
            heal.report(first, "missing", a)
            heal.report(first, "missing", a)  # the same blob again while queued: the same job
            for data in blobs[1:]:
                heal.report(Digest.parse(sha256(data)), "missing", a)
            while heal._pending or not counts.seen.get("heal.repaired.count"):
                await asyncio.sleep(0.01)  # polling the queue's own state
            await heal.close()

        asyncio.run(run())
        assert counts.seen["heal.queued.count"] == 1
        assert counts.seen["heal.dropped.count"] == 4
        assert counts.seen["heal.repaired.count"] == 1
        assert sum(good(layout_path(a, sha256(d)), sha256(d)) for d in blobs) == 1


# ---- with the S3 tier ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [4 * KiB, 1 * MiB])
def test_a_blob_corrupt_on_both_mirrors_is_served_from_s3_and_restored_from_it(
    start_server: Any, mirrors: tuple[Path, Path], seaweed: Any, s3_bucket: str, size: int
) -> None:
    from test_s3_tier import put_object, s3_config, store_locally

    data = os.urandom(size)
    sha = store_locally(mirrors, data)
    put_object(seaweed, s3_bucket, sha, data, Metadata={"filename": "sample.exe"})
    for root in mirrors:
        flip_byte(layout_path(root, sha), 7)
    config = s3_config(mirrors, seaweed, s3_bucket, read_order="local-first")
    config["integrity"] = {"verify_reads": "always"}
    server = start_server(config)
    # The first read meets at most one bad copy before sending (a small blob) or is cut short (a large one);
    # either way no answer is complete and wrong, and once both are known bad S3's copy is the answer.
    answers = [httpx.get(f"{server.url}/{sha}", timeout=30) for _ in range(3)] if size <= 256 * KiB else []
    for got in answers:
        assert got.status_code == 200 and got.content == data
    if not answers:
        for _ in range(3):
            status, length, body = raw_get(server.port, sha)
            assert status == 200 and (len(body) < length or body == data)
        assert raw_get(server.port, sha)[2] == data
    # Both local copies quarantined and restored, verified, from the bucket; the sidecar from its metadata.
    wait_for(lambda: all(good(layout_path(r, sha), sha) for r in mirrors), timeout=60, what="the restore from S3")
    assert [len(quarantined(r)) for r in mirrors] == [1, 1]
    assert b"sample.exe" in layout_path(mirrors[0], sha).with_suffix(".meta").read_bytes()


def test_a_blob_kept_in_memory_is_verified_before_it_is_kept(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """A blob above the read-ahead but small enough for the hot layer (hot.max_blob_bytes): checked while sent,
    so it is not taken into memory (whence later reads would be answered unchecked) until a read has checked it."""
    server = start_server(verified(mirrors))
    data = os.urandom(512 * KiB)
    sha = store(server.url, data)  # its pages and directory entries in the kernel's caches: a hot layer's take
    for root in mirrors:
        flip_byte(layout_path(root, sha), 7)
    for _ in range(4):
        status, length, body = raw_get(server.port, sha)
        assert status == 500 or len(body) < length, "a complete answer with corrupt bytes"


def test_a_blob_a_head_found_is_still_verified_when_read(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """A HEAD reads no bytes to check: what it finds is not kept in memory for the GET that follows."""
    server = start_server(verified(mirrors))
    data = os.urandom(4 * KiB)
    sha = store(server.url, data)
    for root in mirrors:
        flip_byte(layout_path(root, sha), 7)
    for _ in range(2):
        assert httpx.head(f"{server.url}/{sha}", timeout=30).status_code == 200  # HEAD checks nothing
        got = httpx.get(f"{server.url}/{sha}", timeout=30)
        assert got.status_code == 500 and got.content != data
