"""Symlinks in the storage tree are never followed out of it (nor within it); a root that is a symlink still works.

A link at a layout path (to a file elsewhere, or `../../..` up and out) or a
linked AA or CC directory reads as absent to GET, HEAD, sidecar reads,
POST /exists and listing, is logged once, and is left where it is. An
upload into a linked directory fails (500) without writing anything
outside. Each read runs cold (the target's pages evicted: the worker
thread's blocking path) and warm (everything cached: the event loop's
cached-only path), in both fast-path modes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUTH, StorServer, evict, layout_path, own_disks, pair_config, sha256, temp_files
from stor.config import StorageSettings, UploadSettings
from stor.digest import Digest
from stor.store import fileaccess
from stor.store.local import LocalStore

ANOMALY = "symlink in the storage tree"


def _fresh(mirrors: tuple[Path, ...], sha: str) -> bool:
    """Whether sha's AA directory is on no mirror yet: each test plants its links in a tree of its own."""
    return not any(os.path.lexists(layout_path(m, sha).parents[2]) for m in mirrors)


def fresh_sha(mirrors: tuple[Path, ...]) -> str:
    while True:
        sha = sha256(os.urandom(16))
        if _fresh(mirrors, sha):
            return sha


def fresh_body(mirrors: tuple[Path, ...]) -> tuple[bytes, str]:
    while True:
        body = os.urandom(200)
        if _fresh(mirrors, sha256(body)):
            return body, sha256(body)


def opened_path(mirror: Path, sha: str) -> str:
    """The path stor opens for sha on mirror (below the mirror's resolved path), as its log names it."""
    return str(layout_path(Path(os.path.realpath(mirror)), sha))


KINDS = ["absolute", "relative", "etc-passwd", "dir-AA", "dir-CC"]


def plant(kind: str, mirror: Path, sha: str, outside: Path) -> tuple[Path, Path, bytes]:
    """A symlink that makes sha's layout path on mirror reach a file outside the tree.

    The layout path, the link itself, and the bytes an old stor served there.
    """
    blob = layout_path(mirror, sha)
    secret = b"outside the storage tree " + os.urandom(8).hex().encode()
    outside.mkdir(exist_ok=True)
    if kind in ("absolute", "relative"):
        target = outside / "secret"
        target.write_bytes(secret)
        blob.parent.mkdir(parents=True)
        blob.symlink_to(target if kind == "absolute" else os.path.relpath(target, blob.parent))
        link = blob
    elif kind == "etc-passwd":
        # A real system file, by a relative link climbing out of the tree (the issue used
        # /etc/hostname, which containers need not have; /etc/passwd every Debian has).
        secret = Path("/etc/passwd").read_bytes()
        blob.parent.mkdir(parents=True)
        depth = len(blob.parent.parts) - 1
        blob.symlink_to("../" * depth + "etc/passwd")  # ../../../../../../../../etc/passwd
        link = blob
    elif kind == "dir-AA":
        tree = outside / "tree"
        (tree / blob.parts[-3] / blob.parts[-2]).mkdir(parents=True)
        (tree / blob.parts[-3] / blob.parts[-2] / blob.name).write_bytes(secret)
        link = blob.parents[2]
        link.symlink_to(tree)
    elif kind == "dir-CC":
        (outside / "cc").mkdir()
        (outside / "cc" / blob.name).write_bytes(secret)
        blob.parents[1].mkdir(parents=True)
        link = blob.parent
        link.symlink_to(outside / "cc")
    else:
        raise AssertionError(kind)
    assert blob.read_bytes() == secret  # what following the link reads
    return blob, link, secret


# ---- reads over HTTP ---------------------------------------------------------


@pytest.mark.shared_server
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_symlink_in_the_tree_is_absent_to_get_head_and_exists(
    client: httpx.Client, mirrors: tuple[Path, Path], tmp_path: Path, kind: str, warm: bool
) -> None:
    sha = fresh_sha(mirrors)
    blob, link, secret = plant(kind, mirrors[0], sha, tmp_path / "outside")
    if warm:
        os.stat(blob)  # every name on the way, the link's included, in the dentry cache
        blob.read_bytes()  # and the target's bytes in the page cache
    else:
        evict(blob)
    get = client.get(f"/{sha}")
    assert (get.status_code, get.text) == (404, f"File '{sha}' not found")
    assert client.head(f"/{sha}").status_code == 404
    assert client.get(f"/{sha}", headers={"Range": "bytes=0-3"}).status_code == 404
    assert client.post("/exists", json=[sha]).json() == {"present": [], "missing": [sha], "invalid": []}
    # Left for the operator, as it was.
    assert link.is_symlink() and blob.read_bytes() == secret


