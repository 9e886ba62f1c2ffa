"""The OKX simulator: OKX's auth checks, computed answers, rate limit, faults, control API, CLI."""

import base64
import hashlib
import hmac
import json
import os
import re
import selectors
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from unittest.mock import ANY

import httpx
import pytest
import yaml
from conftest import account_config

from okx_loan_exporter.simulator import (
    FAULTS,
    LOAN_INFO_PATH,
    TIME_PATH,
    SimAccount,
    SimOrder,
    Simulator,
    demo_accounts,
    exporter_config_yaml,
    generated_accounts,
    main,
)

REPO = Path(__file__).resolve().parents[1]
START = 1_700_000_000.0
PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


_PLAIN_HTTP = ssl.create_default_context()  # made once: each new httpx.Client would load CAs again


def http_client(**options) -> httpx.Client:
    """An httpx client for loopback: no proxies from the environment, a shared SSL context."""
    return httpx.Client(verify=_PLAIN_HTTP, trust_env=False, **options)


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- independent OKX signing (deliberately not the exporter's code) -------------------------------


def okx_timestamp(seconds: float) -> str:
    millis = round(seconds * 1000)
    when = datetime.fromtimestamp(millis // 1000, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis % 1000:03d}Z"


def okx_sign(secret: str, timestamp: str, method: str, path: str, body: str = "") -> str:
    mac = hmac.new(secret.encode(), (timestamp + method + path + body).encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def signed_headers(
    account: SimAccount, timestamp: str, path: str = LOAN_INFO_PATH, **overrides
) -> dict[str, str]:
    headers = {
        "OK-ACCESS-KEY": account.api_key,
        "OK-ACCESS-SIGN": okx_sign(account.secret_key, timestamp, "GET", path),
        "OK-ACCESS-TIMESTAMP": timestamp,
        "OK-ACCESS-PASSPHRASE": account.passphrase,
        "Content-Type": "application/json",
    }
    if account.demo:
        headers["x-simulated-trading"] = "1"
    for name, value in overrides.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return headers


def account(name: str) -> SimAccount:
    return next(a for a in demo_accounts() if a.name == name)


def get_loan_info(
    client: httpx.Client,
    acct: SimAccount,
    clock: FakeClock,
    path: str = LOAN_INFO_PATH,
    **overrides,
):
    """One signed request at the simulator's clock (pass ``advance=`` to move the clock first)."""
    clock.advance(overrides.pop("advance", 0.5))  # 0.5 s apart: never rate limited
    timestamp = okx_timestamp(clock())
    return client.get(path, headers=signed_headers(acct, timestamp, path, **overrides))


def entry_of(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == "0" and body["msg"] == ""
    assert len(body["data"]) == 1
    return body["data"][0]


def assert_okx_error(response: httpx.Response, code: str, status: int = 401) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == code, body
    assert body["data"] == []
    assert body["msg"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock):
    # A walk interval of 10^9 s keeps prices still; the walk has its own tests.
    simulator = Simulator(seed=1, clock=clock, walk_interval=1e9)
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def client(sim):
    with http_client(base_url=sim.base_url, timeout=5) as http:
        yield http


# -- answers --------------------------------------------------------------------------------------


def test_public_time_reports_the_simulator_clock(sim, client, clock):
    body = client.get(TIME_PATH).json()
    assert body == {"code": "0", "data": [{"ts": str(int(START * 1000))}], "msg": ""}
    sim.set_clock_skew(-12.5)
    assert client.get(TIME_PATH).json()["data"][0]["ts"] == str(int((START - 12.5) * 1000))
    assert sim.stats()["time_requests"] == 2


def test_docs_example_account_reproduces_the_documented_answer(sim, client, clock):
    entry = entry_of(get_loan_info(client, account("okx-docs-example"), clock))
    assert entry["collateralData"] == [
        {"amt": "0.0000097", "ccy": "COMP"},
        {"amt": "0.78", "ccy": "STX"},
        {"amt": "0.001", "ccy": "DOT"},
        {"amt": "0.05357864", "ccy": "LUNA"},
    ]
    assert entry["loanData"] == [{"amt": "0.86590608", "ccy": "USDC"}]
    assert entry["marginCallLTV"] == "0.7374"
    assert entry["liqLTV"] == "0.8374"
    assert entry["riskWarningData"] == {"instId": "", "liqPx": ""}
    assert list(entry) == sorted(entry)  # OKX's field order
    assert entry["collateralNotionalUsd"] == "1.5078763"  # the example's own figure
    assert 0.56 < float(entry["curLTV"]) < 0.59


@pytest.mark.parametrize("name", ["okx-docs-example", "btc-usdt", "eth-usdc", "demo-trading"])
def test_notionals_and_ltv_are_computed_from_amounts_and_prices(sim, client, clock, name):
    acct = next(a for a in sim.accounts if a.name == name)
    [order] = acct.orders
    entry = entry_of(get_loan_info(client, acct, clock))
    prices = sim.prices  # the shared market's index prices

    def usd(amounts: dict[str, str]) -> Decimal:
        total = sum(Decimal(amt) * Decimal(repr(prices[ccy])) for ccy, amt in amounts.items())
        return Decimal(total).quantize(Decimal("1e-8"), rounding=ROUND_HALF_EVEN)

    collateral, loan = usd(order.collateral), usd(order.loans)
    assert Decimal(entry["collateralNotionalUsd"]) == collateral
    assert Decimal(entry["loanNotionalUsd"]) == loan
    ltv = (loan / collateral).quantize(Decimal("1e-4"), rounding=ROUND_HALF_EVEN)
    assert Decimal(entry["curLTV"]) == ltv
    numbers = [
        entry[k]
        for k in ("collateralNotionalUsd", "loanNotionalUsd", "curLTV", "liqLTV", "marginCallLTV")
    ]
    numbers += [item["amt"] for item in entry["collateralData"] + entry["loanData"]]
    for number in numbers:
        assert PLAIN_NUMBER.fullmatch(number), number  # never "9.7e-06"


def test_single_pair_fills_risk_warning_data(sim, client, clock):
    entry = entry_of(get_loan_info(client, account("btc-usdt"), clock))
    assert entry["curLTV"] == "0.45"
    assert entry["riskWarningData"] == {"instId": "BTC-USDT", "liqPx": "33750"}
    # At the liquidation price the LTV is exactly liqLTV.
    ltv_at_liq_px = Decimal("13500") / (Decimal("0.5") * Decimal("33750"))
    assert ltv_at_liq_px == Decimal(entry["liqLTV"])
    eth = entry_of(get_loan_info(client, account("eth-usdc"), clock))
    assert eth["riskWarningData"] == {"instId": "ETH-USDC", "liqPx": "2250"}
    assert eth["curLTV"] == "0.6"


def test_account_without_a_loan_answers_empty_data(sim, client, clock):
    response = get_loan_info(client, account("no-loan"), clock)
    assert response.status_code == 200
    assert response.json() == {"code": "0", "data": [], "msg": ""}


def test_answers_parse_with_the_exporters_parser(sim, client, clock):
    from okx_loan_exporter.position import parse_loan_info

    position = parse_loan_info(get_loan_info(client, account("btc-usdt"), clock).json())
    [order] = position.orders
    assert order.order_id == "1001" and order.current_ltv == 0.45
    assert order.liquidation_price == 33750.0
    assert order.collateral == {"BTC": 0.5}
    assert not parse_loan_info(get_loan_info(client, account("no-loan"), clock).json()).active
    [docs] = parse_loan_info(
        get_loan_info(client, account("okx-docs-example"), clock).json()
    ).orders
    assert docs.order_id == ""  # the documented answer has no ordId
    two = parse_loan_info(get_loan_info(client, account("two-orders"), clock).json())
    assert [o.order_id for o in two.orders] == ["2001", "2002"]


# -- orders ---------------------------------------------------------------------------------------

TWO = account("two-orders")


def test_every_order_is_returned_with_its_ord_id(sim, client, clock):
    data = _json(get_loan_info(client, TWO, clock))["data"]
    assert [entry["ordId"] for entry in data] == ["2001", "2002"]
    first, second = data
    assert list(first) == sorted(first)  # ordId in OKX's (alphabetical) field order
    assert first["collateralData"] == [{"amt": "0.2", "ccy": "BTC"}]
    assert first["loanData"] == [{"amt": "4800", "ccy": "USDT"}]
    assert (first["curLTV"], first["riskWarningData"]) == (
        "0.4",
        {"instId": "BTC-USDT", "liqPx": "30000"},
    )
    assert second["collateralData"] == [{"amt": "2", "ccy": "ETH"}, {"amt": "20", "ccy": "SOL"}]
    assert second["loanData"] == [{"amt": "5850", "ccy": "USDC"}]
    assert second["curLTV"] == "0.65"  # its cycle starts below the margin call
    assert second["riskWarningData"] == {"instId": "", "liqPx": ""}
    assert "ordId" not in entry_of(get_loan_info(client, account("okx-docs-example"), clock))
    for name, order_id in (("btc-usdt", "1001"), ("eth-usdc", "1101"), ("demo-trading", "1201")):
        assert entry_of(get_loan_info(client, account(name), clock))["ordId"] == order_id


@pytest.mark.parametrize(
    ("query", "orders"),
    [
        ("?ordId=2002", ["2002"]),
        ("?ordId=2001", ["2001"]),
        ("?ordId=", ["2001", "2002"]),  # empty is absent, as on OKX
        ("?ordId=9999", []),  # OKX answers code 0 with no data for an unknown order
        ("?ordId=1001", []),  # another account's order
        ("?ccy=BTC&ordId=2002", ["2002"]),
    ],
)
def test_ord_id_filter(sim, client, clock, query, orders):
    body = _json(get_loan_info(client, TWO, clock, path=LOAN_INFO_PATH + query))
    assert body["code"] == "0" and body["msg"] == ""
    assert [entry["ordId"] for entry in body["data"]] == orders


def test_ord_id_filter_is_signed_like_any_query(sim, client, clock):
    unsigned_query = okx_sign(TWO.secret_key, TS, "GET", LOAN_INFO_PATH)
    response = get_loan_info(
        client, TWO, clock, path=LOAN_INFO_PATH + "?ordId=2002", OK_ACCESS_SIGN=unsigned_query
    )
    assert_okx_error(response, "50113")
    data = _json(
        get_loan_info(client, account("okx-docs-example"), clock, path=LOAN_INFO_PATH + "?ordId=1")
    )["data"]
    assert data == []  # an order without ordId never matches a filter


def ltvs(client, clock, advance: float) -> dict[str, str]:
    data = _json(get_loan_info(client, TWO, clock, advance=advance))["data"]
    return {entry["ordId"]: entry["curLTV"] for entry in data}


@pytest.mark.parametrize("period", [300.0, 20.0])
def test_cycling_order_crosses_its_margin_call_and_comes_back(clock, period):
    with (
        Simulator(seed=3, clock=clock, margin_call_cycle=period) as sim,
        http_client(base_url=sim.base_url) as client,
    ):
        step = period / 40  # 0.5 s at the shortest: inside the rate limit
        seen = [Decimal(ltvs(client, clock, advance=step)["2002"]) for _ in range(80)]
        above = [ltv >= Decimal("0.7") for ltv in seen]  # seen[i] is at (i + 1) * step
        # Below at the start, above for the middle half of each period, below again at its end.
        assert above[:8] == [False] * 8
        assert above[10:29] == [True] * 19
        assert above[31:48] == [False] * 17
        assert above[50:69] == [True] * 19
        assert max(seen) == Decimal("0.75") and min(seen) == Decimal("0.65")
        assert max(seen) < Decimal("0.8")  # never at the liquidation LTV


def test_default_cycle_lets_a_for_1m_alert_fire_and_resolve_within_10_minutes(clock):
    with (
        Simulator(seed=3, clock=clock) as sim,
        http_client(base_url=sim.base_url) as client,
    ):
        samples = [Decimal(ltvs(client, clock, advance=15)["2002"]) for _ in range(40)]  # 10 min
    above = [ltv >= Decimal("0.7") for ltv in samples]
    first_above = above.index(True)
    streak = above[first_above:].index(False)
    assert (first_above + 1) * 15 <= 90  # above the margin call after about a minute
    assert streak * 15 >= 60 + 2 * 15  # long enough for `for: 1m` at 15 s scrape and evaluation
    assert (first_above + streak + 1) * 15 <= 300  # and back below, so the alert resolves


def test_the_exporter_sees_the_cycling_order_cross_its_margin_call_and_come_back(
    start_simulator, start_exporter, fake_clock
):
    two = account("two-orders")
    simulator = start_simulator([two], margin_call_cycle=20.0)
    exporter = start_exporter([account_config(two, simulator.base_url)], cache_ttl=0.5)
    above = []
    for _ in range(40):  # two periods, a fresh answer every second of the shared fake clock
        fake_clock.advance(1.0)
        scrape = exporter.scrape()
        assert scrape.value("okx_loan_up", account="two-orders") == 1
        labels = {"account": "two-orders", "order": "2002"}
        ltv = scrape.value("okx_loan_ltv_ratio", **labels)
        assert ltv is not None and ltv < scrape.value("okx_loan_liquidation_ltv_ratio", **labels)
        above.append(ltv >= scrape.value("okx_loan_margin_call_ltv_ratio", **labels))
    assert above == [5 <= second % 20 <= 15 for second in range(1, 41)]


def test_pinning_a_cycling_order_holds_it_and_walking_resumes_the_cycle(sim, client, clock):
    sim.set_ltv("two-orders", 0.72, order="2002")
    assert ltvs(client, clock, advance=100) == {"2001": "0.4", "2002": "0.72"}
    assert ltvs(client, clock, advance=100)["2002"] == "0.72"
    sim.set_walk("two-orders", True, order="2002")
    assert ltvs(client, clock, advance=0)["2002"] != "0.72"
    with pytest.raises(KeyError, match="no open order '3'"):
        sim.set_ltv("two-orders", 0.5, order="3")


def test_a_closed_order_leaves_the_answer_until_reset(sim, client, clock):
    sim.close_order("two-orders", "2001")
    assert list(ltvs(client, clock, advance=1)) == ["2002"]
    assert [o.order_id for o in next(a for a in sim.accounts if a.name == "two-orders").orders] == [
        "2002"
    ]
    view = client.post("/sim/accounts/two-orders", json={"order": "2002", "close": True}).json()
    assert (view["orders"], view["ltv"]) == ([], None)
    assert _json(get_loan_info(client, TWO, clock))["data"] == []
    assert (
        client.post("/sim/accounts/two-orders", json={"order": "2002", "close": True}).status_code
        == 404
    )
    sim.reset()
    assert list(ltvs(client, clock, advance=1)) == ["2001", "2002"]


def test_faults_spoil_the_chosen_order_only(sim, client, clock):
    sim.set_fault("two-orders", "missing_field", order="2002")
    first, second = _json(get_loan_info(client, TWO, clock))["data"]
    assert "curLTV" in first and "curLTV" not in second
    sim.set_fault("two-orders", "duplicate_order", order="2002")
    data = _json(get_loan_info(client, TWO, clock))["data"]
    assert [entry["ordId"] for entry in data] == ["2001", "2002", "2002"]
    sim.set_fault("two-orders", "negative_zero")  # the first order by default
    first, second = _json(get_loan_info(client, TWO, clock))["data"]
    assert (first["loanNotionalUsd"], second["loanNotionalUsd"]) == ("-0", "5850")
    with pytest.raises(KeyError):
        sim.set_fault("two-orders", "hang", order="nope")


def test_control_api_takes_an_order(sim, client, clock):
    view = client.post("/sim/accounts/two-orders", json={"order": "2002", "ltv": 0.71}).json()
    assert (view["order"], view["ltv"], view["walk"]) == ("2002", "0.71", False)
    assert [(o["order"], o["walk"], o["cycle"]) for o in view["orders"]] == [
        ("2001", True, False),
        ("2002", False, True),
    ]
    assert set(view["prices"]) == {"BTC", "ETH", "SOL", "USDC", "USDT"}
    assert ltvs(client, clock, advance=1)["2002"] == "0.71"
    for body, status in [
        ({"order": "3", "ltv": 0.5}, 404),
        ({"order": 2002, "ltv": 0.5}, 400),
        ({"close": False}, 400),
        ({"close": True, "ltv": 0.5}, 400),
    ]:
        assert client.post("/sim/accounts/two-orders", json=body).status_code == status, body
    assert client.post("/sim/accounts/no-loan", json={"close": True}).status_code == 400
    assert [o["order"] for o in client.get("/sim/accounts/two-orders").json()["orders"]] == [
        "2001",
        "2002",
    ]


# -- authentication -------------------------------------------------------------------------------

BTC = account("btc-usdt")
TS = okx_timestamp(START + 0.5)  # what get_loan_info's first request signs with
WRONG_SECRET = okx_sign("not-the-secret", TS, "GET", LOAN_INFO_PATH)


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"OK-ACCESS-KEY": None}, "50103"),
        ({"OK-ACCESS-KEY": ""}, "50103"),
        ({"OK-ACCESS-PASSPHRASE": None}, "50104"),
        ({"OK-ACCESS-SIGN": None}, "50106"),
        ({"OK-ACCESS-TIMESTAMP": None}, "50107"),
        ({"OK-ACCESS-TIMESTAMP": "2023-11-14T22:13:20Z"}, "50112"),
        ({"OK-ACCESS-TIMESTAMP": "2023-11-14T22:13:20.500"}, "50112"),
        ({"OK-ACCESS-TIMESTAMP": "2023-11-14T22:13:20.500+00:00"}, "50112"),
        ({"OK-ACCESS-TIMESTAMP": "2023-11-14 22:13:20.500Z"}, "50112"),
        ({"OK-ACCESS-TIMESTAMP": "2023-11-14T22:13:20.500123Z"}, "50112"),
        ({"OK-ACCESS-TIMESTAMP": "1700000000500"}, "50112"),
        ({"OK-ACCESS-TIMESTAMP": "2023-13-14T22:13:20.500Z"}, "50112"),
        ({"OK-ACCESS-TIMESTAMP": okx_timestamp(START - 60)}, "50102"),
        ({"OK-ACCESS-KEY": "sim-nobody-key"}, "50111"),
        ({"OK-ACCESS-PASSPHRASE": "wrong passphrase"}, "50105"),
        ({"OK-ACCESS-SIGN": WRONG_SECRET}, "50113"),
        ({"OK-ACCESS-SIGN": okx_sign(BTC.secret_key, TS, "GET", LOAN_INFO_PATH + "?x=1")}, "50113"),
        ({"OK-ACCESS-SIGN": okx_sign(BTC.secret_key, TS, "POST", LOAN_INFO_PATH)}, "50113"),
        ({"OK-ACCESS-SIGN": okx_sign(BTC.secret_key, TS, "get", LOAN_INFO_PATH)}, "50113"),
        ({"x-simulated-trading": "1"}, "50101"),
        # OKX's order of checks decides which error wins.
        ({"OK-ACCESS-KEY": None, "OK-ACCESS-TIMESTAMP": "yesterday"}, "50103"),
        ({"OK-ACCESS-PASSPHRASE": None, "OK-ACCESS-SIGN": None}, "50104"),
        ({"OK-ACCESS-TIMESTAMP": "yesterday", "OK-ACCESS-KEY": "sim-nobody-key"}, "50112"),
        ({"OK-ACCESS-TIMESTAMP": okx_timestamp(START + 99), "OK-ACCESS-KEY": "nobody"}, "50102"),
        ({"OK-ACCESS-KEY": "sim-nobody-key", "OK-ACCESS-SIGN": WRONG_SECRET}, "50111"),
        ({"OK-ACCESS-PASSPHRASE": "wrong", "OK-ACCESS-SIGN": WRONG_SECRET}, "50105"),
        ({"OK-ACCESS-PASSPHRASE": "wrong", "x-simulated-trading": "1"}, "50105"),
        ({"x-simulated-trading": "1", "OK-ACCESS-SIGN": WRONG_SECRET}, "50101"),
    ],
)
def test_auth_failures_give_okx_codes(sim, client, clock, overrides, code):
    response = get_loan_info(client, BTC, clock, **overrides)
    assert_okx_error(response, code)
    known_key = overrides.get("OK-ACCESS-KEY", BTC.api_key) == BTC.api_key
    stats = sim.stats()["accounts"]["btc-usdt"]
    assert stats == {
        "requests": int(known_key),
        "ok": 0,
        "rate_limited": 0,
        "auth_failed": int(known_key),
        "faulted": 0,
        "shortest_interval": ANY,
    }


