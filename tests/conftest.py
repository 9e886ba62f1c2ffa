"""Shared fixtures: a fake clock, an in-process OKX simulator, and an exporter served to scrape.

``fake_clock`` drives every time rule (cache TTL, auth backoff, the simulator's timestamp window,
rate limit and price walk) so tests advance time instead of sleeping; only network waits (hangs,
timeouts, latency) are real. ``start_simulator`` and ``start_exporter`` start those pieces on
127.0.0.1 and stop them after the test. ``offline_dns`` makes names under ``.invalid`` fail to
resolve without asking a DNS server, so a DNS failure is tested without leaving the machine.
``exporter_process`` runs ``python -m okx_loan_exporter`` as a child process (mark such tests
``subprocess``) and always stops it. Test modules import the helpers (``FakeClock``, ``Scrape``,
``Harness``, ``sim_account``, ``account_config``) with ``from conftest import ...``. Every test
gets back the logging set-up it started with (``restore_logging``), since the CLI, called in
process, installs its own handlers. The exporter's
modules are imported only when a fixture needs them, so that a module broken mid-edit fails the
tests that use it rather than every test.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from e2e_support import stop_process
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from okx_loan_exporter.config import AccountConfig, ExporterConfig
    from okx_loan_exporter.exporter import Exporter
    from okx_loan_exporter.server import ExporterHTTPServer
    from okx_loan_exporter.simulator import SimAccount, Simulator
    from okx_loan_exporter.simulator.certs import CertificateFiles

REPO = Path(__file__).resolve().parents[1]
FAKE_EPOCH = 1_700_000_000.0
"""Where ``fake_clock`` starts (2023-11-14), far from the real time, so a real-clock leak shows."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "subprocess: starts the exporter as a child process (python -m ...)"
    )


class FakeClock:
    """A clock that moves only when told to; callable like ``time.time``."""

    def __init__(self, now: float = FAKE_EPOCH) -> None:
        self._now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now


@dataclass
class Scrape:
    """One answer of the exporter's /metrics, parsed back with prometheus_client's parser."""

    status: int
    elapsed: float
    """Wall-clock seconds from sending the request to having the whole answer."""
    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    @classmethod
    def parse(cls, status: int, elapsed: float, text: str) -> Scrape:
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(status, elapsed, text, samples)

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None when the series is absent."""
        return self.samples.get((name, frozenset(labels.items())))

    def failures(self, account: str, endpoint: str = "loan_info") -> dict[str, float]:
        """okx_loan_api_request_failures_total of ``account`` and ``endpoint`` by reason."""
        return {
            dict(labels)["reason"]: value
            for (name, labels), value in self.samples.items()
            if name == "okx_loan_api_request_failures_total"
            and ("account", account) in labels
            and ("endpoint", endpoint) in labels
        }

    def series(self, account: str) -> set[str]:
        """Names of the okx_loan_ samples that carry ``account``."""
        return {name for name, labels in self.samples if ("account", account) in labels}


class Harness:
    """An exporter serving over HTTP on 127.0.0.1, and a client to scrape it."""

    def __init__(self, exporter: Exporter, server: ExporterHTTPServer) -> None:
        self.exporter = exporter
        self.server = server
        self.url = server.url
        self.http = httpx.Client(trust_env=False, timeout=30.0)

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
        return self.http.get(self.url + path, headers=dict(headers or {}))

    def scrape(self, scrape_timeout: str | None = "3", **headers: str) -> Scrape:
        """GET /metrics, sending X-Prometheus-Scrape-Timeout-Seconds unless it is None."""
        sent = dict(headers)
        if scrape_timeout is not None:
            sent["X-Prometheus-Scrape-Timeout-Seconds"] = scrape_timeout
        started = time.perf_counter()
        response = self.get("/metrics", sent)
        elapsed = time.perf_counter() - started
        return Scrape.parse(response.status_code, elapsed, response.text)

    def close(self) -> None:
        self.http.close()
        self.server.shutdown()
        self.exporter.close()


def account_config(
    account: SimAccount, base_url: str, *, demo: bool | None = None, name: str | None = None
) -> AccountConfig:
    """The exporter's config of a simulator account (``demo`` overrides the account's own)."""
    from okx_loan_exporter.config import AccountConfig

    return AccountConfig(
        name=name or account.name,
        api_key=account.api_key,
        secret_key=account.secret_key,
        passphrase=account.passphrase,
        demo=account.demo if demo is None else demo,
        base_url=base_url,
    )


def sim_account(
    name: str,
    *,
    collateral: Mapping[str, str] | None = None,
    loans: Mapping[str, str] | None = None,
    demo: bool = False,
    **credentials: str,
) -> SimAccount:
    """A simulator account with one order "1" of a BTC-backed USDT loan (LTV 0.45 at BTC 60000)
    by default; ``loans={}`` gives an account without any order."""
    from okx_loan_exporter.simulator import SimAccount, SimOrder

    collateral = {"BTC": "0.5"} if collateral is None else dict(collateral)
    loans = {"USDT": "13500"} if loans is None else dict(loans)
    return SimAccount(
        name=name,
        api_key=credentials.get("api_key", f"test-{name}-key"),
        secret_key=credentials.get("secret_key", f"test-{name}-secret"),
        passphrase=credentials.get("passphrase", f"test-{name}-passphrase"),
        orders=[SimOrder("1", collateral, loans)] if loans else [],
        demo=demo,
    )


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo what ``setup_logging`` (run by ``cli.main`` in process) does to the logging tree.

    It replaces the root handlers with one writing to the stderr of that moment (a capture that is
    closed after the test) and changes levels; left in place, later tests print "--- Logging
    error ---" to stderr and miss or gain log lines.
    """
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if not _is_pytest_handler(handler)]
    level = root.level
    levels = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    # pytest adds and removes its own capture handlers around each phase: leave those alone.
    root.handlers[:] = ours + [handler for handler in root.handlers if _is_pytest_handler(handler)]
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def _is_pytest_handler(handler: logging.Handler) -> bool:
    return type(handler).__module__.startswith("_pytest")


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def start_simulator(fake_clock: FakeClock) -> Iterator[Callable[..., Simulator]]:
    """``start_simulator(accounts, clock=fake_clock, port=0, **options)``: a running Simulator."""
    from okx_loan_exporter.simulator import Simulator

    started: list[Simulator] = []

    def start(
        accounts: Sequence[SimAccount],
        *,
        clock: Callable[[], float] | None = None,
        port: int = 0,
        **options: Any,
    ) -> Simulator:
        simulator = Simulator(accounts, clock=clock or fake_clock, **options)
        started.append(simulator)
        simulator.start("127.0.0.1", port)
        return simulator

    yield start
    for simulator in started:
        simulator.stop()


