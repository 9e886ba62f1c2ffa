"""Scaling with accounts: cold scrape latency, RSS and body size for 1, 10, 100 and 500 accounts.

One simulator process serves 500 generated accounts with 50 ms latency per loan-info answer; for
each size a fresh exporter process is configured with the first N accounts and its first scrape
(every account fetched concurrently) is timed. With a concurrent fetch the time should barely grow
with N; the growth exponent is the least-squares slope of log(time) over log(N). RSS is read from
/proc after a few warm scrapes. ``parallelism`` = N x 50 ms / cold time shows whether the
connection pools or the simulator serialize the fetches.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Table,
    exporter_argv,
    free_port,
    http_get,
    loglog_slope,
    ms,
    rss_kib,
    serve,
    simulator,
    verdict,
    write_config,
)
from benchmarks.deps_only import exporter_argv as deps_only_argv

SIZES = (1, 10, 100, 500)
LATENCY = 0.05
WARM_SCRAPES = 20
TARGET_GROWTH_100 = 3.0
TARGET_RSS_100_MIB = 40.0
_UP = re.compile(rb"^okx_loan_up\{[^}]*\} 1\.0$", re.MULTILINE)


def _one(
    sim_config: dict[str, Any], directory: Path, size: int, deps_only: bool = False
) -> dict[str, Any]:
    config = write_config(
        sim_config,
        directory / f"exporter-{size}.yml",
        accounts=size,
        cache_ttl="1h",
        max_stale="2h",
        timeout="30s",
    )
    port = free_port()
    argv = exporter_argv(config, port)
    if deps_only:
        argv = deps_only_argv(argv[3:])  # the same flags, without "python -m okx_loan_exporter"
    with serve(argv, port) as exporter:
        rss_idle = rss_kib(exporter.pid)
        started = time.perf_counter()
        status, body = http_get(port, "/metrics", timeout=60)
        cold = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        up = len(_UP.findall(body))
        warm = []
        for _ in range(WARM_SCRAPES):
            started = time.perf_counter()
            http_get(port, "/metrics")
            warm.append(time.perf_counter() - started)
        return {
            "cold": cold,
            "up": up,
            "warm_median": statistics.median(warm),
            "body_bytes": len(body),
            "rss_idle_kib": rss_idle,
            "rss_kib": rss_kib(exporter.pid),
        }


def _summary(runs: list[dict[str, Any]], size: int) -> dict[str, Any]:
    cold = statistics.median(item["cold"] for item in runs)
    return {
        **min(runs, key=lambda item: item["cold"]),
        "cold_median": cold,
        "cold_all": [item["cold"] for item in runs],
        "rss_kib": max(item["rss_kib"] for item in runs),
        "parallelism": size * LATENCY / cold,
    }


def run(quick: bool = False) -> tuple[dict[str, Any], list[Table]]:
    repeats = 1 if quick else 3
    results: dict[str, Any] = {"latency": LATENCY, "repeats": repeats, "sizes": {}}
    with (
        tempfile.TemporaryDirectory(prefix="okx-bench-") as directory,
        simulator(max(SIZES), latency=LATENCY) as sim,
    ):
        for size in SIZES:
            runs = [_one(sim.config, Path(directory), size) for _ in range(repeats)]
            results["sizes"][str(size)] = _summary(runs, size)
        runs = [_one(sim.config, Path(directory), 100, deps_only=True) for _ in range(repeats)]
        results["deps_only_100"] = _summary(runs, 100)
    sizes = results["sizes"]
    colds = [sizes[str(size)]["cold_median"] for size in SIZES]
    results["growth_exponent"] = loglog_slope(SIZES, colds)
    results["ratio_100_to_1"] = sizes["100"]["cold_median"] / sizes["1"]["cold_median"]
    rss_100 = sizes["100"]["rss_kib"] / 1024
    rss_100_deps = results["deps_only_100"]["rss_kib"] / 1024
    results["target_growth_met"] = results["ratio_100_to_1"] <= TARGET_GROWTH_100
    results["target_rss_met"] = rss_100 <= TARGET_RSS_100_MIB
    results["target_rss_met_deps_only"] = rss_100_deps <= TARGET_RSS_100_MIB

    table = Table(
        f"3. Scaling with accounts (simulator latency {LATENCY * 1000:.0f} ms, fresh "
        f"exporter per run, median of {repeats})",
        [
            "accounts",
            "cold scrape ms",
            "vs 1 account",
            "up",
            "parallelism",
            "warm scrape ms",
            "RSS MiB",
            "body bytes",
        ],
    )
    rows = [(str(size), sizes[str(size)], size) for size in SIZES]
    rows.append(("100 deps only", results["deps_only_100"], 100))
    for label, row, size in rows:
        table.add(
            label,
            ms(row["cold_median"]),
            f"{row['cold_median'] / sizes['1']['cold_median']:.2f}x" if label.isdigit() else "",
            f"{row['up']}/{size}",
            f"{row['parallelism']:.1f}",
            ms(row["warm_median"]),
            f"{row['rss_kib'] / 1024:.1f}",
            row["body_bytes"],
        )
    table.notes.append(
        f"growth exponent (log-log slope of cold time over accounts): "
        f"{results['growth_exponent']:.2f}"
    )
    table.notes.append(
        f"100 accounts: {results['ratio_100_to_1']:.2f}x the 1-account time "
        f"(target <= {TARGET_GROWTH_100:g}x: {verdict(results['target_growth_met'])}); "
        f"RSS {rss_100:.1f} MiB here, {rss_100_deps:.1f} MiB with only the runtime dependencies "
        f"importable (target <= {TARGET_RSS_100_MIB:g}: {verdict(results['target_rss_met'])} here, "
        f"{verdict(results['target_rss_met_deps_only'])} deps only)"
    )
    table.notes.append(
        "deps only: packages this environment has but the exporter does not depend on (trio, "
        "click, pygments...) made unimportable, as in the Docker image (benchmarks/deps_only.py)"
    )
    return results, [table]
