"""Per-account tallies of the requests sent to OKX: counts by outcome and a duration histogram.

The OKX client reports into :class:`RequestStats` through its ``on_request`` callback; the collector
reads a consistent :class:`RequestStatsSnapshot`. Nothing here knows about Prometheus.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

from okx_loan_exporter.okx import FailureReason

DURATION_BUCKETS: tuple[float, ...] = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds in seconds of the request-duration histogram (``+Inf`` is implied)."""


@dataclass(frozen=True)
class RequestStatsSnapshot:
    """Counts at one moment: every failure reason is present, at 0 when it never happened."""

    requests: int
    failures: dict[FailureReason, int]
    bucket_counts: tuple[int, ...]
    """Non-cumulative counts per bucket of :data:`DURATION_BUCKETS`, plus one for ``+Inf``."""
    duration_sum: float


class RequestStats:
    """Thread-safe tallies for one account."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = 0
        self._failures = dict.fromkeys(FailureReason, 0)
        self._buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self._duration_sum = 0.0

    def observe(self, duration: float, failure: FailureReason | None) -> None:
        """Record one request; matches :data:`okx_loan_exporter.okx.RequestObserver`."""
        index = bisect.bisect_left(DURATION_BUCKETS, duration)
        with self._lock:
            self._requests += 1
            self._buckets[index] += 1
            self._duration_sum += duration
            if failure is not None:
                self._failures[failure] += 1

    def snapshot(self) -> RequestStatsSnapshot:
        with self._lock:
            return RequestStatsSnapshot(
                self._requests, dict(self._failures), tuple(self._buckets), self._duration_sum
            )
