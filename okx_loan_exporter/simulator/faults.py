"""Faults switched on per account: what each one makes of the loan-info answer.

HTML pages, broken or truncated JSON, spoiled fields, duplicate orders, OKX error codes, slow,
hanging, trickled, huge or dropped answers; each entry-spoiling fault hits one chosen order.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

from okx_loan_exporter.simulator.orders import blank_entry
from okx_loan_exporter.simulator.replies import Reply, json_bytes, okx_error, okx_ok

FAULTS: tuple[str, ...] = (
    "http_500_html",
    "http_200_html",
    "truncated_json",
    "invalid_json",
    "no_data",
    "missing_field",
    "null_field",
    "non_numeric",
    "nan_string",
    "huge_number",
    "negative_zero",
    "negative_amount",
    "nested_type",
    "empty_strings",
    "rate_limit",
    "busy_50001",
    "busy_50013",
    "auth_50101",
    "auth_50105",
    "auth_50110",
    "auth_50111",
    "auth_50113",
    "auth_50120",
    "slow",
    "hang",
    "slow_bytes",
    "huge_body",
    "close",
    "duplicate_order",
    "no_loan",
)
"""Every fault name :meth:`Simulator.set_fault` and ``POST /sim/accounts/<name>`` accept."""

ENDPOINT_FAULTS: tuple[str, ...] = (
    "http_500_html",
    "http_200_html",
    "truncated_json",
    "invalid_json",
    "no_data",
    "rate_limit",
    "busy_50001",
    "busy_50013",
    "auth_50101",
    "auth_50105",
    "auth_50110",
    "auth_50111",
    "auth_50113",
    "auth_50120",
    "slow",
    "hang",
    "slow_bytes",
    "close",
)
"""The faults of the other loan endpoints (loan-history, interest-accrued, max-loan, max-redeem):
every fault that does not spoil a loan-info entry."""

SLOW_FAULT_SECONDS = 3.0
HUGE_BODY_BYTES = 50 * 1024 * 1024

_HTML_500 = (
    b"<html>\r\n<head><title>500 Internal Server Error</title></head>\r\n<body>\r\n"
    b"<center><h1>500 Internal Server Error</h1></center>\r\n</body>\r\n</html>\r\n"
)
_HTML_200 = (
    b"<!DOCTYPE html><html><head><title>OKX | System maintenance</title></head>"
    b"<body><h1>We are upgrading our system</h1><p>Please come back later.</p></body></html>"
)

_ERROR_FAULTS = {
    "rate_limit": "50011",
    "busy_50001": "50001",
    "busy_50013": "50013",
    "auth_50101": "50101",
    "auth_50105": "50105",
    "auth_50110": "50110",
    "auth_50111": "50111",
    "auth_50113": "50113",
    "auth_50120": "50120",
}


def _edit_entry(fault: str, entry: dict[str, Any]) -> None:
    """Apply one of the faults that spoil a field of the entry, in place."""
    if fault == "missing_field":
        del entry["curLTV"]
    elif fault == "null_field":
        entry["curLTV"] = None
    elif fault == "non_numeric":
        entry["curLTV"] = "abc"
    elif fault == "nan_string":
        entry["curLTV"] = "NaN"
    elif fault == "huge_number":
        entry["curLTV"] = "1e400"
    elif fault == "negative_zero":
        entry["loanNotionalUsd"] = "-0"
    elif fault == "negative_amount":
        if entry["collateralData"]:
            entry["collateralData"][0]["amt"] = "-1"
        else:
            entry["collateralData"].append({"amt": "-1", "ccy": "BTC"})
    elif fault == "nested_type":
        entry["curLTV"] = {"value": entry["curLTV"]}
    elif fault == "empty_strings":
        entry["curLTV"] = entry["marginCallLTV"] = entry["liqLTV"] = ""
    else:  # pragma: no cover - guarded by the caller
        raise AssertionError(fault)


def _huge_reply(data: list[dict[str, Any]], target: int) -> Reply:
    """A valid loan-info answer padded to exactly HUGE_BODY_BYTES, produced chunk by chunk."""
    marker = "@@PADDING@@"
    padded = [dict(entry) for entry in data]
    padded[target]["padding"] = marker
    text = json.dumps({"code": "0", "data": padded, "msg": ""}, separators=(",", ":"))
    prefix, _, suffix = text.partition(marker)
    head, tail = prefix.encode(), suffix.encode()
    padding = HUGE_BODY_BYTES - len(head) - len(tail)

    def chunks() -> Iterator[bytes]:
        yield head
        block = b"x" * (1024 * 1024)
        left = padding
        while left > 0:
            piece = block if left >= len(block) else block[:left]
            left -= len(piece)
            yield piece
        yield tail

    return Reply(action="stream", chunks=chunks, length=HUGE_BODY_BYTES)


def fault_reply(fault: str, data: list[dict[str, Any]], order_id: str | None) -> Reply:
    """The answer ``fault`` makes of ``data`` (the entries the request asked for).

    Faults that spoil an entry spoil the order ``order_id`` (the first entry when None or not in
    ``data``); with no entry at all they spoil a blank one, so the fault still shows.
    """
    if fault == "http_500_html":
        return Reply(status=500, body=_HTML_500, content_type="text/html")
    if fault == "http_200_html":
        return Reply(status=200, body=_HTML_200, content_type="text/html; charset=utf-8")
    if fault in _ERROR_FAULTS:
        return okx_error(_ERROR_FAULTS[fault])
    if fault == "no_loan":
        return okx_ok([])
    if fault == "close":
        return Reply(action="close")
    if fault == "hang":
        return Reply(action="hang")
    if fault == "no_data":
        return Reply(body=json_bytes({"code": "0", "msg": ""}))
    if fault == "slow":
        reply = okx_ok(data)
        reply.delay = SLOW_FAULT_SECONDS
        return reply
    if fault == "slow_bytes":
        reply = okx_ok(data)
        reply.action = "trickle"
        return reply
    if fault in ("truncated_json", "invalid_json"):
        full = okx_ok(data).body
        if fault == "truncated_json":
            return Reply(body=full[: len(full) // 2])
        return Reply(body=b"{'code': '0', data: [" + full[30:60] + b",]")
    spoiled = copy.deepcopy(data) or [blank_entry()]
    target = next((i for i, entry in enumerate(spoiled) if entry.get("ordId", "") == order_id), 0)
    if fault == "duplicate_order":
        # The target order twice with different values: the two cannot be told apart.
        spoiled.insert(target + 1, {**spoiled[target], "curLTV": "0.1234"})
        return okx_ok(spoiled)
    if fault == "huge_body":
        return _huge_reply(spoiled, target)
    _edit_entry(fault, spoiled[target])
    return okx_ok(spoiled)
