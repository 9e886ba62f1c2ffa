"""The performance shortcuts change no byte of what a scrape returns.

Each shortcut is checked against the straightforward way it replaced: the reused ``okx_loan_``
text against a fresh ``encoder(registry)`` for the same snapshots, in every exposition format, and
the ``/metrics`` answer against prometheus_client's own ``make_wsgi_app`` over the same registry.
A fixed process collector stands in for the real one, whose CPU and memory figures move between
two renderings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import resource
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from test_golden_metrics import TWO_ORDERS_ACTIVITY
from test_golden_metrics import _prices as golden_prices
from test_golden_metrics import _snapshot as golden_snapshot

from okx_loan_exporter import __version__
from okx_loan_exporter import exposition as exposition_module
from okx_loan_exporter.activity_cache import ActivitySnapshot
from okx_loan_exporter.cache import AccountSnapshot
from okx_loan_exporter.collector import ACCOUNT_PARTS, LoanCollector, account_families
from okx_loan_exporter.config import config_from_dict
from okx_loan_exporter.exporter import ACCOUNTS_PER_POOL, CONNECTIONS_PER_POOL, Exporter
from okx_loan_exporter.exposition import (
    ACCOUNTS_PER_SEGMENT,
    Exposition,
    ProcessMetrics,
    RenderCache,
    Rendered,
)
from okx_loan_exporter.okx import Endpoint, FailureReason
from okx_loan_exporter.okx_transport import ConnectionStatsSnapshot
from okx_loan_exporter.position import NO_LOAN, Order, Position, parse_loan_info
from okx_loan_exporter.prices import IndexPrices
from okx_loan_exporter.stats import RequestStats
from okx_loan_exporter.web import create_app
from tests.fake_okx_exporter import fake_config

DOCS_EXAMPLE = json.loads(
    (Path(__file__).parent / "data" / "loan_info_docs_example.json").read_text()
)
ACCEPT_HEADERS = [
    None,
    "*/*",
    "text/plain",
    "text/plain; version=0.0.4",
    "text/plain; version=1.0.0",
    "text/plain; version=1.0.0; escaping=allow-utf-8",
    "text/plain; version=1.0.0; escaping=dots",
    "text/plain; version=1.0.0; escaping=values",
    "application/openmetrics-text",
    "application/openmetrics-text; version=0.0.1",
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8",
    "application/openmetrics-text; version=1.0.0; escaping=values",
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
]

LOAN_INFO_ONLY = {"history_interval": "0s", "interest_interval": "0s", "headroom_interval": "0s"}
"""The secondary endpoints off, for fakes that answer loan-info only."""


class FixedProcess(Collector):
    """Process-like families with values that do not move."""

    def collect(self) -> Iterable[Metric]:
        return [
            GaugeMetricFamily("process_resident_memory_bytes", "Resident memory.", value=3e7),
            CounterMetricFamily("process_cpu_seconds", "CPU time.", value=1.25),
            GaugeMetricFamily("process_open_fds", "Open fds.", value=9),
        ]


def stats(requests: int = 0, failures: Iterable[FailureReason] = (), *durations: float):
    tally = RequestStats()
    for duration in durations or [0.03] * requests:
        tally.observe(Endpoint.LOAN_INFO, duration, None)
    for reason in failures:
        tally.observe(Endpoint.LOAN_INFO, 0.2, reason)
    return tally.snapshot()


def snapshot(name: str = "main", position: Position | None = NO_LOAN, **fields) -> AccountSnapshot:
    values = {
        "up": True,
        "last_success": 1_700_000_000.5,
        "last_failure": None,
        "last_error": None,
        "requests": stats(1),
        "clock_offset": 0.0,
    }
    values.update(fields)
    return AccountSnapshot(name=name, position=position, **values)


def reference(snapshots: list[AccountSnapshot], encoder) -> bytes:
    """What the exporter rendered before the render cache: a fresh registry per scrape."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(LoanCollector(snapshots, __version__))
    registry.register(FixedProcess())
    return encoder(registry)


@pytest.fixture
def exporter():
    config = fake_config(("main", "other"), **LOAN_INFO_ONLY)  # the fake answers loan-info only
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=DOCS_EXAMPLE))
    exporter = Exporter(config, transport=transport)
    yield exporter
    exporter.close()


@pytest.fixture
def exposition():
    return Exposition(__version__, FixedProcess())


