"""The HTTP side: a threading server (HTTP or HTTPS) that can drop hanging connections on stop,
and the request handler that routes OKX's paths and ``/sim/*`` and carries out a :class:`Reply`."""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from okx_loan_exporter.simulator.control import handle_control
from okx_loan_exporter.simulator.loan_endpoints import METHODS
from okx_loan_exporter.simulator.replies import Reply, control_reply, json_bytes

if TYPE_CHECKING:
    from okx_loan_exporter.simulator.simulation import Simulator

TIME_PATH = "/api/v5/public/time"
LOAN_INFO_PATH = "/api/v5/finance/flexible-loan/loan-info"
INDEX_TICKERS_PATH = "/api/v5/market/index-tickers"
SLOW_BYTES_INTERVAL_SECONDS = 0.2
MAX_REQUEST_BODY_BYTES = 1024 * 1024
TLS_HANDSHAKE_SECONDS = 10.0

_log = logging.getLogger("okx_loan_exporter.simulator")


class SimulatorHTTPServer(ThreadingHTTPServer):
    """Thread per connection; remembers open connections so stop() can drop hanging ones."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        sim: Simulator,
        *,
        tls: ssl.SSLContext | None = None,
        idle_close: float | None = None,
    ) -> None:
        self.simulator = sim
        self.stopping = threading.Event()
        self.tls = tls
        self.idle_close = idle_close
        """Seconds after which an idle keep-alive connection is dropped when its next request
        comes (None: never)."""
        self.connections_accepted = 0
        self.tls_handshakes = 0
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() would resolve the host name (getfqdn), which can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
            self.connections_accepted += 1
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve one connection; over HTTPS, the TLS handshake first, on the connection's own
        thread (a slow client must not hold up the accept loop)."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(TLS_HANDSHAKE_SECONDS)
        try:
            secure = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ValueError):
            _log.debug("TLS handshake with %s failed", client_address, exc_info=True)
            return
        with self._connections_lock:
            self._connections.discard(request)  # wrap_socket took over its file descriptor
            self._connections.add(secure)
            self.tls_handshakes += 1
        try:
            super().finish_request(secure, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(secure)
            with contextlib.suppress(OSError):
                secure.close()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("simulator connection from %s failed", client_address, exc_info=True)


class SimulatorHTTPServer6(SimulatorHTTPServer):
    address_family = socket.AF_INET6


class SimulatorRequestHandler(BaseHTTPRequestHandler):
    """Reads a request, asks the Simulator for a Reply, and carries it out."""

    protocol_version = "HTTP/1.1"
    server_version = "okx-simulator"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 300  # idle keep-alive connections are closed after this
    server: SimulatorHTTPServer
    _answered_at: float | None = None

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("simulator %s " + format, self.client_address[0], *args)

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            self._send(control_reply(411, {"error": "send a Content-Length"}))
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_REQUEST_BODY_BYTES:
            self.close_connection = True
            self._send(control_reply(400, {"error": "bad Content-Length"}))
            return None
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            return
        if self._idle_too_long():
            # What a server does whose idle timer fires as the next request arrives: the
            # connection closes, the request unanswered (the client cannot tell it apart from a
            # request lost in flight).
            self.close_connection = True
            return
        sim = self.server.simulator
        path = urlsplit(self.path).path
        if path == TIME_PATH:
            reply = sim.answer_public_time()
        elif path == INDEX_TICKERS_PATH:
            reply = sim.answer_index_tickers(self.command, self.path)
        elif path == LOAN_INFO_PATH:
            reply = sim.answer_loan_info(self.command, self.path, self.headers, body)
        elif path in METHODS:
            reply = sim.answer_loan_endpoint(path, self.command, self.path, self.headers, body)
        elif path.startswith("/sim/"):
            reply = handle_control(sim, self.command, path, body)
        else:
            reply = Reply(
                status=404, body=json_bytes({"code": "404", "msg": "Not Found", "data": []})
            )
        try:
            self._send(reply)
        except OSError:
            self.close_connection = True  # the client went away; nothing more to do

    def _idle_too_long(self) -> bool:
        idle_close = self.server.idle_close
        answered, self._answered_at = self._answered_at, time.monotonic()
        return (
            idle_close is not None
            and answered is not None
            and (self._answered_at - answered >= idle_close)
        )

    def _send(self, reply: Reply) -> None:
        stopping = self.server.stopping
        if reply.delay > 0 and stopping.wait(reply.delay):
            self.close_connection = True
            return
        if reply.action == "close":
            self.close_connection = True
            return
        if reply.action == "hang":
            stopping.wait()
            self.close_connection = True
            return
        if reply.action == "trickle":
            self._trickle(reply)
            return
        length = reply.length if reply.action == "stream" else len(reply.body)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if reply.action == "stream" and reply.chunks is not None:
            for chunk in reply.chunks():
                if stopping.is_set():
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
        else:
            self.wfile.write(reply.body)
        self._answered_at = time.monotonic()

    def _trickle(self, reply: Reply) -> None:
        """The whole answer, status line included, one byte every SLOW_BYTES_INTERVAL_SECONDS."""
        self.close_connection = True
        self.log_request(reply.status)
        head = (
            f"HTTP/1.1 {reply.status} OK\r\nServer: {self.server_version}\r\n"
            f"Content-Type: {reply.content_type}\r\nContent-Length: {len(reply.body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        for byte in head + reply.body:
            self.wfile.write(bytes((byte,)))
            if self.server.stopping.wait(SLOW_BYTES_INTERVAL_SECONDS):
                return
