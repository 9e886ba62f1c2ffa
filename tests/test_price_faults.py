"""The fault matrix of the public index-tickers endpoint, seen through a real scrape.

Each row serves two accounts from the in-process simulator through an exporter on 127.0.0.1,
establishes good prices, breaks index-tickers, and checks what an operator sees: the failure
counted under ``endpoint="index_tickers"`` with its reason and one WARNING line, ``okx_loan_up``
and every loan value untouched, the last good prices and what-if figures still served, and
recovery once the fault clears. The market stands still, so the values can be compared exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from conftest import FakeClock, Harness, Scrape, account_config, sim_account

from okx_loan_exporter.simulator import Simulator

TIMEOUT = 1.0
ACCOUNTS = [
    sim_account("btc-usdt", collateral={"BTC": "0.5"}, loans={"USDT": "13500"}),
    sim_account("mixed", collateral={"ETH": "2", "SOL": "20"}, loans={"USDC": "5000"}),
]
INDEX = {"endpoint": "index_tickers"}
WHAT_IF = "okx_loan_price_drop_to_liquidation_ratio"
LOAN_INFO_ONLY = {"history_interval": 0.0, "interest_interval": 0.0, "headroom_interval": 0.0}
"""The other loan endpoints off: their values land after a scrape, so they would differ between
the good and the broken scrape whatever index-tickers does."""


def loan_values(scrape: Scrape) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every per-account loan value (not the request counters, nor the time of the answer)."""
    return {
        key: value
        for key, value in scrape.samples.items()
        if ("account", "btc-usdt") in key[1] or ("account", "mixed") in key[1]
        if not key[0].startswith(("okx_loan_api_request", "okx_loan_last_success"))
    }


def public_failures(scrape: Scrape) -> dict[str, float]:
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in scrape.samples.items()
        if name == "okx_loan_public_api_request_failures_total"
        and ("endpoint", "index_tickers") in labels
    }


@pytest.mark.parametrize(
    ("fault", "reason", "says"),
    [
        ("http_500_html", "http_error", "HTTP 500 without an OKX answer"),
        ("http_200_html", "invalid_response", "HTTP 200 answer is not JSON"),
        ("invalid_json", "invalid_response", "HTTP 200 answer is not JSON"),
        ("truncated_json", "invalid_response", "HTTP 200 answer is not JSON"),
        ("no_data", "invalid_response", "malformed index-tickers answer"),
        ("rate_limit", "rate_limited", "OKX code 50011"),
        ("hang", "timeout", f"within {TIMEOUT:g}s"),
    ],
)
def test_index_tickers_fault_is_counted_and_touches_no_loan_value(
    fault: str,
    reason: str,
    says: str,
    start_simulator: Callable[..., Simulator],
    start_exporter: Callable[..., Harness],
    fake_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = start_simulator(ACCOUNTS)
    sim.set_market_walk(False)
    harness = start_exporter(
        [account_config(a, sim.base_url) for a in ACCOUNTS],
        cache_ttl=0.5,
        timeout=TIMEOUT,
        **LOAN_INFO_ONLY,
    )
    good = harness.scrape()
    base = {"base_url": sim.base_url}
    assert good.value("okx_loan_public_api_requests_total", **base, **INDEX) == 1
    assert public_failures(good) == dict.fromkeys(public_failures(good), 0.0)
    assert len(public_failures(good)) == 7
    good_price = good.value("okx_loan_index_price", currency="BTC", quote="USDT")
    assert good_price == 60000.0
    drop = good.value(WHAT_IF, account="btc-usdt", order="1", currency="BTC")
    assert drop == pytest.approx(1 - 0.45 / 0.8)
    success = good.value("okx_loan_index_prices_last_success_timestamp_seconds", **base)
    assert success == fake_clock()

    sim.set_index_fault(fault)
    caplog.set_level(logging.DEBUG, logger="okx_loan_exporter")
    caplog.clear()
    fake_clock.advance(1.0)
    started = time.monotonic()
    while True:
        broken = harness.scrape()
        if public_failures(broken).get(reason) or time.monotonic() - started > 10:
            break
        time.sleep(0.2)  # a hang ends at the exporter's timeout, after this scrape answered
    assert broken.status == 200
    assert public_failures(broken)[reason] == 1
    assert sum(public_failures(broken).values()) == 1
    for account in ("btc-usdt", "mixed"):
        assert broken.value("okx_loan_up", account=account) == 1
        assert broken.failures(account) == good.failures(account)
    assert loan_values(broken) == loan_values(good)
    assert broken.value("okx_loan_index_price", currency="BTC", quote="USDT") == good_price
    assert broken.value(WHAT_IF, account="btc-usdt", order="1", currency="BTC") == drop
    assert broken.value("okx_loan_index_prices_last_success_timestamp_seconds", **base) == success
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "index-tickers request failed" in message and says in message
    assert "loan values are unaffected" in message

    sim.set_index_fault(None)
    fake_clock.advance(1.0)
    recovered = harness.scrape()
    assert recovered.value("okx_loan_index_prices_last_success_timestamp_seconds", **base) == (
        fake_clock()
    )
    assert public_failures(recovered)[reason] == 1
    assert any("answer again" in r.getMessage() for r in caplog.records)


def test_prices_are_not_fetched_without_orders_nor_when_turned_off(
    start_simulator: Callable[..., Simulator],
    start_exporter: Callable[..., Harness],
    fake_clock: FakeClock,
) -> None:
    from okx_loan_exporter.config import ExporterConfig

    no_loan = sim_account("no-loan", loans={})
    sim = start_simulator([no_loan, *ACCOUNTS])
    idle = start_exporter([account_config(no_loan, sim.base_url)])
    for _ in range(3):
        scrape = idle.scrape()
        fake_clock.advance(1.0)
    assert sim.stats()["index_tickers"]["requests"] == 0
    assert scrape.value("okx_loan_public_api_requests_total", base_url=sim.base_url, **INDEX) == 0
    assert not [name for name, _ in scrape.samples if name == "okx_loan_index_price"]

    off = start_exporter(
        config=ExporterConfig(
            accounts=tuple(account_config(a, sim.base_url) for a in ACCOUNTS),
            cache_ttl=0.5,
            timeout=TIMEOUT,
            source="test",
            price_interval=0.0,
        )
    )
    scrape = off.scrape()
    assert sim.stats()["index_tickers"]["requests"] == 0
    assert scrape.value("okx_loan_ltv_ratio", account="btc-usdt", order="1") is not None
    assert not [name for name, _ in scrape.samples if name.startswith("okx_loan_public_api")]
    assert not [name for name, _ in scrape.samples if name.startswith("okx_loan_price_")]
