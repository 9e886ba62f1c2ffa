"""Cached scrape speed: the exporter against a bare prometheus_client server with the same body.

Three simulated accounts, cache_ttl 1h so no measured scrape reaches OKX (checked from the
simulator's counters). Each concurrency level is measured on both sides, interleaved, ``rounds``
times; the best throughput and the best p50/p99 are kept and the spread between rounds is shown.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks import load
from benchmarks.common import (
    PYTHON,
    Table,
    exporter_argv,
    free_port,
    http_get,
    ms,
    serve,
    simulator,
    verdict,
    write_config,
)

ACCOUNTS = 3
CONCURRENCY = (1, 8, 64)
TARGET_RATE = 0.9
TARGET_P99 = 1.2


def _best(runs: list[load.LoadResult]) -> dict[str, Any]:
    rates = [run.rate for run in runs]
    return {
        "rate": max(rates),
        "p50": min(run.p50 for run in runs),
        "p99": min(run.p99 for run in runs),
        "spread": (max(rates) - min(rates)) / max(rates) if max(rates) else 0.0,
        "errors": sum(run.errors + run.non_2xx for run in runs),
        "runs": [run.as_dict() for run in runs],
    }


def run(quick: bool = False) -> tuple[dict[str, Any], list[Table]]:
    seconds, warmup, rounds = (2.0, 1.0, 1) if quick else (5.0, 1.0, 2)
    results: dict[str, Any] = {
        "accounts": ACCOUNTS,
        "seconds": seconds,
        "warmup": warmup,
        "rounds": rounds,
        "tool": "wrk" if load.WRK else "python-asyncio",
        "levels": {},
    }
    with tempfile.TemporaryDirectory(prefix="okx-bench-") as directory, simulator(ACCOUNTS) as sim:
        config = write_config(
            sim.config, Path(directory) / "exporter.yml", cache_ttl="1h", max_stale="2h"
        )
        exporter_port, reference_port = free_port(), free_port()
        with serve(exporter_argv(config, exporter_port), exporter_port) as exporter:
            status, body = http_get(exporter_port, "/metrics")  # fills the cache
            if status != 200:
                raise RuntimeError(f"exporter /metrics answered {status}")
            body_file = Path(directory) / "body.txt"
            body_file.write_bytes(body)
            reference_argv = [
                PYTHON,
                "-m",
                "benchmarks.reference_server",
                str(body_file),
                str(reference_port),
            ]
            with serve(reference_argv, reference_port, ready_path="/metrics") as reference:
                _, reference_body = http_get(reference_port, "/metrics")
                results["body_bytes"] = {"exporter": len(body), "reference": len(reference_body)}
                before = sim.requests_by_account()
                sides = {"exporter": exporter, "reference": reference}
                for connections in CONCURRENCY:
                    runs: dict[str, list[load.LoadResult]] = {name: [] for name in sides}
                    for _ in range(rounds):
                        for name, server in sides.items():
                            load.run(server.port, "/metrics", connections, warmup)
                            runs[name].append(
                                load.run(server.port, "/metrics", connections, seconds)
                            )
                    level = {name: _best(side_runs) for name, side_runs in runs.items()}
                    level["rate_ratio"] = level["exporter"]["rate"] / level["reference"]["rate"]
                    level["p99_ratio"] = level["exporter"]["p99"] / level["reference"]["p99"]
                    results["levels"][str(connections)] = level
                after = sim.requests_by_account()
        results["okx_requests_during_measurement"] = sum(
            after[name]["requests"] - before[name]["requests"] for name in after
        )

    table = Table(
        "1. Cached scrape speed (3 accounts, warm cache; best of "
        f"{rounds} x {seconds:g}s after {warmup:g}s warm-up, {results['tool']})",
        [
            "clients",
            "side",
            "scrapes/s",
            "p50 ms",
            "p99 ms",
            "spread",
            "errors",
            "ratio rate",
            "ratio p99",
            "target",
        ],
    )
    for connections, level in results["levels"].items():
        ok = level["rate_ratio"] >= TARGET_RATE and level["p99_ratio"] <= TARGET_P99
        level["target_met"] = ok
        for name in ("exporter", "reference"):
            side = level[name]
            is_exporter = name == "exporter"
            table.add(
                connections if is_exporter else "",
                name,
                f"{side['rate']:.0f}",
                ms(side["p50"]),
                ms(side["p99"]),
                f"{side['spread'] * 100:.0f}%",
                side["errors"],
                f"{level['rate_ratio']:.2f}x" if is_exporter else "",
                f"{level['p99_ratio']:.2f}x" if is_exporter else "",
                verdict(ok) if is_exporter else "",
            )
    table.notes.append(
        f"body bytes: exporter {results['body_bytes']['exporter']}, reference "
        f"{results['body_bytes']['reference']}; OKX requests during the "
        f"measurement: {results['okx_requests_during_measurement']} (must be 0)"
    )
    table.notes.append(
        f"target: throughput >= {TARGET_RATE}x reference and p99 <= "
        f"{TARGET_P99}x reference; spread = (best-worst)/best scrapes/s"
    )
    return results, [table]
