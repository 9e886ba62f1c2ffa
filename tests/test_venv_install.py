"""The README's first run on stock Debian: `make demo` with Debian's externally managed python3.

A copy of the checkout runs `make demo` with ``PYTHON=/usr/bin/python3``: the Makefile must make
``.venv`` with that Python, install the exporter into it (never into the system Python, which
refuses: PEP 668) and serve the demo's metrics. Also: a second run installs nothing, a missing or
venv-less Python is refused with the fix, and CI runs the README's test command.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from deploy_support import copy_checkout
from e2e_support import free_port, parse_samples, wait_for
from tooling import in_ci

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = Path("/usr/bin/python3")


def clean_env() -> dict[str, str]:
    """This environment without what would let the copy import another copy of the package."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS"}
        and not key.startswith("OKX_")
    }


def make(checkout: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=checkout,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def debian_python() -> Path:
    """Debian's /usr/bin/python3, which must be externally managed; skip without it."""
    if not DEBIAN_PYTHON.exists():
        if in_ci():
            pytest.fail("CI runs on Debian: /usr/bin/python3 must exist", pytrace=False)
        pytest.skip("no /usr/bin/python3 (this test needs a Debian or Ubuntu system Python)")
    return DEBIAN_PYTHON


@pytest.fixture(scope="module")
def demo_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A copy of the checkout where `make PYTHON=/usr/bin/python3 demo` serves on a free port."""
    python = debian_python()
    checkout = copy_checkout(tmp_path_factory.mktemp("first-run") / "okx-loan-exporter")
    port = free_port()
    log = checkout.parent / "make-demo.log"
    with log.open("wb") as out:
        # Its own session, so the exporter that make starts is stopped with make.
        process = subprocess.Popen(
            [
                "make",
                "--no-print-directory",
                f"PYTHON={python}",
                f"DEMO_FLAGS=--web.listen-address=127.0.0.1:{port}",
                "demo",
            ],
            cwd=checkout,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def serving() -> str | None:
        if process.poll() is not None:
            pytest.fail(f"make demo exited with {process.returncode}:\n{log.read_text()}")
        try:
            response = httpx.get(f"{url}/metrics", timeout=2)
        except httpx.HTTPError:
            return None
        return response.text if response.status_code == 200 else None

    try:
        wait_for("make demo to serve /metrics", serving, 150, interval=0.2, details=log.read_text)
        yield checkout, url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_make_demo_with_debian_python_serves_metrics_from_its_venv(demo_checkout) -> None:
    checkout, url = demo_checkout
    # The system Python is the externally managed one the README's users have.
    stdlib = subprocess.run(
        [str(DEBIAN_PYTHON), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert (Path(stdlib) / "EXTERNALLY-MANAGED").is_file(), f"{stdlib} is not externally managed"
    # The venv was made by that Python, in the checkout, and holds the exporter.
    config = (checkout / ".venv" / "pyvenv.cfg").read_text()
    assert re.search(r"^home = /usr/bin$", config, re.MULTILINE), config
    assert (checkout / ".venv" / "bin" / "okx-loan-exporter").is_file()
    # The demo answers, with every simulated account up.
    samples = parse_samples(httpx.get(f"{url}/metrics", timeout=5).text)
    up = {dict(key)["account"]: v for (name, key), v in samples.items() if name == "okx_loan_up"}
    assert len(up) >= 3 and set(up.values()) == {1.0}, up


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_second_make_installs_nothing_until_pyproject_changes(demo_checkout) -> None:
    checkout, _url = demo_checkout
    python = f"PYTHON={DEBIAN_PYTHON}"
    # `make -q` exits 0 when the target is up to date, 1 when its recipe would run.
    assert make(checkout, "-q", python, ".venv/.installed").returncode == 0
    later = time.time() + 5
    os.utime(checkout / "pyproject.toml", (later, later))
    assert make(checkout, "-q", python, ".venv/.installed").returncode == 1


def test_a_missing_python_is_refused_with_the_fix(tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "checkout")
    result = make(checkout, f"PYTHON={tmp_path / 'no-such-python'}", "demo")
    assert result.returncode != 0
    assert "missing or older than Python 3.11" in result.stderr, result.stderr
    assert not (checkout / ".venv").exists()


def test_a_python_without_venv_is_refused_with_the_fix_and_leaves_no_venv(tmp_path: Path) -> None:
    """Like Debian's python3 without python3-venv: `-m venv` fails after making part of .venv."""
    checkout = copy_checkout(tmp_path / "checkout")
    fake = tmp_path / "python3"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin"; '
        "echo 'ensurepip is not available' >&2; exit 1; fi\n"
        f'exec {shutil.which("python3")} "$@"\n'
    )
    fake.chmod(0o755)
    result = make(checkout, f"PYTHON={fake}", "demo")
    assert result.returncode != 0
    assert "apt install python3-venv" in result.stderr, result.stderr
    assert not (checkout / ".venv").exists(), "a half-made .venv would be taken for a good one"


def test_ci_runs_the_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "```sh\nmake test\n```" in readme
    commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "set ", "cd ", "export "))
    ]
    assert commands == ["make test"], commands
