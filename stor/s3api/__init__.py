"""The S3-compatible API: one bucket (the archive) on a listener of its own, over the same store."""
