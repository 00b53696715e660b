"""The terminal's reporter: text lines above rich's live bars, one per transfer in flight and a total.

rich's Progress takes a lock, so workers advance their bars from their own
threads; lines are printed through its console, above the bars, so a bar
never cuts a line.
"""

from __future__ import annotations

import sys
from typing import Any

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

from stor.client.report import Transfer

NAME_WIDTH = 40


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
