"""Committing staged bytes (stor.store.base.StagedBytes) by copying them: for backends that cannot take the files.

The bytes are read back and written to the upload like any client's, so the
backend hashes and verifies them as it does every write.
"""

from __future__ import annotations

import os

from stor.aio import in_thread
from stor.store.base import StagedBytes, Stored, StoreError, Upload, UploadLayer

# Staged bytes are read back in pieces of this size.
COPY_PIECE = 8 << 20


class StagedCopy(UploadLayer):
    """An upload whose commit first writes the staged bytes to it (the first of the files: they are alike)."""

    def __init__(self, upload: Upload, staged: StagedBytes) -> None:
        super().__init__(upload)
        self.staged = staged

    async def write(self, chunk: bytes) -> None:
        raise StoreError("an upload of staged bytes takes no other bytes")

    async def commit(self) -> Stored:
        try:
            await self._copy()
        except BaseException:
            await self.inner.abort()
            raise
        return await self.inner.commit()

    async def _copy(self) -> None:
        fd = await in_thread(os.open, self.staged.paths[0], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            position, length = 0, self.staged.length
            while position < length:
                piece = await in_thread(os.pread, fd, min(COPY_PIECE, length - position), position)
                if not piece:
                    raise StoreError(f"{self.staged.paths[0]} ends at {position} of its {length} bytes")
                await self.inner.write(piece)
                position += len(piece)
        finally:
            os.close(fd)
