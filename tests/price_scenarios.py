"""The multi-collateral order the what-if tests share, with the index prices it is valued at.

BTC 60000 + ETH 30000 + USDC 10000 = 100000 raw, 80000 after a 0.8 haircut; debt SOL 30000 +
USDT 10000 = 40000: LTV 0.5. Shares: BTC 0.6, ETH 0.3, USDC 0.1 of the collateral, SOL 0.75 of
the debt.
"""

from __future__ import annotations

import pytest

from okx_loan_exporter.position import Order

PRICES = {"BTC": 60000.0, "ETH": 3000.0, "SOL": 150.0, "USDC": 1.0, "USDT": 1.0}

MIXED = Order(
    order_id="7",
    loan_notional_usd=40000.0,
    collateral_notional_usd=80000.0,
    current_ltv=0.5,
    margin_call_ltv=0.7,
    liquidation_ltv=0.8,
    loans={"SOL": 200.0, "USDT": 10000.0},
    collateral={"BTC": 1.0, "ETH": 10.0, "USDC": 10000.0},
)


def exact(value: float) -> object:
    """Equal to ``value`` but for float rounding (12 significant digits)."""
    return pytest.approx(value, rel=1e-12, abs=0)
