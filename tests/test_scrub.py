"""`stor scrub` and `stor repair` over real storage trees damaged on purpose: the real command in a child process.

Each test writes blobs into a pair of directories in the original layout, damages real files (a flipped
byte, a truncation, a deletion, a stray file, a symlink, a disagreeing sidecar), runs
`python -m stor scrub|repair --config ...`, and checks its JSON report, its exit code and the files on
disk afterwards. The S3 tests use the session's SeaweedFS.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import STOR_DIR, child_env, flip_byte, layout_path, pair_config, run_on_a_terminal, sha256, wait_for
from seaweed import SeaweedFS
from test_s3_tier import object_bytes, put_object, s3_config

KIB, MIB = 1024, 1024 * 1024
STATE_NAME = ".stor-scrub.json"
HOUR = 3600.0


# ---- helpers -----------------------------------------------------------------------------------


def store(mirrors: tuple[Path, ...], data: bytes, meta: dict[str, str] | None = None) -> str:
    """A blob (and its sidecar) written into each mirror in the original layout, as stor leaves it."""
    sha = sha256(data)
    for root in mirrors:
        path = layout_path(root, sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if meta is not None:
            sidecar(root, sha).write_bytes(json.dumps(meta).encode())
    return sha


def sidecar(root: Path, sha: str) -> Path:
    return layout_path(root, sha).with_suffix(".meta")


def blobs(n: int, size: int, tag: bytes = b"") -> list[bytes]:
    return [tag + i.to_bytes(4, "big") + os.urandom(size - len(tag) - 4) for i in range(n)]


def write_config(tmp_path: Path, config: dict[str, Any], name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def command(config: Path, verb: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "stor", verb, "--config", str(config), *args]


def run(config: Path, *args: str, verb: str = "scrub", timeout: float = 60) -> tuple[int, dict[str, Any] | None, str]:
    """The command run to its end: its exit code, its JSON report (None if stdout held none), its stderr."""
    done = subprocess.run(command(config, verb, *args), capture_output=True, timeout=timeout, cwd=STOR_DIR,
                          env=child_env(), check=False)
    out = done.stdout.decode().strip()
    return done.returncode, json.loads(out) if out else None, done.stderr.decode()


def scrub(config: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    code, report, err = run(config, *args)
    assert report is not None, err
    return code, report, err


def repair(config: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    code, report, err = run(config, *args, verb="repair")
    assert report is not None, err
    return code, report, err


def kinds(report: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The problems listed: (kind, sha), sorted."""
    return by_kind((p["kind"], p["sha"]) for p in report["problems"])


def by_kind(found: Any) -> list[tuple[str, str | None]]:
    return sorted(found, key=lambda k: (k[0], k[1] or ""))


def snapshot(*roots: Path) -> dict[str, Any]:
    """Every entry below the roots: a file's bytes and mtime, a link's target, a directory as such."""
    found: dict[str, Any] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                st = path.lstat()
                if path.is_symlink():
                    found[str(path)] = ("link", os.readlink(path))
                elif path.is_dir():
                    found[str(path)] = ("dir",)
                else:
                    found[str(path)] = ("file", path.read_bytes(), st.st_mtime_ns)
    return found


def quarantined(root: Path) -> dict[str, bytes]:
    """What the storage's quarantine holds (not the notes): name without its time stamp -> bytes."""
    q = root / ".stor-quarantine"
    if not q.exists():
        return {}
    out = {}
    for p in q.iterdir():
        if not p.name.endswith(".why.json"):
            name = re.sub(r"^\d{8}T\d{6}Z-", "", p.name)
            out[name] = p.read_bytes() if not p.is_symlink() and p.is_file() else b"<" + os.readlink(p).encode() + b">" if p.is_symlink() else b"<dir>"
    return out


def pair_counts(report: dict[str, Any], n: int = 0) -> dict[str, Any]:
    return next(p for p in report["pairs"] if p["pair"] == n)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "disk1", tmp_path / "disk2"
    a.mkdir()
    b.mkdir()
    return a, b


@pytest.fixture
def config(tmp_path: Path, pair: tuple[Path, Path]) -> Path:
    return write_config(tmp_path, pair_config(pair))


# ---- a clean tree ------------------------------------------------------------------------------


