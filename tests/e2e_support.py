"""Process and port helpers for the end-to-end tests: real programs on 127.0.0.1, always stopped.

:class:`Process` starts a command with its stdout and stderr in files, waits until an HTTP
readiness URL answers 200 (or fails at once, with the log tails, when the program exits first), and
stops it with SIGTERM, then SIGKILL. :class:`ProcessGroup` owns every process of a test so a
fixture can stop them all, even when the test failed, and show their log tails then. The rest are
small clients the e2e modules share: a metrics scrape parsed back into samples, the simulator's
``/sim/*`` control API and a signed loan-info request made independently of the exporter's code.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import pytest
import yaml
from processes import LOOPBACK as LOOPBACK  # re-exported: the e2e modules import them from here
from processes import free_port as free_port
from processes import stop_process as stop_process
from processes import wait_for as wait_for
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
LOAN_INFO_PATH = "/api/v5/finance/flexible-loan/loan-info"

T = TypeVar("T")

#: A scrape as {(metric sample name, ((label, value), ...sorted)): value}.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class ProcessFailed(AssertionError):
    """A program exited, or did not become ready, when the test needed it running."""


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "(empty)"


class Process:
    """One program run by a test: its logs in ``log_dir``, a readiness URL, a clean stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        *,
        ready_url: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.preexec_fn = preexec_fn
        """Run in the child before the program starts (e.g. to set resource limits)."""
        self.argv = [str(arg) for arg in argv]
        self.ready_url = ready_url
        # OKX_* variables of the developer's shell must not reach the exporter under test.
        self.env = {
            key: text
            for key, text in (os.environ if env is None else env).items()
            if not key.startswith("OKX_")
        }
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.cwd = cwd or ROOT
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.stop_seconds: float | None = None
        """How long the last :meth:`stop` waited for the program to exit after SIGTERM."""

    def start(self) -> Process:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.started_at = time.monotonic()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                cwd=self.cwd,
                preexec_fn=self.preexec_fn,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return None if self.popen is None else self.popen.poll()

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Wait until ``ready_url`` answers 200; return the seconds since :meth:`start`.

        Raises :class:`ProcessFailed`, with the log tails, when the program exits first or does
        not become ready within ``timeout`` seconds.
        """
        assert self.ready_url is not None, f"{self.name} has no readiness URL"
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            code = self.poll()
            if code is not None:
                raise ProcessFailed(
                    f"{self.name} exited with code {code} before it was ready\n{self.tails()}"
                )
            try:
                response = httpx.get(self.ready_url, timeout=1.0)
                if response.status_code == 200:
                    return time.monotonic() - self.started_at
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}"
            if time.monotonic() > deadline:
                raise ProcessFailed(
                    f"{self.name} was not ready at {self.ready_url} within "
                    f"{timeout:g}s ({last})\n{self.tails()}"
                )
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the program to exit on its own; its exit code."""
        assert self.popen is not None, f"{self.name} was never started"
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ProcessFailed(
                f"{self.name} still runs after {timeout:g}s\n{self.tails()}"
            ) from None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit code (None if never started).

        ``stop_seconds`` records how long the program took to exit after SIGTERM.
        """
        if self.popen is None:
            return None
        if self.popen.poll() is not None:
            return self.popen.returncode
        sent = time.monotonic()
        code = stop_process(self.popen, timeout)
        self.stop_seconds = time.monotonic() - sent
        return code

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def tails(self, lines: int = 40) -> str:
        """The last ``lines`` lines of stdout and stderr, headed by the program's name."""
        state = "running" if self.poll() is None else f"exit code {self.poll()}"
        return (
            f"----- {self.name} ({state}): {' '.join(self.argv)}\n"
            f"--- stdout ({self.stdout_path}):\n{_tail(self.stdout_path, lines)}\n"
            f"--- stderr ({self.stderr_path}):\n{_tail(self.stderr_path, lines)}"
        )


def _address_in_use(process: Process) -> bool:
    with contextlib.suppress(OSError):
        return "address already in use" in process.stderr().lower()
    return False


