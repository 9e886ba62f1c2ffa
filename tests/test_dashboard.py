"""Tests for grafana/okx-loan-dashboard.json: it is what grafana/dashboard.py builds, it passes a
linter after grafana/dashboard-linter's rules, and every metric the dashboard and the alert rules
query is one the exporter really exposes.

The lint rules are the ones a user of an imported dashboard notices when they are broken: a
hard-wired datasource, a query that ignores the job/instance/account/order pickers, a rate() that
goes blank at some zoom levels, a panel without a unit or an explanation.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import stop_process
from metric_contract import CONTRACT, PER_CURRENCY, PER_ORDER
from processes import free_port
from prometheus_client.parser import text_string_to_metric_families
from tooling import require_binary

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = ROOT / "grafana" / "okx-loan-dashboard.json"
DASHBOARD_CODE = ROOT / "grafana" / "dashboard.py"
RULES_FILES = [ROOT / "examples" / "prometheus" / "rules.yml"]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

#: Series without an account label: Prometheus's own `up`, the exporter's build info, the index
#: prices, the public requests and the request durations (summed over the accounts).
WITHOUT_ACCOUNT = {
    "up",
    "okx_loan_exporter_build_info",
    *PER_CURRENCY,
    "okx_loan_public_api_requests_total",
    "okx_loan_public_api_request_failures_total",
    "okx_loan_public_api_request_duration_seconds_bucket",
    "okx_loan_index_prices_last_success_timestamp_seconds",
    "okx_loan_api_request_duration_seconds_bucket",
}
#: Labels a query may pick one value of, besides the pickers: the what-if scenario's drop.
SCENARIO_LABELS = {"okx_loan_ltv_after_price_drop_ratio": "drop"}
#: Series Prometheus itself makes, not the exporter.
PROMETHEUS_MADE = {"up", "ALERTS", "ALERTS_FOR_STATE"}

#: Grafana unit ids (packages/grafana-data/src/valueFormats/categories.ts), the ones that could
#: fit this dashboard's values.
VALID_UNITS = {
    "none", "short", "string", "percent", "percentunit", "locale", "sci",
    "currencyUSD", "currencyEUR", "currencyGBP", "currencyBTC",
    "ns", "µs", "ms", "s", "m", "h", "d", "dtdurations", "dtdurationms", "clocks", "clockms",
    "dateTimeAsIso", "dateTimeAsLocal", "dateTimeFromNow",
    "reqps", "rps", "ops", "cps", "rpm", "opm", "cpm", "hertz",
    "bool", "bool_yes_no", "bool_on_off", "bytes", "decbytes",
}  # fmt: skip

# --- A small PromQL reader ----------------------------------------------------------------------

TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    |(?P<var>\$\{?\w+\}?)
    |(?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*(?![\w.]))
    |(?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>,(){}\[\]@])
    |(?P<space>\s+)
    """,
    re.VERBOSE,
)
AGGREGATORS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = AGGREGATORS | LABEL_LISTS | {
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "Inf", "NaN", "start", "end",
}  # fmt: skip


@dataclass
class Selector:
    """One vector selector: its metric name, its label matchers, the function it sits in."""

    name: str | None
    matchers: dict[str, tuple[str, str]] = field(default_factory=dict)
    enclosing: str | None = None
    ranged: bool = False


@dataclass
class Query:
    selectors: list[Selector] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expr):
        match = TOKEN.match(expr, pos)
        if not match:
            raise ValueError(f"cannot read {expr[pos:]!r} in {expr!r}")
        pos = match.end()
        if match.lastgroup != "space":
            tokens.append((match.lastgroup or "", match.group()))
    return tokens


def unquote(text: str) -> str:
    return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")