def test_timestamp_must_be_within_30_seconds_of_the_simulator_clock(sim, client, clock):
    for offset, code in [
        (-29.999, "0"),
        (29.999, "0"),
        (-30.001, "50102"),
        (30.5, "50102"),
        (-3600, "50102"),
    ]:
        clock.advance(1)
        timestamp = okx_timestamp(clock() + offset)
        response = client.get(LOAN_INFO_PATH, headers=signed_headers(BTC, timestamp))
        assert response.json()["code"] == code, offset
    # The window follows the simulator's clock: a timestamp that was fine goes stale.
    timestamp = okx_timestamp(clock())
    assert client.get(LOAN_INFO_PATH, headers=signed_headers(BTC, timestamp)).json()["code"] == "0"
    clock.advance(31)
    assert_okx_error(client.get(LOAN_INFO_PATH, headers=signed_headers(BTC, timestamp)), "50102")


def test_demo_trading_key_needs_the_simulated_trading_header(sim, client, clock):
    demo = account("demo-trading")
    assert demo.demo
    assert entry_of(get_loan_info(client, demo, clock))["riskWarningData"]["instId"] == "BTC-USDC"
    assert_okx_error(get_loan_info(client, demo, clock, x_simulated_trading=None), "50101")
    assert_okx_error(get_loan_info(client, demo, clock, x_simulated_trading="0"), "50101")
    assert_okx_error(get_loan_info(client, BTC, clock, x_simulated_trading="1"), "50101")
    # python-okx sends "x-simulated-trading: 0" with live keys; OKX accepts that.
    entry_of(get_loan_info(client, BTC, clock, x_simulated_trading="0"))


