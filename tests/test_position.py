"""The loan-info parser: the documented example, OKX's empty strings, and refusals."""

import copy
import json
from pathlib import Path

import pytest

from okx_loan_exporter.position import NO_LOAN, InvalidResponse, parse_loan_info

DOCS_EXAMPLE = json.loads(
    (Path(__file__).parent / "data" / "loan_info_docs_example.json").read_text()
)


def entry(**changes):
    body = copy.deepcopy(DOCS_EXAMPLE)
    body["data"][0].update(changes)
    return body


def test_docs_example_every_value():
    position = parse_loan_info(DOCS_EXAMPLE)
    assert position.active is True
    assert position.loan_notional_usd == 0.8661285
    assert position.collateral_notional_usd == 1.5078763
    assert position.current_ltv == 0.5742
    assert position.margin_call_ltv == 0.7374
    assert position.liquidation_ltv == 0.8374
    assert dict(position.collateral) == {
        "COMP": 9.7e-06,
        "STX": 0.78,
        "DOT": 0.001,
        "LUNA": 0.05357864,
    }
    assert dict(position.loans) == {"USDC": 0.86590608}
    assert position.liquidation_instrument is None
    assert position.liquidation_price is None
    assert position.ignored_entries == 0


def test_values_keep_okx_digits():
    position = parse_loan_info(DOCS_EXAMPLE)
    assert repr(position.collateral["COMP"]) == "9.7e-06"
    assert repr(position.loans["USDC"]) == "0.86590608"


def test_empty_data_is_no_loan():
    assert parse_loan_info({"code": "0", "data": [], "msg": ""}) == NO_LOAN
    assert NO_LOAN.loan_notional_usd == 0 and NO_LOAN.current_ltv is None


def test_empty_strings_are_absent_not_zero():
    position = parse_loan_info(entry(curLTV="", marginCallLTV="", loanNotionalUsd=""))
    assert position.current_ltv is None
    assert position.margin_call_ltv is None
    assert position.loan_notional_usd is None
    assert position.liquidation_ltv == 0.8374


def test_currency_with_empty_amount_is_left_out():
    position = parse_loan_info(
        entry(loanData=[{"ccy": "USDC", "amt": ""}, {"ccy": "USDT", "amt": "5"}])
    )
    assert dict(position.loans) == {"USDT": 5.0}


def test_risk_warning_only_when_both_present():
    risk = {"instId": "BTC-USDT", "liqPx": "48123.5"}
    position = parse_loan_info(entry(riskWarningData=risk))
    assert position.liquidation_instrument == "BTC-USDT"
    assert position.liquidation_price == 48123.5
    half = parse_loan_info(entry(riskWarningData={"instId": "BTC-USDT", "liqPx": ""}))
    assert half.liquidation_instrument is None and half.liquidation_price is None


def test_negative_zero_reads_as_zero():
    position = parse_loan_info(entry(loanNotionalUsd="-0"))
    assert position.loan_notional_usd == 0.0
    assert repr(position.loan_notional_usd) == "0.0"


def test_more_than_one_entry_uses_first():
    body = copy.deepcopy(DOCS_EXAMPLE)
    second = copy.deepcopy(body["data"][0])
    second["curLTV"] = "0.9"
    body["data"].append(second)
    position = parse_loan_info(body)
    assert position.current_ltv == 0.5742
    assert position.ignored_entries == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "not an object"),
        ({"code": "0"}, "no 'data'"),
        ({"data": {}}, "not a list"),
        ({"data": ["x"]}, "data[0] is a str"),
        (entry(curLTV=None), "data[0].curLTV: expected a decimal string, got NoneType"),
        (entry(curLTV=0.5), "expected a decimal string, got float"),
        (entry(curLTV="abc"), "'abc' is not a decimal number"),
        (entry(curLTV="NaN"), "'NaN' is not a decimal number"),
        (entry(curLTV="inf"), "is not a decimal number"),
        (entry(curLTV="1e400"), "'1e400' is out of range"),
        (entry(curLTV="1_0"), "is not a decimal number"),
        (entry(curLTV="١٢"), "is not a decimal number"),
        (entry(curLTV={"v": "1"}), "got dict"),
        (entry(loanNotionalUsd="-5"), "is negative"),
        (entry(collateralData=[{"ccy": "BTC", "amt": "-1"}]), "collateralData[0].amt"),
        (entry(collateralData=[{"ccy": "BTC"}]), "collateralData[0] has no 'amt'"),
        (entry(collateralData=[{"ccy": 5, "amt": "1"}]), "collateralData[0].ccy"),
        (entry(collateralData="BTC"), "collateralData is a str"),
        (
            entry(loanData=[{"ccy": "USDT", "amt": "1"}, {"ccy": "USDT", "amt": "2"}]),
            "appears twice",
        ),
        (entry(riskWarningData=None), "riskWarningData is not an object"),
    ],
)
def test_refuses_malformed(body, message):
    with pytest.raises(InvalidResponse) as caught:
        parse_loan_info(body)
    assert message in str(caught.value)


def test_missing_field_is_refused():
    body = copy.deepcopy(DOCS_EXAMPLE)
    del body["data"][0]["curLTV"]
    with pytest.raises(InvalidResponse, match="data\\[0\\] has no 'curLTV'"):
        parse_loan_info(body)
