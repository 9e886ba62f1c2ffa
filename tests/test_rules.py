"""Tests for the Prometheus and Alertmanager examples: rules, scrape config and alert routing.

promtool and amtool do the real checking (syntax, rule evaluation, routing); the Python checks on
top hold the conventions a user relies on: every alert is unit-tested firing and resolving, its
thresholds come from OKX's series, its `for:` can be shortened mechanically, and every severity
reaches a receiver.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from metric_contract import PER_ORDER
from tooling import require_binary

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "examples" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "examples" / "alertmanager" / "alertmanager.yml"
UNIT_TESTS = sorted((ROOT / "tests" / "monitoring").glob("*.test.yml"))
JOB = "okx-loan-exporter"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rule_files() -> list[Path]:
    """The rule files prometheus.yml loads, resolved as Prometheus does (relative to it)."""
    return [PROMETHEUS_DIR / name for name in load_yaml(PROMETHEUS_CONFIG)["rule_files"]]


def all_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in rule_files()
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
    ]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in all_rules() if "alert" in rule]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in alerts()]


def run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def duration_seconds(text: str) -> float:
    """Parse a Prometheus duration such as 90s, 5m or 1h30m."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def test_require_binary_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing tool skips a test on a developer's machine but fails it when CI=true."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"promtool is not on PATH.*prometheus"):
        require_binary("promtool")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        require_binary("promtool")


# --- promtool -----------------------------------------------------------------------------------


def test_prometheus_config_loads_the_rules_files_that_exist() -> None:
    files = rule_files()
    assert files, "prometheus.yml loads no rule file"
    for path in files:
        assert path.is_file(), f"prometheus.yml loads {path}, which does not exist"


