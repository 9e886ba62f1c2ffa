"""The ``--web.config.file``: TLS and bcrypt basic auth in the Prometheus exporter-toolkit format.

Loads and validates the file, builds the :class:`ssl.SSLContext`, and re-reads the file (and the
certificate files it names) when they change. Checking credentials is ``basicauth``'s job.

Supported keys (everything else is refused with a message that names it)::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file's directory
      key_file: server.key           # PEM, unencrypted
      client_auth_type: NoClientCert # or RequestClientCert, RequireAnyClientCert,
                                     #    VerifyClientCertIfGiven, RequireAndVerifyClientCert
      client_ca_file: ca.crt
      min_version: TLS12             # TLS10, TLS11, TLS12 (default), TLS13
    basic_auth_users:
      alice: $2y$10$...              # bcrypt; $2y$, $2b$ and $2a$ all work

``client_auth_type`` on Python's :mod:`ssl`, which (unlike Go's crypto/tls) cannot ask for a client
certificate without verifying it when one is sent:

============================  ===============  ===================================================
exporter-toolkit              ``verify_mode``  difference from the Go exporters
============================  ===============  ===================================================
NoClientCert                  CERT_NONE        none
RequestClientCert             CERT_NONE        no certificate is asked for; the exporter never
                                               uses an unverified one, so who gets in is the same
VerifyClientCertIfGiven       CERT_OPTIONAL    none; needs client_ca_file
RequireAnyClientCert          CERT_REQUIRED    the certificate must also chain to client_ca_file
                                               (Python cannot accept an unverified one); needs it
RequireAndVerifyClientCert    CERT_REQUIRED    none; needs client_ca_file
============================  ===============  ===================================================

Client certificates are verified against ``client_ca_file`` only, never the system trust store, and
a verifying mode without ``client_ca_file`` is refused (Go would fall back to the system roots).
Passwords and hashes never appear in a log line, a message or a repr.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from okx_loan_exporter import yamlload
from okx_loan_exporter.yamlload import ConfigError

logger = logging.getLogger(__name__)

CLIENT_AUTH_TYPES: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit still accepts this old spelling of RequireAnyClientCert.
_CLIENT_AUTH_ALIASES = {"RequireClientCert": "RequireAnyClientCert"}

TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

_TOP_KEYS = ("tls_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version")
# exporter-toolkit settings this exporter does not implement: refused with their own message, so
# that a file written for a Go exporter fails loudly instead of silently losing a setting.
_UNSUPPORTED_TOP = ("http_server_config", "rate_limit")
_UNSUPPORTED_TLS = (
    "cert",
    "key",
    "client_ca",
    "client_allowed_sans",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)

_BCRYPT_RE = re.compile(rb"\A\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}\Z")
BCRYPT_COST_WARN = 12
"""A hash of a higher cost warns: each wrong password then costs a core hundreds of ms."""
BCRYPT_COST_MAX = 16
"""A hash of a higher cost is refused: each check would take seconds of CPU."""
_HASH_COMMAND = "htpasswd -nBC 10 \"\" | tr -d ':\\n'"
_HASH_HOWTO = f"make one with: {_HASH_COMMAND}"


@dataclass(frozen=True)
class TLSConfig:
    """The validated ``tls_server_config``; file paths are absolute."""

    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str = "TLS12"


@dataclass(frozen=True)
class WebConfig:
    """The validated web config: TLS (None for plain HTTP) and user name -> bcrypt hash."""

    tls: TLSConfig | None = None
    basic_auth_users: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"WebConfig(tls={self.tls!r}, basic_auth_users={sorted(self.basic_auth_users)!r})"


# --- loading --------------------------------------------------------------------------------

_TLS = "tls_server_config."
_RELATIVE = "relative paths are relative to the web config file's directory"


def _check_keys(
    raw: Mapping[Any, Any],
    where: str,
    known: tuple[str, ...],
    unsupported: tuple[str, ...],
    source: str,
    problems: yamlload.Problems,
) -> None:
    for key in raw:
        with problems.check():
            _check_key(key, where, known, unsupported, source)


def _check_key(
    key: object, where: str, known: tuple[str, ...], unsupported: tuple[str, ...], source: str
) -> None:
    if key in unsupported:
        raise ConfigError(
            source,
            f"{where}{key}",
            "an exporter-toolkit setting that okx-loan-exporter does not support",
            f"remove it (supported: {', '.join(known)})",
        )
    if key not in known:
        fix = yamlload.unknown_key_fix(key, known)
        if yamlload.shows_as_setting(key):
            raise ConfigError(source, f"{where}{key}", "unknown key", fix)
        # Anything else may be a secret pasted as a key: name only where it is.
        raise ConfigError(
            source,
            where.rstrip(".") or "top level",
            "an unknown key (not shown: it does not look like a setting name)",
            fix,
        )


def _parse_tls(raw: Any, base_dir: str, source: str) -> TLSConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(
            source,
            "tls_server_config",
            "must be a mapping with cert_file and key_file",
            "remove it for plain HTTP",
        )
    problems = yamlload.Problems()
    _check_keys(raw, _TLS, _TLS_KEYS, _UNSUPPORTED_TLS, source, problems)
    problems.raise_any()
    if not raw:
        return None  # an empty section means plain HTTP, as in exporter-toolkit

    def path_of(key: str) -> str | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(source, _TLS + key, "must be a file path", _RELATIVE)
        return os.path.normpath(os.path.join(base_dir, value))

    def required_path_of(key: str) -> str:
        value = path_of(key)
        if value is None:
            raise ConfigError(
                source,
                _TLS + key,
                "missing",
                "TLS needs both cert_file and key_file (PEM files, relative to the web config"
                " file's directory)",
            )
        return value

    cert_file, key_file = required_path_of("cert_file"), required_path_of("key_file")
    ca_file = path_of("client_ca_file")

    auth = raw.get("client_auth_type", "NoClientCert")
    auth = _CLIENT_AUTH_ALIASES.get(auth, auth) if isinstance(auth, str) else auth
    if auth not in CLIENT_AUTH_TYPES:
        raise ConfigError(
            source,
            _TLS + "client_auth_type",
            f"{auth!r} is not a client auth type",
            f"use one of {', '.join(CLIENT_AUTH_TYPES)}",
        )
    if ca_file is not None and auth == "NoClientCert":
        raise ConfigError(
            source,
            _TLS + "client_ca_file",
            "set but client_auth_type is NoClientCert",
            "set client_auth_type: RequireAndVerifyClientCert, or remove client_ca_file",
        )
    if ca_file is None and CLIENT_AUTH_TYPES[auth] != ssl.CERT_NONE:
        raise ConfigError(
            source,
            _TLS + "client_ca_file",
            "missing",
            f"client_auth_type {auth} verifies client certificates, so name the PEM file of the"
            " CA that signs them",
        )

    version = raw.get("min_version", "TLS12")
    if version not in TLS_VERSIONS:
        raise ConfigError(
            source,
            _TLS + "min_version",
            f"{version!r} is not a TLS version",
            f"use one of {', '.join(TLS_VERSIONS)}",
        )
    return TLSConfig(cert_file, key_file, auth, ca_file, version)


def _parse_users(
    raw: Any, source: str, problems: yamlload.Problems, warnings: list[str]
) -> Mapping[str, bytes]:
    """User name -> bcrypt hash; each bad user is recorded in ``problems``."""
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, dict):
        raise ConfigError(
            source,
            "basic_auth_users",
            "must be a mapping of user name to bcrypt hash",
            _HASH_HOWTO,
        )
    users: dict[str, bytes] = {}
    for name, hashed in raw.items():
        with problems.check():
            users[name] = _parse_user(name, hashed, source, warnings)
    return MappingProxyType(users)


def _parse_user(name: object, hashed: object, source: str, warnings: list[str]) -> bytes:
    if not isinstance(name, str) or not name or ":" in name:
        raise ConfigError(
            source,
            f"basic_auth_users.{name}",
            "not a usable user name",
            "use a non-empty string without ':' (quote it if YAML reads it as a number or boolean)",
        )
    if not isinstance(hashed, str) or not _BCRYPT_RE.match(hashed.encode("utf-8", "replace")):
        raise ConfigError(
            source,
            f"basic_auth_users.{name}",
            "not a bcrypt hash (60 characters starting with $2y$, $2b$ or $2a$; never the"
            " password itself)",
            _HASH_HOWTO,
        )
    key = f"basic_auth_users.{name}"
    cost = int(hashed[4:6])
    howto = f"make a hash of cost 10 to {BCRYPT_COST_WARN} with: {_HASH_COMMAND}"
    if cost > BCRYPT_COST_MAX:
        raise ConfigError(
            source,
            key,
            f"bcrypt cost {cost} is above {BCRYPT_COST_MAX}: every login would take seconds of"
            " CPU, and wrong passwords would keep the exporter busy",
            howto,
        )
    if cost > BCRYPT_COST_WARN:
        warnings.append(
            f"{source}: {key}: bcrypt cost {cost} is above {BCRYPT_COST_WARN}: each check of a new"
            f" or wrong password takes a core for a second or more; {howto}"
        )
    return hashed.encode("ascii")


def _read_pem(source: str, key: str, path: str, marker: bytes, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(
            source,
            key,
            f"cannot read {path} ({exc.strerror or type(exc).__name__})",
            f"fix the path ({_RELATIVE})",
        ) from None
    if marker not in data:
        raise ConfigError(source, key, f"{path} holds no PEM {what}", f"point it at a PEM {what}")
    return data


def make_ssl_context(tls: TLSConfig, source: str) -> ssl.SSLContext:
    """The server-side SSL context for ``tls``; ConfigError (from ``source``) if unusable."""
    _read_pem(
        source, _TLS + "cert_file", tls.cert_file, b"-----BEGIN CERTIFICATE-----", "certificate"
    )
    key_pem = _read_pem(source, _TLS + "key_file", tls.key_file, b"PRIVATE KEY-----", "private key")
    if b"ENCRYPTED" in key_pem:
        raise ConfigError(
            source,
            _TLS + "key_file",
            f"{tls.key_file} is encrypted",
            "give an unencrypted key (openssl pkey -in KEY -out PLAIN_KEY) and protect it with"
            " file permissions",
        )
    del key_pem
    # Not ssl.create_default_context(): for CLIENT_AUTH it would trust the system CAs for client
    # certificates, letting in anyone with a publicly issued certificate.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS10/TLS11 are deprecated
        ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    try:
        # The password callback keeps OpenSSL from prompting on the terminal.
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                source,
                _TLS + "key_file",
                f"{tls.key_file} is not the private key of cert_file {tls.cert_file}",
                "point key_file at the key the certificate was made for",
            ) from None
        raise ConfigError(
            source,
            _TLS + "cert_file",
            f"cannot load {tls.cert_file} with key_file {tls.key_file}"
            f" ({exc.reason or type(exc).__name__})",
            "give a PEM certificate and its unencrypted PEM key",
        ) from None
    if tls.client_ca_file is not None:
        _read_pem(
            source,
            _TLS + "client_ca_file",
            tls.client_ca_file,
            b"-----BEGIN CERTIFICATE-----",
            "CA certificate",
        )
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except ssl.SSLError as exc:
            raise ConfigError(
                source,
                _TLS + "client_ca_file",
                f"cannot load {tls.client_ca_file} ({exc.reason or type(exc).__name__})",
                "give the CA certificate(s) in PEM",
            ) from None
    ctx.verify_mode = CLIENT_AUTH_TYPES[tls.client_auth_type]
    return ctx


def load(path: str) -> tuple[WebConfig, ssl.SSLContext | None]:
    """Read and fully validate the web config file (certificates included), and its SSL context."""
    source = f"web config file {path}"
    raw = yamlload.parse(yamlload.read_file(path, source, "it", "check --web.config.file"), source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            source,
            "",
            "the top level must be a mapping",
            "start the file with tls_server_config: and/or basic_auth_users:",
        )
    problems = yamlload.Problems()
    warnings: list[str] = []
    _check_keys(raw, "", _TOP_KEYS, _UNSUPPORTED_TOP, source, problems)
    base_dir = os.path.dirname(os.path.abspath(path))
    tls = problems.attempt(lambda: _parse_tls(raw.get("tls_server_config"), base_dir, source), None)
    users = _parse_users(raw.get("basic_auth_users"), source, problems, warnings)
    problems.raise_any()
    ctx = make_ssl_context(tls, source) if tls is not None else None
    return WebConfig(tls=tls, basic_auth_users=users, warnings=tuple(warnings)), ctx


# --- reloading ------------------------------------------------------------------------------


_FileStamp = tuple[int, int, int, int, int] | None


def _stamp(path: str) -> _FileStamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class WebConfigWatcher:
    """The current web config, re-read when the file or the certificate files it names change.

    The first load happens here and raises ConfigError. A later bad version keeps the previous
    good config; its error is logged once (again only if the error changes), and the file is
    retried at every check until it loads, so a certificate that appears later is picked up.
    """

    def __init__(
        self,
        path: str | None,
        clock: Callable[[], float] = time.monotonic,
        check_interval: float = 1.0,
    ) -> None:
        self.path = path
        self._clock = clock
        self._check_interval = check_interval
        self._lock = threading.Lock()
        self._config = WebConfig()
        self._ctx: ssl.SSLContext | None = None
        self._stamps: tuple[_FileStamp, ...] = ()
        self._failed_with: str | None = None
        self._checked_at = clock()
        if path is not None:
            before = _stamp(path)
            self._config, self._ctx = load(path)
            self._stamps = self._stamps_afterload(before, self._config)

    def _current_stamps(self, config: WebConfig | None) -> tuple[_FileStamp, ...]:
        assert self.path is not None
        paths = [self.path]
        if config is not None and config.tls is not None:
            tls = config.tls
            paths += [tls.cert_file, tls.key_file]
            if tls.client_ca_file is not None:
                paths.append(tls.client_ca_file)
        return tuple(_stamp(p) for p in paths)

    def _stamps_afterload(self, before: _FileStamp, config: WebConfig) -> tuple[_FileStamp, ...]:
        # The config file's stamp from before reading it: a change made while it was being read
        # then shows as a change at the next check instead of being missed.
        return (before, *self._current_stamps(config)[1:])

    def _maybe_reload(self) -> None:
        assert self.path is not None
        now = self._clock()
        if now - self._checked_at < self._check_interval:
            return
        self._checked_at = now
        stamps = self._current_stamps(self._config)
        if stamps == self._stamps and self._failed_with is None:
            return
        before = stamps[0]
        try:
            config, ctx = load(self.path)
        except ConfigError as exc:
            message = str(exc)
            if message != self._failed_with:
                for line in exc.lines:
                    logger.error("Keeping the previous web config: %s", line)
            self._failed_with = message
            self._stamps = stamps
            return
        self._config, self._ctx, self._failed_with = config, ctx, None
        self._stamps = self._stamps_afterload(before, config)
        logger.info(
            "Reloaded web config file %s (TLS %s, %d basic-auth user(s))",
            self.path,
            "on" if config.tls else "off",
            len(config.basic_auth_users),
        )
        for warning in config.warnings:
            logger.warning(warning)

    def read_now(self) -> Callable[[], None]:
        """Read and validate the file now (a reload), raising ConfigError when it is bad; the
        returned call puts it in force, so that a reload can check all its files first."""
        if self.path is None:
            return lambda: None
        path = self.path
        before = _stamp(path)
        config, ctx = load(path)

        def put_in_force() -> None:
            with self._lock:
                self._config, self._ctx, self._failed_with = config, ctx, None
                self._stamps = self._stamps_afterload(before, config)
            for warning in config.warnings:
                logger.warning(warning)

        return put_in_force

    def current(self) -> WebConfig:
        """The config in force, after re-reading the file if it changed."""
        if self.path is None:
            return self._config
        with self._lock:
            self._maybe_reload()
            return self._config

    def ssl_context(self) -> ssl.SSLContext | None:
        """The SSL context of the current config (new after each reload), None without TLS."""
        if self.path is None:
            return None
        with self._lock:
            self._maybe_reload()
            return self._ctx
