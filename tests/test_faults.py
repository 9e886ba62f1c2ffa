"""The fault matrix: every way OKX, or the path to it, can fail, seen through a real scrape.

Each row runs the in-process OKX simulator and an exporter served over HTTP on 127.0.0.1 with three
accounts: the one under fault and two bystanders. A row establishes good values, injects its fault,
and checks what an operator would see: /metrics answers 200 within Prometheus' scrape timeout,
``okx_loan_up 0`` for the faulty account with its last good values still served, the failure
counted under the expected ``reason``, exactly one WARNING log line carrying the fix, none more on
repeated scrapes, the bystanders untouched, and recovery with new values once the fault clears.
All time rules (TTL, auth backoff, OKX's timestamp window) run on a fake clock; only the network
waits (hangs, the timeout) take real time.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from conftest import FakeClock, Harness, Scrape, account_config, sim_account

from okx_loan_exporter.cache import MAX_AUTH_BACKOFF
from okx_loan_exporter.okx import MAX_BODY_BYTES
from okx_loan_exporter.simulator import (
    FAULTS,
    HUGE_BODY_BYTES,
    SimAccount,
    Simulator,
    demo_accounts,
)
from okx_loan_exporter.simulator.orders import RATE_LIMIT_PERIOD_SECONDS

TTL = 0.5
TIMEOUT = 1.0
SCRAPE_TIMEOUT = 3.0
"""Sent as X-Prometheus-Scrape-Timeout-Seconds; every answer must come before it."""

FAULTY = "faulty"
BYSTANDERS = {"steady-a": 0.3, "steady-b": 0.6}
"""Accounts that never fail, with the LTV each keeps throughout."""
GOOD_LTV = 0.4
ORDER = "1"
"""The one order of every account here (conftest.sim_account)."""
RECOVERED_LTV = 0.55
POSITION_SERIES = {
    "okx_loan_borrowed_notional_usd",
    "okx_loan_collateral_notional_usd",
    "okx_loan_borrowed_amount",
    "okx_loan_collateral_amount",
    "okx_loan_ltv_ratio",
    "okx_loan_margin_call_ltv_ratio",
    "okx_loan_liquidation_ltv_ratio",
    "okx_loan_liquidation_price",
    "okx_loan_orders",
    "okx_loan_active",
}


@dataclass(frozen=True)
class Row:
    """A simulator fault, the failure reason it must be counted under, and what the log says."""

    fault: str
    reason: str
    says: tuple[str, ...]
    """Substrings of the WARNING line: what went wrong and what to do."""


NOT_JSON = ("answer is not JSON", "check base_url points at OKX's REST API")
MALFORMED = "malformed loan-info answer"
KEPT = "the last good values are kept"
NO_ANSWER = (
    "no answer from http://127.0.0.1:",
    f"within {TIMEOUT:g}s",
    "check the network path to OKX, or raise timeout",
)

FAILING: list[Row] = [
    Row(
        "http_500_html",
        "http_error",
        ("HTTP 500 without an OKX answer", "OKX or a proxy failed; retried after cache_ttl"),
    ),
    Row("http_200_html", "invalid_response", ("HTTP 200", *NOT_JSON)),
    Row("truncated_json", "invalid_response", ("HTTP 200", *NOT_JSON)),
    Row("invalid_json", "invalid_response", ("HTTP 200", *NOT_JSON)),
    Row("no_data", "invalid_response", (MALFORMED, "answer has no 'data'", KEPT)),
    Row("missing_field", "invalid_response", (MALFORMED, "data[0] has no 'curLTV'", KEPT)),
    Row(
        "null_field",
        "invalid_response",
        (MALFORMED, "data[0].curLTV: expected a decimal string, got NoneType", KEPT),
    ),
    Row(
        "non_numeric",
        "invalid_response",
        (MALFORMED, "data[0].curLTV: 'abc' is not a decimal number", KEPT),
    ),
    Row(
        "nan_string",
        "invalid_response",
        (MALFORMED, "data[0].curLTV: 'NaN' is not a decimal number", KEPT),
    ),
    Row(
        "huge_number",
        "invalid_response",
        (MALFORMED, "data[0].curLTV: '1e400' is out of range", KEPT),
    ),
    Row(
        "negative_amount",
        "invalid_response",
        (MALFORMED, "data[0].collateralData[0].amt: '-1' is negative", KEPT),
    ),
    Row(
        "nested_type",
        "invalid_response",
        (MALFORMED, "data[0].curLTV: expected a decimal string, got dict", KEPT),
    ),
    Row(
        "duplicate_order",
        "invalid_response",
        (MALFORMED, "data[1].ordId: '1' appears twice (also data[0])", KEPT),
    ),
    Row(
        "rate_limit",
        "rate_limited",
        ("OKX code 50011", "HTTP 429", "raise cache_ttl", "other programs using this account"),
    ),
    Row("busy_50001", "api_error", ("OKX code 50001", "HTTP 503", "nothing to do")),
    Row("busy_50013", "api_error", ("OKX code 50013", "HTTP 200", "nothing to do")),
    Row("auth_50101", "auth", ("OKX code 50101", "HTTP 401", "demo: true", "demo: false")),
    Row("auth_50105", "auth", ("OKX code 50105", "the passphrase is wrong")),
    Row("auth_50110", "auth", ("OKX code 50110", "IP whitelist", "public IP")),
    Row("auth_50111", "auth", ("OKX code 50111", "another region", "region: eea", "base_url")),
    Row("auth_50113", "auth", ("OKX code 50113", "the secret key is wrong")),
    Row("auth_50120", "auth", ("OKX code 50120", "Read permission")),
    Row(
        "close",
        "network",
        (
            "connection to http://127.0.0.1:",
            "failed: RemoteProtocolError",
            "check the network path to OKX",
        ),
    ),
    Row("slow", "timeout", NO_ANSWER),
    Row("hang", "timeout", NO_ANSWER),
    Row("slow_bytes", "timeout", NO_ANSWER),
    Row(
        "huge_body",
        "invalid_response",
        (f"answer larger than {MAX_BODY_BYTES} bytes", "check base_url points at OKX"),
    ),
]

LOAN_INFO_ONLY = {"history_interval": 0.0, "interest_interval": 0.0, "headroom_interval": 0.0}
"""The secondary endpoints off, for the rows about loan-info."""

EMPTY = Scrape(200, 0.0, "")
"""A scrape before the first one: every counter at 0."""

VALID = ("negative_zero", "empty_strings", "no_loan")
"""Faults whose answers are odd but valid: the account stays up."""


# --- the world every row runs in ----------------------------------------------------------------


@dataclass
class World:
    simulator: Simulator
    exporter: Harness
    clock: FakeClock
    caplog: pytest.LogCaptureFixture

    def scrape(self, scrape_timeout: float = SCRAPE_TIMEOUT) -> Scrape:
        """A scrape that must answer 200 before the scrape timeout it announces."""
        scrape = self.exporter.scrape(f"{scrape_timeout:g}")
        assert scrape.status == 200
        assert scrape.elapsed < scrape_timeout, f"answered after {scrape.elapsed:.2f}s"
        return scrape

    def requests(self, account: str = FAULTY) -> int:
        """Loan-info requests the simulator has received for ``account``."""
        return int(self.simulator.stats()["accounts"][account]["requests"])

    def warnings(self) -> list[str]:
        """Warnings about loan-info: a dead OKX also fails the base URL's index prices, whose
        one warning line tests/test_price_faults.py checks."""
        return [
            record.getMessage()
            for record in self.caplog.records
            if record.levelno >= logging.WARNING and record.name != "okx_loan_exporter.pricefeed"
        ]

    def errors(self) -> list[str]:
        return [
            record.getMessage() for record in self.caplog.records if record.levelno >= logging.ERROR
        ]

    def infos(self, account: str = FAULTY) -> list[str]:
        return [
            record.getMessage()
            for record in self.caplog.records
            if record.levelno == logging.INFO and getattr(record, "account", None) == account
        ]


@pytest.fixture
def make_world(start_simulator, start_exporter, fake_clock, caplog) -> Callable[..., World]:
    """``make_world(faulty=None, *, faulty_url=None, faulty_demo=None, intervals=...)``: the
    accounts, all served.

    The faulty account lives in the simulator unless ``faulty_url`` points it elsewhere;
    ``faulty_demo`` overrides its configured ``demo`` flag; ``intervals`` are the secondary
    endpoints' schedules (off by default: the loan-info rows count loan-info's requests).
    Accounts the simulator serves start at their LTV (the faulty one at GOOD_LTV).
    """
    caplog.set_level(logging.INFO, logger="okx_loan_exporter")

    def make(
        faulty: SimAccount | None = None,
        *,
        faulty_url: str | None = None,
        faulty_demo: bool | None = None,
        intervals: dict[str, float] = LOAN_INFO_ONLY,
    ) -> World:
        faulty = faulty or sim_account(FAULTY)
        bystanders = [sim_account(name) for name in BYSTANDERS]
        served = bystanders if faulty_url else [faulty, *bystanders]
        simulator = start_simulator(served)
        for account in served:
            simulator.set_ltv(account.name, BYSTANDERS.get(account.name, GOOD_LTV))
        configs = [
            account_config(faulty, faulty_url or simulator.base_url, demo=faulty_demo),
            *(account_config(account, simulator.base_url) for account in bystanders),
        ]
        harness = start_exporter(configs, cache_ttl=TTL, timeout=TIMEOUT, **intervals)
        return World(simulator, harness, fake_clock, caplog)

    return make


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


def assert_bystanders_unharmed(scrape: Scrape) -> None:
    for name, ltv in BYSTANDERS.items():
        assert scrape.value("okx_loan_up", account=name) == 1, name
        assert scrape.value("okx_loan_ltv_ratio", account=name, order=ORDER) == pytest.approx(ltv)
        assert set(scrape.failures(name).values()) == {0}, name


def assert_up_with(scrape: Scrape, ltv: float, account: str = FAULTY) -> None:
    assert scrape.value("okx_loan_up", account=account) == 1
    assert scrape.value("okx_loan_ltv_ratio", account=account, order=ORDER) == pytest.approx(ltv)


def failure_delta(after: Scrape, before: Scrape, account: str = FAULTY) -> dict[str, float]:
    """Failures counted between two scrapes, by reason (reasons that did not move left out)."""
    old = before.failures(account)
    return {
        reason: count - old.get(reason, 0)
        for reason, count in after.failures(account).items()
        if count != old.get(reason, 0)
    }


def only_warning(world: World, *says: str, account: str = FAULTY) -> str:
    """The one WARNING line of the test so far; it names the account and says ``says``."""
    lines = world.warnings()
    assert len(lines) == 1, lines
    (line,) = lines
    assert f"account {account}:" in line
    for text in says:
        assert text in line, f"{text!r} missing from {line!r}"
    return line


# --- rows -----------------------------------------------------------------------------------------


def test_matrix_covers_every_simulator_fault():
    covered = {row.fault for row in FAILING} | set(VALID)
    assert covered == set(FAULTS), "a simulator fault without a row in the matrix"


@pytest.mark.parametrize("row", FAILING, ids=[row.fault for row in FAILING])
def test_fault(row: Row, world: World):
    good = world.scrape()
    assert_up_with(good, GOOD_LTV)
    assert_bystanders_unharmed(good)
    served = good.series(FAULTY) & POSITION_SERIES
    assert served == POSITION_SERIES  # every position series, the liquidation price included

    world.simulator.set_fault(FAULTY, row.fault)
    world.clock.advance(TTL + 0.01)
    failed = world.scrape()
    assert failed.value("okx_loan_up", account=FAULTY) == 0
    assert failure_delta(failed, good) == {row.reason: 1}
    assert failed.series(FAULTY) & POSITION_SERIES == served  # last good values still served
    assert failed.value("okx_loan_ltv_ratio", account=FAULTY, order=ORDER) == pytest.approx(
        GOOD_LTV
    )
    assert failed.value("okx_loan_last_success_timestamp_seconds", account=FAULTY) == good.value(
        "okx_loan_last_success_timestamp_seconds", account=FAULTY
    )
    assert_bystanders_unharmed(failed)
    only_warning(world, f"OKX request failed: {row.reason}: ", *row.says)

    if row.reason == "auth":
        retry_wait = assert_auth_backoff_grows(world)
    else:
        world.clock.advance(TTL + 0.01)
        again = world.scrape()
        assert failure_delta(again, failed) == {row.reason: 1}, "not retried after the TTL"
        assert again.value("okx_loan_up", account=FAULTY) == 0
        assert again.value("okx_loan_ltv_ratio", account=FAULTY, order=ORDER) == pytest.approx(
            GOOD_LTV
        )
        retry_wait = TTL
    only_warning(world, *row.says)  # the same fault again is no news

    world.simulator.set_fault(FAULTY, None)
    world.simulator.set_ltv(FAULTY, RECOVERED_LTV)
    # A dropped connection is retried once on a fresh one (okx_transport): let the simulator's
    # rate window forget those extra requests.
    world.clock.advance(max(retry_wait, RATE_LIMIT_PERIOD_SECONDS) + 0.01)
    recovered = world.scrape()
    assert_up_with(recovered, RECOVERED_LTV)
    assert_bystanders_unharmed(recovered)
    assert f"account {FAULTY}: OKX answers again after {row.reason}" in world.infos()
    only_warning(world, *row.says)
    assert world.errors() == []


def assert_auth_backoff_grows(world: World) -> float:
    """After the first auth failure (just scraped) the retries come 2, then 4 TTLs later.

    Each wait is checked from both sides: no request just before it, one request just after.
    Returns the wait before the next retry.
    """
    sent = world.requests()
    for wait in (2 * TTL, 4 * TTL):  # longer than one TTL, and growing
        world.clock.advance(wait - 0.02)
        assert world.scrape().value("okx_loan_up", account=FAULTY) == 0
        assert world.requests() == sent, f"retried before {wait:g}s: no backoff"
        world.clock.advance(0.03)
        world.scrape()
        assert world.requests() == sent + 1, f"not retried {wait:g}s after the last failure"
        sent += 1
    return min(8 * TTL, MAX_AUTH_BACKOFF)


@pytest.mark.parametrize("fault", VALID)
def test_odd_but_valid_answer_keeps_the_account_up(fault: str, world: World):
    good = world.scrape()
    world.simulator.set_fault(FAULTY, fault)
    for _ in range(2):
        world.clock.advance(TTL + 0.01)
        odd = world.scrape()
        assert odd.value("okx_loan_up", account=FAULTY) == 1
        assert failure_delta(odd, good) == {}
        assert_bystanders_unharmed(odd)
    borrowed = odd.value("okx_loan_borrowed_notional_usd", account=FAULTY, order=ORDER)
    if fault == "negative_zero":  # "-0" is a valid zero, not a negative amount
        assert borrowed == 0.0
        assert odd.value("okx_loan_ltv_ratio", account=FAULTY, order=ORDER) == pytest.approx(
            GOOD_LTV
        )
    elif fault == "empty_strings":  # "" is absent, never 0
        assert borrowed == good.value("okx_loan_borrowed_notional_usd", account=FAULTY, order=ORDER)
        for name in (
            "okx_loan_ltv_ratio",
            "okx_loan_margin_call_ltv_ratio",
            "okx_loan_liquidation_ltv_ratio",
        ):
            assert odd.value(name, account=FAULTY, order=ORDER) is None, name
    else:  # no_loan: no order, so no per-order series at all
        assert fault == "no_loan"
        assert odd.value("okx_loan_active", account=FAULTY) == 0
        assert odd.value("okx_loan_orders", account=FAULTY) == 0
        assert odd.series(FAULTY) & POSITION_SERIES == {"okx_loan_active", "okx_loan_orders"}
    assert odd.value("okx_loan_orders", account=FAULTY) == (0 if fault == "no_loan" else 1)
    assert world.warnings() == []

    world.simulator.set_fault(FAULTY, None)
    world.simulator.set_ltv(FAULTY, RECOVERED_LTV)
    world.clock.advance(TTL + 0.01)
    assert_up_with(world.scrape(), RECOVERED_LTV)
    assert world.errors() == []


def test_a_spoiled_second_order_keeps_the_last_good_values_of_both(
    start_simulator, start_exporter, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="okx_loan_exporter")
    two = next(account for account in demo_accounts() if account.name == "two-orders")
    simulator = start_simulator([two])
    world = World(
        simulator,
        start_exporter([account_config(two, simulator.base_url)], cache_ttl=TTL, timeout=TIMEOUT),
        fake_clock,
        caplog,
    )
    good = world.scrape()
    assert good.value("okx_loan_orders", account=two.name) == 2
    simulator.set_fault(two.name, "missing_field", order="2002")
    world.clock.advance(TTL + 0.01)
    failed = world.scrape()
    assert failed.value("okx_loan_up", account=two.name) == 0
    assert failure_delta(failed, good, two.name) == {"invalid_response": 1}
    for order in ("2001", "2002"):  # one bad order spoils the answer, not the other's values
        labels = {"account": two.name, "order": order}
        assert failed.value("okx_loan_ltv_ratio", **labels) == good.value(
            "okx_loan_ltv_ratio", **labels
        )
    assert failed.value("okx_loan_orders", account=two.name) == 2
    only_warning(world, MALFORMED, "data[1] has no 'curLTV'", KEPT, account=two.name)


# --- faults outside the simulator's answers ------------------------------------------------------


@pytest.mark.parametrize(
    ("key_is_demo", "configured_demo"),
    [(True, False), (False, True)],
    ids=["demo-key-without-demo-true", "live-key-with-demo-true"],
)
def test_demo_flag_mismatch_is_refused_by_okx_and_explained(
    key_is_demo: bool, configured_demo: bool, make_world, start_exporter
):
    faulty = sim_account(FAULTY, demo=key_is_demo)
    world = make_world(faulty, faulty_demo=configured_demo)

    failed = world.scrape()
    assert failed.value("okx_loan_up", account=FAULTY) == 0
    assert failure_delta(failed, EMPTY) == {"auth": 1}
    assert failed.series(FAULTY) & POSITION_SERIES == set()  # nothing good to serve yet
    assert_bystanders_unharmed(failed)
    # The simulator's own header check refused it, not an injected fault.
    stats = world.simulator.stats()["accounts"][FAULTY]
    assert (stats["auth_failed"], stats["faulted"]) == (1, 0)
    says = ("OKX code 50101", "demo: true for a demo-trading key", "demo: false for a live key")
    only_warning(world, "OKX request failed: auth: ", *says)
    assert_auth_backoff_grows(world)
    only_warning(world, *says)

    # The fix the log line gives: the same key with the flag the other way round.
    fixed = start_exporter(
        [account_config(faulty, world.simulator.base_url, demo=key_is_demo)],
        cache_ttl=TTL,
        timeout=TIMEOUT,
    )
    assert_up_with(fixed.scrape(), GOOD_LTV)
    assert world.errors() == []


def test_connection_refused_then_recovers(make_world, start_simulator, closed_port: int):
    own = start_simulator([sim_account(FAULTY)], port=closed_port)
    own.set_ltv(FAULTY, GOOD_LTV)
    url = own.base_url
    world = make_world(faulty_url=url)

    good = world.scrape()
    assert_up_with(good, GOOD_LTV)
    own.stop()  # nothing listens on the port now
    world.clock.advance(TTL + 0.01)
    failed = world.scrape()
    assert failed.value("okx_loan_up", account=FAULTY) == 0
    assert failure_delta(failed, good) == {"network": 1}
    assert failed.series(FAULTY) & POSITION_SERIES == good.series(FAULTY) & POSITION_SERIES
    assert_bystanders_unharmed(failed)
    says = (f"cannot connect to {url}", "check base_url, the network and any proxy or firewall")
    only_warning(world, "OKX request failed: network: ", *says)
    world.clock.advance(TTL + 0.01)
    again = world.scrape()
    assert failure_delta(again, failed) == {"network": 1}
    only_warning(world, *says)

    own.start("127.0.0.1", closed_port)  # the same address answers again
    own.set_ltv(FAULTY, RECOVERED_LTV)
    world.clock.advance(TTL + 0.01)
    assert_up_with(world.scrape(), RECOVERED_LTV)
    assert world.errors() == []


@pytest.mark.usefixtures("offline_dns")
def test_dns_failure(make_world):
    world = make_world(faulty_url="http://okx-test.invalid")
    failed = world.scrape()
    assert failed.value("okx_loan_up", account=FAULTY) == 0
    assert failure_delta(failed, EMPTY) == {"network": 1}
    assert_bystanders_unharmed(failed)
    says = (
        "cannot resolve the host of http://okx-test.invalid",
        "check base_url or region, and DNS",
    )
    only_warning(world, "OKX request failed: network: ", *says)
    world.clock.advance(TTL + 0.01)
    again = world.scrape()
    assert failure_delta(again, failed) == {"network": 1}
    only_warning(world, *says)
    assert world.errors() == []


def test_clock_120s_off_is_corrected_from_public_time(world: World):
    good = world.scrape()
    world.simulator.set_clock_skew(120.0)  # OKX's clock is 2 minutes ahead of ours
    world.simulator.set_ltv(FAULTY, RECOVERED_LTV)
    world.clock.advance(TTL + 0.01)
    sent = world.requests()
    corrected = world.scrape()
    # 50102, then public/time, then the same request signed with OKX's time; for every account,
    # since the skew is the simulator's.
    assert world.requests() == sent + 2
    assert world.simulator.stats()["time_requests"] == 1 + len(BYSTANDERS)
    assert_up_with(corrected, RECOVERED_LTV)
    for account in (FAULTY, *BYSTANDERS):
        assert corrected.value("okx_loan_up", account=account) == 1
        assert corrected.value("okx_loan_clock_offset_seconds", account=account) == pytest.approx(
            120.0, abs=0.01
        )
        assert failure_delta(corrected, good, account) == {"auth": 1}
    says = "the local clock is 120.0 s behind OKX's (OKX code 50102)", "fix the machine's clock"
    assert_one_warning_each(world, (FAULTY, *BYSTANDERS), *says)

    world.clock.advance(TTL + 0.01)
    sent = world.requests()
    again = world.scrape()
    assert world.requests() == sent + 1, "the correction was not kept"
    assert failure_delta(again, corrected) == {}
    assert again.value("okx_loan_clock_offset_seconds", account=FAULTY) == pytest.approx(
        120.0, abs=0.01
    )
    assert_one_warning_each(world, (FAULTY, *BYSTANDERS), *says)

    world.simulator.set_clock_skew(0.0)  # the machine's clock was fixed: OKX refuses once more
    world.clock.advance(TTL + 0.01)
    fixed = world.scrape()
    assert fixed.value("okx_loan_up", account=FAULTY) == 1
    assert fixed.value("okx_loan_clock_offset_seconds", account=FAULTY) == pytest.approx(
        0.0, abs=0.01
    )
    assert any("the local clock agrees with OKX's again" in line for line in world.infos())
    assert_one_warning_each(world, (FAULTY, *BYSTANDERS), *says)
    assert world.errors() == []


def assert_one_warning_each(world: World, accounts: tuple[str, ...], *says: str) -> None:
    lines = world.warnings()
    assert len(lines) == len(accounts), lines
    for account in accounts:
        (line,) = [line for line in lines if line.startswith(f"account {account}:")]
        for text in says:
            assert text in line, f"{text!r} missing from {line!r}"


def test_huge_body_is_cut_off_without_holding_it_in_memory(world: World):
    world.scrape()
    world.simulator.set_fault(FAULTY, "huge_body")
    world.clock.advance(TTL + 0.01)
    baseline = rss_bytes()
    with PeakSampler() as peak:
        failed = world.scrape()
    assert peak.value - baseline < HUGE_BODY_BYTES / 2, (
        f"RSS grew by {(peak.value - baseline) / 2**20:.0f} MiB during a "
        f"{HUGE_BODY_BYTES // 2**20} MiB answer"
    )
    assert failed.failures(FAULTY)["invalid_response"] == 1
    only_warning(world, f"answer larger than {MAX_BODY_BYTES} bytes")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """The highest resident set size seen, sampled every few milliseconds, while in the block."""

    def __init__(self) -> None:
        self.value = rss_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(0.002):
            self.value = max(self.value, rss_bytes())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        self.value = max(self.value, rss_bytes())
