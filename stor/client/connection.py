"""Where the server is, who we are to it, and how a request is retried.

One `Connection` per run: the URL and credentials resolved once (never
printed: `redacted` is what messages show), an httpx pool sized for the run's
parallelism, and the retry policy every request goes through.
"""

from __future__ import annotations

import base64
import netrc
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from stor import __version__

URL_ENV, USER_ENV, PASSWORD_ENV = "STOR_URL", "STOR_USER", "STOR_PASSWORD"
DEFAULT_URL = "http://127.0.0.1:8080"  # where `stor serve` listens by default
USER_AGENT = f"stor-client/{__version__}"

T = TypeVar("T")


class UsageError(Exception):
    """Bad arguments or environment (exit 2); the message is one line."""


class Unreachable(Exception):
    """The server could not be asked at all, after the retries (exit 2)."""


class Failed(Exception):
    """One item failed for good; the message is the reason printed for it. server_fault: the server
    kept answering 5xx (or 408/429) through every retry."""

    def __init__(self, reason: str, server_fault: bool = False) -> None:
        super().__init__(reason)
        self.server_fault = server_fault


class Retryable(Exception):
    """A failure that another attempt may not see: a connection error, a 5xx, a 408 or a 429."""

    def __init__(self, reason: str, retry_after: float | None = None, connection: bool = False) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.connection = connection  # no answer at all (rather than an error status)


class Stopped(Exception):
    """The run was interrupted (Ctrl-C): an item in flight gives up at once."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS's advice), so that many clients retrying after one
    outage do not come back in step. attempts counts the first one."""

    attempts: int = 6
    first_delay: float = 0.25
    max_delay: float = 20.0

    def delay(self, failures: int) -> float:
        return random.uniform(0, min(self.max_delay, self.first_delay * 2 ** (failures - 1)))


def resolve_credentials(user: str | None, url: httpx.URL) -> tuple[str, str] | None:
    """--user NAME[:PASSWORD] (the password from STOR_PASSWORD when not given), else STOR_USER and
    STOR_PASSWORD, else the URL's host in ~/.netrc (or $NETRC), else none (reads are often anonymous)."""
    if user is None:
        user = os.environ.get(USER_ENV) or None
    if user is not None:
        name, colon, password = user.partition(":")
        if not colon:
            password = os.environ.get(PASSWORD_ENV, "")
            if not password:
                raise UsageError(f"a password for user {name!r}: --user NAME:PASSWORD or ${PASSWORD_ENV}")
        return name, password
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    if not os.path.exists(path):
        return None
    try:
        entry = netrc.netrc(path).authenticators(url.host)
    except (netrc.NetrcParseError, OSError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if entry is None:
        return None
    login, _, password = entry
    return login, password or ""


def basic_authorization(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()


class Connection:
    """The server, the credentials and a pool of connections to it, shared by the run's threads."""

    def __init__(self, url: str | None, user: str | None, parallel: int, retry: RetryPolicy,
                 timeout: float = 60.0) -> None:
        url = url or os.environ.get(URL_ENV) or DEFAULT_URL
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as e:
            raise UsageError(f"bad server URL: {e}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise UsageError("the server URL must be http://HOST[:PORT] or https://...")
        if parsed.username and user is None and not os.environ.get(USER_ENV):
            user = f"{parsed.username}:{parsed.password}"
        self.base = parsed.copy_with(username=None, password=None, query=None, fragment=None)
        self.redacted = str(self.base).rstrip("/")  # what messages show: never a credential
        self.credentials = resolve_credentials(user, parsed)
        self.headers = {"User-Agent": USER_AGENT}
        if self.credentials is not None:
            self.headers["Authorization"] = basic_authorization(self.credentials)
        self.retry = retry
        self.timeout = timeout
        self.stopping = threading.Event()
        self.http = httpx.Client(
            headers=self.headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=parallel + 2, max_keepalive_connections=parallel + 2),
            trust_env=False,  # credentials are resolved above, once; no proxy surprises
            verify=self.base.scheme == "https",  # no certificates to load for plain HTTP
        )

    def url(self, path: str) -> httpx.URL:
        return self.base.join(path)

    def close(self) -> None:
        self.http.close()

    def attempt(self, what: str, call: Callable[[], T]) -> T:
        """call() until it succeeds, raises something other than Retryable, or the attempts run out:
        then Unreachable if the last attempt got no answer at all (the run cannot go on), Failed with
        the server's reason otherwise. Waits are cut short by a stop."""
        failures = 0
        while True:
            if self.stopping.is_set():
                raise Stopped()
            try:
                return call()
            except Retryable as e:
                failures += 1
                if failures >= self.retry.attempts:
                    if e.connection:
                        raise Unreachable(f"{what}: {e} (after {failures} attempts)") from None
                    raise Failed(f"{e} (after {failures} attempts)", server_fault=True) from None
                wait = self.retry.delay(failures)
                if e.retry_after is not None:
                    wait = max(wait, min(e.retry_after, self.retry.max_delay))
                if self.stopping.wait(wait):
                    raise Stopped() from None


def transport_reason(e: httpx.TransportError | OSError) -> str:
    """A connection error in one line, without the URL (it may be long; the item names it)."""
    kind = type(e).__name__
    text = str(e) or kind
    return f"{text}" if kind in text else f"{kind}: {text}"


def check_response(response: httpx.Response, body: str | None = None) -> None:
    """Raise Retryable for what another attempt may fix (5xx, 408, 429), Failed for other errors."""
    status = response.status_code
    if status < 400:
        return
    if body is None:
        body = response.read().decode(errors="replace")
    reason = f"{status} {first_line(body) or response.reason_phrase}"
    if status >= 500 or status in (408, 429):
        raise Retryable(reason, retry_after_seconds(response.headers.get("retry-after")))
    raise Failed(reason)


def first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


def retry_after_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the backoff's own wait will do

