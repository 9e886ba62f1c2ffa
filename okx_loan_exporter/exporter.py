"""Wires a validated configuration into a running exporter: OKX clients and per-account caches.

:class:`Exporter` owns the event loop thread on which all OKX requests and cache updates run, and
the connection pools (one per ``ACCOUNTS_PER_POOL`` accounts of a base URL), with an httpx client
per account over them (:mod:`okx_loan_exporter.okx_transport`). It hands each
scrape the accounts' snapshots; turning them into text is :mod:`okx_loan_exporter.exposition`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx

from okx_loan_exporter import __version__
from okx_loan_exporter.cache import AccountCache, AccountSnapshot, PositionCache
from okx_loan_exporter.config import ExporterConfig
from okx_loan_exporter.okx import Credentials, OkxClient
from okx_loan_exporter.okx_transport import AccountTransport, ConnectionStats, connection_pool
from okx_loan_exporter.stats import RequestStats

T = TypeVar("T")

DEADLINE_MARGIN = 0.5
"""Seconds kept back from Prometheus' scrape timeout for rendering and the network."""
USER_AGENT = f"okx-loan-exporter/{__version__}"
ACCOUNTS_PER_POOL = 10
"""Accounts sharing one connection pool (per base URL). httpcore looks at every connection of a
pool whenever a request starts or ends, so one pool for hundreds of accounts made a cold scrape
quadratic in the accounts (11 s for 500); small pools keep it linear."""
CONNECTIONS_PER_POOL = 3
"""Connections a pool keeps open at most. A kept TLS connection costs about 60 KiB (OpenSSL's
buffers, anyio's and h11's state): one per account came to 140 MiB RSS at 1,000 accounts, 3 per
10 accounts to 93 MiB, for the same cold-scrape time (the exporter's CPU, not OKX's latency, sets
it); requests beyond 3 wait for a free connection of their pool."""
MIN_KEEPALIVE_SECONDS = 120.0


def keepalive_seconds(cache_ttl: float) -> float:
    """How long an idle connection to OKX is kept: beyond several TTLs and scrape intervals, so
    that steady-state requests reuse connections instead of opening (and TLS-handshaking) new
    ones; a connection OKX closes meanwhile is replaced (see okx_transport)."""
    return max(MIN_KEEPALIVE_SECONDS, 4 * cache_ttl)


class EventLoopThread:
    """An asyncio event loop running on a daemon thread, for work submitted from other threads."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="okx-fetch", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=2)


class Exporter:
    """The running exporter: serves scrapes from per-account caches filled from OKX."""

    def __init__(
        self,
        config: ExporterConfig,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._loop_thread = EventLoopThread()
        self._pools: list[httpx.AsyncBaseTransport] = []
        self._http_clients: list[httpx.AsyncClient] = []
        self._ssl_contexts: dict[str | None, ssl.SSLContext] = {}
        keepalive = keepalive_seconds(config.cache_ttl)
        accounts = []
        pools: dict[tuple[str, str | None], httpx.AsyncBaseTransport] = {}  # being filled
        members: dict[tuple[str, str | None], int] = {}  # accounts so far per base URL and CA
        for account in config.accounts:
            origin = (account.base_url, account.tls_ca_file)
            count = members.get(origin, 0)
            if count % ACCOUNTS_PER_POOL == 0:
                pools[origin] = transport or connection_pool(
                    max_connections=CONNECTIONS_PER_POOL,
                    keepalive_expiry=keepalive,
                    verify=self._ssl_context(account.tls_ca_file),
                )
                self._pools.append(pools[origin])
            members[origin] = count + 1
            connections = ConnectionStats()
            http = httpx.AsyncClient(
                transport=AccountTransport(pools[origin], connections),
                timeout=config.timeout,
                headers={"User-Agent": USER_AGENT},
                follow_redirects=False,
            )
            self._http_clients.append(http)
            stats = RequestStats()
            client = OkxClient(
                http,
                account.base_url,
                Credentials(account.api_key, account.secret_key, account.passphrase),
                demo=account.demo,
                timeout=config.timeout,
                clock=clock,
                on_request=stats.observe,
            )
            accounts.append(
                AccountCache(
                    account.name,
                    client,
                    ttl=config.cache_ttl,
                    max_stale=config.max_stale,
                    stats=stats,
                    connections=connections,
                    clock=clock,
                )
            )
        self.cache = PositionCache(accounts)

    def _ssl_context(self, ca_file: str | None) -> ssl.SSLContext:
        """One context per CA file, shared by its pools: what httpx builds for every client by
        default (certifi, or SSL_CERT_FILE/SSL_CERT_DIR), or one trusting only ``ca_file``."""
        if ca_file not in self._ssl_contexts:
            self._ssl_contexts[ca_file] = (
                httpx.create_ssl_context()
                if ca_file is None
                else ssl.create_default_context(cafile=ca_file)
            )
        return self._ssl_contexts[ca_file]

    def scrape_wait(self, scrape_timeout: float | None) -> float:
        """How long a scrape may wait for OKX: bounded by ``timeout`` and Prometheus' deadline."""
        wait = self.config.timeout + 0.1
        if scrape_timeout is not None and scrape_timeout > 0:
            wait = min(wait, max(scrape_timeout - DEADLINE_MARGIN, scrape_timeout / 2))
        return wait

    def scrape(self, scrape_timeout: float | None = None) -> list[AccountSnapshot]:
        """Refresh what is due and return every account's snapshot for one scrape.

        While no fetch is due or under way, the snapshots are taken on the calling thread, as the
        landing page does: the loop would return the same, after two thread switches.
        """
        if self.cache.idle():
            return self.cache.snapshots()
        wait = self.scrape_wait(scrape_timeout)
        return self._loop_thread.run(self.cache.refresh_async(wait), timeout=wait + 5)

    def snapshots(self) -> list[AccountSnapshot]:
        """The cached state without contacting OKX."""
        return self.cache.snapshots()

    def close(self) -> None:
        """Close the HTTP clients and stop the event loop."""

        async def close_clients() -> None:
            for client in self._http_clients:
                await client.aclose()
            for pool in self._pools:
                await pool.aclose()

        with contextlib.suppress(Exception):  # closing is best effort at shutdown
            self._loop_thread.run(close_clients(), timeout=1)
        self._loop_thread.stop()