@pytest.mark.parametrize("path", rule_files(), ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    promtool = require_binary("promtool")
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config() -> None:
    """prometheus.yml is valid and its rule_files paths resolve (promtool checks them too)."""
    promtool = require_binary("promtool")
    result = run([promtool, "check", "config", str(PROMETHEUS_CONFIG)], cwd=Path("/"))
    assert result.returncode == 0, result.stdout + result.stderr
    for path in rule_files():
        assert f"Checking {path}" in result.stdout + result.stderr


@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(path: Path) -> None:
    promtool = require_binary("promtool")
    result = run([promtool, "test", "rules", path.name], cwd=path.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


#: Mutations of rules.yml that the unit tests must catch: (what, [(old, new, count)], the alerts
#: whose checks must then fail). Each is a mistake that would hide a loan's risk from its owner.
MUTATIONS = {
    "strict comparison misses the threshold itself": (
        [
            ("okx_loan_ltv_ratio\n          >= ", "okx_loan_ltv_ratio\n          > ", 2),
            ("ltv_ratio >= ", "ltv_ratio > ", 1),
        ],
        {"OkxLoanMarginCallWarning", "OkxLoanMarginCall", "OkxLoanNearLiquidation"},
    ),
    "annotations do not name the order": (
        [("{{ with $labels.order }}, order {{ . }}{{ end }}", "", 8)],
        {"OkxLoanMarginCallWarning", "OkxLoanMarginCall", "OkxLoanNearLiquidation"}
        | {"OkxLoanLtvMissing"},
    ),
    "a complete order hides another order's missing LTV": (
        [("unless on (job, instance, account, order)", "unless on (job, instance, account)", 1)],
        {"OkxLoanLtvMissing"},
    ),
    "an alert holds on to a vanished order's last values": (
        [
            (
                "expr: okx_loan_ltv_ratio >= okx_loan_margin_call_ltv_ratio",
                "expr: last_over_time(okx_loan_ltv_ratio[10m])"
                " >= last_over_time(okx_loan_margin_call_ltv_ratio[10m])",
                1,
            )
        ],
        {"OkxLoanMarginCall"},
    ),
    "a liquidation is told only after it is old news": (
        [("        for: 0m\n", "        for: 10m\n", 1)],
        {"OkxLoanLiquidationEvent"},
    ),
    "a liquidation alert never resolves": (
        [('forced_repayment_sell"}[30m]) > 0', 'forced_repayment_sell"}[10y]) > 0', 1)],
        {"OkxLoanLiquidationEvent"},
    ),
    "the interest threshold itself already warns": (
        [("okx_loan_interest_rate > on()", "okx_loan_interest_rate >= on()", 1)],
        {"OkxLoanInterestRateHigh"},
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_promtool_unit_tests_catch_a_mutated_rule(mutation: str, tmp_path: Path) -> None:
    """The unit tests can fail: each mutation of the rules makes the named alerts' checks fail."""
    promtool = require_binary("promtool")
    replacements, alerts_caught = MUTATIONS[mutation]
    rules_dir = tmp_path / "examples" / "prometheus"
    tests_dir = tmp_path / "tests" / "monitoring"
    rules_dir.mkdir(parents=True)
    tests_dir.mkdir(parents=True)
    for path in rule_files():
        text = path.read_text(encoding="utf-8")
        for old, new, count in replacements:
            assert text.count(old) == count, f"expected {count} x {old!r} in {path.name}"
            text = text.replace(old, new)
        (rules_dir / path.name).write_text(text, encoding="utf-8")
    for path in UNIT_TESTS:
        (tests_dir / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    result = run([promtool, "test", "rules", *(p.name for p in UNIT_TESTS)], cwd=tests_dir)
    assert result.returncode != 0, f"the unit tests pass with the mutation: {mutation}"
    output = result.stdout + result.stderr
    for alert in alerts_caught:
        assert re.search(rf"alertname: {alert}, time|ALERTS\{{alertname=\"{alert}\"", output), alert


# --- what the unit tests cover ------------------------------------------------------------------


def unit_test_cases() -> list[dict[str, Any]]:
    return [case for path in UNIT_TESTS for case in load_yaml(path)["tests"]]


@pytest.mark.parametrize("alert", alert_names())
def test_every_alert_is_unit_tested_pending_firing_and_resolving(alert: str) -> None:
    """Some test expects the alert quiet for a series, then firing for it, then quiet again."""
    cycle_tested = False
    for case in unit_test_cases():
        checks = sorted(
            (
                duration_seconds(check["eval_time"]),
                {frozenset(e["exp_labels"].items()) for e in check.get("exp_alerts") or []},
            )
            for check in case.get("alert_rule_test", [])
            if check["alertname"] == alert
        )
        for series in set().union(*(firing for _, firing in checks)):
            times = [(t, series in firing) for t, firing in checks]
            first = min(t for t, firing in times if firing)
            before = any(t < first and not firing for t, firing in times)
            after = any(t > first and not firing for t, firing in times)
            cycle_tested = cycle_tested or (before and after)
    assert cycle_tested, f"no unit test expects {alert} quiet, then firing, then resolved"


def series_orders(case: dict[str, Any]) -> set[tuple[str, str]]:
    """(account, order) of every input series of a unit test case that has an order."""
    found = set()
    for item in case.get("input_series", []):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', item["series"]))
        if labels.get("order"):
            found.add((labels["account"], labels["order"]))
    return found


@pytest.mark.parametrize(
    "alert",
    [rule["alert"] for rule in alerts() if any(name in rule["expr"] for name in PER_ORDER)],
)
def test_every_ltv_alert_is_unit_tested_for_one_order_of_two(alert: str) -> None:
    """Some test expects the alert for one order of an account whose other order stays quiet."""
    for case in unit_test_cases():
        fired = {
            (expected["exp_labels"]["account"], str(expected["exp_labels"]["order"]))
            for check in case.get("alert_rule_test", [])
            if check["alertname"] == alert
            for expected in check.get("exp_alerts") or []
            if "order" in expected["exp_labels"]
        }
        quiet = series_orders(case) - fired
        if any(account == other for account, _ in fired for other, _ in quiet):
            return
    pytest.fail(f"no unit test fires {alert} for one order while another of the account is quiet")


def test_every_recording_rule_value_is_unit_tested() -> None:
    tested = {
        check["expr"].strip()
        for case in unit_test_cases()
        for check in case.get("promql_expr_test", [])
        if check.get("exp_samples")
    }
    records = [rule["record"] for rule in all_rules() if "record" in rule]
    assert "okx_loan:margin_call_headroom:ratio" in records
    assert "okx_loan:liquidation_headroom:ratio" in records
    assert set(records) <= tested


# --- conventions --------------------------------------------------------------------------------


def test_recording_rules_compute_the_documented_headroom() -> None:
    exprs = {
        rule["record"]: " ".join(rule["expr"].split()) for rule in all_rules() if "record" in rule
    }
    assert exprs["okx_loan:margin_call_headroom:ratio"] == (
        "1 - okx_loan_ltv_ratio / okx_loan_margin_call_ltv_ratio"
    )
    assert exprs["okx_loan:liquidation_headroom:ratio"] == (
        "1 - okx_loan_ltv_ratio / okx_loan_liquidation_ltv_ratio"
    )


EVENT_ALERTS = {"OkxLoanLiquidationEvent"}
"""Alerts on a record OKX wrote (a liquidation): they fire at the first scrape that shows it."""


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_alert_conventions(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert re.fullmatch(r"OkxLoan(?:[A-Z][a-z0-9]*)+", name), f"{name}: not CamelCase OkxLoan..."
    assert rule.get("labels", {}).get("severity") in {"warning", "critical"}
    annotations = rule.get("annotations", {})
    assert annotations.get("summary", "").strip(), f"{name}: no summary"
    assert annotations.get("description", "").strip(), f"{name}: no description"
    seconds = duration_seconds(str(rule.get("for", "")))
    if name in EVENT_ALERTS:  # an event already happened: waiting would only delay the news
        assert "for" in rule and seconds == 0, f"{name}: an event alert fires at once (for: 0m)"
    else:
        assert 60 <= seconds <= 300, f"{name}: for: {rule.get('for')} is not a production 1m..5m"
    text = annotations["summary"] + annotations["description"]
    if "okx_loan_" in rule["expr"]:
        assert "$labels.account" in text, f"{name}: the annotations do not name the account"
    if any(series in rule["expr"] for series in PER_ORDER):
        for key in ("summary", "description"):
            assert "$labels.order" in annotations[key], f"{name}: the {key} does not name the order"


LOOKUP = re.compile(r'printf "((?:\\.|[^"\\])*)"((?:\s+\$labels\.\w+)*)\s*\|\s*query')


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_annotation_lookups_select_the_alerts_own_series(rule: dict[str, Any]) -> None:
    """A threshold looked up for the annotations is the alerting order's own, not any order's of
    the account: the selector names every identifying label, each filled from the alert's."""
    for text in rule["annotations"].values():
        for template, args in LOOKUP.findall(text):
            ((metric, matchers),) = re.findall(r"(\w+)\{([^}]*)\}", template)
            names = re.findall(r"(\w+)=%q", matchers)
            assert names == [arg.removeprefix("$labels.") for arg in args.split()], text
            expected = ["job", "instance", "account"]
            expected += ["order"] if metric in PER_ORDER else []
            assert names == expected, f"{metric}: looked up by {names}, not {expected}"


@pytest.mark.parametrize(
    "rule",
    [rule for rule in alerts() if rule["expr"].startswith("okx_loan_ltv_ratio >=")],
    ids=lambda r: r["alert"],
)
def test_ltv_alerts_take_thresholds_from_okx_series(rule: dict[str, Any]) -> None:
    """No LTV number in the expression: it compares with OKX's margin-call or liquidation LTV."""
    expr = rule["expr"]
    assert not re.search(r"(?<![\w:])\d+(?:\.\d+)?(?![\w:])", expr), f"a number in: {expr}"
    assert re.search(r"okx_loan_(margin_call|liquidation)_ltv_ratio", expr)
    text = rule["annotations"]["summary"] + rule["annotations"]["description"]
    assert "$value | humanizePercentage" in text


def test_warning_fraction_is_configured_once() -> None:
    """The warning fraction is one recording rule, which the warning alert uses."""
    records = {rule["record"]: rule["expr"] for rule in all_rules() if "record" in rule}
    assert records["okx_loan:margin_call_warning_fraction"].strip() == "vector(0.9)"
    warning = next(rule for rule in alerts() if rule["alert"] == "OkxLoanMarginCallWarning")
    assert "okx_loan:margin_call_warning_fraction" in warning["expr"]
    # Evaluated before the alerts that use it: same group, earlier position.
    for path in rule_files():
        for group in load_yaml(path)["groups"]:
            names = [rule.get("record") or rule.get("alert") for rule in group["rules"]]
            if "OkxLoanMarginCallWarning" in names:
                assert "okx_loan:margin_call_warning_fraction" in names
                assert names.index("okx_loan:margin_call_warning_fraction") < names.index(
                    "OkxLoanMarginCallWarning"
                )


def test_for_durations_can_be_rewritten_mechanically(tmp_path: Path) -> None:
    """What an end-to-end test does: set every `for:` to 1s through PyYAML; the result is valid."""
    promtool = require_binary("promtool")
    for path in rule_files():
        document = load_yaml(path)
        rewritten = 0
        for group in document["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert "for" in rule, f"{rule['alert']} has no for:"
                    rule["for"] = "1s"
                    rewritten += 1
        assert rewritten == sum(1 for g in document["groups"] for r in g["rules"] if "alert" in r)
        target = tmp_path / path.name
        target.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        result = run([promtool, "check", "rules", str(target)])
        assert result.returncode == 0, result.stdout + result.stderr


def test_rules_watch_the_job_prometheus_scrapes() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs[JOB]
    assert job["static_configs"][0]["targets"] == ["exporter:9855"]
    assert job.get("scrape_interval", config["global"].get("scrape_interval")) == "15s"
    assert job.get("scrape_timeout", config["global"].get("scrape_timeout")) == "10s"
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]
    up_jobs = {
        match for rule in alerts() for match in re.findall(r'\bup\{job="([^"]+)"', rule["expr"])
    }
    assert up_jobs == {JOB}


# --- Alertmanager -------------------------------------------------------------------------------


def test_amtool_check_config() -> None:
    amtool = require_binary("amtool")
    result = run([amtool, "check-config", str(ALERTMANAGER_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def routed_receiver(amtool: str, labels: dict[str, str]) -> str:
    result = run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_CONFIG}",
            *(f"{key}={value}" for key, value in labels.items()),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1].strip()


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_every_alert_reaches_the_receiver_of_its_severity(rule: dict[str, Any]) -> None:
    amtool = require_binary("amtool")
    severity = rule["labels"]["severity"]
    labels = {"alertname": rule["alert"], "severity": severity, "account": "main", "job": JOB}
    assert routed_receiver(amtool, labels) == f"{severity}-webhook"


def test_routing_timing_and_grouping() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    route = config["route"]
    assert route["group_by"] == ["alertname", "account"]
    routes = {tuple(r["matchers"]): r for r in route["routes"]}
    critical = routes[('severity="critical"',)]
    warning = routes[('severity="warning"',)]
    assert duration_seconds(critical["repeat_interval"]) <= 3600
    assert duration_seconds(warning["repeat_interval"]) > duration_seconds(
        critical["repeat_interval"]
    )
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    for name in ("critical-webhook", "warning-webhook"):
        assert receivers[name]["webhook_configs"][0]["url"].startswith("http")
    text = ALERTMANAGER_CONFIG.read_text(encoding="utf-8")
    assert "# - name: critical-email" in text and "email_configs" in text
    assert "slack_configs" in text


def test_margin_call_inhibits_the_warning_for_the_same_order_only() -> None:
    rules = load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]
    known = set(alert_names())
    for rule in rules:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            for name in re.findall(r"OkxLoan\w+", matcher):
                assert name in known, f"inhibit rule names an unknown alert {name}"
    assert any(
        rule["source_matchers"] == ['alertname="OkxLoanMarginCall"']
        and rule["target_matchers"] == ['alertname="OkxLoanMarginCallWarning"']
        for rule in rules
    )
    # One order's margin call or liquidation must never silence another order's alert.
    for rule in rules:
        assert {"account", "order"} <= set(rule["equal"]), rule
