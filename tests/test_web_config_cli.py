"""Access control through the real command line: ``--demo --web.config.file`` as a real process.

TLS with a certificate made here, bcrypt basic auth (a ``$2y$`` and a ``$2b$`` hash), the exempt
``/-/healthy``, a password change picked up while running, one-line refusals of broken files at
start, client certificates with RequireAndVerifyClientCert, and no password or hash in the
exporter's output. Every request is a real HTTPS request on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest
from e2e_support import stop_process
from test_webconfig import Pki, make_pki

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

START_TIMEOUT_SECONDS = 20.0
RELOAD_TIMEOUT_SECONDS = 10.0

ALICE_PASSWORD = "alice-Pw-7c1e94f0"
ALICE_NEW_PASSWORD = "alice-NewPw-3b8d25aa"
BOB_PASSWORD = "bob-Pw-5e0a6c21"
ALICE_HASH = "$2y$" + bcrypt.hashpw(ALICE_PASSWORD.encode(), bcrypt.gensalt(4)).decode()[4:]
ALICE_NEW_HASH = "$2y$" + bcrypt.hashpw(ALICE_NEW_PASSWORD.encode(), bcrypt.gensalt(4)).decode()[4:]
BOB_HASH = bcrypt.hashpw(BOB_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
assert BOB_HASH.startswith("$2b$")
SECRETS = (ALICE_PASSWORD, ALICE_NEW_PASSWORD, BOB_PASSWORD, ALICE_HASH, ALICE_NEW_HASH, BOB_HASH)


@dataclass
class Exporter:
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    url: str = ""

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def assert_no_secrets(exporter: Exporter) -> None:
    """No password, hash, salt or digest in anything the exporter printed."""
    text = exporter.output()
    for secret in SECRETS:
        assert secret not in text, f"{exporter.process.args} printed a password or hash"
    for hashed in (ALICE_HASH, ALICE_NEW_HASH, BOB_HASH):
        assert hashed[7:29] not in text and hashed[29:] not in text, "a salt or digest"


def write(path: Path, text: str) -> Path:
    """Replace ``path`` atomically, as config management and Kubernetes do."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def web_yml(pki: Pki, users: dict[str, str], **tls: str) -> str:
    lines = [
        "tls_server_config:",
        f"  cert_file: {pki.server_cert}",
        f"  key_file: {pki.server_key}",
        *(f"  {key}: {value}" for key, value in tls.items()),
    ]
    if users:
        lines += ["basic_auth_users:", *(f"  {user}: '{hashed}'" for user, hashed in users.items())]
    return "\n".join(lines) + "\n"


def run_exporter(directory: Path, web_config: Path) -> Exporter:
    """Start ``okx-loan-exporter --demo --web.config.file ...`` on a free port, logging at debug."""
    directory.mkdir(parents=True, exist_ok=True)
    stdout, stderr = directory / "exporter.out", directory / "exporter.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "okx_loan_exporter", "--demo", "--web.config.file",
             str(web_config), "--web.listen-address", "127.0.0.1:0", "--log.level", "debug"],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=directory,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    return Exporter(process, stdout, stderr)


def wait_until_serving(exporter: Exporter) -> str:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        found = re.search(r"on (https://127\.0\.0\.1:\d+)/metrics", exporter.stderr.read_text())
        if found:
            exporter.url = found[1]
            return exporter.url
        if exporter.process.poll() is not None:
            pytest.fail(
                f"the exporter exited with {exporter.process.returncode}:\n{exporter.output()}"
            )
        time.sleep(0.05)
    pytest.fail(f"the exporter did not start serving HTTPS within {START_TIMEOUT_SECONDS:g} s")


def stop(exporter: Exporter) -> None:
    """SIGTERM (SIGKILL after 5 s) this exporter only, then check what it printed."""
    stop_process(exporter.process)
    assert_no_secrets(exporter)


@pytest.fixture
def serving(tmp_path: Path, pki: Pki) -> Iterator[tuple[Exporter, Path]]:
    web_config = write(tmp_path / "web.yml", web_yml(pki, {"alice": ALICE_HASH, "bob": BOB_HASH}))
    exporter = run_exporter(tmp_path, web_config)
    try:
        wait_until_serving(exporter)
        yield exporter, web_config
    finally:
        stop(exporter)


def https(pki: Pki, *, with_cert: bool = False, rogue: bool = False) -> httpx.Client:
    return httpx.Client(verify=pki.client_context(with_cert=with_cert, rogue=rogue), timeout=10)


