"""The secondary endpoints' cache: schedules, pacing, never waited for, failures, staleness."""

from __future__ import annotations

import asyncio
import logging

import pytest

from okx_loan_exporter.activity_cache import ActivityCache, Schedules, phase_of
from okx_loan_exporter.cache import AccountCache, PositionCache
from okx_loan_exporter.loan_records import BorrowHeadroom, HistoryRecord, InterestRecord
from okx_loan_exporter.okx import FailureReason, OkxError
from okx_loan_exporter.pacing import Pacer
from okx_loan_exporter.position import Order, Position

POSITION = Position(
    (
        Order("1", loans={"USDT": 100.0}, collateral={"BTC": 0.1, "ETH": 1.0}),
        Order("2", loans={"USDC": 50.0, "USDT": 10.0}, collateral={"SOL": 3.0}),
    )
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class FakeSource:
    """Answers like OKX; ``fail`` makes every call raise; ``calls`` lists them in order."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[str, ...]] = []
        self.fail: OkxError | None = None
        self.history: list[HistoryRecord] = [HistoryRecord("10", "borrowed", "USDT", 1.0, 900.0)]
        self.interest: list[InterestRecord] = [InterestRecord("5", "USDT", 100.0, 0.1, 0.08, 950.0)]
        self.gate: asyncio.Event | None = None
        self.clock_offset = 0.0

    async def _answer(self, *call: str) -> None:
        self.calls.append((*call, f"{self.clock():g}"))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail

    async def loan_history(self) -> tuple[HistoryRecord, ...]:
        await self._answer("history")
        return tuple(self.history)

    async def interest_accrued(self) -> tuple[InterestRecord, ...]:
        await self._answer("interest")
        return tuple(self.interest)

    async def max_loan(self, currency: str, order_id: str) -> BorrowHeadroom:
        await self._answer("max_loan", order_id, currency)
        return BorrowHeadroom(currency, 7.0, 7.5)

    async def max_redeem(self, currency: str, order_id: str) -> float | None:
        await self._answer("max_redeem", order_id, currency)
        return 0.5


def make(clock: Clock, schedules: Schedules, sleeps: list[float] | None = None, phase: float = 1.0):
    """The cache and its source; paced waits go to ``sleeps`` and move the clock if given.

    ``phase`` 1 keeps the second fetch of each endpoint one whole interval after the first."""
    source = FakeSource(clock)

    async def sleep(delay: float) -> None:
        if sleeps is not None:
            sleeps.append(delay)
            clock.now += delay

    cache = ActivityCache(
        "main",
        source,
        schedules,
        max_stale=300.0,
        clock=clock,
        pacer=lambda: Pacer(clock=clock, sleep=sleep),
        phase=phase,
    )
    return cache, source


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def test_each_endpoint_on_its_own_schedule():
    clock = Clock()

    async def run() -> list[tuple[str, ...]]:
        cache, source = make(clock, Schedules(history=60, interest=600, headroom=300))
        cache.start_due(POSITION)
        await settle()
        first = len(source.calls)
        assert first == 2 + 3 + 3  # history, interest, 3 max-loan, 3 max-redeem
        assert cache.idle(POSITION)
        clock.now += 60
        assert not cache.idle(POSITION)
        cache.start_due(POSITION)
        await settle()
        assert [call[0] for call in source.calls[first:]] == ["history"]
        clock.now += 240
        cache.start_due(POSITION)
        await settle()
        return source.calls[first + 1 :]

    later = asyncio.run(run())
    assert sorted(call[0] for call in later) == ["history"] + ["max_loan"] * 3 + ["max_redeem"] * 3


def test_headroom_asks_per_order_and_currency_paced_one_per_two_seconds():
    clock, sleeps = Clock(), []

    async def run() -> list[tuple[str, ...]]:
        cache, source = make(clock, Schedules(history=0, interest=0, headroom=300), sleeps)
        cache.start_due(POSITION)
        await settle()
        snapshot = cache.snapshot(POSITION)
        assert snapshot.borrow == {
            ("1", "USDT"): BorrowHeadroom("USDT", 7.0, 7.5),
            ("2", "USDC"): BorrowHeadroom("USDC", 7.0, 7.5),
            ("2", "USDT"): BorrowHeadroom("USDT", 7.0, 7.5),
        }
        assert snapshot.redeem == {("1", "BTC"): 0.5, ("1", "ETH"): 0.5, ("2", "SOL"): 0.5}
        return source.calls

    calls = asyncio.run(run())
    loans = [call[1:] for call in calls if call[0] == "max_loan"]
    assert [call[:2] for call in loans] == [("1", "USDT"), ("2", "USDC"), ("2", "USDT")]
    assert sleeps, "the second max-loan call of the run was not held back"
    for endpoint in ("max_loan", "max_redeem"):
        times = [float(call[-1]) for call in calls if call[0] == endpoint]
        for start in times:
            assert sum(start <= at < start + 2.0 for at in times) <= 1, (endpoint, times)


def test_the_second_fetch_comes_after_the_accounts_phase_then_every_interval():
    clock = Clock()

    async def run() -> list[float]:
        cache, source = make(clock, Schedules(history=60, interest=0, headroom=0), phase=0.25)
        for _ in range(100):  # a scrape every second for 100 s
            cache.start_due(POSITION)
            await settle()
            clock.now += 1
        return [float(call[-1]) - 1_000.0 for call in source.calls]

    assert asyncio.run(run()) == [0.0, 15.0, 75.0]


def test_phases_spread_a_thousand_accounts_evenly_and_stay_the_same():
    phases = [phase_of(f"acct-{index:04d}") for index in range(1000)]
    assert all(0 < phase <= 1 for phase in phases)
    deciles = [
        sum(tenth / 10 < phase <= (tenth + 1) / 10 for phase in phases) for tenth in range(10)
    ]
    assert min(deciles) >= 70 and max(deciles) <= 130, deciles
    assert phase_of("acct-0001") == phases[1]  # from the name alone: the same after a restart
    cache = ActivityCache("acct-0001", FakeSource(Clock()), Schedules(), max_stale=1.0)
    assert cache.phase == phases[1]


def test_off_endpoints_are_never_called():
    clock = Clock()

    async def run() -> FakeSource:
        cache, source = make(clock, Schedules(history=60, interest=0, headroom=0))
        cache.start_due(POSITION)
        await settle()
        snapshot = cache.snapshot(POSITION)
        assert snapshot.interest is None and snapshot.borrow == {} and snapshot.events is not None
        return source

    assert [call[0] for call in asyncio.run(run()).calls] == ["history"]
    assert Schedules(0, 0, 0).endpoints() == ()


def test_failure_keeps_the_last_values_logs_once_and_recovers(caplog):
    caplog.set_level(logging.INFO, logger="okx_loan_exporter")
    clock = Clock()

    async def run() -> None:
        cache, source = make(clock, Schedules(history=0, interest=60, headroom=60))
        cache.start_due(POSITION)
        await settle()
        good = cache.snapshot(POSITION)
        assert good.interest["USDT"].rate == 0.08 and good.borrow
        source.fail = OkxError(
            FailureReason.RATE_LIMITED, "OKX code 50011", "raise cache_ttl", code="50011"
        )
        for _ in range(3):
            clock.now += 60
            cache.start_due(POSITION)
            await settle()
        kept = cache.snapshot(POSITION)
        assert kept.interest["USDT"].rate == 0.08 and kept.borrow == good.borrow
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 3  # once per endpoint: interest_accrued, max_loan, max_redeem
        for line in warnings:  # the hint names the endpoint's own interval, not cache_ttl
            assert "loan-info values unaffected" in line, line
            assert "raise interest_interval" in line or "raise headroom_interval" in line, line
        source.fail = None
        clock.now += 60
        cache.start_due(POSITION)
        await settle()
        infos = [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()]
        assert len(infos) == 3

    asyncio.run(run())


def test_values_are_withheld_max_stale_after_their_refresh_was_due():
    clock = Clock()

    async def run() -> None:
        cache, source = make(clock, Schedules(history=60, interest=60, headroom=60))
        cache.start_due(POSITION)
        await settle()
        source.fail = OkxError(FailureReason.TIMEOUT, "no answer", "raise timeout")
        clock.now += 60 + 300 - 1
        cache.start_due(POSITION)
        await settle()
        assert cache.snapshot(POSITION).interest["USDT"].rate == 0.08
        clock.now += 2
        stale = cache.snapshot(POSITION)
        assert stale.interest["USDT"].rate is None  # withheld ...
        assert stale.interest["USDT"].last_timestamp == 950.0  # ... but the facts stay
        assert stale.borrow == {} and stale.redeem == {}
        assert stale.events is not None  # counters never go away

    asyncio.run(run())


def test_headroom_of_an_order_that_is_gone_disappears():
    clock = Clock()

    async def run() -> None:
        cache, _ = make(clock, Schedules(history=0, interest=0, headroom=60))
        cache.start_due(POSITION)
        await settle()
        only_second = Position((POSITION.orders[1],))
        snapshot = cache.snapshot(only_second)
        assert {order for order, _ in snapshot.borrow} == {"2"}
        assert {order for order, _ in snapshot.redeem} == {"2"}

    asyncio.run(run())


class LoanInfo:
    """loan-info for AccountCache: succeeds unless ``fail`` is set."""

    def __init__(self) -> None:
        self.fail: OkxError | None = None
        self.clock_offset = 0.0

    async def loan_info(self) -> Position:
        if self.fail is not None:
            raise self.fail
        return POSITION


def test_a_scrape_never_waits_for_a_secondary_endpoint():
    clock = Clock()

    async def run() -> None:
        activity, source = make(clock, Schedules(history=60, interest=60, headroom=60))
        source.gate = asyncio.Event()  # every secondary call hangs until released
        account = AccountCache(
            "main", LoanInfo(), ttl=10, max_stale=300, clock=clock, activity=activity
        )
        task = account.fetch_if_due()
        assert task is not None
        await asyncio.wait_for(task, 1)  # loan-info is all a scrape waits for
        account.start_activity()  # what PositionCache does after that wait
        await settle()
        assert source.calls, "the secondary fetches did not start after loan-info's answer"
        snapshot = account.snapshot()
        assert snapshot.up and snapshot.activity is not None
        assert snapshot.activity.borrow == {}  # still in flight
        assert account.fetch_if_due() is None  # and nothing for the scrape to wait for
        source.gate.set()
        await settle()
        assert account.snapshot().activity.borrow

    asyncio.run(run())


@pytest.mark.parametrize("ticked", [False, True])
def test_a_refreshing_scrape_leaves_the_secondary_fetches_to_the_tick(ticked):
    """With a tick (the exporter's), a scrape that refreshed loan-info does not start them: they
    would compete with its rendering; a later scrape that fetched nothing does."""
    clock = Clock()

    async def run() -> tuple[int, int]:
        activity, source = make(clock, Schedules(history=60, interest=0, headroom=0))
        account = AccountCache(
            "main", LoanInfo(), ttl=10, max_stale=300, clock=clock, activity=activity
        )
        cache = PositionCache([account], ticked=ticked)
        await cache.refresh_async(1)  # fetched loan-info
        await settle()
        after_refresh = len(source.calls)
        await cache.refresh_async(1)  # nothing to fetch
        await settle()
        return after_refresh, len(source.calls)

    assert asyncio.run(run()) == ((0, 1) if ticked else (1, 1))


def test_secondary_endpoints_wait_while_loan_info_fails():
    clock = Clock()

    async def run() -> None:
        activity, source = make(clock, Schedules(history=1, interest=1, headroom=1))
        loan_info = LoanInfo()
        loan_info.fail = OkxError(FailureReason.AUTH, "OKX code 50113", "the secret key is wrong")
        account = AccountCache(
            "main", loan_info, ttl=10, max_stale=300, clock=clock, activity=activity
        )
        await account.fetch_if_due()
        account.start_activity()
        await settle()
        assert source.calls == []  # a wrong key would fail them too
        clock.now += 600
        loan_info.fail = None
        await account.fetch_if_due()
        account.start_activity()
        await settle()
        assert {call[0] for call in source.calls} == {
            "history",
            "interest",
            "max_loan",
            "max_redeem",
        }

    asyncio.run(run())


@pytest.mark.parametrize("error", [RuntimeError("bug"), KeyError("x")])
def test_a_bug_in_a_fetch_is_logged_and_the_schedule_goes_on(error, caplog):
    clock = Clock()

    async def run() -> None:
        cache, source = make(clock, Schedules(history=60, interest=0, headroom=0))

        async def broken() -> tuple[HistoryRecord, ...]:
            raise error

        source.loan_history = broken  # type: ignore[method-assign]
        cache.start_due(POSITION)
        await settle()
        assert cache.idle(POSITION)
        clock.now += 60
        assert not cache.idle(POSITION)

    asyncio.run(run())
    assert any("unexpected error while fetching history" in r.getMessage() for r in caplog.records)


def test_a_clock_correction_made_by_a_secondary_endpoint_is_told_once(caplog):
    caplog.set_level(logging.INFO, logger="okx_loan_exporter")
    clock = Clock()

    async def run() -> None:
        activity, source = make(clock, Schedules(history=60, interest=60, headroom=0))
        loan_info = LoanInfo()
        account = AccountCache(
            "main", loan_info, ttl=10, max_stale=300, clock=clock, activity=activity
        )
        loan_info.clock_offset = source.clock_offset = 0.0
        await account.fetch_if_due()
        account.start_activity()
        await settle()
        original = source.loan_history

        async def corrected() -> tuple[HistoryRecord, ...]:
            # what OkxClient does on a 50102: the shared client's offset moves
            loan_info.clock_offset = source.clock_offset = 120.0
            return await original()

        source.loan_history = corrected  # type: ignore[method-assign]
        clock.now += 60
        await account.fetch_if_due()
        account.start_activity()
        await settle()

    asyncio.run(run())
    told = [r.getMessage() for r in caplog.records if "OKX code 50102" in r.getMessage()]
    assert len(told) == 1, told
    assert "120.0 s behind OKX's" in told[0]


def test_a_fetch_that_brings_nothing_new_keeps_the_same_snapshot():
    clock = Clock()

    async def run() -> None:
        cache, _ = make(clock, Schedules(history=60, interest=60, headroom=60))
        cache.start_due(POSITION)
        await settle()
        first = cache.snapshot(POSITION)
        clock.now += 60
        cache.start_due(POSITION)
        await settle()
        assert cache.snapshot(POSITION) is first  # the render cache compares by identity first

    asyncio.run(run())
