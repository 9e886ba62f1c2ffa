"""Hostile loan-info answers from hypothesis, through the parser, the OKX client and /metrics.

Every generated answer goes three ways: (a) ``parse_loan_info`` returns a Position or raises
InvalidResponse, nothing else, and where the answer is known good or known bad the verdict and the
values are checked against a small reference model; (b) the same answer, serialized, comes from a
mock OKX through the real OkxClient, which returns the same Position or raises OkxError, nothing
else, and never leaks a credential; (c) every accepted Position is rendered through the collector in
the text and the OpenMetrics formats, both parse back with prometheus_client's parsers, and every
currency code and instrument comes back exactly as OKX sent it.

More than 10,000 answers in all; the module prints its example count and time. The tests at the end
keep the bugs the fuzzing found fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from okx_loan_exporter.cache import AccountSnapshot
from okx_loan_exporter.collector import LoanCollector
from okx_loan_exporter.config import config_from_dict
from okx_loan_exporter.exporter import Exporter
from okx_loan_exporter.okx import (
    LOAN_INFO_PATH,
    MAX_BODY_BYTES,
    PUBLIC_TIME_PATH,
    Credentials,
    Endpoint,
    FailureReason,
    OkxClient,
    OkxError,
)
from okx_loan_exporter.position import NO_LOAN, InvalidResponse, Order, Position, parse_loan_info
from okx_loan_exporter.stats import RequestStats
from okx_loan_exporter.web import create_app

JsonValue = Any

CREDENTIALS = Credentials("k7Qz9Xw2Lp4V-api", "s3Mx8Rt1Nb6Y-sec", "p5Hd2Jq7Wc0F-pas")
SECRETS = (CREDENTIALS.api_key, CREDENTIALS.secret_key, CREDENTIALS.passphrase)
FRAGMENTS = CREDENTIALS.fragments()

DECIMAL_KEYS = ("loanNotionalUsd", "collateralNotionalUsd", "curLTV", "marginCallLTV", "liqLTV")
ENTRY_KEYS = (*DECIMAL_KEYS, "loanData", "collateralData", "riskWarningData", "ordId")

FUZZ_SETTINGS = settings(
    max_examples=2500,
    deadline=None,
    database=None,  # every run explores afresh; a failure prints its reproducing example
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)

# --- the harness: counts, timing, and a mock OKX behind one long-lived client ------------------


class ClientHarness:
    """One event loop, one httpx client on a MockTransport and one OkxClient for all examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.status = 200
        self.raw = b""
        self.reasons: list[FailureReason | None] = []
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self._answer))
        self.client = OkxClient(
            self.http, "https://okx.test", CREDENTIALS, timeout=5.0, on_request=self._observe
        )

    def _observe(self, endpoint: Endpoint, duration: float, reason: FailureReason | None) -> None:
        assert duration >= 0
        self.reasons.append(reason)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == PUBLIC_TIME_PATH:  # after a fuzzed 50102: a sane clock
            now_ms = str(int(time.time() * 1000))
            return httpx.Response(200, json={"code": "0", "msg": "", "data": [{"ts": now_ms}]})
        assert request.url.path == LOAN_INFO_PATH
        return httpx.Response(
            self.status, content=self.raw, headers={"Content-Type": "application/json"}
        )

    def fetch(self, raw: bytes, status: int) -> Position | OkxError:
        """What ``loan_info()`` makes of this answer: a Position or an OkxError (others raise)."""
        self.raw, self.status = raw, status
        self.reasons.clear()
        try:
            return self.loop.run_until_complete(self.client.loan_info())
        except OkxError as error:
            return error

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()


@dataclass
class Tally:
    examples: int = 0
    accepted: int = 0
    checking: float = 0.0
    per_test: dict[str, tuple[int, float, float]] = field(default_factory=dict)


TALLY = Tally()


@pytest.fixture(scope="module")
def harness(request: pytest.FixtureRequest) -> Iterator[ClientHarness]:
    started, cpu_started = time.perf_counter(), time.process_time()
    client = ClientHarness()
    yield client
    client.close()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    lines = [
        f"test_fuzz: {TALLY.examples} generated loan-info answers in {elapsed:.1f} s "
        f"({cpu:.1f} s CPU); {TALLY.accepted} accepted as positions; the checks took "
        f"{TALLY.checking:.1f} s, hypothesis generation and overhead "
        f"{elapsed - TALLY.checking:.1f} s"
    ]
    lines += [
        f"  {name}: {count} examples in {seconds:.1f} s ({cpu_seconds:.1f} s CPU)"
        for name, (count, seconds, cpu_seconds) in TALLY.per_test.items()
    ]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines))


def run_counted(name: str, minimum: int, run: Callable[[], None]) -> None:
    """Run a hypothesis test function and check it really ran ``minimum`` examples."""
    before, started, cpu_started = TALLY.examples, time.perf_counter(), time.process_time()
    run()
    count = TALLY.examples - before
    TALLY.per_test[name] = (count, time.perf_counter() - started, time.process_time() - cpu_started)
    assert count >= minimum, f"{name}: hypothesis ran only {count} examples"


