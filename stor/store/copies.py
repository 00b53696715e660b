"""The copies of one blob on the local mirrors: each hashed against its sha, and put right when one is not.

examine() looks at every pair holding the blob: each mirror's copy is
missing, good, corrupt (its bytes hash to something else; a mismatch is
read once more, from the disk rather than the page cache, before it
counts: bad RAM gives false alarms), truncated (corrupt and shorter than a
good copy) or unreadable (an I/O error), and each has its sidecar or not.
repair() then, for each such pair, copies a good copy over every missing or
bad one the way every write is made (a temporary file on the target's
filesystem, verified while written, flushed, renamed into place under the
digest's commit lock, the directory flushed), moves each bad copy into the
quarantine first (stor.store.quarantine), restores from the S3 tier
(verified the same way) when no local copy is good, and makes the sidecars
agree (the oldest one wins: it is the one the blob was first stored with).
With no good copy anywhere nothing is touched: bad data never replaces bad
data, and nothing ever removes the last copy of anything.

Blocking throughout: `stor scrub` calls these from its worker threads, the
service's heal queue (stor.store.heal) from the I/O pool.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stor.digest import Digest
from stor.store import tempfiles
from stor.store.base import Missing, StoreError
from stor.store.durable import fsync_dir, make_dirs_durably, write_all, write_file_durably
from stor.store.fileaccess import BLOCKING
from stor.store.metadata import MAX_META_BYTES, meta_relative_path
from stor.store.quarantine import quarantine
from stor.store.verify import HASH_CHUNK, UNPACED, Pacer, hash_fd, read_from_disk

if TYPE_CHECKING:
    from stor.store.local import LocalStore
    from stor.store.s3 import S3Store

log = logging.getLogger("stor.repair")

GOOD = "good"
MISSING = "missing"
CORRUPT = "corrupt"
TRUNCATED = "truncated"
UNREADABLE = "unreadable"
UNCHECKED = "unchecked"  # present, in a storage this run was told not to hash (scrub --storage)
BAD = (CORRUPT, TRUNCATED, UNREADABLE)


@dataclass(frozen=True, slots=True)
class Sidecar:
    data: bytes
    mtime: float


@dataclass(slots=True)
class Copy:
    """One mirror's copy of a blob, as found."""

    storage: Path  # the configured storage directory
    pair: int
    state: str
    size: int | None = None
    actual: str | None = None  # what a bad copy hashes to
    flaky: bool = False  # its first read did not hash to the sha, the re-read from the disk did
    error: str | None = None
    sidecar: Sidecar | None = None


@dataclass(slots=True)
class Examined:
    """Every copy of one blob on the pairs that hold it (both mirrors of each), and the bytes read to know."""

    digest: Digest
    copies: list[Copy] = field(default_factory=list)
    bytes_read: int = 0

    def pairs(self) -> list[int]:
        return sorted({c.pair for c in self.copies})

    def of_pair(self, pair: int) -> list[Copy]:
        return [c for c in self.copies if c.pair == pair]

    def good(self) -> list[Copy]:
        return [c for c in self.copies if c.state == GOOD]


def examine(
    local: LocalStore, digest: Digest, pacer: Pacer = UNPACED, checked: Callable[[Path], bool] | None = None,
    listed: Mapping[Path, tuple[bool, bool]] | None = None,
) -> Examined:
    """Each copy of the blob on each pair holding it, hashed (only in the storages `checked` accepts, if given).

    listed: what a listing of the blob's directory just found in some
    storages (blob there, sidecar there), so that they are not asked again
    (a scrub lists every directory anyway, and for small blobs those
    questions cost more than the hashing). A blob listed but gone since is
    found missing when opened; one not listed is not looked for there.
    """
    examined = Examined(digest)
    rel = digest.relative_path
    meta_rel = meta_relative_path(digest)
    known = listed or {}
    for pair in local.pairs:
        paths = [f"{local.real_path(d)}/{rel}" for d in pair.dirs]
        present = [known[d][0] if d in known else BLOCKING.is_file(p) for d, p in zip(pair.dirs, paths)]
        if not any(present):
            continue
        for directory, path, there in zip(pair.dirs, paths, present):
            copy = Copy(directory, pair.index, MISSING)
            if not there:
                pass
            elif checked is not None and not checked(directory):
                copy.state = UNCHECKED
            else:
                examined.bytes_read += _hash_copy(copy, path, digest, pacer)
            if directory not in known or known[directory][1]:
                copy.sidecar = _sidecar(f"{local.real_path(directory)}/{meta_rel}")
            examined.copies.append(copy)
    sizes = [c.size for c in examined.copies if c.state == GOOD and c.size is not None]
    for c in examined.copies:
        if c.state == CORRUPT and sizes and c.size is not None and c.size < sizes[0]:
            c.state = TRUNCATED
    return examined


