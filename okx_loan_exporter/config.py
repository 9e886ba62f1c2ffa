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

import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from okx_loan_exporter import yamlload
from okx_loan_exporter.yamlload import ConfigError as ConfigError  # re-exported for callers

REGIONS: dict[str, str] = {
    "global": "https://www.okx.com",
    "aws": "https://aws.okx.com",
    "eea": "https://eea.okx.com",
    "us": "https://app.okx.com",
}
DEFAULT_BASE_URL = "https://www.okx.com"
MIN_CACHE_TTL = 0.5
MAX_TIMEOUT = 60.0
DEFAULT_CACHE_TTL = 10.0
DEFAULT_MAX_STALE = 300.0
DEFAULT_TIMEOUT = 5.0

ENVIRONMENT = "environment"
"""The source named in messages when the configuration comes from the environment."""

_SECRETS = ("api_key", "secret_key", "passphrase")
_SECRET_WHAT = {"api_key": "API key", "secret_key": "secret key", "passphrase": "passphrase"}
_SECRET_ENV = {
    "api_key": "OKX_API_KEY",
    "secret_key": "OKX_SECRET_KEY",
    "passphrase": "OKX_PASSPHRASE",
}
_MAX_SECRET_FILE_BYTES = 64 * 1024

_TOP_KEYS = ("cache_ttl", "max_stale", "timeout", "base_url", "region", "accounts")
_ACCOUNT_KEYS = (
    "name",
    *(f"{secret}{suffix}" for secret in _SECRETS for suffix in ("", "_file", "_env")),
    "demo",
    "base_url",
    "region",
)
_ENV_VARS = (
    *(f"{var}{suffix}" for var in _SECRET_ENV.values() for suffix in ("", "_FILE")),
    "OKX_DEMO",
    "OKX_BASE_URL",
    "OKX_REGION",
    "OKX_CACHE_TTL",
    "OKX_MAX_STALE",
    "OKX_TIMEOUT",
)

_NAME_RE = re.compile(r"[a-zA-Z0-9_-]+")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_DURATION_RE = re.compile(
    rf"(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m)?(?:(?P<s>{_NUMBER})s)?(?:(?P<ms>{_NUMBER})ms)?",
    re.ASCII,
)
_SECONDS_RE = re.compile(_NUMBER, re.ASCII)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION_FIX = "write it like 500ms, 10s, 5m, 1h, 1m30s, or as a number of seconds"
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


@dataclass(frozen=True)
class ExporterConfig:
    """The whole validated configuration; durations are in seconds."""

    accounts: tuple[AccountConfig, ...]
    cache_ttl: float = DEFAULT_CACHE_TTL
    max_stale: float = DEFAULT_MAX_STALE
    timeout: float = DEFAULT_TIMEOUT
    source: str = ENVIRONMENT
    warnings: tuple[str, ...] = ()