def test_signature_covers_the_query_string(sim, client, clock):
    clock.advance(1)
    timestamp = okx_timestamp(clock())
    path = LOAN_INFO_PATH + "?ccy=BTC"
    headers = signed_headers(
        BTC, timestamp, OK_ACCESS_SIGN=okx_sign(BTC.secret_key, timestamp, "GET", path)
    )
    assert client.get(path, headers=headers).json()["code"] == "0"


# -- rate limit -----------------------------------------------------------------------------------


def test_rate_limit_is_5_requests_per_2_seconds_per_key(sim, client, clock):
    eth = account("eth-usdc")
    for _ in range(5):
        entry_of(get_loan_info(client, BTC, clock, advance=0.1))  # t = 0.1 ... 0.5
    assert_okx_error(get_loan_info(client, BTC, clock, advance=0.1), "50011", status=429)  # 0.6
    entry_of(get_loan_info(client, eth, clock, advance=0))  # another key has its own budget
    assert_okx_error(get_loan_info(client, BTC, clock, advance=1.49), "50011", 429)  # t = 2.09
    entry_of(get_loan_info(client, BTC, clock, advance=0.02))  # t = 2.11: the first has expired
    assert_okx_error(get_loan_info(client, BTC, clock, advance=0), "50011", 429)
    clock.advance(2)
    for _ in range(5):
        entry_of(get_loan_info(client, BTC, clock, advance=0))
    assert sim.stats()["accounts"]["btc-usdt"] == {
        "requests": 14,
        "ok": 11,
        "rate_limited": 3,
        "auth_failed": 0,
        "faulted": 0,
        "shortest_interval": ANY,
    }


