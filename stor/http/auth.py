"""HTTP Basic credentials for writes, compared in constant time and never logged."""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets

GENERATED_USER = "stor"


def generate_credentials() -> str:
    return f"{GENERATED_USER}:{secrets.token_urlsafe(18)}"


class BasicAuth:
    def __init__(self, credentials: str | None) -> None:
        # None: no writer is configured, so every write is refused.
        self._expected = credentials.encode("utf-8") if credentials is not None else None

    def __repr__(self) -> str:
        return "BasicAuth(<hidden>)"

    def allows(self, authorization: str | None) -> bool:
        if self._expected is None or not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._expected)
