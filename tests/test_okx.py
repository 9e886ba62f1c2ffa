"""The OKX client: signing, headers, failure classification, clock correction, body cap."""

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import respx

from okx_loan_exporter.okx import (
    ENDPOINT_PATHS,
    LOAN_INFO_PATH,
    PUBLIC_TIME_PATH,
    Credentials,
    Endpoint,
    FailureReason,
    OkxClient,
    OkxError,
    okx_timestamp,
    sign,
)
from okx_loan_exporter.position import InvalidResponse

BASE = "https://okx.test"
DOCS_EXAMPLE = json.loads(
    (Path(__file__).parent / "data" / "loan_info_docs_example.json").read_text()
)
CREDENTIALS = Credentials("key-7Hq2Lm", "secret-Zp4Rt9Wx", "pass-Yv8Kd3")
FIXED_TIME = 1607418537.715  # 2020-12-08T09:08:57.715Z


def test_timestamp_format():
    assert okx_timestamp(FIXED_TIME) == "2020-12-08T09:08:57.715Z"
    assert okx_timestamp(0) == "1970-01-01T00:00:00.000Z"


def test_signature_matches_independent_vector():
    # printf '%s' '2020-12-08T09:08:57.715ZGET/api/v5/finance/flexible-loan/loan-info' \
    #   | openssl dgst -sha256 -hmac 'test-secret-key-2E5F' -binary | base64
    expected = "ob9bo4VWlmMbzGllWy5xhXeld/ekD8GWFp+TiC2bMGY="
    assert (
        sign("test-secret-key-2E5F", "2020-12-08T09:08:57.715Z", "GET", LOAN_INFO_PATH) == expected
    )
    assert (
        sign("test-secret-key-2E5F", "2020-12-08T09:08:57.715Z", "get", LOAN_INFO_PATH) == expected
    )


def test_credentials_repr_hides_secrets():
    text = repr(CREDENTIALS)
    assert "7Hq2Lm" not in text and "Zp4Rt9Wx" not in text and "Yv8Kd3" not in text


def fetch(*, demo=False, clock=lambda: FIXED_TIME, timeout=5.0, observed=None, max_body=None):
    async def run():
        async with httpx.AsyncClient() as http:
            kwargs = {"max_body_bytes": max_body} if max_body else {}
            client = OkxClient(
                http,
                BASE,
                CREDENTIALS,
                demo=demo,
                timeout=timeout,
                clock=clock,
                on_request=(lambda e, d, r: observed.append(r)) if observed is not None else None,
                **kwargs,
            )
            return await client.loan_info(), client

    return asyncio.run(run())


@respx.mock
def test_signed_headers_and_parsed_answer():
    route = respx.get(BASE + LOAN_INFO_PATH).respond(200, json=DOCS_EXAMPLE)
    observed = []
    position, _ = fetch(observed=observed)
    request = route.calls.last.request
    assert request.headers["OK-ACCESS-KEY"] == "key-7Hq2Lm"
    assert request.headers["OK-ACCESS-PASSPHRASE"] == "pass-Yv8Kd3"
    assert request.headers["OK-ACCESS-TIMESTAMP"] == "2020-12-08T09:08:57.715Z"
    assert request.headers["OK-ACCESS-SIGN"] == sign(
        "secret-Zp4Rt9Wx", "2020-12-08T09:08:57.715Z", "GET", LOAN_INFO_PATH
    )
    assert "x-simulated-trading" not in request.headers
    [order] = position.orders
    assert (order.order_id, order.current_ltv) == ("", 0.5742)
    assert observed == [None]


@respx.mock
def test_demo_adds_simulated_trading_header():
    route = respx.get(BASE + LOAN_INFO_PATH).respond(200, json=DOCS_EXAMPLE)
    fetch(demo=True)
    assert route.calls.last.request.headers["x-simulated-trading"] == "1"


def okx_error(code, status, msg="error"):
    return httpx.Response(status, json={"code": code, "msg": msg, "data": []})


