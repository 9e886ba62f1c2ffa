"""Entry point for ``python -m okx_loan_exporter``."""

from okx_loan_exporter.cli import main

raise SystemExit(main())
