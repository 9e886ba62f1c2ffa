"""The simulator's loan-history, interest-accrued, max-loan and max-collateral-redeem-amount.

Requests are signed here independently of the exporter, as any client written against OKX's
documentation would: the simulator must accept what OKX accepts and refuse what it refuses.
"""

from __future__ import annotations

import itertools
import json

import pytest
from test_simulator import FakeClock, account, http_client, okx_sign, okx_timestamp

from okx_loan_exporter.loan_records import (
    parse_interest_accrued,
    parse_loan_history,
    parse_max_loan,
    parse_max_redeem,
)
from okx_loan_exporter.simulator import Simulator

LOAN = "/api/v5/finance/flexible-loan"
HISTORY = f"{LOAN}/loan-history"
INTEREST = f"{LOAN}/interest-accrued"
MAX_LOAN = f"{LOAN}/max-loan"
MAX_REDEEM = f"{LOAN}/max-collateral-redeem-amount"
HOUR = 60.0
CYCLE = 300.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock):
    simulator = Simulator(
        seed=1, clock=clock, walk_interval=1e9, hour_seconds=HOUR, margin_call_cycle=CYCLE
    )
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def call(sim, clock):
    """``call(account, method, target, body=None, advance=0.5, sign_body=None)``: the response."""
    with http_client(base_url=sim.base_url, timeout=5) as http:

        def send(name, method, target, body=None, advance=0.5, sign_body=None, **headers):
            clock.advance(advance)
            acct = account(name)
            timestamp = okx_timestamp(clock())
            text = "" if body is None else json.dumps(body)
            signed = text if sign_body is None else sign_body
            all_headers = {
                "OK-ACCESS-KEY": acct.api_key,
                "OK-ACCESS-SIGN": okx_sign(acct.secret_key, timestamp, method, target, signed),
                "OK-ACCESS-TIMESTAMP": timestamp,
                "OK-ACCESS-PASSPHRASE": acct.passphrase,
                "Content-Type": "application/json",
                **headers,
            }
            if acct.demo:
                all_headers["x-simulated-trading"] = "1"
            return http.request(method, target, headers=all_headers, content=text or None)

        yield send


def data(response):
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == "0", body
    return body["data"]


def test_history_starts_with_each_orders_opening_records(call):
    records = data(call("two-orders", "GET", HISTORY))
    kinds = [(r["type"], r["ccy"], r["amt"]) for r in records]
    assert set(kinds) == {
        ("collateral_locked", "BTC", "-0.2"),
        ("borrowed", "USDT", "4800"),
        ("collateral_locked", "ETH", "-2"),
        ("collateral_locked", "SOL", "-20"),
        ("borrowed", "USDC", "5850"),
    }
    refs = [int(r["refId"]) for r in records]
    assert refs == sorted(refs, reverse=True)  # newest first
    assert set(records[0]) == {"refId", "type", "ccy", "amt", "ts"}  # no ordId in records
    assert parse_loan_history({"code": "0", "data": records})  # the exporter's parser agrees


def test_history_filters_and_pages_like_okx(call):
    everything = data(call("two-orders", "GET", HISTORY))
    only_2001 = data(call("two-orders", "GET", f"{HISTORY}?ordId=2001"))
    assert {r["ccy"] for r in only_2001} == {"BTC", "USDT"}
    borrowed = data(call("two-orders", "GET", f"{HISTORY}?type=borrowed"))
    assert {r["type"] for r in borrowed} == {"borrowed"} and len(borrowed) == 2
    first = data(call("two-orders", "GET", f"{HISTORY}?limit=2"))
    assert first == everything[:2]
    older = data(call("two-orders", "GET", f"{HISTORY}?limit=2&after={first[-1]['refId']}"))
    assert older == everything[2:4]
    newer = data(call("two-orders", "GET", f"{HISTORY}?limit=1&before={older[0]['refId']}"))
    assert newer == [everything[1]]  # the nearest newer one
    assert data(call("two-orders", "GET", f"{HISTORY}?ordId=9999")) == []


def test_empty_optional_parameters_are_accepted(call):
    plain = data(call("btc-usdt", "GET", HISTORY))
    empty = "?type=&ordId=&after=&before=&limit="
    assert data(call("btc-usdt", "GET", HISTORY + empty)) == plain
    assert data(call("btc-usdt", "GET", INTEREST + "?ccy=&ordId=&after=&before=&limit="))