DOCS = parse_loan_info(DOCS_EXAMPLE)
TWO_ORDERS = parse_loan_info(
    json.loads((Path(__file__).parent / "data" / "loan_info_two_orders.json").read_text())
)
LIQUIDATION = Position(
    (
        Order(
            order_id="1001",
            loan_notional_usd=13500.0,
            collateral_notional_usd=30000.0,
            current_ltv=0.45,
            margin_call_ltv=0.7,
            liquidation_ltv=0.8,
            loans={"USDT": 13500.0},
            collateral={"BTC": 0.5},
            liquidation_instrument="BTC-USDT",
            liquidation_price=33750.0,
        ),
    )
)
SCENES = {
    "docs example": [snapshot(position=DOCS)],
    "no loan": [snapshot(position=NO_LOAN)],
    "never answered": [snapshot(position=None, up=False, last_success=None, requests=stats())],
    "failing, stale withheld": [
        snapshot(
            position=None,
            up=False,
            last_failure=FailureReason.AUTH,
            requests=stats(2, [FailureReason.AUTH, FailureReason.TIMEOUT]),
            clock_offset=-1.5,
        )
    ],
    "two orders": [snapshot(position=TWO_ORDERS)],
    "several accounts": [
        snapshot("a", DOCS),
        snapshot("two", TWO_ORDERS),
        snapshot("b", LIQUIDATION, requests=stats(0, (), 0.01, 0.4, 3.0, 12.0)),
        snapshot("c", NO_LOAN, up=False),
    ],
    "labels needing escapes": [
        snapshot('quote"back\\slash\nnewline', DOCS),
        snapshot("ünïcødé-€", LIQUIDATION),
    ],
    "empty fields": [
        snapshot(
            position=Position(
                (Order("7", loan_notional_usd=None, current_ltv=None, liquidation_ltv=0.8),)
            )
        )
    ],
    "no accounts": [],
}


@pytest.mark.parametrize("accept", ACCEPT_HEADERS)
@pytest.mark.parametrize("scene", list(SCENES))
def test_exposition_equals_a_fresh_registry_rendering(exposition, scene, accept):
    encoder, content_type = choose_encoder(accept)
    snapshots = SCENES[scene]
    expected = reference(snapshots, encoder)
    assert exposition.body(snapshots, accept) == (expected, content_type)
    assert exposition.body(list(snapshots), accept) == (expected, content_type)  # now cached


def test_content_type_names_the_whole_format():
    """The render cache is keyed by the content type choose_encoder returns with its encoder:
    Accept headers that give one content type must give encoders that render alike."""
    collector = LoanCollector(SCENES["several accounts"], __version__)
    by_type: dict[str, set[bytes]] = {}
    for accept in [*ACCEPT_HEADERS, "text/plain;version=0.0.4", "application/openmetrics-text"]:
        encoder, content_type = choose_encoder(accept)
        by_type.setdefault(content_type, set()).add(encoder(collector))
    assert len(by_type) >= 3  # text 0.0.4, OpenMetrics, and text with escaping at least
    assert all(len(outputs) == 1 for outputs in by_type.values()), by_type.keys()


def test_every_change_the_collector_would_show_renders_again():
    cache = RenderCache(__version__)
    encoder, content_type = choose_encoder(None)
    reordered = Position((Order("", collateral={"STX": 0.78, "COMP": 9.7e-06}),))
    first, second = TWO_ORDERS.orders
    steps = [
        [snapshot(position=DOCS)],
        [snapshot(position=DOCS)],  # same position object, equal fields: reused
        [snapshot(position=parse_loan_info(DOCS_EXAMPLE))],  # a new answer with equal values
        [snapshot(position=Position((Order("", collateral={"COMP": 9.7e-06, "STX": 0.78}),)))],
        [snapshot(position=reordered)],  # equal to the previous position, other order
        [snapshot(position=reordered, up=False)],
        [snapshot(position=reordered, up=False, requests=stats(2))],
        [snapshot(position=reordered, up=False, requests=stats(2), clock_offset=0.25)],
        [snapshot(position=None, up=False, requests=stats(2), clock_offset=0.25)],
        [snapshot(position=None, up=False, last_success=1_700_000_100.0)],
        [snapshot("renamed", position=None, up=False, last_success=1_700_000_100.0)],
        [snapshot("renamed"), snapshot("added")],
        [snapshot("renamed")],
        [snapshot("renamed", position=TWO_ORDERS)],
        [snapshot("renamed", position=Position((second, first)))],  # the orders swapped
        [snapshot("renamed", position=Position((first,)))],  # one order closed
    ]
    seen = []
    for snapshots in steps:
        rendered = cache.render(snapshots, encoder, content_type)
        assert rendered is not None
        assert rendered.families + rendered.trailer == encoder(
            LoanCollector(snapshots, __version__)
        )
        seen.append(rendered.families)
    assert seen[0] == seen[1] == seen[2]
    assert seen[3] != seen[4]  # the currency order changed, so the text did
    assert len(set(seen[3:])) == len(seen) - 3
    assert seen[-3] != seen[-2] != seen[-1]


