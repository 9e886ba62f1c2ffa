"""Tests for okx_loan_exporter.server: a real threaded HTTP(S) server on loopback, real clients."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from test_webconfig import ALICE_2Y, BOB_2B, BOB_PASSWORD, PASSWORD, Pki, make_pki, write

from okx_loan_exporter import __version__
from okx_loan_exporter.basicauth import auth_middleware
from okx_loan_exporter.listen import FD_RESERVE, connection_cap, parse_listen_address
from okx_loan_exporter.logs import LogfmtFormatter
from okx_loan_exporter.server import ExporterHTTPServer, ServerLimits
from okx_loan_exporter.webconfig import WebConfigWatcher


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def hello(environ: dict, start_response) -> Iterable[bytes]:  # type: ignore[no-untyped-def]
    body = f"{environ['wsgi.url_scheme']} {environ['PATH_INFO']}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class Servers:
    """Starts servers in the background and always shuts them down."""

    def __init__(self) -> None:
        self.started: list[ExporterHTTPServer] = []

    def start(
        self,
        watcher: WebConfigWatcher | None = None,
        app=hello,  # type: ignore[no-untyped-def]
        address: str = "127.0.0.1:0",
        auth: bool = False,
        limits: ServerLimits | None = None,
    ) -> ExporterHTTPServer:
        watcher = watcher or WebConfigWatcher(None)
        if auth:
            app = auth_middleware(app, watcher)
        server = ExporterHTTPServer(app, address, watcher, limits)
        self.started.append(server)
        server.start_background()
        return server


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    for server in s.started:
        server.shutdown()


def web_config(tmp_path: Path, text: str) -> WebConfigWatcher:
    return WebConfigWatcher(str(write(tmp_path / "web.yml", text)), check_interval=0)


def tls_text(pki: Pki, **extra: str) -> str:
    lines = [
        "tls_server_config:",
        f"  cert_file: {pki.server_cert}",
        f"  key_file: {pki.server_key}",
    ]
    return "\n".join(lines + [f"  {k}: {v}" for k, v in extra.items()]) + "\n"


def peer_common_name(server: ExporterHTTPServer, ctx: ssl.SSLContext) -> str:
    with (
        socket.create_connection((server.host, server.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server.host) as tls,
    ):
        cert = tls.getpeercert()
    return dict(item[0] for item in cert["subject"])["commonName"]


# --- listen addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (":9855", ("", 9855)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9855", ("::1", 9855)),
        ("[::]:9855", ("::", 9855)),
        ("localhost:9855", ("localhost", 9855)),
        ("exporter.example.com:0", ("exporter.example.com", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_listen_address(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("9855", "no ':PORT'"),
        ("", "no ':PORT'"),
        ("localhost", "no ':PORT'"),
        ("::1:9855", "an IPv6 address goes in brackets, as in [::1]:9855"),
        ("[::1]9855", "no ']:PORT' after the IPv6 address"),
        ("[127.0.0.1]:9855", "'127.0.0.1' in brackets is not an IPv6 address"),
        ("localhost:", "the port must be a number from 0 to 65535"),
        ("localhost:65536", "the port must be a number from 0 to 65535"),
        ("localhost:-1", "the port must be a number from 0 to 65535"),
        ("localhost:http", "the port must be a number from 0 to 65535"),
        ("my host:9855", "'my host' is not a host name or IP address"),
        ("http://localhost:9855", "give HOST:PORT, not a URL"),
    ],
)
def test_parse_listen_address_refuses(value: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_listen_address(value)
    assert str(info.value) == (
        f"{value!r} is not a listen address: {reason}; use HOST:PORT, such as :9855, "
        "127.0.0.1:9855, [::1]:9855 or localhost:9855"
    )


# --- plain HTTP -----------------------------------------------------------------------------


def test_plain_http_on_an_ephemeral_port(servers: Servers) -> None:
    server = servers.start()
    assert server.port != 0
    assert server.host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}"
    response = httpx.get(server.url + "/metrics")
    assert response.status_code == 200
    assert response.text == "http /metrics\n"


def test_localhost_binds_a_loopback_address(servers: Servers) -> None:
    server = servers.start(address="localhost:0")
    assert server.host in {"127.0.0.1", "::1"}
    assert httpx.get(server.url + "/").text == "http /\n"


def test_ipv6(servers: Servers) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    try:
        server = servers.start(address="[::1]:0")
    except OSError as exc:
        pytest.skip(f"::1 unavailable: {exc}")
    assert server.host == "::1"
    assert server.url == f"http://[::1]:{server.port}"
    assert httpx.get(server.url + "/x").text == "http /x\n"


def test_address_in_use_surfaces_at_construction(servers: Servers) -> None:
    first = servers.start()
    with pytest.raises(OSError):
        ExporterHTTPServer(hello, f"127.0.0.1:{first.port}", WebConfigWatcher(None))


def test_serves_concurrent_requests_on_threads(servers: Servers) -> None:
    gate = threading.Barrier(3, timeout=10)

    def waits_for_others(environ: dict, start_response) -> Iterable[bytes]:  # type: ignore[no-untyped-def]
        gate.wait()  # only passes if three requests are being handled at the same time
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"together\n"]

    server = servers.start(app=waits_for_others)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(httpx.get(server.url, timeout=10).text))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["together\n"] * 3


def test_request_lines_go_to_debug_log_not_stderr(
    servers: Servers, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    server = servers.start()

    def logged() -> bool:
        return any(
            "GET /metrics" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records
        )

    with caplog.at_level(logging.DEBUG, logger="okx_loan_exporter.server"):
        assert httpx.get(server.url + "/metrics").status_code == 200
        # the handler thread logs the request line after the client has its answer
        deadline = time.monotonic() + 5
        while not logged() and time.monotonic() < deadline:
            time.sleep(0.01)
    out, err = capfd.readouterr()
    assert "GET /metrics" not in out + err
    assert logged()


def test_app_error_gives_500_and_a_log_line_not_stderr(
    servers: Servers, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(environ: dict, start_response) -> Iterable[bytes]:  # type: ignore[no-untyped-def]
        raise RuntimeError("collector exploded")

    server = servers.start(app=broken)
    with caplog.at_level(logging.ERROR, logger="okx_loan_exporter.server"):
        assert httpx.get(server.url).status_code == 500
    _, err = capfd.readouterr()
    assert "collector exploded" not in err
    assert "collector exploded" in caplog.text


# --- TLS ------------------------------------------------------------------------------------


def test_tls(servers: Servers, pki: Pki, tmp_path: Path) -> None:
    server = servers.start(web_config(tmp_path, tls_text(pki)))
    assert server.url == f"https://127.0.0.1:{server.port}"
    response = httpx.get(server.url + "/metrics", verify=pki.client_context())
    assert response.status_code == 200
    assert response.text == "https /metrics\n"  # the app is told the scheme
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/metrics")  # plain HTTP is not answered


def test_tls_response_ends_with_close_notify(servers: Servers, pki: Pki, tmp_path: Path) -> None:
    # Strict clients treat a TLS stream that just stops as a possible truncation.
    server = servers.start(web_config(tmp_path, tls_text(pki)))
    ctx = pki.client_context()
    with (
        socket.create_connection((server.host, server.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False) as tls,
    ):
        tls.sendall(b"GET /x HTTP/1.0\r\nHost: test\r\n\r\n")
        received = b""
        while chunk := tls.recv(4096):  # SSLEOFError here if the server did not say goodbye
            received += chunk
    assert received.startswith(b"HTTP/1.0 200 OK\r\n")
    assert received.endswith(b"\r\n\r\nhttps /x\n")


def test_untrusted_server_certificate_is_refused_by_a_verifying_client(
    servers: Servers, pki: Pki, tmp_path: Path
) -> None:
    server = servers.start(web_config(tmp_path, tls_text(pki)))
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, verify=ssl.create_default_context())  # system CAs only


def test_min_version_tls13_refuses_a_tls12_only_client(
    servers: Servers, pki: Pki, tmp_path: Path
) -> None:
    server = servers.start(web_config(tmp_path, tls_text(pki, min_version="TLS13")))
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, verify=pki.client_context(max_version="TLSv1_2"))
    assert httpx.get(server.url, verify=pki.client_context()).status_code == 200


def test_tls12_client_is_served_by_default(servers: Servers, pki: Pki, tmp_path: Path) -> None:
    server = servers.start(web_config(tmp_path, tls_text(pki)))
    response = httpx.get(server.url, verify=pki.client_context(max_version="TLSv1_2"))
    assert response.status_code == 200


def test_require_and_verify_client_cert(servers: Servers, pki: Pki, tmp_path: Path) -> None:
    watcher = web_config(
        tmp_path,
        tls_text(pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki.ca)),
    )
    server = servers.start(watcher)
    # With TLS 1.3 the client learns of the refusal when it reads, so any transport error.
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url, verify=pki.client_context())
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url, verify=pki.client_context(rogue=True))
    response = httpx.get(server.url + "/metrics", verify=pki.client_context(with_cert=True))
    assert response.status_code == 200
    assert response.text == "https /metrics\n"


def test_verify_client_cert_if_given(servers: Servers, pki: Pki, tmp_path: Path) -> None:
    watcher = web_config(
        tmp_path,
        tls_text(pki, client_auth_type="VerifyClientCertIfGiven", client_ca_file=str(pki.ca)),
    )
    server = servers.start(watcher)
    assert httpx.get(server.url, verify=pki.client_context()).status_code == 200
    assert httpx.get(server.url, verify=pki.client_context(with_cert=True)).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url, verify=pki.client_context(rogue=True))


def test_renewed_certificate_is_used_for_the_next_connection(
    servers: Servers, pki: Pki, tmp_path: Path
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    server = servers.start(
        web_config(tmp_path, "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n")
    )
    ctx = pki.client_context()
    assert peer_common_name(server, ctx) == "server-one"
    write(key, pki.server2_key.read_text())
    write(cert, pki.server2_cert.read_text())
    assert peer_common_name(server, ctx) == "server-two"
    assert httpx.get(server.url, verify=ctx).status_code == 200


def test_turning_tls_on_by_editing_the_web_config(
    servers: Servers, pki: Pki, tmp_path: Path
) -> None:
    watcher = web_config(tmp_path, "")
    server = servers.start(watcher)
    assert httpx.get(server.url).status_code == 200
    write(tmp_path / "web.yml", tls_text(pki))
    assert server.url.startswith("https://")
    assert httpx.get(server.url, verify=pki.client_context()).status_code == 200


def test_a_silent_tls_client_does_not_block_others(
    servers: Servers, pki: Pki, tmp_path: Path
) -> None:
    server = servers.start(web_config(tmp_path, tls_text(pki)))
    with socket.create_connection((server.host, server.port)) as silent:
        silent.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        response = httpx.get(server.url, verify=pki.client_context(), timeout=5)
        assert response.status_code == 200


def test_tls_handshake_timeout_closes_a_silent_connection(pki: Pki, tmp_path: Path) -> None:
    server = ExporterHTTPServer(
        hello,
        "127.0.0.1:0",
        web_config(tmp_path, tls_text(pki)),
        ServerLimits(handshake_timeout=0.2),
    )
    server.start_background()
    try:
        with socket.create_connection((server.host, server.port)) as silent:
            silent.settimeout(10)
            assert silent.recv(1) == b""  # the server hung up on us
    finally:
        server.shutdown()


def test_a_head_over_64_kib_is_answered_431_over_tls_too(
    servers: Servers, pki: Pki, tmp_path: Path
) -> None:
    server = servers.start(web_config(tmp_path, tls_text(pki)))
    ctx = pki.client_context()
    with (
        socket.create_connection((server.host, server.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        with contextlib.suppress(OSError):
            tls.sendall(header_bomb(2))
        received = b""
        with contextlib.suppress(OSError):
            while chunk := tls.recv(4096):
                received += chunk
    assert received.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert httpx.get(server.url + "/after", verify=ctx).text == "https /after\n"


# --- basic auth over HTTP -------------------------------------------------------------------


AUTH_CONFIG = f"basic_auth_users:\n  alice: '{ALICE_2Y}'\n  bob: {BOB_2B}\n"


@pytest.mark.parametrize(
    ("auth", "headers", "status"),
    [
        (("alice", PASSWORD), {}, 200),  # $2y$ hash
        (("bob", BOB_PASSWORD), {}, 200),  # $2b$ hash
        (("alice", BOB_PASSWORD), {}, 401),
        (("bob", "wrong"), {}, 401),
        (("mallory", PASSWORD), {}, 401),
        (None, {}, 401),
        (None, {"Authorization": "Basic not base64!"}, 401),
        (None, {"Authorization": "Basic"}, 401),
        (None, {"Authorization": "Bearer abc"}, 401),
    ],
)
def test_basic_auth(
    servers: Servers,
    tmp_path: Path,
    auth: tuple[str, str] | None,
    headers: dict[str, str],
    status: int,
) -> None:
    server = servers.start(web_config(tmp_path, AUTH_CONFIG), auth=True)
    response = httpx.get(server.url + "/metrics", auth=auth, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Basic realm="okx-loan-exporter"'
        assert response.text == "Unauthorized\n"
    else:
        assert response.text == "http /metrics\n"


def test_healthy_is_exempt_from_basic_auth(servers: Servers, tmp_path: Path) -> None:
    server = servers.start(web_config(tmp_path, AUTH_CONFIG), auth=True)
    assert httpx.get(server.url + "/-/healthy").status_code == 200
    assert httpx.get(server.url + "/-/ready").status_code == 401
    assert httpx.get(server.url + "/").status_code == 401


def test_basic_auth_over_tls_with_client_certs(servers: Servers, pki: Pki, tmp_path: Path) -> None:
    text = tls_text(pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki.ca))
    server = servers.start(web_config(tmp_path, text + AUTH_CONFIG), auth=True)
    ctx = pki.client_context(with_cert=True)
    assert httpx.get(server.url, verify=ctx).status_code == 401
    assert httpx.get(server.url, verify=ctx, auth=("alice", PASSWORD)).status_code == 200


def test_users_changed_in_the_file_apply_to_the_next_request(
    servers: Servers, tmp_path: Path
) -> None:
    server = servers.start(web_config(tmp_path, ""), auth=True)
    assert httpx.get(server.url).status_code == 200
    write(tmp_path / "web.yml", AUTH_CONFIG)
    assert httpx.get(server.url).status_code == 401
    assert httpx.get(server.url, auth=("bob", BOB_PASSWORD)).status_code == 200


def test_no_password_or_hash_in_logs(
    servers: Servers,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = servers.start(web_config(tmp_path, AUTH_CONFIG), auth=True)
    with caplog.at_level(logging.DEBUG):
        httpx.get(server.url, auth=("alice", PASSWORD))
        httpx.get(server.url, auth=("alice", BOB_PASSWORD))
        httpx.get(server.url, auth=("mallory", PASSWORD))
        write(tmp_path / "web.yml", "basic_auth_users:\n  alice: " + PASSWORD + "\n")
        assert httpx.get(server.url, auth=("alice", PASSWORD)).status_code == 200  # old config
    out, err = capfd.readouterr()
    everything = caplog.text + out + err
    assert "Keeping the previous web config" in caplog.text
    for secret in (PASSWORD, BOB_PASSWORD, ALICE_2Y, BOB_2B, ALICE_2Y[7:]):
        assert secret not in everything


# --- shutdown -------------------------------------------------------------------------------


def shutdown_finishes(server: ExporterHTTPServer) -> bool:
    """Shut down on another thread; True if it finished (a generous bound, not a timing test)."""
    done = threading.Thread(target=server.shutdown)
    done.start()
    done.join(timeout=10)
    return not done.is_alive()


def assert_refuses_connections(server: ExporterHTTPServer) -> None:
    with pytest.raises(OSError):
        socket.create_connection((server.host, server.port), timeout=2).close()


def test_shutdown_with_an_idle_open_connection(servers: Servers) -> None:
    server = servers.start()
    assert httpx.get(server.url).status_code == 200
    with socket.create_connection((server.host, server.port)):  # connected, sends nothing
        assert shutdown_finishes(server)
        assert_refuses_connections(server)


def test_shutdown_with_an_idle_tls_connection(servers: Servers, pki: Pki, tmp_path: Path) -> None:
    server = servers.start(web_config(tmp_path, tls_text(pki)))
    ctx = pki.client_context()
    with (
        socket.create_connection((server.host, server.port)) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1"),  # handshake done, no request
        socket.create_connection((server.host, server.port)),  # no handshake at all
    ):
        assert shutdown_finishes(server)
        assert_refuses_connections(server)


def test_shutdown_of_a_server_never_started() -> None:
    server = ExporterHTTPServer(hello, "127.0.0.1:0", WebConfigWatcher(None))
    assert shutdown_finishes(server)
    assert_refuses_connections(server)
    server.shutdown()  # twice is fine
    server.serve_forever()  # returns at once after shutdown


def test_shutdown_right_after_start(servers: Servers) -> None:
    server = servers.start()
    assert shutdown_finishes(server)
    assert_refuses_connections(server)


def test_serve_forever_returns_after_shutdown() -> None:
    server = ExporterHTTPServer(hello, "127.0.0.1:0", WebConfigWatcher(None))
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    assert httpx.get(server.url).status_code == 200
    assert shutdown_finishes(server)
    loop.join(timeout=10)
    assert not loop.is_alive()


# --- hostile clients ------------------------------------------------------------------------


def connect(server: ExporterHTTPServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=5)


def raw_request(server: ExporterHTTPServer, data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything the server answers, until it hangs up."""
    with connect(server) as sock:
        with contextlib.suppress(OSError):  # a server that stops reading may reset us
            sock.sendall(data)
        received = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return bytes(received)