@pytest.mark.parametrize(
    ("response", "reason", "hint"),
    [
        (okx_error("50011", 429, "Too Many Requests"), FailureReason.RATE_LIMITED, "cache_ttl"),
        (httpx.Response(429, text="slow down"), FailureReason.RATE_LIMITED, "cache_ttl"),
        (okx_error("50001", 503), FailureReason.API_ERROR, "retried"),
        (okx_error("50013", 200), FailureReason.API_ERROR, "retried"),
        (okx_error("50101", 401), FailureReason.AUTH, "demo: true"),
        (okx_error("50105", 401), FailureReason.AUTH, "passphrase"),
        (okx_error("50110", 401), FailureReason.AUTH, "whitelist"),
        (okx_error("50111", 401), FailureReason.AUTH, "region"),
        (okx_error("50113", 401), FailureReason.AUTH, "secret key is wrong"),
        (okx_error("50120", 401), FailureReason.AUTH, "Read permission"),
        (httpx.Response(500, html="<html>oops</html>"), FailureReason.HTTP_ERROR, ""),
        (httpx.Response(404, text="not here"), FailureReason.HTTP_ERROR, "base_url"),
        (httpx.Response(200, html="<html>login</html>"), FailureReason.INVALID_RESPONSE, ""),
        (httpx.Response(200, text='{"code": "0", "data": ['), FailureReason.INVALID_RESPONSE, ""),
        (httpx.Response(200, json={"code": "0"}), FailureReason.INVALID_RESPONSE, "no 'data'"),
        (httpx.Response(200, json={"data": []}), FailureReason.INVALID_RESPONSE, ""),
        (httpx.Response(502, json={"code": "0", "data": []}), FailureReason.HTTP_ERROR, ""),
    ],
)
@respx.mock
def test_failures_are_classified(response, reason, hint):
    respx.get(BASE + LOAN_INFO_PATH).mock(return_value=response)
    observed = []
    with pytest.raises(OkxError) as caught:
        fetch(observed=observed)
    assert caught.value.reason is reason
    assert hint in str(caught.value)
    assert observed == [reason]


def fetch_from(base_url):
    async def run():
        async with httpx.AsyncClient() as http:
            return await OkxClient(http, base_url, CREDENTIALS, timeout=3).loan_info()

    return asyncio.run(run())


def test_connection_refused_is_network():
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OkxError) as caught:
        fetch_from(f"http://127.0.0.1:{port}")
    assert caught.value.reason is FailureReason.NETWORK
    assert "cannot connect" in str(caught.value)


def test_dns_failure_is_network_with_hint():
    with pytest.raises(OkxError) as caught:
        fetch_from("http://okx-loan-exporter-test.invalid")
    assert caught.value.reason is FailureReason.NETWORK
    assert "cannot resolve the host" in str(caught.value)
    assert "region" in caught.value.hint


@respx.mock
def test_read_timeout_is_timeout():
    respx.get(BASE + LOAN_INFO_PATH).mock(side_effect=httpx.ReadTimeout("slow"))
    observed = []
    with pytest.raises(OkxError) as caught:
        fetch(observed=observed)
    assert caught.value.reason is FailureReason.TIMEOUT
    assert observed == [FailureReason.TIMEOUT]


@respx.mock
def test_whole_attempt_is_bounded_by_timeout():
    async def slow(request):
        await asyncio.sleep(5)
        return httpx.Response(200, json=DOCS_EXAMPLE)

    respx.get(BASE + LOAN_INFO_PATH).mock(side_effect=slow)
    with pytest.raises(OkxError) as caught:
        fetch(timeout=0.2)
    assert caught.value.reason is FailureReason.TIMEOUT


@respx.mock
def test_body_over_cap_is_refused():
    respx.get(BASE + LOAN_INFO_PATH).respond(200, content=b" " * 5000)
    with pytest.raises(OkxError) as caught:
        fetch(max_body=4096)
    assert caught.value.reason is FailureReason.INVALID_RESPONSE
    assert "larger than 4096 bytes" in str(caught.value)


