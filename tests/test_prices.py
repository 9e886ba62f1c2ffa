"""Index prices: the strict index-tickers parser, the par rule for stablecoins, and the simulator's
index-tickers endpoint, which answers from the same market its loans are valued from."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from conftest import FakeClock, Harness, account_config, sim_account

from okx_loan_exporter.okx import Endpoint, FailureReason, OkxClient, OkxError
from okx_loan_exporter.position import InvalidResponse
from okx_loan_exporter.prices import IndexPrices, parse_index_tickers
from okx_loan_exporter.simulator import INDEX_TICKERS_PATH, MARKET_FAULTS, Simulator


def ticker(inst: str, px: str, **extra: str) -> dict[str, str]:
    return {"instId": inst, "idxPx": px, "ts": "1700000000000", **extra}


def test_parses_okx_answer_and_ignores_other_fields() -> None:
    body = {
        "code": "0",
        "msg": "",
        "data": [
            ticker("BTC-USDT", "43350", high24h="43649.7", sodUtc0="43444.1"),
            ticker("ETH-USDT", "2290.5"),
            ticker("USDC-USDT", "1.0003"),
            ticker("LUNA-USDT", ""),  # absent price: no entry, never 0
        ],
    }
    prices = parse_index_tickers(body)
    assert prices == IndexPrices("USDT", {"BTC": 43350.0, "ETH": 2290.5, "USDC": 1.0003})
    assert prices.price("BTC") == 43350.0
    assert prices.price("USDT") == 1.0  # the quote itself
    assert prices.price("USDC") == 1.0003  # OKX's index when it has one
    assert prices.price("LUNA") is None
    assert IndexPrices("USDT", {}).price("USDC") == 1.0  # a stablecoin without index: at par
    assert IndexPrices("USDT", {}).price("DOGE") is None


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "not an object"),
        ({"code": "0"}, "no 'data'"),
        ({"data": {}}, "no 'data'"),
        ({"data": ["BTC-USDT"]}, "data[0] is a str"),
        ({"data": [{"idxPx": "1"}]}, "data[0].instId: expected a string"),
        ({"data": [ticker("BTC-USD", "1")]}, "not an index of USDT"),
        ({"data": [ticker("BTCUSDT", "1")]}, "not an index of USDT"),
        ({"data": [ticker("-USDT", "1")]}, "not an index of USDT"),
        ({"data": [ticker("BT C-USDT", "1")]}, "not an index of USDT"),
        ({"data": [{"instId": "BTC-USDT"}]}, "no 'idxPx'"),
        ({"data": [ticker("BTC-USDT", "abc")]}, "not a decimal number"),
        ({"data": [ticker("BTC-USDT", "NaN")]}, "not a decimal number"),
        ({"data": [ticker("BTC-USDT", "1e400")]}, "out of range"),
        ({"data": [ticker("BTC-USDT", "-5")]}, "negative"),
        ({"data": [ticker("BTC-USDT", "0")]}, "not a price"),
        ({"data": [{"instId": "BTC-USDT", "idxPx": 60000}]}, "expected a decimal string"),
        ({"data": [ticker("BTC-USDT", "1"), ticker("BTC-USDT", "2")]}, "appears twice"),
    ],
)
def test_refuses_what_is_not_an_index_tickers_answer(body: object, says: str) -> None:
    with pytest.raises(InvalidResponse) as raised:
        parse_index_tickers(body)
    assert says in str(raised.value)


def test_simulator_serves_every_index_of_a_quote_from_its_market(fake_clock: FakeClock) -> None:
    with Simulator(clock=fake_clock) as sim, httpx.Client(base_url=sim.base_url) as client:
        answer = client.get(INDEX_TICKERS_PATH, params={"quoteCcy": "USDT"})
        assert answer.status_code == 200
        body = answer.json()
        assert body["code"] == "0"
        prices = parse_index_tickers(body)
        market = sim.prices
        assert prices.prices == {ccy: px for ccy, px in market.items() if ccy != "USDT"}
        entry = body["data"][0]
        assert set(entry) == {
            "instId",
            "idxPx",
            "high24h",
            "sodUtc0",
            "open24h",
            "low24h",
            "sodUtc8",
            "ts",
        }
        assert entry["ts"] == str(int(fake_clock() * 1000))
        # One index by instId; in BTC the prices are divided by BTC's.
        one = client.get(INDEX_TICKERS_PATH, params={"instId": "ETH-USDT"}).json()["data"]
        assert [(e["instId"], e["idxPx"]) for e in one] == [("ETH-USDT", "3000")]
        in_btc = client.get(INDEX_TICKERS_PATH, params={"quoteCcy": "BTC"}).json()["data"]
        eth_btc = next(e["idxPx"] for e in in_btc if e["instId"] == "ETH-BTC")
        assert Decimal(eth_btc) == Decimal("0.05")
        fake_clock.advance(600)  # the walk moves, and index-tickers with it
        assert parse_index_tickers(
            client.get(INDEX_TICKERS_PATH, params={"quoteCcy": "USDT"}).json()
        ).prices["BTC"] == pytest.approx(sim.prices["BTC"], rel=1e-11)
        assert sim.prices["BTC"] != market["BTC"]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({}, 400, "50014"),
        ({"quoteCcy": "EUR"}, 400, "51000"),
        ({"instId": "NOPE-USDT"}, 400, "51001"),
        ({"instId": "BTC"}, 400, "51001"),
    ],
)
def test_simulator_refuses_bad_parameters_as_okx_does(
    fake_clock: FakeClock, params: dict[str, str], status: int, code: str
) -> None:
    with Simulator(clock=fake_clock) as sim, httpx.Client(base_url=sim.base_url) as client:
        answer = client.get(INDEX_TICKERS_PATH, params=params)
        assert (answer.status_code, answer.json()["code"]) == (status, code)


def test_simulator_rate_limits_index_tickers_per_ip(fake_clock: FakeClock) -> None:
    with Simulator(clock=fake_clock) as sim, httpx.Client(base_url=sim.base_url) as client:
        codes = [
            client.get(INDEX_TICKERS_PATH, params={"quoteCcy": "USDT"}).json()["code"]
            for _ in range(21)
        ]
        assert codes == ["0"] * 20 + ["50011"]
        fake_clock.advance(2.0)
        assert client.get(INDEX_TICKERS_PATH, params={"quoteCcy": "USDT"}).json()["code"] == "0"
        stats: dict[str, Any] = sim.stats()["index_tickers"]
        assert (stats["requests"], stats["ok"], stats["rate_limited"]) == (22, 21, 1)


def test_simulator_index_faults_count_down_and_are_set_over_http(fake_clock: FakeClock) -> None:
    with Simulator(clock=fake_clock) as sim, httpx.Client(base_url=sim.base_url) as client:
        assert "hang" in MARKET_FAULTS and "missing_field" not in MARKET_FAULTS
        with pytest.raises(ValueError, match="unknown index-tickers fault"):
            sim.set_index_fault("missing_field")
        view = client.post(
            "/sim/config", json={"index_fault": "http_500_html", "index_fault_count": 2}
        )
        assert (view.json()["index_fault"], view.json()["index_fault_count"]) == (
            "http_500_html",
            2,
        )
        statuses = [
            client.get(INDEX_TICKERS_PATH, params={"quoteCcy": "USDT"}).status_code
            for _ in range(3)
        ]
        assert statuses == [500, 500, 200]
        assert client.post("/sim/config", json={"index_fault": "bogus"}).status_code == 400
        assert sim.stats()["index_tickers"]["faulted"] == 2


def test_computed_liquidation_price_agrees_with_okx_liqpx_from_the_simulator(
    start_simulator: Callable[..., Simulator],
    start_exporter: Callable[..., Harness],
    fake_clock: FakeClock,
) -> None:
    """For every one-collateral order, index price x (1 - drop to liquidation) is OKX's liqPx.

    The simulator's liqPx is OKX's definition (the price at which the LTV reaches liqLTV, from
    the order's amounts and haircut), computed independently of the exporter's formula. The
    orders cover USDT, USDC and a volatile debt (ETH-BTC: liqPx in BTC), and one with a haircut
    (its LTV pinned); the market walks between scrapes.
    """
    accounts = [
        sim_account("btc-usdt", collateral={"BTC": "0.5"}, loans={"USDT": "13500"}),
        sim_account("eth-usdc", collateral={"ETH": "4.2"}, loans={"USDC": "7560"}),
        sim_account("eth-btc", collateral={"ETH": "10"}, loans={"BTC": "0.2"}),
        sim_account("sol-usdt-haircut", collateral={"SOL": "100"}, loans={"USDT": "6000"}),
    ]
    sim = start_simulator(accounts, walk_interval=1.0)
    sim.set_ltv("sol-usdt-haircut", 0.62)  # the haircut now differs from 1
    harness = start_exporter([account_config(a, sim.base_url) for a in accounts], cache_ttl=0.5)
    checked = 0
    for _ in range(6):
        scrape = harness.scrape()
        for account in accounts:
            samples = [
                (dict(labels), value)
                for (name, labels), value in scrape.samples.items()
                if name == "okx_loan_liquidation_price" and ("account", account.name) in labels
            ]
            ((labels, liq_px),) = samples
            base, quote = labels["instrument"].split("-")
            price = scrape.value("okx_loan_index_price", currency=base, quote="USDT")
            quote_price = scrape.value("okx_loan_index_price", currency=quote, quote="USDT")
            drop = scrape.value(
                "okx_loan_price_drop_to_liquidation_ratio",
                account=account.name,
                order="1",
                currency=base,
            )
            assert price is not None and quote_price is not None and drop is not None
            computed = price / quote_price * (1 - drop)
            assert computed == pytest.approx(liq_px, rel=0.01), (account.name, computed, liq_px)
            checked += 1
        fake_clock.advance(37.0)  # 37 steps of the walk: every price moves
    assert checked == 24
    assert sim.stats()["index_tickers"]["requests"] == 6  # once per scrape for all accounts


def test_client_asks_index_tickers_without_key_and_counts_the_request() -> None:
    """The key-less client sends no auth header; its request is counted as index_tickers."""
    asyncio.run(_ask_index_tickers_without_key())


async def _ask_index_tickers_without_key() -> None:
    seen: list[httpx.Request] = []
    observed: list[tuple[Endpoint, FailureReason | None]] = []

    def okx(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"code": "0", "msg": "", "data": [ticker("BTC-USDT", "5")]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(okx)) as http:
        client = OkxClient(
            http, "https://okx.test/", None, on_request=lambda e, _d, f: observed.append((e, f))
        )
        assert await client.index_prices() == IndexPrices("USDT", {"BTC": 5.0})
        with pytest.raises(ValueError, match="needs credentials"):
            await client.loan_info()
    (request,) = seen
    assert str(request.url) == "https://okx.test/api/v5/market/index-tickers?quoteCcy=USDT"
    assert not [name for name in request.headers if name.lower().startswith("ok-access")]
    assert observed == [(Endpoint.INDEX_TICKERS, None)]
    with pytest.raises(OkxError) as raised:  # a scrape during shutdown: counted, not a traceback
        await client.index_prices()
    assert raised.value.reason is FailureReason.NETWORK
    assert "shutting down" in str(raised.value)
