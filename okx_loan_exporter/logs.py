"""Log formatting: logfmt (the Prometheus exporters' default) or one JSON object per line.

Both escape every unprintable character, so what a client or OKX sends cannot forge a log line.
"""

from __future__ import annotations

import json
import logging
import time

_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        "ts": _timestamp(record),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields.update(
        {
            key: value
            for key, value in vars(record).items()
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
        }
    )
    if record.exc_info:
        fields["exception"] = logging.Formatter().formatException(record.exc_info)
    return fields


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info logger=... msg="..." account=main``."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as the logfmt format."""

    def format(self, record: logging.LogRecord) -> str:
        # json.dumps escapes C0 controls only; DEL, C1, separators and bidi overrides stay raw.
        return _escape_unprintable(json.dumps(_fields(record), default=str, ensure_ascii=False))


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text and text.isprintable() and not any(char in text for char in ' "=\\'):
        return text
    return '"' + _escape_unprintable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _escape_unprintable(text: str) -> str:
    """``text`` with every character that is not printable escaped: controls (C0, DEL, C1),
    line and paragraph separators, format characters such as bidi overrides, lone surrogates.

    So a request line or an OKX message cannot start a new log line or fool a terminal.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    """``\\n``, or ``\\uXXXX`` (a UTF-16 surrogate pair above U+FFFF), valid in JSON too."""
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
"""``--log.level`` values of the exporter and the simulator; ``warn`` is Prometheus' spelling."""
LOG_FORMATS = ("logfmt", "json")


def setup_logging(level: str, fmt: str) -> None:
    """Send log lines to stderr in ``fmt`` (one of LOG_FORMATS) at ``level`` (one of LOG_LEVELS)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel("WARNING" if level == "warn" else level.upper())
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpcore").setLevel(max(logging.WARNING, root.level))
