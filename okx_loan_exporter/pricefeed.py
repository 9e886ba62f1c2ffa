"""Index prices per base URL on their own schedule: at most one index-tickers request per
``price_interval``, single flight, only while an account of that base URL holds a loan order, and
the last good prices kept up to ``max_stale``.

A failed price request is counted and logged once per change of reason; it never touches an
account's ``okx_loan_up`` or its loan values. Like :mod:`okx_loan_exporter.cache`, everything runs
on the fetch loop, with an injectable clock, and knows nothing of HTTP servers or Prometheus.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from okx_loan_exporter.okx import FailureReason, OkxError
from okx_loan_exporter.prices import IndexPrices
from okx_loan_exporter.stats import RequestStats, RequestStatsSnapshot

log = logging.getLogger(__name__)


class PriceSource(Protocol):
    """Where a base URL's index prices come from (the public OKX client, or a fake in tests)."""

    async def index_prices(self) -> IndexPrices: ...


@dataclass(frozen=True)
class PriceSnapshot:
    """One base URL's index prices and request counts at one scrape."""

    base_url: str
    """The ``base_url`` label: scheme, host and port of the base URL (a path may hold a token)."""
    prices: IndexPrices | None
    """The latest good prices while younger than ``max_stale``; otherwise None."""
    last_success: float | None
    last_failure: FailureReason | None
    requests: RequestStatsSnapshot


class PriceFeed:
    """One base URL's index prices and the rules for when to ask OKX again."""

    def __init__(
        self,
        label: str,
        source: PriceSource,
        *,
        interval: float,
        max_stale: float,
        stats: RequestStats | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.label = label
        self.stats = stats if stats is not None else RequestStats()
        self._source = source
        self._interval = interval
        self._max_stale = max_stale
        self._clock = clock
        self._prices: IndexPrices | None = None
        self._last_success: float | None = None
        self._failure: FailureReason | None = None
        self._failure_code: str | None = None
        self._next_attempt = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._snapshot: PriceSnapshot | None = None

    def fetch_if_due(self, wanted: bool) -> asyncio.Task[None] | None:
        """The fetch a scrape must wait for: the one in flight, a new one if due and ``wanted``
        (an account of this base URL holds an order), or None."""
        if self._task is not None and not self._task.done():
            return self._task
        if not wanted or self._clock() < self._next_attempt:
            return None
        self._task = asyncio.get_running_loop().create_task(self._fetch())
        return self._task

    def idle(self, wanted: bool) -> bool:
        """True when no fetch is under way and none would start now (safe from any thread)."""
        task = self._task
        return (task is None or task.done()) and (not wanted or self._clock() < self._next_attempt)

    def snapshot(self) -> PriceSnapshot:
        """The prices while fresh; the same object until anything in it changes."""
        fresh = (
            self._last_success is not None and self._clock() - self._last_success <= self._max_stale
        )
        snapshot = PriceSnapshot(
            self.label,
            self._prices if fresh else None,
            self._last_success,
            self._failure,
            self.stats.snapshot(),
        )
        if snapshot != self._snapshot:
            self._snapshot = snapshot
        return self._snapshot

    async def _fetch(self) -> None:
        self._next_attempt = self._clock() + self._interval
        try:
            prices = await self._source.index_prices()
        except OkxError as error:
            self._record_failure(error.reason, str(error), error.code)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not kill the feed: count it and keep the last prices
            log.exception("%s: unexpected error while fetching index prices", self.label)
            self._record_failure(FailureReason.INVALID_RESPONSE, "unexpected error", None)
        else:
            if self._failure is not None:
                log.info("%s: OKX index prices answer again", self.label)
            self._prices, self._last_success = prices, self._clock()
            self._failure = self._failure_code = None

    def _record_failure(self, reason: FailureReason, error: str, code: str | None) -> None:
        changed = (self._failure, self._failure_code) != (reason, code)
        log.log(
            logging.WARNING if changed else logging.DEBUG,
            "%s: OKX index-tickers request failed: %s; loan values are unaffected, the what-if "
            "figures use the last good prices; next try in %gs",
            self.label,
            error,
            self._interval,
            extra={"base_url": self.label, "reason": reason.value},
        )
        self._failure, self._failure_code = reason, code


class PriceFeeds:
    """Every base URL's feed, and which feed serves which account."""

    def __init__(self, feeds: Mapping[str, PriceFeed], account_feeds: Mapping[str, str]) -> None:
        """``feeds`` by base URL; ``account_feeds`` maps an account name to its base URL."""
        self.feeds = dict(feeds)
        self._account_urls = {name: url for name, url in account_feeds.items() if url in self.feeds}
        self._members: dict[str, list[str]] = {}
        for name, url in account_feeds.items():
            self._members.setdefault(url, []).append(name)

    def _wanted(self, holders: Collection[str]) -> dict[str, bool]:
        return {
            url: any(name in holders for name in self._members.get(url, ())) for url in self.feeds
        }

    def fetch_due(self, holders: Collection[str]) -> list[asyncio.Task[None]]:
        """Start the fetches that are due for the base URLs of ``holders`` (accounts with an
        order); return every fetch in flight."""
        wanted = self._wanted(holders)
        return [
            task
            for url, feed in self.feeds.items()
            if (task := feed.fetch_if_due(wanted[url])) is not None
        ]

    def fetch_due_for(self, holder: str) -> asyncio.Task[None] | None:
        """:meth:`fetch_due` for the base URL of one account that holds an order, in O(1)."""
        url = self._account_urls.get(holder)
        return None if url is None else self.feeds[url].fetch_if_due(True)

    def idle(self, holders: Collection[str]) -> bool:
        wanted = self._wanted(holders)
        return all(feed.idle(wanted[url]) for url, feed in self.feeds.items())

    def by_account(self) -> dict[str, PriceSnapshot]:
        """Each account's base URL's prices (one snapshot per feed, shared by its accounts)."""
        taken = {url: feed.snapshot() for url, feed in self.feeds.items()}
        return {name: taken[url] for name, url in self._account_urls.items()}
