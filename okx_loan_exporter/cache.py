"""Per-account TTL cache of positions: at most one OKX request per account per TTL (counted from the
end of the previous fetch, so that it holds where OKX receives them too), single flight, backoff
after authentication failures, and a bound on how long stale values are served.

An account may have a credentials check (key rotation): it runs before every request, right after
an authentication failure (a changed key is tried at once), and once per TTL during the backoff.

All state changes happen on one asyncio event loop; scrapes ask :meth:`PositionCache.refresh`,
which starts the fetches that are due, waits for the ones in flight up to the scrape's deadline,
and returns a consistent :class:`AccountSnapshot` per account. A fetch that outlives the deadline is
not cancelled: it completes into the cache for the next scrape. Nothing here knows about HTTP
servers or Prometheus; time comes from an injectable clock.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from okx_loan_exporter.activity_cache import ActivityCache, ActivitySnapshot
from okx_loan_exporter.okx import FailureReason, OkxError
from okx_loan_exporter.okx_transport import (
    NO_CONNECTIONS,
    ConnectionStats,
    ConnectionStatsSnapshot,
)
from okx_loan_exporter.position import Position
from okx_loan_exporter.pricefeed import PriceFeeds, PriceSnapshot
from okx_loan_exporter.stats import RequestStats, RequestStatsSnapshot

log = logging.getLogger(__name__)

MAX_AUTH_BACKOFF = 300.0
"""Longest wait, in seconds, between attempts while OKX keeps refusing an account's key."""
CLOCK_NOTICE_SECONDS = 1.0
"""A clock correction that moves by at least this much is logged (OKX refuses 30 s of skew)."""


class PositionSource(Protocol):
    """Where an account's position comes from (the OKX client, or a fake in tests)."""

    clock_offset: float

    async def loan_info(self) -> Position: ...


CredentialsCheck = Callable[[], bool]
"""Re-reads an account's credentials from where they come from; True when they changed."""


@dataclass(frozen=True)
class AccountSnapshot:
    """Everything the collector needs about one account at one scrape."""

    name: str
    position: Position | None
    """The latest good position while it is younger than ``max_stale``; otherwise None."""
    up: bool
    """The latest attempt succeeded and no fetch was left unfinished at this scrape's deadline."""
    last_success: float | None
    last_failure: FailureReason | None
    last_error: str | None
    requests: RequestStatsSnapshot
    clock_offset: float
    last_hint: str | None = None
    """What to do about ``last_failure``, in one line (OkxError's hint), for the landing page."""
    prices: PriceSnapshot | None = None
    """The index prices of the account's base URL (None when prices are off)."""
    connections: ConnectionStatsSnapshot = NO_CONNECTIONS
    activity: ActivitySnapshot | None = None
    """The secondary endpoints' values (events, interest, headroom); None without them."""


@dataclass(frozen=True)
class _Outcome:
    position: Position | None = None
    last_success: float | None = None
    failure: FailureReason | None = None
    error: str | None = None
    code: str | None = None
    hint: str | None = None


