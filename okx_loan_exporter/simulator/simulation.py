"""The simulator itself: accounts, their orders and the market as they live on the injected clock,
the Python API that tests and the control endpoints use, and the answers to OKX's endpoints."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from okx_loan_exporter.simulator import loan_endpoints
from okx_loan_exporter.simulator.accounts import (
    INDEX_PRICES,
    SimAccount,
    demo_accounts,
    plain,
    validated_copy,
    validated_prices,
    value_of,
)
from okx_loan_exporter.simulator.auth import Headers, auth_error
from okx_loan_exporter.simulator.faults import ENDPOINT_FAULTS, FAULTS, MARKET_FAULTS, fault_reply
from okx_loan_exporter.simulator.history import Life, RefIds
from okx_loan_exporter.simulator.market import Market, index_tickers
from okx_loan_exporter.simulator.orders import (
    DEFAULT_MARGIN_CALL_CYCLE_SECONDS,
    INDEX_RATE_LIMIT_REQUESTS,
    AccountState,
    EndpointStats,
    OrderState,
    RateWindow,
    Stats,
)
from okx_loan_exporter.simulator.replies import Reply, okx_error, okx_ok, okx_parameter_error
from okx_loan_exporter.simulator.server import (
    SimulatorHTTPServer,
    SimulatorHTTPServer6,
    SimulatorRequestHandler,
)

_log = logging.getLogger("okx_loan_exporter.simulator")


class Simulator:
    """The OKX simulator: accounts, their orders, the market, faults and an HTTP server.

    ``clock`` is every clock the simulator reads (timestamp window, rate limit, price walk, LTV
    cycle); ``clock_skew`` seconds are added to it for what OKX calls its time (public/time and the
    30 s window). ``latency`` delays every loan-info answer; ``walk_interval`` is the clock time
    between two steps of the price walk; ``margin_call_cycle`` is the period in seconds of the
    orders whose LTV cycles through their margin call (and of those that climb to liquidation).
    ``prices`` are the market's starting index prices (default :data:`INDEX_PRICES`).
    ``hour_seconds`` is the clock time of one simulated hour, in which interest accrues once (the
    demo compresses an hour to a minute). ``accounts=None`` means :func:`demo_accounts`.
    """

    def __init__(
        self,
        accounts: Sequence[SimAccount] | None = None,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        clock_skew: float = 0.0,
        latency: float = 0.0,
        walk_interval: float = 1.0,
        margin_call_cycle: float = DEFAULT_MARGIN_CALL_CYCLE_SECONDS,
        prices: Mapping[str, float] | None = None,
        tls: tuple[str, str] | None = None,
        idle_close: float | None = None,
        hour_seconds: float = 60.0,
    ) -> None:
        if not 0 < hour_seconds < math.inf:
            raise ValueError(f"hour_seconds must be > 0 seconds, got {hour_seconds}")
        if idle_close is not None and not 0 <= idle_close < math.inf:
            raise ValueError(f"idle_close must be >= 0 seconds, got {idle_close}")
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(*tls)
        self._idle_close = idle_close
        if not walk_interval > 0:
            raise ValueError(f"walk_interval must be > 0 seconds, got {walk_interval}")
        if not 0 < margin_call_cycle < math.inf:
            raise ValueError(f"margin_call_cycle must be > 0 seconds, got {margin_call_cycle}")
        if latency < 0:
            raise ValueError(f"latency must be >= 0 seconds, got {latency}")
        self._prices = validated_prices(INDEX_PRICES if prices is None else prices)
        chosen = demo_accounts() if accounts is None else list(accounts)
        self._accounts = [validated_copy(account, self._prices) for account in chosen]
        self._by_name: dict[str, SimAccount] = {}
        self._by_key: dict[str, SimAccount] = {}
        for account in self._accounts:
            if account.name in self._by_name:
                raise ValueError(f"two simulator accounts are named {account.name!r}")
            if account.api_key in self._by_key:
                raise ValueError(f"account {account.name!r} reuses another account's api_key")
            self._by_name[account.name] = account
            self._by_key[account.api_key] = account
        self._seed = seed
        self._clock = clock
        self._walk_interval = walk_interval
        self._cycle = float(margin_call_cycle)
        self._initial_skew = float(clock_skew)
        self._initial_latency = float(latency)
        self._hour_seconds = float(hour_seconds)
        self._lock = threading.Lock()
        self._server: SimulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self._reset_state()

    # -- state (called with the lock held) ---------------------------------------------------------

    def _reset_state(self) -> None:
        self._epoch = self._clock()
        self._stopped_at: float | None = None  # market time while the market stands still
        self._skew = self._initial_skew
        self._latency = self._initial_latency
        self._time_requests = 0
        self._unattributed = 0
        self._index_stats = Stats()
        self._index_window = RateWindow(INDEX_RATE_LIMIT_REQUESTS)
        self._index_fault: str | None = None
        self._index_fault_remaining: int | None = None
        self._market = Market(self._prices, self._seed)
        self._states = {a.name: AccountState(copy.deepcopy(a)) for a in self._accounts}
        self._life = Life(
            refs=RefIds(),
            seed=self._seed,
            hour_seconds=self._hour_seconds,
            period=self._cycle,
            prices=lambda: self._now_prices()[0],
            entry_ltv=self._current_ltv,
        )
        for state in self._states.values():
            self._life.open(state, self._epoch)

    def _current_ltv(self, order: OrderState) -> Decimal | None:
        entry = self._entry(order)
        return Decimal(entry["curLTV"]) if entry["curLTV"] else None

    def _entry(self, order: OrderState) -> dict[str, Any]:
        prices, elapsed = self._now_prices()
        return order.entry(prices, order.target_ltv(elapsed, self._cycle))

    def _live(self, state: AccountState) -> None:
        """Write what happened to the account since it was last looked at."""
        _, elapsed = self._now_prices()
        self._life.catch_up(state, self._epoch, elapsed)

    def _now_prices(self) -> tuple[dict[str, Decimal], float]:
        """The market moved to the clock's step, and the seconds of market time since the start
        (the time that moves prices and LTV cycles; it stops while the market stands still)."""
        elapsed = self._clock() - self._epoch if self._stopped_at is None else self._stopped_at
        self._market.advance(math.floor(elapsed / self._walk_interval))
        return self._market.prices(), elapsed

    def _entries(self, state: AccountState) -> list[dict[str, Any]]:
        self._live(state)
        return [self._entry(order) for order in state.orders]

    def _state(self, name: str) -> AccountState:
        try:
            return self._states[name]
        except KeyError:
            raise KeyError(f"no simulator account named {name!r}") from None

    def account_view(self, account: str, order: str | None = None) -> dict[str, Any]:
        """The control API's view of ``account``; ``ltv`` and ``walk`` are ``order``'s (None: the
        first order). KeyError for an unknown account or order."""
        with self._lock:
            state = self._state(account)
            if order is not None:
                state.order(order)
            return self._view(state, order)

    def config_view(self) -> dict[str, Any]:
        """Clock skew, latency for all accounts, the LTV cycle's period and whether market time
        runs (``GET /sim/config``)."""
        with self._lock:
            return {
                "clock_skew": self._skew,
                "latency": self._latency,
                "margin_call_cycle": self._cycle,
                "walk": self._stopped_at is None,
                "index_fault": self._index_fault,
                "index_fault_count": self._index_fault_remaining,
            }

    def _view(self, state: AccountState, order_id: str | None) -> dict[str, Any]:
        entries = self._entries(state)
        orders = [
            {
                "order": order.order.order_id,
                "ltv": entry["curLTV"],
                "walk": order.moving,
                "cycle": order.order.margin_call_cycle,
            }
            for order, entry in zip(state.orders, entries, strict=True)
        ]
        chosen = next((o for o in orders if order_id in (None, o["order"])), None)
        currencies = {c for o in state.orders for c in (*o.order.collateral, *o.order.loans)}
        market = self._market.prices()
        return {
            "name": state.account.name,
            "order": chosen["order"] if chosen else None,
            "ltv": chosen["ltv"] if chosen else None,
            "walk": chosen["walk"] if chosen else True,
            "orders": orders,
            "prices": {ccy: plain(market[ccy]) for ccy in sorted(currencies)},
            "fault": state.fault,
            "fault_count": state.fault_remaining,
            "latency": state.latency,
        }

    # -- public API -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` (``https://`` with TLS) of the running server."""
        if self._base_url is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return self._base_url

    @property
    def accounts(self) -> list[SimAccount]:
        """Copies of the accounts with their open orders (changing a copy does nothing)."""
        with self._lock:
            return [
                dataclasses.replace(
                    state.account, orders=[copy.deepcopy(o.order) for o in state.orders]
                )
                for state in self._states.values()
            ]

    @property
    def prices(self) -> dict[str, float]:
        """The market's index prices (USD) now: what every order is valued from."""
        with self._lock:
            prices, _ = self._now_prices()
        return {ccy: float(price) for ccy, price in prices.items()}

    def set_fault(
        self,
        account: str,
        fault: str | None,
        count: int | None = None,
        order: str | None = None,
        endpoint: str = "loan-info",
    ) -> None:
        """Make the next ``count`` answers of ``endpoint`` to ``account`` (all if None) show
        ``fault``.

        ``endpoint`` is the last part of the path: ``loan-info`` (default), ``loan-history``,
        ``interest-accrued``, ``max-loan`` or ``max-collateral-redeem-amount``; the other
        endpoints take the faults of :data:`ENDPOINT_FAULTS`. A fault that spoils a loan-info
        entry spoils the entry of ``order`` (None: the first).
        """
        path = f"{loan_endpoints.LOAN_PATH}/{endpoint}"
        if path not in loan_endpoints.METHODS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        known = FAULTS if path == loan_endpoints.LOAN_INFO_PATH else ENDPOINT_FAULTS
        if fault is not None and fault not in known:
            raise ValueError(f"unknown fault {fault!r}; known faults: {', '.join(known)}")
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 1
        ):
            raise ValueError(f"fault count must be a positive integer or None, got {count!r}")
        with self._lock:
            state = self._state(account)
            if order is not None:
                state.order(order)
            if path != loan_endpoints.LOAN_INFO_PATH:
                if fault is None:
                    state.endpoint_faults.pop(path, None)
                else:
                    state.endpoint_faults[path] = (fault, count)
                return
            state.fault = fault
            state.fault_remaining = count if fault is not None else None
            state.fault_order = order

    def set_index_fault(self, fault: str | None, count: int | None = None) -> None:
        """Make the next ``count`` index-tickers answers (all if None) show ``fault``: one of
        :data:`MARKET_FAULTS`, the faults that do not spoil a loan-info entry."""
        if fault is not None and fault not in MARKET_FAULTS:
            raise ValueError(
                f"unknown index-tickers fault {fault!r}; known: {', '.join(MARKET_FAULTS)}"
            )
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 1
        ):
            raise ValueError(f"fault count must be a positive integer or None, got {count!r}")
        with self._lock:
            self._index_fault = fault
            self._index_fault_remaining = count if fault is not None else None

    def set_ltv(self, account: str, ltv: float, order: str | None = None) -> None:
        """Hold ``order``'s curLTV (None: the first order) at ``ltv`` to 4 decimals.

        The order's collateral valuation is adjusted (not the shared market) and its LTV stops
        following the market or its cycle until :meth:`set_walk` turns it back on.
        """
        if isinstance(ltv, bool) or not isinstance(ltv, int | float) or not 0 < ltv < math.inf:
            raise ValueError(f"ltv must be a number > 0, got {ltv!r}")
        with self._lock:
            state = self._state(account)
            chosen = state.order(order)
            prices, _ = self._now_prices()
            if value_of(chosen.order.loans, prices) <= 0:
                raise ValueError(f"account {account!r} has no loan, so it has no LTV to set")
            if value_of(chosen.order.collateral, prices) <= 0:
                raise ValueError(f"account {account!r} has no collateral to reprice")
            chosen.pinned_ltv = Decimal(repr(float(ltv)))
            chosen.moving = False

    def set_walk(self, account: str, enabled: bool, order: str | None = None) -> None:
        """Let ``order``'s LTV (None: the first order) follow the market and its cycle, or hold
        it where it stands; it resumes from where it stands."""
        with self._lock:
            state = self._state(account)
            chosen = state.order(order)
            prices, elapsed = self._now_prices()
            entry = chosen.entry(prices, chosen.target_ltv(elapsed, self._cycle))
            if enabled:
                chosen.moving, chosen.pinned_ltv = True, None
            elif chosen.moving:
                chosen.moving = False
                chosen.pinned_ltv = Decimal(entry["curLTV"]) if entry["curLTV"] else None

    def set_market_walk(self, enabled: bool) -> None:
        """Let market time run (prices walk, LTVs cycle) or stop it for every account at once,
        so that two readers see the same answers; it resumes from where it stood."""
        with self._lock:
            _, elapsed = self._now_prices()
            if enabled and self._stopped_at is not None:
                self._epoch = self._clock() - self._stopped_at
                self._stopped_at = None
            elif not enabled:
                self._stopped_at = elapsed

    def close_order(self, account: str, order: str | None = None) -> None:
        """Close ``order`` (None: the first), as when it is repaid: it leaves loan-info."""
        with self._lock:
            self._state(account).close(order)

    def set_latency(self, seconds: float, account: str | None = None) -> None:
        """Delay every loan-info answer (``account=None``) or the answers to one account."""
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not (0 <= seconds < math.inf)
        ):
            raise ValueError(f"latency must be a number of seconds >= 0, got {seconds!r}")
        with self._lock:
            if account is None:
                self._latency = float(seconds)
            else:
                self._state(account).latency = float(seconds)

    def set_credentials(
        self, account: str, *, passphrase: str | None = None, secret_key: str | None = None
    ) -> None:
        """Rotate ``account``'s passphrase and/or secret key: the old ones are refused from now on
        (50105, 50113) until :meth:`reset` brings the original ones back."""
        for name, given in (("passphrase", passphrase), ("secret_key", secret_key)):
            if given is not None and (not isinstance(given, str) or not given.strip()):
                raise ValueError(f"{name} must be a non-empty string")
        with self._lock:
            state = self._state(account)
            if passphrase is not None:
                state.account.passphrase = passphrase
            if secret_key is not None:
                state.account.secret_key = secret_key

    def set_clock_skew(self, seconds: float) -> None:
        """Put the simulator's clock (public/time and the 30 s window) ``seconds`` ahead."""
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
        ):
            raise ValueError(f"clock_skew must be a number of seconds, got {seconds!r}")
        with self._lock:
            self._skew = float(seconds)

    def stats(self) -> dict[str, Any]:
        """Request counters, and the connections accepted and TLS handshakes completed since the
        server started: the same document as ``GET /sim/stats``."""
        server = self._server
        with self._lock:
            return {
                "accounts": {
                    name: dataclasses.asdict(state.stats) for name, state in self._states.items()
                },
                "endpoints": {
                    name: {
                        path.rsplit("/", 1)[-1]: dataclasses.asdict(stats)
                        for path, stats in state.endpoint_stats.items()
                    }
                    for name, state in self._states.items()
                },
                "time_requests": self._time_requests,
                "unattributed_requests": self._unattributed,
                "index_tickers": dataclasses.asdict(self._index_stats),
                "connections": server.connections_accepted if server else 0,
                "tls_handshakes": server.tls_handshakes if server else 0,
            }

    def reset(self) -> None:
        """Back to the state after construction: faults, counters, latency, skew, rate windows,
        prices, walks, cycles and closed orders."""
        with self._lock:
            self._reset_state()

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port) from a daemon thread; return the base URL."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        server_class = SimulatorHTTPServer6 if ":" in host else SimulatorHTTPServer
        server = server_class(
            (host, port),
            SimulatorRequestHandler,
            self,
            tls=self._tls,
            idle_close=self._idle_close,
        )
        bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bound_host, bound_host)
        shown = f"[{shown}]" if ":" in shown else shown
        scheme = "http" if self._tls is None else "https"
        self._base_url = f"{scheme}://{shown}:{bound_port}"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="okx-simulator",
            daemon=True,
        )
        self._thread.start()
        _log.debug("OKX simulator serving %d accounts on %s", len(self._accounts), self._base_url)
        return self._base_url

    def stop(self) -> None:
        """Stop serving and drop every open connection (hanging ones too); quick and idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=1.0)
        self._server = self._thread = None
        self._base_url = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- request handling (called from handler threads) ---------------------------------------

    def answer_public_time(self) -> Reply:
        """The answer to ``GET /api/v5/public/time``: the simulator's clock, skew included."""
        with self._lock:
            self._time_requests += 1
            now = self._clock() + self._skew
        return okx_ok([{"ts": str(math.floor(now * 1000))}])

    def answer_index_tickers(self, method: str, target: str) -> Reply:
        """The answer to the public ``GET /api/v5/market/index-tickers`` (``quoteCcy`` or
        ``instId``): the market's prices now, behind OKX's 20 requests / 2 s limit and faults."""
        if method != "GET":
            return okx_error("50115")
        query = parse_qs(urlsplit(target).query)
        quote = (query.get("quoteCcy") or [""])[-1]
        instrument = (query.get("instId") or [""])[-1]
        with self._lock:
            stats = self._index_stats
            stats.requests += 1
            delay = self._latency
            if not self._index_window.allow(self._clock()):
                stats.rate_limited += 1
                reply = okx_error("50011")
                reply.delay = delay
                return reply
            prices, _ = self._now_prices()
            ts = str(math.floor((self._clock() + self._skew) * 1000))
            fault = self._index_fault
            if fault is not None and self._index_fault_remaining is not None:
                self._index_fault_remaining -= 1
                if self._index_fault_remaining <= 0:
                    self._index_fault = self._index_fault_remaining = None
            try:
                data = index_tickers(prices, quote, instrument, ts)
            except LookupError as error:
                reply = okx_error(str(error.args[0]))
            else:
                if fault is not None:
                    stats.faulted += 1
                    reply = fault_reply(fault, data, None)
                else:
                    stats.ok += 1
                    reply = okx_ok(data)
        reply.delay += delay
        return reply

    def answer_loan_info(self, method: str, target: str, headers: Headers, body: bytes) -> Reply:
        """The answer to a loan-info request: auth, rate limit, ``ordId`` filter, then faults."""
        return self._answer_signed(loan_endpoints.LOAN_INFO_PATH, method, target, headers, body)

    def answer_loan_endpoint(
        self, path: str, method: str, target: str, headers: Headers, body: bytes
    ) -> Reply:
        """The answer to loan-history, interest-accrued, max-loan or max-redeem: auth, the
        endpoint's own rate limit, its parameters, then its faults."""
        return self._answer_signed(path, method, target, headers, body)

    def _answer_signed(
        self, path: str, method: str, target: str, headers: Headers, body: bytes
    ) -> Reply:
        loan_info = path == loan_endpoints.LOAN_INFO_PATH
        if method != loan_endpoints.METHODS[path]:
            return okx_error("50115")
        account = self._by_key.get(headers.get("OK-ACCESS-KEY") or "")
        with self._lock:
            now = self._clock()
            skew = self._skew
            delay = self._latency if loan_info else 0.0
            # The account as it is now: its passphrase or secret key may have been rotated.
            known = {} if account is None else {account.api_key: self._states[account.name].account}
        error = auth_error(headers, method, target, body, now + skew, known)
        with self._lock:
            if account is None:
                self._unattributed += 1
                reply = okx_error(error or "50111")
                reply.delay = delay
                return reply
            state = self._states[account.name]
            if loan_info:
                stats, window = state.stats, state.window
                delay += state.latency
                state.count_interval(now)
            else:
                stats = state.endpoint_stats.setdefault(path, EndpointStats())
                window = state.windows.setdefault(path, RateWindow())
            stats.requests += 1
            if error is not None:
                stats.auth_failed += 1
                reply = okx_error(error)
            elif not window.allow(now):
                stats.rate_limited += 1
                reply = okx_error("50011")
            else:
                if isinstance(stats, EndpointStats):
                    stats.peak_in_window = max(stats.peak_in_window, window.in_window)
                reply = self._answer_data(state, stats, path, target, body)
        reply.delay += delay
        return reply

    def _answer_data(
        self, state: AccountState, stats: Stats, path: str, target: str, body: bytes
    ) -> Reply:
        if path == loan_endpoints.LOAN_INFO_PATH:
            data = _only_order(self._entries(state), _order_filter(target))
            fault, order = state.take_fault(), state.fault_order
        else:
            self._live(state)
            try:
                data = loan_endpoints.answer(
                    path, state, target, body, self._now_prices()[0], self._entry
                )
            except loan_endpoints.ParameterError as error:
                if isinstance(stats, EndpointStats):
                    stats.refused += 1
                return okx_parameter_error(str(error))
            fault, order = state.take_endpoint_fault(path), None
        if fault is not None:
            stats.faulted += 1
            return fault_reply(fault, data, order)
        stats.ok += 1
        return okx_ok(data)


def _order_filter(target: str) -> str | None:
    """The ``ordId`` query parameter of a request target; empty counts as absent, as on OKX."""
    values = parse_qs(urlsplit(target).query, keep_blank_values=True).get("ordId", [])
    return values[-1] if values and values[-1] else None


def _only_order(entries: list[dict[str, Any]], order_id: str | None) -> list[dict[str, Any]]:
    """The entries the ``ordId`` filter asks for: all without one, none for an unknown order."""
    if order_id is None:
        return entries
    return [entry for entry in entries if entry.get("ordId") == order_id]
