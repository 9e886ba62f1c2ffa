"""Builds fresh ``okx_loan_`` metric families from one scrape's account snapshots.

The collector is a pure function of the snapshots it is given: it asks nobody and knows nothing of
HTTP. Families are rebuilt from every scrape's snapshots, so an order or currency OKX stops
reporting disappears at once and positions older than ``max_stale`` (which the cache already
withholds) are not exported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from okx_loan_exporter.activity_metrics import activity_families, debt_currencies
from okx_loan_exporter.cache import AccountSnapshot
from okx_loan_exporter.okx import Endpoint
from okx_loan_exporter.position import Order
from okx_loan_exporter.prices import STABLECOINS
from okx_loan_exporter.stats import DURATION_BUCKETS, EndpointStats, RequestStatsSnapshot
from okx_loan_exporter.whatif import DROPS, order_risk

CACHED = "Cached: refreshed from OKX at most once per cache_ttl."
PRICED = (
    "Computed from the order's loan-info and OKX index prices (market/index-tickers, refreshed "
    "at most once per price_interval), OKX's haircut as collateralNotionalUsd / (amounts x prices)."
)
_BUCKET_BOUNDS = (*(repr(bound) for bound in DURATION_BUCKETS), "+Inf")


class LoanCollector(Collector):
    """Yields every ``okx_loan_`` family for the given snapshots."""

    def __init__(self, snapshots: Sequence[AccountSnapshot], version: str) -> None:
        self._snapshots = snapshots
        self._version = version

    def describe(self) -> Iterable[Metric]:
        return []  # registering must never need OKX or a scrape

    def collect(self) -> Iterator[Metric]:
        before, after = account_families(self._snapshots)
        index_prices, tail = shared_families(self._snapshots, self._version)
        yield from (*before, *index_prices, *after, *tail)


def account_families(snapshots: Sequence[AccountSnapshot]) -> tuple[list[Metric], list[Metric]]:
    """The per-account families, before and after the shared index prices in the body.

    Always the same families in the same order, whatever the snapshots; each family lists the
    series of one account after another, in the snapshots' order (what per-account rendering
    relies on). They are :data:`ACCOUNT_PARTS`' families, in that order.
    """
    before = [
        family
        for part in ACCOUNT_PARTS[:PARTS_BEFORE_INDEX_PRICES]
        for family in part.families(snapshots)
    ]
    after = [
        family
        for part in ACCOUNT_PARTS[PARTS_BEFORE_INDEX_PRICES:]
        for family in part.families(snapshots)
    ]
    return before, after


def shared_families(
    snapshots: Sequence[AccountSnapshot], version: str
) -> tuple[list[Metric], list[Metric]]:
    """The families of no single account: the index prices, then the request durations summed
    over the accounts, the public requests and build."""
    build = GaugeMetricFamily(
        "okx_loan_exporter_build_info", "The exporter's version; always 1.", labels=["version"]
    )
    build.add_metric([version], 1)
    tail = [_request_duration_family(snapshots), *_price_feed_families(snapshots), build]
    return [_index_price_family(snapshots)], tail


def _position_families(snapshots: Sequence[AccountSnapshot]) -> Iterator[Metric]:
    def gauge(name: str, text: str, *labels: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, f"{text} {CACHED}", labels=["account", *labels])

    borrowed_usd = gauge(
        "okx_loan_borrowed_notional_usd",
        "Value of the order's borrowed currencies in USD (OKX loanNotionalUsd).",
        "order",
    )
    collateral_usd = gauge(
        "okx_loan_collateral_notional_usd",
        "Value of the order's collateral in USD after OKX's haircuts (OKX collateralNotionalUsd).",
        "order",
    )
    borrowed = gauge(
        "okx_loan_borrowed_amount",
        "Amount borrowed per order and currency (OKX loanData[].amt by ccy).",
        "order",
        "currency",
    )
    collateral = gauge(
        "okx_loan_collateral_amount",
        "Amount pledged as collateral per order and currency (OKX collateralData[].amt by ccy).",
        "order",
        "currency",
    )
    ltv = gauge(
        "okx_loan_ltv_ratio",
        "The order's current loan-to-value ratio, 0.5742 = 57.42 % (OKX curLTV).",
        "order",
    )
    margin_call = gauge(
        "okx_loan_margin_call_ltv_ratio",
        "LTV at which OKX issues a margin call for the order (OKX marginCallLTV).",
        "order",
    )
    liquidation = gauge(
        "okx_loan_liquidation_ltv_ratio",
        "LTV at which OKX liquidates the order's collateral (OKX liqLTV).",
        "order",
    )
    liquidation_price = gauge(
        "okx_loan_liquidation_price",
        "Collateral price, in the instrument's quote currency, at which the order is "
        "liquidated (OKX riskWarningData.liqPx; only with one collateral and one borrowed "
        "currency).",
        "order",
        "instrument",
    )
    orders = gauge(
        "okx_loan_orders",
        "Number of loan orders OKX reports for the account (OKX loan-info data entries).",
    )
    active = gauge(
        "okx_loan_active",
        "1 when OKX reports at least one flexible loan order for the account, 0 when none "
        "(OKX loan-info data).",
    )

    for snapshot in snapshots:
        position = snapshot.position
        if position is None:
            continue
        account = snapshot.name
        orders.add_metric([account], len(position.orders))
        active.add_metric([account], 1 if position.active else 0)
        for order in position.orders:
            labels = [account, order.order_id]
            _add_present(borrowed_usd, labels, order.loan_notional_usd)
            _add_present(collateral_usd, labels, order.collateral_notional_usd)
            _add_present(ltv, labels, order.current_ltv)
            _add_present(margin_call, labels, order.margin_call_ltv)
            _add_present(liquidation, labels, order.liquidation_ltv)
            for currency, amount in order.loans.items():
                borrowed.add_metric([*labels, currency], amount)
            for currency, amount in order.collateral.items():
                collateral.add_metric([*labels, currency], amount)
            if order.liquidation_instrument and order.liquidation_price is not None:
                liquidation_price.add_metric(
                    [*labels, order.liquidation_instrument], order.liquidation_price
                )
    yield from (
        borrowed_usd,
        collateral_usd,
        borrowed,
        collateral,
        ltv,
        margin_call,
        liquidation,
        liquidation_price,
        orders,
        active,
    )


def _index_price_family(snapshots: Sequence[AccountSnapshot]) -> Metric:
    """Index prices of the orders' currencies, each once, in the order orders first name them."""
    index_price = GaugeMetricFamily(
        "okx_loan_index_price",
        "OKX index price of a currency of some loan order, in the quote currency (OKX "
        "market/index-tickers idxPx; the quote itself is 1, a stablecoin without index is at par). "
        "Refreshed at most once per price_interval.",
        labels=["currency", "quote"],
    )
    priced: set[str] = set()
    for _, _, quote, found in _priced_orders(snapshots):
        for currency, price in found.items():
            if currency not in priced:
                priced.add(currency)
                index_price.add_metric([currency, quote], price)
    return index_price


