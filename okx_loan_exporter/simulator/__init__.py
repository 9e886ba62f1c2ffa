"""An OKX-compatible HTTP server for the endpoints the exporter calls, with injectable faults.

It serves ``GET /api/v5/public/time`` and the signed flexible-loan endpoints: ``loan-info``
(every loan order of the account, or the one its ``ordId`` asks for), ``loan-history`` and
``interest-accrued`` (paged, filtered), ``POST max-loan`` and ``max-collateral-redeem-amount``,
and checks what OKX checks, in OKX's order: the four auth headers, the timestamp format and its
30 s window, the key, the passphrase, the demo-trading header and the HMAC-SHA256 signature (of
the body too), then each endpoint's rate limit (5 requests per 2 s per key). Accounts write their
loan history and hourly interest as they live, and are partially liquidated at their liquidation
LTV. Every order is valued from one market of index prices that follow a
seeded, mean-reverting random walk, so LTVs move; one demo order cycles through its margin call.
Faults (HTML pages, broken JSON, OKX error codes, hangs, trickled or huge bodies, dropped
connections) are switched on per account through the Python API or the unauthenticated ``/sim/*``
control endpoints.

Used by the exporter's ``--demo`` mode, the tests and the benchmarks; :func:`main` is the
``okx-loan-exporter simulate`` subcommand. Every clock it reads is the injected ``clock``, so tests
drive the timestamp window, the rate limit, the price walk and the LTV cycle deterministically.

Modules: ``accounts`` (accounts, orders, demo and generated ones), ``market`` (the price walk),
``orders`` (accounts and orders as they live), ``history`` (their records), ``loan_endpoints``
(the secondary endpoints' answers), ``auth`` (OKX's signature check), ``replies`` and
``faults`` (what is answered), ``simulation`` (the :class:`Simulator`), ``control`` (``/sim/*``),
``server`` (HTTP), ``cli`` (the subcommand).
"""

from okx_loan_exporter.simulator.accounts import (
    INDEX_PRICES,
    STABLECOINS,
    SimAccount,
    SimOrder,
    demo_accounts,
    generated_accounts,
)
from okx_loan_exporter.simulator.cli import exporter_config, exporter_config_yaml, main
from okx_loan_exporter.simulator.faults import FAULTS, HUGE_BODY_BYTES
from okx_loan_exporter.simulator.market import Market
from okx_loan_exporter.simulator.orders import DEFAULT_MARGIN_CALL_CYCLE_SECONDS
from okx_loan_exporter.simulator.server import LOAN_INFO_PATH, TIME_PATH
from okx_loan_exporter.simulator.simulation import Simulator

__all__ = [
    "DEFAULT_MARGIN_CALL_CYCLE_SECONDS",
    "FAULTS",
    "HUGE_BODY_BYTES",
    "INDEX_PRICES",
    "LOAN_INFO_PATH",
    "STABLECOINS",
    "TIME_PATH",
    "Market",
    "SimAccount",
    "SimOrder",
    "Simulator",
    "demo_accounts",
    "exporter_config",
    "exporter_config_yaml",
    "generated_accounts",
    "main",
]
