"""Which shas the server has: `POST /exists` in batches, and the `stor exists` command."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator

from stor.client.connection import (
    Connection,
    Failed,
    Retryable,
    Unreachable,
    UsageError,
    check_status,
    transport_reason,
)
from stor.client.report import Reporter

BATCH = 1000  # shas per request: well under the server's default limit (http.exists_max_items, 10,000)
SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def is_sha256(text: str) -> bool:
    return SHA256.fullmatch(text) is not None


def find_present(conn: Connection, shas: list[str]) -> set[str]:
    """The subset of shas (valid, lower case) the server has. A server whose limit is lower than the
    batch (413) is asked in halves. Unreachable when it cannot be asked; UsageError when it refuses
    us (401/403: credentials)."""
    present: set[str] = set()
    pending = [shas[i:i + BATCH] for i in range(0, len(shas), BATCH)]
    while pending:
        batch = pending.pop()
        try:
            answer = conn.attempt("POST /exists", lambda b=batch: _ask(conn, b))  # type: ignore[misc]
        except _TooMany:
            if len(batch) == 1:
                raise Unreachable("the server refuses POST /exists even for one sha (413)") from None
            half = len(batch) // 2
            pending += [batch[:half], batch[half:]]
            continue
        except Failed as e:
            if str(e).startswith(("401", "403")):
                raise UsageError(f"{conn.redacted}/exists: {e}: check --user, $STOR_USER, ~/.netrc") from None
            raise Unreachable(f"{conn.redacted}/exists: {e}") from None
        present.update(answer)
    return present


class _TooMany(Exception):
    pass


def _ask(conn: Connection, batch: list[str]) -> list[str]:
    import h11

    try:
        with conn.getter.request("POST", "/exists", {"Content-Type": "application/json"},
                                 json.dumps(batch).encode()) as answer:
            if answer.status == 413:
                raise _TooMany()
            text = b"".join(answer.pieces()).decode(errors="replace")
    except (OSError, h11.ProtocolError) as e:
        raise Retryable(transport_reason(e), connection=True) from None
    check_status(answer.status, text, answer.headers.get("retry-after"))
    try:
        present = json.loads(text)["present"]
    except (ValueError, KeyError, TypeError):
        raise Failed(f"not a stor server? POST /exists answered {text[:100]!r}") from None
    return [str(s) for s in present]


def read_shas(arguments: list[str], stdin: Iterable[str]) -> Iterator[str]:
    """The shas named, or read one per line from stdin when none is (or `-` is)."""
    for argument in arguments or ["-"]:
        if argument == "-":
            for line in stdin:
                if line.strip():
                    yield line.strip()
        else:
            yield argument


def run_exists(conn: Connection, shas: Iterable[str], report: Reporter) -> dict[str, int]:
    """One line per sha, in the order given: present, missing or invalid."""
    counts = {"present": 0, "missing": 0, "invalid": 0}
    chunk: list[str] = []

    def answer(chunk: list[str]) -> None:
        present = find_present(conn, sorted({s.lower() for s in chunk if is_sha256(s)}))
        for text in chunk:
            status = "invalid" if not is_sha256(text) else "present" if text.lower() in present else "missing"
            counts[status] += 1
            sha = text.lower() if status != "invalid" else text
            report.item({"sha256": sha, "status": status}, f"{sha}  {status}")
        report.flush()  # a batch answered is seen at once, however slowly the rest of the list comes

    for sha in shas:
        chunk.append(sha)
        if len(chunk) == BATCH:
            answer(chunk)
            chunk = []
    if chunk:
        answer(chunk)
    return counts
