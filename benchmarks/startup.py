"""Start-up: time from starting ``python -m okx_loan_exporter --demo`` to its first successful
``/metrics`` answer (the demo simulator started and every demo account fetched), median of 5."""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import Any

from benchmarks.common import (
    HOST,
    PYTHON,
    Table,
    child_env,
    free_port,
    ms,
    rss_kib,
    stop_process,
    wait_http,
)

RUNS = 5


def _once() -> dict[str, float]:
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "okx_loan_exporter",
            "--demo",
            "--web.listen-address",
            f"{HOST}:{port}",
            "--log.level",
            "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(),
    )
    try:
        healthy = wait_http(port, "/-/healthy", process, interval=0.002)
        metrics = wait_http(port, "/metrics", process, interval=0.002)
        return {
            "healthy": healthy - started,
            "metrics": metrics - started,
            "rss_kib": rss_kib(process.pid),
        }
    finally:
        stop_process(process)


def run(quick: bool = False) -> tuple[dict[str, Any], list[Table]]:
    _once()  # not counted: fills the page cache and writes nothing else
    runs = [_once() for _ in range(3 if quick else RUNS)]
    started = time.monotonic()
    subprocess.run([PYTHON, "-c", "pass"], env=child_env(), check=True)
    bare = time.monotonic() - started
    results: dict[str, Any] = {
        "runs": runs,
        "metrics_median": statistics.median(run["metrics"] for run in runs),
        "healthy_median": statistics.median(run["healthy"] for run in runs),
        "bare_python": bare,
    }
    table = Table(f"4. Start-up (--demo, median of {len(runs)})", ["measure", "ms", "spread ms"])
    metrics = [run["metrics"] for run in runs]
    healthy = [run["healthy"] for run in runs]
    table.add(
        "start -> first 200 on /metrics",
        ms(results["metrics_median"]),
        f"{ms(min(metrics))}-{ms(max(metrics))}",
    )
    table.add(
        "start -> first 200 on /-/healthy",
        ms(results["healthy_median"]),
        f"{ms(min(healthy))}-{ms(max(healthy))}",
    )
    table.add("bare 'python -c pass' for scale", ms(bare), "")
    table.notes.append(
        f"RSS right after the first scrape: "
        f"{statistics.median(run['rss_kib'] for run in runs) / 1024:.1f} MiB"
    )
    return results, [table]
