"""200 concurrent scrapers for 30 s against the exporter as a real process (takes about 35 s).

The exporter (three accounts, cache_ttl 2s) and the OKX simulator run as real processes on
127.0.0.1. Two hundred asyncio scrapers loop ``GET /metrics`` for 30 s (the server closes every
connection, so each scrape connects anew); every answer must be a 200 that parses and has an
``okx_loan_up`` line per account, and any error, timeout included, is a failed scrape. The
exporter's VmRSS is sampled every second. Afterwards the simulator's own counters must show at
most one loan-info request per account per TTL window and no rate-limit rejection, and VmRSS must
not rise more than 5 MB above its level of the first 5 s. The figures (scrapes/s, latency, RSS
samples, requests per account, CPU of both sides) are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from e2e_support import stop_process
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SCRAPERS = 200
LOAD_SECONDS = 30.0
CACHE_TTL_SECONDS = 2.0
ACCOUNTS = 3
RSS_SETTLE_SECONDS = 5.0
RSS_GROWTH_LIMIT_KB = 5 * 1024
START_TIMEOUT_SECONDS = 20.0


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    url: str = ""


def start(args: list[str], directory: Path, name: str) -> Started:
    """Run ``python -m okx_loan_exporter ARGS`` with its output in files (no pipe can fill up)."""
    stdout, stderr = directory / f"{name}.out", directory / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "okx_loan_exporter", *args],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=directory,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return Started(process, stdout, stderr)


def wait_for_line(started: Started, path: Path, pattern: str) -> re.Match[str]:
    """Wait until ``path`` has a line matching ``pattern``; fail if the process exits first."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text(errors="replace"))
        if found:
            return found
        if started.process.poll() is not None:
            pytest.fail(
                f"{started.process.args} exited with {started.process.returncode}:\n"
                f"{started.stdout.read_text(errors='replace')}"
                f"{started.stderr.read_text(errors='replace')}"
            )
        time.sleep(0.05)
    pytest.fail(f"no line matching {pattern!r} in {path} after {START_TIMEOUT_SECONDS:g} s")


