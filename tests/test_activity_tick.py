"""The exporter's once-a-second tick: due secondary fetches start between scrapes, while the
exporter is scraped (for max_stale after a scrape), and not once nobody scrapes it."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import httpx

from okx_loan_exporter.config import config_from_dict
from okx_loan_exporter.exporter import ACTIVITY_TICK, Exporter
from tests.processes import wait_for

DOCS_EXAMPLE = json.loads(
    (Path(__file__).parent / "data" / "loan_info_docs_example.json").read_text()
)
EMPTY_PAGE = {"code": "0", "msg": "", "data": []}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_due_fetches_start_between_scrapes_only_while_the_exporter_is_scraped():
    clock = Clock()
    paths: Counter[str] = Counter()

    def okx(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        paths[name] += 1
        return httpx.Response(200, json=DOCS_EXAMPLE if name == "loan-info" else EMPTY_PAGE)

    config = config_from_dict(
        {
            "base_url": "https://okx.test",
            "cache_ttl": "1h",
            "max_stale": "2h",
            "history_interval": "1m",
            "interest_interval": "0s",
            "headroom_interval": "0s",
            "price_interval": "0s",
            "accounts": [{"name": "a", "api_key": "k", "secret_key": "s", "passphrase": "p"}],
        },
        "test.yml",
        {},
    )
    exporter = Exporter(config, clock=clock, transport=httpx.MockTransport(okx))
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
