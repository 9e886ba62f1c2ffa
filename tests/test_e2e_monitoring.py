"""End-to-end test of the monitoring bundle: a real Prometheus and Alertmanager on the exporter.

The simulator and the exporter run as processes; Prometheus (Debian's ``prometheus``) scrapes the
exporter every second with ``examples/prometheus/rules.yml`` loaded (every ``for:`` shortened) and
sends alerts to Alertmanager (Debian's ``prometheus-alertmanager``) configured from
``examples/alertmanager/alertmanager.yml`` with its webhooks pointed at a receiver in this test.
One set-up serves every test: an account driven past its margin-call LTV must page the critical
receiver and resolve there; the demo's order whose LTV cycles through its margin call (time
compressed to a short cycle) must page for that order only and resolve; every query of
``grafana/okx-loan-dashboard.json`` (panels, rows and template variables) must return data from
that Prometheus, one series per order of the demo's two-order account. One account fails on
purpose all along, so the failure panels have something to show, and Prometheus also scrapes
Alertmanager, so a query that forgets its job filter shows another job's series.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from e2e_support import (
    LOOPBACK,
    ProcessGroup,
    SimulatorControl,
    edit_config,
    exporter_argv,
    managed_processes,
    start_simulator,
    wait_for,
)
from tooling import require_binary

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_EXAMPLE = ROOT / "examples" / "prometheus" / "prometheus.yml"
RULES_EXAMPLE = ROOT / "examples" / "prometheus" / "rules.yml"
ALERTMANAGER_EXAMPLE = ROOT / "examples" / "alertmanager" / "alertmanager.yml"
DASHBOARD = ROOT / "grafana" / "okx-loan-dashboard.json"

JOB = "okx-loan-exporter"
OTHER_JOB = "alertmanager"
"""Another job Prometheus scrapes (the test's Alertmanager), whose `up` the dashboard must not
show."""
ACCOUNTS = (
    "btc-usdt",
    "okx-docs-example",
    "eth-usdc",
    "no-loan",
    "demo-trading",
    "two-orders",
    "liquidation",
)
ORDERS = {"1001", "1101", "1201", "2001", "2002", "3001"}
"""The demo's ordIds (okx-docs-example's loan has none: order="")."""
DRIVEN, DRIVEN_ORDER = "btc-usdt", "1001"
"""The order whose LTV the alert test pushes past the margin call (one collateral currency, so
it also keeps the liquidation-price panel in data)."""
TWO_ORDERS, CYCLING_ORDER, STEADY_ORDER = "two-orders", "2002", "2001"
"""The demo account with two orders: 2002's LTV cycles through its margin call, 2001's stays low."""
MARGIN_CALL_CYCLE = 20.0
"""The simulator's --margin-call-cycle in seconds: order 2002 is past its margin call from a
quarter to three quarters of each cycle (the demo's default is 5 minutes), and order 3001 of
account liquidation is partially liquidated once per cycle."""
LIQUIDATED = "liquidation"
FAILING = "no-loan"
"""The account that fails all along (HTTP 500), so failure rates are not zero."""
SHORT_FOR = "1s"
ALERT_TIMEOUT = 60.0
MIN_SCRAPING_SECONDS = 10.0
"""How long Prometheus must have scraped before the dashboard's rate() queries are run."""
GRAFANA_BUILTINS = {
    "__rate_interval": "15s",  # Grafana: max(4 x scrape interval, $__interval + scrape interval)
    "__interval": "1s",
    "__interval_ms": "1000",
    "__range": "1m",
    "__range_s": "60",
    "__range_ms": "60000",
}


# --------------------------------------------------------------------------------------------------
# A webhook receiver standing in for the pager


@dataclass(frozen=True)
class Post:
    received: float
    """time.monotonic() when it arrived."""
    path: str
    payload: dict[str, Any]


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records the JSON Alertmanager posts to it."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                with receiver._lock:
                    receiver.posts.append(Post(time.monotonic(), self.path, payload))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def find(
        self, status: str, *, after: float = 0.0, **labels: str
    ) -> tuple[Post, dict[str, Any]] | None:
        """The first post since ``after`` with an alert in ``status`` carrying ``labels``."""
        with self._lock:
            posts = list(self.posts)
        for post in posts:
            if post.received < after:
                continue
            for alert in post.payload.get("alerts", []):
                alert_labels = alert.get("labels", {})
                if alert.get("status") == status and all(
                    alert_labels.get(k) == v for k, v in labels.items()
                ):
                    return post, alert
        return None

    def summary(self) -> str:
        with self._lock:
            posts = list(self.posts)
        lines = [f"{len(posts)} webhook post(s):"]
        for post in posts:
            for alert in post.payload.get("alerts", []):
                labels = alert.get("labels", {})
                lines.append(
                    f"  {post.path} {alert.get('status')} {labels.get('alertname')} "
                    f"account={labels.get('account')} order={labels.get('order')} "
                    f"severity={labels.get('severity')}"
                )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Configurations generated from the examples


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def write_yaml(path: Path, document: Any) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1000), encoding="utf-8")
    return path


