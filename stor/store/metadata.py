"""What an uploader said about a blob besides its bytes: its media type and original filename.

Kept in a sidecar `<SHA>.meta` (JSON) beside the `.dat` on each mirror, so
the blob's bytes, name and identity stay exactly those of the original
layout, which ignores the sidecar.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from stor.digest import Digest
from stor.store.fileaccess import FileAccess

META_SUFFIX = ".meta"
MAX_META_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class BlobMeta:
    content_type: str | None = None
    filename: str | None = None

    def __bool__(self) -> bool:
        return self.content_type is not None or self.filename is not None

    def to_json(self) -> bytes:
        fields = {"content_type": self.content_type, "filename": self.filename}
        return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BlobMeta:
        try:
            fields = json.loads(data)
        except ValueError:
            return cls()  # a damaged sidecar must not make the blob unreadable
        if not isinstance(fields, dict):
            return cls()
        content_type, filename = fields.get("content_type"), fields.get("filename")
        return cls(
            content_type if isinstance(content_type, str) else None,
            filename if isinstance(filename, str) else None,
        )


def meta_relative_path(digest: Digest) -> str:
    return digest.relative_path[: -len(".dat")] + META_SUFFIX


def read_meta(path: str, files: FileAccess) -> BlobMeta:
    """The sidecar at path, or empty metadata when there is none (or only a symlink: see stor.store.fileaccess)."""
    fd = files.open(path)
    if fd is None:
        return NO_META
    try:
        return BlobMeta.from_json(files.pread(fd, min(os.fstat(fd).st_size, MAX_META_BYTES), 0))
    finally:
        os.close(fd)


NO_META = BlobMeta()
