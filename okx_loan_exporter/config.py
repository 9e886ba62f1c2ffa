"""Load and validate the exporter's configuration from a YAML file or from the environment.

Every refusal is a :class:`ConfigError` whose one-line message names the source (the file path, or
``environment``), the dotted key (``accounts[1].secret_key_file``, or the variable name) and the
fix, so that the CLI can print it and exit without a traceback. Secrets come inline, from a file
(``*_file``, for Docker and Kubernetes secrets) or from an environment variable (``*_env``); they
never appear in a message, a repr or an exception.

Nor does anything that may be a secret written in the wrong place: the value of a ``*_file`` or
``*_env`` key (a pasted secret looks like any path or variable name), PyYAML's text for errors
that quotes the document, a mapping key that does not look like a setting name, and the query of a
URL. Messages name the dotted key instead, which is enough to find the line.

Relative ``*_file`` paths are read relative to the config file's directory (as the exporter-toolkit
does for its own files), or to the working directory when there is no config file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from okx_loan_exporter import config_durations, secret_sources, yamlload
from okx_loan_exporter.config_durations import (
    DEFAULT_CACHE_TTL,
    DEFAULT_MAX_STALE,
    DEFAULT_TIMEOUT,
    INTERVALS,
)
from okx_loan_exporter.config_durations import MIN_CACHE_TTL as MIN_CACHE_TTL  # re-exported
from okx_loan_exporter.config_durations import parse_duration as parse_duration  # re-exported
from okx_loan_exporter.yamlload import ConfigError as ConfigError  # re-exported for callers

REGIONS: dict[str, str] = {
    "global": "https://www.okx.com",
    "aws": "https://aws.okx.com",
    "eea": "https://eea.okx.com",
    "us": "https://app.okx.com",
}
DEFAULT_BASE_URL = "https://www.okx.com"

ENVIRONMENT = "environment"
"""The source named in messages when the configuration comes from the environment."""

_TOP_KEYS = (
    "cache_ttl",
    "max_stale",
    "timeout",
    "price_interval",
    *INTERVALS,
    "base_url",
    "region",
    "tls_ca_file",
    "accounts",
)
_ACCOUNT_KEYS = (
    "name",
    *(f"{secret}{suffix}" for secret in secret_sources.SECRETS for suffix in ("", "_file", "_env")),
    "demo",
    "base_url",
    "region",
    "tls_ca_file",
)
_ENV_VARS = (
    *(f"{var}{suffix}" for var in secret_sources.SECRET_ENV.values() for suffix in ("", "_FILE")),
    "OKX_DEMO",
    "OKX_BASE_URL",
    "OKX_REGION",
    "OKX_CACHE_TTL",
    "OKX_MAX_STALE",
    "OKX_TIMEOUT",
    "OKX_PRICE_INTERVAL",
    *(f"OKX_{key.upper()}" for key in INTERVALS),
    "OKX_SHARD",  # read by the command line (sharding.py)
)

_NAME_RE = re.compile(r"[a-zA-Z0-9_-]+")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


@dataclass(frozen=True)
class AccountConfig:
    """One OKX account to export; ``name`` is its ``account`` label."""

    name: str
    api_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    passphrase: str = field(repr=False)
    demo: bool = False
    base_url: str = DEFAULT_BASE_URL
    tls_ca_file: str | None = None
    """PEM file of the CA certificates trusted for ``base_url`` instead of the default ones
    (certifi's, or ``SSL_CERT_FILE``); an absolute path."""
    secret_files: tuple[secret_sources.SecretFile, ...] = ()
    """The secrets read from files, re-read when a file changes (key rotation)."""


@dataclass(frozen=True)
class ExporterConfig:
    """The whole validated configuration; durations are in seconds."""

    accounts: tuple[AccountConfig, ...]
    cache_ttl: float = DEFAULT_CACHE_TTL
    max_stale: float = DEFAULT_MAX_STALE
    timeout: float = DEFAULT_TIMEOUT
    history_interval: float = INTERVALS["history_interval"]
    interest_interval: float = INTERVALS["interest_interval"]
    headroom_interval: float = INTERVALS["headroom_interval"]
    source: str = ENVIRONMENT
    warnings: tuple[str, ...] = ()
    price_interval: float | None = None
    """Seconds between index-price fetches per base URL; None is ``cache_ttl``, 0 turns them off."""

    @property
    def index_price_interval(self) -> float:
        """``price_interval`` with its default applied (0: no index prices, no what-if figures)."""
        return self.cache_ttl if self.price_interval is None else self.price_interval


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> ExporterConfig:
    """Read the YAML file at ``path``, or the ``OKX_*`` environment when ``path`` is None.

    ``environ`` (default ``os.environ``) also serves the ``*_env`` keys of a config file.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if path is None:
        return _from_environ(env)
    path = os.fspath(path)
    source = path
    text = yamlload.read_file(
        path,
        source,
        "the config file",
        "check --config.file, or leave it out to configure from OKX_* environment variables",
    )
    data = yamlload.parse(text, source)
    if data is None:
        raise ConfigError(
            source, "", "the file is empty", "add an accounts: list (see examples/config.yml)"
        )
    base_dir = os.path.dirname(os.path.abspath(path))
    config, inline_keys = _from_mapping(data, source, env, base_dir)
    warning = secret_sources.permission_warning(path, inline_keys)
    if warning:
        config = replace(config, warnings=(*config.warnings, warning))
    return config


def config_from_dict(data: object, source: str, environ: Mapping[str, str]) -> ExporterConfig:
    """Validate an already parsed config (what the YAML file holds), e.g. one built in code.

    Relative ``*_file`` paths are read relative to the working directory.
    """
    config, _ = _from_mapping(data, source, environ, os.getcwd())
    return config


def _from_mapping(
    data: object, source: str, environ: Mapping[str, str], base_dir: str
) -> tuple[ExporterConfig, list[str]]:
    """The validated config and the dotted keys of the secrets given inline.

    Independent checks all run, so that every problem of the file is reported at once.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            source,
            "",
            f"the top level must be a mapping of keys, got {yamlload.type_name(data)}",
            "start the file with keys such as cache_ttl: and accounts: (see examples/config.yml)",
        )
    problems = yamlload.Problems()
    warnings: list[str] = []
    _check_keys(
        data,
        _TOP_KEYS,
        "",
        source,
        problems,
        elsewhere=_ACCOUNT_KEYS,
        elsewhere_hint=("it belongs to one account: move it into an entry of the accounts: list"),
    )
    cache_ttl, max_stale, timeout = config_durations.durations(
        {name: (data.get(name), name) for name in ("cache_ttl", "max_stale", "timeout")},
        source,
        problems,
    )
    price_interval = config_durations.price_interval(
        data.get("price_interval"), "price_interval", source, problems
    )
    intervals = config_durations.intervals(
        {key: (data.get(key), key) for key in INTERVALS}, source, problems
    )
    default_url = problems.attempt(
        lambda: _base_url(
            data.get("base_url"),
            "base_url",
            data.get("region"),
            "region",
            DEFAULT_BASE_URL,
            source,
            warnings,
        ),
        DEFAULT_BASE_URL,
    )
    default_ca_file = problems.attempt(
        lambda: _tls_ca_file(data.get("tls_ca_file"), "tls_ca_file", source, base_dir), None
    )
    entries = problems.attempt(lambda: _account_entries(data, source), [])

    accounts: list[AccountConfig] = []
    inline_keys: list[str] = []
    names: dict[str, str] = {}
    api_keys: dict[str, AccountConfig] = {}
    for index, entry in enumerate(entries):
        prefix = f"accounts[{index}]"
        found = _account(
            entry,
            prefix,
            source,
            environ,
            base_dir,
            (default_url, default_ca_file),
            names,
            problems,
            warnings,
        )
        if found is None:
            continue
        account, inline, api_key_key = found
        other = api_keys.get(account.api_key)
        if other is not None:
            problems.add(
                ConfigError(
                    source,
                    api_key_key,
                    f"account '{account.name}' uses the same API key as account '{other.name}'",
                    "give each account its own API key, or remove the duplicate account",
                )
            )
        api_keys[account.api_key] = account
        accounts.append(account)
        inline_keys.extend(inline)
    problems.raise_any()
    config = ExporterConfig(
        accounts=tuple(accounts),
        cache_ttl=cache_ttl,
        max_stale=max_stale,
        timeout=timeout,
        **intervals,
        source=source,
        warnings=tuple(warnings),
        price_interval=price_interval,
    )
    return config, inline_keys