def test_rejected_requests_do_not_use_up_the_rate_limit(sim, client, clock):
    for _ in range(10):
        assert_okx_error(
            get_loan_info(client, BTC, clock, advance=0, OK_ACCESS_SIGN="bad"), "50113"
        )
    for _ in range(5):
        entry_of(get_loan_info(client, BTC, clock, advance=0))


# -- prices, LTV ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["btc-usdt", "okx-docs-example", "eth-usdc", "demo-trading"])
@pytest.mark.parametrize("ltv", [0.8, 0.6543, 0.05, 1.25])
def test_set_ltv_makes_curltv_exactly_that_and_stops_the_walk(clock, name, ltv):
    with (
        Simulator(seed=7, clock=clock, walk_interval=1.0) as sim,
        http_client(base_url=sim.base_url) as client,
    ):
        acct = account(name)
        [order] = acct.orders
        before = entry_of(get_loan_info(client, acct, clock))
        market = sim.prices
        sim.set_ltv(name, ltv)
        assert sim.prices == market  # the shared market is not bent for one order
        expected = format(Decimal(repr(ltv)).normalize(), "f")
        for _ in range(3):
            entry = entry_of(get_loan_info(client, acct, clock, advance=300))
            assert entry["curLTV"] == expected
        # Debt is valued at the market; only the order's collateral valuation (haircut) moves.
        loan = sum(Decimal(a) * Decimal(repr(sim.prices[c])) for c, a in order.loans.items())
        assert Decimal(entry["loanNotionalUsd"]) == loan.quantize(Decimal("1e-8"))
        if len(order.collateral) != 1 or len(order.loans) != 1:
            assert (
                entry["riskWarningData"] == before["riskWarningData"] == {"instId": "", "liqPx": ""}
            )
            return
        # liqPx stays OKX's: the collateral price at which this LTV would reach liqLTV.
        [(coll_ccy, coll_amt)] = order.collateral.items()
        [loan_amt] = order.loans.values()
        raw = Decimal(coll_amt) * Decimal(repr(sim.prices[coll_ccy]))
        ratio = Decimal(entry["collateralNotionalUsd"]) / raw
        ltv_at_liq_px = Decimal(loan_amt) / (
            Decimal(coll_amt) * ratio * Decimal(entry["riskWarningData"]["liqPx"])
        )
        assert abs(ltv_at_liq_px / Decimal(entry["liqLTV"]) - 1) < Decimal("1e-6")