@pytest.mark.shared_server
@pytest.mark.parametrize("kind", ["absolute", "dir-AA"])
def test_the_anomaly_is_logged_once_naming_the_path_and_the_link(
    server: StorServer, client: httpx.Client, mirrors: tuple[Path, Path], tmp_path: Path, kind: str
) -> None:
    sha = fresh_sha(mirrors)
    _, link, _ = plant(kind, mirrors[0], sha, tmp_path / "outside")
    for _ in range(2):
        assert client.get(f"/{sha}").status_code == 404
    assert client.head(f"/{sha}").status_code == 404
    assert client.post("/exists", json=[sha]).json()["missing"] == [sha]
    path = opened_path(mirrors[0], sha)
    lines = [line for line in server.log_text().splitlines() if ANOMALY in line and path in line]
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0] and "treated as absent" in lines[0]
    if kind == "dir-AA":
        assert f"through the symlink {os.path.realpath(mirrors[0])}/{link.name}" in lines[0]


@pytest.mark.shared_server
def test_a_symlinked_sidecar_is_absent(client: httpx.Client, mirrors: tuple[Path, Path], tmp_path: Path) -> None:
    """A real blob whose `.meta` is a link elsewhere is served without that metadata."""
    body, sha = fresh_body(mirrors)
    planted = tmp_path / "meta.json"
    planted.write_text(json.dumps({"content_type": "text/x-from-outside", "filename": "planted.txt"}))
    for m in mirrors:
        path = layout_path(m, sha)
        path.parent.mkdir(parents=True)
        path.write_bytes(body)
        path.with_suffix(".meta").symlink_to(planted)
        os.stat(path.with_suffix(".meta"))  # warm: the cached-only path would read it
    for r in (client.get(f"/{sha}"), client.head(f"/{sha}")):
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        assert "content-disposition" not in r.headers and "x-filename" not in r.headers
    assert client.get(f"/{sha}").content == body


@pytest.mark.shared_server
def test_a_blob_on_one_mirror_beside_a_link_on_the_other_is_served(
    client: httpx.Client, mirrors: tuple[Path, Path], tmp_path: Path
) -> None:
    """The link is absent, not a fault: the other mirror's copy is found, whatever the probe order.

    The probe order is drawn on a blob's first read (later reads go where it was found): eight
    blobs, so that both orders are all but certainly taken.
    """
    for i in range(8):
        body, sha = fresh_body(mirrors)
        plant("absolute", mirrors[0], sha, tmp_path / f"outside{i}")
        real = layout_path(mirrors[1], sha)
        real.parent.mkdir(parents=True)
        real.write_bytes(body)
        for _ in range(2):
            r = client.get(f"/{sha}")
            assert r.status_code == 200 and r.content == body
        assert client.post("/exists", json=[sha]).json()["present"] == [sha]


# ---- writes ------------------------------------------------------------------


@pytest.mark.shared_server
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("level", ["AA", "CC"])
def test_an_upload_into_a_symlinked_directory_fails_and_writes_nothing_outside(
    server: StorServer, client: httpx.Client, mirrors: tuple[Path, Path], tmp_path: Path, level: str, streamed: bool
) -> None:
    body, sha = fresh_body(mirrors)
    outside = tmp_path / "outside"
    outside.mkdir()
    # AA on the first mirror (nothing is renamed yet), CC on the second (the first's directories are made).
    mirror = mirrors[0] if level == "AA" else mirrors[1]
    final = layout_path(mirror, sha)
    if level == "AA":
        link = final.parents[2]
    else:
        final.parents[1].mkdir(parents=True)
        link = final.parent
    link.symlink_to(outside)
    r = client.post(f"/{sha}", content=iter([body]) if streamed else body, auth=AUTH)  # an iterator is sent chunked
    assert (r.status_code, r.text) == (500, "Internal error storing the blob")
    assert list(outside.rglob("*")) == []
    assert not any(layout_path(m, sha).exists() for m in mirrors)
    assert temp_files(*mirrors) == []
    assert link.is_symlink()
    assert f"{link} is a symbolic link in the storage tree" in server.log_text()
    assert client.get(f"/{sha}").status_code == 404


# ---- a root that is itself a symlink -----------------------------------------