def test_a_clean_tree_is_clean_and_stors_own_entries_are_not_strays(pair: tuple[Path, Path], config: Path) -> None:
    a, b = pair
    data = blobs(6, 3000)
    shas = [store(pair, d) for d in data[:5]]
    shas.append(store(pair, data[5], {"content_type": "text/plain", "filename": "x.txt"}))
    for root in pair:  # what the service itself leaves at a storage's root
        (root / ".stor-tmp" / "locks").mkdir(parents=True)
        (root / ".stor-tmp" / "locks" / "ABC.lock").write_bytes(b"")
        (root / ".stor-tmp" / "fresh.part").write_bytes(b"an upload in progress")
        (root / ".stor-tmp" / "old-but-not-a-part").write_bytes(b"x")
        os.utime(root / ".stor-tmp" / "old-but-not-a-part", (time.time() - 10 * HOUR,) * 2)
        (root / ".stor-quarantine").mkdir()
        (root / ".stor-quarantine" / "20260101T000000Z-junk").write_bytes(b"put aside before")
        (root / ".stor-s3-queue").mkdir()
        (root / ".stor-s3-queue" / shas[0]).write_bytes(b"")
        (root / ".stor-s3-backfill.json").write_text("{}")
        (root / "lost+found").mkdir()
    code, report, err = scrub(config)
    assert code == 0, err
    assert report["problems"] == [] and report["problems_found"] == 0 and report["clean"] is True
    total = report["total"]
    assert total["blobs_verified"] == 6 and total["copies_verified"] == 12
    assert total["bytes_read"] == 2 * sum(len(d) for d in data)
    assert total["stray"]["total"] == 0
    assert report["this_run"]["bytes_read"] == total["bytes_read"]
    assert pair_counts(report)["storages"] == [str(a), str(b)]
    assert pair_counts(report)["blobs_verified"] == 6
    assert report["complete"] is True and report["cursor"] is None
    assert not (a / STATE_NAME).exists() and not (a / f"{STATE_NAME}.lock").exists()


# ---- damaged blobs -----------------------------------------------------------------------------


def test_a_flipped_byte_a_truncation_and_a_lost_copy_are_found_then_repaired(
    pair: tuple[Path, Path], config: Path
) -> None:
    a, b = pair
    good = [store(pair, d) for d in blobs(4, 5000)]
    flipped_data, truncated_data, lost_data = blobs(3, 70_000, b"dmg")
    flipped, truncated, lost = store(pair, flipped_data), store(pair, truncated_data), store(pair, lost_data)
    flip_byte(layout_path(a, flipped), 40_000)
    os.truncate(layout_path(b, truncated), 1000)
    layout_path(a, lost).unlink()
    before = snapshot(a, b)

    code, report, err = scrub(config)
    assert code == 1, err
    assert kinds(report) == sorted([("corrupt", flipped), ("truncated", truncated), ("one_mirror_only", lost)])
    where = {p["kind"]: p["storage"] for p in report["problems"]}
    assert where == {"corrupt": str(a), "truncated": str(b), "one_mirror_only": str(a)}
    t = report["total"]
    assert (t["corrupt"], t["truncated"], t["one_mirror_only"], t["problems"]) == (1, 1, 1, 3)
    assert t["blobs_verified"] == 7
    # Every copy read once, and the corrupt and truncated ones once more (a mismatch is re-read from the disk
    # before it counts); the lost copy not at all.
    assert t["bytes_read"] == 4 * 2 * 5000 + (70_000 + 2 * 70_000) + (70_000 + 2 * 1000) + 70_000
    assert flipped.upper() in err and "reading it again" in err
    assert snapshot(a, b) == before  # a scrub changes nothing
    assert report["actions"] == []

    code, report, err = repair(config)
    assert code == 0, err
    assert report["repaired"] == 3 and report["clean"] is True
    done = sorted((x["action"], x["sha"], x["storage"]) for x in report["actions"])
    assert done == sorted([
        ("quarantine", flipped, str(a)), ("copy", flipped, str(a)),
        ("quarantine", truncated, str(b)), ("copy", truncated, str(b)),
        ("copy", lost, str(a)),
    ])
    assert all(x["done"] and x["error"] is None for x in report["actions"])
    for sha, data in ((flipped, flipped_data), (truncated, truncated_data), (lost, lost_data)):
        for root in pair:
            assert layout_path(root, sha).read_bytes() == data
    # The bad copies are kept, byte for byte, in their storage's quarantine.
    bad_flipped = bytearray(flipped_data)
    bad_flipped[40_000] ^= 0xFF
    assert quarantined(a) == {f"{flipped.upper()}.dat": bytes(bad_flipped)}
    assert quarantined(b) == {f"{truncated.upper()}.dat": truncated_data[:1000]}
    for sha in good:
        assert layout_path(a, sha).exists() and layout_path(b, sha).exists()

    code, report, err = scrub(config)
    assert (code, report["problems"]) == (0, []), err


def test_both_copies_corrupt_are_reported_and_never_repaired(pair: tuple[Path, Path], config: Path) -> None:
    a, b = pair
    other = store(pair, b"a good blob beside them" * 50)
    data = b"rotten on both mirrors " * 400
    sha = store(pair, data)
    flip_byte(layout_path(a, sha), 10)
    flip_byte(layout_path(b, sha), 2000)
    before = snapshot(a, b)

    code, report, err = repair(config)
    assert code == 1, err
    assert kinds(report) == [("corrupt", sha), ("corrupt", sha)]
    assert report["repaired"] == 0 and report["clean"] is False
    assert [(x["action"], x["done"]) for x in report["actions"]] == [("none", False), ("none", False)]
    assert all("no good copy" in x["detail"] for x in report["actions"])
    assert snapshot(a, b) == before  # both bad files still there, unchanged; nothing quarantined
    assert not (a / ".stor-quarantine").exists() and not (b / ".stor-quarantine").exists()
    assert layout_path(a, other).exists()


