"""What a run shows: a line per item and a summary, with progress bars on a terminal.

Two audiences. A person at a terminal gets a text line per finished item,
printed above rich's live progress bars (one per transfer in flight and a
total), so lines are never garbled by a bar. A pipeline (stdout not a
terminal, or --json) gets JSON lines, one object per item, flushed as each
finishes, and a last `{"summary": {...}}` line; no bars, nothing else on
stdout. Items are reported from the run's main thread; transfers are
advanced from the workers. The terminal's side is stor/client/terminal.py.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Protocol


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


def reporter(as_json: bool, title: str, noun: str) -> Reporter:
    """JSON lines when asked or when stdout is not a terminal; bars and text on one."""
    if as_json or not sys.stdout.isatty():
        return JsonReporter()
    from stor.client.terminal import TerminalReporter  # rich, only for a terminal

    return TerminalReporter(title, noun)


def run_summary(counts: dict[str, int], transferred: tuple[str, int], started: float, interrupted: bool,
                not_done: int, text: str) -> tuple[dict[str, Any], str]:
    """A run's summary: its counts, bytes moved, time, and whether a signal stopped it (then the text
    says how much is left and how to finish)."""
    seconds = time.monotonic() - started
    record = {**counts, transferred[0]: transferred[1], "seconds": round(seconds, 3), "interrupted": interrupted,
              "not_done": not_done}
    text = f"{text} in {seconds:.1f} s"
    if interrupted:
        text = f"interrupted: {text}; {not_done} not done (run the same command again to finish)"
    return record, text


def size_text(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes} B"
