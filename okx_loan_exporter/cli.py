"""Command line: flags, logging setup, start-up refusals with exit codes, and clean shutdown.

Exit codes: 0 after a clean stop or a good ``--check-config``; 2 for a bad flag or configuration
(one line naming the file, the key and the fix, never a traceback); 1 when the exporter cannot
start for another reason, such as a listen address already in use.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NoReturn

from okx_loan_exporter import __version__
from okx_loan_exporter.config import ConfigError, ExporterConfig, config_from_dict, load_config
from okx_loan_exporter.logs import LOG_FORMATS, LOG_LEVELS, JsonFormatter, setup_logging
from okx_loan_exporter.server import ExporterHTTPServer, parse_listen_address
from okx_loan_exporter.sharding import SHARD_ENV, Shard, ShardError, parse_shard
from okx_loan_exporter.webconfig import WebConfigWatcher

if TYPE_CHECKING:
    from okx_loan_exporter.simulator import Simulator

log = logging.getLogger("okx_loan_exporter")

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2
GC_THRESHOLDS = (20_000, 10, 10)
"""The garbage collector's generation thresholds while serving. Python's default (700, 10, 10)
ran a collection every 700 allocations: during a cold scrape of 1,000 accounts over HTTPS (httpx,
anyio and asyncio allocate many short-lived objects per request) that was about a tenth of the
CPU time. Reference counting still frees everything without cycles at once."""
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
        help="debug, info, warn (or warning) or error",
    )
    parser.add_argument("--log.format", dest="log_format", default="logfmt", choices=LOG_FORMATS)
    parser.add_argument(
        "--shard",
        metavar="INDEX/COUNT",
        help=f"serve only the accounts of shard INDEX (0-based) of COUNT, by a SHA-256 of the "
        f"account name: COUNT exporters with the same config cover every account once "
        f"(default: ${SHARD_ENV}, else all accounts)",
    )
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
    parser = build_parser()
    if _json_requested(args_list):
        # A bad flag is a fatal error too: in JSON, as the operator asked for.
        setup_logging("info", "json")
        parser.error = _json_flag_error  # type: ignore[method-assign]
    args = parser.parse_args(args_list)
    setup_logging(args.log_level, args.log_format)
    if args.demo and args.config_file:
        return _refuse("--demo and --config.file exclude each other; drop one of them")

    try:
        parse_listen_address(args.listen_address)
    except ValueError as error:
        return _refuse(f"--web.listen-address: {error}")
    shard = None
    shard_text, shard_source = args.shard, "--shard"
    if shard_text is None and os.environ.get(SHARD_ENV):
        shard_text, shard_source = os.environ[SHARD_ENV], SHARD_ENV
    if shard_text is not None:
        try:
            shard = parse_shard(shard_text)
        except ShardError as error:
            return _refuse(
                f"{shard_source}: {error}; write it like 0/3 (the first of three exporters)"
            )
        if args.demo:
            return _refuse(f"{shard_source} and --demo exclude each other; drop one of them")
    problems: list[str] = []
    watcher = None
    config = None
    try:
        watcher = WebConfigWatcher(args.web_config_file)
    except ConfigError as error:
        problems += error.lines
    try:
        config = None if args.demo else load_config(args.config_file)
    except ConfigError as error:
        problems += error.lines
    if problems or watcher is None:
        return _refuse(*problems)
    for warning in (*watcher.current().warnings, *(config.warnings if config else ())):
        log.warning(warning)
    if config is not None and shard is not None:
        config = replace(config, accounts=tuple(shard.select(config.accounts)))
        if not config.accounts:
            log.warning(
                "shard %s of %s holds none of the configured accounts; it serves no account",
                shard,
                config.source,
            )
    if args.check_config:
        if config is None:
            print("configuration OK: demo mode")
        else:
            names = ", ".join(account.name for account in config.accounts)
            in_shard = f" in shard {shard}" if shard is not None else ""
            print(
                f"configuration OK: {config.source}: {len(config.accounts)} account(s)"
                f"{in_shard}: {names}"
            )
        return EXIT_OK
    return _serve(args, config, watcher, shard)


def _refuse(*messages: str) -> int:
    _fatal(*messages)
    return EXIT_CONFIG


def _fatal(*messages: str) -> None:
    """Report each message as a fatal error: one JSON log line each with --log.format json,
    else one plain line each."""
    json_logs = any(
        isinstance(handler.formatter, JsonFormatter) for handler in logging.getLogger().handlers
    )
    for message in messages:
        if json_logs:
            log.error(message)
        else:
            print(f"okx-loan-exporter: {message}", file=sys.stderr)


def _json_requested(argv: Sequence[str]) -> bool:
    return "--log.format=json" in argv or any(
        flag == "--log.format" and value == "json" for flag, value in itertools.pairwise(argv)
    )


def _json_flag_error(message: str) -> NoReturn:
    _fatal(f"{message}; see okx-loan-exporter --help")
    sys.exit(EXIT_CONFIG)


def _serve(
    args: argparse.Namespace,
    config: ExporterConfig | None,
    watcher: WebConfigWatcher,
    shard: Shard | None,
) -> int:
    """Serve until SIGTERM or SIGINT, with the demo's simulator if there is no config."""
    simulator = None
    if config is None:
        simulator, config = _start_demo()
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        return _run(args, config, watcher, shard)
    finally:
        gc.set_threshold(*thresholds)  # main() may run in-process (tests)
        if simulator is not None:
            simulator.stop()


def _run(
    args: argparse.Namespace, config: ExporterConfig, watcher: WebConfigWatcher, shard: Shard | None
) -> int:
    from okx_loan_exporter.exporter import Exporter
    from okx_loan_exporter.web import create_app

    exporter = Exporter(config)
    try:
        server = ExporterHTTPServer(create_app(exporter, watcher), args.listen_address, watcher)
    except OSError as error:
        exporter.close()
        reason = error.strerror or str(error)
        _fatal(
            f"cannot listen on {args.listen_address}: {reason}; pick another --web.listen-address"
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
        extra={"version": __version__, **({"shard": str(shard)} if shard else {})},
    )
    stop.wait()
    log.info("shutting down")
    server.shutdown()
    exporter.close()
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
