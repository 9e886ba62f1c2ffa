"""okx-loan-exporter: a Prometheus exporter for OKX Flexible Loan positions."""

__version__ = "0.1.0"
