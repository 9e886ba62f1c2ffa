"""The scrape deadline: how long a scrape waits for OKX, and what happens to a fetch it gives up on.

Prometheus sends its scrape timeout as ``X-Prometheus-Scrape-Timeout-Seconds``; the exporter must
answer before it, with the cached values of the accounts that are slow and ``okx_loan_up 0`` for
them, and let the cut-off fetch finish into the cache. Without the header (or with a value that is
not a positive number) a scrape waits up to the configured ``timeout``. The simulator's latency is
real time; the TTL runs on the fake clock, so "no new request" is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from conftest import FakeClock, Harness, Scrape, account_config, sim_account
from processes import wait_for

from okx_loan_exporter.simulator import Simulator

TTL = 0.5
TIMEOUT = 2.0
SLOW = "slow"
QUICK = {"quick-a": 0.3, "quick-b": 0.6}
ORDER = "1"  # conftest.sim_account's one order
OLD_LTV, NEW_LTV = 0.4, 0.5


@dataclass
class World:
    simulator: Simulator
    exporter: Harness
    clock: FakeClock

    def requests(self, account: str = SLOW) -> int:
        return int(self.simulator.stats()["accounts"][account]["requests"])

    def make_slow(self, latency: float) -> None:
        """The slow account answers after ``latency`` s, with NEW_LTV, and is due for a fetch."""
        self.simulator.set_latency(latency, SLOW)
        self.simulator.set_ltv(SLOW, NEW_LTV)
        self.clock.advance(TTL + 0.01)


@pytest.fixture
def world(start_simulator, start_exporter, fake_clock) -> World:
    """Three accounts, scraped once so every cache holds a value."""
    accounts = [sim_account(SLOW), *(sim_account(name) for name in QUICK)]
    simulator = start_simulator(accounts)
    for name, value in {SLOW: OLD_LTV, **QUICK}.items():
        simulator.set_ltv(name, value)
    harness = start_exporter(
        [account_config(a, simulator.base_url) for a in accounts], cache_ttl=TTL, timeout=TIMEOUT
    )
    first = harness.scrape()
    assert ltv(first, SLOW) == pytest.approx(OLD_LTV)
    return World(simulator, harness, fake_clock)


def ltv(scrape: Scrape, account: str) -> float | None:
    return scrape.value("okx_loan_ltv_ratio", account=account, order=ORDER)


def up(scrape: Scrape, account: str) -> float | None:
    return scrape.value("okx_loan_up", account=account)


def assert_quick_accounts_served(scrape: Scrape) -> None:
    for name, value in QUICK.items():
        assert up(scrape, name) == 1, name
        assert ltv(scrape, name) == pytest.approx(value), name


def test_deadline_serves_cached_values_and_the_cut_off_fetch_completes_into_the_cache(world: World):
    world.make_slow(1.2)  # longer than the 1 s deadline, shorter than the timeout
    sent = world.requests()

    cut = world.exporter.scrape("1")
    assert cut.status == 200
    assert cut.elapsed < 1.0, f"answered after {cut.elapsed:.2f}s, past the 1 s deadline"
    assert up(cut, SLOW) == 0
    assert ltv(cut, SLOW) == pytest.approx(OLD_LTV)  # the cached value, not a gap
    assert set(cut.failures(SLOW).values()) == {0}  # slow is not failed
    assert_quick_accounts_served(cut)
    assert world.requests() == sent + 1

    def fetched() -> bool:
        (slow,) = [s for s in world.exporter.exporter.snapshots() if s.name == SLOW]
        return slow.position is not None and [
            (order.order_id, order.current_ltv) for order in slow.position.orders
        ] == [(ORDER, NEW_LTV)]

    wait_for("the cut-off fetch to land in the cache", fetched, 5.0, interval=0.02)
    later = world.exporter.scrape("1")
    assert up(later, SLOW) == 1
    assert ltv(later, SLOW) == pytest.approx(NEW_LTV)
    assert later.value("okx_loan_api_requests_total", account=SLOW, endpoint="loan_info") == (
        cut.value("okx_loan_api_requests_total", account=SLOW, endpoint="loan_info") + 1
    )
    assert world.requests() == sent + 1, "the cut-off fetch was sent again within the TTL"
    assert_quick_accounts_served(later)


def test_without_the_header_a_scrape_waits_for_a_fetch_shorter_than_timeout(world: World):
    world.make_slow(1.2)
    scrape = world.exporter.scrape(None)
    assert scrape.status == 200
    assert scrape.elapsed >= 1.2
    assert up(scrape, SLOW) == 1
    assert ltv(scrape, SLOW) == pytest.approx(NEW_LTV)
    assert_quick_accounts_served(scrape)


def test_without_the_header_a_scrape_waits_no_longer_than_timeout(world: World):
    world.make_slow(TIMEOUT + 1.5)
    scrape = world.exporter.scrape(None)
    assert scrape.status == 200
    assert scrape.elapsed < TIMEOUT + 1.0, f"answered after {scrape.elapsed:.2f}s"
    assert up(scrape, SLOW) == 0
    assert scrape.failures(SLOW)["timeout"] == 1  # the fetch ran its full timeout, then failed
    assert ltv(scrape, SLOW) == pytest.approx(OLD_LTV)
    assert_quick_accounts_served(scrape)


@pytest.mark.parametrize("value", ["abc", "1s", "", "-1", "0", "nan", "1,5"])
def test_malformed_header_is_treated_as_absent(value: str, world: World):
    world.make_slow(0.7)  # a 1 s deadline would cut this off after 0.5 s; no deadline does not
    scrape = world.exporter.scrape(value)
    assert scrape.status == 200
    assert up(scrape, SLOW) == 1, f"a scrape with header {value!r} did not wait"
    assert ltv(scrape, SLOW) == pytest.approx(NEW_LTV)
    assert_quick_accounts_served(scrape)
