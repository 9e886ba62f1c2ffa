"""Reloading the configuration in-process: what Exporter.apply keeps, what a bad file changes
(nothing), the reload metrics and the ``/-/reload`` endpoint."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from okx_loan_exporter import __version__
from okx_loan_exporter.config import load_config
from okx_loan_exporter.exporter import Exporter
from okx_loan_exporter.exposition import Exposition
from okx_loan_exporter.reload import Reloader, ReloadFailed
from okx_loan_exporter.web import create_app
from okx_loan_exporter.webconfig import WebConfigWatcher

DOCS_EXAMPLE = json.loads(
    (Path(__file__).parent / "data" / "loan_info_docs_example.json").read_text()
)


INDEX_TICKERS = {
    "code": "0",
    "msg": "",
    "data": [
        {"instId": f"{currency}-USDT", "idxPx": price}
        for currency, price in {"BTC": "60000", "COMP": "45", "DOT": "6.5", "LUNA": "0.5"}.items()
    ]
    + [{"instId": "STX-USDT", "idxPx": "1.889936513"}],
}


class CountingOkx:
    """An httpx transport answering loan-info (counted per API key) and index-tickers (counted
    per host); the other endpoints have their own tests."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.index_requests: Counter[str] = Counter()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/index-tickers"):
            self.index_requests[request.url.host] += 1
            return httpx.Response(200, json=INDEX_TICKERS)
        if request.url.path.endswith("/loan-info"):
            self.requests[request.headers["OK-ACCESS-KEY"]] += 1
        return httpx.Response(200, json=DOCS_EXAMPLE)


def account(name: str, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "api_key": f"key-{name}-0123",
        "secret_key": f"secret-{name}-0123",
        "passphrase": f"pass-{name}",
        **extra,
    }


def write_config(path: Path, *accounts: dict[str, object], **settings: object) -> None:
    document = {"base_url": "https://okx.test", "cache_ttl": "1h", "max_stale": "2h", **settings}
    document["accounts"] = list(accounts)
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    path.chmod(0o600)


class Running:
    """An exporter from a config file, its reloader and its app, answering from CountingOkx."""

    def __init__(self, tmp_path: Path, web_config: Path | None = None) -> None:
        self.config_file = tmp_path / "config.yml"
        self.okx = CountingOkx()
        self.exporter = Exporter(
            load_config(str(self.config_file)), transport=httpx.MockTransport(self.okx)
        )
        self.watcher = WebConfigWatcher(str(web_config) if web_config else None)
        self.now = 1_700_000_000.0
        self.applied = 0
        """Calls of the reloader's ``after_apply``."""

        def count_applied() -> None:
            self.applied += 1

        self.reloader = Reloader(
            self.exporter,
            self.watcher,
            str(self.config_file),
            clock=lambda: self.now,
            after_apply=count_applied,
        )
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.reloader)
        app = create_app(
            self.exporter,
            self.watcher,
            exposition=Exposition(__version__, registry),
            reloader=self.reloader,
        )
        self.http = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://e")

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = self.http.get("/metrics")
        assert response.status_code == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def up(self) -> dict[str, float]:
        return {
            dict(labels)["account"]: value
            for (name, labels), value in self.scrape().items()
            if name == "okx_loan_up"
        }

    def close(self) -> None:
        self.http.close()
        self.exporter.close()


@pytest.fixture
def running(tmp_path):
    write_config(tmp_path / "config.yml", account("kept"), account("changed"), account("gone"))
    running = Running(tmp_path)
    yield running
    running.close()


def test_unchanged_accounts_keep_cache_and_counters_others_start_afresh(running):
    assert running.up() == {"kept": 1, "changed": 1, "gone": 1}
    kept_cache = running.exporter.cache.accounts[0]
    write_config(
        running.config_file,
        account("kept"),
        account("changed", passphrase="pass-changed-2"),
        account("added"),
    )
    summary = running.reloader.reload()
    assert "added: added; removed: gone; changed: changed; unchanged: kept" in summary
    assert "restart" in summary  # flags such as the listen address need one
    assert running.up() == {"kept": 1, "changed": 1, "added": 1}
    assert running.exporter.cache.accounts[0] is kept_cache
    assert running.okx.requests == {
        "key-kept-0123": 1,  # no extra request: the cached answer is still served
        "key-changed-0123": 2,
        "key-gone-0123": 1,
        "key-added-0123": 1,
    }
    samples = running.scrape()
    assert not any(dict(labels).get("account") == "gone" for _, labels in samples)
    assert (
        samples[("okx_loan_api_requests_total", (("account", "kept"), ("endpoint", "loan_info")))]
        == 1
    )


def test_a_changed_global_setting_restarts_every_account(running):
    running.up()
    write_config(
        running.config_file, account("kept"), account("changed"), account("gone"), timeout="3s"
    )
    assert "changed: kept, changed, gone" in running.reloader.reload()
    running.up()
    assert set(running.okx.requests.values()) == {2}
    assert running.exporter.config.timeout == 3.0


def index_feeds(running: Running) -> dict[str, float]:
    """index-tickers requests per base_url label, from a scrape."""
    return {
        dict(labels)["base_url"]: value
        for (name, labels), value in running.scrape().items()
        if name == "okx_loan_public_api_requests_total"
    }


