"""The landing page ``/``: one row per account and loan order, coloured by how near its LTV is to
OKX's thresholds, rendered from the cached snapshots (it never calls OKX and shows no secret)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from okx_loan_exporter.cache import AccountSnapshot
from okx_loan_exporter.position import Order
from okx_loan_exporter.prices import STABLECOINS, IndexPrices
from okx_loan_exporter.whatif import order_risk

MARGIN_CALL_WARNING_FRACTION = 0.9
"""Warning from this fraction of the margin-call LTV: ``okx_loan:margin_call_warning_fraction``
of examples/prometheus/rules.yml (alert OkxLoanMarginCallWarning)."""
LIQUIDATION_ZONE_FRACTION = 0.95
"""Liquidation zone from this fraction of the liquidation LTV:
``okx_loan:liquidation_critical_fraction`` of the rules (alert OkxLoanNearLiquidation)."""
MIN_REFRESH_SECONDS = 5
MAX_REFRESH_SECONDS = 60


class Status(Enum):
    """A row's state: its label (shown beside the colour, never colour alone) and CSS class."""

    OK = ("OK", "ok")
    WARNING = ("Warning", "warning")
    MARGIN_CALL = ("Margin call", "margin-call")
    LIQUIDATION_ZONE = ("Liquidation zone", "liquidation")
    UNKNOWN = ("Unknown", "unknown")
    NO_LOAN = ("No loan", "neutral")
    NOT_FETCHED = ("Not fetched yet", "neutral")
    STALE = ("Stale", "neutral")
    FAILING = ("OKX error", "failing")

    def __init__(self, label: str, css_class: str) -> None:
        self.label = label
        self.css_class = css_class


def order_status(order: Order) -> Status:
    """The most severe state the order's LTV provably reached, as the alert rules decide it.

    OK only when both thresholds are known and the LTV is below the warning; without an LTV, or
    without the threshold that would decide, the state is unknown (never a reassuring OK).
    """
    ltv, margin_call, liquidation = order.current_ltv, order.margin_call_ltv, order.liquidation_ltv
    if ltv is None:
        return Status.UNKNOWN
    if liquidation is not None and ltv >= liquidation * LIQUIDATION_ZONE_FRACTION:
        return Status.LIQUIDATION_ZONE
    if margin_call is not None and ltv >= margin_call:
        return Status.MARGIN_CALL
    if margin_call is not None and ltv >= margin_call * MARGIN_CALL_WARNING_FRACTION:
        return Status.WARNING
    if margin_call is None or liquidation is None:
        return Status.UNKNOWN
    return Status.OK


@dataclass(frozen=True)
class _Row:
    account: str
    order: str
    status: Status
    cells: str
    """The HTML of the cells between the status and the data age."""