def test_a_request_of_one_account_renders_the_summed_durations_again():
    """The request-duration histogram is summed over the accounts, among the families of no
    single account: one account's new request must show in it though no position or price
    changed."""
    cache = RenderCache(__version__)
    encoder, content_type = choose_encoder(None)
    prices = golden_prices()
    tallies = {name: RequestStats() for name in ("a", "b")}
    for tally in tallies.values():
        tally.observe(Endpoint.LOAN_INFO, 0.03, None)

    def scrape() -> Rendered:
        snapshots = [
            snapshot(name, TWO_ORDERS, requests=tally.snapshot(), prices=prices)
            for name, tally in tallies.items()
        ]
        rendered = cache.render(snapshots, encoder, content_type, compressed=True)
        assert rendered is not None
        expected = encoder(LoanCollector(snapshots, __version__))
        assert rendered.families + rendered.trailer == expected
        assert gzip.decompress(rendered.gzip(rendered.trailer)) == expected
        return rendered

    rendered = scrape()
    assert scrape() is rendered  # nothing changed: the same rendering
    first = rendered.families
    tallies["b"].observe(Endpoint.LOAN_INFO, 0.7, None)
    tallies["b"].observe(Endpoint.MAX_LOAN, 0.2, None)
    second = scrape().families
    assert b'okx_loan_api_request_duration_seconds_count{endpoint="loan_info"} 2.0' in first
    assert b'okx_loan_api_request_duration_seconds_count{endpoint="loan_info"} 3.0' in second
    assert b'okx_loan_api_request_duration_seconds_bucket{endpoint="max_loan",le="+Inf"} 1.0' in (
        second
    )


amounts = st.dictionaries(
    st.sampled_from(["BTC", "ETH", "USDT", "USDC", "SOL", "DOT"]),
    st.floats(min_value=0, max_value=1e12, allow_nan=False),
    max_size=4,
)
optional_ratio = st.one_of(st.none(), st.floats(min_value=0, max_value=5, allow_nan=False))
orders = st.builds(
    Order,
    order_id=st.sampled_from(["", "1001", "2002", 'o"\\']),
    loan_notional_usd=optional_ratio,
    collateral_notional_usd=optional_ratio,
    current_ltv=optional_ratio,
    margin_call_ltv=optional_ratio,
    liquidation_ltv=optional_ratio,
    loans=amounts,
    collateral=amounts,
)
positions = st.one_of(
    st.none(),
    st.just(NO_LOAN),
    st.lists(orders, min_size=1, max_size=3, unique_by=lambda order: order.order_id)
    .map(tuple)
    .map(Position),
)
snapshots_strategy = st.lists(
    st.builds(
        snapshot,
        name=st.sampled_from(["main", "alt", "x\\y", 'q"']) | st.text(min_size=1, max_size=8),
        position=positions,
        up=st.booleans(),
        last_success=st.one_of(st.none(), st.floats(min_value=0, max_value=2e9)),
        requests=st.builds(
            stats,
            st.integers(min_value=0, max_value=3),
            st.lists(st.sampled_from(list(FailureReason)), max_size=3),
        ),
        clock_offset=st.floats(min_value=-100, max_value=100),
        prices=st.sampled_from([None, golden_prices()]),
        activity=st.sampled_from([None, TWO_ORDERS_ACTIVITY, ActivitySnapshot()]),
        connections=st.builds(ConnectionStatsSnapshot, st.integers(0, 3), st.integers(0, 2)),
    ),
    max_size=4,
    unique_by=lambda item: item.name,
)


