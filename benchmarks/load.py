"""HTTP load generation: ``wrk`` with a Lua ``done()`` hook for the figures, or, without wrk, a
small asyncio client (one request per connection, or keep-alive when the server allows it)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common import HOST

WRK = shutil.which("wrk")

_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"errors":%d,"non_2xx":%d}\\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50: float
    """Median latency in seconds."""
    p99: float
    max: float
    errors: int
    non_2xx: int
    tool: str

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "rate": self.rate}


def run(
    port: int,
    path: str,
    connections: int,
    seconds: float,
    *,
    headers: dict[str, str] | None = None,
    prefer_wrk: bool = True,
) -> LoadResult:
    """``connections`` clients requesting ``path`` back to back for ``seconds``."""
    if WRK and prefer_wrk:
        return _run_wrk(port, path, connections, seconds, headers or {})
    return asyncio.run(_run_python(port, path, connections, seconds, headers or {}))


def _run_wrk(
    port: int, path: str, connections: int, seconds: float, headers: dict[str, str]
) -> LoadResult:
    assert WRK is not None
    whole_seconds = max(1, round(seconds))  # wrk takes whole seconds only
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_LUA)
    try:
        argv = [
            WRK,
            "-t",
            str(min(2, connections)),
            "-c",
            str(connections),
            "-d",
            f"{whole_seconds}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            script.name,
        ]
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        argv.append(f"http://{HOST}:{port}{path}")
        output = subprocess.run(
            argv, capture_output=True, text=True, check=True, timeout=seconds + 30
        ).stdout
    finally:
        Path(script.name).unlink(missing_ok=True)
    line = next(line for line in output.splitlines() if line.startswith("BENCH "))
    data = json.loads(line.removeprefix("BENCH "))
    return LoadResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50=data["p50_us"] / 1e6,
        p99=data["p99_us"] / 1e6,
        max=data["max_us"] / 1e6,
        errors=data["errors"],
        non_2xx=data["non_2xx"],
        tool="wrk",
    )


async def _one_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bool]:
    """Send one request, read the answer; (status, connection may be reused)."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ", 2)[:2]
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip().lower()
    if "content-length" in fields:
        await reader.readexactly(int(fields["content-length"]))
        keep = version == "HTTP/1.1" and fields.get("connection") != "close"
    else:
        await reader.read()
        keep = False
    return int(status), keep


async def _run_python(
    port: int, path: str, connections: int, seconds: float, headers: dict[str, str]
) -> LoadResult:
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{extra}\r\n".encode()
    latencies: list[float] = []
    errors = non_2xx = 0
    start = time.perf_counter()
    end = start + seconds

    async def client() -> None:
        nonlocal errors, non_2xx
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.perf_counter() < end:
            sent = time.perf_counter()
            try:
                if connection is None:
                    connection = await asyncio.open_connection(HOST, port)
                status, keep = await _one_request(*connection, request)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                keep = False
            else:
                latencies.append(time.perf_counter() - sent)
                if not 200 <= status < 300:
                    non_2xx += 1
            if not keep and connection is not None:
                connection[1].close()
                connection = None
        if connection is not None:
            connection[1].close()

    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    return LoadResult(
        requests=len(latencies),
        seconds=elapsed,
        p50=pct(0.5),
        p99=pct(0.99),
        max=latencies[-1] if latencies else 0.0,
        errors=errors,
        non_2xx=non_2xx,
        tool="python-asyncio",
    )
