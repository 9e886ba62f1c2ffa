"""Tests for config.py: tables of good and bad configs (each bad one with the message it must give),
the environment fallback, the permission warning, and that no secret ever shows in a message."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from okx_loan_exporter import secret_sources
from okx_loan_exporter.config import (
    DEFAULT_BASE_URL,
    MIN_CACHE_TTL,
    REGIONS,
    AccountConfig,
    ConfigError,
    ExporterConfig,
    config_from_dict,
    load_config,
    parse_duration,
)
from okx_loan_exporter.yamlload import ConfigErrors

# Distinctive fake secrets: if any of them shows up in a message or a repr, the test fails.
API_KEY = "AKfake-7d3c9b1e-api"
SECRET_KEY = "SKfake-0c8e5a22-secret"
PASSPHRASE = "PPfake-Zq9x-pass"
API_KEY_2 = "AKfake-second-4411"
ENV_API_KEY = "AKfake-from-env-9931"
ENV_SECRET_KEY = "SKfake-from-env-5520"
ENV_PASSPHRASE = "PPfake-from-env-7788"
ALL_SECRETS = (
    API_KEY,
    SECRET_KEY,
    PASSPHRASE,
    API_KEY_2,
    ENV_API_KEY,
    ENV_SECRET_KEY,
    ENV_PASSPHRASE,
)

# An account whose secrets come from files; $K, $S, $P, $K2 become absolute paths.
FILES = "    api_key_file: $K\n    secret_key_file: $S\n    passphrase_file: $P\n"
MAIN = "  - name: main\n" + FILES
ACCOUNTS = "accounts:\n" + MAIN


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    """Secret files with surrounding whitespace, as editors and `echo` leave them."""
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "api_key").write_text(f"  {API_KEY}\n")
    (directory / "secret_key").write_text(f"{SECRET_KEY}\r\n\n")
    (directory / "passphrase").write_text(f"\t{PASSPHRASE} \n")
    (directory / "api_key_2").write_text(API_KEY_2)
    return directory


def write_config(tmp_path: Path, secrets_dir: Path, text: str, mode: int = 0o600) -> Path:
    for token, name in (("$K2", "api_key_2"), ("$K", "api_key"), ("$S", "secret_key")):
        text = text.replace(token, str(secrets_dir / name))
    text = text.replace("$P", str(secrets_dir / "passphrase"))
    path = tmp_path / "config.yml"
    path.write_text(text)
    path.chmod(mode)
    return path


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in ALL_SECRETS:
            assert secret not in text, f"secret leaked into: {text}"


def assert_well_formed(error: ConfigError, source: str, key: str) -> None:
    """One line per problem naming the source, the key and the fix, and no secret anywhere;
    ``key`` is the first problem's."""
    assert str(error).splitlines() == list(error.lines)
    for one in error.errors if isinstance(error, ConfigErrors) else (error,):
        message = str(one)
        assert "\n" not in message
        assert message.startswith(f"{source}: ")
        if one.key:
            assert message == f"{source}: {one.key}: {one.problem}; {one.fix}"
        else:
            assert message == f"{source}: {one.problem}; {one.fix}"
        assert one.fix and one.fix in message
        assert_no_secret(message, repr(one), *map(str, one.args))
    assert error.key == key
    assert_no_secret(str(error), repr(error), *map(str, error.args))


# --- good config files ---------------------------------------------------------------------------

GOOD_FILES = [
    pytest.param(
        ACCOUNTS,
        {},
        {
            "cache_ttl": 10.0,
            "max_stale": 300.0,
            "timeout": 5.0,
            "accounts": [("main", API_KEY, SECRET_KEY, PASSPHRASE, False, DEFAULT_BASE_URL)],
        },
        id="defaults-and-stripped-secret-files",
    ),
    pytest.param(
        "cache_ttl: 500ms\nmax_stale: 1m30s\ntimeout: 2.5\n" + ACCOUNTS,
        {},
        {"cache_ttl": 0.5, "max_stale": 90.0, "timeout": 2.5},
        id="durations-ms-compound-float",
    ),
    pytest.param(
        "cache_ttl: 5m\nmax_stale: 1h\ntimeout: 7\n" + ACCOUNTS,
        {},
        {"cache_ttl": 300.0, "max_stale": 3600.0, "timeout": 7.0},
        id="durations-minutes-hours-int",
    ),
    pytest.param(
        'cache_ttl: "30"\nmax_stale: 1h2m3s\ntimeout: 1.5s\n' + ACCOUNTS,
        {},
        {"cache_ttl": 30.0, "max_stale": 3723.0, "timeout": 1.5},
        id="durations-number-string-and-three-units",
    ),
    pytest.param(
        "region: eea\n" + ACCOUNTS,
        {},
        {"accounts": [("main", API_KEY, SECRET_KEY, PASSPHRASE, False, "https://eea.okx.com")]},
        id="top-level-region",
    ),
    pytest.param(
        "region: US\n" + ACCOUNTS,
        {},
        {"accounts": [("main", API_KEY, SECRET_KEY, PASSPHRASE, False, "https://app.okx.com")]},
        id="region-case-insensitive",
    ),
    pytest.param(
        "base_url: http://127.0.0.1:8080/okx/\n" + ACCOUNTS,
        {},
        {
            "accounts": [
                ("main", API_KEY, SECRET_KEY, PASSPHRASE, False, "http://127.0.0.1:8080/okx")
            ]
        },
        id="base-url-trailing-slash-stripped",
    ),
    pytest.param(
        "region: aws\naccounts:\n"
        "  - name: eu\n    base_url: https://eea.okx.com/\n" + FILES + "    demo: true\n"
        "  - name: us_2\n    region: us\n"
        "    api_key_file: $K2\n    secret_key_file: $S\n    passphrase_file: $P\n"
        "  - name: plain-3\n    api_key: other-key\n    secret_key: s\n    passphrase: p\n",
        {},
        {
            "accounts": [
                ("eu", API_KEY, SECRET_KEY, PASSPHRASE, True, "https://eea.okx.com"),
                ("us_2", API_KEY_2, SECRET_KEY, PASSPHRASE, False, "https://app.okx.com"),
                ("plain-3", "other-key", "s", "p", False, "https://aws.okx.com"),
            ]
        },
        id="per-account-overrides-and-inheritance",
    ),
    pytest.param(
        "accounts:\n  - name: main\n"
        f'    api_key: "{API_KEY}"\n    secret_key: " {SECRET_KEY} "\n'
        f"    passphrase: '{PASSPHRASE}'\n    demo: false\n",
        {},
        {"accounts": [("main", API_KEY, SECRET_KEY, PASSPHRASE, False, DEFAULT_BASE_URL)]},
        id="inline-secrets",
    ),
    pytest.param(
        "accounts:\n  - name: main\n"
        "    api_key_env: MY_KEY\n    secret_key_env: MY_SECRET\n    passphrase_env: MY_PASS\n",
        {"MY_KEY": ENV_API_KEY, "MY_SECRET": f"{ENV_SECRET_KEY}\n", "MY_PASS": ENV_PASSPHRASE},
        {
            "accounts": [
                ("main", ENV_API_KEY, ENV_SECRET_KEY, ENV_PASSPHRASE, False, DEFAULT_BASE_URL)
            ]
        },
        id="secrets-from-env-references",
    ),
    pytest.param(
        "accounts:\n  - name: mixed\n"
        "    api_key_env: MY_KEY\n    secret_key_file: $S\n    passphrase: inline-pass\n",
        {"MY_KEY": ENV_API_KEY},
        {"accounts": [("mixed", ENV_API_KEY, SECRET_KEY, "inline-pass", False, DEFAULT_BASE_URL)]},
        id="one-secret-from-each-source",
    ),
]


