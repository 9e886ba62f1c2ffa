"""An account's secrets: given inline, read from a ``*_file`` or from a ``*_env`` variable.

A secret never appears in a message, and neither does anything that may be one written in the
wrong place: the value of a ``*_file`` or ``*_env`` key (a pasted secret looks like any path or
variable name). Messages name the dotted key instead. Relative paths are read from ``base_dir``
(the config file's directory, or the working directory).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from okx_loan_exporter.yamlload import ConfigError, os_reason, type_name

SECRETS = ("api_key", "secret_key", "passphrase")
SECRET_ENV = {
    "api_key": "OKX_API_KEY",
    "secret_key": "OKX_SECRET_KEY",
    "passphrase": "OKX_PASSPHRASE",
}
"""The environment variable of each secret when the config comes from the environment."""
_SECRET_WHAT = {"api_key": "API key", "secret_key": "secret key", "passphrase": "passphrase"}
_MAX_SECRET_FILE_BYTES = 64 * 1024

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class SecretFile:
    """A secret read from a file, so that it can be read again when the file changes."""

    secret: str
    """Which secret: one of SECRETS."""
    key: str
    """The dotted key (or variable) that names the file, for messages."""
    path: str = field(repr=False)
    """The file's absolute path as configured (symlinks not resolved)."""


def secret_file(entry: Mapping[str, Any], used_key: str, secret: str, base_dir: str) -> SecretFile:
    """The file behind ``used_key`` (a ``*_file`` key of ``entry`` that was read successfully)."""
    return SecretFile(secret, used_key, _full_path(entry[f"{secret}_file"], base_dir))


def env_secret_file(environ: Mapping[str, str], secret: str) -> SecretFile | None:
    """The file of ``secret`` when the environment names one (``OKX_API_KEY_FILE``...)."""
    var = f"{SECRET_ENV[secret]}_FILE"
    path = environ.get(var)
    return SecretFile(secret, var, _full_path(path, os.getcwd())) if path else None


def read_again(file: SecretFile, source: str) -> str:
    """The secret in ``file`` now, checked as at start; ConfigError (naming the key) if bad."""
    return read_secret_file(file.path, source, file.key, _SECRET_WHAT[file.secret], "/")


def _full_path(path: str, base_dir: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path.strip())))


def account_secret(
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
            got = type_name(value)
            # Never echo the value: it is (a mangled form of) the secret.
            raise ConfigError(
                source,
                key,
                f"must be a string, got {got}",
                f'put the {what} in quotes ({secret}: "..."), or use {secret}_file',
            )
        return check_secret(value, source, key, f"put the {what} there"), key, True
    if used.endswith("_file"):
        return read_secret_file(value, source, key, what, base_dir), key, False
    return secret_from_env(value, source, key, what, secret, environ), key, False


def secret_from_env(
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
        got = "" if isinstance(name, str) else f", got {type_name(name)}"
        raise ConfigError(
            source,
            key,
            f"not a valid environment variable name (letters, digits, _){got}",
            f"put the variable's NAME here, not the secret, e.g. {SECRET_ENV[secret]}"
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
    return check_secret(
        value,
        source,
        key,
        f"set that variable to the {what}",
        where=f"the environment variable named by {key}",
    )


def env_secret(environ: Mapping[str, str], secret: str, var: str, source: str) -> str:
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
        return read_secret_file(path, source, file_var, what, os.getcwd())
    if inline is not None and inline.strip():
        return check_secret(inline, source, var, f"set {var} to the {what}")
    if inline is not None or path is not None:
        empty = var if inline is not None else file_var
        raise ConfigError(
            source, empty, "is empty", f"set {var} to the {what}, or {file_var} to its file"
        )
    raise ConfigError(source, var, "missing", f"set {var} or {file_var}, or pass --config.file")


def read_secret_file(path: object, source: str, key: str, what: str, base_dir: str) -> str:
    """The secret in the file named by ``key``.

    The path is never shown: it cannot be told apart from the secret itself pasted where its
    file's path belongs. Messages name the key instead, and for a relative path the directory it
    is read from (the config file's, or the working directory: not the user's text).
    """
    if not isinstance(path, str) or not path.strip():
        got = "an empty string" if isinstance(path, str) else type_name(path)
        raise ConfigError(
            source,
            key,
            f"must be the path of a file holding the {what}, got {got}",
            "give the file's path, e.g. /run/secrets/okx_api_key",
        )
    given = os.path.expanduser(path.strip())
    full = _full_path(path, base_dir)
    the_file = f"the file named by {key}"
    try:
        with open(full, "rb") as handle:
            raw = handle.read(_MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        relative = "" if os.path.isabs(given) else f" (a relative path is read from {base_dir})"
        raise ConfigError(
            source,
            key,
            f"cannot read {the_file}: {os_reason(exc)}",
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
    return check_secret(text, source, key, f"write the {what} into that file", where=the_file)


def check_secret(
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


def permission_warning(path: str, inline_keys: list[str]) -> str | None:
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