@settings(max_examples=60, deadline=None)
@given(
    sequence=st.lists(snapshots_strategy, min_size=1, max_size=4),
    accept=st.sampled_from(ACCEPT_HEADERS),
)
def test_any_sequence_of_scrapes_renders_like_the_reference(sequence, accept):
    cache = RenderCache(__version__)
    encoder, content_type = choose_encoder(accept)
    for snapshots in sequence:
        compressed = bool(len(snapshots) % 2)  # the gzip stream is made on demand, or not at all
        rendered = cache.render(snapshots, encoder, content_type, compressed=compressed)
        assert rendered is not None
        expected = encoder(LoanCollector(snapshots, __version__))
        assert rendered.families + rendered.trailer == expected
        if compressed:
            assert rendered.compressed is not None
            assert gzip.decompress(rendered.gzip(rendered.trailer)) == expected


TWO_ORDERS = parse_loan_info(
    json.loads((Path(__file__).parent / "data" / "loan_info_two_orders.json").read_text())
)
OTHER_PRICES = dataclasses.replace(
    golden_prices(), prices=IndexPrices("USDT", {"BTC": 50000.0, "DOT": 7.0, "STX": 2.0})
)
CHANGES = {
    # Each draws from a few objects that come back, so that parts are reused by identity.
    "position": st.sampled_from([None, NO_LOAN, DOCS, TWO_ORDERS]),
    "prices": st.sampled_from([None, golden_prices(), OTHER_PRICES]),
    "activity": st.sampled_from(
        [None, TWO_ORDERS_ACTIVITY, ActivitySnapshot(), dataclasses.replace(TWO_ORDERS_ACTIVITY)]
    ),
    "up": st.booleans(),
    "last_success": st.sampled_from([None, 1_700_000_000.5, 1_700_000_015.25]),
    "requests": st.builds(stats, st.integers(min_value=0, max_value=3)),
    "connections": st.builds(ConnectionStatsSnapshot, st.integers(0, 3), st.integers(0, 2)),
    "clock_offset": st.sampled_from([0.0, 1.5, -2.25]),
}


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.dictionaries(st.sampled_from(sorted(CHANGES)), st.just(None), min_size=1),
        min_size=1,
        max_size=6,
    ),
    accept=st.sampled_from(ACCEPT_HEADERS),
    data=st.data(),
)
def test_an_account_changing_a_few_fields_at_a_time_renders_like_the_reference(steps, accept, data):
    """Parts of an account's lines are kept while the fields they read are the same objects or
    values (collector.ACCOUNT_PARTS): any change of any field must still show."""
    cache = RenderCache(__version__)
    encoder, content_type = choose_encoder(accept)
    accounts = many_accounts(3)
    for step in steps:
        changed = {field: data.draw(CHANGES[field]) for field in step}
        accounts = [accounts[0], dataclasses.replace(accounts[1], **changed), accounts[2]]
        rendered = cache.render(accounts, encoder, content_type)
        assert rendered is not None
        assert rendered.families + rendered.trailer == encoder(LoanCollector(accounts, __version__))


def test_a_secondary_answer_renders_only_the_activity_part_again(monkeypatch):
    cache = RenderCache(__version__)
    encoder, content_type = choose_encoder("")
    accounts = many_accounts(4)
    assert cache.render(accounts, encoder, content_type) is not None
    cut = exposition_module._cut
    families_rendered: list[str] = []

    def recording_cut(snapshot, families, *args):
        families_rendered.extend(family.name for family in families)
        return cut(snapshot, families, *args)

    monkeypatch.setattr(exposition_module, "_cut", recording_cut)
    activity = dataclasses.replace(TWO_ORDERS_ACTIVITY, redeem={("1002", "BTC"): 0.5})
    accounts[0] = dataclasses.replace(accounts[0], activity=activity)
    rendered = cache.render(accounts, encoder, content_type)
    assert rendered is not None
    assert rendered.families + rendered.trailer == encoder(LoanCollector(accounts, __version__))
    activity_part = ACCOUNT_PARTS[2]
    assert families_rendered == [family.name for family in activity_part.families(())]


def call(app, method="GET", query="", **headers):
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": "/metrics",
        "QUERY_STRING": query,
        "SERVER_NAME": "e",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    environ.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    answer = {}

    def start_response(status, response_headers, exc_info=None):
        answer["status"], answer["headers"] = status, response_headers

    body = b"".join(app(environ, start_response))
    return answer["status"], answer["headers"], body