def parse_promql(expr: str) -> Query:
    """Metric selectors (with their matchers and enclosing function), functions and ranges."""
    tokens = tokenize(expr)
    query = Query()
    stack: list[str | None] = []
    i = 0

    def peek(offset: int = 1) -> str:
        return tokens[i + offset][1] if i + offset < len(tokens) else ""

    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "ident" and text in LABEL_LISTS and peek() == "(":
            i = tokens.index(("op", ")"), i) + 1
            continue
        if kind == "ident" and peek() == "(" and text not in KEYWORDS:
            query.functions.append(text)
            stack.append(text)
            i += 2
            continue
        if kind == "ident" and text in KEYWORDS:
            i += 1
            continue
        if kind == "ident" or text == "{":
            selector = Selector(name=text if kind == "ident" else None)
            selector.enclosing = stack[-1] if stack else None
            i += 1 if kind == "ident" else 0
            if peek(0) == "{":
                i += 1
                while peek(0) != "}":
                    label, op, value = tokens[i][1], tokens[i + 1][1], tokens[i + 2]
                    assert value[0] == "string", f"matcher value is not a string in {expr!r}"
                    selector.matchers[label] = (op, unquote(value[1]))
                    i += 3
                    if peek(0) == ",":
                        i += 1
                i += 1
            if selector.name is None and "__name__" in selector.matchers:
                selector.name = selector.matchers["__name__"][1]
            if peek(0) == "[":
                selector.ranged = True
            query.selectors.append(selector)
            continue
        if text == "(":
            stack.append(None)
        elif text == ")":
            stack.pop()
        elif text == "[":
            end = tokens.index(("op", "]"), i)
            query.ranges.append("".join(t for _, t in tokens[i + 1 : end]))
            i = end
        i += 1
    return query


def test_promql_reader_on_known_queries() -> None:
    """The reader under the checks below: names, matchers, functions and ranges come out right."""
    q = parse_promql(
        'histogram_quantile(0.9, sum by (account, le) (rate(x_bucket{job=~"$job", a!="b"}'
        "[$__rate_interval]))) / on() group_left() y:z unless w offset 5m"
    )
    assert [s.name for s in q.selectors] == ["x_bucket", "y:z", "w"]
    assert q.selectors[0].matchers == {"job": ("=~", "$job"), "a": ("!=", "b")}
    assert q.selectors[0].enclosing == "rate" and q.selectors[0].ranged
    assert q.selectors[1].enclosing is None and not q.selectors[1].ranged
    assert q.functions == ["histogram_quantile", "rate"]
    assert q.ranges == ["$__rate_interval"]
    assert [s.name for s in parse_promql('{__name__="m", job="j"} > 1').selectors] == ["m"]


# --- The dashboard ------------------------------------------------------------------------------


def test_dashboard_json_is_what_the_code_builds(tmp_path: Path) -> None:
    """grafana/okx-loan-dashboard.json is exactly what `python grafana/dashboard.py` writes."""
    spec = importlib.util.spec_from_file_location("okx_loan_dashboard", DASHBOARD_CODE)
    assert spec is not None and spec.loader is not None
    code = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(code)
    except ModuleNotFoundError as error:
        pytest.fail(f"{error}: the [test] extra has the SDK (pip install -e '.[test]')")
    written = tmp_path / "dashboard.json"
    assert code.main([str(written)]) == 0
    assert written.read_text(encoding="utf-8") == DASHBOARD_PATH.read_text(encoding="utf-8"), (
        f"{DASHBOARD_PATH.name} differs from what {DASHBOARD_CODE.name} builds: "
        "run `python grafana/dashboard.py` and commit both"
    )


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))


DASHBOARD = load_dashboard()


def panels(dashboard: dict[str, Any] = DASHBOARD) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def data_panels() -> list[dict[str, Any]]:
    return [panel for panel in panels() if panel["type"] != "row"]


def targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in data_panels():
        for target in panel.get("targets", []):
            yield panel, target


def target_id(item: tuple[dict[str, Any], dict[str, Any]]) -> str:
    panel, target = item
    return f"{panel['title']}/{target['refId']}"


def variable(name: str) -> dict[str, Any]:
    found = [v for v in DASHBOARD["templating"]["list"] if v["name"] == name]
    assert len(found) == 1, f"expected one variable {name!r}, found {len(found)}"
    return found[0]


def variable_selector(var: dict[str, Any]) -> tuple[str, str]:
    """The selector and label of a `label_values(selector, label)` variable query."""
    query = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert match, f"variable {var['name']}: not label_values(selector, label): {query!r}"
    return match.group(1), match.group(2)


