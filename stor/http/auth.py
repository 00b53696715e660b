"""HTTP Basic credentials: who is asking, and may they read or write.

The original's single `basic_auth` string is one writer, compared in
constant time. Other users have bcrypt hashes (config or htpasswd files).
bcrypt is slow on purpose, so a password that checked out is remembered for a
minute, keyed by an HMAC under a per-process random key (never the password
itself), and the check runs in a thread. Nothing here ever logs a credential.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import bcrypt
from starlette.datastructures import Headers

from stor.aio import in_thread
from stor.config import AuthSettings
from stor.http import reply as replies
from stor.http.reply import Reply

GENERATED_USER = "stor"
REMEMBER_SECONDS = 60.0
REMEMBER_MAX = 10_000


def generate_credentials() -> str:
    return f"{GENERATED_USER}:{secrets.token_urlsafe(18)}"


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: str  # "read" or "write"

    @property
    def may_write(self) -> bool:
        return self.role == "write"


class Authenticator:
    def __init__(self, basic_auth: str | None, settings: AuthSettings) -> None:
        self._writer = basic_auth.encode("utf-8") if basic_auth is not None else None
        self._writer_name = basic_auth.partition(":")[0] if basic_auth else ""
        self._users = {u.name: u for u in settings.users}
        self.read_required = settings.read_auth_required
        self._key = secrets.token_bytes(32)
        self._remembered: dict[bytes, tuple[Identity, float]] = {}
        # Unknown users cost as much as known ones, so timing does not tell which names exist.
        self._decoy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=_rounds(settings)))

    def __repr__(self) -> str:
        return "Authenticator(<hidden>)"

    async def identify(self, authorization: str | None) -> Identity | None:
        """The user the Authorization header proves, or None."""
        given = _basic_credentials(authorization)
        if given is None:
            return None
        if self._writer is not None and hmac.compare_digest(given, self._writer):
            return Identity(self._writer_name, "write")
        name_bytes, sep, password = given.partition(b":")
        if not sep:
            return None
        token = hmac.new(self._key, given, hashlib.sha256).digest()
        remembered = self._remembered.get(token)
        if remembered is not None and remembered[1] > time.monotonic():
            return remembered[0]
        name = name_bytes.decode("utf-8", "replace")
        user = self._users.get(name)
        hashed = user.password_hash if user is not None else self._decoy
        if not await in_thread(_password_matches, password, hashed) or user is None:
            return None
        identity = Identity(user.name, user.role)
        if len(self._remembered) >= REMEMBER_MAX:
            self._remembered.clear()
        self._remembered[token] = (identity, time.monotonic() + REMEMBER_SECONDS)
        return identity


def _password_matches(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False  # e.g. longer than the 72 bytes bcrypt takes: no stored password can match it


def _basic_credentials(authorization: str | None) -> bytes | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _rounds(settings: AuthSettings) -> int:
    """The decoy hash's cost: that of the configured users, so a miss takes as long as a hit."""
    costs = [int(u.password_hash[4:6]) for u in settings.users]
    return max(4, min(max(costs, default=4), 14))


async def refusal(auth: Authenticator, headers: Headers, need_write: bool) -> Reply | None:
    """401 or 403 when the request's credentials do not allow it; None when they do."""
    identity = await auth.identify(headers.get("authorization"))
    if identity is None:
        return replies.text(401, "Authentication required!", [("www-authenticate", 'Basic realm="stor"')])
    if need_write and not identity.may_write:
        return replies.text(403, f"Forbidden: user '{identity.name}' may only read")
    return None