def split_answer(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    """(status line, {lower-case header name: value}, body)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, text = line.partition(":")
        headers[name.strip().lower()] = text.strip()
    return status, headers, body


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True if the server closes (or resets) ``sock`` within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def wait_until(what: str, check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def wait_open(server: ExporterHTTPServer, count: int) -> None:
    wait_until(f"{count} open connections", lambda: server.stats.open == count)


def header_bomb(headers: int, size: int = 64_000) -> bytes:
    lines = [b"X-Bomb-%d: %s\r\n" % (index, b"b" * size) for index in range(headers)]
    return b"GET /metrics HTTP/1.1\r\nHost: test\r\n" + b"".join(lines) + b"\r\n"


def test_a_header_bomb_is_answered_431_without_reaching_the_app(servers: Servers) -> None:
    calls: list[str] = []

    def counting(environ: dict, start_response) -> Iterable[bytes]:  # type: ignore[no-untyped-def]
        calls.append(environ["PATH_INFO"])
        return hello(environ, start_response)

    server = servers.start(app=counting)
    status, headers, body = split_answer(raw_request(server, header_bomb(20)))
    assert status == "HTTP/1.1 431 Request Header Fields Too Large"
    assert body == b"The request line and headers are over 65536 bytes\n"
    assert headers["content-length"] == str(len(body))
    assert headers["x-content-type-options"] == "nosniff"
    assert calls == []
    assert server.stats.shed["head_too_large"] == 1
    assert httpx.get(server.url + "/after").status_code == 200
    assert calls == ["/after"]


@pytest.mark.parametrize(
    ("size", "status"),
    [(65536, "HTTP/1.0 200 OK"), (65537, "HTTP/1.1 431 Request Header Fields Too Large")],
)
def test_a_head_of_64_kib_is_served_and_one_byte_more_is_not(
    servers: Servers, size: int, status: str
) -> None:
    server = servers.start()
    start, end = b"GET /big HTTP/1.0\r\nX-Fill: ", b"\r\n\r\n"
    head = start + b"f" * (size - len(start) - len(end)) + end
    assert len(head) == size
    assert split_answer(raw_request(server, head))[0] == status


def test_a_client_dripping_its_head_is_cut_off_at_the_deadline(servers: Servers) -> None:
    server = servers.start(limits=ServerLimits(head_timeout=0.5))
    head = b"GET / HTTP/1.1\r\nX-Drip: " + b"d" * 1000
    with connect(server) as sock:
        started = time.monotonic()
        for byte in head:  # one byte every 0.1 s: each read gets data long before any timeout
            if closed_by_server(sock, within=0.1):
                break
            with contextlib.suppress(OSError):
                sock.send(bytes([byte]))
            assert time.monotonic() - started < 5, "still connected after 5 s of dripping"
        cut_after = time.monotonic() - started
    assert 0.4 < cut_after < 5
    assert server.stats.shed["head_timeout"] == 1


def test_a_silent_connection_is_closed_at_the_head_deadline(servers: Servers) -> None:
    server = servers.start(limits=ServerLimits(head_timeout=0.3))
    with connect(server) as sock:
        assert closed_by_server(sock, within=5)
    assert server.stats.shed["head_timeout"] == 1


def test_at_the_cap_the_connection_waiting_longest_makes_room(servers: Servers) -> None:
    server = servers.start(limits=ServerLimits(max_connections=4, shed_grace=0))
    assert server.stats.limit == 4
    with contextlib.ExitStack() as stack:
        idle = []
        for count in range(1, 5):
            idle.append(stack.enter_context(connect(server)))
            wait_open(server, count)
        idle.append(stack.enter_context(connect(server)))
        assert closed_by_server(idle[0], within=5)
        assert httpx.get(server.url + "/scrape").text == "http /scrape\n"
        assert closed_by_server(idle[1], within=5)
        assert not any(closed_by_server(sock, within=0.1) for sock in idle[2:])
    assert server.stats.shed["max_connections"] == 2


def test_no_connection_is_shed_before_its_grace(servers: Servers) -> None:
    server = servers.start(limits=ServerLimits(max_connections=1, shed_grace=1.0))
    with connect(server) as first:
        wait_open(server, 1)
        accepted = time.monotonic()
        with connect(server) as second:
            assert not closed_by_server(first, within=0.5)
            assert closed_by_server(first, within=5)
            assert time.monotonic() - accepted > 0.9
            second.sendall(b"GET /second HTTP/1.0\r\n\r\n")
            assert second.recv(4096).startswith(b"HTTP/1.0 200 OK")


def test_when_every_slot_answers_a_request_the_next_waits_its_turn(servers: Servers) -> None:
    release = threading.Event()

    def slow(environ: dict, start_response) -> Iterable[bytes]:  # type: ignore[no-untyped-def]
        if environ["PATH_INFO"] == "/slow":
            release.wait(10)
        return hello(environ, start_response)

    server = servers.start(app=slow, limits=ServerLimits(max_connections=2))
    with ThreadPoolExecutor(3) as pool:
        slow_answers = [pool.submit(httpx.get, server.url + "/slow", timeout=10) for _ in range(2)]
        wait_open(server, 2)
        fast = pool.submit(httpx.get, server.url + "/fast", timeout=10)
        time.sleep(0.3)
        assert not fast.done()  # not refused, not shed: waiting in the backlog
        release.set()
        answers = [future.result() for future in [*slow_answers, fast]]
    assert [answer.text for answer in answers] == ["http /slow\n", "http /slow\n", "http /fast\n"]
    assert set(server.stats.shed.values()) == {0}


def test_a_client_too_slow_to_read_the_answer_is_cut_off(servers: Servers) -> None:
    def large(environ: dict, start_response) -> Iterable[bytes]:  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [b"x" * (32 << 20)]

    server = servers.start(app=large, limits=ServerLimits(io_timeout=0.5))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((server.host, server.port))
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        started = time.monotonic()
        received = 0
        # Reading 4 KiB every 10 ms keeps every single send moving; only a deadline on the whole
        # answer ends it before the 32 MiB are through (that would take over a minute).
        while server.stats.open or time.monotonic() - started < 0.1:
            assert time.monotonic() - started < 10, "the slow reader is still being answered"
            received += len(sock.recv(4096))
            time.sleep(0.01)
    assert received < 32 << 20


OUT_OF_FDS_SERVER = """
import os, resource, sys, time
from okx_loan_exporter.server import ExporterHTTPServer
from okx_loan_exporter.webconfig import WebConfigWatcher

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served\\n"]

resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
server = ExporterHTTPServer(app, "127.0.0.1:0", WebConfigWatcher(None))
server.start_background()
hog = []
try:
    while True:
        hog.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
print(server.port, flush=True)
sys.stdin.readline()  # the test says when to give the descriptors back
for fd in hog:
    os.close(fd)
time.sleep(30)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_file_descriptors_the_accept_loop_backs_off_and_recovers(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", OUT_OF_FDS_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stdin is not None
            port = int(child.stdout.readline())
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                client.sendall(b"GET / HTTP/1.0\r\n\r\n")  # queued: accept() fails with EMFILE
                time.sleep(0.2)
                before = cpu_seconds(child.pid)
                time.sleep(1.5)
                spent = cpu_seconds(child.pid) - before
                child.stdin.write("go\n")
                child.stdin.flush()
                answer = client.recv(4096)
        finally:
            child.kill()
    assert spent < 0.3, f"the server used {spent:.2f} s of CPU in 1.5 s while out of descriptors"
    assert answer.startswith(b"HTTP/1.0 200 OK")


def test_the_soft_open_file_limit_is_raised_to_the_hard_one() -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-file limit is {hard}: nothing to raise")
    code = (
        "import resource; from okx_loan_exporter.listen import raise_open_file_limit; "
        "print(raise_open_file_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert output == [str(hard)] * 3


def test_the_connection_cap_stays_below_the_open_file_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (300, 300))
    assert connection_cap(100) == 100
    assert connection_cap(512) == 300 - FD_RESERVE
    with caplog.at_level(logging.WARNING, logger="okx_loan_exporter.server"):
        server = ExporterHTTPServer(hello, "127.0.0.1:0", WebConfigWatcher(None))
    server.shutdown()
    assert server.max_connections == 300 - FD_RESERVE
    assert "--web.max-connections 512 leaves too few file descriptors" in caplog.text


# --- dual stack -----------------------------------------------------------------------------


def remote_address(environ: dict, start_response) -> Iterable[bytes]:  # type: ignore[no-untyped-def]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["REMOTE_ADDR"].encode()]


def ipv6_loopback() -> bool:
    """True when this machine can use ::1 (an IPv6 stack with a loopback address)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("address", [":0", "[::]:0"])
def test_the_wildcard_address_answers_on_ipv4_and_ipv6(servers: Servers, address: str) -> None:
    if address.startswith("[") and not ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    server = servers.start(app=remote_address, address=address)
    assert httpx.get(f"http://127.0.0.1:{server.port}/").text == "127.0.0.1"
    if not ipv6_loopback():
        pytest.skip("IPv4 answered; no IPv6 loopback on this machine to try")
    assert server.host == "::"
    assert httpx.get(f"http://[::1]:{server.port}/").text == "::1"


def test_without_ipv6_the_empty_host_listens_on_ipv4(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "has_ipv6", False)
    server = servers.start(app=remote_address, address=":0")
    assert server.host == "0.0.0.0"
    assert httpx.get(f"http://127.0.0.1:{server.port}/").text == "127.0.0.1"


# --- headers, HEAD and logs -----------------------------------------------------------------


def test_every_answer_says_nosniff_and_names_no_python(servers: Servers, tmp_path: Path) -> None:
    def app(environ: dict, start_response) -> Iterable[bytes]:  # type: ignore[no-untyped-def]
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("broken on purpose")
        return hello(environ, start_response)

    server = servers.start(web_config(tmp_path, AUTH_CONFIG), app=app, auth=True)
    auth = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    requests = {
        "200": f"GET / HTTP/1.0\r\nAuthorization: {auth}\r\n\r\n",
        "401": "GET / HTTP/1.0\r\n\r\n",
        "500": f"GET /boom HTTP/1.0\r\nAuthorization: {auth}\r\n\r\n",
        "400": "GET / too many words HTTP/1.0\r\n\r\n",
        "431": "GET / HTTP/1.0\r\nX: " + "x" * 70000 + "\r\n\r\n",
    }
    for code, text in requests.items():
        status, headers, _ = split_answer(raw_request(server, text.encode()))
        assert status.split()[1] == code
        assert headers["x-content-type-options"] == "nosniff", code
        assert headers["server"] == f"okx-loan-exporter/{__version__}", code


def test_head_gets_the_get_headers_without_the_body(servers: Servers) -> None:
    server = servers.start()
    get = split_answer(raw_request(server, b"GET /x HTTP/1.0\r\n\r\n"))
    head = split_answer(raw_request(server, b"HEAD /x HTTP/1.0\r\n\r\n"))
    for _, headers, _ in (get, head):
        headers.pop("date")
    assert get == ("HTTP/1.0 200 OK", head[1], b"http /x\n")
    assert head == ("HTTP/1.0 200 OK", get[1], b"")


def test_control_characters_of_a_request_line_are_escaped_in_the_log(servers: Servers) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter())
    server_logger = logging.getLogger("okx_loan_exporter.server")
    level = server_logger.level
    server_logger.addHandler(handler)
    server_logger.setLevel(logging.DEBUG)
    try:
        server = servers.start()
        raw_request(server, b"GET /\x1b[2J\x9b\x07fake HTTP/1.0\r\n\r\n")
        wait_until("the request log line", lambda: "fake" in stream.getvalue())
    finally:
        server_logger.removeHandler(handler)
        server_logger.setLevel(level)
    text = stream.getvalue()
    assert "\\u001b[2J\\u009b\\u0007fake" in text
    assert not any(char in text for char in "\x1b\x9b\x07")
