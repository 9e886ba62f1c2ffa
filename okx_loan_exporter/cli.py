"""Command line: flags, logging setup, start-up refusals with exit codes, and clean shutdown.

Exit codes: 0 after a clean stop or a good ``--check-config``; 2 for a bad flag or configuration
(one line naming the file, the key and the fix, never a traceback); 1 when the exporter cannot
start for another reason, such as a listen address already in use. SIGTERM and SIGINT stop the
exporter; SIGHUP reloads its configuration (:mod:`okx_loan_exporter.reload`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import logging
import os
import signal
import sys
import threading
from collections.abc import Container, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn

from okx_loan_exporter import __version__
from okx_loan_exporter.config import ConfigError, ExporterConfig, config_from_dict, load_config
from okx_loan_exporter.listen import parse_listen_address, raise_open_file_limit
from okx_loan_exporter.logs import LOG_FORMATS, LOG_LEVELS, JsonFormatter, setup_logging
from okx_loan_exporter.memory import freeze_long_lived_objects, keep_large_buffers_out_of_the_heap
from okx_loan_exporter.server import (
    MAX_CONNECTIONS,
    ConnectionStats,
    ExporterHTTPServer,
    ServerLimits,
)
from okx_loan_exporter.sharding import SHARD_ENV, Shard, ShardError, parse_shard, select_shard
from okx_loan_exporter.webconfig import WebConfigWatcher

if TYPE_CHECKING:
    from okx_loan_exporter.simulator import Simulator

log = logging.getLogger("okx_loan_exporter")

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2
GC_THRESHOLDS = (10_000, 10, 10)
"""The garbage collector's generation thresholds while serving. Python's default (700, 10, 10)
ran a collection every 700 allocations: during a cold scrape of 1,000 accounts over HTTPS (httpx,
anyio and asyncio allocate many short-lived objects per request) that was 7-10 % of the CPU time.
Reference counting still frees everything without cycles at once; 20,000 saved a little more CPU
but let RSS swing by 5 MiB under 200 concurrent scrapers (tests/test_load.py)."""
DEMO_CACHE_TTL = "1s"  # the simulator moves prices every second
DEMO_INTERVALS = {"history_interval": "10s", "interest_interval": "30s", "headroom_interval": "15s"}
"""The demo's secondary endpoints, asked often so that its liquidations and hourly interest (an
hour is a minute in the simulator) show within a minute."""


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
        "--web.max-connections",
        dest="max_connections",
        type=_positive_int,
        default=MAX_CONNECTIONS,
        metavar="N",
        help=f"most HTTP connections kept open (default {MAX_CONNECTIONS}); at the cap, the one "
        "waiting longest without a complete request is closed",
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


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


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
    if config is not None:
        config = select_shard(config, shard)
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
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    keep_large_buffers_out_of_the_heap()
    try:
        return _serve(args, config, watcher, shard)
    finally:
        gc.set_threshold(*thresholds)  # main() may run in-process (tests)


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
    from prometheus_client import CollectorRegistry

    from okx_loan_exporter.exporter import Exporter
    from okx_loan_exporter.exposition import Exposition, ProcessMetrics
    from okx_loan_exporter.reload import Reloader
    from okx_loan_exporter.warming import RenderWarmer
    from okx_loan_exporter.web import create_app

    raise_open_file_limit()
    simulator = None
    if config is None:
        simulator, config = _start_demo()
    # The server's connection figures are exported after the process metrics.
    self_metrics = CollectorRegistry(auto_describe=False)
    self_metrics.register(ProcessMetrics())
    self_metrics.register(connection_stats := ConnectionStats())
    exporter = Exporter(config)
    exposition = Exposition(__version__, process_metrics=self_metrics)
    reloader = Reloader(
        exporter,
        watcher,
        args.config_file,
        demo=simulator is not None,
        shard=shard,
        after_apply=freeze_long_lived_objects,
    )
    self_metrics.register(reloader)
    try:
        app = create_app(exporter, watcher, exposition=exposition, reloader=reloader)
        server = ExporterHTTPServer(
            app,
            args.listen_address,
            watcher,
            ServerLimits(max_connections=args.max_connections),
            connection_stats,
        )
    except OSError as error:
        exporter.close()
        reason = error.strerror or str(error)
        _fatal(
            f"cannot listen on {args.listen_address}: {reason}; pick another --web.listen-address"
        )
        return EXIT_RUNTIME

    warmer = RenderWarmer(exporter, exposition)
    freeze_long_lived_objects()
    with _signal_pipe((signal.SIGTERM, signal.SIGINT, signal.SIGHUP)) as signals:
        server.start_background()
        warmer.start()
        log.info(
            "serving %d account(s) on %s/metrics",
            len(config.accounts),
            server.url,
            extra={"version": __version__, **({"shard": str(shard)} if shard else {})},
        )
        while _wait_for_signal(signals, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}) == (
            signal.SIGHUP
        ):
            # On its own thread: a config file that blocks (a FIFO, a hung mount) must not keep
            # this thread from seeing SIGTERM. Reloads queue on the reloader's lock.
            threading.Thread(target=reloader.reload_logged, name="reload", daemon=True).start()
    log.info("shutting down")
    warmer.stop()
    still_running = server.shutdown()
    exporter.close()
    if simulator is not None:
        simulator.stop()
    if still_running:
        # Their threads may be inside native code (bcrypt) that aborts the process if the
        # interpreter shuts down under it; exit now instead, as a stop within 2 s requires.
        log.warning("exiting with %d request(s) still being answered", still_running)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(EXIT_OK)
    return EXIT_OK


@contextlib.contextmanager
def _signal_pipe(signums: Iterable[signal.Signals]) -> Iterator[int]:
    """A pipe that receives one byte, the signal number, per signal in ``signums``.

    Python's C-level handler writes the byte (``signal.set_wakeup_fd``); the Python handler does
    nothing, so no lock is ever taken in signal context. Yields the pipe's read end.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    previous = {signum: signal.signal(signum, _ignore_signal) for signum in signums}
    try:
        yield read_end
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(read_end)
        os.close(write_end)


def _ignore_signal(signum: int, frame: object) -> None:
    """Stands in for the default action (exit, KeyboardInterrupt); the wake-up byte acts."""


def _wait_for_signal(read_end: int, wanted: Container[int]) -> int:
    """Block until one of ``wanted`` arrives on the signal pipe; its number."""
    while True:
        for signum in os.read(read_end, 64):
            if signum in wanted:
                return signum


def _start_demo() -> tuple[Simulator, ExporterConfig]:
    from okx_loan_exporter.simulator import Simulator, demo_accounts, exporter_config

    accounts = demo_accounts()
    simulator = Simulator(accounts)
    base_url = simulator.start()
    document = exporter_config(base_url, accounts, cache_ttl=DEMO_CACHE_TTL, **DEMO_INTERVALS)
    config = config_from_dict(document, "demo", os.environ)
    log.info(
        "demo mode: %d simulated accounts at %s; no OKX account is used", len(accounts), base_url
    )
    return simulator, config