# --- the checks every answer goes through ------------------------------------------------------


def reference_position(body: dict[str, Any]) -> Position:
    """What an accepted answer must give, written from OKX's documentation, not from the parser:
    one order per entry, in OKX's order, named by its ordId ("" for the one entry without)."""
    data = body["data"]
    if not data:
        return NO_LOAN

    def number(text: str) -> float | None:
        # Surrounding whitespace is tolerated, as str.strip() sees it (which includes
        # U+001C..U+001F, where float() alone would refuse them).
        return None if text == "" else float(text.strip()) + 0.0

    def amounts(items: list[dict[str, str]]) -> dict[str, float]:
        return {
            item["ccy"]: float(item["amt"].strip()) + 0.0
            for item in items
            if item["ccy"] != "" and item["amt"] != ""
        }

    def order(entry: dict[str, Any]) -> Order:
        risk = entry["riskWarningData"]
        price = number(risk["liqPx"])
        has_price = risk["instId"] != "" and price is not None
        return Order(
            order_id=entry.get("ordId", ""),
            loan_notional_usd=number(entry["loanNotionalUsd"]),
            collateral_notional_usd=number(entry["collateralNotionalUsd"]),
            current_ltv=number(entry["curLTV"]),
            margin_call_ltv=number(entry["marginCallLTV"]),
            liquidation_ltv=number(entry["liqLTV"]),
            loans=amounts(entry["loanData"]),
            collateral=amounts(entry["collateralData"]),
            liquidation_instrument=risk["instId"] if has_price else None,
            liquidation_price=price if has_price else None,
        )

    return Position(tuple(order(entry) for entry in data))


def leaks(text: str) -> bool:
    return any(fragment in text for fragment in FRAGMENTS)


def check_parser(
    body: JsonValue,
    *,
    must_accept: bool = False,
    must_refuse: bool = False,
    reference: bool = False,
) -> Position | None:
    """(a): a Position or InvalidResponse; the verdict and values where the answer is known."""
    try:
        position = parse_loan_info(body)
    except InvalidResponse as error:
        assert not must_accept, f"a good answer was refused: {error}"
        message = str(error)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        return None
    assert not must_refuse, "a bad answer was accepted"
    assert isinstance(position, Position)
    if reference:
        assert position == reference_position(body)
    return position


def check_client(
    harness: ClientHarness, raw: bytes, status: int, position: Position | None
) -> None:
    """(b): the client gives the parser's Position, or an OkxError that leaks no credential."""
    result = harness.fetch(raw, status)
    decoded = json.loads(raw)
    code_zero = isinstance(decoded, dict) and decoded.get("code") == "0"
    if isinstance(result, Position):
        assert 200 <= status < 300
        assert result == parse_loan_info(decoded)
        assert harness.reasons[-1] is None
        return
    assert isinstance(result, OkxError), type(result)
    assert isinstance(result.reason, FailureReason)
    assert harness.reasons and harness.reasons[-1] is result.reason
    assert not leaks(str(result)), "an OkxError carries credential material"
    if code_zero and status == 200 and len(raw) <= MAX_BODY_BYTES:
        if position is None:
            assert result.reason is FailureReason.INVALID_RESPONSE, result
        else:
            pytest.fail(f"the client refused an answer the parser accepts: {result}")


def samples_by_name(text: str, parse: Callable[[str], Iterator[Any]]) -> dict[str, list[Any]]:
    """Parse an exposition once: every sample, grouped by sample name."""
    grouped: dict[str, list[Any]] = {}
    for metric in parse(text):
        for sample in metric.samples:
            grouped.setdefault(sample.name, []).append(sample)
    return grouped


