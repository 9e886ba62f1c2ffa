"""The Grafana dashboard as code: builds grafana/okx-loan-dashboard.json with the Foundation SDK.

Run ``python grafana/dashboard.py`` after editing this file and commit both; the SDK is a test
dependency (``pip install -e '.[test]'``). tests/test_dashboard.py fails when the two differ.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import common, gauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as builder
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as kinds
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat, QueryEditorMode

OUTPUT = Path(__file__).resolve().with_name("okx-loan-dashboard.json")
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")

_ACCOUNT = 'job=~"$job", instance=~"$instance", account=~"$account"'
_ORDER = f'{_ACCOUNT}, order=~"$order"'


def account_series(name: str) -> str:
    """A per-account series, filtered by the job, instance and account pickers."""
    return f"{name}{{{_ACCOUNT}}}"


def order_series(name: str) -> str:
    """A per-order series, filtered by the order picker too."""
    return f"{name}{{{_ORDER}}}"


LTV = order_series("okx_loan_ltv_ratio")
MARGIN_CALL = order_series("okx_loan_margin_call_ltv_ratio")
LIQUIDATION = order_series("okx_loan_liquidation_ltv_ratio")
ORDERS = account_series("okx_loan_orders")
DATA_AGE = f"time() - {account_series('okx_loan_last_success_timestamp_seconds')}"


def on_each_order(value: str) -> str:
    """An account's value repeated on each of its selected orders (so that table rows are per
    order), or on the account alone when it holds no order at all."""
    return (
        f"({value}) * on (job, instance, account) group_right () "
        f"group by (job, instance, account, order) ({LTV}) "
        f"or on (job, instance, account) (({value}) unless on (job, instance, account) "
        f"({ORDERS} > 0))"
    )


# --- Queries and panels ---------------------------------------------------------------------------


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .ref_id(ref)
        .datasource(DATASOURCE)
        .editor_mode(QueryEditorMode.CODE)
        .expr(expr)
        .legend_format(legend)
        .range()
    )


def table_query(expr: str, ref: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .ref_id(ref)
        .datasource(DATASOURCE)
        .editor_mode(QueryEditorMode.CODE)
        .expr(expr)
        .format(PromQueryFormat.TABLE)
        .instant()
    )


def thresholds(*steps: tuple[float | None, str]) -> builder.ThresholdsConfig:
    return (
        builder.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def texts(**by_value: tuple[str, str | None]) -> list[model.ValueMapping]:
    """A value mapping: {"0": ("DOWN", "red")} shows 0 as a red DOWN."""
    return [
        model.ValueMap(
            options={
                value: model.ValueMappingResult(text=text, color=color, index=index)
                for index, (value, (text, color)) in enumerate(by_value.items())
            }
        )
    ]


UP_DOWN = texts(**{"0": ("DOWN", "red"), "1": ("UP", "green")})


def stat_panel(
    title: str, description: str, unit: str, expr: str, legend: str, *, width: int, height: int
) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .with_target(query(expr, legend))
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .color_mode(kinds.BigValueColorMode.BACKGROUND)
        .graph_mode(kinds.BigValueGraphMode.AREA)
        .justify_mode(kinds.BigValueJustifyMode.AUTO)
        .orientation(kinds.VizOrientation.AUTO)
        .text_mode(kinds.BigValueTextMode.VALUE_AND_NAME)
        .wide_layout(True)
        .show_percent_change(False)
    )


def graph_panel(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    width: int,
    height: int,
) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .targets(list(targets))
        .draw_style(kinds.GraphDrawStyle.LINE)
        .line_interpolation(kinds.LineInterpolation.STEP_AFTER)
        .line_width(2)
        .fill_opacity(0)
        .show_points(kinds.VisibilityMode.NEVER)
        .span_nulls(False)
        .axis_border_show(False)
        .axis_placement(kinds.AxisPlacement.AUTO)
        .stacking(common.StackingConfig().group("A").mode(kinds.StackingMode.NONE))
        .thresholds_style(
            common.GraphThresholdsStyleConfig().mode(kinds.GraphThresholdsStyleMode.OFF)
        )
        .legend(
            common.VizLegendOptions()
            .display_mode(kinds.LegendDisplayMode.TABLE)
            .placement(kinds.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull"])
        )
        .tooltip(
            common.VizTooltipOptions()
            .mode(kinds.TooltipDisplayMode.MULTI)
            .sort(kinds.SortOrder.DESCENDING)
        )
    )


def table_panel(
    title: str,
    description: str,
    unit: str,
    columns: dict[str, str],
    *,
    first: dict[str, str],
    last: dict[str, str] | None = None,
    hidden: Sequence[str] = (),
    width: int,
    height: int,
) -> table.Panel:
    """A table merging instant queries, one column per query (``columns``: name -> expr), between
    the label columns ``first`` and ``last`` (label -> column name)."""
    refs = [chr(ord("A") + index) for index in range(len(columns))]
    values = {f"Value #{ref}": name for ref, name in zip(refs, columns, strict=True)}
    names = {**(first), **values, **(last or {})}
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .targets([table_query(expr, ref) for ref, expr in zip(refs, columns.values(), strict=True)])
        .align(kinds.FieldTextAlignment.AUTO)
        .cell_options(kinds.TableAutoCellOptions())
        .show_header(True)
        .cell_height(kinds.TableCellHeight.SM)
        .footer(common.TableFooterOptions().show(False).reducer(["sum"]))
        .with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": dict.fromkeys(["Time", "__name__", *hidden], True),
                    "indexByName": {name: index for index, name in enumerate(names)},
                    "renameByName": names,
                },
            )
        )
    )


def setting(name: str, value: object) -> model.DynamicConfigValue:
    return model.DynamicConfigValue(id_val=name, value=value)


def dashed(color: str) -> list[model.DynamicConfigValue]:
    return [
        setting("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
        setting("color", {"mode": "fixed", "fixedColor": color}),
    ]


# --- Rows -----------------------------------------------------------------------------------------

RATIO_TO_MARGIN_CALL = f"{LTV} / {MARGIN_CALL}"
RATIO_TO_LIQUIDATION = f"{LTV} / {LIQUIDATION}"
HEADROOM_TO_MARGIN_CALL = f"1 - {LTV} / {MARGIN_CALL}"
HEADROOM_TO_LIQUIDATION = f"1 - {LTV} / {LIQUIDATION}"
PER_ORDER = "{{account}} {{order}}"


def ratio_stat(
    title: str, description: str, expr: str, *steps: tuple[float | None, str]
) -> stat.Panel:
    """A stat of the risk row: one per-order ratio, coloured by ``steps``."""
    return (
        stat_panel(title, description, "percentunit", expr, PER_ORDER, width=6, height=6)
        .decimals(1)
        .thresholds(thresholds(*steps))
    )


def risk_row() -> list[Builder[model.Panel]]:
    return [
        ratio_stat(
            "LTV as % of margin-call LTV",
            "Per loan order: its current LTV (OKX curLTV) divided by OKX's margin-call LTV "
            "(marginCallLTV) for the same order: 100 % means OKX's margin call is reached. The LTV "
            "is shown as a fraction of the margin-call LTV rather than as a raw LTV, so that fixed "
            "colour steps are right for every order whatever OKX's threshold for it: orange from "
            "90 % (the default of the OkxLoanMarginCallWarning alert), red from 100 % "
            "(OkxLoanMarginCall). Empty when OKX reports no LTV (no active loan). The raw values "
            "are in the table below and the LTV graph.",
            RATIO_TO_MARGIN_CALL,
            (None, "green"),
            (0.9, "orange"),
            (1, "red"),
        ).min(0),
        gauge.Panel()
        .title("LTV as % of liquidation LTV")
        .description(
            "Per loan order: its current LTV (OKX curLTV) divided by OKX's liquidation LTV "
            "(liqLTV): at 100 % OKX liquidates the order's collateral. Shown as a fraction of the "
            "liquidation LTV, so the gauge's scale and colours are right for every order: orange "
            "from 80 %, red from 95 % (the default of the OkxLoanNearLiquidation alert). The "
            "margin call usually comes before this gauge turns orange; see the panel on its left."
        )
        .datasource(DATASOURCE)
        .unit("percentunit")
        .decimals(1)
        .min(0)
        .max(1)
        .span(6)
        .height(6)
        .thresholds(thresholds((None, "green"), (0.8, "orange"), (0.95, "red")))
        .with_target(query(RATIO_TO_LIQUIDATION, PER_ORDER))
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .orientation(kinds.VizOrientation.AUTO)
        .show_threshold_labels(False)
        .show_threshold_markers(True)
        .sizing(kinds.BarGaugeSizing.AUTO)
        .min_viz_height(75)
        .min_viz_width(75),
        ratio_stat(
            "Headroom to margin call",
            "Per loan order: how much its collateral's USD value can still fall, as a share of its "
            "current value, before the LTV reaches OKX's margin-call LTV, with the debt unchanged: "
            "1 - LTV / margin-call LTV (the same as the recording rule "
            "okx_loan:margin_call_headroom:ratio). Red at or below 0 % (margin call reached), "
            "orange below 10 % (where the OkxLoanMarginCallWarning alert fires by default).",
            HEADROOM_TO_MARGIN_CALL,
            (None, "red"),
            (0, "orange"),
            (0.1, "green"),
        ),
        ratio_stat(
            "Headroom to liquidation",
            "Per loan order: how much its collateral's USD value can still fall, as a share of its "
            "current value, before the LTV reaches OKX's liquidation LTV, with the debt unchanged: "
            "1 - LTV / liquidation LTV (the same as the recording rule "
            "okx_loan:liquidation_headroom:ratio). Red below 5 % (where the OkxLoanNearLiquidation "
            "alert fires by default), orange below 20 %.",
            HEADROOM_TO_LIQUIDATION,
            (None, "red"),
            (0.05, "orange"),
            (0.2, "green"),
        ),
        graph_panel(
            "LTV against margin-call and liquidation LTV",
            "One line per loan order: its current LTV (OKX curLTV, solid) with OKX's margin-call "
            "LTV (marginCallLTV, dashed orange) and liquidation LTV (liqLTV, dashed red) for that "
            "order. The exporter caches OKX's answer for cache_ttl, so steps are at most that "
            "often.",
            "percentunit",
            [
                query(LTV, f"{PER_ORDER} LTV", "A"),
                query(MARGIN_CALL, f"{PER_ORDER} margin call", "B"),
                query(LIQUIDATION, f"{PER_ORDER} liquidation", "C"),
            ],
            width=12,
            height=9,
        )
        .min(0)
        .override_by_regexp("/ margin call$/", dashed("orange"))
        .override_by_regexp("/ liquidation$/", dashed("red")),
        graph_panel(
            "Headroom over time",
            "Per loan order: how much its collateral's USD value can fall, as a share of its "
            "current value, before the margin call (1 - LTV / margin-call LTV) and before "
            "liquidation (1 - LTV / liquidation LTV), with the debt unchanged. Below the red line "
            "at 0 % the threshold is reached.",
            "percentunit",
            [
                query(HEADROOM_TO_MARGIN_CALL, f"{PER_ORDER} to margin call", "A"),
                query(HEADROOM_TO_LIQUIDATION, f"{PER_ORDER} to liquidation", "B"),
            ],
            width=12,
            height=9,
        )
        .thresholds_style(
            common.GraphThresholdsStyleConfig().mode(kinds.GraphThresholdsStyleMode.LINE)
        )
        .thresholds(thresholds((None, "red"), (0, "transparent"))),
        table_panel(
            "Accounts and loan orders",
            "One row per loan order (an account without any order gets one row of its own), now: "
            "OKX's current LTV, margin-call and liquidation LTV, the headroom to each (how far the "
            "collateral's USD value can fall before it), the account's number of orders, whether "
            "OKX reports an active loan, whether the last request to OKX succeeded, and how old "
            "the data is. An empty cell means OKX sent no value.",
            "percentunit",
            {
                "LTV": LTV,
                "Margin-call LTV": MARGIN_CALL,
                "Liquidation LTV": LIQUIDATION,
                "Headroom to margin call": HEADROOM_TO_MARGIN_CALL,
                "Headroom to liquidation": HEADROOM_TO_LIQUIDATION,
                "Orders of the account": on_each_order(ORDERS),
                "Active loan": on_each_order(account_series("okx_loan_active")),
                "OKX reachable": on_each_order(account_series("okx_loan_up")),
                "Data age": on_each_order(DATA_AGE),
            },
            first={"account": "Account", "order": "Order"},
            last={"instance": "Exporter", "job": "Job"},
            width=24,
            height=8,
        )
        .decimals(2)
        .override_by_name(
            "Orders of the account", [setting("unit", "none"), setting("decimals", 0)]
        )
        .override_by_name(
            "Active loan",
            [
                setting("unit", "none"),
                setting("mappings", texts(**{"0": ("no", None), "1": ("yes", None)})),
            ],
        )
        .override_by_name(
            "OKX reachable",
            [
                setting("unit", "none"),
                setting("mappings", UP_DOWN),
                setting("custom.cellOptions", {"type": "color-text"}),
            ],
        )
        .override_by_name("Data age", [setting("unit", "s"), setting("decimals", 0)]),
    ]


def loan_row() -> list[Builder[model.Panel]]:
    borrowed = order_series("okx_loan_borrowed_amount")
    collateral = order_series("okx_loan_collateral_amount")
    return [
        graph_panel(
            "Borrowed and collateral value (USD)",
            "Per loan order: the USD value of everything it borrowed (OKX loanNotionalUsd) and of "
            "all its collateral (collateralNotionalUsd), as OKX values them. LTV is their ratio.",
            "currencyUSD",
            [
                query(order_series("okx_loan_borrowed_notional_usd"), f"{PER_ORDER} borrowed", "A"),
                query(
                    order_series("okx_loan_collateral_notional_usd"), f"{PER_ORDER} collateral", "B"
                ),
            ],
            width=12,
            height=8,
        ).min(0),
        stat_panel(
            "Liquidation price",
            "Per loan order: the price at which OKX liquidates its collateral "
            "(riskWarningData.liqPx), in the quote currency of the instrument named after the "
            "order (riskWarningData.instId). OKX gives it only when the order has exactly one "
            "collateral currency and one borrowed currency; otherwise this panel is empty.",
            "none",
            order_series("okx_loan_liquidation_price"),
            f"{PER_ORDER} {{{{instrument}}}}",
            width=12,
            height=8,
        )
        .no_value("not given by OKX")
        .thresholds(thresholds((None, "text")))
        .color_mode(kinds.BigValueColorMode.NONE),
        table_panel(
            "Amounts per currency",
            "Per loan order and currency: the amount borrowed (OKX loanData.amt) and the amount "
            "pledged as collateral (collateralData.amt), each in that currency's own unit. A "
            "repaid or withdrawn currency, or a closed order, disappears at once.",
            "none",
            {"Borrowed": borrowed, "Collateral": collateral},
            first={"account": "Account", "order": "Order", "currency": "Currency"},
            hidden=["job", "instance"],
            width=8,
            height=9,
        ),
        graph_panel(
            "Borrowed amount per currency",
            "Per loan order and currency: the amount borrowed (OKX loanData.amt), in that "
            "currency's own unit.",
            "none",
            [query(borrowed, f"{PER_ORDER} {{{{currency}}}}")],
            width=8,
            height=9,
        ).min(0),
        graph_panel(
            "Collateral amount per currency",
            "Per loan order and currency: the amount pledged as collateral (OKX "
            "collateralData.amt), in that currency's own unit.",
            "none",
            [query(collateral, f"{PER_ORDER} {{{{currency}}}}")],
            width=8,
            height=9,
        ).min(0),
    ]


_EXPORTER = 'job=~"$job", instance=~"$instance"'
INDEX_PRICE = f"okx_loan_index_price{{{_EXPORTER}}}"
LIQUIDATION_PRICE = order_series("okx_loan_liquidation_price")


def index_price_of(per_order: str, currency_from: str | None = None) -> str:
    """The index price (USDT) of a currency, on each series of ``per_order`` naming it in
    ``currency`` (or, with ``currency_from``, in that label after ``label_replace``)."""
    keyed = per_order
    if currency_from is not None:
        keyed = f'label_replace({per_order}, "currency", "$1", {currency_from})'
    labels = "job, instance, account, order, currency"
    join = "on (job, instance, currency) group_right ()"
    return f"({INDEX_PRICE} * {join} group by ({labels}) ({keyed}))"


# The price of a one-collateral order's collateral in its instrument's quote currency (BTC-USDT:
# BTC in USDT; ETH-BTC: ETH in BTC), per order, as OKX quotes its liqPx.
_BASE = '"instrument", "([^-]+)-.+"'
_QUOTE = '"instrument", "[^-]+-(.+)"'
PRICE_IN_QUOTE = (
    f"({index_price_of(LIQUIDATION_PRICE, _BASE)} "
    f"/ ignoring (currency) {index_price_of(LIQUIDATION_PRICE, _QUOTE)})"
)


def price_row() -> list[Builder[model.Panel]]:
    drop_mc = order_series("okx_loan_price_drop_to_margin_call_ratio")
    drop_liq = order_series("okx_loan_price_drop_to_liquidation_ratio")
    after = order_series("okx_loan_ltv_after_price_drop_ratio")
    rise_mc = order_series("okx_loan_price_rise_to_margin_call_ratio")
    rise_liq = order_series("okx_loan_price_rise_to_liquidation_ratio")

    def per_currency(
        title: str, description: str, columns: dict[str, str], hidden: Sequence[str] = ()
    ) -> table.Panel:
        """A table of percentages, one row per order and currency."""
        return table_panel(
            title,
            description,
            "percentunit",
            columns,
            first={"account": "Account", "order": "Order", "currency": "Currency"},
            hidden=["job", "instance", *hidden],
            width=12,
            height=8,
        )

    return [
        table_panel(
            "Liquidation price beside the index price",
            "Per one-collateral loan order: OKX's liquidation price (riskWarningData.liqPx), the "
            "collateral's current index price in the same quote currency (OKX index-tickers), "
            "and how far that price may fall before liquidation (1 - liqPx / price).",
            "none",
            {
                "Liquidation price": f"{LIQUIDATION_PRICE} * on (job, instance, account, order) "
                f"group_left () group by (job, instance, account, order) ({PRICE_IN_QUOTE})",
                "Index price": PRICE_IN_QUOTE,
                "Distance to liquidation": f"1 - {LIQUIDATION_PRICE} "
                f"/ on (job, instance, account, order) {PRICE_IN_QUOTE}",
            },
            first={"account": "Account", "order": "Order", "instrument": "Instrument"},
            hidden=["job", "instance", "currency"],
            width=12,
            height=8,
        ).override_by_name("Distance to liquidation", [setting("unit", "percentunit")]),
        per_currency(
            "How far each collateral currency can fall",
            "Per loan order and collateral currency: by how much that currency's index price "
            "alone may fall (the others holding) before the order reaches OKX's margin-call and "
            "liquidation LTV (okx_loan_price_drop_to_*_ratio). 100 % means that currency alone "
            "can never get there. Computed by the exporter from loan-info and OKX index prices "
            "(see the README, Price risk).",
            {"Before margin call": drop_mc, "Before liquidation": drop_liq},
        ),
        per_currency(
            "LTV if prices fall",
            "Per loan order: the LTV if one collateral currency's index price falls by 10, 20 or "
            "30 % (okx_loan_ltv_after_price_drop_ratio); currency all: every currency but "
            "USDT and USDC falls together, the debt's too.",
            {
                f"-{drop} %": f'{after.removesuffix("}")}, drop="0.{drop // 10}"}}'
                for drop in (10, 20, 30)
            },
            hidden=["drop"],
        ),
        per_currency(
            "How far a volatile debt can rise",
            "Per loan order and borrowed currency other than USDT and USDC: by how much its "
            "index price alone may rise before the order reaches OKX's margin-call and "
            "liquidation LTV (okx_loan_price_rise_to_*_ratio); +Inf: no rise gets there.",
            {"Before margin call": rise_mc, "Before liquidation": rise_liq},
        ),
        graph_panel(
            "Smallest fall to liquidation",
            "Per loan order: the smallest fall of any single collateral currency's price that "
            "liquidates it (min over currencies of okx_loan_price_drop_to_liquidation_ratio). "
            "OkxLoanCollateralDropRisk warns below 15 %.",
            "percentunit",
            [query(f"min without (currency) ({drop_liq})", PER_ORDER)],
            width=12,
            height=8,
        )
        .min(0)
        .max(1),
        graph_panel(
            "Index prices",
            "OKX index price of each currency of the loan orders (okx_loan_index_price, from "
            "market/index-tickers), in its quote currency.",
            "none",
            [query(INDEX_PRICE, "{{currency}}-{{quote}}")],
            width=12,
            height=8,
        ),
    ]


LIQUIDATION_TYPES = (
    "forced_liquidation|partial_liquidation|forced_repayment_buy|forced_repayment_sell"
)
PER_ORDER_CURRENCY = "{{account}} {{order}} {{currency}}"


class PrometheusAnnotation(model.AnnotationQuery):
    """An annotation from a Prometheus query, with the fields Grafana's Prometheus data source
    reads that the SDK's model lacks: the title, text and tags of each event, and the step."""

    def __init__(self, *, title: str, text: str, tags: str, step: str, **fields: object) -> None:
        super().__init__(**fields)  # type: ignore[arg-type]
        self.extra = {"titleFormat": title, "textFormat": text, "tagKeys": tags, "step": step}

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), **self.extra}