@pytest.mark.parametrize("accept", ACCEPT_HEADERS)
@pytest.mark.parametrize("encoding", [None, "gzip", "gzip, deflate, br", "identity", "GZIP;q=1"])
def test_metrics_answer_equals_prometheus_client_wsgi_app(exporter, exposition, accept, encoding):
    app = create_app(exporter, exposition=exposition)
    headers = {"accept": accept, "accept_encoding": encoding}
    headers = {name: value for name, value in headers.items() if value is not None}
    status, response_headers, body = call(app, **headers)  # fills the cache from the fake OKX
    status, response_headers, body = call(app, **headers)
    expected = call(make_wsgi_app(exposition.registry(exporter.snapshots())), **headers)
    assert (status, response_headers) == expected[:2]
    if ("Content-Encoding", "gzip") in response_headers:
        body, expected = gzip.decompress(body), (None, None, gzip.decompress(expected[2]))
    assert body == expected[2]
    assert b'{account="other"} 1.0' in body  # the fake OKX answered for every account


@pytest.mark.parametrize(
    ("method", "query"),
    [
        ("OPTIONS", ""),
        ("POST", ""),
        ("GET", "name[]=okx_loan_up"),
        ("GET", "name%5B%5D=okx_loan_ltv_ratio&name[]=process_open_fds"),
    ],
)
def test_other_methods_and_name_filters_answer_as_prometheus_client(
    exporter, exposition, method, query
):
    app = create_app(exporter, exposition=exposition)
    call(app)
    answer = call(app, method, query)
    expected = call(make_wsgi_app(exposition.registry(exporter.snapshots())), method, query)
    assert answer == expected


@pytest.mark.parametrize("query", ["", "name[]=okx_loan_up"])
def test_head_answers_as_get_does(exporter, exposition, query):
    # The app gives HEAD the GET answer; the server leaves the body out (see test_server).
    app = create_app(exporter, exposition=exposition)
    call(app)
    reference = make_wsgi_app(exposition.registry(exporter.snapshots()))
    assert call(app, "HEAD", query) == call(reference, "GET", query)


class ConcurrencyOkx(ThreadingHTTPServer):
    """Answers loan-info after HOLD seconds, counting the most requests in flight at once."""

    daemon_threads = True
    request_queue_size = 128  # the default 5 would drop connects and delay them by a second
    HOLD = 0.2

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        super().__init__(("127.0.0.1", 0), _ConcurrencyHandler)


class _ConcurrencyHandler(BaseHTTPRequestHandler):
    server: ConcurrencyOkx
    protocol_version = "HTTP/1.1"  # keep-alive, as OKX

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.in_flight += 1
            self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
        time.sleep(self.server.HOLD)
        with self.server.lock:
            self.server.in_flight -= 1
        body = json.dumps(DOCS_EXAMPLE).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_connection_pools_fetch_in_parallel_within_their_bound():
    """Every pool works at once, each with at most CONNECTIONS_PER_POOL connections: a cold
    scrape is neither serialized behind one pool nor opening a connection per account."""
    accounts = 2 * ACCOUNTS_PER_POOL + 5  # three pools, one not full
    server = ConcurrencyOkx()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = config_from_dict(
        {
            "base_url": f"http://127.0.0.1:{server.server_address[1]}",
            "timeout": "20s",
            # loan-info only: the secondary endpoints' requests would share the pools, and the
            # index prices (their own pool) are asked while loan-info's requests are in flight
            "history_interval": "0s",
            "interest_interval": "0s",
            "headroom_interval": "0s",
            "price_interval": "0s",
            "accounts": [
                {"name": f"a{i}", "api_key": f"k{i}", "secret_key": "s", "passphrase": "p"}
                for i in range(accounts)
            ],
        },
        "test.yml",
        {},
    )
    exporter = Exporter(config)
    try:
        snapshots = exporter.scrape()
    finally:
        exporter.close()
        server.shutdown()
        server.server_close()
    assert [snapshot.up for snapshot in snapshots] == [True] * accounts
    assert server.most_in_flight == 3 * CONNECTIONS_PER_POOL
    opened = sum(snapshot.connections.opened for snapshot in snapshots)
    assert opened == 3 * CONNECTIONS_PER_POOL  # then reused by the pool's other accounts


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


