"""Signed calls to OKX's flexible-loan endpoints, public ones (index-tickers), and the
classification of what can go wrong.

This module knows OKX and HTTP, nothing of Prometheus: a call returns its parsed answer or raises
:class:`OkxError` carrying one :class:`FailureReason`, a one-line detail and an operator's hint.
Each HTTP request is reported to an optional ``on_request`` callback (endpoint, duration and
outcome), which is how the exporter counts requests without this module knowing about metrics.
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar
from urllib.parse import urlencode

import httpx

from okx_loan_exporter.loan_records import (
    BorrowHeadroom,
    HistoryRecord,
    InterestRecord,
    parse_interest_accrued,
    parse_loan_history,
    parse_max_loan,
    parse_max_redeem,
)
from okx_loan_exporter.okx_transport import IDEMPOTENT_EXTENSION
from okx_loan_exporter.position import InvalidResponse, Position, parse_loan_info
from okx_loan_exporter.prices import INDEX_TICKERS_PATH, QUOTE, IndexPrices, parse_index_tickers

LOAN_PATH = "/api/v5/finance/flexible-loan"
LOAN_INFO_PATH = f"{LOAN_PATH}/loan-info"
PUBLIC_TIME_PATH = "/api/v5/public/time"
MAX_CLOCK_OFFSET = 86_400.0
"""A clock difference to OKX beyond a day is taken for a broken answer, not corrected for."""
MAX_BODY_BYTES = 1_000_000
"""Answers larger than this are refused; a real loan-info answer is a few kilobytes."""


T = TypeVar("T")
READ_ONLY = {IDEMPOTENT_EXTENSION: True}


class FailureReason(StrEnum):
    """Why a request failed; the values are the ``reason`` label of the failure counter."""

    RATE_LIMITED = "rate_limited"
    AUTH = "auth"
    API_ERROR = "api_error"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    NETWORK = "network"
    INVALID_RESPONSE = "invalid_response"


class Endpoint(StrEnum):
    """The OKX endpoints the exporter calls; the values are the ``endpoint`` label of its request
    metrics."""

    LOAN_INFO = "loan_info"
    LOAN_HISTORY = "loan_history"
    INTEREST_ACCRUED = "interest_accrued"
    MAX_LOAN = "max_loan"
    MAX_REDEEM = "max_redeem"
    PUBLIC_TIME = "public_time"
    INDEX_TICKERS = "index_tickers"


ENDPOINT_PATHS: dict[Endpoint, str] = {
    Endpoint.LOAN_INFO: LOAN_INFO_PATH,
    Endpoint.LOAN_HISTORY: f"{LOAN_PATH}/loan-history",
    Endpoint.INTEREST_ACCRUED: f"{LOAN_PATH}/interest-accrued",
    Endpoint.MAX_LOAN: f"{LOAN_PATH}/max-loan",
    Endpoint.MAX_REDEEM: f"{LOAN_PATH}/max-collateral-redeem-amount",
    Endpoint.PUBLIC_TIME: PUBLIC_TIME_PATH,
    Endpoint.INDEX_TICKERS: INDEX_TICKERS_PATH,
}

RequestObserver = Callable[[Endpoint, float, "FailureReason | None"], None]
"""Called once per HTTP request sent to OKX with its endpoint, its duration in seconds and its
failure reason (None on success)."""


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
    """A failed call to OKX: the reason label, OKX's code if any, and what to do about it."""

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
        return frozenset(self._fragments(length))

    def appear_in(self, text: str, length: int = 6) -> bool:
        """True when ``text`` holds any of :meth:`fragments` (made as needed, not kept: a set
        per account came to 8 MiB at 1,000 accounts, for a check that runs only on errors)."""
        return any(fragment in text for fragment in self._fragments(length))

    def _fragments(self, length: int) -> Iterator[str]:
        for secret in (self.api_key, self.secret_key, self.passphrase):
            if len(secret) <= length:
                yield secret
            yield from (secret[i : i + length] for i in range(len(secret) - length + 1))


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
    """Calls one account's OKX endpoints, signing each request and correcting for clock skew.

    ``http`` is shared by every account with the same base URL, so connections are pooled. Each
    call, including a clock correction and its retry, is bounded by ``timeout``.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        credentials: Credentials | None,
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
        self._known: tuple[Credentials, ...] = () if credentials is None else (credentials,)
        """Every key this client signed with (a rotated one too): all are withheld from errors."""
        self._demo = demo
        self._timeout = timeout
        self._clock = clock
        self._on_request = on_request
        self._max_body_bytes = max_body_bytes
        self.clock_offset = 0.0
        """OKX's clock minus the local clock in seconds, measured after a 50102; 0 until then."""
        self._measuring: asyncio.Future[None] | None = None

    def use_credentials(self, credentials: Credentials) -> None:
        """Sign the next requests with ``credentials`` (a rotated key); old ones stay redacted."""
        if credentials not in self._known:
            self._known = (*self._known, credentials)
        self._credentials = credentials

    async def loan_info(self) -> Position:
        """Return the account's position, or raise :class:`OkxError`."""
        return await self.signed(Endpoint.LOAN_INFO, parse_loan_info)

    async def loan_history(self) -> tuple[HistoryRecord, ...]:
        """The newest page of loan-history records (every order; newest first)."""
        return await self.signed(Endpoint.LOAN_HISTORY, parse_loan_history)

    async def interest_accrued(self) -> tuple[InterestRecord, ...]:
        """The newest page of interest accruals (every order; newest first)."""
        return await self.signed(Endpoint.INTEREST_ACCRUED, parse_interest_accrued)

    async def max_loan(self, currency: str, order_id: str) -> BorrowHeadroom:
        """How much more of ``currency`` the order can borrow (POST, signed body)."""
        body = {"borrowCcy": currency, **({"ordId": order_id} if order_id else {})}
        return await self.signed(
            Endpoint.MAX_LOAN, lambda answer: parse_max_loan(answer, currency), body=body
        )

    async def max_redeem(self, currency: str, order_id: str) -> float | None:
        """How much of the collateral ``currency`` can be withdrawn from the order now."""
        query = {"ccy": currency, **({"ordId": order_id} if order_id else {})}
        return await self.signed(
            Endpoint.MAX_REDEEM, lambda answer: parse_max_redeem(answer, currency), query=query
        )

    async def signed(
        self,
        endpoint: Endpoint,
        parse: Callable[[dict[str, object]], T],
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, object] | None = None,
    ) -> T:
        """Call a private endpoint: GET with ``query``, or POST with the JSON ``body``.

        The body is part of the signature, as the query string is. ``parse`` turns the ``code
        "0"`` answer into the result and raises ``InvalidResponse`` when it is malformed. A 50102
        re-measures OKX's clock and retries once; the whole call is bounded by ``timeout``.
        """
        path = ENDPOINT_PATHS[endpoint]
        if query:
            path += "?" + urlencode(query)
        method, payload = ("GET", "") if body is None else ("POST", _json_body(body))
        try:
            async with asyncio.timeout(self._timeout):
                offset = self.clock_offset
                try:
                    return await self._signed_once(endpoint, method, path, payload, parse)
                except OkxError as error:
                    if error.code != CLOCK_SKEW_CODE:
                        raise
                await self._correct_clock(offset)
                return await self._signed_once(endpoint, method, path, payload, parse)
        except TimeoutError:
            raise self._timeout_error() from None

    async def public(
        self,
        endpoint: Endpoint,
        parse: Callable[[dict[str, object]], T],
        *,
        query: Mapping[str, str] | None = None,
    ) -> T:
        """Call a public endpoint: an unsigned GET with ``query``, bounded by ``timeout``.

        Needs no credentials, so a client made with ``credentials=None`` serves a whole base URL.
        """
        path = ENDPOINT_PATHS[endpoint]
        if query:
            path += "?" + urlencode(query)
        checked = self._checked(endpoint, parse)
        try:
            async with asyncio.timeout(self._timeout):
                return await self._request(endpoint, "GET", path, {}, checked)
        except TimeoutError:
            raise self._timeout_error() from None

    async def index_prices(self, quote: str = QUOTE) -> IndexPrices:
        """OKX's index prices in ``quote`` (public index-tickers), or raise :class:`OkxError`."""
        return await self.public(
            Endpoint.INDEX_TICKERS,
            lambda body: parse_index_tickers(body, quote),
            query={"quoteCcy": quote},
        )

    def _timeout_error(self) -> OkxError:
        return OkxError(
            FailureReason.TIMEOUT,
            f"no answer from {self._base_url} within {self._timeout:g}s",
            "check the network path to OKX, or raise timeout",
        )

    def _checked(
        self, endpoint: Endpoint, parse: Callable[[dict[str, object]], T]
    ) -> Callable[[dict[str, object]], T]:
        """``parse`` with its InvalidResponse turned into OkxError (credentials redacted)."""

        def checked(answer: dict[str, object]) -> T:
            try:
                return parse(answer)
            except InvalidResponse as error:
                name = ENDPOINT_PATHS[endpoint].rsplit("/", 1)[-1]
                raise OkxError(
                    FailureReason.INVALID_RESPONSE,
                    f"malformed {name} answer: {self._redact(str(error))}",
                    "OKX changed its answer or a proxy rewrote it; the last good values are kept",
                ) from None

        return checked

    async def _signed_once(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        payload: str,
        parse: Callable[[dict[str, object]], T],
    ) -> T:
        credentials = self._credentials
        if credentials is None:
            raise ValueError(f"{endpoint.value} is a private endpoint: it needs credentials")
        timestamp = okx_timestamp(self._clock() + self.clock_offset)
        headers = {
            "OK-ACCESS-KEY": credentials.api_key,
            "OK-ACCESS-SIGN": sign(credentials.secret_key, timestamp, method, path, payload),
            "OK-ACCESS-TIMESTAMP": timestamp,
            "OK-ACCESS-PASSPHRASE": credentials.passphrase,
            "Content-Type": "application/json",
        }
        if self._demo:
            headers["x-simulated-trading"] = "1"
        checked = self._checked(endpoint, parse)
        return await self._request(endpoint, method, path, headers, checked, payload)

    async def _correct_clock(self, offset_when_signed: float) -> None:
        """Measure OKX's clock once for every call that met the same 50102 at the same time.

        A call whose offset was corrected since it signed retries at once; concurrent calls share
        one public/time request.
        """
        if self.clock_offset != offset_when_signed:
            return
        if self._measuring is None or self._measuring.done():
            self._measuring = asyncio.ensure_future(self._measure_clock_offset())
        await asyncio.shield(self._measuring)

    async def _measure_clock_offset(self) -> None:
        sent = self._clock()
        okx_ms = await self._request(
            Endpoint.PUBLIC_TIME, "GET", PUBLIC_TIME_PATH, {}, _parse_public_time
        )
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
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        headers: dict[str, str],
        parse: Callable[[dict[str, object]], T],
        payload: str = "",
    ) -> T:
        """Send one request, parse its ``code "0"`` answer, and report the request's outcome."""
        started = time.perf_counter()
        reason: FailureReason | None = FailureReason.NETWORK
        try:
            status, raw = await self._send(method, path, headers, payload)
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
                self._on_request(endpoint, time.perf_counter() - started, reason)

    async def _send(
        self, method: str, path: str, headers: dict[str, str], payload: str
    ) -> tuple[int, bytes]:
        url = self._base_url + path
        content = payload.encode() if payload else None
        if self._http.is_closed:  # a scrape that came in while the exporter shuts down
            raise OkxError(FailureReason.NETWORK, "not sent: the exporter is shutting down")
        try:
            # Every call here only reads (max-loan's POST too): safe to resend after OKX closed
            # the pooled connection it went out on (okx_transport).
            async with self._http.stream(
                method, url, headers=headers, content=content, extensions=READ_ONLY
            ) as response:
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
        if any(known.appear_in(text) for known in self._known):
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


def _json_body(body: Mapping[str, object]) -> str:
    """The exact text sent and signed as a POST body: compact JSON, as OKX's SDK sends it."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)