def test_tls_and_basic_auth(serving: tuple[Exporter, Path], pki: Pki) -> None:
    exporter, _ = serving
    assert exporter.url.startswith("https://")
    metrics = exporter.url + "/metrics"
    with https(pki) as client:
        for user, password in (("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)):  # $2y$, $2b$
            answer = client.get(metrics, auth=(user, password))
            assert answer.status_code == 200, user
            assert 'okx_loan_up{account="btc-usdt"} 1.0' in answer.text

        for auth in (("alice", BOB_PASSWORD), ("alice", ""), ("mallory", ALICE_PASSWORD), None):
            refused = client.get(metrics, auth=auth)
            assert refused.status_code == 401, auth
            assert refused.headers["WWW-Authenticate"].startswith("Basic realm=")
            assert "okx_loan" not in refused.text
        garbled = client.get(metrics, headers={"Authorization": "Basic !!not-base64!!"})
        assert garbled.status_code == 401

        healthy = client.get(exporter.url + "/-/healthy")
        assert healthy.status_code == 200 and healthy.text == "Healthy\n"
        assert client.get(exporter.url + "/", auth=("alice", ALICE_PASSWORD)).status_code == 200
        assert client.get(exporter.url + "/").status_code == 401

    # Plain HTTP to the TLS port gets no answer at all, let alone metrics.
    with pytest.raises(httpx.TransportError):
        httpx.get(
            exporter.url.replace("https://", "http://") + "/metrics",
            auth=("alice", ALICE_PASSWORD),
            timeout=10,
        )
    # A client that does not trust the exporter's CA refuses the certificate.
    with pytest.raises(httpx.ConnectError):
        httpx.get(metrics, timeout=10)  # the system trust store, not the test CA
    assert exporter.process.poll() is None, "the exporter died"


def test_changed_password_applies_while_running(
    serving: tuple[Exporter, Path], pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter, web_config = serving
    metrics = exporter.url + "/metrics"
    with https(pki) as client:
        assert client.get(metrics, auth=("alice", ALICE_PASSWORD)).status_code == 200
        assert client.get(metrics, auth=("alice", ALICE_NEW_PASSWORD)).status_code == 401

        write(web_config, web_yml(pki, {"alice": ALICE_NEW_HASH, "bob": BOB_HASH}))
        changed = time.monotonic()
        deadline = changed + RELOAD_TIMEOUT_SECONDS
        while client.get(metrics, auth=("alice", ALICE_NEW_PASSWORD)).status_code != 200:
            assert time.monotonic() < deadline, "the new password was not accepted in time"
            time.sleep(0.1)
        took = time.monotonic() - changed

        assert client.get(metrics, auth=("alice", ALICE_PASSWORD)).status_code == 401
        assert client.get(metrics, auth=("bob", BOB_PASSWORD)).status_code == 200
    with capsys.disabled():
        print(f"\nweb config reload: new password accepted {took:.1f} s after the file changed")
    assert "Reloaded web config file" in exporter.stderr.read_text()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("basic_auth_users:\n  alice: {password}\n", "basic_auth_users.alice",
                     id="plain-password-instead-of-hash"),
        pytest.param("tls_server_confg:\n  cert_file: x\n", "tls_server_confg",
                     id="misspelt-key"),
        pytest.param("tls_server_config:\n  cert_file: {cert}\n  key_file: missing.key\n",
                     "tls_server_config.key_file", id="missing-key-file"),
        pytest.param("basic_auth_users: [alice]\n", "basic_auth_users", id="list-not-mapping"),
        pytest.param("basic_auth_users:\n  alice: '{hash}'\n  alice: '{hash}'\n",
                     "appears twice", id="duplicate-user"),
    ],
)  # fmt: skip
def test_broken_web_config_at_start_exits_2_with_one_line(
    tmp_path: Path, pki: Pki, text: str, key: str
) -> None:
    web_config = write(
        tmp_path / "web.yml",
        text.format(password=ALICE_PASSWORD, cert=pki.server_cert, hash=ALICE_HASH),
    )
    exporter = run_exporter(tmp_path, web_config)
    try:
        code = exporter.process.wait(timeout=START_TIMEOUT_SECONDS)
    finally:
        stop(exporter)
    error = exporter.stderr.read_text()
    assert code == 2, error
    lines = error.strip().splitlines()
    assert len(lines) == 1, error
    assert lines[0].startswith("okx-loan-exporter: ")
    assert str(web_config) in lines[0] and key in lines[0], lines[0]
    assert "Traceback" not in error
    assert exporter.stdout.read_text() == ""


def test_client_certificate_required_and_verified(tmp_path: Path, pki: Pki) -> None:
    text = web_yml(pki, {"alice": ALICE_HASH}, client_auth_type="RequireAndVerifyClientCert",
                   client_ca_file=str(pki.ca))  # fmt: skip
    exporter = run_exporter(tmp_path, write(tmp_path / "web.yml", text))
    try:
        metrics = wait_until_serving(exporter) + "/metrics"
        with https(pki, with_cert=True) as client:
            answer = client.get(metrics, auth=("alice", ALICE_PASSWORD))
            assert answer.status_code == 200
            assert "okx_loan_up{" in answer.text
            assert client.get(metrics).status_code == 401  # the certificate is not a password
        for refused in (https(pki), https(pki, rogue=True)):  # no certificate; another CA's
            with refused, pytest.raises(httpx.TransportError):
                refused.get(metrics, auth=("alice", ALICE_PASSWORD))
        assert exporter.process.poll() is None, "the exporter died"
    finally:
        stop(exporter)