def _hash_copy(copy: Copy, path: str, digest: Digest, pacer: Pacer) -> int:
    """Fill in copy's state from the file at path; the bytes read."""
    try:
        fd = BLOCKING.open(path)
    except OSError as e:
        copy.state, copy.error = UNREADABLE, e.strerror or str(e)
        return 0
    if fd is None:
        return 0  # gone since it was seen: missing
    try:
        read_from_disk(fd)
        copy.size = size = os.fstat(fd).st_size
        actual, read = hash_fd(fd, size, pacer)
        if actual != digest.hex:
            log.warning("%s does not hash to its name (it hashes to %s); reading it again from the disk", path, actual)
            actual, again = hash_fd(fd, size, pacer, uncached=True)
            read += again
            if actual == digest.hex:
                copy.flaky = True
                log.warning("%s hashes to its name when read again: the first read was wrong (memory?)", path)
        copy.state = GOOD if actual == digest.hex else CORRUPT
        if copy.state == CORRUPT:
            copy.actual = actual
        return read
    except OSError as e:
        copy.state, copy.error = UNREADABLE, e.strerror or str(e)
        return 0
    finally:
        os.close(fd)


def _sidecar(path: str) -> Sidecar | None:
    try:
        fd = BLOCKING.open(path)
    except OSError:
        return None
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        return Sidecar(os.pread(fd, min(st.st_size, MAX_META_BYTES), 0), st.st_mtime)
    except OSError:
        return None
    finally:
        os.close(fd)


# ---- problems ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with a blob's copies: kind is one of PROBLEM_KINDS."""

    kind: str
    sha: str
    storage: str | None
    detail: str
    pair: int | None = None


ONE_MIRROR_ONLY = "one_mirror_only"
SIDECAR_MISMATCH = "sidecar_mismatch"
FLAKY_READ = "flaky_read"


def problems(examined: Examined) -> list[Problem]:
    """What is wrong with the examined copies, one entry each; none when every copy is good and agrees."""
    found: list[Problem] = []
    sha = examined.digest.hex
    for pair in examined.pairs():
        copies = examined.of_pair(pair)
        present = [c for c in copies if c.state != MISSING]
        for c in copies:
            if c.state == MISSING and len(present) == 1:
                found.append(Problem(ONE_MIRROR_ONLY, sha, str(c.storage), f"only on {present[0].storage}", pair))
            elif c.state in BAD:
                found.append(Problem(c.state, sha, str(c.storage), _badness(c), pair))
            if c.flaky:
                found.append(Problem(FLAKY_READ, sha, str(c.storage), "a first read did not match, the re-read did", pair))
        if present and not _sidecars_agree(present):
            held = ", ".join(f"{c.storage}: {'yes' if c.sidecar else 'none'}" for c in present)
            found.append(Problem(SIDECAR_MISMATCH, sha, None, f"the mirrors' sidecars differ ({held})", pair))
    return found


def _badness(c: Copy) -> str:
    if c.state == UNREADABLE:
        return f"cannot be read: {c.error}"
    what = f"{c.size} bytes, hashing to {c.actual}"
    return f"truncated: {what}" if c.state == TRUNCATED else f"content does not hash to its name: {what}"


def _sidecars_agree(copies: list[Copy]) -> bool:
    return len({c.sidecar.data if c.sidecar else None for c in copies}) == 1


# ---- repair ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Action:
    """What repair did (done), or would do (a dry run), or could not do (error)."""

    action: str  # "copy", "restore" (from S3), "quarantine", "sidecar", "none" (nothing good to repair from)
    sha: str
    storage: str | None
    detail: str
    done: bool
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action, "sha": self.sha, "storage": self.storage, "detail": self.detail,
            "done": self.done, "error": self.error,
        }  # fmt: skip


class S3Source(Protocol):
    """Where a blob no local copy of which is good may be restored from (blocking calls)."""

    name: str

    def has(self, digest: Digest) -> bool: ...

    def copy_to(self, digest: Digest, fd: int) -> str:
        """The object's bytes written to fd; the hex sha of what was written."""

    def sidecar(self, digest: Digest) -> bytes | None:
        """The object's metadata as a sidecar's bytes, if it has any."""


class _SourceBad(Exception):
    """The bytes copied from a source did not hash to the sha: nothing was installed."""


