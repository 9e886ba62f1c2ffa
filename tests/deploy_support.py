"""Helpers of the deployment tests: a fresh-clone copy of the checkout, and the shared schemas.

The schemas that validate the compose file and the Kubernetes custom resources live in the
project's ``shared/schemas`` folder, beside the checkout (``../shared``) in CI; from a git worktree
they are one folder further up. Without them a test skips locally and fails in CI.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from tooling import in_ci

ROOT = Path(__file__).resolve().parent.parent
#: Left out of a copy of the checkout: what a fresh clone does not have.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".hypothesis",
    ".benchmarks",
    "build",
    "dist",
)


def copy_checkout(target: Path) -> Path:
    """The checkout's files as a fresh clone has them (no .venv, no build residue)."""
    shutil.copytree(ROOT, target, ignore=NOT_IN_A_CLONE, symlinks=True)
    return target


def shared_schema(name: str) -> Path:
    """``shared/schemas/<name>`` beside the checkout (or beside its parent, for a worktree)."""
    for base in (ROOT.parent, ROOT.parent.parent):
        path = base / "shared" / "schemas" / name
        if path.is_file():
            return path
    message = f"shared/schemas/{name} is neither in {ROOT.parent} nor in {ROOT.parent.parent}"
    if in_ci():
        pytest.fail(f"{message}; CI must provide it beside the clone", pytrace=False)
    pytest.skip(f"{message}: copy the project's shared/ folder beside the checkout")


def check_jsonschema(
    schema: Path, *documents: Path, options: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run check-jsonschema (the [test] extra's) on ``documents``; its result, not checked."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            *options,
            "--schemafile",
            str(schema),
            *map(str, documents),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
