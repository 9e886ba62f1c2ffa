"""Tests for the Dockerfile and .dockerignore, without a Docker engine.

hadolint lints the Dockerfile. The static checks hold what a user of the image relies on (non-root,
port, health check, no secrets in the build context). The slow end-to-end test does what the image
does: builds the wheel from exactly the files .dockerignore lets in, installs it into a fresh venv,
runs the Dockerfile's own ENTRYPOINT + CMD from it and then its HEALTHCHECK command.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import stop_process
from tooling import require_binary

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PORT = 9855


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """The instructions of each build stage (a new stage at each FROM); comments dropped."""
    stages: list[list[Instruction]] = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, args = logical.partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(Instruction(keyword.upper(), args.strip()))
        else:
            assert keyword.upper() == "ARG", f"{keyword} before the first FROM"
    return stages


STAGES = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
FINAL = STAGES[-1]


def last(keyword: str, stage: list[Instruction] = FINAL) -> str:
    found = [i.args for i in stage if i.keyword == keyword]
    assert found, f"no {keyword} in the final stage"
    return found[-1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), args
    return value


def healthcheck_command() -> list[str]:
    _options, _, command = last("HEALTHCHECK").partition("CMD ")
    assert command, "HEALTHCHECK without CMD"
    return exec_form(command)


# --- hadolint ---------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = require_binary("hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint step can fail: an unpinned base and a cached, unpinned pip install are reported."""
    hadolint = require_binary("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n", encoding="utf-8")
    result = subprocess.run(
        [hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3042" in result.stdout


# --- What the image promises ------------------------------------------------------------------


def test_multi_stage_on_a_pinned_slim_python_311() -> None:
    assert len(STAGES) >= 2, "build the wheel in a separate stage"
    text = DOCKERFILE.read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))
    for stage in STAGES:
        image = stage[0].args.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        name, _, tag = image.partition(":")
        assert name == "python", image
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), f"pin a 3.11 slim tag: {image}"


