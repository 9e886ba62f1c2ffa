"""Static tests of the Dockerfile and .dockerignore: hadolint, and what users of the image rely on.

The static checks hold what a user of the image relies on (non-root, port, health check, no
secrets in the build context). tests/test_image.py builds the image with buildah and runs it.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

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