def test_datasource_variable_and_no_inputs() -> None:
    datasources = [v for v in DASHBOARD["templating"]["list"] if v["type"] == "datasource"]
    assert len(datasources) == 1
    assert datasources[0]["name"] == "datasource"
    assert datasources[0]["query"] == "prometheus"
    assert datasources[0]["label"] == "Data source"
    text = DASHBOARD_PATH.read_text(encoding="utf-8")
    assert "__inputs" not in DASHBOARD and "__requires" not in DASHBOARD
    assert "${DS_" not in text, "an exported datasource placeholder is left in the dashboard"


#: The pickers: (name, the series its values come from, the pickers it is filtered by, the value
#: of All). job and instance have no allValue: All then stands for the values found, so
#: `up{job=~"$job"}` shows the exporter's targets only, not every job's. order's All is ".*", so
#: that a loan without ordId (order="", no label in Prometheus) is shown too.
PICKERS = [
    ("job", "okx_loan_up", [], None),
    ("instance", "okx_loan_up", ["job"], None),
    ("account", "okx_loan_up", ["job", "instance"], ".+"),
    ("order", "okx_loan_ltv_ratio", ["job", "instance", "account"], ".*"),
]
PICKER_NAMES = [name for name, *_ in PICKERS]


@pytest.mark.parametrize(("name", "series", "must_filter", "all_value"), PICKERS)
def test_picker_variables(
    name: str, series: str, must_filter: list[str], all_value: str | None
) -> None:
    var = variable(name)
    assert var["type"] == "query"
    assert var["datasource"] == DATASOURCE
    assert var["label"] == name.capitalize()
    assert var["multi"] is True and var["includeAll"] is True
    assert var.get("allValue") == all_value
    assert var["current"]["value"] == ["$__all"], "All is selected on import"
    assert var["refresh"] == 2, "should reload on time range change"
    selector_text, label = variable_selector(var)
    assert label == name
    (selector,) = parse_promql(selector_text).selectors
    assert selector.name == series
    assert selector.matchers == {other: ("=~", f"${other}") for other in must_filter}


def test_variables_come_in_dependency_order() -> None:
    names = [v["name"] for v in DASHBOARD["templating"]["list"]]
    assert names.index("datasource") < names.index("job")
    assert [names.index(name) for name in PICKER_NAMES] == sorted(
        names.index(name) for name in PICKER_NAMES
    )


@pytest.mark.parametrize("panel", data_panels(), ids=lambda p: p["title"])
def test_panel_datasource_unit_and_description(panel: dict[str, Any]) -> None:
    assert panel["datasource"] == DATASOURCE
    assert panel.get("title", "").strip()
    assert len(panel.get("description", "").strip()) >= 40, "describe what the panel shows"
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    assert unit in VALID_UNITS, f"unit {unit!r}"
    for override in panel["fieldConfig"].get("overrides", []):
        for prop in override["properties"]:
            if prop["id"] == "unit":
                assert prop["value"] in VALID_UNITS
    assert panel.get("targets"), "a panel without queries"