OK = {"code": "0", "msg": "", "data": DOCS_EXAMPLE["data"]}
ANSWERS = {
    "ok": lambda: httpx.Response(200, json=OK),
    "no loan": lambda: httpx.Response(200, json={"code": "0", "msg": "", "data": []}),
    "auth": lambda: httpx.Response(401, json={"code": "50111", "msg": "Invalid OK-ACCESS-KEY"}),
    "rate limited": lambda: httpx.Response(429, json={"code": "50011", "msg": "Rate limit"}),
    "broken": lambda: httpx.Response(200, text="<html>"),
}


class ScriptedOkx:
    """Answers each account's n-th request with script[n], the last one ever after."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.requests: dict[str, int] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        key = request.headers["OK-ACCESS-KEY"]
        count = self.requests.get(key, 0)
        self.requests[key] = count + 1
        return ANSWERS[self.script[min(count, len(self.script) - 1)]]()


def scripted_exporter(clock: Clock, okx: ScriptedOkx, accounts: int = 2) -> Exporter:
    config = config_from_dict(
        {
            "base_url": "https://okx.test",
            "cache_ttl": "1s",
            "max_stale": "3s",
            **LOAN_INFO_ONLY,  # ScriptedOkx answers loan-info only
            "accounts": [
                {"name": f"a{i}", "api_key": f"k{i}", "secret_key": "s", "passphrase": "p"}
                for i in range(accounts)
            ],
        },
        "test.yml",
        {},
    )
    return Exporter(config, clock=clock, transport=httpx.MockTransport(okx))


def observable(snapshots: list[AccountSnapshot]) -> list[tuple]:
    """Everything of a snapshot but the measured request durations, which differ run to run."""
    return [
        (
            s.name,
            s.position,
            s.up,
            s.last_success,
            s.last_failure,
            s.requests.endpoints[Endpoint.LOAN_INFO].requests,
            s.requests.endpoints[Endpoint.LOAN_INFO].failures,
            s.clock_offset,
        )
        for s in snapshots
    ]


def test_a_scrape_skips_the_loop_only_while_nothing_is_due(monkeypatch):
    clock, okx = Clock(), ScriptedOkx(["ok"])
    exporter = scripted_exporter(clock, okx)
    hops = []
    refresh = exporter.cache.refresh_async

    async def counted(wait):
        hops.append(clock.now)
        return await refresh(wait)

    monkeypatch.setattr(exporter.cache, "refresh_async", counted)
    try:
        first = exporter.scrape()  # fetches both accounts
        assert exporter.scrape() == first  # from the calling thread, same snapshots
        clock.now += 0.999
        assert observable(exporter.scrape()) == observable(first)
        assert len(hops) == 1 and okx.requests == {"k0": 1, "k1": 1}
        clock.now += 0.001  # the TTL is over: the loop starts both fetches again
        assert all(snapshot.up for snapshot in exporter.scrape())
        assert len(hops) == 2 and okx.requests == {"k0": 2, "k1": 2}
        exporter.scrape()
        assert len(hops) == 2
    finally:
        exporter.close()


@settings(max_examples=40, deadline=None)
@given(
    script=st.lists(st.sampled_from(list(ANSWERS)), min_size=1, max_size=6),
    steps=st.lists(
        st.one_of(st.just("scrape"), st.floats(min_value=0.0, max_value=5.0)), max_size=25
    ),
)
def test_skipping_the_loop_never_changes_a_scrape_or_the_requests_sent(script, steps):
    clock = Clock()
    fast_okx, slow_okx = ScriptedOkx(script), ScriptedOkx(script)
    fast = scripted_exporter(clock, fast_okx)
    slow = scripted_exporter(clock, slow_okx)
    slow.cache.idle = lambda: False  # the loop every time, as before the shortcut
    try:
        for step in steps:
            if step == "scrape":
                assert observable(fast.scrape()) == observable(slow.scrape())
                assert fast_okx.requests == slow_okx.requests
            else:
                clock.now += step
    finally:
        fast.close()
        slow.close()


def test_a_fetch_still_running_after_its_deadline_keeps_scrapes_on_the_loop():
    clock, gate, requests = Clock(), threading.Event(), []

    async def okx(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        while len(requests) > 1 and not gate.is_set():  # the second request hangs until released
            await asyncio.sleep(0.01)
        return httpx.Response(200, json=OK)

    config = config_from_dict(
        {
            "base_url": "https://okx.test",
            "cache_ttl": "1s",
            "price_interval": "0s",  # only loan-info: the second request is the one that hangs
            "accounts": [{"name": "main", "api_key": "k", "secret_key": "s", "passphrase": "p"}],
            **LOAN_INFO_ONLY,
        },
        "test.yml",
        {},
    )
    exporter = Exporter(config, clock=clock, transport=httpx.MockTransport(okx))
    try:
        assert exporter.scrape()[0].up
        clock.now += 1.0
        assert not exporter.scrape(scrape_timeout=0.6)[0].up  # cut off at its deadline
        assert not exporter.scrape(scrape_timeout=0.6)[0].up  # still waiting for that fetch
        gate.set()
        assert exporter.scrape()[0].up
        assert len(requests) == 2
    finally:
        gate.set()
        exporter.close()


def fake_proc(root: Path, stat_fields: list[str], open_fds: int) -> Path:
    """A /proc with what both process collectors read: stat (btime), self/stat, self/fd, and
    self/limits with this process' real open-file limit, which ProcessMetrics gets from
    getrlimit."""
    (root / "self" / "fd").mkdir(parents=True)
    (root / "stat").write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")
    (root / "self" / "stat").write_text("4242 (py (thon) x) " + " ".join(stat_fields) + "\n")
    for fd in range(open_fds):
        (root / "self" / "fd" / str(fd)).write_text("")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    (root / "self" / "limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max cpu time              unlimited            unlimited            seconds\n"
        f"Max open files            {soft}                 {hard}               files\n"
    )
    return root


STAT_FIELDS = [
    # state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    [
        "S",
        "1",
        "1",
        "1",
        "0",
        "-1",
        "4194304",
        "900",
        "0",
        "1",
        "0",
        "1234",
        "567",
        "0",
        "0",
        "20",
        "0",
        "9",
        "0",
        "98765",
        "123456789",
        "4321",
    ],
    [
        "R",
        "1",
        "1",
        "1",
        "0",
        "-1",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "20",
        "0",
        "1",
        "0",
        "0",
        "0",
        "0",
    ],
    [
        "S",
        "1",
        "1",
        "1",
        "0",
        "-1",
        "0",
        "0",
        "0",
        "0",
        "0",
        "98765432109",
        "3",
        "0",
        "0",
        "20",
        "0",
        "500",
        "0",
        "17179869184",
        "281474976710656",
        "68719476736",
    ],
]


@pytest.mark.parametrize("fields", STAT_FIELDS)
@pytest.mark.parametrize("accept", ACCEPT_HEADERS[:2] + ACCEPT_HEADERS[8:11])
def test_process_metrics_equal_prometheus_client_process_collector(tmp_path, fields, accept):
    proc = str(fake_proc(tmp_path, fields, open_fds=len(fields) % 7))
    encoder, _ = choose_encoder(accept)
    reference = ProcessCollector(proc=proc, pid=lambda: "self", registry=None)
    assert encoder(ProcessMetrics(proc=proc)) == encoder(reference)


def test_process_metrics_of_this_process_match_prometheus_client():
    ours = {family.name: family for family in ProcessMetrics().collect()}
    theirs = {family.name: family for family in ProcessCollector(registry=None).collect()}
    assert [(f.name, f.type, f.documentation) for f in ours.values()] == [
        (f.name, f.type, f.documentation) for f in theirs.values()
    ]
    for name in ("process_start_time_seconds", "process_max_fds"):
        assert ours[name].samples == theirs[name].samples


def test_without_proc_there_are_no_process_metrics(tmp_path):
    missing = str(tmp_path / "no-proc")
    assert list(ProcessMetrics(proc=missing).collect()) == []
    assert list(ProcessCollector(proc=missing, registry=None).collect()) == []


class Families(Collector):
    """Yields the given families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def many_accounts(count: int) -> list[AccountSnapshot]:
    """``count`` accounts of every kind, with index prices and secondary endpoints' values."""
    kinds = [
        ("loan_info_two_orders.json", None),
        ("loan_info_docs_example.json", None),
        ("no loan", None),
        (None, FailureReason.AUTH),
    ]
    accounts = []
    for index in range(count):
        answer, failure = kinds[index % len(kinds)]
        account = golden_snapshot(
            f"acct-{index:03d}", answer, failure=failure, prices=golden_prices()
        )
        accounts.append(dataclasses.replace(account, activity=TWO_ORDERS_ACTIVITY))
    return accounts


