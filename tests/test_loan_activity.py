"""Counting loan-history and interest records once, from the first read after a start on."""

from okx_loan_exporter.loan_activity import MAX_EXTRA_TYPES, EventLedger, InterestLedger
from okx_loan_exporter.loan_records import LOAN_HISTORY_TYPES, HistoryRecord, InterestRecord


def event(ref: int, kind: str = "borrowed", ts: float | None = None) -> HistoryRecord:
    return HistoryRecord(str(ref), kind, "USDT", 1.0, float(ts if ts is not None else ref))


def accrual(ref: int, currency: str = "USDT", interest: float = 0.5, rate: float = 0.08):
    return InterestRecord(str(ref), currency, 100.0, interest, rate, float(ref))


def test_every_type_at_zero_before_any_read():
    ledger = EventLedger()
    assert ledger.state.counts == dict.fromkeys(LOAN_HISTORY_TYPES, 0)
    assert ledger.state.last_seen == {}


def test_first_read_sets_times_and_counts_nothing():
    ledger = EventLedger()
    new = ledger.add_page([event(12, "partial_liquidation"), event(11), event(10)])
    assert new == []
    assert set(ledger.state.counts.values()) == {0}
    assert ledger.state.last_seen == {"partial_liquidation": 12.0, "borrowed": 11.0}


def test_each_record_counted_once_whatever_the_overlap():
    ledger = EventLedger()
    ledger.add_page([event(11), event(10)])
    assert [r.ref_id for r in ledger.add_page([event(13, "repaid"), event(12), event(11)])] == [
        "13",
        "12",
    ]
    assert ledger.add_page([event(13, "repaid"), event(12), event(11)]) == []  # the same page
    assert [r.ref_id for r in ledger.add_page([event(14), event(13, "repaid")])] == ["14"]
    assert ledger.state.counts["borrowed"] == 2 and ledger.state.counts["repaid"] == 1
    assert ledger.state.last_seen["borrowed"] == 14.0


def test_refids_compare_as_numbers():
    ledger = EventLedger()
    ledger.add_page([event(99)])
    assert [r.ref_id for r in ledger.add_page([event(100)])] == ["100"]


def test_an_empty_first_page_counts_what_comes_after():
    ledger = EventLedger()
    ledger.add_page([])
    assert len(ledger.add_page([event(1, "forced_liquidation")])) == 1
    assert ledger.state.counts["forced_liquidation"] == 1


def test_unknown_types_are_counted_up_to_a_bound():
    ledger = EventLedger()
    ledger.add_page([])
    ledger.add_page([event(100 + i, f"new_type_{i}") for i in range(MAX_EXTRA_TYPES + 5)])
    assert len(ledger.state.counts) == len(LOAN_HISTORY_TYPES) + MAX_EXTRA_TYPES


def test_interest_first_read_sets_rate_and_time_only():
    ledger = InterestLedger()
    ledger.add_page([accrual(3, rate=0.09), accrual(2, rate=0.08), accrual(1, "USDC", rate=0.07)])
    state = ledger.state
    assert (state["USDT"].rate, state["USDT"].last_timestamp, state["USDT"].accrued) == (
        0.09,
        3.0,
        0.0,
    )
    assert state["USDC"].accrued == 0.0


def test_interest_sums_new_accruals_once():
    ledger = InterestLedger()
    ledger.add_page([accrual(2), accrual(1)])
    ledger.add_page([accrual(4, interest=0.25, rate=0.1), accrual(3, interest=0.125), accrual(2)])
    ledger.add_page([accrual(4, interest=0.25, rate=0.1), accrual(3, interest=0.125)])
    assert ledger.state["USDT"].accrued == 0.375
    assert ledger.state["USDT"].rate == 0.1


def test_interest_sum_has_no_float_noise():
    ledger = InterestLedger()
    ledger.add_page([])
    for ref in range(1, 4):
        ledger.add_page([accrual(ref, interest=0.1)])
    assert ledger.state["USDT"].accrued == 0.3
