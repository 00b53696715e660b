"""What an uploader said about a blob besides its bytes: its media type, original filename, and user metadata.

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
    # The S3 API's x-amz-meta-* pairs (lower-case names without the prefix; "filename" is the field above),
    # in the order given.
    user: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return self.content_type is not None or self.filename is not None or bool(self.user)

    def to_json(self) -> bytes:
        fields: dict[str, object] = {"content_type": self.content_type, "filename": self.filename}
        if self.user:
            fields["user"] = dict(self.user)
        return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BlobMeta:
        try:
            fields = json.loads(data)
        except ValueError:
            return cls()  # a damaged sidecar must not make the blob unreadable
        if not isinstance(fields, dict):
            return cls()
        content_type, filename, user = fields.get("content_type"), fields.get("filename"), fields.get("user")
        return cls(
            content_type if isinstance(content_type, str) else None,
            filename if isinstance(filename, str) else None,
            tuple((k, v) for k, v in user.items() if isinstance(v, str)) if isinstance(user, dict) else (),
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
