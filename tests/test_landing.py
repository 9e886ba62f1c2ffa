"""The landing page's HTML, parsed back with html.parser: rows per order, states, escaping, refresh.

Snapshots come from a real :class:`AccountCache` fed positions and :class:`OkxError`\\ s, so the
reason and hint on the page are the ones the cache keeps from a failed fetch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from price_scenarios import MIXED

from okx_loan_exporter.cache import AccountCache, AccountSnapshot
from okx_loan_exporter.landing import (
    LIQUIDATION_ZONE_FRACTION,
    MARGIN_CALL_WARNING_FRACTION,
    render_landing_page,
)
from okx_loan_exporter.okx import HINTS, FailureReason, OkxError
from okx_loan_exporter.position import NO_LOAN, Order, Position
from okx_loan_exporter.pricefeed import PriceSnapshot
from okx_loan_exporter.prices import IndexPrices
from okx_loan_exporter.stats import RequestStats

NOW = 1_700_000_000.0
RULES = Path(__file__).resolve().parents[1] / "examples" / "prometheus" / "rules.yml"
HEADERS = [
    "Account",
    "Order",
    "Status",
    "LTV",
    "Margin-call LTV",
    "Headroom to margin call",
    "Liquidation LTV",
    "Headroom to liquidation",
    "Smallest drop to liquidation",
    "Data age",
]


# --------------------------------------------------------------------------------------------------
# Parsing the page


@dataclass
class Cell:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    badge: dict[str, str] | None = None
    """The attributes of the status badge (span.badge) inside the cell, if any."""
    badge_text: str = ""


@dataclass
class Row:
    attrs: dict[str, str]
    cells: list[Cell] = field(default_factory=list)

    def by_header(self) -> dict[str, str]:
        """{header: text}; a cell spanning columns is under its first header, ``message``."""
        found: dict[str, str] = {}
        column = 0
        for cell in self.cells:
            span = int(cell.attrs.get("colspan", "1"))
            if span > 1:
                found["message"] = cell.text
            else:
                found[HEADERS[column]] = cell.text
            column += span
        assert column == len(HEADERS), f"row spans {column} columns: {self.cells}"
        return found

    @property
    def status(self) -> Cell:
        (cell,) = [cell for cell in self.cells if cell.badge is not None]
        return cell


class PageParser(HTMLParser):
    """Collects the meta tags, links, the table's headers and rows, and every element's tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.metas: list[dict[str, str]] = []
        self.headers: list[str] = []
        self.rows: list[Row] = []
        self.tags: list[str] = []
        self.table_body_tags: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self._section = ""
        self._cell: Cell | None = None
        self._in_badge = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.tags.append(tag)
        if self._section == "tbody":
            self.table_body_tags.append(tag)
        if tag == "meta":
            self.metas.append(attributes)
        elif tag == "a":
            self.links.append(attributes.get("href", ""))
        elif tag == "br" and self._cell is not None:
            self._cell.text += "\n"  # a line break, as a browser shows it
        elif tag in ("thead", "tbody"):
            self._section = tag
        elif tag == "tr" and self._section == "tbody":
            self.rows.append(Row(attributes))
        elif tag in ("th", "td"):
            self._cell = Cell(tag, attributes)
        elif tag == "span" and "badge" in attributes.get("class", "").split():
            assert self._cell is not None
            self._cell.badge = attributes
            self._in_badge = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None:
            self._cell.text = " ".join(self._cell.text.split())
            if self._section == "thead":
                self.headers.append(self._cell.text)
            elif self._section == "tbody":
                self.rows[-1].cells.append(self._cell)
            self._cell = None
        elif tag == "span":
            self._in_badge = False
        elif tag in ("thead", "tbody"):
            self._section = ""

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.text += data
            if self._in_badge:
                self._cell.badge_text += data


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert parser.headers == HEADERS
    return parser


def render(*snapshots: AccountSnapshot, cache_ttl: float = 10.0) -> PageParser:
    return parse(render_landing_page(snapshots, now=NOW, cache_ttl=cache_ttl, version="1.2.3"))


def table(page: PageParser) -> list[dict[str, str]]:
    return [row.by_header() for row in page.rows]


# --------------------------------------------------------------------------------------------------
# Snapshots, made by the real cache


class Source:
    """Answers loan-info from a script of positions and OkxErrors, one per fetch."""

    clock_offset = 0.0

    def __init__(self, results: list[Position | Exception]) -> None:
        self.results = results

    async def loan_info(self) -> Position:
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def snapshot_after(
    *results: Position | Exception, name: str = "main", age: float = 4.0, max_stale: float = 300.0
) -> AccountSnapshot:
    """The snapshot of account ``name`` after one fetch per result, the last ``age`` s ago."""
    clock = [NOW - age - len(results)]
    cache = AccountCache(
        name, Source(list(results)), ttl=1.0, max_stale=max_stale, clock=lambda: clock[0]
    )

    async def fetch_all() -> None:
        for index in range(len(results)):
            clock[0] = NOW - age - len(results) + index + 1
            task = cache.fetch_if_due()
            assert task is not None
            await task

    asyncio.run(fetch_all())
    clock[0] = NOW
    return cache.snapshot()


