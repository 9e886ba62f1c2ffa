"""The parsed answers of loan-history, interest-accrued, max-loan and max-collateral-redeem-amount.

Strict like :mod:`okx_loan_exporter.position`: every number is a decimal string, ``""`` is absent
(``None``, never 0), and anything else is refused with an :class:`InvalidResponse` naming where
(``data[3].ts``), so that a malformed answer never replaces good values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from okx_loan_exporter.position import (
    InvalidResponse,
    _quote,
    _require,
    _string,
    parse_decimal,
)

LOAN_HISTORY_TYPES = (
    "borrowed",
    "repaid",
    "collateral_locked",
    "collateral_released",
    "forced_repayment_buy",
    "forced_repayment_sell",
    "forced_liquidation",
    "partial_liquidation",
    "sell_collateral",
    "buy_transition_coin",
    "sell_transition_coin",
    "buy_borrowed_coin",
)
"""Every loan-history ``type`` OKX documents, in its order."""
LIQUIDATION_TYPES = frozenset(
    {"forced_liquidation", "partial_liquidation", "forced_repayment_buy", "forced_repayment_sell"}
)
"""The types that mean OKX sold the borrower's collateral to cover the debt."""

_TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,47}", re.ASCII)
_REF_RE = re.compile(r"[0-9]{1,40}", re.ASCII)
_MAX_TS_MS = 10**14  # year 5138: beyond this a timestamp is taken for garbage


@dataclass(frozen=True)
class HistoryRecord:
    """One loan-history record: what happened (``type``), to which currency, how much, when."""

    ref_id: str
    type: str
    currency: str
    amount: float | None
    """Signed: collateral locked shows as negative. None when OKX sent ``""``."""
    timestamp: float
    """Seconds since the epoch (OKX's ``ts`` is milliseconds)."""


@dataclass(frozen=True)
class InterestRecord:
    """One hourly interest accrual of one debt currency."""

    ref_id: str
    currency: str
    loan: float | None
    interest: float | None
    rate: float | None
    """APY as a fraction: 0.0841 is 8.41 % a year (OKX ``interestRate``)."""
    timestamp: float


@dataclass(frozen=True)
class BorrowHeadroom:
    """max-loan for one order and debt currency: how much more can be borrowed."""

    currency: str
    amount: float | None
    notional_usd: float | None


def ref_order(ref_id: str) -> tuple[int, str]:
    """Sort key of OKX refIds, digit strings that grow with time: by length, then digits."""
    return (len(ref_id), ref_id)


def parse_loan_history(body: object) -> tuple[HistoryRecord, ...]:
    """The records of a loan-history answer, in OKX's order (newest first)."""
    return tuple(
        HistoryRecord(
            ref_id=_ref_id(entry, where),
            type=_type(entry, where),
            currency=_currency(entry, where),
            amount=_signed_decimal(_require(entry, "amt", where), f"{where}.amt"),
            timestamp=_timestamp(entry, where),
        )
        for entry, where in _entries(body)
    )


def parse_interest_accrued(body: object) -> tuple[InterestRecord, ...]:
    """The records of an interest-accrued answer, in OKX's order (newest first)."""

    def decimal(entry: Mapping[str, Any], key: str, where: str) -> float | None:
        return parse_decimal(_require(entry, key, where), f"{where}.{key}")

    return tuple(
        InterestRecord(
            ref_id=_ref_id(entry, where),
            currency=_currency(entry, where),
            loan=decimal(entry, "loan", where),
            interest=decimal(entry, "interest", where),
            rate=decimal(entry, "interestRate", where),
            timestamp=_timestamp(entry, where),
        )
        for entry, where in _entries(body)
    )


def parse_max_loan(body: object, currency: str) -> BorrowHeadroom:
    """max-loan's answer for ``currency`` (the ``borrowCcy`` asked); absent values when no data."""
    for entry, where in _entries(body):
        if _string(_require(entry, "borrowCcy", where), f"{where}.borrowCcy") != currency:
            continue
        return BorrowHeadroom(
            currency,
            parse_decimal(_require(entry, "maxLoan", where), f"{where}.maxLoan"),
            parse_decimal(_require(entry, "notionalUsd", where), f"{where}.notionalUsd"),
        )
    return BorrowHeadroom(currency, None, None)


def parse_max_redeem(body: object, currency: str) -> float | None:
    """max-collateral-redeem-amount's ``maxRedeemAmt`` for ``currency``; None when absent."""
    for entry, where in _entries(body):
        if _string(_require(entry, "ccy", where), f"{where}.ccy") != currency:
            continue
        return parse_decimal(_require(entry, "maxRedeemAmt", where), f"{where}.maxRedeemAmt")
    return None


def _entries(body: object) -> list[tuple[Mapping[str, Any], str]]:
    if not isinstance(body, Mapping):
        raise InvalidResponse(f"answer is a JSON {type(body).__name__}, not an object")
    data = _require(body, "data", "answer")
    if not isinstance(data, list):
        raise InvalidResponse(f"'data' is a {type(data).__name__}, not a list")
    entries = []
    for index, entry in enumerate(data):
        where = f"data[{index}]"
        if not isinstance(entry, Mapping):
            raise InvalidResponse(f"{where} is a {type(entry).__name__}, not an object")
        entries.append((entry, where))
    return entries


def _ref_id(entry: Mapping[str, Any], where: str) -> str:
    ref_id = _string(_require(entry, "refId", where), f"{where}.refId")
    if not _REF_RE.fullmatch(ref_id):
        raise InvalidResponse(f"{where}.refId: {_quote(ref_id)} is not an OKX refId (digits)")
    return ref_id


def _type(entry: Mapping[str, Any], where: str) -> str:
    kind = _string(_require(entry, "type", where), f"{where}.type")
    if not _TYPE_RE.fullmatch(kind):
        raise InvalidResponse(f"{where}.type: {_quote(kind)} is not a record type")
    return kind


def _currency(entry: Mapping[str, Any], where: str) -> str:
    currency = _string(_require(entry, "ccy", where), f"{where}.ccy")
    if not currency:
        raise InvalidResponse(f"{where}.ccy is empty")
    return currency


def _timestamp(entry: Mapping[str, Any], where: str) -> float:
    text = _string(_require(entry, "ts", where), f"{where}.ts")
    if not text.isascii() or not text.isdigit() or int(text) >= _MAX_TS_MS:
        raise InvalidResponse(f"{where}.ts: {_quote(text)} is not a time in milliseconds")
    return int(text) / 1000


def _signed_decimal(value: object, where: str) -> float | None:
    """Like :func:`parse_decimal`, but a leading ``-`` is allowed (loan-history ``amt``)."""
    if isinstance(value, str) and value.startswith("-") and value[1:2] not in ("+", "-", ""):
        magnitude = parse_decimal(value[1:], where)
        return None if magnitude is None else -magnitude + 0.0
    return parse_decimal(value, where)
