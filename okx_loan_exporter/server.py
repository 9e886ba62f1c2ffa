"""The exporter's WSGI HTTP(S) server, built to stay up under hostile clients.

One selector thread accepts connections, does their TLS handshakes and reads their request heads,
non-blocking; only a connection with a complete head gets a thread, which answers one request with
wsgiref. An idle or byte-dripping client so costs a file descriptor, never a thread, and the limits
live in one place (:class:`ServerLimits`): a head of at most 64 KiB (else 431, never parsed),
complete within 10 s of the connection; at most 512 connections (below the open-file limit), where
a new one closes the one that has waited longest without a complete head once that one has had a
quarter second; ``accept()`` out of descriptors backs off instead of spinning.

Also: the SSL context fetched from the :class:`~okx_loan_exporter.webconfig.WebConfigWatcher` at
every connection (a renewed certificate is used at once), an empty host on IPv6 and IPv4 with one
socket, ``X-Content-Type-Options: nosniff`` and a ``Server`` header without the Python version on
every answer, ``HEAD`` without a body, request logs at DEBUG, no reverse DNS, and a shutdown that
lets requests being answered finish for up to a second.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import queue
import re
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from wsgiref.headers import Headers
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler
from wsgiref.types import WSGIApplication as WSGIApp
from wsgiref.types import WSGIEnvironment

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from okx_loan_exporter import __version__
from okx_loan_exporter.listen import (
    client_address,
    connection_cap,
    listen_socket,
    parse_listen_address,
)
from okx_loan_exporter.webconfig import WebConfigWatcher

logger = logging.getLogger(__name__)

SERVER_SOFTWARE = f"okx-loan-exporter/{__version__}"
HANDSHAKE_TIMEOUT_SECONDS = 10.0
HEAD_TIMEOUT_SECONDS = 10.0
IO_TIMEOUT_SECONDS = 30.0
MAX_HEAD_BYTES = 64 * 1024
MAX_CONNECTIONS = 512
SHED_GRACE_SECONDS = 0.25
SHUTDOWN_GRACE_SECONDS = 1.0
SHED_REASONS = ("max_connections", "head_timeout", "head_too_large")

_ACCEPT_BATCH = 64  # accepts per loop turn, so heads already sent are read between bursts
_LINGER_SECONDS = 1.0  # after a 431, read and drop what the client still sends, so it sees it
_LINGER_BYTES = 4 << 20
_DRAIN_READS = 4
_BACKOFF_FIRST, _BACKOFF_MAX = 0.005, 1.0
_SHED_WARNING_INTERVAL = 60.0
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_HEAD_END = re.compile(rb"\n\r?\n")


@dataclass(frozen=True)
class ServerLimits:
    """How much a client may ask of the server before it is cut off."""

    max_connections: int = MAX_CONNECTIONS
    max_head_bytes: int = MAX_HEAD_BYTES
    head_timeout: float = HEAD_TIMEOUT_SECONDS
    """From the connection to the end of the request head, TLS handshake included."""
    handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS
    io_timeout: float = IO_TIMEOUT_SECONDS
    """Once the head is in: per read of a request body, and in all for writing the answer."""
    shed_grace: float = SHED_GRACE_SECONDS
    """At the cap, no connection is closed to make room before it had this long to send its
    request (new ones wait in the kernel's backlog meanwhile): a scraper's request that is
    delayed a little, by a lost packet or a busy client, is not shed by a fast connection flood."""


class ConnectionStats(Collector):
    """The server's connection figures as ``okx_loan_exporter_http_*`` families."""

    def __init__(self) -> None:
        self.count_open: Callable[[], int] = lambda: 0  # the server sets it
        self.limit = 0
        self.shed: dict[str, int] = dict.fromkeys(SHED_REASONS, 0)

    @property
    def open(self) -> int:
        """Connections open now."""
        return self.count_open()

    def collect(self) -> Iterable[Metric]:
        shed = CounterMetricFamily(
            "okx_loan_exporter_http_connections_shed",
            "HTTP connections closed before they sent a complete request head, by reason: "
            "max_connections (closed to make room at the connection cap), head_timeout (no "
            "complete head in time), head_too_large (answered 431).",
            labels=["reason"],
        )
        for reason, count in self.shed.items():
            shed.add_metric([reason], count)
        return [
            GaugeMetricFamily(
                "okx_loan_exporter_http_connections_open",
                "HTTP connections open now: waiting for their request or being answered.",
                value=self.open,
            ),
            GaugeMetricFamily(
                "okx_loan_exporter_http_connections_max",
                "The most HTTP connections kept open (--web.max-connections, lowered to fit the "
                "open-file limit).",
                value=self.limit,
            ),
            shed,
        ]


class _LogWriter:
    """A stderr stand-in for wsgiref: what it writes (tracebacks of app errors) goes to the log."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        text = "".join(self._parts).rstrip()
        self._parts.clear()
        if text:
            logger.error("Error while handling a request: %s", text)


class _Connection:
    """An accepted connection until its request head is complete."""

    __slots__ = (
        "accepted",
        "address",
        "deadline",
        "drained",
        "draining",
        "events",
        "handshaken",
        "head",
        "sock",
    )

    def __init__(
        self, sock: socket.socket, address: tuple[Any, ...], accepted: float, deadline: float
    ) -> None:
        self.sock = sock
        self.address = address
        self.accepted = accepted
        self.deadline = deadline
        self.handshaken = not isinstance(sock, ssl.SSLSocket)
        self.head = bytearray()
        self.draining = False
        self.drained = 0
        self.events = 0  # what the selector watches for: nothing until a read finds no head yet


class _PrefixedReader(io.RawIOBase):
    """The bytes already read (the head), then the socket: what the request handler reads."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        self._prefix = memoryview(prefix)
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            size = min(len(buffer), len(self._prefix))
            buffer[:size] = self._prefix[:size]
            self._prefix = self._prefix[size:]
            return size
        return self._sock.recv_into(buffer)


class _AnswerWriter(io.RawIOBase):
    """The socket, for writing one answer: ``seconds`` in all from its first byte, however slowly
    the client reads (a socket timeout alone applies to each send)."""

    _CHUNK = 16384  # one TLS record: an SSL socket's timeout applies per record

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock
        self._seconds = seconds
        self._deadline: float | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        with memoryview(data) as view:
            flat = view.cast("B")
            now = time.monotonic()
            if self._deadline is None:
                self._deadline = now + self._seconds
            for start in range(0, len(flat), self._CHUNK):
                left = self._deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the client did not read the answer in time")
                self._sock.settimeout(left)
                self._sock.sendall(flat[start : start + self._CHUNK])
            return len(flat)


class _ResponseWriter(ServerHandler):
    """wsgiref's response writer: our Server header, nosniff on every answer, HEAD bodiless."""

    server_software = SERVER_SOFTWARE
    # Set by wsgiref at run time; typeshed does not declare them.
    environ: WSGIEnvironment
    headers: Headers
    headers_sent: bool

    def cleanup_headers(self) -> None:
        super().cleanup_headers()
        self.headers.setdefault("X-Content-Type-Options", "nosniff")

    def write(self, data: bytes) -> None:
        if self.environ.get("REQUEST_METHOD") != "HEAD":
            super().write(data)
        elif not self.headers_sent:  # the GET's headers, Content-Length included; no body
            self.bytes_sent = len(data)
            self.send_headers()
            self._flush()


class _Handler(WSGIRequestHandler):
    """One request from a complete head: wsgiref's handler on :class:`_ResponseWriter`."""

    server: _WSGIHost  # type: ignore[assignment]
    request: _Connection

    def setup(self) -> None:
        self.connection = self.request.sock
        self.rfile = io.BufferedReader(_PrefixedReader(bytes(self.request.head), self.connection))
        self.wfile = io.BufferedWriter(_AnswerWriter(self.connection, self.server.io_timeout))

    def handle(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if not self.parse_request():  # it has answered the error (400, 431...) itself
            return
        writer = _ResponseWriter(
            self.rfile,
            self.wfile,  # type: ignore[arg-type] # a BufferedWriter, as in wsgiref's own handler
            self.get_stderr(),
            self.get_environ(),
            multithread=True,
        )
        writer.request_handler = self  # type: ignore[attr-defined] # wsgiref logs through it
        writer.run(self.server.app)

    def version_string(self) -> str:
        return SERVER_SOFTWARE

    def end_headers(self) -> None:
        # Only error answers of http.server pass here; wsgiref answers go through the writer.
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def get_stderr(self) -> Any:
        return _LogWriter()

    def get_environ(self) -> WSGIEnvironment:
        environ = super().get_environ()
        if isinstance(self.connection, ssl.SSLSocket):
            environ["HTTPS"] = "on"  # wsgiref derives wsgi.url_scheme from this
        return environ


class _RequestThreads:
    """Threads that answer requests and then wait a while for the next one.

    Handing a request to a waiting thread is a queue put; starting a thread instead would make the
    selector loop wait until the new thread runs (``Thread.start`` does), which under load took
    most of the loop's time. A thread is started only when none is waiting, so there are never
    more than the most requests answered at once. At most ``MAX_IDLE`` wait, for ``IDLE_SECONDS``
    at most: a kept thread holds its stack, and Prometheus scrapes seconds apart.
    """

    IDLE_SECONDS = 2.0
    MAX_IDLE = 16

    def __init__(self, handle: Callable[[_Connection], None]) -> None:
        self._handle = handle
        self._queue: queue.SimpleQueue[_Connection] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # waiting threads that no queued request has claimed yet

    def submit(self, conn: _Connection) -> None:
        """Answer ``conn`` on a waiting thread, or a new one; RuntimeError if none can start."""
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1
        self._queue.put(conn)
        if start:
            threading.Thread(target=self._run, name="http-request", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn = self._queue.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # nobody counts on this thread: end it
                        self._idle -= 1
                        return
                continue  # a request was queued for it just now
            self._handle(conn)
            with self._lock:
                if self._idle >= self.MAX_IDLE:
                    return
                self._idle += 1


class _WSGIHost:
    """What wsgiref's request handler needs of its server: the app and the base environ."""

    def __init__(self, app: WSGIApp, host: str, port: int, io_timeout: float) -> None:
        self.app = app
        self.io_timeout = io_timeout
        self.base_environ: dict[str, Any] = {
            "SERVER_NAME": host,
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PORT": str(port),
            "REMOTE_HOST": "",
            "CONTENT_LENGTH": "",
            "SCRIPT_NAME": "",
        }


def _error_answer(status: str, message: str) -> bytes:
    body = message.encode()
    head = (
        f"HTTP/1.1 {status}\r\nServer: {SERVER_SOFTWARE}\r\nDate: {formatdate(usegmt=True)}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class ExporterHTTPServer:
    """The server, bound at construction (so port 0 works and OSError surfaces here)."""

    def __init__(
        self,
        app: WSGIApp,
        listen_address: str,
        watcher: WebConfigWatcher,
        limits: ServerLimits | None = None,
        stats: ConnectionStats | None = None,
    ) -> None:
        host, port = parse_listen_address(listen_address)
        self._limits = limits or ServerLimits()
        self.max_connections = connection_cap(self._limits.max_connections)
        if self.max_connections < self._limits.max_connections:
            logger.warning(
                "--web.max-connections %d leaves too few file descriptors under the open-file "
                "limit; using %d (raise the limit with ulimit -n to allow more)",
                self._limits.max_connections,
                self.max_connections,
            )
        self.stats = stats or ConnectionStats()
        self.stats.limit = self.max_connections
        self.stats.count_open = lambda: len(self._waiting) + self._serving
        self._watcher = watcher
        self._listener = listen_socket(host, port)
        bound = self._listener.getsockname()
        self.host: str = str(bound[0])
        self.port: int = int(bound[1])
        self._wsgi = _WSGIHost(app, self.host, self.port, self._limits.io_timeout)
        self._threads = _RequestThreads(self._serve)
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._accepting = False
        self._backoff = 0.0
        self._resume_at = 0.0
        self._waiting: dict[_Connection, None] = {}  # in accept order: the oldest first
        self._next_deadline = float("inf")
        self._serving = 0
        self._serving_changed = threading.Condition()
        self._scratch = bytearray(65536)
        self._shed_since_warning = 0
        self._warned_at = -_SHED_WARNING_INTERVAL
        self._stop = False
        self._lock = threading.Lock()
        self._running = False
        self._closed = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9855`` (https while TLS is configured)."""
        scheme = "https" if self._watcher.current().tls is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown`; returns at once if already shut down."""
        with self._lock:
            if self._closed or self._running:
                return
            self._running = True
        try:
            self._loop()
        except Exception:
            logger.exception("the HTTP server stopped on an unexpected error")
            raise
        finally:
            self._close_all()
            self._stopped.set()

    def start_background(self) -> None:
        """Serve on a daemon thread."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self.serve_forever, name=f"http-{self.port}", daemon=True
            )
        self._thread.start()

    def shutdown(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> int:
        """Stop accepting, close every connection without a complete request, and give the
        requests being answered up to ``grace`` seconds; return how many still run after it."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            running = self._running
        self._stop = True
        self._wake()
        if running:
            self._stopped.wait(timeout=1.0)
        else:
            self._close_all()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        deadline = time.monotonic() + grace
        with self._serving_changed:
            while self._serving and (left := deadline - time.monotonic()) > 0:
                self._serving_changed.wait(left)
            return self._serving

    # --- the selector loop ---------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop:
            self._set_accepting(time.monotonic())
            events = self._selector.select(self._select_timeout(time.monotonic()))
            now = time.monotonic()
            accept = False
            for key, _ in events:
                if key.fileobj is self._listener:
                    accept = True
                elif key.data is None:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                else:
                    self._guarded(self._advance, key.data, now)
            if accept and not self._stop:
                self._guarded(self._accept, None, now)
            if now >= self._next_deadline:
                self._guarded(self._expire, None, now)

    def _guarded(self, step: Callable[..., None], conn: _Connection | None, now: float) -> None:
        """Run one step of the loop; a bug in it costs that connection, never the server."""
        try:
            if conn is None:
                step(now)
            else:
                step(conn, now)
        except Exception:
            logger.exception("unexpected error in the HTTP server loop")
            if conn is not None:
                with contextlib.suppress(Exception):
                    self._close(conn)

    def _select_timeout(self, now: float) -> float | None:
        wake_at = self._next_deadline
        if not self._accepting and self._resume_at > now:
            wake_at = min(wake_at, self._resume_at)
        return None if wake_at == float("inf") else max(0.0, wake_at - now)

    def _set_accepting(self, now: float) -> None:
        """Listen for new connections unless backing off, or full with nobody to shed."""
        with self._serving_changed:  # a request thread that ends then wakes the loop (_finish)
            room = len(self._waiting) + self._serving < self.max_connections or bool(self._waiting)
            wanted = room and now >= self._resume_at and not self._stop
            changed, self._accepting = wanted != self._accepting, wanted
        if changed:
            if wanted:
                self._selector.register(self._listener, selectors.EVENT_READ, None)
            else:
                self._selector.unregister(self._listener)

    def _accept(self, now: float) -> None:
        for _ in range(_ACCEPT_BATCH):
            if len(self._waiting) + self._serving >= self.max_connections:
                if not self._waiting:
                    return  # every slot answers a request: the next one waits in the backlog
                oldest = next(iter(self._waiting)).accepted
                if now - oldest < self._limits.shed_grace:
                    self._resume_at = oldest + self._limits.shed_grace
                    return
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _OUT_OF_FDS:
                    self._back_off(now, error)
                    return
                continue  # ECONNABORTED and the like: that client is gone
            self._backoff = 0.0
            if len(self._waiting) + self._serving >= self.max_connections:
                self._shed(next(iter(self._waiting)), "max_connections")
            self._admit(sock, client_address(address), now)

    def _back_off(self, now: float, error: OSError) -> None:
        first = self._backoff == 0.0
        self._backoff = min(_BACKOFF_MAX, self._backoff * 2 or _BACKOFF_FIRST)
        self._resume_at = now + self._backoff
        log = logger.warning if first else logger.debug
        log("cannot accept connections: %s; retrying in %.3f s", error.strerror, self._backoff)

    def _admit(self, sock: socket.socket, address: tuple[Any, ...], now: float) -> None:
        sock.setblocking(False)
        limits = self._limits
        deadline = now + limits.head_timeout
        try:
            ctx = self._watcher.ssl_context()
            if ctx is not None:
                sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                deadline = now + min(limits.handshake_timeout, limits.head_timeout)
        except (OSError, ValueError) as error:
            logger.debug("cannot set up TLS for %s: %s", address[0], error)
            sock.close()
            return
        conn = _Connection(sock, address, now, deadline)
        self._waiting[conn] = None
        self._next_deadline = min(self._next_deadline, deadline)
        self._advance(conn, now)  # most clients have sent their request already

    def _advance(self, conn: _Connection, now: float) -> None:
        """Move the handshake or the head on as far as the socket allows."""
        events = selectors.EVENT_READ
        try:
            if conn.draining:
                self._drain(conn)
                return
            if not conn.handshaken:
                conn.sock.do_handshake()  # type: ignore[attr-defined]
                conn.handshaken = True
                conn.deadline = conn.accepted + self._limits.head_timeout
            self._read_head(conn, now)
            return
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLWantWriteError:
            events = selectors.EVENT_WRITE
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, ValueError) as error:  # reset, TLS failure: the client is gone
            logger.debug("connection from %s ended: %s", conn.address[0], error)
            self._close(conn)
            return
        if events != conn.events and conn in self._waiting:
            if conn.events:
                self._selector.modify(conn.sock, events, conn)
            else:
                self._selector.register(conn.sock, events, conn)
            conn.events = events

    def _read_head(self, conn: _Connection, now: float) -> None:
        limit = self._limits.max_head_bytes
        while True:
            data = conn.sock.recv(min(65536, limit + 1 - len(conn.head)))
            if not data:
                self._close(conn)
                return
            start = max(0, len(conn.head) - 2)
            conn.head += data
            end = _HEAD_END.search(conn.head, start)
            if end is not None and end.end() <= limit:
                self._hand_over(conn)
                return
            if len(conn.head) > limit:
                self._refuse_large_head(conn, now)
                return

    def _refuse_large_head(self, conn: _Connection, now: float) -> None:
        limit = self._limits.max_head_bytes
        logger.debug("request head from %s over %d bytes: answered 431", conn.address[0], limit)
        self._count("head_too_large")
        conn.head = bytearray()
        conn.draining = True
        conn.deadline = now + _LINGER_SECONDS
        self._next_deadline = min(self._next_deadline, conn.deadline)
        answer = _error_answer(
            "431 Request Header Fields Too Large",
            f"The request line and headers are over {limit} bytes\n",
        )
        try:
            conn.sock.send(answer)
            conn.sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            self._close(conn)
            return
        self._drain(conn)

    def _drain(self, conn: _Connection) -> None:
        """Read and drop what a refused client still sends, so it reads the answer, not a reset;
        for at most ``_LINGER_SECONDS`` and ``_LINGER_BYTES``."""
        for _ in range(_DRAIN_READS):  # a few reads a turn: a fast sender must not stall the loop
            size = conn.sock.recv_into(self._scratch)
            conn.drained += size
            if not size or conn.drained > _LINGER_BYTES:
                self._close(conn)
                return

    def _hand_over(self, conn: _Connection) -> None:
        del self._waiting[conn]
        if conn.events:
            self._selector.unregister(conn.sock)
        with self._serving_changed:
            self._serving += 1
        try:
            self._threads.submit(conn)
        except RuntimeError as error:  # no thread to be had
            logger.warning("cannot start a thread for a request: %s", error)
            self._finish(conn.sock)

    def _expire(self, now: float) -> None:
        next_deadline = float("inf")
        for conn in list(self._waiting):
            if conn.deadline <= now:
                if conn.draining:
                    self._close(conn)
                else:
                    logger.debug("no complete request head from %s in time", conn.address[0])
                    self._shed(conn, "head_timeout")
            else:
                next_deadline = min(next_deadline, conn.deadline)
        self._next_deadline = next_deadline

    def _shed(self, conn: _Connection, reason: str) -> None:
        if not conn.draining:  # a refused one was counted then
            self._count(reason)
        self._close(conn)
        if reason != "max_connections" or conn.draining:
            return
        self._shed_since_warning += 1
        now = time.monotonic()
        if now - self._warned_at >= _SHED_WARNING_INTERVAL:
            logger.warning(
                "%d HTTP connection(s) open, the most allowed (--web.max-connections): closed "
                "%d that had sent no complete request, the longest waiting first",
                self.max_connections,
                self._shed_since_warning,
            )
            self._warned_at, self._shed_since_warning = now, 0

    def _count(self, reason: str) -> None:
        self.stats.shed[reason] += 1

    def _close(self, conn: _Connection) -> None:
        if self._waiting.pop(conn, 0) is None and conn.events:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        conn.sock.close()

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(OSError):  # a full pipe is awake already
            if self._wake_w >= 0:
                os.write(self._wake_w, b"\0")

    def _close_all(self) -> None:
        for conn in list(self._waiting):
            self._close(conn)
        with contextlib.suppress(OSError):
            self._selector.close()
        self._listener.close()
        with self._wake_lock:  # a request thread must not write to a reused descriptor
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    # --- request threads -------------------------------------------------------------------------

    def _serve(self, conn: _Connection) -> None:
        try:
            conn.sock.settimeout(self._limits.io_timeout)
            _Handler(conn, conn.address, self._wsgi)  # type: ignore[arg-type]
        except Exception:
            # Clients that hang up or time out are routine; keep them out of stderr.
            logger.debug("connection from %s ended with an error", conn.address[0], exc_info=True)
        finally:
            self._finish(conn.sock)

    def _finish(self, sock: socket.socket) -> None:
        if isinstance(sock, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):  # close_notify, not waiting for theirs
                sock.setblocking(False)
                sock.unwrap()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        sock.close()
        with self._serving_changed:
            self._serving -= 1
            self._serving_changed.notify_all()
            paused = not self._accepting
        if paused:  # perhaps full: the loop may accept again
            self._wake()
