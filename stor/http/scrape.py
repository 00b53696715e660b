"""GET <metrics path>: the Prometheus exposition, all workers summed."""

from __future__ import annotations

from pathlib import Path

from stor import prometheus
from stor.aio import in_thread
from stor.http import reply as replies
from stor.http.reply import Reply
from stor.http.request import Request


class ScrapeEndpoint:
    def __init__(self, storage_dirs: tuple[Path, ...], copy_queue: bool = False) -> None:
        self.storage_dirs = storage_dirs
        self.copy_queue = copy_queue  # whether the S3 copy queue's gauges are shown

    async def scrape(self, request: Request) -> Reply:
        prometheus.DEFERRED.flush()  # this worker's counts are current; the others' at most FLUSH_SECONDS old
        body, content_type = await in_thread(prometheus.render, self.storage_dirs, self.copy_queue)
        return replies.raw(200, body, content_type)