def keyed(samples: list[Any], labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Sample values by the values of ``labels`` (besides ``account``); no key may repeat."""
    values: dict[tuple[str, ...], float] = {}
    for sample in samples:
        assert set(sample.labels) == {"account", *labels}, sample.labels
        key = tuple(sample.labels[label] for label in labels)
        assert key not in values, f"{key} appears twice"
        values[key] = sample.value
    return values


PER_ORDER_LABELS = {
    "okx_loan_ltv_ratio": ("order",),
    "okx_loan_borrowed_notional_usd": ("order",),
    "okx_loan_collateral_notional_usd": ("order",),
    "okx_loan_margin_call_ltv_ratio": ("order",),
    "okx_loan_liquidation_ltv_ratio": ("order",),
    "okx_loan_borrowed_amount": ("order", "currency"),
    "okx_loan_collateral_amount": ("order", "currency"),
    "okx_loan_liquidation_price": ("order", "instrument"),
    "okx_loan_orders": (),
    "okx_loan_active": (),
    "okx_loan_up": (),
}


def expected_series(position: Position) -> dict[str, dict[tuple[str, ...], float]]:
    """Every position series the exposition must hold, by name and label values."""
    expected: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in PER_ORDER_LABELS}
    expected["okx_loan_orders"][()] = float(len(position.orders))
    expected["okx_loan_active"][()] = 1.0 if position.active else 0.0
    expected["okx_loan_up"][()] = 1.0
    for order in position.orders:
        key = (order.order_id,)
        for name, value in (
            ("okx_loan_ltv_ratio", order.current_ltv),
            ("okx_loan_borrowed_notional_usd", order.loan_notional_usd),
            ("okx_loan_collateral_notional_usd", order.collateral_notional_usd),
            ("okx_loan_margin_call_ltv_ratio", order.margin_call_ltv),
            ("okx_loan_liquidation_ltv_ratio", order.liquidation_ltv),
        ):
            if value is not None:
                expected[name][key] = value
        for currency, amount in order.loans.items():
            expected["okx_loan_borrowed_amount"][(*key, currency)] = amount
        for currency, amount in order.collateral.items():
            expected["okx_loan_collateral_amount"][(*key, currency)] = amount
        if order.liquidation_instrument and order.liquidation_price is not None:
            instrument = (*key, order.liquidation_instrument)
            expected["okx_loan_liquidation_price"][instrument] = order.liquidation_price
    return expected


def check_exposition(position: Position) -> None:
    """(c): both formats parse back, and orders, currencies, instruments and values come back
    exactly."""
    snapshot = AccountSnapshot(
        name="fuzz",
        position=position,
        up=True,
        last_success=1_700_000_000.5,
        last_failure=None,
        last_error=None,
        requests=RequestStats().snapshot(),
        clock_offset=0.0,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LoanCollector([snapshot], "fuzz"))
    expected = expected_series(position)
    for encode, parse in ((generate_latest, parse_text), (generate_openmetrics, parse_openmetrics)):
        samples = samples_by_name(encode(registry).decode("utf-8"), parse)
        for name, labels in PER_ORDER_LABELS.items():
            assert keyed(samples.get(name, []), labels) == expected[name], name


def check_answer(
    harness: ClientHarness,
    body: JsonValue,
    *,
    status: int = 200,
    ensure_ascii: bool = True,
    must_accept: bool = False,
    must_refuse: bool = False,
    reference: bool = False,
) -> None:
    """Run one generated answer through (a), (b) and (c)."""
    started = time.perf_counter()
    TALLY.examples += 1
    position = check_parser(
        body, must_accept=must_accept, must_refuse=must_refuse, reference=reference
    )
    raw = json.dumps(body, ensure_ascii=ensure_ascii).encode("utf-8")
    check_client(harness, raw, status, position)
    if position is not None:
        TALLY.accepted += 1
        check_exposition(position)
    TALLY.checking += time.perf_counter() - started


# --- strategies ------------------------------------------------------------------------------

# Texts that stress the exposition format's escaping, and pieces of the credentials.
# fmt: off
TRICKY_TEXTS = ['"', "\\", "\n", "\\n", '\\"', 'a"b\\c\nd', "{", "}", ",", "=", "#", " ", "\t",
                "\r", "\x00", "\x7f", "\x85", "\u2028", "\ufeff", "\U0001f4b0",
                "\uff22\uff34\uff23", "\u30d3\u30c3\u30c8", "\u00e9", "e\u0301", "BTC-USDT",
                'currency="x"', "} 1\nokx_loan_up 0", "# EOF", "NaN", *SECRETS,
                CREDENTIALS.secret_key[3:11]]
REAL_CODES = ["BTC", "USDT", "USDC", "ETH", "COMP", "STX", "DOT", "LUNA", "OKB", "1INCH", "SOL",
              "XRP", "ADA", "DOGE", "TRX", "LINK", "AVAX", "TON", "SHIB", "LTC", "BCH", "UNI",
              "ATOM", "XLM", "ETC", "FIL", "APT", "ARB", "OP", "NEAR", "AAVE", "MKR", "SAND"]
# fmt: on


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """one_of with weights (st.one_of drops repeated branches and picks branches evenly)."""
    strategies = [strategy for _, strategy in choices]
    indices = st.sampled_from(
        [index for index, (weight, _) in enumerate(choices) for _ in range(weight)]
    )
    return indices.flatmap(strategies.__getitem__)


text_values = st.one_of(st.text(max_size=12), st.sampled_from(TRICKY_TEXTS))
long_texts = st.tuples(st.text(min_size=1, max_size=6), st.integers(50, 3000)).map(
    lambda pair: pair[0] * pair[1]
)
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**40), 10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    text_values,
)
json_keys = st.one_of(st.text(max_size=6), st.sampled_from(ENTRY_KEYS))
# Two levels of lists and objects (deeper nesting comes from deeply_nested); cheaper to draw than
# st.recursive, which matters at 10,000 examples.
any_json = st.one_of(
    json_leaves,
    st.lists(json_leaves, max_size=4),
    st.dictionaries(json_keys, json_leaves, max_size=4),
    st.lists(
        st.one_of(
            json_leaves,
            st.lists(json_leaves, max_size=3),
            st.dictionaries(json_keys, json_leaves, max_size=3),
        ),
        max_size=3,
    ),
    st.dictionaries(
        json_keys,
        st.one_of(
            json_leaves,
            st.lists(json_leaves, max_size=3),
            st.dictionaries(json_keys, json_leaves, max_size=3),
        ),
        max_size=3,
    ),
)


WRAPPINGS = st.lists(
    st.sampled_from(["list", "object", "data", "entry", "item"]), min_size=1, max_size=60
)


@st.composite
def deeply_nested(draw: st.DrawFn) -> JsonValue:
    """A value wrapped in up to 60 lists, objects and loan-info-looking objects."""
    value = draw(json_leaves)
    for kind in draw(WRAPPINGS):
        if kind == "list":
            value = [value]
        elif kind == "object":
            value = {"x": value}
        elif kind == "data":
            value = {"code": "0", "data": [value]}
        elif kind == "entry":
            value = {"loanData": [value], "riskWarningData": value}
        else:
            value = {"ccy": "BTC", "amt": value}
    return value


hostile_json = st.one_of(any_json, deeply_nested())
# fmt: off
CODE_LITERALS = ["1", "50011", "50061", "50001", "50102", "50111", "50113", "51000", "59999", "",
                 " 0", "0 ", "00", "0.0", "-0", "\u0660", "O", CREDENTIALS.api_key]
# fmt: on
codes = st.one_of(
    st.just("0"),
    st.sampled_from(CODE_LITERALS),
    st.integers(-(10**30), 10**30),
    st.floats(),
    st.none(),
    st.booleans(),
    text_values,
    any_json,
)
statuses = st.one_of(
    st.just(200),
    st.sampled_from(
        [200, 201, 204, 206, 301, 302, 400, 401, 403, 404, 418, 429, 500, 502, 503, 504, 599]
    ),
)
messages = st.one_of(st.just(""), text_values, json_leaves)

# Decimal fields, each with a verdict: GOOD must be accepted (as float(text), "" as absent), BAD
# must be refused, EITHER may go either way (but if accepted, it is read as float(text)).
GOOD, BAD, EITHER = "good", "bad", "either"
Tagged = tuple[JsonValue, str]

# fmt: off
GOOD_DECIMALS = ["", "0", "1", "0.5742", "0.0000097", "0.86590608", "48123.5", "-0", "-0.0",
                 "+0", "0e0", "1E+5", "2.5e-3", "1e-400", "-1e-400", "1e308",
                 "1.7976931348623157e308", "00012.50", "12345678901234567890",
                 "0.000000000000000000000000000001"]
BAD_DECIMALS = ["abc", "NaN", "nan", "-nan", "Infinity", "-Infinity", "inf", "+inf",
                "infinity", "1e400", "1E309", "1.8e308", "-1", "-0.5", "-1e-3", "-5e-324",
                "-12345", "1_000", "0x10", "0b1", "0o7", "1e", "e5", ".", "-", "+", "1.2.3",
                "--1", "+-1", "1,5", "\u0661\u0662\u0663", "\uff11", "\u00b2", "1e5e5", "1e1.5",
                "1 2", "true", "null", "0.5%", "$1", "1/2", "1" + "0" * 400, "9" * 400 + ".5",
                "\u00a0", " ", *SECRETS]
# Tolerated or not, both are fine; but if accepted, read as float(text.strip()).
EITHER_DECIMALS = [" 1", "1 ", "\t0.5\n", "1.", ".5", "+1", "9" * 65, "9" * 300,
                   "0." + "0" * 70 + "1", "\u30001", "1\x1c", "\x1f0.5"]
# fmt: on


def _good_pool(size: int = 600) -> list[str]:
    """Good decimal strings in OKX's and other plain spellings, made once (drawing them from a
    pool is much cheaper for hypothesis than generating floats each time)."""
    rng = random.Random(20261124)
    pool = list(GOOD_DECIMALS)
    while len(pool) < size:
        value = rng.random() * 10 ** rng.randint(-12, 15)
        pool.append(
            rng.choice(
                [
                    repr(value),
                    f"{value:.8f}",
                    f"{value:e}",
                    f"{value:.3E}",
                    str(int(value)),
                    f"{value:.20f}",
                ]
            )
        )
    return pool


GOOD_POOL = _good_pool()
good_decimal: st.SearchStrategy[Tagged] = st.one_of(
    st.sampled_from(GOOD_POOL),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(repr),
    st.integers(0, 10**60).map(str),
    st.decimals(min_value=0, max_value=10**30, allow_nan=False, allow_infinity=False, places=8).map(
        str
    ),
).map(lambda text: (text, GOOD))
good_pooled: st.SearchStrategy[Tagged] = st.sampled_from([(text, GOOD) for text in GOOD_POOL])
bad_decimal: st.SearchStrategy[Tagged] = st.one_of(
    st.sampled_from(BAD_DECIMALS),
    st.floats(max_value=-1e-300, allow_infinity=False, allow_nan=False).map(repr),
    st.integers(-(10**40), -1).map(str),
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(),
    st.lists(json_leaves, max_size=3),
    st.dictionaries(st.text(max_size=4), json_leaves, max_size=3),
    deeply_nested(),
).map(lambda value: (value, BAD))
either_decimal: st.SearchStrategy[Tagged] = st.one_of(
    st.sampled_from(EITHER_DECIMALS),
    st.text(max_size=12),
    st.integers(65, 2000).map(lambda n: "1" * n),
).map(lambda text: (text, EITHER))
# Mostly good, so that a good share of the answers are whole positions to render.
decimal_field = weighted(
    (30, good_pooled), (3, good_decimal), (1, bad_decimal), (1, either_decimal)
)

# Mostly distinct codes, sometimes "" (absent), sometimes from three codes (so: duplicates).
plain_currency = weighted(
    (8, st.sampled_from(REAL_CODES)), (1, st.just("")), (1, st.sampled_from(REAL_CODES[:3]))
)
unicode_currency = weighted(
    (3, st.text(min_size=1, max_size=24)),
    (2, st.sampled_from(TRICKY_TEXTS)),
    (1, long_texts),
    (1, st.sampled_from(REAL_CODES)),
    (1, st.just("")),
)
bad_currency = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.lists(st.text(max_size=3), max_size=2)
)


@dataclass
class Verdict:
    """Built alongside an answer: is it known bad, and is every part of it known good?"""

    bad: bool = False
    unsure: bool = False

    def take(self, tagged: Tagged) -> JsonValue:
        value, verdict = tagged
        self.bad |= verdict == BAD
        self.unsure |= verdict == EITHER
        return value


ITEM_COUNTS = st.sampled_from(range(6))
ITEM_SHAPES = st.sampled_from(
    ["ok"] * 50 + ["extra"] * 5 + ["bad ccy", "no ccy", "no amt", "not an object"]
)
RISK_SHAPES = st.sampled_from(
    ["ok"] * 30 + ["bad instId", "no instId", "no liqPx", "not an object"]
)
NOT_AN_OBJECT = st.one_of(json_leaves, st.lists(json_leaves, max_size=2))
# ONE_IN[n] draws True about once in n (hypothesis favours the first element, so it is False).
ONE_IN = {n: st.sampled_from([False] * (n - 1) + [True]) for n in (5, 10, 20, 30)}
ENTRY_KEY = st.sampled_from(ENTRY_KEYS)
CURRENCY_LIST_KEY = st.sampled_from(["loanData", "collateralData"])
NOT_A_LIST = st.one_of(st.dictionaries(st.text(max_size=3), json_leaves, max_size=2), json_leaves)


ORDER_COUNTS = st.sampled_from([1] * 12 + [2] * 3 + [3])
# Mostly distinct OKX-like IDs; sometimes from two IDs (so: duplicates), absent or "" (the
# pre-orders answer, good only alone), or not a string (bad).
ORDER_ID_SHAPES = st.sampled_from(["id"] * 40 + ["few", "absent", "empty", "not a string"])
plain_order_id = st.one_of(
    st.integers(1, 10**18).map(str), st.sampled_from(["1001", "2001", "2002", "0"])
)
unicode_order_id = st.one_of(st.text(min_size=1, max_size=24), st.sampled_from(TRICKY_TEXTS))


def order_id_of(
    draw: st.DrawFn,
    entry: dict[str, JsonValue],
    ids: st.SearchStrategy[str],
    seen: list[str | None],
) -> None:
    """Give ``entry`` an ordId (or none) and remember it in ``seen`` ("" for none, None for one
    that is not a string)."""
    shape = draw(ORDER_ID_SHAPES)
    if shape == "absent":
        seen.append("")
        return
    if shape == "not a string":
        entry["ordId"] = draw(st.one_of(st.integers(), st.none(), st.lists(st.text(), max_size=1)))
        seen.append(None)
        return
    order_id = {"id": None, "few": None, "empty": ""}[shape]
    if order_id is None:
        order_id = draw(st.sampled_from(["7", "8"]) if shape == "few" else ids)
    entry["ordId"] = order_id
    seen.append(order_id)


def order_ids_are_bad(seen: list[str | None]) -> bool:
    """OKX's rule as the issue states it: ordIds tell the orders apart, or the answer is bad."""
    if None in seen:
        return True
    if len(seen) > 1 and "" in seen:
        return True
    return len(set(seen)) != len(seen)


