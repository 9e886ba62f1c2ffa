"""Where the CPU goes in the 1,000-account steady state: py-spy samples grouped by component.

The exporter serves 1,000 accounts from the HTTPS simulator (50 ms latency) with ``cache_ttl:
10s`` and is scraped every 15 s, as in the scaling benchmark's steady state: after the same
warm-up (the secondary endpoints' first round for every account), ``py-spy record``
(``pip install py-spy``; a development tool, not a dependency) samples every thread for the
measured scrapes; each busy sample is given to the component of the innermost frame that belongs
to one (TLS, the HTTP client stack, asyncio, rendering, the exporter's own code...). Without py-spy
this benchmark says so and measures nothing.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Table,
    exporter_argv,
    free_port,
    http_get,
    serve,
    simulator,
    write_config,
)
from benchmarks.scaling import warm_up

ACCOUNTS = 1000
LATENCY = 0.05
TTL = 10.0
SCRAPE_INTERVAL = 15.0
RATE = 250
"""Samples per second per thread."""
#: (component, substrings of a frame's file as "/path"), tried from the innermost frame.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("TLS (ssl: handshakes, encryption)", ("/ssl.py",)),
    ("gzip (zlib)", ("/gzip.py",)),
    ("JSON decoding", ("/json/",)),
    ("loan-info parsing (position.py)", ("/okx_loan_exporter/position.py",)),
    ("request signing (hmac, hashlib)", ("/hmac.py", "/hashlib.py")),
    ("rendering (prometheus_client)", ("/prometheus_client/",)),
    ("HTTP client (httpx, httpcore, h11)", ("/httpx/", "/httpcore/", "/h11/")),
    ("async I/O (anyio, sniffio)", ("/anyio/", "/sniffio/")),
    ("asyncio event loop", ("/asyncio/", "/selectors.py")),
    ("exporter code", ("/okx_loan_exporter/",)),
    ("HTTP server (socketserver, wsgiref)", ("/socketserver.py", "/wsgiref/", "/http/server.py")),
    ("logging", ("/logging/",)),
)
_IDLE = (
    "select (",
    "epoll",
    "Condition.wait",
    "Event.wait",
    "Thread._wait_for_tstate_lock",
    "sleep (",
)


def frame_file(frame: str) -> str:
    """``"/asyncio/tasks.py"`` from py-spy's ``"current_task (asyncio/tasks.py:38)"``."""
    start, end = frame.rfind("("), frame.rfind(":")
    return "/" + frame[start + 1 : end].lstrip("/") if 0 <= start < end else ""


def classify(frames: list[str]) -> str:
    """The component of a sample: the first one matching its frames, innermost first."""
    for frame in reversed(frames):
        path = frame_file(frame)
        for component, markers in COMPONENTS:
            if any(marker in path for marker in markers):
                return component
    return "other (interpreter, threading)"


def summarise(raw: str) -> tuple[int, dict[str, int], dict[str, collections.Counter[str]]]:
    """Busy samples in all, per component, and the top functions of each component."""
    per_component: dict[str, int] = collections.Counter()
    functions: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    busy = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if any(marker in frames[-1] for marker in _IDLE):
            continue
        count = int(count_text)
        busy += count
        component = classify(frames)
        per_component[component] += count
        functions[component][frames[-1].split(" (")[0]] += count
    return busy, dict(per_component), functions


def run(quick: bool = False) -> tuple[dict[str, Any], list[Table]]:
    pyspy = shutil.which("py-spy")
    scrapes = 4 if quick else 8
    results: dict[str, Any] = {"accounts": ACCOUNTS, "scrapes": scrapes, "py_spy": bool(pyspy)}
    table = Table(
        f"5. Profile of the steady state ({ACCOUNTS} accounts over HTTPS, cache_ttl {TTL:g}s "
        f"scraped every {SCRAPE_INTERVAL:g}s, {scrapes} scrapes; py-spy, all threads)",
        ["component", "share of busy samples", "CPU s per scrape cycle", "top functions"],
    )
    if pyspy is None:
        table.notes.append("py-spy is not installed (pip install py-spy): nothing measured")
        return results, [table]
    with (
        tempfile.TemporaryDirectory(prefix="okx-bench-") as directory,
        simulator(ACCOUNTS, latency=LATENCY) as sim,
    ):
        config = write_config(
            sim.config, Path(directory) / "exporter.yml", cache_ttl=f"{TTL:g}s", timeout="30s"
        )
        output = Path(directory) / "profile.txt"
        port = free_port()
        with serve(exporter_argv(config, port), port) as exporter:
            first = time.monotonic()
            warmed, _ = warm_up(port, ACCOUNTS, first)
            first += warmed * SCRAPE_INTERVAL
            duration = scrapes * SCRAPE_INTERVAL + 1
            recorder = subprocess.Popen(
                [
                    pyspy,
                    "record",
                    "--threads",
                    "--rate",
                    str(RATE),
                    "--format",
                    "raw",
                    "--duration",
                    str(round(duration)),
                    "--pid",
                    str(exporter.pid),
                    "--output",
                    str(output),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for index in range(1, scrapes + 1):
                time.sleep(max(0.0, first + index * SCRAPE_INTERVAL - time.monotonic()))
                http_get(port, "/metrics", timeout=120)
            recorder.wait(timeout=duration + 30)
        raw = output.read_text() if output.exists() else ""
    busy, per_component, functions = summarise(raw)
    results["busy_samples"] = busy
    results["components"] = per_component
    if not busy:
        table.notes.append("py-spy recorded no samples (is ptrace allowed here?)")
        return results, [table]
    for component, count in sorted(per_component.items(), key=lambda item: -item[1]):
        top = ", ".join(name for name, _ in functions[component].most_common(3))
        table.add(
            component,
            f"{count / busy * 100:.1f} %",
            f"{count / RATE / scrapes:.3f}",
            top[:90],
        )
    table.notes.append(
        f"{busy} busy samples at {RATE}/s = {busy / RATE:.1f} CPU s over {scrapes} scrape cycles "
        "(py-spy slows the exporter somewhat; shares matter more than seconds)"
    )
    return results, [table]