@pytest.fixture
def start_exporter(fake_clock: FakeClock) -> Iterator[Callable[..., Harness]]:
    """``start_exporter(accounts, cache_ttl=0.5, timeout=1.0, ...)``: an exporter on 127.0.0.1.

    ``accounts`` are :class:`AccountConfig` (see ``account_config``), or pass ``config``;
    ``intervals`` sets the secondary endpoints' schedules (``history_interval=0.0``...).
    """
    from okx_loan_exporter.config import ExporterConfig
    from okx_loan_exporter.exporter import Exporter
    from okx_loan_exporter.server import ExporterHTTPServer
    from okx_loan_exporter.web import create_app
    from okx_loan_exporter.webconfig import WebConfigWatcher

    started: list[Harness] = []

    def start(
        accounts: Sequence[AccountConfig] = (),
        *,
        cache_ttl: float = 0.5,
        timeout: float = 1.0,
        max_stale: float = 300.0,
        clock: Callable[[], float] | None = None,
        config: ExporterConfig | None = None,
        **intervals: float,
    ) -> Harness:
        if config is None:
            config = ExporterConfig(
                accounts=tuple(accounts),
                cache_ttl=cache_ttl,
                max_stale=max_stale,
                timeout=timeout,
                source="test",
                **intervals,
            )
        clock = clock or fake_clock
        exporter = Exporter(config, clock=clock)
        try:
            server = ExporterHTTPServer(
                create_app(exporter, clock=clock), "127.0.0.1:0", WebConfigWatcher(None)
            )
        except BaseException:
            exporter.close()
            raise
        server.start_background()
        harness = Harness(exporter, server)
        started.append(harness)
        return harness

    yield start
    for harness in started:
        harness.close()


@pytest.fixture(scope="session")
def test_certificates(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    """A throwaway CA and a certificate for 127.0.0.1, ::1 and localhost (for HTTPS tests)."""
    from okx_loan_exporter.simulator.certs import write_test_certificates

    return write_test_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (connection refused), as far as can be known."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def offline_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names ending in ``.invalid`` fail to resolve (EAI_NONAME) without a query to DNS."""
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.rstrip(".").lower().endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


class ExporterProcess:
    """``python -m okx_loan_exporter ARGS`` with stdout and stderr in files, until :meth:`stop`."""

    SERVING = re.compile(r"serving \d+ account\(s\) on (https?://\S+?)/metrics")

    def __init__(self, args: Sequence[str], directory: Path, env: Mapping[str, str] | None) -> None:
        self.args = list(args)
        self._stdout_path = directory / "stdout.txt"
        self._stderr_path = directory / "stderr.txt"
        base = {k: v for k, v in os.environ.items() if not k.startswith("OKX_")}
        with open(self._stdout_path, "wb") as out, open(self._stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "okx_loan_exporter", *self.args],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**base, **(env or {})},
            )
        self.stdout = self.stderr = ""

    def stderr_so_far(self) -> str:
        return self._stderr_path.read_text(errors="replace")

    def wait_serving(self, limit: float = 15.0) -> str:
        """The base URL once the exporter logs that it serves; fails if it exits first."""
        deadline = time.monotonic() + limit
        while True:
            match = self.SERVING.search(self.stderr_so_far())
            if match:
                return match.group(1)
            if self.process.poll() is not None:
                self.stop()
                pytest.fail(f"the exporter exited with {self.process.returncode}:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the exporter did not start in {limit:g}s:\n{self.stderr}")
            time.sleep(0.02)

    def stop(self) -> int:
        """SIGTERM (SIGKILL after 5 s); read what it wrote; return its exit code."""
        stop_process(self.process)
        self.stdout = self._stdout_path.read_text(errors="replace")
        self.stderr = self._stderr_path.read_text(errors="replace")
        return self.process.returncode


@pytest.fixture
def exporter_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ExporterProcess]]:
    """``exporter_process(*args, env=None)``: the exporter as a child process, stopped at the end.

    The child gets this environment without any ``OKX_*`` variable, plus ``env``.
    """
    started: list[ExporterProcess] = []

    def start(*args: str, env: Mapping[str, str] | None = None) -> ExporterProcess:
        process = ExporterProcess(args, tmp_path_factory.mktemp("exporter"), env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