def instruments_for(currencies: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""),
        st.sampled_from(["BTC-USDT", "ETH-USDC"]),
        currencies.map(lambda code: f"{code}-USDT"),
        currencies,
    )


plain_instrument = instruments_for(plain_currency)
unicode_instrument = instruments_for(unicode_currency)


def currency_items(
    draw: st.DrawFn, currencies: st.SearchStrategy[str], verdict: Verdict
) -> list[JsonValue]:
    """loanData/collateralData: items good or broken, sometimes a currency listed twice."""
    items: list[JsonValue] = []
    seen: set[str] = set()
    for _ in range(draw(ITEM_COUNTS)):
        shape = draw(ITEM_SHAPES)
        if shape == "not an object":
            verdict.bad = True
            items.append(draw(NOT_AN_OBJECT))
            continue
        currency = draw(bad_currency) if shape == "bad ccy" else draw(currencies)
        amount = verdict.take(draw(decimal_field))
        item: dict[str, JsonValue] = {"ccy": currency, "amt": amount}
        if shape == "bad ccy":
            verdict.bad = True
        elif shape == "no ccy":
            del item["ccy"]
            verdict.bad = True
        elif shape == "no amt":
            del item["amt"]
            verdict.bad = True
        elif shape == "extra":
            item["extra"] = draw(json_leaves)
        if shape in ("ok", "extra") and currency != "" and amount != "" and isinstance(amount, str):
            if currency in seen:  # a currency listed twice with an amount both times
                verdict.bad = True
            seen.add(currency)
        items.append(item)
    return items


