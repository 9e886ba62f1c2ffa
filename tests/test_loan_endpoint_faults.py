"""The fault matrix applied to each secondary endpoint, seen through real scrapes.

The simulator serves one account; the exporter asks every secondary endpoint each second of its
fake clock. A row establishes good values of all of them, breaks one endpoint, and checks what the
operator sees: the account stays up, the failure is counted for that endpoint under its reason,
loan-info's values and counters are untouched, the endpoint's last values are kept, one WARNING
names the endpoint and what to do; then the endpoint recovers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from conftest import Harness, Scrape, account_config, sim_account

ACCOUNT = "main"
TIMEOUT = 1.0
EVERY_SECOND = {"history_interval": 1.0, "interest_interval": 1.0, "headroom_interval": 1.0}
ENDPOINTS = {
    # simulator path name: (the exporter's endpoint label, a series it keeps)
    "loan-history": (
        "loan_history",
        ("okx_loan_last_event_timestamp_seconds", {"type": "borrowed"}),
    ),
    "interest-accrued": ("interest_accrued", ("okx_loan_interest_rate", {"currency": "USDT"})),
    "max-loan": ("max_loan", ("okx_loan_max_borrow_amount", {"order": "1", "currency": "USDT"})),
    "max-collateral-redeem-amount": (
        "max_redeem",
        ("okx_loan_max_redeem_amount", {"order": "1", "currency": "BTC"}),
    ),
}
FAULTS = {
    "http_500_html": ("http_error", "HTTP 500 without an OKX answer"),
    "http_200_html": ("invalid_response", "answer is not JSON"),
    "invalid_json": ("invalid_response", "answer is not JSON"),
    "no_data": ("invalid_response", "answer has no 'data'"),
    "rate_limit": ("rate_limited", "OKX code 50011"),
    "busy_50001": ("api_error", "OKX code 50001"),
    "auth_50111": ("auth", "OKX code 50111"),
    "auth_50113": ("auth", "the secret key is wrong"),
    "slow": ("timeout", f"within {TIMEOUT:g}s"),
    "close": ("network", "RemoteProtocolError"),
}


def wait_for(what: str, check: Callable[[], Scrape | None], limit: float = 5.0) -> Scrape:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def kept(scrape: Scrape, series: tuple[str, dict[str, str]]) -> float | None:
    name, labels = series
    return scrape.value(name, account=ACCOUNT, **labels)


@pytest.fixture
def world(start_simulator, start_exporter, fake_clock, caplog):
    caplog.set_level(logging.INFO, logger="okx_loan_exporter")
    account = sim_account(ACCOUNT)
    simulator = start_simulator([account])
    simulator.set_ltv(ACCOUNT, 0.4)
    harness: Harness = start_exporter(
        [account_config(account, simulator.base_url)], timeout=TIMEOUT, **EVERY_SECOND
    )
    harness.scrape()  # loan-info; the secondary fetches start with its answer

    def all_landed() -> Scrape | None:
        scrape = harness.scrape()
        series = [kept(scrape, series) for _, series in ENDPOINTS.values()]
        return scrape if None not in series else None

    good = wait_for("every secondary endpoint's values", all_landed)
    return simulator, harness, fake_clock, caplog, good


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_failing_secondary_endpoint_never_touches_loan_info(world, endpoint, fault):
    simulator, harness, clock, caplog, good = world
    label, series = ENDPOINTS[endpoint]
    reason, says = FAULTS[fault]
    simulator.set_fault(ACCOUNT, fault, endpoint=endpoint)
    caplog.clear()
    clock.advance(1.5)

    def counted() -> Scrape | None:
        scrape = harness.scrape()
        return scrape if scrape.failures(ACCOUNT, label).get(reason, 0) >= 1 else None

    failed = wait_for(f"a {reason} failure of {label}", counted, limit=TIMEOUT + 5)
    assert failed.value("okx_loan_up", account=ACCOUNT) == 1
    assert set(failed.failures(ACCOUNT).values()) == {0}  # loan-info's counters
    assert failed.value("okx_loan_ltv_ratio", account=ACCOUNT, order="1") == pytest.approx(0.4)
    assert kept(failed, series) == kept(good, series)  # the last good value, kept
    others = {name: other for name, (other, _) in ENDPOINTS.items() if name != endpoint}
    for other in others.values():  # a reason shows once it happened: none for the others
        assert failed.failures(ACCOUNT, other) == {}, other
    assert set(failed.failures(ACCOUNT, label)) == {reason}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"account {ACCOUNT}: OKX {label} request failed: {reason}" in warnings[0]
    assert says in warnings[0] and "loan-info values unaffected" in warnings[0]

    simulator.set_fault(ACCOUNT, None, endpoint=endpoint)
    clock.advance(1.5)
    before = failed.failures(ACCOUNT, label)[reason]

    def recovered() -> Scrape | None:
        scrape = harness.scrape()
        answered = any("answers again" in r.getMessage() for r in caplog.records)
        return scrape if answered else None

    back = wait_for(f"{label} to answer again", recovered, limit=TIMEOUT + 5)
    assert back.failures(ACCOUNT, label)[reason] == before
    assert kept(back, series) is not None
