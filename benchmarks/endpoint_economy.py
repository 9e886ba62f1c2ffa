"""The secondary endpoints' economy: requests per endpoint and account, and the busiest 2 s.

Two runs of 200 concurrent scrapers against generated accounts (one order, one to three
collateral currencies each). With the default intervals (history 1m, interest 10m, headroom 5m)
every endpoint is asked once in the run, whatever the scrapers do, and no endpoint of any account
sees more than 1 request in any 2 s (the pacer; OKX allows 5). The second run has every interval
20 times shorter (3s, 30s, 15s: the shortest above the pacer's 2.2 s after the previous
answer) and checks that the schedule makes the calls it should: the
requests per hour with the defaults are the calls of one fetch times 3600 / interval. The
simulator counts per endpoint and account (``GET /sim/stats``: ``endpoints``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import load
from benchmarks.common import (
    Table,
    exporter_argv,
    free_port,
    serve,
    simulator,
    verdict,
    write_config,
)

ACCOUNTS = 5
SCRAPERS = 200
DEFAULTS = {"history_interval": 60.0, "interest_interval": 600.0, "headroom_interval": 300.0}
SCALE = 20
ONE_CALL_PER_FETCH = ("loan_history", "interest_accrued")
"""Endpoints asked with one call per fetch (their newest page)."""
ENDPOINTS = {  # the simulator's name -> (the exporter's label, the interval key)
    "loan-history": ("loan_history", "history_interval"),
    "interest-accrued": ("interest_accrued", "interest_interval"),
    "max-loan": ("max_loan", "headroom_interval"),
    "max-collateral-redeem-amount": ("max_redeem", "headroom_interval"),
}


def _run(
    sim: Any, config: dict[str, Any], directory: str, intervals: dict[str, float], seconds: float
) -> dict[str, Any]:
    path = write_config(
        config,
        Path(directory) / f"exporter-{intervals['history_interval']:g}.yml",
        **{key: f"{value:g}s" for key, value in intervals.items()},
    )
    port = free_port()
    before = sim.stats()["endpoints"]
    with serve(exporter_argv(path, port), port):
        result = load.run(port, "/metrics", SCRAPERS, seconds)
    after = sim.stats()["endpoints"]
    counts: dict[str, dict[str, int]] = {}
    peaks: dict[str, int] = {}
    limited = 0
    for account, endpoints in after.items():
        for name, stats in endpoints.items():
            old = before.get(account, {}).get(name, {})
            counts.setdefault(name, {})[account] = stats["requests"] - old.get("requests", 0)
            peaks[name] = max(peaks.get(name, 0), stats["peak_in_window"])
            limited += stats["rate_limited"] - old.get("rate_limited", 0)
    return {"scrapes": result.requests, "counts": counts, "peak": peaks, "rate_limited": limited}


def run(quick: bool = False) -> tuple[dict[str, Any], list[Table]]:
    short = 6.0 if quick else 20.0
    scaled_seconds = 20.0 if quick else 60.0
    results: dict[str, Any] = {"accounts": ACCOUNTS, "scrapers": SCRAPERS}
    with tempfile.TemporaryDirectory(prefix="okx-bench-") as directory, simulator(ACCOUNTS) as sim:
        results["defaults"] = _run(sim, sim.config, directory, DEFAULTS, short)
        # Two exporters on one key back to back: the second's first requests would share a 2 s
        # window with the first's last ones in the simulator's peak.
        time.sleep(2.5)
        scaled = {key: value / SCALE for key, value in DEFAULTS.items()}
        results["scaled"] = _run(sim, sim.config, directory, scaled, scaled_seconds)

    defaults, scaled_run = results["defaults"], results["scaled"]
    table = Table(
        f"6. Secondary endpoints ({SCRAPERS} scrapers, {ACCOUNTS} accounts with one order each)",
        [
            "endpoint",
            "interval",
            "calls per fetch",
            "per hour per account",
            f"in {scaled_seconds:g}s at 1/{SCALE} (expected)",
            "peak per 2 s",
            "target",
        ],
    )
    ok_all = defaults["rate_limited"] == 0 and scaled_run["rate_limited"] == 0
    per_hour: dict[str, float] = {}
    for name, (label, key) in ENDPOINTS.items():
        calls = defaults["counts"].get(name, {})  # one fetch of each endpoint in the first run
        per_fetch = sum(calls.values()) / max(1, len(calls))
        if label in ONE_CALL_PER_FETCH:
            # An account whose phase is short fetched a second time within the run.
            per_fetch = min(calls.values(), default=0)
        per_hour[label] = per_fetch * 3600 / DEFAULTS[key]
        # The first at once, the second after the account's phase (a fraction of the period),
        # then one a period: int(fetches) + 1 or + 2 in the run.
        fetches = scaled_seconds * SCALE / DEFAULTS[key]
        expected = (per_fetch * int(fetches), per_fetch * (int(fetches) + 2))
        measured = sum(scaled_run["counts"].get(name, {}).values()) / max(1, len(calls))
        peak = max(defaults["peak"].get(name, 0), scaled_run["peak"].get(name, 0))
        ok = bool(calls) and peak <= 1 and expected[0] - 1e-9 <= measured <= expected[1] + 1e-9
        ok_all = ok_all and ok
        table.add(
            label,
            f"{DEFAULTS[key]:g}s",
            f"{per_fetch:g}",
            f"{per_hour[label]:g}",
            f"{measured:g} ({expected[0]:g}-{expected[1]:g})",
            peak,
            verdict(ok),
        )
    results["per_hour"] = per_hour
    results["target_met"] = ok_all
    table.notes.append(
        "calls per fetch: loan-history and interest-accrued one page; max-loan one call per order "
        "and debt currency, max-redeem one per order and collateral currency (these accounts: "
        "one debt, 1-3 collateral currencies), measured in a "
        f"{short:g}s run with the defaults"
    )
    table.notes.append(
        "target: the shortened run makes the expected number of calls, no endpoint of an account "
        "gets more than 1 request in any 2 s, 0 rate-limited "
        f"(here {defaults['rate_limited'] + scaled_run['rate_limited']})"
    )
    return results, [table]
