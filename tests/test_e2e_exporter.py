"""End-to-end tests of the exporter as a real process, against the OKX simulator as another one.

Everything here goes over HTTP on 127.0.0.1, as a user's Prometheus and shell would: the values a
scrape shows against a signed request of our own to the simulator, one upstream request per account
for a burst of concurrent scrapes, an account failing and recovering without touching the others,
``--demo`` (with the installed ``okx-loan-exporter`` console script), the HTTP endpoints, SIGTERM,
and the command line's exit codes and messages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import yaml
from e2e_support import (
    LOOPBACK,
    Process,
    ProcessGroup,
    SimulatorControl,
    by_account,
    by_order,
    edit_config,
    exporter_argv,
    managed_processes,
    parse_samples,
    scrape,
    start_simulator,
    value,
    wait_for,
)
from tooling import in_ci

from okx_loan_exporter import __version__

pytestmark = pytest.mark.e2e

CONSOLE_SCRIPT = "okx-loan-exporter"
ACCOUNTS = (
    "btc-usdt",
    "okx-docs-example",
    "eth-usdc",
    "no-loan",
    "demo-trading",
    "two-orders",
    "liquidation",
)
MOVING_DEMO_ORDERS = (
    ("btc-usdt", "1001"),
    ("okx-docs-example", ""),
    ("eth-usdc", "1101"),
    ("demo-trading", "1201"),
    ("two-orders", "2001"),
    ("two-orders", "2002"),
)
FAILURE_REASONS = (
    "rate_limited",
    "auth",
    "api_error",
    "http_error",
    "timeout",
    "network",
    "invalid_response",
)


class Simulated(NamedTuple):
    process: Process
    control: SimulatorControl
    config_path: Path


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessGroup]:
    with managed_processes(request, tmp_path / "logs") as group:
        yield group


@pytest.fixture
def simulator(processes: ProcessGroup, tmp_path: Path) -> Simulated:
    process, control = start_simulator(processes, tmp_path / "exporter.yml")
    return Simulated(process, control, tmp_path / "exporter.yml")


def start_exporter(
    processes: ProcessGroup, config_path: Path, *, console_script: str | None = None
) -> tuple[Process, str]:
    """The exporter as a process on a free port; its base URL once /-/ready answers."""
    process, port = processes.start(
        "exporter", lambda port: exporter_argv(port, config_path, console_script=console_script)
    )
    return process, f"http://{LOOPBACK}:{port}"


def config_accounts(config_path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load(config_path.read_text(encoding="utf-8"))["accounts"])


def series(
    samples: dict[Any, float], name: str, account: str, label: str, order: str | None = None
) -> dict[str, float]:
    """{label value: sample} of ``name`` for ``account`` (and ``order`` if given), e.g. amounts
    by currency or LTVs by order."""
    found = {}
    for (sample_name, labels), sample in samples.items():
        labels_dict = dict(labels)
        if sample_name != name or labels_dict.get("account") != account:
            continue
        if order is None or labels_dict.get("order") == order:
            found[labels_dict[label]] = sample
    return found


def order_samples(samples: dict[Any, float], account: str, order: str) -> set[str]:
    """Names of the samples that carry ``account`` and ``order``."""
    return {
        name
        for name, labels in samples
        if ("account", account) in labels and ("order", order) in labels
    }


def console_script() -> str:
    """The installed ``okx-loan-exporter`` script; skip without it (fail in CI, CI=true)."""
    path = shutil.which(CONSOLE_SCRIPT)
    if path:
        return path
    message = (
        f"the {CONSOLE_SCRIPT} console script is not on PATH: run pip install -e '.[test]' in "
        "the environment that runs the tests"
    )
    if in_ci():
        pytest.fail(f"{message} (CI=true requires it)", pytrace=False)
    pytest.skip(message)


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "okx_loan_exporter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --------------------------------------------------------------------------------------------------
# The command line


def test_console_script_is_installed_and_reports_the_version() -> None:
    script = console_script()
    result = subprocess.run(
        [script, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"okx-loan-exporter {__version__}"


def test_check_config_accepts_the_simulators_config(
    processes: ProcessGroup, simulator: Simulated
) -> None:
    before = simulator.control.requests_by_account()
    result = run_cli("--config.file", str(simulator.config_path), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert all(name in result.stdout for name in ACCOUNTS), result.stdout
    # --check-config does not contact OKX.
    assert simulator.control.requests_by_account() == before


GOOD_ACCOUNT = (
    "  - name: main\n    api_key: key-AAAA1111\n    secret_key: secret-BBBB2222\n"
    "    passphrase: pass-CCCC3333\n"
)
SECRETS = ("key-AAAA1111", "secret-BBBB2222", "pass-CCCC3333")


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        pytest.param(
            "cache_ttl: 0.1s\naccounts:\n" + GOOD_ACCOUNT, ["cache_ttl"], id="ttl-too-short"
        ),
        pytest.param(
            "accounts:\n" + GOOD_ACCOUNT + "  - name: second\n    api_key: key-AAAA1111\n"
            "    secret_key_file: /nonexistent/okx-secret\n    passphrase: p\n",
            ["accounts[1].secret_key_file"],
            id="missing-secret-file",
        ),
        pytest.param(
            "acounts:\n" + GOOD_ACCOUNT, ["acounts", "accounts: missing"], id="misspelt-key"
        ),
        pytest.param("accounts: [\n" + GOOD_ACCOUNT, ["line 2"], id="yaml-syntax"),
        pytest.param(None, ["cannot read"], id="no-such-file"),
    ],
)
def test_bad_config_exits_2_with_one_line_per_problem_naming_file_and_key(
    tmp_path: Path, text: str | None, keys: list[str]
) -> None:
    path = tmp_path / "bad.yml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    result = run_cli("--config.file", str(path), "--web.listen-address", f"{LOOPBACK}:0")
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(keys), f"expected {len(keys)} line(s), got:\n{result.stderr}"
    for line, key in zip(lines, keys, strict=True):
        assert str(path) in line and key in line, line
    assert "Traceback" not in result.stderr
    assert not any(secret in result.stderr + result.stdout for secret in SECRETS)


# --------------------------------------------------------------------------------------------------
# Scrapes against the simulator


def test_scraped_values_equal_the_simulators_answer(
    processes: ProcessGroup, simulator: Simulated
) -> None:
    edit_config(simulator.config_path, cache_ttl="60s")
    accounts = config_accounts(simulator.config_path)
    simulator.control.set_config(walk=False)  # stop market time: both readers see one answer
    answers = {a["name"]: simulator.control.loan_info(a)["data"] for a in accounts}
    _, base_url = start_exporter(processes, simulator.config_path)

    samples = scrape(base_url)

    for name, data in answers.items():
        assert value(samples, "okx_loan_up", account=name) == 1, name
        assert value(samples, "okx_loan_orders", account=name) == len(data), name
        assert value(samples, "okx_loan_active", account=name) == (1 if data else 0), name
        orders = [entry.get("ordId", "") for entry in data]
        assert set(series(samples, "okx_loan_ltv_ratio", name, "order")) == set(orders), name
        for entry, order in zip(data, orders, strict=True):
            for metric, field in (
                ("okx_loan_ltv_ratio", "curLTV"),
                ("okx_loan_margin_call_ltv_ratio", "marginCallLTV"),
                ("okx_loan_liquidation_ltv_ratio", "liqLTV"),
                ("okx_loan_borrowed_notional_usd", "loanNotionalUsd"),
                ("okx_loan_collateral_notional_usd", "collateralNotionalUsd"),
            ):
                scraped = value(samples, metric, account=name, order=order)
                assert scraped == float(entry[field]), (name, order, metric)
            assert series(samples, "okx_loan_borrowed_amount", name, "currency", order) == {
                item["ccy"]: float(item["amt"]) for item in entry["loanData"]
            }, (name, order)
            assert series(samples, "okx_loan_collateral_amount", name, "currency", order) == {
                item["ccy"]: float(item["amt"]) for item in entry["collateralData"]
            }, (name, order)
            warning = entry["riskWarningData"]
            expected_liq = {warning["instId"]: float(warning["liqPx"])} if warning["liqPx"] else {}
            liquidation = series(samples, "okx_loan_liquidation_price", name, "instrument", order)
            assert liquidation == expected_liq, (name, order)

    # The account with two orders shows both, each with its own currencies and liquidation price.
    assert value(samples, "okx_loan_orders", account="two-orders") == 2
    assert [entry["ordId"] for entry in answers["two-orders"]] == ["2001", "2002"]
    assert series(samples, "okx_loan_collateral_amount", "two-orders", "currency", "2001") == {
        "BTC": 0.2
    }
    assert series(samples, "okx_loan_collateral_amount", "two-orders", "currency", "2002") == {
        "ETH": 2.0,
        "SOL": 20.0,
    }
    assert series(samples, "okx_loan_liquidation_price", "two-orders", "order") == {"2001": 30000.0}
    # The ordId filter: one order of the two, or none for an order the account does not hold.
    two = next(a for a in accounts if a["name"] == "two-orders")
    assert simulator.control.loan_info(two, order="2002")["data"] == answers["two-orders"][1:]
    assert simulator.control.loan_info(two, order="1001")["data"] == []
    # The amounts of OKX's documentation example come through exactly, as order "" (no ordId).
    assert series(samples, "okx_loan_collateral_amount", "okx-docs-example", "currency", "") == {
        "COMP": 9.7e-06,
        "STX": 0.78,
        "DOT": 0.001,
        "LUNA": 0.05357864,
    }
    assert series(samples, "okx_loan_borrowed_amount", "okx-docs-example", "currency", "") == {
        "USDC": 0.86590608
    }
    assert (
        value(
            samples,
            "okx_loan_liquidation_price",
            account="btc-usdt",
            order="1001",
            instrument="BTC-USDT",
        )
        == 33750.0
    )
    assert value(samples, "okx_loan_exporter_build_info", version=__version__) == 1


def test_a_closed_order_leaves_metrics_with_its_currencies_on_the_next_fresh_answer(
    processes: ProcessGroup, simulator: Simulated
) -> None:
    edit_config(simulator.config_path, cache_ttl="1s")
    _, base_url = start_exporter(processes, simulator.config_path)

    def both_orders() -> dict[Any, float] | None:
        samples = scrape(base_url)
        return samples if value(samples, "okx_loan_orders", account="two-orders") == 2 else None

    before = wait_for(
        "both orders of two-orders", both_orders, 10, interval=0.2, details=processes.tails
    )
    assert order_samples(before, "two-orders", "2001") >= {
        "okx_loan_ltv_ratio",
        "okx_loan_borrowed_amount",
        "okx_loan_collateral_amount",
        "okx_loan_liquidation_price",
    }
    assert series(before, "okx_loan_collateral_amount", "two-orders", "currency") == {
        "BTC": 0.2,
        "ETH": 2.0,
        "SOL": 20.0,
    }
    requests = simulator.control.requests_by_account()["two-orders"]

    view = simulator.control.set_account("two-orders", order="2001", close=True)
    assert [order["order"] for order in view["orders"]] == ["2002"]

    def fresh_answer() -> dict[Any, float] | None:
        samples = scrape(base_url)
        fetched = simulator.control.requests_by_account()["two-orders"] > requests
        return (
            samples
            if fetched and value(samples, "okx_loan_orders", account="two-orders") == 1
            else None
        )

    after = wait_for(
        "the next fresh answer", fresh_answer, 10, interval=0.2, details=processes.tails
    )
    assert order_samples(after, "two-orders", "2001") == set()  # every series of the order
    assert series(after, "okx_loan_collateral_amount", "two-orders", "currency") == {
        "ETH": 2.0,
        "SOL": 20.0,
    }
    assert series(after, "okx_loan_borrowed_amount", "two-orders", "currency") == {"USDC": 5850.0}
    assert series(after, "okx_loan_liquidation_price", "two-orders", "order") == {}
    assert value(after, "okx_loan_active", account="two-orders") == 1
    assert value(after, "okx_loan_up", account="two-orders") == 1
    # order 2002 keeps its series (its headroom may have landed in between)
    assert order_samples(after, "two-orders", "2002") >= order_samples(before, "two-orders", "2002")


def test_fifty_concurrent_scrapes_make_one_upstream_request_per_account(
    processes: ProcessGroup, simulator: Simulated
) -> None:
    edit_config(simulator.config_path, cache_ttl="60s")
    # Slow answers keep the first fetch in flight while the other scrapes arrive.
    simulator.control.set_config(latency=0.5)
    _, base_url = start_exporter(processes, simulator.config_path)
    before = simulator.control.requests_by_account()
    barrier = threading.Barrier(50)

    def one_scrape(_: int) -> tuple[int, str]:
        barrier.wait(timeout=10)
        response = httpx.get(f"{base_url}/metrics", timeout=20)
        return response.status_code, response.text

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one_scrape, range(50)))
    elapsed = time.monotonic() - started

    after = simulator.control.requests_by_account()
    assert {name: after[name] - before.get(name, 0) for name in after} == dict.fromkeys(ACCOUNTS, 1)
    assert [status for status, _ in results] == [200] * 50
    parsed = [parse_samples(text) for _, text in results]
    for samples in parsed:
        assert by_account(samples, "okx_loan_up") == dict.fromkeys(ACCOUNTS, 1.0)
        requests = {
            name: value(samples, "okx_loan_api_requests_total", account=name, endpoint="loan_info")
            for name in ACCOUNTS
        }
        assert requests == dict.fromkeys(ACCOUNTS, 1.0)
    ltvs = [by_order(samples, "okx_loan_ltv_ratio") for samples in parsed]
    assert {account for account, _ in ltvs[0]} == set(ACCOUNTS) - {"no-loan"}
    assert all(ltv == ltvs[0] for ltv in ltvs), "concurrent scrapes saw different values"
    print(f"50 concurrent scrapes with 0.5 s upstream latency took {elapsed:.2f} s")


def test_a_failing_account_is_down_with_its_reason_and_recovers(
    processes: ProcessGroup, simulator: Simulated
) -> None:
    edit_config(simulator.config_path, cache_ttl="1s")
    exporter, base_url = start_exporter(processes, simulator.config_path)
    faults = {
        "eth-usdc": ("http_500_html", "http_error"),
        "okx-docs-example": ("invalid_json", "invalid_response"),
        "demo-trading": ("rate_limit", "rate_limited"),
    }
    healthy = [name for name in ACCOUNTS if name not in faults]

    def all_up() -> bool:
        return by_account(scrape(base_url), "okx_loan_up") == dict.fromkeys(ACCOUNTS, 1.0)

    wait_for("every account up", all_up, 10, interval=0.2, details=processes.tails)
    ltv_before = by_order(scrape(base_url), "okx_loan_ltv_ratio")

    for name, (fault, _) in faults.items():
        simulator.control.set_account(name, fault=fault)
    faulted_at = time.monotonic()

    def faults_visible() -> dict[Any, float] | None:
        samples = scrape(base_url)
        for name, (_, reason) in faults.items():
            if value(samples, "okx_loan_up", account=name) != 0:
                return None
            if (loan_info_failures(samples, name, reason) or 0) < 1:
                return None
        return samples

    samples = wait_for(
        "the faulted accounts to be down", faults_visible, 10, interval=0.2, details=processes.tails
    )
    down_after = time.monotonic() - faulted_at
    for name, (_, reason) in faults.items():
        for other in FAILURE_REASONS:
            if other != reason:
                assert loan_info_failures(samples, name, other) == 0, (name, other)
        # The last good values are still served (within max_stale), so LTV alerts keep working.
        assert series(samples, "okx_loan_ltv_ratio", name, "order"), name
    for name in healthy:
        assert value(samples, "okx_loan_up", account=name) == 1, name
        for reason in FAILURE_REASONS:
            assert loan_info_failures(samples, name, reason) == 0, (name, reason)
    assert set(by_order(samples, "okx_loan_ltv_ratio")) == set(ltv_before)

    for name in faults:
        simulator.control.set_account(name, fault=None)
    cleared_at = time.monotonic()
    wait_for("every account up again", all_up, 10, interval=0.2, details=processes.tails)
    logs = exporter.stderr()
    assert "okx-docs-example" in logs  # the failures were logged...
    for account in config_accounts(simulator.config_path):  # ...without a credential
        for secret in ("api_key", "secret_key", "passphrase"):
            assert account[secret] not in logs, f"{account['name']}'s {secret} is in the log"
    print(
        f"faulted accounts down after {down_after:.2f} s, up again "
        f"{time.monotonic() - cleared_at:.2f} s after the faults were cleared (cache_ttl 1s)"
    )


def test_demo_mode_serves_moving_ltv_within_5_seconds(processes: ProcessGroup) -> None:
    script = console_script()
    process, port = processes.start(
        "exporter-demo",
        lambda port: [script, "--demo", "--web.listen-address", f"{LOOPBACK}:{port}"],
        ready_timeout=5,
    )
    base_url = f"http://{LOOPBACK}:{port}"
    ready_after = time.monotonic() - process.started_at
    first: dict[tuple[str, str], float] = {}
    first_after: list[float] = []

    def two_accounts_moved() -> list[str] | None:
        ltv = by_order(scrape(base_url), "okx_loan_ltv_ratio")
        if not first:
            if set(MOVING_DEMO_ORDERS) <= set(ltv):
                first.update(ltv)
                first_after.append(time.monotonic() - process.started_at)
            return None
        moved = {
            name
            for name, order in MOVING_DEMO_ORDERS
            if ltv.get((name, order)) != first[(name, order)]
        }
        return sorted(moved) if len(moved) >= 2 else None

    remaining = 5.0 - (time.monotonic() - process.started_at)
    moved = wait_for(
        "two demo accounts' LTV to change within 5 s of the start",
        two_accounts_moved,
        remaining,
        interval=0.1,
        details=process.tails,
    )
    moved_after = time.monotonic() - process.started_at
    print(
        f"--demo: ready after {ready_after:.2f} s, first LTVs after {first_after[0]:.2f} s, "
        f"LTV of {', '.join(moved)} moved after {moved_after:.2f} s"
    )


def test_http_endpoints_answer(processes: ProcessGroup, simulator: Simulated) -> None:
    _, base_url = start_exporter(processes, simulator.config_path)
    healthy = httpx.get(f"{base_url}/-/healthy", timeout=5)
    ready = httpx.get(f"{base_url}/-/ready", timeout=5)
    assert (healthy.status_code, ready.status_code) == (200, 200)
    before = simulator.control.requests_by_account()
    landing = httpx.get(f"{base_url}/", timeout=5)
    assert simulator.control.requests_by_account() == before, "the landing page asked OKX"
    assert landing.status_code == 200
    assert landing.headers["content-type"].startswith("text/html")
    assert 'href="metrics"' in landing.text
    assert all(name in landing.text for name in ACCOUNTS), landing.text
    metrics = httpx.get(f"{base_url}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "okx_loan_up" in metrics.text
    assert httpx.get(f"{base_url}/nope", timeout=5).status_code == 404


@pytest.mark.parametrize("okx_hangs", [False, True], ids=["idle", "okx-request-hanging"])
def test_sigterm_stops_the_exporter_within_2s_with_exit_0(
    processes: ProcessGroup, simulator: Simulated, okx_hangs: bool
) -> None:
    edit_config(simulator.config_path, cache_ttl="1s")
    exporter, base_url = start_exporter(processes, simulator.config_path)
    assert value(scrape(base_url), "okx_loan_up", account="btc-usdt") == 1
    stop_scraping = threading.Event()
    scraper = None
    if okx_hangs:
        before = simulator.control.stats()["accounts"]["btc-usdt"]["faulted"]
        simulator.control.set_account("btc-usdt", fault="hang")

        def keep_scraping() -> None:
            while not stop_scraping.is_set():
                try:
                    httpx.get(f"{base_url}/metrics", timeout=10)
                except httpx.HTTPError:
                    return  # the exporter went away

        scraper = threading.Thread(target=keep_scraping, daemon=True)
        scraper.start()
        wait_for(
            "a hanging loan-info request in flight",
            lambda: simulator.control.stats()["accounts"]["btc-usdt"]["faulted"] > before,
            10,
            details=processes.tails,
        )

    code = exporter.stop(timeout=10)
    stop_scraping.set()
    if scraper is not None:
        scraper.join(timeout=10)
    print(
        f"SIGTERM -> exit {code} in {exporter.stop_seconds:.2f} s "
        f"({'with' if okx_hangs else 'without'} a hanging OKX request)"
    )
    assert code == 0, exporter.tails()
    assert exporter.stop_seconds is not None and exporter.stop_seconds < 2.0, exporter.tails()
    assert "Traceback" not in exporter.stderr()


def loan_info_failures(samples: Any, account: str, reason: str) -> float | None:
    """okx_loan_api_request_failures_total of loan-info for ``account`` and ``reason``."""
    return value(
        samples,
        "okx_loan_api_request_failures_total",
        account=account,
        endpoint="loan_info",
        reason=reason,
    )
