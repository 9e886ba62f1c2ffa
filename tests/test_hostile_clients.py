"""The exporter as a real process under hostile clients: it keeps serving and its memory stays put.

Started with an open-file limit of 1024 and basic auth on, it gets header bombs, 1,100 idle
sockets, byte-drip clients and a wrong-password flood at once (``hostile_clients.py``, in its own
process so that it does not share the measuring process's GIL), while a scraper with valid
credentials must keep getting 200 in under 1 s and the exporter's resident memory must stay within
30 MiB of its value before the attack. Then SIGTERM, with the attack still on, must stop it within
2 s. Everything runs on 127.0.0.1 and lasts about 15 s.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import bcrypt
import httpx
import pytest
from e2e_support import (
    LOOPBACK,
    Process,
    managed_processes,
    parse_samples,
    show,
    start_simulator,
    value,
    wait_for,
)

pytestmark = pytest.mark.e2e

OPEN_FILE_LIMIT = 1024
SCRAPE_SECONDS = 8.0
MAX_SCRAPE_SECONDS = 1.0
MAX_RSS_GROWTH = 30 * 1024 * 1024
MAX_STOP_SECONDS = 2.0
USER, PASSWORD = "prometheus", "hostile-test-password"
ATTACKER = Path(__file__).with_name("hostile_clients.py")


def limit_open_files() -> None:
    """In the exporter's child process: the common open-file limit of 1024, soft and hard."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILE_LIMIT, OPEN_FILE_LIMIT))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def timed_scrape(url: str) -> tuple[str, float, str]:
    """(status or error, seconds, body) of one scrape with valid credentials."""
    started = time.monotonic()
    try:
        response = httpx.get(f"{url}/metrics", auth=(USER, PASSWORD), timeout=5.0)
        outcome, body = str(response.status_code), response.text
    except httpx.HTTPError as error:
        outcome, body = type(error).__name__, ""
    return outcome, time.monotonic() - started, body


def test_scrapes_succeed_and_memory_holds_under_hostile_clients(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    web_config = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    web_config.write_text(f"basic_auth_users:\n  {USER}: '{hashed}'\n", encoding="utf-8")
    config_path = tmp_path / "exporter.yml"
    with managed_processes(request, tmp_path / "logs") as group:
        start_simulator(group, config_path)
        exporter, port = group.start(
            "exporter",
            lambda port: [
                sys.executable,
                "-m",
                "okx_loan_exporter",
                "--config.file",
                str(config_path),
                "--web.listen-address",
                f"{LOOPBACK}:{port}",
                "--web.config.file",
                str(web_config),
            ],
            ready_path="/-/healthy",  # the one path outside basic auth
            preexec_fn=limit_open_files,
        )
        url = f"http://{LOOPBACK}:{port}"
        for _ in range(5):  # the first one checks the password with bcrypt; later ones are cached
            outcome, _, _ = timed_scrape(url)
            assert outcome == "200", f"scrape before the attack: {outcome}"
        baseline = peak = rss_bytes(exporter.pid)

        attacker = group.add(
            Process(
                "attacker",
                [sys.executable, str(ATTACKER), LOOPBACK, str(port), "--seconds", "60"],
                tmp_path / "logs",
            )
        )
        attacker.start()
        wait_for("the attack to start", lambda: "attacking" in attacker.stdout(), 30.0)
        scrapes: list[tuple[str, float]] = []
        last_body = ""
        end = time.monotonic() + SCRAPE_SECONDS
        while time.monotonic() < end:
            outcome, seconds, body = timed_scrape(url)
            scrapes.append((outcome, seconds))
            last_body = body or last_body
            peak = max(peak, rss_bytes(exporter.pid))
            time.sleep(0.1)

        exit_code = exporter.stop(timeout=10.0)  # SIGTERM while the attack goes on
        stop_seconds = exporter.stop_seconds
        attacker.stop()
        counts = json.loads(attacker.stdout().splitlines()[-1])

    slowest = max(seconds for _, seconds in scrapes)
    show(
        request,
        f"\nhostile clients: {len(scrapes)} scrapes, slowest {slowest:.3f} s; RSS "
        f"{baseline / 2**20:.1f} MiB before, peak {peak / 2**20:.1f} MiB; SIGTERM -> exit "
        f"{exit_code} in {stop_seconds:.2f} s; attack {counts}\n",
    )
    # The attack really happened, each kind of it.
    assert counts.get("bomb_sent", 0) >= 4, counts
    assert counts.get("idle_opened", 0) >= 1100, counts
    assert counts.get("drip_bytes", 0) >= 50, counts
    assert counts.get("flood_answer_401", 0) >= 8, counts
    failed = [(outcome, round(seconds, 3)) for outcome, seconds in scrapes if outcome != "200"]
    assert not failed, f"scrapes that failed during the attack: {failed}"
    assert slowest < MAX_SCRAPE_SECONDS, f"slowest scrape took {slowest:.3f} s"
    assert peak - baseline < MAX_RSS_GROWTH, (
        f"RSS grew from {baseline / 2**20:.1f} to {peak / 2**20:.1f} MiB"
    )
    assert exit_code == 0
    assert stop_seconds is not None and stop_seconds < MAX_STOP_SECONDS
    # The exporter counted what it shed.
    samples = parse_samples(last_body)
    shed = "okx_loan_exporter_http_connections_shed_total"
    assert value(samples, "okx_loan_exporter_http_connections_max") == 512
    assert (value(samples, shed, reason="max_connections") or 0) > 0
    assert (value(samples, shed, reason="head_too_large") or 0) > 0