def test_set_ltv_needs_a_loan_and_a_positive_ltv(sim):
    with pytest.raises(ValueError, match="no loan"):
        sim.set_ltv("no-loan", 0.5)
    with pytest.raises(ValueError):
        sim.set_ltv("btc-usdt", 0)
    with pytest.raises(KeyError):
        sim.set_ltv("nobody", 0.5)


def test_prices_walk_with_the_clock_deterministically(clock):
    def prices_over_time(seed: int, accounts=None) -> list[dict[str, float]]:
        clock.now = START
        sim = Simulator(accounts, seed=seed, clock=clock, walk_interval=1.0)
        history = []
        for _ in range(5):
            clock.advance(30)
            history.append(sim.prices)
        return history

    first, again, other = prices_over_time(3), prices_over_time(3), prices_over_time(4)
    assert first == again
    assert first != other
    # One market for every account: the walk does not depend on which accounts exist.
    assert prices_over_time(3, generated_accounts(5)) == first
    btc = [step["BTC"] for step in first]
    assert len(set(btc)) == 5  # it moved every time
    assert all(step["USDT"] == step["USDC"] == 1.0 for step in first)  # stablecoins stay at 1


def test_walk_stays_near_its_centre_over_long_runs(clock):
    sim = Simulator(seed=5, clock=clock, walk_interval=1.0)
    for _ in range(20):
        clock.advance(86400)  # a day between looks: the n-step distribution in one draw
        btc = sim.prices["BTC"]
        assert 60000 * 0.75 < btc < 60000 * 1.25


def test_market_walk_stops_prices_and_cycles_for_every_account_and_resumes(clock):
    with (
        Simulator(seed=2, clock=clock, margin_call_cycle=40) as sim,
        http_client(base_url=sim.base_url) as client,
    ):
        assert ltvs(client, clock, advance=10)["2002"] == "0.7"  # a quarter of the period
        assert client.post("/sim/config", json={"walk": False}).json()["walk"] is False
        prices, held = sim.prices, ltvs(client, clock, advance=5)
        for _ in range(3):
            assert ltvs(client, clock, advance=7) == held
            assert sim.prices == prices
        assert client.post("/sim/config", json={"walk": "no"}).status_code == 400
        sim.set_market_walk(True)  # market time goes on from where it stood
        assert ltvs(client, clock, advance=10)["2002"] == "0.75"  # half the period


def test_walk_moves_the_ltv_and_can_be_paused(clock):
    with (
        Simulator(seed=2, clock=clock, walk_interval=1.0) as sim,
        http_client(base_url=sim.base_url) as client,
    ):
        ltvs = {entry_of(get_loan_info(client, BTC, clock, advance=20))["curLTV"] for _ in range(4)}
        assert len(ltvs) > 1
        sim.set_walk("btc-usdt", False)
        paused = {
            entry_of(get_loan_info(client, BTC, clock, advance=20))["curLTV"] for _ in range(4)
        }
        assert len(paused) == 1


# -- faults ---------------------------------------------------------------------------------------


def _json(response: httpx.Response) -> dict:
    assert response.status_code == 200
    return response.json()


def _not_json(response: httpx.Response) -> None:
    with pytest.raises(ValueError):
        json.loads(response.content)


BODY_FAULT_CHECKS = {
    "http_500_html": lambda r: (
        r.status_code == 500
        and r.headers["content-type"] == "text/html"
        and r.text.lstrip().startswith("<html>")
    ),
    "http_200_html": lambda r: (
        r.status_code == 200
        and r.headers["content-type"].startswith("text/html")
        and "<html>" in r.text
    ),
    "truncated_json": lambda r: (
        r.status_code == 200 and r.text.startswith('{"code":"0"') and _not_json(r) is None
    ),
    "invalid_json": lambda r: r.status_code == 200 and _not_json(r) is None,
    "no_data": lambda r: _json(r) == {"code": "0", "msg": ""},
    "missing_field": lambda r: (
        "curLTV" not in _json(r)["data"][0] and _json(r)["data"][0]["liqLTV"] == "0.8"
    ),
    "null_field": lambda r: _json(r)["data"][0]["curLTV"] is None,
    "non_numeric": lambda r: _json(r)["data"][0]["curLTV"] == "abc",
    "nan_string": lambda r: _json(r)["data"][0]["curLTV"] == "NaN",
    "huge_number": lambda r: _json(r)["data"][0]["curLTV"] == "1e400",
    "negative_zero": lambda r: _json(r)["data"][0]["loanNotionalUsd"] == "-0",
    "negative_amount": lambda r: _json(r)["data"][0]["collateralData"][0]["amt"] == "-1",
    "nested_type": lambda r: _json(r)["data"][0]["curLTV"] == {"value": "0.45"},
    "empty_strings": lambda r: (
        [_json(r)["data"][0][k] for k in ("curLTV", "marginCallLTV", "liqLTV")] == ["", "", ""]
    ),
    "duplicate_order": lambda r: (
        len(_json(r)["data"]) == 2
        and _json(r)["data"][0]["curLTV"] == "0.45"
        and [e["ordId"] for e in _json(r)["data"]] == ["1001", "1001"]
        and _json(r)["data"][1] != _json(r)["data"][0]
    ),
    "no_loan": lambda r: _json(r) == {"code": "0", "data": [], "msg": ""},
}
ERROR_FAULTS = {
    "rate_limit": ("50011", 429),
    "busy_50001": ("50001", 503),
    "busy_50013": ("50013", 200),
    "auth_50101": ("50101", 401),
    "auth_50105": ("50105", 401),
    "auth_50110": ("50110", 401),
    "auth_50111": ("50111", 401),
    "auth_50113": ("50113", 401),
    "auth_50120": ("50120", 401),
}


def test_every_fault_name_is_exported():
    assert set(BODY_FAULT_CHECKS) | set(ERROR_FAULTS) | {
        "slow",
        "hang",
        "slow_bytes",
        "huge_body",
        "close",
    } == set(FAULTS)
    assert len(FAULTS) == len(set(FAULTS)) == 30


@pytest.mark.parametrize("fault", sorted(BODY_FAULT_CHECKS))
def test_body_faults_hit_only_their_account(sim, client, clock, fault):
    sim.set_fault("btc-usdt", fault)
    response = get_loan_info(client, BTC, clock)
    assert BODY_FAULT_CHECKS[fault](response), response.text[:300]
    entry_of(get_loan_info(client, account("eth-usdc"), clock))  # others answer normally
    assert sim.stats()["accounts"]["btc-usdt"]["faulted"] == 1
    assert sim.stats()["accounts"]["eth-usdc"]["ok"] == 1


