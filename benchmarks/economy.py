"""OKX call economy: 200 concurrent scrapers for 20 s against 3 accounts (HTTPS) with cache_ttl 2 s.

The cache should send ceil(20/2) requests per account (one more when a TTL expires right at the
end) and never meet OKX's rate limit (5 requests per 2 s per key in the simulator). The same load
on the exporter with its cache disabled (``benchmarks.nocache_exporter``: TTL 0, single flight
kept) shows what the cache saves, and the rate-limit rejections it avoids.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import load
from benchmarks.common import (
    PYTHON,
    Table,
    exporter_argv,
    free_port,
    ms,
    serve,
    simulator,
    verdict,
    write_config,
)

ACCOUNTS = 3
SCRAPERS = 200
TTL = 2.0
WINDOW = 2.0
"""The issue's bound: at most one OKX request per account in any WINDOW seconds."""


def _measure(sim: Any, argv: list[str], port: int, seconds: float) -> dict[str, Any]:
    sim.reset()  # counters, rate windows and the shortest intervals start afresh
    with serve(argv, port):
        result = load.run(port, "/metrics", SCRAPERS, seconds)
        after = sim.stats()["accounts"]
    per_account = {name: after[name] for name in sorted(after)}
    intervals = [counts["shortest_interval"] for counts in per_account.values()]
    return {
        "scrapes": result.requests,
        "scrape_errors": result.errors + result.non_2xx,
        "scrapes_per_second": result.rate,
        "p99": result.p99,
        "seconds": result.seconds,
        "okx_requests": {name: counts["requests"] for name, counts in per_account.items()},
        "rate_limited": {name: counts["rate_limited"] for name, counts in per_account.items()},
        # Two requests of an account closer than WINDOW put two in one WINDOW-long window.
        "shortest_interval": min((i for i in intervals if i is not None), default=None),
    }


def run(quick: bool = False) -> tuple[dict[str, Any], list[Table]]:
    seconds = 6.0 if quick else 20.0
    expected = math.ceil(seconds / TTL)
    results: dict[str, Any] = {
        "accounts": ACCOUNTS,
        "scrapers": SCRAPERS,
        "seconds": seconds,
        "cache_ttl": TTL,
        "expected_per_account": [expected, expected + 1],
    }
    with tempfile.TemporaryDirectory(prefix="okx-bench-") as directory, simulator(ACCOUNTS) as sim:
        config = write_config(sim.config, Path(directory) / "exporter.yml", cache_ttl=f"{TTL:g}s")
        port = free_port()
        results["cached"] = _measure(sim, exporter_argv(config, port), port, seconds)
        time.sleep(TTL + 0.2)  # let the simulator's rate windows empty
        port = free_port()
        nocache = [PYTHON, "-m", "benchmarks.nocache_exporter", str(config), str(port)]
        results["uncached"] = _measure(sim, nocache, port, seconds)

    cached, uncached = results["cached"], results["uncached"]
    counts = list(cached["okx_requests"].values())
    ok = (
        all(count in (expected, expected + 1) for count in counts)
        and sum(cached["rate_limited"].values()) == 0
    )
    results["target_met"] = ok
    shortest = cached["shortest_interval"]
    results["one_per_window"] = shortest is not None and shortest >= WINDOW
    results["saving_factor"] = sum(uncached["okx_requests"].values()) / max(
        1, sum(cached["okx_requests"].values())
    )
    table = Table(
        f"2. OKX call economy ({SCRAPERS} scrapers for {seconds:g}s, {ACCOUNTS} "
        f"accounts, cache_ttl {TTL:g}s)",
        [
            "exporter",
            "scrapes",
            "scrapes/s",
            "p99 ms",
            "OKX requests per account",
            "rate-limited",
            "shortest interval s",
            "target",
        ],
    )
    for name, label in (("cached", "cache (product)"), ("uncached", "TTL 0 (benchmark only)")):
        side = results[name]
        table.add(
            label,
            side["scrapes"],
            f"{side['scrapes_per_second']:.0f}",
            ms(side["p99"]),
            " ".join(str(count) for count in side["okx_requests"].values()),
            sum(side["rate_limited"].values()),
            f"{side['shortest_interval']:.3f}" if side["shortest_interval"] is not None else "-",
            (verdict(ok) if name == "cached" else ""),
        )
    table.notes.append(
        f"at most 1 OKX request per account in any {WINDOW:g} s window (the shortest interval "
        f"between two requests of an account, as the simulator saw them, >= {WINDOW:g} s): "
        f"{verdict(results['one_per_window'])}"
    )
    table.notes.append(
        f"target: {expected} or {expected + 1} requests per account and 0 "
        f"rate-limited; the cache sends {results['saving_factor']:.0f}x fewer "
        "requests than TTL 0"
    )
    return results, [table]