def test_a_storage_root_that_is_a_symlink_serves_and_stores(start_server: Any, tmp_path: Path) -> None:
    reals = own_disks(tmp_path)
    links = (tmp_path / "link1", tmp_path / "link2")
    links[0].symlink_to(reals[0])
    links[1].symlink_to(reals[1].name)  # relative
    server = start_server(pair_config(links))
    with httpx.Client(base_url=server.url, timeout=30) as c:
        body = os.urandom(5000)
        sha = sha256(body)
        r = c.post(f"/{sha}", content=body, auth=AUTH)
        assert r.status_code == 201
        assert r.json() == [str(layout_path(link, sha)) for link in links]  # as configured
        for real in reals:
            assert layout_path(real, sha).read_bytes() == body
        assert c.post(f"/{sha}", content=body, auth=AUTH).status_code == 200  # found: not written twice
        for cold in (True, False):
            if cold:
                for real in reals:
                    evict(layout_path(real, sha))
            got = c.get(f"/{sha}")
            assert got.status_code == 200 and got.content == body
        assert c.head(f"/{sha}").headers["content-length"] == "5000"
        # One placed by hand, the original's way, on one mirror.
        by_hand = b"placed under the real directory"
        placed = layout_path(reals[1], sha256(by_hand))
        placed.parent.mkdir(parents=True)
        placed.write_bytes(by_hand)
        assert c.get(f"/{sha256(by_hand)}").content == by_hand
        assert c.post("/exists", json=[sha, sha256(by_hand)]).json()["present"] == [sha, sha256(by_hand)]
        status = c.get("/status", headers={"Accept": "application/json"})
        assert status.status_code == 200
        assert [s["path"] for s in status.json()["storages"]] == [str(link) for link in links]
    assert ANOMALY not in server.log_text()


def test_a_disk_mounted_after_start_on_a_linked_root_is_used(start_server: Any, tmpfs: Any, tmp_path: Path) -> None:
    """The root's link is resolved once, at start; a file system mounted there later is crossed into."""
    links = (tmp_path / "link1", tmp_path / "link2")
    links[0].symlink_to(tmp_path / "disk1")  # not there yet
    links[1].symlink_to(tmp_path / "disk2")
    server = start_server(pair_config(links))
    disks = (tmpfs("disk1", "8m"), tmpfs("disk2", "8m"))
    with httpx.Client(base_url=server.url, timeout=30) as c:
        body = os.urandom(3000)
        sha = sha256(body)
        assert c.post(f"/{sha}", content=body, auth=AUTH).status_code == 201
        for disk in disks:
            assert os.stat(layout_path(disk, sha)).st_dev == os.stat(disk).st_dev != os.stat(tmp_path).st_dev
        got = c.get(f"/{sha}")
        assert got.status_code == 200 and got.content == body
    assert ANOMALY not in server.log_text()


# ---- listing -------------------------------------------------------------------


def test_listing_never_descends_into_a_symlinked_directory_nor_lists_a_symlinked_blob(
    mirrors: tuple[Path, Path], tmp_path: Path
) -> None:
    store = LocalStore(
        [mirrors], re.compile(".*"), StorageSettings(require_mount_points=False), UploadSettings(), 3600.0
    )
    listed = []
    for m in mirrors:
        body, sha = fresh_body(mirrors)
        path = layout_path(m, sha)
        path.parent.mkdir(parents=True)
        path.write_bytes(body)
        listed.append(sha)
    # A linked AA on the first mirror, where the second has a real AA of that name (listing descends into it).
    while True:
        linked = sha256(os.urandom(16))
        if linked[:2] == listed[1][:2] and linked[2:4] != listed[1][2:4]:
            break
    plant("dir-AA", mirrors[0], linked, tmp_path / "outside-aa")
    plant("dir-CC", mirrors[1], fresh_sha(mirrors), tmp_path / "outside-cc")
    plant("absolute", mirrors[1], fresh_sha(mirrors), tmp_path / "outside-file")

    async def run() -> list[str]:
        return [d.hex async for d in store.iter_digests()]

    assert asyncio.run(run()) == sorted(listed)


# ---- the file accesses themselves ----------------------------------------------


