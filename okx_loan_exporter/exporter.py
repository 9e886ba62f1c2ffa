"""Wires a validated configuration into a running exporter: OKX clients and per-account caches.

:class:`Exporter` owns the event loop thread on which all OKX requests and cache updates run, and
the pooled httpx clients (one per ``ACCOUNTS_PER_POOL`` accounts of a base URL). It hands each
scrape the accounts' snapshots; turning them into text is :mod:`okx_loan_exporter.exposition`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx

from okx_loan_exporter import __version__
from okx_loan_exporter.activity_cache import IN_FLIGHT, ActivityCache, Schedules
from okx_loan_exporter.cache import AccountCache, AccountSnapshot, PositionCache
from okx_loan_exporter.config import ExporterConfig
from okx_loan_exporter.okx import Credentials, OkxClient
from okx_loan_exporter.pacing import Pacer
from okx_loan_exporter.stats import RequestStats

T = TypeVar("T")

DEADLINE_MARGIN = 0.5
"""Seconds kept back from Prometheus' scrape timeout for rendering and the network."""
USER_AGENT = f"okx-loan-exporter/{__version__}"
ACCOUNTS_PER_POOL = 10
"""Accounts sharing one pooled httpx client (per base URL). httpcore looks at every connection of a
pool whenever a request starts or ends, so one pool for hundreds of accounts made a cold scrape
quadratic in the accounts (11 s for 500); small pools keep it linear."""


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
        self._http_clients: list[httpx.AsyncClient] = []
        self._ssl_context: ssl.SSLContext | None = None
        accounts = []
        clients: dict[str, httpx.AsyncClient] = {}  # base URL -> the client being filled
        members: dict[str, int] = {}  # base URL -> accounts so far
        schedules = Schedules(
            config.history_interval, config.interest_interval, config.headroom_interval
        )
        in_flight = asyncio.Semaphore(IN_FLIGHT)  # shared by every account
        for account in config.accounts:
            count = members.get(account.base_url, 0)
            if count % ACCOUNTS_PER_POOL == 0:
                clients[account.base_url] = self._new_http_client(transport)
            members[account.base_url] = count + 1
            http = clients[account.base_url]
            stats = RequestStats(schedules.endpoints())
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
                    clock=clock,
                    activity=ActivityCache(
                        account.name,
                        client,
                        schedules,
                        max_stale=config.max_stale,
                        clock=clock,
                        pacer=functools.partial(Pacer, clock=clock),
                        in_flight=in_flight,
                    )
                    if schedules.endpoints()
                    else None,
                )
            )
        self.cache = PositionCache(accounts)

    def _new_http_client(self, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        """A client for up to ACCOUNTS_PER_POOL accounts: each has at most one request in flight."""
        if transport is None and self._ssl_context is None:
            # What httpx builds for every client by default (certifi, SSL_CERT_FILE/DIR), once.
            self._ssl_context = httpx.create_ssl_context()
        limits = httpx.Limits(
            max_connections=ACCOUNTS_PER_POOL, max_keepalive_connections=ACCOUNTS_PER_POOL
        )
        client = httpx.AsyncClient(
            verify=self._ssl_context if self._ssl_context is not None else True,
            timeout=self.config.timeout,
            limits=limits,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )
        self._http_clients.append(client)
        return client

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
            for account in self.cache.accounts:
                if account.activity is not None:
                    await account.activity.aclose()
            for client in self._http_clients:
                await client.aclose()

        with contextlib.suppress(Exception):  # closing is best effort at shutdown
            self._loop_thread.run(close_clients(), timeout=1)
        self._loop_thread.stop()