@pytest.mark.parametrize(("text", "environ", "expected"), GOOD_FILES)
def test_good_config_files(tmp_path, secrets_dir, text, environ, expected):
    path = write_config(tmp_path, secrets_dir, text)
    config = load_config(str(path), environ)
    assert isinstance(config, ExporterConfig)
    assert config.source == str(path)
    assert config.warnings == ()
    for attribute in ("cache_ttl", "max_stale", "timeout"):
        if attribute in expected:
            assert getattr(config, attribute) == pytest.approx(expected[attribute])
    if "accounts" in expected:
        got = [
            (a.name, a.api_key, a.secret_key, a.passphrase, a.demo, a.base_url)
            for a in config.accounts
        ]
        assert got == expected["accounts"]
    assert_no_secret(repr(config), str(config), *map(repr, config.accounts))


def test_relative_secret_files_are_read_from_the_config_files_directory(
    tmp_path, secrets_dir, monkeypatch
):
    path = tmp_path / "config.yml"
    path.write_text(
        "accounts:\n  - name: main\n    api_key_file: secrets/api_key\n"
        "    secret_key_file: ./secrets/secret_key\n    passphrase_file: secrets/passphrase\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    account = load_config(str(path), {}).accounts[0]
    assert (account.api_key, account.secret_key, account.passphrase) == (
        API_KEY,
        SECRET_KEY,
        PASSPHRASE,
    )


def test_regions_mapping_is_exported():
    assert REGIONS == {
        "global": "https://www.okx.com",
        "aws": "https://aws.okx.com",
        "eea": "https://eea.okx.com",
        "us": "https://app.okx.com",
    }
    assert REGIONS["global"] == DEFAULT_BASE_URL
    assert MIN_CACHE_TTL == 0.5


def test_environ_defaults_to_os_environ(tmp_path, secrets_dir, monkeypatch):
    monkeypatch.setenv("OKX_TEST_KEY_VAR", ENV_API_KEY)
    path = write_config(
        tmp_path,
        secrets_dir,
        "accounts:\n  - name: main\n    api_key_env: OKX_TEST_KEY_VAR\n"
        "    secret_key_file: $S\n    passphrase_file: $P\n",
    )
    assert load_config(str(path)).accounts[0].api_key == ENV_API_KEY


def test_config_from_dict_validates_like_a_file(secrets_dir):
    data = {
        "cache_ttl": "2s",
        "region": "eea",
        "accounts": [
            {"name": "demo", "api_key": "k", "secret_key": "s", "passphrase": "p", "demo": True}
        ],
    }
    config = config_from_dict(data, "demo", {})
    assert config.source == "demo"
    assert config.cache_ttl == 2.0
    assert config.accounts == (
        AccountConfig("demo", "k", "s", "p", demo=True, base_url="https://eea.okx.com"),
    )
    assert config.warnings == ()  # no file, so no permission warning

    with pytest.raises(ConfigError) as caught:
        config_from_dict({"accounts": [{"name": "x y"}]}, "demo", {})
    assert str(caught.value).startswith("demo: accounts[0].name: 'x y' is not a valid account name")


# --- bad config files ----------------------------------------------------------------------------

BAD_FILES = [
    # (text, environ, key, substring of the problem, substring of the fix)
    pytest.param(
        "accounts: [\n",
        {},
        "",
        "invalid YAML at line 2, column 1",
        "fix the YAML syntax",
        id="yaml-syntax",
    ),
    pytest.param("", {}, "", "the file is empty", "add an accounts: list", id="empty-file"),
    pytest.param("# only a comment\n", {}, "", "the file is empty", "accounts:", id="only-comment"),
    pytest.param(
        "- name: main\n", {}, "", "top level must be a mapping", "accounts:", id="top-level-list"
    ),
    pytest.param(
        "just text\n",
        {},
        "",
        "top level must be a mapping of keys, got a string",
        "accounts:",
        id="top-scalar",
    ),
    pytest.param(
        "cache_tll: 10s\n" + ACCOUNTS,
        {},
        "cache_tll",
        "unknown key 'cache_tll'",
        "did you mean 'cache_ttl'?",
        id="unknown-top-key-typo",
    ),
    pytest.param(
        "acounts:\n" + MAIN,
        {},
        "acounts",
        "unknown key 'acounts'",
        "did you mean 'accounts'?",
        id="unknown-key-reported-before-missing-accounts",
    ),
    pytest.param(
        "zzz: 1\n" + ACCOUNTS,
        {},
        "zzz",
        "unknown key 'zzz'",
        "remove it; valid keys here are cache_ttl, max_stale",
        id="unknown-key-no-suggestion",
    ),
    pytest.param(
        "api_key_file: /x\n" + ACCOUNTS,
        {},
        "api_key_file",
        "unknown key",
        "move it into an entry of the accounts: list",
        id="account-key-at-top-level",
    ),
    pytest.param(
        ACCOUNTS + "    api_key_fle: /x\n",
        {},
        "accounts[0].api_key_fle",
        "unknown key 'api_key_fle'",
        "did you mean 'api_key_file'?",
        id="unknown-account-key-typo",
    ),
    pytest.param(
        ACCOUNTS + "    cache_ttl: 10s\n",
        {},
        "accounts[0].cache_ttl",
        "unknown key",
        "move it to the top level",
        id="top-key-in-account",
    ),
    pytest.param(
        "cache_ttl: 10s\n", {}, "accounts", "missing", "add an accounts: list", id="no-accounts"
    ),
    pytest.param("accounts: []\n", {}, "accounts", "is empty", "add at least one", id="empty"),
    pytest.param("accounts:\n", {}, "accounts", "is empty", "add at least one", id="null"),
    pytest.param(
        "accounts:\n  name: main\n",
        {},
        "accounts",
        "must be a list of accounts, got a mapping",
        "'- name: ...'",
        id="accounts-mapping",
    ),
    pytest.param(
        "accounts: main\n",
        {},
        "accounts",
        "must be a list of accounts, got a string",
        "list item",
        id="accounts-string",
    ),
    pytest.param(
        "accounts:\n  - main\n",
        {},
        "accounts[0]",
        "must be a mapping, got a string",
        "- name: ...",
        id="account-not-mapping",
    ),
    pytest.param(
        "accounts:\n  -" + FILES[3:],
        {},
        "accounts[0].name",
        "missing",
        "give the account a name",
        id="name-missing",
    ),
    pytest.param(
        "accounts:\n  - name: my account\n" + FILES,
        {},
        "accounts[0].name",
        "'my account' is not a valid account name",
        "letters, digits, '_' and '-'",
        id="name-with-space",
    ),
    pytest.param(
        "accounts:\n  - name: 123\n" + FILES,
        {},
        "accounts[0].name",
        "a number is not a valid account name",
        "quote names",
        id="name-number",
    ),
    pytest.param(
        "accounts:\n  - name: main\n" + FILES + "  - name: main\n" + FILES,
        {},
        "accounts[1].name",
        "'main' is already the name of accounts[0]",
        "unique name",
        id="name-duplicate",
    ),
    pytest.param(
        "accounts:\n  - name: main\n    secret_key_file: $S\n    passphrase_file: $P\n",
        {},
        "accounts[0].api_key",
        "missing",
        "api_key_file (recommended), api_key_env or api_key",
        id="secret-missing",
    ),
    pytest.param(
        ACCOUNTS + "    secret_key_env: SOME_VAR\n",
        {"SOME_VAR": "x"},
        "accounts[0].secret_key_env",
        "conflicts with accounts[0].secret_key_file",
        "keep exactly one of secret_key, secret_key_file, secret_key_env",
        id="secret-file-and-env",
    ),
    pytest.param(
        ACCOUNTS + f"    passphrase: {PASSPHRASE}\n",
        {},
        "accounts[0].passphrase_file",
        "conflicts with accounts[0].passphrase",
        "keep exactly one",
        id="secret-inline-and-file",
    ),
    pytest.param(
        "accounts:\n  - name: main\n    api_key_file: /nonexistent/okx/api_key\n"
        "    secret_key_file: $S\n    passphrase_file: $P\n",
        {},
        "accounts[0].api_key_file",
        "cannot read the file named by accounts[0].api_key_file: No such file or directory",
        "check the path, and that the exporter's user may read the file",
        id="secret-file-missing",
    ),
    pytest.param(
        "accounts:\n  - name: main\n    api_key_file: /\n"
        "    secret_key_file: $S\n    passphrase_file: $P\n",
        {},
        "accounts[0].api_key_file",
        "cannot read the file named by accounts[0].api_key_file: Is a directory",
        "may read the file",
        id="secret-file-is-directory",
    ),
    pytest.param(
        "accounts:\n  - name: main\n    api_key_file: 42\n"
        "    secret_key_file: $S\n    passphrase_file: $P\n",
        {},
        "accounts[0].api_key_file",
        "must be the path of a file holding the API key, got a number",
        "give the file's path",
        id="secret-file-not-a-path",
    ),
    pytest.param(
        "accounts:\n  - name: main\n    api_key_file: $K\n    secret_key_file: $S\n"
        "    passphrase_env: OKX_PASS_VAR\n",
        {},
        "accounts[0].passphrase_env",
        "names an environment variable that is not set",
        "set that variable in the exporter's environment (the key holds the variable's NAME,"
        " not the secret), or use passphrase_file",
        id="env-unset",
    ),
    pytest.param(
        "accounts:\n  - name: main\n    api_key_file: $K\n    secret_key_file: $S\n"
        "    passphrase_env: OKX_PASS_VAR\n",
        {"OKX_PASS_VAR": "  \n"},
        "accounts[0].passphrase_env",
        "the environment variable named by accounts[0].passphrase_env is empty",
        "set that variable to the passphrase",
        id="env-empty",
    ),
    pytest.param(
        "accounts:\n  - name: main\n    api_key_file: $K\n    secret_key_file: $S\n"
        "    passphrase_env: 1-bad name\n",
        {},
        "accounts[0].passphrase_env",
        "not a valid environment variable name (letters, digits, _)",
        "put the variable's NAME here, not the secret, e.g. OKX_PASSPHRASE",
        id="env-bad-name",
    ),
    pytest.param(
        "accounts:\n  - name: main\n    api_key_file: $K\n    secret_key_file: $S\n"
        "    passphrase: 012345\n",
        {},
        "accounts[0].passphrase",
        "must be a string, got a number",
        'put the passphrase in quotes (passphrase: "...")',
        id="inline-secret-number",
    ),
    pytest.param(
        "accounts:\n  - name: main\n    api_key_file: $K\n    secret_key_file: $S\n"
        "    passphrase:\n",
        {},
        "accounts[0].passphrase",
        "must be a string, got null",
        "in quotes",
        id="inline-secret-null",
    ),
    pytest.param(
        "accounts:\n  - name: main\n    api_key_file: $K\n    secret_key_file: $S\n"
        f"    passphrase: [{PASSPHRASE}]\n",
        {},
        "accounts[0].passphrase",
        "must be a string, got a list",
        "in quotes",
        id="inline-secret-list",
    ),
    pytest.param(
        "accounts:\n  - name: main\n    api_key_file: $K\n    secret_key_file: $S\n"
        '    passphrase: "  "\n',
        {},
        "accounts[0].passphrase",
        "the value is empty",
        "put the passphrase there",
        id="inline-secret-blank",
    ),
    pytest.param(
        ACCOUNTS + '    demo: "yes"\n',
        {},
        "accounts[0].demo",
        "must be true or false, got 'yes'",
        "demo: true for a demo-trading key",
        id="demo-string",
    ),
    pytest.param(
        ACCOUNTS + "    demo: 1\n",
        {},
        "accounts[0].demo",
        "must be true or false, got a number",
        "demo: true",
        id="demo-number",
    ),
    pytest.param(
        "cache_ttl: 10x\n" + ACCOUNTS,
        {},
        "cache_ttl",
        "'10x' is not a duration",
        "500ms, 10s, 5m, 1h, 1m30s",
        id="duration-bad-unit",
    ),
    pytest.param(
        "max_stale: 30s5m\n" + ACCOUNTS,
        {},
        "max_stale",
        "'30s5m' is not a duration",
        "1m30s",
        id="duration-units-out-of-order",
    ),
    pytest.param(
        "timeout: -5s\n" + ACCOUNTS,
        {},
        "timeout",
        "'-5s' is not a duration",
        "500ms",
        id="duration-negative-string",
    ),
    pytest.param(
        "cache_ttl: -1\n" + ACCOUNTS,
        {},
        "cache_ttl",
        "-1 is not a duration",
        "non-negative",
        id="duration-negative-number",
    ),
    pytest.param(
        "cache_ttl: .inf\n" + ACCOUNTS,
        {},
        "cache_ttl",
        "inf is not a duration",
        "finite",
        id="duration-infinite",
    ),
    pytest.param(
        "cache_ttl: true\n" + ACCOUNTS,
        {},
        "cache_ttl",
        "must be a duration, got a boolean",
        "500ms",
        id="duration-boolean",
    ),
    pytest.param(
        "cache_ttl: [10s]\n" + ACCOUNTS,
        {},
        "cache_ttl",
        "must be a duration, got a list",
        "500ms",
        id="duration-list",
    ),
    pytest.param(
        'cache_ttl: ""\n' + ACCOUNTS,
        {},
        "cache_ttl",
        "'' is not a duration",
        "500ms",
        id="duration-empty-string",
    ),
    pytest.param(
        "cache_ttl: 200ms\n" + ACCOUNTS,
        {},
        "cache_ttl",
        "0.2s is too short",
        "raise cache_ttl to at least 0.5s; OKX allows 5 requests per 2 s",
        id="cache-ttl-too-short",
    ),
    pytest.param(
        "cache_ttl: 0\n" + ACCOUNTS,
        {},
        "cache_ttl",
        "0s is too short",
        "at least 0.5s",
        id="cache-ttl-zero",
    ),
    pytest.param(
        "price_interval: 100ms\n" + ACCOUNTS,
        {},
        "price_interval",
        "0.1s is too short",
        "set price_interval to 0s (no index prices) or at least 0.5s; OKX allows 20",
        id="price-interval-too-short",
    ),
    pytest.param(
        "price_interval: soon\n" + ACCOUNTS,
        {},
        "price_interval",
        "'soon' is not a duration",
        "500ms",
        id="price-interval-not-a-duration",
    ),
    pytest.param(
        "timeout: 0s\n" + ACCOUNTS,
        {},
        "timeout",
        "0s is out of range",
        "set timeout above 0 and at most 60s",
        id="timeout-zero",
    ),
    pytest.param(
        "history_interval: 500ms\n" + ACCOUNTS,
        {},
        "history_interval",
        "0.5s is too short",
        "set history_interval to 0s (off) or at least 1s, e.g. 60s",
        id="history-interval-too-short",
    ),
    pytest.param(
        "headroom_interval: soon\n" + ACCOUNTS,
        {},
        "headroom_interval",
        "'soon' is not a duration",
        "500ms",
        id="headroom-interval-bad",
    ),
    pytest.param(
        "timeout: 61\n" + ACCOUNTS,
        {},
        "timeout",
        "61s is out of range",
        "at most 60s",
        id="timeout-too-long",
    ),
    pytest.param(
        "cache_ttl: 30s\nmax_stale: 10s\n" + ACCOUNTS,
        {},
        "max_stale",
        "10s is shorter than cache_ttl (30s)",
        "raise max_stale to at least cache_ttl",
        id="max-stale-shorter-than-ttl",
    ),
    pytest.param(
        "cache_ttl: 10m\n" + ACCOUNTS,
        {},
        "max_stale",
        "300s (the default) is shorter than cache_ttl (600s)",
        "raise max_stale",
        id="default-max-stale-shorter-than-ttl",
    ),
    pytest.param(
        "base_url: https://www.okx.com\nregion: eea\n" + ACCOUNTS,
        {},
        "region",
        "conflicts with base_url",
        "keep only one of base_url and region",
        id="base-url-and-region-top",
    ),
    pytest.param(
        ACCOUNTS + "    base_url: https://eea.okx.com\n    region: eea\n",
        {},
        "accounts[0].region",
        "conflicts with accounts[0].base_url",
        "keep only one",
        id="base-url-and-region-account",
    ),
    pytest.param(
        "region: mars\n" + ACCOUNTS,
        {},
        "region",
        "'mars' is not a region",
        "use one of global, aws, eea, us",
        id="unknown-region",
    ),
    pytest.param(
        ACCOUNTS + "    base_url: ftp://www.okx.com\n",
        {},
        "accounts[0].base_url",
        "'ftp://www.okx.com' is not an http:// or https:// URL with a host",
        "write it like https://www.okx.com",
        id="base-url-scheme",
    ),
    pytest.param(
        "base_url: www.okx.com\n" + ACCOUNTS,
        {},
        "base_url",
        "is not an http:// or https:// URL",
        "https://www.okx.com",
        id="base-url-no-scheme",
    ),
    pytest.param(
        "base_url: https://\n" + ACCOUNTS,
        {},
        "base_url",
        "URL with a host",
        "https://www.okx.com",
        id="base-url-no-host",
    ),
    pytest.param(
        "base_url: https://www.okx.com/?x=1\n" + ACCOUNTS,
        {},
        "base_url",
        "has a query or fragment",
        "scheme, host",
        id="base-url-query",
    ),
    pytest.param(
        "base_url: 'https://www.okx.com/#top'\n" + ACCOUNTS,
        {},
        "base_url",
        "has a query or fragment",
        "scheme, host",
        id="base-url-fragment",
    ),
    pytest.param(
        "base_url: https://www.okx.com:99999\n" + ACCOUNTS,
        {},
        "base_url",
        "is not a valid URL",
        "https://www.okx.com",
        id="base-url-bad-port",
    ),
    pytest.param(
        f"base_url: https://user:{PASSPHRASE}@www.okx.com\n" + ACCOUNTS,
        {},
        "base_url",
        "must not contain user:password@",
        "remove the credentials",
        id="base-url-credentials-not-echoed",
    ),
    pytest.param(
        "base_url: 8080\n" + ACCOUNTS,
        {},
        "base_url",
        "must be a URL, got a number",
        "https://www.okx.com",
        id="base-url-number",
    ),
    pytest.param(
        "accounts:\n  - name: a\n" + FILES + "  - name: b\n" + FILES,
        {},
        "accounts[1].api_key_file",
        "account 'b' uses the same API key as account 'a'",
        "give each account its own API key",
        id="shared-api-key",
    ),
    pytest.param(
        "accounts:\n  - name: a\n" + FILES + "  - name: b\n"
        f"    api_key: {API_KEY}\n    secret_key: x\n    passphrase: y\n",
        {},
        "accounts[1].api_key",
        "account 'b' uses the same API key as account 'a'",
        "its own API key",
        id="shared-api-key-file-vs-inline",
    ),
]


@pytest.mark.parametrize(("text", "environ", "key", "problem", "fix"), BAD_FILES)
def test_bad_config_files(tmp_path, secrets_dir, text, environ, key, problem, fix):
    path = write_config(tmp_path, secrets_dir, text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ)
    error = caught.value
    assert error.source == str(path)
    assert error.key == key
    assert problem in error.problem
    assert fix in error.fix
    assert_well_formed(error, str(path), key)


def test_inline_secret_of_wrong_type_is_not_echoed(tmp_path, secrets_dir):
    # YAML 1.1 reads 012345 as the octal number 5349: neither form may appear.
    text = "accounts:\n  - name: main\n    api_key_file: $K\n    secret_key_file: $S\n"
    path = write_config(tmp_path, secrets_dir, text + "    passphrase: 012345\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    message = str(caught.value)
    assert caught.value.key == "accounts[0].passphrase"
    assert "012345" not in message and "5349" not in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(" \n\n", "is empty", id="blank"),
        pytest.param("", "is empty", id="zero-bytes"),
        pytest.param(f"{SECRET_KEY}\n{PASSPHRASE}\n", "holds a line break", id="two-lines"),
        pytest.param(b"\xff\xfe" + SECRET_KEY.encode(), "is not UTF-8 text", id="not-utf8"),
        pytest.param("x" * 70_000, "is larger than 64 KiB", id="huge"),
    ],
)
def test_bad_secret_file_contents_name_the_key_not_the_path_or_content(
    tmp_path, secrets_dir, content, problem
):
    secret_file = secrets_dir / "secret_key"
    if isinstance(content, bytes):
        secret_file.write_bytes(content)
    else:
        secret_file.write_text(content)
    path = write_config(tmp_path, secrets_dir, ACCOUNTS)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    error = caught.value
    assert error.key == "accounts[0].secret_key_file"
    assert error.problem.startswith("the file named by accounts[0].secret_key_file ")
    assert problem in error.problem
    assert str(secrets_dir) not in str(error)  # the path is not shown
    assert "xxxxxxxx" not in str(error)
    assert_well_formed(error, str(path), "accounts[0].secret_key_file")