@pytest.mark.parametrize("item", list(targets()), ids=target_id)
def test_target_datasource_and_filters(item: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, target = item
    assert target["datasource"] == DATASOURCE
    query = parse_promql(target["expr"])
    assert query.selectors, "a query without a metric"
    for selector in query.selectors:
        expected = {"job": ("=~", "$job"), "instance": ("=~", "$instance")}
        if selector.name not in WITHOUT_ACCOUNT:
            expected["account"] = ("=~", "$account")
        if selector.name in PER_ORDER:
            expected["order"] = ("=~", "$order")
        for label, matcher in expected.items():
            assert selector.matchers.get(label) == matcher, f"{selector.name}: {label} filter"
        scenario = SCENARIO_LABELS.get(selector.name)
        if scenario is not None:
            assert selector.matchers[scenario][0] == "=", f"{selector.name}: one {scenario}"
            expected[scenario] = selector.matchers[scenario]
        assert set(selector.matchers) == set(expected), f"{selector.name}: unexpected filters"


@pytest.mark.parametrize("item", list(targets()), ids=target_id)
def test_one_line_per_order(item: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """A graph or stat of per-order series names the order in each series' legend."""
    _, target = item
    names = {selector.name for selector in parse_promql(target["expr"]).selectors}
    if names & PER_ORDER and target.get("format") != "table":
        assert "{{order}}" in target["legendFormat"], target["legendFormat"]


@pytest.mark.parametrize("item", list(targets()), ids=target_id)
def test_rates_use_rate_interval_and_counters_are_rated(
    item: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    _, target = item
    query = parse_promql(target["expr"])
    assert all(r == "$__rate_interval" for r in query.ranges), query.ranges
    for selector in query.selectors:
        if selector.ranged:
            assert selector.enclosing in {"rate", "irate", "increase"}
        if (selector.name or "").endswith(("_total", "_bucket", "_count", "_sum")):
            assert selector.ranged and selector.enclosing in {"rate", "irate", "increase"}, (
                f"{selector.name} is a counter: wrap it in rate()"
            )


def test_dashboard_settings() -> None:
    assert DASHBOARD["uid"] == "okx-loan-exporter"
    assert DASHBOARD["editable"] is True, "users copy it and tune thresholds"
    assert 36 <= DASHBOARD["schemaVersion"] <= 41
    assert DASHBOARD["title"] and DASHBOARD.get("id") is None


def test_panel_ids_unique() -> None:
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids))


def test_layout_fits_the_grid_without_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels():
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_rows_group_the_panels() -> None:
    top = DASHBOARD["panels"]
    assert top[0]["type"] == "row", "the dashboard starts with a row"
    rows = [panel["title"] for panel in top if panel["type"] == "row"]
    assert len(rows) >= 3
    assert all(panel["gridPos"]["w"] == 24 for panel in top if panel["type"] == "row")


def exprs_of(panel: dict[str, Any]) -> str:
    return "\n".join(" ".join(t["expr"].split()) for t in panel["targets"])


def find_panels(kinds: set[str], *needles: str) -> list[dict[str, Any]]:
    return [
        panel
        for panel in data_panels()
        if panel["type"] in kinds and all(needle in exprs_of(panel) for needle in needles)
    ]


def panels_with_query(kinds: set[str], expr: str) -> list[dict[str, Any]]:
    return [
        panel
        for panel in data_panels()
        if panel["type"] in kinds
        and any(" ".join(t["expr"].split()) == expr for t in panel["targets"])
    ]


ORDER = 'job=~"$job", instance=~"$instance", account=~"$account", order=~"$order"'
LTV = f"okx_loan_ltv_ratio{{{ORDER}}}"
MC = f"okx_loan_margin_call_ltv_ratio{{{ORDER}}}"
LIQ = f"okx_loan_liquidation_ltv_ratio{{{ORDER}}}"


def test_ltv_against_margin_call_at_a_glance() -> None:
    """A stat/gauge of LTV as a fraction of OKX's margin-call LTV, coloured at 90 % and 100 %."""
    (panel,) = panels_with_query({"stat", "gauge"}, f"{LTV} / {MC}")
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 0.9, 1]
    assert "fraction of the margin-call LTV" in panel["description"]
    (gauge,) = panels_with_query({"stat", "gauge"}, f"{LTV} / {LIQ}")
    assert gauge["fieldConfig"]["defaults"]["max"] == 1


def test_ltv_thresholds_and_headroom_over_time() -> None:
    assert find_panels({"timeseries"}, LTV, MC, LIQ)
    for threshold in (MC, LIQ):
        assert find_panels({"stat"}, f"1 - {LTV} / {threshold}"), "headroom now"
        assert find_panels({"timeseries"}, f"1 - {LTV} / {threshold}"), "headroom over time"


def test_accounts_table_has_one_row_per_order() -> None:
    """Account-level columns are repeated on each order's row, so rows merge per order."""
    (table,) = find_panels({"table"}, LTV, "okx_loan_up{")
    for target in table["targets"]:
        names = {s.name for s in parse_promql(target["expr"]).selectors}
        if not names <= PER_ORDER:
            expr = " ".join(target["expr"].split())
            assert f"group_right () group by (job, instance, account, order) ({LTV})" in expr
            assert "or on (job, instance, account)" in expr, "accounts without an order vanish"
    organize = next(t for t in table["transformations"] if t["id"] == "organize")["options"]
    assert organize["renameByName"]["order"] == "Order"
    assert organize["indexByName"]["order"] == organize["indexByName"]["account"] + 1