def shortened_rules() -> dict[str, Any]:
    """examples/prometheus/rules.yml with every alert's ``for:`` set to SHORT_FOR."""
    rules = copy.deepcopy(load_yaml(RULES_EXAMPLE))
    for group in rules["groups"]:
        if "interval" in group:
            group["interval"] = "1s"
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = SHORT_FOR
    return dict(rules)


def prometheus_config(rules: Path, exporter: str, alertmanager: str) -> dict[str, Any]:
    """examples/prometheus/prometheus.yml scraping ``exporter`` every second, alerting to
    ``alertmanager``, with ``rules`` loaded; the example's other jobs are replaced by one that
    scrapes ``alertmanager``."""
    config = copy.deepcopy(load_yaml(PROMETHEUS_EXAMPLE))
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    assert len(jobs) == 1, f"{PROMETHEUS_EXAMPLE} must have one scrape job named {JOB!r}"
    jobs[0].update(
        scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [exporter]}]
    )
    other = {"job_name": OTHER_JOB, "static_configs": [{"targets": [alertmanager]}]}
    config["scrape_configs"] = [*jobs, other]
    return dict(config)


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """examples/alertmanager/alertmanager.yml with its webhooks sent to ``webhook_url`` (each
    keeps its path, so the receiver is recognisable) and every route's timers shortened."""
    config = copy.deepcopy(load_yaml(ALERTMANAGER_EXAMPLE))
    webhooks = 0
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = webhook_url + (urlsplit(webhook["url"]).path or "/")
            webhooks += 1
    assert webhooks, f"{ALERTMANAGER_EXAMPLE} has no webhook receiver to point at the test"

    def shorten(route: dict[str, Any]) -> None:
        route.update(group_wait="1s", group_interval="1s", repeat_interval="1m")
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    return dict(config)


def receiver_path(severity: str) -> str:
    """The webhook path of the receiver the example routes ``severity`` alerts to."""
    config = load_yaml(ALERTMANAGER_EXAMPLE)
    name = config["route"]["receiver"]
    for route in config["route"].get("routes", []):
        if f'severity="{severity}"' in route.get("matchers", []):
            name = route["receiver"]
    receiver = next(r for r in config["receivers"] if r["name"] == name)
    return urlsplit(receiver["webhook_configs"][0]["url"]).path


def alertmanager_binary() -> str:
    """Debian calls it prometheus-alertmanager; upstream's tarball alertmanager."""
    return (
        shutil.which("prometheus-alertmanager")
        or shutil.which("alertmanager")
        or require_binary("alertmanager")
    )


# --------------------------------------------------------------------------------------------------
# The running stack


