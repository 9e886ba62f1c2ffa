"""The exporter with its cache disabled, for the call-economy comparison only (not a product
option): the real Exporter, web app and HTTP server, but every account's TTL set to 0, so every
scrape that finds no fetch in flight sends a new request to OKX.

``python -m benchmarks.nocache_exporter CONFIG_FILE PORT``; serves until SIGTERM.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading

from okx_loan_exporter.config import load_config
from okx_loan_exporter.exporter import Exporter
from okx_loan_exporter.server import ExporterHTTPServer
from okx_loan_exporter.web import create_app
from okx_loan_exporter.webconfig import WebConfigWatcher


def main(argv: list[str]) -> int:
    config_file, port = argv
    # The config loader refuses a TTL under 0.5 s, as it should; the benchmark goes around it.
    config = dataclasses.replace(load_config(config_file), cache_ttl=0.0)
    exporter = Exporter(config)
    watcher = WebConfigWatcher(None)
    server = ExporterHTTPServer(create_app(exporter, watcher), f"127.0.0.1:{port}", watcher)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start_background()
    stop.wait()
    server.shutdown()
    exporter.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
