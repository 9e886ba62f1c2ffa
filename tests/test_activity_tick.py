"""The exporter's once-a-second tick: due secondary fetches start between scrapes, while the
exporter is scraped (for max_stale after a scrape), and not once nobody scrapes it; never while a
scrape that refreshed accounts is being answered, for at most MAX_TICK_DEFERRAL."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import pytest

from okx_loan_exporter import exporter as exporter_module
from okx_loan_exporter.cache import AccountSnapshot
from okx_loan_exporter.exporter import ACTIVITY_TICK
from okx_loan_exporter.exposition import Exposition, Headers
from okx_loan_exporter.web import create_app
from tests.fake_okx_exporter import Clock, exporter_over_fake_okx, get_metrics
from tests.processes import wait_for


def test_due_fetches_start_between_scrapes_only_while_the_exporter_is_scraped():
    clock = Clock()
    paths: Counter[str] = Counter()
    exporter = exporter_over_fake_okx(clock, paths)
    try:
        exporter.scrape()
        wait_for("the first loan-history request", lambda: paths["loan-history"] == 1, 5)
        assert paths["loan-info"] == 1

        clock.now += 60  # the second loan-history is due (the account's phase is at most 1)
        wait_for("a loan-history request with no scrape", lambda: paths["loan-history"] == 2, 5)
        assert paths["loan-info"] == 1  # loan-info is only ever asked by a scrape

        clock.now += 2 * 3600 + 60  # due again, but nobody scraped for longer than max_stale
        time.sleep(3 * ACTIVITY_TICK)
        assert paths["loan-history"] == 2

        exporter.scrape()  # scraped again: the scrape itself starts it
        wait_for("loan-history after the scrape", lambda: paths["loan-history"] == 3, 5)
        clock.now += 60
        wait_for("and the tick goes on", lambda: paths["loan-history"] == 4, 5)
    finally:
        exporter.close()


class SlowExposition(Exposition):
    """Renders like the real one after three ticks, noting the loan-history requests made by
    then."""

    def __init__(self, paths: Counter[str]) -> None:
        super().__init__("test")
        self.paths = paths
        self.seen_while_answering: list[int] = []

    def answer(
        self, snapshots: Sequence[AccountSnapshot], accept: str | None, encoding: str | None
    ) -> tuple[bytes, Headers]:
        time.sleep(3 * ACTIVITY_TICK)
        self.seen_while_answering.append(self.paths["loan-history"])
        return super().answer(snapshots, accept, encoding)


def test_no_secondary_fetch_starts_while_a_refreshing_scrape_is_answered():
    clock = Clock()
    paths: Counter[str] = Counter()
    exporter = exporter_over_fake_okx(clock, paths)
    exposition = SlowExposition(paths)
    try:
        app = create_app(exporter, exposition=exposition)
        assert b"okx_loan_up" in get_metrics(
            app
        )  # refreshes loan-info; loan-history is due at once, but waits
        assert exposition.seen_while_answering == [0]
        assert not exporter.refreshing()
        wait_for("loan-history once the answer is sent", lambda: paths["loan-history"] == 1, 5)

        clock.now += 60  # loan-history due again; this scrape refreshes nothing: no holding back
        assert b"okx_loan_up" in get_metrics(app)
        assert exposition.seen_while_answering[-1] == 2
        assert paths["loan-info"] == 1
    finally:
        exporter.close()


def test_the_tick_holds_back_for_at_most_max_tick_deferral(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(exporter_module, "MAX_TICK_DEFERRAL", 2 * ACTIVITY_TICK)
    clock = Clock()
    paths: Counter[str] = Counter()
    exporter = exporter_over_fake_okx(clock, paths)
    try:
        with exporter.answering():
            exporter.scrape()
            assert exporter.refreshing()
            # Scrapers that keep refreshing accounts must not starve the secondary endpoints.
            wait_for("loan-history despite the answer", lambda: paths["loan-history"] == 1, 5)
        assert not exporter.refreshing()
    finally:
        exporter.close()