@dataclass
class Stack:
    control: SimulatorControl
    exporter_target: str
    prometheus_url: str
    alertmanager_url: str
    webhook: WebhookReceiver
    processes: ProcessGroup
    scraping_since: float

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result as a list of {metric, value} (a scalar as one item)."""
        response = httpx.get(
            f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10
        )
        body = response.json()
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, since: float) -> list[dict[str, Any]]:
        """A range query from ``since`` (time.monotonic) until now, 1 s steps, as Grafana runs
        an annotation over the dashboard's time range."""
        now = time.time()
        start = now - (time.monotonic() - since)
        response = httpx.get(
            f"{self.prometheus_url}/api/v1/query_range",
            params={"query": expr, "start": start, "end": now, "step": 1},
            timeout=10,
        )
        body = response.json()
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return list(body["data"]["result"])

    def posted(self, status: str, *, after: float, **labels: str) -> tuple[Post, dict[str, Any]]:
        """Wait (up to ALERT_TIMEOUT) for the first webhook post since ``after`` with an alert
        in ``status`` carrying ``labels``; the post and that alert."""
        return wait_for(
            f"an alert {labels} {status} at the webhook",
            lambda: self.webhook.find(status, after=after, **labels),
            ALERT_TIMEOUT,
            interval=0.1,
            details=self.diagnostics,
        )

    def diagnostics(self) -> str:
        """What Prometheus and Alertmanager see, the webhook posts and the process logs."""
        parts = [self.webhook.summary()]
        for name, url in (
            ("Prometheus alerts", f"{self.prometheus_url}/api/v1/alerts"),
            ("Alertmanager alerts", f"{self.alertmanager_url}/api/v2/alerts"),
            ("Prometheus targets", f"{self.prometheus_url}/api/v1/targets?state=active"),
        ):
            try:
                parts.append(f"{name}: {httpx.get(url, timeout=5).text[:3000]}")
            except httpx.HTTPError as error:
                parts.append(f"{name}: {error}")
        parts.append(self.processes.tails(25))
        return "\n".join(parts)


class QueryError(Exception):
    """Prometheus refused a query."""


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    prometheus = require_binary("prometheus")
    alertmanager = alertmanager_binary()
    tmp = tmp_path_factory.mktemp("monitoring")
    exporter_config = tmp / "exporter.yml"
    started = time.monotonic()
    with (
        managed_processes(request, tmp / "logs") as processes,
        WebhookReceiver() as webhook,
    ):
        _, control = start_simulator(
            processes, exporter_config, "--margin-call-cycle", f"{MARGIN_CALL_CYCLE:g}s"
        )
        control.set_account(FAILING, fault="http_500_html")
        edit_config(
            exporter_config,
            cache_ttl="1s",
            timeout="2s",
            history_interval="1s",
            interest_interval="2s",
            headroom_interval="2s",
        )
        _, exporter_port = processes.start(
            "exporter", lambda port: exporter_argv(port, exporter_config)
        )
        exporter_target = f"{LOOPBACK}:{exporter_port}"

        am_config = write_yaml(tmp / "alertmanager.yml", alertmanager_config(webhook.url))
        _, am_port = processes.start(
            "alertmanager",
            lambda port: [
                alertmanager,
                f"--config.file={am_config}",
                f"--storage.path={tmp / 'alertmanager-data'}",
                f"--web.listen-address={LOOPBACK}:{port}",
                "--cluster.listen-address=",
            ],
        )
        rules = write_yaml(tmp / "rules.yml", shortened_rules())
        prom_config = write_yaml(
            tmp / "prometheus.yml",
            prometheus_config(rules, exporter_target, f"{LOOPBACK}:{am_port}"),
        )
        _, prom_port = processes.start(
            "prometheus",
            lambda port: [
                prometheus,
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                f"--web.listen-address={LOOPBACK}:{port}",
            ],
            ready_timeout=30,
        )
        stack = Stack(
            control=control,
            exporter_target=exporter_target,
            prometheus_url=f"http://{LOOPBACK}:{prom_port}",
            alertmanager_url=f"http://{LOOPBACK}:{am_port}",
            webhook=webhook,
            processes=processes,
            scraping_since=0.0,
        )
        healthy = len(ACCOUNTS) - 1
        wait_for(
            f"Prometheus to scrape the exporter with {healthy} accounts up",
            lambda: len(stack.query(f'okx_loan_up{{job="{JOB}"}} == 1')) == healthy,
            30,
            interval=0.2,
            details=stack.diagnostics,
        )
        stack.scraping_since = time.monotonic()
        print(f"\nmonitoring stack up and scraped in {stack.scraping_since - started:.2f} s")
        yield stack