class ProcessGroup:
    """Every process one test (or one module) started, stopped together in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[Process] = []

    def start(
        self,
        name: str,
        make_argv: Callable[[int], Sequence[str]],
        *,
        ready_path: str | None = "/-/ready",
        ready_timeout: float = 20.0,
        env: Mapping[str, str] | None = None,
        attempts: int = 3,
        preexec_fn: Callable[[], None] | None = None,
    ) -> tuple[Process, int]:
        """Start ``make_argv(port)`` on a free port and wait until ``ready_path`` answers 200.

        A program that exits saying its address is in use (another program took the port after
        :func:`free_port` chose it) is started again on a new port, up to ``attempts`` times.
        Returns the process and its port.
        """
        for attempt in range(1, attempts + 1):
            port = free_port()
            label = name if attempt == 1 else f"{name}.attempt{attempt}"
            url = f"http://{LOOPBACK}:{port}{ready_path}" if ready_path is not None else None
            process = Process(
                label, make_argv(port), self.log_dir, ready_url=url, env=env, preexec_fn=preexec_fn
            )
            self.processes.append(process.start())
            if url is None:
                return process, port
            try:
                process.wait_ready(ready_timeout)
            except ProcessFailed:
                if attempt < attempts and process.poll() is not None and _address_in_use(process):
                    continue
                raise
            return process, port
        raise AssertionError("unreachable")  # pragma: no cover

    def add(self, process: Process) -> Process:
        """Track a process started by hand, so it is stopped with the others."""
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):  # stopping the others matters more
                process.stop()

    def tails(self, lines: int = 40) -> str:
        return "\n".join(process.tails(lines) for process in self.processes)


@contextlib.contextmanager
def managed_processes(request: pytest.FixtureRequest, log_dir: Path) -> Iterator[ProcessGroup]:
    """A :class:`ProcessGroup` that is always stopped; if a test failed meanwhile, it shows the
    processes' log tails on the terminal (past pytest's output capture, which would hide output
    printed during teardown)."""
    group = ProcessGroup(log_dir)
    failed_before = request.session.testsfailed
    try:
        yield group
    finally:
        failed = request.session.testsfailed > failed_before
        group.stop_all()
        if failed:
            show(
                request,
                f"\n===== log tails of the e2e processes ({log_dir}) =====\n{group.tails()}\n",
            )


def show(request: pytest.FixtureRequest, text: str) -> None:
    """Write ``text`` to the terminal even while pytest captures output."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        sys.stderr.write(text)
        return
    with capture.global_and_fixture_disabled():
        sys.stderr.write(text)
        sys.stderr.flush()


# --------------------------------------------------------------------------------------------------
# Scraping


def parse_samples(text: str) -> Samples:
    """The samples of a text exposition, keyed by sample name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def scrape(base_url: str, timeout: float = 10.0) -> Samples:
    """GET ``base_url``/metrics (it must answer 200) and parse it."""
    response = httpx.get(f"{base_url}/metrics", timeout=timeout)
    assert response.status_code == 200, f"/metrics answered {response.status_code}"
    return parse_samples(response.text)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with exactly ``labels``; None when it is not exported."""
    return samples.get((name, tuple(sorted(labels.items()))))


def by_account(samples: Samples, name: str) -> dict[str, float]:
    """{account: value} of a sample labelled only by account."""
    return {
        dict(labels)["account"]: sample
        for (sample_name, labels), sample in samples.items()
        if sample_name == name and len(labels) == 1 and labels[0][0] == "account"
    }


def by_order(samples: Samples, name: str) -> dict[tuple[str, str], float]:
    """{(account, order): value} of a sample labelled by account and order only."""
    found = {}
    for (sample_name, labels), sample in samples.items():
        named = dict(labels)
        if sample_name == name and set(named) == {"account", "order"}:
            found[(named["account"], named["order"])] = sample
    return found


def same(a: float | None, b: float | None) -> bool:
    """Equal, or both NaN."""
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


# --------------------------------------------------------------------------------------------------
# The simulator


