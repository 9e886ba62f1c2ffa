"""The per-account cache: TTL, single flight, stale bound, auth backoff, state-change logging."""

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest

from okx_loan_exporter.cache import (
    MAX_AUTH_BACKOFF,
    AccountCache,
    PositionCache,
)
from okx_loan_exporter.exporter import Exporter
from okx_loan_exporter.okx import FailureReason, OkxError
from okx_loan_exporter.position import Order, Position
from tests.fake_okx_exporter import fake_config


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


class FakeSource:
    """Answers from a script of positions or OkxErrors; can be held to simulate slowness."""

    def __init__(self, *results):
        self.results = list(results)
        self.calls = 0
        self.clock_offset = 0.0
        self.gate: asyncio.Event | None = None

    async def loan_info(self):
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, Exception):
            raise result
        return result


def position(ltv, order_ids=("1",)):
    return Position(tuple(order(order_id, ltv) for order_id in order_ids))


def order(order_id, ltv):
    return Order(
        order_id,
        loan_notional_usd=100.0,
        collateral_notional_usd=100 / ltv,
        current_ltv=ltv,
        margin_call_ltv=0.7,
        liquidation_ltv=0.8,
        loans={"USDT": 100.0},
        collateral={"BTC": 0.01},
    )


def failure(reason=FailureReason.API_ERROR, code="50013"):
    return OkxError(reason, f"OKX code {code}", "hint", code=code)


def make(*results, ttl=10.0, max_stale=300.0, clock=None):
    clock = clock or Clock()
    source = FakeSource(*results)
    account = AccountCache("main", source, ttl=ttl, max_stale=max_stale, clock=clock)
    return PositionCache([account]), source, clock


def refresh(cache, wait=1.0):
    return asyncio.run(cache.refresh_async(wait))


def only(snapshots):
    (snapshot,) = snapshots
    return snapshot


def test_first_scrape_fetches_and_serves():
    cache, source, clock = make(position(0.5))
    snapshot = only(refresh(cache))
    assert snapshot.up is True
    assert snapshot.position.orders[0].current_ltv == 0.5
    assert snapshot.last_success == clock.now
    assert source.calls == 1


def test_within_ttl_serves_cache_then_refetches_after_ttl():
    cache, source, clock = make(position(0.5), position(0.6))
    refresh(cache)
    clock.now += 9.9
    assert only(refresh(cache)).position.orders[0].current_ltv == 0.5
    assert source.calls == 1
    clock.now += 0.1
    assert only(refresh(cache)).position.orders[0].current_ltv == 0.6
    assert source.calls == 2


def test_failure_keeps_last_good_values_with_up_zero_and_is_not_retried_within_ttl():
    cache, source, clock = make(position(0.5), failure(), position(0.7))
    refresh(cache)
    clock.now += 10
    snapshot = only(refresh(cache))
    assert snapshot.up is False
    assert snapshot.last_failure is FailureReason.API_ERROR
    assert snapshot.position.orders[0].current_ltv == 0.5
    clock.now += 5
    refresh(cache)
    assert source.calls == 2
    clock.now += 5
    recovered = only(refresh(cache))
    assert recovered.up is True and recovered.position.orders[0].current_ltv == 0.7
    assert recovered.last_failure is None


def test_snapshot_carries_the_failures_hint_until_recovery():
    cache, _, clock = make(failure(), position(0.5))
    failed = only(refresh(cache))
    assert (failed.last_error, failed.last_hint) == ("api_error: OKX code 50013 (hint)", "hint")
    clock.now += 10
    recovered = only(refresh(cache))
    assert recovered.last_error is None and recovered.last_hint is None


def test_stale_values_dropped_after_max_stale():
    cache, _, clock = make(position(0.5), failure(), ttl=10, max_stale=60)
    refresh(cache)
    success_time = clock.now
    clock.now += 60
    assert only(refresh(cache)).position is not None
    clock.now += 0.5
    snapshot = only(refresh(cache))
    assert snapshot.position is None
    assert snapshot.last_success == success_time
    assert snapshot.up is False


def test_never_succeeded_has_no_position():
    cache, _, _ = make(failure(FailureReason.TIMEOUT))
    snapshot = only(refresh(cache))
    assert snapshot.position is None and snapshot.last_success is None and not snapshot.up