# --------------------------------------------------------------------------------------------------
# Alerts


def test_margin_call_alert_reaches_the_critical_webhook_and_resolves(stack: Stack) -> None:
    selector = f'{{job="{JOB}",account="{DRIVEN}",order="{DRIVEN_ORDER}"}}'
    [margin_call] = stack.query(f"okx_loan_margin_call_ltv_ratio{selector}")
    [liquidation] = stack.query(f"okx_loan_liquidation_ltv_ratio{selector}")
    margin_call_ltv = float(margin_call["value"][1])
    liquidation_ltv = float(liquidation["value"][1])
    driven_ltv = round(margin_call_ltv + 0.02, 4)
    assert driven_ltv < liquidation_ltv * 0.95, "the test would trigger OkxLoanNearLiquidation"
    critical_path = receiver_path("critical")

    pushed = time.monotonic()
    stack.control.set_account(DRIVEN, order=DRIVEN_ORDER, ltv=driven_ltv)
    post, alert = stack.posted(
        "firing", after=pushed, alertname="OkxLoanMarginCall", account=DRIVEN
    )
    fired_after = post.received - pushed
    assert post.path == critical_path, f"routed to {post.path}, not the critical receiver"
    assert post.payload["status"] == "firing"
    labels = alert["labels"]
    assert labels["severity"] == "critical"
    assert (labels["job"], labels["instance"]) == (JOB, stack.exporter_target)
    assert labels["order"] == DRIVEN_ORDER
    check_annotations(alert, DRIVEN, DRIVEN_ORDER, driven_ltv, margin_call_ltv, liquidation_ltv)
    # Prometheus fires the "approaching the margin call" warning too; Alertmanager holds it back.
    warning = (
        f'ALERTS{{alertname="OkxLoanMarginCallWarning",account="{DRIVEN}",alertstate="firing"}}'
    )
    wait_for(
        f"OkxLoanMarginCallWarning for {DRIVEN} firing in Prometheus",
        lambda: stack.query(warning),
        10,
        details=stack.diagnostics,
    )

    lowered = time.monotonic()
    stack.control.set_account(DRIVEN, order=DRIVEN_ORDER, ltv=0.3)
    post, alert = stack.posted(
        "resolved", after=lowered, alertname="OkxLoanMarginCall", account=DRIVEN
    )
    resolved_after = post.received - lowered
    assert post.path == critical_path
    assert alert["labels"]["severity"] == "critical"
    # The margin call inhibited the warning for the same account: it never reached a receiver.
    assert (
        stack.webhook.find("firing", alertname="OkxLoanMarginCallWarning", account=DRIVEN) is None
    ), stack.webhook.summary()
    print(
        f"OkxLoanMarginCall ({DRIVEN}, LTV {driven_ltv} >= margin call {margin_call_ltv}): "
        f"firing at the webhook {fired_after:.2f} s after the LTV change, resolved "
        f"{resolved_after:.2f} s after it went back to 0.3 "
        f"(scrape/eval 1s, for: {SHORT_FOR}, group_wait/group_interval 1s)"
    )