def test_invalid_json_fault_contents_are_rejected_by_the_exporters_parser(sim, client, clock):
    from okx_loan_exporter.position import InvalidResponse, parse_loan_info

    for fault in (
        "no_data",
        "missing_field",
        "null_field",
        "non_numeric",
        "nan_string",
        "huge_number",
        "negative_amount",
        "nested_type",
        "duplicate_order",
    ):
        sim.set_fault("btc-usdt", fault)
        with pytest.raises(InvalidResponse):
            parse_loan_info(get_loan_info(client, BTC, clock).json())
    sim.set_fault("btc-usdt", "negative_zero")  # "-0" is a valid zero
    [order] = parse_loan_info(get_loan_info(client, BTC, clock).json()).orders
    assert order.loan_notional_usd == 0


@pytest.mark.parametrize("fault", sorted(ERROR_FAULTS))
def test_error_faults_answer_okx_error_codes(sim, client, clock, fault):
    sim.set_fault("btc-usdt", fault)
    code, status = ERROR_FAULTS[fault]
    assert_okx_error(get_loan_info(client, BTC, clock), code, status)


def test_fault_count_clears_the_fault_after_n_requests(sim, client, clock):
    sim.set_fault("btc-usdt", "busy_50013", count=2)
    assert_okx_error(get_loan_info(client, BTC, clock), "50013", 200)
    assert_okx_error(get_loan_info(client, BTC, clock), "50013", 200)
    entry_of(get_loan_info(client, BTC, clock))
    entry_of(get_loan_info(client, BTC, clock))
    assert sim.stats()["accounts"]["btc-usdt"] == {
        "requests": 4,
        "ok": 2,
        "rate_limited": 0,
        "auth_failed": 0,
        "faulted": 2,
        "shortest_interval": ANY,
    }


def test_faults_apply_after_authentication(sim, client, clock):
    sim.set_fault("btc-usdt", "http_500_html")
    assert_okx_error(get_loan_info(client, BTC, clock, OK_ACCESS_PASSPHRASE="x"), "50105")
    assert get_loan_info(client, BTC, clock).status_code == 500


def test_set_fault_rejects_unknown_names_and_counts(sim):
    with pytest.raises(ValueError, match="unknown fault"):
        sim.set_fault("btc-usdt", "meteor")
    with pytest.raises(ValueError):
        sim.set_fault("btc-usdt", "hang", count=0)
    with pytest.raises(KeyError):
        sim.set_fault("nobody", "hang")