def parse_duration(value: object, source: str, key: str) -> float:
    """Seconds from ``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"``, ``"1m30s"`` or a number of seconds.

    Units come largest first, each at most once, as in Prometheus. A string holding only a number
    (as every environment variable does) is seconds too. Negative, infinite and boolean values are
    refused.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(
            source, key, f"must be a duration, got {_type_name(value)}", _DURATION_FIX
        )
    if isinstance(value, str):
        text = value.strip()
        if _SECONDS_RE.fullmatch(text):
            return float(text)
        match = _DURATION_RE.fullmatch(text)
        if not text or match is None:
            raise ConfigError(source, key, f"{_show(value)} is not a duration", _DURATION_FIX)
        return sum(
            float(number) * _UNIT_SECONDS[unit]
            for unit, number in match.groupdict().items()
            if number is not None
        )
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(
            source, key, f"{value!r} is not a duration", "use a finite, non-negative duration"
        )
    return seconds


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
    warning = _permission_warning(path, inline_keys)
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
    """The validated config and the dotted keys of the secrets given inline."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            source,
            "",
            f"the top level must be a mapping of keys, got {_type_name(data)}",
            "start the file with keys such as cache_ttl: and accounts: (see examples/config.yml)",
        )
    _check_keys(
        data,
        _TOP_KEYS,
        "",
        source,
        elsewhere=_ACCOUNT_KEYS,
        elsewhere_hint=("it belongs to one account: move it into an entry of the accounts: list"),
    )
    cache_ttl, max_stale, timeout = _durations(
        {name: (data.get(name), name) for name in ("cache_ttl", "max_stale", "timeout")}, source
    )
    default_url = _base_url(
        data.get("base_url"), "base_url", data.get("region"), "region", DEFAULT_BASE_URL, source
    )

    if "accounts" not in data:
        raise ConfigError(
            source, "accounts", "missing", "add an accounts: list with at least one account"
        )
    entries = data["accounts"]
    if entries is not None and not isinstance(entries, list):
        raise ConfigError(
            source,
            "accounts",
            f"must be a list of accounts, got {_type_name(entries)}",
            "write each account as a list item starting with '- name: ...'",
        )
    if not entries:  # `accounts:` with nothing under it is null
        raise ConfigError(
            source, "accounts", "is empty", "add at least one account with a name and its secrets"
        )

    accounts: list[AccountConfig] = []
    inline_keys: list[str] = []
    names: dict[str, str] = {}
    api_keys: dict[str, AccountConfig] = {}
    for index, entry in enumerate(entries):
        prefix = f"accounts[{index}]"
        account, inline, api_key_key = _account(
            entry, prefix, source, environ, base_dir, default_url, names
        )
        other = api_keys.get(account.api_key)
        if other is not None:
            raise ConfigError(
                source,
                api_key_key,
                f"account '{account.name}' uses the same API key as account '{other.name}'",
                "give each account its own API key, or remove the duplicate account",
            )
        api_keys[account.api_key] = account
        names[account.name] = prefix
        accounts.append(account)
        inline_keys.extend(inline)
    config = ExporterConfig(
        accounts=tuple(accounts),
        cache_ttl=cache_ttl,
        max_stale=max_stale,
        timeout=timeout,
        source=source,
    )
    return config, inline_keys


def _account(
    entry: object,
    prefix: str,
    source: str,
    environ: Mapping[str, str],
    base_dir: str,
    default_url: str,
    names: Mapping[str, str],
) -> tuple[AccountConfig, list[str], str]:
    """One validated account, the dotted keys of its inline secrets, and its API key's key."""
    if not isinstance(entry, Mapping):
        raise ConfigError(
            source,
            prefix,
            f"must be a mapping, got {_type_name(entry)}",
            "write the account as '- name: ...' followed by its api_key_file:, secret_key_file:"
            " and passphrase_file: on indented lines",
        )
    _check_keys(
        entry,
        _ACCOUNT_KEYS,
        prefix,
        source,
        elsewhere=_TOP_KEYS,
        elsewhere_hint=("it applies to all accounts: move it to the top level of the file"),
    )
    name_key = f"{prefix}.name"
    if "name" not in entry or entry["name"] is None:
        raise ConfigError(
            source, name_key, "missing", "give the account a name: it becomes the account label"
        )
    name = entry["name"]
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        shown = _show(name) if isinstance(name, str) else _type_name(name)
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

    secrets: dict[str, str] = {}
    inline_keys: list[str] = []
    api_key_key = f"{prefix}.api_key"
    for secret in _SECRETS:
        value, used_key, inline = _account_secret(entry, prefix, secret, source, environ, base_dir)
        secrets[secret] = value
        if inline:
            inline_keys.append(used_key)
        if secret == "api_key":
            api_key_key = used_key

    demo = entry.get("demo", False)
    if not isinstance(demo, bool):
        raise ConfigError(
            source,
            f"{prefix}.demo",
            f"must be true or false, got {_show_plain(demo)}",
            "write demo: true for a demo-trading key, demo: false (or nothing) for a live key",
        )
    base_url = _base_url(
        entry.get("base_url"),
        f"{prefix}.base_url",
        entry.get("region"),
        f"{prefix}.region",
        default_url,
        source,
    )
    account = AccountConfig(name=name, demo=demo, base_url=base_url, **secrets)
    return account, inline_keys, api_key_key


