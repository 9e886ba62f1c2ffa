"""The parsed OKX loan-info answer as plain dataclasses, and the strict parser that builds them.

OKX sends every number as a decimal string and an absent value as ``""``. The parser keeps that
distinction (``""`` becomes ``None``, never 0), converts with ``float()`` so a value keeps OKX's
digits exactly as far as a float can (``"0.0000097"`` is ``9.7e-06``), and rejects anything that is
not a loan-info answer with :class:`InvalidResponse`, so that a malformed answer can never replace
good cached values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class InvalidResponse(ValueError):
    """The answer is not a well-formed loan-info answer; the message says what is wrong."""


@dataclass(frozen=True)
class Order:
    """One loan order as OKX reported it (an account may hold several since 2026).

    ``order_id`` is OKX's ``ordId``, or ``""`` for an answer from before orders existed. Ratios are
    fractions (0.5742 means 57.42 %); ``None`` is a value OKX sent as ``""`` (absent, never 0).
    """

    order_id: str
    loan_notional_usd: float | None = None
    collateral_notional_usd: float | None = None
    current_ltv: float | None = None
    margin_call_ltv: float | None = None
    liquidation_ltv: float | None = None
    loans: Mapping[str, float] = field(default_factory=dict)
    collateral: Mapping[str, float] = field(default_factory=dict)
    liquidation_instrument: str | None = None
    liquidation_price: float | None = None


@dataclass(frozen=True)
class Position:
    """One account's Flexible Loan orders, in OKX's order; none when OKX reports no loan."""

    orders: tuple[Order, ...] = ()

    @property
    def active(self) -> bool:
        """True when the account holds at least one loan order."""
        return bool(self.orders)


NO_LOAN = Position()


def parse_decimal(value: object, where: str) -> float | None:
    """Convert one OKX decimal string to a float; ``""`` is ``None`` (absent).

    Refuses what is not a plain non-negative finite decimal string: ``null``, numbers sent as JSON
    numbers, ``"abc"``, ``"NaN"``, ``"1e400"`` (overflows to infinity), surrounding white space and
    negative values, since no amount, notional or ratio in loan-info can be negative. ``"-0"`` is
    read as 0.
    """
    if not isinstance(value, str):
        raise InvalidResponse(f"{where}: expected a decimal string, got {type(value).__name__}")
    if value == "":
        return None
    text = value
    if len(text) > 64 or not _looks_decimal(text):
        raise InvalidResponse(f"{where}: {_quote(value)} is not a decimal number")
    number = float(text)
    if not math.isfinite(number):
        raise InvalidResponse(f"{where}: {_quote(value)} is out of range")
    if number < 0:
        raise InvalidResponse(f"{where}: {_quote(value)} is negative")
    return number + 0.0  # turns -0.0 into 0.0


def parse_loan_info(body: object) -> Position:
    """Build a :class:`Position` from a decoded loan-info answer whose ``code`` was ``"0"``.

    Every entry of ``data`` is an order. An entry without ``ordId`` (answers from before orders
    existed) is the order ``""`` when it is the only entry; beside other entries it cannot be told
    apart from them, and neither can two entries with the same ``ordId``: the answer is invalid.
    """
    if not isinstance(body, Mapping):
        raise InvalidResponse(f"answer is a JSON {type(body).__name__}, not an object")
    if "data" not in body:
        raise InvalidResponse("answer has no 'data'")
    data = body["data"]
    if not isinstance(data, list):
        raise InvalidResponse(f"'data' is a {type(data).__name__}, not a list")
    orders = tuple(_order(entry, f"data[{index}]") for index, entry in enumerate(data))
    seen: dict[str, int] = {}
    for index, order in enumerate(orders):
        if not order.order_id and len(orders) > 1:
            raise InvalidResponse(
                f"data[{index}] has no ordId, but the answer holds {len(orders)} orders: "
                "they cannot be told apart"
            )
        if order.order_id in seen:
            raise InvalidResponse(
                f"data[{index}].ordId: {_quote(order.order_id)} appears twice "
                f"(also data[{seen[order.order_id]}])"
            )
        seen[order.order_id] = index
    return Position(orders) if orders else NO_LOAN


def _order(entry: object, where: str) -> Order:
    if not isinstance(entry, Mapping):
        raise InvalidResponse(f"{where} is a {type(entry).__name__}, not an object")
    order_id = _string(entry["ordId"], f"{where}.ordId") if "ordId" in entry else ""
    risk = _require(entry, "riskWarningData", where)
    if not isinstance(risk, Mapping):
        raise InvalidResponse(f"{where}.riskWarningData is not an object")
    instrument = _string(
        _require(risk, "instId", f"{where}.riskWarningData"), f"{where}.riskWarningData.instId"
    )
    liquidation_price = parse_decimal(
        _require(risk, "liqPx", f"{where}.riskWarningData"), f"{where}.riskWarningData.liqPx"
    )
    has_liquidation_price = bool(instrument) and liquidation_price is not None

    def decimal(key: str) -> float | None:
        return parse_decimal(_require(entry, key, where), f"{where}.{key}")

    return Order(
        order_id=order_id,
        loan_notional_usd=decimal("loanNotionalUsd"),
        collateral_notional_usd=decimal("collateralNotionalUsd"),
        current_ltv=decimal("curLTV"),
        margin_call_ltv=decimal("marginCallLTV"),
        liquidation_ltv=decimal("liqLTV"),
        loans=_currency_amounts(entry, "loanData", where),
        collateral=_currency_amounts(entry, "collateralData", where),
        liquidation_instrument=instrument if has_liquidation_price else None,
        liquidation_price=liquidation_price if has_liquidation_price else None,
    )


def _looks_decimal(text: str) -> bool:
    """True for ``[+-]digits[.digits][e[+-]digits]`` in ASCII (float() also takes 'nan', '1_0')."""
    body = text[1:] if text[0] in "+-" else text
    mantissa, _, exponent = body.lower().partition("e")
    whole, _, fraction = mantissa.partition(".")
    if not (whole or fraction) or not (whole + fraction).isascii():
        return False
    if not all(part.isdigit() for part in (whole, fraction) if part):
        return False
    if "e" in body.lower():
        digits = exponent[1:] if exponent[:1] in "+-" else exponent
        return digits.isascii() and digits.isdigit()
    return True


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise InvalidResponse(f"{where} has no '{key}'")
    return mapping[key]


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidResponse(f"{where}: expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: no exposition can carry it
        raise InvalidResponse(f"{where}: not valid Unicode text") from None
    return value


def _currency_amounts(entry: Mapping[str, Any], key: str, entry_where: str) -> dict[str, float]:
    items = _require(entry, key, entry_where)
    if not isinstance(items, list):
        raise InvalidResponse(f"{entry_where}.{key} is a {type(items).__name__}, not a list")
    amounts: dict[str, float] = {}
    for index, item in enumerate(items):
        where = f"{entry_where}.{key}[{index}]"
        if not isinstance(item, Mapping):
            raise InvalidResponse(f"{where} is a {type(item).__name__}, not an object")
        currency = _string(_require(item, "ccy", where), f"{where}.ccy")
        amount = parse_decimal(_require(item, "amt", where), f"{where}.amt")
        if not currency or amount is None:
            continue  # OKX's "" means absent: no series rather than a 0
        if currency in amounts:
            raise InvalidResponse(f"{where}.ccy: currency {_quote(currency)} appears twice")
        amounts[currency] = amount
    return amounts


def _quote(value: str, limit: int = 40) -> str:
    shown = value if len(value) <= limit else value[:limit] + "..."
    return repr(shown)
