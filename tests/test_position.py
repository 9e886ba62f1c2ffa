"""The loan-info parser: the documented example, OKX's empty strings, and refusals."""

import copy
import json
from pathlib import Path

import pytest

from okx_loan_exporter.position import NO_LOAN, InvalidResponse, Order, parse_loan_info

DATA = Path(__file__).parent / "data"
DOCS_EXAMPLE = json.loads((DATA / "loan_info_docs_example.json").read_text())


def entry(**changes):
    body = copy.deepcopy(DOCS_EXAMPLE)
    body["data"][0].update(changes)
    return body


def only_order(body) -> Order:
    position = parse_loan_info(body)
    assert len(position.orders) == 1
    return position.orders[0]


def test_docs_example_every_value():
    position = parse_loan_info(DOCS_EXAMPLE)
    assert position.active is True
    (order,) = position.orders
    assert order.order_id == ""  # the example predates orders: no ordId
    assert order.loan_notional_usd == 0.8661285
    assert order.collateral_notional_usd == 1.5078763
    assert order.current_ltv == 0.5742
    assert order.margin_call_ltv == 0.7374
    assert order.liquidation_ltv == 0.8374
    assert dict(order.collateral) == {
        "COMP": 9.7e-06,
        "STX": 0.78,
        "DOT": 0.001,
        "LUNA": 0.05357864,
    }
    assert dict(order.loans) == {"USDC": 0.86590608}
    assert order.liquidation_instrument is None
    assert order.liquidation_price is None


def test_values_keep_okx_digits():
    order = only_order(DOCS_EXAMPLE)
    assert repr(order.collateral["COMP"]) == "9.7e-06"
    assert repr(order.loans["USDC"]) == "0.86590608"


def test_empty_data_is_no_loan():
    position = parse_loan_info({"code": "0", "data": [], "msg": ""})
    assert position == NO_LOAN
    assert position.orders == () and position.active is False


def test_empty_strings_are_absent_not_zero():
    order = only_order(entry(curLTV="", marginCallLTV="", loanNotionalUsd=""))
    assert order.current_ltv is None
    assert order.margin_call_ltv is None
    assert order.loan_notional_usd is None
    assert order.liquidation_ltv == 0.8374


def test_currency_with_empty_amount_is_left_out():
    order = only_order(entry(loanData=[{"ccy": "USDC", "amt": ""}, {"ccy": "USDT", "amt": "5"}]))
    assert dict(order.loans) == {"USDT": 5.0}


def test_risk_warning_only_when_both_present():
    risk = {"instId": "BTC-USDT", "liqPx": "48123.5"}
    order = only_order(entry(riskWarningData=risk))
    assert order.liquidation_instrument == "BTC-USDT"
    assert order.liquidation_price == 48123.5
    half = only_order(entry(riskWarningData={"instId": "BTC-USDT", "liqPx": ""}))
    assert half.liquidation_instrument is None and half.liquidation_price is None


def test_negative_zero_reads_as_zero():
    order = only_order(entry(loanNotionalUsd="-0"))
    assert order.loan_notional_usd == 0.0
    assert repr(order.loan_notional_usd) == "0.0"


def two_orders():
    """The docs example as order 1001; order 1002 has one collateral and a liquidation price."""
    return json.loads((DATA / "loan_info_two_orders.json").read_text())


def test_every_order_is_read_in_okx_order():
    position = parse_loan_info(two_orders())
    first, second = position.orders
    assert first.order_id == "1001" and first.current_ltv == 0.5742
    assert dict(first.loans) == {"USDC": 0.86590608} and len(first.collateral) == 4
    assert second.order_id == "1002"
    assert second.loan_notional_usd == 12000.2 and second.collateral_notional_usd == 30000.5
    assert second.current_ltv == 0.4
    assert (second.margin_call_ltv, second.liquidation_ltv) == (0.75, 0.85)
    assert dict(second.collateral) == {"BTC": 0.5} and dict(second.loans) == {"USDT": 12000.2}
    assert second.liquidation_instrument == "BTC-USDT"
    assert second.liquidation_price == 28235.76470588


def test_several_entries_without_ordid_are_refused():
    body = copy.deepcopy(DOCS_EXAMPLE)
    body["data"].append(copy.deepcopy(body["data"][0]))
    with pytest.raises(InvalidResponse, match=r"data\[0\] has no ordId, but the answer holds 2"):
        parse_loan_info(body)


def test_entry_without_ordid_beside_an_order_is_refused():
    body = two_orders()
    del body["data"][1]["ordId"]
    with pytest.raises(InvalidResponse, match=r"data\[1\] has no ordId"):
        parse_loan_info(body)


def test_duplicate_ordid_is_refused():
    body = two_orders()
    body["data"][1]["ordId"] = "1001"
    with pytest.raises(InvalidResponse, match=r"data\[1\]\.ordId: '1001' appears twice"):
        parse_loan_info(body)


def test_ordid_must_be_a_string():
    body = two_orders()
    body["data"][1]["ordId"] = 1002
    with pytest.raises(InvalidResponse, match=r"data\[1\]\.ordId: expected a string"):
        parse_loan_info(body)


def test_fault_in_a_later_order_names_it():
    body = two_orders()
    body["data"][1]["curLTV"] = "abc"
    with pytest.raises(InvalidResponse, match=r"data\[1\]\.curLTV: 'abc'"):
        parse_loan_info(body)


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