class AccountCache:
    """One account's cached position and the rules for when to ask OKX again."""

    def __init__(
        self,
        name: str,
        source: PositionSource,
        *,
        ttl: float,
        max_stale: float,
        stats: RequestStats | None = None,
        connections: ConnectionStats | None = None,
        clock: Callable[[], float] = time.time,
        check_credentials: CredentialsCheck | None = None,
        activity: ActivityCache | None = None,
    ) -> None:
        self.name = name
        self.activity = activity
        if activity is not None:
            activity.on_clock_correction = self._log_clock_correction
        self.stats = stats if stats is not None else RequestStats()
        self.connections = connections if connections is not None else ConnectionStats()
        self._source = source
        self._ttl = ttl
        self._max_stale = max_stale
        self._clock = clock
        self._outcome = _Outcome()
        self._attempted = False
        self._next_attempt = float("-inf")
        self._auth_failures = 0
        self._task: asyncio.Task[None] | None = None
        self._kept: tuple[tuple[object, ...], AccountSnapshot] | None = None
        self._check_credentials = check_credentials
        self._credentials_checked = float("-inf")
        self._told_offset = source.clock_offset

    def fetch_if_due(self) -> asyncio.Task[None] | None:
        """The fetch this scrape must wait for: the one in flight, a new one if due, or None."""
        if self._task is not None and not self._task.done():
            return self._task
        if self._clock() < self._next_attempt:
            if not self._credentials_due() or not self._credentials_changed():
                return None
            self._next_attempt = self._clock()  # a new key during the auth backoff: try it now
        self._task = asyncio.get_running_loop().create_task(self._fetch())
        return self._task

    def idle(self) -> bool:
        """True when no fetch is under way and none is due, so a scrape need not wait for one.

        Safe to call from any thread: it only reads two attributes that the loop replaces whole,
        and a fetch is started only once the clock has passed ``_next_attempt``.
        """
        return self.loan_info_idle() and self.activity_idle()

    def activity_idle(self) -> bool:
        """True when no secondary fetch is under way or due (safe from any thread)."""
        activity = self._running_activity()
        return activity is None or activity.idle(self._outcome.position)

    def loan_info_idle(self) -> bool:
        """True when no loan-info fetch is under way or due: a scrape would not wait for OKX
        (the secondary fetches it may start are not waited for). Safe from any thread."""
        task = self._task
        return (
            (task is None or task.done())
            and self._clock() < self._next_attempt
            and not self._credentials_due()
        )

    def _credentials_due(self) -> bool:
        """In the backoff after authentication failures, the key is looked at once per TTL."""
        return (
            self._check_credentials is not None
            and self._auth_failures > 0
            and self._clock() >= self._credentials_checked + self._ttl
        )

    def _credentials_changed(self) -> bool:
        if self._check_credentials is None:
            return False
        self._credentials_checked = self._clock()
        changed = self._check_credentials()
        if changed:
            self._auth_failures = 0
        return changed

    def start_activity(self) -> None:
        """Start the secondary fetches that are due; nobody waits for them."""
        activity = self._running_activity()
        if activity is not None:
            activity.start_due(self._outcome.position)

    def _running_activity(self) -> ActivityCache | None:
        """The secondary endpoints, asked only while loan-info answers: when it fails (a wrong
        key, the network, a clock error) they would fail the same way, for nothing."""
        outcome = self._outcome
        if outcome.failure is None and outcome.last_success is not None:
            return self.activity
        return None

    @property
    def holds_orders(self) -> bool:
        """True when the latest good answer held at least one loan order."""
        position = self._outcome.position
        return position is not None and position.active

    def snapshot(
        self, *, pending: bool = False, prices: PriceSnapshot | None = None
    ) -> AccountSnapshot:
        """The account's state now: the same object as last time while every part of it is the
        same object (the outcome, the request and connection counts, the secondary endpoints'
        values and the prices, which their own caches hand out again while unchanged), so that a
        scrape of many accounts builds nothing and the render cache recognises the snapshots by
        identity."""
        outcome = self._outcome
        fresh = (
            outcome.last_success is not None
            and self._clock() - outcome.last_success <= self._max_stale
        )
        key = (
            outcome,
            fresh,
            self._attempted and outcome.failure is None and not pending,
            self.stats.snapshot(),
            self.connections.snapshot(),
            None if self.activity is None else self.activity.snapshot(outcome.position),
            self._source.clock_offset,
            prices,
        )
        kept = self._kept
        if kept is not None and all(a is b for a, b in zip(kept[0], key, strict=True)):
            return kept[1]
        _, _, up, requests, connections, activity, clock_offset, _ = key
        snapshot = AccountSnapshot(
            name=self.name,
            position=outcome.position if fresh else None,
            up=up,
            last_success=outcome.last_success,
            last_failure=outcome.failure,
            last_error=outcome.error,
            requests=requests,
            clock_offset=clock_offset,
            last_hint=outcome.hint,
            prices=prices,
            connections=connections,
            activity=activity,
        )
        self._kept = (key, snapshot)
        return snapshot

    async def _fetch(self) -> None:
        started = self._clock()
        self._next_attempt = started + self._ttl  # whatever the outcome: one request per TTL
        offset = self._source.clock_offset
        self._credentials_changed()
        try:
            try:
                position = await self._source.loan_info()
            except OkxError as error:
                if error.reason is not FailureReason.AUTH or not self._credentials_changed():
                    raise
                position = await self._source.loan_info()  # the key changed meanwhile: use it
        except OkxError as error:
            self._record_failure(started, error.reason, str(error), error.code, error.hint)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not kill the cache: count it and keep serving
            log.exception("account %s: unexpected error while fetching loan-info", self.name)
            self._record_failure(
                started,
                FailureReason.INVALID_RESPONSE,
                "unexpected error while reading the answer",
                None,
                "an exporter bug: the log has the traceback; please report it",
            )
        else:
            self._record_success(position)
        finally:
            # The TTL also runs from the end: a request delayed on its way (a busy event loop, a
            # slow connection) must not bring the next one within a TTL of it at OKX.
            self._next_attempt = max(self._next_attempt, self._clock() + self._ttl)
            self._attempted = True
            self._log_clock_correction(offset)

    def _log_clock_correction(self, before: float) -> None:
        """Say when the client re-measured OKX's clock (after a 50102) and the offset moved.

        Any call of the account may correct it (loan-info or a secondary endpoint); the offset
        last told is kept, so that two calls that saw the same correction say it once.
        """
        after = self._source.clock_offset
        if abs(after - before) < CLOCK_NOTICE_SECONDS:
            return
        if abs(after - self._told_offset) < CLOCK_NOTICE_SECONDS:
            return
        self._told_offset = after
        extra = {"account": self.name, "clock_offset": round(after, 3)}
        if abs(after) < CLOCK_NOTICE_SECONDS:
            log.info(
                "account %s: the local clock agrees with OKX's again; requests are signed "
                "with the local time",
                self.name,
                extra=extra,
            )
            return
        log.warning(
            "account %s: the local clock is %.1f s %s OKX's (OKX code 50102); requests "
            "are now signed with OKX's time: fix the machine's clock (NTP)",
            self.name,
            abs(after),
            "behind" if after > 0 else "ahead of",
            extra=extra,
        )

    def _record_success(self, position: Position) -> None:
        previous = self._outcome
        if previous.failure is not None:
            log.info(
                "account %s: OKX answers again after %s",
                self.name,
                previous.failure.value,
                extra={"account": self.name},
            )
        elif previous.last_success is None:
            log.info(
                "account %s: first answer from OKX (%d loan order%s)",
                self.name,
                len(position.orders),
                "" if len(position.orders) == 1 else "s",
                extra={"account": self.name},
            )
        if previous.position is not None:
            _log_order_changes(self.name, previous.position, position)
        self._auth_failures = 0
        self._outcome = _Outcome(position=position, last_success=self._clock())

    def _record_failure(
        self, started: float, reason: FailureReason, error: str, code: str | None, hint: str
    ) -> None:
        previous = self._outcome
        retry_in = self._ttl
        if reason is FailureReason.AUTH:
            self._auth_failures += 1
            retry_in = max(self._ttl, min(self._ttl * 2**self._auth_failures, MAX_AUTH_BACKOFF))
            self._next_attempt = started + retry_in
        changed = (previous.failure, previous.code) != (reason, code)
        level = logging.WARNING if changed else logging.DEBUG
        log.log(
            level,
            "account %s: OKX request failed: %s; next try in %gs",
            self.name,
            error,
            retry_in,
            extra={"account": self.name, "reason": reason.value},
        )
        self._outcome = _Outcome(
            position=previous.position,
            last_success=previous.last_success,
            failure=reason,
            error=error,
            code=code,
            hint=hint or None,
        )