def _priced_orders(
    snapshots: Sequence[AccountSnapshot],
) -> Iterator[tuple[AccountSnapshot, Order, str, dict[str, float]]]:
    """Every order with index prices: its account, the quote and its currencies' prices."""
    for snapshot in snapshots:
        position, feed = snapshot.position, snapshot.prices
        if position is None or feed is None or feed.prices is None:
            continue
        prices = feed.prices
        for order in position.orders:
            yield snapshot, order, prices.quote, prices.of((*order.collateral, *order.loans))


def _whatif_families(snapshots: Sequence[AccountSnapshot]) -> Iterator[Metric]:
    """The what-if figures of every order."""

    def whatif(name: str, text: str, *labels: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            name, f"{text} {PRICED}", labels=["account", "order", "currency", *labels]
        )

    drop_liquidation = whatif(
        "okx_loan_price_drop_to_liquidation_ratio",
        "Fraction by which this collateral currency's price alone can fall before the order's "
        "LTV reaches liqLTV (0: already there; 1: it alone can never get there).",
    )
    drop_margin_call = whatif(
        "okx_loan_price_drop_to_margin_call_ratio",
        "Fraction by which this collateral currency's price alone can fall before the order's "
        "LTV reaches marginCallLTV (0: already there; 1: it alone can never get there).",
    )
    ltv_after = whatif(
        "okx_loan_ltv_after_price_drop_ratio",
        "The order's LTV if this collateral currency's price fell by the fraction drop "
        '(currency="all": every currency but stablecoins, collateral and debt, falls together).',
        "drop",
    )
    rise_liquidation = whatif(
        "okx_loan_price_rise_to_liquidation_ratio",
        "Fraction by which this volatile debt currency's price alone can rise before the order's "
        "LTV reaches liqLTV (0: already there; +Inf: no rise gets there).",
    )
    rise_margin_call = whatif(
        "okx_loan_price_rise_to_margin_call_ratio",
        "Fraction by which this volatile debt currency's price alone can rise before the order's "
        "LTV reaches marginCallLTV (0: already there; +Inf: no rise gets there).",
    )
    drop_labels = {drop: repr(drop) for drop in DROPS}
    for snapshot, order, _, found in _priced_orders(snapshots):
        risk = order_risk(order, found, STABLECOINS)
        if risk is None:
            continue
        labels = [snapshot.name, order.order_id]
        for currency, value in risk.drop_to_liquidation.items():
            drop_liquidation.add_metric([*labels, currency], value)
        for currency, value in risk.drop_to_margin_call.items():
            drop_margin_call.add_metric([*labels, currency], value)
        for (currency, drop), value in risk.ltv_after_drop.items():
            ltv_after.add_metric([*labels, currency, drop_labels[drop]], value)
        for currency, value in risk.rise_to_liquidation.items():
            rise_liquidation.add_metric([*labels, currency], value)
        for currency, value in risk.rise_to_margin_call.items():
            rise_margin_call.add_metric([*labels, currency], value)
    yield from (
        drop_liquidation,
        drop_margin_call,
        ltv_after,
        rise_liquidation,
        rise_margin_call,
    )