def _account_entries(data: Mapping[str, Any], source: str) -> list[Any]:
    if "accounts" not in data:
        raise ConfigError(
            source, "accounts", "missing", "add an accounts: list with at least one account"
        )
    entries = data["accounts"]
    if entries is not None and not isinstance(entries, list):
        raise ConfigError(
            source,
            "accounts",
            f"must be a list of accounts, got {yamlload.type_name(entries)}",
            "write each account as a list item starting with '- name: ...'",
        )
    if not entries:  # `accounts:` with nothing under it is null
        raise ConfigError(
            source, "accounts", "is empty", "add at least one account with a name and its secrets"
        )
    return entries


def _account(
    entry: object,
    prefix: str,
    source: str,
    environ: Mapping[str, str],
    base_dir: str,
    defaults: tuple[str, str | None],
    names: dict[str, str],
    problems: yamlload.Problems,
    warnings: list[str],
) -> tuple[AccountConfig, list[str], str] | None:
    """One validated account, the dotted keys of its inline secrets, and its API key's key.

    ``defaults`` are the top level's base URL and CA file.

    None when the entry has problems; each is recorded in ``problems``. A valid name is entered
    in ``names``, so that a later account with the same name is refused.
    """
    default_url, default_ca_file = defaults
    if not isinstance(entry, Mapping):
        problems.add(
            ConfigError(
                source,
                prefix,
                f"must be a mapping, got {yamlload.type_name(entry)}",
                "write the account as '- name: ...' followed by its api_key_file:,"
                " secret_key_file: and passphrase_file: on indented lines",
            )
        )
        return None
    mine = yamlload.Problems()
    _check_keys(
        entry,
        _ACCOUNT_KEYS,
        prefix,
        source,
        mine,
        elsewhere=_TOP_KEYS,
        elsewhere_hint=("it applies to all accounts: move it to the top level of the file"),
    )
    name = mine.attempt(lambda: _account_name(entry, prefix, source, names), "")
    if name:
        names[name] = prefix

    secrets: dict[str, str] = {}
    files: list[secret_sources.SecretFile] = []
    inline_keys: list[str] = []
    api_key_key = f"{prefix}.api_key"
    for secret in secret_sources.SECRETS:
        with mine.check():
            value, used_key, inline = secret_sources.account_secret(
                entry, prefix, secret, source, environ, base_dir
            )
            secrets[secret] = value
            if inline:
                inline_keys.append(used_key)
            if used_key.endswith("_file"):
                files.append(secret_sources.secret_file(entry, used_key, secret, base_dir))
            if secret == "api_key":
                api_key_key = used_key

    demo = entry.get("demo", False)
    if not isinstance(demo, bool):
        mine.add(
            ConfigError(
                source,
                f"{prefix}.demo",
                f"must be true or false, got {_show_plain(demo)}",
                "write demo: true for a demo-trading key, demo: false (or nothing) for a live key",
            )
        )
    base_url = mine.attempt(
        lambda: _base_url(
            entry.get("base_url"),
            f"{prefix}.base_url",
            entry.get("region"),
            f"{prefix}.region",
            default_url,
            source,
            warnings,
        ),
        default_url,
    )
    ca_file = default_ca_file
    if "tls_ca_file" in entry:
        ca_file = mine.attempt(
            lambda: _tls_ca_file(entry["tls_ca_file"], f"{prefix}.tls_ca_file", source, base_dir),
            None,
        )
    problems.errors.extend(mine.errors)
    if mine.errors:
        return None
    account = AccountConfig(
        name=name,
        demo=demo,
        base_url=base_url,
        tls_ca_file=ca_file,
        secret_files=tuple(files),
        **secrets,
    )
    return account, inline_keys, api_key_key


