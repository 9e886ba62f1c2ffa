"""An OKX-compatible HTTP server for the two endpoints the exporter calls, with injectable faults.

It serves ``GET /api/v5/public/time`` and the signed ``GET /api/v5/finance/flexible-loan/loan-info``
and checks what OKX checks, in OKX's order: the four auth headers, the timestamp format and its 30 s
window, the key, the passphrase, the demo-trading header and the HMAC-SHA256 signature, then the
loan-info rate limit (5 requests per 2 s per key). Answers are computed from simulated accounts
whose non-stablecoin collateral prices follow a seeded, mean-reverting random walk, so LTVs move.
Faults (HTML pages, broken JSON, OKX error codes, hangs, trickled or huge bodies, dropped
connections) are switched on per account through the Python API or the unauthenticated ``/sim/*``
control endpoints.

Used by the exporter's ``--demo`` mode, the tests and the benchmarks; :func:`main` is the
``okx-loan-exporter simulate`` subcommand. Every clock it reads is the injected ``clock``, so tests
drive the timestamp window, the rate limit and the price walk deterministically.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import random
import re
import signal
import socket
import socketserver
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = [
    "DEFAULT_MARGIN_CALL_CYCLE_SECONDS",
    "FAULTS",
    "INDEX_PRICES",
    "LOAN_INFO_PATH",
    "STABLECOINS",
    "TIME_PATH",
    "Market",
    "SimAccount",
    "SimOrder",
    "Simulator",
    "demo_accounts",
    "exporter_config_yaml",
    "generated_accounts",
    "main",
]

_log = logging.getLogger(__name__)

TIME_PATH = "/api/v5/public/time"
LOAN_INFO_PATH = "/api/v5/finance/flexible-loan/loan-info"
STABLECOINS = frozenset({"USDT", "USDC"})
"""Currencies priced at 1 USD that never walk."""

FAULTS: tuple[str, ...] = (
    "http_500_html",
    "http_200_html",
    "truncated_json",
    "invalid_json",
    "no_data",
    "missing_field",
    "null_field",
    "non_numeric",
    "nan_string",
    "huge_number",
    "negative_zero",
    "negative_amount",
    "nested_type",
    "empty_strings",
    "rate_limit",
    "busy_50001",
    "busy_50013",
    "auth_50101",
    "auth_50105",
    "auth_50110",
    "auth_50111",
    "auth_50113",
    "auth_50120",
    "slow",
    "hang",
    "slow_bytes",
    "huge_body",
    "close",
    "duplicate_order",
    "no_loan",
)
"""Every fault name :meth:`Simulator.set_fault` and ``POST /sim/accounts/<name>`` accept."""

TIMESTAMP_WINDOW_SECONDS = 30.0
RATE_LIMIT_REQUESTS = 5
RATE_LIMIT_PERIOD_SECONDS = 2.0
SLOW_FAULT_SECONDS = 3.0
SLOW_BYTES_INTERVAL_SECONDS = 0.2
HUGE_BODY_BYTES = 50 * 1024 * 1024
MAX_REQUEST_BODY_BYTES = 1024 * 1024

# OKX error codes the simulator answers: code -> (HTTP status, OKX's message).
_OKX_ERRORS: dict[str, tuple[int, str]] = {
    "50001": (503, "Service temporarily unavailable. Please try again later."),
    "50011": (
        429,
        "Rate limit reached. Please refer to API documentation and throttle requests accordingly.",
    ),
    "50013": (200, "Systems are busy. Please try again later."),
    "50101": (401, "APIKey does not match current environment."),
    "50102": (401, "Timestamp request expired."),
    "50103": (401, 'Request header "OK-ACCESS-KEY" cannot be empty.'),
    "50104": (401, 'Request header "OK-ACCESS-PASSPHRASE" cannot be empty.'),
    "50105": (401, 'Request header "OK-ACCESS-PASSPHRASE" incorrect.'),
    "50106": (401, 'Request header "OK-ACCESS-SIGN" cannot be empty.'),
    "50107": (401, 'Request header "OK-ACCESS-TIMESTAMP" cannot be empty.'),
    "50110": (401, "Invalid IP"),
    "50111": (401, "Invalid OK-ACCESS-KEY."),
    "50112": (401, "Invalid OK-ACCESS-TIMESTAMP."),
    "50113": (401, "Invalid signature."),
    "50115": (405, "Invalid request method."),
    "50120": (401, "API key doesn't have permission to use this function."),
}

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

DEFAULT_MARGIN_CALL_CYCLE_SECONDS = 300.0
"""Period of a cycling order's LTV: above its margin-call LTV from 1/4 to 3/4 of each period."""

# The walk, in log-price space around a centre: x <- x * (1 - theta) + sigma * N(0, 1) per step.
# sigma is "a few tenths of a percent" per step; the pull to the centre (stationary deviation about
# 2.8 %) keeps a demo that runs for days from drifting into liquidation or to zero.
_WALK_SIGMA = 0.004
_WALK_THETA = 0.01
_WALK_MAX_STEPWISE = 1000  # larger clock jumps use the exact n-step distribution in one draw

_Q8 = Decimal("1e-8")
_Q4 = Decimal("1e-4")
_PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?", re.ASCII)
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z", re.ASCII
)


# --------------------------------------------------------------------------------------------------
# Accounts and orders


@dataclass
class SimOrder:
    """One loan order: OKX's ``ordId``, its amounts as OKX's decimal strings, and its thresholds.

    ``order_id=""`` is an order from before OKX had orders: its entry has no ``ordId`` key (only
    valid as an account's one order). ``margin_call_cycle`` makes its LTV drift through its
    margin-call LTV and back once per period of the simulator's ``margin_call_cycle``.
    """

    order_id: str
    collateral: dict[str, str]
    loans: dict[str, str]
    margin_call_ltv: str = "0.7"
    liquidation_ltv: str = "0.8"
    margin_call_cycle: bool = False


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


