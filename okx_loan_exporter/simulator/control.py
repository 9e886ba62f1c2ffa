"""The unauthenticated ``/sim/*`` control API: read the stats, an account or the config, and
change prices, LTVs, faults, latency, clock skew, orders or an account's passphrase and secret key
(``POST``); every change is checked before any is made."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from okx_loan_exporter.simulator.faults import FAULTS
from okx_loan_exporter.simulator.replies import Reply, control_reply

if TYPE_CHECKING:
    from okx_loan_exporter.simulator.simulation import Simulator


def handle_control(sim: Simulator, method: str, path: str, body: bytes) -> Reply:
    """The /sim/* endpoints: GET reads (stats, an account, the config), POST changes."""
    account = (
        unquote(path.removeprefix("/sim/accounts/")) if path.startswith("/sim/accounts/") else None
    )
    if path not in ("/sim/stats", "/sim/reset", "/sim/config") and not account:
        return control_reply(404, {"error": f"no control endpoint {path}"})
    allowed = {"/sim/stats": "GET", "/sim/reset": "POST"}.get(path, "GET or POST")
    if method not in allowed.split(" or "):
        return control_reply(405, {"error": f"use {allowed} {path}"})
    try:
        document = _json_object(body) if method == "POST" else {}
        if path == "/sim/stats":
            return control_reply(200, sim.stats())
        if path == "/sim/reset":
            sim.reset()
            return control_reply(200, {"ok": True})
        if path == "/sim/config":
            return control_reply(200, _change_config(sim, document))
        return control_reply(200, _change_account(sim, str(account), document))
    except KeyError as exc:
        return control_reply(404, {"error": str(exc.args[0]) if exc.args else "not found"})
    except ValueError as exc:
        return control_reply(400, {"error": str(exc)})


def _change_config(sim: Simulator, document: dict[str, Any]) -> dict[str, Any]:
    _only_keys(document, {"clock_skew", "latency", "walk"})
    skew = document.get("clock_skew")
    latency = document.get("latency")
    if skew is not None:
        _number(skew, "clock_skew")
    if latency is not None:
        _number(latency, "latency")
    if "walk" in document and not isinstance(document["walk"], bool):
        raise ValueError("'walk' must be true or false")
    if "walk" in document:
        sim.set_market_walk(document["walk"])
    if skew is not None:
        sim.set_clock_skew(skew)
    if latency is not None:
        sim.set_latency(latency)
    return sim.config_view()


def _change_account(sim: Simulator, name: str, document: dict[str, Any]) -> dict[str, Any]:
    """``POST /sim/accounts/<name>``; ``order`` picks the order (default: the first)."""
    _only_keys(
        document,
        {"order", "ltv", "walk", "fault", "fault_count", "fault_endpoint", "latency", "close"}
        | {"passphrase", "secret_key"},
    )
    endpoint = document.get("fault_endpoint", "loan-info")
    if not isinstance(endpoint, str):
        raise ValueError("'fault_endpoint' must be an endpoint name such as loan-history")
    if endpoint != "loan-info":  # the other endpoints' faults are set alone
        if document.keys() - {"fault", "fault_count", "fault_endpoint"}:
            raise ValueError("'fault_endpoint' goes only with 'fault' and 'fault_count'")
        sim.set_fault(name, document.get("fault"), document.get("fault_count"), None, endpoint)
        return sim.account_view(name)
    order = document.get("order")
    if order is not None and not isinstance(order, str):
        raise ValueError("'order' must be an ordId string")
    view = sim.account_view(name, order)  # KeyError (404) for an unknown account or order
    if document.keys() & {"ltv", "walk", "close"} and view["order"] is None:
        raise ValueError(f"account {name!r} has no loan order")
    if "ltv" in document:
        _number(document["ltv"], "ltv")
    if "walk" in document and not isinstance(document["walk"], bool):
        raise ValueError("'walk' must be true or false")
    if "close" in document and document["close"] is not True:
        raise ValueError("'close' must be true (only /sim/reset brings a closed order back)")
    if "close" in document and document.keys() & {"ltv", "walk"}:
        raise ValueError("'close' cannot be combined with 'ltv' or 'walk'")
    if "latency" in document:
        _number(document["latency"], "latency")
    for secret in ("passphrase", "secret_key"):
        if secret in document and (
            not isinstance(document[secret], str) or not document[secret].strip()
        ):
            raise ValueError(f"{secret!r} must be a non-empty string")
    fault = document.get("fault", view["fault"])
    count = document.get("fault_count")
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known faults: {', '.join(FAULTS)}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError("'fault_count' must be a positive integer or null")
    if "ltv" in document:
        sim.set_ltv(name, document["ltv"], order)
    if "walk" in document:
        sim.set_walk(name, document["walk"], order)
    if "fault" in document or "fault_count" in document:
        sim.set_fault(name, fault, count, order)
    if "latency" in document:
        sim.set_latency(document["latency"], name)
    if "close" in document:
        sim.close_order(name, order)
        order = None
    if document.keys() & {"passphrase", "secret_key"}:
        sim.set_credentials(
            name, passphrase=document.get("passphrase"), secret_key=document.get("secret_key")
        )
    return sim.account_view(name, order)


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("the body must be a JSON object")
    return document


def _only_keys(document: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise ValueError(f"unknown keys {unknown}; allowed: {sorted(allowed)}")


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name!r} must be a number")
    return float(value)
