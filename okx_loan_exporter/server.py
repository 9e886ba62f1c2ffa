"""The threaded WSGI HTTP(S) server the exporter listens with.

wsgiref and socketserver do the HTTP; this module adds what prometheus_client's own server lacks:
TLS set up per connection in that connection's thread (a slow or silent TLS client holds only its
own thread, and only for the handshake timeout), the SSL context fetched from the
:class:`~okx_loan_exporter.webconfig.WebConfigWatcher` at every connection (so a renewed
certificate is used at once), IPv4 and IPv6 listen addresses, request logs at DEBUG instead of
stderr, no reverse DNS at start, and a shutdown that returns within a second.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import socketserver
import ssl
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import WSGIApplication as WSGIApp
from wsgiref.types import WSGIEnvironment

from okx_loan_exporter.webconfig import WebConfigWatcher

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 30.0
_POLL_INTERVAL_SECONDS = 0.1  # shutdown() waits at most this long for the accept loop

_HOSTNAME_RE = re.compile(r"\A[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.?\Z")


def _bad_address(value: str, why: str) -> ValueError:
    return ValueError(
        f"{value!r} is not a listen address: {why}; use HOST:PORT, such as :9855, "
        "127.0.0.1:9855, [::1]:9855 or localhost:9855"
    )


def parse_listen_address(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[IPv6]:PORT``; an empty host is every IPv4 interface.

    Raises ValueError with a message that says what is wrong and shows good examples.
    """
    text = value.strip()
    if "://" in text:
        raise _bad_address(value, "give HOST:PORT, not a URL")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise _bad_address(value, "no ']:PORT' after the IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad_address(value, f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise _bad_address(value, "no ':PORT'")
        if ":" in host:
            raise _bad_address(value, "an IPv6 address goes in brackets, as in [::1]:9855")
        if host and not _HOSTNAME_RE.match(host):
            raise _bad_address(value, f"{host!r} is not a host name or IP address")
        host = host or "0.0.0.0"
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise _bad_address(value, "the port must be a number from 0 to 65535")
    return host, int(port_text)


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


class _Handler(WSGIRequestHandler):
    """wsgiref's handler with a read timeout, its request log at DEBUG and HTTPS in the environ."""

    timeout = READ_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def get_stderr(self) -> Any:
        return _LogWriter()

    def get_environ(self) -> WSGIEnvironment:
        environ = super().get_environ()
        if isinstance(self.connection, ssl.SSLSocket):
            environ["HTTPS"] = "on"  # wsgiref derives wsgi.url_scheme from this
        return environ


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # socketserver's default backlog of 5 makes bursts of concurrent scrapes wait for a retry
    # of the TCP handshake (about 1 s); dashboards and several Prometheus servers do burst.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[Any, ...],
        family: socket.AddressFamily,
        watcher: WebConfigWatcher,
        handshake_timeout: float,
    ) -> None:
        self.address_family = family
        self._watcher = watcher
        self._handshake_timeout = handshake_timeout
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the host's FQDN, which can hang without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's own thread, so the handshake blocks nobody else.
        ctx = self._watcher.ssl_context()
        if ctx is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self._handshake_timeout)
        try:
            tls = ctx.wrap_socket(request, server_side=True)
        except (OSError, ValueError) as exc:
            logger.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            try:  # send close_notify, without waiting for the client's
                tls.setblocking(False)
                tls.unwrap()
            except (OSError, ValueError):
                pass
            self.shutdown_request(tls)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up or time out are routine; keep them out of stderr.
        logger.debug("Connection from %s ended with an error", client_address[0], exc_info=True)


class ExporterHTTPServer:
    """A threaded WSGI server bound at construction (so port 0 works and OSError surfaces here)."""

    def __init__(
        self,
        app: WSGIApp,
        listen_address: str,
        watcher: WebConfigWatcher,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
    ) -> None:
        host, port = parse_listen_address(listen_address)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        # A name with both kinds of address (localhost) listens on its IPv4 one, as Go does.
        family, _, _, _, sockaddr = min(infos, key=lambda info: info[0] != socket.AF_INET)
        self._watcher = watcher
        self._server = _ThreadingServer(sockaddr, family, watcher, handshake_timeout)
        self._server.set_app(app)
        bound = self._server.socket.getsockname()
        self.host: str = str(bound[0])
        self.port: int = int(bound[1])
        self._lock = threading.Lock()
        self._running = False
        self._closed = False
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
        self._server.serve_forever(poll_interval=_POLL_INTERVAL_SECONDS)

    def start_background(self) -> None:
        """Serve on a daemon thread."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self.serve_forever, name=f"http-{self.port}", daemon=True
            )
        self._thread.start()

    def shutdown(self) -> None:
        """Stop accepting and close the socket; idle connections do not delay it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = self._running
        if running:
            self._server.shutdown()  # returns within one poll interval
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