def risk_warning(
    draw: st.DrawFn, verdict: Verdict, instruments: st.SearchStrategy[str]
) -> JsonValue:
    """riskWarningData: instId and liqPx, good or broken."""
    shape = draw(RISK_SHAPES)
    if shape == "not an object":
        verdict.bad = True
        return draw(NOT_AN_OBJECT)
    risk: dict[str, JsonValue] = {
        "instId": draw(instruments),
        "liqPx": verdict.take(draw(decimal_field)),
    }
    if shape == "bad instId":
        risk["instId"] = draw(bad_currency)
        verdict.bad = True
    elif shape in ("no instId", "no liqPx"):
        del risk["instId" if shape == "no instId" else "liqPx"]
        verdict.bad = True
    return risk


@dataclass(frozen=True)
class Case:
    body: dict[str, JsonValue]
    must_accept: bool
    must_refuse: bool
    ensure_ascii: bool


@st.composite
def near_valid_answers(
    draw: st.DrawFn,
    currencies: st.SearchStrategy[str] = plain_currency,
    instruments: st.SearchStrategy[str] = plain_instrument,
    order_ids: st.SearchStrategy[str] = plain_order_id,
) -> Case:
    """``code "0"`` answers shaped like loan-info, one entry per order, each field drawn good,
    bad or in between."""
    verdict = Verdict()
    data: list[JsonValue] = []
    seen: list[str | None] = []
    for _ in range(0 if draw(ONE_IN[20]) else draw(ORDER_COUNTS)):  # 1 in 20: no loan, data []
        entry: dict[str, JsonValue] = {
            key: verdict.take(draw(decimal_field)) for key in DECIMAL_KEYS
        }
        entry["loanData"] = currency_items(draw, currencies, verdict)
        entry["collateralData"] = currency_items(draw, currencies, verdict)
        entry["riskWarningData"] = risk_warning(draw, verdict, instruments)
        order_id_of(draw, entry, order_ids, seen)
        if draw(ONE_IN[30]):
            key = draw(ENTRY_KEY)
            verdict.bad |= key != "ordId"  # ordId is optional; the others are not
            if key == "ordId" and "ordId" in entry:
                seen[-1] = ""
            entry.pop(key, None)
        if draw(ONE_IN[10]):
            entry[draw(CURRENCY_LIST_KEY)] = draw(NOT_A_LIST)
            verdict.bad = True
        data.append(entry)
    if data and draw(ONE_IN[30]):
        data.append(draw(hostile_json))  # a stray entry that is no order at all
        verdict.bad = True
    verdict.bad |= order_ids_are_bad(seen)
    body = {"code": "0", "msg": draw(messages), "data": data}
    return Case(
        body,
        must_accept=not (verdict.bad or verdict.unsure),
        must_refuse=verdict.bad,
        ensure_ascii=draw(st.booleans()),
    )