@respx.mock
def test_clock_skew_corrects_from_public_time_and_retries_once():
    okx_now_ms = int((FIXED_TIME + 120) * 1000)
    loan = respx.get(BASE + LOAN_INFO_PATH).mock(
        side_effect=[
            okx_error("50102", 401, "Timestamp request expired"),
            httpx.Response(200, json=DOCS_EXAMPLE),
        ]
    )
    respx.get(BASE + PUBLIC_TIME_PATH).respond(
        200, json={"code": "0", "data": [{"ts": str(okx_now_ms)}], "msg": ""}
    )
    observed = []
    position, client = fetch(observed=observed)
    [order] = position.orders
    assert (order.order_id, order.current_ltv) == ("", 0.5742)
    assert client.clock_offset == pytest.approx(120, abs=0.01)
    assert loan.calls[1].request.headers["OK-ACCESS-TIMESTAMP"] == okx_timestamp(
        FIXED_TIME + client.clock_offset
    )
    assert "OK-ACCESS-KEY" not in respx.calls[1].request.headers  # public/time is unsigned
    assert observed == [FailureReason.AUTH, None, None]


@respx.mock
def test_clock_skew_twice_gives_up_with_hint():
    respx.get(BASE + LOAN_INFO_PATH).mock(return_value=okx_error("50102", 401))
    respx.get(BASE + PUBLIC_TIME_PATH).respond(
        200, json={"code": "0", "data": [{"ts": str(int((FIXED_TIME + 60) * 1000))}], "msg": ""}
    )
    with pytest.raises(OkxError) as caught:
        fetch()
    assert caught.value.reason is FailureReason.AUTH
    assert "clock" in caught.value.hint
    assert len(respx.calls) == 3


@respx.mock
def test_okx_message_echoing_a_secret_is_withheld():
    respx.get(BASE + LOAN_INFO_PATH).mock(
        return_value=okx_error("50111", 401, "API key key-7Hq2Lm doesn't exist")
    )
    with pytest.raises(OkxError) as caught:
        fetch()
    assert "7Hq2Lm" not in str(caught.value)
    assert "withheld" in str(caught.value)


@pytest.mark.parametrize(
    "echoed", ["key-7Hq2Lm", "cret-Zp4R", "ss-Yv8Kd3", "key-NEW9q1", "new-Ab5Cd7Ef", "pw-Gh6Jk8"]
)
@respx.mock
def test_after_a_rotation_old_and_new_keys_are_both_withheld(echoed):
    respx.get(BASE + LOAN_INFO_PATH).mock(
        return_value=okx_error("50111", 401, f"API key {echoed} doesn't exist")
    )

    async def run() -> OkxError:
        async with httpx.AsyncClient() as http:
            client = OkxClient(http, BASE, CREDENTIALS, clock=lambda: FIXED_TIME)
            client.use_credentials(Credentials("key-NEW9q1", "new-Ab5Cd7Ef", "pw-Gh6Jk8"))
            client.use_credentials(Credentials("key-NEW9q1", "new-Ab5Cd7Ef", "pw-Gh6Jk8"))
            with pytest.raises(OkxError) as caught:
                await client.loan_info()
            return caught.value

    error = asyncio.run(run())
    assert echoed not in str(error) and "withheld" in str(error)


def test_fragments_are_every_six_characters_of_every_secret():
    short = Credentials("abc", "0123456", "passphrase")
    assert short.fragments() == {
        "abc",
        "012345",
        "123456",
        "passph",
        "assphr",
        "ssphra",
        "sphras",
        "phrase",
    }
    assert short.appear_in("x 123456 y") and not short.appear_in("12345 and ab c")
    assert short.appear_in("abcd")  # a secret of six characters or fewer is matched whole


@pytest.mark.parametrize("ts", ["0", "99999999999999999", "1e400", "-5", " 1", 1607418597715])
@respx.mock
def test_implausible_public_time_is_refused_not_applied(ts):
    respx.get(BASE + LOAN_INFO_PATH).mock(return_value=okx_error("50102", 401))
    respx.get(BASE + PUBLIC_TIME_PATH).respond(
        200, json={"code": "0", "data": [{"ts": ts}], "msg": ""}
    )
    with pytest.raises(OkxError) as caught:
        fetch()
    assert caught.value.reason is FailureReason.INVALID_RESPONSE
    assert len(respx.calls) == 2  # no retry signed with a broken clock


