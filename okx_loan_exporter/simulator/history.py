"""What the simulated accounts write as they live: loan-history and interest-accrued records.

Each order starts with its ``collateral_locked`` and ``borrowed`` records, and interest accrues
every simulated hour (``hour_seconds`` of the clock) at a rate per debt currency that drifts over
a simulated day. An order whose LTV reaches its liquidation LTV as the market moves (a pinned LTV
is held, even past it) is partially liquidated: part of
its collateral is sold to repay part of its debt, back down to its borrowing LTV, and a
``partial_liquidation`` record is written per collateral currency; a liquidation-cycle order is
then topped up at its next period (``collateral_locked`` and ``borrowed`` records). Records get
refIds that grow with time, as OKX's do. Functions here run with the simulator's lock held.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping
from decimal import ROUND_DOWN, Decimal, localcontext
from functools import partial

from okx_loan_exporter.simulator.accounts import Q8, plain, value_of
from okx_loan_exporter.simulator.orders import LIQUIDATION_PHASE, AccountState, OrderState

BASE_RATES: dict[str, float] = {"USDT": 0.0841, "USDC": 0.12}
"""Average APY per debt currency; others borrow at OTHER_RATE. USDC peaks near 16 %/year."""
OTHER_RATE = 0.03
_RATE_SWING = 0.35  # the rate moves +-35 % around its average over a simulated day
_HOURS_BEFORE_START = 3  # the history a new simulator already has: opened 3 hours ago


class RefIds:
    """OKX-like refIds: digit strings that grow with every record written."""

    def __init__(self, start: int = 1_800_000_000_000_000) -> None:
        self._counter = itertools.count(start)

    def next(self) -> str:
        return str(next(self._counter))


def interest_rate(currency: str, hour: int, seed: int) -> Decimal:
    """The APY of ``currency`` in simulated hour ``hour``: a daily swing plus a little noise."""
    base = BASE_RATES.get(currency, OTHER_RATE)
    phase = random.Random(f"okx-sim-rate:{seed}:{currency}").uniform(0, 2 * math.pi)
    noise = random.Random(f"okx-sim-rate:{seed}:{currency}:{hour}").gauss(0.0, 0.03)
    rate = base * (1 + _RATE_SWING * math.sin(2 * math.pi * hour / 24 + phase) + noise)
    return Decimal(repr(round(max(rate, 0.0001), 6)))


def borrow_ltv(order: OrderState) -> Decimal:
    """The LTV up to which the order may borrow or withdraw: the margin call minus its gap to
    liquidation (0.6 for 0.7 and 0.8)."""
    margin_call = Decimal(order.order.margin_call_ltv or "0.7")
    liquidation = Decimal(order.order.liquidation_ltv or "0.8")
    return max(margin_call - (liquidation - margin_call), Decimal("0.1"))


class Life:
    """Writes one simulator's records; ``prices`` and ``entry_ltv`` read the market and orders."""

    def __init__(
        self,
        *,
        refs: RefIds,
        seed: int,
        hour_seconds: float,
        period: float,
        prices: Callable[[], Mapping[str, Decimal]],
        entry_ltv: Callable[[OrderState], Decimal | None],
    ) -> None:
        self._refs = refs
        self._seed = seed
        self._hour = hour_seconds
        self._period = period
        self._prices = prices
        self._entry_ltv = entry_ltv

    def open(self, state: AccountState, epoch: float) -> None:
        """The records an account has when the simulator starts: its orders opened a few
        simulated hours ago, and the interest accrued since."""
        opened = epoch - _HOURS_BEFORE_START * self._hour
        for order in state.orders:
            for currency, amount in order.order.collateral.items():
                self._history(state, order, "collateral_locked", currency, "-" + amount, opened)
            for currency, amount in order.order.loans.items():
                self._history(state, order, "borrowed", currency, amount, opened + 1)
        for hour in range(1 - _HOURS_BEFORE_START, 1):
            self._accrue(state, hour, epoch + hour * self._hour)

    def catch_up(self, state: AccountState, epoch: float, elapsed: float) -> None:
        """Write what happened to ``state`` up to ``elapsed`` seconds after ``epoch``, in order."""
        events: list[tuple[float, Callable[[], None]]] = []
        last_hour = math.floor(elapsed / self._hour)
        for hour in range(state.hours_accrued + 1, last_hour + 1):
            events.append(
                (hour * self._hour, partial(self._accrue, state, hour, epoch + hour * self._hour))
            )
        state.hours_accrued = max(state.hours_accrued, last_hour)
        cycle = math.floor(elapsed / self._period)
        for order in state.orders:
            if not order.order.liquidation_cycle or not order.moving:
                continue
            if order.liquidated_cycle is not None and order.liquidated_cycle < cycle:
                start = cycle * self._period
                events.append((start, partial(self._top_up, state, order, epoch + start)))
            top = (cycle + LIQUIDATION_PHASE) * self._period
            if order.liquidated_cycle != cycle and elapsed >= top:
                events.append((top, partial(self._liquidate, state, order, epoch + top, cycle)))
        for _, event in sorted(events, key=lambda item: item[0]):
            event()
        now = epoch + elapsed
        for order in state.orders:
            if not order.moving or order.order.liquidation_cycle:
                continue  # a pinned LTV is held, even past liquidation, for tests and alerts
            ltv = self._entry_ltv(order)
            liquidation = order.order.liquidation_ltv
            if ltv is not None and liquidation and ltv >= Decimal(liquidation):
                self._liquidate(state, order, now, None)

    def _accrue(self, state: AccountState, hour: int, when: float) -> None:
        for order in state.orders:
            for currency, amount in order.order.loans.items():
                loan = Decimal(amount)
                if loan <= 0:
                    continue
                rate = interest_rate(currency, hour, self._seed)
                interest = (loan * rate / 8760).quantize(Q8, rounding=ROUND_DOWN)
                state.interest.append(
                    {
                        "refId": self._refs.next(),
                        "ccy": currency,
                        "loan": amount,
                        "interest": plain(interest),
                        "interestRate": plain(rate),
                        "ts": _ms(when),
                        "_ordId": order.order.order_id,
                    }
                )

    def _liquidate(
        self, state: AccountState, order: OrderState, when: float, cycle: int | None
    ) -> None:
        """Sell collateral and repay debt, proportionally, down to the order's borrowing LTV."""
        prices = self._prices()
        target = borrow_ltv(order)
        with localcontext() as ctx:
            ctx.prec = 40
            loan_usd = value_of(order.order.loans, prices)
            raw = value_of(order.order.collateral, prices)
            ltv = self._entry_ltv(order) or Decimal(order.order.liquidation_ltv)
            collateral_usd = loan_usd / ltv if ltv > 0 else raw
            if loan_usd <= 0 or collateral_usd <= 0:
                return
            sold_usd = max((loan_usd - target * collateral_usd) / (1 - target), Decimal(0))
            share = min(sold_usd / collateral_usd, Decimal(1))
            repaid = min(sold_usd / loan_usd, Decimal(1))
            for currency, amount in list(order.order.collateral.items()):
                sold = (Decimal(amount) * share).quantize(Q8, rounding=ROUND_DOWN)
                order.order.collateral[currency] = plain(Decimal(amount) - sold)
                self._history(state, order, "partial_liquidation", currency, plain(-sold), when)
            for currency, amount in list(order.order.loans.items()):
                left = (Decimal(amount) * (1 - repaid)).quantize(Q8, rounding=ROUND_DOWN)
                order.order.loans[currency] = plain(left)
        if cycle is not None:
            order.liquidated_cycle = cycle
            order.post_liquidation_ltv = target

    def _top_up(self, state: AccountState, order: OrderState, when: float) -> None:
        """The borrower restores a liquidated order: collateral back in, then borrows again."""
        collateral, loans = order.opening
        for currency, amount in collateral.items():
            added = Decimal(amount) - Decimal(order.order.collateral.get(currency, "0"))
            if added > 0:
                self._history(state, order, "collateral_locked", currency, plain(-added), when)
        for currency, amount in loans.items():
            borrowed = Decimal(amount) - Decimal(order.order.loans.get(currency, "0"))
            if borrowed > 0:
                self._history(state, order, "borrowed", currency, plain(borrowed), when + 1)
        order.order.collateral.update(collateral)
        order.order.loans.update(loans)
        order.liquidated_cycle = None
        order.post_liquidation_ltv = None

    def _history(
        self,
        state: AccountState,
        order: OrderState,
        kind: str,
        currency: str,
        amount: str,
        when: float,
    ) -> None:
        state.history.append(
            {
                "refId": self._refs.next(),
                "type": kind,
                "ccy": currency,
                "amt": amount,
                "ts": _ms(when),
                "_ordId": order.order.order_id,
            }
        )


def _ms(when: float) -> str:
    return str(math.floor(when * 1000))
