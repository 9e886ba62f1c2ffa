"""Turns one scrape's snapshots into the ``/metrics`` body: format, render cache, gzip, process.

prometheus_client does the work: ``choose_encoder`` picks text or OpenMetrics from ``Accept``,
its encoders render, ``gzip_accepted`` reads ``Accept-Encoding``. What is added is reuse: between
two OKX fetches every scrape sees the same snapshots, and rendering the ``okx_loan_`` families was
most of a cached scrape's cost, so :class:`RenderCache` keeps their text per format while the
snapshots stay the same. :class:`ProcessMetrics` gives prometheus_client's ``process_`` families
with fewer reads of /proc. The answer is byte for byte what ``make_wsgi_app`` gives for
:meth:`Exposition.registry` (tests/test_perf_invariants.py holds that).
"""

from __future__ import annotations

import functools
import gzip
import os
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector

from okx_loan_exporter.cache import AccountSnapshot
from okx_loan_exporter.collector import LoanCollector

GZIP_LEVEL = 6
"""zlib's default: a third of level 9's time (gzip.compress' default) for 2 % more bytes."""
GZIP_WBITS = 16 + zlib.MAX_WBITS
"""A gzip stream (header and CRC trailer), not a bare zlib one."""
Encoder = Callable[[Collector], bytes]
"""Renders a collector's families in one exposition format, as ``choose_encoder`` returns it."""
Headers = list[tuple[str, str]]


class Exposition:
    """Renders one exporter's scrapes: loan families (cached per format) and process metrics."""

    def __init__(self, version: str, process_metrics: Collector | None = None) -> None:
        self._version = version
        self._process_metrics = ProcessMetrics() if process_metrics is None else process_metrics
        self._render_cache = RenderCache(version)

    def registry(self, snapshots: Sequence[AccountSnapshot]) -> CollectorRegistry:
        """A registry holding this scrape's families and the process metrics."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(LoanCollector(snapshots, self._version))
        registry.register(self._process_metrics)
        return registry

    def body(self, snapshots: Sequence[AccountSnapshot], accept: str | None) -> tuple[bytes, str]:
        """This scrape's uncompressed body and its Content-Type, for an ``Accept`` header.

        Byte for byte ``encoder(self.registry(snapshots))``, but the ``okx_loan_`` families are
        rendered again only when a snapshot changed.
        """
        encoder, content_type = choose_encoder(accept or "")
        rendered = self._render_cache.render(snapshots, encoder, content_type)
        if rendered is None:
            return encoder(self.registry(snapshots)), content_type
        # The process families' rendering ends with the trailer.
        return rendered.families + encoder(self._process_metrics), content_type

    def answer(
        self,
        snapshots: Sequence[AccountSnapshot],
        accept: str | None,
        accept_encoding: str | None,
    ) -> tuple[bytes, Headers]:
        """Body and headers of a ``GET /metrics`` answer, gzipped when the scraper accepts it.

        The gzip stream of the cached families is kept too, as compressed bytes and the
        compressor's state after them: a scrape compresses only the process families (compressing
        a thousand accounts' text took 70 ms at gzip's level 9, more than everything else).
        """
        if not gzip_accepted(accept_encoding or ""):
            body, content_type = self.body(snapshots, accept)
            return body, [("Content-Type", content_type)]
        encoder, content_type = choose_encoder(accept or "")
        headers = [("Content-Type", content_type), ("Content-Encoding", "gzip")]
        rendered = self._render_cache.render(snapshots, encoder, content_type, compressed=True)
        if rendered is None or rendered.compressed is None:
            return gzip.compress(encoder(self.registry(snapshots))), headers
        prefix, compressor = rendered.compressed
        rest = compressor.copy()
        tail = rest.compress(encoder(self._process_metrics))  # it ends with the trailer
        return prefix + tail + rest.flush(), headers


@dataclass
class Rendered:
    """The ``okx_loan_`` families in one format, with the format's trailer; ``families +
    trailer`` is the whole rendering."""

    families: bytes
    trailer: bytes
    compressed: tuple[bytes, Any] | None = None
    """The families as a gzip stream so far, and the ``zlib`` compressor's state after them (to
    ``copy()`` and finish with what follows); made on the first gzip scrape."""


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
        self._rendered: dict[str, Rendered | None] = {}
        self._trailers: dict[str, bytes] = {}

    def render(
        self,
        snapshots: Sequence[AccountSnapshot],
        encoder: Encoder,
        content_type: str,
        *,
        compressed: bool = False,
    ) -> Rendered | None:
        """The families and trailer with ``families + trailer == encoder(LoanCollector(...))``,
        and with ``compressed`` their gzip stream too.

        ``content_type`` is the one ``choose_encoder`` returned with ``encoder``: it names the
        format, version and escaping completely, so it keys the cache (the encoder itself is a new
        ``functools.partial`` on every call). None for a format whose output does not end with its
        empty output (no such format in prometheus_client today): the caller then renders its
        whole registry instead.
        """
        with self._lock:
            if not _same_snapshots(self._snapshots, snapshots):
                self._snapshots = tuple(snapshots)
                self._rendered.clear()
            if content_type not in self._rendered:
                if content_type not in self._trailers:
                    self._trailers[content_type] = encoder(_NoFamilies())
                trailer = self._trailers[content_type]
                text = encoder(LoanCollector(self._snapshots, self._version))
                cut = len(text) - len(trailer)
                self._rendered[content_type] = (
                    Rendered(text[:cut], trailer) if text.endswith(trailer) else None
                )
            rendered = self._rendered[content_type]
            if compressed and rendered is not None and rendered.compressed is None:
                compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS)
                prefix = compressor.compress(rendered.families)
                prefix += compressor.flush(zlib.Z_SYNC_FLUSH)
                rendered.compressed = (prefix, compressor)
            return rendered


class _NoFamilies(Collector):
    def collect(self) -> Iterable[Metric]:
        return []


def _same_snapshots(old: Sequence[AccountSnapshot], new: Sequence[AccountSnapshot]) -> bool:
    """True when rendering ``new`` gives the text of ``old``.

    Positions are compared by identity: the cache hands out the same object until the next answer,
    and two equal positions could still list their currencies in another order. The other fields
    are compared by value; none of them can be -0.0 or NaN, where equality and text part ways.
    """
    return len(old) == len(new) and all(
        a is b or (a.position is b.position and a == b) for a, b in zip(old, new, strict=True)
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
