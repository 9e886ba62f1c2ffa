"""The compose stack: demo by default, real keys by switching one line, every mount exists."""

import re
from pathlib import Path

import yaml

EXAMPLES = Path(__file__).parent.parent / "examples"
COMPOSE_TEXT = (EXAMPLES / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)


def test_services():
    assert set(COMPOSE["services"]) == {"exporter", "prometheus", "alertmanager", "grafana"}


def test_exporter_is_demo_by_default_and_one_line_switches_to_real_keys():
    exporter = COMPOSE["services"]["exporter"]
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
    for name, service in COMPOSE["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (EXAMPLES / source).exists(), f"{name}: {source} does not exist"
