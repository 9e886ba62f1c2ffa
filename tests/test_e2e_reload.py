"""End-to-end: reloading and key rotation on the exporter as a real process, against the simulator.

Accounts added, removed and changed through ``SIGHUP`` and through ``POST /-/reload`` (behind
basic auth), counted on the simulator's side; a broken file that keeps the old configuration
serving; a key rotated the way Kubernetes updates a mounted secret; SIGTERM while a reload hangs;
and ``--demo``, where a reload keeps the simulated accounts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml
from e2e_support import (
    LOOPBACK,
    Process,
    ProcessGroup,
    SimulatorControl,
    by_account,
    exporter_argv,
    managed_processes,
    parse_samples,
    start_simulator,
    value,
    wait_for,
)
from test_key_rotation import kubernetes_secret

from okx_loan_exporter.simulator import demo_accounts

RELOAD_OK = "okx_loan_exporter_config_last_reload_successful"
RELOAD_AT = "okx_loan_exporter_config_last_reload_success_timestamp_seconds"
USER, PASSWORD = "prometheus", "reload-test-pw"


class Simulated:
    """The simulator (one per module, reset before each test) and the accounts it knows."""

    def __init__(self, control: SimulatorControl, config_path: Path) -> None:
        self.control = control
        document = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        self.base_url = str(document["base_url"])
        self.accounts = {entry["name"]: entry for entry in document["accounts"]}

    def requests(self) -> dict[str, int]:
        return self.control.requests_by_account()


@pytest.fixture(scope="module")
def simulated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("simulator")
    with managed_processes(request, directory / "logs") as group:
        _, control = start_simulator(group, directory / "exporter.yml")
        yield Simulated(control, directory / "exporter.yml")


@pytest.fixture
def sim(simulated: Simulated) -> Simulated:
    response = httpx.post(f"{simulated.control.base_url}/sim/reset", timeout=5)
    assert response.status_code == 200
    return simulated


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessGroup]:
    with managed_processes(request, tmp_path / "logs") as group:
        yield group


def write_config(path: Path, sim: Simulated, *accounts: dict[str, Any], **settings: Any) -> None:
    document = {"cache_ttl": "1h", "max_stale": "2h", **settings, "base_url": sim.base_url}
    document["accounts"] = list(accounts)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)


def start_exporter(
    processes: ProcessGroup, config: Path, *extra: str, ready_path: str = "/-/ready"
) -> tuple[Process, str]:
    process, port = processes.start(
        "exporter",
        lambda port: exporter_argv(port, config, "--log.format", "json", *extra),
        ready_path=ready_path,
    )
    return process, f"http://{LOOPBACK}:{port}"


def scrape(base_url: str, auth: tuple[str, str] | None = None) -> dict[Any, float]:
    response = httpx.get(f"{base_url}/metrics", auth=auth, timeout=10)
    assert response.status_code == 200, response.text
    return parse_samples(response.text)


def log_messages(process: Process) -> list[str]:
    return [
        json.loads(line)["msg"] for line in process.stderr().splitlines() if line.startswith("{")
    ]


def check_config_lines(config: Path) -> list[str]:
    """What ``--check-config`` says about ``config``: the lines a refused start prints."""
    result = subprocess.run(
        [sys.executable, "-m", "okx_loan_exporter", "--config.file", str(config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    return [line.removeprefix("okx-loan-exporter: ") for line in result.stderr.splitlines()]


def test_sighup_adds_removes_and_changes_accounts_and_a_broken_file_changes_nothing(
    processes: ProcessGroup, sim: Simulated, tmp_path: Path
) -> None:
    accounts = sim.accounts
    config = tmp_path / "exporter.yml"
    write_config(config, sim, accounts["btc-usdt"], accounts["eth-usdc"], accounts["no-loan"])
    exporter, base_url = start_exporter(processes, config)
    first = scrape(base_url)
    assert by_account(first, "okx_loan_up") == {"btc-usdt": 1, "eth-usdc": 1, "no-loan": 1}
    started_at = value(first, RELOAD_AT)
    before = sim.requests()

    # eth-usdc changes: a live key marked demo, which OKX (the simulator) refuses with 50101.
    write_config(
        config,
        sim,
        accounts["btc-usdt"],
        {**accounts["eth-usdc"], "demo": True},
        accounts["two-orders"],
    )
    os.kill(exporter.pid, signal.SIGHUP)
    up = wait_for(
        "the reloaded accounts",
        lambda: (
            (up := by_account(scrape(base_url), "okx_loan_up")).keys()
            == {"btc-usdt", "eth-usdc", "two-orders"}
            and up
        ),
        10,
        details=exporter.tails,
    )
    assert up == {"btc-usdt": 1, "eth-usdc": 0, "two-orders": 1}
    after = sim.requests()
    assert after["btc-usdt"] == before["btc-usdt"]  # unchanged: served from its cache
    assert after["eth-usdc"] == before["eth-usdc"] + 1
    assert after["two-orders"] == before["two-orders"] + 1
    assert after["no-loan"] == before["no-loan"]
    samples = scrape(base_url)
    assert not [key for key in samples if ("account", "no-loan") in key[1]]
    assert value(samples, RELOAD_OK) == 1
    assert value(samples, RELOAD_AT) > started_at
    assert (
        value(samples, "okx_loan_api_requests_total", account="btc-usdt", endpoint="loan_info") == 1
    )

    # A broken file: nothing changes, the same lines as --check-config, and the metric says 0.
    good = config.read_text(encoding="utf-8")
    config.write_text(
        good.replace("cache_ttl: 1h", "cache_ttl: 100ms").replace("name: two-orders", "nme: x"),
        encoding="utf-8",
    )
    expected = check_config_lines(config)
    assert len(expected) >= 2
    os.kill(exporter.pid, signal.SIGHUP)
    wait_for("the failed reload", lambda: value(scrape(base_url), RELOAD_OK) == 0, 10)
    messages = log_messages(exporter)
    for line in expected:
        assert line in messages, (line, messages)
    samples = scrape(base_url)
    assert by_account(samples, "okx_loan_up") == up
    assert sim.requests() == after  # the old config keeps serving from its caches
    config.write_text(good, encoding="utf-8")
    os.kill(exporter.pid, signal.SIGHUP)
    wait_for("a good reload again", lambda: value(scrape(base_url), RELOAD_OK) == 1, 10)
    assert sim.requests() == after


def test_reload_endpoint_behind_basic_auth(
    processes: ProcessGroup, sim: Simulated, tmp_path: Path
) -> None:
    accounts = sim.accounts
    web_config = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web_config.write_text(f"basic_auth_users:\n  {USER}: '{hashed}'\n", encoding="utf-8")
    config = tmp_path / "exporter.yml"
    write_config(config, sim, accounts["btc-usdt"], accounts["no-loan"])
    _, base_url = start_exporter(
        processes, config, "--web.config.file", str(web_config), ready_path="/-/healthy"
    )
    auth = (USER, PASSWORD)
    assert by_account(scrape(base_url, auth), "okx_loan_up") == {"btc-usdt": 1, "no-loan": 1}
    before = sim.requests()

    write_config(config, sim, accounts["btc-usdt"], accounts["eth-usdc"], timeout="5s")
    reload_url = f"{base_url}/-/reload"
    assert httpx.post(reload_url, timeout=10).status_code == 401
    assert httpx.post(reload_url, auth=(USER, "wrong"), timeout=10).status_code == 401
    assert by_account(scrape(base_url, auth), "okx_loan_up") == {"btc-usdt": 1, "no-loan": 1}
    assert httpx.get(reload_url, auth=auth, timeout=10).status_code == 405
    answer = httpx.post(reload_url, auth=auth, timeout=10)
    assert answer.status_code == 200, answer.text
    assert "added: eth-usdc; removed: no-loan; unchanged: btc-usdt" in answer.text
    assert by_account(scrape(base_url, auth), "okx_loan_up") == {"btc-usdt": 1, "eth-usdc": 1}
    assert sim.requests()["btc-usdt"] == before["btc-usdt"]

    # Changed: btc-usdt's key is now read from a file (same key, so still up, but a new client).
    (tmp_path / "btc.key").write_text(accounts["btc-usdt"]["api_key"], encoding="utf-8")
    btc = {**accounts["btc-usdt"], "api_key_file": str(tmp_path / "btc.key")}
    del btc["api_key"]
    write_config(config, sim, btc, accounts["eth-usdc"])
    answer = httpx.post(reload_url, auth=auth, timeout=10)
    assert "changed: btc-usdt; unchanged: eth-usdc" in answer.text
    assert by_account(scrape(base_url, auth), "okx_loan_up") == {"btc-usdt": 1, "eth-usdc": 1}
    assert sim.requests()["btc-usdt"] == before["btc-usdt"] + 1

    config.write_text("accounts: [\n", encoding="utf-8")
    answer = httpx.post(reload_url, auth=auth, timeout=10)
    assert answer.status_code == 500
    assert answer.text.startswith("reload failed:\n") and str(config) in answer.text
    samples = scrape(base_url, auth)
    assert by_account(samples, "okx_loan_up") == {"btc-usdt": 1, "eth-usdc": 1}
    assert value(samples, RELOAD_OK) == 0


def test_a_key_rotated_like_kubernetes_is_used_within_one_cache_ttl(
    processes: ProcessGroup, sim: Simulated, tmp_path: Path
) -> None:
    account = sim.accounts["btc-usdt"]
    secrets = tmp_path / "secrets"
    files = {name: str(account[name]) for name in ("api_key", "secret_key", "passphrase")}
    kubernetes_secret(secrets, files)
    config = tmp_path / "exporter.yml"
    write_config(
        config,
        sim,
        {"name": "btc-usdt", **{f"{name}_file": str(secrets / name) for name in files}},
        cache_ttl="1s",
        max_stale="1m",
    )
    exporter, base_url = start_exporter(processes, config)
    assert value(scrape(base_url), "okx_loan_up", account="btc-usdt") == 1

    new_passphrase = "rotated-passphrase-Z7"
    sim.control.set_account("btc-usdt", passphrase=new_passphrase)
    wait_for(
        "the old passphrase to be refused",
        lambda: value(scrape(base_url), "okx_loan_up", account="btc-usdt") == 0,
        10,
    )
    failures = value(
        scrape(base_url),
        "okx_loan_api_request_failures_total",
        account="btc-usdt",
        endpoint="loan_info",
        reason="auth",
    )
    assert failures is not None and failures >= 1
    kubernetes_secret(secrets, {**files, "passphrase": new_passphrase})
    time.sleep(1.0)  # one cache_ttl; then one scrape brings the account back
    samples = scrape(base_url)
    assert value(samples, "okx_loan_up", account="btc-usdt") == 1, exporter.tails()
    stderr = exporter.stderr()
    assert "accounts[0].passphrase_file changed on disk" in stderr
    assert new_passphrase not in stderr and str(account["passphrase"]) not in stderr


def test_sigterm_while_a_reload_hangs_still_stops_within_2s(
    processes: ProcessGroup, sim: Simulated, tmp_path: Path
) -> None:
    config = tmp_path / "exporter.yml"
    write_config(config, sim, sim.accounts["btc-usdt"])
    exporter, base_url = start_exporter(processes, config)
    config.unlink()
    os.mkfifo(config)  # opening it for reading blocks until a writer comes: none will
    os.kill(exporter.pid, signal.SIGHUP)

    def reload_by_http() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the exporter stops before it answers
            httpx.post(f"{base_url}/-/reload", timeout=30)

    hanging = threading.Thread(target=reload_by_http, daemon=True)
    hanging.start()
    time.sleep(0.5)
    samples = scrape(base_url)  # still serving, and neither reload has finished
    assert value(samples, RELOAD_OK) == 1
    assert value(samples, "okx_loan_up", account="btc-usdt") == 1
    code = exporter.stop(timeout=10)
    print(f"SIGTERM during two hanging reloads -> exit {code} in {exporter.stop_seconds:.2f} s")
    assert code == 0, exporter.tails()
    assert exporter.stop_seconds is not None and exporter.stop_seconds < 2.0, exporter.tails()


def test_demo_mode_reload_keeps_the_simulated_accounts(processes: ProcessGroup) -> None:
    process, port = processes.start(
        "exporter-demo",
        lambda port: [
            sys.executable,
            "-m",
            "okx_loan_exporter",
            "--demo",
            "--web.listen-address",
            f"{LOOPBACK}:{port}",
        ],
    )
    base_url = f"http://{LOOPBACK}:{port}"
    accounts = set(by_account(scrape(base_url), "okx_loan_up"))
    assert accounts == {account.name for account in demo_accounts()}
    answer = httpx.post(f"{base_url}/-/reload", timeout=10)
    assert answer.status_code == 200 and "demo mode" in answer.text
    os.kill(process.pid, signal.SIGHUP)
    wait_for(
        "the SIGHUP reload",
        lambda: process.stderr().count("configuration reloaded: demo mode") == 2,
        10,
        details=process.tails,
    )
    samples = scrape(base_url)
    assert set(by_account(samples, "okx_loan_up")) == accounts
    assert value(samples, RELOAD_OK) == 1
    assert process.poll() is None