def never_fetched(name: str = "fresh") -> AccountSnapshot:
    cache = AccountCache(name, Source([]), ttl=1.0, max_stale=300.0, clock=lambda: NOW)
    return cache.snapshot()


def order(order_id: str = "1001", ltv: float | None = 0.5, mc=0.7, liq=0.8) -> Order:
    return Order(order_id, current_ltv=ltv, margin_call_ltv=mc, liquidation_ltv=liq)


def loan(*orders: Order) -> Position:
    return Position(tuple(orders))


def bad_signature() -> OkxError:
    return OkxError(
        FailureReason.AUTH,
        "OKX code 50113 (Invalid Sign), HTTP 401",
        HINTS["50113"],
        code="50113",
    )


# --------------------------------------------------------------------------------------------------
# Tests


def test_the_fractions_are_the_alert_rules_ones():
    records = {
        rule["record"]: rule["expr"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    assert records["okx_loan:margin_call_warning_fraction"] == (
        f"vector({MARGIN_CALL_WARNING_FRACTION})"
    )
    assert records["okx_loan:liquidation_critical_fraction"] == (
        f"vector({LIQUIDATION_ZONE_FRACTION})"
    )


@pytest.mark.parametrize(
    ("ltv", "status", "css"),
    [
        (0.5, "OK", "ok"),
        (0.6299, "OK", "ok"),
        (
            0.63,
            "Warning",
            "warning",
        ),  # 90 % of the margin-call LTV 0.7, as OkxLoanMarginCallWarning
        (0.6999, "Warning", "warning"),
        (0.7, "Margin call", "margin-call"),
        (0.7599, "Margin call", "margin-call"),
        (0.76, "Liquidation zone", "liquidation"),  # 95 % of the liquidation LTV 0.8
        (0.8, "Liquidation zone", "liquidation"),
        (0.93, "Liquidation zone", "liquidation"),
    ],
)
def test_status_follows_the_alert_thresholds(ltv, status, css):
    page = render(snapshot_after(loan(order("7", ltv))))
    (row,) = page.rows
    assert row.status.badge_text == status
    assert row.status.badge is not None and css in row.status.badge["class"].split()
    assert css in row.attrs["class"].split()


def test_one_row_per_order_with_values_headroom_and_age():
    position = loan(order("2001", 0.5742, 0.7374, 0.8374), order("2002", 0.72, 0.7, 0.8))
    page = render(snapshot_after(position, name="two-orders", age=65))
    assert table(page) == [
        {
            "Account": "two-orders",
            "Order": "2001",
            "Status": "OK",
            "LTV": "57.42 %",
            "Margin-call LTV": "73.74 %",
            "Headroom to margin call": "16.32 pp",
            "Liquidation LTV": "83.74 %",
            "Headroom to liquidation": "26.32 pp",
            "Smallest drop to liquidation": "\N{EM DASH}",  # no index prices here
            "Data age": "1 min 5 s",
        },
        {
            "Account": "two-orders",
            "Order": "2002",
            "Status": "Margin call",
            "LTV": "72.00 %",
            "Margin-call LTV": "70.00 %",
            "Headroom to margin call": "-2.00 pp",
            "Liquidation LTV": "80.00 %",
            "Headroom to liquidation": "8.00 pp",
            "Smallest drop to liquidation": "\N{EM DASH}",
            "Data age": "1 min 5 s",
        },
    ]
    assert "1 margin call" in "".join(page.text)


def test_order_without_ord_id_shows_a_dash():
    page = render(snapshot_after(loan(order("", 0.45))))
    (row,) = table(page)
    assert row["Order"] == "\N{EM DASH}"
    assert row["LTV"] == "45.00 %"


def test_account_without_loan_gets_one_row_saying_so():
    page = render(snapshot_after(NO_LOAN, name="no-loan"))
    (row,) = page.rows
    assert row.status.badge_text == "No loan"
    assert row.by_header()["message"].startswith("no loan")
    assert row.by_header()["Data age"] == "4 s"


def test_account_never_fetched_says_so():
    page = render(never_fetched())
    (row,) = page.rows
    assert row.status.badge_text == "Not fetched yet"
    assert "/metrics" in row.by_header()["message"]
    assert row.by_header()["Data age"] == "never"


def test_failing_account_shows_reason_detail_and_hint_once():
    page = render(snapshot_after(bad_signature(), name="broken"))
    (row,) = page.rows
    assert row.status.badge_text == "OKX error"
    assert row.status.badge is not None and "failing" in row.status.badge["class"].split()
    message = row.by_header()["message"]
    assert message == (
        "auth: OKX code 50113 (Invalid Sign), HTTP 401 "
        "What to do: invalid signature: the secret key is wrong"
    )
    assert message.count(HINTS["50113"]) == 1
    assert row.by_header()["Data age"] == "never"


def test_failing_account_keeps_its_orders_and_adds_the_failure():
    timeout = OkxError(FailureReason.TIMEOUT, "no answer within 5s", "check the network path")
    page = render(snapshot_after(loan(order("1", 0.66)), timeout, age=3))
    rows = table(page)
    assert [(row["Order"], row["Status"]) for row in rows] == [
        ("1", "Warning"),
        ("\N{EM DASH}", "OKX error"),
    ]
    assert rows[1]["message"] == ("timeout: no answer within 5s What to do: check the network path")
    assert rows[0]["Data age"] == "4 s"  # the kept values' age: the failure came later
    assert "1 account failing" in "".join(page.text)


def test_unexpected_error_is_shown_as_an_exporter_bug():
    page = render(snapshot_after(RuntimeError("boom")))
    (row,) = page.rows
    assert row.by_header()["message"].startswith(
        "invalid_response: unexpected error while reading the answer What to do: an exporter bug"
    )
    assert "boom" not in "".join(page.text)


def test_values_older_than_max_stale_are_not_shown():
    page = render(snapshot_after(loan(order("1", 0.5)), age=400, max_stale=300))
    (row,) = page.rows
    assert row.status.badge_text == "Stale"
    assert "max_stale" in row.by_header()["message"]
    assert row.by_header()["Data age"] == "6 min 40 s"


@pytest.mark.parametrize(
    ("values", "status"),
    [
        ((None, 0.7, 0.8), "Unknown"),
        ((0.5, None, 0.8), "Unknown"),
        ((0.5, 0.7, None), "Unknown"),
        ((0.78, None, 0.8), "Liquidation zone"),
        ((0.71, 0.7, None), "Margin call"),
    ],
)
def test_missing_values_never_look_ok(values, status):
    ltv, mc, liq = values
    page = render(snapshot_after(loan(order("1", ltv, mc, liq))))
    (row,) = page.rows
    assert row.status.badge_text == status
    assert "\N{EM DASH}" in row.by_header().values()


def test_everything_is_escaped():
    name = '<script>alert("a")</script>&'
    order_id = '"><img src=x onerror=alert(1)>'
    error = OkxError(FailureReason.API_ERROR, "OKX code 5 (<b>msg</b>)", "<i>hint</i> & more")
    page = render(snapshot_after(loan(order(order_id, 0.5)), error, name=name))
    assert "script" not in page.tags and "img" not in page.tags
    assert {"b", "i"}.isdisjoint(page.table_body_tags)
    rows = table(page)
    assert rows[0]["Account"] == name and rows[0]["Order"] == order_id
    assert rows[1]["message"] == "api_error: OKX code 5 (<b>msg</b>) What to do: <i>hint</i> & more"


def test_page_refreshes_itself_about_once_per_cache_ttl():
    def refresh(cache_ttl: float) -> str:
        page = render(never_fetched(), cache_ttl=cache_ttl)
        (meta,) = [meta for meta in page.metas if meta.get("http-equiv") == "refresh"]
        return meta["content"]

    assert refresh(10) == "10"
    assert refresh(0.5) == "5"
    assert refresh(3600) == "60"


def test_summary_counts_states_and_failing_accounts():
    page = render(
        snapshot_after(loan(order("1", 0.5), order("2", 0.65), order("3", 0.78)), name="a"),
        snapshot_after(bad_signature(), name="b"),
        snapshot_after(NO_LOAN, name="c"),
    )
    summary = re.sub(r"\s+", " ", "".join(page.text))
    assert "3 accounts, 3 loan orders: 1 liquidation zone, 1 warning, 1 account failing." in summary


def test_page_links_the_endpoints_and_says_its_version():
    page = render(never_fetched())
    assert page.links == ["metrics", "-/healthy", "-/ready"]  # relative: works behind a prefix
    assert "Version 1.2.3" in " ".join("".join(page.text).split())


def test_smallest_drop_to_liquidation_per_order_from_index_prices():
    mixed = MIXED
    hedged = Order("9", 30000.0, 120000.0, 0.25, 0.7, 0.8, {"BTC": 0.5}, {"BTC": 1.0, "ETH": 20.0})
    unpriced = Order("11", 50.0, 100.0, 0.5, 0.7, 0.8, {"USDT": 50.0}, {"DOGE": 1000.0})
    prices = IndexPrices("USDT", {"BTC": 60000.0, "ETH": 3000.0, "SOL": 150.0})
    feed = PriceSnapshot("http://okx", prices, NOW, None, RequestStats().snapshot())
    snapshot = dataclasses.replace(snapshot_after(loan(mixed, hedged, unpriced)), prices=feed)
    drops = [row["Smallest drop to liquidation"] for row in table(render(snapshot))]
    # BTC is 60 % of the collateral: (0.8 - 0.5) / (0.8 x 0.6); no price for DOGE: a dash.
    assert drops == ["BTC \N{MINUS SIGN}62.50 %", "never", "\N{EM DASH}"]
