"""Process and HTTP plumbing shared by the benchmarks: start the simulator, the exporter and the
reference server as real processes on 127.0.0.1, wait for them, read their RSS, stop them."""

from __future__ import annotations

import atexit
import compileall
import contextlib
import functools
import http.client
import json
import math
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.processes import LOOPBACK as HOST
from tests.processes import free_port as free_port  # re-exported for the benchmarks
from tests.processes import stop_process as stop_process

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent


def http_get(
    port: int, path: str, timeout: float = 30.0, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One GET on a fresh connection; (status, body)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def http_post(port: int, path: str, document: object, timeout: float = 10.0) -> tuple[int, bytes]:
    body = json.dumps(document).encode()
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def rss_kib(pid: int) -> int:
    """The process' resident set size in KiB (VmRSS)."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


@functools.cache
def _compiled_package() -> str:
    """A copy of ``okx_loan_exporter`` with its bytecode compiled, as ``pip install`` leaves it.

    Where PYTHONDONTWRITEBYTECODE is set (as in this development environment) the checkout never
    gets a ``__pycache__``, and every start would compile the package from source (about 35 ms).
    The copy lives in a temporary directory removed at exit; the checkout is not touched.
    """
    directory = tempfile.mkdtemp(prefix="okx-bench-package-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    target = Path(directory) / "okx_loan_exporter"
    shutil.copytree(
        REPO / "okx_loan_exporter", target, ignore=shutil.ignore_patterns("__pycache__")
    )
    if not compileall.compile_dir(str(target), quiet=1):
        raise RuntimeError(f"cannot compile {target}")
    return directory


def child_cwd() -> str:
    """Where every child process runs: ``python -m`` puts its directory first on the path."""
    return _compiled_package()


def child_env() -> dict[str, str]:
    """The environment of every process the benchmarks start: the compiled package first on the
    path, then the checkout (for ``benchmarks``)."""
    env = dict(os.environ)
    path = [_compiled_package(), str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(part for part in path if part)
    return env


def wait_http(
    port: int,
    path: str,
    process: subprocess.Popen[Any],
    timeout: float = 20.0,
    interval: float = 0.005,
) -> float:
    """Poll until GET ``path`` answers 200; return the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _ = http_get(port, path, timeout=timeout)
            if status == 200:
                return time.monotonic()
        time.sleep(interval)
    raise RuntimeError(f"nothing answered 200 on {HOST}:{port}{path} within {timeout:g}s")


@dataclass
class Simulator:
    """``okx-loan-exporter simulate`` as a separate process."""

    process: subprocess.Popen[str]
    port: int
    config: dict[str, Any]
    """The exporter config the simulator wrote (as a dict), for all its accounts."""

    ca_file: str | None = None
    """The CA the simulator's HTTPS certificate chains to (None: plain HTTP)."""

    def _call(self, method: str, path: str) -> dict[str, Any]:
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        connection = (
            http.client.HTTPSConnection(HOST, self.port, timeout=30, context=context)
            if context
            else http.client.HTTPConnection(HOST, self.port, timeout=30)
        )
        try:
            connection.request(method, path)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"{method} {path} answered {response.status}")
        return dict(json.loads(body))

    def stats(self) -> dict[str, Any]:
        """``GET /sim/stats``: per-account counters, connections and TLS handshakes."""
        return self._call("GET", "/sim/stats")

    def reset(self) -> None:
        """``POST /sim/reset``: counters, rate windows and faults back to the start."""
        self._call("POST", "/sim/reset")

    def requests_by_account(self) -> dict[str, dict[str, int]]:
        return {
            name: {key: value for key, value in counts.items() if isinstance(value, int)}
            for name, counts in self.stats()["accounts"].items()
        }

    def stop(self) -> None:
        stop_process(self.process)


@contextlib.contextmanager
def simulator(accounts: int, latency: float = 0.0, tls: bool = True) -> Iterator[Simulator]:
    """Start a simulator with ``accounts`` generated accounts (acct-0001...), over HTTPS with a
    throwaway CA (the config it writes trusts it: ``tls_ca_file``) unless ``tls`` is False."""
    from okx_loan_exporter.simulator.certs import write_test_certificates

    with tempfile.TemporaryDirectory(prefix="okx-bench-") as directory:
        config_path = Path(directory) / "sim-exporter.yml"
        certificates = write_test_certificates(directory) if tls else None
        tls_flags = (
            ["--tls.cert-file", certificates.cert_file, "--tls.key-file", certificates.key_file]
            if certificates
            else []
        )
        process = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "okx_loan_exporter",
                "simulate",
                "--web.listen-address",
                f"{HOST}:0",
                "--accounts-generate",
                str(accounts),
                "--latency",
                repr(latency),
                "--write-exporter-config",
                str(config_path),
                "--log.level",
                "error",
                *tls_flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=child_env(),
            cwd=directory,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.search(r"listening on https?://[^:]+:(\d+)", line)
            if not match:
                raise RuntimeError(f"the simulator did not start: {line!r}")
            config = yaml.safe_load(config_path.read_text())
            ca_file = certificates.ca_file if certificates else None
            yield Simulator(process, int(match.group(1)), config, ca_file)
        finally:
            stop_process(process)


def write_config(
    base: dict[str, Any], path: Path, *, accounts: int | None = None, **settings: Any
) -> Path:
    """Write an exporter config from the simulator's, with the first ``accounts`` accounts."""
    document = dict(base)
    document.update(settings)
    if accounts is not None:
        document["accounts"] = list(base["accounts"])[:accounts]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)
    return path


@dataclass
class Server:
    """A process serving HTTP on 127.0.0.1:port (the exporter or the reference)."""

    process: subprocess.Popen[bytes]
    port: int
    started: float
    """time.monotonic() just before the process was started."""
    ready: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process)


@contextlib.contextmanager
def serve(
    argv: Sequence[str], port: int, ready_path: str = "/-/healthy", timeout: float = 20.0
) -> Iterator[Server]:
    """Start ``argv`` and wait until GET ``ready_path`` answers 200."""
    started = time.monotonic()
    process = subprocess.Popen(
        list(argv),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(),
        cwd=child_cwd(),
    )
    server = Server(process, port, started)
    try:
        server.ready = wait_http(port, ready_path, process, timeout)
        yield server
    finally:
        server.stop()


def exporter_argv(config: Path, port: int) -> list[str]:
    return [
        PYTHON,
        "-m",
        "okx_loan_exporter",
        "--config.file",
        str(config),
        "--web.listen-address",
        f"{HOST}:{port}",
        "--log.level",
        "error",
    ]


@dataclass
class Table:
    """Rows of one benchmark's results, printed aligned."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])

    def render(self) -> str:
        widths = [
            max(len(self.columns[i]), *(len(row[i]) for row in self.rows))
            if self.rows
            else len(self.columns[i])
            for i in range(len(self.columns))
        ]
        lines = [
            f"== {self.title}",
            "  ".join(name.ljust(widths[i]) for i, name in enumerate(self.columns)),
            "  ".join("-" * width for width in widths),
        ]
        lines += [
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in self.rows
        ]
        lines += [f"   {note}" for note in self.notes]
        return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) over log(x)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    den = sum((x - mx) ** 2 for x in lx)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly, strict=True)) / den if den else 0.0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"