def _log_order_changes(account: str, before: Position, after: Position) -> None:
    """Say which loan orders OKX started or stopped reporting (opened, repaid or closed)."""
    old_ids = [order.order_id for order in before.orders]
    new_ids = [order.order_id for order in after.orders]
    opened = [order_id for order_id in new_ids if order_id not in old_ids]
    gone = [order_id for order_id in old_ids if order_id not in new_ids]
    if opened or gone:
        log.info(
            "account %s: loan orders changed: %d now (new: %s; gone: %s)",
            account,
            len(new_ids),
            ", ".join(opened) or "none",
            ", ".join(gone) or "none",
            extra={"account": account},
        )


class PositionCache:
    """All accounts' caches and the index-price feeds; scrapes call :meth:`refresh_async` on the
    cache's event loop."""

    def __init__(
        self,
        accounts: Sequence[AccountCache],
        prices: PriceFeeds | None = None,
        *,
        ticked: bool = False,
    ) -> None:
        self.accounts = tuple(accounts)
        self.prices = prices
        self.ticked = ticked
        """True when something calls :meth:`start_activity` every second or so (the exporter)."""

    def _holders(self) -> set[str]:
        return {account.name for account in self.accounts if account.holds_orders}

    async def refresh_async(self, wait: float) -> list[AccountSnapshot]:
        """Start due fetches, wait up to ``wait`` seconds for those in flight, snapshot all.

        Index prices are fetched beside the accounts; when an account's first orders arrive in
        this scrape, its base URL's prices are asked for at once (not after every account has
        answered: at 1,000 accounts that added a request's round trip to a cold scrape), within
        the same ``wait``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        tasks: dict[str, asyncio.Task[None]] = {}
        for account in self.accounts:
            task = account.fetch_if_due()
            if task is not None:
                tasks[account.name] = task
                if self.prices is not None:
                    task.add_done_callback(functools.partial(self._ask_prices_for, account))
        price_tasks = self.prices.fetch_due(self._holders()) if self.prices else []
        if (tasks or price_tasks) and wait > 0:
            await asyncio.wait([*tasks.values(), *price_tasks], timeout=wait)
        if self.prices is not None and tasks:
            price_tasks = self.prices.fetch_due(self._holders())  # with those under way
            left = deadline - loop.time()
            if price_tasks and left > 0:
                await asyncio.wait(price_tasks, timeout=left)
        # After loan-info's wait, so that they never compete with it for connections; the next
        # scrape (or this one's snapshot, if they are quick) shows what they bring. A scrape that
        # refreshed accounts leaves them to the exporter's tick (within a second): started now,
        # a thousand accounts' first round would compete with this scrape's rendering.
        if not tasks or not self.ticked:
            self.start_activity()
        prices = self._prices()
        return [
            account.snapshot(
                pending=account.name in tasks and not tasks[account.name].done(),
                prices=prices.get(account.name),
            )
            for account in self.accounts
        ]

    def _ask_prices_for(self, account: AccountCache, _: object) -> None:
        """Once ``account``'s loan-info fetch ended: if it holds orders, start its base URL's
        price fetch when due (the scrape then waits for it with the others in flight)."""
        if self.prices is not None and account.holds_orders:
            self.prices.fetch_due_for(account.name)

    def start_activity(self) -> None:
        """Start every account's due secondary fetches; nobody waits for them (on the loop)."""
        for account in self.accounts:
            account.start_activity()

    def _prices(self) -> dict[str, PriceSnapshot]:
        return {} if self.prices is None else self.prices.by_account()

    def idle(self) -> bool:
        """True when :meth:`refresh_async` would neither start nor wait for a fetch."""
        return not self.waits_for_okx() and self.activity_idle()

    def activity_idle(self) -> bool:
        """True when no account's secondary fetch is under way or due."""
        return all(account.activity_idle() for account in self.accounts)

    def waits_for_okx(self) -> bool:
        """True when :meth:`refresh_async` would wait for OKX: a loan-info or index-price fetch
        is due or under way (it only starts the secondary endpoints' fetches)."""
        return not all(account.loan_info_idle() for account in self.accounts) or (
            self.prices is not None and not self.prices.idle(self._holders())
        )

    def snapshots(self) -> list[AccountSnapshot]:
        """The current state without asking OKX (for the landing page, and idle scrapes)."""
        prices = self._prices()
        return [account.snapshot(prices=prices.get(account.name)) for account in self.accounts]
