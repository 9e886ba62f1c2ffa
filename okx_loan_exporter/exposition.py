"""Turns one scrape's snapshots into the ``/metrics`` body: format, render cache, gzip, process.

prometheus_client does the work: ``choose_encoder`` picks text or OpenMetrics from ``Accept``,
its encoders render, ``gzip_accepted`` reads ``Accept-Encoding``. What is added is reuse: between
two OKX fetches every scrape sees the same snapshots, and rendering the ``okx_loan_`` families was
most of a cached scrape's cost, so :class:`RenderCache` keeps each account's lines per format
(and compressed) while its snapshot stays the same. :class:`ProcessMetrics` gives
prometheus_client's ``process_`` families with fewer reads of /proc. The answer is byte for
byte what ``make_wsgi_app`` gives for :meth:`Exposition.registry` (tests/test_perf_invariants.py
holds that).
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector

from okx_loan_exporter.cache import AccountSnapshot
from okx_loan_exporter.collector import (
    ACCOUNT_PARTS,
    PARTS_BEFORE_INDEX_PRICES,
    LoanCollector,
    shared_families,
)

GZIP_LEVEL = 6
"""zlib's default: a third of level 9's time (gzip.compress' default) for 2 % more bytes."""
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""A gzip member's header (RFC 1952): deflate, no flags, no time, unknown OS."""
ACCOUNTS_PER_SEGMENT = 32
"""Accounts whose lines of one family are compressed together: a changed account costs its
group's pieces (about 30 x 6 KB) compressed again."""
Segment = bytes | tuple[bytes, ...]
"""A piece of the families' text: whole bytes (a header, the shared families), or the lines of one
family for a group of accounts, kept as the accounts' own pieces (joined only when needed, so the
text is not held twice)."""
Layout = list[tuple[list[bytes], list[str]]]
"""Per part of the per-account families (``ACCOUNT_PARTS``): their headers in one format, and
their names."""
Encoder = Callable[[Collector], bytes]
"""Renders a collector's families in one exposition format, as ``choose_encoder`` returns it."""
Headers = list[tuple[str, str]]


class Exposition:
    """Renders one exporter's scrapes: loan families (cached per format) and process metrics."""

    def __init__(self, version: str, process_metrics: Collector | None = None) -> None:
        self._version = version
        self._process_metrics = ProcessMetrics() if process_metrics is None else process_metrics
        self._render_cache = RenderCache(version)
        self._asked: dict[tuple[str, bool], tuple[str, float]] = {}
        """By content type and gzip, an ``Accept`` header that asked for it and when (monotonic):
        what :meth:`warm` renders. Bounded: ``choose_encoder`` knows a few content types."""

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
        self._asked[content_type, False] = (accept or "", time.monotonic())
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

        The cached families are kept compressed too, in pieces that are compressed again only
        when their text changed: a scrape compresses only the process families and the pieces
        of the accounts that changed (compressing a thousand accounts' 5.6 MB took about 100 ms).
        """
        if not gzip_accepted(accept_encoding or ""):
            body, content_type = self.body(snapshots, accept)
            return body, [("Content-Type", content_type)]
        encoder, content_type = choose_encoder(accept or "")
        self._asked[content_type, True] = (accept or "", time.monotonic())
        headers = [("Content-Type", content_type), ("Content-Encoding", "gzip")]
        rendered = self._render_cache.render(snapshots, encoder, content_type, compressed=True)
        if rendered is None or rendered.compressed is None:
            return gzip.compress(encoder(self.registry(snapshots))), headers
        return rendered.gzip(encoder(self._process_metrics)), headers  # it ends with the trailer

    def warm(self, snapshots: Sequence[AccountSnapshot], since: float) -> None:
        """Render ``snapshots`` ahead of the next scrape, in each format (and compression) asked
        for since ``since`` (``time.monotonic()``): only what changed is rendered again, and the
        next scrape that finds the same snapshots has only to assemble its answer."""
        for (content_type, compressed), (accept, asked) in list(self._asked.items()):
            if asked >= since:
                encoder, _ = choose_encoder(accept)
                self._render_cache.render(snapshots, encoder, content_type, compressed=compressed)


@dataclass
class Rendered:
    """The ``okx_loan_`` families in one format, with the format's trailer; ``families +
    trailer`` is the whole rendering."""

    segments: list[Segment]
    """The families' text in pieces (headers, shared families, a few accounts' lines of one family
    each)."""
    trailer: bytes
    compressed: tuple[bytes, int, int] | None = None
    """The gzip header and the segments as raw deflate blocks, with the CRC-32 and length of
    the families; made on the first gzip scrape."""

    @property
    def families(self) -> bytes:
        pieces: list[bytes] = []
        for segment in self.segments:
            if isinstance(segment, bytes):
                pieces.append(segment)
            else:
                pieces.extend(segment)
        return b"".join(pieces)

    def gzip(self, tail: bytes) -> bytes:
        """A gzip stream of ``families + tail`` (RFC 1952), from the compressed segments."""
        assert self.compressed is not None
        prefix, crc, size = self.compressed
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        end = compressor.compress(tail) + compressor.flush()
        trailer = struct.pack("<II", zlib.crc32(tail, crc), (size + len(tail)) & 0xFFFFFFFF)
        return prefix + end + trailer


class RenderCache:
    """The ``okx_loan_`` families of the latest snapshots, rendered per account and per format.

    :meth:`render` gives exactly ``encoder(LoanCollector(snapshots, version))``, split into the
    families and the format's trailer (``# EOF`` for OpenMetrics, nothing for the text format), so
    that other collectors' families can follow before the trailer. Each account's sample lines of
    every per-account family are kept as bytes, keyed by the account's snapshot and the format;
    when that snapshot changed (see :func:`_same_snapshot`), only the parts of the families whose
    inputs changed are rendered again (``collector.ACCOUNT_PARTS``). The body is assembled from
    them family by family, with the few families of no single account (index
    prices, request durations summed over the accounts, public requests, build) rendered whole.
    Safe to call from many threads; a scrape that finds another rendering waits and reuses its
    text.
    """

    def __init__(self, version: str) -> None:
        self._version = version
        self._lock = threading.Lock()
        self._snapshots: tuple[AccountSnapshot, ...] = ()
        self._rendered: dict[str, Rendered | None] = {}
        self._trailers: dict[str, bytes] = {}
        self._headers: dict[tuple[str, str, str, str, str], bytes] = {}
        self._accounts: dict[str, _AccountLines] = {}
        self._deflated: dict[str, dict[Segment, bytes]] = {}
        """Per format, the deflate blocks of the latest compressed segments, by their text."""
        self._groups: dict[str, list[tuple[tuple[tuple[bytes, ...], ...], list[Segment]]]] = {}
        """Per format, each group of accounts' lines and their text per family (a segment)."""
        self._shared: dict[str, tuple[tuple[object, ...], tuple[bytes, bytes]]] = {}
        """Per format, the positions, price and request snapshots the shared families were
        rendered for."""

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
        empty output or cannot be cut into families (no such format in prometheus_client today):
        the caller then renders its whole registry instead.
        """
        with self._lock:
            if not all(map(_same_snapshot, self._snapshots, snapshots)) or len(
                self._snapshots
            ) != len(snapshots):
                self._snapshots = tuple(snapshots)
                self._rendered.clear()
                self._accounts = {
                    snapshot.name: self._account_lines(snapshot) for snapshot in self._snapshots
                }
            if content_type not in self._rendered:
                if content_type not in self._trailers:
                    self._trailers[content_type] = encoder(_Families([]))
                trailer = self._trailers[content_type]
                families = self._assemble(encoder, content_type, trailer)
                self._rendered[content_type] = (
                    None if families is None else Rendered(families, trailer)
                )
            rendered = self._rendered[content_type]
            if compressed and rendered is not None and rendered.compressed is None:
                rendered.compressed = self._compress(content_type, rendered.segments)
            return rendered

    def _compress(self, content_type: str, segments: list[Segment]) -> tuple[bytes, int, int]:
        """The gzip header and ``segments`` as deflate blocks, with their CRC-32 and length.

        Each segment is compressed alone, without back references to the others, and ends byte
        aligned (``Z_SYNC_FLUSH``) but not final, so the blocks can follow one another in any
        order; a segment's blocks are reused while its text is unchanged.
        """
        known = self._deflated.get(content_type, {})
        deflated: dict[Segment, bytes] = {}
        crc, size = 0, 0
        for segment in segments:
            text = _text(segment)
            block = known.get(segment)
            if block is None:
                compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
                block = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
            deflated[segment] = block
            crc = zlib.crc32(text, crc)
            size += len(text)
        self._deflated[content_type] = deflated
        return GZIP_HEADER + b"".join(deflated[segment] for segment in segments), crc, size

    def _account_lines(self, snapshot: AccountSnapshot) -> _AccountLines:
        """The account's cached lines while its snapshot is the same, else an entry holding the
        lines of the parts that render the same for the new snapshot (see ``AccountPart``)."""
        kept = self._accounts.get(snapshot.name)
        if kept is None:
            return _AccountLines(snapshot)
        if _same_snapshot(kept.snapshot, snapshot):
            kept.snapshot = snapshot
            return kept
        same = [part.unchanged(kept.snapshot, snapshot) for part in ACCOUNT_PARTS]
        return _AccountLines(
            snapshot,
            {
                content_type: [
                    lines if keep else None for lines, keep in zip(parts, same, strict=True)
                ]
                for content_type, parts in kept.parts.items()
            },
        )

    def _assemble(
        self, encoder: Encoder, content_type: str, trailer: bytes
    ) -> list[Segment] | None:
        """The families of the cached snapshots without the trailer, in segments; None if they
        cannot be cut."""
        snapshots = self._snapshots
        if not snapshots:
            whole = _without(encoder(LoanCollector(snapshots, self._version)), trailer)
            return None if whole is None else [whole]
        layout = self._layout(encoder, content_type, trailer)
        if layout is None:
            return None
        rows: list[tuple[bytes, ...]] = []
        for snapshot in snapshots:
            entry = self._accounts[snapshot.name]
            lines = entry.by_format.get(content_type)
            if lines is None:
                lines = entry.render(content_type, encoder, layout, trailer)
                if lines is None:
                    return None
            rows.append(lines)
        shared = self._shared_text(encoder, content_type, trailer)
        if shared is None:
            return None
        kept = self._groups.get(content_type, [])
        groups: list[tuple[tuple[tuple[bytes, ...], ...], list[Segment]]] = []
        for start in range(0, len(rows), ACCOUNTS_PER_SEGMENT):
            group = tuple(rows[start : start + ACCOUNTS_PER_SEGMENT])
            previous = kept[len(groups)] if len(groups) < len(kept) else None
            if previous is not None and _same_lines(previous[0], group):
                groups.append(previous)  # the same bytes objects: their hashes are kept too
            else:
                groups.append((group, list(zip(*group, strict=True))))
        self._groups[content_type] = groups
        headers = [header for part_headers, _ in layout for header in part_headers]
        shared_at = sum(len(part_headers) for part_headers, _ in layout[:PARTS_BEFORE_INDEX_PRICES])
        segments: list[Segment] = []
        for column, header in enumerate(headers):
            if column == shared_at:
                segments.append(shared[0])
            segments.append(header)
            segments.extend(columns[column] for _, columns in groups)
        segments.append(shared[1])
        return segments

    def _shared_text(
        self, encoder: Encoder, content_type: str, trailer: bytes
    ) -> tuple[bytes, bytes] | None:
        """The families of no single account, rendered again only when a position, a price or
        a request snapshot changed (they depend on nothing else)."""
        snapshots = self._snapshots
        key = tuple(
            item
            for snapshot in snapshots
            for item in (snapshot.position, snapshot.prices, snapshot.requests)
        )
        kept = self._shared.get(content_type)
        if kept is not None and _same_lines(kept[0], key):
            return kept[1]
        index_prices, tail = shared_families(snapshots, self._version)
        before = _without(encoder(_Families(index_prices)), trailer)
        after = _without(encoder(_Families(tail)), trailer)
        if before is None or after is None:
            return None
        self._shared[content_type] = (key, (before, after))
        return before, after

    def _layout(self, encoder: Encoder, content_type: str, trailer: bytes) -> Layout | None:
        """Per part of the per-account families, their headers in this format and their names;
        None when a header cannot be cut out."""
        layout: Layout = []
        for part in ACCOUNT_PARTS:
            families = list(part.families(()))
            found = [self._header(family, encoder, content_type, trailer) for family in families]
            headers = [header for header in found if header is not None]
            if len(headers) != len(found):
                return None
            layout.append((headers, [family.name for family in families]))
        return layout

    def _header(
        self, family: Metric, encoder: Encoder, content_type: str, trailer: bytes
    ) -> bytes | None:
        """The family's lines before its samples (HELP, TYPE, UNIT) in this format."""
        key = (content_type, family.name, family.type, family.documentation, family.unit)
        header = self._headers.get(key)
        if header is None:
            empty = Metric(family.name, family.documentation, family.type, family.unit)
            header = _without(encoder(_Families([empty])), trailer)
            if not header:
                return None
            self._headers[key] = header
        return header


class _AccountLines:
    """One account's sample lines per per-account family, per format, for one snapshot."""

    __slots__ = ("by_format", "parts", "snapshot")

    def __init__(
        self,
        snapshot: AccountSnapshot,
        parts: dict[str, list[tuple[bytes, ...] | None]] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.by_format: dict[str, tuple[bytes, ...]] = {}
        """Per format, the lines of every family, in body order."""
        self.parts = parts if parts is not None else {}
        """Per format, the lines of each of ``ACCOUNT_PARTS``' families; None for a part still
        to render (the others were kept from the account's previous snapshot)."""

    def render(
        self, content_type: str, encoder: Encoder, layout: Layout, trailer: bytes
    ) -> tuple[bytes, ...] | None:
        """The lines of every family in this format, rendering only the parts not kept."""
        parts = self.parts.get(content_type) or [None] * len(ACCOUNT_PARTS)
        todo = [index for index, lines in enumerate(parts) if lines is None]
        if todo:
            families = [
                family
                for index in todo
                for family in ACCOUNT_PARTS[index].families([self.snapshot])
            ]
            headers = [header for index in todo for header in layout[index][0]]
            names = [name for index in todo for name in layout[index][1]]
            pieces = _cut(self.snapshot, families, encoder, headers, names, trailer)
            if pieces is None:
                return None
            start = 0
            for index in todo:
                count = len(layout[index][0])
                parts[index] = pieces[start : start + count]
                start += count
        self.parts[content_type] = parts
        lines = tuple(piece for part in parts if part is not None for piece in part)
        self.by_format[content_type] = lines
        return lines


def _cut(
    snapshot: AccountSnapshot,
    families: Sequence[Metric],
    encoder: Encoder,
    headers: Sequence[bytes],
    names: Sequence[str],
    trailer: bytes,
) -> tuple[bytes, ...] | None:
    """The account's sample lines of each of ``families`` (built from ``snapshot``), rendered
    by ``encoder``.

    The families are rendered together and cut at the headers: every family renders as its
    header lines, then its sample lines, none of which starts with ``#`` (label values escape
    newlines). None when the rendering does not have that shape.
    """
    if [family.name for family in families] != list(names):
        return None
    text = _without(encoder(_Families(families)), trailer)
    if text is None:
        return None
    pieces: list[bytes] = []
    position = 0
    for index, header in enumerate(headers):
        if not text.startswith(header, position):
            return None
        position += len(header)
        end = text.find(headers[index + 1], position) if index + 1 < len(headers) else len(text)
        if end < 0:
            return None
        piece = text[position:end]
        if piece.startswith(b"#") or b"\n#" in piece:
            return None
        pieces.append(piece)
        position = end
    return tuple(pieces)


def _text(segment: Segment) -> bytes:
    """A segment's text."""
    return segment if isinstance(segment, bytes) else b"".join(segment)


def _without(text: bytes, trailer: bytes) -> bytes | None:
    """``text`` without its trailing ``trailer``; None if it does not end with it."""
    return text[: len(text) - len(trailer)] if text.endswith(trailer) else None


class _Families(Collector):
    """Yields the given families, for an encoder."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _same_lines(old: Sequence[object], new: Sequence[object]) -> bool:
    """True when both hold the very same objects in the same order."""
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))


def _same_snapshot(old: AccountSnapshot, new: AccountSnapshot) -> bool:
    """True when rendering ``new`` gives the text of ``old``.

    Positions and the secondary endpoints' values are compared by identity: the caches hand out
    the same objects until the next answer, and two equal ones could still list their currencies
    in another order. The other fields are compared by value; none of them can be -0.0 or NaN,
    where equality and text part ways.
    """
    return old is new or (
        old.position is new.position and old.activity is new.activity and old == new
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