def test_unreadable_secret_file_says_permission_denied(tmp_path, secrets_dir, monkeypatch):
    unreadable = secrets_dir / "passphrase"
    unreadable.chmod(0)
    if os.geteuid() == 0:  # root reads files whatever their mode: refuse the way the OS would
        real_open = open

        def refusing_open(file, *args, **kwargs):
            if str(file) == str(unreadable):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(secret_sources, "open", refusing_open, raising=False)
    path = write_config(tmp_path, secrets_dir, ACCOUNTS)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    error = caught.value
    assert error.key == "accounts[0].passphrase_file"
    assert (
        error.problem
        == "cannot read the file named by accounts[0].passphrase_file: Permission denied"
    )
    assert str(secrets_dir) not in str(error)
    assert_well_formed(error, str(path), "accounts[0].passphrase_file")


def test_missing_config_file(tmp_path):
    path = str(tmp_path / "nope.yml")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    error = caught.value
    assert str(error) == (
        f"{path}: cannot read the config file: No such file or directory; check --config.file,"
        " or leave it out to configure from OKX_* environment variables"
    )
    assert error.key == ""


def test_config_path_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="Is a directory"):
        load_config(str(tmp_path), {})


def test_config_file_not_utf8(tmp_path):
    path = tmp_path / "config.yml"
    path.write_bytes(b"accounts:\n  - name: \xff\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 20\)"):
        load_config(str(path), {})