def test_money_amounts_and_liquidation_price() -> None:
    (usd,) = find_panels({"timeseries"}, "okx_loan_borrowed_notional_usd", "collateral_notional")
    assert usd["fieldConfig"]["defaults"]["unit"] == "currencyUSD"
    (table,) = find_panels({"table"}, "okx_loan_borrowed_amount", "okx_loan_collateral_amount")
    assert all(t.get("format") == "table" and t.get("instant") for t in table["targets"])
    assert find_panels({"timeseries"}, "okx_loan_borrowed_amount")
    assert find_panels({"timeseries"}, "okx_loan_collateral_amount")
    (price,) = find_panels({"stat", "timeseries"}, "okx_loan_liquidation_price")
    assert "{{instrument}}" in price["targets"][0]["legendFormat"]


def test_price_risk_beside_each_liquidation_price_and_per_currency() -> None:
    """OKX's liqPx beside the index price and the distance in percent; per order and currency
    the falls (and a volatile debt's rises) to each threshold; the what-if LTVs."""
    (beside,) = find_panels({"table"}, "okx_loan_liquidation_price", "okx_loan_index_price")
    exprs = [" ".join(t["expr"].split()) for t in beside["targets"]]
    assert any(e.startswith("1 - okx_loan_liquidation_price{") for e in exprs)
    assert all(
        '"instrument", "([^-]+)-.+"' in e and '"instrument", "[^-]+-(.+)"' in e for e in exprs
    )
    (falls,) = find_panels(
        {"table"}, "okx_loan_price_drop_to_margin_call_ratio", "drop_to_liquidation_ratio"
    )
    (rises,) = find_panels(
        {"table"}, "okx_loan_price_rise_to_margin_call_ratio", "rise_to_liquidation_ratio"
    )
    (what_if,) = find_panels({"table"}, "okx_loan_ltv_after_price_drop_ratio")
    assert [t["expr"].split('drop="')[1][:3] for t in what_if["targets"]] == ["0.1", "0.2", "0.3"]
    for panel in (falls, rises, what_if):
        assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
        assert all(t.get("format") == "table" and t.get("instant") for t in panel["targets"])
        organize = next(t for t in panel["transformations"] if t["id"] == "organize")["options"]
        assert organize["renameByName"]["currency"] == "Currency"


def test_exporter_health() -> None:
    assert find_panels({"stat"}, "okx_loan_up{")
    (age,) = find_panels({"stat"}, "time() - okx_loan_last_success_timestamp_seconds")
    assert age["fieldConfig"]["defaults"]["unit"] == "s"
    assert find_panels({"timeseries"}, "rate(okx_loan_api_requests_total")
    assert find_panels({"timeseries"}, "sum by (account, reason) (rate(okx_loan_api_request_fail")
    (latency,) = find_panels({"timeseries"}, "(okx_loan_api_request_duration_seconds_bucket")
    assert {parse_promql(t["expr"]).functions[0] for t in latency["targets"]} == {
        "histogram_quantile"
    }
    assert len(latency["targets"]) >= 3 and latency["fieldConfig"]["defaults"]["unit"] == "s"
    # one histogram per endpoint, summed over the accounts: grouped and named by endpoint
    assert all(
        "sum by (endpoint, le) (rate(okx_loan_api_request_duration_seconds_bucket{" in t["expr"]
        and t["legendFormat"].startswith("{{endpoint}} p")
        for t in latency["targets"]
    )
    assert find_panels({"timeseries"}, "okx_loan_clock_offset_seconds")


def used_dashboard_names() -> set[str]:
    names = set()
    for _, target in targets():
        names |= {s.name for s in parse_promql(target["expr"]).selectors if s.name}
    for name in PICKER_NAMES:
        names |= {s.name for s in parse_promql(variable_selector(variable(name))[0]).selectors}
    for annotation in annotation_queries():
        names |= {s.name for s in parse_promql(annotation["expr"]).selectors if s.name}
    return names


def annotation_queries() -> list[dict[str, Any]]:
    """The dashboard's Prometheus annotations (the built-in Grafana one has no expr)."""
    return [item for item in DASHBOARD["annotations"]["list"] if item.get("expr")]


