"""Per-account tallies of the requests sent to OKX, per endpoint: counts by outcome and durations.

The OKX client reports into :class:`RequestStats` through its ``on_request`` callback; the collector
reads a consistent :class:`RequestStatsSnapshot`. Nothing here knows about Prometheus.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from okx_loan_exporter.okx import Endpoint, FailureReason

DURATION_BUCKETS: tuple[float, ...] = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds in seconds of the request-duration histogram (``+Inf`` is implied)."""
ALWAYS_COUNTED = (Endpoint.LOAN_INFO, Endpoint.PUBLIC_TIME)
"""Endpoints counted from the start at 0 whatever the config: loan-info, and the clock check."""
EVERY_REASON = frozenset({Endpoint.LOAN_INFO, Endpoint.INDEX_TICKERS})
"""Endpoints whose failures are exported for every reason from the start (0 until one happens):
loan-info, which okx_loan_up is about, and index-tickers (counted per base URL, not per account).
The other endpoints show a reason once it happened, which saves 7 series per endpoint and account
(35 with the defaults, 35 000 at 1 000 accounts)."""


@dataclass(frozen=True)
class EndpointStats:
    """One endpoint's counts; ``failures`` holds every reason for the endpoints of
    :data:`EVERY_REASON`, and the reasons that happened for the others."""

    requests: int
    failures: Mapping[FailureReason, int]
    bucket_counts: tuple[int, ...]
    """Non-cumulative counts per bucket of :data:`DURATION_BUCKETS`, plus one for ``+Inf``."""
    duration_sum: float


@dataclass(frozen=True)
class RequestStatsSnapshot:
    """Counts at one moment, per endpoint in :class:`Endpoint` order.

    Holds the endpoints counted from the start (at 0 until their first request) and any other
    endpoint once it was called.
    """

    endpoints: Mapping[Endpoint, EndpointStats]


_NO_FAILURES: Mapping[FailureReason, int] = MappingProxyType(dict.fromkeys(FailureReason, 0))
"""Every reason at 0: shared by every endpoint of :data:`EVERY_REASON` that never failed."""


class _Tally:
    """One endpoint's counts; ``failures`` holds only the reasons that happened (memory: six
    tallies per account)."""

    __slots__ = ("buckets", "duration_sum", "failures", "frozen_stats", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.failures: dict[FailureReason, int] = {}
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.frozen_stats: EndpointStats | None = None
        """The counts as last frozen; None after a change."""

    def frozen(self, every_reason: bool) -> EndpointStats:
        if self.frozen_stats is None:
            if every_reason and not self.failures:
                failures = _NO_FAILURES
            else:
                known = self.failures
                failures = {
                    reason: known.get(reason, 0)
                    for reason in FailureReason
                    if every_reason or reason in known
                }
            self.frozen_stats = EndpointStats(
                self.requests, failures, tuple(self.buckets), self.duration_sum
            )
        return self.frozen_stats


class RequestStats:
    """Thread-safe tallies for one account.

    ``endpoints`` are counted from the start (the collector exports them at 0), so that the first
    failure of an enabled endpoint shows in ``increase()``; ``always`` (an account's
    :data:`ALWAYS_COUNTED`) is added to them. The snapshot is built once per change and shared
    until the next request.
    """

    def __init__(
        self, endpoints: Iterable[Endpoint] = (), *, always: Iterable[Endpoint] = ALWAYS_COUNTED
    ) -> None:
        self._lock = threading.Lock()
        counted = {*always, *endpoints}
        self._tallies = {endpoint: _Tally() for endpoint in Endpoint if endpoint in counted}
        self._snapshot: RequestStatsSnapshot | None = None

    def observe(self, endpoint: Endpoint, duration: float, failure: FailureReason | None) -> None:
        """Record one request; matches :data:`okx_loan_exporter.okx.RequestObserver`."""
        index = bisect.bisect_left(DURATION_BUCKETS, duration)
        with self._lock:
            tally = self._tallies.get(endpoint)
            if tally is None:
                tally = self._tallies[endpoint] = _Tally()
                order = list(Endpoint)
                self._tallies = dict(sorted(self._tallies.items(), key=lambda i: order.index(i[0])))
            tally.requests += 1
            tally.buckets[index] += 1
            tally.duration_sum += duration
            if failure is not None:
                tally.failures[failure] = tally.failures.get(failure, 0) + 1
            tally.frozen_stats = None
            self._snapshot = None

    def snapshot(self) -> RequestStatsSnapshot:
        with self._lock:
            if self._snapshot is None:
                self._snapshot = RequestStatsSnapshot(
                    {
                        endpoint: tally.frozen(endpoint in EVERY_REASON)
                        for endpoint, tally in self._tallies.items()
                    }
                )
            return self._snapshot