def test_single_flight_concurrent_scrapes_share_one_request():
    cache, source, _ = make(position(0.5))

    async def scenario():
        source.gate = asyncio.Event()
        scrapes = [asyncio.ensure_future(cache.refresh_async(5)) for _ in range(50)]
        await asyncio.sleep(0.01)
        source.gate.set()
        return await asyncio.gather(*scrapes)

    results = asyncio.run(scenario())
    assert source.calls == 1
    assert all(
        only(snapshots).up and only(snapshots).position.orders[0].current_ltv == 0.5
        for snapshots in results
    )


def test_deadline_returns_cached_with_up_zero_and_fetch_completes_later():
    cache, source, clock = make(position(0.5), position(0.6))

    async def scenario():
        first = await cache.refresh_async(1)
        clock.now += 10
        source.gate = asyncio.Event()
        cut_off = await cache.refresh_async(0.05)
        source.gate.set()
        await asyncio.sleep(0.01)
        after = await cache.refresh_async(1)
        return first, cut_off, after

    first, cut_off, after = asyncio.run(scenario())
    assert only(first).up
    assert not only(cut_off).up
    assert only(cut_off).position.orders[0].current_ltv == 0.5  # whatever is cached
    assert only(after).up and only(after).position.orders[0].current_ltv == 0.6
    assert source.calls == 2


def test_accounts_are_fetched_concurrently():
    clock = Clock()

    class Slow(FakeSource):
        async def loan_info(self):
            await asyncio.sleep(0.2)
            return await super().loan_info()

    accounts = [
        AccountCache(f"a{i}", Slow(position(0.5)), ttl=10, max_stale=60, clock=clock)
        for i in range(20)
    ]
    cache = PositionCache(accounts)

    async def scenario():
        loop = asyncio.get_running_loop()
        started = loop.time()
        snapshots = await cache.refresh_async(5)
        return loop.time() - started, snapshots

    elapsed, snapshots = asyncio.run(scenario())
    assert all(snapshot.up for snapshot in snapshots)
    assert elapsed < 2.0  # 20 sequential fetches would take 4 s


def test_one_failing_account_does_not_affect_others():
    clock = Clock()
    good = AccountCache("good", FakeSource(position(0.5)), ttl=10, max_stale=60, clock=clock)
    bad = AccountCache(
        "bad", FakeSource(failure(FailureReason.AUTH, "50113")), ttl=10, max_stale=60, clock=clock
    )
    snapshots = {s.name: s for s in refresh(PositionCache([good, bad]))}
    assert snapshots["good"].up and snapshots["good"].position is not None
    assert not snapshots["bad"].up and snapshots["bad"].last_failure is FailureReason.AUTH


def test_auth_failures_back_off_up_to_five_minutes_and_reset_on_success():
    results = (
        [failure(FailureReason.AUTH, "50113")] * 7
        + [position(0.5)]
        + [failure(FailureReason.AUTH, "50113"), position(0.5)]
    )
    cache, source, clock = make(*results, ttl=10)
    intervals = []
    for _ in range(9):
        calls = source.calls
        start = clock.now
        refresh(cache)
        while source.calls == calls:
            clock.now += 1
            refresh(cache)
        intervals.append(clock.now - start)
    # first fetch at once; then 20, 40, 80, 160, 300, 300, 300 s; after success back to TTL
    assert intervals[:8] == [
        0,
        20,
        40,
        80,
        160,
        MAX_AUTH_BACKOFF,
        MAX_AUTH_BACKOFF,
        MAX_AUTH_BACKOFF,
    ]
    assert intervals[8] == 10  # success reset the backoff: the next failure waits one TTL...
    calls = source.calls
    clock.now += 20
    refresh(cache)
    assert source.calls == calls + 1  # ...and one auth failure backs off 20 s, not 300


def test_non_auth_failures_retry_every_ttl():
    cache, source, clock = make(failure(FailureReason.RATE_LIMITED, "50011"), ttl=10)
    for _ in range(5):
        refresh(cache)
        clock.now += 10
    assert source.calls == 5


