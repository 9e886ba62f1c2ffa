"""The landing page in a real browser: headless Chromium against the exporter serving the demo.

The simulator (its own process) serves the demo accounts with LTVs driven into each state; the
exporter (its own process) reads them, and an account whose API key OKX does not know, in one
scrape.
Chromium then opens ``/`` and the test reads the rows and the colours the browser computed, and
compares them with the same scrape's metrics and the alert rules' fractions.
"""

from __future__ import annotations

import colorsys
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from browser import Chromium
from e2e_support import (
    LOOPBACK,
    Samples,
    edit_config,
    exporter_argv,
    managed_processes,
    scrape,
    start_simulator,
    value,
)
from tooling import require_binary

from okx_loan_exporter.okx import HINTS

pytestmark = pytest.mark.e2e

RULES = Path(__file__).resolve().parents[1] / "examples" / "prometheus" / "rules.yml"
DRIVEN = {  # account: (LTV set in the simulator, the state the page must show)
    "btc-usdt": (0.45, "OK"),
    "eth-usdc": (0.65, "Warning"),  # margin call at 0.7: 0.63 warns
    "demo-trading": (0.72, "Margin call"),
    "okx-docs-example": (0.81, "Liquidation zone"),  # liquidation at 0.8374: 0.7955 is the zone
}
BROKEN = "unknown-key"
HUES = {  # state: the hue range (degrees) its colour must fall in
    "OK": (90, 160),  # green
    "Warning": (35, 60),  # amber
    "Margin call": (12, 35),  # orange
    "Liquidation zone": (-12, 12),  # red
}
ROWS_JS = """(() => {
  const text = (element) => element.innerText.replace(/\\s+/g, " ").trim();
  const headers = [...document.querySelectorAll("thead th")].map(text);
  const status = headers.indexOf("Status");
  const rows = [...document.querySelectorAll("tbody tr")].map((row) => {
    const label = row.cells[status].firstElementChild || row.cells[status];
    const style = getComputedStyle(label);
    const box = label.getBoundingClientRect();
    return {
      cells: [...row.cells].map((cell) => ({text: text(cell), span: cell.colSpan})),
      background: style.backgroundColor,
      color: style.color,
      shown: box.width > 0 && box.height > 0 && style.visibility === "visible",
    };
  });
  return {headers, rows};
})()"""


def fractions() -> tuple[float, float]:
    """The rules' warning fraction of the margin-call LTV and critical fraction of liqLTV."""
    records = {
        rule["record"]: rule["expr"]
        for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
        if "record" in rule
    }

    def number(name: str) -> float:
        match = re.fullmatch(r"vector\(([0-9.]+)\)", records[name])
        assert match, f"{name} is {records[name]!r}, not vector(<number>)"
        return float(match[1])

    return (
        number("okx_loan:margin_call_warning_fraction"),
        number("okx_loan:liquidation_critical_fraction"),
    )


def expected_state(ltv: float, margin_call: float, liquidation: float) -> str:
    """The state the alert rules give these values (the most severe alert that fires)."""
    warning, critical = fractions()
    if ltv >= liquidation * critical:
        return "Liquidation zone"
    if ltv >= margin_call:
        return "Margin call"
    if ltv >= margin_call * warning:
        return "Warning"
    return "OK"


def rgb(css: str) -> tuple[float, float, float]:
    match = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, ([0-9.]+))?\)", css)
    assert match and (match[4] is None or float(match[4]) == 1), f"not an opaque colour: {css}"
    return int(match[1]) / 255, int(match[2]) / 255, int(match[3]) / 255


def hue(css: str) -> float:
    """The hue in degrees, from -180 to 180 (so that reds sit around 0)."""
    degrees = colorsys.rgb_to_hsv(*rgb(css))[0] * 360
    return degrees - 360 if degrees > 180 else degrees


def contrast(foreground: str, background: str) -> float:
    """WCAG 2 contrast ratio of two CSS colours."""

    def luminance(css: str) -> float:
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb(css)]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    light, dark = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def orders(samples: Samples) -> dict[tuple[str, str], dict[str, float]]:
    """{(account, order): {metric: value}} of the three LTV series in a scrape."""
    found: dict[tuple[str, str], dict[str, float]] = {}
    for (name, labels), sample in samples.items():
        if name in ("okx_loan_ltv_ratio", "okx_loan_margin_call_ltv_ratio") or (
            name == "okx_loan_liquidation_ltv_ratio"
        ):
            label = dict(labels)
            found.setdefault((label["account"], label.get("order", "")), {})[name] = sample
    return found


