"""The reference for the scrape benchmark: a bare ``prometheus_client.start_http_server`` serving
the metric families parsed from one exporter ``/metrics`` body, so both bodies match in size.

``python -m benchmarks.reference_server BODY_FILE PORT``; serves until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector


class StaticCollector(Collector):
    """Yields the same parsed families on every collect(), as a collector over fixed data does."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def registry_from_text(text: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StaticCollector(list(text_string_to_metric_families(text))))
    return registry


def main(argv: list[str]) -> int:
    body_file, port = argv
    registry = registry_from_text(Path(body_file).read_text())
    start_http_server(int(port), addr="127.0.0.1", registry=registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
