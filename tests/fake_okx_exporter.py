"""An Exporter over a fake OKX that counts the paths asked, with a clock the test moves, and a
way to call its WSGI app: for the tests of what happens between scrapes (the tick, rendering
ahead)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from okx_loan_exporter.config import ExporterConfig, config_from_dict
from okx_loan_exporter.exporter import Exporter

DOCS_EXAMPLE = json.loads(
    (Path(__file__).parent / "data" / "loan_info_docs_example.json").read_text()
)
EMPTY_PAGE = {"code": "0", "msg": "", "data": []}


class Clock:
    """A wall clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def fake_config(names: Sequence[str], **settings: str) -> ExporterConfig:
    """A config of accounts ``names`` (API key ``key-<name>``) at https://okx.test, with
    ``cache_ttl: 1h`` and ``max_stale: 2h`` unless ``settings`` say otherwise."""
    return config_from_dict(
        {
            "base_url": "https://okx.test",
            "cache_ttl": "1h",
            "max_stale": "2h",
            **settings,
            "accounts": [
                {"name": name, "api_key": f"key-{name}", "secret_key": "s", "passphrase": "p"}
                for name in names
            ],
        },
        "test.yml",
        {},
    )


def exporter_over_fake_okx(
    clock: Clock, paths: Counter[str], names: Sequence[str] = ("a",)
) -> Exporter:
    """Accounts ``names`` with ``cache_ttl: 1h`` and loan-history every minute (the other
    secondary endpoints and prices off); OKX answers the docs example to loan-info and an empty
    page to the rest, and counts each request in ``paths`` by the path's last part."""

    def okx(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        paths[name] += 1
        return httpx.Response(200, json=DOCS_EXAMPLE if name == "loan-info" else EMPTY_PAGE)

    config = fake_config(
        names,
        history_interval="1m",
        interest_interval="0s",
        headroom_interval="0s",
        price_interval="0s",
    )
    return Exporter(config, clock=clock, transport=httpx.MockTransport(okx))


def get_metrics(app: Any, environ: dict[str, str] | None = None) -> bytes:
    """Call the WSGI ``app`` for ``GET /metrics`` (plus ``environ``); the body, after a 200."""
    statuses: list[str] = []
    body = b"".join(
        app(
            {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET", **(environ or {})},
            lambda status, headers: statuses.append(status),
        )
    )
    assert statuses == ["200 OK"]
    return body
