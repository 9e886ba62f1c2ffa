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
    child_cwd,
    child_env,
    free_port,
    ms,
    rss_kib,
    stop_process,
    wait_http,
)
from benchmarks.deps_only import exporter_argv as deps_only_argv

RUNS = 5


def _once(deps_only: bool) -> dict[str, float]:
    port = free_port()
    args = ["--demo", "--web.listen-address", f"{HOST}:{port}", "--log.level", "error"]
    argv = deps_only_argv(args) if deps_only else [PYTHON, "-m", "okx_loan_exporter", *args]
    started = time.monotonic()
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(), cwd=child_cwd()
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


def _bare_python() -> float:
    started = time.monotonic()
    subprocess.run([PYTHON, "-c", "pass"], env=child_env(), cwd=child_cwd(), check=True)
    return time.monotonic() - started


def run(quick: bool = False) -> tuple[dict[str, Any], list[Table]]:
    _once(False)  # not counted: fills the page cache
    count = 3 if quick else RUNS
    runs: dict[str, list[dict[str, float]]] = {"here": [], "deps_only": []}
    for _ in range(count):  # interleaved, so both see the same machine
        runs["here"].append(_once(False))
        runs["deps_only"].append(_once(True))
    results: dict[str, Any] = {
        "runs": runs,
        "bare_python": statistics.median(_bare_python() for _ in range(3)),
    }
    for name, side in runs.items():
        for measure in ("metrics", "healthy", "rss_kib"):
            results[f"{name}_{measure}_median"] = statistics.median(run[measure] for run in side)
    table = Table(
        f"4. Start-up (--demo, median of {count})",
        ["measure", "as installed here", "range", "deps only", "range"],
    )
    for measure, label in (
        ("metrics", "start -> first 200 on /metrics, ms"),
        ("healthy", "start -> first 200 on /-/healthy, ms"),
    ):
        cells: list[str] = []
        for name in runs:
            values = [run[measure] for run in runs[name]]
            cells += [
                ms(results[f"{name}_{measure}_median"]),
                f"{ms(min(values))}-{ms(max(values))}",
            ]
        table.add(label, *cells)
    table.add(
        "RSS after the first scrape, MiB",
        f"{results['here_rss_kib_median'] / 1024:.1f}",
        "",
        f"{results['deps_only_rss_kib_median'] / 1024:.1f}",
        "",
    )
    table.add("bare 'python -c pass', ms", ms(results["bare_python"]), "", "", "")
    table.notes.append("deps only: as in the Docker image, see benchmarks/deps_only.py")
    return results, [table]
