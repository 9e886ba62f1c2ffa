"""The answers of loan-history, interest-accrued, max-loan and max-collateral-redeem-amount.

Parameters are read as OKX reads them: an empty optional parameter is absent, ``limit`` is 1 to
100 (default 100), ``after``/``before`` are refIds (older than / newer than), a missing required
parameter or a malformed one is code 51000. Pages are newest first. Called with the simulator's
lock held, after the signature and the rate limit were checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from decimal import ROUND_DOWN, Decimal, InvalidOperation, localcontext
from typing import Any
from urllib.parse import parse_qs, urlsplit

from okx_loan_exporter.loan_records import LOAN_HISTORY_TYPES
from okx_loan_exporter.simulator.accounts import Q8, plain, value_of
from okx_loan_exporter.simulator.history import borrow_ltv
from okx_loan_exporter.simulator.orders import AccountState, OrderState

LOAN_PATH = "/api/v5/finance/flexible-loan"
HISTORY_PATH = f"{LOAN_PATH}/loan-history"
INTEREST_PATH = f"{LOAN_PATH}/interest-accrued"
MAX_LOAN_PATH = f"{LOAN_PATH}/max-loan"
MAX_REDEEM_PATH = f"{LOAN_PATH}/max-collateral-redeem-amount"
LOAN_INFO_PATH = f"{LOAN_PATH}/loan-info"
METHODS = {
    LOAN_INFO_PATH: "GET",
    HISTORY_PATH: "GET",
    INTEREST_PATH: "GET",
    MAX_LOAN_PATH: "POST",
    MAX_REDEEM_PATH: "GET",
}
"""The private endpoints and the one method each accepts."""
HISTORY_TYPES = frozenset(LOAN_HISTORY_TYPES)
MAX_LIMIT = 100
REMAINING_QUOTA = "5000000"


class ParameterError(ValueError):
    """A parameter OKX would refuse (code 51000); the message is its name."""


Prices = Mapping[str, Decimal]
EntryOf = Callable[[OrderState], dict[str, Any]]


def answer(
    path: str, state: AccountState, target: str, body: bytes, prices: Prices, entry_of: EntryOf
) -> list[dict[str, Any]]:
    """The ``data`` of the answer to ``path``; raises ParameterError for what OKX refuses."""
    if path == MAX_LOAN_PATH:
        return _max_loan(state, _json_body(body), prices, entry_of)
    params = _query(target)
    if path == HISTORY_PATH:
        kind = params.get("type")
        if kind is not None and kind not in HISTORY_TYPES:
            raise ParameterError("type")
        return _page(
            state.history,
            params,
            lambda record: kind is None or record["type"] == kind,
        )
    if path == INTEREST_PATH:
        currency = params.get("ccy")
        return _page(
            state.interest,
            params,
            lambda record: currency is None or record["ccy"] == currency,
        )
    return _max_redeem(state, params, prices, entry_of)


def _query(target: str) -> dict[str, str]:
    """The query parameters, the last of each name; empty ones are absent, as on OKX."""
    found = parse_qs(urlsplit(target).query, keep_blank_values=True)
    return {name: values[-1] for name, values in found.items() if values and values[-1]}


def _ref(params: Mapping[str, str], name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 30:
        raise ParameterError(name)
    return int(text)


def _page(
    records: Iterable[dict[str, Any]],
    params: Mapping[str, str],
    wanted: Callable[[dict[str, Any]], bool],
) -> list[dict[str, Any]]:
    """Newest first: ``after`` keeps older records, ``before`` newer ones (those nearest it)."""
    limit_text = params.get("limit", str(MAX_LIMIT))
    if not limit_text.isascii() or not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
        raise ParameterError("limit")
    limit = int(limit_text)
    after, before = _ref(params, "after"), _ref(params, "before")
    order_id = params.get("ordId")
    chosen = [
        record
        for record in records
        if (order_id is None or record["_ordId"] == order_id)
        and (after is None or int(record["refId"]) < after)
        and (before is None or int(record["refId"]) > before)
        and wanted(record)
    ]
    chosen = chosen[:limit] if before is not None and after is None else chosen[-limit:]
    return [_public(record) for record in reversed(chosen)]


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if not key.startswith("_")}


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body) if body.strip() else None
    except (UnicodeDecodeError, ValueError):
        document = None
    if not isinstance(document, dict):
        raise ParameterError("body")
    return document


def _order(state: AccountState, order_id: object) -> OrderState | None:
    """The order ``ordId`` names; without one, the earliest (the first), as OKX does."""
    if order_id is not None and not isinstance(order_id, str):
        raise ParameterError("ordId")
    for order in state.orders:
        if not order_id or order.order.order_id == order_id:
            return order
    return None


def _values(order: OrderState, prices: Prices, entry_of: EntryOf) -> tuple[Decimal, Decimal]:
    """The order's debt and (haircut) collateral in USD, as its loan-info entry shows them."""
    entry = entry_of(order)
    return Decimal(entry["loanNotionalUsd"]), Decimal(entry["collateralNotionalUsd"])


def _max_loan(
    state: AccountState, body: Mapping[str, Any], prices: Prices, entry_of: EntryOf
) -> list[dict[str, Any]]:
    currency = body.get("borrowCcy")
    if not isinstance(currency, str) or not currency:
        raise ParameterError("borrowCcy")
    if currency not in prices:
        raise ParameterError("borrowCcy")
    extra = body.get("supCollateral") or []
    if not isinstance(extra, list):
        raise ParameterError("supCollateral")
    added: dict[str, str] = {}
    for item in extra:
        if not isinstance(item, dict) or item.get("ccy") not in prices:
            raise ParameterError("supCollateral")
        try:
            amount = Decimal(str(item.get("amt")))
        except InvalidOperation:
            raise ParameterError("supCollateral") from None
        if not amount.is_finite() or amount < 0:
            raise ParameterError("supCollateral")
        added[item["ccy"]] = plain(amount)
    order = _order(state, body.get("ordId"))
    if order is None:
        return []
    with localcontext() as ctx:
        ctx.prec = 40
        loan_usd, collateral_usd = _values(order, prices, entry_of)
        collateral_usd += value_of(added, prices) * order.collateral_ratio
        room_usd = max(collateral_usd * borrow_ltv(order) - loan_usd, Decimal(0))
        room = (room_usd / prices[currency]).quantize(Q8, rounding=ROUND_DOWN)
    return [
        {
            "borrowCcy": currency,
            "maxLoan": plain(room),
            "notionalUsd": plain(room_usd.quantize(Q8, rounding=ROUND_DOWN)),
            "remainingQuota": REMAINING_QUOTA,
        }
    ]


def _max_redeem(
    state: AccountState, params: Mapping[str, str], prices: Prices, entry_of: EntryOf
) -> list[dict[str, Any]]:
    currency = params.get("ccy")
    if currency is None:
        raise ParameterError("ccy")
    order = _order(state, params.get("ordId"))
    if order is None:
        return []
    held = Decimal(order.order.collateral.get(currency, "0"))
    amount = Decimal(0)
    if held > 0 and currency in prices:
        with localcontext() as ctx:
            ctx.prec = 40
            loan_usd, collateral_usd = _values(order, prices, entry_of)
            spare_usd = max(collateral_usd - loan_usd / borrow_ltv(order), Decimal(0))
            unit_usd = prices[currency] * order.collateral_ratio
            amount = min(held, spare_usd / unit_usd if unit_usd > 0 else held)
            amount = amount.quantize(Q8, rounding=ROUND_DOWN)
    return [{"ccy": currency, "maxRedeemAmt": plain(amount)}]
