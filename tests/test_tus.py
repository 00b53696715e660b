"""Resumable uploads (tus 1.0 at /files/) against a real `stor serve` with 2 workers, with tuspy, curl and raw sockets."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError, TusUploadFailed

from conftest import AUTH, PASSWORD, USER, StorServer, layout_path, pair_config, sha256, wait_for
from test_s3_tier import key_of, s3_config, scrape, status

FAST_ONLY = pytest.mark.parametrize("fast_path", [True], ids=["fast"], indirect=True)
MIB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def create(server: StorServer, length: int | None, **meta: str) -> str:
    """A new upload's URL."""
    headers = {**TUS, "Upload-Metadata": metadata(**meta)}
    headers.update({"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"})
    answer = httpx.post(f"{server.url}/files/", headers=headers, auth=AUTH)
    assert answer.status_code == 201, answer.text
    assert answer.headers["location"].startswith("/files/")
    return server.url + answer.headers["location"]


def patch(url: str, offset: int, data: bytes, **headers: str) -> httpx.Response:
    return httpx.patch(
        url, content=data, auth=AUTH, timeout=60,
        headers={**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream", **headers},
    )


def head(url: str) -> httpx.Response:
    return httpx.head(url, headers=TUS, auth=AUTH)


def tus_client(server: StorServer) -> TusClient:
    return TusClient(f"{server.url}/files/", headers={"Authorization": BASIC})


def tus_files(*mirrors: Path) -> list[str]:
    """What the uploads keep in each storage's .stor-tus (records and bytes files)."""
    return sorted(p.name for m in mirrors if (m / ".stor-tus").is_dir() for p in (m / ".stor-tus").iterdir())


def bytes_files(*mirrors: Path) -> list[Path]:
    return [p for m in mirrors if (m / ".stor-tus").is_dir() for p in (m / ".stor-tus").glob("*.bin")]


def blob_files(*mirrors: Path) -> list[Path]:
    return [p for m in mirrors for p in m.rglob("*.dat")]


def locked_inodes() -> set[int]:
    """Inodes with a flock held on them now (/proc/locks)."""
    found = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "FLOCK":
            found.add(int(fields[5].split(":")[2]))
    return found


def send_partial_patch(server: StorServer, path: str, offset: int, length: int, sent: bytes) -> socket.socket:
    """A PATCH announcing length bytes of which only `sent` go out (the socket stays open)."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    head_lines = [
        f"PATCH {path} HTTP/1.1", "Host: stor", f"Authorization: {BASIC}", "Tus-Resumable: 1.0.0",
        "Content-Type: application/offset+octet-stream", f"Upload-Offset: {offset}", f"Content-Length: {length}",
    ]
    sock.sendall(("\r\n".join(head_lines) + "\r\n\r\n").encode() + sent)
    return sock


@pytest.fixture(scope="module")
def tus_server(tmp_path_factory: pytest.TempPathFactory, fast_path: bool) -> Iterator[tuple[StorServer, tuple[Path, Path]]]:
    root = tmp_path_factory.mktemp("tus")
    disks = (root / "disk1", root / "disk2")
    for d in disks:
        d.mkdir()
    config = pair_config(disks, uploads={"max_blob_bytes": 100 * MIB})
    server = StorServer(workdir=root, config=config, workers=2, fast_path=fast_path).start()
    yield server, disks
    server.stop()


# ---- the protocol, with the real client -------------------------------------------------------


def test_options_advertises_the_protocol(tus_server: Any) -> None:
    server, _ = tus_server
    answer = httpx.options(f"{server.url}/files/")
    assert answer.status_code == 204
    assert answer.headers["tus-version"] == "1.0.0"
    extensions = answer.headers["tus-extension"].split(",")
    assert {"creation", "creation-with-upload", "creation-defer-length", "expiration", "checksum", "termination"} <= set(extensions)
    assert answer.headers["tus-max-size"] == str(100 * MIB)
    assert answer.headers["tus-checksum-algorithm"] == "sha1,sha256,md5"


@FAST_ONLY
def test_a_64_mib_upload_in_1_mib_chunks_with_tuspy(tus_server: Any, tmp_path: Path) -> None:
    server, disks = tus_server
    data = os.urandom(64 * MIB)
    source = tmp_path / "sample.bin"
    source.write_bytes(data)
    digest = sha256(data)
    uploader = tus_client(server).uploader(
        str(source), chunk_size=MIB, metadata={"sha256": digest, "filename": "sample 1.bin", "filetype": "application/x-dosexec"},
    )
    uploader.upload()
    final = uploader.request.response_headers
    assert final["upload-offset"] == str(len(data))
    assert final["stor-sha256"] == digest and final["content-location"] == f"/{digest}"
    # The blob, as any other: both mirrors, the declared type and name.
    for disk in disks:
        assert layout_path(disk, digest).read_bytes() == data
    got = httpx.get(f"{server.url}/{digest}", timeout=60)
    assert got.status_code == 200 and sha256(got.content) == digest
    assert got.headers["content-type"] == "application/x-dosexec"
    assert got.headers["x-filename"] == "sample 1.bin"
    # HEAD after completion says so too; no bytes are left behind.
    done = head(uploader.url)
    assert done.status_code == 200 and done.headers["stor-sha256"] == digest
    assert done.headers["upload-offset"] == done.headers["upload-length"] == str(len(data))
    assert done.headers["cache-control"] == "no-store"
    assert "upload-metadata" in done.headers
    assert bytes_files(*disks) == []


def test_without_a_declared_sha_the_blob_is_stored_under_what_it_hashes_to(tus_server: Any) -> None:
    server, disks = tus_server
    data = os.urandom(3 * MIB + 5)
    url = create(server, len(data))
    first = patch(url, 0, data[: 2 * MIB])
    assert first.status_code == 204 and first.headers["upload-offset"] == str(2 * MIB)
    assert "upload-expires" in first.headers and "stor-sha256" not in first.headers
    last = patch(url, 2 * MIB, data[2 * MIB :])
    assert last.status_code == 204 and last.headers["stor-sha256"] == sha256(data)
    assert layout_path(disks[1], sha256(data)).read_bytes() == data


def test_the_bytes_wait_on_both_mirrors_and_are_renamed_into_place(tus_server: Any) -> None:
    server, disks = tus_server
    data = os.urandom(MIB)
    url = create(server, len(data) + 1)
    assert patch(url, 0, data).status_code == 204
    waiting = {p.parent.parent: p for p in bytes_files(*disks) if p.stem == url.rsplit("/", 1)[1]}
    assert set(waiting) == set(disks)
    inodes = {disk: p.stat().st_ino for disk, p in waiting.items()}
    assert patch(url, len(data), b"!").status_code == 204
    for disk in disks:  # the very files the bytes waited in: nothing copied at the commit
        assert layout_path(disk, sha256(data + b"!")).stat().st_ino == inodes[disk]


def test_creation_with_upload_and_a_blob_stored_already(tus_server: Any) -> None:
    server, _ = tus_server
    data = os.urandom(100_000)
    answer = httpx.post(
        f"{server.url}/files/", content=data, auth=AUTH,
        headers={**TUS, "Upload-Length": str(len(data)), "Content-Type": "application/offset+octet-stream",
                 "Upload-Metadata": metadata(sha256=sha256(data))},
    )
    assert answer.status_code == 201 and answer.headers["upload-offset"] == str(len(data))
    assert answer.headers["stor-sha256"] == sha256(data)
    assert httpx.get(f"{server.url}/{sha256(data)}").content == data
    # The same blob again: complete at creation, nothing to send.
    again = httpx.post(f"{server.url}/files/", auth=AUTH, headers={
        **TUS, "Upload-Length": str(len(data)), "Upload-Metadata": metadata(sha256=sha256(data))})
    assert again.status_code == 201 and again.headers["upload-offset"] == str(len(data))
    assert again.headers["stor-sha256"] == sha256(data)
    assert head(server.url + again.headers["location"]).headers["stor-sha256"] == sha256(data)
    # tuspy sends its bytes without asking (a HEAD) first: they are dropped, and the answer is the end's.
    repeat = tus_client(server).uploader(file_stream=io.BytesIO(data), metadata={"sha256": sha256(data)})
    repeat.upload()
    assert repeat.request.response_headers["stor-sha256"] == sha256(data)


def test_defer_length(tus_server: Any) -> None:
    server, _ = tus_server
    data = os.urandom(2 * MIB)
    url = create(server, None)
    assert head(url).headers["upload-defer-length"] == "1"
    assert patch(url, 0, data[:MIB]).status_code == 204
    assert "upload-length" not in head(url).headers
    last = patch(url, MIB, data[MIB:], **{"Upload-Length": str(len(data))})
    assert last.status_code == 204 and last.headers["stor-sha256"] == sha256(data)
    # A length shorter than what is stored, or a second different one, is refused.
    url = create(server, None)
    assert patch(url, 0, data[:MIB]).status_code == 204
    short = patch(url, MIB, b"x", **{"Upload-Length": "10"})
    assert short.status_code == 400 and "less than" in short.text
    assert head(url).headers["upload-offset"] == str(MIB)


def test_checksum_mismatch_is_460_and_keeps_the_offset(tus_server: Any) -> None:
    server, _ = tus_server
    data = os.urandom(3 * MIB)
    url = create(server, len(data))
    good = base64.b64encode(hashlib.sha1(data[:MIB]).digest()).decode()
    assert patch(url, 0, data[:MIB], **{"Upload-Checksum": f"sha1 {good}"}).status_code == 204
    bad = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    refused = patch(url, MIB, data[MIB : 2 * MIB], **{"Upload-Checksum": f"md5 {bad}"})
    assert refused.status_code == 460 and "Upload-Checksum" in refused.text
    assert head(url).headers["upload-offset"] == str(MIB)
    sha = base64.b64encode(hashlib.sha256(data[MIB:]).digest()).decode()
    last = patch(url, MIB, data[MIB:], **{"Upload-Checksum": f"sha256 {sha}"})
    assert last.status_code == 204 and last.headers["stor-sha256"] == sha256(data)
    unknown = patch(create(server, 1), 0, b"x", **{"Upload-Checksum": "crc32 AAAA"})
    assert unknown.status_code == 400 and "crc32" in unknown.text


def test_tuspy_with_checksums(tus_server: Any, tmp_path: Path) -> None:
    server, _ = tus_server
    data = os.urandom(5 * MIB + 17)
    source = tmp_path / "f"
    source.write_bytes(data)
    uploader = tus_client(server).uploader(str(source), chunk_size=2 * MIB, upload_checksum=True)
    uploader.upload()
    assert uploader.request.response_headers["stor-sha256"] == sha256(data)


def test_a_final_sha_mismatch_leaves_nothing_visible(tus_server: Any) -> None:
    server, disks = tus_server
    data = os.urandom(2 * MIB)
    claimed = sha256(b"not these bytes")
    url = create(server, len(data), sha256=claimed)
    assert patch(url, 0, data[:MIB]).status_code == 204
    last = patch(url, MIB, data[MIB:])
    assert last.status_code == 412
    assert last.text == f"Content sha256 {sha256(data)} doesn't match given sha256 {claimed}"
    assert httpx.get(f"{server.url}/{sha256(data)}").status_code == 404
    assert httpx.get(f"{server.url}/{claimed}").status_code == 404
    assert not [p for p in blob_files(*disks) if p.stem.lower() in (sha256(data), claimed)]
    assert not [p for p in bytes_files(*disks) if p.stem == url.rsplit("/", 1)[1]]
    failed = head(url)
    assert failed.status_code == 410


def test_termination(tus_server: Any) -> None:
    server, disks = tus_server
    url = create(server, 10)
    assert patch(url, 0, b"12345").status_code == 204
    upload_id = url.rsplit("/", 1)[1]
    assert [p for p in bytes_files(*disks) if p.stem == upload_id]
    answer = httpx.delete(url, headers=TUS, auth=AUTH)
    assert answer.status_code == 204 and answer.headers["tus-resumable"] == "1.0.0"
    assert head(url).status_code == 404
    assert patch(url, 5, b"67890").status_code == 404
    assert not [name for name in tus_files(*disks) if name.startswith(upload_id)]


def test_every_malformed_header_gets_a_4xx_with_a_reason(tus_server: Any) -> None:
    server, disks = tus_server
    url = create(server, 100)
    before = tus_files(*disks)
    base = f"{server.url}/files/"

    def creation(**headers: str) -> httpx.Response:
        return httpx.post(base, headers={**TUS, **headers}, auth=AUTH)

    cases = [
        (patch(url, 0, b"x", **{"Upload-Offset": "-1"}), 400, "Bad Upload-Offset '-1'"),
        (patch(url, 0, b"x", **{"Upload-Offset": "abc"}), 400, "Bad Upload-Offset 'abc'"),
        (patch(url, 5, b"x"), 409, "Upload-Offset 5 does not match the upload's offset 0"),
        (patch(url, 0, b"x", **{"Content-Type": "text/plain"}), 415, "Content-Type: application/offset+octet-stream"),
        (patch(url, 0, b"x" * 101), 413, "More bytes than the upload's length of 100"),
        (patch(url, 0, b"x", **{"Tus-Resumable": "0.2.2"}), 412, "Tus-Resumable '0.2.2'"),
        (creation(**{"Upload-Length": str(100 * MIB + 1)}), 413, "Blob larger than the limit of"),
        (creation(**{"Upload-Length": "-5"}), 400, "Bad Upload-Length '-5'"),
        (creation(), 400, "Upload-Length, or Upload-Defer-Length: 1"),
        (creation(**{"Upload-Defer-Length": "2"}), 400, "Bad Upload-Defer-Length '2'"),
        (creation(**{"Upload-Length": "1", "Upload-Metadata": "filename ***"}), 400, "not base64"),
        (creation(**{"Upload-Length": "1", "Upload-Metadata": metadata(sha256="abc")}), 400, "expected 64 hex digits"),
        (creation(**{"Upload-Length": "1", "Upload-Metadata": metadata(filetype="nonsense")}), 400, "Bad filetype"),
        (creation(**{"Upload-Length": "1", "Upload-Metadata": metadata(filename="a/b")}), 400, "Bad filename"),
        (creation(**{"Upload-Length": "1", "Upload-Metadata": "k " + "QUFB" * 1100}), 400, "longer than 4096"),
        (creation(**{"Upload-Length": "1", "Upload-Concat": "partial"}), 400, "concatenation is not supported"),
        (httpx.post(base, headers={"Upload-Length": "1"}, auth=AUTH), 412, "Tus-Resumable missing"),
        (head(f"{server.url}/files/..%2F..%2Fetc"), 404, ""),
        (patch(f"{server.url}/files/not-an-upload", 0, b"x"), 404, "No such upload"),
        (patch(f"{server.url}/files/{'0' * 32}", 0, b"x"), 404, "No such upload"),
    ]
    for answer, status_code, reason in cases:
        assert answer.status_code == status_code, (answer.request.method, answer.request.headers, answer.text)
        assert reason in answer.text and "\n" not in answer.text
        assert answer.headers["tus-resumable"] == "1.0.0"
    assert tus_files(*disks) == before
    assert head(url).headers["upload-offset"] == "0"


def test_uploads_need_write_credentials(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    import bcrypt

    reader = {"name": "reader", "password_hash": bcrypt.hashpw(b"read-pass", bcrypt.gensalt(4)).decode(), "role": "read"}
    server = start_server(pair_config(mirrors, auth={"users": [reader]}))
    anonymous = httpx.post(f"{server.url}/files/", headers={**TUS, "Upload-Length": "1"})
    assert anonymous.status_code == 401
    read_only = httpx.post(f"{server.url}/files/", headers={**TUS, "Upload-Length": "1"}, auth=("reader", "read-pass"))
    assert read_only.status_code == 403
    url = create(server, 1)
    assert httpx.head(url, headers=TUS).status_code == 401
    assert httpx.patch(url, headers={**TUS, "Upload-Offset": "0"}, content=b"x").status_code == 401
    assert httpx.options(f"{server.url}/files/").status_code == 204  # capabilities need none


# ---- interruptions, restarts, workers and nodes --------------------------------------------------


@FAST_ONLY
def test_an_upload_cut_mid_patch_keeps_what_arrived_and_resumes(tus_server: Any, tmp_path: Path) -> None:
    server, disks = tus_server
    data = os.urandom(6 * MIB)
    url = create(server, len(data), sha256=sha256(data))
    upload_id = url.rsplit("/", 1)[1]
    files = [p for p in bytes_files(*disks) if p.stem == upload_id]
    sock = send_partial_patch(server, url[len(server.url):], 0, len(data), data[: 3 * MIB])
    wait_for(lambda: files[0].stat().st_size >= MIB, what="the first bytes written")
    sock.close()  # the client vanishes mid-body
    wait_for(lambda: files[0].stat().st_ino not in locked_inodes(), what="the request over")
    offset = int(head(url).headers["upload-offset"])
    assert MIB <= offset <= 3 * MIB  # what the server read before it saw the client go is kept
    assert [p.stat().st_size for p in files] == [offset, offset]
    source = tmp_path / "f"
    source.write_bytes(data)
    uploader = tus_client(server).uploader(str(source), url=url, chunk_size=MIB)
    assert uploader.offset == offset
    uploader.upload()
    assert uploader.request.response_headers["stor-sha256"] == sha256(data)
    assert httpx.get(f"{server.url}/{sha256(data)}").content == data


@FAST_ONLY
def test_423_only_while_a_patch_really_holds_the_upload(tus_server: Any) -> None:
    server, disks = tus_server
    data = os.urandom(2 * MIB)
    url = create(server, len(data))
    upload_id = url.rsplit("/", 1)[1]
    first_file = next(p for p in bytes_files(*disks) if p.stem == upload_id and p.parent.parent == disks[0])
    assert first_file.stat().st_ino not in locked_inodes()
    assert patch(url, 0, b"").status_code == 204  # no one holds it: no 423
    sock = send_partial_patch(server, url[len(server.url):], 0, len(data), data[:1000])
    wait_for(lambda: first_file.stat().st_ino in locked_inodes(), what="the first PATCH to hold the lock")
    busy = patch(url, 0, data[:MIB])
    assert busy.status_code == 423 and "another request" in busy.text
    sock.close()
    wait_for(lambda: first_file.stat().st_ino not in locked_inodes(), what="the lock released by the vanished client")
    offset = int(head(url).headers["upload-offset"])
    assert offset == 1000
    done = patch(url, offset, data[offset:])
    assert done.status_code == 204 and done.headers["stor-sha256"] == sha256(data)


@FAST_ONLY
def test_resumed_after_kill_9_and_on_a_second_node(start_server: Any, mirrors: tuple[Path, Path], tmp_path: Path) -> None:
    config = pair_config(mirrors)
    first = start_server(config, workers=2)
    data = os.urandom(12 * MIB)
    source = tmp_path / "f"
    source.write_bytes(data)
    uploader = tus_client(first).uploader(str(source), chunk_size=2 * MIB, metadata={"sha256": sha256(data)})
    uploader.upload(stop_at=4 * MIB)
    upload_path = uploader.url[len(first.url):]
    # A PATCH in flight when the server dies: written, but never recorded.
    sock = send_partial_patch(first, upload_path, 4 * MIB, 4 * MIB, data[4 * MIB : 7 * MIB])
    wait_for(lambda: max(p.stat().st_size for p in bytes_files(*mirrors)) > 5 * MIB, what="bytes written")
    assert first.proc is not None
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    sock.close()
    # The storage is shared by a second node (another `stor serve`) and the restarted first one.
    second = start_server(config, workdir=tmp_path)
    restarted = start_server(config, workers=2, port=first.port)
    offset = int(head(second.url + upload_path).headers["upload-offset"])
    assert 4 * MIB <= offset <= 7 * MIB
    # Alternate between the nodes: each takes up the upload where the other left it.
    nodes = [second, restarted]
    turn = 0
    while offset < len(data):
        node = nodes[turn % 2]
        answer = patch(node.url + upload_path, offset, data[offset : offset + MIB])
        assert answer.status_code == 204, answer.text
        offset = int(answer.headers["upload-offset"])
        turn += 1
    assert answer.headers["stor-sha256"] == sha256(data)
    assert httpx.get(f"{restarted.url}/{sha256(data)}").content == data
    assert bytes_files(*mirrors) == []


def test_expiry_then_sweep(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    server = start_server(pair_config(mirrors, tus={"expire_after": 1, "sweep_period": 0.2}))
    url = create(server, 100)
    answer = patch(url, 0, b"x" * 10)
    assert answer.status_code == 204 and "upload-expires" in answer.headers
    upload_id = url.rsplit("/", 1)[1]
    # Gone once expired (410), then swept (404, its files removed).
    codes: set[int] = set()

    def swept() -> bool:
        codes.add(head(url).status_code)
        return 404 in codes

    wait_for(swept, what="the upload swept")
    assert codes <= {200, 410, 404}
    assert not [name for name in tus_files(*mirrors) if name.startswith(upload_id)]
    wait_for(lambda: scrape(server.url, 'stor_tus_uploads_total{event="expired"}') == 1, what="the expiry counted")


def test_the_temporary_file_sweep_leaves_uploads_in_progress(start_server: Any, mirrors: tuple[Path, Path]) -> None:
    config = pair_config(mirrors, cleanup_tempdir_period=0.1, uploads={"tempfile_max_age": 0.01})
    server = start_server(config)
    url = create(server, 20)
    assert patch(url, 0, b"0123456789").status_code == 204
    stale = mirrors[0] / ".stor-tmp" / ("a" * 32 + ".part")
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"left by a crash")
    os.utime(stale, (0, 0))
    wait_for(lambda: not stale.exists(), what="the temporary file sweep")
    last = patch(url, 10, b"abcdefghij")
    assert last.status_code == 204 and last.headers["stor-sha256"] == sha256(b"0123456789abcdefghij")


# ---- limits, space, status and metrics ----------------------------------------------------------


def test_limits_space_status_and_metrics(start_server: Any, tmpfs: Any) -> None:
    disks = (tmpfs("m1", "8m"), tmpfs("m2", "8m"))
    server = start_server(pair_config(disks, tus={"max_uploads": 2}))
    too_big = httpx.post(f"{server.url}/files/", headers={**TUS, "Upload-Length": str(20 * MIB)}, auth=AUTH)
    assert too_big.status_code == 507
    assert tus_files(*disks) == []
    one, two = create(server, MIB), create(server, MIB)
    assert patch(one, 0, b"x" * 1000).status_code == 204
    third = httpx.post(f"{server.url}/files/", headers={**TUS, "Upload-Length": "1"}, auth=AUTH)
    assert third.status_code == 503 and "2 uploads are in progress" in third.text
    report = status(server.url)["tus"]
    assert report["uploads_in_progress"] == 2 and report["bytes_in_progress"] == 1000
    assert httpx.delete(two, headers=TUS, auth=AUTH).status_code == 204
    assert patch(one, 1000, b"y" * (MIB - 1000)).status_code == 204
    assert status(server.url)["tus"]["uploads_in_progress"] == 0
    # Each worker's counts reach a scrape within a second.
    expected = {f'stor_tus_uploads_total{{event="{e}"}}': n for e, n in (("created", 2), ("completed", 1), ("terminated", 1))}
    expected["stor_tus_received_bytes_total"] = MIB
    wait_for(lambda: all(scrape(server.url, k) == v for k, v in expected.items()), what=f"the counters {expected}")


# ---- curl, the other protocol mode, and the S3 tier -------------------------------------------


def test_curl(start_server: Any, mirrors: tuple[Path, Path], tmp_path: Path, fast_path: bool) -> None:
    server = start_server(pair_config(mirrors))
    data = os.urandom(3 * MIB)
    source = tmp_path / "f"
    source.write_bytes(data)
    auth = f"{USER}:{PASSWORD}"
    created = subprocess.run(
        ["curl", "-sS", "-i", "-u", auth, "-X", "POST", "-H", "Tus-Resumable: 1.0.0",
         "-H", f"Upload-Length: {len(data)}", "-H", f"Upload-Metadata: {metadata(filename='f.bin')}",
         f"{server.url}/files/"],
        capture_output=True, text=True, check=True,
    ).stdout
    location = next(line.split(": ", 1)[1].strip() for line in created.splitlines() if line.lower().startswith("location:"))
    answer = subprocess.run(
        ["curl", "-sS", "-i", "-u", auth, "-X", "PATCH", "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
         "-H", "Content-Type: application/offset+octet-stream", "--data-binary", f"@{source}", server.url + location],
        capture_output=True, text=True, check=True,
    ).stdout
    assert answer.startswith("HTTP/1.1 204") or "\nHTTP/1.1 204" in answer
    assert f"stor-sha256: {sha256(data)}" in answer
    got = httpx.get(f"{server.url}/{sha256(data)}")
    assert got.content == data and got.headers["x-filename"] == "f.bin"


def test_an_upload_lands_in_the_bucket_in_s3_mode(start_server: Any, seaweed: Any, s3_bucket: str, tmp_path: Path) -> None:
    spool = tmp_path / "tus-spool"
    spool.mkdir()
    config = s3_config(None, seaweed, s3_bucket, write_mode="s3", part_bytes=5 * MIB) | {
        "storage_pairs": [], "tus": {"directory": str(spool)}}
    server = start_server(config)
    data = os.urandom(7 * MIB)
    source = tmp_path / "f"
    source.write_bytes(data)
    uploader = tus_client(server).uploader(str(source), chunk_size=2 * MIB, metadata={"sha256": sha256(data)})
    uploader.upload()
    assert uploader.request.response_headers["stor-sha256"] == sha256(data)
    body = seaweed.client().get_object(Bucket=s3_bucket, Key=key_of(sha256(data)))["Body"].read()
    assert body == data
    assert not list(spool.glob("*.bin"))
    # A mismatch leaves no object.
    wrong = sha256(b"other")
    url = create(server, 10, sha256=wrong)
    assert patch(url, 0, b"0123456789").status_code == 412
    listed = seaweed.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert [o["Key"] for o in listed] == [key_of(sha256(data))]


def test_tuspy_reports_refusals(tus_server: Any, tmp_path: Path) -> None:
    server, _ = tus_server
    source = tmp_path / "f"
    source.write_bytes(os.urandom(1000))
    client = TusClient(f"{server.url}/files/")  # no credentials
    with pytest.raises((TusCommunicationError, TusUploadFailed)) as refused:
        client.uploader(str(source)).upload()
    assert refused.value.status_code == 401