@pytest.mark.parametrize(
    ("target", "parameter"),
    [
        (f"{HISTORY}?limit=101", "limit"),
        (f"{HISTORY}?limit=0", "limit"),
        (f"{HISTORY}?limit=ten", "limit"),
        (f"{HISTORY}?after=abc", "after"),
        (f"{HISTORY}?type=stolen", "type"),
        (f"{INTEREST}?before=-1", "before"),
        (MAX_REDEEM, "ccy"),
    ],
)
def test_what_okx_refuses_is_refused_with_51000(call, target, parameter):
    response = call("btc-usdt", "GET", target)
    assert response.status_code == 400
    assert response.json() == {"code": "51000", "msg": f"Parameter {parameter} error", "data": []}


def test_interest_accrues_every_simulated_hour_at_a_drifting_rate(call):
    before = data(call("btc-usdt", "GET", INTEREST))
    assert len(before) == 3  # the three hours since the order was opened
    later = data(call("btc-usdt", "GET", INTEREST, advance=5 * HOUR))
    assert len(later) == 8
    record = later[0]
    assert set(record) == {"refId", "ccy", "loan", "interest", "interestRate", "ts"}
    assert record["ccy"] == "USDT" and record["loan"] == "13500"
    rates = {r["interestRate"] for r in later}
    assert len(rates) > 1, "the rate does not drift"
    parsed = parse_interest_accrued({"code": "0", "data": later})
    assert all(r.interest == pytest.approx(13500 * r.rate / 8760, abs=1e-8) for r in parsed)
    hourly = [r.timestamp for r in parsed]
    assert all(a - b == HOUR for a, b in itertools.pairwise(hourly))
    assert data(call("btc-usdt", "GET", f"{INTEREST}?ccy=USDC")) == []


def test_max_loan_is_a_post_whose_body_is_signed(call):
    answer = data(call("btc-usdt", "POST", MAX_LOAN, {"borrowCcy": "USDT", "ordId": "1001"}))
    headroom = parse_max_loan({"code": "0", "data": answer}, "USDT")
    # BTC 0.5 at 60000 = 30000 USD; borrowing up to LTV 0.6 allows 18000, 13500 is borrowed
    assert headroom.amount == pytest.approx(4500) and headroom.notional_usd == pytest.approx(4500)
    assert answer[0]["remainingQuota"]
    with_more = data(
        call(
            "btc-usdt",
            "POST",
            MAX_LOAN,
            {"borrowCcy": "USDT", "supCollateral": [{"ccy": "BTC", "amt": "0.1"}]},
        )
    )
    assert float(with_more[0]["maxLoan"]) == pytest.approx(4500 + 0.1 * 60000 * 0.6)
    tampered = call(
        "btc-usdt",
        "POST",
        MAX_LOAN,
        {"borrowCcy": "USDT"},
        sign_body='{"borrowCcy":"USDC"}',
    )
    assert tampered.status_code == 401 and tampered.json()["code"] == "50113"
    assert call("btc-usdt", "GET", MAX_LOAN).json()["code"] == "50115"
    missing = call("btc-usdt", "POST", MAX_LOAN, {"ordId": "1001"})
    assert missing.json()["code"] == "51000"
    assert data(call("no-loan", "POST", MAX_LOAN, {"borrowCcy": "USDT"})) == []


def test_max_redeem_per_collateral_currency(call):
    answer = data(call("btc-usdt", "GET", f"{MAX_REDEEM}?ccy=BTC&ordId=1001"))
    # 13500 USDT needs 22500 USD of collateral at LTV 0.6: 7500 USD of the 30000 can go
    assert parse_max_redeem({"code": "0", "data": answer}, "BTC") == pytest.approx(0.125)
    assert data(call("btc-usdt", "GET", f"{MAX_REDEEM}?ccy=ETH")) == [
        {"ccy": "ETH", "maxRedeemAmt": "0"}
    ]
    assert call("btc-usdt", "POST", f"{MAX_REDEEM}?ccy=BTC").json()["code"] == "50115"


def test_each_endpoint_has_its_own_rate_limit_of_5_per_2_seconds(call, sim):
    answers = [call("btc-usdt", "GET", HISTORY, advance=0.1).status_code for _ in range(6)]
    assert answers == [200] * 5 + [429]
    assert call("btc-usdt", "GET", INTEREST, advance=0).status_code == 200  # its own budget
    assert call("btc-usdt", "GET", "/api/v5/finance/flexible-loan/loan-info", advance=0)
    limited = call("btc-usdt", "GET", HISTORY, advance=0)
    assert limited.json()["code"] == "50011"
    assert sim.stats()["endpoints"]["btc-usdt"]["loan-history"]["rate_limited"] == 2
    assert sim.stats()["accounts"]["btc-usdt"]["rate_limited"] == 0
    assert call("btc-usdt", "GET", HISTORY, advance=2.0).status_code == 200


