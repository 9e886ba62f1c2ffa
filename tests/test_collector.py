"""The collector: every metric of the contract from snapshots, rendered and parsed back."""

import dataclasses
import json
from pathlib import Path

import pytest
from price_scenarios import MIXED, exact
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from okx_loan_exporter.cache import AccountSnapshot
from okx_loan_exporter.collector import LoanCollector
from okx_loan_exporter.okx import Endpoint, FailureReason
from okx_loan_exporter.position import NO_LOAN, Order, Position, parse_loan_info
from okx_loan_exporter.pricefeed import PriceSnapshot
from okx_loan_exporter.prices import IndexPrices
from okx_loan_exporter.stats import RequestStats

DATA = Path(__file__).parent / "data"
DOCS_EXAMPLE = json.loads((DATA / "loan_info_docs_example.json").read_text())
TWO_ORDERS = json.loads((DATA / "loan_info_two_orders.json").read_text())
OLD = {"account": "main", "order": ""}
LOAN_INFO = {"account": "main", "endpoint": "loan_info"}
"""The labels of the docs example's one order: it predates orders, so its order label is empty."""


def one_order(**fields) -> Position:
    return Position((Order("", **fields),))


def snapshot(
    name="main",
    position=None,
    up=True,
    last_success=1700000000.5,
    stats=None,
    clock_offset=0.0,
    failure=None,
):
    return AccountSnapshot(
        name=name,
        position=position,
        up=up,
        last_success=last_success,
        last_failure=failure,
        last_error=None,
        requests=(stats or RequestStats()).snapshot(),
        clock_offset=clock_offset,
    )


def render(*snapshots):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LoanCollector(list(snapshots), "1.2.3"))
    return registry, generate_latest(registry).decode()


def test_docs_example_exposes_exact_values():
    registry, text = render(snapshot(position=parse_loan_info(DOCS_EXAMPLE)))
    value = registry.get_sample_value
    assert value("okx_loan_borrowed_notional_usd", OLD) == 0.8661285
    assert value("okx_loan_collateral_notional_usd", OLD) == 1.5078763
    assert value("okx_loan_ltv_ratio", OLD) == 0.5742
    assert value("okx_loan_margin_call_ltv_ratio", OLD) == 0.7374
    assert value("okx_loan_liquidation_ltv_ratio", OLD) == 0.8374
    assert value("okx_loan_borrowed_amount", {**OLD, "currency": "USDC"}) == 0.86590608
    for currency, amount in {
        "COMP": 9.7e-06,
        "STX": 0.78,
        "DOT": 0.001,
        "LUNA": 0.05357864,
    }.items():
        assert value("okx_loan_collateral_amount", {**OLD, "currency": currency}) == amount
    assert value("okx_loan_orders", {"account": "main"}) == 1
    assert value("okx_loan_active", {"account": "main"}) == 1
    assert value("okx_loan_up", {"account": "main"}) == 1
    assert value("okx_loan_last_success_timestamp_seconds", {"account": "main"}) == 1700000000.5
    assert value("okx_loan_exporter_build_info", {"version": "1.2.3"}) == 1
    assert 'okx_loan_collateral_amount{account="main",currency="COMP",order=""} 9.7e-06' in text
    assert "okx_loan_liquidation_price{" not in text  # OKX sent "" for both