def test_yaml_error_gives_line_and_column_but_not_the_line(tmp_path, secrets_dir):
    text = ACCOUNTS + f'    api_key: "{API_KEY}\n'  # unterminated quote on line 6
    path = write_config(tmp_path, secrets_dir, text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    error = caught.value
    assert "invalid YAML at line" in error.problem
    assert_well_formed(error, str(path), "")

    path.write_text("cache_ttl: 10s\naccounts:\n  - name: a\n   bad: x\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line 4, column 4: "):
        load_config(str(path), {})


# --- what may be a secret in the wrong place is never repeated ------------------------------------

# A secret of letters, digits and '_' is also a valid environment variable name.
NAME_LIKE_SECRET = "PPfake_Zq9x_pass_4471"
ACCOUNT_HEAD = "accounts:\n  - name: main\n    api_key_file: $K\n    secret_key_file: $S\n"


def load_error(
    tmp_path: Path, secrets_dir: Path, text: str, environ: dict[str, str] | None = None
) -> ConfigError:
    path = write_config(tmp_path, secrets_dir, text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ or {})
    return caught.value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param(PASSPHRASE, "not a valid environment variable name", id="not-a-name"),
        pytest.param(NAME_LIKE_SECRET, "names an environment variable that is not set", id="unset"),
    ],
)
def test_a_secret_given_as_env_is_not_repeated(tmp_path, secrets_dir, value, problem):
    error = load_error(tmp_path, secrets_dir, ACCOUNT_HEAD + f"    passphrase_env: {value}\n")
    assert error.key == "accounts[0].passphrase_env"
    assert problem in error.problem
    assert "NAME" in error.fix and "not the secret" in error.fix
    assert value not in str(error) and value[:6] not in str(error)
    assert_well_formed(error, str(tmp_path / "config.yml"), error.key)


