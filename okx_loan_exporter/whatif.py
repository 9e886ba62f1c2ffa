"""What-if risk of one loan order: how far each currency's price may move before an LTV threshold.

A pure function of an :class:`~okx_loan_exporter.position.Order` and index prices. OKX's haircut is
carried as the order's ratio ``h = collateralNotionalUsd / sum amount * price`` and its debt as
``loanNotionalUsd``, so the LTV at other prices ``P'`` is::

    LTV(P') = loanNotionalUsd * (sum debt * P') / (sum debt * P)  /  (h * sum collateral * P')

A price move of one currency ``k`` by the fraction ``x`` (-x for a drop) scales the collateral by
``1 + w_k x`` and the debt by ``1 + v_k x``, where ``w_k`` and ``v_k`` are ``k``'s shares of the
collateral's and the debt's value at the index prices; solving ``LTV = threshold`` for ``x`` gives
the closed forms below (the README writes them out).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from okx_loan_exporter.position import Order

DROPS: tuple[float, ...] = (0.1, 0.2, 0.3)
"""The price drops whose resulting LTV is computed."""
ALL = "all"
"""The ``currency`` of the scenario in which every currency but the stablecoins falls together."""


@dataclass(frozen=True)
class OrderRisk:
    """One order's what-if figures; every ratio is a fraction (0.25 is 25 %)."""

    drop_to_liquidation: Mapping[str, float]
    """Per collateral currency: how far its price alone may fall before ``LTV = liqLTV`` (0 when
    already there; 1 when no fall of that currency alone gets there)."""
    drop_to_margin_call: Mapping[str, float]
    """The same for ``marginCallLTV``."""
    ltv_after_drop: Mapping[tuple[str, float], float]
    """LTV after a drop in :data:`DROPS` of one collateral currency, or of :data:`ALL`."""
    rise_to_liquidation: Mapping[str, float]
    """Per volatile debt currency: how far its price alone may rise before ``LTV = liqLTV`` (0
    when already there; +Inf when no rise gets there)."""
    rise_to_margin_call: Mapping[str, float]
    """The same for ``marginCallLTV``."""


def order_risk(
    order: Order, prices: Mapping[str, float], stablecoins: Collection[str]
) -> OrderRisk | None:
    """The what-if figures of ``order`` at ``prices`` (every currency in one quote currency).

    None when they cannot be computed: no notional from OKX, no collateral value, or a currency of
    the order without a positive price.
    """
    loan_usd, collateral_usd = order.loan_notional_usd, order.collateral_notional_usd
    if loan_usd is None or collateral_usd is None or collateral_usd <= 0:
        return None
    currencies = {*order.collateral, *order.loans}
    if not all(prices.get(ccy, 0.0) > 0 for ccy in currencies):
        return None
    collateral_shares = _shares(order.collateral, prices)
    debt_shares = _shares(order.loans, prices)
    if collateral_shares is None:
        return None
    debt_shares = debt_shares or {}
    ltv = loan_usd / collateral_usd

    def share(shares: Mapping[str, float], ccy: str) -> float:
        return shares.get(ccy, 0.0)

    drop_liq: dict[str, float] = {}
    drop_mc: dict[str, float] = {}
    after: dict[tuple[str, float], float] = {}
    for ccy in order.collateral:
        w, v = share(collateral_shares, ccy), share(debt_shares, ccy)
        if order.liquidation_ltv is not None:
            drop_liq[ccy] = drop_to(ltv, order.liquidation_ltv, w, v)
        if order.margin_call_ltv is not None:
            drop_mc[ccy] = drop_to(ltv, order.margin_call_ltv, w, v)
        for drop in DROPS:
            after[(ccy, drop)] = ltv_after(ltv, -drop, w, v)
    volatile_w = sum(w for ccy, w in collateral_shares.items() if ccy not in stablecoins)
    volatile_v = sum(v for ccy, v in debt_shares.items() if ccy not in stablecoins)
    for drop in DROPS:
        after[(ALL, drop)] = ltv_after(ltv, -drop, volatile_w, volatile_v)

    rise_liq: dict[str, float] = {}
    rise_mc: dict[str, float] = {}
    for ccy in order.loans:
        if ccy in stablecoins:
            continue
        w, v = share(collateral_shares, ccy), share(debt_shares, ccy)
        if order.liquidation_ltv is not None:
            rise_liq[ccy] = rise_to(ltv, order.liquidation_ltv, w, v)
        if order.margin_call_ltv is not None:
            rise_mc[ccy] = rise_to(ltv, order.margin_call_ltv, w, v)
    return OrderRisk(drop_liq, drop_mc, after, rise_liq, rise_mc)


def ltv_after(ltv: float, move: float, collateral_share: float, debt_share: float) -> float:
    """The LTV after one currency's price moves by ``move`` (-0.1 is a 10 % drop)."""
    return ltv * (1 + debt_share * move) / (1 + collateral_share * move)


def drop_to(ltv: float, threshold: float, collateral_share: float, debt_share: float) -> float:
    """How far one currency may fall before ``LTV = threshold``: ``(T - L) / (T*w - L*v)``.

    0 when the LTV is already at or above the threshold; 1 when no drop (down to a price of 0)
    reaches it, because the drop shrinks the debt at least as much as the collateral.
    """
    if ltv >= threshold:
        return 0.0
    slope = threshold * collateral_share - ltv * debt_share
    if slope <= 0:
        return 1.0
    return min((threshold - ltv) / slope, 1.0)


def rise_to(ltv: float, threshold: float, collateral_share: float, debt_share: float) -> float:
    """How far one currency may rise before ``LTV = threshold``: ``(T - L) / (L*v - T*w)``.

    0 when the LTV is already at or above the threshold; +Inf when no rise reaches it.
    """
    if ltv >= threshold:
        return 0.0
    slope = ltv * debt_share - threshold * collateral_share
    if slope <= 0:
        return math.inf
    return (threshold - ltv) / slope


def _shares(amounts: Mapping[str, float], prices: Mapping[str, float]) -> dict[str, float] | None:
    """Each currency's share of the value of ``amounts`` at ``prices``; None when worth nothing."""
    values = {ccy: amount * prices[ccy] for ccy, amount in amounts.items()}
    total = sum(values.values())
    if not total > 0:
        return None
    return {ccy: value / total for ccy, value in values.items()}
