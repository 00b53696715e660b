"""An event: what happened to which blob, when, where; the JSON document every destination receives."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    event: str  # one of stor.config.EVENT_NAMES
    sha256: str
    size: int | None
    node: str
    time: float = field(default_factory=time.time)
    detail: dict[str, Any] = field(default_factory=dict)  # what else the event knows (an upload's id, a reason)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"event": self.event, "sha256": self.sha256, "size": self.size,
                               "time": round(self.time, 3), "node": self.node}
        doc.update(self.detail)
        return json.dumps(doc, separators=(",", ":")).encode()
