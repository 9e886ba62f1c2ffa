"""Wires a validated configuration into a running exporter: OKX clients and per-account caches.

:class:`Exporter` owns the event loop thread on which all OKX requests and cache updates run, and
the connection pools (one per ``ACCOUNTS_PER_POOL`` accounts of a base URL), with an httpx client
per account over them (:mod:`okx_loan_exporter.okx_transport`). It hands each scrape the
accounts' snapshots; turning them into text is :mod:`okx_loan_exporter.exposition`'s job.
:meth:`Exporter.apply` puts a reloaded configuration in force. Index prices come from one key-less
client per base URL the accounts use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from okx_loan_exporter import __version__
from okx_loan_exporter.activity_cache import IN_FLIGHT, ActivityCache, Schedules
from okx_loan_exporter.cache import AccountCache, AccountSnapshot, PositionCache
from okx_loan_exporter.config import AccountConfig, ExporterConfig
from okx_loan_exporter.key_rotation import SecretFileWatcher
from okx_loan_exporter.okx import Credentials, Endpoint, OkxClient
from okx_loan_exporter.okx_transport import AccountTransport, ConnectionStats, connection_pool
from okx_loan_exporter.pacing import Pacer
from okx_loan_exporter.pricefeed import PriceFeed, PriceFeeds
from okx_loan_exporter.stats import RequestStats

T = TypeVar("T")
log = logging.getLogger(__name__)

DEADLINE_MARGIN = 0.5
"""Seconds kept back from Prometheus' scrape timeout for rendering and the network."""
USER_AGENT = f"okx-loan-exporter/{__version__}"
ACCOUNTS_PER_POOL = 10
"""Accounts sharing one connection pool (per base URL). httpcore looks at every connection of a
pool whenever a request starts or ends, so one pool for hundreds of accounts made a cold scrape
quadratic in the accounts (11 s for 500); small pools keep it linear."""
CONNECTIONS_PER_POOL = 2
"""Connections a pool keeps open at most; requests beyond them wait for one of the pool's. A kept
TLS connection costs about 60 KiB (OpenSSL's buffers, anyio's and h11's state): one per account
came to 140 MiB RSS at 1,000 accounts. With the secondary endpoints on, 2 per 10 accounts gave a
faster cold scrape of 1,000 accounts than 3 (1.93-1.99 s against 2.13 s: fewer TLS handshakes on
both sides; the exporter's CPU, not OKX's latency, sets it) and 5 MiB less. One per 10 saved 11 MiB
more but let one hanging account hold up the 9 others of its pool (tests/test_faults.py): with two,
a hang takes one connection and the others go on over the second."""
MIN_KEEPALIVE_SECONDS = 120.0
ACTIVITY_TICK = 1.0
"""Seconds between two looks for due secondary fetches (loan-history, interest, headroom): each
starts within a second of its time rather than at the next scrape, so that a thousand accounts'
requests spread as their schedules spread them instead of coming in one burst per scrape."""
MAX_TICK_DEFERRAL = 5.0
"""Seconds the tick may hold back while scrapes that refresh accounts are answered (see
:meth:`Exporter.answering`); past it, the due fetches start anyway, so that scrapers that keep
refreshing staggered accounts cannot starve them."""


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


@dataclasses.dataclass
class AccountChanges:
    """What :meth:`Exporter.apply` did, by account name."""

    removed: tuple[str, ...] = ()
    added: list[str] = dataclasses.field(default_factory=list)
    changed: list[str] = dataclasses.field(default_factory=list)
    unchanged: list[str] = dataclasses.field(default_factory=list)