class AnnotationBuilder(Builder[model.AnnotationQuery]):
    def __init__(self, annotation: model.AnnotationQuery) -> None:
        self._annotation = annotation

    def build(self) -> model.AnnotationQuery:
        return self._annotation


def liquidation_annotation() -> AnnotationBuilder:
    """A mark on every time graph where OKX liquidated or force-repaid collateral."""
    return AnnotationBuilder(
        PrometheusAnnotation(
            name="Liquidations",
            datasource=DATASOURCE,
            enable=True,
            icon_color="red",
            expr=(
                "increase("
                + account_series("okx_loan_events_total").replace(
                    "}", f', type=~"{LIQUIDATION_TYPES}"}}'
                )
                + "[$__rate_interval]) > 0"
            ),
            title="{{account}}: {{type}}",
            text="OKX sold collateral of {{account}} to cover its debt ({{type}}).",
            tags="account,type",
            step="30s",
        )
    )


def activity_row() -> list[Builder[model.Panel]]:
    events = account_series("okx_loan_last_event_timestamp_seconds")
    max_borrow = order_series("okx_loan_max_borrow_amount")
    max_redeem = order_series("okx_loan_max_redeem_amount")
    return [
        table_panel(
            "Recent loan events",
            "Per account and OKX loan-history type: when the newest record of that type happened "
            "(okx_loan_last_event_timestamp_seconds, OKX ts). forced_liquidation, "
            "partial_liquidation and forced_repayment_* mean OKX sold collateral to cover the "
            "debt: they also show as red marks on the graphs (the Liquidations annotation) and "
            "fire OkxLoanLiquidationEvent.",
            "dateTimeAsIso",
            {"Newest": f"{events} * 1000"},
            first={"account": "Account", "type": "Type"},
            hidden=["job", "instance"],
            width=8,
            height=9,
        ),
        graph_panel(
            "Interest rate (APY)",
            "Per account and debt currency: the yearly rate of the newest hourly interest accrual "
            "(okx_loan_interest_rate, OKX interest-accrued interestRate); 0.0841 is 8.41 % a "
            "year. OkxLoanInterestRateHigh warns above the APY kept in the recording rule "
            "okx_loan:interest_rate_warning_apy (15 % as shipped).",
            "percentunit",
            [query(account_series("okx_loan_interest_rate"), "{{account}} {{currency}}")],
            width=8,
            height=9,
        ).min(0),
        graph_panel(
            "Interest accrued",
            "Per account and debt currency: interest OKX accrued, in the currency's own unit, "
            "shown when the exporter first saw each hourly record (increase of "
            "okx_loan_interest_accrued_total, which sums OKX's interest-accrued records first seen "
            "since the exporter started).",
            "none",
            [
                query(
                    "sum by (account, currency) "
                    f"(increase({account_series('okx_loan_interest_accrued_total')}"
                    "[$__rate_interval]))",
                    "{{account}} {{currency}}",
                )
            ],
            width=8,
            height=9,
        ).min(0),
        table_panel(
            "Interest per currency",
            "Per account and debt currency: the APY of the newest interest accrual "
            "(okx_loan_interest_rate) and when OKX recorded it "
            "(okx_loan_last_interest_timestamp_seconds). OKX accrues interest hourly: a time "
            "more than an hour old means the exporter's interest_interval is long or the "
            "endpoint is failing.",
            "percentunit",
            {
                "APY": account_series("okx_loan_interest_rate"),
                "Newest accrual": (
                    f"{account_series('okx_loan_last_interest_timestamp_seconds')} * 1000"
                ),
            },
            first={"account": "Account", "currency": "Currency"},
            hidden=["job", "instance"],
            width=6,
            height=8,
        ).override_by_name("Newest accrual", [setting("unit", "dateTimeAsIso")]),
        graph_panel(
            "Borrow headroom (USD)",
            "Per loan order and debt currency: how much more the order can borrow now, in USD "
            "(okx_loan_max_borrow_notional_usd, OKX max-loan notionalUsd). 0 means the order is "
            "at OKX's borrowing limit.",
            "currencyUSD",
            [query(order_series("okx_loan_max_borrow_notional_usd"), PER_ORDER_CURRENCY)],
            width=9,
            height=8,
        ).min(0),
        table_panel(
            "Borrow and withdraw headroom per currency",
            "Per loan order and currency, in that currency's own unit: how much more can be "
            "borrowed (okx_loan_max_borrow_amount, OKX max-loan maxLoan) and how much collateral "
            "can be withdrawn now (okx_loan_max_redeem_amount, OKX "
            "max-collateral-redeem-amount maxRedeemAmt).",
            "none",
            {"Can borrow": max_borrow, "Can withdraw": max_redeem},
            first={"account": "Account", "order": "Order", "currency": "Currency"},
            hidden=["job", "instance"],
            width=9,
            height=8,
        ),
    ]