@pytest.mark.parametrize("accept", ACCEPT_HEADERS)
def test_a_scrape_where_one_account_changed_renders_only_it_again(accept):
    """More accounts than one compressed segment holds; each scrape changes one account's
    secondary values, position or counters, and must equal a fresh rendering, gzipped or not."""
    cache = RenderCache(__version__)
    encoder, content_type = choose_encoder(accept)
    accounts = many_accounts(ACCOUNTS_PER_SEGMENT + 9)
    changed_activity = dataclasses.replace(
        TWO_ORDERS_ACTIVITY, redeem={("1002", "BTC"): 0.5, ("1002", "ETH"): 1.0}
    )
    changes = [
        lambda a: a,  # nothing changed: every account reused
        lambda a: dataclasses.replace(a, activity=changed_activity),
        lambda a: dataclasses.replace(a, position=DOCS),
        lambda a: dataclasses.replace(a, up=not a.up, requests=stats(5)),
        lambda a: dataclasses.replace(a, activity=None, prices=None),
    ]
    for step, change in enumerate(changes):
        before = {a.name: cache._accounts.get(a.name) for a in accounts}
        kept = {name: entry.by_format.get(content_type) for name, entry in before.items() if entry}
        target = (step * 7) % len(accounts)
        accounts = [*accounts[:target], change(accounts[target]), *accounts[target + 1 :]]
        rendered = cache.render(accounts, encoder, content_type, compressed=True)
        assert rendered is not None
        expected = encoder(LoanCollector(accounts, __version__))
        assert rendered.families + rendered.trailer == expected
        assert gzip.decompress(rendered.gzip(rendered.trailer)) == expected
        again = [
            name
            for name, entry in cache._accounts.items()
            if kept.get(name) is None or entry.by_format[content_type] is not kept[name]
        ]
        if step == 0:
            assert len(again) == len(accounts)  # the first scrape renders everyone
        else:
            assert again == [accounts[target].name]


