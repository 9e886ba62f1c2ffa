"""Log formats: one line per record, whatever characters a client or OKX puts in a message."""

from __future__ import annotations

import json
import logging

import pytest

from okx_loan_exporter.logs import JsonFormatter, LogfmtFormatter

#: Characters that end a line, or drive a terminal, or reorder what a reader sees.
HOSTILE = {
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\x00": "\\u0000",
    "\x1b": "\\u001b",  # ESC: terminal escape sequences
    "\x7f": "\\u007f",  # DEL
    "\x85": "\\u0085",  # NEL, a line break to some readers
    "\x9b": "\\u009b",  # CSI: a one-byte escape sequence start
    "\u2028": "\\u2028",  # line separator
    "\u2029": "\\u2029",  # paragraph separator
    "\u202e": "\\u202e",  # right-to-left override
    "\U000e0041": "\\udb40\\udc41",  # a tag character (format, outside the BMP)
    "\udcff": "\\udcff",  # a lone surrogate, as from bytes decoded with surrogateescape
}


def record(message: str, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("okx_loan_exporter.test", logging.INFO, "", 0, message, None, None)
    for key, value in extra.items():
        setattr(entry, key, value)
    return entry


@pytest.mark.parametrize(("char", "escaped"), HOSTILE.items())
def test_logfmt_escapes_every_unprintable_character(char: str, escaped: str) -> None:
    line = LogfmtFormatter().format(record(f"GET /a{char}b", account=f"x{char}"))
    assert line.endswith(f'msg="GET /a{escaped}b" account="x{escaped}"')
    assert line.isprintable()
    assert line.encode("utf-8")  # no lone surrogate left to break the stream


@pytest.mark.parametrize(("char", "escaped"), HOSTILE.items())
def test_json_escapes_every_unprintable_character_and_stays_json(char: str, escaped: str) -> None:
    line = JsonFormatter().format(record(f"GET /a{char}b", account=f"x{char}"))
    assert f'"msg": "GET /a{escaped}b"' in line
    assert line.isprintable()
    assert line.encode("utf-8")
    assert json.loads(line)["msg"] == f"GET /a{char}b"
    assert json.loads(line)["account"] == f"x{char}"


def test_a_forged_log_line_stays_inside_its_message() -> None:
    message = 'GET /x HTTP/1.0" 200\nts=2020-01-01T00:00:00Z level=error msg="forged'
    line = LogfmtFormatter().format(record(message))
    assert len(line.splitlines()) == 1
    assert line.endswith(
        'msg="GET /x HTTP/1.0\\" 200\\nts=2020-01-01T00:00:00Z level=error msg=\\"forged"'
    )


def test_printable_text_is_left_as_it_is() -> None:
    line = LogfmtFormatter().format(record("prêt 借 ok", account="main"))
    assert line.endswith('msg="prêt 借 ok" account=main')
    assert json.loads(JsonFormatter().format(record("prêt 借 ok")))["msg"] == "prêt 借 ok"
    assert "prêt 借 ok" in JsonFormatter().format(record("prêt 借 ok"))