def _health_families(snapshots: Sequence[AccountSnapshot]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "okx_loan_up",
        "1 when the latest loan-info request for the account "
        "succeeded, 0 when it failed or did not finish before the scrape "
        "deadline.",
        labels=["account"],
    )
    last_success = GaugeMetricFamily(
        "okx_loan_last_success_timestamp_seconds",
        "Unix time of the latest good loan-info answer from OKX.",
        labels=["account"],
    )
    requests = CounterMetricFamily(
        "okx_loan_api_requests",
        "Requests sent to OKX, by endpoint (public_time: OKX's clock, after a clock-skew error).",
        labels=["account", "endpoint"],
    )
    failures = CounterMetricFamily(
        "okx_loan_api_request_failures",
        "Requests to OKX that failed, by endpoint and reason (loan_info: every reason from the "
        "start; other endpoints: a reason once it happened).",
        labels=["account", "endpoint", "reason"],
    )
    connections = CounterMetricFamily(
        "okx_loan_api_connections_opened",
        "Connections opened to OKX for the account's requests, each a TCP connect and, over "
        "HTTPS, a TLS handshake; idle ones are kept open and reused.",
        labels=["account"],
    )
    retries = CounterMetricFamily(
        "okx_loan_api_connection_retries",
        "Requests sent again on a fresh connection because OKX had closed the pooled one they "
        "were sent on (only requests that are safe to repeat).",
        labels=["account"],
    )
    offset = GaugeMetricFamily(
        "okx_loan_clock_offset_seconds",
        "OKX's clock minus the local "
        "clock, measured from OKX public/time after a timestamp error "
        "(0 until measured).",
        labels=["account"],
    )

    for snapshot in snapshots:
        account = [snapshot.name]
        up.add_metric(account, 1 if snapshot.up else 0)
        if snapshot.last_success is not None:
            last_success.add_metric(account, snapshot.last_success)
        _add_counts((requests, failures), account, snapshot.requests)
        connections.add_metric(account, snapshot.connections.opened)
        retries.add_metric(account, snapshot.connections.retries)
        offset.add_metric(account, snapshot.clock_offset)
    yield from (up, last_success, requests, failures, connections, retries, offset)


def _request_duration_family(snapshots: Sequence[AccountSnapshot]) -> Metric:
    """One histogram per endpoint, summed over the accounts: OKX's latency is no account's.

    An endpoint shows once some account sent it a request. Runs on every scrape after a request,
    so the buckets are summed as tuples, with no object per account.
    """
    duration = HistogramMetricFamily(
        "okx_loan_api_request_duration_seconds",
        "Round-trip time of requests to OKX, by endpoint, over all the exporter's accounts "
        "(from the endpoint's first request).",
        labels=["endpoint"],
    )
    called: dict[Endpoint, list[EndpointStats]] = {}
    for snapshot in snapshots:
        for endpoint, tally in snapshot.requests.endpoints.items():
            if tally.requests:
                called.setdefault(endpoint, []).append(tally)
    for endpoint in Endpoint:
        tallies = called.get(endpoint)
        if tallies:
            buckets = map(sum, zip(*(tally.bucket_counts for tally in tallies), strict=True))
            total = sum(tally.duration_sum for tally in tallies)
            duration.add_metric([endpoint.value], _cumulative(buckets), total)
    return duration