def check_annotations(
    alert: dict[str, Any],
    account: str,
    order: str,
    ltv: float | None,
    margin_call_ltv: float,
    liquidation_ltv: float,
) -> None:
    """The templates ran against this Prometheus: they name the account and order, the LTV (when
    known) and the order's own thresholds, as percentages."""
    summary, description = alert["annotations"]["summary"], alert["annotations"]["description"]
    assert f"account {account}, order {order}:" in summary, summary
    assert f"account {account}, order {order} (" in description, description
    if ltv is not None:
        assert percent(ltv) in summary, summary
    assert f"margin-call LTV of {percent(margin_call_ltv)}." in description, description
    assert f"LTV of {percent(liquidation_ltv)}." in description, description


def test_the_demo_order_cycling_through_its_margin_call_pages_for_that_order_only(
    stack: Stack,
) -> None:
    """two-orders/2002's LTV crosses its margin-call LTV and comes back every cycle: the critical
    receiver gets OkxLoanMarginCall for that order, then its resolution; order 2001 of the same
    account never alerts."""
    selector = f'{{job="{JOB}",account="{TWO_ORDERS}",order="{CYCLING_ORDER}"}}'
    [margin_call] = stack.query(f"okx_loan_margin_call_ltv_ratio{selector}")
    [liquidation] = stack.query(f"okx_loan_liquidation_ltv_ratio{selector}")
    margin_call_ltv = float(margin_call["value"][1])
    liquidation_ltv = float(liquidation["value"][1])
    past = f"okx_loan_ltv_ratio{selector} >= okx_loan_margin_call_ltv_ratio{selector}"
    labels = {"alertname": "OkxLoanMarginCall", "account": TWO_ORDERS, "order": CYCLING_ORDER}
    started = time.monotonic()

    def seen_past(expected: bool) -> float | None:
        """Now, if Prometheus sees the order past its margin call (``expected``) or not."""
        return time.monotonic() if bool(stack.query(past)) == expected else None

    # A fresh crossing: first below the margin call, then past it.
    wait_for("order 2002 below its margin call", lambda: seen_past(False), MARGIN_CALL_CYCLE)
    crossed = wait_for("order 2002 past its margin call", lambda: seen_past(True), 20)
    post, alert = stack.posted("firing", after=crossed, **labels)
    fired_after = post.received - crossed
    assert post.path == receiver_path("critical")
    assert alert["labels"]["severity"] == "critical"
    check_annotations(alert, TWO_ORDERS, CYCLING_ORDER, None, margin_call_ltv, liquidation_ltv)
    ltv_text = re.search(r"LTV (\S+%) reached", alert["annotations"]["summary"])
    assert ltv_text and float(ltv_text.group(1)[:-1]) >= margin_call_ltv * 100, alert

    fell = wait_for("order 2002 back below", lambda: seen_past(False), MARGIN_CALL_CYCLE)
    post, alert = stack.posted("resolved", after=fell, **labels)
    resolved_after = post.received - fell
    # Order 2001 never alerted, neither at a receiver nor in Prometheus.
    steady = {"account": TWO_ORDERS, "order": STEADY_ORDER}
    for status in ("firing", "resolved"):
        assert stack.webhook.find(status, **steady) is None, stack.webhook.summary()
    window = f"{math.ceil(time.monotonic() - stack.scraping_since) + 5}s"
    steady_alerts = f'ALERTS{{account="{TWO_ORDERS}",order="{STEADY_ORDER}"}}[{window}]'
    assert stack.query(f"count_over_time({steady_alerts})") == [], "order 2001 alerted"
    print(
        f"OkxLoanMarginCall ({TWO_ORDERS}, order {CYCLING_ORDER}, cycle "
        f"{MARGIN_CALL_CYCLE:g} s): firing at the webhook {fired_after:.2f} s after Prometheus "
        f"saw the LTV reach {percent(margin_call_ltv)}, resolved {resolved_after:.2f} s after it "
        f"saw it back below; fire and resolve observed {post.received - started:.2f} s after "
        "the test began"
    )