def test_two_orders_expose_both_orders_exactly():
    registry, text = render(snapshot(position=parse_loan_info(TWO_ORDERS)))
    value = registry.get_sample_value
    first = {"account": "main", "order": "1001"}
    second = {"account": "main", "order": "1002"}
    assert value("okx_loan_orders", {"account": "main"}) == 2
    assert value("okx_loan_active", {"account": "main"}) == 1
    assert value("okx_loan_ltv_ratio", first) == 0.5742
    assert value("okx_loan_ltv_ratio", second) == 0.4
    assert value("okx_loan_margin_call_ltv_ratio", first) == 0.7374
    assert value("okx_loan_margin_call_ltv_ratio", second) == 0.75
    assert value("okx_loan_liquidation_ltv_ratio", first) == 0.8374
    assert value("okx_loan_liquidation_ltv_ratio", second) == 0.85
    assert value("okx_loan_borrowed_notional_usd", first) == 0.8661285
    assert value("okx_loan_borrowed_notional_usd", second) == 12000.2
    assert value("okx_loan_collateral_notional_usd", first) == 1.5078763
    assert value("okx_loan_collateral_notional_usd", second) == 30000.5
    assert value("okx_loan_borrowed_amount", {**first, "currency": "USDC"}) == 0.86590608
    assert value("okx_loan_borrowed_amount", {**second, "currency": "USDT"}) == 12000.2
    assert value("okx_loan_collateral_amount", {**first, "currency": "COMP"}) == 9.7e-06
    assert value("okx_loan_collateral_amount", {**second, "currency": "BTC"}) == 0.5
    assert value("okx_loan_collateral_amount", {**first, "currency": "BTC"}) is None
    assert (
        value("okx_loan_liquidation_price", {**second, "instrument": "BTC-USDT"}) == 28235.76470588
    )
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(families["okx_loan_liquidation_price"].samples) == 1
    assert {s.labels["order"] for s in families["okx_loan_ltv_ratio"].samples} == {"1001", "1002"}


def test_liquidation_price_with_instrument_label():
    position = one_order(
        current_ltv=0.5,
        loans={"USDT": 1.0},
        collateral={"BTC": 1.0},
        liquidation_instrument="BTC-USDT",
        liquidation_price=48123.5,
    )
    registry, _ = render(snapshot(position=position))
    assert (
        registry.get_sample_value("okx_loan_liquidation_price", {**OLD, "instrument": "BTC-USDT"})
        == 48123.5
    )


def test_no_loan_exposes_zero_orders_and_no_order_series():
    registry, text = render(snapshot(position=NO_LOAN))
    assert registry.get_sample_value("okx_loan_active", {"account": "main"}) == 0
    assert registry.get_sample_value("okx_loan_orders", {"account": "main"}) == 0
    for absent in (
        "okx_loan_borrowed_notional_usd{",
        "okx_loan_collateral_notional_usd{",
        "okx_loan_ltv_ratio{",
        "okx_loan_margin_call_ltv_ratio{",
        "okx_loan_borrowed_amount{",
        "okx_loan_collateral_amount{",
    ):
        assert absent not in text


def test_empty_string_fields_are_absent_not_zero():
    position = one_order(
        loan_notional_usd=None,
        collateral_notional_usd=2.0,
        current_ltv=None,
        margin_call_ltv=0.7,
        liquidation_ltv=None,
    )
    registry, text = render(snapshot(position=position))
    assert "okx_loan_ltv_ratio{" not in text
    assert "okx_loan_borrowed_notional_usd{" not in text
    assert "okx_loan_liquidation_ltv_ratio{" not in text
    assert registry.get_sample_value("okx_loan_margin_call_ltv_ratio", OLD) == 0.7


def test_vanished_currency_disappears():
    before = one_order(loans={"USDT": 1.0, "USDC": 2.0}, collateral={"BTC": 1.0})
    after = one_order(loans={"USDT": 1.0}, collateral={"BTC": 1.0})
    _, first = render(snapshot(position=before))
    _, second = render(snapshot(position=after))
    assert 'currency="USDC"' in first
    assert 'currency="USDC"' not in second


def test_vanished_order_disappears_with_its_currencies():
    both = parse_loan_info(TWO_ORDERS)
    only_first = Position(both.orders[:1])
    registry, text = render(snapshot(position=only_first))
    assert 'order="1002"' not in text
    assert 'currency="BTC"' not in text and "okx_loan_liquidation_price{" not in text
    assert registry.get_sample_value("okx_loan_orders", {"account": "main"}) == 1
    assert registry.get_sample_value("okx_loan_ltv_ratio", {"account": "main", "order": "1001"})