def test_close_fault_drops_the_connection(sim, client, clock):
    sim.set_fault("btc-usdt", "close", count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        get_loan_info(client, BTC, clock)
    entry_of(get_loan_info(client, BTC, clock))


def test_hang_fault_never_answers_and_does_not_block_stop(clock):
    sim = Simulator(clock=clock, walk_interval=1e9)
    sim.start()
    sim.set_fault("btc-usdt", "hang")
    with (
        http_client(base_url=sim.base_url, timeout=0.3) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        get_loan_info(client, BTC, clock)

    outcome: list[BaseException] = []

    def hang_forever() -> None:
        try:
            with http_client(base_url=sim.base_url, timeout=30) as client:
                get_loan_info(client, BTC, clock, advance=0)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=hang_forever)
    waiter.start()
    deadline = time.monotonic() + 5
    while sim.stats()["accounts"]["btc-usdt"]["faulted"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 1.0
    waiter.join(timeout=2)
    assert not waiter.is_alive()
    assert outcome and isinstance(outcome[0], httpx.RemoteProtocolError | httpx.ReadError)


def test_huge_body_fault_streams_50_mib_that_start_like_a_valid_answer(sim, client, clock):
    sim.set_fault("btc-usdt", "huge_body")
    clock.advance(1)
    headers = signed_headers(BTC, okx_timestamp(clock()))
    with client.stream("GET", LOAN_INFO_PATH, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(50 * 1024 * 1024)
        size, first = 0, b""
        for chunk in response.iter_raw():
            first = first or chunk
            size += len(chunk)
    assert size == 50 * 1024 * 1024
    assert first.startswith(b'{"code":"0","data":[{"collateralData":')


def test_slow_bytes_fault_trickles_the_answer(sim, clock):
    sim.set_fault("btc-usdt", "slow_bytes")
    clock.advance(1)
    headers = signed_headers(BTC, okx_timestamp(clock()))
    host, port = sim.base_url.removeprefix("http://").rsplit(":", 1)
    request = (
        f"GET {LOAN_INFO_PATH} HTTP/1.1\r\nHost: {host}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=2) as conn:
        conn.sendall(request.encode())
        received = b""
        deadline = time.monotonic() + 0.7
        while time.monotonic() < deadline:
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                received += conn.recv(100)
            except TimeoutError:
                break
    assert received.startswith(b"HTTP/1.1 200"[: len(received)])
    assert 1 <= len(received) <= 8  # 0.7 s at one byte per 0.2 s


def test_slow_fault_answers_normally_after_a_delay(sim, client, clock, monkeypatch):
    from okx_loan_exporter.simulator import faults

    assert faults.SLOW_FAULT_SECONDS == 3.0
    monkeypatch.setattr(faults, "SLOW_FAULT_SECONDS", 0.3)  # keeps the suite fast
    sim.set_fault("btc-usdt", "slow", count=1)
    started = time.monotonic()
    assert entry_of(get_loan_info(client, BTC, clock))["curLTV"] == "0.45"
    assert time.monotonic() - started >= 0.3
    assert sim.stats()["accounts"]["btc-usdt"]["faulted"] == 1


def test_latency_delays_answers_to_one_account_or_all(sim, client, clock):
    sim.set_latency(0.3, account="btc-usdt")
    started = time.monotonic()
    entry_of(get_loan_info(client, BTC, clock))
    assert time.monotonic() - started >= 0.3
    client.post("/sim/config", json={"latency": 0.2})
    started = time.monotonic()
    entry_of(get_loan_info(client, account("eth-usdc"), clock))
    assert time.monotonic() - started >= 0.2


# -- control endpoints ----------------------------------------------------------------------------


def test_control_endpoints_over_http(sim, client, clock):
    answer = client.post("/sim/accounts/btc-usdt", json={"ltv": 0.75})
    assert answer.status_code == 200
    assert answer.json()["ltv"] == "0.75" and answer.json()["walk"] is False
    assert entry_of(get_loan_info(client, BTC, clock))["curLTV"] == "0.75"

    answer = client.post("/sim/accounts/btc-usdt", json={"fault": "busy_50001", "fault_count": 1})
    assert answer.json()["fault"] == "busy_50001" and answer.json()["fault_count"] == 1
    assert_okx_error(get_loan_info(client, BTC, clock), "50001", 503)
    entry_of(get_loan_info(client, BTC, clock))

    client.post("/sim/accounts/btc-usdt", json={"fault": "no_loan"})
    assert get_loan_info(client, BTC, clock).json()["data"] == []
    client.post("/sim/accounts/btc-usdt", json={"fault": None})
    entry_of(get_loan_info(client, BTC, clock))

    stats = client.get("/sim/stats").json()
    assert stats["accounts"]["btc-usdt"] == {
        "requests": 5,
        "ok": 3,
        "rate_limited": 0,
        "auth_failed": 0,
        "faulted": 2,
        "shortest_interval": ANY,
    }
    assert set(stats["accounts"]) == {a.name for a in demo_accounts()}
    assert stats["time_requests"] == 0

    assert client.post("/sim/accounts/btc-usdt", json={"walk": True}).json()["walk"] is True
    view = client.get("/sim/accounts/btc-usdt").json()
    assert (view["ltv"], view["walk"], view["fault"]) == ("0.75", True, None)
    assert client.get("/sim/config").json() == {
        "clock_skew": 0.0,
        "latency": 0.0,
        "margin_call_cycle": 300.0,
        "walk": True,
        "index_fault": None,
        "index_fault_count": None,
    }
    assert client.post("/sim/reset").json() == {"ok": True}
    assert client.get("/sim/stats").json()["accounts"]["btc-usdt"]["requests"] == 0
    assert entry_of(get_loan_info(client, BTC, clock))["curLTV"] == "0.45"


def test_clock_skew_fails_requests_until_the_client_syncs_from_public_time(sim, client, clock):
    assert client.post("/sim/config", json={"clock_skew": 120}).json() == {
        "clock_skew": 120.0,
        "latency": 0.0,
        "margin_call_cycle": 300.0,
        "walk": True,
        "index_fault": None,
        "index_fault_count": None,
    }
    assert_okx_error(get_loan_info(client, BTC, clock), "50102")
    server_ms = int(client.get(TIME_PATH).json()["data"][0]["ts"])
    assert server_ms == int((clock() + 120) * 1000)
    synced = okx_timestamp(server_ms / 1000)
    entry_of(client.get(LOAN_INFO_PATH, headers=signed_headers(BTC, synced)))
    sim.reset()
    assert_okx_error(client.get(LOAN_INFO_PATH, headers=signed_headers(BTC, synced)), "50102")


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/sim/accounts/nobody", {"fault": "hang"}, 404),
        ("POST", "/sim/accounts/btc-usdt", {"fault": "meteor"}, 400),
        ("POST", "/sim/accounts/btc-usdt", {"fault_count": 0, "fault": "hang"}, 400),
        ("POST", "/sim/accounts/btc-usdt", {"ltv": "0.5"}, 400),
        ("POST", "/sim/accounts/btc-usdt", {"ltv": -1}, 400),
        ("POST", "/sim/accounts/btc-usdt", {"walk": "yes"}, 400),
        ("POST", "/sim/accounts/btc-usdt", {"colour": "red"}, 400),
        ("POST", "/sim/accounts/no-loan", {"ltv": 0.5}, 400),
        ("POST", "/sim/config", {"clock_skew": "soon"}, 400),
        ("POST", "/sim/config", {"latency": -1}, 400),
        ("POST", "/sim/config", [1, 2], 400),
        ("GET", "/sim/reset", None, 405),
        ("POST", "/sim/stats", {}, 405),
        ("GET", "/sim/accounts/", None, 404),
        ("POST", "/sim/nothing", {}, 404),
    ],
)
def test_control_endpoints_reject_bad_requests(sim, client, method, path, body, status):
    response = client.request(method, path, json=body)
    assert response.status_code == status
    assert response.json()["error"]
    assert sim.stats()["accounts"]["btc-usdt"]["requests"] == 0
    assert client.post("/sim/accounts/btc-usdt", json={}).json()["fault"] is None


def test_unknown_path_and_wrong_method(sim, client):
    assert client.get("/api/v5/account/balance").status_code == 404
    assert_okx_error(client.post(LOAN_INFO_PATH, content=b"{}"), "50115", 405)


# -- connections ----------------------------------------------------------------------------------


def test_keeps_connections_alive(sim, clock):
    host, port = sim.base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as conn:
        stream = conn.makefile("rb")
        for _ in range(3):
            conn.sendall(f"GET {TIME_PATH} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert stream.readline() == b"HTTP/1.1 200 OK\r\n"
            headers = {}
            while (line := stream.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            assert json.loads(stream.read(int(headers["content-length"])))["code"] == "0"
    assert sim.stats()["time_requests"] == 3


def test_serves_hundreds_of_concurrent_connections(clock):
    accounts = generated_accounts(300, seed=9)
    with (
        Simulator(accounts, clock=clock) as sim,
        http_client(
            base_url=sim.base_url, limits=httpx.Limits(max_connections=300), timeout=10
        ) as client,
    ):
        sim.set_latency(0.2)  # keeps every connection busy at once
        timestamp = okx_timestamp(clock())

        def one(acct: SimAccount) -> str:
            return client.get(LOAN_INFO_PATH, headers=signed_headers(acct, timestamp)).json()[
                "code"
            ]

        with ThreadPoolExecutor(max_workers=300) as pool:
            codes = list(pool.map(one, accounts))
        assert codes == ["0"] * 300
        assert sum(s["ok"] for s in sim.stats()["accounts"].values()) == 300


# -- accounts and exporter config -----------------------------------------------------------------


def test_generated_accounts_are_deterministic_and_valid(clock):
    accounts = generated_accounts(120, seed=3)
    assert [a.name for a in accounts[:2]] == ["acct-0001", "acct-0002"]
    assert accounts == generated_accounts(120, seed=3)
    assert accounts[:10] == generated_accounts(10, seed=3)
    assert accounts != generated_accounts(120, seed=4)
    assert len({a.api_key for a in accounts}) == len({a.secret_key for a in accounts}) == 120
    with Simulator(accounts, clock=clock) as sim, http_client(base_url=sim.base_url) as client:
        for acct in accounts[:20]:
            entry = entry_of(get_loan_info(client, acct, clock, advance=0))
            assert 0.19 <= float(entry["curLTV"]) <= 0.66
    assert generated_accounts(10_000)[-1].name == "acct-10000"


def test_simulator_refuses_unservable_accounts():
    good = account("btc-usdt")
    with pytest.raises(ValueError, match="named 'btc-usdt'"):
        Simulator([good, good])
    with pytest.raises(ValueError, match="no price for 'SOL'"):
        Simulator(
            [SimAccount("a", "k", "s", "p", [SimOrder("1", {"SOL": "1"}, {"USDT": "1"})])],
            prices={"BTC": 60000.0},
        )
    with pytest.raises(ValueError, match="not a plain"):
        Simulator([SimAccount("a", "k", "s", "p", [SimOrder("1", {"BTC": "1e-3"}, {"USDT": "1"})])])
    two_without_ids = [SimOrder("", {"BTC": "1"}, {"USDT": "1"})] * 2
    with pytest.raises(ValueError, match="own non-empty order_id"):
        Simulator([SimAccount("a", "k", "s", "p", two_without_ids)])
    same_ids = [SimOrder("7", {"BTC": "1"}, {"USDT": "1"})] * 2
    with pytest.raises(ValueError, match="own non-empty order_id"):
        Simulator([SimAccount("a", "k", "s", "p", same_ids)])
    flat = SimOrder("7", {"BTC": "1"}, {"USDT": "1"}, "0.8", "0.8", margin_call_cycle=True)
    with pytest.raises(ValueError, match="cycling order"):
        Simulator([SimAccount("a", "k", "s", "p", [flat])])
    with pytest.raises(ValueError, match="price of 'BTC'"):
        Simulator(prices={"BTC": 0.0})


def test_secrets_stay_out_of_reprs_and_stats():
    acct = account("btc-usdt")
    text = repr(acct) + repr(demo_accounts())
    sim = Simulator()
    text += json.dumps(sim.stats()) + repr(sim.accounts)
    for secret in (acct.api_key, acct.secret_key, acct.passphrase):
        assert secret not in text


def test_accounts_view_is_a_copy():
    sim = Simulator(walk_interval=1e9)
    sim.accounts[0].orders[0].collateral["BTC"] = "1000"
    sim.accounts[0].orders.clear()
    sim.prices["BTC"] = 1.0
    assert sim.accounts[0].orders[0].collateral == {"BTC": "0.5"}
    assert sim.prices["BTC"] == 60000.0


def test_exporter_config_yaml_lists_every_account():
    accounts = demo_accounts()
    config = yaml.safe_load(
        exporter_config_yaml("http://127.0.0.1:1234", accounts, cache_ttl="2s", max_stale="1m")
    )
    assert config["base_url"] == "http://127.0.0.1:1234"
    assert (config["cache_ttl"], config["max_stale"], config["timeout"]) == ("2s", "1m", "5s")
    assert config["accounts"] == [
        {
            "name": a.name,
            "api_key": a.api_key,
            "secret_key": a.secret_key,
            "passphrase": a.passphrase,
            "demo": a.demo,
        }
        for a in accounts
    ]
    assert sum(a["demo"] for a in config["accounts"]) == 1


# -- the `simulate` subcommand --------------------------------------------------------------------


def _read_line(stream, timeout: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    ready = selector.select(timeout)
    selector.close()
    assert ready, "no output in time"
    return stream.readline()


def _simulate(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "okx_loan_exporter.simulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def test_simulate_command_writes_config_serves_and_stops_on_sigterm(tmp_path):
    config_path = tmp_path / "exporter.yml"
    process = _simulate(
        "--web.listen-address",
        "127.0.0.1:0",
        "--write-exporter-config",
        str(config_path),
        "--seed",
        "4",
        "--margin-call-cycle",
        "20s",
        "--log.level",
        "warning",
    )
    try:
        line = _read_line(process.stdout, timeout=10)
        match = re.fullmatch(r"OKX simulator listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
        config = yaml.safe_load(config_path.read_text())
        assert config["base_url"] == match.group(1)
        first = config["accounts"][0]
        acct = SimAccount(
            first["name"],
            first["api_key"],
            first["secret_key"],
            first["passphrase"],
            demo=first["demo"],
        )
        timestamp = okx_timestamp(time.time())
        with http_client(base_url=match.group(1)) as client:
            response = client.get(LOAN_INFO_PATH, headers=signed_headers(acct, timestamp))
            assert response.json()["code"] == "0"
            assert client.get("/sim/config").json()["margin_call_cycle"] == 20.0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=2) == 0
    finally:
        process.kill()
        process.wait()
    assert "Traceback" not in process.stderr.read()


def test_simulate_command_refuses_bad_flags_without_a_traceback():
    process = _simulate("--web.listen-address", "nowhere", "--accounts-generate", "3")
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 2
    assert "usage: okx-loan-exporter simulate" in stderr
    assert "HOST:PORT" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--accounts-generate", "0"],
        ["--latency", "-1"],
        ["--bogus"],
        ["--margin-call-cycle", "0s"],
        ["--margin-call-cycle", "soon"],
        ["--log.level", "loud"],
        ["--web.listen-address", "http://127.0.0.1:1"],
    ],
)
def test_main_returns_2_on_bad_flags(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--tls.cert-file", "x.pem"], "--tls.cert-file and --tls.key-file go together"),
        (
            ["--tls.cert-file", "/nonexistent.pem", "--tls.key-file", "/nonexistent.key"],
            "cannot load --tls.cert-file/--tls.key-file: No such file or directory",
        ),
        (["--idle-close", "-1"], "usage:"),
    ],
)
def test_main_refuses_bad_tls_flags(argv, says, capsys):
    assert main(["--web.listen-address", "127.0.0.1:0", *argv]) == 2
    assert says in capsys.readouterr().err


def test_simulate_command_serves_https_and_writes_a_config_that_trusts_it(
    tmp_path, test_certificates
):
    config_path = tmp_path / "exporter.yml"
    process = _simulate(
        "--web.listen-address",
        "127.0.0.1:0",
        "--tls.cert-file",
        test_certificates.cert_file,
        "--tls.key-file",
        test_certificates.key_file,
        "--write-exporter-config",
        str(config_path),
    )
    try:
        line = _read_line(process.stdout, timeout=10)
        match = re.fullmatch(r"OKX simulator listening on (https://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        config = yaml.safe_load(config_path.read_text())
        assert config["base_url"] == match.group(1)
        assert config["tls_ca_file"] == test_certificates.cert_file
        context = ssl.create_default_context(cafile=config["tls_ca_file"])
        with httpx.Client(base_url=match.group(1), verify=context, trust_env=False) as client:
            assert client.get("/sim/stats").json()["tls_handshakes"] == 1
        with pytest.raises(httpx.ConnectError):  # not trusted without the CA
            httpx.get(match.group(1) + "/sim/stats", trust_env=False)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=2) == 0
    finally:
        process.kill()
        process.wait()