def test_a_demo_liquidation_pages_with_its_type_and_account(stack: Stack) -> None:
    """The demo's order 3001 climbs to its liquidation LTV once per cycle and OKX (the simulator)
    liquidates part of it: loan-history gets a partial_liquidation record, the exporter counts it,
    and OkxLoanLiquidationEvent reaches the critical receiver at once, naming type and account."""
    started = time.monotonic()
    labels = {"alertname": "OkxLoanLiquidationEvent", "account": LIQUIDATED}
    post, alert = stack.posted("firing", after=stack.scraping_since - 5, **labels)
    assert post.path == receiver_path("critical")
    assert alert["labels"]["type"] == "partial_liquidation"
    assert alert["labels"]["severity"] == "critical"
    summary = alert["annotations"]["summary"]
    assert summary == f"OKX loan account {LIQUIDATED}: OKX partial_liquidation", summary
    [counted] = stack.query(
        f'okx_loan_events_total{{job="{JOB}",account="{LIQUIDATED}",type="partial_liquidation"}}'
    )
    assert float(counted["value"][1]) >= 1
    # no other account was liquidated, and the old records of every account counted nothing
    others = stack.query(f'okx_loan_events_total{{job="{JOB}",account!="{LIQUIDATED}"}} > 0')
    assert others == [], others
    print(
        f"OkxLoanLiquidationEvent ({LIQUIDATED}, partial_liquidation) at the critical webhook "
        f"{post.received - started:.2f} s into the test"
    )


def percent(ratio: float) -> str:
    """Go's humanizePercentage for the round ratios used here: 0.72 -> '72%'."""
    return f"{ratio * 100:.4g}%"


# --------------------------------------------------------------------------------------------------
# Dashboard queries


@dataclass(frozen=True)
class DashboardQuery:
    where: str
    expr: str


def panel_queries(panels: list[dict[str, Any]], row: str = "") -> Iterator[DashboardQuery]:
    """Every target expr of ``panels``, including the panels of collapsed rows."""
    for panel in panels:
        title = panel.get("title") or f"panel {panel.get('id')}"
        if panel.get("type") == "row":
            yield from panel_queries(panel.get("panels", []), row=title)
            continue
        for target in panel.get("targets", []):
            if target.get("expr"):
                where = f"{row} / {title} [{target.get('refId', '?')}]".lstrip(" /")
                yield DashboardQuery(where, target["expr"])


VARIABLE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)(?::[\w]+)?\]\]")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*)\s*,\s*)?(\w+)\s*\)\s*$", re.DOTALL)


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with Grafana's ``$var``, ``${var}``, ``${var:fmt}`` and ``[[var]]`` replaced."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(f"no value for variable ${name}")
        return values[name]

    return VARIABLE.sub(replace, expr)


def label_values(stack: Stack, query: str) -> list[str]:
    """A ``label_values([selector,] label)`` variable query, as Grafana runs it."""
    match = LABEL_VALUES.match(query)
    assert match, f"not a label_values() query: {query}"
    selector, label = match.group(1), match.group(2)
    params = {"match[]": selector.strip()} if selector else {}
    response = httpx.get(
        f"{stack.prometheus_url}/api/v1/label/{label}/values", params=params, timeout=10
    )
    body = response.json()
    if body.get("status") != "success":
        raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
    return list(body["data"])


