"""Key rotation: *_file secrets read again when their file changes, Kubernetes' swap included."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from pathlib import Path

import pytest

from okx_loan_exporter.config import load_config
from okx_loan_exporter.key_rotation import SecretFileWatcher
from okx_loan_exporter.okx import Credentials

_VERSIONS = itertools.count()


def kubernetes_secret(directory: Path, files: dict[str, str]) -> None:
    """Write ``files`` into ``directory`` the way the kubelet updates a mounted secret: a new
    timestamped directory, ``..data`` swapped to it by an atomic rename, each file a symlink
    through ``..data``, and the previous directory removed."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    version = f"..2026_12_01_00_00_00.{next(_VERSIONS):09d}"
    (directory / version).mkdir()
    for name, text in files.items():
        (directory / version / name).write_text(text, encoding="utf-8")
    (directory / "..data_tmp").symlink_to(version)
    os.rename(directory / "..data_tmp", data)
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(directory / old)


SECRETS = {"api_key": "key-0123456789", "secret_key": "secret-0123456789", "passphrase": "pass-1"}


@pytest.fixture
def account_files(tmp_path):
    """A config whose account reads all three secrets from a Kubernetes-style secret volume."""
    secrets = tmp_path / "secrets"
    kubernetes_secret(secrets, SECRETS)
    config_file = tmp_path / "config.yml"
    config_file.write_text(
        "accounts:\n"
        "  - name: main\n"
        f"    api_key_file: {secrets}/api_key\n"
        "    secret_key_file: secrets/secret_key\n"  # relative to the config file
        f"    passphrase_file: {secrets}/passphrase\n",
        encoding="utf-8",
    )
    return secrets, load_config(str(config_file))


def watch(config):
    used: list[Credentials] = []
    (account,) = config.accounts
    return SecretFileWatcher(account, config.source, used.append), used


def test_the_config_records_which_secrets_come_from_files(account_files):
    secrets, config = account_files
    (account,) = config.accounts
    assert [(file.secret, file.key) for file in account.secret_files] == [
        ("api_key", "accounts[0].api_key_file"),
        ("secret_key", "accounts[0].secret_key_file"),
        ("passphrase", "accounts[0].passphrase_file"),
    ]
    assert account.secret_files[1].path == str(secrets / "secret_key")
    assert "secrets" not in repr(account)  # the paths stay out of reprs, like the values


def test_a_kubernetes_secret_swap_is_seen_and_used_at_the_next_check(account_files, caplog):
    secrets, config = account_files
    watcher, used = watch(config)
    assert watcher.check() is False  # the first check reads the files: nothing new
    assert used == []
    kubernetes_secret(secrets, {**SECRETS, "passphrase": "pass-2"})
    # The configured paths are symlinks whose own stat never changes.
    assert os.lstat(secrets / "passphrase").st_ino == os.lstat(secrets / "passphrase").st_ino
    with caplog.at_level(logging.INFO, logger="okx_loan_exporter.key_rotation"):
        assert watcher.check() is True
    assert used == [Credentials("key-0123456789", "secret-0123456789", "pass-2")]
    assert "accounts[0].passphrase_file changed on disk" in caplog.text
    assert "pass-2" not in caplog.text and "pass-1" not in caplog.text
    assert watcher.check() is False  # nothing changed since


def test_a_swap_to_the_same_values_changes_nothing(account_files):
    secrets, config = account_files
    watcher, used = watch(config)
    watcher.check()
    kubernetes_secret(secrets, SECRETS)  # new inodes, same content
    assert watcher.check() is False
    assert used == []


def test_a_file_rewritten_in_place_is_seen(tmp_path):
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("pass-1", encoding="utf-8")
    config_file = tmp_path / "config.yml"
    config_file.write_text(
        "accounts:\n  - {name: main, api_key: k-0123456789, secret_key: s-0123456789,"
        f" passphrase_file: {passphrase}}}\n",
        encoding="utf-8",
    )
    watcher, used = watch(load_config(str(config_file)))
    watcher.check()
    stat = os.stat(passphrase)
    passphrase.write_text("pass-9", encoding="utf-8")  # same size, same inode
    os.utime(passphrase, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert watcher.check() is True
    assert used[-1].passphrase == "pass-9"
    assert used[-1].api_key == "k-0123456789"


@pytest.mark.parametrize("breakage", ["empty", "removed", "a directory", "two lines"])
def test_a_broken_file_keeps_the_value_in_use_and_is_logged_once(account_files, caplog, breakage):
    secrets, config = account_files
    watcher, used = watch(config)
    watcher.check()
    if breakage == "empty":
        kubernetes_secret(secrets, {**SECRETS, "passphrase": "\n"})
    elif breakage == "two lines":  # refused as at start, without showing what it holds
        kubernetes_secret(secrets, {**SECRETS, "passphrase": "pass-NEW-x\nsecond-line"})
    elif breakage == "removed":
        os.unlink(secrets / "..data" / "passphrase")
    else:  # unreadable even for root, who may read any file
        os.unlink(secrets / "..data" / "passphrase")
        os.mkdir(secrets / "..data" / "passphrase")
    with caplog.at_level(logging.WARNING, logger="okx_loan_exporter.key_rotation"):
        for _ in range(3):
            assert watcher.check() is False
    assert used == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "account main: keeping the passphrase in use" in warnings[0]
    assert "accounts[0].passphrase_file" in warnings[0]
    assert str(secrets) not in warnings[0]
    assert "pass-1" not in caplog.text and "pass-NEW" not in caplog.text
    # Fixed again: the new value is used.
    kubernetes_secret(secrets, {**SECRETS, "passphrase": "pass-3"})
    assert watcher.check() is True
    assert used[-1].passphrase == "pass-3"


def test_environment_file_variables_rotate_too(tmp_path, monkeypatch):
    for secret, var in (
        ("api_key", "OKX_API_KEY"),
        ("secret_key", "OKX_SECRET_KEY"),
        ("passphrase", "OKX_PASSPHRASE"),
    ):
        (tmp_path / secret).write_text(SECRETS[secret], encoding="utf-8")
        monkeypatch.setenv(f"{var}_FILE", str(tmp_path / secret))
    config = load_config(None)
    watcher, used = watch(config)
    watcher.check()
    (tmp_path / "passphrase.new").write_text("pass-env", encoding="utf-8")
    os.replace(tmp_path / "passphrase.new", tmp_path / "passphrase")
    assert watcher.check() is True
    assert used[-1].passphrase == "pass-env"
