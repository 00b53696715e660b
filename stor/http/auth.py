"""HTTP Basic credentials: who is asking, and may they read or write.

The original's single `basic_auth` string is one writer, compared in
constant time. Other users have bcrypt hashes (config or htpasswd files).
bcrypt is slow on purpose, so a password that checked out is remembered for a
minute, keyed by an HMAC under a per-process random key (never the password
itself), and the check runs in a thread. Nothing here ever logs a credential.

Because a check costs CPU, wrong passwords sent in a loop would starve every
other request. So checks are bounded twice, per worker: so many at once
(auth.max_concurrent_checks), which also keeps them from taking the I/O
threads; and per client address a budget of failed checks
(stor.http.ratelimit). Beyond either, the answer is 429 with Retry-After,
without a check. What costs no check is never refused: the basic_auth writer
and a remembered password pass during a flood, from the flooding address too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import math
import secrets
import time
from dataclasses import dataclass

import bcrypt

from stor.aio import in_thread
from stor.config import AuthSettings
from stor.http import reply as replies
from stor.http.ratelimit import FailureBudget
from stor.http.reply import Reply
from stor.http.request import Request

log = logging.getLogger("stor.http")

GENERATED_USER = "stor"
THROTTLED_ANSWER_DELAY = 1.0  # seconds a 429 for a refused check waits before it is sent
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


@dataclass(frozen=True, slots=True)
class Throttled:
    """No password check now: the reason (one line for the client) and whole seconds to wait."""

    reason: str
    retry_after: int


BUSY = Throttled("Too many password checks at once; retry shortly", 1)


class Authenticator:
    def __init__(self, basic_auth: str | None, settings: AuthSettings) -> None:
        self._writer = basic_auth.encode("utf-8") if basic_auth is not None else None
        self._writer_name = basic_auth.partition(":")[0] if basic_auth else ""
        self._users = {u.name: u for u in settings.users}
        self.read_required = settings.read_auth_required
        self._key = secrets.token_bytes(32)
        self._remembered: dict[bytes, tuple[Identity, float]] = {}
        self._failures = FailureBudget(settings.failed_checks_per_minute, settings.failed_checks_burst)
        self._max_checks = settings.max_concurrent_checks
        self._checks = 0  # bcrypt checks running now, in this worker
        # Unknown users cost as much as known ones, so timing does not tell which names exist.
        self._decoy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=_rounds(settings)))

    def __repr__(self) -> str:
        return "Authenticator(<hidden>)"

    async def identify(self, authorization: str | None, client: str = "") -> Identity | Throttled | None:
        """The user the Authorization header proves; None when it proves none; Throttled when it cannot be checked now.

        Only a bcrypt check is ever refused. The basic_auth writer and a
        password remembered from an earlier success cost none, so they pass
        whatever `client` (the peer's address) did before. A password that
        needs a check, from an address that spent its budget of failures, is
        refused even if it is right: knowing would take the very check the
        budget is there to spare (the address may check again in Retry-After
        seconds). Malformed credentials cost nothing and are just None.
        """
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
        # The budget's token is taken before the check, so that checks running at once cannot overdraw it.
        refused = self._failures.take(client)
        if refused is not None:
            if refused.first:
                log.warning("auth: %s failed too many password checks; its new checks get 429 for now", client or "a client")
            wait = max(1, math.ceil(refused.retry_after))
            return Throttled(f"Too many failed password checks from this address; retry in {wait} s", wait)
        if self._checks >= self._max_checks:
            self._failures.give_back(client)  # not checked, so not failed
            return BUSY
        matches = await self._check(password, hashed)
        if not matches or user is None:
            return None  # the token stays taken: this failure counts
        self._failures.give_back(client)
        identity = Identity(user.name, user.role)
        if len(self._remembered) >= REMEMBER_MAX:
            self._remembered.clear()
        self._remembered[token] = (identity, time.monotonic() + REMEMBER_SECONDS)
        return identity

    async def _check(self, password: bytes, hashed: bytes) -> bool:
        """bcrypt in a thread, counted in `_checks` until the thread is done with it.

        Until the thread is done, not until the awaiter is: a cancelled
        request's check still runs to its end, and still takes its CPU.
        """
        check = in_thread(_password_matches, password, hashed)
        self._checks += 1
        check.add_done_callback(self._check_done)
        return await asyncio.shield(check)

    def _check_done(self, _: asyncio.Future[bool]) -> None:
        self._checks -= 1


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


def user_of(request: Request) -> str | None:
    """The user name of the request's Basic credentials (for a request refusal() let through: not checked here)."""
    credentials = _basic_credentials(request.headers.get("authorization"))
    if credentials is None:
        return None
    return credentials.partition(b":")[0].decode(errors="replace")


def _rounds(settings: AuthSettings) -> int:
    """The decoy hash's cost: that of the configured users, so a miss takes as long as a hit."""
    costs = [int(u.password_hash[4:6]) for u in settings.users]
    return max(4, min(max(costs, default=4), 14))


async def refusal(auth: Authenticator, request: Request, need_write: bool) -> Reply | None:
    """401 or 403 when the request's credentials do not allow it, 429 when they cannot be checked now; None when they allow it."""
    identity = await auth.identify(request.headers.get("authorization"), request.client)
    if isinstance(identity, Throttled):
        # Held back a moment: a client guessing in a loop gets one answer a second per connection,
        # instead of as many as a worker can write (a timer costs nothing, answering does).
        await asyncio.sleep(THROTTLED_ANSWER_DELAY)
        return replies.text(429, identity.reason, [("retry-after", str(identity.retry_after))])
    if identity is None:
        return replies.text(401, "Authentication required!", [("www-authenticate", 'Basic realm="stor"')])
    if need_write and not identity.may_write:
        return replies.text(403, f"Forbidden: user '{identity.name}' may only read")
    return None