def render_landing_page(
    snapshots: Sequence[AccountSnapshot], *, now: float, cache_ttl: float, version: str
) -> str:
    """The whole HTML page for these snapshots at time ``now`` (seconds since the epoch)."""
    refresh = refresh_seconds(cache_ttl)
    body = "\n".join(
        _row_html(row, snapshot, now) for snapshot in snapshots for row in _rows(snapshot)
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>OKX Loan Exporter</title>
<style>{_STYLE}</style>
</head><body>
<h1>OKX Loan Exporter</h1>
<p class="summary">{html.escape(_summary(snapshots))}</p>
<table>
<caption>Each account's loan orders: LTV against OKX's margin-call and liquidation LTV</caption>
<thead><tr><th scope="col">Account</th><th scope="col">Order</th><th scope="col">Status</th>
<th scope="col" class="num">LTV</th><th scope="col" class="num">Margin-call LTV</th>
<th scope="col" class="num">Headroom to margin call</th>
<th scope="col" class="num">Liquidation LTV</th>
<th scope="col" class="num">Headroom to liquidation</th>
<th scope="col" class="num">Smallest drop to liquidation</th>
<th scope="col" class="num">Data age</th></tr></thead>
<tbody>
{body}
</tbody></table>
<p class="legend">Headroom is in percentage points (pp) of LTV. <b>Warning</b>: LTV at or above
{MARGIN_CALL_WARNING_FRACTION:.0%} of the margin-call LTV. <b>Margin call</b>: at or above it.
<b>Liquidation zone</b>: at or above {LIQUIDATION_ZONE_FRACTION:.0%} of the liquidation LTV, where
OKX sells the collateral. The same fractions as the alert rules. <b>Smallest drop to
liquidation</b>: the collateral currency whose price alone needs to fall least to reach the
liquidation LTV, and by how much (from OKX's index prices; "never" when no single currency can).</p>
<p class="legend">This page does not contact OKX: it shows what the last scrape of
<a href="metrics">/metrics</a> fetched (at most one request per account every
{cache_ttl:g} s). It reloads every {refresh} s. Version {html.escape(version)}.
Health: <a href="-/healthy">/-/healthy</a>, <a href="-/ready">/-/ready</a>.</p>
</body></html>
"""


def refresh_seconds(cache_ttl: float) -> int:
    """How often the page reloads: once per ``cache_ttl``, within 5 s to a minute."""
    return min(MAX_REFRESH_SECONDS, max(MIN_REFRESH_SECONDS, math.ceil(cache_ttl)))


def _rows(snapshot: AccountSnapshot) -> list[_Row]:
    name, position = snapshot.name, snapshot.position
    rows: list[_Row] = []
    if position is not None and position.orders:
        prices = snapshot.prices.prices if snapshot.prices is not None else None
        rows = [_order_row(name, order, prices) for order in position.orders]
    elif position is not None:
        rows = [_message_row(name, Status.NO_LOAN, "no loan: OKX reports no Flexible Loan order")]
    elif snapshot.last_success is None and snapshot.last_failure is None:
        rows = [
            _message_row(
                name,
                Status.NOT_FETCHED,
                "not fetched yet: values appear after the first scrape of /metrics",
            )
        ]
    elif snapshot.last_failure is None:
        rows = [
            _message_row(
                name,
                Status.STALE,
                "no recent data: the last answer is older than max_stale; the next scrape of "
                "/metrics asks OKX again",
            )
        ]
    if snapshot.last_failure is not None:
        rows.append(_failure_row(snapshot))
    return rows


def _order_row(account: str, order: Order, prices: IndexPrices | None) -> _Row:
    ltv = order.current_ltv
    cells = "".join(
        f'<td class="num">{text}</td>'
        for text in (
            _percent(ltv),
            _percent(order.margin_call_ltv),
            _headroom(ltv, order.margin_call_ltv),
            _percent(order.liquidation_ltv),
            _headroom(ltv, order.liquidation_ltv),
            _smallest_drop(order, prices),
        )
    )
    return _Row(account, order.order_id, order_status(order), cells)


def _smallest_drop(order: Order, prices: IndexPrices | None) -> str:
    """The collateral currency that alone needs the smallest price drop to liquidate the order."""
    risk = None
    if prices is not None:
        risk = order_risk(order, prices.of((*order.collateral, *order.loans)), STABLECOINS)
    if risk is None or not risk.drop_to_liquidation:
        return "\N{EM DASH}"
    currency, drop = min(risk.drop_to_liquidation.items(), key=lambda item: item[1])
    if drop >= 1.0:
        return "never"
    return f"{html.escape(currency)} \N{MINUS SIGN}{drop * 100:.2f} %"


def _message_row(account: str, status: Status, message: str) -> _Row:
    return _Row(account, "", status, f'<td colspan="6" class="message">{html.escape(message)}</td>')


def _failure_row(snapshot: AccountSnapshot) -> _Row:
    reason = snapshot.last_failure.value if snapshot.last_failure is not None else ""
    hint = snapshot.last_hint or ""
    detail = (snapshot.last_error or "").removeprefix(f"{reason}: ")
    if hint:
        detail = detail.removesuffix(f" ({hint})")  # OkxError's text ends with its hint
    message = f'<span class="reason">{html.escape(reason)}</span>: {html.escape(detail)}'
    if hint:
        message += f'<br><span class="hint">What to do: {html.escape(hint)}</span>'
    cells = f'<td colspan="6" class="message">{message}</td>'
    return _Row(snapshot.name, "", Status.FAILING, cells)


def _row_html(row: _Row, snapshot: AccountSnapshot, now: float) -> str:
    order = (
        html.escape(row.order)
        if row.order
        else '<span class="none" title="no loan order id">\N{EM DASH}</span>'
    )
    badge = f'<span class="badge {row.status.css_class}">{row.status.label}</span>'
    age, when = _age(snapshot.last_success, now)
    return (
        f'<tr class="{row.status.css_class}"><th scope="row">{html.escape(row.account)}</th>'
        f"<td>{order}</td><td>{badge}</td>{row.cells}"
        f'<td class="num" title="{html.escape(when)}">{html.escape(age)}</td></tr>'
    )


def _percent(ratio: float | None) -> str:
    return "\N{EM DASH}" if ratio is None else f"{ratio * 100:.2f} %"


def _headroom(ltv: float | None, threshold: float | None) -> str:
    """Percentage points of LTV left before ``threshold``; negative once beyond it."""
    if ltv is None or threshold is None:
        return "\N{EM DASH}"
    return f"{round((threshold - ltv) * 100, 2) + 0.0:.2f} pp"


def _age(last_success: float | None, now: float) -> tuple[str, str]:
    """The data's age for a person ("2 min 5 s") and the moment of the answer (for a tooltip)."""
    if last_success is None:
        return "never", "no good answer from OKX yet"
    when = datetime.fromtimestamp(last_success, tz=UTC).strftime(
        "last good answer %Y-%m-%d %H:%M:%S UTC"
    )
    seconds = max(0, round(now - last_success))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h", when
    if hours:
        return f"{hours} h {minutes} min", when
    if minutes:
        return f"{minutes} min {seconds} s", when
    return f"{seconds} s", when


def _summary(snapshots: Sequence[AccountSnapshot]) -> str:
    """One line for a glance: how many orders are in each non-OK state, how many accounts fail."""
    counts: dict[Status, int] = {}
    orders = 0
    for snapshot in snapshots:
        if snapshot.position is not None:
            for order in snapshot.position.orders:
                orders += 1
                status = order_status(order)
                counts[status] = counts.get(status, 0) + 1
    failing = sum(1 for snapshot in snapshots if snapshot.last_failure is not None)
    parts = [
        f"{counts[status]} {status.label.lower()}"
        for status in (Status.LIQUIDATION_ZONE, Status.MARGIN_CALL, Status.WARNING, Status.UNKNOWN)
        if counts.get(status)
    ]
    if failing:
        parts.append(f"{failing} account{'' if failing == 1 else 's'} failing")
    accounts = len(snapshots)
    head = (
        f"{accounts} account{'' if accounts == 1 else 's'}, "
        f"{orders} loan order{'' if orders == 1 else 's'}"
    )
    return f"{head}: {', '.join(parts) if parts else 'all OK'}."


_STYLE = """
:root{color-scheme:light;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
body{margin:1.5em 2em;color:#1f2328;background:#fff}
h1{font-size:1.5em;margin:0 0 .3em}
.summary{font-size:1.1em;margin:.2em 0 1em}
table{border-collapse:collapse}
caption{text-align:left;color:#57606a;padding-bottom:.4em}
th,td{padding:.45em .8em;text-align:left;border-bottom:1px solid #d0d7de;vertical-align:middle}
thead th{background:#f6f8fa;font-weight:600;vertical-align:bottom}
thead th.num{white-space:normal;max-width:7.5em}
tbody th{font-weight:600;white-space:nowrap}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.message{color:#424a53;max-width:48em}
.reason{font-weight:600}
.none{color:#57606a}
.badge{display:inline-block;padding:.1em .6em;border-radius:1em;font-weight:600;
white-space:nowrap;color:#fff}
.badge.ok{background:#1a7f37}
.badge.warning{background:#f2c744;color:#1f2328}
.badge.margin-call{background:#c2410c}
.badge.liquidation{background:#b91c1c}
.badge.failing{background:#6639ba}
.badge.unknown,.badge.neutral{background:#e6e8eb;color:#1f2328}
tr.liquidation{background:#fdecec}
tr.margin-call{background:#fdf0e7}
tr.warning{background:#fdf8e3}
tr.failing{background:#f4f0fb}
.legend{color:#57606a;max-width:60em;font-size:.9em}
"""