@pytest.mark.parametrize(
    ("given", "fix"),
    [
        pytest.param(PASSPHRASE, "check the path (a relative path is read from {dir})", id="rel"),
        pytest.param(f"/run/{PASSPHRASE}", "check the path, and that the exporter", id="abs"),
        pytest.param(f"~/{PASSPHRASE}", "check the path, and that the exporter", id="home"),
    ],
)
def test_a_secret_given_as_file_is_not_repeated(tmp_path, secrets_dir, given, fix):
    """A missing file's path may be the secret itself: the key is named, and for a relative
    path the directory it was looked for in (the config file's)."""
    error = load_error(tmp_path, secrets_dir, ACCOUNT_HEAD + f"    passphrase_file: {given}\n")
    assert error.key == "accounts[0].passphrase_file"
    assert error.problem == (
        "cannot read the file named by accounts[0].passphrase_file: No such file or directory"
    )
    assert fix.format(dir=tmp_path) in error.fix
    assert "not the passphrase" in error.fix
    assert PASSPHRASE[:6] not in str(error)
    assert_well_formed(error, str(tmp_path / "config.yml"), error.key)


def test_a_secret_given_as_an_environment_file_is_not_repeated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(None, {**ENV, "OKX_PASSPHRASE": "", "OKX_PASSPHRASE_FILE": ENV_PASSPHRASE})
    error = caught.value
    assert error.key == "OKX_PASSPHRASE_FILE"
    assert f"a relative path is read from {tmp_path}" in error.fix
    assert ENV_PASSPHRASE[:6] not in str(error)
    assert_well_formed(error, "environment", "OKX_PASSPHRASE_FILE")


BROKEN_YAML = [
    # (the passphrase line, or the whole file when it holds no "accounts:"; the problem)
    pytest.param(
        f"*{PASSPHRASE}",
        "at line 5, column 17: a value starts with '*', which YAML reads as an alias",
        id="alias",
    ),
    pytest.param(
        f"!{PASSPHRASE}",
        "at line 5, column 17: a value starts with '!', which YAML reads as a tag",
        id="tag",
    ),
    pytest.param(
        f"!!{PASSPHRASE}",
        "at line 5, column 17: a value starts with '!', which YAML reads as a tag",
        id="tag-standard-handle",
    ),
    pytest.param(
        f"!a!{PASSPHRASE}",
        "at line 5, column 17: a value starts with '!', which YAML reads as a tag",
        id="tag-undefined-handle",
    ),
    pytest.param(
        f"&{PASSPHRASE} x\n    demo: &{PASSPHRASE} true",
        "at line 6, column 11: a value starts with '&', which YAML reads as an anchor",
        id="duplicate-anchor",
    ),
    pytest.param(
        f"*-{PASSPHRASE}",
        "at line 5, column 17: a value starts with '*', which YAML reads as an alias",
        id="alias-with-dash",
    ),
    pytest.param(
        f"@{PASSPHRASE}",
        "at line 5, column 17: a value starts with '@', which YAML reserves",
        id="reserved-at",
    ),
    pytest.param(
        f"`{PASSPHRASE}",
        "at line 5, column 17: a value starts with '`', which YAML reserves",
        id="reserved-backtick",
    ),
    pytest.param(
        f"|{PASSPHRASE}",
        "at line 5, column 17: a value starts with '|', which YAML reads as a block of text",
        id="block-scalar",
    ),
    pytest.param(
        f'"{PASSPHRASE}\\q"',
        "at line 5, column 35: a double-quoted value holds a backslash that starts no valid"
        " escape (use single quotes",
        id="unknown-escape",
    ),
    pytest.param(
        f'"{PASSPHRASE}\n    demo: true',
        "at line 5, column 17: a quoted value starts here and is never closed",
        id="unclosed-quote-points-at-its-start",
    ),
    pytest.param(
        f'\t"{PASSPHRASE}"',
        "at line 5, column 17: a tab character, which YAML does not allow here (use spaces)",
        id="tab",
    ),
    pytest.param(
        f'"{PASSPHRASE}\x07"',
        "at line 5, column 34: a control character or other character YAML does not allow",
        id="control-character",
    ),
    pytest.param(
        f"{PASSPHRASE}: {PASSPHRASE}",
        "at line 5, column 33: a ': ' inside a value, which YAML reads as a key (quote the value)",
        id="colon-space",
    ),
    pytest.param(
        f"{PASSPHRASE}\n---\n{PASSPHRASE}: 1",
        "at line 6, column 1: a second YAML document starts here (a line '---')",
        id="second-document",
    ),
    pytest.param(
        f"%YAML 1.1\n%YAML 1.1\n---\n{PASSPHRASE}: 1\n",
        "at line 2, column 1: a line starts with '%', which YAML reads as a directive",
        id="directive",
    ),
    pytest.param(
        f"[{PASSPHRASE}, {{x: 1}}",
        "at line 6, column 1: the structure breaks here: check the indentation, and the ':' or '-'",
        id="anything-else-by-the-kind-of-error",
    ),
]


def broken_yaml_text(passphrase: str) -> str:
    return (
        passphrase
        if passphrase.startswith("%")
        else ACCOUNT_HEAD + f"    passphrase: {passphrase}\n"
    )


@pytest.mark.parametrize(("passphrase", "problem"), BROKEN_YAML)
def test_yaml_errors_say_where_and_what_without_quoting_the_file(
    tmp_path, secrets_dir, passphrase, problem
):
    text = broken_yaml_text(passphrase)
    error = load_error(tmp_path, secrets_dir, text)
    assert error.problem.startswith("invalid YAML at line ")
    assert problem in error.problem
    assert "fix the YAML syntax there" in error.fix
    assert "quote values that start with * & ! | > % @ `" in error.fix
    assert PASSPHRASE[:6] not in str(error)
    assert_well_formed(error, str(tmp_path / "config.yml"), "")


