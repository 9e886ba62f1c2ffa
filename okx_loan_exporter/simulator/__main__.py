"""``python -m okx_loan_exporter.simulator``: the same as ``okx-loan-exporter simulate``."""

from okx_loan_exporter.simulator.cli import main

raise SystemExit(main())
