"""Tests for okx_loan_exporter.server: a real threaded HTTP(S) server on loopback, real clients."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest
from test_webconfig import ALICE_2Y, BOB_2B, BOB_PASSWORD, PASSWORD, Pki, make_pki, write

from okx_loan_exporter.basicauth import auth_middleware
from okx_loan_exporter.server import ExporterHTTPServer, parse_listen_address
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
    ) -> ExporterHTTPServer:
        watcher = watcher or WebConfigWatcher(None)
        if auth:
            app = auth_middleware(app, watcher)
        server = ExporterHTTPServer(app, address, watcher)
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
        (":9855", ("0.0.0.0", 9855)),
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
        hello, "127.0.0.1:0", web_config(tmp_path, tls_text(pki)), handshake_timeout=0.2
    )
    server.start_background()
    try:
        with socket.create_connection((server.host, server.port)) as silent:
            silent.settimeout(10)
            assert silent.recv(1) == b""  # the server hung up on us
    finally:
        server.shutdown()


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
