"""Accounts as they live: open orders valued at the market, pinned and cycling LTVs, the
loan-info entry of each order, faults waiting, the rate limit window and request counters."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from okx_loan_exporter.simulator.accounts import (
    Q4,
    Q8,
    SimAccount,
    SimOrder,
    plain,
    significant,
    value_of,
)

DEFAULT_MARGIN_CALL_CYCLE_SECONDS = 300.0
"""Period of a cycling order's LTV: above its margin-call LTV from 1/4 to 3/4 of each period."""
RATE_LIMIT_REQUESTS = 5
RATE_LIMIT_PERIOD_SECONDS = 2.0
INDEX_RATE_LIMIT_REQUESTS = 20
"""index-tickers: 20 requests per 2 s per IP (every client of the simulator is one IP)."""
RECORDS_KEPT = 2000
"""loan-history and interest records kept per account (the oldest go first)."""


LIQUIDATION_PHASE = 0.9
"""Fraction of its period after which a liquidation-cycle order reaches its liquidation LTV."""


def ramp_ltv(order: SimOrder, elapsed: float, period: float) -> Decimal:
    """The LTV of a liquidation-cycle order: from the margin call minus the margin-call-to-
    liquidation gap, straight up to the liquidation LTV at LIQUIDATION_PHASE of each period."""
    margin_call, liquidation = Decimal(order.margin_call_ltv), Decimal(order.liquidation_ltv)
    start = margin_call - (liquidation - margin_call)
    phase = min(1.0, ((elapsed % period) / period) / LIQUIDATION_PHASE)
    ltv = start + (liquidation - start) * Decimal(repr(phase))
    return ltv.quantize(Q4, rounding=ROUND_HALF_EVEN)


def cycle_ltv(order: SimOrder, elapsed: float, period: float) -> Decimal:
    """The LTV of a cycling order ``elapsed`` seconds after the start, to 4 decimals.

    A cosine around the margin-call LTV with half the gap to the liquidation LTV as amplitude:
    below the margin call for the first quarter of each period, above it for the middle half,
    below again for the last quarter, and never nearer liquidation than half that gap.
    """
    margin_call, liquidation = Decimal(order.margin_call_ltv), Decimal(order.liquidation_ltv)
    phase = math.cos(2.0 * math.pi * ((elapsed % period) / period))
    ltv = margin_call - (liquidation - margin_call) / 2 * Decimal(repr(phase))
    return ltv.quantize(Q4, rounding=ROUND_HALF_EVEN)


class OrderState:
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
        self.opening = (dict(order.collateral), dict(order.loans))
        """The amounts the order was opened with, which a liquidation-cycle order returns to."""
        self.liquidated_cycle: int | None = None
        """The period in which a liquidation-cycle order was last liquidated."""
        self.post_liquidation_ltv: Decimal | None = None

    def target_ltv(self, elapsed: float, period: float) -> Decimal | None:
        if not self.moving:
            return self.pinned_ltv
        if self.order.liquidation_cycle:
            if self.liquidated_cycle == math.floor(elapsed / period):
                return self.post_liquidation_ltv
            return ramp_ltv(self.order, elapsed, period)
        if self.order.margin_call_cycle:
            return cycle_ltv(self.order, elapsed, period)
        return None

    def entry(self, prices: Mapping[str, Decimal], target: Decimal | None) -> dict[str, Any]:
        """The loan-info entry at ``prices`` (keys in OKX's order); holds ``target`` if given."""
        order = self.order
        with localcontext() as ctx:
            ctx.prec = 40
            raw_collateral = value_of(order.collateral, prices)
            loan_usd = value_of(order.loans, prices).quantize(Q8, rounding=ROUND_HALF_EVEN)
            if target is not None and raw_collateral > 0 and loan_usd > 0:
                self.collateral_ratio = loan_usd / (target * raw_collateral)
            collateral_usd = (raw_collateral * self.collateral_ratio).quantize(
                Q8, rounding=ROUND_HALF_EVEN
            )
            ltv = ""
            if collateral_usd > 0:
                ltv = plain((loan_usd / collateral_usd).quantize(Q4, rounding=ROUND_HALF_EVEN))
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
                    liq_px = plain(significant(price, 8))
        entry: dict[str, Any] = {
            "collateralData": [{"amt": amt, "ccy": ccy} for ccy, amt in order.collateral.items()],
            "collateralNotionalUsd": plain(collateral_usd),
            "curLTV": ltv,
            "liqLTV": order.liquidation_ltv,
            "loanData": [{"amt": amt, "ccy": ccy} for ccy, amt in order.loans.items()],
            "loanNotionalUsd": plain(loan_usd),
            "marginCallLTV": order.margin_call_ltv,
        }
        if order.order_id:
            entry["ordId"] = order.order_id
        entry["riskWarningData"] = {"instId": inst_id, "liqPx": liq_px}
        return entry


