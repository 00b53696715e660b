"""CACHED_ONLY answers from the kernel's caches or raises WouldBlock; reads fall back to a thread.

These run against the real kernel: pages are evicted with posix_fadvise
(DONTNEED), and a name never looked up has no dentry in the cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from stor.store.fileaccess import BLOCKING, CACHED_ONLY, WouldBlock

from conftest import evict, layout_path, pair_config

pytestmark = pytest.mark.skipif(
    not getattr(CACHED_ONLY, "available", False), reason="kernel without openat2(RESOLVE_CACHED)"
)


def test_cached_file_is_opened_and_read_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 10_000)
    os.stat(path)  # the lookup puts the name in the dentry cache
    fd = CACHED_ONLY.open(str(path))
    assert fd is not None
    try:
        assert CACHED_ONLY.pread(fd, 10_000, 0) == b"x" * 10_000
    finally:
        os.close(fd)


def test_missing_name_is_none_once_looked_up_and_would_block_before(tmp_path: Path) -> None:
    never = tmp_path / "never-looked-up"
    with pytest.raises(WouldBlock):
        CACHED_ONLY.open(str(never))
    assert BLOCKING.open(str(never)) is None  # the blocking lookup caches the negative entry
    assert CACHED_ONLY.open(str(never)) is None


def test_is_file_never_opens_what_it_checks(tmp_path: Path) -> None:
    """is_file answers as os.path.isfile for a regular file, a directory, a FIFO and a missing
    name, from the caches only (a FIFO opened for reading would wait for a writer)."""
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    expected = {"file": True, "dir": False, "fifo": False, "missing": False}
    for name in expected:
        os.path.lexists(tmp_path / name)  # the lookup puts the name (or its absence) in the dentry cache
    assert {name: CACHED_ONLY.is_file(str(tmp_path / name)) for name in expected} == expected
    assert {name: BLOCKING.is_file(str(tmp_path / name)) for name in expected} == expected
    with pytest.raises(WouldBlock):
        CACHED_ONLY.is_file(str(tmp_path / "never-looked-up" / "x"))


def test_pages_not_in_memory_would_block(tmp_path: Path) -> None:
    """A read of pages not in memory raises WouldBlock instead of waiting for them.

    preadv2(RWF_NOWAIT) still starts the kernel's readahead, and on a VM whose
    disk is cached by the host that read can complete before the kernel looks
    again: the bytes are then answered without waiting, and must be the
    file's. How often depends on the machine (7 reads in 4,000 of 64 KiB files
    here; 15 of 20 on one CI machine). A 1 MiB read spans more than the first
    readahead window, so a cold one nearly always has pages missing; the test
    reads cold files until one is refused (a read that waits is never
    refused), each answer checked.
    """
    for i in range(50):
        path = tmp_path / f"cold{i}"
        data = os.urandom(1 << 20)
        path.write_bytes(data)
        evict(path)
        fd = BLOCKING.open(str(path))
        assert fd is not None
        try:
            try:
                assert CACHED_ONLY.pread(fd, len(data), 0) == data
            except WouldBlock:
                return
            finally:
                assert BLOCKING.pread(fd, len(data), 0) == data
        finally:
            os.close(fd)
    raise AssertionError("50 reads of evicted files were all answered: reads wait for the disk")


def test_get_serves_cold_and_hot_blobs_alike(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    """A blob evicted from the page cache is read by a worker thread; the same bytes either way."""
    server = start_server(pair_config(mirrors))
    blobs = {}
    for size in (1, 4096, 200_000):
        data = os.urandom(size)
        sha = hashlib.sha256(data).hexdigest()
        for d in mirrors:
            p = layout_path(d, sha)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        blobs[sha] = data
    with httpx.Client(base_url=server.url) as c:
        for sha, data in blobs.items():
            for d in mirrors:
                evict(layout_path(d, sha))
            cold = c.get(f"/{sha}")
            hot = c.get(f"/{sha}")
            assert cold.status_code == hot.status_code == 200
            assert cold.content == hot.content == data
            assert cold.headers["etag"] == hot.headers["etag"]