@pytest.mark.parametrize(("passphrase", "problem"), BROKEN_YAML)
def test_yaml_error_descriptions_do_not_depend_on_pyyaml_wording(
    tmp_path, secrets_dir, monkeypatch, passphrase, problem
):
    """PyYAML may reword its messages: ours come from the error's kind and position only."""
    original = yaml.error.MarkedYAMLError.__init__

    def reworded(self, context=None, context_mark=None, problem=None, problem_mark=None, note=None):
        original(self, context and "reworded", context_mark, problem and "reworded", problem_mark)

    monkeypatch.setattr(yaml.error.MarkedYAMLError, "__init__", reworded)
    text = broken_yaml_text(passphrase)
    assert problem in load_error(tmp_path, secrets_dir, text).problem


@pytest.mark.parametrize(
    ("text", "problem", "fix"),
    [
        pytest.param(
            ACCOUNT_HEAD + "    passphrase: 2024-13-45\n",
            "invalid YAML: a value written like a date or time is impossible",
            'in quotes ("...")',
            id="impossible-date",
        ),
        pytest.param(
            ACCOUNT_HEAD + "    passphrase: 2024-02-30 12:00:00\n",
            "invalid YAML: a value written like a date or time is impossible",
            "in quotes",
            id="impossible-timestamp",
        ),
        pytest.param(
            "cache_ttl: " + "[" * 3000 + "]" * 3000 + "\n" + ACCOUNTS,
            "invalid YAML: lists or mappings nest too deeply",
            "fix the YAML syntax",
            id="deep-nesting",
        ),
    ],
)
def test_yaml_that_pyyaml_cannot_construct_is_a_config_error(
    tmp_path, secrets_dir, text, problem, fix
):
    """Not a traceback: PyYAML lets datetime's ValueError and RecursionError through."""
    error = load_error(tmp_path, secrets_dir, text)
    assert error.problem == problem + (" (e.g. 2024-13-45)" if "date" in problem else "")
    assert fix in error.fix
    assert "2024-02-30" not in str(error)
    assert_well_formed(error, str(tmp_path / "config.yml"), "")


@pytest.mark.parametrize(
    ("line", "key", "problem", "fix"),
    [
        pytest.param(
            "label: x", "accounts[0].label", "unknown key 'label'", "remove it", id="shown"
        ),
        pytest.param(
            f"{PASSPHRASE}: x",
            "accounts[0]",
            "has an unknown key (not shown: it does not look like a setting name",
            "remove it; valid keys here are name, api_key",
            id="secret-as-key",
        ),
        pytest.param(
            f"{PASSPHRASE.upper()}:",
            "accounts[0]",
            "has an unknown key (not shown",
            "remove it",
            id="secret-as-key-without-value",
        ),
        pytest.param(
            "PASSPHRASE_FILE: /x",
            "accounts[0]",
            "has an unknown key (not shown",
            "did you mean 'passphrase_file'?",
            id="upper-case-hidden-but-still-suggested",
        ),
        pytest.param(
            "a" * 41 + ": x", "accounts[0]", "has an unknown key (not shown", "remove it", id="long"
        ),
        pytest.param("12345: x", "accounts[0]", "has an unknown key (not shown", "", id="number"),
    ],
)
def test_unknown_keys_are_shown_only_when_they_look_like_settings(
    tmp_path, secrets_dir, line, key, problem, fix
):
    error = load_error(tmp_path, secrets_dir, ACCOUNTS + f"    {line}\n")
    assert error.key == key
    assert problem in error.problem
    assert fix in error.fix
    assert PASSPHRASE[:6] not in str(error) and "12345" not in str(error)
    assert "a" * 41 not in str(error)
    assert_well_formed(error, str(tmp_path / "config.yml"), key)


def test_an_unknown_top_level_key_that_may_be_a_secret_is_not_shown(tmp_path, secrets_dir):
    error = load_error(tmp_path, secrets_dir, f"{SECRET_KEY}: 1\n" + ACCOUNTS)
    assert error.key == ""
    assert error.problem.startswith("the top level has an unknown key (not shown")
    assert "valid keys here are cache_ttl" in error.fix
    assert_well_formed(error, str(tmp_path / "config.yml"), "")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        pytest.param(
            f"https://www.okx.com/api?token={PASSPHRASE}",
            "has a query or fragment (not shown: it may hold a token)",
            id="query",
        ),
        pytest.param(
            f"'https://www.okx.com/#{PASSPHRASE}'",
            "has a query or fragment (not shown",
            id="fragment",
        ),
        pytest.param(
            f"ftp://www.okx.com/{PASSPHRASE}?k={PASSPHRASE}",
            "'ftp://www.okx.com' is not an http:// or https:// URL with a host",
            id="bad-scheme-shows-only-scheme-and-host",
        ),
        pytest.param(
            f"user:{PASSPHRASE}@www.okx.com",
            "is not an http:// or https:// URL with a host",
            id="credentials-without-scheme",
        ),
    ],
)
def test_base_url_errors_show_at_most_scheme_and_host(tmp_path, secrets_dir, url, problem):
    error = load_error(tmp_path, secrets_dir, f"base_url: {url}\n" + ACCOUNTS)
    assert error.key == "base_url"
    assert problem in error.problem
    assert PASSPHRASE[:6] not in str(error)
    assert_well_formed(error, str(tmp_path / "config.yml"), "base_url")


# --- the permission warning ----------------------------------------------------------------------

INLINE = (
    "accounts:\n  - name: main\n    api_key_file: $K\n"
    f"    secret_key: {SECRET_KEY}\n    passphrase: {PASSPHRASE}\n"
)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_inline_secrets_in_a_group_readable_file_give_a_warning(tmp_path, secrets_dir, mode):
    path = write_config(tmp_path, secrets_dir, INLINE, mode=mode)
    config = load_config(str(path), {})
    assert config.warnings == (
        f"{path}: holds inline secrets (accounts[0].secret_key, accounts[0].passphrase) and is"
        f" readable by group/others (mode {mode:04o}): chmod 600 it, or move the secrets to"
        " *_file",
    )
    assert config.accounts[0].secret_key == SECRET_KEY
    assert_no_secret(*config.warnings)


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        pytest.param(INLINE, 0o600, id="inline-secrets-private-file"),
        pytest.param(INLINE, 0o400, id="inline-secrets-read-only-owner"),
        pytest.param(ACCOUNTS, 0o644, id="file-secrets-world-readable-file"),
    ],
)
def test_no_warning_when_private_or_without_inline_secrets(tmp_path, secrets_dir, text, mode):
    path = write_config(tmp_path, secrets_dir, text, mode=mode)
    assert load_config(str(path), {}).warnings == ()
    assert stat.S_IMODE(path.stat().st_mode) == mode


# --- the environment -----------------------------------------------------------------------------

ENV = {
    "OKX_API_KEY": ENV_API_KEY,
    "OKX_SECRET_KEY": ENV_SECRET_KEY,
    "OKX_PASSPHRASE": ENV_PASSPHRASE,
}


def test_environment_defaults():
    config = load_config(None, ENV)
    assert config.source == "environment"
    assert (config.cache_ttl, config.max_stale, config.timeout) == (10.0, 300.0, 5.0)
    assert config.accounts == (
        AccountConfig("default", ENV_API_KEY, ENV_SECRET_KEY, ENV_PASSPHRASE),
    )
    assert config.warnings == ()
    assert_no_secret(repr(config))


def test_environment_file_variants_are_read_and_stripped(secrets_dir):
    environ = {
        "OKX_API_KEY_FILE": str(secrets_dir / "api_key"),
        "OKX_SECRET_KEY_FILE": str(secrets_dir / "secret_key"),
        "OKX_PASSPHRASE_FILE": str(secrets_dir / "passphrase"),
        "OKX_API_KEY": "",  # an empty variable, as compose files leave them, does not conflict
    }
    account = load_config(None, environ).accounts[0]
    assert (account.api_key, account.secret_key, account.passphrase) == (
        API_KEY,
        SECRET_KEY,
        PASSPHRASE,
    )


