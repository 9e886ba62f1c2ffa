"""The exporter's metric names as the README's metric table promises them, for the tests that
check rules and dashboard against it."""

from __future__ import annotations

#: Per-loan series: each carries `order` (OKX's ordId, "" without one) besides `account`.
PER_ORDER = frozenset(
    {
        "okx_loan_borrowed_notional_usd",
        "okx_loan_collateral_notional_usd",
        "okx_loan_borrowed_amount",
        "okx_loan_collateral_amount",
        "okx_loan_ltv_ratio",
        "okx_loan_margin_call_ltv_ratio",
        "okx_loan_liquidation_ltv_ratio",
        "okx_loan_liquidation_price",
        "okx_loan_max_borrow_amount",
        "okx_loan_max_borrow_notional_usd",
        "okx_loan_max_redeem_amount",
    }
)

#: Every series a query may use (the histogram by the series a query uses).
CONTRACT = PER_ORDER | {
    "okx_loan_orders",
    "okx_loan_active",
    "okx_loan_up",
    "okx_loan_last_success_timestamp_seconds",
    "okx_loan_api_requests_total",
    "okx_loan_api_request_failures_total",
    "okx_loan_api_request_duration_seconds_bucket",
    "okx_loan_clock_offset_seconds",
    "okx_loan_events_total",
    "okx_loan_last_event_timestamp_seconds",
    "okx_loan_interest_rate",
    "okx_loan_interest_accrued_total",
    "okx_loan_last_interest_timestamp_seconds",
    "okx_loan_exporter_build_info",
}
