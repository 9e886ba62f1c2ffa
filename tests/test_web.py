"""The web app, driven directly through its factory: endpoints, negotiation, gzip, deadline."""

import copy
import gzip
import json
import socket
from pathlib import Path

import bcrypt
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from okx_loan_exporter import __version__
from okx_loan_exporter.config import config_from_dict
from okx_loan_exporter.exporter import Exporter
from okx_loan_exporter.exposition import Exposition
from okx_loan_exporter.server import ExporterHTTPServer
from okx_loan_exporter.web import create_app
from okx_loan_exporter.webconfig import WebConfigWatcher

DOCS_EXAMPLE = json.loads(
    (Path(__file__).parent / "data" / "loan_info_docs_example.json").read_text()
)
SECRETS = {
    "api_key": "webtest-key-Q1",
    "secret_key": "webtest-secret-Q2",
    "passphrase": "webtest-pass-Q3",
}


class FakeOkx:
    """An httpx transport answering loan-info per API key; counts requests."""

    def __init__(self):
        self.answers = {}
        self.requests = 0

    def __call__(self, request):
        self.requests += 1
        key = request.headers["OK-ACCESS-KEY"]
        return self.answers.get(key, httpx.Response(200, json=DOCS_EXAMPLE))


def make_exporter(fake, names=("main",), **settings):
    accounts = [
        {
            "name": name,
            "api_key": f"{SECRETS['api_key']}-{name}",
            "secret_key": SECRETS["secret_key"],
            "passphrase": SECRETS["passphrase"],
        }
        for name in names
    ]
    # The fake answers loan-info only: the other endpoints are off.
    off = {key: "0s" for key in ("history_interval", "interest_interval", "headroom_interval")}
    config = config_from_dict(
        {"base_url": "https://okx.test", "accounts": accounts, **off, **settings}, "test.yml", {}
    )
    return Exporter(config, transport=httpx.MockTransport(fake))


@pytest.fixture
def fake():
    return FakeOkx()


@pytest.fixture
def client(fake):
    exporter = make_exporter(fake, names=("main", "other"))
    with httpx.Client(
        transport=httpx.WSGITransport(app=create_app(exporter)), base_url="http://exporter"
    ) as http:
        yield http
    exporter.close()


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(text, name, **labels):
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_metrics_serves_every_account(client, fake):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert sample(text, "okx_loan_ltv_ratio", account="main") == 0.5742
    assert sample(text, "okx_loan_ltv_ratio", account="other") == 0.5742
    assert sample(text, "okx_loan_up", account="main") == 1
    assert sample(text, "okx_loan_exporter_build_info") == 1
    assert "process_resident_memory_bytes" in text
    assert "python_gc" not in text and "python_info" not in text
    assert fake.requests == 2
    client.get("/metrics")
    assert fake.requests == 2  # cached within cache_ttl


def test_openmetrics_negotiation_and_gzip(client):
    response = client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    raw = client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip"
    assert "okx_loan_up" in raw.text  # httpx decompressed it
    plain = client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert gzip.decompress(gzip.compress(plain.content)) == plain.content


def test_failed_okx_call_is_up_zero_not_http_error(fake):
    fake.answers[f"{SECRETS['api_key']}-main"] = httpx.Response(
        401, json={"code": "50113", "msg": "Invalid Sign", "data": []}
    )
    exporter = make_exporter(fake, names=("main", "other"))
    app = create_app(exporter)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://e") as http:
        response = http.get("/metrics")
    exporter.close()
    assert response.status_code == 200
    assert sample(response.text, "okx_loan_up", account="main") == 0
    assert sample(response.text, "okx_loan_up", account="other") == 1
    assert (
        sample(
            response.text,
            "okx_loan_api_request_failures_total",
            account="main",
            endpoint="loan_info",
            reason="auth",
        )
        == 1
    )
    assert sample(response.text, "okx_loan_ltv_ratio", account="main") is None


def test_landing_page_lists_accounts_without_secrets(client):
    client.get("/metrics")
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'href="metrics"' in page.text
    assert "main" in page.text and "other" in page.text and ">OK<" in page.text
    for secret in SECRETS.values():
        assert secret not in page.text