@pytest.mark.parametrize(
    ("value", "demo"),
    [("true", True), ("1", True), ("yes", True), ("TRUE", True), ("false", False),
     ("0", False), ("no", False), ("", False)],
)  # fmt: skip
def test_environment_demo(value, demo):
    assert load_config(None, {**ENV, "OKX_DEMO": value}).accounts[0].demo is demo


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {"base_url": DEFAULT_BASE_URL}),
        ({"OKX_REGION": "aws"}, {"base_url": "https://aws.okx.com"}),
        ({"OKX_BASE_URL": "http://127.0.0.1:9/"}, {"base_url": "http://127.0.0.1:9"}),
        (
            {"OKX_CACHE_TTL": "2s", "OKX_MAX_STALE": "10m", "OKX_TIMEOUT": "3"},
            {"cache_ttl": 2.0, "max_stale": 600.0, "timeout": 3.0},
        ),
        ({"OKX_CACHE_TTL": "0.5"}, {"cache_ttl": 0.5}),
        ({"OKX_CACHE_TTL": "3s"}, {"price_interval": None, "index_price_interval": 3.0}),
        ({"OKX_PRICE_INTERVAL": "1m"}, {"price_interval": 60.0, "index_price_interval": 60.0}),
        ({"OKX_PRICE_INTERVAL": "0s"}, {"index_price_interval": 0.0}),
        (
            {},
            {"history_interval": 60.0, "interest_interval": 600.0, "headroom_interval": 300.0},
        ),
        (
            {
                "OKX_HISTORY_INTERVAL": "0s",
                "OKX_INTEREST_INTERVAL": "1h",
                "OKX_HEADROOM_INTERVAL": "1",
            },
            {"history_interval": 0.0, "interest_interval": 3600.0, "headroom_interval": 1.0},
        ),
    ],
)
def test_environment_options(extra, expected):
    config = load_config(None, {**ENV, **extra})
    for attribute, value in expected.items():
        target = config.accounts[0] if attribute == "base_url" else config
        assert getattr(target, attribute) == value


def test_environment_warns_about_a_misspelt_variable():
    config = load_config(None, {**ENV, "OKX_API_KEYFILE": "/x", "OKX_OTHER_TOOL": "1"})
    assert config.warnings == (
        "environment: OKX_API_KEYFILE: not a variable the exporter reads;"
        " did you mean OKX_API_KEY_FILE?",
    )


BAD_ENVIRONMENTS = [
    pytest.param(
        {},
        "OKX_API_KEY",
        "environment: OKX_API_KEY: missing; set OKX_API_KEY or OKX_API_KEY_FILE,"
        " or pass --config.file",
        id="nothing-set",
    ),
    pytest.param(
        {"OKX_API_KEY": ENV_API_KEY, "OKX_PASSPHRASE": ENV_PASSPHRASE},
        "OKX_SECRET_KEY",
        "environment: OKX_SECRET_KEY: missing; set OKX_SECRET_KEY or OKX_SECRET_KEY_FILE,"
        " or pass --config.file",
        id="secret-key-missing",
    ),
    pytest.param(
        {**ENV, "OKX_API_KEY_FILE": "/run/secrets/okx_api_key"},
        "OKX_API_KEY_FILE",
        "conflicts with OKX_API_KEY; set only one of OKX_API_KEY and OKX_API_KEY_FILE",
        id="inline-and-file",
    ),
    pytest.param(
        {**ENV, "OKX_PASSPHRASE": " "},
        "OKX_PASSPHRASE",
        "is empty; set OKX_PASSPHRASE to the passphrase, or OKX_PASSPHRASE_FILE to its file",
        id="empty",
    ),
    pytest.param(
        {**ENV, "OKX_PASSPHRASE": "", "OKX_PASSPHRASE_FILE": "/nonexistent/pass"},
        "OKX_PASSPHRASE_FILE",
        "OKX_PASSPHRASE_FILE: cannot read the file named by OKX_PASSPHRASE_FILE:"
        " No such file or directory; check the path, and that",
        id="file-missing",
    ),
    pytest.param(
        {**ENV, "OKX_DEMO": "maybe"},
        "OKX_DEMO",
        "'maybe' is not a boolean; set OKX_DEMO to true or false",
        id="demo",
    ),
    pytest.param(
        {**ENV, "OKX_REGION": "eea", "OKX_BASE_URL": "https://eea.okx.com"},
        "OKX_REGION",
        "conflicts with OKX_BASE_URL; keep only one of OKX_BASE_URL and OKX_REGION",
        id="region-and-url",
    ),
    pytest.param(
        {**ENV, "OKX_REGION": "eu"},
        "OKX_REGION",
        "'eu' is not a region; use one of global, aws, eea, us",
        id="bad-region",
    ),
    pytest.param(
        {**ENV, "OKX_BASE_URL": "okx.com"},
        "OKX_BASE_URL",
        "is not an http:// or https:// URL with a host",
        id="bad-url",
    ),
    pytest.param(
        {**ENV, "OKX_CACHE_TTL": "100ms"},
        "OKX_CACHE_TTL",
        "raise OKX_CACHE_TTL to at least 0.5s; OKX allows 5 requests per 2 s",
        id="ttl-short",
    ),
    pytest.param(
        {**ENV, "OKX_CACHE_TTL": "ten"},
        "OKX_CACHE_TTL",
        "'ten' is not a duration",
        id="ttl-bad",
    ),
    pytest.param(
        {**ENV, "OKX_INTEREST_INTERVAL": "0.2"},
        "OKX_INTEREST_INTERVAL",
        "0.2s is too short; set OKX_INTEREST_INTERVAL to 0s (off) or at least 1s, e.g. 600s",
        id="interest-interval-short",
    ),
    pytest.param(
        {**ENV, "OKX_TIMEOUT": "2m"},
        "OKX_TIMEOUT",
        "120s is out of range; set OKX_TIMEOUT above 0 and at most 60s",
        id="timeout",
    ),
    pytest.param(
        {**ENV, "OKX_CACHE_TTL": "1m", "OKX_MAX_STALE": "30s"},
        "OKX_MAX_STALE",
        "30s is shorter than OKX_CACHE_TTL (60s); raise OKX_MAX_STALE to at least OKX_CACHE_TTL",
        id="stale",
    ),
]


@pytest.mark.parametrize(("environ", "key", "message"), BAD_ENVIRONMENTS)
def test_bad_environments(environ, key, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ)
    error = caught.value
    assert error.source == "environment"
    assert error.key == key
    assert message in str(error)
    assert_well_formed(error, "environment", key)


# --- durations and the error type ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h0m0s500ms", 3600.5),
        ("1.5s", 1.5),
        (" 10s ", 10.0),
        ("0", 0.0),
        ("2.25", 2.25),
        (10, 10.0),
        (0.75, 0.75),
    ],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value, "f.yml", "timeout") == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["", "s", "10 s", "1d", "10S", "1m1m", "ms", "1e3s", "\u0661\u0660s", None, True, [], {}],
)
def test_parse_duration_refuses(value):
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, "f.yml", "a.b")
    assert str(caught.value).startswith("f.yml: a.b: ")
    assert "500ms" in caught.value.fix


def test_config_error_formats():
    error = ConfigError("c.yml", "accounts[0].name", "missing", "add one")
    assert str(error) == "c.yml: accounts[0].name: missing; add one"
    assert (error.source, error.key, error.problem, error.fix) == (
        "c.yml",
        "accounts[0].name",
        "missing",
        "add one",
    )
    whole = ConfigError("c.yml", "", "the file is empty", "add accounts")
    assert str(whole) == "c.yml: the file is empty; add accounts"
    assert str(ConfigError("c.yml", "k", "two\nlines", "fix")) == "c.yml: k: two lines; fix"


