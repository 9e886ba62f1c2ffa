"""Connections to OKX: HTTPS with a configured CA, keep-alive reuse, the handshake counter, and the
one retry on a fresh connection when OKX has closed a pooled one (okx_transport)."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time

import httpx
from conftest import account_config, sim_account

from okx_loan_exporter.exporter import CONNECTIONS_PER_POOL
from okx_loan_exporter.okx_transport import (
    IDEMPOTENT_EXTENSION,
    AccountTransport,
    ConnectionStats,
    connection_pool,
)

TTL = 0.5
IDLE_CLOSE = 0.3
LOAN_INFO_ONLY = {
    "history_interval": 0.0,
    "interest_interval": 0.0,
    "headroom_interval": 0.0,
    "price_interval": 0.0,  # the price feed's own connection would add a handshake
}


def tls_accounts(simulator, names, ca_file):
    return [
        dataclasses.replace(
            account_config(sim_account(name), simulator.base_url), tls_ca_file=ca_file
        )
        for name in names
    ]


def test_https_fetches_reuse_their_pools_connections(
    start_simulator, start_exporter, fake_clock, test_certificates
):
    """Three accounts share one pool: the connections opened at the first scrape (at most
    CONNECTIONS_PER_POOL) carry all twelve requests."""
    names = ["tls-a", "tls-b", "tls-c"]
    simulator = start_simulator(
        [sim_account(name) for name in names],
        tls=(test_certificates.cert_file, test_certificates.key_file),
    )
    assert simulator.base_url.startswith("https://127.0.0.1:")
    harness = start_exporter(
        tls_accounts(simulator, names, test_certificates.ca_file),
        cache_ttl=TTL,
        price_interval=0.0,  # the price feed's own connection would add a handshake
    )
    for _ in range(4):
        scrape = harness.scrape()
        fake_clock.advance(TTL + 0.01)
    stats = simulator.stats()
    opened = min(len(names), CONNECTIONS_PER_POOL)
    for name in names:
        assert scrape.value("okx_loan_up", account=name) == 1
        assert scrape.value("okx_loan_api_requests_total", account=name, endpoint="loan_info") == 4
        assert scrape.value("okx_loan_api_connections_opened_total", account=name) <= 1
        assert scrape.value("okx_loan_api_connection_retries_total", account=name) == 0
        assert stats["accounts"][name]["ok"] == 4
    total = sum(
        scrape.value("okx_loan_api_connections_opened_total", account=name) for name in names
    )
    assert total == opened
    # The simulator's own count: that many TLS handshakes for 12 requests.
    assert stats["tls_handshakes"] == opened
    assert stats["connections"] == opened


def test_an_untrusted_certificate_is_a_network_failure(
    start_simulator, start_exporter, test_certificates
):
    simulator = start_simulator(
        [sim_account("tls-a")], tls=(test_certificates.cert_file, test_certificates.key_file)
    )
    # No tls_ca_file: the default trust store (certifi) does not know the test CA.
    harness = start_exporter([account_config(sim_account("tls-a"), simulator.base_url)])
    scrape = harness.scrape()
    assert scrape.value("okx_loan_up", account="tls-a") == 0
    assert scrape.failures("tls-a")["network"] == 1
    assert simulator.stats()["accounts"]["tls-a"]["requests"] == 0
    (snapshot,) = harness.exporter.snapshots()
    assert snapshot.last_error == (
        f"network: the TLS certificate of {simulator.base_url} is not trusted (behind a "
        "TLS-inspecting proxy set tls_ca_file (or SSL_CERT_FILE) to its CA; otherwise check "
        "base_url)"
    )


def test_ssl_cert_file_is_trusted_without_tls_ca_file(
    start_simulator, start_exporter, test_certificates, monkeypatch
):
    simulator = start_simulator(
        [sim_account("tls-a")], tls=(test_certificates.cert_file, test_certificates.key_file)
    )
    monkeypatch.setenv("SSL_CERT_FILE", test_certificates.ca_file)
    harness = start_exporter([account_config(sim_account("tls-a"), simulator.base_url)])
    assert harness.scrape().value("okx_loan_up", account="tls-a") == 1


def test_a_connection_okx_closed_is_retried_once_on_a_fresh_one(
    start_simulator, start_exporter, fake_clock, test_certificates
):
    """The simulator drops a connection idle for IDLE_CLOSE s when its next request comes, as a
    server whose idle timer fires as the request arrives: the request is sent again on a new
    connection within the same attempt, and the account stays up."""
    simulator = idle_closing(start_simulator, test_certificates)
    harness = start_exporter(
        tls_accounts(simulator, ["tls-a"], test_certificates.ca_file), **LOAN_INFO_ONLY
    )
    first = harness.scrape()
    assert first.value("okx_loan_api_connections_opened_total", account="tls-a") == 1
    time.sleep(IDLE_CLOSE + 0.1)
    fake_clock.advance(TTL + 0.01)
    second = harness.scrape()
    assert second.value("okx_loan_up", account="tls-a") == 1
    assert (
        second.value("okx_loan_api_requests_total", account="tls-a", endpoint="loan_info") == 2
    )  # one attempt each
    assert set(second.failures("tls-a").values()) == {0}
    assert second.value("okx_loan_api_connection_retries_total", account="tls-a") == 1
    assert second.value("okx_loan_api_connections_opened_total", account="tls-a") == 2
    # The dropped request reached the server but was never answered.
    assert simulator.stats()["accounts"]["tls-a"]["ok"] == 2
    assert simulator.stats()["tls_handshakes"] == 2


def test_a_failure_on_a_fresh_connection_is_not_retried(
    start_simulator, start_exporter, test_certificates
):
    simulator = start_simulator(
        [sim_account("tls-a")], tls=(test_certificates.cert_file, test_certificates.key_file)
    )
    simulator.set_fault("tls-a", "close", count=1)
    harness = start_exporter(tls_accounts(simulator, ["tls-a"], test_certificates.ca_file))
    scrape = harness.scrape()
    assert scrape.value("okx_loan_up", account="tls-a") == 0
    assert scrape.failures("tls-a")["network"] == 1
    assert scrape.value("okx_loan_api_connection_retries_total", account="tls-a") == 0
    assert simulator.stats()["accounts"]["tls-a"]["requests"] == 1


def _send_twice(base_url: str, ca_file: str, **second: object) -> tuple[ConnectionStats, object]:
    """A GET, a pause beyond the simulator's idle_close, then the ``second`` request; returns the
    counts and the second answer's status (or the exception it raised)."""

    async def run() -> tuple[ConnectionStats, object]:
        stats = ConnectionStats()
        pool = connection_pool(
            max_connections=1,
            keepalive_expiry=60,
            verify=ssl.create_default_context(cafile=ca_file),
        )
        async with httpx.AsyncClient(transport=AccountTransport(pool, stats)) as client:
            assert (await client.get(f"{base_url}/sim/config")).status_code == 200
            await asyncio.sleep(IDLE_CLOSE + 0.1)
            try:
                response = await client.request(url=f"{base_url}/sim/reset", **second)  # type: ignore[arg-type]
                outcome: object = response.status_code
            except httpx.TransportError as error:
                outcome = error
        await pool.aclose()
        return stats, outcome

    return asyncio.run(run())