def _account_name(
    entry: Mapping[str, Any], prefix: str, source: str, names: Mapping[str, str]
) -> str:
    name_key = f"{prefix}.name"
    if "name" not in entry or entry["name"] is None:
        raise ConfigError(
            source, name_key, "missing", "give the account a name: it becomes the account label"
        )
    name = entry["name"]
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        shown = yamlload.show(name) if isinstance(name, str) else yamlload.type_name(name)
        raise ConfigError(
            source,
            name_key,
            f"{shown} is not a valid account name",
            "use only letters, digits, '_' and '-' (quote names that YAML reads as numbers)",
        )
    if name in names:
        raise ConfigError(
            source,
            name_key,
            f"'{name}' is already the name of {names[name]}",
            "give every account a unique name",
        )
    return name


# --- the environment ----------------------------------------------------------------------------


def _from_environ(environ: Mapping[str, str]) -> ExporterConfig:
    source = ENVIRONMENT
    problems = yamlload.Problems()
    secrets: dict[str, str] = {}
    for secret, var in secret_sources.SECRET_ENV.items():
        with problems.check():
            secrets[secret] = secret_sources.env_secret(environ, secret, var, source)
    demo_text = environ.get("OKX_DEMO", "").strip().lower()
    if demo_text and demo_text not in _TRUE | _FALSE:
        problems.add(
            ConfigError(
                source,
                "OKX_DEMO",
                f"{yamlload.show(environ['OKX_DEMO'])} is not a boolean",
                "set OKX_DEMO to true or false (or 1/0, yes/no)",
            )
        )
    cache_ttl, max_stale, timeout = config_durations.durations(
        {
            "cache_ttl": (environ.get("OKX_CACHE_TTL") or None, "OKX_CACHE_TTL"),
            "max_stale": (environ.get("OKX_MAX_STALE") or None, "OKX_MAX_STALE"),
            "timeout": (environ.get("OKX_TIMEOUT") or None, "OKX_TIMEOUT"),
        },
        source,
        problems,
    )
    price_interval = config_durations.price_interval(
        environ.get("OKX_PRICE_INTERVAL") or None, "OKX_PRICE_INTERVAL", source, problems
    )
    intervals = config_durations.intervals(
        {
            key: (environ.get(f"OKX_{key.upper()}") or None, f"OKX_{key.upper()}")
            for key in INTERVALS
        },
        source,
        problems,
    )
    warnings: list[str] = []
    base_url = problems.attempt(
        lambda: _base_url(
            environ.get("OKX_BASE_URL") or None,
            "OKX_BASE_URL",
            environ.get("OKX_REGION") or None,
            "OKX_REGION",
            DEFAULT_BASE_URL,
            source,
            warnings,
        ),
        DEFAULT_BASE_URL,
    )
    typos = _env_typos(environ)
    if problems.errors:
        # A misspelt variable is often why one is missing: report it with the problems.
        problems.errors.extend(typos)
    problems.raise_any()
    files = tuple(
        file
        for secret in secret_sources.SECRETS
        if (file := secret_sources.env_secret_file(environ, secret)) is not None
    )
    account = AccountConfig(
        name="default",
        demo=demo_text in _TRUE,
        base_url=base_url,
        secret_files=files,
        **secrets,
    )
    return ExporterConfig(
        accounts=(account,),
        cache_ttl=cache_ttl,
        max_stale=max_stale,
        timeout=timeout,
        **intervals,
        source=source,
        warnings=(*warnings, *(str(typo) for typo in typos)),
        price_interval=price_interval,
    )