# ---- strays ------------------------------------------------------------------------------------


def test_a_stale_temporary_is_reported_and_removed_a_fresh_or_locked_one_is_not(
    pair: tuple[Path, Path], config: Path
) -> None:
    a, _ = pair
    store(pair, b"one blob")
    tmp = a / ".stor-tmp"
    tmp.mkdir()
    stale, fresh, locked = tmp / "0badc0de.part", tmp / "fresh.part", tmp / "locked.part"
    for p in (stale, fresh, locked):
        p.write_bytes(b"half an upload")
    old = time.time() - 2 * HOUR  # uploads.tempfile_max_age is 30 minutes by default
    os.utime(stale, (old, old))
    os.utime(locked, (old, old))
    holder = os.open(locked, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # an upload on this host still writing it
    try:
        code, report, err = scrub(config)
        assert code == 1, err
        assert [(p["kind"], p["path"]) for p in report["problems"]] == [("stale_temporary", str(stale))]
        assert report["total"]["stray"]["stale_temporary"] == 1
        assert stale.exists()

        code, report, err = repair(config)
        assert code == 0, err
        assert [(x["action"], x["path"], x["done"]) for x in report["actions"]] == [("remove", str(stale), True)]
        assert not stale.exists()  # a temporary: removed, not quarantined
        assert fresh.exists() and locked.exists()
        assert not (a / ".stor-quarantine").exists()
    finally:
        os.close(holder)


def test_sidecars_that_disagree_are_made_to_agree_the_older_one_wins(pair: tuple[Path, Path], config: Path) -> None:
    a, b = pair
    sha = store(pair, b"a blob with a sidecar on each mirror" * 20)
    older = {"content_type": "text/csv", "filename": "first.csv"}
    sidecar(a, sha).write_text(json.dumps({"content_type": "application/octet-stream"}))
    sidecar(b, sha).write_text(json.dumps(older))
    now = time.time()
    os.utime(sidecar(b, sha), (now - 5 * HOUR, now - 5 * HOUR))  # the one on the second mirror is older
    os.utime(sidecar(a, sha), (now - HOUR, now - HOUR))

    code, report, err = scrub(config)
    assert code == 1, err
    assert kinds(report) == [("sidecar_mismatch", sha)]
    assert report["total"]["sidecar_mismatch"] == 1 and pair_counts(report)["sidecar_mismatch"] == 1

    code, report, err = repair(config)
    assert code == 0, err
    assert [(x["action"], x["storage"], x["done"]) for x in report["actions"]] == [("sidecar", str(a), True)]
    assert f"that of {b}" in report["actions"][0]["detail"] and "older" in report["actions"][0]["detail"]
    assert json.loads(sidecar(a, sha).read_text()) == older == json.loads(sidecar(b, sha).read_text())
    code, report, err = scrub(config)
    assert (code, report["problems"]) == (0, []), err


def distinct(used: set[str], text: bytes) -> bytes:
    """text with a counter appended until its sha's first directory is one no other blob of the test uses."""
    n = 0
    while (data := text + str(n).encode()) and sha256(data)[0:2] in used:
        n += 1
    used.add(sha256(data)[0:2])
    return data


def test_misplaced_blobs_orphan_sidecars_wrong_names_and_symlinks(
    tmp_path: Path, pair: tuple[Path, Path], config: Path
) -> None:
    a, b = pair
    used = {"00", "ab"}
    misplaced_data = distinct(used, b"stored on the second mirror, and one directory too high on the first" * 30)
    misplaced = store((b,), misplaced_data)
    too_high = a / misplaced[0:2].upper() / misplaced[2:4].upper() / f"{misplaced.upper()}.dat"
    too_high.parent.mkdir(parents=True)
    too_high.write_bytes(misplaced_data)
    # A file under a blob's name in another blob's directory, whose bytes are not that blob's: never moved.
    liar_sha = sha256(distinct(used, b"the name it claims"))
    liar = a / "00" / "00" / "00" / f"{liar_sha.upper()}.dat"
    liar.parent.mkdir(parents=True)
    liar.write_bytes(b"something else entirely")
    orphan_sha = sha256(distinct(used, b"a blob that is nowhere"))
    orphan = sidecar(a, orphan_sha)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_text(json.dumps({"filename": "lost.bin"}))
    junk = a / layout_path(a, misplaced).parent.relative_to(a) / "notes.txt"
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_text("an operator's notes")
    lower = a / "ab"  # lower-case hex is not the layout
    lower.mkdir()
    # Symlinks: a blob's place on the first mirror linking to a good copy outside the tree, and a whole
    # AA directory linking to a tree of good blobs elsewhere. Followed, both would pass for good copies.
    linked_data = distinct(used, b"its copy on the first mirror is a symlink" * 10)
    linked = store((b,), linked_data)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "copy.dat").write_bytes(linked_data)
    layout_path(a, linked).parent.mkdir(parents=True, exist_ok=True)
    layout_path(a, linked).symlink_to(outside / "copy.dat")
    elsewhere = tmp_path / "elsewhere"
    hidden = store((elsewhere,), distinct(used, b"only reachable through a linked directory"))
    (a / hidden[0:2].upper()).symlink_to(elsewhere / hidden[0:2].upper())
    store(pair, distinct(used, b"a plain good blob" * 9))

    code, report, err = scrub(config)
    assert code == 1, err
    assert kinds(report) == by_kind([
        ("wrong_directory", misplaced), ("one_mirror_only", misplaced),
        ("wrong_directory", liar_sha), ("orphan_sidecar", orphan_sha),
        ("wrong_name", None), ("wrong_directory", None),
        ("symlink", None), ("symlink", None), ("one_mirror_only", linked),
    ])
    paths = {p["path"] for p in report["problems"] if "path" in p}
    assert paths == {str(too_high), str(liar), str(orphan), str(junk), str(lower), str(layout_path(a, linked)),
                     str(a / hidden[0:2].upper())}
    strays = report["total"]["stray"]
    assert strays == {"total": 7, "wrong_name": 1, "wrong_directory": 3, "stale_temporary": 0, "orphan_sidecar": 1,
                      "symlink": 2}
    assert report["total"]["blobs_verified"] == 3  # misplaced (on b), linked (on b), the plain one: never hidden
    assert "not followed" in err

    code, report, err = repair(config)
    assert code == 0, err
    actions = {(x["action"], x.get("path") or x["storage"], x["done"]) for x in report["actions"]}
    assert ("move", str(too_high), True) in actions
    assert ("quarantine", str(liar), True) in actions
    assert ("quarantine", str(orphan), True) in actions
    # Moved into place before its directory was walked: both copies there, nothing else to do for it.
    assert not too_high.exists() and layout_path(a, misplaced).read_bytes() == misplaced_data
    assert layout_path(a, linked).read_bytes() == linked_data and not layout_path(a, linked).is_symlink()
    assert (outside / "copy.dat").read_bytes() == linked_data  # a link's target is never touched
    assert (elsewhere / hidden[0:2].upper()).is_dir() and layout_path(elsewhere, hidden).exists()
    q = quarantined(a)
    assert q[f"{liar_sha.upper()}.dat"] == b"something else entirely"
    assert json.loads(q[f"{orphan_sha.upper()}.meta"]) == {"filename": "lost.bin"}
    assert q["notes.txt"] == b"an operator's notes" and q["ab"] == b"<dir>"
    assert q[f"{linked.upper()}.dat"] == f"<{outside / 'copy.dat'}>".encode()
    assert q[hidden[0:2].upper()] == f"<{elsewhere / hidden[0:2].upper()}>".encode()
    code, report, err = scrub(config)
    assert (code, report["problems"]) == (0, []), err


