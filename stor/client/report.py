"""What a run shows: a line per item and a summary, with progress bars on a terminal.

Two audiences. A person at a terminal gets a text line per finished item,
printed above rich's live progress bars (one per transfer in flight and a
total), so lines are never garbled by a bar. A pipeline (stdout not a
terminal, or --json) gets JSON lines, one object per item, flushed as each
finishes, and a last `{"summary": {...}}` line; no bars, nothing else on
stdout. Items are reported from the run's main thread; transfers are
advanced from the workers (rich's Progress takes a lock).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

NAME_WIDTH = 40


class Transfer(Protocol):
    def advance(self, nbytes: int) -> None: ...
    def resize(self, total: int) -> None: ...
    def restart(self) -> None: ...
    def done(self) -> None: ...


class Reporter(Protocol):
    def item(self, record: dict[str, Any], text: str) -> None: ...
    def transfer(self, verb: str, name: str, total: int | None) -> Transfer: ...
    def found(self, items: int, nbytes: int) -> None: ...
    def finished(self, items: int, nbytes: int) -> None: ...
    def summary(self, record: dict[str, Any], text: str) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class _NoTransfer:
    def advance(self, nbytes: int) -> None:
        pass

    def resize(self, total: int) -> None:
        pass

    def restart(self) -> None:
        pass

    def done(self) -> None:
        pass


NO_TRANSFER = _NoTransfer()


class JsonReporter:
    """JSON lines on stdout: one per item, then the summary."""

    def __init__(self) -> None:
        self.out = sys.stdout

    def _write(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        """Called whenever the run is about to wait: a reader of the pipe sees each item once it is
        done, without a write per item while items finish faster than they can be read."""
        self.out.flush()

    def item(self, record: dict[str, Any], text: str) -> None:
        self._write(record)

    def transfer(self, verb: str, name: str, total: int | None) -> Transfer:
        return NO_TRANSFER

    def found(self, items: int, nbytes: int) -> None:
        pass

    def finished(self, items: int, nbytes: int) -> None:
        pass

    def summary(self, record: dict[str, Any], text: str) -> None:
        self._write({"summary": record})
        self.flush()

    def close(self) -> None:
        pass


class _Files(ProgressColumn):
    """`items done/found` for the total bar, blank for a transfer."""

    def render(self, task: Task) -> Text:
        if "items" not in task.fields:
            return Text("")
        return Text(f"{task.fields['done_items']}/{task.fields['items']} {task.fields['noun']}", style="cyan")


class _BarTransfer:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress, self.task = progress, task

    def advance(self, nbytes: int) -> None:
        self.progress.advance(self.task, nbytes)

    def resize(self, total: int) -> None:
        self.progress.update(self.task, total=total)

    def restart(self) -> None:
        self.progress.reset(self.task)

    def done(self) -> None:
        self.progress.remove_task(self.task)


class TerminalReporter:
    """Text lines above live bars: each transfer in flight (bytes, rate, ETA) and the total."""

    def __init__(self, title: str, noun: str) -> None:
        self.console = Console(file=sys.stdout, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(bar_width=None),
            _Files(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,  # the bars go when the run ends; the lines and the summary stay
            expand=True,
            refresh_per_second=8,
        )
        self.total = self.progress.add_task(title.ljust(NAME_WIDTH), total=0, items=0, done_items=0, noun=noun)
        self.progress.start()

    def item(self, record: dict[str, Any], text: str) -> None:
        style = "red" if record.get("status") == "failed" else None
        self.progress.console.print(text, markup=False, style=style, soft_wrap=True)

    def transfer(self, verb: str, name: str, total: int | None) -> Transfer:
        """A bar "<verb> <name>", the name cut at its start (a path's end is what tells files apart)."""
        width = NAME_WIDTH - len(verb) - 1
        if len(name) > width:
            name = "…" + name[-(width - 1):]
        description = f"{verb} {name}".ljust(NAME_WIDTH)
        return _BarTransfer(self.progress, self.progress.add_task(description, total=total))

    def found(self, items: int, nbytes: int) -> None:
        task = self.progress.tasks[self._index()]
        self.progress.update(self.total, total=(task.total or 0) + nbytes, items=task.fields["items"] + items)

    def finished(self, items: int, nbytes: int) -> None:
        task = self.progress.tasks[self._index()]
        self.progress.update(self.total, advance=nbytes, done_items=task.fields["done_items"] + items)

    def _index(self) -> int:
        return next(i for i, t in enumerate(self.progress.tasks) if t.id == self.total)

    def summary(self, record: dict[str, Any], text: str) -> None:
        self.close()
        self.console.print(text, markup=False, style="bold")

    def flush(self) -> None:
        pass  # each line is printed at once, above the bars

    def close(self) -> None:
        self.progress.stop()


def reporter(as_json: bool, title: str, noun: str) -> Reporter:
    """JSON lines when asked or when stdout is not a terminal; bars and text on one."""
    if as_json or not sys.stdout.isatty():
        return JsonReporter()
    return TerminalReporter(title, noun)


def size_text(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes} B"
