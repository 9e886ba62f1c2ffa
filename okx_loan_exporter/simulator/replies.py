"""What the HTTP handler sends: a :class:`Reply` (status, body, delay, how to send it), and
OKX's answer shapes for success and for every error code the simulator gives."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# OKX error codes the simulator answers: code -> (HTTP status, OKX's message).
_OKX_ERRORS: dict[str, tuple[int, str]] = {
    "50001": (503, "Service temporarily unavailable. Please try again later."),
    "50011": (
        429,
        "Rate limit reached. Please refer to API documentation and throttle requests accordingly.",
    ),
    "50013": (200, "Systems are busy. Please try again later."),
    "50101": (401, "APIKey does not match current environment."),
    "50102": (401, "Timestamp request expired."),
    "50103": (401, 'Request header "OK-ACCESS-KEY" cannot be empty.'),
    "50104": (401, 'Request header "OK-ACCESS-PASSPHRASE" cannot be empty.'),
    "50105": (401, 'Request header "OK-ACCESS-PASSPHRASE" incorrect.'),
    "50106": (401, 'Request header "OK-ACCESS-SIGN" cannot be empty.'),
    "50107": (401, 'Request header "OK-ACCESS-TIMESTAMP" cannot be empty.'),
    "50110": (401, "Invalid IP"),
    "50111": (401, "Invalid OK-ACCESS-KEY."),
    "50112": (401, "Invalid OK-ACCESS-TIMESTAMP."),
    "50113": (401, "Invalid signature."),
    "50115": (405, "Invalid request method."),
    "50120": (401, "API key doesn't have permission to use this function."),
}


@dataclass
class Reply:
    """What the handler sends. ``action``: send, close, hang, trickle (slow_bytes) or stream."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    action: str = "send"
    delay: float = 0.0
    chunks: Callable[[], Iterator[bytes]] | None = None
    length: int = 0


def json_bytes(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def okx_error(code: str, status: int | None = None) -> Reply:
    default_status, message = _OKX_ERRORS[code]
    return Reply(
        status=default_status if status is None else status,
        body=json_bytes({"code": code, "msg": message, "data": []}),
    )


def okx_ok(data: list[Any]) -> Reply:
    return Reply(body=json_bytes({"code": "0", "data": data, "msg": ""}))


def okx_parameter_error(name: str) -> Reply:
    """OKX's answer to a missing or malformed parameter (code 51000, HTTP 400)."""
    return Reply(
        status=400, body=json_bytes({"code": "51000", "msg": f"Parameter {name} error", "data": []})
    )


def control_reply(status: int, document: object) -> Reply:
    return Reply(status=status, body=json_bytes(document))
