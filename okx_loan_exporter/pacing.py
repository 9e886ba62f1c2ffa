"""Spaces the requests to one OKX endpoint of one account: at most 1 in any window of 2 s.

OKX allows 5 requests per 2 s per endpoint and user; the exporter keeps to 1 (as loan-info's TTL
does), so that other programs on the same key, or a retry after a clock correction, still fit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

REQUESTS_PER_WINDOW = 1
WINDOW_SECONDS = 2.0
MARGIN_SECONDS = 0.2
"""Kept between the sends that bound a window: a request reaches OKX a little after it is sent,
and two that left 2 s apart may arrive closer together."""


class Pacer:
    """Hands out send times so that no ``window`` seconds hold more than ``limit`` sends."""

    def __init__(
        self,
        limit: int = REQUESTS_PER_WINDOW,
        window: float = WINDOW_SECONDS + MARGIN_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._sleep = sleep
        self._sent: list[float] = []
        """The latest ``limit`` send times, oldest first (a list: a deque's block is 600 bytes, and
        there are four pacers per account)."""

    def reserve(self) -> float:
        """Book the next free send time and return how long to wait for it (0: send now)."""
        now = self._clock()
        at = now
        if len(self._sent) == self._limit:
            at = max(now, self._sent.pop(0) + self._window)
        self._sent.append(at)
        return at - now

    def finished(self) -> None:
        """Count the latest request's window from its end: one that waited after its turn (for a
        connection of the pool, or a slot) reached OKX later than booked, and the next one must
        not arrive within the window of it."""
        if self._sent:
            self._sent[-1] = max(self._sent[-1], self._clock())

    async def wait_turn(self) -> None:
        """Wait until this caller may send; callers are served in the order they asked."""
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)