def test_liquidations_are_annotations_filtered_like_the_panels() -> None:
    (annotation,) = annotation_queries()
    assert annotation["datasource"] == DATASOURCE and annotation["enable"] is True
    (selector,) = parse_promql(annotation["expr"]).selectors
    assert selector.name == "okx_loan_events_total"
    assert selector.enclosing == "increase" and selector.ranged
    assert selector.matchers["account"] == ("=~", "$account")
    assert selector.matchers["job"] == ("=~", "$job")
    kinds = selector.matchers["type"][1].split("|")
    assert set(kinds) == {
        "forced_liquidation",
        "partial_liquidation",
        "forced_repayment_buy",
        "forced_repayment_sell",
    }
    assert "{{type}}" in annotation["titleFormat"] and "{{account}}" in annotation["titleFormat"]


def test_every_contract_metric_is_on_the_dashboard() -> None:
    assert CONTRACT - used_dashboard_names() == set()


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULES_FILES
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
    ]


TEMPLATE_QUERY = re.compile(r'\b(?:printf|query)\s+"((?:\\.|[^"\\])*)"')


def used_rule_names() -> tuple[set[str], set[str]]:
    """Metric names the rules read (expressions and annotation queries), and those they record."""
    names, recorded = set(), set()
    for rule in rules():
        if "record" in rule:
            recorded.add(rule["record"])
        names |= {s.name for s in parse_promql(rule["expr"]).selectors if s.name}
        for text in rule.get("annotations", {}).values():
            for query in TEMPLATE_QUERY.findall(text):
                promql = unquote(f'"{query}"').replace("%q", '"x"')
                names |= {s.name for s in parse_promql(promql).selectors if s.name}
            names |= set(re.findall(r"\bokx_loan_[a-z0-9_]+\b", text))
    return names, recorded


def test_rules_read_only_what_they_record_or_the_exporter_contract_has() -> None:
    names, recorded = used_rule_names()
    recording_names = {name for name in names if ":" in name}
    assert recording_names <= recorded, "a recording rule is used but not defined"
    assert names - recording_names - PROMETHEUS_MADE <= CONTRACT


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Prometheus's own parser (promtool) accepts every dashboard and variable query."""
    promtool = require_binary("promtool")
    exprs = [target["expr"] for _, target in targets()]
    exprs += [variable_selector(variable(n))[0] for n in PICKER_NAMES]
    rules_file = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": e.replace("$__rate_interval", "1m")}
                    for n, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules_file), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Against the real exporter ------------------------------------------------------------------


@dataclass
class Exposed:
    names: set[str]
    labels: dict[str, set[str]]


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposed]:
    """Names (and label names) the exporter in demo mode really serves on /metrics."""
    port = free_port()
    log = tmp_path_factory.mktemp("exporter") / "exporter.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "okx_loan_exporter",
                "--demo",
                "--web.listen-address",
                f"127.0.0.1:{port}",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        text, deadline = "", time.monotonic() + 15
        while "okx_loan_ltv_ratio{" not in text:
            if process.poll() is not None:
                pytest.fail(f"the exporter exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no okx_loan_ltv_ratio on /metrics in 15 s:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                time.sleep(0.1)
        names: set[str] = set()
        labels: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(text):
            names.add(family.name)
            if family.type == "counter":
                names.add(f"{family.name}_total")
            if family.type == "histogram":
                names |= {f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum")}
            for sample in family.samples:
                names.add(sample.name)
                labels.setdefault(sample.name, set()).update(sample.labels)
        yield Exposed(names, labels)
    finally:
        stop_process(process, timeout=10)


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_dashboard_and_rules_query_only_metrics_the_exporter_exposes(exposed: Exposed) -> None:
    rule_names, recorded = used_rule_names()
    used = used_dashboard_names() | rule_names
    needed = {name for name in used if ":" not in name} - PROMETHEUS_MADE
    assert needed - exposed.names == set(), "queried but not exposed by the exporter"
    assert {name for name in used if ":" in name} <= recorded


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_account_and_order_filters_match_the_exposed_labels(exposed: Exposed) -> None:
    """Series the dashboard filters by account (order) carry that label; the others do not."""
    for name in used_dashboard_names() - PROMETHEUS_MADE:
        if name in exposed.labels:
            assert ("account" in exposed.labels[name]) == (name not in WITHOUT_ACCOUNT), name
            assert ("order" in exposed.labels[name]) == (name in PER_ORDER), name
