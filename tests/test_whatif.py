"""The what-if math: exact figures for hand-worked orders, and each against the LTV recomputed from
moved prices with OKX's haircut."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
from price_scenarios import MIXED, PRICES, exact

from okx_loan_exporter.position import Order
from okx_loan_exporter.whatif import ALL, drop_to, order_risk, rise_to

STABLE = frozenset({"USDT", "USDC"})


def ltv_at(order: Order, base: Mapping[str, float], moved: Mapping[str, float]) -> float:
    """The order's LTV at ``moved`` prices, straight from the README's formula with h."""
    assert order.loan_notional_usd is not None and order.collateral_notional_usd is not None
    raw = sum(amount * base[ccy] for ccy, amount in order.collateral.items())
    haircut = order.collateral_notional_usd / raw
    debt = sum(amount * base[ccy] for ccy, amount in order.loans.items())
    debt_moved = sum(amount * moved[ccy] for ccy, amount in order.loans.items())
    collateral_moved = sum(amount * moved[ccy] for ccy, amount in order.collateral.items())
    return order.loan_notional_usd * (debt_moved / debt) / (haircut * collateral_moved)


def test_multi_collateral_order_with_stablecoin_collateral_and_volatile_debt() -> None:
    risk = order_risk(MIXED, PRICES, STABLE)
    assert risk is not None
    # BTC: (0.8 - 0.5) / (0.8 * 0.6) = 0.625; to the margin call (0.7 - 0.5) / (0.7 * 0.6).
    assert risk.drop_to_liquidation["BTC"] == exact(0.625)
    assert risk.drop_to_margin_call["BTC"] == exact(0.2 / 0.42)
    # ETH alone: 0.3 / 0.24 = 1.25 > 1, it can never liquidate; its margin call at 0.2 / 0.21.
    assert risk.drop_to_liquidation["ETH"] == 1.0
    assert risk.drop_to_margin_call["ETH"] == exact(0.2 / 0.21)
    # The stablecoin collateral is 10 %: no fall of it alone reaches either threshold.
    assert risk.drop_to_liquidation["USDC"] == 1.0
    assert risk.drop_to_margin_call["USDC"] == 1.0
    # The SOL debt (75 % of it) rising: (0.8 - 0.5) / (0.5 * 0.75) = 0.8; USDT gets no series.
    assert risk.rise_to_liquidation == {"SOL": exact(0.8)}
    assert risk.rise_to_margin_call == {"SOL": exact(0.2 / 0.375)}
    # LTV after BTC falls: 0.5 / (1 - 0.6 d).
    assert risk.ltv_after_drop[("BTC", 0.1)] == exact(0.5 / 0.94)
    assert risk.ltv_after_drop[("BTC", 0.2)] == exact(0.5 / 0.88)
    assert risk.ltv_after_drop[("BTC", 0.3)] == exact(0.5 / 0.82)
    assert risk.ltv_after_drop[("USDC", 0.3)] == exact(0.5 / 0.97)
    # Everything but stablecoins falls: the collateral by 0.9 d, the SOL debt by 0.75 d too.
    assert risk.ltv_after_drop[(ALL, 0.1)] == exact(0.5 * 0.925 / 0.91)
    assert risk.ltv_after_drop[(ALL, 0.2)] == exact(0.5 * 0.85 / 0.82)
    assert risk.ltv_after_drop[(ALL, 0.3)] == exact(0.5 * 0.775 / 0.73)
    assert len(risk.ltv_after_drop) == 12


def test_each_figure_lands_on_its_threshold_when_recomputed_from_moved_prices() -> None:
    risk = order_risk(MIXED, PRICES, STABLE)
    assert risk is not None
    for figures, threshold, sign in (
        (risk.drop_to_liquidation, 0.8, -1),
        (risk.drop_to_margin_call, 0.7, -1),
        (risk.rise_to_liquidation, 0.8, 1),
        (risk.rise_to_margin_call, 0.7, 1),
    ):
        for ccy, move in figures.items():
            moved = {**PRICES, ccy: PRICES[ccy] * (1 + sign * move)}
            if sign < 0 and move == 1.0:
                assert ltv_at(MIXED, PRICES, {**PRICES, ccy: 1e-9}) < threshold, ccy
            else:
                assert ltv_at(MIXED, PRICES, moved) == pytest.approx(threshold, rel=1e-12), ccy
    for (ccy, drop), ltv in risk.ltv_after_drop.items():
        fallen = {c for c in PRICES if c not in STABLE} if ccy == ALL else {ccy}
        moved = {c: p * (1 - drop) if c in fallen else p for c, p in PRICES.items()}
        assert ltv_at(MIXED, PRICES, moved) == pytest.approx(ltv, rel=1e-12), (ccy, drop)


def test_single_collateral_liquidation_price_is_okx_definition() -> None:
    """BTC 0.5 against 13500 USDT: OKX's liqPx is 13500 / (0.5 x 0.8) = 33750."""
    order = Order(
        "1001", 13500.0, 30000.0, 0.45, 0.7, 0.8, {"USDT": 13500.0}, {"BTC": 0.5}, "BTC-USDT", 33750
    )
    risk = order_risk(order, PRICES, STABLE)
    assert risk is not None
    assert risk.drop_to_liquidation == {"BTC": exact(0.4375)}
    assert 60000.0 * (1 - risk.drop_to_liquidation["BTC"]) == exact(33750.0)
    assert risk.drop_to_margin_call == {"BTC": exact(1 - 0.45 / 0.7)}
    assert risk.rise_to_liquidation == {}