def resolve_variables(stack: Stack, dashboard: dict[str, Any]) -> dict[str, str]:
    """Run the template variables' queries in order, each seeing the ones before it; return
    their values as the dashboard's queries will see them with everything selected."""
    values = dict(GRAFANA_BUILTINS)
    expected = {
        "job": {JOB},
        "instance": {stack.exporter_target},
        "account": set(ACCOUNTS),
        "order": ORDERS,
    }
    for variable in dashboard.get("templating", {}).get("list", []):
        name, kind = variable["name"], variable.get("type")
        if kind == "datasource":
            continue  # not part of any expression
        assert kind == "query", f"variable ${name}: type {kind!r} is not covered by this test"
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        found = label_values(stack, substitute(str(text), values))
        assert found, f"variable ${name}: {text} returns no values"
        if name in expected:
            assert expected[name] <= set(found), f"variable ${name}: {text} -> {found}"
        # All selected: the variable's allValue if it has one, else Grafana's multi-value format
        # for Prometheus, a regex alternation of the values found.
        escaped = [grafana_regex_escape(value) for value in found]
        alternation = escaped[0] if len(escaped) == 1 else f"({'|'.join(escaped)})"
        values[name] = variable.get("allValue") or alternation
    return values


def grafana_regex_escape(value: str) -> str:
    """A value as Grafana puts it into a Prometheus regex matcher: regex metacharacters escaped,
    and each backslash doubled for the PromQL string."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", value).replace("\\", "\\\\")


def problem_with(stack: Stack, expr: str) -> str | None:
    """Why ``expr`` does not show data in this setup; None when it does."""
    try:
        result = stack.query(expr)
    except QueryError as error:
        return f"Prometheus refused it: {error}"
    if not result:
        return "no data"
    numbers = [float(item["value"][1]) for item in result]
    if not any(math.isfinite(number) for number in numbers):
        return f"only NaN/Inf values: {numbers}"
    if "rate(" in expr and not any(number > 0 for number in numbers if math.isfinite(number)):
        return f"every rate is 0: {numbers}"
    jobs = {item["metric"].get("job") for item in result} - {None}
    if jobs - {JOB}:
        return f"series of other jobs: {jobs}"
    accounts = {item["metric"].get("account") for item in result}
    orders = {
        item["metric"].get("order")
        for item in result
        if item["metric"].get("account") == TWO_ORDERS
    }
    if orders - {None}:
        # One series (line, row) per order; OKX gives a liquidation price to 2001 only (2002 has
        # two collateral currencies).
        expected = {STEADY_ORDER} if "liquidation_price" in expr else {STEADY_ORDER, CYCLING_ORDER}
        if orders != expected:
            return f"{TWO_ORDERS}: series for orders {orders}, not one per order {expected}"
    if "group_right" in expr and "okx_loan_up{" in expr and FAILING not in accounts:
        return f"no row for {FAILING}, an account without any order"
    return None


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    # rate() needs a few scrapes in its window; wait until Prometheus has scraped for a while.
    wait = stack.scraping_since + MIN_SCRAPING_SECONDS - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    started = time.monotonic()
    values = resolve_variables(stack, dashboard)
    queries = list(panel_queries(dashboard.get("panels", [])))
    assert len(queries) >= 10, f"only {len(queries)} queries found in {DASHBOARD}"
    annotations = [item for item in dashboard["annotations"]["list"] if item.get("expr")]
    assert annotations, "no annotation queries"
    for annotation in annotations:
        # Grafana runs an annotation as a range query over the dashboard's time range: it must
        # mark the demo's liquidations (one per margin-call cycle).
        expr = substitute(annotation["expr"], values)
        wait_for(
            f"annotation {annotation['name']!r} to mark an event",
            lambda expr=expr: stack.query_range(expr, since=stack.scraping_since - 5),
            MARGIN_CALL_CYCLE + 10,
            interval=1,
            details=stack.diagnostics,
        )

    problems = []
    for query in queries:
        try:
            expr = substitute(query.expr, values)
        except KeyError as error:
            problems.append(f"{query.where}: {error.args[0]}: {query.expr}")
            continue
        problem = problem_with(stack, expr)
        if problem is not None:
            problems.append(f"{query.where}: {problem}\n    {expr}")
    assert not problems, "dashboard queries without data:\n" + "\n".join(problems)
    print(
        f"{len(queries)} dashboard queries and "
        f"{len(dashboard.get('templating', {}).get('list', []))} variables checked in "
        f"{time.monotonic() - started:.2f} s"
    )