def test_price_feeds_follow_the_base_urls_the_accounts_use(running):
    """A reload keeps the feed of a base URL still in use (its prices and counter), adds one for
    a new base URL and drops the one no account uses any more; a changed price_interval rebuilds
    them, and price_interval 0s removes them."""
    other = {"base_url": "https://okx-b.test"}
    write_config(running.config_file, account("kept"), account("moved", **other))
    running.reloader.reload()
    assert index_feeds(running) == {"https://okx.test": 1, "https://okx-b.test": 1}
    comp = ("okx_loan_index_price", (("currency", "COMP"), ("quote", "USDT")))
    assert running.scrape()[comp] == 45  # the docs example's collateral, priced
    kept_feed = running.exporter.cache.prices.feeds["https://okx.test"]
    kept_client = running.exporter._feeds["https://okx.test"][1]
    dropped_client = running.exporter._feeds["https://okx-b.test"][1]

    third = {"base_url": "https://okx-c.test"}
    write_config(running.config_file, account("kept"), account("moved", **third))
    assert "changed: moved; unchanged: kept" in running.reloader.reload()
    feeds = running.exporter.cache.prices.feeds
    assert list(feeds) == ["https://okx.test", "https://okx-c.test"]
    assert feeds["https://okx.test"] is kept_feed
    deadline = time.monotonic() + 5
    while not dropped_client.is_closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dropped_client.is_closed and not kept_client.is_closed
    assert index_feeds(running) == {"https://okx.test": 1, "https://okx-c.test": 1}
    assert running.okx.index_requests == {"okx.test": 1, "okx-b.test": 1, "okx-c.test": 1}

    write_config(
        running.config_file, account("kept"), account("moved", **third), price_interval="2h"
    )
    assert "changed: kept, moved" in running.reloader.reload()
    feeds = running.exporter.cache.prices.feeds
    assert feeds["https://okx.test"] is not kept_feed
    assert index_feeds(running) == {"https://okx.test": 1, "https://okx-c.test": 1}
    assert running.okx.index_requests == {"okx.test": 2, "okx-b.test": 1, "okx-c.test": 2}

    write_config(
        running.config_file, account("kept"), account("moved", **third), price_interval="0s"
    )
    running.reloader.reload()
    assert running.exporter.cache.prices is None
    assert index_feeds(running) == {}
    assert running.exporter._feeds == {}


def test_a_bad_file_changes_nothing_and_sets_the_reload_metrics(running, caplog):
    running.up()
    good = running.config_file.read_text(encoding="utf-8")
    running.config_file.write_text(
        good.replace("cache_ttl: 1h", "cache_ttl: soon").replace("name: gone", "name: g o n e"),
        encoding="utf-8",
    )
    with pytest.raises(ReloadFailed) as failed:
        running.reloader.reload()
    assert len(failed.value.lines) == 2  # every problem, one line each, as at start
    with pytest.raises(Exception) as at_start:
        load_config(str(running.config_file))
    assert failed.value.lines == at_start.value.lines
    for line in failed.value.lines:
        assert line in caplog.text
    assert running.applied == 0
    assert running.up() == {"kept": 1, "changed": 1, "gone": 1}
    assert sum(running.okx.requests.values()) == 3  # still the old accounts, still cached
    samples = running.scrape()
    assert samples[("okx_loan_exporter_config_last_reload_successful", ())] == 0
    started = samples[("okx_loan_exporter_config_last_reload_success_timestamp_seconds", ())]
    assert started == 1_700_000_000.0
    running.config_file.write_text(good, encoding="utf-8")
    running.now += 60
    running.reloader.reload()
    assert running.applied == 1  # after_apply (the cli's freeze of long-lived objects) ran
    samples = running.scrape()
    assert samples[("okx_loan_exporter_config_last_reload_successful", ())] == 1
    assert samples[
        ("okx_loan_exporter_config_last_reload_success_timestamp_seconds", ())
    ] == pytest.approx(1_700_000_060.0)


def test_reload_endpoint_answers_post_only_200_or_500_with_the_problems(running):
    assert running.http.get("/-/reload").status_code == 405
    assert running.http.head("/-/reload").status_code == 405
    answer = running.http.post("/-/reload")
    assert answer.status_code == 200
    assert answer.text.startswith("configuration reloaded: 3 account(s)")
    running.config_file.write_text("accounts: [", encoding="utf-8")
    answer = running.http.post("/-/reload")
    assert answer.status_code == 500
    assert answer.text.startswith("reload failed:\n")
    assert str(running.config_file) in answer.text
    assert running.up() == {"kept": 1, "changed": 1, "gone": 1}


def test_a_bad_web_config_changes_nothing_either(tmp_path):
    web_config = tmp_path / "web.yml"
    web_config.write_text("basic_auth_users: {}\n", encoding="utf-8")
    write_config(tmp_path / "config.yml", account("kept"))
    running = Running(tmp_path, web_config)
    try:
        running.up()
        write_config(running.config_file, account("kept"), account("added"))
        web_config.write_text("basic_auth_users: [\n", encoding="utf-8")
        answer = running.http.post("/-/reload")
        assert answer.status_code == 500
        assert f"web config file {web_config}" in answer.text
        assert running.up() == {"kept": 1}  # the good config file was not applied alone
    finally:
        running.close()


def test_secrets_never_appear_in_reload_answers_or_logs(running, caplog):
    write_config(
        running.config_file,
        account("kept", passphrase="s3cr3t-passphrase-XYZ"),
        account("kept", api_key="s3cr3t-api-key-XYZ"),  # a duplicate name: refused
    )
    answer = running.http.post("/-/reload")
    assert answer.status_code == 500
    for text in (answer.text, caplog.text):
        assert "s3cr3t" not in text