def percent(ratio: float) -> str:
    return f"{ratio * 100:.2f} %"


def points(threshold: float, ltv: float) -> str:
    return f"{round((threshold - ltv) * 100, 2) + 0.0:.2f} pp"


def test_browser_shows_each_order_with_its_state_colour_and_failures_with_their_hint(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    chromium = require_binary("chromium")
    config = tmp_path / "exporter.yml"
    with managed_processes(request, tmp_path / "logs") as group:
        _, control = start_simulator(group, config)
        for account, (ltv, _) in DRIVEN.items():
            control.set_account(account, ltv=ltv)  # also stops that account's price walk
        accounts = yaml.safe_load(config.read_text(encoding="utf-8"))["accounts"]
        broken = {**accounts[0], "name": BROKEN, "api_key": "a-key-okx-does-not-know"}
        # A long TTL: the page shows the very answers of the scrape below.
        edit_config(config, cache_ttl="5m", max_stale="10m", accounts=[*accounts, broken])
        _, port = group.start("exporter", lambda port: exporter_argv(port, config))
        base_url = f"http://{LOOPBACK}:{port}"
        samples = scrape(base_url)
        html = httpx.get(f"{base_url}/", timeout=10).text
        with Chromium(chromium, tmp_path / "chromium") as browser:
            page: dict[str, Any] = browser.open(f"{base_url}/").evaluate(ROWS_JS)

    assert value(samples, "okx_loan_up", account=BROKEN) == 0
    for account in [*accounts, broken]:
        for secret in (account["api_key"], account["secret_key"], account["passphrase"]):
            assert secret not in html
    headers = page["headers"]
    rows = []
    for row in page["rows"]:
        cells, column = {}, 0
        for cell in row["cells"]:
            cells["message" if cell["span"] > 1 else headers[column]] = cell["text"]
            column += cell["span"]
        assert column == len(headers), row
        rows.append({**cells, **{key: row[key] for key in ("background", "color", "shown")}})

    # One row per order the scrape exported, in the page's values, with the rules' state.
    exported = orders(samples)
    shown = {
        (row["Account"], "" if row["Order"] == "\N{EM DASH}" else row["Order"]): row
        for row in rows
        if "LTV" in row
    }
    assert set(shown) == set(exported), (shown.keys(), exported.keys())
    for key, values in exported.items():
        row = shown[key]
        ltv = values["okx_loan_ltv_ratio"]
        margin_call = values["okx_loan_margin_call_ltv_ratio"]
        liquidation = values["okx_loan_liquidation_ltv_ratio"]
        assert (
            row["LTV"],
            row["Margin-call LTV"],
            row["Headroom to margin call"],
            row["Liquidation LTV"],
            row["Headroom to liquidation"],
            row["Status"],
        ) == (
            percent(ltv),
            percent(margin_call),
            points(margin_call, ltv),
            percent(liquidation),
            points(liquidation, ltv),
            expected_state(ltv, margin_call, liquidation),
        ), key
        assert re.fullmatch(r"\d+ s", row["Data age"]), row
    for account, (_, state) in DRIVEN.items():
        (row,) = [row for key, row in shown.items() if key[0] == account]
        assert row["Status"] == state, row

    # Accounts without orders: one row each, saying why.
    others = {row["Account"]: row for row in rows if "LTV" not in row}
    assert others["no-loan"]["Status"] == "No loan"
    assert others["no-loan"]["message"].startswith("no loan")
    failing = others[BROKEN]
    assert failing["Status"] == "OKX error"
    assert failing["message"].startswith("auth: OKX code 50111")
    assert failing["message"].endswith(f"What to do: {HINTS['50111']}")
    assert failing["Data age"] == "never"
    assert set(others) == {"no-loan", BROKEN}

    # Colours as Chromium computed them: one per state, in the state's hue, readable text.
    colours: dict[str, set[str]] = {}
    for row in rows:
        assert row["shown"], row
        assert contrast(row["color"], row["background"]) >= 4.5, row
        colours.setdefault(row["Status"], set()).add(row["background"])
    assert all(len(backgrounds) == 1 for backgrounds in colours.values()), colours
    state_colours = {state: next(iter(colours[state])) for state in HUES}
    for state, (low, high) in HUES.items():
        assert low <= hue(state_colours[state]) <= high, (state, state_colours[state])
    alarming = [*HUES, "OKX error"]
    assert len({next(iter(colours[state])) for state in alarming}) == len(alarming), colours
    (neutral,) = colours["No loan"]
    assert colorsys.rgb_to_hsv(*rgb(neutral))[1] < 0.1, neutral  # grey: no state to signal