def health_stat(title: str, description: str, unit: str, expr: str, legend: str) -> stat.Panel:
    """A stat of the health row: the latest value, without a graph."""
    return stat_panel(title, description, unit, expr, legend, width=6, height=5).graph_mode(
        kinds.BigValueGraphMode.NONE
    )


def up_down_stat(title: str, description: str, expr: str, legend: str) -> stat.Panel:
    """A health stat of a 0/1 series: a red DOWN or a green UP."""
    return (
        health_stat(title, description, "none", expr, legend)
        .mappings(UP_DOWN)
        .thresholds(thresholds((None, "red"), (1, "green")))
    )


def health_row() -> list[Builder[model.Panel]]:
    def per_account_rate(name: str, by: str = "account") -> str:
        return f"sum by ({by}) (rate({account_series(name)}[$__rate_interval]))"

    requests = per_account_rate("okx_loan_api_requests_total")
    failures = per_account_rate("okx_loan_api_request_failures_total")
    exporter = _EXPORTER

    def public_rate(name: str, by: str) -> str:
        return f"sum by ({by}) (rate({name}{{{exporter}}}[$__rate_interval]))"

    def latency(quantile: str) -> prometheus.Dataquery:
        buckets = public_rate("okx_loan_api_request_duration_seconds_bucket", "endpoint, le")
        return query(
            f"histogram_quantile({quantile}, {buckets})",
            f"{{{{endpoint}}}} p{quantile[2:].ljust(2, '0')}",
            chr(ord("A") + ["0.5", "0.9", "0.99"].index(quantile)),
        )

    return [
        up_down_stat(
            "OKX reachable",
            "Per account: 1 (UP) when the exporter's last request to OKX for this account "
            "succeeded (okx_loan_up), 0 (DOWN) when it failed. While it is down the exporter "
            "serves the last good values until max_stale.",
            account_series("okx_loan_up"),
            "{{account}}",
        ),
        health_stat(
            "Data age",
            "Per account: seconds since the exporter last fetched the position from OKX "
            "successfully (time() - okx_loan_last_success_timestamp_seconds). Normally below the "
            "exporter's cache_ttl plus the scrape interval. Orange from 1 minute; red from 5 "
            "minutes (the default max_stale, past which the exporter drops the position). The "
            "OkxLoanDataStale alert fires past 10 minutes.",
            "s",
            DATA_AGE,
            "{{account}}",
        )
        .decimals(0)
        .thresholds(thresholds((None, "green"), (60, "orange"), (300, "red"))),
        up_down_stat(
            "Exporter scraped",
            "Per exporter: whether Prometheus's last scrape of it succeeded (up). DOWN means no "
            "data at all, and no OKX loan alert can fire (OkxLoanExporterDown). Only the jobs and "
            "instances that expose okx_loan_up are listed, never other jobs' targets.",
            f"up{{{exporter}}}",
            "{{instance}}",
        ),
        health_stat(
            "Exporter version",
            "Per exporter: the version it reports (okx_loan_exporter_build_info).",
            "none",
            f"okx_loan_exporter_build_info{{{exporter}}}",
            "{{instance}}: {{version}}",
        )
        .thresholds(thresholds((None, "text")))
        .color_mode(kinds.BigValueColorMode.NONE)
        .text_mode(kinds.BigValueTextMode.NAME),
        graph_panel(
            "OKX requests per second",
            "Per account and endpoint: requests the exporter sent to OKX per second "
            "(okx_loan_api_requests_total), summed over exporters. OKX allows 5 requests per 2 "
            "seconds per user and endpoint; the exporter sends loan-info at most once per "
            "cache_ttl, each other endpoint on its own interval and never more than 1 per 2 "
            "seconds.",
            "reqps",
            [
                query(
                    per_account_rate("okx_loan_api_requests_total", "account, endpoint"),
                    "{{account}} {{endpoint}}",
                )
            ],
            width=8,
            height=8,
        ).min(0),
        graph_panel(
            "OKX failures per second by reason",
            "Per account and reason: failed requests to OKX per second "
            "(okx_loan_api_request_failures_total). rate_limited: OKX code 50011, raise "
            "cache_ttl; auth: key, secret, passphrase, IP whitelist or demo flag wrong; "
            "api_error: another OKX error code; http_error: an unexpected HTTP status; timeout "
            "and network: OKX not reached; invalid_response: an answer the exporter could not "
            "read.",
            "reqps",
            [
                query(
                    per_account_rate("okx_loan_api_request_failures_total", "account, reason"),
                    "{{account}} {{reason}}",
                )
            ],
            width=8,
            height=8,
        ).min(0),
        graph_panel(
            "OKX failure ratio",
            "Per account: the share of requests to OKX that failed, for any reason (failures / "
            "requests).",
            "percentunit",
            [query(f"{failures} / {requests}", "{{account}}")],
            width=8,
            height=8,
        )
        .min(0)
        .max(1),
        graph_panel(
            "OKX request latency",
            "Per endpoint, over all the exporter's accounts (OKX's latency is no account's, so "
            "the account picker does not apply): the 50th, 90th and 99th percentile of the time "
            "a request to OKX took, from the okx_loan_api_request_duration_seconds histogram. "
            "Requests slower than the exporter's timeout count as failures (timeout).",
            "s",
            [latency("0.5"), latency("0.9"), latency("0.99")],
            width=12,
            height=8,
        ).min(0),
        graph_panel(
            "Clock offset to OKX",
            "Per account: the offset between this machine's clock and OKX's (GET "
            "/api/v5/public/time) as the exporter measured it (okx_loan_clock_offset_seconds). "
            "The exporter corrects its request timestamps by it; OKX rejects a request whose "
            "timestamp is more than 30 seconds off (code 50102). A large offset means the "
            "machine's clock needs NTP.",
            "s",
            [query(account_series("okx_loan_clock_offset_seconds"), "{{account}}")],
            width=12,
            height=8,
        ),
        graph_panel(
            "Index-price requests and failures per second",
            "Per base URL: requests to OKX's public index-tickers (okx_loan_public_api_requests_"
            "total, at most one per price_interval while an account holds an order) and failed "
            "ones by reason. They never change okx_loan_up.",
            "reqps",
            [
                query(
                    public_rate("okx_loan_public_api_requests_total", "base_url"),
                    "{{base_url}} requests",
                    "A",
                ),
                query(
                    public_rate("okx_loan_public_api_request_failures_total", "base_url, reason"),
                    "{{base_url}} {{reason}}",
                    "B",
                ),
            ],
            width=8,
            height=8,
        ).min(0),
        graph_panel(
            "Index-price request latency",
            "Per base URL: the 90th percentile of the time an index-tickers request took "
            "(okx_loan_public_api_request_duration_seconds).",
            "s",
            [
                query(
                    "histogram_quantile(0.9, "
                    + public_rate(
                        "okx_loan_public_api_request_duration_seconds_bucket", "base_url, le"
                    )
                    + ")",
                    "{{base_url}} p90",
                )
            ],
            width=8,
            height=8,
        ).min(0),
        stat_panel(
            "Index-price age",
            "Per base URL: seconds since the last good index-tickers answer "
            "(okx_loan_index_prices_last_success_timestamp_seconds). The what-if figures use "
            "prices up to max_stale old, then disappear.",
            "s",
            f"time() - okx_loan_index_prices_last_success_timestamp_seconds{{{exporter}}}",
            "{{base_url}}",
            width=8,
            height=8,
        )
        .decimals(0)
        .graph_mode(kinds.BigValueGraphMode.NONE)
        .thresholds(thresholds((None, "green"), (60, "orange"), (300, "red"))),
    ]


