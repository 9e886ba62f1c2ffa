"""The HTTP transport to OKX: pooled keep-alive connections, counted, with one safe retry.

Each account sends through its own :class:`AccountTransport`, a thin layer over a connection pool
shared with other accounts of the same base URL. It counts the connections opened for the
account's requests (each one a TCP connect and, for HTTPS, a TLS handshake) and recovers from the
one failure that keep-alive brings: OKX closing a pooled connection while a request was being
sent on it. Such a request is sent once more, within the same attempt, if it is idempotent (GET,
HEAD; or marked with the ``idempotent`` request extension, as a read-only POST may be). Nothing
here knows about Prometheus.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from typing import Any

import httpx

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IDEMPOTENT_EXTENSION = "idempotent"
"""Request extension that marks a non-GET request as safe to send twice (e.g. a read-only POST)."""
_STALE_CONNECTION_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
"""What a request sent on a connection the server has just closed fails with, before any answer."""
_CONNECTED = "connection.connect_tcp.complete"


@dataclass(frozen=True)
class ConnectionStatsSnapshot:
    """Connection counts of one account at one moment."""

    opened: int = 0
    """Connections opened for the account's requests (a TCP connect, plus a TLS handshake for
    HTTPS)."""
    retries: int = 0
    """Requests sent again on a fresh connection after a pooled connection was found closed."""


NO_CONNECTIONS = ConnectionStatsSnapshot()


class ConnectionStats:
    """Thread-safe connection counts for one account."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot = NO_CONNECTIONS

    def connection_opened(self) -> None:
        with self._lock:
            current = self._snapshot
            self._snapshot = ConnectionStatsSnapshot(current.opened + 1, current.retries)

    def request_retried(self) -> None:
        with self._lock:
            current = self._snapshot
            self._snapshot = ConnectionStatsSnapshot(current.opened, current.retries + 1)

    def snapshot(self) -> ConnectionStatsSnapshot:
        """The counts now: the same object until one changes."""
        return self._snapshot


def connection_pool(
    *,
    max_connections: int,
    keepalive_expiry: float,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncHTTPTransport:
    """A pool of at most ``max_connections`` HTTP/1.1 connections, each kept open while idle for
    ``keepalive_expiry`` seconds."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=keepalive_expiry,
    )
    return httpx.AsyncHTTPTransport(verify=verify, limits=limits)


class AccountTransport(httpx.AsyncBaseTransport):
    """One account's view of a shared pool: counts its connections, retries a stale one once.

    Closing it leaves the shared pool open; its owner closes the pool.
    """

    def __init__(self, pool: httpx.AsyncBaseTransport, stats: ConnectionStats) -> None:
        self.pool = pool
        self.stats = stats

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        opened = False

        async def trace(event: str, info: dict[str, Any]) -> None:
            nonlocal opened
            if event == _CONNECTED:
                opened = True
                self.stats.connection_opened()

        request.extensions = {**request.extensions, "trace": trace}
        try:
            return await self.pool.handle_async_request(request)
        except _STALE_CONNECTION_ERRORS:
            if opened or not _idempotent(request):
                raise  # a fresh connection failed, or the request must not reach OKX twice
        # Once only: a server that closes idle connections sends a FIN, which the pool notices
        # before it hands a connection out again; what is left is the race with a request in
        # flight, and a dropped request may have reached OKX (its rate limit counts it).
        self.stats.request_retried()
        return await self.pool.handle_async_request(request)

    async def aclose(self) -> None:
        """Nothing to release: the pool is shared and closed by its owner."""


def _idempotent(request: httpx.Request) -> bool:
    return request.method in IDEMPOTENT_METHODS or bool(
        request.extensions.get(IDEMPOTENT_EXTENSION)
    )