def _account_secret(
    entry: Mapping[str, Any],
    prefix: str,
    secret: str,
    source: str,
    environ: Mapping[str, str],
    base_dir: str,
) -> tuple[str, str, bool]:
    """The secret's value, the dotted key it came from, and whether it was given inline."""
    what = _SECRET_WHAT[secret]
    variants = (secret, f"{secret}_file", f"{secret}_env")
    given = [key for key in variants if key in entry]
    options = f"{secret}_file (recommended), {secret}_env or {secret}"
    if not given:
        raise ConfigError(
            source, f"{prefix}.{secret}", "missing", f"set the {what} with one of {options}"
        )
    if len(given) > 1:
        raise ConfigError(
            source,
            f"{prefix}.{given[1]}",
            f"conflicts with {prefix}.{given[0]}",
            f"keep exactly one of {', '.join(variants)}",
        )
    used = given[0]
    key = f"{prefix}.{used}"
    value = entry[used]
    if used == secret:
        if value is None or not isinstance(value, str):
            got = _type_name(value)
            # Never echo the value: it is (a mangled form of) the secret.
            raise ConfigError(
                source,
                key,
                f"must be a string, got {got}",
                f'put the {what} in quotes ({secret}: "..."), or use {secret}_file',
            )
        return _check_secret(value, source, key, f"put the {what} there"), key, True
    if used.endswith("_file"):
        return _read_secret_file(value, source, key, what, base_dir), key, False
    return _secret_from_env(value, source, key, what, secret, environ), key, False


def _secret_from_env(
    name: object,
    source: str,
    key: str,
    what: str,
    secret: str,
    environ: Mapping[str, str],
) -> str:
    # The name is never shown: what stands there may be the secret itself, pasted in place of a
    # variable's name (and a secret of letters, digits and '_' is also a valid name).
    if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
        got = "" if isinstance(name, str) else f", got {_type_name(name)}"
        raise ConfigError(
            source,
            key,
            f"not a valid environment variable name (letters, digits, _){got}",
            f"put the variable's NAME here, not the secret, e.g. {_SECRET_ENV[secret]}"
            f" (or use {secret}_file)",
        )
    value = environ.get(name)
    if value is None:
        raise ConfigError(
            source,
            key,
            "names an environment variable that is not set",
            "set that variable in the exporter's environment (the key holds the variable's"
            f" NAME, not the secret), or use {secret}_file",
        )
    return _check_secret(
        value,
        source,
        key,
        f"set that variable to the {what}",
        where=f"the environment variable named by {key}",
    )


# --- the environment ----------------------------------------------------------------------------


def _from_environ(environ: Mapping[str, str]) -> ExporterConfig:
    source = ENVIRONMENT
    secrets = {
        secret: _env_secret(environ, secret, var, source) for secret, var in _SECRET_ENV.items()
    }
    demo_text = environ.get("OKX_DEMO", "").strip().lower()
    if demo_text and demo_text not in _TRUE | _FALSE:
        raise ConfigError(
            source,
            "OKX_DEMO",
            f"{_show(environ['OKX_DEMO'])} is not a boolean",
            "set OKX_DEMO to true or false (or 1/0, yes/no)",
        )
    cache_ttl, max_stale, timeout = _durations(
        {
            "cache_ttl": (environ.get("OKX_CACHE_TTL") or None, "OKX_CACHE_TTL"),
            "max_stale": (environ.get("OKX_MAX_STALE") or None, "OKX_MAX_STALE"),
            "timeout": (environ.get("OKX_TIMEOUT") or None, "OKX_TIMEOUT"),
        },
        source,
    )
    base_url = _base_url(
        environ.get("OKX_BASE_URL") or None,
        "OKX_BASE_URL",
        environ.get("OKX_REGION") or None,
        "OKX_REGION",
        DEFAULT_BASE_URL,
        source,
    )
    account = AccountConfig(name="default", demo=demo_text in _TRUE, base_url=base_url, **secrets)
    return ExporterConfig(
        accounts=(account,),
        cache_ttl=cache_ttl,
        max_stale=max_stale,
        timeout=timeout,
        source=source,
        warnings=tuple(_env_typo_warnings(environ)),
    )


