"""Command line: flags, logging setup, start-up refusals with exit codes, and clean shutdown.

Exit codes: 0 after a clean stop or a good ``--check-config``; 2 for a bad flag or configuration
(one line naming the file, the key and the fix, never a traceback); 1 when the exporter cannot
start for another reason, such as a listen address already in use.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from okx_loan_exporter import __version__
from okx_loan_exporter.config import ConfigError, ExporterConfig, config_from_dict, load_config
from okx_loan_exporter.logs import setup_logging
from okx_loan_exporter.server import ExporterHTTPServer, parse_listen_address
from okx_loan_exporter.webconfig import WebConfigError, WebConfigWatcher

if TYPE_CHECKING:
    from okx_loan_exporter.simulator import Simulator

log = logging.getLogger("okx_loan_exporter")

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("logfmt", "json")
DEMO_CACHE_TTL = "1s"  # the simulator moves prices every second


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="okx-loan-exporter",
        description="Prometheus exporter for OKX Flexible Loan positions. "
        "Run 'okx-loan-exporter simulate --help' for the built-in OKX simulator.",
    )
    parser.add_argument(
        "--config.file",
        dest="config_file",
        metavar="PATH",
        help="YAML configuration; without it one account 'default' is read from "
        "OKX_API_KEY, OKX_SECRET_KEY, OKX_PASSPHRASE (or their *_FILE forms)",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=":9855",
        metavar="[HOST]:PORT",
        help="address to serve on (default :9855)",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="exporter-toolkit web config: TLS and basic auth",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=LOG_LEVELS,
    )
    parser.add_argument("--log.format", dest="log_format", default="logfmt", choices=LOG_FORMATS)
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration and exit (0 good, 2 bad); OKX is not contacted",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="serve demo accounts from a built-in OKX simulator; no OKX account needed",
    )
    parser.add_argument("--version", action="version", version=f"okx-loan-exporter {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["simulate"]:
        from okx_loan_exporter import simulator

        return simulator.main(args_list[1:])
    args = build_parser().parse_args(args_list)
    setup_logging(args.log_level, args.log_format)
    if args.demo and args.config_file:
        return _refuse("--demo and --config.file exclude each other; drop one of them")

    try:
        parse_listen_address(args.listen_address)
    except ValueError as error:
        return _refuse(f"--web.listen-address: {error}")
    try:
        watcher = WebConfigWatcher(args.web_config_file)
        config = None if args.demo else load_config(args.config_file)
    except (ConfigError, WebConfigError) as error:
        return _refuse(str(error))
    for warning in config.warnings if config else ():
        log.warning(warning)
    if args.check_config:
        if config is None:
            print("configuration OK: demo mode")
        else:
            names = ", ".join(account.name for account in config.accounts)
            print(f"configuration OK: {config.source}: {len(config.accounts)} account(s): {names}")
        return EXIT_OK
    return _serve(args, config, watcher)


def _refuse(message: str) -> int:
    print(f"okx-loan-exporter: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _serve(
    args: argparse.Namespace, config: ExporterConfig | None, watcher: WebConfigWatcher
) -> int:
    from okx_loan_exporter.exporter import Exporter
    from okx_loan_exporter.web import create_app

    simulator = None
    if config is None:
        simulator, config = _start_demo()
    exporter = Exporter(config)
    try:
        server = ExporterHTTPServer(create_app(exporter, watcher), args.listen_address, watcher)
    except OSError as error:
        exporter.close()
        reason = error.strerror or str(error)
        print(
            f"okx-loan-exporter: cannot listen on {args.listen_address}: {reason}; "
            "pick another --web.listen-address",
            file=sys.stderr,
        )
        return EXIT_RUNTIME

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start_background()
    log.info(
        "serving %d account(s) on %s/metrics",
        len(config.accounts),
        server.url,
        extra={"version": __version__},
    )
    stop.wait()
    log.info("shutting down")
    server.shutdown()
    exporter.close()
    if simulator is not None:
        simulator.stop()
    return EXIT_OK


def _start_demo() -> tuple[Simulator, ExporterConfig]:
    from okx_loan_exporter.simulator import Simulator, demo_accounts, exporter_config

    accounts = demo_accounts()
    simulator = Simulator(accounts)
    base_url = simulator.start()
    document = exporter_config(base_url, accounts, cache_ttl=DEMO_CACHE_TTL)
    config = config_from_dict(document, "demo", os.environ)
    log.info(
        "demo mode: %d simulated accounts at %s; no OKX account is used", len(accounts), base_url
    )
    return simulator, config