def blank_entry() -> dict[str, Any]:
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


@dataclass
class Stats:
    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    auth_failed: int = 0
    faulted: int = 0
    shortest_interval: float | None = None
    """Fewest seconds between two loan-info requests of the account (None before the second)."""


@dataclass
class EndpointStats(Stats):
    """The counters of an endpoint other than loan-info, which also refuses parameters."""

    refused: int = 0
    """Answered with code 51000 (a parameter OKX refuses)."""
    peak_in_window: int = 0
    """The most requests accepted in any window of the rate limit (2 s)."""


class RateWindow:
    """Sliding-window log: at most ``limit`` accepted requests in any ``period`` seconds."""

    def __init__(
        self, limit: int = RATE_LIMIT_REQUESTS, period: float = RATE_LIMIT_PERIOD_SECONDS
    ) -> None:
        self._limit = limit
        self._period = period
        self._accepted: deque[float] = deque()

    @property
    def in_window(self) -> int:
        """Requests accepted in the window that ended at the last :meth:`allow`."""
        return len(self._accepted)

    def allow(self, now: float) -> bool:
        while self._accepted and self._accepted[0] <= now - self._period:
            self._accepted.popleft()
        if len(self._accepted) >= self._limit:
            return False
        self._accepted.append(now)
        return True


class AccountState:
    """Everything about one account that changes while the simulator runs (guarded by its lock)."""

    def __init__(self, account: SimAccount) -> None:
        self.account = account
        self.orders = [OrderState(order) for order in account.orders]
        self.fault: str | None = None
        self.fault_remaining: int | None = None
        self.fault_order: str | None = None
        self.latency = 0.0
        self.window = RateWindow()
        self.stats = Stats()
        self.endpoint_stats: dict[str, EndpointStats] = {}
        """Requests to the other private endpoints, by path (``stats`` is loan-info's)."""
        self.windows: dict[str, RateWindow] = {}
        """Rate limits of the other private endpoints, by path: each has its own budget."""
        self.endpoint_faults: dict[str, tuple[str, int | None]] = {}
        """Faults of the other private endpoints, by path: (fault, answers left or None)."""
        self.history: deque[dict[str, Any]] = deque(maxlen=RECORDS_KEPT)
        self.interest: deque[dict[str, Any]] = deque(maxlen=RECORDS_KEPT)
        """Records as OKX answers them plus ``"_ordId"``, oldest first (refIds ascending)."""
        self.hours_accrued = 0
        """Hours of interest written, counted from the simulator's start."""
        self.last_request: float | None = None

    def take_endpoint_fault(self, path: str) -> str | None:
        found = self.endpoint_faults.get(path)
        if found is None:
            return None
        fault, remaining = found
        if remaining is not None:
            if remaining <= 1:
                del self.endpoint_faults[path]
            else:
                self.endpoint_faults[path] = (fault, remaining - 1)
        return fault

    def count_interval(self, now: float) -> None:
        """Keep the shortest interval between two loan-info requests."""
        stats = self.stats
        if self.last_request is not None:
            interval = now - self.last_request
            if stats.shortest_interval is None or interval < stats.shortest_interval:
                stats.shortest_interval = interval
        self.last_request = now

    def order(self, order_id: str | None) -> OrderState:
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
