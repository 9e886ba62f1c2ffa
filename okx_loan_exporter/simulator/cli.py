"""``okx-loan-exporter simulate``: flags, the exporter config it writes for its accounts, and
serving until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import yaml

from okx_loan_exporter.listen import parse_listen_address
from okx_loan_exporter.logs import LOG_FORMATS, LOG_LEVELS, setup_logging
from okx_loan_exporter.simulator.accounts import SimAccount, demo_accounts, generated_accounts
from okx_loan_exporter.simulator.orders import DEFAULT_MARGIN_CALL_CYCLE_SECONDS
from okx_loan_exporter.simulator.simulation import Simulator

_log = logging.getLogger("okx_loan_exporter.simulator")


def exporter_config(
    sim_base_url: str, accounts: Sequence[SimAccount], **settings: Any
) -> dict[str, Any]:
    """An exporter configuration (the YAML file's mapping) for ``accounts`` at the simulator.

    Keyword arguments set or override the global keys (``cache_ttl="2s"``, ``max_stale``,
    ``timeout``, or any other global the exporter accepts).
    """
    for reserved in ("base_url", "accounts"):
        if reserved in settings:
            raise TypeError(f"exporter_config() sets {reserved!r} itself")
    document: dict[str, Any] = {"cache_ttl": "10s", "max_stale": "5m", "timeout": "5s"}
    document.update(settings)
    document["base_url"] = sim_base_url
    document["accounts"] = [
        {
            "name": account.name,
            "api_key": account.api_key,
            "secret_key": account.secret_key,
            "passphrase": account.passphrase,
            "demo": account.demo,
        }
        for account in accounts
    ]
    return document


def exporter_config_yaml(sim_base_url: str, accounts: Sequence[SimAccount], **settings: Any) -> str:
    """:func:`exporter_config` as a config file (YAML), for ``--write-exporter-config``."""
    header = (
        "# okx-loan-exporter configuration for the built-in OKX simulator.\n"
        "# The credentials are fake: they only work against the simulator.\n"
    )
    document = exporter_config(sim_base_url, accounts, **settings)
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def _write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (it holds secrets, fake or not)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".okx-sim-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _listen_address(text: str) -> tuple[str, int]:
    try:
        return parse_listen_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    """``300``, ``20s``, ``5m``, ``1.5h``: a positive number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"] if match else 0.0
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration > 0 (e.g. 20s or 5m)")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="okx-loan-exporter simulate",
        description="Run an OKX-compatible simulator of public/time and flexible-loan/loan-info "
        "with fake accounts, for demos and tests. Serves until SIGTERM or SIGINT.",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        type=_listen_address,
        default="127.0.0.1:8855",
        metavar="HOST:PORT",
        help="address to listen on (default: 127.0.0.1:8855; port 0 picks a free port)",
    )
    parser.add_argument(
        "--accounts-generate",
        dest="generate",
        type=_positive_int,
        metavar="N",
        help="serve N generated accounts acct-0001... instead of the demo accounts",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the price walk (default 0)")
    parser.add_argument(
        "--latency",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="extra delay before every loan-info answer (default 0)",
    )
    parser.add_argument(
        "--margin-call-cycle",
        dest="margin_call_cycle",
        type=_duration,
        default=DEFAULT_MARGIN_CALL_CYCLE_SECONDS,
        metavar="DURATION",
        help="period of the demo order whose LTV drifts through its margin call and back "
        "(two-orders, order 2002; default 5m: above the margin call from 1m15s to 3m45s), and of "
        "the one climbing to its liquidation (liquidation, order 3001, liquidated at 4m30s)",
    )
    parser.add_argument(
        "--hour",
        dest="hour_seconds",
        type=_duration,
        default=60.0,
        metavar="DURATION",
        help="how long one simulated hour lasts, in which interest accrues once (default 1m)",
    )
    parser.add_argument(
        "--tls.cert-file",
        dest="tls_cert_file",
        metavar="PATH",
        help="serve HTTPS with this PEM certificate chain (end it with its CA's certificate: "
        "the exporter config written by --write-exporter-config trusts it as tls_ca_file)",
    )
    parser.add_argument(
        "--tls.key-file",
        dest="tls_key_file",
        metavar="PATH",
        help="the PEM private key of --tls.cert-file",
    )
    parser.add_argument(
        "--idle-close",
        dest="idle_close",
        type=_seconds,
        metavar="SECONDS",
        help="drop a keep-alive connection, unanswered, when a request comes after it was idle "
        "this long (as a server whose idle timer fires as the request arrives)",
    )
    parser.add_argument(
        "--write-exporter-config",
        dest="exporter_config",
        metavar="PATH",
        help="write an exporter config for the simulated accounts to PATH (mode 0600)",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        choices=LOG_LEVELS,
        default="info",
        help="log level (default info)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        choices=LOG_FORMATS,
        default="logfmt",
        help="log line format (default logfmt)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``okx-loan-exporter simulate``: serve until SIGTERM/SIGINT; 0 on a clean stop, 2 on bad
    flags, 1 when the address cannot be bound or the config cannot be written."""
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse has printed the usage and the error
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    setup_logging(args.log_level, args.log_format)
    if (args.tls_cert_file is None) != (args.tls_key_file is None):
        print(
            "okx-loan-exporter simulate: --tls.cert-file and --tls.key-file go together; "
            "give both for HTTPS, or neither",
            file=sys.stderr,
        )
        return 2
    tls = (args.tls_cert_file, args.tls_key_file) if args.tls_cert_file else None
    accounts = generated_accounts(args.generate, args.seed) if args.generate else demo_accounts()
    try:
        simulator = Simulator(
            accounts,
            seed=args.seed,
            latency=args.latency,
            margin_call_cycle=args.margin_call_cycle,
            tls=tls,
            idle_close=args.idle_close,
            hour_seconds=args.hour_seconds,
        )
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(
            f"okx-loan-exporter simulate: cannot load --tls.cert-file/--tls.key-file: {reason}",
            file=sys.stderr,
        )
        return 2
    host, port = args.listen_address
    try:
        base_url = simulator.start(host, port)
    except OSError as exc:
        print(
            f"okx-loan-exporter simulate: cannot listen on {host}:{port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    stop_requested = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    try:
        if args.exporter_config:
            try:
                settings = {"tls_ca_file": os.path.abspath(args.tls_cert_file)} if tls else {}
                _write_private(
                    args.exporter_config, exporter_config_yaml(base_url, accounts, **settings)
                )
            except OSError as exc:
                print(
                    f"okx-loan-exporter simulate: cannot write {args.exporter_config}: "
                    f"{exc.strerror or exc}",
                    file=sys.stderr,
                )
                return 1
            _log.info(
                "wrote an exporter config for %d accounts to %s",
                len(accounts),
                args.exporter_config,
            )

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop_requested.set()

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, request_stop)
        print(f"OKX simulator listening on {base_url}", flush=True)
        # A short sleep rather than Event.wait(): a signal handler that sets an Event while the
        # main thread is inside Event.wait() can deadlock on the Event's own lock.
        while not stop_requested.is_set():
            time.sleep(0.1)
        _log.info("stopping the OKX simulator")
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        simulator.stop()
