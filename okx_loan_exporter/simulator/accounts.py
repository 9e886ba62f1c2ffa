"""Simulated accounts and their loan orders: the built-in demo accounts, generated ones, checks.

Amounts stay OKX's decimal strings; the helpers here write decimals the way OKX does.
"""

from __future__ import annotations

import copy
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

STABLECOINS = frozenset({"USDT", "USDC"})
"""Currencies priced at 1 USD that never walk."""

# Index prices (USD) the market starts from: every currency of the built-in and generated accounts.
INDEX_PRICES: dict[str, float] = {
    "BTC": 60000.0,
    "ETH": 3000.0,
    "SOL": 150.0,
    "OKB": 50.0,
    "XRP": 0.5,
    "DOGE": 0.15,
    "LTC": 80.0,
    "TON": 5.0,
    # okx-docs-example: STX is chosen so collateralNotionalUsd starts at the example's 1.5078763.
    "COMP": 45.0,
    "STX": 1.889936513,
    "DOT": 6.5,
    "LUNA": 0.5,
    "USDT": 1.0,
    "USDC": 1.0,
}
_GENERATED_CURRENCIES = ("BTC", "DOGE", "ETH", "LTC", "OKB", "SOL", "TON", "XRP")

Q8 = Decimal("1e-8")
Q4 = Decimal("1e-4")
_PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?", re.ASCII)


@dataclass
class SimOrder:
    """One loan order: OKX's ``ordId``, its amounts as OKX's decimal strings, and its thresholds.

    ``order_id=""`` is an order from before OKX had orders: its entry has no ``ordId`` key (only
    valid as an account's one order). ``margin_call_cycle`` makes its LTV drift through its
    margin-call LTV and back once per period of the simulator's ``margin_call_cycle``;
    ``liquidation_cycle`` makes it climb to its liquidation LTV once per period instead, where OKX
    partially liquidates it, after which the borrower tops it up again at the next period.
    """

    order_id: str
    collateral: dict[str, str]
    loans: dict[str, str]
    margin_call_ltv: str = "0.7"
    liquidation_ltv: str = "0.8"
    margin_call_cycle: bool = False
    liquidation_cycle: bool = False


@dataclass
class SimAccount:
    """One simulated OKX account: fake credentials and its Flexible Loan orders.

    Amounts are echoed unchanged in ``collateralData``/``loanData``; values come from the
    simulator's shared market of index prices. An account without orders answers ``"data": []``.
    ``demo`` marks a demo-trading key, to be used with the header ``x-simulated-trading: 1``.
    """

    name: str
    api_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    passphrase: str = field(repr=False)
    orders: list[SimOrder] = field(default_factory=list)
    demo: bool = False


def _fake_account(name: str, orders: list[SimOrder], demo: bool = False) -> SimAccount:
    """An account ``name`` with fake credentials that only work against the simulator."""
    return SimAccount(
        name=name,
        api_key=f"sim-{name}-key",
        secret_key=f"sim-{name}-secret-not-a-real-okx-secret",
        passphrase=f"sim-{name}-passphrase",
        orders=orders,
        demo=demo,
    )


def demo_accounts() -> list[SimAccount]:
    """The built-in accounts: one per shape of answer an exporter has to handle.

    - ``btc-usdt``: order 1001, BTC collateral, USDT loan, LTV 0.45 (liqPx 33750).
    - ``okx-docs-example``: the amounts of OKX's loan-info documentation example, LTV about 0.574,
      without ``ordId`` as on that page (the exporter's ``order=""``).
    - ``eth-usdc``: order 1101, ETH collateral, USDC loan, LTV 0.6, closer to the 0.7 margin call.
    - ``no-loan``: no order, so ``data`` is empty.
    - ``demo-trading``: order 1201 on a demo-trading key (needs ``x-simulated-trading: 1``).
    - ``two-orders``: order 2001 (BTC for USDT, LTV 0.4, with a liqPx) and order 2002 (ETH and SOL
      for USDC), whose LTV drifts from 0.65 through its 0.7 margin call to 0.75 and back.
    - ``liquidation``: order 3001 (BTC for USDT), whose LTV climbs from 0.6 to its 0.8 liquidation
      LTV once per margin-call cycle: OKX partially liquidates it, the borrower tops it up again.
    """
    return [
        _fake_account(
            "btc-usdt",
            orders=[SimOrder("1001", {"BTC": "0.5"}, {"USDT": "13500"})],
        ),
        _fake_account(
            "okx-docs-example",
            orders=[
                SimOrder(
                    "",
                    {"COMP": "0.0000097", "STX": "0.78", "DOT": "0.001", "LUNA": "0.05357864"},
                    {"USDC": "0.86590608"},
                    margin_call_ltv="0.7374",
                    liquidation_ltv="0.8374",
                )
            ],
        ),
        _fake_account(
            "eth-usdc",
            orders=[SimOrder("1101", {"ETH": "4.2"}, {"USDC": "7560"})],
        ),
        _fake_account("no-loan", []),
        _fake_account(
            "demo-trading",
            orders=[SimOrder("1201", {"BTC": "0.1"}, {"USDC": "1500"})],
            demo=True,
        ),
        _fake_account(
            "two-orders",
            orders=[
                SimOrder("2001", {"BTC": "0.2"}, {"USDT": "4800"}),
                SimOrder(
                    "2002", {"ETH": "2", "SOL": "20"}, {"USDC": "5850"}, margin_call_cycle=True
                ),
            ],
        ),
        _fake_account(
            "liquidation",
            orders=[SimOrder("3001", {"BTC": "0.3"}, {"USDT": "10800"}, liquidation_cycle=True)],
        ),
    ]


