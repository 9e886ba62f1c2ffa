"""The exposition of the seed example, byte for byte: tests/data/golden_metrics.prom.

The golden file is what a reviewer reads to see the contract: the docs example (an answer from
before orders, so ``order=""``), an account with two orders (the docs example as 1001 and a
single-collateral order 1002 with a liquidation price, and its events, interest and headroom),
an account with no loan and one whose key OKX refuses. Regenerate it after an intended change with
``python tests/test_golden_metrics.py`` and review the diff.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prometheus_client.exposition import generate_latest

from okx_loan_exporter.activity_cache import ActivitySnapshot, Schedules
from okx_loan_exporter.cache import AccountSnapshot
from okx_loan_exporter.collector import LoanCollector
from okx_loan_exporter.loan_activity import EventCounts, InterestState
from okx_loan_exporter.loan_records import LOAN_HISTORY_TYPES, BorrowHeadroom
from okx_loan_exporter.okx import Endpoint, FailureReason
from okx_loan_exporter.position import NO_LOAN, parse_loan_info
from okx_loan_exporter.stats import RequestStats

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_metrics.prom"


def _snapshot(name: str, answer: str | None, *, failure: FailureReason | None = None):
    stats = RequestStats(Schedules().endpoints())
    stats.observe(Endpoint.LOAN_INFO, 0.042, None)
    if failure is not None:
        stats.observe(Endpoint.LOAN_INFO, 0.3, failure)
    position = None
    if answer == "no loan":
        position = NO_LOAN
    elif answer is not None:
        position = parse_loan_info(json.loads((DATA / answer).read_text()))
    return AccountSnapshot(
        name=name,
        position=position,
        up=failure is None,
        last_success=1_700_000_000.5 if position is not None else None,
        last_failure=failure,
        last_error=None,
        requests=stats.snapshot(),
        clock_offset=0.0,
        activity=TWO_ORDERS_ACTIVITY if name == "two-orders" else None,
    )


TWO_ORDERS_ACTIVITY = ActivitySnapshot(
    events=EventCounts(
        {**dict.fromkeys(LOAN_HISTORY_TYPES, 0), "partial_liquidation": 1},
        {"borrowed": 1_699_990_000.0, "partial_liquidation": 1_700_000_000.123},
    ),
    interest={"USDC": InterestState(0.0841, 1_699_999_200.0, 0.0123)},
    borrow={("1002", "USDT"): BorrowHeadroom("USDT", 1250.5, 1250.25)},
    redeem={("1002", "BTC"): 0.0125},
)


def render() -> bytes:
    snapshots = [
        _snapshot("docs", "loan_info_docs_example.json"),
        _snapshot("two-orders", "loan_info_two_orders.json"),
        _snapshot("no-loan", "no loan"),
        _snapshot("wrong-key", None, failure=FailureReason.AUTH),
    ]
    return generate_latest(LoanCollector(snapshots, "1.2.3"))


def test_exposition_equals_the_golden_file():
    assert render().decode() == GOLDEN.read_text(), (
        "the /metrics text changed: if intended, run python tests/test_golden_metrics.py "
        "and review the diff of tests/data/golden_metrics.prom"
    )


if __name__ == "__main__":
    GOLDEN.write_bytes(render())
    sys.stdout.write(f"wrote {GOLDEN}\n")