def test_down_account_without_position_keeps_health_series_only():
    stats = RequestStats()
    stats.observe(Endpoint.LOAN_INFO, 0.2, FailureReason.AUTH)
    stats.observe(Endpoint.LOAN_INFO, 0.04, None)
    registry, text = render(
        snapshot(
            position=None, up=False, last_success=None, stats=stats, failure=FailureReason.AUTH
        )
    )
    value = registry.get_sample_value
    assert value("okx_loan_up", {"account": "main"}) == 0
    assert "okx_loan_last_success_timestamp_seconds{" not in text
    assert "okx_loan_active{" not in text and "okx_loan_ltv_ratio{" not in text
    assert value("okx_loan_api_requests_total", LOAN_INFO) == 2
    assert value("okx_loan_api_request_failures_total", {**LOAN_INFO, "reason": "auth"}) == 1
    loan_info = {"endpoint": "loan_info"}  # the histogram is per endpoint, of no account
    assert value("okx_loan_api_request_duration_seconds_count", loan_info) == 2
    assert value("okx_loan_api_request_duration_seconds_bucket", {**loan_info, "le": "0.05"}) == 1
    assert value("okx_loan_api_request_duration_seconds_bucket", {**loan_info, "le": "+Inf"}) == 2
    assert abs(value("okx_loan_api_request_duration_seconds_sum", loan_info) - 0.24) < 1e-9


def test_request_durations_are_summed_over_the_accounts_per_endpoint():
    first, second = RequestStats(), RequestStats()
    for duration in (0.01, 0.03, 0.7):
        first.observe(Endpoint.LOAN_INFO, duration, None)
    second.observe(Endpoint.LOAN_INFO, 0.2, FailureReason.TIMEOUT)
    second.observe(Endpoint.LOAN_INFO, 12.0, None)
    second.observe(Endpoint.MAX_LOAN, 0.06, None)  # an endpoint only one account called
    _, text = render(snapshot(stats=first), snapshot(name="other", stats=second))
    (histogram,) = (
        family
        for family in text_string_to_metric_families(text)
        if family.name == "okx_loan_api_request_duration_seconds"
    )
    samples = {
        (s.name.rpartition("_")[2], s.labels["endpoint"], s.labels.get("le")): s.value
        for s in histogram.samples
    }
    assert {frozenset(s.labels) - {"le"} for s in histogram.samples} == {frozenset({"endpoint"})}
    bounds = ["0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf"]
    loan_info = [1, 2, 2, 3, 3, 4, 4, 4, 4, 5]  # cumulative, both accounts' requests
    assert [samples["bucket", "loan_info", le] for le in bounds] == loan_info
    assert samples["count", "loan_info", None] == 5
    assert samples["sum", "loan_info", None] == pytest.approx(0.01 + 0.03 + 0.7 + 0.2 + 12.0)
    assert [samples["bucket", "max_loan", le] for le in bounds] == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    assert samples["count", "max_loan", None] == 1
    assert samples["sum", "max_loan", None] == 0.06
    assert {endpoint for _, endpoint, _ in samples} == {"loan_info", "max_loan"}  # no public_time


def test_every_failure_reason_exported_from_the_start():
    registry, text = render(snapshot(position=None, up=False, last_success=None))
    for reason in (
        "rate_limited",
        "auth",
        "api_error",
        "http_error",
        "timeout",
        "network",
        "invalid_response",
    ):
        assert (
            registry.get_sample_value(
                "okx_loan_api_request_failures_total", {**LOAN_INFO, "reason": reason}
            )
            == 0
        )
    # the clock check is counted from the start too; durations appear with a first request
    assert (
        registry.get_sample_value(
            "okx_loan_api_requests_total", {"account": "main", "endpoint": "public_time"}
        )
        == 0
    )
    assert "okx_loan_api_request_duration_seconds_count{" not in text


def test_clock_offset_exported():
    registry, _ = render(snapshot(position=NO_LOAN, clock_offset=-120.25))
    assert (
        registry.get_sample_value("okx_loan_clock_offset_seconds", {"account": "main"}) == -120.25
    )