def call(endpoint, parse, **kwargs):
    """One generic signed call with the fixed clock; returns (result, [(endpoint, reason)])."""
    observed = []

    async def run():
        async with httpx.AsyncClient() as http:
            client = OkxClient(
                http,
                BASE,
                CREDENTIALS,
                clock=lambda: FIXED_TIME,
                on_request=lambda e, d, r: observed.append((e, r)),
            )
            return await client.signed(endpoint, parse, **kwargs)

    return asyncio.run(run()), observed


def assert_signed(request, method, signed_path, body=""):
    """The request carries OKX's signature of exactly this method, path and body."""
    assert request.method == method
    assert request.content == body.encode()
    assert request.headers["OK-ACCESS-SIGN"] == sign(
        "secret-Zp4Rt9Wx", "2020-12-08T09:08:57.715Z", method, signed_path, body
    )


@respx.mock
def test_get_with_query_signs_the_query_string():
    path = ENDPOINT_PATHS[Endpoint.MAX_REDEEM]
    route = respx.get(BASE + path).respond(200, json={"code": "0", "msg": "", "data": []})
    result, observed = call(
        Endpoint.MAX_REDEEM, lambda body: body["data"], query={"ccy": "BTC", "ordId": "1001"}
    )
    request = route.calls.last.request
    assert result == []
    signed_path = f"{path}?ccy=BTC&ordId=1001"
    assert request.url.raw_path.decode() == signed_path
    assert_signed(request, "GET", signed_path)
    assert observed == [(Endpoint.MAX_REDEEM, None)]


@respx.mock
def test_post_signs_the_exact_json_body_it_sends():
    path = ENDPOINT_PATHS[Endpoint.MAX_LOAN]
    route = respx.post(BASE + path).respond(200, json={"code": "0", "msg": "", "data": []})
    _, observed = call(
        Endpoint.MAX_LOAN, lambda body: body["data"], body={"borrowCcy": "USDT", "ordId": "1001"}
    )
    request = route.calls.last.request
    assert request.headers["Content-Type"] == "application/json"
    assert_signed(request, "POST", path, '{"borrowCcy":"USDT","ordId":"1001"}')
    assert observed == [(Endpoint.MAX_LOAN, None)]


@respx.mock
def test_any_endpoint_corrects_the_clock_and_reports_public_time():
    path = ENDPOINT_PATHS[Endpoint.LOAN_HISTORY]
    respx.get(BASE + path).mock(
        side_effect=[okx_error("50102", 401), httpx.Response(200, json={"code": "0", "data": []})]
    )
    respx.get(BASE + PUBLIC_TIME_PATH).respond(
        200, json={"code": "0", "data": [{"ts": str(int((FIXED_TIME - 40) * 1000))}], "msg": ""}
    )
    _, observed = call(Endpoint.LOAN_HISTORY, lambda body: body["data"], query={"limit": "100"})
    assert observed == [
        (Endpoint.LOAN_HISTORY, FailureReason.AUTH),
        (Endpoint.PUBLIC_TIME, None),
        (Endpoint.LOAN_HISTORY, None),
    ]


@respx.mock
def test_a_parser_refusal_names_the_endpoint():
    path = ENDPOINT_PATHS[Endpoint.INTEREST_ACCRUED]
    respx.get(BASE + path).respond(200, json={"code": "0", "data": [{"refId": 5}]})

    def refuse(body):
        raise InvalidResponse("data[0].refId: expected a string")

    with pytest.raises(OkxError) as caught:
        call(Endpoint.INTEREST_ACCRUED, refuse)
    assert caught.value.reason is FailureReason.INVALID_RESPONSE
    assert "malformed interest-accrued answer: data[0].refId" in caught.value.detail