def _env_typos(environ: Mapping[str, str]) -> list[ConfigError]:
    """OKX_* variables the exporter does not read but that look like one it does."""
    typos = []
    for name in sorted(environ):
        if name.startswith("OKX_") and name not in _ENV_VARS:
            close = yamlload.did_you_mean(name, _ENV_VARS, cutoff=0.8)
            if close:
                typos.append(
                    ConfigError(
                        ENVIRONMENT,
                        name,
                        "not a variable the exporter reads",
                        f"did you mean {close}?",
                    )
                )
    return typos


# --- shared checks ------------------------------------------------------------------------------


def _check_keys(
    mapping: Mapping[Any, Any],
    valid: tuple[str, ...],
    prefix: str,
    source: str,
    problems: yamlload.Problems,
    *,
    elsewhere: tuple[str, ...],
    elsewhere_hint: str,
) -> None:
    """Record each unknown key of ``mapping``."""
    for raw_key in mapping:
        if isinstance(raw_key, str) and raw_key in valid:
            continue
        hint = yamlload.unknown_key_fix(raw_key, valid)
        fix = elsewhere_hint if str(raw_key) in elsewhere else hint
        if isinstance(raw_key, str) and yamlload.shows_as_setting(raw_key):
            dotted = f"{prefix}.{raw_key}" if prefix else raw_key
            problems.add(ConfigError(source, dotted, f"unknown key '{raw_key}'", fix))
            continue
        # Anything else may be a secret written as a key (a pasted line 'SECRET: x'): name only
        # where it is.
        where = "has" if prefix else "the top level has"
        problems.add(
            ConfigError(
                source,
                prefix,
                f"{where} an unknown key (not shown: it does not look like a setting name, and"
                " may be a secret)",
                fix,
            )
        )


