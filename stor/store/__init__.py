"""The storage domain: where blobs live, how they are written and found. Knows nothing of HTTP."""