def test_a_liquidation_cycle_order_is_liquidated_at_its_liquidation_ltv_and_topped_up(
    call, sim, clock
):
    def ltv() -> float:
        response = call("liquidation", "GET", "/api/v5/finance/flexible-loan/loan-info")
        return float(data(response)[0]["curLTV"])

    def collateral() -> float:
        return float(sim.accounts[-1].orders[0].collateral["BTC"])

    assert ltv() == pytest.approx(0.6, abs=0.01)
    clock.advance(0.5 * CYCLE)
    assert 0.6 < ltv() < 0.8
    assert collateral() == 0.3
    clock.advance(0.45 * CYCLE)  # past 0.9 of the cycle: the LTV has reached 0.8
    assert ltv() == pytest.approx(0.6)  # liquidated down to the borrowing LTV
    assert collateral() < 0.3
    records = data(call("liquidation", "GET", f"{HISTORY}?type=partial_liquidation"))
    assert len(records) == 1 and records[0]["ccy"] == "BTC"
    assert float(records[0]["amt"]) == pytest.approx(collateral() - 0.3)
    clock.advance(0.1 * CYCLE)  # the next cycle: topped up, climbing from 0.6 again
    assert ltv() == pytest.approx(0.6, abs=0.02)
    assert collateral() == 0.3
    kinds = [r["type"] for r in data(call("liquidation", "GET", f"{HISTORY}?limit=3"))]
    assert kinds == ["borrowed", "collateral_locked", "partial_liquidation"]


def test_a_moving_order_at_its_liquidation_ltv_is_partially_liquidated(clock):
    from okx_loan_exporter.simulator import SimOrder

    acct = account("btc-usdt")
    acct.orders = [SimOrder("1001", {"BTC": "0.5"}, {"USDT": "24000"})]  # LTV 0.8 at once
    sim = Simulator([acct], clock=clock, walk_interval=1e9)
    sim.start()
    try:
        view = sim.account_view("btc-usdt")
        assert float(view["ltv"]) == pytest.approx(0.6)
        assert float(sim.accounts[0].orders[0].collateral["BTC"]) < 0.5
    finally:
        sim.stop()


def test_a_pinned_ltv_is_held_even_past_liquidation(sim):
    sim.set_ltv("btc-usdt", 0.85)
    assert sim.account_view("btc-usdt")["ltv"] == "0.85"
    assert sim.accounts[0].orders[0].collateral == {"BTC": "0.5"}


def test_endpoint_faults_hit_that_endpoint_only(call, sim):
    sim.set_fault("btc-usdt", "http_500_html", count=1, endpoint="interest-accrued")
    assert call("btc-usdt", "GET", INTEREST).status_code == 500
    assert call("btc-usdt", "GET", INTEREST).status_code == 200  # count 1
    assert call("btc-usdt", "GET", HISTORY).status_code == 200
    with pytest.raises(ValueError, match="unknown fault 'missing_field'"):
        sim.set_fault("btc-usdt", "missing_field", endpoint="loan-history")
    with pytest.raises(ValueError, match="unknown endpoint"):
        sim.set_fault("btc-usdt", "close", endpoint="borrow")


def test_the_control_api_sets_an_endpoint_fault(call, sim):
    with http_client(base_url=sim.base_url, timeout=5) as http:
        changed = http.post(
            "/sim/accounts/btc-usdt",
            json={"fault": "rate_limit", "fault_count": 1, "fault_endpoint": "max-loan"},
        )
        assert changed.status_code == 200, changed.text
        refused = http.post(
            "/sim/accounts/btc-usdt", json={"fault": "rate_limit", "fault_endpoint": "borrow"}
        )
        assert refused.status_code == 400 and "unknown endpoint" in refused.text
        mixed = http.post(
            "/sim/accounts/btc-usdt",
            json={"fault": "close", "fault_endpoint": "loan-history", "ltv": 0.5},
        )
        assert mixed.status_code == 400
    limited = call("btc-usdt", "POST", MAX_LOAN, {"borrowCcy": "USDT"})
    assert limited.status_code == 429 and limited.json()["code"] == "50011"
    assert data(call("btc-usdt", "POST", MAX_LOAN, {"borrowCcy": "USDT"}))
    assert sim.stats()["endpoints"]["btc-usdt"]["max-loan"]["faulted"] == 1