def stop(started: Started) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within 5 s; only this process."""
    stop_process(started.process)


@contextlib.contextmanager
def simulator_and_exporter(directory: Path) -> Iterator[tuple[Started, Started]]:
    config = directory / "cfg.yml"
    simulator = start(
        [
            "simulate",
            "--web.listen-address",
            "127.0.0.1:0",
            "--accounts-generate",
            str(ACCOUNTS),
            "--write-exporter-config",
            str(config),
        ],
        directory,
        "simulator",
    )
    exporter: Started | None = None
    try:
        simulator.url = wait_for_line(
            simulator, simulator.stdout, r"listening on (http://127\.0\.0\.1:\d+)"
        )[1]
        document = yaml.safe_load(config.read_text())
        document["cache_ttl"] = f"{CACHE_TTL_SECONDS:g}s"
        config.write_text(yaml.safe_dump(document, sort_keys=False))
        config.chmod(0o600)
        exporter = start(
            ["--config.file", str(config), "--web.listen-address", "127.0.0.1:0"],
            directory,
            "exporter",
        )
        exporter.url = wait_for_line(
            exporter, exporter.stderr, r"on (http://127\.0\.0\.1:\d+)/metrics"
        )[1]
        assert httpx.get(exporter.url + "/-/ready", timeout=10).status_code == 200
        yield simulator, exporter
    finally:
        if exporter is not None:
            stop(exporter)
        stop(simulator)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ProcessSampler:
    """VmRSS (kB) and thread count of one process, every second, from a background thread."""

    def __init__(self, pid: int) -> None:
        self._path = Path(f"/proc/{pid}/status")
        self._stop = threading.Event()
        self.samples: list[tuple[float, int]] = []
        """(seconds since start, VmRSS in kB)"""
        self.max_threads = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while True:
            status = self._path.read_text()
            rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            threads = re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE)
            assert rss and threads, status
            self.samples.append((time.monotonic() - started, int(rss[1])))
            self.max_threads = max(self.max_threads, int(threads[1]))
            if self._stop.wait(1.0):
                return

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class LoadResult:
    responses: int = 0
    good: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    up_zero: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def check_scrape(response: httpx.Response, accounts: set[str], result: LoadResult) -> None:
    """One scrape is good when it is a 200 that parses and has okx_loan_up for every account."""
    if response.status_code != 200:
        result.failures[f"HTTP {response.status_code}"] += 1
        return
    try:
        families = list(text_string_to_metric_families(response.text))
    except Exception as error:  # any parser complaint is a failed scrape
        result.failures[f"unparseable: {type(error).__name__}: {error}"[:120]] += 1
        return
    up = {
        sample.labels.get("account"): sample.value
        for family in families
        if family.name == "okx_loan_up"
        for sample in family.samples
    }
    if set(up) != accounts:
        result.failures[f"okx_loan_up for {sorted(map(str, up))}"] += 1
        return
    result.up_zero += sum(1 for value in up.values() if value != 1)
    result.good += 1


async def scrape_concurrently(url: str, accounts: set[str]) -> LoadResult:
    """SCRAPERS tasks, each looping GET /metrics until LOAD_SECONDS have passed."""
    result = LoadResult()
    # The server answers HTTP/1.0 and closes each connection: every scrape connects anew.
    limits = httpx.Limits(max_connections=SCRAPERS, max_keepalive_connections=0)
    timeout = httpx.Timeout(10.0, connect=10.0)
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        started = loop.time()
        deadline = started + LOAD_SECONDS

        async def scraper() -> None:
            while loop.time() < deadline:
                sent = loop.time()
                try:
                    response = await client.get(url)
                except httpx.HTTPError as error:  # timeouts, refused or reset connections
                    result.responses += 1
                    result.failures[f"{type(error).__name__}: {error}"[:120]] += 1
                    continue
                result.latencies.append(loop.time() - sent)
                result.responses += 1
                check_scrape(response, accounts, result)

        await asyncio.gather(*(scraper() for _ in range(SCRAPERS)))
        result.elapsed = loop.time() - started
    return result


def print_uncaptured(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """The figures go to the terminal even when pytest captures output."""

    def report(line: str) -> None:
        with capsys.disabled():
            print(line)

    return report


def test_200_concurrent_scrapers_for_30_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with simulator_and_exporter(tmp_path) as (simulator, exporter):
        config = yaml.safe_load((tmp_path / "cfg.yml").read_text())
        names = {account["name"] for account in config["accounts"]}
        assert len(names) == ACCOUNTS
        exporter_cpu_before = cpu_seconds(exporter.process.pid)
        client_cpu_before = time.process_time()
        with ProcessSampler(exporter.process.pid) as sampler:
            result = asyncio.run(scrape_concurrently(exporter.url + "/metrics", names))
        exporter_cpu = cpu_seconds(exporter.process.pid) - exporter_cpu_before
        client_cpu = time.process_time() - client_cpu_before
        stats = json.loads(httpx.get(simulator.url + "/sim/stats", timeout=10).content)
        exporter_log = exporter.stderr.read_text(errors="replace")

    report = print_uncaptured(capsys)
    report(
        f"\nload: {result.responses} scrapes by {SCRAPERS} scrapers in {result.elapsed:.1f} s = "
        f"{result.responses / result.elapsed:.0f} scrapes/s; {result.good} good, "
        f"{sum(result.failures.values())} failed, {result.up_zero} okx_loan_up 0 samples"
    )
    if result.latencies:
        report(
            f"load: latency p50 {result.percentile(0.5) * 1000:.0f} ms, "
            f"p99 {result.percentile(0.99) * 1000:.0f} ms, max {max(result.latencies):.2f} s; "
            f"exporter threads at most {sampler.max_threads}; CPU: exporter {exporter_cpu:.1f} s, "
            f"scrapers (this process) {client_cpu:.1f} s"
        )
    report(
        "load: exporter VmRSS kB by second: "
        + ", ".join(f"{t:.0f}s={kb}" for t, kb in sampler.samples)
    )
    report(
        "load: loan-info requests seen by the simulator: "
        + ", ".join(
            f"{name}={counts['requests']} (rate-limited {counts['rate_limited']})"
            for name, counts in stats["accounts"].items()
        )
    )

    assert result.responses > 0
    assert not result.failures, f"failed scrapes: {result.failures.most_common(5)}"
    assert result.good == result.responses

    # At most one request per account per TTL window: fetches start >= cache_ttl apart.
    bound = math.ceil(LOAD_SECONDS / CACHE_TTL_SECONDS) + 1
    assert set(stats["accounts"]) == names
    for name, counts in stats["accounts"].items():
        assert 1 <= counts["requests"] <= bound, f"{name}: {counts}"
        assert counts["rate_limited"] == 0, f"{name}: {counts}"
    assert stats["unattributed_requests"] == 0

    # Memory: no new high-water mark after the first 5 s. The reference is the highest sample of
    # the first 5 s rather than the single sample at 5 s, because 200 connection threads make
    # VmRSS swing by 2-3 MB from one second to the next; a leak still shows as a rising maximum.
    early = [kb for t, kb in sampler.samples if 0.5 <= t < RSS_SETTLE_SECONDS + 0.5]
    later = [kb for t, kb in sampler.samples if t >= RSS_SETTLE_SECONDS + 0.5]
    assert early and len(later) >= LOAD_SECONDS - RSS_SETTLE_SECONDS - 2, sampler.samples
    at_5s = early[-1]
    report(
        f"load: VmRSS at {RSS_SETTLE_SECONDS:g} s {at_5s} kB (highest before: {max(early)} kB), "
        f"highest after: {max(later)} kB; max after 5 s minus value at 5 s: "
        f"{max(later) - at_5s} kB"
    )
    growth = max(later) - max(early)
    assert growth < RSS_GROWTH_LIMIT_KB, f"VmRSS rose {growth} kB above its first-5-s peak"

    assert "Traceback" not in exporter_log
    assert "level=error" not in exporter_log, exporter_log[-2000:]