def repair(
    local: LocalStore, examined: Examined, s3: S3Source | None = None, dry_run: bool = False,
    read_only_pairs: bool = False,
) -> list[Action]:
    """Put every pair holding the blob right, as far as a good copy allows; what was done (blocking).

    A pair that takes no writes (writable_pairs_regex) is left as it is
    unless read_only_pairs: an operator may have frozen it for a reason.
    Never raises for one copy's failure: it is an Action with its error, and
    the rest goes on.
    """
    actions: list[Action] = []
    digest = examined.digest
    for pair in examined.pairs():
        copies = examined.of_pair(pair)
        targets = [c for c in copies if c.state == MISSING or c.state in BAD]
        if targets and not read_only_pairs and not local.pairs[pair].writable:
            detail = f"pair {pair} takes no writes (writable_pairs_regex): left as it is"
            actions += [Action("none", digest.hex, str(t.storage), detail, False) for t in targets]
            continue
        winner = _oldest_sidecar(copies)
        if targets:
            actions += _fill(local, digest, examined, pair, targets, winner, s3, dry_run)
        actions += _agree(local, digest, copies, targets, winner, dry_run)
    for a in actions:
        if a.error is not None:
            log.error("repair of %s: %s on %s failed: %s (%s)", a.sha, a.action, a.storage, a.error, a.detail)
        elif a.done:
            log.warning("repair of %s: %s on %s: %s", a.sha, a.action, a.storage, a.detail)
    return actions


def _fill(
    local: LocalStore, digest: Digest, examined: Examined, pair: int, targets: list[Copy], winner: Sidecar | None,
    s3: S3Source | None, dry_run: bool,
) -> list[Action]:
    """Good bytes over each target copy (missing or bad) of one pair, from a local copy or else from S3."""
    # This pair's good copies first, then another pair's; one not hashed by this run only as a
    # last resort (the copy hashes it on the way, and refuses it if it does not match).
    sources = sorted(
        (c for c in examined.copies if c.state in (GOOD, UNCHECKED)),
        key=lambda c: (c.state != GOOD, c.pair != pair),
    )
    actions: list[Action] = []
    sha = digest.hex
    from_s3 = not sources and s3 is not None and _has(s3, digest)
    if not sources and not from_s3:
        where = f" or in {s3.name}" if s3 is not None else ""
        return [
            Action("none", sha, str(t.storage), f"no good copy of {sha} on any storage{where}: the copy is left as it is",
                   False)
            for t in targets
        ]
    if from_s3:
        assert s3 is not None
        origin = s3.name
        if winner is None:
            data = s3.sidecar(digest)
            winner = Sidecar(data, 0.0) if data else None
    else:
        origin = str(sources[0].storage)
    what = "restore" if from_s3 else "copy"
    for target in targets:
        detail = f"{'missing' if target.state == MISSING else target.state} copy replaced from {origin}"
        if dry_run:
            if target.state in BAD:
                actions.append(Action("quarantine", sha, str(target.storage), f"{target.state} copy moved aside", False))
            actions.append(Action(what, sha, str(target.storage), detail, False))
            continue
        try:
            quarantined = _install(local, digest, target, sources, s3 if from_s3 else None, winner)
        except Exception as e:  # one copy's failure is reported; the others are still tried
            actions.append(Action(what, sha, str(target.storage), detail, False, _reason(e)))
            continue
        if quarantined is not None:
            actions.append(Action("quarantine", sha, str(target.storage), f"{target.state} copy moved to {quarantined}",
                                  True))
        actions.append(Action(what, sha, str(target.storage), detail, True))
        if winner is not None and target.sidecar is not None and target.sidecar.data != winner.data:
            actions.append(Action("sidecar", sha, str(target.storage), _kept(_holder(examined.copies, winner)), True))
    return actions


def _install(
    local: LocalStore, digest: Digest, target: Copy, sources: list[Copy], s3: S3Source | None, sidecar: Sidecar | None,
) -> str | None:
    """A verified copy at target's place, as every write is made; the quarantine path of the copy it replaced."""
    root = local.real_path(target.storage)
    fd, tmp = tempfiles.create_locked(Path(root))
    try:
        actual = s3.copy_to(digest, fd) if s3 is not None else _copy_from(local, digest, sources, fd)
        if actual != digest.hex:
            raise _SourceBad(f"the source's bytes hash to {actual}")
        os.fsync(fd)
        final = f"{root}/{digest.relative_path}"
        roots = [local.real_path(d) for d in local.dirs]
        with tempfiles.digest_lock(roots, digest.hex):
            # Under the commit lock no upload or other repair changes the copy: the state found holds,
            # except that a missing one may have been completed since (an upload of it, meanwhile).
            if target.state == MISSING and BLOCKING.is_file(final):
                return None
            make_dirs_durably(os.path.dirname(final), root)
            if sidecar is not None:
                write_file_durably(Path(root), Path(f"{root}/{meta_relative_path(digest)}"), sidecar.data)
            moved = None
            if target.state != MISSING and os.path.lexists(final):
                moved = quarantine(root, final, f"{target.state}: {_badness(target)}")
            os.rename(tmp, final)
            fsync_dir(os.path.dirname(final))
            return moved
    finally:
        os.close(fd)
        tempfiles.remove(tmp)  # gone already once renamed into place