def test_runs_as_a_fixed_non_root_user() -> None:
    user = last("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: use a fixed numeric non-root UID"
    users = [i for i in FINAL if i.keyword == "USER"]
    assert FINAL.index(users[-1]) > max(
        n for n, i in enumerate(FINAL) if i.keyword in {"RUN", "COPY", "ADD"}
    ), "switch to the non-root user after the last step that writes files"


def test_port_entrypoint_and_cmd() -> None:
    assert str(PORT) in last("EXPOSE").split()
    entrypoint = exec_form(last("ENTRYPOINT"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert entrypoint == ["okx-loan-exporter"] and entrypoint[0] in scripts
    assert f"--web.listen-address=:{PORT}" in exec_form(last("CMD"))
    path = next(i.args for i in FINAL if i.keyword == "ENV" and "PATH=" in i.args)
    assert "PATH=/opt/venv/bin:" in path, "the venv's console script must be on PATH"


def test_healthcheck_uses_python_urllib_on_healthy() -> None:
    command = healthcheck_command()
    assert command[0] == "python"
    joined = " ".join(command)
    assert "urllib.request" in joined
    assert f"http://127.0.0.1:{PORT}/-/healthy" in joined
    assert not re.search(r"\b(curl|wget)\b", joined)
    assert "--timeout=" in last("HEALTHCHECK") and "--interval=" in last("HEALTHCHECK")


def test_oci_labels() -> None:
    labels = " ".join(i.args for i in FINAL if i.keyword == "LABEL")
    for key in ("title", "description", "licenses", "version"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_no_secrets_in_layers() -> None:
    """No key material in ENV/ARG/LABEL, and a build context that admits only the package."""
    for stage in STAGES:
        for instruction in stage:
            if instruction.keyword in {"ENV", "ARG", "LABEL"}:
                assert not re.search(
                    r"(api_?key|secret|passphrase|password|token)\w*=",
                    instruction.args,
                    flags=re.IGNORECASE,
                ), instruction
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore should start by excluding everything"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert admitted <= {"pyproject.toml", "README.md", "LICENSE", "okx_loan_exporter"}
    assert {"pyproject.toml", "okx_loan_exporter"} <= admitted


# --- The Dockerfile's own commands, run from a fresh venv ---------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_context(target: Path) -> Path:
    """Copy what .dockerignore admits, as `docker build` would send it."""
    target.mkdir()
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("!"):
            continue
        source = ROOT / line[1:].strip().rstrip("/")
        if source.is_dir():
            shutil.copytree(
                source, target / source.name, ignore=shutil.ignore_patterns("__pycache__")
            )
        elif source.is_file():
            shutil.copy2(source, target / source.name)
    return target


@dataclass
class Installed:
    bin: Path
    env: dict[str, str]
    workdir: Path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built from the Docker build context, installed into a new venv (slow-ish)."""
    base = tmp_path_factory.mktemp("image")
    context = build_context(base / "context")
    wheels = base / "wheels"

    def run(*args: str | Path) -> None:
        result = subprocess.run(
            [str(a) for a in args], capture_output=True, text=True, timeout=180, check=False
        )
        assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"

    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, context)
    (wheel,) = wheels.glob("okx_loan_exporter-*.whl")
    run(sys.executable, "-m", "venv", base / "venv")
    bin_dir = base / "venv" / "bin"
    run(bin_dir / "python", "-m", "pip", "install", "--disable-pip-version-check", wheel)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    workdir = base / "work"  # not the repository: only the installed wheel can be imported
    workdir.mkdir()
    return Installed(bin_dir, env, workdir)


@pytest.fixture(scope="module")
def running(installed: Installed) -> Iterator[str]:
    """ENTRYPOINT + CMD from the venv, the listen address moved to loopback, plus --demo."""
    port = free_port()
    entrypoint = exec_form(last("ENTRYPOINT"))
    cmd = exec_form(last("CMD"))
    moved = [
        f"--web.listen-address=127.0.0.1:{port}" if a.startswith("--web.listen-address=") else a
        for a in cmd
    ]
    assert moved != cmd, "CMD sets no --web.listen-address="
    executable = shutil.which(entrypoint[0], path=installed.env["PATH"])
    assert executable and Path(executable).parent == installed.bin, "not the venv's script"
    log = installed.workdir / "exporter.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [executable, *entrypoint[1:], *moved, "--demo"],
            cwd=installed.workdir,
            env=installed.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                pytest.fail(f"the exporter exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/metrics", timeout=2) as response:
                    if "okx_loan_up{" in response.read().decode():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no okx_loan_up on {url}/metrics in 15 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        stop_process(process, timeout=10)


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_image_entrypoint_serves_metrics_and_health(running: str) -> None:
    with urllib.request.urlopen(f"{running}/metrics", timeout=5) as response:
        assert response.status == 200
        assert re.search(r'^okx_loan_up\{account="[^"]+"\} 1\.0$', response.read().decode(), re.M)
    with urllib.request.urlopen(f"{running}/-/healthy", timeout=5) as response:
        assert response.status == 200


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_image_healthcheck_command(installed: Installed, running: str) -> None:
    """The HEALTHCHECK command succeeds against the running exporter, fails with none there."""
    port = running.rsplit(":", 1)[1]

    def healthcheck(on_port: str) -> subprocess.CompletedProcess[str]:
        command = [
            a.replace(f"127.0.0.1:{PORT}", f"127.0.0.1:{on_port}") for a in healthcheck_command()
        ]
        return subprocess.run(
            command,
            cwd=installed.workdir,
            env=installed.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    healthy = healthcheck(port)
    assert healthy.returncode == 0, healthy.stderr
    dead = healthcheck(str(free_port()))
    assert dead.returncode != 0
    assert "Connection refused" in dead.stderr or "URLError" in dead.stderr
