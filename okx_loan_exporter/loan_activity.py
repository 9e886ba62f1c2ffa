"""What the exporter learns from loan-history and interest-accrued pages: new records, counted once.

OKX's refIds grow with time, so each ledger keeps only the newest refId it has read: a record is
new when its refId is above it, whatever the overlap of two pages, in constant memory per account.
The first page read after start sets the timestamps and the mark and counts nothing, so that a
restart never reports old events as new. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from okx_loan_exporter.loan_records import (
    LOAN_HISTORY_TYPES,
    HistoryRecord,
    InterestRecord,
    ref_order,
)

MAX_EXTRA_TYPES = 16
"""Record types beyond OKX's documented list that are still counted (OKX may add types); more are
ignored, so that a broken answer cannot create series without end."""


@dataclass(frozen=True)
class EventCounts:
    """loan-history as metrics: records first seen since start, and the newest time, by type."""

    counts: Mapping[str, int]
    """Every documented type (at 0 until seen), then any other type seen."""
    last_seen: Mapping[str, float]
    """Time of the newest record of each type read so far, including the first page."""


@dataclass(frozen=True)
class InterestState:
    """interest-accrued as metrics, per debt currency."""

    rate: float | None
    last_timestamp: float
    accrued: float
    """Interest of the records first seen since start (the first page counts nothing)."""


class _Mark:
    """The newest refId read; None until a first page was read."""

    def __init__(self) -> None:
        self.read = False
        self.newest: tuple[int, str] | None = None

    def new_ones(self, ref_ids: Iterable[str]) -> list[bool]:
        """For each refId, whether it is new; then moves the mark past all of them."""
        keys = [ref_order(ref_id) for ref_id in ref_ids]
        first = not self.read
        newest = self.newest
        fresh = [not first and (newest is None or key > newest) for key in keys]
        if keys:
            top = max(keys)
            self.newest = top if newest is None else max(newest, top)
        self.read = True
        return fresh


class EventLedger:
    """Counts loan-history records by type, each once."""

    def __init__(self) -> None:
        self._mark = _Mark()
        self._counts = dict.fromkeys(LOAN_HISTORY_TYPES, 0)
        self._last_seen: dict[str, float] = {}
        self._state = EventCounts(dict(self._counts), {})

    def add_page(self, records: Iterable[HistoryRecord]) -> list[HistoryRecord]:
        """Read one page; returns the records that are new (none on the first page)."""
        records = list(records)
        new = []
        for record, fresh in zip(
            records, self._mark.new_ones(r.ref_id for r in records), strict=True
        ):
            if (
                record.type not in self._counts
                and len(self._counts) >= len(LOAN_HISTORY_TYPES) + MAX_EXTRA_TYPES
            ):
                continue
            self._counts.setdefault(record.type, 0)
            if fresh:
                self._counts[record.type] += 1
                new.append(record)
            if record.timestamp > self._last_seen.get(record.type, float("-inf")):
                self._last_seen[record.type] = record.timestamp
        self._state = EventCounts(dict(self._counts), dict(self._last_seen))
        return new

    @property
    def state(self) -> EventCounts:
        return self._state


class InterestLedger:
    """Per debt currency: the newest accrual's rate and time, and the interest of new accruals."""

    def __init__(self) -> None:
        self._mark = _Mark()
        self._newest: dict[str, InterestRecord] = {}
        self._accrued: dict[str, float] = {}
        self._state: Mapping[str, InterestState] = {}

    def add_page(self, records: Iterable[InterestRecord]) -> list[InterestRecord]:
        """Read one page; returns the accruals that are new (none on the first page)."""
        records = list(records)
        new = []
        for record, fresh in zip(
            records, self._mark.new_ones(r.ref_id for r in records), strict=True
        ):
            newest = self._newest.get(record.currency)
            if newest is None or (record.timestamp, ref_order(record.ref_id)) > (
                newest.timestamp,
                ref_order(newest.ref_id),
            ):
                self._newest[record.currency] = record
            self._accrued.setdefault(record.currency, 0.0)
            if fresh:
                new.append(record)
                total = self._accrued[record.currency] + (record.interest or 0.0)
                self._accrued[record.currency] = round(total, 12)  # no 0.07839621000000001
        self._state = {
            currency: InterestState(newest.rate, newest.timestamp, self._accrued.get(currency, 0.0))
            for currency, newest in sorted(self._newest.items())
        }
        return new

    @property
    def state(self) -> Mapping[str, InterestState]:
        return self._state
