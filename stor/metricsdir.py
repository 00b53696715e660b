"""The directory `stor serve --workers N` makes for prometheus-client's multiprocess mode, and its end.

Each worker counts into files of its own there; it must go away with the
service however the service ends:

- a graceful stop: the supervisor lets go of it after its workers stopped (stor/cli.py);
- a supervisor killed outright (kill -9, the OOM killer): its workers get SIGTERM
  (PR_SET_PDEATHSIG, stor/workers.py) and stop, and the last of them to stop removes it;
- every process of the service killed outright at once (kill -9 of the group): nobody is
  left to, and the next `stor serve` that makes such a directory sweeps it at start.

Who is last is told by a lock, not by pids (a pid is reused, and workers stop at the
same moment): every process of the service holds a shared flock of the directory's LOCK
file while it runs. One that stops lets go of its own, then asks for an exclusive lock
without waiting, which it gets only if no other holder is left: then it removes the
directory. The kernel drops a dead process's lock, so a directory whose lock anybody can
take exclusively belongs to no live process: the sweep removes exactly those. The
supervisor holds it too, so no worker removes the directory while the supervisor lives
(a worker that dies and is replaced).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile

ENV = "PROMETHEUS_MULTIPROC_DIR"  # where prometheus-client finds it
PREFIX = "stor-metrics-"
LOCK = ".lock"  # prometheus-client reads *.db files only


class Held:
    """This process's hold on a directory (none when path is None or no stor made it: an operator's own)."""

    def __init__(self, path: str | None, fd: int | None = None) -> None:
        self.path = path
        self.fd = fd
        if fd is None and path is not None:
            try:
                fd = os.open(os.path.join(path, LOCK), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return  # no LOCK: not a directory stor made, or removed already
            fcntl.flock(fd, fcntl.LOCK_SH)
            self.fd = fd

    def release(self) -> None:
        """Let go; the last holder removes the directory. Once, then a no-op."""
        fd, self.fd = self.fd, None
        if fd is None or self.path is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # another process of the service holds it: the last one removes it
        finally:
            os.close(fd)
        shutil.rmtree(self.path, ignore_errors=True)


def create() -> Held:
    """A new directory, held by this process; directories of services all gone are swept first."""
    sweep()
    path = tempfile.mkdtemp(prefix=PREFIX)
    # Locked before it takes its name, so that a sweep never finds a new directory's lock free.
    fd = os.open(os.path.join(path, LOCK + ".new"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.rename(os.path.join(path, LOCK + ".new"), os.path.join(path, LOCK))
    return Held(path, fd)


def sweep() -> None:
    """Remove the directories in the temporary directory that no live stor process holds."""
    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(PREFIX)]
    except OSError:
        return
    for name in names:
        path = os.path.join(root, name)
        try:
            fd = os.open(os.path.join(path, LOCK), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # no lock (not made this way), or another user's
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: a service is running
        else:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
