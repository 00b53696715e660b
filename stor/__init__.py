"""stor: a content-addressed (SHA-256) blob service over mirrored storage pairs."""

__version__ = "2.0.0"
