"""Tests for okx_loan_exporter.webconfig: loading, validation messages, reloads and basic auth.

The PKI helpers here (``make_pki``) are also used by tests/test_server.py.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from okx_loan_exporter.simulator.certs import issue_certificate as _issue
from okx_loan_exporter.webconfig import (
    TLSConfig,
    WebConfig,
    WebConfigWatcher,
    load,
    make_ssl_context,
)
from okx_loan_exporter.yamlload import ConfigError

# --- a throwaway PKI ------------------------------------------------------------------------


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> None:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class Pki:
    """File paths of a CA, a server certificate it signed, and client certificates."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    server2_cert: Path  # a second server certificate from the same CA, for rotation tests
    server2_key: Path
    client_cert: Path
    client_key: Path
    rogue_client_cert: Path  # signed by another CA
    rogue_client_key: Path
    encrypted_key: Path

    def client_context(
        self, *, with_cert: bool = False, rogue: bool = False, max_version: str | None = None
    ) -> ssl.SSLContext:
        """A client SSL context trusting the CA, optionally presenting a client certificate."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if with_cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        if rogue:
            ctx.load_cert_chain(str(self.rogue_client_cert), str(self.rogue_client_key))
        if max_version is not None:
            ctx.maximum_version = getattr(ssl.TLSVersion, max_version)
        return ctx


def make_pki(directory: Path) -> Pki:
    """Write a CA, two server certificates, a client certificate and a rogue one to directory."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _issue("Test CA", None, None, ca=True)
    rogue_ca_cert, rogue_ca_key = _issue("Rogue CA", None, None, ca=True)
    paths = {
        name: directory / name
        for name in (
            "ca.crt",
            "server.crt",
            "server.key",
            "server2.crt",
            "server2.key",
            "client.crt",
            "client.key",
            "rogue.crt",
            "rogue.key",
            "encrypted.key",
        )
    }
    _write_cert(paths["ca.crt"], ca_cert)
    for stem, subject, issuer_key, issuer, server in (
        ("server", "server-one", ca_key, ca_cert, True),
        ("server2", "server-two", ca_key, ca_cert, True),
        ("client", "scraper", ca_key, ca_cert, False),
        ("rogue", "intruder", rogue_ca_key, rogue_ca_cert, False),
    ):
        cert, key = _issue(subject, issuer_key, issuer, server=server)
        _write_cert(paths[f"{stem}.crt"], cert)
        _write_key(paths[f"{stem}.key"], key)
        if stem == "server":
            _write_key(paths["encrypted.key"], key, password=b"key-password")
    return Pki(
        dir=directory,
        ca=paths["ca.crt"],
        server_cert=paths["server.crt"],
        server_key=paths["server.key"],
        server2_cert=paths["server2.crt"],
        server2_key=paths["server2.key"],
        client_cert=paths["client.crt"],
        client_key=paths["client.key"],
        rogue_client_cert=paths["rogue.crt"],
        rogue_client_key=paths["rogue.key"],
        encrypted_key=paths["encrypted.key"],
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# --- helpers --------------------------------------------------------------------------------

PASSWORD = "correct horse battery staple"
ALICE_2B = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
ALICE_2Y = "$2y$" + ALICE_2B[4:]
BOB_PASSWORD = "b0b-secret"
BOB_2B = bcrypt.hashpw(BOB_PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def write(path: Path, text: str) -> Path:
    """Replace path atomically, as config management and Kubernetes do."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def load_web_config(path: str) -> WebConfig:
    """The validated web config in ``path`` (what the watcher loads, without its SSL context)."""
    return load(path)[0]


def tls_yaml(pki: Pki, **extra: str) -> str:
    lines = [
        "tls_server_config:",
        f"  cert_file: {pki.server_cert}",
        f"  key_file: {pki.server_key}",
    ]
    lines += [f"  {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- good files -----------------------------------------------------------------------------


def test_empty_file_means_plain_http_and_no_auth(tmp_path: Path) -> None:
    config = load_web_config(str(write(tmp_path / "web.yml", "")))
    assert config.tls is None
    assert dict(config.basic_auth_users) == {}


def test_empty_sections_mean_plain_http_and_no_auth(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yml", "tls_server_config: {}\nbasic_auth_users:\n")
    config = load_web_config(str(path))
    assert config.tls is None
    assert dict(config.basic_auth_users) == {}


def test_relative_paths_are_relative_to_the_config_file(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # anywhere but the PKI directory
    path = write(
        pki.dir / "web.yml",
        "tls_server_config:\n"
        "  cert_file: server.crt\n"
        "  key_file: ./server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: ca.crt\n"
        "  min_version: TLS13\n",
    )
    config = load_web_config(str(path))
    assert config.tls == TLSConfig(
        cert_file=str(pki.server_cert),
        key_file=str(pki.server_key),
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file=str(pki.ca),
        min_version="TLS13",
    )


def test_defaults_are_no_client_cert_and_tls12(pki: Pki, tmp_path: Path) -> None:
    config = load_web_config(str(write(tmp_path / "web.yml", tls_yaml(pki))))
    assert config.tls is not None
    assert config.tls.client_auth_type == "NoClientCert"
    assert config.tls.min_version == "TLS12"
    assert config.tls.client_ca_file is None
    ctx = make_ssl_context(config.tls, "web.yml")
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("client_auth_type", "verify_mode"),
    [
        ("NoClientCert", ssl.CERT_NONE),
        ("RequestClientCert", ssl.CERT_NONE),
        ("VerifyClientCertIfGiven", ssl.CERT_OPTIONAL),
        ("RequireAnyClientCert", ssl.CERT_REQUIRED),
        ("RequireClientCert", ssl.CERT_REQUIRED),  # exporter-toolkit's old spelling
        ("RequireAndVerifyClientCert", ssl.CERT_REQUIRED),
    ],
)
def test_client_auth_type_maps_onto_verify_mode(
    pki: Pki, tmp_path: Path, client_auth_type: str, verify_mode: ssl.VerifyMode
) -> None:
    extra = {"client_auth_type": client_auth_type}
    if verify_mode != ssl.CERT_NONE or client_auth_type == "RequestClientCert":
        extra["client_ca_file"] = str(pki.ca)
    config = load_web_config(str(write(tmp_path / "web.yml", tls_yaml(pki, **extra))))
    assert config.tls is not None
    ctx = make_ssl_context(config.tls, "web.yml")
    assert ctx.verify_mode == verify_mode
    if verify_mode != ssl.CERT_NONE:
        # Only the configured CA is trusted for client certificates, never the system store.
        assert ctx.cert_store_stats()["x509_ca"] == 1


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("TLS10", ssl.TLSVersion.TLSv1),
        ("TLS11", ssl.TLSVersion.TLSv1_1),
        ("TLS12", ssl.TLSVersion.TLSv1_2),
        ("TLS13", ssl.TLSVersion.TLSv1_3),
    ],
)
def test_min_version(pki: Pki, tmp_path: Path, name: str, version: ssl.TLSVersion) -> None:
    config = load_web_config(str(write(tmp_path / "web.yml", tls_yaml(pki, min_version=name))))
    assert config.tls is not None
    assert make_ssl_context(config.tls, "web.yml").minimum_version == version


def test_bcrypt_hashes_with_2y_2b_and_2a_prefixes_load(tmp_path: Path) -> None:
    alice_2a = "$2a$" + ALICE_2B[4:]
    path = write(
        tmp_path / "web.yml",
        f"basic_auth_users:\n  alice: '{ALICE_2Y}'\n  bob: {BOB_2B}\n  carol: '{alice_2a}'\n",
    )
    users = load_web_config(str(path)).basic_auth_users
    assert users == {
        "alice": ALICE_2Y.encode(),
        "bob": BOB_2B.encode(),
        "carol": alice_2a.encode(),
    }


def test_repr_shows_user_names_but_never_hashes(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: '{ALICE_2Y}'\n")
    config = load_web_config(str(path))
    text = repr(config) + str(config)
    assert "alice" in text
    assert ALICE_2Y not in text
    assert ALICE_2B[7:] not in text  # not even the salt and digest part
    assert "$2" not in text


def test_users_mapping_cannot_be_changed(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: '{ALICE_2Y}'\n")
    config = load_web_config(str(path))
    with pytest.raises(TypeError):
        config.basic_auth_users["mallory"] = b"x"  # type: ignore[index]


# --- bad files: every one gives a located, one-line message with the fix --------------------

PLAIN_PASSWORD = "hunter2-plain"


def _bad_cases(pki: Pki, tmp: Path) -> list[tuple[str, str, list[str]]]:
    """(id, file text, substrings the message must contain)."""
    (tmp / "junk.pem").write_text("not a pem file\n")
    return [
        ("yaml-syntax", "tls_server_config: [\n", ["line 2", "invalid YAML", "fix the YAML"]),
        ("top-level-list", "- a\n- b\n", ["top level must be a mapping"]),
        (
            "unknown-top-key",
            "tls_config:\n  cert_file: x\n",
            ["tls_config: unknown key", "did you mean 'tls_server_config'?"],
        ),
        (
            "unsupported-toolkit-section",
            "http_server_config:\n  http2: false\n",
            ["http_server_config:", "does not support", "remove it"],
        ),
        (
            "tls-not-a-mapping",
            "tls_server_config: yes\n",
            ["tls_server_config: must be a mapping", "remove it for plain HTTP"],
        ),
        (
            "unknown-tls-key",
            tls_yaml(pki) + "  certfile: x\n",
            ["tls_server_config.certfile: unknown key", "did you mean 'cert_file'?"],
        ),
        (
            "unsupported-tls-key",
            tls_yaml(pki) + "  max_version: TLS13\n",
            ["tls_server_config.max_version:", "does not support", "remove it"],
        ),
        (
            "missing-cert",
            f"tls_server_config:\n  key_file: {pki.server_key}\n",
            ["tls_server_config.cert_file: missing", "needs both cert_file and key_file"],
        ),
        (
            "missing-key",
            f"tls_server_config:\n  cert_file: {pki.server_cert}\n",
            ["tls_server_config.key_file: missing", "needs both cert_file and key_file"],
        ),
        (
            "cert-not-a-string",
            f"tls_server_config:\n  cert_file: [a]\n  key_file: {pki.server_key}\n",
            ["tls_server_config.cert_file: must be a file path"],
        ),
        (
            "bad-client-auth-type",
            tls_yaml(pki, client_auth_type="RequireCert"),
            [
                "tls_server_config.client_auth_type: 'RequireCert' is not a client auth type",
                "use one of NoClientCert, RequestClientCert, RequireAnyClientCert, "
                "VerifyClientCertIfGiven, RequireAndVerifyClientCert",
            ],
        ),
        (
            "bad-min-version",
            tls_yaml(pki, min_version="TLS1.3"),
            [
                "tls_server_config.min_version: 'TLS1.3' is not a TLS version",
                "use one of TLS10, TLS11, TLS12, TLS13",
            ],
        ),
        (
            "ca-without-client-auth",
            tls_yaml(pki, client_ca_file=str(pki.ca)),
            [
                "tls_server_config.client_ca_file: set but client_auth_type is NoClientCert",
                "client_auth_type: RequireAndVerifyClientCert",
            ],
        ),
        (
            "verify-without-ca",
            tls_yaml(pki, client_auth_type="RequireAndVerifyClientCert"),
            ["tls_server_config.client_ca_file: missing", "name the PEM file of the CA"],
        ),
        (
            "cert-file-missing",
            f"tls_server_config:\n  cert_file: nope.crt\n  key_file: {pki.server_key}\n",
            [
                "tls_server_config.cert_file: cannot read",
                "nope.crt (No such file or directory)",
                "relative to the web config file's directory",
            ],
        ),
        (
            "key-file-is-a-directory",
            f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.dir}\n",
            ["tls_server_config.key_file: cannot read", "Is a directory", "fix the path"],
        ),
        (
            "cert-not-pem",
            f"tls_server_config:\n  cert_file: junk.pem\n  key_file: {pki.server_key}\n",
            ["tls_server_config.cert_file:", "junk.pem holds no PEM certificate"],
        ),
        (
            "key-not-pem",
            f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: junk.pem\n",
            ["tls_server_config.key_file:", "junk.pem holds no PEM private key"],
        ),
        (
            "key-of-another-cert",
            f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.client_key}\n",
            ["tls_server_config.key_file:", "is not the private key of cert_file"],
        ),
        (
            "encrypted-key",
            f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
            f"  key_file: {pki.encrypted_key}\n",
            ["tls_server_config.key_file:", "is encrypted", "unencrypted key"],
        ),
        (
            "ca-not-pem",
            tls_yaml(pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file="junk.pem"),
            ["tls_server_config.client_ca_file:", "junk.pem holds no PEM CA certificate"],
        ),
        (
            "users-not-a-mapping",
            "basic_auth_users: [alice]\n",
            ["basic_auth_users: must be a mapping", "htpasswd -nBC 10"],
        ),
        (
            "plain-password-instead-of-hash",
            f"basic_auth_users:\n  alice: {PLAIN_PASSWORD}\n",
            ["basic_auth_users.alice: not a bcrypt hash", "htpasswd -nBC 10"],
        ),
        (
            "truncated-hash",
            f"basic_auth_users:\n  alice: '{ALICE_2Y[:-1]}'\n",
            ["basic_auth_users.alice: not a bcrypt hash"],
        ),
        (
            "other-crypt-scheme",
            "basic_auth_users:\n  alice: '$6$saltsalt$" + "x" * 86 + "'\n",
            ["basic_auth_users.alice: not a bcrypt hash"],
        ),
        (
            "hash-not-a-string",
            "basic_auth_users:\n  alice: 12345\n",
            ["basic_auth_users.alice: not a bcrypt hash"],
        ),
        (
            "user-name-with-colon",
            f"basic_auth_users:\n  'al:ice': '{ALICE_2Y}'\n",
            ["basic_auth_users.al:ice: not a usable user name", "without ':'"],
        ),
        (
            "duplicate-user",
            f"basic_auth_users:\n  alice: '{ALICE_2Y}'\n  alice: '{BOB_2B}'\n",
            [
                "line 3, column 3: the key 'alice' appears twice in one mapping;"
                " keep only one of them"
            ],
        ),
    ]


def test_bad_files_give_located_messages(pki: Pki, tmp_path: Path) -> None:
    secrets_in_files = [ALICE_2Y, ALICE_2B, BOB_2B, PLAIN_PASSWORD, ALICE_2Y[:-1]]
    failures = []
    for case_id, text, expected in _bad_cases(pki, tmp_path):
        path = write(tmp_path / "web.yml", text)
        try:
            load_web_config(str(path))
        except ConfigError as exc:
            message = str(exc)
        else:
            failures.append(f"{case_id}: loaded without error")
            continue
        problems = [f"missing {part!r}" for part in expected if part not in message]
        if not message.startswith(f"web config file {path}: "):
            problems.append("does not start with the file name")
        if "\n" in message:
            problems.append("is not one line")
        problems += ["shows a secret" for secret in secrets_in_files if secret in message]
        if problems:
            failures.append(f"{case_id}: {message!r}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yml"
    with pytest.raises(ConfigError) as info:
        load_web_config(str(path))
    assert str(info.value) == (
        f"web config file {path}: cannot read it: No such file or directory; "
        "check --web.config.file"
    )


def test_yaml_error_message_does_not_quote_the_line(tmp_path: Path) -> None:
    # PyYAML's own message quotes the offending line, which here holds a hash.
    path = write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: '{ALICE_2Y}' : x\n")
    with pytest.raises(ConfigError) as info:
        load_web_config(str(path))
    assert "line 2" in str(info.value)
    assert ALICE_2Y not in str(info.value)
    assert ALICE_2B[7:] not in str(info.value)


def test_make_ssl_context_reports_a_bad_file_by_key(pki: Pki) -> None:
    tls = TLSConfig(cert_file=str(pki.server_cert), key_file=str(pki.dir / "gone.key"))
    with pytest.raises(ConfigError, match=r"tls_server_config\.key_file: cannot read"):
        make_ssl_context(tls, "web.yml")


# --- the watcher ----------------------------------------------------------------------------


def test_watcher_without_file() -> None:
    watcher = WebConfigWatcher(None)
    assert watcher.current() == WebConfig()
    assert watcher.ssl_context() is None


def test_watcher_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yml", "basic_auth_users:\n  alice: plain\n")
    with pytest.raises(ConfigError, match=r"basic_auth_users\.alice: not a bcrypt hash"):
        WebConfigWatcher(str(path))


def test_watcher_rereads_a_changed_file_once_per_check_interval(tmp_path: Path) -> None:
    clock = FakeClock()
    path = write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: '{ALICE_2Y}'\n")
    watcher = WebConfigWatcher(str(path), clock=clock, check_interval=5.0)
    assert set(watcher.current().basic_auth_users) == {"alice"}

    write(path, f"basic_auth_users:\n  bob: '{BOB_2B}'\n")
    clock.now += 4.9
    assert set(watcher.current().basic_auth_users) == {"alice"}  # not checked yet
    clock.now += 0.1
    assert set(watcher.current().basic_auth_users) == {"bob"}


def test_watcher_with_zero_interval_sees_every_change(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yml", "")
    watcher = WebConfigWatcher(str(path), check_interval=0)
    assert not watcher.current().basic_auth_users
    write(path, f"basic_auth_users:\n  alice: '{ALICE_2Y}'\n")
    assert set(watcher.current().basic_auth_users) == {"alice"}


def test_bad_reload_keeps_the_old_config_and_logs_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    path = write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: '{ALICE_2Y}'\n")
    watcher = WebConfigWatcher(str(path), clock=clock, check_interval=1.0)
    good = watcher.current()

    write(path, f"basic_auth_users:\n  alice: {PLAIN_PASSWORD}\n  bob: '{BOB_2B}'\n")
    with caplog.at_level(logging.DEBUG, logger="okx_loan_exporter.webconfig"):
        for _ in range(5):
            clock.now += 1.0
            assert watcher.current() is good
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    line = errors[0].getMessage()
    assert "\n" not in line
    assert "Keeping the previous web config" in line
    assert "basic_auth_users.alice: not a bcrypt hash" in line
    for secret in (PLAIN_PASSWORD, ALICE_2Y, BOB_2B, ALICE_2B):
        assert secret not in caplog.text

    caplog.clear()
    write(path, f"basic_auth_users:\n  bob: '{BOB_2B}'\n")
    with caplog.at_level(logging.INFO, logger="okx_loan_exporter.webconfig"):
        clock.now += 1.0
        assert set(watcher.current().basic_auth_users) == {"bob"}
    assert "Reloaded web config file" in caplog.text
    assert BOB_2B not in caplog.text


def test_ssl_context_is_rebuilt_when_the_certificate_file_changes(pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    path = write(
        tmp_path / "web.yml", "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
    )
    clock = FakeClock()
    watcher = WebConfigWatcher(str(path), clock=clock, check_interval=1.0)
    first = watcher.ssl_context()
    assert first is not None
    clock.now += 1.0
    assert watcher.ssl_context() is first  # nothing changed: same context

    # Rotate: the key first (a moment where the pair does not match), then the certificate.
    write(key, pki.server2_key.read_text())
    clock.now += 1.0
    assert watcher.ssl_context() is first  # mismatched pair: keep serving the old one
    write(cert, pki.server2_cert.read_text())
    clock.now += 1.0
    second = watcher.ssl_context()
    assert second is not None and second is not first


def test_a_missing_certificate_that_appears_later_is_picked_up(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "web.yml", "")
    clock = FakeClock()
    watcher = WebConfigWatcher(str(path), clock=clock, check_interval=1.0)
    write(path, "tls_server_config:\n  cert_file: later.crt\n  key_file: later.key\n")
    clock.now += 1.0
    assert watcher.ssl_context() is None
    (tmp_path / "later.key").write_bytes(pki.server_key.read_bytes())
    (tmp_path / "later.crt").write_bytes(pki.server_cert.read_bytes())
    clock.now += 1.0
    assert watcher.ssl_context() is not None
    assert watcher.current().tls is not None


# --- bcrypt cost limits and all problems at once --------------------------------------------


def fake_hash(cost: int) -> str:
    """A well-formed bcrypt hash of ``cost``; never checked, so a high cost costs nothing here."""
    return f"$2b${cost:02d}$" + "A" * 53


def test_bcrypt_cost_above_16_is_refused_naming_file_user_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: '{fake_hash(17)}'\n")
    with pytest.raises(ConfigError) as info:
        load_web_config(str(path))
    assert str(info.value) == (
        f"web config file {path}: basic_auth_users.alice: bcrypt cost 17 is above 16: every"
        " login would take seconds of CPU, and wrong passwords would keep the exporter busy;"
        " make a hash of cost 10 to 12 with: htpasswd -nBC 10 \"\" | tr -d ':\\n'"
    )
    assert fake_hash(17) not in str(info.value)


@pytest.mark.parametrize(("cost", "warns"), [(12, False), (13, True), (16, True)])
def test_bcrypt_cost_above_12_warns(tmp_path: Path, cost: int, warns: bool) -> None:
    path = write(tmp_path / "web.yml", f"basic_auth_users:\n  bob: '{fake_hash(cost)}'\n")
    warnings = load_web_config(str(path)).warnings
    if not warns:
        assert warnings == ()
        return
    (warning,) = warnings
    assert warning.startswith(f"web config file {path}: basic_auth_users.bob: bcrypt cost {cost}")
    assert "make a hash of cost 10 to 12" in warning
    assert fake_hash(cost) not in warning


def test_every_problem_of_the_web_config_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path / "web.yml",
        "tls_config: {}\n"
        f"basic_auth_users:\n  alice: {PLAIN_PASSWORD}\n  bob: '{fake_hash(20)}'\n"
        f"  carol: '{ALICE_2Y}'\n",
    )
    with pytest.raises(ConfigError) as info:
        load_web_config(str(path))
    assert [line.split(": ")[1] for line in info.value.lines] == [
        "tls_config",
        "basic_auth_users.alice",
        "basic_auth_users.bob",
    ]
    assert all(line.startswith(f"web config file {path}: ") for line in info.value.lines)
    assert PLAIN_PASSWORD not in str(info.value)
