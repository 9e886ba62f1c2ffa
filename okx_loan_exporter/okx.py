"""Signed calls to OKX's loan-info endpoint and the classification of everything that can go wrong.

This module knows OKX and HTTP, nothing of Prometheus: it returns a :class:`Position` or raises
:class:`OkxError` carrying one :class:`FailureReason`, a one-line detail and an operator's hint.
Each HTTP request is reported to an optional ``on_request`` callback (duration and outcome), which
is how the exporter counts requests without this module knowing about metrics.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar

import httpx

from okx_loan_exporter.position import InvalidResponse, Position, parse_loan_info

LOAN_INFO_PATH = "/api/v5/finance/flexible-loan/loan-info"
PUBLIC_TIME_PATH = "/api/v5/public/time"
MAX_CLOCK_OFFSET = 86_400.0
"""A clock difference to OKX beyond a day is taken for a broken answer, not corrected for."""
MAX_BODY_BYTES = 1_000_000
"""Answers larger than this are refused; a real loan-info answer is a few kilobytes."""


T = TypeVar("T")


class FailureReason(StrEnum):
    """Why a request failed; the values are the ``reason`` label of the failure counter."""

    RATE_LIMITED = "rate_limited"
    AUTH = "auth"
    API_ERROR = "api_error"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    NETWORK = "network"
    INVALID_RESPONSE = "invalid_response"


RequestObserver = Callable[[float, "FailureReason | None"], None]
"""Called once per HTTP request sent to OKX with its duration in seconds and its failure reason
(None on success)."""

RATE_LIMIT_CODES = frozenset({"50011", "50061"})
CLOCK_SKEW_CODE = "50102"

HINTS: dict[str, str] = {
    "50011": "OKX rate limit reached: raise cache_ttl, and check for other programs using this "
    "account's API key",
    "50061": "OKX rate limit reached: raise cache_ttl, and check for other programs using this "
    "account's API key",
    "50001": "OKX service temporarily unavailable: nothing to do, retried after cache_ttl",
    "50013": "OKX system busy: nothing to do, retried after cache_ttl",
    "50101": "the key is for the other environment: set demo: true for a demo-trading key, or "
    "demo: false for a live key",
    "50102": "the local clock is off by more than 30 s even after correcting from OKX's "
    "public/time: fix the machine's clock (NTP)",
    "50103": "a request header was missing: this is an exporter bug, please report it",
    "50104": "a request header was missing: this is an exporter bug, please report it",
    "50106": "a request header was missing: this is an exporter bug, please report it",
    "50107": "a request header was missing: this is an exporter bug, please report it",
    "50105": "the passphrase is wrong: set the passphrase chosen when the API key was created",
    "50110": "this machine's IP is not in the API key's IP whitelist: add this machine's public "
    "IP to the key",
    "50111": "invalid API key: the key is wrong or deleted, or it belongs to another region's "
    "domain (set region: eea or region: us, or base_url)",
    "50112": "invalid timestamp format: this is an exporter bug, please report it",
    "50113": "invalid signature: the secret key is wrong",
    "50114": "invalid authorization: check the API key, secret key and passphrase",
    "50120": "the API key lacks permission: create a key with the Read permission",
}


class OkxError(Exception):
    """A failed loan-info attempt: the reason label, OKX's code if any, and what to do about it."""

    def __init__(
        self, reason: FailureReason, detail: str, hint: str = "", code: str | None = None
    ) -> None:
        super().__init__(f"{reason.value}: {detail}" + (f" ({hint})" if hint else ""))
        self.reason = reason
        self.detail = detail
        self.hint = hint
        self.code = code


@dataclass(frozen=True)
class Credentials:
    """An OKX API key with its secret and passphrase; never shown in reprs."""

    api_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    passphrase: str = field(repr=False)

    def fragments(self, length: int = 6) -> frozenset[str]:
        """Every substring of ``length`` characters of every credential, to recognise leaks."""
        found: set[str] = set()
        for secret in (self.api_key, self.secret_key, self.passphrase):
            if len(secret) <= length:
                found.add(secret)
            found.update(secret[i : i + length] for i in range(len(secret) - length + 1))
        return frozenset(found)


