"""OKX's signature check, in OKX's order: headers, timestamp format and window, key, passphrase,
demo-trading header, then the HMAC-SHA256 signature over timestamp, method, path and body."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol

from okx_loan_exporter.simulator.accounts import SimAccount

TIMESTAMP_WINDOW_SECONDS = 30.0
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z", re.ASCII
)


class Headers(Protocol):
    """What the check reads of the request headers (http.server's message or a dict)."""

    def get(self, name: str, default: None = None, /) -> str | None: ...


def _parse_timestamp(text: str) -> float | None:
    """Seconds since the epoch for ``2020-12-08T09:08:57.715Z``; None for any other format."""
    if not _TIMESTAMP.fullmatch(text):
        return None
    try:
        when = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return when.timestamp()


def _raw(text: str) -> bytes:
    """The bytes a header value or request target arrived as (http.server decodes latin-1)."""
    return text.encode("latin-1", "replace")


def auth_error(
    headers: Headers,
    method: str,
    target: str,
    body: bytes,
    now: float,
    accounts_by_key: Mapping[str, SimAccount],
) -> str | None:
    """The OKX error code for a signed request, checked in OKX's order; None when it is valid."""
    key = headers.get("OK-ACCESS-KEY") or ""
    passphrase = headers.get("OK-ACCESS-PASSPHRASE") or ""
    sign = headers.get("OK-ACCESS-SIGN") or ""
    timestamp = headers.get("OK-ACCESS-TIMESTAMP") or ""
    if not key:
        return "50103"
    if not passphrase:
        return "50104"
    if not sign:
        return "50106"
    if not timestamp:
        return "50107"
    when = _parse_timestamp(timestamp)
    if when is None:
        return "50112"
    if abs(when - now) > TIMESTAMP_WINDOW_SECONDS:
        return "50102"
    account = accounts_by_key.get(key)
    if account is None:
        return "50111"
    if not hmac.compare_digest(_raw(passphrase), account.passphrase.encode()):
        return "50105"
    simulated = (headers.get("x-simulated-trading") or "").strip() == "1"
    if simulated != account.demo:
        return "50101"
    prehash = _raw(timestamp) + method.encode() + _raw(target) + body
    digest = hmac.new(account.secret_key.encode(), prehash, hashlib.sha256).digest()
    if not hmac.compare_digest(_raw(sign), base64.b64encode(digest)):
        return "50113"
    return None