def test_a_debt_backed_by_its_own_currency_is_hedged() -> None:
    """BTC 1 + ETH 20 (120000) against 0.5 BTC (30000): a BTC move shifts both sides."""
    order = Order("9", 30000.0, 120000.0, 0.25, 0.7, 0.8, {"BTC": 0.5}, {"BTC": 1.0, "ETH": 20.0})
    risk = order_risk(order, PRICES, STABLE)
    assert risk is not None
    # BTC: slope 0.8 x 0.5 - 0.25 x 1 = 0.15; 0.55 / 0.15 > 1. ETH: 0.55 / 0.4 > 1.
    assert risk.drop_to_liquidation == {"BTC": 1.0, "ETH": 1.0}
    # A BTC rise grows the collateral faster than the debt: never.
    assert risk.rise_to_liquidation == {"BTC": math.inf}
    assert risk.ltv_after_drop[("BTC", 0.2)] == exact(0.25 * 0.8 / 0.9)
    assert risk.ltv_after_drop[(ALL, 0.2)] == exact(0.25)


def test_an_order_already_past_a_threshold_has_no_room() -> None:
    order = Order("3", 85.0, 100.0, 0.85, 0.7, 0.8, {"USDT": 85.0}, {"ETH": 1.0})
    risk = order_risk(order, {"ETH": 3000.0, "USDT": 1.0}, STABLE)
    assert risk is not None
    assert risk.drop_to_liquidation == {"ETH": 0.0}
    assert risk.drop_to_margin_call == {"ETH": 0.0}
    assert drop_to(0.8, 0.8, 1.0, 0.0) == 0.0
    assert rise_to(0.9, 0.8, 0.0, 1.0) == 0.0


def test_absent_thresholds_give_no_figures_for_them() -> None:
    order = Order("4", 50.0, 100.0, 0.5, None, 0.8, {"USDT": 50.0}, {"ETH": 1.0})
    risk = order_risk(order, {"ETH": 3000.0, "USDT": 1.0}, STABLE)
    assert risk is not None
    assert risk.drop_to_margin_call == {}
    assert risk.drop_to_liquidation == {"ETH": exact(1 - 0.5 / 0.8)}


@pytest.mark.parametrize(
    ("order", "prices"),
    [
        (MIXED, {k: v for k, v in PRICES.items() if k != "SOL"}),  # a price is missing
        (MIXED, {**PRICES, "ETH": 0.0}),  # or not positive
        (Order("5", None, 100.0, None, 0.7, 0.8, {}, {"ETH": 1.0}), PRICES),  # loan notional ""
        (Order("6", 50.0, None, None, 0.7, 0.8, {"USDT": 50.0}, {"ETH": 1.0}), PRICES),
        (Order("8", 50.0, 0.0, None, 0.7, 0.8, {"USDT": 50.0}, {"ETH": 1.0}), PRICES),
        (Order("9", 50.0, 100.0, 0.5, 0.7, 0.8, {"USDT": 50.0}, {"ETH": 0.0}), PRICES),
    ],
)
def test_no_figures_without_what_they_need(order: Order, prices: dict[str, float]) -> None:
    assert order_risk(order, prices, STABLE) is None


def test_an_order_without_debt_can_never_be_liquidated() -> None:
    order = Order("10", 0.0, 3000.0, 0.0, 0.7, 0.8, {}, {"ETH": 1.0})
    risk = order_risk(order, PRICES, STABLE)
    assert risk is not None
    assert risk.drop_to_liquidation == {"ETH": 1.0}
    assert risk.ltv_after_drop[("ETH", 0.3)] == 0.0
