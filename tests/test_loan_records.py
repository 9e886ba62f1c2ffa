"""The parsers of loan-history, interest-accrued, max-loan and max-collateral-redeem-amount."""

import pytest

from okx_loan_exporter.loan_records import (
    LIQUIDATION_TYPES,
    LOAN_HISTORY_TYPES,
    BorrowHeadroom,
    HistoryRecord,
    InterestRecord,
    parse_interest_accrued,
    parse_loan_history,
    parse_max_loan,
    parse_max_redeem,
    ref_order,
)
from okx_loan_exporter.position import InvalidResponse


def ok(*data):
    return {"code": "0", "msg": "", "data": list(data)}


HISTORY = ok(
    {
        "refId": "102",
        "type": "partial_liquidation",
        "ccy": "BTC",
        "amt": "-0.0125",
        "ts": "1700000000123",
    },
    {"refId": "101", "type": "borrowed", "ccy": "USDT", "amt": "13500", "ts": "1699990000000"},
    {"refId": "100", "type": "collateral_locked", "ccy": "BTC", "amt": "", "ts": "1699989999000"},
)
INTEREST = ok(
    {
        "refId": "7",
        "ccy": "USDT",
        "loan": "13500",
        "interest": "0.12961187",
        "interestRate": "0.0841",
        "ts": "1700000000000",
    }
)


def test_loan_history_records_in_okx_order_with_signed_amounts():
    records = parse_loan_history(HISTORY)
    assert records == (
        HistoryRecord("102", "partial_liquidation", "BTC", -0.0125, 1_700_000_000.123),
        HistoryRecord("101", "borrowed", "USDT", 13500.0, 1_699_990_000.0),
        HistoryRecord("100", "collateral_locked", "BTC", None, 1_699_989_999.0),  # "" is absent
    )


def test_interest_records():
    (record,) = parse_interest_accrued(INTEREST)
    assert record == InterestRecord("7", "USDT", 13500.0, 0.12961187, 0.0841, 1_700_000_000.0)


def test_empty_pages():
    assert parse_loan_history(ok()) == ()
    assert parse_interest_accrued(ok()) == ()


def test_max_loan_reads_the_asked_currency_and_absent_without_data():
    answer = ok(
        {"borrowCcy": "USDC", "maxLoan": "9", "notionalUsd": "9", "remainingQuota": "1"},
        {"borrowCcy": "USDT", "maxLoan": "1250.5", "notionalUsd": "1250.25", "remainingQuota": ""},
    )
    assert parse_max_loan(answer, "USDT") == BorrowHeadroom("USDT", 1250.5, 1250.25)
    assert parse_max_loan(ok(), "USDT") == BorrowHeadroom("USDT", None, None)
    empty = ok({"borrowCcy": "USDT", "maxLoan": "", "notionalUsd": "", "remainingQuota": ""})
    assert parse_max_loan(empty, "USDT") == BorrowHeadroom("USDT", None, None)


def test_max_redeem():
    assert parse_max_redeem(ok({"ccy": "BTC", "maxRedeemAmt": "0.0125"}), "BTC") == 0.0125
    assert parse_max_redeem(ok({"ccy": "BTC", "maxRedeemAmt": ""}), "BTC") is None
    assert parse_max_redeem(ok(), "BTC") is None


def test_types():
    assert len(LOAN_HISTORY_TYPES) == 12 and set(LOAN_HISTORY_TYPES) > LIQUIDATION_TYPES


def test_ref_ids_order_as_numbers():
    assert sorted(["10", "9", "100"], key=ref_order) == ["9", "10", "100"]


def history(**fields):
    record = {"refId": "1", "type": "borrowed", "ccy": "USDT", "amt": "1", "ts": "1700000000000"}
    record.update(fields)
    return ok(record)


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ([], "answer is a JSON list, not an object"),
        ({"code": "0"}, "answer has no 'data'"),
        ({"data": {}}, "'data' is a dict, not a list"),
        (ok("x"), "data[0] is a str, not an object"),
        (history(refId=1), "data[0].refId: expected a string, got int"),
        (history(refId="abc"), "data[0].refId: 'abc' is not an OKX refId"),
        (history(refId=""), "data[0].refId: '' is not an OKX refId"),
        (history(type="Borrowed!"), "data[0].type: 'Borrowed!' is not a record type"),
        (history(ccy=""), "data[0].ccy is empty"),
        (history(ccy="\ud800"), "data[0].ccy: not valid Unicode text"),
        (history(amt="abc"), "data[0].amt: 'abc' is not a decimal number"),
        (history(amt="--1"), "data[0].amt: '--1' is not a decimal number"),
        (history(amt=None), "data[0].amt: expected a decimal string, got NoneType"),
        (history(ts="1.5"), "data[0].ts: '1.5' is not a time in milliseconds"),
        (history(ts=""), "data[0].ts: '' is not a time in milliseconds"),
        (history(ts="99999999999999999"), "is not a time in milliseconds"),
        (ok({"refId": "1", "type": "borrowed", "ccy": "USDT", "ts": "1"}), "data[0] has no 'amt'"),
    ],
)
def test_malformed_history_is_refused_where_it_is(answer, says):
    with pytest.raises(InvalidResponse) as caught:
        parse_loan_history(answer)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("interestRate", "-0.1", "data[0].interestRate: '-0.1' is negative"),
        ("interest", "NaN", "data[0].interest: 'NaN' is not a decimal number"),
        ("loan", 5, "data[0].loan: expected a decimal string, got int"),
    ],
)
def test_malformed_interest_is_refused(field, value, says):
    answer = {"code": "0", "data": [{**INTEREST["data"][0], field: value}]}
    with pytest.raises(InvalidResponse) as caught:
        parse_interest_accrued(answer)
    assert says in str(caught.value)


def test_malformed_headroom_is_refused():
    with pytest.raises(InvalidResponse, match=r"data\[0\]\.maxLoan: 'x' is not a decimal"):
        parse_max_loan(ok({"borrowCcy": "USDT", "maxLoan": "x", "notionalUsd": "1"}), "USDT")
    with pytest.raises(InvalidResponse, match=r"data\[0\] has no 'maxRedeemAmt'"):
        parse_max_redeem(ok({"ccy": "BTC"}), "BTC")
