"""`stor s3-backfill` against a real SeaweedFS: only the missing copied, resumable, corrupt blobs refused, a bar on a terminal.

Every run is the real command (`python -m stor s3-backfill`) in a child process, over blobs left in a
pair of directories in the original layout, as an existing archive has them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import STOR_DIR, child_env, free_port, layout_path, pair_config, run_on_a_terminal, wait_for
from seaweed import SeaweedFS
from test_s3_tier import key_of, store_locally

MIB = 1024 * 1024
STATE_NAME = ".stor-s3-backfill.json"


def blobs(n: int, size: int = 200, tag: bytes = b"") -> list[bytes]:
    return [tag + i.to_bytes(4, "big") + os.urandom(size) for i in range(n)]


def write_config(tmp_path: Path, mirrors: tuple[Path, Path], weed: SeaweedFS | None, bucket: str | None,
                 host: str | None = None) -> Path:
    config: dict[str, Any] = pair_config(mirrors)
    if weed is not None:
        config.update(
            s3_enabled=True,
            s3_credentials={"access_key": weed.access_key, "secret_key": weed.secret_key, "host": host or weed.host},
            s3={"bucket": bucket},
        )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "stor", "s3-backfill", "--config", str(config), *args]


def backfill(config: Path, *args: str) -> tuple[int, dict[str, Any] | None, str]:
    """Run it to the end: its exit code, its JSON summary (None if stdout held none), its stderr."""
    done = subprocess.run(command(config, "--json", *args), capture_output=True, timeout=60, cwd=STOR_DIR, env=child_env())
    out = done.stdout.decode().strip()
    return done.returncode, json.loads(out) if out else None, done.stderr.decode()


def object_bytes(weed: SeaweedFS, bucket: str, sha: str) -> bytes | None:
    client = weed.client()
    try:
        return bytes(client.get_object(Bucket=bucket, Key=key_of(sha))["Body"].read())
    except client.exceptions.NoSuchKey:
        return None


def keys(weed: SeaweedFS, bucket: str) -> set[str]:
    found: set[str] = set()
    for page in weed.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        found.update(o["Key"] for o in page.get("Contents", ()))
    return found


def saved_cursor(state: Path) -> str | None:
    try:
        return str(json.loads(state.read_text())["cursor"])
    except FileNotFoundError:
        return None


def test_copies_only_the_missing_verbatim_and_a_rerun_copies_nothing(
    tmp_path: Path, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    data = {store_locally(mirrors, d): d for d in blobs(12)}
    big = os.urandom(9 * MIB)  # above s3.part_bytes (8 MiB): a multipart upload
    data[store_locally(mirrors, big)] = big
    client = seaweed.client()
    already = sorted(data)[::3]
    for sha in already:  # as a node in local+s3 mode would have copied them; marked, to see they are left alone
        client.put_object(Bucket=s3_bucket, Key=key_of(sha), Body=data[sha], Metadata={"marker": "before"})
    missing = [sha for sha in data if sha not in already]
    config = write_config(tmp_path, mirrors, seaweed, s3_bucket)

    code, summary, err = backfill(config)
    assert code == 0, err
    assert summary is not None
    assert summary["checked"] == len(data)
    assert summary["present"] == len(already)
    assert summary["copied"] == len(missing)
    assert summary["copied_bytes"] == sum(len(data[sha]) for sha in missing)
    assert (summary["failed"], summary["failures"], summary["resumed_from"]) == (0, [], None)
    assert summary["seconds"] > 0
    assert keys(seaweed, s3_bucket) == {key_of(sha) for sha in data}
    for sha, body in data.items():
        assert object_bytes(seaweed, s3_bucket, sha) == body
    for sha in already:
        assert client.head_object(Bucket=s3_bucket, Key=key_of(sha))["Metadata"] == {"marker": "before"}
    assert not (mirrors[0] / STATE_NAME).exists()  # a clean run leaves no state
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads") is None

    code, summary, err = backfill(config)
    assert code == 0, err
    assert summary is not None
    assert (summary["checked"], summary["present"], summary["copied"], summary["failed"]) == (len(data), len(data), 0, 0)
    assert summary["resumed_from"] is None


def test_sigint_stops_with_a_cursor_and_a_rerun_continues_after_it(
    tmp_path: Path, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    shas = sorted(store_locally(mirrors, d) for d in blobs(300, 50))
    config = write_config(tmp_path, mirrors, seaweed, s3_bucket)
    state = mirrors[0] / STATE_NAME
    # One copy at a time, small batches: the first cursor is saved long before the 300 copies are done.
    run = subprocess.Popen(
        command(config, "--json", "-j", "1", "--batch", "20"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=STOR_DIR, env=child_env(),
    )
    try:
        wait_for(lambda: saved_cursor(state) is not None or run.poll() is not None, timeout=30, what="a saved cursor")
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, f"not stopped part way (exit {run.returncode}):\n{err.decode()}"
    first = json.loads(out)
    cursor = first["cursor"]
    assert first["stopped"] == "SIGINT" and first["complete"] is False
    assert cursor in shas and saved_cursor(state) == cursor
    assert 20 <= first["copied"] < len(shas)
    assert first["checked"] == first["present"] + first["copied"] + first["failed"] + first["pending"]
    assert "SIGINT" in err.decode()
    for sha in shas[: shas.index(cursor) + 1]:  # everything up to the cursor is in the bucket
        assert object_bytes(seaweed, s3_bucket, sha) is not None, sha
    assert list(state.parent.glob(f"{STATE_NAME}.*")) == []  # no temporary state file left

    code, second, err2 = backfill(config)
    assert code == 0, err2
    assert second is not None
    after = [sha for sha in shas if sha > cursor]
    assert second["resumed_from"] == cursor
    assert second["checked"] == len(after)  # nothing before the cursor looked up again
    assert second["present"] + second["copied"] == len(after)
    assert first["copied"] + second["copied"] == len(shas)  # each blob copied once over both runs
    assert f"after {cursor}" in err2
    assert keys(seaweed, s3_bucket) == {key_of(sha) for sha in shas}
    assert not state.exists()


def test_a_kill_9_keeps_the_saved_cursor_and_restart_checks_everything(
    tmp_path: Path, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    shas = sorted(store_locally(mirrors, d) for d in blobs(200, 50, b"k9"))
    config = write_config(tmp_path, mirrors, seaweed, s3_bucket)
    state = mirrors[0] / STATE_NAME
    run = subprocess.Popen(
        command(config, "--json", "-j", "1", "--batch", "10"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=STOR_DIR, env=child_env(),
    )
    try:
        wait_for(lambda: saved_cursor(state) is not None or run.poll() is not None, timeout=30, what="a saved cursor")
    finally:
        run.kill()
        run.wait()
    assert run.returncode == -signal.SIGKILL, "finished before it could be killed"
    cursor = saved_cursor(state)  # fsynced and renamed whole: readable after the crash
    assert cursor in shas

    code, second, err = backfill(config)
    assert code == 0, err
    assert second is not None
    after = [sha for sha in shas if sha > cursor]
    assert (second["resumed_from"], second["checked"]) == (cursor, len(after))
    assert second["present"] + second["copied"] == len(after)
    assert keys(seaweed, s3_bucket) == {key_of(sha) for sha in shas}
    assert list(state.parent.glob(f"{STATE_NAME}*")) == []

    state.write_text(json.dumps({"version": 1, "bucket": s3_bucket, "endpoint": seaweed.endpoint, "cursor": shas[-1]}))
    code, third, err = backfill(config, "--restart")
    assert code == 0, err
    assert third is not None
    assert (third["resumed_from"], third["checked"], third["present"], third["copied"]) == (None, len(shas), len(shas), 0)


def test_a_corrupt_local_blob_is_reported_failed_and_not_uploaded(
    tmp_path: Path, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    good = [store_locally(mirrors, d) for d in blobs(6)]
    corrupt = [store_locally(mirrors, d) for d in (b"small and soon wrong " * 10, os.urandom(9 * MIB))]
    for sha in corrupt:  # bytes changed on disk (bit rot), on both mirrors: no good local copy is left
        for root in mirrors:
            with open(layout_path(root, sha), "r+b") as f:
                f.seek(7)
                f.write(b"\xff")
    config = write_config(tmp_path, mirrors, seaweed, s3_bucket)

    code, summary, err = backfill(config)
    assert code == 1, err
    assert summary is not None
    assert (summary["checked"], summary["copied"], summary["failed"]) == (8, 6, 2)
    assert summary["complete"] is False
    assert sorted(f["sha"] for f in summary["failures"]) == sorted(corrupt)
    for failure in summary["failures"]:
        assert "does not hash to its name" in failure["error"]
        assert failure["sha"] in err  # logged, with the reason
    assert "does not hash to its name" in err
    for sha in corrupt:
        assert object_bytes(seaweed, s3_bucket, sha) is None
    assert keys(seaweed, s3_bucket) == {key_of(sha) for sha in good}
    assert seaweed.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads") is None  # the big one aborted
    # The cursor stays before the first failure, so that a rerun tries it again.
    cursor = saved_cursor(mirrors[0] / STATE_NAME)
    assert summary["cursor"] == cursor
    assert cursor is None or cursor < min(corrupt)


def test_without_an_s3_tier_or_a_reachable_s3_it_cannot_run(
    tmp_path: Path, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    store_locally(mirrors, b"a blob")
    code, summary, err = backfill(write_config(tmp_path, mirrors, None, None))
    assert (code, summary) == (2, None)
    assert err.strip().count("\n") == 0 and "no S3 tier configured" in err

    code, summary, err = backfill(write_config(tmp_path, mirrors, seaweed, s3_bucket, host=f"127.0.0.1:{free_port()}"))
    assert (code, summary) == (2, None)
    assert err.strip().count("\n") == 0 and f"cannot use bucket {s3_bucket}" in err

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, summary, err = backfill(bad)
    assert (code, summary) == (2, None)
    assert "bad JSON" in err
    assert not (mirrors[0] / STATE_NAME).exists()


def test_a_terminal_gets_a_progress_bar_and_a_one_line_summary(
    tmp_path: Path, mirrors: tuple[Path, Path], seaweed: SeaweedFS, s3_bucket: str
) -> None:
    for d in blobs(5):
        store_locally(mirrors, d)
    config = write_config(tmp_path, mirrors, seaweed, s3_bucket)
    code, text = run_on_a_terminal(command(config))
    assert code == 0, text
    assert "━" in text  # rich's bar
    assert "checked 5/5" in text and "copied 5" in text and "blobs/s" in text
    assert "s3-backfill: checked 5 blobs" in text and "5 copied" in text  # the one-line summary
    assert '"checked"' not in text  # no JSON on a terminal unless --json
    assert len(keys(seaweed, s3_bucket)) == 5