def _tree(tmp_path: Path) -> tuple[Path, bytes]:
    """root/real/f (a regular file) and links to outside/secret of every kind below root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    content = b"a regular file"
    (root / "real" / "f").write_bytes(content)
    (outside / "secret").write_bytes(b"secret")
    (root / "file-abs").symlink_to(outside / "secret")
    (root / "real" / "file-rel").symlink_to("../../outside/secret")
    (root / "dir").symlink_to(outside)
    (root / "real" / "to-real").symlink_to("f")  # even one that stays inside
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("file-abs", "real/file-rel", "dir/secret", "real/to-real", "dangling"):
        os.path.exists(root / name)  # every name looked up once: in the dentry cache
    return root, content


LINKED = ["file-abs", "real/file-rel", "dir", "dir/secret", "real/to-real", "dangling"]


@pytest.fixture(params=["openat2", "by-components"])
def blocking(request: pytest.FixtureRequest) -> fileaccess.FileAccess:
    """Each blocking access: openat2(RESOLVE_NO_SYMLINKS), and the fallback where openat2 is refused."""
    if request.param == "openat2":
        access = fileaccess._Blocking()
        if not access.available:
            # Not a pass: on a kernel (or seccomp profile) without openat2 this access does not
            # exist, and stor uses the by-components fallback, which the other parameter tests.
            pytest.skip("kernel without openat2")
        return access
    return fileaccess._BlockingByComponents()


@pytest.fixture
def anomalies(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="stor.store"):
        yield caplog


def _close(fd: int | None) -> bool:
    if fd is None:
        return False
    os.close(fd)
    return True


def test_blocking_opens_regular_files_and_directories(blocking: fileaccess.FileAccess, tmp_path: Path) -> None:
    root, content = _tree(tmp_path)
    fd = blocking.open(f"{root}/real/f")
    assert fd is not None
    try:
        assert blocking.pread(fd, 100, 0) == content
    finally:
        os.close(fd)
    fd = blocking.open_directory(f"{root}/real")
    assert fd is not None
    try:
        assert sorted(os.listdir(fd)) == ["f", "file-rel", "to-real"]
    finally:
        os.close(fd)
    assert blocking.is_file(f"{root}/real/f") and not blocking.is_file(f"{root}/real")
    assert blocking.open(f"{root}/missing") is None and blocking.open(f"{root}/real/f/below") is None
    assert blocking.open_directory(f"{root}/real/f") is None and not blocking.is_file(f"{root}/missing")


def test_blocking_opens_relative_paths_too(
    blocking: fileaccess.FileAccess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert _close(blocking.open("root/real/f")) and blocking.is_file("root/real/f")
    assert blocking.open("root/file-abs") is None and not blocking.is_file("root/dir/secret")


@pytest.mark.parametrize("name", LINKED)
def test_blocking_finds_nothing_through_a_symlink(
    blocking: fileaccess.FileAccess, tmp_path: Path, name: str, anomalies: pytest.LogCaptureFixture
) -> None:
    root, _ = _tree(tmp_path)
    path = f"{root}/{name}"
    assert blocking.open(path) is None
    assert blocking.open_directory(path) is None
    assert blocking.is_file(path) is False
    assert blocking.open(path) is None
    logged = [r.getMessage() for r in anomalies.records if path in r.getMessage()]
    assert len(logged) == 1 and ANOMALY in logged[0]  # once, however often it is asked for
    assert anomalies.records[-1].levelno == logging.WARNING


def test_the_memory_of_logged_paths_is_bounded(blocking: fileaccess.FileAccess, tmp_path: Path, anomalies: Any) -> None:
    root, _ = _tree(tmp_path)
    bound = fileaccess._REFUSED_REMEMBERED
    for i in range(bound + 100):
        assert blocking.open(f"{root}/dir/{i}") is None
    assert len(fileaccess._refused_paths) <= bound
    logged = len(anomalies.records)
    assert blocking.open(f"{root}/dir/{bound + 99}") is None  # the latest is still remembered: not logged again
    assert len(anomalies.records) == logged


@pytest.mark.skipif(not getattr(fileaccess.CACHED_ONLY, "available", False), reason="kernel without openat2(RESOLVE_CACHED)")
@pytest.mark.parametrize("name", LINKED)
def test_cached_only_leaves_a_symlink_to_the_blocking_access(tmp_path: Path, name: str) -> None:
    """All cached, it still opens nothing through a link: it answers WouldBlock, and BLOCKING finds nothing."""
    root, content = _tree(tmp_path)
    cached = fileaccess.CACHED_ONLY
    assert _close(cached.open(f"{root}/real/f")) and cached.is_file(f"{root}/real/f")
    assert _close(cached.open_directory(f"{root}/real"))
    for call in (cached.open, cached.open_directory, cached.is_file):
        with pytest.raises(fileaccess.WouldBlock):
            call(f"{root}/{name}")


def test_a_store_over_a_linked_root_opens_beneath_its_resolved_path(tmp_path: Path) -> None:
    """The accesses refuse a linked root like any link; LocalStore resolves each root once, so it is not one."""
    reals = own_disks(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(reals[0])
    body = b"under a linked root"
    path = layout_path(reals[0], sha256(body))
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    assert fileaccess.BLOCKING.open(str(layout_path(link, sha256(body)))) is None
    store = LocalStore(
        [(link, reals[1])], re.compile(".*"), StorageSettings(require_mount_points=False), UploadSettings(), 3600.0
    )

    async def run() -> tuple[str, str]:
        info = await store.head(Digest.parse(sha256(body)))
        return info.storage, info.location  # type: ignore[union-attr]

    assert asyncio.run(run()) == (str(link), str(path))
    assert store._contains([Digest.parse(sha256(body))]) == [True]
