"""Run the exporter as if only its runtime dependencies were installed, as in the Docker image.

A development environment holds packages that libraries import when they happen to be present:
httpcore imports ``trio`` to offer a trio backend, httpx imports ``click``, ``pygments`` and
``rich`` for its command line. None is a dependency of the exporter, yet here they cost it about
6 MiB of RSS and 100 ms of start-up. :func:`exporter_argv` starts ``python -m okx_loan_exporter``
with every installed top-level package outside the dependency closure of ``okx-loan-exporter``
marked absent in ``sys.modules``, so imports of them fail as they would if not installed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, distribution, distributions

from benchmarks.common import PYTHON

_BOOTSTRAP = (
    "import runpy, sys; sys.modules.update(dict.fromkeys(sys.argv[1].split(','))); "
    "sys.argv[:2] = ['okx_loan_exporter']; "
    "runpy.run_module('okx_loan_exporter', run_name='__main__', alter_sys=True)"
)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_closure(root: str = "okx-loan-exporter") -> set[str]:
    """Normalized names of ``root`` and everything it requires (no extras), recursively."""
    from packaging.requirements import Requirement  # a tool of this benchmark, not of the child

    closure: set[str] = set()
    todo = [root]
    while todo:
        name = _normal(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return closure


@functools.cache
def blocked_modules() -> tuple[str, ...]:
    """Top-level modules of installed distributions outside the exporter's dependency closure."""
    closure = dependency_closure()
    blocked: set[str] = set()
    for dist in distributions():
        if _normal(dist.metadata["Name"] or "") in closure:
            continue
        top_level = dist.read_text("top_level.txt")
        if top_level:
            names = set(top_level.split())
        else:
            names = {
                file.parts[0].removesuffix(".py")
                for file in dist.files or []
                if file.parts
                and not file.parts[0].endswith((".dist-info", ".egg-info", ".pth", ".."))
                and (len(file.parts) > 1 or file.suffix == ".py")
            }
        blocked.update(name for name in names if name.isidentifier() and name[:2] != "__")
    return tuple(sorted(blocked))


def exporter_argv(args: Sequence[str]) -> list[str]:
    """``python -m okx_loan_exporter ARGS`` with the non-dependencies made unimportable."""
    return [PYTHON, "-c", _BOOTSTRAP, ",".join(blocked_modules()), *args]