def _settings(account: AccountConfig) -> AccountConfig:
    """The account's settings without the secrets read from files (those rotate by themselves)."""
    rotating = {file.secret for file in account.secret_files}

    def setting(secret: str, value: str) -> str:
        return "" if secret in rotating else value

    return dataclasses.replace(
        account,
        api_key=setting("api_key", account.api_key),
        secret_key=setting("secret_key", account.secret_key),
        passphrase=setting("passphrase", account.passphrase),
    )


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
        self._clock = clock
        self._transport = transport
        self._loop_thread = EventLoopThread()
        self._ssl_contexts: dict[str | None, ssl.SSLContext] = {}
        Origin = tuple[str, str | None]  # base URL, CA file
        self._filling: dict[Origin, tuple[httpx.AsyncBaseTransport, int]] = {}  # pool, members
        self._pool_of: dict[str, httpx.AsyncBaseTransport] = {}  # account name -> its pool
        self._client_of: dict[str, httpx.AsyncClient] = {}  # account name -> its own client
        self._in_flight = asyncio.Semaphore(IN_FLIGHT)  # secondary fetches, shared by every account
        self._feeds: dict[str, tuple[PriceFeed, httpx.AsyncClient]] = {}  # base URL -> feed, client
        self.cache = PositionCache(
            [self._new_account(account) for account in config.accounts],
            self._price_feeds(),
            ticked=True,
        )
        self._last_scrape = float("-inf")
        self._last_cached_scrape = float("-inf")
        self._refreshing = 0
        """Scrapes under way that refresh accounts, from their fetch to the end of their answer."""
        self._refreshing_lock = threading.Lock()
        self._answer = threading.local()
        self._ticker = asyncio.run_coroutine_threadsafe(
            self._start_due_activity(), self._loop_thread.loop
        )

    def _new_account(self, account: AccountConfig) -> AccountCache:
        """A fresh cache for ``account`` with its OKX client (and key rotation, for *_file keys)."""
        origin = (account.base_url, account.tls_ca_file)
        pool, members = self._filling.get(origin, (None, 0))
        if pool is None or members % ACCOUNTS_PER_POOL == 0:
            pool = self._transport or connection_pool(
                max_connections=CONNECTIONS_PER_POOL,
                keepalive_expiry=keepalive_seconds(self.config.cache_ttl),
                verify=self._ssl_context(account.tls_ca_file),
            )
        self._filling[origin] = (pool, members + 1)
        self._pool_of[account.name] = pool
        connections = ConnectionStats()
        http = httpx.AsyncClient(
            transport=AccountTransport(pool, connections),
            timeout=self.config.timeout,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )
        self._client_of[account.name] = http
        schedules = _schedules(self.config)
        stats = RequestStats(schedules.endpoints())
        client = OkxClient(
            http,
            account.base_url,
            Credentials(account.api_key, account.secret_key, account.passphrase),
            demo=account.demo,
            timeout=self.config.timeout,
            clock=self._clock,
            on_request=stats.observe,
        )
        watcher = (
            SecretFileWatcher(account, self.config.source, client.use_credentials)
            if account.secret_files
            else None
        )
        return AccountCache(
            account.name,
            client,
            ttl=self.config.cache_ttl,
            max_stale=self.config.max_stale,
            stats=stats,
            connections=connections,
            clock=self._clock,
            check_credentials=watcher.check if watcher is not None else None,
            activity=ActivityCache(
                account.name,
                client,
                schedules,
                max_stale=self.config.max_stale,
                clock=self._clock,
                pacer=functools.partial(Pacer, clock=self._clock),
                in_flight=self._in_flight,
            )
            if schedules.endpoints()
            else None,
        )

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

    def apply(self, config: ExporterConfig) -> AccountChanges:
        """Serve ``config`` from now on (a reload). An account whose settings are the same keeps
        its cache, counters and schedule; the others start afresh; removed ones disappear.

        A changed ``cache_ttl``, ``max_stale``, ``timeout``, ``price_interval`` or secondary
        interval changes every account and price feed. A base URL's price feed stays while an
        account uses it. A secret read
        from a file is not a setting here: the account re-reads its files itself before each
        request. Call it from one thread at a time, never the fetch loop's.
        """
        same_globals = _global_settings(config) == _global_settings(self.config)
        before = {account.name: account for account in self.config.accounts}
        kept = {cache.name: cache for cache in self.cache.accounts}
        after = {account.name for account in config.accounts}
        changes = AccountChanges(removed=tuple(name for name in before if name not in after))
        self.config = config
        if not same_globals:
            self._filling.clear()  # new pools, with the new keep-alive
        old_clients, old_pools = dict(self._client_of), dict(self._pool_of)
        caches = []
        for account in config.accounts:
            old = before.get(account.name)
            if old is not None and same_globals and _settings(old) == _settings(account):
                caches.append(kept[account.name])
                changes.unchanged.append(account.name)
                continue
            (changes.changed if old is not None else changes.added).append(account.name)
            caches.append(self._new_account(account))
        self.cache = PositionCache(caches, self._price_feeds(rebuild=not same_globals), ticked=True)
        for name in changes.removed:
            del self._client_of[name], self._pool_of[name]
        gone = (*changes.removed, *changes.changed)
        self._close_unused([old_clients[name] for name in gone], [old_pools[name] for name in gone])
        return changes

    def _price_feeds(self, *, rebuild: bool = False) -> PriceFeeds | None:
        """One index-price feed per base URL of the accounts (None when ``price_interval`` is 0).

        A feed already serving a base URL is kept (its prices and counters too) unless
        ``rebuild``; the feed of a base URL no account uses any more is dropped.
        """
        config = self.config
        old = self._feeds
        kept = {} if rebuild else old
        urls = list(dict.fromkeys(account.base_url for account in config.accounts))
        self._feeds = {}
        if config.index_price_interval > 0:
            labels = {kept[url][0].label for url in urls if url in kept}
            for url in urls:
                self._feeds[url] = kept.get(url) or self._new_price_feed(url, labels)
                labels.add(self._feeds[url][0].label)
        in_use = {id(client) for _, client in self._feeds.values()}
        self._close_later([client for _, client in old.values() if id(client) not in in_use])
        if not self._feeds:
            return None
        return PriceFeeds(
            {url: feed for url, (feed, _) in self._feeds.items()},
            {account.name: account.base_url for account in config.accounts},
        )

    def _new_price_feed(self, url: str, labels: set[str]) -> tuple[PriceFeed, httpx.AsyncClient]:
        """A feed for ``url`` on its own key-less client, labelled unlike any of ``labels``."""
        parts = urlsplit(url)
        base = label = f"{parts.scheme}://{parts.netloc}"  # a path may hold a token: never shown
        number = len(self._feeds) + 1
        while label in labels:
            label, number = f"{base} ({number})", number + 1
        stats = RequestStats((Endpoint.INDEX_TICKERS,), always=())
        ca_file = next(
            (account.tls_ca_file for account in self.config.accounts if account.base_url == url),
            None,
        )
        pool = self._transport or connection_pool(
            max_connections=1,
            keepalive_expiry=keepalive_seconds(self.config.index_price_interval),
            verify=self._ssl_context(ca_file),
        )
        http = httpx.AsyncClient(
            transport=pool,
            timeout=self.config.timeout,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )
        public = OkxClient(
            http,
            url,
            None,
            timeout=self.config.timeout,
            clock=self._clock,
            on_request=stats.observe,
        )
        feed = PriceFeed(
            label,
            public,
            interval=self.config.index_price_interval,
            max_stale=self.config.max_stale,
            stats=stats,
            clock=self._clock,
        )
        return feed, http

    def _close_later(self, clients: list[httpx.AsyncClient]) -> None:
        """Close price-feed clients no base URL needs any more (each owns its pool)."""
        if not clients:
            return

        async def close() -> None:
            for client in clients:
                await client.aclose()

        asyncio.run_coroutine_threadsafe(close(), self._loop_thread.loop)

    def _close_unused(
        self, clients: list[httpx.AsyncClient], pools: list[httpx.AsyncBaseTransport]
    ) -> None:
        """Close the clients of removed or replaced accounts, and those of ``pools`` (their
        former pools) that no account uses any more."""
        used = {id(pool) for pool in self._pool_of.values()}
        self._filling = {
            origin: entry for origin, entry in self._filling.items() if id(entry[0]) in used
        }
        unused = {id(pool): pool for pool in pools if id(pool) not in used}
        if not clients and not unused:
            return

        async def close() -> None:
            for client in clients:
                await client.aclose()
            for pool in unused.values():
                if pool is not self._transport:
                    await pool.aclose()

        asyncio.run_coroutine_threadsafe(close(), self._loop_thread.loop)

    async def _start_due_activity(self) -> None:
        """Every ``ACTIVITY_TICK``, start the secondary fetches that are due, while the exporter
        is scraped: for ``max_stale`` after a scrape (what nobody reads is not asked of OKX)."""
        deferred_since: float | None = None
        while True:
            await asyncio.sleep(ACTIVITY_TICK)
            if self._clock() - self._last_scrape > self.config.max_stale:
                continue
            if self._refreshing:
                now = time.monotonic()
                deferred_since = now if deferred_since is None else deferred_since
                if now - deferred_since < MAX_TICK_DEFERRAL:
                    continue
            deferred_since = None
            try:
                self.cache.start_activity()
            except Exception:  # a bug must not stop the ticks: say so and go on
                log.exception("unexpected error while starting the secondary fetches")

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
        self._last_scrape = self._clock()
        refreshing = self.cache.waits_for_okx()
        if not refreshing:  # answered from the caches
            self._last_cached_scrape = self._last_scrape
            if self.cache.activity_idle():  # and no secondary fetch to start
                return self.cache.snapshots()
        wait = self.scrape_wait(scrape_timeout)
        with self._counted_as_refreshing(refreshing):
            return self._loop_thread.run(self.cache.refresh_async(wait), timeout=wait + 5)

    @contextlib.contextmanager
    def _counted_as_refreshing(self, refreshing: bool) -> Iterator[None]:
        """Count a scrape that waits for OKX among those refreshing: within :meth:`answering`,
        once, until the answer ends; outside it, until the fetch ends."""
        refreshed = getattr(self._answer, "refreshed", None)  # None outside answering()
        counted = refreshing and not refreshed
        if counted:
            self._count_refreshing(+1)
            if refreshed is not None:
                self._answer.refreshed = True
        try:
            yield
        finally:
            if counted and refreshed is None:
                self._count_refreshing(-1)

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Around a whole ``/metrics`` answer on the calling thread: when its :meth:`scrape`
        refreshes accounts, the tick starts no secondary fetch until the answer is rendered (or
        ``MAX_TICK_DEFERRAL`` has passed). Started while loan-info's thousand requests were
        under way, or while their answers were rendered, they competed with both for the one
        CPU Python runs on: the cold scrape of 1,000 accounts took about 5 % longer."""
        self._answer.refreshed = False
        try:
            yield
        finally:
            if self._answer.refreshed:
                self._count_refreshing(-1)
            del self._answer.refreshed

    def answered_from_caches_within(self, seconds: float) -> bool:
        """True when a scrape found nothing to fetch within the last ``seconds``."""
        return self._clock() - self._last_cached_scrape <= seconds

    def refreshing(self) -> bool:
        """True while a scrape that refreshes accounts is under way (see :meth:`answering`)."""
        return self._refreshing > 0

    def _count_refreshing(self, step: int) -> None:
        with self._refreshing_lock:
            self._refreshing += step

    def snapshots(self) -> list[AccountSnapshot]:
        """The cached state without contacting OKX."""
        return self.cache.snapshots()

    def close(self) -> None:
        """Close the HTTP clients and their pools, and stop the event loop."""
        clients = [*self._client_of.values(), *(client for _, client in self._feeds.values())]
        pools = {id(pool): pool for pool in self._pool_of.values()}

        async def close_clients() -> None:
            for account in self.cache.accounts:
                if account.activity is not None:
                    await account.activity.aclose()
            for client in clients:
                await client.aclose()
            for pool in pools.values():
                await pool.aclose()

        self._ticker.cancel()
        with contextlib.suppress(Exception):  # closing is best effort at shutdown
            self._loop_thread.run(close_clients(), timeout=1)
        self._loop_thread.stop()


def _schedules(config: ExporterConfig) -> Schedules:
    return Schedules(config.history_interval, config.interest_interval, config.headroom_interval)


def _global_settings(config: ExporterConfig) -> tuple[float, ...]:
    """The settings every account is built with: a change rebuilds them all on reload."""
    return (
        config.cache_ttl,
        config.max_stale,
        config.timeout,
        config.history_interval,
        config.interest_interval,
        config.headroom_interval,
        config.index_price_interval,
    )