def _credentials(name: str) -> dict[str, str]:
    return {
        "api_key": f"sim-{name}-key",
        "secret_key": f"sim-{name}-secret-not-a-real-okx-secret",
        "passphrase": f"sim-{name}-passphrase",
    }


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
    """
    return [
        SimAccount(
            name="btc-usdt",
            **_credentials("btc-usdt"),
            orders=[SimOrder("1001", {"BTC": "0.5"}, {"USDT": "13500"})],
        ),
        SimAccount(
            name="okx-docs-example",
            **_credentials("okx-docs-example"),
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
        SimAccount(
            name="eth-usdc",
            **_credentials("eth-usdc"),
            orders=[SimOrder("1101", {"ETH": "4.2"}, {"USDC": "7560"})],
        ),
        SimAccount(name="no-loan", **_credentials("no-loan")),
        SimAccount(
            name="demo-trading",
            **_credentials("demo-trading"),
            orders=[SimOrder("1201", {"BTC": "0.1"}, {"USDC": "1500"})],
            demo=True,
        ),
        SimAccount(
            name="two-orders",
            **_credentials("two-orders"),
            orders=[
                SimOrder("2001", {"BTC": "0.2"}, {"USDT": "4800"}),
                SimOrder(
                    "2002", {"ETH": "2", "SOL": "20"}, {"USDC": "5850"}, margin_call_cycle=True
                ),
            ],
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
            amount = amount.quantize(_Q8, rounding=ROUND_HALF_EVEN)
            collateral[ccy] = _plain(amount)
            collateral_usd += amount * price
        loan_ccy = rng.choice(("USDT", "USDC"))
        ltv = Decimal(repr(round(rng.uniform(0.2, 0.65), 4)))
        loan = (collateral_usd * ltv).quantize(Decimal("1e-4"), rounding=ROUND_HALF_EVEN)
        order = SimOrder(f"9{index:07d}", collateral, {loan_ccy: _plain(loan)})
        accounts.append(SimAccount(name=name, **_credentials(name), orders=[order]))
    return accounts


# --------------------------------------------------------------------------------------------------
# Decimal helpers


def _plain(value: Decimal) -> str:
    """A decimal as OKX writes it: no exponent, no trailing zeros, ``0`` rather than ``-0``."""
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def _significant(value: Decimal, digits: int) -> Decimal:
    if value == 0 or not value.is_finite():
        return value
    return value.quantize(
        Decimal(1).scaleb(value.adjusted() - digits + 1), rounding=ROUND_HALF_EVEN
    )


def _check_decimal(text: object, where: str, *, allow_empty: bool = False) -> None:
    if allow_empty and text == "":
        return
    if not isinstance(text, str) or not _PLAIN_DECIMAL.fullmatch(text):
        raise ValueError(f"{where}: {text!r} is not a plain non-negative decimal string")


def _value(amounts: Mapping[str, str], prices: Mapping[str, Decimal]) -> Decimal:
    """Amounts times index prices, unrounded."""
    return sum((Decimal(amt) * prices[ccy] for ccy, amt in amounts.items()), Decimal(0))


# --------------------------------------------------------------------------------------------------
# The market: one set of index prices that every order is valued from


class Market:
    """USD index prices shared by every account; non-stablecoins follow a seeded walk.

    Each currency walks with its own random stream (seeded by ``seed`` and the currency), mean
    reverting to its starting price, one step per ``walk_interval`` of the simulator's clock; so
    the prices at a given step depend only on the seed, never on which accounts exist.
    """

    def __init__(self, prices: Mapping[str, float], seed: int) -> None:
        self._prices = {ccy: Decimal(repr(float(price))) for ccy, price in prices.items()}
        self._centres = dict(self._prices)
        self._walking = sorted(ccy for ccy in self._prices if ccy not in STABLECOINS)
        self._rngs = {ccy: random.Random(f"okx-sim-walk:{seed}:{ccy}") for ccy in self._walking}
        self._step = 0

    def __contains__(self, currency: object) -> bool:
        return currency in self._prices

    def prices(self) -> dict[str, Decimal]:
        """The current index price of every currency (a copy)."""
        return dict(self._prices)

    def advance(self, step: int) -> None:
        """Walk forward to ``step`` (a no-op when the clock went back)."""
        steps = step - self._step
        if steps <= 0:
            return
        self._step = step
        keep = 1.0 - _WALK_THETA
        for ccy in self._walking:
            centre, rng = self._centres[ccy], self._rngs[ccy]
            x = math.log(float(self._prices[ccy] / centre))
            if steps <= _WALK_MAX_STEPWISE:
                for _ in range(steps):
                    x = x * keep + _WALK_SIGMA * rng.gauss(0.0, 1.0)
            else:
                decay = keep**steps
                spread = _WALK_SIGMA * math.sqrt((1.0 - decay * decay) / (1.0 - keep * keep))
                x = x * decay + spread * rng.gauss(0.0, 1.0)
            self._prices[ccy] = _significant(centre * Decimal(repr(math.exp(x))), 10)


# --------------------------------------------------------------------------------------------------
# Orders as they live: valuation, pinned and cycling LTVs, the loan-info entry


def _cycle_ltv(order: SimOrder, elapsed: float, period: float) -> Decimal:
    """The LTV of a cycling order ``elapsed`` seconds after the start, to 4 decimals.

    A cosine around the margin-call LTV with half the gap to the liquidation LTV as amplitude:
    below the margin call for the first quarter of each period, above it for the middle half,
    below again for the last quarter, and never nearer liquidation than half that gap.
    """
    margin_call, liquidation = Decimal(order.margin_call_ltv), Decimal(order.liquidation_ltv)
    phase = math.cos(2.0 * math.pi * ((elapsed % period) / period))
    ltv = margin_call - (liquidation - margin_call) / 2 * Decimal(repr(phase))
    return ltv.quantize(_Q4, rounding=ROUND_HALF_EVEN)


class _OrderState:
    """One open order and how its collateral is valued (guarded by the simulator's lock).

    The collateral's USD value is amounts x index prices x ``collateral_ratio`` (OKX's haircut: 1
    unless the LTV was pinned or cycles). A pinned order (``set_ltv``, walk off) or a cycling one
    keeps the LTV it is given by adjusting that ratio, so the shared market is never bent for one
    order and liqPx stays OKX's: the price at which the LTV would reach liqLTV.
    """

    def __init__(self, order: SimOrder) -> None:
        self.order = order
        self.collateral_ratio = Decimal(1)
        self.pinned_ltv: Decimal | None = None
        self.moving = True

    def target_ltv(self, elapsed: float, period: float) -> Decimal | None:
        if not self.moving:
            return self.pinned_ltv
        if self.order.margin_call_cycle:
            return _cycle_ltv(self.order, elapsed, period)
        return None

    def entry(self, prices: Mapping[str, Decimal], target: Decimal | None) -> dict[str, Any]:
        """The loan-info entry at ``prices`` (keys in OKX's order); holds ``target`` if given."""
        order = self.order
        with localcontext() as ctx:
            ctx.prec = 40
            raw_collateral = _value(order.collateral, prices)
            loan_usd = _value(order.loans, prices).quantize(_Q8, rounding=ROUND_HALF_EVEN)
            if target is not None and raw_collateral > 0 and loan_usd > 0:
                self.collateral_ratio = loan_usd / (target * raw_collateral)
            collateral_usd = (raw_collateral * self.collateral_ratio).quantize(
                _Q8, rounding=ROUND_HALF_EVEN
            )
            ltv = ""
            if collateral_usd > 0:
                ltv = _plain((loan_usd / collateral_usd).quantize(_Q4, rounding=ROUND_HALF_EVEN))
            inst_id = liq_px = ""
            if len(order.collateral) == 1 and len(order.loans) == 1:
                (coll_ccy, coll_amt), (loan_ccy, loan_amt) = (
                    next(iter(order.collateral.items())),
                    next(iter(order.loans.items())),
                )
                inst_id = f"{coll_ccy}-{loan_ccy}"
                liq_ltv = Decimal(order.liquidation_ltv or 0)
                if Decimal(coll_amt) > 0 and liq_ltv > 0:
                    # loan_amt / (coll_amt * price * ratio) = liqLTV, the price in the loan currency
                    price = Decimal(loan_amt) / (
                        Decimal(coll_amt) * self.collateral_ratio * liq_ltv
                    )
                    liq_px = _plain(_significant(price, 8))
        entry: dict[str, Any] = {
            "collateralData": [{"amt": amt, "ccy": ccy} for ccy, amt in order.collateral.items()],
            "collateralNotionalUsd": _plain(collateral_usd),
            "curLTV": ltv,
            "liqLTV": order.liquidation_ltv,
            "loanData": [{"amt": amt, "ccy": ccy} for ccy, amt in order.loans.items()],
            "loanNotionalUsd": _plain(loan_usd),
            "marginCallLTV": order.margin_call_ltv,
        }
        if order.order_id:
            entry["ordId"] = order.order_id
        entry["riskWarningData"] = {"instId": inst_id, "liqPx": liq_px}
        return entry


def _blank_entry() -> dict[str, Any]:
    """An entry for a body fault on an account without a loan (so the fault still shows)."""
    return {
        "collateralData": [],
        "collateralNotionalUsd": "0",
        "curLTV": "",
        "liqLTV": "0.8",
        "loanData": [],
        "loanNotionalUsd": "0",
        "marginCallLTV": "0.7",
        "riskWarningData": {"instId": "", "liqPx": ""},
    }


# --------------------------------------------------------------------------------------------------
# Per-account mutable state: open orders, faults, latency, rate window, counters


@dataclass
class _Stats:
    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    auth_failed: int = 0
    faulted: int = 0


class _RateWindow:
    """Sliding-window log: at most ``limit`` accepted requests in any ``period`` seconds."""

    def __init__(
        self, limit: int = RATE_LIMIT_REQUESTS, period: float = RATE_LIMIT_PERIOD_SECONDS
    ) -> None:
        self._limit = limit
        self._period = period
        self._accepted: deque[float] = deque()

    def allow(self, now: float) -> bool:
        while self._accepted and self._accepted[0] <= now - self._period:
            self._accepted.popleft()
        if len(self._accepted) >= self._limit:
            return False
        self._accepted.append(now)
        return True


class _AccountState:
    """Everything about one account that changes while the simulator runs (guarded by its lock)."""

    def __init__(self, account: SimAccount) -> None:
        self.account = account
        self.orders = [_OrderState(order) for order in account.orders]
        self.fault: str | None = None
        self.fault_remaining: int | None = None
        self.fault_order: str | None = None
        self.latency = 0.0
        self.window = _RateWindow()
        self.stats = _Stats()

    def order(self, order_id: str | None) -> _OrderState:
        """The open order ``order_id``; None is the first open order."""
        for state in self.orders:
            if order_id is None or state.order.order_id == order_id:
                return state
        if order_id is None:
            raise ValueError(f"account {self.account.name!r} has no loan order")
        raise KeyError(f"account {self.account.name!r} has no open order {order_id!r}")

    def close(self, order_id: str | None) -> None:
        """Remove an order, as when it is repaid: it leaves loan-info's answer."""
        self.orders.remove(self.order(order_id))

    def take_fault(self) -> str | None:
        fault = self.fault
        if fault is not None and self.fault_remaining is not None:
            self.fault_remaining -= 1
            if self.fault_remaining <= 0:
                self.fault, self.fault_remaining = None, None
        return fault


# --------------------------------------------------------------------------------------------------
# OKX authentication


def _parse_timestamp(text: str) -> float | None:
    """Seconds since the epoch for ``2020-12-08T09:08:57.715Z``; None for any other format."""
    if not _TIMESTAMP.fullmatch(text):
        return None
    try:
        when = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return when.timestamp()


def _raw(text: str) -> bytes:
    """The bytes a header value or request target arrived as (http.server decodes latin-1)."""
    return text.encode("latin-1", "replace")


def _auth_error(
    headers: Mapping[str, str],
    method: str,
    target: str,
    body: bytes,
    now: float,
    accounts_by_key: Mapping[str, SimAccount],
) -> str | None:
    """The OKX error code for a signed request, checked in OKX's order; None when it is valid."""
    key = headers.get("OK-ACCESS-KEY") or ""
    passphrase = headers.get("OK-ACCESS-PASSPHRASE") or ""
    sign = headers.get("OK-ACCESS-SIGN") or ""
    timestamp = headers.get("OK-ACCESS-TIMESTAMP") or ""
    if not key:
        return "50103"
    if not passphrase:
        return "50104"
    if not sign:
        return "50106"
    if not timestamp:
        return "50107"
    when = _parse_timestamp(timestamp)
    if when is None:
        return "50112"
    if abs(when - now) > TIMESTAMP_WINDOW_SECONDS:
        return "50102"
    account = accounts_by_key.get(key)
    if account is None:
        return "50111"
    if not hmac.compare_digest(_raw(passphrase), account.passphrase.encode()):
        return "50105"
    simulated = (headers.get("x-simulated-trading") or "").strip() == "1"
    if simulated != account.demo:
        return "50101"
    prehash = _raw(timestamp) + method.encode() + _raw(target) + body
    digest = hmac.new(account.secret_key.encode(), prehash, hashlib.sha256).digest()
    if not hmac.compare_digest(_raw(sign), base64.b64encode(digest)):
        return "50113"
    return None


# --------------------------------------------------------------------------------------------------
# Replies and faults


@dataclass
class _Reply:
    """What the handler sends. ``action``: send, close, hang, trickle (slow_bytes) or stream."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    action: str = "send"
    delay: float = 0.0
    chunks: Callable[[], Iterator[bytes]] | None = None
    length: int = 0


def _json_bytes(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _okx_error(code: str, status: int | None = None) -> _Reply:
    default_status, message = _OKX_ERRORS[code]
    return _Reply(
        status=default_status if status is None else status,
        body=_json_bytes({"code": code, "msg": message, "data": []}),
    )


def _okx_ok(data: list[Any]) -> _Reply:
    return _Reply(body=_json_bytes({"code": "0", "data": data, "msg": ""}))


def _control_reply(status: int, document: object) -> _Reply:
    return _Reply(status=status, body=_json_bytes(document))


_HTML_500 = (
    b"<html>\r\n<head><title>500 Internal Server Error</title></head>\r\n<body>\r\n"
    b"<center><h1>500 Internal Server Error</h1></center>\r\n</body>\r\n</html>\r\n"
)
_HTML_200 = (
    b"<!DOCTYPE html><html><head><title>OKX | System maintenance</title></head>"
    b"<body><h1>We are upgrading our system</h1><p>Please come back later.</p></body></html>"
)

_ERROR_FAULTS = {
    "rate_limit": "50011",
    "busy_50001": "50001",
    "busy_50013": "50013",
    "auth_50101": "50101",
    "auth_50105": "50105",
    "auth_50110": "50110",
    "auth_50111": "50111",
    "auth_50113": "50113",
    "auth_50120": "50120",
}


def _edit_entry(fault: str, entry: dict[str, Any]) -> None:
    """Apply one of the faults that spoil a field of the entry, in place."""
    if fault == "missing_field":
        del entry["curLTV"]
    elif fault == "null_field":
        entry["curLTV"] = None
    elif fault == "non_numeric":
        entry["curLTV"] = "abc"
    elif fault == "nan_string":
        entry["curLTV"] = "NaN"
    elif fault == "huge_number":
        entry["curLTV"] = "1e400"
    elif fault == "negative_zero":
        entry["loanNotionalUsd"] = "-0"
    elif fault == "negative_amount":
        if entry["collateralData"]:
            entry["collateralData"][0]["amt"] = "-1"
        else:
            entry["collateralData"].append({"amt": "-1", "ccy": "BTC"})
    elif fault == "nested_type":
        entry["curLTV"] = {"value": entry["curLTV"]}
    elif fault == "empty_strings":
        entry["curLTV"] = entry["marginCallLTV"] = entry["liqLTV"] = ""
    else:  # pragma: no cover - guarded by the caller
        raise AssertionError(fault)


def _huge_reply(data: list[dict[str, Any]], target: int) -> _Reply:
    """A valid loan-info answer padded to exactly HUGE_BODY_BYTES, produced chunk by chunk."""
    marker = "@@PADDING@@"
    padded = [dict(entry) for entry in data]
    padded[target]["padding"] = marker
    text = json.dumps({"code": "0", "data": padded, "msg": ""}, separators=(",", ":"))
    prefix, _, suffix = text.partition(marker)
    head, tail = prefix.encode(), suffix.encode()
    padding = HUGE_BODY_BYTES - len(head) - len(tail)

    def chunks() -> Iterator[bytes]:
        yield head
        block = b"x" * (1024 * 1024)
        left = padding
        while left > 0:
            piece = block if left >= len(block) else block[:left]
            left -= len(piece)
            yield piece
        yield tail

    return _Reply(action="stream", chunks=chunks, length=HUGE_BODY_BYTES)


def _fault_reply(fault: str, data: list[dict[str, Any]], order_id: str | None) -> _Reply:
    """The answer ``fault`` makes of ``data`` (the entries the request asked for).

    Faults that spoil an entry spoil the order ``order_id`` (the first entry when None or not in
    ``data``); with no entry at all they spoil a blank one, so the fault still shows.
    """
    if fault == "http_500_html":
        return _Reply(status=500, body=_HTML_500, content_type="text/html")
    if fault == "http_200_html":
        return _Reply(status=200, body=_HTML_200, content_type="text/html; charset=utf-8")
    if fault in _ERROR_FAULTS:
        return _okx_error(_ERROR_FAULTS[fault])
    if fault == "no_loan":
        return _okx_ok([])
    if fault == "close":
        return _Reply(action="close")
    if fault == "hang":
        return _Reply(action="hang")
    if fault == "no_data":
        return _Reply(body=_json_bytes({"code": "0", "msg": ""}))
    if fault == "slow":
        reply = _okx_ok(data)
        reply.delay = SLOW_FAULT_SECONDS
        return reply
    if fault == "slow_bytes":
        reply = _okx_ok(data)
        reply.action = "trickle"
        return reply
    if fault in ("truncated_json", "invalid_json"):
        full = _okx_ok(data).body
        if fault == "truncated_json":
            return _Reply(body=full[: len(full) // 2])
        return _Reply(body=b"{'code': '0', data: [" + full[30:60] + b",]")
    spoiled = copy.deepcopy(data) or [_blank_entry()]
    target = next((i for i, entry in enumerate(spoiled) if entry.get("ordId", "") == order_id), 0)
    if fault == "duplicate_order":
        # The target order twice with different values: the two cannot be told apart.
        spoiled.insert(target + 1, {**spoiled[target], "curLTV": "0.1234"})
        return _okx_ok(spoiled)
    if fault == "huge_body":
        return _huge_reply(spoiled, target)
    _edit_entry(fault, spoiled[target])
    return _okx_ok(spoiled)


# --------------------------------------------------------------------------------------------------
# The simulator


class Simulator:
    """The OKX simulator: accounts, their orders, the market, faults and an HTTP server.

    ``clock`` is every clock the simulator reads (timestamp window, rate limit, price walk, LTV
    cycle); ``clock_skew`` seconds are added to it for what OKX calls its time (public/time and the
    30 s window). ``latency`` delays every loan-info answer; ``walk_interval`` is the clock time
    between two steps of the price walk; ``margin_call_cycle`` is the period in seconds of the
    orders whose LTV cycles through their margin call. ``prices`` are the market's starting index
    prices (default :data:`INDEX_PRICES`). ``accounts=None`` means :func:`demo_accounts`.
    """

    def __init__(
        self,
        accounts: Sequence[SimAccount] | None = None,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        clock_skew: float = 0.0,
        latency: float = 0.0,
        walk_interval: float = 1.0,
        margin_call_cycle: float = DEFAULT_MARGIN_CALL_CYCLE_SECONDS,
        prices: Mapping[str, float] | None = None,
    ) -> None:
        if not walk_interval > 0:
            raise ValueError(f"walk_interval must be > 0 seconds, got {walk_interval}")
        if not 0 < margin_call_cycle < math.inf:
            raise ValueError(f"margin_call_cycle must be > 0 seconds, got {margin_call_cycle}")
        if latency < 0:
            raise ValueError(f"latency must be >= 0 seconds, got {latency}")
        self._prices = _validated_prices(INDEX_PRICES if prices is None else prices)
        chosen = demo_accounts() if accounts is None else list(accounts)
        self._accounts = [_validated_copy(account, self._prices) for account in chosen]
        self._by_name: dict[str, SimAccount] = {}
        self._by_key: dict[str, SimAccount] = {}
        for account in self._accounts:
            if account.name in self._by_name:
                raise ValueError(f"two simulator accounts are named {account.name!r}")
            if account.api_key in self._by_key:
                raise ValueError(f"account {account.name!r} reuses another account's api_key")
            self._by_name[account.name] = account
            self._by_key[account.api_key] = account
        self._seed = seed
        self._clock = clock
        self._walk_interval = walk_interval
        self._cycle = float(margin_call_cycle)
        self._initial_skew = float(clock_skew)
        self._initial_latency = float(latency)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self._reset_state()

    # -- state (called with the lock held) ---------------------------------------------------------

    def _reset_state(self) -> None:
        self._epoch = self._clock()
        self._skew = self._initial_skew
        self._latency = self._initial_latency
        self._time_requests = 0
        self._unattributed = 0
        self._market = Market(self._prices, self._seed)
        self._states = {a.name: _AccountState(copy.deepcopy(a)) for a in self._accounts}

    def _now_prices(self) -> tuple[dict[str, Decimal], float]:
        """The market moved to the clock's step, and the seconds since the start."""
        elapsed = self._clock() - self._epoch
        self._market.advance(math.floor(elapsed / self._walk_interval))
        return self._market.prices(), elapsed

    def _entries(self, state: _AccountState) -> list[dict[str, Any]]:
        prices, elapsed = self._now_prices()
        return [
            order.entry(prices, order.target_ltv(elapsed, self._cycle)) for order in state.orders
        ]

    def _state(self, name: str) -> _AccountState:
        try:
            return self._states[name]
        except KeyError:
            raise KeyError(f"no simulator account named {name!r}") from None

    def _view(self, state: _AccountState, order_id: str | None) -> dict[str, Any]:
        """The control API's view of an account; ``ltv`` and ``walk`` are of the chosen order."""
        entries = self._entries(state)
        orders = [
            {
                "order": order.order.order_id,
                "ltv": entry["curLTV"],
                "walk": order.moving,
                "cycle": order.order.margin_call_cycle,
            }
            for order, entry in zip(state.orders, entries, strict=True)
        ]
        chosen = next((o for o in orders if order_id in (None, o["order"])), None)
        currencies = {c for o in state.orders for c in (*o.order.collateral, *o.order.loans)}
        market = self._market.prices()
        return {
            "name": state.account.name,
            "order": chosen["order"] if chosen else None,
            "ltv": chosen["ltv"] if chosen else None,
            "walk": chosen["walk"] if chosen else True,
            "orders": orders,
            "prices": {ccy: _plain(market[ccy]) for ccy in sorted(currencies)},
            "fault": state.fault,
            "fault_count": state.fault_remaining,
            "latency": state.latency,
        }

    # -- public API -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the running server."""
        if self._base_url is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return self._base_url

    @property
    def accounts(self) -> list[SimAccount]:
        """Copies of the accounts with their open orders (changing a copy does nothing)."""
        with self._lock:
            return [
                dataclasses.replace(
                    state.account, orders=[copy.deepcopy(o.order) for o in state.orders]
                )
                for state in self._states.values()
            ]

    @property
    def prices(self) -> dict[str, float]:
        """The market's index prices (USD) now: what every order is valued from."""
        with self._lock:
            prices, _ = self._now_prices()
        return {ccy: float(price) for ccy, price in prices.items()}

    def set_fault(
        self, account: str, fault: str | None, count: int | None = None, order: str | None = None
    ) -> None:
        """Make the next ``count`` loan-info answers to ``account`` (all if None) show ``fault``.

        A fault that spoils an entry spoils the entry of ``order`` (None: the first).
        """
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known faults: {', '.join(FAULTS)}")
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 1
        ):
            raise ValueError(f"fault count must be a positive integer or None, got {count!r}")
        with self._lock:
            state = self._state(account)
            if order is not None:
                state.order(order)
            state.fault = fault
            state.fault_remaining = count if fault is not None else None
            state.fault_order = order

    def set_ltv(self, account: str, ltv: float, order: str | None = None) -> None:
        """Hold ``order``'s curLTV (None: the first order) at ``ltv`` to 4 decimals.

        The order's collateral valuation is adjusted (not the shared market) and its LTV stops
        following the market or its cycle until :meth:`set_walk` turns it back on.
        """
        if isinstance(ltv, bool) or not isinstance(ltv, int | float) or not 0 < ltv < math.inf:
            raise ValueError(f"ltv must be a number > 0, got {ltv!r}")
        with self._lock:
            state = self._state(account)
            chosen = state.order(order)
            prices, _ = self._now_prices()
            if _value(chosen.order.loans, prices) <= 0:
                raise ValueError(f"account {account!r} has no loan, so it has no LTV to set")
            if _value(chosen.order.collateral, prices) <= 0:
                raise ValueError(f"account {account!r} has no collateral to reprice")
            chosen.pinned_ltv = Decimal(repr(float(ltv)))
            chosen.moving = False

    def set_walk(self, account: str, enabled: bool, order: str | None = None) -> None:
        """Let ``order``'s LTV (None: the first order) follow the market and its cycle, or hold
        it where it stands; it resumes from where it stands."""
        with self._lock:
            state = self._state(account)
            chosen = state.order(order)
            prices, elapsed = self._now_prices()
            entry = chosen.entry(prices, chosen.target_ltv(elapsed, self._cycle))
            if enabled:
                chosen.moving, chosen.pinned_ltv = True, None
            elif chosen.moving:
                chosen.moving = False
                chosen.pinned_ltv = Decimal(entry["curLTV"]) if entry["curLTV"] else None

    def close_order(self, account: str, order: str | None = None) -> None:
        """Close ``order`` (None: the first), as when it is repaid: it leaves loan-info."""
        with self._lock:
            self._state(account).close(order)

    def set_latency(self, seconds: float, account: str | None = None) -> None:
        """Delay every loan-info answer (``account=None``) or the answers to one account."""
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not (0 <= seconds < math.inf)
        ):
            raise ValueError(f"latency must be a number of seconds >= 0, got {seconds!r}")
        with self._lock:
            if account is None:
                self._latency = float(seconds)
            else:
                self._state(account).latency = float(seconds)

    def set_clock_skew(self, seconds: float) -> None:
        """Put the simulator's clock (public/time and the 30 s window) ``seconds`` ahead."""
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
        ):
            raise ValueError(f"clock_skew must be a number of seconds, got {seconds!r}")
        with self._lock:
            self._skew = float(seconds)

    def stats(self) -> dict[str, Any]:
        """Request counters: the same document as ``GET /sim/stats``."""
        with self._lock:
            return {
                "accounts": {
                    name: dataclasses.asdict(state.stats) for name, state in self._states.items()
                },
                "time_requests": self._time_requests,
                "unattributed_requests": self._unattributed,
            }

    def reset(self) -> None:
        """Back to the state after construction: faults, counters, latency, skew, rate windows,
        prices, walks, cycles and closed orders."""
        with self._lock:
            self._reset_state()

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port) from a daemon thread; return the base URL."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        server_class = _Server6 if ":" in host else _Server
        server = server_class((host, port), _Handler, self)
        bound_host, bound_port = server.server_address[:2]
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bound_host, bound_host)
        shown = f"[{shown}]" if ":" in shown else shown
        self._base_url = f"http://{shown}:{bound_port}"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="okx-simulator",
            daemon=True,
        )
        self._thread.start()
        _log.debug("OKX simulator serving %d accounts on %s", len(self._accounts), self._base_url)
        return self._base_url

    def stop(self) -> None:
        """Stop serving and drop every open connection (hanging ones too); quick and idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=1.0)
        self._server = self._thread = None
        self._base_url = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- request handling (called from handler threads) ---------------------------------------

    def _public_time(self) -> _Reply:
        with self._lock:
            self._time_requests += 1
            now = self._clock() + self._skew
        return _okx_ok([{"ts": str(math.floor(now * 1000))}])

    def _loan_info(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> _Reply:
        if method != "GET":
            return _okx_error("50115")
        account = self._by_key.get(headers.get("OK-ACCESS-KEY") or "")
        with self._lock:
            now = self._clock()
            skew = self._skew
            delay = self._latency
        error = _auth_error(headers, method, target, body, now + skew, self._by_key)
        with self._lock:
            if account is None:
                self._unattributed += 1
                reply = _okx_error(error or "50111")
                reply.delay = delay
                return reply
            state = self._states[account.name]
            stats = state.stats
            stats.requests += 1
            delay += state.latency
            if error is not None:
                stats.auth_failed += 1
                reply = _okx_error(error)
            elif not state.window.allow(now):
                stats.rate_limited += 1
                reply = _okx_error("50011")
            else:
                data = _only_order(self._entries(state), _order_filter(target))
                fault = state.take_fault()
                if fault is not None:
                    stats.faulted += 1
                    reply = _fault_reply(fault, data, state.fault_order)
                else:
                    stats.ok += 1
                    reply = _okx_ok(data)
        reply.delay += delay
        return reply

    def _control(self, method: str, path: str, body: bytes) -> _Reply:
        """The /sim/* endpoints: GET reads (stats, an account, the config), POST changes."""
        account = (
            unquote(path.removeprefix("/sim/accounts/"))
            if path.startswith("/sim/accounts/")
            else None
        )
        if path not in ("/sim/stats", "/sim/reset", "/sim/config") and not account:
            return _control_reply(404, {"error": f"no control endpoint {path}"})
        allowed = {"/sim/stats": "GET", "/sim/reset": "POST"}.get(path, "GET or POST")
        if method not in allowed.split(" or "):
            return _control_reply(405, {"error": f"use {allowed} {path}"})
        try:
            document = _json_object(body) if method == "POST" else {}
            if path == "/sim/stats":
                return _control_reply(200, self.stats())
            if path == "/sim/reset":
                self.reset()
                return _control_reply(200, {"ok": True})
            if path == "/sim/config":
                return _control_reply(200, self._control_config(document))
            return _control_reply(200, self._control_account(str(account), document))
        except KeyError as exc:
            return _control_reply(404, {"error": str(exc.args[0]) if exc.args else "not found"})
        except ValueError as exc:
            return _control_reply(400, {"error": str(exc)})

    def _control_config(self, document: dict[str, Any]) -> dict[str, Any]:
        _only_keys(document, {"clock_skew", "latency"})
        skew = document.get("clock_skew")
        latency = document.get("latency")
        if skew is not None:
            _number(skew, "clock_skew")
        if latency is not None:
            _number(latency, "latency")
        if skew is not None:
            self.set_clock_skew(skew)
        if latency is not None:
            self.set_latency(latency)
        with self._lock:
            return {"clock_skew": self._skew, "latency": self._latency}

    def _control_account(self, name: str, document: dict[str, Any]) -> dict[str, Any]:
        """``POST /sim/accounts/<name>``: every change is checked before any is made."""
        _only_keys(document, {"order", "ltv", "walk", "fault", "fault_count", "latency", "close"})
        order = document.get("order")
        if order is not None and not isinstance(order, str):
            raise ValueError("'order' must be an ordId string")
        with self._lock:
            state = self._state(name)
            current_fault = state.fault
            if "ltv" in document or "walk" in document or "close" in document or order:
                state.order(order)  # the order must exist: KeyError (404) or ValueError (400)
        if "ltv" in document:
            _number(document["ltv"], "ltv")
        if "walk" in document and not isinstance(document["walk"], bool):
            raise ValueError("'walk' must be true or false")
        if "close" in document and document["close"] is not True:
            raise ValueError("'close' must be true (closing cannot be undone, but /sim/reset can)")
        if "close" in document and ("ltv" in document or "walk" in document):
            raise ValueError("'close' cannot be combined with 'ltv' or 'walk'")
        if "latency" in document:
            _number(document["latency"], "latency")
        fault = document.get("fault", current_fault)
        count = document.get("fault_count")
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known faults: {', '.join(FAULTS)}")
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 1
        ):
            raise ValueError("'fault_count' must be a positive integer or null")
        if "ltv" in document:
            self.set_ltv(name, document["ltv"], order)
        if "walk" in document:
            self.set_walk(name, document["walk"], order)
        if "fault" in document or "fault_count" in document:
            self.set_fault(name, fault, count, order)
        if "latency" in document:
            self.set_latency(document["latency"], name)
        if "close" in document:
            self.close_order(name, order)
            order = None
        with self._lock:
            return self._view(state, order)


def _order_filter(target: str) -> str | None:
    """The ``ordId`` query parameter of a request target; empty counts as absent, as on OKX."""
    values = parse_qs(urlsplit(target).query, keep_blank_values=True).get("ordId", [])
    return values[-1] if values and values[-1] else None


def _only_order(entries: list[dict[str, Any]], order_id: str | None) -> list[dict[str, Any]]:
    """The entries the ``ordId`` filter asks for: all without one, none for an unknown order."""
    if order_id is None:
        return entries
    return [entry for entry in entries if entry.get("ordId") == order_id]


def _validated_prices(prices: Mapping[str, float]) -> dict[str, float]:
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


def _validated_copy(account: SimAccount, prices: Mapping[str, float]) -> SimAccount:
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
                _check_decimal(amount, f"{here}: {kind}[{ccy!r}]")
                if ccy not in prices:
                    raise ValueError(f"{here}: no price for {ccy!r} in the simulator's market")
        if order.loans and not any(Decimal(a) > 0 for a in order.collateral.values()):
            raise ValueError(f"{here}: a loan needs some collateral")
        _check_decimal(order.margin_call_ltv, f"{here}: margin_call_ltv", allow_empty=True)
        _check_decimal(order.liquidation_ltv, f"{here}: liquidation_ltv", allow_empty=True)
        if order.margin_call_cycle and not (
            order.margin_call_ltv
            and order.liquidation_ltv
            and Decimal(order.margin_call_ltv) < Decimal(order.liquidation_ltv)
        ):
            raise ValueError(f"{here}: a cycling order needs margin_call_ltv < liquidation_ltv")
    return copy.deepcopy(account)


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("the body must be a JSON object")
    return document


def _only_keys(document: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise ValueError(f"unknown keys {unknown}; allowed: {sorted(allowed)}")


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name!r} must be a number")
    return float(value)


# --------------------------------------------------------------------------------------------------
# HTTP server and handler


class _Server(ThreadingHTTPServer):
    """Thread per connection; remembers open connections so stop() can drop hanging ones."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], sim: Simulator
    ) -> None:
        self.simulator = sim
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() would resolve the host name (getfqdn), which can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("simulator connection from %s failed", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, asks the Simulator for a _Reply, and carries it out."""

    protocol_version = "HTTP/1.1"
    server_version = "okx-simulator"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 300  # idle keep-alive connections are closed after this
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("simulator %s " + format, self.client_address[0], *args)

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            self._send(_control_reply(411, {"error": "send a Content-Length"}))
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_REQUEST_BODY_BYTES:
            self.close_connection = True
            self._send(_control_reply(400, {"error": "bad Content-Length"}))
            return None
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            return
        sim = self.server.simulator
        path = urlsplit(self.path).path
        if path == TIME_PATH:
            reply = sim._public_time()
        elif path == LOAN_INFO_PATH:
            reply = sim._loan_info(self.command, self.path, self.headers, body)
        elif path.startswith("/sim/"):
            reply = sim._control(self.command, path, body)
        else:
            reply = _Reply(
                status=404, body=_json_bytes({"code": "404", "msg": "Not Found", "data": []})
            )
        try:
            self._send(reply)
        except OSError:
            self.close_connection = True  # the client went away; nothing more to do

    def _send(self, reply: _Reply) -> None:
        stopping = self.server.stopping
        if reply.delay > 0 and stopping.wait(reply.delay):
            self.close_connection = True
            return
        if reply.action == "close":
            self.close_connection = True
            return
        if reply.action == "hang":
            stopping.wait()
            self.close_connection = True
            return
        if reply.action == "trickle":
            self._trickle(reply)
            return
        length = reply.length if reply.action == "stream" else len(reply.body)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if reply.action == "stream" and reply.chunks is not None:
            for chunk in reply.chunks():
                if stopping.is_set():
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
        else:
            self.wfile.write(reply.body)

    def _trickle(self, reply: _Reply) -> None:
        """The whole answer, status line included, one byte every SLOW_BYTES_INTERVAL_SECONDS."""
        self.close_connection = True
        self.log_request(reply.status)
        head = (
            f"HTTP/1.1 {reply.status} OK\r\nServer: {self.server_version}\r\n"
            f"Content-Type: {reply.content_type}\r\nContent-Length: {len(reply.body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        for byte in head + reply.body:
            self.wfile.write(bytes((byte,)))
            if self.server.stopping.wait(SLOW_BYTES_INTERVAL_SECONDS):
                return


# --------------------------------------------------------------------------------------------------
# Exporter configuration and the `simulate` subcommand


def exporter_config_yaml(sim_base_url: str, accounts: Sequence[SimAccount], **settings: Any) -> str:
    """An exporter config file (YAML) for ``accounts`` with ``base_url`` pointing at the simulator.

    Keyword arguments set or override the global keys (``cache_ttl="2s"``, ``max_stale``,
    ``timeout``, or any other global the exporter accepts).
    """
    for reserved in ("base_url", "accounts"):
        if reserved in settings:
            raise TypeError(f"exporter_config_yaml() sets {reserved!r} itself")
    document: dict[str, Any] = {"cache_ttl": "10s", "max_stale": "5m", "timeout": "5s"}
    document.update(settings)
    document["base_url"] = sim_base_url
    document["accounts"] = [
        {
            "name": account.name,
            "api_key": account.api_key,
            "secret_key": account.secret_key,
            "passphrase": account.passphrase,
            "demo": account.demo,
        }
        for account in accounts
    ]
    header = (
        "# okx-loan-exporter configuration for the built-in OKX simulator.\n"
        "# The credentials are fake: they only work against the simulator.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def _write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (it holds secrets, fake or not)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".okx-sim-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _listen_address(text: str) -> tuple[str, int]:
    host, separator, port = text.rpartition(":")
    if not separator or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8855)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    """``300``, ``20s``, ``5m``, ``1.5h``: a positive number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"] if match else 0.0
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration > 0 (e.g. 20s or 5m)")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="okx-loan-exporter simulate",
        description="Run an OKX-compatible simulator of public/time and flexible-loan/loan-info "
        "with fake accounts, for demos and tests. Serves until SIGTERM or SIGINT.",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        type=_listen_address,
        default="127.0.0.1:8855",
        metavar="HOST:PORT",
        help="address to listen on (default: 127.0.0.1:8855; port 0 picks a free port)",
    )
    parser.add_argument(
        "--accounts-generate",
        dest="generate",
        type=_positive_int,
        metavar="N",
        help="serve N generated accounts acct-0001... instead of the demo accounts",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the price walk (default 0)")
    parser.add_argument(
        "--latency",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="extra delay before every loan-info answer (default 0)",
    )
    parser.add_argument(
        "--margin-call-cycle",
        dest="margin_call_cycle",
        type=_duration,
        default=DEFAULT_MARGIN_CALL_CYCLE_SECONDS,
        metavar="DURATION",
        help="period of the demo order whose LTV drifts through its margin call and back "
        "(two-orders, order 2002; default 5m: above the margin call from 1m15s to 3m45s)",
    )
    parser.add_argument(
        "--write-exporter-config",
        dest="exporter_config",
        metavar="PATH",
        help="write an exporter config for the simulated accounts to PATH (mode 0600)",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        choices=("debug", "info", "warn", "error"),
        default="info",
        help="log level (default info)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``okx-loan-exporter simulate``: serve until SIGTERM/SIGINT; 0 on a clean stop, 2 on bad
    flags, 1 when the address cannot be bound or the config cannot be written."""
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse has printed the usage and the error
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    level = {"warn": "WARNING"}.get(args.log_level, args.log_level.upper())
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    accounts = generated_accounts(args.generate, args.seed) if args.generate else demo_accounts()
    simulator = Simulator(
        accounts, seed=args.seed, latency=args.latency, margin_call_cycle=args.margin_call_cycle
    )
    host, port = args.listen_address
    try:
        base_url = simulator.start(host, port)
    except OSError as exc:
        print(
            f"okx-loan-exporter simulate: cannot listen on {host}:{port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    stop_requested = threading.Event()
    previous: dict[int, Any] = {}
    try:
        if args.exporter_config:
            try:
                _write_private(args.exporter_config, exporter_config_yaml(base_url, accounts))
            except OSError as exc:
                print(
                    f"okx-loan-exporter simulate: cannot write {args.exporter_config}: "
                    f"{exc.strerror or exc}",
                    file=sys.stderr,
                )
                return 1
            _log.info(
                "wrote an exporter config for %d accounts to %s",
                len(accounts),
                args.exporter_config,
            )

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop_requested.set()

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, request_stop)
        print(f"OKX simulator listening on {base_url}", flush=True)
        # A short sleep rather than Event.wait(): a signal handler that sets an Event while the
        # main thread is inside Event.wait() can deadlock on the Event's own lock.
        while not stop_requested.is_set():
            time.sleep(0.1)
        _log.info("stopping the OKX simulator")
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        simulator.stop()


if __name__ == "__main__":
    raise SystemExit(main())
