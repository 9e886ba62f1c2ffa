"""Durations in the exporter config: parsing (``10s``, ``1m30s``, seconds) and the bounds of
``cache_ttl``, ``max_stale``, ``timeout``, ``price_interval`` and the secondary intervals.

Every refusal is a located :class:`~okx_loan_exporter.yamlload.ConfigError`; problems are
collected so that one pass reports them all.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping

from okx_loan_exporter import yamlload
from okx_loan_exporter.yamlload import ConfigError

MIN_CACHE_TTL = 0.5
MAX_TIMEOUT = 60.0
DEFAULT_CACHE_TTL = 10.0
DEFAULT_MAX_STALE = 300.0
DEFAULT_TIMEOUT = 5.0
MIN_PRICE_INTERVAL = 0.5
"""index-tickers allows 20 requests per 2 s per IP, for every base URL together."""
INTERVALS: dict[str, float] = {
    "history_interval": 60.0,
    "interest_interval": 600.0,
    "headroom_interval": 300.0,
}
"""The secondary endpoints' schedules and their defaults in seconds; 0 turns one off."""
MIN_INTERVAL = 1.0

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_DURATION_RE = re.compile(
    rf"(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m)?(?:(?P<s>{_NUMBER})s)?(?:(?P<ms>{_NUMBER})ms)?",
    re.ASCII,
)
_SECONDS_RE = re.compile(_NUMBER, re.ASCII)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION_FIX = "write it like 500ms, 10s, 5m, 1h, 1m30s, or as a number of seconds"


def parse_duration(value: object, source: str, key: str) -> float:
    """Seconds from ``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"``, ``"1m30s"`` or a number of seconds.

    Units come largest first, each at most once, as in Prometheus. A string holding only a number
    (as every environment variable does) is seconds too. Negative, infinite and boolean values are
    refused.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(
            source, key, f"must be a duration, got {yamlload.type_name(value)}", _DURATION_FIX
        )
    if isinstance(value, str):
        text = value.strip()
        if _SECONDS_RE.fullmatch(text):
            return float(text)
        match = _DURATION_RE.fullmatch(text)
        if not text or match is None:
            raise ConfigError(
                source, key, f"{yamlload.show(value)} is not a duration", _DURATION_FIX
            )
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


def durations(
    values: Mapping[str, tuple[object, str]], source: str, problems: yamlload.Problems
) -> tuple[float, float, float]:
    """cache_ttl, max_stale and timeout from (value or None, key) each, with their bounds.

    Problems are recorded; the defaults stand in for values that are refused.
    """
    ttl_value, ttl_key = values["cache_ttl"]
    stale_value, stale_key = values["max_stale"]
    timeout_value, timeout_key = values["timeout"]

    def parsed(value: object, key: str, default: float) -> float | None:
        if value is None:
            return default
        return problems.attempt(lambda: parse_duration(value, source, key), None)

    cache_ttl = parsed(ttl_value, ttl_key, DEFAULT_CACHE_TTL)
    max_stale = parsed(stale_value, stale_key, DEFAULT_MAX_STALE)
    timeout = parsed(timeout_value, timeout_key, DEFAULT_TIMEOUT)
    if cache_ttl is not None and cache_ttl < MIN_CACHE_TTL:
        problems.add(
            ConfigError(
                source,
                ttl_key,
                f"{seconds_text(cache_ttl)} is too short",
                f"raise {ttl_key} to at least {seconds_text(MIN_CACHE_TTL)};"
                " OKX allows 5 requests per 2 s",
            )
        )
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
        problems.add(
            ConfigError(
                source,
                timeout_key,
                f"{seconds_text(timeout)} is out of range",
                f"set {timeout_key} above 0 and at most {seconds_text(MAX_TIMEOUT)}, e.g. 5s",
            )
        )
    if cache_ttl is not None and max_stale is not None and max_stale < cache_ttl:
        default = " (the default)" if stale_value is None else ""
        problems.add(
            ConfigError(
                source,
                stale_key,
                f"{seconds_text(max_stale)}{default} is shorter than {ttl_key} "
                f"({seconds_text(cache_ttl)})",
                f"raise {stale_key} to at least {ttl_key}",
            )
        )
    return (
        DEFAULT_CACHE_TTL if cache_ttl is None else cache_ttl,
        DEFAULT_MAX_STALE if max_stale is None else max_stale,
        DEFAULT_TIMEOUT if timeout is None else timeout,
    )


def price_interval(
    value: object, key: str, source: str, problems: yamlload.Problems
) -> float | None:
    """``price_interval``: None (not given: ``cache_ttl``), 0 (off) or at least 0.5 s."""
    if value is None:
        return None
    interval = problems.attempt(lambda: parse_duration(value, source, key), None)
    if interval is not None and 0 < interval < MIN_PRICE_INTERVAL:
        problems.add(
            ConfigError(
                source,
                key,
                f"{seconds_text(interval)} is too short",
                f"set {key} to 0s (no index prices) or at least {seconds_text(MIN_PRICE_INTERVAL)};"
                " OKX allows 20 index-tickers requests per 2 s per IP",
            )
        )
        return None
    return interval


def intervals(
    values: Mapping[str, tuple[object, str]], source: str, problems: yamlload.Problems
) -> dict[str, float]:
    """The secondary endpoints' intervals from (value or None, key) each: 0 (off) or >= 1 s."""
    intervals = dict(INTERVALS)
    for name, (value, key) in values.items():
        if value is None:
            continue
        seconds = problems.attempt(functools.partial(parse_duration, value, source, key), None)
        if seconds is None:
            continue
        if 0 < seconds < MIN_INTERVAL:
            problems.add(
                ConfigError(
                    source,
                    key,
                    f"{seconds_text(seconds)} is too short",
                    f"set {key} to 0s (off) or at least {seconds_text(MIN_INTERVAL)}, e.g. "
                    f"{seconds_text(INTERVALS[name])}",
                )
            )
            continue
        intervals[name] = seconds
    return intervals


def seconds_text(value: float) -> str:
    """A duration as the config writes it: ``10s``, ``0.5s``."""
    return f"{value:g}s"