def _base_url(
    url: object,
    url_key: str,
    region: object,
    region_key: str,
    default: str,
    source: str,
    warnings: list[str],
) -> str:
    """The base URL from ``url_key`` or ``region_key`` (or ``default``); a plain-HTTP URL to a
    host other than this machine adds a warning to ``warnings``."""
    if url is not None and region is not None:
        raise ConfigError(
            source,
            region_key,
            f"conflicts with {url_key}",
            f"keep only one of {url_key} and {region_key}",
        )
    if region is not None:
        regions = ", ".join(REGIONS)
        if not isinstance(region, str) or region.strip().lower() not in REGIONS:
            shown = yamlload.show(region) if isinstance(region, str) else yamlload.type_name(region)
            raise ConfigError(
                source,
                region_key,
                f"{shown} is not a region",
                f"use one of {regions} (eea is my.okx.com), or set {url_key} instead",
            )
        return REGIONS[region.strip().lower()]
    if url is None:
        return default
    fix = f"write it like https://www.okx.com, or set {region_key} to one of {', '.join(REGIONS)}"
    if not isinstance(url, str):
        raise ConfigError(source, url_key, f"must be a URL, got {yamlload.type_name(url)}", fix)
    text = url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(source, url_key, "is not a valid URL", fix) from None
    if parts.username is not None or parts.password is not None:
        # Do not echo it: the user:password part is a credential.
        raise ConfigError(
            source, url_key, "must not contain user:password@", "remove the credentials from it"
        )
    # Only scheme://host[:port] is ever shown: a query (?apikey=...) or a path may hold a token.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        origin = f"{parts.scheme}://{parts.netloc}"
        shown = f"{yamlload.show(origin)} " if parts.scheme and parts.netloc else ""
        raise ConfigError(
            source, url_key, f"{shown}is not an http:// or https:// URL with a host", fix
        )
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ConfigError(
            source,
            url_key,
            "has a query or fragment (not shown: it may hold a token)",
            "give only scheme, host and (optionally) port and path, e.g. https://www.okx.com",
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        warnings.append(
            f"{source}: {url_key}: http://{parts.netloc} is plain HTTP to another machine: the API"
            " key, the request signatures and the positions travel unencrypted; use https://"
        )
    return text.rstrip("/")


def _tls_ca_file(value: object, key: str, source: str, base_dir: str) -> str | None:
    """The absolute path of a readable PEM file of CA certificates, or None when not set."""
    if value is None:
        return None
    fix = "give the path of a PEM file of CA certificates (relative to the config file)"
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(source, key, f"must be a file path, got {_show_plain(value)}", fix)
    path = os.path.join(base_dir, os.path.expanduser(value.strip()))
    try:
        ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise ConfigError(source, key, f"{yamlload.show(value)} does not exist", fix) from None
    except ssl.SSLError:
        raise ConfigError(
            source, key, f"{yamlload.show(value)} holds no PEM certificate", fix
        ) from None
    except OSError as error:
        raise ConfigError(
            source, key, f"cannot read {yamlload.show(value)}: {yamlload.os_reason(error)}", fix
        ) from None
    return path


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- formatting ---------------------------------------------------------------------------------


def _show_plain(value: object) -> str:
    if isinstance(value, str):
        return yamlload.show(value)
    return yamlload.type_name(value)
