"""The Kubernetes kustomize base in deploy/kubernetes/, rendered and validated offline.

``kubectl kustomize`` renders it; ``kubernetes-validate --strict`` checks the built-in kinds against
Kubernetes' schemas; check-jsonschema checks the ServiceMonitor and PrometheusRule against
prometheus-operator's CRD schemas (shared/schemas); ``promtool check rules`` checks the rules taken
out of the rendered PrometheusRule; the generated manifests must equal what
``python -m deploy.kubernetes.generate`` makes from examples/prometheus/rules.yml and the dashboard.
The objects must fit together (selectors, ports, the image's user, the alerts' job label) and the
exporter must accept the ConfigMap's configuration. No cluster is reachable here: nothing is
applied to a real API server.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import check_jsonschema, shared_schema
from tooling import require_binary

import okx_loan_exporter

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy" / "kubernetes"
RULES = ROOT / "examples" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "grafana" / "okx-loan-dashboard.json"
README = ROOT / "README.md"
CUSTOM_KINDS = {
    "ServiceMonitor": "servicemonitor-monitoring.coreos.com-v1.json",
    "PrometheusRule": "prometheusrule-monitoring.coreos.com-v1.json",
}
#: prometheus-operator's CRD schemas hold Go (RE2) patterns, e.g. ``^(?i)(abort|warn)?$``, that
#: neither ECMAScript nor Python regexes accept, so check-jsonschema's check of the schema itself
#: against the JSON Schema metaschema is skipped by naming the validator; documents are validated.
CRD_OPTIONS = ("--validator-class", "jsonschema.validators:Draft202012Validator")
#: The oldest Kubernetes the base is checked against, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.28.0", None)


def kustomize(directory: Path = BASE) -> list[dict[str, Any]]:
    kubectl = require_binary("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return kustomize()


def one(rendered: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for doc in rendered
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def container(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    (exporter,) = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(exporter)


def write_all(path: Path, documents: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
    return path


def kubernetes_validate(path: Path, version: str | None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet"]
    if version:
        command += ["-k", version]
    return subprocess.run(
        [*command, str(path)], capture_output=True, text=True, timeout=120, check=False
    )


# --- Rendering and schemas --------------------------------------------------------------------


def test_renders_the_objects_a_prometheus_operator_user_needs(rendered) -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in rendered)
    assert kinds == [
        ("ConfigMap", "okx-loan-exporter-config"),
        ("ConfigMap", "okx-loan-exporter-dashboard"),
        ("Deployment", "okx-loan-exporter"),
        ("NetworkPolicy", "okx-loan-exporter"),
        ("PrometheusRule", "okx-loan-exporter-rules"),
        ("Service", "okx-loan-exporter"),
        ("ServiceMonitor", "okx-loan-exporter"),
    ]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=lambda v: v or "newest")
@pytest.mark.parametrize("directory", ["kubernetes", "kubernetes-sharded"])
def test_built_in_kinds_pass_kubernetes_validate_strict(tmp_path, directory, version) -> None:
    built_in = [
        doc for doc in kustomize(BASE.parent / directory) if doc["kind"] not in CUSTOM_KINDS
    ]
    result = kubernetes_validate(write_all(tmp_path / "built-in.yaml", built_in), version)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_catches_a_misspelt_field(rendered, tmp_path) -> None:
    deployment = copy.deepcopy(one(rendered, "Deployment"))
    deployment["spec"]["template"]["spec"]["securityContext"]["runAsUsr"] = 65532
    result = kubernetes_validate(write_all(tmp_path / "bad.yaml", [deployment]), None)
    assert result.returncode != 0 and "runAsUsr" in result.stdout + result.stderr


@pytest.mark.parametrize("kind", sorted(CUSTOM_KINDS))
@pytest.mark.parametrize("directory", ["kubernetes", "kubernetes-sharded"])
def test_custom_resources_match_prometheus_operators_schema(tmp_path, directory, kind) -> None:
    document = write_all(tmp_path / f"{kind}.yaml", [one(kustomize(BASE.parent / directory), kind)])
    result = check_jsonschema(shared_schema(CUSTOM_KINDS[kind]), document, options=CRD_OPTIONS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_custom_resource_schema_check_can_fail(rendered, tmp_path) -> None:
    monitor = copy.deepcopy(one(rendered, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "every 15 seconds"
    document = write_all(tmp_path / "bad.yaml", [monitor])
    schema = shared_schema(CUSTOM_KINDS["ServiceMonitor"])
    result = check_jsonschema(schema, document, options=CRD_OPTIONS)
    assert result.returncode != 0 and "interval" in result.stdout, result.stdout


def test_promtool_accepts_the_rendered_rules(rendered, tmp_path) -> None:
    promtool = require_binary("promtool")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": one(rendered, "PrometheusRule")["spec"]["groups"]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: \d+ rules found", result.stdout + result.stderr)


# --- Generated from one source of truth -------------------------------------------------------


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.kubernetes.generate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_generated_manifests_are_up_to_date() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, (
        f"{result.stderr}\nrun `python -m deploy.kubernetes.generate` and commit the result"
    )


def test_the_drift_check_fails_on_a_stale_manifest(tmp_path) -> None:
    shutil.copytree(BASE.parent, tmp_path, dirs_exist_ok=True)  # the deploy/ directory
    stale = tmp_path / "kubernetes" / "prometheusrule.yaml"
    stale.write_text(stale.read_text().replace("for: 5m", "for: 6m", 1))
    result = run_generator("--check", "--output-dir", str(tmp_path))
    assert result.returncode == 1 and "prometheusrule.yaml" in result.stderr, result.stderr
    assert "grafana-dashboard.yaml" not in result.stderr
    assert run_generator("--output-dir", str(tmp_path)).returncode == 0  # rewrites it
    assert stale.read_text() == (BASE / "prometheusrule.yaml").read_text()


def test_the_rule_is_the_rules_file_and_the_dashboard_is_the_json_byte_for_byte(rendered) -> None:
    rule = one(rendered, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    dashboard = one(rendered, "ConfigMap", "okx-loan-exporter-dashboard")
    assert dashboard["data"] == {"okx-loan-dashboard.json": DASHBOARD.read_text()}
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


# --- The objects fit together -----------------------------------------------------------------


def dockerfile_instruction(keyword: str) -> str:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    return [line.split(None, 1)[1] for line in lines if line.startswith(f"{keyword} ")][-1]


def test_the_deployment_runs_the_image_locked_down(rendered) -> None:
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    exporter = container(rendered)
    uid, gid = (int(part) for part in dockerfile_instruction("USER").split(":"))
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    assert exporter["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert exporter["image"] == f"okx-loan-exporter:{okx_loan_exporter.__version__}"


def test_probes_and_ports_match_the_exporter(rendered) -> None:
    exporter = container(rendered)
    (port,) = exporter["ports"]
    assert port["containerPort"] == int(dockerfile_instruction("EXPOSE"))
    assert f"--web.listen-address=:{port['containerPort']}" in exporter["args"]
    assert exporter["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": port["name"]}
    assert exporter["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": port["name"]}
    service = one(rendered, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    monitor = one(rendered, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_selectors_find_the_pods_and_the_job_label_is_the_one_the_alerts_expect(rendered) -> None:
    pod_labels = one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(rendered, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(rendered, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    policy = one(rendered, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    # prometheus-operator names the job after the Service (no jobLabel set); the rules select it.
    assert "jobLabel" not in monitor["spec"]
    assert f'job="{service["metadata"]["name"]}"' in RULES.read_text()
    # kube-prometheus-stack selects both custom resources by its release label.
    for kind in CUSTOM_KINDS:
        assert "release" in one(rendered, kind)["metadata"]["labels"], kind


def test_the_network_policy_lets_in_scrapes_and_out_only_dns_and_https(rendered) -> None:
    spec = one(rendered, "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [container(rendered)["ports"][0]["name"]]
    assert ingress["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"
    }
    allowed = sorted((p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"])
    assert allowed == [(53, "TCP"), (53, "UDP"), (443, "TCP")]
    https = next(rule for rule in spec["egress"] if rule["ports"][0]["port"] == 443)
    assert "10.0.0.0/8" in https["to"][0]["ipBlock"]["except"]


def test_the_exporter_accepts_the_configmap_with_the_secret_mounted(rendered, tmp_path) -> None:
    """--check-config on the ConfigMap's config.yml, its key paths moved under ``tmp_path``."""
    exporter = container(rendered)
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in exporter["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_map = one(rendered, "ConfigMap", volumes["config"]["configMap"]["name"])
    config_flag = next(a for a in exporter["args"] if a.startswith("--config.file="))
    config_path = config_flag.split("=", 1)[1]
    assert config_path == f"{mounts['config']}/config.yml"
    text = config_map["data"]["config.yml"]
    keys_dir = mounts["keys"]
    referenced = re.findall(rf"_file: {re.escape(keys_dir)}/(\S+)", text)
    assert sorted(referenced) == ["api_key", "passphrase", "secret_key"]
    assert volumes["keys"]["secret"]["defaultMode"] == 0o440  # group-readable through fsGroup
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in referenced:
        (keys / name).write_text(f"test-{name}\n")
    config = tmp_path / "config.yml"
    config.write_text(text.replace(keys_dir, str(keys)))
    result = subprocess.run(
        [sys.executable, "-m", "okx_loan_exporter", f"--config.file={config}", "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def readme_rss_mib(accounts: int) -> float:
    """The README's resident memory figure for ``accounts`` accounts (scaling benchmark)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    header = next(line for line in lines if line.startswith("accounts ") and "RSS MiB" in line)
    column = re.split(r"\s{2,}", header.strip()).index("RSS MiB")
    row = next(line for line in lines if re.match(rf"{accounts}\s{{2,}}\d", line))
    return float(re.split(r"\s{2,}", row.strip())[column])


def mebibytes(quantity: str) -> float:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert match, f"use Mi or Gi: {quantity}"
    return int(match.group(1)) * (1024 if match.group(2) == "Gi" else 1)


def test_resources_fit_the_readmes_benchmark_figures(rendered) -> None:
    resources = container(rendered)["resources"]
    request = mebibytes(resources["requests"]["memory"])
    limit = mebibytes(resources["limits"]["memory"])
    assert request >= 1.3 * readme_rss_mib(100), "request: 100 accounts with 30 % to spare"
    assert limit >= 1.2 * readme_rss_mib(1000), "limit: 1,000 accounts with 20 % to spare"
    assert limit <= 4 * readme_rss_mib(1000), "a limit far above the figures hides a leak"
    assert "cpu" in resources["requests"]


def test_each_shards_resources_fit_a_thousand_accounts(sharded) -> None:
    (exporter,) = one(sharded, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    request = mebibytes(exporter["resources"]["requests"]["memory"])
    limit = mebibytes(exporter["resources"]["limits"]["memory"])
    assert request >= 1.3 * readme_rss_mib(1000), "request: 1,000 accounts with 30 % to spare"
    assert limit >= 1.5 * readme_rss_mib(1000), "limit: 1,000 accounts with 50 % to spare"
    assert limit <= 2 * readme_rss_mib(2000), "a limit far above the figures hides a leak"


# --- The sharded fleet: deploy/kubernetes-sharded ---------------------------------------------

SHARDED = ROOT / "deploy" / "kubernetes-sharded"


@pytest.fixture(scope="module")
def sharded() -> list[dict[str, Any]]:
    return kustomize(SHARDED)


def test_the_sharded_overlay_swaps_the_deployment_for_a_statefulset(sharded) -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in sharded)
    assert kinds == [
        ("ConfigMap", "okx-loan-exporter-config"),
        ("ConfigMap", "okx-loan-exporter-dashboard"),
        ("NetworkPolicy", "okx-loan-exporter"),
        ("PrometheusRule", "okx-loan-exporter-rules"),
        ("Service", "okx-loan-exporter"),
        ("Service", "okx-loan-exporter-shards"),
        ("ServiceMonitor", "okx-loan-exporter"),  # one for all the shards
        ("StatefulSet", "okx-loan-exporter"),
    ]


def shard_env(statefulset: dict[str, Any]) -> dict[str, Any]:
    (exporter,) = statefulset["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item for item in exporter["env"]}


def test_each_pod_takes_its_shard_from_its_ordinal(sharded) -> None:
    statefulset = one(sharded, "StatefulSet")
    env = shard_env(statefulset)
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    # Kubernetes expands $(POD_INDEX) from the variable defined before it.
    assert list(env).index("POD_INDEX") < list(env).index("OKX_SHARD")
    replicas = statefulset["spec"]["replicas"]
    assert env["OKX_SHARD"]["value"] == f"$(POD_INDEX)/{replicas}"
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"


def test_the_statefulset_runs_the_deployments_pod_with_the_shard_added(rendered, sharded) -> None:
    pod = copy.deepcopy(one(sharded, "StatefulSet")["spec"]["template"])
    base = one(rendered, "Deployment")["spec"]["template"]
    (exporter,) = pod["spec"]["containers"]
    del exporter["env"], exporter["resources"]
    (base_exporter,) = copy.deepcopy(base)["spec"]["containers"]
    assert "env" not in base_exporter
    base_without = copy.deepcopy(base)
    del base_without["spec"]["containers"][0]["resources"]
    assert pod == base_without


def test_one_service_monitor_scrapes_every_shard_once(sharded) -> None:
    statefulset = one(sharded, "StatefulSet")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    monitor = one(sharded, "ServiceMonitor")
    selected = [
        doc
        for doc in sharded
        if doc["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items() <= doc["metadata"]["labels"].items()
    ]
    assert [doc["metadata"]["name"] for doc in selected] == ["okx-loan-exporter"]
    assert selected[0]["spec"]["selector"].items() <= pod_labels.items()
    headless = one(sharded, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= pod_labels.items()


def test_the_shards_of_the_configmap_cover_its_accounts_once(sharded, tmp_path) -> None:
    """--check-config with OKX_SHARD as each pod would have it expanded: every account of the
    ConfigMap's configuration is in exactly one shard."""
    statefulset = one(sharded, "StatefulSet")
    text = one(sharded, "ConfigMap", "okx-loan-exporter-config")["data"]["config.yml"]
    document = yaml.safe_load(text)
    for account in document["accounts"]:
        for secret in ("api_key", "secret_key", "passphrase"):
            account.pop(f"{secret}_file", None)
            account[secret] = f"test-{account['name']}-{secret}"
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(document))
    config.chmod(0o600)
    names = [account["name"] for account in document["accounts"]]
    seen: list[str] = []
    replicas = statefulset["spec"]["replicas"]
    template = shard_env(statefulset)["OKX_SHARD"]["value"]
    for index in range(replicas):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "okx_loan_exporter",
                f"--config.file={config}",
                "--check-config",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={
                "PATH": "/usr/bin:/bin",
                "OKX_SHARD": template.replace("$(POD_INDEX)", str(index)),
            },
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        listed = result.stdout.split(f" in shard {index}/{replicas}:", 1)[1]
        seen += [name.strip() for name in listed.split(",") if name.strip()]
    assert sorted(seen) == sorted(names)