def test_reprs_never_show_secrets():
    account = AccountConfig("main", API_KEY, SECRET_KEY, PASSPHRASE, demo=True)
    config = ExporterConfig(accounts=(account,))
    for text in (repr(account), str(account), repr(config), str(config)):
        assert_no_secret(text)
        assert "main" in text


def test_duplicate_key_is_refused_not_silently_replaced(tmp_path):
    config = tmp_path / "dup.yml"
    config.write_text(
        "accounts:\n"
        "  - name: main\n"
        "    api_key: k-1a2b3c4d\n"
        "    api_key: k-9z8y7x6w\n"
        "    secret_key: s-1a2b3c4d\n"
        "    passphrase: p-1a2b3c4d\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(str(config))
    message = str(caught.value)
    assert str(config) in message and "line 4" in message
    assert "'api_key' appears twice" in message
    assert "1a2b3c4d" not in message and "9z8y7x6w" not in message


def test_duplicate_key_that_may_be_a_secret_is_not_shown(tmp_path):
    config = tmp_path / "dup.yml"
    config.write_text("accounts:\n  - name: main\n    Sx-SECRET-42: 1\n    Sx-SECRET-42: 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(config))
    assert "appears twice" in str(caught.value) and "SECRET-42" not in str(caught.value)


# --- every problem at once, and warnings --------------------------------------------------------


def test_every_problem_of_the_file_is_reported_each_with_todays_message(tmp_path, secrets_dir):
    text = (
        "cache_ttl: 0.1s\ntimeout: 90s\nregoin: eea\naccounts:\n"
        + MAIN
        + "    demo: maybe\n"
        + "  - name: main\n    api_key_file: $K\n    secret_key_file: $S\n"
        + f"    passphrase: {PASSPHRASE}\n"
        + "  - name: third\n    api_key_file: nope\n    secret_key_file: $S\n"
        + "    passphrase_file: $P\n"
    )
    path = write_config(tmp_path, secrets_dir, text)
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(path), {})
    error = caught.value
    assert [(one.key, one.problem) for one in error.errors] == [
        ("regoin", "unknown key 'regoin'"),
        ("cache_ttl", "0.1s is too short"),
        ("timeout", "90s is out of range"),
        ("accounts[0].demo", "must be true or false, got 'maybe'"),
        ("accounts[1].name", "'main' is already the name of accounts[0]"),
        (
            "accounts[2].api_key_file",
            "cannot read the file named by accounts[2].api_key_file: No such file or directory",
        ),
    ]
    # Each line is the message a file with only that problem gives.
    for one in error.errors:
        assert str(one) in str(error).splitlines()
    assert_well_formed(error, str(path), "regoin")


def test_a_file_with_one_problem_still_raises_that_one_error(tmp_path, secrets_dir):
    path = write_config(tmp_path, secrets_dir, "cache_ttl: 0.1s\n" + ACCOUNTS)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert not isinstance(caught.value, ConfigErrors)
    assert caught.value.lines == (str(caught.value),)


def test_a_refused_environment_also_names_the_misspelt_variable():
    with pytest.raises(ConfigErrors) as caught:
        load_config(None, {**ENV, "OKX_API_KEY": "", "OKX_APIKEY": ENV_API_KEY})
    assert caught.value.lines == (
        "environment: OKX_API_KEY: is empty; set OKX_API_KEY to the API key,"
        " or OKX_API_KEY_FILE to its file",
        "environment: OKX_APIKEY: not a variable the exporter reads; did you mean OKX_API_KEY?",
    )
    assert ENV_API_KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("where", "url", "key"),
    [
        pytest.param("top", "http://okx.example.net", "base_url", id="top-level"),
        pytest.param("account", "http://10.1.2.3:8080/", "accounts[0].base_url", id="account"),
    ],
)
def test_plain_http_to_another_machine_warns(tmp_path, secrets_dir, where, url, key):
    text = (
        f"base_url: {url}\n" + ACCOUNTS if where == "top" else ACCOUNTS + f"    base_url: {url}\n"
    )
    path = write_config(tmp_path, secrets_dir, text)
    (warning,) = load_config(str(path), {}).warnings
    assert warning.startswith(f"{path}: {key}: {url.rstrip('/')} is plain HTTP to another machine")
    assert "use https://" in warning


def test_plain_http_warns_from_the_environment_too():
    (warning,) = load_config(None, {**ENV, "OKX_BASE_URL": "http://okx.example.net"}).warnings
    assert warning.startswith("environment: OKX_BASE_URL: http://okx.example.net is plain HTTP")


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080", "http://localhost:9", "http://[::1]:80", "https://okx.example.net"],
)
def test_https_or_this_machine_does_not_warn(tmp_path, secrets_dir, url):
    path = write_config(tmp_path, secrets_dir, f"base_url: {url}\n" + ACCOUNTS)
    assert load_config(str(path), {}).warnings == ()


def test_secondary_intervals_from_the_file_default_and_off():
    config = config_from_dict(
        {
            "history_interval": "30s",
            "interest_interval": "0s",
            "accounts": [{"name": "a", "api_key": "k", "secret_key": "s", "passphrase": "p"}],
        },
        "test.yml",
        {},
    )
    assert (config.history_interval, config.interest_interval, config.headroom_interval) == (
        30.0,
        0.0,
        300.0,
    )


# --- tls_ca_file ---------------------------------------------------------------------------------


def test_tls_ca_file_at_the_top_applies_to_every_account_unless_one_has_its_own(
    tmp_path, secrets_dir, test_certificates
):
    (tmp_path / "ca.pem").write_bytes(Path(test_certificates.ca_file).read_bytes())
    text = (
        "tls_ca_file: ca.pem\n"  # relative to the config file
        + ACCOUNTS
        + "  - name: other\n"
        + FILES.replace("$K", "$K2")
        + f"    tls_ca_file: {test_certificates.cert_file}\n"
    )
    config = load_config(str(write_config(tmp_path, secrets_dir, text)), {})
    assert [account.tls_ca_file for account in config.accounts] == [
        str(tmp_path / "ca.pem"),
        test_certificates.cert_file,
    ]


def test_tls_ca_file_defaults_to_none(tmp_path, secrets_dir):
    config = load_config(str(write_config(tmp_path, secrets_dir, ACCOUNTS)), {})
    assert config.accounts[0].tls_ca_file is None


@pytest.mark.parametrize(
    ("value", "key", "problem"),
    [
        ("missing.pem", "tls_ca_file", "'missing.pem' does not exist"),
        ("not-pem.txt", "tls_ca_file", "'not-pem.txt' holds no PEM certificate"),
        ("''", "tls_ca_file", "must be a file path, got ''"),
        ("[a]", "tls_ca_file", "must be a file path, got a list"),
        ("ACCOUNT missing.pem", "accounts[0].tls_ca_file", "'missing.pem' does not exist"),
    ],
)
def test_bad_tls_ca_file(tmp_path, secrets_dir, value, key, problem):
    (tmp_path / "not-pem.txt").write_text("not a certificate\n")
    if value.startswith("ACCOUNT "):
        text = ACCOUNTS + f"    tls_ca_file: {value.removeprefix('ACCOUNT ')}\n"
    else:
        text = f"tls_ca_file: {value}\n" + ACCOUNTS
    path = write_config(tmp_path, secrets_dir, text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert caught.value.key == key
    assert problem in caught.value.problem
    assert "PEM file of CA certificates" in caught.value.fix
    assert_well_formed(caught.value, str(path), key)