ENTRY_KEY_SETS = st.lists(ENTRY_KEY, unique=True, min_size=5)


@st.composite
def hostile_entries(draw: st.DrawFn) -> JsonValue:
    """An object with most of a loan-info entry's keys, each holding a hostile value."""
    return {key: draw(hostile_json) for key in draw(ENTRY_KEY_SETS)}


HOSTILE_DATA = st.one_of(
    st.lists(hostile_entries(), min_size=1, max_size=3),
    st.lists(hostile_json, max_size=3),
    hostile_json,
    hostile_entries().map(lambda entry: [[entry]]),
)
DROPPED_KEYS = st.lists(st.sampled_from(["code", "msg", "data"]), max_size=1)


@st.composite
def right_keys_wrong_types(draw: st.DrawFn) -> tuple[JsonValue, int]:
    """Objects with loan-info's keys at every level but hostile values, lists for objects."""
    body: dict[str, JsonValue] = {
        "code": draw(codes),
        "msg": draw(messages),
        "data": draw(HOSTILE_DATA),
    }
    for key in draw(DROPPED_KEYS):
        del body[key]
    return body, draw(statuses)


# --- the tests ---------------------------------------------------------------------------------


def test_any_json_value_is_refused_or_parsed(harness: ClientHarness) -> None:
    @FUZZ_SETTINGS
    @given(
        body=st.one_of(
            hostile_json,
            st.fixed_dictionaries({"code": codes, "msg": messages, "data": hostile_json}),
        ),
        status=statuses,
        ensure_ascii=st.booleans(),
    )
    def run(body: JsonValue, status: int, ensure_ascii: bool) -> None:
        check_answer(harness, body, status=status, ensure_ascii=ensure_ascii)

    run_counted("any JSON value", 2500, run)