def _env_secret(environ: Mapping[str, str], secret: str, var: str, source: str) -> str:
    what = _SECRET_WHAT[secret]
    file_var = f"{var}_FILE"
    inline = environ.get(var)
    path = environ.get(file_var)
    # An empty variable counts as unset here, so that `OKX_API_KEY=` in a compose file does not
    # conflict with OKX_API_KEY_FILE.
    if inline and path:
        raise ConfigError(
            source, file_var, f"conflicts with {var}", f"set only one of {var} and {file_var}"
        )
    if path:
        return _read_secret_file(path, source, file_var, what, os.getcwd())
    if inline is not None and inline.strip():
        return _check_secret(inline, source, var, f"set {var} to the {what}")
    if inline is not None or path is not None:
        empty = var if inline is not None else file_var
        raise ConfigError(
            source, empty, "is empty", f"set {var} to the {what}, or {file_var} to its file"
        )
    raise ConfigError(source, var, "missing", f"set {var} or {file_var}, or pass --config.file")


def _env_typo_warnings(environ: Mapping[str, str]) -> list[str]:
    warnings = []
    for name in sorted(environ):
        if name.startswith("OKX_") and name not in _ENV_VARS:
            close = yamlload.did_you_mean(name, _ENV_VARS, cutoff=0.8)
            if close:
                warnings.append(
                    f"{ENVIRONMENT}: {name}: not a variable the exporter reads;"
                    f" did you mean {close}?"
                )
    return warnings


# --- shared checks ------------------------------------------------------------------------------


def _check_keys(
    mapping: Mapping[Any, Any],
    valid: tuple[str, ...],
    prefix: str,
    source: str,
    *,
    elsewhere: tuple[str, ...],
    elsewhere_hint: str,
) -> None:
    for raw_key in mapping:
        if isinstance(raw_key, str) and raw_key in valid:
            continue
        hint = yamlload.unknown_key_fix(raw_key, valid)
        fix = elsewhere_hint if str(raw_key) in elsewhere else hint
        if isinstance(raw_key, str) and yamlload.shows_as_setting(raw_key):
            dotted = f"{prefix}.{raw_key}" if prefix else raw_key
            raise ConfigError(source, dotted, f"unknown key '{raw_key}'", fix)
        # Anything else may be a secret written as a key (a pasted line 'SECRET: x'): name only
        # where it is.
        where = "has" if prefix else "the top level has"
        raise ConfigError(
            source,
            prefix,
            f"{where} an unknown key (not shown: it does not look like a setting name, and may"
            " be a secret)",
            fix,
        )


def _durations(values: Mapping[str, tuple[object, str]], source: str) -> tuple[float, float, float]:
    """cache_ttl, max_stale and timeout from (value or None, key) each, with their bounds."""
    ttl_value, ttl_key = values["cache_ttl"]
    stale_value, stale_key = values["max_stale"]
    timeout_value, timeout_key = values["timeout"]
    cache_ttl = (
        DEFAULT_CACHE_TTL if ttl_value is None else parse_duration(ttl_value, source, ttl_key)
    )
    max_stale = (
        DEFAULT_MAX_STALE if stale_value is None else parse_duration(stale_value, source, stale_key)
    )
    timeout = (
        DEFAULT_TIMEOUT
        if timeout_value is None
        else parse_duration(timeout_value, source, timeout_key)
    )
    if cache_ttl < MIN_CACHE_TTL:
        raise ConfigError(
            source,
            ttl_key,
            f"{_seconds(cache_ttl)} is too short",
            f"raise {ttl_key} to at least {_seconds(MIN_CACHE_TTL)}; OKX allows 5 requests per 2 s",
        )
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ConfigError(
            source,
            timeout_key,
            f"{_seconds(timeout)} is out of range",
            f"set {timeout_key} above 0 and at most {_seconds(MAX_TIMEOUT)}, e.g. 5s",
        )
    if max_stale < cache_ttl:
        default = " (the default)" if stale_value is None else ""
        raise ConfigError(
            source,
            stale_key,
            f"{_seconds(max_stale)}{default} is shorter than {ttl_key} ({_seconds(cache_ttl)})",
            f"raise {stale_key} to at least {ttl_key}",
        )
    return cache_ttl, max_stale, timeout


