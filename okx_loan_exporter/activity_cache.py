"""One account's secondary endpoints: when each is due, paced requests, and their last good values.

loan-history, interest-accrued and the headroom pair (max-loan, max-collateral-redeem-amount) each
run on their own interval (0 turns one off). The first fetch of each comes at the first scrape; the
second comes after a fraction of the interval that is the account's own (its *phase*, from its
name), then one interval after the one before: so a thousand accounts started together do not all
ask again together, and from the first round on their requests spread evenly over each interval.
What is due is started by the exporter's once-a-second tick while it is scraped (and by a scrape
that refreshed nothing); nobody waits for it: the fetch runs on the cache's event loop and lands
here for a later scrape. A failure is counted by the client's request observer, logged once per
change with its hint, and keeps the last values,
which are withheld once they are ``max_stale`` older than their refresh was due. None of this
touches ``okx_loan_up``, which stays loan-info's. Nothing here knows about HTTP or Prometheus.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from okx_loan_exporter.loan_activity import (
    EventCounts,
    EventLedger,
    InterestLedger,
    InterestState,
)
from okx_loan_exporter.loan_records import (
    LIQUIDATION_TYPES,
    BorrowHeadroom,
    HistoryRecord,
    InterestRecord,
)
from okx_loan_exporter.okx import Endpoint, OkxError
from okx_loan_exporter.pacing import Pacer
from okx_loan_exporter.position import Position
from okx_loan_exporter.sharding import name_hash

log = logging.getLogger(__name__)
T = TypeVar("T")


class ActivitySource(Protocol):
    """The OKX calls this cache makes (the OKX client, or a fake in tests)."""

    clock_offset: float

    async def loan_history(self) -> tuple[HistoryRecord, ...]: ...

    async def interest_accrued(self) -> tuple[InterestRecord, ...]: ...

    async def max_loan(self, currency: str, order_id: str) -> BorrowHeadroom: ...

    async def max_redeem(self, currency: str, order_id: str) -> float | None: ...


@dataclass(frozen=True)
class Schedules:
    """Seconds between fetches of each secondary endpoint; 0 turns it off."""

    history: float = 60.0
    interest: float = 600.0
    headroom: float = 300.0

    def endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoints these schedules call."""
        return (
            *((Endpoint.LOAN_HISTORY,) if self.history else ()),
            *((Endpoint.INTEREST_ACCRUED,) if self.interest else ()),
            *((Endpoint.MAX_LOAN, Endpoint.MAX_REDEEM) if self.headroom else ()),
        )


IN_FLIGHT = 16
"""Secondary requests in flight at once, over all accounts of an exporter: background work is
spread out rather than competing with scrapes as a burst of thousands of requests."""
INTERVAL_KEYS = {
    Endpoint.LOAN_HISTORY: "history_interval",
    Endpoint.INTEREST_ACCRUED: "interest_interval",
    Endpoint.MAX_LOAN: "headroom_interval",
    Endpoint.MAX_REDEEM: "headroom_interval",
}
"""The config key of each secondary endpoint's schedule, for what a log line tells to change."""


@dataclass(frozen=True)
class ActivitySnapshot:
    """The secondary endpoints' values for one scrape; None or empty where off or unknown."""

    events: EventCounts | None = None
    """None when loan-history is off."""
    interest: Mapping[str, InterestState] | None = None
    """Per debt currency; None when interest-accrued is off. ``rate`` is withheld when stale."""
    borrow: Mapping[tuple[str, str], BorrowHeadroom] = field(default_factory=dict)
    """(order, currency) -> max-loan, for the orders and debt currencies of the position."""
    redeem: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """(order, currency) -> maxRedeemAmt, for the orders and collateral of the position."""


def phase_of(name: str) -> float:
    """An account's phase: a fraction in (0, 1] from its name's SHA-256, the same at every start."""
    return (name_hash(name) + 1) / 2**64


class _Health:
    """One endpoint's last outcome, to log a failure once per change and a recovery once."""

    def __init__(self, account: str, endpoint: Endpoint) -> None:
        self._account = account
        self._endpoint = endpoint
        self._failure: tuple[str, str | None] | None = None

    def failed(self, error: OkxError, retry_in: float) -> None:
        key = (error.reason.value, error.code)
        level = logging.WARNING if key != self._failure else logging.DEBUG
        # The client's hints speak of loan-info's cache_ttl; this endpoint has its own interval.
        text = str(error).replace("cache_ttl", INTERVAL_KEYS[self._endpoint])
        log.log(
            level,
            "account %s: OKX %s request failed: %s; next try in %gs (loan-info values unaffected)",
            self._account,
            self._endpoint.value,
            text,
            retry_in,
            extra={
                "account": self._account,
                "endpoint": self._endpoint.value,
                "reason": error.reason.value,
            },
        )
        self._failure = key

    def succeeded(self) -> None:
        if self._failure is not None:
            log.info(
                "account %s: OKX %s answers again after %s",
                self._account,
                self._endpoint.value,
                self._failure[0],
                extra={"account": self._account, "endpoint": self._endpoint.value},
            )
        self._failure = None