def idle_closing(start_simulator, certificates):
    """A simulator over HTTPS that drops connections idle for IDLE_CLOSE s."""
    return start_simulator(
        [sim_account("tls-a")],
        tls=(certificates.cert_file, certificates.key_file),
        idle_close=IDLE_CLOSE,
    )


def test_a_post_is_retried_only_when_marked_idempotent(start_simulator, test_certificates):
    simulator = idle_closing(start_simulator, test_certificates)
    stats, outcome = _send_twice(simulator.base_url, test_certificates.ca_file, method="POST")
    assert isinstance(outcome, httpx.RemoteProtocolError)  # it may have reached the server
    assert stats.snapshot().retries == 0

    stats, outcome = _send_twice(
        simulator.base_url,
        test_certificates.ca_file,
        method="POST",
        extensions={IDEMPOTENT_EXTENSION: True},
    )
    assert outcome == 200
    assert stats.snapshot().retries == 1
    assert stats.snapshot().opened == 2


def test_a_get_is_retried(start_simulator, test_certificates):
    simulator = idle_closing(start_simulator, test_certificates)
    stats, outcome = _send_twice(simulator.base_url, test_certificates.ca_file, method="GET")
    assert outcome == 405  # /sim/reset wants POST: the answer came, on the second connection
    assert stats.snapshot().retries == 1
