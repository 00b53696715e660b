"""Where the server is, who we are to it, and how a request is retried.

One `Connection` per run: the URL and credentials resolved once (never
printed: `redacted` is what messages show), the client's own sockets for
downloads and `POST /exists` (stor/client/rawhttp.py), an httpx pool for
small uploads (made when first needed), and the retry policy every request
goes through.
"""

from __future__ import annotations

import base64
import netrc
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from stor import __version__

if TYPE_CHECKING:
    import httpx

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


class Interrupted(Exception):
    """Raised in the main thread, at a point of its own choosing, once a signal asked the run to stop.

    Never raised from the signal handler itself: an exception thrown into the middle of
    concurrent.futures.wait() can leave a future's lock held, and the worker that later
    completes that future then waits for it forever."""


POLL = 0.2  # how long the main thread waits before it looks whether it was interrupted


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS's advice), so that many clients retrying after one
    outage do not come back in step. attempts counts the first one."""

    attempts: int = 6
    first_delay: float = 0.25
    max_delay: float = 20.0

    def delay(self, failures: int) -> float:
        return random.uniform(0, min(self.max_delay, self.first_delay * 2 ** (failures - 1)))


@dataclass(frozen=True)
class ServerURL:
    """The server's URL without credentials: what every request is made against, and what
    messages show."""

    scheme: str
    host: str
    port: int
    path: str  # a prefix for every request's path, without a trailing /; usually ""

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def target(self, path: str) -> str:
        return self.path + path

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


def parse_url(text: str) -> tuple[ServerURL, str | None]:
    """The URL and the credentials in it (`user:password@`), if any."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise UsageError(f"bad server URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError("the server URL must be http://HOST[:PORT] or https://...")
    userinfo = None
    if parts.username is not None:
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    url = ServerURL(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80),
                    parts.path.rstrip("/"))
    return url, userinfo


def resolve_credentials(user: str | None, url: ServerURL) -> tuple[str, str] | None:
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
        self.base, userinfo = parse_url(url or os.environ.get(URL_ENV) or DEFAULT_URL)
        if userinfo is not None and user is None and not os.environ.get(USER_ENV):
            user = userinfo
        self.redacted = str(self.base)  # what messages show: never a credential
        self.credentials = resolve_credentials(user, self.base)
        self.headers = {"User-Agent": USER_AGENT}
        if self.credentials is not None:
            self.headers["Authorization"] = basic_authorization(self.credentials)
        self.retry = retry
        self.timeout = timeout
        self.stopping = threading.Event()  # set: what is in flight gives up (Ctrl-C, or the run ends)
        self.interrupted = threading.Event()  # set by a signal: the main thread stops the run
        from stor.client.rawhttp import Getter

        self.getter = Getter(self.base, self.headers, timeout)  # downloads, /exists: a socket per thread
        self.parallel = parallel
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        """The pool for uploads of up to 1 MiB, made on first use: a run that uploads nothing never
        pays httpx's import."""
        with self._http_lock:
            if self._http is None:
                import httpx

                self._http = httpx.Client(
                    headers=self.headers,
                    timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                    limits=httpx.Limits(max_connections=self.parallel + 2,
                                        max_keepalive_connections=self.parallel + 2),
                    trust_env=False,  # credentials are resolved above, once; no proxy surprises
                    verify=self.base.scheme == "https",  # no certificates to load for plain HTTP
                )
            return self._http

    def interrupt(self) -> None:
        """From a signal handler: only sets flags, which the main thread and the workers look at."""
        self.interrupted.set()
        self.stopping.set()

    def wait(self, futures: Iterable[Future[Any]], timeout: float | None = None) -> set[Future[Any]]:
        """The futures done, once one is or timeout has passed; Interrupted once a signal came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = list(futures)
        while True:
            if self.interrupted.is_set():
                raise Interrupted()
            left = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            done, _ = wait(pending, timeout=max(0.0, left), return_when=FIRST_COMPLETED)
            if done or (deadline is not None and time.monotonic() >= deadline):
                return done

    def each(self, items: Iterable[T], ahead: int = 1000) -> Iterator[T | None]:
        """items, read by a thread of their own (stdin may block for as long as its writer likes) at
        most `ahead` in advance, and None whenever none came for POLL seconds (the caller's turn to
        report what finished meanwhile); Interrupted once a signal came, even while waiting."""
        end = object()
        ready: queue.Queue[Any] = queue.Queue(maxsize=ahead)

        def read() -> None:
            try:
                for item in items:
                    if self.stopping.is_set():
                        return
                    ready.put(item)
            finally:
                ready.put(end)

        threading.Thread(target=read, daemon=True, name="read").start()
        while True:
            try:
                item = ready.get(timeout=POLL)
            except queue.Empty:
                if self.interrupted.is_set():
                    raise Interrupted() from None
                yield None
                continue
            if item is end:
                return
            yield item

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self.getter.close()

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


def transport_reason(e: Exception) -> str:
    """A connection error in one line, without the URL (it may be long; the item names it)."""
    kind = type(e).__name__
    text = str(e) or kind
    return f"{text}" if kind in text else f"{kind}: {text}"


def check_status(status: int, body: str, retry_after: str | None) -> None:
    """Raise Retryable for what another attempt may fix (5xx, 408, 429), Failed for other errors."""
    if status < 400:
        return
    reason = f"{status} {first_line(body)}".rstrip()
    if status >= 500 or status in (408, 429):
        raise Retryable(reason, retry_after_seconds(retry_after))
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