class ActivityCache:
    """Schedules, paces and keeps one account's secondary endpoints; runs on the cache's loop."""

    def __init__(
        self,
        name: str,
        source: ActivitySource,
        schedules: Schedules,
        *,
        max_stale: float,
        clock: Callable[[], float] = time.time,
        pacer: Callable[[], Pacer] = Pacer,
        in_flight: asyncio.Semaphore | None = None,
        phase: float | None = None,
    ) -> None:
        self.name = name
        self.phase = phase_of(name) if phase is None else phase
        """The fraction (0 to 1] of each interval between the first fetch and the second."""
        self._in_flight = in_flight if in_flight is not None else asyncio.Semaphore(IN_FLIGHT)
        self._source = source
        self._schedules = schedules
        self._max_stale = max_stale
        self._clock = clock
        self._pacers = {endpoint: pacer() for endpoint in schedules.endpoints()}
        self._health = {endpoint: _Health(name, endpoint) for endpoint in schedules.endpoints()}
        self._next = {
            job: 0.0 for job in ("history", "interest", "headroom") if getattr(schedules, job)
        }
        """When each endpoint that is on is due next (0: at once)."""
        self._started: set[str] = set()
        self._soonest = 0.0
        """The earliest of ``_next``: nothing is due before it."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[str] = set()
        self._events = EventLedger() if schedules.history else None
        self._interest = InterestLedger() if schedules.interest else None
        self._interest_success: float | None = None
        self._borrow: dict[tuple[str, str], tuple[BorrowHeadroom, float]] = {}
        self._redeem: dict[tuple[str, str], tuple[float | None, float]] = {}
        self._version = 0
        self._cached: tuple[int, Position | None, float, ActivitySnapshot] | None = None
        self.on_clock_correction: Callable[[float], None] | None = None
        """Called after each call with the clock offset it started with, so that the account's
        cache can say when a call of this cache corrected the clock (a 50102)."""

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._schedules.endpoints()

    def idle(self, position: Position | None) -> bool:
        """True when no secondary fetch is due (those in flight are never waited for)."""
        return all(not self._due(job, position) for job in self._next)

    def start_due(self, position: Position | None) -> None:
        """Start each due fetch as a task on the running loop; never waits for one."""
        if self._clock() < self._soonest:
            return  # the common case, a thousand times a second at 1,000 accounts: be quick
        jobs: dict[str, Callable[[], Awaitable[None]]] = {
            "history": self._fetch_history,
            "interest": self._fetch_interest,
            "headroom": lambda: self._fetch_headroom(position),
        }
        for job, run in jobs.items():
            if not self._due(job, position):
                continue
            interval = getattr(self._schedules, job)
            share = 1.0 if job in self._started else self.phase
            self._started.add(job)
            self._next[job] = self._clock() + interval * share
            self._soonest = min(self._next.values())
            self._running.add(job)
            task = asyncio.get_running_loop().create_task(self._guarded(job, run))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop the fetches in flight and wait until they are gone (at shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def snapshot(self, position: Position | None) -> ActivitySnapshot:
        """The values for a scrape; the same object while they are the same (a fetch that
        brought nothing new leaves the scrape's rendered text valid)."""
        now = self._clock()
        version = self._version
        cached = self._cached
        if (
            cached is not None
            and cached[0] == version
            and cached[1] is position
            and now < cached[2]
        ):
            return cached[3]
        snapshot, valid_until = self._build(position, now)
        if cached is not None and snapshot == cached[3]:
            snapshot = cached[3]  # the same values: the same object, so nothing is rendered again
        self._cached = (version, position, valid_until, snapshot)
        return snapshot

    def _due(self, job: str, position: Position | None) -> bool:
        interval: float = getattr(self._schedules, job)
        if not interval or job in self._running or self._clock() < self._next[job]:
            return False
        return job != "headroom" or (position is not None and bool(position.orders))

    async def _guarded(self, job: str, run: Callable[[], Awaitable[None]]) -> None:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not kill the loop: say so and try again next time
            log.exception("account %s: unexpected error while fetching %s", self.name, job)
        finally:
            self._running.discard(job)
            self._version += 1

    async def _call(self, endpoint: Endpoint, call: Callable[[], Awaitable[T]]) -> T | None:
        pacer = self._pacers[endpoint]
        await pacer.wait_turn()
        offset = self._source.clock_offset
        try:
            async with self._in_flight:
                result = await call()
        except OkxError as error:
            self._health[endpoint].failed(error, self._interval_of(endpoint))
            return None
        finally:
            pacer.finished()  # an endpoint's calls of one account come one after another
            if self.on_clock_correction is not None:
                self.on_clock_correction(offset)
        self._health[endpoint].succeeded()
        return result

    def _interval_of(self, endpoint: Endpoint) -> float:
        job = INTERVAL_KEYS[endpoint].removesuffix("_interval")
        return float(getattr(self._schedules, job))

    async def _fetch_history(self) -> None:
        records = await self._call(Endpoint.LOAN_HISTORY, self._source.loan_history)
        if records is None or self._events is None:
            return
        for record in self._events.add_page(records):
            level = logging.WARNING if record.type in LIQUIDATION_TYPES else logging.INFO
            log.log(
                level,
                "account %s: loan event %s: %s %s",
                self.name,
                record.type,
                "" if record.amount is None else f"{record.amount:g}",
                record.currency,
                extra={"account": self.name, "event": record.type},
            )

    async def _fetch_interest(self) -> None:
        records = await self._call(Endpoint.INTEREST_ACCRUED, self._source.interest_accrued)
        if records is None or self._interest is None:
            return
        self._interest.add_page(records)
        self._interest_success = self._clock()

    async def _fetch_headroom(self, position: Position | None) -> None:
        if position is None:
            return

        async def borrow() -> None:
            for order in position.orders:
                for currency in order.loans:
                    found = await self._call(
                        Endpoint.MAX_LOAN,
                        functools.partial(self._source.max_loan, currency, order.order_id),
                    )
                    if found is not None:
                        self._borrow[(order.order_id, currency)] = (found, self._clock())
                        self._version += 1

        async def redeem() -> None:
            for order in position.orders:
                for currency in order.collateral:
                    found = await self._call(
                        Endpoint.MAX_REDEEM,
                        functools.partial(self._redeem_call, currency, order.order_id),
                    )
                    if found is not None:
                        self._redeem[(order.order_id, currency)] = (found[0], self._clock())
                        self._version += 1

        await asyncio.gather(borrow(), redeem())

    async def _redeem_call(self, currency: str, order_id: str) -> tuple[float | None]:
        """max_redeem's answer in a tuple: None is an answer there (OKX sent ``""``), while
        :meth:`_call` returns None for a failed call."""
        return (await self._source.max_redeem(currency, order_id),)

    def _build(self, position: Position | None, now: float) -> tuple[ActivitySnapshot, float]:
        """The snapshot at ``now``, and the time until which it stays right."""
        expiries: list[float] = []

        def fresh(fetched_at: float | None, interval: float) -> bool:
            if fetched_at is None:
                return False
            until = fetched_at + interval + self._max_stale
            if now < until:
                expiries.append(until)
                return True
            return False

        interest = None
        if self._interest is not None:
            rate_fresh = fresh(self._interest_success, self._schedules.interest)
            interest = {
                currency: state
                if rate_fresh
                else InterestState(None, state.last_timestamp, state.accrued)
                for currency, state in self._interest.state.items()
            }
        borrow: dict[tuple[str, str], BorrowHeadroom] = {}
        redeem: dict[tuple[str, str], float] = {}
        for order in position.orders if position is not None else ():
            for currency in order.loans:
                found = self._borrow.get((order.order_id, currency))
                if found is not None and fresh(found[1], self._schedules.headroom):
                    borrow[(order.order_id, currency)] = found[0]
            for currency in order.collateral:
                amount = self._redeem.get((order.order_id, currency))
                if (
                    amount is not None
                    and amount[0] is not None
                    and fresh(amount[1], self._schedules.headroom)
                ):
                    redeem[(order.order_id, currency)] = amount[0]
        snapshot = ActivitySnapshot(
            events=self._events.state if self._events is not None else None,
            interest=interest,
            borrow=borrow,
            redeem=redeem,
        )
        return snapshot, min(expiries, default=float("inf"))