def test_landing_page_before_any_scrape_does_not_call_okx(client, fake):
    page = client.get("/")
    assert "Not fetched yet" in page.text and ">never<" in page.text
    assert fake.requests == 0


def test_health_ready_and_unknown(client):
    assert client.get("/-/healthy").status_code == 200
    assert client.get("/-/ready").status_code == 200
    assert client.get("/nope").status_code == 404
    assert client.post("/-/healthy").status_code == 405


def test_account_name_is_escaped_on_landing_page(fake):
    exporter = make_exporter(fake, names=("a-b_c",))
    with httpx.Client(
        transport=httpx.WSGITransport(app=create_app(exporter)), base_url="http://e"
    ) as http:
        assert ">a-b_c</th>" in http.get("/").text
    exporter.close()


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, 5.1), ("10", 5.1), ("3", 2.5), ("0.6", 0.3), ("abc", 5.1), ("-1", 5.1)],
)
def test_scrape_wait_respects_prometheus_timeout(fake, header, expected):
    from okx_loan_exporter.web import _float_or_none

    exporter = make_exporter(fake)
    assert exporter.scrape_wait(_float_or_none(header)) == pytest.approx(expected)
    exporter.close()


def test_vanished_currency_disappears_on_next_fresh_answer(fake):
    exporter = make_exporter(fake, cache_ttl=0.5)
    app = create_app(exporter)
    body = copy.deepcopy(DOCS_EXAMPLE)
    body["data"][0]["collateralData"] = body["data"][0]["collateralData"][:1]
    import time

    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://e") as http:
        first = http.get("/metrics").text
        fake.answers[f"{SECRETS['api_key']}-main"] = httpx.Response(200, json=body)
        time.sleep(0.55)
        second = http.get("/metrics").text
    exporter.close()
    assert 'currency="LUNA"' in first
    assert 'currency="LUNA"' not in second and 'currency="COMP"' in second


def test_basic_auth_protects_everything_but_healthy(fake, tmp_path):
    hashed = bcrypt.hashpw(b"s3cret-pw", bcrypt.gensalt(rounds=4)).decode()
    web_config = tmp_path / "web.yml"
    web_config.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    exporter = make_exporter(fake)
    app = create_app(exporter, WebConfigWatcher(str(web_config)))
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://e") as http:
        denied = http.get("/metrics")
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"].startswith("Basic")
        assert http.get("/").status_code == 401
        assert http.get("/-/ready").status_code == 401
        assert http.get("/-/healthy").status_code == 200
        assert http.get("/metrics", auth=("alice", "wrong")).status_code == 401
        assert http.get("/metrics", auth=("alice", "s3cret-pw")).status_code == 200
    exporter.close()
    assert fake.requests == 1  # denied scrapes never reached OKX


def raw_answer(port, request):
    """Everything a real server answers to ``request`` (bytes), split at the blank line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    headers.pop("Date")
    return status, headers, body


@pytest.mark.parametrize("path", ["/", "/metrics", "/-/healthy", "/-/ready"])
def test_head_on_every_get_endpoint_answers_the_get_headers_without_a_body(fake, path):
    # No process metrics: they would change between the GET and the HEAD.
    exporter = make_exporter(fake)
    app = create_app(
        exporter,
        exposition=Exposition(__version__, process_metrics=CollectorRegistry()),
        clock=lambda: 1_700_000_000.0,
    )
    server = ExporterHTTPServer(app, "127.0.0.1:0", WebConfigWatcher(None))
    server.start_background()
    try:
        get = raw_answer(server.port, f"GET {path} HTTP/1.0\r\n\r\n".encode())
        head = raw_answer(server.port, f"HEAD {path} HTTP/1.0\r\n\r\n".encode())
    finally:
        server.shutdown()
        exporter.close()
    assert get[0] == head[0] == "HTTP/1.0 200 OK"
    assert head[1] == get[1]
    assert int(get[1]["Content-Length"]) == len(get[2]) > 0
    assert head[2] == b""
