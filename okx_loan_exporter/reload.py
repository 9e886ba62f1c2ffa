"""Reloading the configuration like Prometheus: on ``SIGHUP`` and ``POST /-/reload``.

The config file (or the environment) and the web config file are both read and checked before
anything changes: a bad one changes nothing, its problems are logged with the same lines as a
refused start, and ``okx_loan_exporter_config_last_reload_successful`` drops to 0 until a reload
succeeds. A good one is put in force by :meth:`Exporter.apply` (only its ``--shard``'s accounts).
Flags are read at start only. In ``--demo`` mode the simulated accounts stay as they are; only the
web config is read again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from okx_loan_exporter.config import ConfigError, ExporterConfig, load_config
from okx_loan_exporter.exporter import AccountChanges, Exporter
from okx_loan_exporter.sharding import Shard, select_shard
from okx_loan_exporter.webconfig import WebConfigWatcher

log = logging.getLogger(__name__)

RESTART_ONLY = "flags such as --web.listen-address are read at start only: restart to change them"


class ReloadFailed(Exception):
    """A reload refused: the configuration in force is unchanged. One line per problem."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = tuple(lines)
        super().__init__("\n".join(self.lines))


class Reloader(Collector):
    """Reloads on request, one reload at a time, and exports how the last one went."""

    def __init__(
        self,
        exporter: Exporter,
        watcher: WebConfigWatcher,
        config_file: str | None,
        *,
        demo: bool = False,
        shard: Shard | None = None,
        clock: Callable[[], float] = time.time,
        after_apply: Callable[[], object] | None = None,
    ) -> None:
        """``after_apply`` runs after a new configuration was put in force."""
        self._exporter = exporter
        self._after_apply = after_apply
        self._shard = shard
        self._watcher = watcher
        self._config_file = config_file
        self._demo = demo
        self._clock = clock
        self._lock = threading.Lock()
        self._successful = True  # the start loaded the configuration, as in Prometheus
        self._success_at = clock()

    def reload(self) -> str:
        """Read both files and put them in force; a one-line summary. ReloadFailed if bad."""
        with self._lock:
            problems: list[str] = []
            config: ExporterConfig | None = None
            put_web_config_in_force = None
            try:
                put_web_config_in_force = self._watcher.read_now()
            except ConfigError as error:
                problems += error.lines
            if not self._demo:
                try:
                    config = select_shard(load_config(self._config_file), self._shard)
                except ConfigError as error:
                    problems += error.lines
            if problems or put_web_config_in_force is None:
                self._successful = False
                for line in problems:
                    log.error("%s", line, extra={"reload": "failed"})
                log.error(
                    "reload failed: the configuration in force is unchanged (%d problem(s))",
                    len(problems),
                )
                raise ReloadFailed(problems)
            put_web_config_in_force()
            if config is None:
                summary = "demo mode: the simulated accounts are kept; web config read again"
            else:
                for warning in config.warnings:
                    log.warning(warning)
                summary = _summary(config, self._exporter.apply(config))
                if self._after_apply is not None:
                    self._after_apply()
            self._successful = True
            self._success_at = self._clock()
            log.info("configuration reloaded: %s; %s", summary, RESTART_ONLY)
            return f"{summary}; {RESTART_ONLY}"

    def reload_logged(self) -> None:
        """:meth:`reload` for SIGHUP, where nobody waits for the answer: the log says it all."""
        try:
            self.reload()
        except ReloadFailed:
            pass  # logged by reload()
        except Exception:  # a bug must not stop the exporter; say so and keep serving
            self._successful = False
            log.exception("reload failed on an unexpected error; the configuration is unchanged")

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "okx_loan_exporter_config_last_reload_successful",
            "1 when the last configuration reload (SIGHUP or POST /-/reload) succeeded, or none "
            "was asked for yet; 0 when it failed and the previous configuration stays in force.",
            value=1.0 if self._successful else 0.0,
        )
        yield GaugeMetricFamily(
            "okx_loan_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load: the start, or the latest good "
            "reload.",
            value=self._success_at,
        )


def _summary(config: ExporterConfig, changes: AccountChanges) -> str:
    parts = [f"{len(config.accounts)} account(s) from {config.source}"]
    for what, names in (
        ("added", changes.added),
        ("removed", changes.removed),
        ("changed", changes.changed),
        ("unchanged", changes.unchanged),
    ):
        if names:
            parts.append(f"{what}: {', '.join(names)}")
    return "; ".join(parts)