def test_types_help_and_parse_back():
    _, text = render(
        snapshot(position=parse_loan_info(DOCS_EXAMPLE)), snapshot(name="second", position=NO_LOAN)
    )
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["okx_loan_api_requests"].type == "counter"
    assert families["okx_loan_api_request_failures"].type == "counter"
    assert families["okx_loan_api_request_duration_seconds"].type == "histogram"
    assert families["okx_loan_ltv_ratio"].type == "gauge"
    assert "curLTV" in families["okx_loan_ltv_ratio"].documentation
    assert "Cached" in families["okx_loan_ltv_ratio"].documentation
    assert "collateralData" in families["okx_loan_collateral_amount"].documentation
    accounts = {s.labels["account"] for s in families["okx_loan_up"].samples}
    assert accounts == {"main", "second"}


def test_label_values_are_escaped():
    position = one_order(loans={'US"D\\T\n': 1.0}, collateral={"ビット": 2.0})
    _, text = render(snapshot(position=position))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    currencies = {s.labels["currency"] for s in families["okx_loan_borrowed_amount"].samples}
    assert currencies == {'US"D\\T\n'}


def priced(snap: AccountSnapshot, prices: dict[str, float], base_url="https://www.okx.com"):
    """``snap`` with index prices in USDT from the feed of ``base_url``."""
    feed = PriceSnapshot(
        base_url, IndexPrices("USDT", prices), 1700000000.0, None, RequestStats().snapshot()
    )
    return dataclasses.replace(snap, prices=feed)


def test_index_prices_and_what_if_families_per_order_and_currency():
    market = {"BTC": 60000.0, "ETH": 3000.0, "SOL": 150.0, "DOGE": 0.15}
    registry, text = render(
        priced(snapshot(position=Position((MIXED,))), market),
        priced(snapshot(name="other", position=Position((MIXED,))), {**market, "BTC": 1.0}),
    )
    value = registry.get_sample_value
    # Prices of the orders' currencies only, once each (the first account's feed), USDT at 1 as
    # the quote, USDC at par without an index of its own; DOGE is in no order.
    assert {
        s.labels["currency"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "okx_loan_index_price"
        for s in f.samples
    } == {"BTC": 60000.0, "ETH": 3000.0, "USDC": 1.0, "SOL": 150.0, "USDT": 1.0}
    assert value("okx_loan_index_price", {"currency": "BTC", "quote": "USDT"}) == 60000.0
    order = {"account": "main", "order": "7"}
    btc = {**order, "currency": "BTC"}
    assert value("okx_loan_price_drop_to_liquidation_ratio", btc) == exact(0.3 / 0.48)
    assert value("okx_loan_price_drop_to_liquidation_ratio", {**order, "currency": "ETH"}) == 1.0
    assert value("okx_loan_price_drop_to_margin_call_ratio", {**order, "currency": "USDC"}) == 1.0
    sol = {**order, "currency": "SOL"}
    assert value("okx_loan_price_rise_to_liquidation_ratio", sol) == exact(0.3 / 0.375)
    assert value("okx_loan_price_rise_to_margin_call_ratio", {**order, "currency": "USDT"}) is None
    assert value(
        "okx_loan_ltv_after_price_drop_ratio", {**order, "currency": "BTC", "drop": "0.2"}
    ) == exact(0.5 / 0.88)
    assert value(
        "okx_loan_ltv_after_price_drop_ratio", {**order, "currency": "all", "drop": "0.3"}
    ) == exact(0.5 * 0.775 / 0.73)
    # The other account is valued from its own base URL's prices.
    other = {"account": "other", "order": "7", "currency": "BTC"}
    assert value("okx_loan_price_drop_to_liquidation_ratio", other) == 1.0


def test_no_what_if_without_prices_or_without_a_price_of_every_currency():
    without_feed = snapshot(position=Position((MIXED,)))
    missing_sol = priced(snapshot(name="b", position=Position((MIXED,))), {"BTC": 1.0, "ETH": 1.0})
    _, text = render(without_feed, missing_sol)
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert "okx_loan_price_drop_to_liquidation_ratio" not in names
    assert "okx_loan_ltv_after_price_drop_ratio" not in names
    assert "okx_loan_index_price" in names  # the prices it has are still shown
