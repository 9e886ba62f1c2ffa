"""``python -m benchmarks [scrape|economy|scaling|startup|endpoints|profile|stages ...] [--quick]
[--output PATH]``.

Runs the chosen benchmarks (all by default) in order, prints each one's table and writes every
figure, with the machine it ran on, to ``benchmarks/results/latest.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import (
    cpu_profile,
    economy,
    endpoint_economy,
    load,
    scaling,
    scrape,
    stages,
    startup,
)
from benchmarks.common import Table

BENCHMARKS: dict[str, Callable[[bool], tuple[dict[str, Any], list[Table]]]] = {
    "scrape": scrape.run,
    "economy": economy.run,
    "scaling": scaling.run,
    "startup": startup.run,
    "endpoints": endpoint_economy.run,
    "profile": cpu_profile.run,
    "stages": stages.run,
}
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.json"


def _machine() -> dict[str, Any]:
    from importlib.metadata import version

    import prometheus_client  # noqa: F401  (its version is what the reference runs on)

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_tool": "wrk" if load.WRK else "python-asyncio",
        "prometheus_client": version("prometheus-client"),
        "httpx": version("httpx"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shorter runs and fewer repeats (about a minute in all)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"where to write the JSON results (default {DEFAULT_OUTPUT})",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    report: dict[str, Any] = {
        "quick": args.quick,
        "machine": _machine(),
        "results": {},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    total = time.monotonic()
    for name in names:
        began = time.monotonic()
        print(
            f"-- running {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True
        )
        results, tables = BENCHMARKS[name](args.quick)
        results["wall_seconds"] = time.monotonic() - began
        report["results"][name] = results
        for table in tables:
            print(table.render(), flush=True)
            print(flush=True)
    report["wall_seconds"] = time.monotonic() - total
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"total {report['wall_seconds']:.0f} s; results written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