def _copy_from(local: LocalStore, digest: Digest, sources: list[Copy], fd: int) -> str:
    """The first source that reads whole and hashes to the sha, copied to fd; the sha of the last one tried."""
    actual = "nothing readable"
    for source in sources:
        os.ftruncate(fd, 0)
        try:
            actual = _copy_file(f"{local.real_path(source.storage)}/{digest.relative_path}", fd)
        except OSError as e:
            log.warning("cannot copy %s from %s: %s", digest, source.storage, e)
            continue
        if actual == digest.hex:
            return actual
    return actual


def _copy_file(path: str, out: int) -> str:
    src = BLOCKING.open(path)
    if src is None:
        raise FileNotFoundError(path)
    hasher = hashlib.sha256()
    offset = 0
    try:
        while chunk := os.pread(src, HASH_CHUNK, offset):
            hasher.update(chunk)
            os.pwrite(out, chunk, offset)
            offset += len(chunk)
    finally:
        os.close(src)
    return hasher.hexdigest()


def _oldest_sidecar(copies: list[Copy]) -> Sidecar | None:
    held = [c.sidecar for c in copies if c.sidecar is not None]
    return min(held, key=lambda s: s.mtime) if held else None


def _agree(
    local: LocalStore, digest: Digest, copies: list[Copy], filled: list[Copy], winner: Sidecar | None, dry_run: bool
) -> list[Action]:
    """The oldest sidecar on every mirror of the pair that has the blob and another one (or none)."""
    present = [c for c in copies if c.state != MISSING]
    if winner is None or (_sidecars_agree(present) and len(present) == len(copies)):
        return []
    holder = _holder(copies, winner)
    actions = []
    for c in copies:
        if c is holder or c in filled or c.state == MISSING or (c.sidecar is not None and c.sidecar.data == winner.data):
            continue  # a copy just filled got the winner with its blob; a missing one has no blob to go with
        detail = _kept(holder)
        if dry_run:
            actions.append(Action("sidecar", digest.hex, str(c.storage), detail, False))
            continue
        root = local.real_path(c.storage)
        path = f"{root}/{meta_relative_path(digest)}"
        try:
            write_file_durably(Path(root), Path(path), winner.data)
            fsync_dir(os.path.dirname(path))
        except OSError as e:
            actions.append(Action("sidecar", digest.hex, str(c.storage), detail, False, _reason(e)))
            continue
        actions.append(Action("sidecar", digest.hex, str(c.storage), detail, True))
    return actions


def _holder(copies: list[Copy], sidecar: Sidecar) -> Copy | None:
    """The copy holding that sidecar (None: it came from S3)."""
    return next((c for c in copies if c.sidecar is sidecar), None)


def _kept(holder: Copy | None) -> str:
    if holder is None or holder.sidecar is None:
        return "sidecar set to the S3 object's metadata"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(holder.sidecar.mtime))
    return f"sidecar set to that of {holder.storage} (the older one, from {when})"


def _has(s3: S3Source, digest: Digest) -> bool:
    try:
        return s3.has(digest)
    except Exception as e:
        log.warning("cannot ask %s for %s: %s", s3.name, digest, e)
        return False


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}" + (f": {e.filename}" if e.filename else "")
    return str(e) or type(e).__name__


# ---- the S3 tier as a source -------------------------------------------------------------------


class BucketSource:
    """The S3 tier's bucket, called from a worker thread: each call runs on the event loop the S3 client lives on."""

    def __init__(self, bucket: S3Store, loop: asyncio.AbstractEventLoop) -> None:
        self.bucket = bucket
        self.loop = loop
        self.name = f"s3://{bucket.bucket}"

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def has(self, digest: Digest) -> bool:
        return not isinstance(self._run(self.bucket.head(digest)), Missing)

    def sidecar(self, digest: Digest) -> bytes | None:
        info = self._run(self.bucket.head(digest))
        return None if isinstance(info, Missing) or not info.meta else info.meta.to_json()

    def copy_to(self, digest: Digest, fd: int) -> str:
        return str(self._run(self._copy(digest, fd)))

    async def _copy(self, digest: Digest, fd: int) -> str:
        from stor.aio import in_thread

        opened = await self.bucket.open(digest)
        if isinstance(opened, Missing):
            raise StoreError(f"{digest} is no longer in {self.name}")
        hasher = hashlib.sha256()
        try:
            async for chunk in opened.body:  # type: ignore[union-attr]
                await in_thread(_absorb, hasher, fd, chunk)
        finally:
            opened.close()
        return hasher.hexdigest()


def _absorb(hasher: Any, fd: int, chunk: bytes) -> None:
    hasher.update(chunk)
    write_all(fd, chunk)