# --- Variables and the dashboard ------------------------------------------------------------------

ALL = model.VariableOption(selected=True, text=["All"], value=["$__all"])


def picker(name: str, description: str, query_text: str) -> builder.QueryVariable:
    """A multi-value query variable with All selected, reloaded when the time range changes."""
    return (
        builder.QueryVariable(name)
        .label(name.capitalize())
        .description(description)
        .datasource(DATASOURCE)
        .query(query_text)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(ALL)
    )


def variables() -> list[Builder[model.VariableModel]]:
    return [
        builder.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        # No allValue for job and instance: All then stands for the values found, the exporter's
        # jobs and instances only, so `up{job=~"$job"}` never shows another job's targets.
        picker(
            "job",
            "Prometheus jobs that scrape okx-loan-exporter.",
            "label_values(okx_loan_up, job)",
        ),
        picker(
            "instance",
            "Exporters in the selected jobs.",
            'label_values(okx_loan_up{job=~"$job"}, instance)',
        ),
        picker(
            "account",
            "OKX accounts (the names from the exporter's config) of the selected exporters.",
            'label_values(okx_loan_up{job=~"$job", instance=~"$instance"}, account)',
        ).all_value(".+"),
        # All is ".*" so that a loan without ordId (order="", no label in Prometheus) shows too.
        picker(
            "order",
            "Loan orders (OKX ordId) of the selected accounts. All includes a loan OKX reports "
            "without an ordId.",
            f"label_values(okx_loan_ltv_ratio{{{_ACCOUNT}}}, order)",
        ).all_value(".*"),
    ]