def simulator_argv(port: int, config_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "okx_loan_exporter",
        "simulate",
        "--web.listen-address",
        f"{LOOPBACK}:{port}",
        "--write-exporter-config",
        str(config_path),
        *extra,
    ]


def exporter_argv(
    port: int, config_path: Path, *extra: str, console_script: str | None = None
) -> list[str]:
    """``python -m okx_loan_exporter`` (or the console script at ``console_script``) on
    127.0.0.1:``port`` with the config file ``config_path``."""
    program = [console_script] if console_script else [sys.executable, "-m", "okx_loan_exporter"]
    return [
        *program,
        "--config.file",
        str(config_path),
        "--web.listen-address",
        f"{LOOPBACK}:{port}",
        *extra,
    ]


def start_simulator(
    group: ProcessGroup, config_path: Path, *extra: str
) -> tuple[Process, SimulatorControl]:
    """The simulator as its own process (``extra`` flags such as ``--margin-call-cycle 20s``);
    it writes an exporter config to ``config_path``."""
    process, port = group.start(
        "simulator", lambda p: simulator_argv(p, config_path, *extra), ready_path="/sim/stats"
    )
    # The config file is written just after the server starts answering.
    wait_for(
        f"the simulator to write {config_path}", config_path.exists, 10.0, details=process.tails
    )
    return process, SimulatorControl(f"http://{LOOPBACK}:{port}")


def edit_config(path: Path, **settings: Any) -> dict[str, Any]:
    """Set global keys (``cache_ttl="1s"``...) in the exporter config at ``path``; return it."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document.update(settings)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)
    return document


class SimulatorControl:
    """The simulator's HTTP control API (``/sim/*``) and signed OKX requests to it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def set_account(self, name: str, **changes: Any) -> dict[str, Any]:
        """``POST /sim/accounts/<name>`` with ``changes`` (order, ltv, walk, fault, latency, close,
        passphrase, secret_key; ltv and walk act on ``order``, by default the account's first)."""
        response = httpx.post(f"{self.base_url}/sim/accounts/{name}", json=changes, timeout=5.0)
        assert response.status_code == 200, f"simulator refused {changes}: {response.text}"
        return dict(response.json())

    def set_config(self, **changes: Any) -> dict[str, Any]:
        """``POST /sim/config`` with ``changes`` (latency, clock_skew, walk: market time)."""
        response = httpx.post(f"{self.base_url}/sim/config", json=changes, timeout=5.0)
        assert response.status_code == 200, f"simulator refused {changes}: {response.text}"
        return dict(response.json())

    def stats(self) -> dict[str, Any]:
        """``GET /sim/stats``: requests per account."""
        response = httpx.get(f"{self.base_url}/sim/stats", timeout=5.0)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def requests_by_account(self) -> dict[str, int]:
        return {name: int(counts["requests"]) for name, counts in self.stats()["accounts"].items()}

    def loan_info(self, account: Mapping[str, Any], order: str | None = None) -> dict[str, Any]:
        """A signed loan-info request for ``account`` (an entry of the exporter config's
        ``accounts``), for one ``order`` (``?ordId=``) or all, signed here as OKX documents it;
        the answer's JSON."""
        now = datetime.now(UTC)
        timestamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        path = (
            LOAN_INFO_PATH if order is None else f"{LOAN_INFO_PATH}?{urlencode({'ordId': order})}"
        )
        prehash = f"{timestamp}GET{path}".encode()
        digest = hmac.new(str(account["secret_key"]).encode(), prehash, hashlib.sha256).digest()
        headers = {
            "OK-ACCESS-KEY": str(account["api_key"]),
            "OK-ACCESS-SIGN": base64.b64encode(digest).decode(),
            "OK-ACCESS-TIMESTAMP": timestamp,
            "OK-ACCESS-PASSPHRASE": str(account["passphrase"]),
        }
        if account.get("demo"):
            headers["x-simulated-trading"] = "1"
        response = httpx.get(f"{self.base_url}{path}", headers=headers, timeout=5.0)
        document = dict(response.json())
        assert response.status_code == 200 and document.get("code") == "0", (
            f"signed loan-info for {account['name']} failed: {response.text}"
        )
        return document
