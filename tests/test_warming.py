"""Rendering ahead of scrapes (RenderWarmer): what changed between scrapes is rendered before the
next one, only while scrapes are answered from the caches, and never while a scrape that
refreshed accounts is being answered."""

from __future__ import annotations

import gzip
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from okx_loan_exporter import exposition as exposition_module
from okx_loan_exporter.exporter import Exporter
from okx_loan_exporter.exposition import Exposition
from okx_loan_exporter.warming import RenderWarmer
from okx_loan_exporter.web import create_app
from tests.fake_okx_exporter import Clock, exporter_over_fake_okx, get_metrics
from tests.processes import wait_for

GZIP = {"HTTP_ACCEPT_ENCODING": "gzip"}


@dataclass
class Setup:
    clock: Clock
    paths: Counter[str]
    """Requests made to the fake OKX, by the path's last part."""
    exporter: Exporter
    exposition: Exposition
    app: Any
    rendered: list[str]
    """The accounts whose lines were rendered, one entry per rendering."""


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Three accounts with loan-history every minute; counts of the accounts rendered."""
    clock = Clock()
    paths: Counter[str] = Counter()
    rendered: list[str] = []
    real_cut = exposition_module._cut

    def counting_cut(snapshot: Any, *args: Any) -> Any:
        rendered.append(snapshot.name)
        return real_cut(snapshot, *args)

    monkeypatch.setattr(exposition_module, "_cut", counting_cut)
    exporter = exporter_over_fake_okx(clock, paths, ("a", "b", "c"))
    exposition = Exposition("test")
    app = create_app(exporter, exposition=exposition)
    try:
        yield Setup(clock, paths, exporter, exposition, app, rendered)
    finally:
        exporter.close()


def loan_lines(body: bytes) -> list[bytes]:
    """The lines of a gzipped body but the process metrics (they move between scrapes)."""
    return [line for line in gzip.decompress(body).splitlines() if b"process_" not in line]


def test_what_changed_between_scrapes_is_rendered_before_the_next(setup: Setup):
    warmer = RenderWarmer(setup.exporter, setup.exposition)
    get_metrics(setup.app, GZIP)  # refreshes loan-info: renders every account
    wait_for("the first loan-history requests", lambda: setup.paths["loan-history"] == 3, 5)
    get_metrics(setup.app, GZIP)  # answered from the caches; the loan-history counts changed them
    setup.rendered.clear()

    setup.clock.now += 61  # every account's loan-history is due again
    wait_for("the second loan-history requests", lambda: setup.paths["loan-history"] == 6, 5)
    assert warmer.warm()
    assert sorted(setup.rendered) == ["a", "b", "c"]  # the changed accounts, once each
    setup.rendered.clear()
    warmed = get_metrics(setup.app, GZIP)
    assert setup.rendered == []  # the scrape found them rendered (and compressed)

    fresh = Exposition("test").answer(setup.exporter.snapshots(), None, "gzip")[0]
    assert loan_lines(warmed) == loan_lines(fresh)
    assert b'okx_loan_api_requests_total{account="a",endpoint="loan_history"} 2.0' in (
        gzip.decompress(warmed)
    )


def test_nothing_is_warmed_unless_scrapes_are_answered_from_the_caches(setup: Setup):
    warmer = RenderWarmer(setup.exporter, setup.exposition)
    assert not warmer.warm()  # never scraped
    get_metrics(setup.app)  # this scrape refreshed loan-info: it was not answered from the caches
    assert not warmer.warm()
    get_metrics(setup.app)
    assert warmer.warm()
    setup.clock.now += 2 * 3600 + 1  # nobody scraped for longer than max_stale
    assert not warmer.warm()


def test_nothing_is_warmed_while_a_refreshing_scrape_is_answered(setup: Setup):
    warmer = RenderWarmer(setup.exporter, setup.exposition)
    get_metrics(setup.app)
    get_metrics(setup.app)
    with setup.exporter.answering():
        setup.clock.now += 3601  # loan-info due: this scrape refreshes
        setup.exporter.scrape()
        assert not warmer.warm()
    assert warmer.warm()


def test_the_thread_warms_every_interval_and_stops(setup: Setup):
    get_metrics(setup.app)
    get_metrics(setup.app)
    warmer = RenderWarmer(setup.exporter, setup.exposition, interval=0.05)
    setup.rendered.clear()
    warmer.start()
    try:
        setup.clock.now += 61
        wait_for("warmed by the thread", lambda: sorted(set(setup.rendered)) == ["a", "b", "c"], 5)
    finally:
        warmer.stop()
    assert not warmer._thread.is_alive()


def test_an_error_while_warming_is_logged_once_and_scrapes_go_on(
    setup: Setup, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    get_metrics(setup.app)
    get_metrics(setup.app)

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(setup.exposition, "warm", broken)
    warmer = RenderWarmer(setup.exporter, setup.exposition, interval=0.02)
    warmer.start()
    try:
        time.sleep(0.3)  # about 15 failing rounds
    finally:
        warmer.stop()
    errors = [record for record in caplog.records if "rendering ahead" in record.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert b"okx_loan_up" in get_metrics(setup.app)