def build() -> model.Dashboard:
    """The dashboard, panel ids numbered top to bottom."""
    dashboard = (
        builder.Dashboard("OKX Flexible Loan")
        .uid("okx-loan-exporter")
        .description(
            "OKX Flexible Loan positions per account and loan order from okx-loan-exporter: LTV "
            "against OKX's margin-call and liquidation LTV, headroom, debt and collateral, "
            "liquidation events, interest, and the exporter's own health."
        )
        .tags(["okx", "okx-loan-exporter", "prometheus"])
        .editable()
        .annotations([liquidation_annotation()])
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .timezone("")
        .refresh("30s")
        .variables(variables())
    )
    for title, panels in (
        ("Risk at a glance", risk_row()),
        ("Loan and collateral", loan_row()),
        ("Price risk", price_row()),
        ("Events, interest and headroom", activity_row()),
        ("Exporter health", health_row()),
    ):
        dashboard.with_row(builder.Row(title))
        for panel in panels:
            dashboard.with_panel(panel)
    result = dashboard.build()
    for number, built in enumerate(result.panels or [], start=1):
        built.id_val = number
    return result


def render() -> str:
    """The dashboard's JSON text, as committed."""
    return JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False).encode(build()) + "\n"


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    """Write the dashboard to grafana/okx-loan-dashboard.json (or to the one path given)."""
    target = Path(argv[0]) if argv else OUTPUT
    target.write_text(render(), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
