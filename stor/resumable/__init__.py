"""Uploads taken in pieces over many requests (tus), kept on shared storage until whole."""