def test_logs_once_per_change_of_state(caplog):
    cache, _, clock = make(
        position(0.5),
        failure(code="50013"),
        failure(code="50013"),
        failure(FailureReason.AUTH, "50105"),
        position(0.6),
    )
    with caplog.at_level(logging.INFO, logger="okx_loan_exporter.cache"):
        for _ in range(5):
            refresh(cache)
            clock.now += 20
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 4, lines
    assert "first answer" in lines[0]
    assert "50013" in lines[1]
    assert "50105" in lines[2]
    assert "answers again" in lines[3]


def test_orders_opened_and_closed_are_logged_once(caplog):
    cache, _, clock = make(
        position(0.5, ("1",)),
        position(0.5, ("1", "2")),
        position(0.5, ("1", "2")),
        position(0.5, ("2",)),
    )
    with caplog.at_level(logging.INFO, logger="okx_loan_exporter.cache"):
        for _ in range(4):
            refresh(cache)
            clock.now += 10
    lines = [r.getMessage() for r in caplog.records]
    assert "first answer from OKX (1 loan order)" in lines[0]
    changes = [line for line in lines if "loan orders changed" in line]
    assert changes == [
        "account main: loan orders changed: 2 now (new: 2; gone: none)",
        "account main: loan orders changed: 1 now (new: none; gone: 1)",
    ]


def test_unexpected_exception_is_contained():
    cache, _, _ = make(RuntimeError("bug"))
    snapshot = only(refresh(cache))
    assert not snapshot.up
    assert snapshot.last_failure is FailureReason.INVALID_RESPONSE


@pytest.mark.parametrize("wait", [0, 0.01])
def test_zero_wait_does_not_block(wait):
    cache, source, _ = make(position(0.5))

    async def scenario():
        source.gate = asyncio.Event()
        snapshots = await cache.refresh_async(wait)
        source.gate.set()
        return snapshots

    snapshot = only(asyncio.run(scenario()))
    assert not snapshot.up and snapshot.position is None


def test_idle_only_while_nothing_is_due_or_in_flight():
    cache, source, clock = make(position(0.5), ttl=10)
    assert not cache.idle()  # never fetched: due at once
    refresh(cache)
    assert cache.idle()
    clock.now += 9.9
    assert cache.idle()
    clock.now += 0.1
    assert not cache.idle()

    async def in_flight():
        source.gate = asyncio.Event()
        await cache.refresh_async(0)
        busy = cache.idle()
        clock.now += 100  # the fetch is still running: not idle whatever the clock says
        still_busy = cache.idle()
        source.gate.set()
        await asyncio.sleep(0.01)
        return busy, still_busy

    assert asyncio.run(in_flight()) == (False, False)


def test_a_snapshot_is_handed_out_again_until_something_it_shows_changes():
    cache, source, clock = make(position(0.5), position(0.6), ttl=10.0, max_stale=30.0)
    first = only(refresh(cache))
    assert only(cache.snapshots()) is first  # nothing changed: the same object
    clock.now += 5
    assert only(cache.snapshots()) is first
    clock.now += 6  # the TTL passed: a new fetch, a new answer
    second = only(refresh(cache))
    assert second is not first and second.position.orders[0].current_ltv == 0.6
    assert only(cache.snapshots()) is second
    clock.now += 31  # older than max_stale: the position is withheld, without a fetch
    withheld = only(cache.snapshots())
    assert withheld is not second and withheld.position is None
    pending = cache.accounts[0].snapshot(pending=True)
    assert pending.up is False and pending is not withheld
    assert source.calls == 2


class SlowSource(FakeSource):
    """Each answer takes ``duration`` seconds of the clock."""

    def __init__(self, clock, duration, *results):
        super().__init__(*results)
        self.clock = clock
        self.duration = duration

    async def loan_info(self):
        self.clock.now += self.duration
        return await super().loan_info()


def test_the_ttl_runs_from_the_end_of_a_slow_fetch():
    """A request that took 3 s to be answered may have reached OKX 3 s after it started: the next
    one waits a whole TTL after that answer."""
    clock = Clock()
    source = SlowSource(clock, 3.0, position(0.5))
    cache = PositionCache([AccountCache("main", source, ttl=10.0, max_stale=300.0, clock=clock)])
    refresh(cache)  # started at 0, answered at 3
    clock.now += 8.0  # 11 s after the start, 8 after the answer
    refresh(cache)
    assert source.calls == 1
    clock.now += 2.0  # 10 s after the answer
    refresh(cache)
    assert source.calls == 2