def test_right_keys_with_wrong_types(harness: ClientHarness) -> None:
    @FUZZ_SETTINGS
    @given(case=right_keys_wrong_types())
    def run(case: tuple[JsonValue, int]) -> None:
        body, status = case
        check_answer(harness, body, status=status)

    run_counted("right keys, wrong types", 2500, run)


def test_near_valid_answers_against_the_reference(harness: ClientHarness) -> None:
    @FUZZ_SETTINGS
    @given(case=near_valid_answers(), status=statuses)
    def run(case: Case, status: int) -> None:
        check_answer(
            harness,
            case.body,
            status=status,
            ensure_ascii=case.ensure_ascii,
            must_accept=case.must_accept,
            must_refuse=case.must_refuse,
            reference=True,
        )

    run_counted("near-valid answers", 2500, run)


def test_unicode_currency_codes_round_trip_through_metrics(harness: ClientHarness) -> None:
    @FUZZ_SETTINGS
    @given(case=near_valid_answers(unicode_currency, unicode_instrument, unicode_order_id))
    def run(case: Case) -> None:
        check_answer(
            harness,
            case.body,
            ensure_ascii=case.ensure_ascii,
            must_accept=case.must_accept,
            must_refuse=case.must_refuse,
            reference=True,
        )

    run_counted("unicode currency codes", 2500, run)


PREFIXES = st.one_of(st.text(max_size=6), st.sampled_from(TRICKY_TEXTS))


