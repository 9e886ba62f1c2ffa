"""RSS stage by stage at 1,000 accounts, and the cold scrape, against a 1,000-account simulator.

One exporter (``cache_ttl: 1h``) over HTTPS with 50 ms latency, as in the scaling benchmark's cold
run, and its VmRSS after each stage: start; the cold scrape (timed); 50 gzip scrapes while the
secondary endpoints' first round runs; settled (that round done, 15 s more); 50 cached gzip
scrapes; 12 uncompressed ones. Repeated ``RUNS`` times (``--quick``: once): it shows where memory
grows, and how much the cold scrape moves from run to run on a shared machine.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Table,
    exporter_argv,
    free_port,
    http_get,
    rss_kib,
    serve,
    simulator,
)
from benchmarks.scaling import GZIP, LATENCY, TARGET_ACCOUNTS, cold_config, settle

RUNS = 3
STAGES = (
    "start",
    "cold scrape",
    "50 gzip scrapes in the start-up round",
    "settled",
    "50 cached gzip scrapes",
    "12 uncompressed scrapes",
)


def _one(sim_config: dict[str, Any], directory: Path, index: int) -> dict[str, Any]:
    config = cold_config(sim_config, directory / f"stages-{index}.yml", TARGET_ACCOUNTS)
    port = free_port()
    with serve(exporter_argv(config, port), port, timeout=60) as exporter:
        rss = [rss_kib(exporter.pid)]
        started = time.perf_counter()
        http_get(port, "/metrics", timeout=120)
        cold = time.perf_counter() - started
        rss.append(rss_kib(exporter.pid))
        for _ in range(50):
            http_get(port, "/metrics", timeout=120, headers=GZIP)
        rss.append(rss_kib(exporter.pid))
        settle(port, TARGET_ACCOUNTS)
        rss.append(rss_kib(exporter.pid))
        for _ in range(50):
            http_get(port, "/metrics", timeout=120, headers=GZIP)
        rss.append(rss_kib(exporter.pid))
        for _ in range(12):
            http_get(port, "/metrics", timeout=120)
        rss.append(rss_kib(exporter.pid))
    return {"cold": cold, "rss_kib": rss}


def run(quick: bool = False) -> tuple[dict[str, Any], list[Table]]:
    runs = 1 if quick else RUNS
    with (
        tempfile.TemporaryDirectory(prefix="okx-bench-") as directory,
        simulator(TARGET_ACCOUNTS, latency=LATENCY) as sim,
    ):
        results = [_one(sim.config, Path(directory), index) for index in range(runs)]
    table = Table(
        f"7. RSS stage by stage ({TARGET_ACCOUNTS} accounts over HTTPS, {runs} run(s))",
        ["stage", *(f"run {index + 1} MiB" for index in range(runs))],
    )
    for position, stage in enumerate(STAGES):
        table.add(stage, *(f"{result['rss_kib'][position] / 1024:.1f}" for result in results))
    table.add("cold scrape, s", *(f"{result['cold']:.2f}" for result in results))
    table.notes.append("target at 1,000 accounts: RSS <= 100 MiB, cold scrape <= 2 s")
    return {"runs": results}, [table]
