"""HTTP basic authentication against the web config's bcrypt hashes, with bounded bcrypt work.

bcrypt is slow on purpose, which makes it a CPU burner for anyone who can send wrong passwords.
So at most :data:`BCRYPT_WORKERS` checks run at a time and at most :data:`BCRYPT_MAX_WAITING`
wait for a turn; a request beyond that is answered 503 (with ``Retry-After``) without any bcrypt
work. Verified credentials are cached, so a scraper that logged in once never waits behind an
attacker, and identical concurrent attempts share one check. Passwords never appear in a log line,
a message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import bcrypt

from okx_loan_exporter.webconfig import WebConfigWatcher

logger = logging.getLogger(__name__)

BCRYPT_WORKERS = 2
"""bcrypt checks running at once: at most this many cores are spent on passwords."""
BCRYPT_MAX_WAITING = 8
"""bcrypt checks waiting for a worker; the next new check is refused with 503."""
RETRY_AFTER_SECONDS = 1

_BCRYPT_MAX_PASSWORD = 72  # bcrypt ignores (Python's bcrypt refuses) longer passwords
_REALM = "okx-loan-exporter"

_CacheKey = tuple[str, bytes, bytes]


class AuthBusy(Exception):
    """Too many bcrypt checks are running and waiting: answer 503 instead of checking."""


def parse_basic(authorization: str | None) -> tuple[str, bytes] | None:
    """User name and password from an ``Authorization: Basic`` header; None if it is not one."""
    if not authorization:
        return None
    scheme, _, param = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(param.strip(), validate=True)
        user_bytes, colon, password = decoded.partition(b":")
        user = user_bytes.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    if not colon:
        return None
    return user, password


def _cost(hashed: bytes) -> int:
    return int(hashed[4:6])


class _Flight:
    """One bcrypt check in progress, whose result identical concurrent attempts wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    Successful checks are cached (bounded, LRU) under the user, a keyed SHA-256 of the password
    and the hash, so a changed hash invalidates them. An unknown user costs one bcrypt check
    against a dummy hash of the configured cost, so the answer time does not tell which users
    exist. Failures are never cached. ``verify`` (default ``bcrypt.checkpw``) is for tests.
    """

    def __init__(
        self,
        cache_size: int = 1024,
        *,
        workers: int = BCRYPT_WORKERS,
        max_waiting: int = BCRYPT_MAX_WAITING,
        verify: Callable[[bytes, bytes], bool] | None = None,
    ) -> None:
        self._cache_size = cache_size
        self._cache: OrderedDict[_CacheKey, None] = OrderedDict()
        self._lock = threading.Lock()
        self._flights: dict[_CacheKey, _Flight] = {}
        self._admitted = 0
        self._capacity = workers + max_waiting
        self._workers = threading.BoundedSemaphore(workers)
        self._verify = verify
        self._dummies: dict[int, bytes] = {}
        # Keyed, so a memory dump of the cache gives no fast offline password test.
        self._key = secrets.token_bytes(32)

    def __repr__(self) -> str:
        return f"BasicAuth(cached={len(self._cache)}, pending={self._admitted})"

    @property
    def pending(self) -> int:
        """bcrypt checks running or waiting for a worker."""
        return self._admitted

    def check(self, users: Mapping[str, bytes], authorization: str | None) -> bool:
        """True when ``authorization`` holds the user name and password of one of ``users``.

        Raises AuthBusy, without bcrypt work, when a new check would exceed the queue.
        """
        creds = parse_basic(authorization)
        if creds is None:
            return False
        user, password = creds
        stored = users.get(user)
        digest = hmac.new(self._key, password, hashlib.sha256).digest()
        if stored is None:
            cost = max((_cost(h) for h in users.values()), default=10)
            self._check_once(
                (user, digest, b""), lambda: self._checkpw(password, self._dummy(cost))
            )
            return False
        return self._check_once((user, digest, stored), lambda: self._checkpw(password, stored))

    def _check_once(self, key: _CacheKey, work: Callable[[], bool]) -> bool:
        """The cached answer, the answer of the same check in progress, or a new bounded check."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return True
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                if self._admitted >= self._capacity:
                    raise AuthBusy
                self._admitted += 1
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            return flight.ok
        try:
            with self._workers:
                flight.ok = work()
        finally:
            with self._lock:
                self._admitted -= 1
                del self._flights[key]
                if flight.ok and key[2]:  # never for the dummy of an unknown user
                    self._cache[key] = None
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
            flight.done.set()
        return flight.ok

    def _dummy(self, cost: int) -> bytes:
        dummy = self._dummies.get(cost)
        if dummy is None:
            dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
            self._dummies[cost] = dummy
        return dummy

    def _checkpw(self, password: bytes, hashed: bytes) -> bool:
        verify = self._verify or bcrypt.checkpw
        if len(password) > _BCRYPT_MAX_PASSWORD:
            verify(b"", hashed)  # same work, then refuse: bcrypt would ignore the rest
            return False
        try:
            return verify(password, hashed)
        except ValueError:
            return False


def auth_middleware(
    app: WSGIApplication,
    watcher: WebConfigWatcher,
    exempt_paths: Collection[str] = ("/-/healthy",),
    auth: BasicAuth | None = None,
) -> WSGIApplication:
    """Wrap ``app``: with basic_auth_users configured, every non-exempt path needs credentials."""
    checker = auth if auth is not None else BasicAuth()
    exempt = frozenset(exempt_paths)

    def middleware(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        users = watcher.current().basic_auth_users
        if not users or environ.get("PATH_INFO", "") in exempt:
            return app(environ, start_response)
        try:
            ok = checker.check(users, environ.get("HTTP_AUTHORIZATION"))
        except AuthBusy:
            logger.debug("Refused a login with 503: too many bcrypt checks in progress")
            return _answer(
                start_response,
                "503 Service Unavailable",
                b"Too many login attempts in progress; retry later\n",
                ("Retry-After", str(RETRY_AFTER_SECONDS)),
            )
        if not ok:
            return _answer(
                start_response,
                "401 Unauthorized",
                b"Unauthorized\n",
                ("WWW-Authenticate", f'Basic realm="{_REALM}"'),
            )
        return app(environ, start_response)

    return middleware


def _answer(
    start_response: StartResponse, status: str, body: bytes, header: tuple[str, str]
) -> list[bytes]:
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            header,
        ],
    )
    return [body]
