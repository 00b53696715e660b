"""The pre-upload hook (tusd's pre-create): an HTTP endpoint asked before an upload is taken, which may refuse it.

It is POSTed a JSON document: {"sha256", "size", "user", "content_type",
"filename", "via" ("blob", "tus", "s3"), "node"}. A 2xx answer accepts the
upload; any other refuses it, and the client gets 403 with the hook's
status and the first line of its answer as the reason. A hook that does
not answer within its timeout (or cannot be reached) accepts or refuses
as on_timeout says, and that is logged. Nothing of a refused upload is
read or stored: the hook is asked before the body.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from stor import __version__
from stor.config import PreUploadHookSettings
from stor.http.text import shown
from stor.metrics import Metrics
from stor.store.metadata import BlobMeta

log = logging.getLogger("stor.events")

MAX_REASON = 200  # characters of the hook's answer passed on to the client


class PreUploadHook:
    def __init__(self, settings: PreUploadHookSettings, node: str, metrics: Metrics) -> None:
        self.settings = settings
        self.node = node
        self.metrics = metrics
        self._client: httpx.AsyncClient | None = None

    async def refusal(self, sha256: str | None, size: int | None, user: str | None, meta: BlobMeta,
                      via: str) -> str | None:
        """Why the hook refuses the upload; None when it accepts it."""
        if self._client is None:  # made on the serving loop, at the first upload
            self._client = httpx.AsyncClient(timeout=self.settings.timeout,
                                             headers={"user-agent": f"stor/{__version__}"})
        document: dict[str, Any] = {"sha256": sha256, "size": size, "user": user, "content_type": meta.content_type,
                                    "filename": meta.filename, "via": via, "node": self.node}
        try:
            answer = await self._client.post(self.settings.url, json=document)
        except httpx.HTTPError as e:
            return self._unanswered(e, sha256)
        if answer.is_success:
            self.metrics.incr("events.hook.accepted.count")
            return None
        self.metrics.incr("events.hook.refused.count")
        said = answer.text.strip().splitlines()[0][:MAX_REASON] if answer.text.strip() else answer.reason_phrase
        log.info("pre-upload hook refused %s (%s, user %s): %d %s", sha256, via, user, answer.status_code,
                 shown(said))
        return f"Refused by the pre-upload hook ({answer.status_code}): {shown(said)}"

    def _unanswered(self, e: httpx.HTTPError, sha256: str | None) -> str | None:
        self.metrics.incr("events.hook.unanswered.count")
        what = f"did not answer within {self.settings.timeout:g} s" if isinstance(e, httpx.TimeoutException) \
            else f"could not be reached ({type(e).__name__})"
        accept = self.settings.on_timeout == "accept"
        log.warning("pre-upload hook %s %s; upload of %s %s", self.settings.url, what, sha256,
                    "accepted (on_timeout: accept)" if accept else "refused (on_timeout: refuse)")
        return None if accept else f"The pre-upload hook {what}; uploads are refused meanwhile"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
