"""Builds fresh Prometheus metric families from one scrape's account snapshots.

The collector is a pure function of the snapshots it is given: it asks nobody and knows nothing of
HTTP. Families are rebuilt from every scrape's snapshots, so a currency OKX stops reporting
disappears at once and positions older than ``max_stale`` (which the cache already withholds) are
not exported. :class:`RenderCache` keeps the rendered text of the last snapshots: between two
fetches every scrape sees the same snapshots, and rendering them is most of a cached scrape's cost.
:class:`ProcessMetrics` gives prometheus_client's ``process_`` families with fewer reads of /proc.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from okx_loan_exporter.cache import AccountSnapshot
from okx_loan_exporter.okx import FailureReason
from okx_loan_exporter.stats import DURATION_BUCKETS

Encoder = Callable[[Collector], bytes]
"""Renders a collector's families in one exposition format: ``generate_latest`` or a partial of
it or of the OpenMetrics one, as ``prometheus_client.exposition.choose_encoder`` returns them."""

CACHED = "Cached: refreshed from OKX at most once per cache_ttl."
_BUCKET_BOUNDS = (*(repr(bound) for bound in DURATION_BUCKETS), "+Inf")


class LoanCollector(Collector):
    """Yields every ``okx_loan_`` family for the given snapshots."""

    def __init__(self, snapshots: Sequence[AccountSnapshot], version: str) -> None:
        self._snapshots = snapshots
        self._version = version

    def describe(self) -> Iterable[Metric]:
        return []  # registering must never need OKX or a scrape

    def collect(self) -> Iterator[Metric]:
        yield from _position_families(self._snapshots)
        yield from _health_families(self._snapshots)
        build = GaugeMetricFamily(
            "okx_loan_exporter_build_info", "The exporter's version; always 1.", labels=["version"]
        )
        build.add_metric([self._version], 1)
        yield build


class RenderCache:
    """The ``okx_loan_`` families of the latest snapshots, rendered once per exposition format.

    :meth:`render` gives exactly ``encoder(LoanCollector(snapshots, version))``, split into the
    families and the format's trailer (``# EOF`` for OpenMetrics, nothing for the text format), so
    that other collectors' families can follow before the trailer. The text is rendered again when
    any snapshot differs from the previous scrape's: a different position object (a new answer, or
    one withheld as too old), or any other field (``up``, a request counted, a clock offset). Safe
    to call from many threads; a scrape that finds another rendering waits and reuses its text.
    """

    def __init__(self, version: str) -> None:
        self._version = version
        self._lock = threading.Lock()
        self._snapshots: tuple[AccountSnapshot, ...] = ()
        self._rendered: dict[object, tuple[bytes, bytes] | None] = {}
        self._trailers: dict[object, bytes] = {}

    def render(
        self, snapshots: Sequence[AccountSnapshot], encoder: Encoder
    ) -> tuple[bytes, bytes] | None:
        """``(families, trailer)`` with ``families + trailer == encoder(LoanCollector(...))``.

        None for a format whose output does not end with its empty output (no such format in
        prometheus_client today): the caller then renders its whole registry instead.
        """
        key = _encoder_key(encoder)
        with self._lock:
            if not _same_snapshots(self._snapshots, snapshots):
                self._snapshots = tuple(snapshots)
                self._rendered.clear()
            if key not in self._rendered:
                if key not in self._trailers:
                    self._trailers[key] = encoder(_NoFamilies())
                trailer = self._trailers[key]
                text = encoder(LoanCollector(self._snapshots, self._version))
                cut = len(text) - len(trailer)
                self._rendered[key] = (text[:cut], trailer) if text.endswith(trailer) else None
            return self._rendered[key]


class _NoFamilies(Collector):
    def collect(self) -> Iterable[Metric]:
        return []


def _encoder_key(encoder: Encoder) -> object:
    """Equal for encoders that render alike (choose_encoder makes a new partial on every call)."""
    if isinstance(encoder, functools.partial):
        return (encoder.func, encoder.args, tuple(sorted(encoder.keywords.items())))
    return encoder


def _same_snapshots(old: Sequence[AccountSnapshot], new: Sequence[AccountSnapshot]) -> bool:
    """True when rendering ``new`` gives the text of ``old``.

    Positions are compared by identity: the cache hands out the same object until the next answer,
    and two equal positions could still list their currencies in another order. The other fields
    are compared by value; none of them can be -0.0 or NaN, where equality and text part ways.
    """
    return len(old) == len(new) and all(
        a.position is b.position and a == b for a, b in zip(old, new, strict=True)
    )


class ProcessMetrics(Collector):
    """The families of prometheus_client's ``ProcessCollector``, same names, help and values.

    Under concurrent scrapes its reads of /proc were the largest cost of a cached scrape. This one
    reads ``/proc/self/stat`` with one ``read`` instead of through a buffered file, takes the open
    file limit from ``getrlimit`` (what ``/proc/self/limits`` shows) instead of parsing that file,
    and still lists ``/proc/self/fd``: everything is read fresh at every scrape. Without /proc (not
    Linux) it yields nothing, as ``ProcessCollector`` does.
    """

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._stat = os.path.join(proc, "self", "stat")
        self._fd_dir = os.path.join(proc, "self", "fd")
        self._btime = 0.0
        try:
            with open(os.path.join(proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        self._btime = float(line.split()[1])
                        break
        except OSError:
            return
        import resource  # Unix only, like /proc

        self._ticks: float = os.sysconf("SC_CLK_TCK")
        self._pagesize = resource.getpagesize()
        self._getrlimit = functools.partial(resource.getrlimit, resource.RLIMIT_NOFILE)

    def collect(self) -> Iterable[Metric]:
        if not self._btime:
            return []
        result: list[Metric] = []
        try:
            fd = os.open(self._stat, os.O_RDONLY)
            try:
                text = os.read(fd, 65536)
            finally:
                os.close(fd)
            parts = text.split(b")")[-1].split()
            utime = float(parts[11]) / self._ticks
            stime = float(parts[12]) / self._ticks
            result += [
                GaugeMetricFamily(
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    value=float(parts[20]),
                ),
                GaugeMetricFamily(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    value=float(parts[21]) * self._pagesize,
                ),
                GaugeMetricFamily(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    value=float(parts[19]) / self._ticks + self._btime,
                ),
                CounterMetricFamily(
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds.",
                    value=utime + stime,
                ),
            ]
        except OSError:
            pass
        try:
            open_fds = len(os.listdir(self._fd_dir))
        except OSError:
            return result
        result += [
            GaugeMetricFamily("process_open_fds", "Number of open file descriptors.", open_fds),
            GaugeMetricFamily(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                value=float(self._getrlimit()[0]),
            ),
        ]
        return result


def _position_families(snapshots: Sequence[AccountSnapshot]) -> Iterator[Metric]:
    def gauge(name: str, text: str, *labels: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, f"{text} {CACHED}", labels=["account", *labels])

    borrowed_usd = gauge(
        "okx_loan_borrowed_notional_usd",
        "Value of the order's borrowed currencies in USD (OKX loanNotionalUsd).",
        "order",
    )
    collateral_usd = gauge(
        "okx_loan_collateral_notional_usd",
        "Value of the order's collateral in USD after OKX's haircuts (OKX collateralNotionalUsd).",
        "order",
    )
    borrowed = gauge(
        "okx_loan_borrowed_amount",
        "Amount borrowed per order and currency (OKX loanData[].amt by ccy).",
        "order",
        "currency",
    )
    collateral = gauge(
        "okx_loan_collateral_amount",
        "Amount pledged as collateral per order and currency (OKX collateralData[].amt by ccy).",
        "order",
        "currency",
    )
    ltv = gauge(
        "okx_loan_ltv_ratio",
        "The order's current loan-to-value ratio, 0.5742 = 57.42 % (OKX curLTV).",
        "order",
    )
    margin_call = gauge(
        "okx_loan_margin_call_ltv_ratio",
        "LTV at which OKX issues a margin call for the order (OKX marginCallLTV).",
        "order",
    )
    liquidation = gauge(
        "okx_loan_liquidation_ltv_ratio",
        "LTV at which OKX liquidates the order's collateral (OKX liqLTV).",
        "order",
    )
    liquidation_price = gauge(
        "okx_loan_liquidation_price",
        "Collateral price, in the instrument's quote currency, at which the order is "
        "liquidated (OKX riskWarningData.liqPx; only with one collateral and one borrowed "
        "currency).",
        "order",
        "instrument",
    )
    orders = gauge(
        "okx_loan_orders",
        "Number of loan orders OKX reports for the account (OKX loan-info data entries).",
    )
    active = gauge(
        "okx_loan_active",
        "1 when OKX reports at least one flexible loan order for the account, 0 when none "
        "(OKX loan-info data).",
    )

    for snapshot in snapshots:
        position = snapshot.position
        if position is None:
            continue
        account = snapshot.name
        orders.add_metric([account], len(position.orders))
        active.add_metric([account], 1 if position.active else 0)
        for order in position.orders:
            labels = [account, order.order_id]
            _add_present(borrowed_usd, labels, order.loan_notional_usd)
            _add_present(collateral_usd, labels, order.collateral_notional_usd)
            _add_present(ltv, labels, order.current_ltv)
            _add_present(margin_call, labels, order.margin_call_ltv)
            _add_present(liquidation, labels, order.liquidation_ltv)
            for currency, amount in order.loans.items():
                borrowed.add_metric([*labels, currency], amount)
            for currency, amount in order.collateral.items():
                collateral.add_metric([*labels, currency], amount)
            if order.liquidation_instrument and order.liquidation_price is not None:
                liquidation_price.add_metric(
                    [*labels, order.liquidation_instrument], order.liquidation_price
                )
    yield from (
        borrowed_usd,
        collateral_usd,
        borrowed,
        collateral,
        ltv,
        margin_call,
        liquidation,
        liquidation_price,
        orders,
        active,
    )


def _health_families(snapshots: Sequence[AccountSnapshot]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "okx_loan_up",
        "1 when the latest loan-info request for the account "
        "succeeded, 0 when it failed or did not finish before the scrape "
        "deadline.",
        labels=["account"],
    )
    last_success = GaugeMetricFamily(
        "okx_loan_last_success_timestamp_seconds",
        "Unix time of the latest good loan-info answer from OKX.",
        labels=["account"],
    )
    requests = CounterMetricFamily(
        "okx_loan_api_requests",
        "Requests sent to OKX (loan-info, and public/time after a clock-skew error).",
        labels=["account"],
    )
    failures = CounterMetricFamily(
        "okx_loan_api_request_failures",
        "Requests to OKX that failed, by reason.",
        labels=["account", "reason"],
    )
    duration = HistogramMetricFamily(
        "okx_loan_api_request_duration_seconds",
        "Round-trip time of requests to OKX.",
        labels=["account"],
    )
    offset = GaugeMetricFamily(
        "okx_loan_clock_offset_seconds",
        "OKX's clock minus the local "
        "clock, measured from OKX public/time after a timestamp error "
        "(0 until measured).",
        labels=["account"],
    )

    for snapshot in snapshots:
        account = [snapshot.name]
        stats = snapshot.requests
        up.add_metric(account, 1 if snapshot.up else 0)
        if snapshot.last_success is not None:
            last_success.add_metric(account, snapshot.last_success)
        requests.add_metric(account, stats.requests)
        for reason in FailureReason:
            failures.add_metric([snapshot.name, reason.value], stats.failures[reason])
        cumulative = list(zip(_BUCKET_BOUNDS, accumulate(stats.bucket_counts), strict=True))
        duration.add_metric(account, cumulative, stats.duration_sum)
        offset.add_metric(account, snapshot.clock_offset)
    yield from (up, last_success, requests, failures, duration, offset)


def _add_present(family: GaugeMetricFamily, labels: list[str], value: float | None) -> None:
    if value is not None:
        family.add_metric(labels, value)
