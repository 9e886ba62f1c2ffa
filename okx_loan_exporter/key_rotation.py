"""Key rotation: an account's ``*_file`` secrets are read again when one of their files changes.

A change is seen by the file's resolved path and its stat (device, inode, mtime, size), never by
the mtime of a link: Kubernetes updates a mounted secret by pointing the ``..data`` symlink at a
new timestamped directory, so the configured path stays a symlink whose own stat never changes. A
file that becomes unreadable, empty or otherwise invalid keeps the previous value in use and is
logged once (by its key, never its content or path).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from okx_loan_exporter.config import AccountConfig
from okx_loan_exporter.okx import Credentials
from okx_loan_exporter.secret_sources import SecretFile, read_again
from okx_loan_exporter.yamlload import ConfigError

log = logging.getLogger(__name__)

_Fingerprint = tuple[str, int, int, int, int] | None


def fingerprint(path: str) -> _Fingerprint:
    """The file's resolved path, device, inode, mtime (ns) and size; None when it cannot be read."""
    try:
        resolved = os.path.realpath(path)
        st = os.stat(resolved)
    except OSError:
        return None
    return (resolved, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class SecretFileWatcher:
    """One account's secrets from files: :meth:`check` re-reads those whose file changed and hands
    the new credentials to ``use`` (the OKX client's ``use_credentials``)."""

    def __init__(
        self, account: AccountConfig, source: str, use: Callable[[Credentials], None]
    ) -> None:
        self._name = account.name
        self._source = source
        self._use = use
        self._files = account.secret_files
        self._values = {
            "api_key": account.api_key,
            "secret_key": account.secret_key,
            "passphrase": account.passphrase,
        }
        # "unread" at first: the first check reads every file, so that a change made between
        # reading the config and this watcher's start is not missed.
        self._seen: dict[str, _Fingerprint | str] = {file.secret: "unread" for file in self._files}

    def check(self) -> bool:
        """Re-read the files that changed since the last check; True when a secret changed."""
        changed: list[SecretFile] = []
        for file in self._files:
            now = fingerprint(file.path)
            if now == self._seen[file.secret]:
                continue
            self._seen[file.secret] = now
            try:
                value = read_again(file, self._source)
            except ConfigError as error:
                log.warning(
                    "account %s: keeping the %s in use: %s",
                    self._name,
                    file.secret.replace("_", " "),
                    error,
                    extra={"account": self._name},
                )
                continue
            if value != self._values[file.secret]:
                self._values[file.secret] = value
                changed.append(file)
        if not changed:
            return False
        self._use(Credentials(**self._values))
        log.info(
            "account %s: %s changed on disk; the next request uses the new value",
            self._name,
            ", ".join(file.key for file in changed),
            extra={"account": self._name},
        )
        return True