class RotatingKey:
    """A credentials check whose answer the test sets: True once after the key changed."""

    def __init__(self):
        self.checks = 0
        self.changed = False

    def __call__(self):
        self.checks += 1
        changed, self.changed = self.changed, False
        return changed


def make_rotating(*results, ttl=10.0):
    clock = Clock()
    source = FakeSource(*results)
    key = RotatingKey()
    account = AccountCache(
        "main", source, ttl=ttl, max_stale=300.0, clock=clock, check_credentials=key
    )
    return PositionCache([account]), source, clock, key


def test_credentials_are_checked_before_every_request():
    cache, source, clock, key = make_rotating(position(0.5), ttl=10)
    refresh(cache)
    clock.now += 5
    refresh(cache)  # served from the cache: no request, no check
    assert (source.calls, key.checks) == (1, 1)
    clock.now += 5
    refresh(cache)
    assert (source.calls, key.checks) == (2, 2)


def test_a_key_changed_on_disk_is_tried_at_once_after_an_auth_failure():
    cache, source, _, key = make_rotating(
        failure(FailureReason.AUTH, "50105"), position(0.5), ttl=10
    )

    async def changed_while_in_flight():
        key.changed = True  # the file changed after the check that preceded the request
        return await FakeSource.loan_info(source)

    source.loan_info = changed_while_in_flight
    snapshot = only(refresh(cache))
    assert snapshot.up is True  # the failed request was retried with the new key at once
    assert source.calls == 2


def test_during_the_auth_backoff_the_key_is_checked_once_per_ttl_and_a_new_one_used_at_once():
    cache, source, clock, key = make_rotating(
        failure(FailureReason.AUTH, "50105"),
        failure(FailureReason.AUTH, "50105"),
        position(0.5),
        ttl=10,
    )
    refresh(cache)
    clock.now += 20
    refresh(cache)  # the second failure backs off 40 s
    assert source.calls == 2
    checks = key.checks
    clock.now += 5
    assert cache.idle()
    refresh(cache)
    assert key.checks == checks  # not yet one TTL since the last check
    clock.now += 5
    assert not cache.idle()  # a check is due, so a scrape goes to the loop for it
    refresh(cache)
    assert (key.checks, source.calls) == (checks + 1, 2)  # unchanged: still backing off
    clock.now += 10
    key.changed = True
    snapshot = only(refresh(cache))
    assert source.calls == 3 and snapshot.up is True  # 20 s before the backoff's end


def quick_and_slow_exporter(arrived: dict[str, float]) -> Exporter:
    """Accounts "quick" and "slow" (its loan-info answer takes 0.6 s) over a fake OKX that notes
    when each request arrived, by path and key; index prices on, secondary endpoints off."""
    loan_info = (Path(__file__).parent / "data" / "loan_info_docs_example.json").read_text()
    tickers = {
        "code": "0",
        "msg": "",
        "data": [{"instId": f"{c}-USDT", "idxPx": "2.5", "ts": "1700000000000"} for c in "AB"],
    }

    async def okx(request: httpx.Request) -> httpx.Response:
        path = request.url.path.rsplit("/", 1)[-1]
        arrived[f"{path} {request.headers.get('OK-ACCESS-KEY', '')}"] = time.monotonic()
        if path == "index-tickers":
            return httpx.Response(200, json=tickers)
        if request.headers["OK-ACCESS-KEY"] == "key-slow":
            await asyncio.sleep(0.6)
        return httpx.Response(200, content=loan_info)

    config = fake_config(
        ("quick", "slow"), history_interval="0s", interest_interval="0s", headroom_interval="0s"
    )
    return Exporter(config, transport=httpx.MockTransport(okx))


def test_index_prices_are_asked_as_soon_as_an_account_shows_orders():
    """Not after the slowest account's answer: that added a round trip to every cold scrape."""
    arrived: dict[str, float] = {}
    exporter = quick_and_slow_exporter(arrived)
    try:
        snapshots = exporter.scrape()
    finally:
        exporter.close()
    assert arrived["index-tickers "] < arrived["loan-info key-slow"] + 0.3
    assert all(snapshot.prices and snapshot.prices.prices for snapshot in snapshots)