def test_a_dry_run_lists_the_repairs_and_changes_nothing(pair: tuple[Path, Path], config: Path) -> None:
    a, b = pair
    corrupt, lost = store(pair, b"to be flipped" * 100), store(pair, b"to be lost" * 100)
    flip_byte(layout_path(b, corrupt))
    layout_path(b, lost).unlink()
    sha = store(pair, b"sidecars differ" * 10, {"filename": "a"})
    sidecar(b, sha).write_text(json.dumps({"filename": "b"}))
    os.utime(sidecar(b, sha), (time.time() - HOUR,) * 2)
    (a / "stray.txt").write_text("x")
    (a / ".stor-tmp").mkdir()
    (a / ".stor-tmp" / "old.part").write_bytes(b"x")
    os.utime(a / ".stor-tmp" / "old.part", (time.time() - 2 * HOUR,) * 2)
    moved_data = b"misplaced" * 30
    moved = sha256(moved_data)
    (a / "00").mkdir()
    (a / "00" / f"{moved.upper()}.dat").write_bytes(moved_data)
    before = snapshot(a, b)

    code, report, err = repair(config, "--dry-run")
    assert code == 1, err
    assert report["dry_run"] is True and report["repaired"] == 0
    assert report["problems_found"] == 6
    assert {x["action"] for x in report["actions"]} == {"copy", "quarantine", "sidecar", "remove", "move"}
    assert not any(x["done"] for x in report["actions"])
    assert snapshot(a, b) == before  # byte for byte, mtimes too; no quarantine, no lock files, no state

    code, report, err = repair(config)
    assert code == 0, err
    assert snapshot(a, b) != before
    # As listed, and the moved blob, now in its place on the first mirror only (examined once moved), copied.
    assert sorted(x["action"] for x in report["actions"]) == sorted(["quarantine", "copy", "copy", "sidecar",
                                                                     "quarantine", "remove", "move", "copy"])
    assert layout_path(b, moved).read_bytes() == moved_data