def generated_accounts(count: int, seed: int = 0) -> list[SimAccount]:
    """``count`` deterministic accounts ``acct-0001``... for load tests and benchmarks.

    Each has one order (``ordId`` 90000001 for acct-0001...) with one to three collateral
    currencies, a USDT or USDC loan and a starting LTV between 0.2 and 0.65; the same
    ``(count, seed)`` always gives the same accounts, and account *i* does not depend on ``count``.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = random.Random(f"okx-sim-generated:{seed}")
    accounts = []
    for index in range(1, count + 1):
        name = f"acct-{index:04d}"
        chosen = rng.sample(_GENERATED_CURRENCIES, rng.choice((1, 1, 1, 2, 3)))
        collateral: dict[str, str] = {}
        collateral_usd = Decimal(0)
        for ccy in chosen:
            price = Decimal(repr(INDEX_PRICES[ccy]))
            amount = Decimal(repr(rng.uniform(500.0, 50000.0))) / price
            amount = amount.quantize(Q8, rounding=ROUND_HALF_EVEN)
            collateral[ccy] = plain(amount)
            collateral_usd += amount * price
        loan_ccy = rng.choice(("USDT", "USDC"))
        ltv = Decimal(repr(round(rng.uniform(0.2, 0.65), 4)))
        loan = (collateral_usd * ltv).quantize(Decimal("1e-4"), rounding=ROUND_HALF_EVEN)
        order = SimOrder(f"9{index:07d}", collateral, {loan_ccy: plain(loan)})
        accounts.append(_fake_account(name, [order]))
    return accounts


def plain(value: Decimal) -> str:
    """A decimal as OKX writes it: no exponent, no trailing zeros, ``0`` rather than ``-0``."""
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def significant(value: Decimal, digits: int) -> Decimal:
    if value == 0 or not value.is_finite():
        return value
    return value.quantize(
        Decimal(1).scaleb(value.adjusted() - digits + 1), rounding=ROUND_HALF_EVEN
    )


def check_decimal(text: object, where: str, *, allow_empty: bool = False) -> None:
    if allow_empty and text == "":
        return
    if not isinstance(text, str) or not _PLAIN_DECIMAL.fullmatch(text):
        raise ValueError(f"{where}: {text!r} is not a plain non-negative decimal string")


def value_of(amounts: Mapping[str, str], prices: Mapping[str, Decimal]) -> Decimal:
    """Amounts times index prices, unrounded."""
    return sum((Decimal(amt) * prices[ccy] for ccy, amt in amounts.items()), Decimal(0))


def validated_prices(prices: Mapping[str, float]) -> dict[str, float]:
    """The market's starting prices, checked, with USDT and USDC at 1 unless given."""
    checked = {ccy: 1.0 for ccy in STABLECOINS}
    for ccy, price in prices.items():
        if (
            isinstance(price, bool)
            or not isinstance(price, int | float)
            or not 0 < price < math.inf
        ):
            raise ValueError(f"simulator price of {ccy!r} must be a number > 0, got {price!r}")
        if price == math.inf:
            raise ValueError(f"simulator price of {ccy!r} must be finite")
        checked[ccy] = float(price)
    return checked


def validated_copy(account: SimAccount, prices: Mapping[str, float]) -> SimAccount:
    """A deep copy of ``account`` after checking that the simulator can serve it at ``prices``."""
    where = f"simulator account {account.name!r}"
    if not account.name or not account.api_key:
        raise ValueError(f"{where}: name and api_key must not be empty")
    seen: set[str] = set()
    for order in account.orders:
        here = f"{where}, order {order.order_id!r}"
        if not isinstance(order.order_id, str):
            raise ValueError(f"{here}: order_id must be a string")
        if order.order_id in seen or (not order.order_id and len(account.orders) > 1):
            raise ValueError(
                f"{here}: every order of an account needs its own non-empty order_id "
                "(only an account's one order may have none)"
            )
        seen.add(order.order_id)
        for kind, amounts in (("collateral", order.collateral), ("loans", order.loans)):
            for ccy, amount in amounts.items():
                check_decimal(amount, f"{here}: {kind}[{ccy!r}]")
                if ccy not in prices:
                    raise ValueError(f"{here}: no price for {ccy!r} in the simulator's market")
        if order.loans and not any(Decimal(a) > 0 for a in order.collateral.values()):
            raise ValueError(f"{here}: a loan needs some collateral")
        check_decimal(order.margin_call_ltv, f"{here}: margin_call_ltv", allow_empty=True)
        check_decimal(order.liquidation_ltv, f"{here}: liquidation_ltv", allow_empty=True)
        if order.margin_call_cycle and not (
            order.margin_call_ltv
            and order.liquidation_ltv
            and Decimal(order.margin_call_ltv) < Decimal(order.liquidation_ltv)
        ):
            raise ValueError(f"{here}: a cycling order needs margin_call_ltv < liquidation_ltv")
        if order.liquidation_cycle and (
            order.margin_call_cycle
            or not order.liquidation_ltv
            or not order.margin_call_ltv
            or Decimal(order.margin_call_ltv) >= Decimal(order.liquidation_ltv)
        ):
            raise ValueError(
                f"{here}: a liquidation_cycle order needs margin_call_ltv < liquidation_ltv "
                "and no margin_call_cycle"
            )
    return copy.deepcopy(account)