def _price_feed_families(snapshots: Sequence[AccountSnapshot]) -> Iterator[Metric]:
    """Requests to OKX's public index-tickers, per base URL: they belong to no account."""
    feeds = {
        snapshot.prices.base_url: snapshot.prices
        for snapshot in snapshots
        if snapshot.prices is not None
    }
    if not feeds:
        return
    requests = CounterMetricFamily(
        "okx_loan_public_api_requests",
        "Requests sent to OKX's public (key-less) endpoints, per base URL (index_tickers: the "
        "index prices, at most once per price_interval).",
        labels=["base_url", "endpoint"],
    )
    failures = CounterMetricFamily(
        "okx_loan_public_api_request_failures",
        "Requests to OKX's public endpoints that failed, by reason; they never change okx_loan_up.",
        labels=["base_url", "endpoint", "reason"],
    )
    duration = HistogramMetricFamily(
        "okx_loan_public_api_request_duration_seconds",
        "Round-trip time of requests to OKX's public endpoints.",
        labels=["base_url", "endpoint"],
    )
    last_success = GaugeMetricFamily(
        "okx_loan_index_prices_last_success_timestamp_seconds",
        "Unix time of the latest good index-tickers answer from OKX for the base URL.",
        labels=["base_url"],
    )
    for label, feed in feeds.items():
        _add_counts((requests, failures), [label], feed.requests)
        for endpoint, tally in feed.requests.endpoints.items():
            if tally.requests:
                labels = [label, endpoint.value]
                duration.add_metric(labels, _cumulative(tally.bucket_counts), tally.duration_sum)
        if feed.last_success is not None:
            last_success.add_metric([label], feed.last_success)
    yield from (requests, failures, duration, last_success)


def _add_counts(
    families: tuple[CounterMetricFamily, CounterMetricFamily],
    owner: list[str],
    stats: RequestStatsSnapshot,
) -> None:
    """The request and failure counters of each endpoint of ``stats``, labelled ``owner`` +
    endpoint."""
    requests, failures = families
    for endpoint, tally in stats.endpoints.items():
        labels = [*owner, endpoint.value]
        requests.add_metric(labels, tally.requests)
        for reason, count in tally.failures.items():
            failures.add_metric([*labels, reason.value], count)


def _cumulative(bucket_counts: Iterable[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as a histogram's (``le``, cumulative count) pairs."""
    return list(zip(_BUCKET_BOUNDS, accumulate(bucket_counts), strict=True))


def _add_present(family: GaugeMetricFamily, labels: list[str], value: float | None) -> None:
    if value is not None:
        family.add_metric(labels, value)


@dataclass(frozen=True)
class AccountPart:
    """Some of the per-account families, and what one account's lines of them depend on."""

    families: Callable[[Sequence[AccountSnapshot]], Iterable[Metric]]
    unchanged: Callable[[AccountSnapshot, AccountSnapshot], bool]
    """True when an account's new snapshot renders the same lines of these families as its old
    one: it looks at every field the families read. Positions, index prices and the secondary
    endpoints' values are compared by identity (their caches hand out the same objects until the
    next answer, and two equal ones could list their currencies in another order); the other
    fields by value (none of them can be -0.0 or NaN, where equality and text part ways)."""


def _index_prices(snapshot: AccountSnapshot) -> object:
    return None if snapshot.prices is None else snapshot.prices.prices


def _same_position(old: AccountSnapshot, new: AccountSnapshot) -> bool:
    return old.position is new.position


def _same_priced_position(old: AccountSnapshot, new: AccountSnapshot) -> bool:
    return old.position is new.position and _index_prices(old) is _index_prices(new)


def _same_activity(old: AccountSnapshot, new: AccountSnapshot) -> bool:
    """The values, and the debt currencies (each without interest yet shows 0 accrued)."""
    return old.activity is new.activity and (
        new.activity is None or debt_currencies(old) == debt_currencies(new)
    )


def _same_health(old: AccountSnapshot, new: AccountSnapshot) -> bool:
    return (old.up, old.last_success, old.requests, old.connections, old.clock_offset) == (
        new.up,
        new.last_success,
        new.requests,
        new.connections,
        new.clock_offset,
    )


ACCOUNT_PARTS: tuple[AccountPart, ...] = (
    AccountPart(_position_families, _same_position),
    AccountPart(_whatif_families, _same_priced_position),
    AccountPart(activity_families, _same_activity),
    AccountPart(_health_families, _same_health),
)
"""The per-account families in body order, in parts that change for different reasons: a
secondary endpoint's answer changes only the activity and health lines of its account."""
PARTS_BEFORE_INDEX_PRICES = 1
"""How many of :data:`ACCOUNT_PARTS` come before the shared index-price family."""
