"""The compose stack: valid against the Compose schema, safe by default, its alerts go somewhere.

`docker compose up` itself cannot run here (no Docker engine); what can be checked is: the file
validates against the Compose Specification's JSON schema (check-jsonschema), every port is
published on loopback only, Grafana has no anonymous access and no default admin password,
Prometheus has no lifecycle or admin API, every Alertmanager webhook points at a service of the
stack, and a real Alertmanager with the stack's alertmanager.yml delivers alerts to the stack's
webhook logger (examples/webhook-logger/webhook_logger.py) run here as a process.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from deploy_support import check_jsonschema, shared_schema
from e2e_support import LOOPBACK, managed_processes, wait_for
from test_e2e_monitoring import alertmanager_binary, alertmanager_config

EXAMPLES = Path(__file__).parent.parent / "examples"
COMPOSE_FILE = EXAMPLES / "docker-compose.yml"
COMPOSE_TEXT = COMPOSE_FILE.read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
ALERTMANAGER_FILE = EXAMPLES / "alertmanager" / "alertmanager.yml"
WEBHOOK_LOGGER = EXAMPLES / "webhook-logger" / "webhook_logger.py"


def test_validates_against_the_compose_specification() -> None:
    result = check_jsonschema(shared_schema("compose-spec.json"), COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_TEXT.replace("    restart: unless-stopped", "    restart: 3", 1))
    result = check_jsonschema(shared_schema("compose-spec.json"), broken)
    assert result.returncode != 0 and "restart" in result.stdout, result.stdout


def test_services():
    assert set(SERVICES) == {"exporter", "prometheus", "alertmanager", "webhook-logger", "grafana"}


def test_every_published_port_is_on_loopback_only():
    published = {name: service.get("ports", []) for name, service in SERVICES.items()}
    assert published["exporter"] and published["grafana"], published
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"
    assert "ports" not in SERVICES["webhook-logger"], "only Alertmanager needs the logger"


def test_grafana_needs_a_password_from_the_environment_and_has_no_anonymous_access():
    environment = SERVICES["grafana"]["environment"]
    # ${VAR:?message}: compose refuses to start without GF_ADMIN_PASSWORD; there is no default.
    assert re.fullmatch(
        r"\$\{GF_ADMIN_PASSWORD:\?[^}]+\}", environment["GF_SECURITY_ADMIN_PASSWORD"]
    )
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert environment["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert not any("PASSWORD" in key for key in environment if key != "GF_SECURITY_ADMIN_PASSWORD")


def test_prometheus_has_no_lifecycle_or_admin_api():
    command = " ".join(SERVICES["prometheus"]["command"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert "enable-lifecycle" not in command and "enable-admin-api" not in command


def test_our_containers_run_unprivileged_and_read_only():
    for name in ("exporter", "webhook-logger"):
        service = SERVICES[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    assert SERVICES["webhook-logger"]["user"] == "65532:65532"


def test_exporter_is_demo_by_default_and_one_line_switches_to_real_keys():
    exporter = SERVICES["exporter"]
    assert "--demo" in exporter["command"]
    commented = re.findall(r"^\s*# command: (\[.*\])$", COMPOSE_TEXT, re.MULTILINE)
    assert len(commented) == 1
    real = yaml.safe_load(commented[0])
    assert "--config.file=/etc/okx-loan-exporter/config.yml" in real
    assert "--demo" not in real
    mounts = {m.split(":")[0]: m.split(":")[1] for m in exporter["volumes"]}
    assert mounts["./config.yml"] == "/etc/okx-loan-exporter/config.yml"
    assert mounts["./secrets"] == "/run/secrets"
    account = yaml.safe_load((EXAMPLES / "config.yml").read_text())["accounts"][0]
    for key in ("api_key_file", "secret_key_file", "passphrase_file"):
        assert account[key].startswith("/run/secrets/")
        assert (EXAMPLES / "secrets").is_dir()


def test_every_bind_mount_source_exists():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (EXAMPLES / source).exists(), f"{name}: {source} does not exist"


def test_every_alertmanager_webhook_is_the_stacks_logger():
    logger_command = SERVICES["webhook-logger"]["command"]
    listen = logger_command[logger_command.index("--listen") + 1]
    receivers = yaml.safe_load(ALERTMANAGER_FILE.read_text())["receivers"]
    urls = [hook["url"] for r in receivers for hook in r.get("webhook_configs", [])]
    assert len(urls) >= 2, urls
    for url in urls:
        parts = urlsplit(url)
        assert parts.hostname == "webhook-logger", f"{url}: not a service of the stack"
        assert parts.port == int(listen.rsplit(":", 1)[1]), f"{url}: the logger listens on {listen}"
    assert "webhook-logger" in SERVICES["alertmanager"]["depends_on"]


def start_logger(group, *, ready_path: str = "/"):
    return group.start(
        "webhook-logger",
        lambda port: [sys.executable, str(WEBHOOK_LOGGER), "--listen", f"{LOOPBACK}:{port}"],
        ready_path=ready_path,
    )


def test_the_webhook_logger_refuses_a_body_that_is_not_an_alert_payload(tmp_path, request):
    with managed_processes(request, tmp_path) as group:
        logger, port = start_logger(group)
        url = f"http://{LOOPBACK}:{port}/okx-loan/critical"
        assert httpx.post(url, content=b"not json").status_code == 400
        assert httpx.post(url, json={"alerts": "none"}).status_code == 400
        assert httpx.post(url, json={"alerts": []}).status_code == 200
        assert logger.poll() is None, "a bad body must not stop the logger"
        assert logger.stdout().count("error=") == 2, logger.stdout()


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_alertmanager_delivers_the_stacks_alerts_to_the_webhook_logger(tmp_path, request):
    """The stack's alertmanager.yml (host names moved to loopback, timers shortened) and logger."""
    with managed_processes(request, tmp_path) as group:
        logger, logger_port = start_logger(group)
        config = alertmanager_config(f"http://{LOOPBACK}:{logger_port}")
        config_file = tmp_path / "alertmanager.yml"
        config_file.write_text(yaml.safe_dump(config))
        binary = alertmanager_binary()
        _alertmanager, port = group.start(
            "alertmanager",
            lambda port: [
                binary,
                f"--config.file={config_file}",
                f"--storage.path={tmp_path / 'alertmanager-data'}",
                f"--web.listen-address={LOOPBACK}:{port}",
                "--cluster.listen-address=",
            ],
        )
        alerts = [
            {
                "labels": {"alertname": alertname, "severity": severity, "account": "main"},
                "annotations": {"summary": f"{alertname} on main"},
            }
            for alertname, severity in (
                ("OkxLoanMarginCall", "critical"),
                ("OkxLoanApiFailing", "warning"),
            )
        ]
        response = httpx.post(f"http://{LOOPBACK}:{port}/api/v2/alerts", json=alerts, timeout=10)
        assert response.status_code == 200, response.text
        expected = [
            'path="/okx-loan/critical" receiver="critical-webhook" status="firing" '
            'alertname="OkxLoanMarginCall" account="main" severity="critical" '
            'summary="OkxLoanMarginCall on main"',
            'path="/okx-loan/warning" receiver="warning-webhook" status="firing" '
            'alertname="OkxLoanApiFailing" account="main" severity="warning"',
        ]
        wait_for(
            "both alerts in the webhook logger's output",
            lambda: all(line in logger.stdout() for line in expected),
            60,
            details=logger.stdout,
        )
