"""Builds the ``okx_loan_`` families of the secondary endpoints: events, interest and headroom.

Like :mod:`okx_loan_exporter.collector`, a pure function of the scrape's snapshots.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from okx_loan_exporter.cache import AccountSnapshot


def debt_currencies(snapshot: AccountSnapshot) -> frozenset[str]:
    """The currencies the account's orders borrow (each shows 0 accrued until its first
    interest record)."""
    position = snapshot.position
    return frozenset(c for o in position.orders for c in o.loans) if position else frozenset()


def activity_families(snapshots: Sequence[AccountSnapshot]) -> Iterator[Metric]:
    """The events, interest and headroom families of every account that has them."""
    events = CounterMetricFamily(
        "okx_loan_events",
        "loan-history records first seen since the exporter started, by OKX type (every type "
        "OKX documents at 0 from the start; the first read after a start counts nothing).",
        labels=["account", "type"],
    )
    last_event = GaugeMetricFamily(
        "okx_loan_last_event_timestamp_seconds",
        "Time (OKX ts) of the newest loan-history record of that type the exporter has read.",
        labels=["account", "type"],
    )
    rate = GaugeMetricFamily(
        "okx_loan_interest_rate",
        "APY of the newest interest accrual of the debt currency, 0.0841 = 8.41 %/year "
        "(OKX interest-accrued interestRate).",
        labels=["account", "currency"],
    )
    accrued = CounterMetricFamily(
        "okx_loan_interest_accrued",
        "Interest accrued in the currency, summed over the accruals first seen since the "
        "exporter started (OKX interest-accrued interest).",
        labels=["account", "currency"],
    )
    last_interest = GaugeMetricFamily(
        "okx_loan_last_interest_timestamp_seconds",
        "Time (OKX ts) of the newest interest accrual of the debt currency.",
        labels=["account", "currency"],
    )
    max_borrow = GaugeMetricFamily(
        "okx_loan_max_borrow_amount",
        "How much more of the currency the order can borrow now (OKX max-loan maxLoan).",
        labels=["account", "order", "currency"],
    )
    max_borrow_usd = GaugeMetricFamily(
        "okx_loan_max_borrow_notional_usd",
        "The same headroom in USD (OKX max-loan notionalUsd).",
        labels=["account", "order", "currency"],
    )
    max_redeem = GaugeMetricFamily(
        "okx_loan_max_redeem_amount",
        "How much of that collateral can be withdrawn from the order now (OKX "
        "max-collateral-redeem-amount maxRedeemAmt).",
        labels=["account", "order", "currency"],
    )
    for snapshot in snapshots:
        activity = snapshot.activity
        if activity is None:
            continue
        account = snapshot.name
        if activity.events is not None:
            for kind, count in activity.events.counts.items():
                events.add_metric([account, kind], count)
            for kind, seen in activity.events.last_seen.items():
                last_event.add_metric([account, kind], seen)
        if activity.interest is not None:
            for currency, state in activity.interest.items():
                if state.rate is not None:
                    rate.add_metric([account, currency], state.rate)
                accrued.add_metric([account, currency], state.accrued)
                last_interest.add_metric([account, currency], state.last_timestamp)
            for currency in sorted(debt_currencies(snapshot) - set(activity.interest)):
                accrued.add_metric([account, currency], 0.0)  # nothing accrued since start yet
        for (order, currency), headroom in activity.borrow.items():
            if headroom.amount is not None:
                max_borrow.add_metric([account, order, currency], headroom.amount)
            if headroom.notional_usd is not None:
                max_borrow_usd.add_metric([account, order, currency], headroom.notional_usd)
        for (order, currency), amount in activity.redeem.items():
            max_redeem.add_metric([account, order, currency], amount)
    yield from (
        events,
        last_event,
        rate,
        accrued,
        last_interest,
        max_borrow,
        max_borrow_usd,
        max_redeem,
    )
