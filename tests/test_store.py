"""The storage interface of the local backend, used directly (no HTTP): staged writes, listing, health."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

import pytest

from conftest import final_files, layout_path, temp_files
from stor.config import StorageSettings, UploadSettings
from stor.digest import Digest
from stor.store.base import NO_BYTES, DigestMismatch, FileRegion, Missing, OpenBlob, Stored, TooLarge
from stor.store.local import LocalStore
from stor.store.metadata import BlobMeta


def _store(mirrors: tuple[Path, Path], **uploads: object) -> LocalStore:
    return LocalStore(
        [mirrors], re.compile(".*"), StorageSettings(require_mount_points=False), UploadSettings(**uploads), 3600.0
    )


def _digest(data: bytes) -> Digest:
    return Digest.parse(hashlib.sha256(data).hexdigest())


async def _staged(store: LocalStore, expected: Digest | None, chunks: list[bytes], meta: BlobMeta = BlobMeta()) -> Stored:
    upload = await store.begin(expected, None, meta)
    if isinstance(upload, Stored):
        return upload
    try:
        for chunk in chunks:
            await upload.write(chunk)
    except BaseException:
        await upload.abort()
        raise
    return await upload.commit()


def test_a_write_whose_digest_is_known_only_at_the_end_is_stored_under_what_it_hashes_to(mirrors: tuple[Path, Path]) -> None:
    store = _store(mirrors)
    data = b"x" * (3 << 20) + b"tail"  # more than one hand-off to the writing thread

    async def run() -> tuple[Stored, list[Path]]:
        upload = await store.begin(None, None, BlobMeta("text/plain", "x.txt"))
        assert not isinstance(upload, Stored)
        for i in range(0, len(data), 1 << 20):
            await upload.write(data[i : i + (1 << 20)])
        # Before commit: only temporary files, named at random (not after a digest nobody knows yet).
        pending = temp_files(*mirrors)
        assert not any(final_files(m) for m in mirrors)
        return await upload.commit(), pending

    stored, pending = asyncio.run(run())
    sha = hashlib.sha256(data).hexdigest()
    assert stored.digest.hex == sha and stored.created
    assert len(pending) == 2 and all(re.fullmatch(r"[0-9a-f]{32}\.part", p.name) for p in pending)
    for m in mirrors:
        assert layout_path(m, sha).read_bytes() == data
        assert layout_path(m, sha).with_suffix(".meta").read_bytes() == b'{"content_type": "text/plain", "filename": "x.txt"}'
    assert temp_files(*mirrors) == []


def test_an_unknown_digest_write_of_a_stored_blob_keeps_the_copy_there(mirrors: tuple[Path, Path]) -> None:
    store = _store(mirrors)
    data = b"already here"
    first = asyncio.run(_staged(store, _digest(data), [data]))
    inode = layout_path(mirrors[0], first.digest.hex).stat().st_ino
    again = asyncio.run(_staged(store, None, [data]))
    assert (again.digest, again.created) == (first.digest, False)
    assert layout_path(mirrors[0], first.digest.hex).stat().st_ino == inode  # not written twice
    assert temp_files(*mirrors) == []


def test_a_mismatch_at_commit_leaves_nothing(mirrors: tuple[Path, Path]) -> None:
    store = _store(mirrors)
    with pytest.raises(DigestMismatch):
        asyncio.run(_staged(store, _digest(b"the real one"), [b"something", b" else"]))
    assert temp_files(*mirrors) == [] and not any(final_files(m) for m in mirrors)


def test_an_aborted_write_leaves_nothing_and_frees_the_digest(mirrors: tuple[Path, Path]) -> None:
    store = _store(mirrors)
    data = b"abandoned"
    digest = _digest(data)

    async def run() -> Stored:
        upload = await store.begin(digest, None)
        assert not isinstance(upload, Stored)
        await upload.write(data[:4])
        await upload.abort()
        # The per-digest lock was released: a second write of the same digest goes through.
        return await asyncio.wait_for(_staged(store, digest, [data]), 10)

    assert asyncio.run(run()).created
    assert temp_files(*mirrors) == []


def test_a_staged_write_past_the_limit_is_refused(mirrors: tuple[Path, Path]) -> None:
    store = _store(mirrors, max_blob_bytes=10)
    with pytest.raises(TooLarge):
        asyncio.run(_staged(store, None, [b"123456", b"78901"]))
    assert temp_files(*mirrors) == []


def test_begin_of_a_stored_blob_answers_at_once(mirrors: tuple[Path, Path]) -> None:
    store = _store(mirrors)
    data = b"present"
    asyncio.run(store.put(_digest(data), data))
    outcome = asyncio.run(store.begin(_digest(data), len(data)))
    assert isinstance(outcome, Stored) and not outcome.created
    assert sorted(outcome.locations) == sorted(str(layout_path(m, _digest(data).hex)) for m in mirrors)


def test_open_a_span_and_no_bytes(mirrors: tuple[Path, Path]) -> None:
    store = _store(mirrors)
    data = bytes(range(256)) * 4096  # 1 MiB: above the size read ahead, so a descriptor comes back
    digest = _digest(data)
    asyncio.run(store.put(digest, data))

    async def run() -> None:
        whole = await store.open(digest)
        assert isinstance(whole, OpenBlob) and isinstance(whole.body, FileRegion)
        assert (whole.info.size, whole.body.offset, whole.body.length, whole.body.data) == (len(data), 0, len(data), None)
        whole.close()
        part = await store.open(digest, (1000, 24))
        assert isinstance(part, OpenBlob) and isinstance(part.body, FileRegion)
        assert part.body.data == data[1000:1024]  # small spans are read while opening
        part.close()
        nothing = await store.open(digest, NO_BYTES)
        assert isinstance(nothing, OpenBlob) and nothing.body.data == b"" and nothing.info.size == len(data)
        nothing.close()
        missing = await store.open(_digest(b"absent"))
        assert isinstance(missing, Missing) and missing.lookup.probes == 2

    asyncio.run(run())


def test_iter_digests_lists_every_blob_once_in_order(mirrors: tuple[Path, Path]) -> None:
    store = _store(mirrors)
    blobs = [f"blob {i}".encode() for i in range(40)]
    for data in blobs:
        asyncio.run(store.put(_digest(data), data))
    # One on a single mirror, and files that are not blobs: listed once, and not at all.
    only_one = b"one mirror only"
    path = layout_path(mirrors[1], _digest(only_one).hex)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(only_one)
    (path.parent / "notes.txt").write_text("not a blob")
    (mirrors[0] / "zz").mkdir()

    async def listed() -> list[str]:
        return [d.hex async for d in store.iter_digests()]

    expected = sorted(hashlib.sha256(b).hexdigest() for b in [*blobs, only_one])
    assert asyncio.run(listed()) == expected


def test_health_reports_each_storage_with_its_sizes(tmpfs: object) -> None:
    a, b = tmpfs("a", "8m"), tmpfs("b", "16m")  # type: ignore[operator]
    health = asyncio.run(_store((a, b)).health())
    assert [(s.path, s.pair, s.writable, s.ok, s.total_bytes) for s in health.storages] == [
        (str(a), 0, True, True, 8 << 20),
        (str(b), 0, True, True, 16 << 20),
    ]
    assert all(s.free_bytes is not None and 0 < s.free_bytes <= s.total_bytes for s in health.storages)  # type: ignore[operator]
