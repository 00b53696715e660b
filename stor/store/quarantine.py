"""Where a bad copy goes instead of being deleted: `<storage>/.stor-quarantine/`, on the blob's own filesystem.

A copy found corrupt, a blob in the wrong directory, a file that does not
belong: repair moves it here (a rename, so nothing is copied and nothing is
lost), with a note beside it saying where it was, why, and when. The
operator looks, and deletes what is really garbage; stor never does. Reads
and the sweep never look here.
"""

from __future__ import annotations

import json
import os
import time

from stor.store.durable import fsync_dir, write_all

QUARANTINE_DIR_NAME = ".stor-quarantine"
NOTE_SUFFIX = ".why.json"


def quarantine_dir(root: str) -> str:
    return f"{root}/{QUARANTINE_DIR_NAME}"


def quarantine(root: str, path: str, reason: str) -> str:
    """Move path (below root) into root's quarantine; its new path (blocking).

    Named `<UTC time>-<name>` (and a counter when that is taken), so that a
    copy quarantined twice keeps both, and sorted by when they came. The note
    is written first: a crash between leaves a note without a file, never a
    file without a note.
    """
    directory = quarantine_dir(root)
    try:
        os.mkdir(directory, 0o755)
    except FileExistsError:
        if os.path.islink(directory):
            raise OSError(f"{directory} is a symbolic link; nothing is moved through it") from None
    else:
        fsync_dir(root)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = f"{directory}/{stamp}-{os.path.basename(path)}"
    target, n = base, 1
    while os.path.lexists(target) or os.path.lexists(target + NOTE_SUFFIX):
        n += 1
        target = f"{base}.{n}"
    note = {"from": path[len(root) + 1 :] if path.startswith(root + "/") else path, "reason": reason, "time": stamp}
    fd = os.open(target + NOTE_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, json.dumps(note).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(path, target)
    fsync_dir(directory)
    fsync_dir(os.path.dirname(path))
    return target
