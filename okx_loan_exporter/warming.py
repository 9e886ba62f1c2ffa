"""Keeps the ``/metrics`` render cache current between scrapes, on a thread of its own.

A scrape that need not wait for OKX should only assemble its answer from cached text. But the
secondary endpoints' answers land between scrapes (at 1,000 accounts, about 400 accounts change
in 15 s), and the first scrape after a pause rendered and compressed all of them again: 0.3 s,
against about 25 ms for the others. Once a second, :class:`RenderWarmer` renders what changed, in
the formats scrapers asked for, so that such a scrape finds it done.

It works only while scrapes are answered from the caches (for ``max_stale`` after the latest
one): when every scrape refreshes loan-info (one Prometheus, ``cache_ttl`` shorter than its
interval), each renders every account anyway, and warming would only add CPU. It also stands
aside while a scrape that refreshed accounts is being answered: that scrape renders itself.
"""

from __future__ import annotations

import logging
import threading
import time

from okx_loan_exporter.exporter import Exporter
from okx_loan_exporter.exposition import Exposition

log = logging.getLogger(__name__)

WARM_INTERVAL = 1.0
"""Seconds between two renderings ahead of scrapes."""


class RenderWarmer:
    """Renders the exporter's changed accounts ahead of scrapes, every ``interval`` seconds."""

    def __init__(
        self, exporter: Exporter, exposition: Exposition, *, interval: float = WARM_INTERVAL
    ) -> None:
        self._exporter = exporter
        self._exposition = exposition
        self._interval = interval
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="render-warmer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def warm(self) -> bool:
        """Render ahead once if scrapes are answered from the caches; True if it did."""
        exporter = self._exporter
        window = exporter.config.max_stale
        if exporter.refreshing() or not exporter.answered_from_caches_within(window):
            return False
        self._exposition.warm(exporter.snapshots(), since=time.monotonic() - window)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.warm()
            except Exception:  # a bug must not stop the warming, nor the scrapes: say so, once
                if not self._failing:
                    log.exception(
                        "unexpected error while rendering ahead of scrapes; scrapes render "
                        "for themselves until it passes"
                    )
                self._failing = True
            else:
                self._failing = False