def _base_url(
    url: object,
    url_key: str,
    region: object,
    region_key: str,
    default: str,
    source: str,
) -> str:
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
            shown = _show(region) if isinstance(region, str) else _type_name(region)
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
        raise ConfigError(source, url_key, f"must be a URL, got {_type_name(url)}", fix)
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
        shown = f"{_show(origin)} " if parts.scheme and parts.netloc else ""
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
    return text.rstrip("/")


def _read_secret_file(path: object, source: str, key: str, what: str, base_dir: str) -> str:
    """The secret in the file named by ``key``.

    The path is never shown: it cannot be told apart from the secret itself pasted where its
    file's path belongs. Messages name the key instead, and for a relative path the directory it
    is read from (the config file's, or the working directory: not the user's text).
    """
    if not isinstance(path, str) or not path.strip():
        got = "an empty string" if isinstance(path, str) else _type_name(path)
        raise ConfigError(
            source,
            key,
            f"must be the path of a file holding the {what}, got {got}",
            "give the file's path, e.g. /run/secrets/okx_api_key",
        )
    given = os.path.expanduser(path.strip())
    full = os.path.normpath(os.path.join(base_dir, given))
    the_file = f"the file named by {key}"
    try:
        with open(full, "rb") as handle:
            raw = handle.read(_MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        relative = "" if os.path.isabs(given) else f" (a relative path is read from {base_dir})"
        raise ConfigError(
            source,
            key,
            f"cannot read {the_file}: {_os_reason(exc)}",
            f"check the path{relative}, and that the exporter's user may read the file;"
            f" the key holds the file's path, not the {what}",
        ) from None
    if len(raw) > _MAX_SECRET_FILE_BYTES:
        raise ConfigError(
            source,
            key,
            f"{the_file} is larger than {_MAX_SECRET_FILE_BYTES // 1024} KiB",
            f"the file must hold only the {what}",
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(
            source, key, f"{the_file} is not UTF-8 text", f"the file must hold only the {what}"
        ) from None
    return _check_secret(text, source, key, f"write the {what} into that file", where=the_file)


def _check_secret(
    value: str,
    source: str,
    key: str,
    fill_fix: str,
    *,
    where: str = "the value",
) -> str:
    """The secret stripped of surrounding whitespace; refused when empty or holding controls."""
    text = value.strip()
    if not text:
        raise ConfigError(source, key, f"{where} is empty", fill_fix)
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise ConfigError(
            source,
            key,
            f"{where} holds a line break or control character inside the secret",
            "it must hold the secret alone, on one line",
        )
    return text


def _permission_warning(path: str, inline_keys: list[str]) -> str | None:
    if not inline_keys:
        return None
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (
        f"{path}: holds inline secrets ({', '.join(inline_keys)}) and is readable by"
        f" group/others (mode {mode:04o}): chmod 600 it, or move the secrets to *_file"
    )


# --- formatting ---------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    """The YAML kind of a value with its article, e.g. 'a number'; never the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def _show(value: str, limit: int = 60) -> str:
    """A non-secret user value, quoted and shortened for a message."""
    text = value if len(value) <= limit else value[: limit - 3] + "..."
    return repr(text)


def _show_plain(value: object) -> str:
    if isinstance(value, str):
        return _show(value)
    return _type_name(value)


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _seconds(value: float) -> str:
    return f"{value:g}s"