def many_currencies(count: int, prefix: str, duplicate: bool) -> dict[str, JsonValue]:
    """An answer with ``count`` currencies on each side, one of them absent (""), and with
    ``duplicate`` one collateral currency listed twice."""

    def items(side: str) -> list[dict[str, str]]:
        listed = [
            {"ccy": f"{prefix}{side}{index}", "amt": repr(index / 7)} for index in range(count)
        ]
        listed[count // 3]["amt"] = ""  # absent: no series
        if duplicate and side == "C":
            listed.append(dict(listed[count // 2]))
        return listed

    entry = {
        "loanNotionalUsd": "12.5",
        "collateralNotionalUsd": "40",
        "curLTV": "0.31",
        "marginCallLTV": "0.7",
        "liqLTV": "0.8",
        "loanData": items("L"),
        "collateralData": items("C"),
        "riskWarningData": {"instId": f"{prefix}-USDT", "liqPx": "1.5"},
    }
    return {"code": "0", "msg": "", "data": [entry]}


def test_thousands_of_currencies(harness: ClientHarness) -> None:
    @settings(FUZZ_SETTINGS, max_examples=10)
    @given(count=st.integers(1000, 5000), prefix=PREFIXES, duplicate=st.booleans())
    @example(count=5000, prefix='\U0001f4b0"\\\n', duplicate=False)
    @example(count=5000, prefix="", duplicate=True)
    def run(count: int, prefix: str, duplicate: bool) -> None:
        check_answer(
            harness,
            many_currencies(count, prefix, duplicate),
            must_accept=not duplicate,
            must_refuse=duplicate,
            reference=True,
        )

    run_counted("thousands of currencies", 12, run)


def test_bytes_that_are_not_json_are_an_okx_error(harness: ClientHarness) -> None:
    """Truncated, binary, HTML or oversized answers: OkxError from the client, nothing else."""
    valid = json.dumps({"code": "0", "msg": "", "data": []}).encode()

    @settings(FUZZ_SETTINGS, max_examples=1000)
    @given(
        raw=st.one_of(
            st.binary(max_size=64),
            st.integers(0, len(valid) - 1).map(lambda cut: valid[:cut]),
            st.sampled_from(
                [
                    b"<html><body>502 Bad Gateway</body></html>",
                    b"\xff\xfe{}",
                    b'{"code": "0", "data": [',
                    b"NaN",
                    b'"0"',
                    b"[]",
                    b"null",
                    b'{"code":"0","data":[]}' + b" " * (MAX_BODY_BYTES + 1),
                ]
            ),
        ),
        status=statuses,
    )
    def run(raw: bytes, status: int) -> None:
        result = harness.fetch(raw, status)
        if isinstance(result, Position):
            assert str(json.loads(raw)["code"]) == "0"
            assert 200 <= status < 300 and len(raw) <= MAX_BODY_BYTES
        else:
            assert isinstance(result, OkxError) and isinstance(result.reason, FailureReason)
            assert harness.reasons[-1] is result.reason

    run()


# --- bugs found by fuzzing, fixed; these keep them fixed -----------------------------------------

LONE_SURROGATE_ANSWER = (
    b'{"code":"0","msg":"","data":[{"loanNotionalUsd":"1","collateralNotionalUsd":"2",'
    b'"curLTV":"0.5","marginCallLTV":"0.7","liqLTV":"0.8",'
    b'"loanData":[{"ccy":"USDT","amt":"1"}],"collateralData":[{"ccy":"BTC\\ud800","amt":"2"}],'
    b'"riskWarningData":{"instId":"","liqPx":""}}]}'
)


def test_lone_surrogate_currency_is_refused() -> None:
    with pytest.raises(InvalidResponse):
        parse_loan_info(json.loads(LONE_SURROGATE_ANSWER))


def test_lone_surrogate_instrument_is_refused() -> None:
    body = json.loads(LONE_SURROGATE_ANSWER.replace(b"BTC\\ud800", b"BTC"))
    body["data"][0]["riskWarningData"] = {"instId": "BTC-\ud800", "liqPx": "1.5"}
    with pytest.raises(InvalidResponse):
        parse_loan_info(body)


def test_lone_surrogate_order_id_is_refused() -> None:
    body = json.loads(LONE_SURROGATE_ANSWER.replace(b"BTC\\ud800", b"BTC"))
    body["data"][0]["ordId"] = "12\ud800"
    with pytest.raises(InvalidResponse):
        parse_loan_info(body)


def test_lone_surrogate_in_one_account_does_not_break_every_scrape() -> None:
    good = json.dumps({"code": "0", "msg": "", "data": []}).encode()

    def okx(request: httpx.Request) -> httpx.Response:
        hostile = request.headers["OK-ACCESS-KEY"] == "key-hostile"
        return httpx.Response(200, content=LONE_SURROGATE_ANSWER if hostile else good)

    accounts = [
        {
            "name": name,
            "api_key": f"key-{name}",
            "secret_key": "fuzz-secret-key",
            "passphrase": "fuzz-passphrase",
        }
        for name in ("hostile", "fine")
    ]
    config = config_from_dict(
        {"base_url": "https://okx.test", "accounts": accounts}, "fuzz.yml", {}
    )
    exporter = Exporter(config, transport=httpx.MockTransport(okx))
    try:
        app = create_app(exporter)
        with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://e") as http:
            response = http.get("/metrics")
    finally:
        exporter.close()
    assert response.status_code == 200
    text = response.text
    assert 'okx_loan_up{account="fine"} 1.0' in text
    assert 'okx_loan_up{account="hostile"} 0.0' in text
    assert (
        'okx_loan_api_request_failures_total{account="hostile",endpoint="loan_info",'
        'reason="invalid_response"} 1.0'
    ) in text


def _clock_skew_then(time_answer: bytes) -> Callable[[httpx.Request], httpx.Response]:
    def okx(request: httpx.Request) -> httpx.Response:
        if request.url.path == PUBLIC_TIME_PATH:
            return httpx.Response(200, content=time_answer)
        return httpx.Response(
            401, json={"code": "50102", "msg": "Timestamp request expired", "data": []}
        )

    return okx


@pytest.mark.parametrize(
    "ts",
    [
        pytest.param(b"1e400", id="ts-infinity"),
        pytest.param(b'"' + b"9" * 400 + b'"', id="ts-400-digits"),
        pytest.param(b"1e300", id="ts-1e300"),
        pytest.param(b'"99999999999999999"', id="ts-year-3-million"),
    ],
)
def test_absurd_public_time_answer_is_an_okx_error(ts: bytes) -> None:
    sent: list[str] = []
    answer = _clock_skew_then(b'{"code":"0","msg":"","data":[{"ts":' + ts + b"}]}")

    def okx(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return answer(request)

    async def attempt_twice() -> list[object]:
        outcomes: list[object] = []
        async with httpx.AsyncClient(transport=httpx.MockTransport(okx)) as http:
            client = OkxClient(http, "https://okx.test", CREDENTIALS)
            for _ in range(2):
                try:
                    outcomes.append(await client.loan_info())
                except OkxError as error:
                    outcomes.append(error)
                sent.append("--")
        return outcomes

    first, second = asyncio.run(attempt_twice())
    assert isinstance(first, OkxError) and first.reason is FailureReason.INVALID_RESPONSE
    assert isinstance(second, OkxError)
    attempts = "/".join(sent).split("--")
    assert LOAN_INFO_PATH in attempts[1], "the second attempt never reached OKX"
