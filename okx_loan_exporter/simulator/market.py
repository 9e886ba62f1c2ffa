"""The market: one set of USD index prices, shared by every account, that walks with the clock."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from decimal import Decimal

from okx_loan_exporter.simulator.accounts import STABLECOINS, significant

# The walk, in log-price space around a centre: x <- x * (1 - theta) + sigma * N(0, 1) per step.
# sigma is "a few tenths of a percent" per step; the pull to the centre (stationary deviation about
# 2.8 %) keeps a demo that runs for days from drifting into liquidation or to zero.
_WALK_SIGMA = 0.004
_WALK_THETA = 0.01
_WALK_MAX_STEPWISE = 1000  # larger clock jumps use the exact n-step distribution in one draw


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
            self._prices[ccy] = significant(centre * Decimal(repr(math.exp(x))), 10)