def test_each_exposition_format_renders_a_family_as_header_lines_then_sample_lines():
    """What cutting an account's rendering into families relies on, for every format: an empty
    family renders as its HELP and TYPE lines (no UNIT: the families have none), each sample as
    one line not starting with ``#`` (no ``_created`` block after a family's samples), and the
    format's trailer (``# EOF`` in OpenMetrics, nothing in the text format) comes last."""
    accounts = many_accounts(4)
    before, after = account_families(accounts)
    for content_type in {choose_encoder(accept)[1] for accept in ACCEPT_HEADERS}:
        encoder = next(e for e, c in map(choose_encoder, ACCEPT_HEADERS) if c == content_type)
        trailer = encoder(CollectorRegistry(auto_describe=False))
        assert trailer == (b"# EOF\n" if "openmetrics" in content_type else b"")
        for family in [*before, *after]:
            text = encoder(Families([family]))
            assert text.endswith(trailer)
            lines = text[: len(text) - len(trailer)].decode().splitlines()
            empty = Metric(family.name, family.documentation, family.type, family.unit)
            header = encoder(Families([empty]))[: -len(trailer) or None].decode().splitlines()
            assert [line.split()[1] for line in header] == ["HELP", "TYPE"]
            assert lines[:2] == header
            assert len(lines) - 2 == len(family.samples)
            assert not any(line.startswith("#") for line in lines[2:])
            assert not any(s.name.endswith("_created") for s in family.samples)


def test_a_rendering_that_cannot_be_cut_falls_back_to_the_whole_registry(exposition):
    """A format whose family text had comment lines among the samples is not cut but rendered
    whole, so the answer stays right."""
    accounts = many_accounts(3)
    plain, content_type = choose_encoder(None)

    def with_comments(collector):
        return plain(collector).replace(
            b'okx_loan_up{account="acct-001"}', b'# x\nokx_loan_up{account="acct-001"}'
        )

    cache = RenderCache(__version__)
    assert cache.render(accounts, with_comments, "text/x-odd") is None
    assert cache.render(accounts, plain, content_type) is not None