def sign(secret_key: str, timestamp: str, method: str, request_path: str, body: str = "") -> str:
    """OKX's OK-ACCESS-SIGN: base64(HMAC-SHA256(secret, timestamp + METHOD + path + body))."""
    message = f"{timestamp}{method.upper()}{request_path}{body}".encode()
    digest = hmac.new(secret_key.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def okx_timestamp(epoch_seconds: float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, e.g. ``2020-12-08T09:08:57.715Z``."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class OkxClient:
    """Fetches one account's loan-info, signing each request and correcting for clock skew.

    ``http`` is shared by every account with the same base URL, so connections are pooled. The
    whole attempt, including a clock correction and its retry, is bounded by ``timeout``.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        credentials: Credentials,
        *,
        demo: bool = False,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_request: RequestObserver | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._credentials = credentials
        self._fragments = credentials.fragments()
        self._demo = demo
        self._timeout = timeout
        self._clock = clock
        self._on_request = on_request
        self._max_body_bytes = max_body_bytes
        self.clock_offset = 0.0
        """OKX's clock minus the local clock in seconds, measured after a 50102; 0 until then."""

    def use_credentials(self, credentials: Credentials) -> None:
        """Sign the next requests with ``credentials`` (a rotated key); old ones stay redacted."""
        self._fragments = self._fragments | credentials.fragments()
        self._credentials = credentials

    async def loan_info(self) -> Position:
        """Return the account's position, or raise :class:`OkxError`."""
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    return await self._signed_loan_info()
                except OkxError as error:
                    if error.code != CLOCK_SKEW_CODE:
                        raise
                await self._measure_clock_offset()
                return await self._signed_loan_info()
        except TimeoutError:
            raise OkxError(
                FailureReason.TIMEOUT,
                f"no answer from {self._base_url} within {self._timeout:g}s",
                "check the network path to OKX, or raise timeout",
            ) from None

    async def _signed_loan_info(self) -> Position:
        timestamp = okx_timestamp(self._clock() + self.clock_offset)
        credentials = self._credentials
        headers = {
            "OK-ACCESS-KEY": credentials.api_key,
            "OK-ACCESS-SIGN": sign(credentials.secret_key, timestamp, "GET", LOAN_INFO_PATH),
            "OK-ACCESS-TIMESTAMP": timestamp,
            "OK-ACCESS-PASSPHRASE": credentials.passphrase,
            "Content-Type": "application/json",
        }
        if self._demo:
            headers["x-simulated-trading"] = "1"
        return await self._request(LOAN_INFO_PATH, headers, self._parse_loan_info)

    def _parse_loan_info(self, body: dict[str, object]) -> Position:
        try:
            return parse_loan_info(body)
        except InvalidResponse as error:
            raise OkxError(
                FailureReason.INVALID_RESPONSE,
                f"malformed loan-info answer: {self._redact(str(error))}",
                "OKX changed its answer or a proxy rewrote it; the last good values are kept",
            ) from None

    async def _measure_clock_offset(self) -> None:
        sent = self._clock()
        okx_ms = await self._request(PUBLIC_TIME_PATH, {}, _parse_public_time)
        received = self._clock()
        offset = okx_ms / 1000 - (sent + received) / 2
        if abs(offset) > MAX_CLOCK_OFFSET:
            raise OkxError(
                FailureReason.INVALID_RESPONSE,
                f"OKX public/time is {offset:+.0f} s from the local clock, too far to be believed",
                "check the machine's clock (NTP) and that base_url points at OKX",
            )
        self.clock_offset = offset

    async def _request(
        self, path: str, headers: dict[str, str], parse: Callable[[dict[str, object]], T]
    ) -> T:
        """Send one GET, parse its ``code "0"`` answer, and report the request's outcome."""
        started = time.perf_counter()
        reason: FailureReason | None = FailureReason.NETWORK
        try:
            status, raw = await self._get(path, headers)
            result = parse(self._decode(status, raw))
            reason = None
            return result
        except OkxError as error:
            reason = error.reason
            raise
        except (TimeoutError, asyncio.CancelledError):
            reason = FailureReason.TIMEOUT
            raise
        finally:
            if self._on_request is not None:
                self._on_request(time.perf_counter() - started, reason)

    async def _get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        url = self._base_url + path
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_body_bytes:
                        raise OkxError(
                            FailureReason.INVALID_RESPONSE,
                            f"answer larger than {self._max_body_bytes} bytes",
                            "check base_url points at OKX",
                        )
                    chunks.append(chunk)
                return response.status_code, b"".join(chunks)
        except httpx.TimeoutException:
            raise TimeoutError from None
        except httpx.ConnectError as error:
            raise self._connect_error(error) from None
        except httpx.HTTPError as error:
            raise OkxError(
                FailureReason.NETWORK,
                f"connection to {self._base_url} failed: {type(error).__name__}",
                "check the network path to OKX",
            ) from None

    def _connect_error(self, error: httpx.ConnectError) -> OkxError:
        cause: BaseException | None = error
        seen: set[int] = set()
        while cause is not None and id(cause) not in seen:
            if isinstance(cause, socket.gaierror):
                return OkxError(
                    FailureReason.NETWORK,
                    f"cannot resolve the host of {self._base_url}",
                    "check base_url or region, and DNS",
                )
            if isinstance(cause, ssl.SSLCertVerificationError):
                return OkxError(
                    FailureReason.NETWORK,
                    f"the TLS certificate of {self._base_url} is not trusted",
                    "behind a TLS-inspecting proxy set tls_ca_file (or SSL_CERT_FILE) to its CA; "
                    "otherwise check base_url",
                )
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        return OkxError(
            FailureReason.NETWORK,
            f"cannot connect to {self._base_url}",
            "check base_url, the network and any proxy or firewall",
        )

    def _decode(self, status: int, raw: bytes) -> dict[str, object]:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict) or "code" not in body:
            if status == 429:
                raise OkxError(
                    FailureReason.RATE_LIMITED, "HTTP 429 without an OKX answer", HINTS["50011"]
                )
            if status >= 400:
                raise OkxError(
                    FailureReason.HTTP_ERROR,
                    f"HTTP {status} without an OKX answer",
                    "OKX or a proxy failed; retried after cache_ttl"
                    if status >= 500
                    else "check base_url points at OKX's REST API",
                )
            what = "not JSON" if body is None else "JSON without 'code'"
            raise OkxError(
                FailureReason.INVALID_RESPONSE,
                f"HTTP {status} answer is {what}",
                "check base_url points at OKX's REST API",
            )
        code = str(body["code"])
        if code != "0":
            raise self._api_error(code, body.get("msg"), status)
        if not 200 <= status < 300:
            raise OkxError(
                FailureReason.HTTP_ERROR,
                f"HTTP {status} with code 0",
                "OKX or a proxy failed; retried after cache_ttl",
            )
        return body

    def _api_error(self, code: str, message: object, status: int) -> OkxError:
        code = self._redact(code[:12])
        text = self._redact(message[:200]) if isinstance(message, str) else ""
        detail = f"OKX code {code}" + (f" ({text})" if text else "") + f", HTTP {status}"
        if code in RATE_LIMIT_CODES or status == 429:
            reason = FailureReason.RATE_LIMITED
        elif code.startswith("501") and len(code) == 5:
            reason = FailureReason.AUTH
        else:
            reason = FailureReason.API_ERROR
        hint = HINTS.get(code, "see OKX's error code list; retried after cache_ttl")
        return OkxError(reason, detail, hint, code=code)

    def _redact(self, text: str) -> str:
        """Withhold text that contains any six-character piece of a credential."""
        if any(fragment in text for fragment in self._fragments):
            return "[withheld: contained credential material]"
        return text


def _parse_public_time(body: dict[str, object]) -> int:
    """OKX's clock in milliseconds from a public/time answer."""
    try:
        text = body["data"][0]["ts"]  # type: ignore[index]
        if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 15:
            raise ValueError(text)
        return int(text)
    except (KeyError, IndexError, TypeError, ValueError):
        raise OkxError(
            FailureReason.INVALID_RESPONSE,
            "malformed public/time answer",
            "cannot correct the clock; fix the machine's clock (NTP)",
        ) from None