# ---- resuming ----------------------------------------------------------------------------------


def saved_cursor(state: Path) -> str | None:
    try:
        return str(json.loads(state.read_text())["cursor"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def test_an_interrupted_scrub_resumes_after_its_cursor_without_hashing_again(
    pair: tuple[Path, Path], config: Path
) -> None:
    a, _ = pair
    size = 256 * KIB
    shas = sorted(store(pair, d) for d in blobs(40, size))
    (a / "junk").write_text("a stray, reported once over both runs")
    state = a / STATE_NAME
    # 20 MiB to read at 2 MiB/s: the first cursor is saved (every 2 s) long before the end.
    started = subprocess.Popen(command(config, "scrub", "--rate", "2M", "--json"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=STOR_DIR, env=child_env())
    try:
        wait_for(lambda: saved_cursor(state) is not None or started.poll() is not None, timeout=30,
                 what="a saved cursor")
        started.send_signal(signal.SIGINT)
        out, err = started.communicate(timeout=30)
    finally:
        if started.poll() is None:
            started.kill()
    assert started.returncode == 130, f"not stopped part way (exit {started.returncode}):\n{err.decode()}"
    first = json.loads(out)
    cursor = first["cursor"]
    assert first["stopped"] == "SIGINT" and first["complete"] is False
    assert cursor in shas and saved_cursor(state) == cursor
    assert 0 < shas.index(cursor) < len(shas) - 1
    assert "SIGINT" in err.decode()
    assert not list(a.glob(f"{STATE_NAME}.*"))  # neither a temporary state file nor the lock file is left

    # Damage a blob the first run finished: the resumed run must not read it again.
    done_before = shas[: shas.index(cursor) + 1]
    flip_byte(layout_path(a, done_before[0]))
    code, second, err2 = scrub(config, "--resume")
    assert code == 1, err2  # the stray, counted by the first part
    rest = [sha for sha in shas if sha > cursor]
    assert second["resumed_from"] == cursor and f"after {cursor}" in err2
    assert second["this_run"]["blobs_verified"] == len(rest)
    assert second["this_run"]["bytes_read"] == 2 * size * len(rest)  # only what was left
    assert second["total"]["blobs_verified"] == len(shas)  # the earlier part included, once
    assert second["total"]["bytes_read"] == 2 * size * len(shas)
    assert kinds(second) == [("wrong_name", None)]  # the corrupt copy is not seen: not hashed again
    assert second["complete"] is True and not state.exists()

    code, fresh, err3 = scrub(config)  # a run from the start does find it
    assert code == 1 and ("corrupt", done_before[0]) in kinds(fresh), err3


def test_a_resume_with_another_selection_starts_over(pair: tuple[Path, Path], config: Path) -> None:
    a, b = pair
    shas = sorted(store(pair, d) for d in blobs(6, 100))
    state = a / STATE_NAME
    mine = {"version": 1, "command": "scrub", "mode": "scrub", "storages": [str(a), str(b)], "s3": False,
            "cursor": shas[2], "payload": {"phase": "local", "findings": {}, "seconds": 1.0}}
    state.write_text(json.dumps({**mine, "storages": [str(a)]}))
    code, report, err = scrub(config, "--resume")
    assert code == 0, err
    assert "saved by another run" in err and report["resumed_from"] is None
    assert report["total"]["blobs_verified"] == 6

    state.write_text(json.dumps(mine))  # the same selection: continued after the cursor
    code, report, err = scrub(config, "--resume")
    assert code == 0, err
    assert report["resumed_from"] == shas[2] and report["this_run"]["blobs_verified"] == 3

    state.write_text(json.dumps(mine))  # without --resume: from the start, the state replaced
    code, report, err = scrub(config)
    assert (code, report["resumed_from"], report["total"]["blobs_verified"]) == (0, None, 6), err
    assert not state.exists()


# ---- the rate limit and the workers -----------------------------------------------------------


def test_the_rate_limit_is_honoured_within_ten_percent(tmp_path: Path, pair: tuple[Path, Path], config: Path) -> None:
    a, _ = pair
    shas = [store(pair, d) for d in blobs(12, MIB)]  # 24 MiB over both mirrors
    flip_byte(layout_path(a, shas[3]))  # its re-read counts against the rate too
    empty = (tmp_path / "e1", tmp_path / "e2")
    for d in empty:
        d.mkdir()
    empty_config = write_config(tmp_path, pair_config(empty), "empty.json")
    t0 = time.monotonic()
    code, _, err = scrub(empty_config)
    startup = time.monotonic() - t0  # the interpreter, the imports and the report: no reading at all
    assert code == 0, err

    rate = 4 * MIB
    t0 = time.monotonic()
    code, report, err = scrub(config, "--rate", "4M", "--workers", "3")
    wall = time.monotonic() - t0
    assert code == 1, err
    assert report["rate"] == rate
    read = report["this_run"]["bytes_read"]
    assert read == 25 * MIB  # 24 MiB, and the corrupt copy once more
    measured = read / report["this_run"]["seconds"]
    assert abs(measured - rate) <= 0.1 * rate, f"measured {measured / MIB:.2f} MiB/s by its report"
    assert abs(report["this_run"]["bytes_per_second"] - measured) <= 0.01 * rate
    assert read / wall <= 1.1 * rate, f"{read / wall / MIB:.2f} MiB/s by the wall clock"
    by_clock = read / (wall - startup)
    assert abs(by_clock - rate) <= 0.1 * rate, f"{by_clock / MIB:.2f} MiB/s by the wall clock, less start-up"


def test_two_workers_give_the_same_report_as_one(pair: tuple[Path, Path], config: Path) -> None:
    a, b = pair
    shas = [store(pair, d, {"filename": f"{i}"}) for i, d in enumerate(blobs(30, 20_000))]
    flip_byte(layout_path(a, shas[1]))
    os.truncate(layout_path(b, shas[2]), 10)
    layout_path(b, shas[3]).unlink()  # and its sidecar is left: an orphan, beside a blob on one mirror only
    sidecar(a, shas[4]).write_text("{}")
    (b / "zz").write_text("x")
    reports = []
    for workers in ("1", "2"):
        code, report, err = scrub(config, "--workers", workers)
        assert code == 1, err
        for timing in ("workers", "this_run", "seconds"):
            report.pop(timing)
        reports.append(report)
    assert reports[0] == reports[1]
    assert reports[0]["problems_found"] == 6 and reports[0]["total"]["blobs_verified"] == 30


def resident_bytes(path: Path) -> int:
    """How much of the file the page cache holds (util-linux fincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return int(out.strip())


def test_the_scrub_reads_the_disk_and_leaves_the_page_cache_as_it_was(pair: tuple[Path, Path], config: Path) -> None:
    _, b = pair
    small, large = (store(pair, d) for d in (os.urandom(100_000), os.urandom(3 * MIB + 123)))
    paths = [layout_path(root, sha) for root in pair for sha in (small, large)]
    for path in paths:  # out of the cache: written back first, then dropped
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        assert resident_bytes(path) == 0, f"{path}: the page cache cannot be dropped on this filesystem"
    code, report, err = scrub(config)
    assert code == 0, err
    assert report["total"]["copies_verified"] == 4
    assert report["total"]["bytes_read"] == 2 * (100_000 + 3 * MIB + 123)
    # Read with O_DIRECT: hashed from the disk, and nothing the service keeps cached was pushed out for it.
    assert [resident_bytes(path) for path in paths] == [0, 0, 0, 0]
    flip_byte(layout_path(b, large))  # a change still in the page cache (not written back) is what the disk holds
    code, report, err = scrub(config)
    assert code == 1 and kinds(report) == [("corrupt", large)], err


def test_rates_are_read_as_dd_reads_sizes() -> None:
    from stor.scrub import parse_rate

    assert parse_rate("1048576") == MIB
    assert parse_rate("200k") == parse_rate("200K") == parse_rate("200KiB") == 200 * KIB
    assert parse_rate("50M") == parse_rate("50MiB") == 50 * MIB
    assert parse_rate("1.5G") == 3 * 512 * MIB
    assert parse_rate("8MB") == 8_000_000 and parse_rate("2kB") == 2000  # "B" alone: decimal
    assert parse_rate("0") is None and parse_rate("unlimited") is None
    for bad in ("fast", "-1", "5X", "M", "1e9", "0.1"):
        with pytest.raises(ValueError):
            parse_rate(bad)


# ---- could not run -----------------------------------------------------------------------------


def test_bad_options_configs_and_storages_exit_2(tmp_path: Path, pair: tuple[Path, Path], config: Path) -> None:
    store(pair, b"a blob")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    missing = write_config(tmp_path, pair_config((pair[0], tmp_path / "no-such-dir")), "missing.json")
    cases = [
        (bad, (), "bad JSON"),
        (config, ("--pair", "1"), "--pair 1: there is no such pair"),
        (config, ("--storage", str(tmp_path)), "not a configured storage"),
        (config, ("--rate", "fast"), "--rate"),
        (config, ("--workers", "0"), "--workers"),
        (config, ("--dry-run",), "--dry-run"),
        (config, ("--s3",), "no S3 tier configured"),
        (missing, (), "no-such-dir"),
    ]
    for path, args, said in cases:
        code, report, err = run(path, *args)
        assert (code, report) == (2, None), (args, err)
        assert said in err and err.strip().count("\n") == 0, (args, err)
    lock = os.open(pair[0] / f"{STATE_NAME}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another scrub holds the state file
        code, report, err = run(config)
        assert (code, report) == (2, None) and "another stor scrub is running" in err
    finally:
        os.close(lock)


def test_a_pair_or_one_storage_is_scrubbed_alone(tmp_path: Path) -> None:
    disks = [tmp_path / f"d{i}" for i in range(4)]
    for d in disks:
        d.mkdir()
    first, second = (disks[0], disks[1]), (disks[2], disks[3])
    one = store(first, b"on the first pair" * 10)
    two = store(second, b"on the second pair" * 10)
    flip_byte(layout_path(disks[3], two))
    flip_byte(layout_path(disks[1], one))
    config = write_config(tmp_path, pair_config(first, second))

    code, report, err = scrub(config, "--pair", "0")
    assert code == 1, err
    assert kinds(report) == [("corrupt", one)] and report["pairs_selected"] == [0]
    assert report["total"]["copies_verified"] == 2

    code, report, err = scrub(config, "--storage", str(disks[2]))
    assert code == 0, err  # the corrupt copy is on its twin, which is looked for, not hashed
    assert report["storages"] == [str(disks[2])] and report["total"]["copies_verified"] == 1
    layout_path(disks[3], two).unlink()
    code, report, err = scrub(config, "--storage", str(disks[2]))
    assert code == 1 and kinds(report) == [("one_mirror_only", two)], err


# ---- the S3 tier -------------------------------------------------------------------------------


def test_repair_restores_from_s3_when_both_local_copies_are_bad(
    tmp_path: Path, pair: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    a, b = pair
    data = b"bad on both mirrors, good in the bucket " * 300
    sha = store(pair, data)
    put_object(seaweed, s3_bucket, sha, data, ContentType="text/plain")
    worse = b"bad on both mirrors and in the bucket " * 300
    worst = store(pair, worse)
    put_object(seaweed, s3_bucket, worst, b"not its bytes at all")
    for s in (sha, worst):
        flip_byte(layout_path(a, s), 5)
        os.truncate(layout_path(b, s), 100)
    bad_a, bad_b = layout_path(a, sha).read_bytes(), layout_path(b, sha).read_bytes()
    worst_before = snapshot(layout_path(a, worst).parent, layout_path(b, worst).parent)
    config = write_config(tmp_path, s3_config(pair, seaweed, s3_bucket))

    code, report, err = repair(config)
    assert code == 1, err  # the one with no good copy anywhere is left
    restored = [(x["action"], x["storage"]) for x in report["actions"] if x["sha"] == sha]
    assert sorted(restored) == sorted([("quarantine", str(a)), ("restore", str(a)),
                                       ("quarantine", str(b)), ("restore", str(b))])
    assert all(x["done"] for x in report["actions"] if x["sha"] == sha)
    assert layout_path(a, sha).read_bytes() == data == layout_path(b, sha).read_bytes()
    assert json.loads(sidecar(a, sha).read_text()) == {"content_type": "text/plain"}
    assert quarantined(a)[f"{sha.upper()}.dat"] == bad_a and quarantined(b)[f"{sha.upper()}.dat"] == bad_b
    failed = [x for x in report["actions"] if x["sha"] == worst]
    assert failed and not any(x["done"] for x in failed) and all(x["error"] for x in failed)
    assert snapshot(layout_path(a, worst).parent, layout_path(b, worst).parent) == worst_before  # bad never over bad
    assert report["repaired"] == 2 and report["problems_found"] == 4


def test_s3_scrub_finds_a_corrupt_object_and_repair_replaces_it_from_a_verified_local_copy(
    tmp_path: Path, pair: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    data = {store(pair, d): d for d in blobs(20, 3000)}
    shas = sorted(data)
    for sha in shas:
        put_object(seaweed, s3_bucket, sha, data[sha])
    rotten = shas[5]
    put_object(seaweed, s3_bucket, rotten, b"the wrong bytes under its key")
    hopeless = shas[9]  # corrupt in the bucket, and no good copy locally either
    put_object(seaweed, s3_bucket, hopeless, b"also wrong")
    for root in pair:
        flip_byte(layout_path(root, hopeless))
    config = write_config(tmp_path, s3_config(pair, seaweed, s3_bucket))

    code, report, err = scrub(config, "--s3")
    assert code == 1, err
    s3 = report["s3"]
    assert s3["bucket"] == f"s3://{s3_bucket}"
    assert (s3["objects_listed"], s3["objects_verified"], s3["corrupt"]) == (20, 20, 2)
    assert sorted(p["sha"] for p in report["problems"] if p["kind"] == "s3_corrupt") == sorted([rotten, hopeless])
    assert s3["bytes_read"] == sum(len(data[s]) for s in shas if s not in (rotten, hopeless)) + 2 * (
        len(b"the wrong bytes under its key") + len(b"also wrong"))  # a mismatch is read twice

    code, report, err = scrub(config, "--s3", "--s3-sample", "0.5")
    assert 0 < report["s3"]["objects_verified"] < 20 and report["s3"]["objects_listed"] == 20, err

    code, report, err = repair(config, "--s3")
    assert code == 1, err  # hopeless is left
    about = {(x["action"], x["done"]) for x in report["actions"] if x["sha"] == rotten}
    assert about == {("quarantine", True), ("copy", True)}
    assert object_bytes(seaweed, s3_bucket, rotten) == data[rotten]
    assert object_bytes(seaweed, s3_bucket, hopeless) == b"also wrong"
    aside = [k for page in seaweed.client().get_paginator("list_objects_v2").paginate(Bucket=s3_bucket,
                                                                                        Prefix=".stor-quarantine/")
             for k in (o["Key"] for o in page.get("Contents", ()))]
    assert len(aside) == 1 and aside[0].endswith(rotten)
    assert seaweed.client().get_object(Bucket=s3_bucket, Key=aside[0])["Body"].read() == b"the wrong bytes under its key"
    assert report["s3"]["repaired"] == 1

    code, report, err = scrub(config, "--s3")
    assert [p["sha"] for p in report["problems"] if p["kind"] == "s3_corrupt"] == [hopeless], err
    assert report["s3"]["objects_listed"] == 20  # the quarantined object is not one of the blobs


def state_payload(state: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(state.read_text()).get("payload", {}))
    except (FileNotFoundError, ValueError):
        return {}


def test_sigterm_in_the_bucket_walk_and_a_resume_that_does_not_walk_the_disks_again(
    tmp_path: Path, pair: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    for d in blobs(3, 1000):
        store(pair, d)
    objects = {sha256(d): d for d in blobs(24, 256 * KIB, b"obj")}
    for sha, data in objects.items():
        put_object(seaweed, s3_bucket, sha, data)
    config = write_config(tmp_path, s3_config(pair, seaweed, s3_bucket))
    state = pair[0] / STATE_NAME
    # 6 MiB of objects at 1 MiB/s: the bucket's first cursor is saved (every 2 s) long before its end.
    started = subprocess.Popen(command(config, "scrub", "--s3", "--rate", "1M", "--json"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=STOR_DIR, env=child_env())
    try:
        wait_for(lambda: state_payload(state).get("s3_started") is True or started.poll() is not None, timeout=30,
                 what="a saved cursor in the bucket")
        started.send_signal(signal.SIGTERM)
        out, err = started.communicate(timeout=30)
    finally:
        if started.poll() is None:
            started.kill()
    assert started.returncode == 143, f"exit {started.returncode}:\n{err.decode()}"
    first = json.loads(out)
    assert (first["stopped"], first["phase"]) == ("SIGTERM", "s3")
    assert first["total"]["blobs_verified"] == 3 and 0 < first["s3"]["objects_verified"] < 24
    cursor = first["cursor"]
    assert cursor in objects

    code, second, err2 = scrub(config, "--s3", "--resume")
    assert code == 0, err2
    assert (second["resumed_from"], second["resumed_phase"]) == (cursor, "s3")
    assert second["this_run"]["blobs_verified"] == 0  # the disks are not walked again
    rest = [sha for sha in objects if sha > cursor]
    assert second["this_run"]["objects_verified"] == len(rest)
    assert second["this_run"]["bytes_read"] == 256 * KIB * len(rest)
    assert second["total"]["blobs_verified"] == 3 and second["s3"]["objects_verified"] == 24
    assert second["s3"]["objects_listed"] == 24
    assert not state.exists()


# ---- on a terminal -----------------------------------------------------------------------------


def test_a_terminal_gets_a_progress_bar_with_rate_and_eta(pair: tuple[Path, Path], config: Path) -> None:
    for d in blobs(8, 512 * KIB):
        store(pair, d)
    code, output = run_on_a_terminal(command(config, "scrub", "--rate", "8M"))
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", output)
    assert code == 0, text
    assert "━" in text and "ETA" in text  # rich's bar, with the time left
    assert "8.0 MiB/8.0 MiB" in text  # the bytes read out of those counted first
    assert "MiB/s" in text
    assert "scrub: 8 blobs verified" in text and "0 problems" in text  # the one-line summary
    assert '"total"' not in text  # no JSON on a terminal unless --json


def test_a_pair_that_takes_no_writes_is_repaired_only_when_asked(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = pair
    config = write_config(tmp_path, pair_config(pair, writable_pairs_regex="^/nowhere"))
    sha = store(pair, os.urandom(20_000))
    layout_path(a, sha).unlink()

    code, report, err = repair(config)
    assert code == 1, err  # found, and left: an operator froze that pair
    assert [(x["action"], x["done"]) for x in report["actions"]] == [("none", False)]
    assert "takes no writes" in report["actions"][0]["detail"]
    assert not layout_path(a, sha).exists()

    code, report, err = repair(config, "--read-only-pairs")
    assert code == 0, err
    assert [(x["action"], x["done"]) for x in report["actions"]] == [("copy", True)]
    assert sha256(layout_path(a, sha).read_bytes()) == sha

    code, _, err = run(config, "--read-only-pairs")  # a scrub changes nothing: the option is refused
    assert code == 2 and "--read-only-pairs: only with --repair" in err
