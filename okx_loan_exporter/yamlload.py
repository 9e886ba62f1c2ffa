"""The loading policy both config front-ends share: one error shape, YAML parsing, key hints.

``config`` (the exporter's file) and ``webconfig`` (the ``--web.config.file``) refuse a file with a
:class:`ConfigError` naming the source, the dotted key, the problem and the fix, on one line. YAML
is parsed with PyYAML's safe loader, refusing duplicate keys (PyYAML keeps the last of two, so a
second ``api_key_file:`` or basic-auth user would silently replace the first). A YAML error is told
by its line, column and a description of our own: PyYAML's text quotes the document, which may
hold a secret, and its wording is not an interface.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import yaml

YAML_FIX = (
    "fix the YAML syntax there: indent with spaces, and quote values that start with"
    " * & ! | > % @ ` or contain ': ' or ' #'"
)
T = TypeVar("T")
U = TypeVar("U")
_SETTING_NAME_RE = re.compile(r"[a-z_]{1,40}")
"""Keys shown in messages; any other key may be a secret written as a key."""


def one_line(text: object) -> str:
    """``text`` with its line breaks turned into spaces, so that a message stays one log line."""
    return " ".join(str(text).splitlines())


class ConfigError(Exception):
    """A configuration the exporter refuses: where (source and dotted key), what, and the fix."""

    def __init__(self, source: str, key: str, problem: str, fix: str) -> None:
        self.source = one_line(source)
        self.key = one_line(key)
        self.problem = one_line(problem)
        self.fix = one_line(fix)
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.key:
            return f"{self.source}: {self.key}: {self.problem}; {self.fix}"
        return f"{self.source}: {self.problem}; {self.fix}"

    @property
    def lines(self) -> tuple[str, ...]:
        """Each problem on its own line (one here; several for :class:`ConfigErrors`)."""
        return (str(self),)


class ConfigErrors(ConfigError):
    """Every problem found in one file; behaves as its first problem, and lists all in ``lines``."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = tuple(errors)
        first = self.errors[0]
        super().__init__(first.source, first.key, first.problem, first.fix)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)

    @property
    def lines(self) -> tuple[str, ...]:
        return tuple(str(error) for error in self.errors)


class Problems:
    """Collects the ConfigErrors of independent checks, so that a file's problems show at once."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    @contextlib.contextmanager
    def check(self) -> Iterator[None]:
        """Run the block; a ConfigError it raises is recorded instead of ending the validation."""
        try:
            yield
        except ConfigErrors as errors:
            self.errors.extend(errors.errors)
        except ConfigError as error:
            self.errors.append(error)

    def add(self, error: ConfigError) -> None:
        """Record ``error``."""
        self.errors.append(error)

    def attempt(self, check: Callable[[], T], default: U) -> T | U:
        """``check()``, or ``default`` after recording the ConfigError it raised."""
        with self.check():
            return check()
        return default

    def raise_any(self) -> None:
        """Raise the one problem found, or all of them as ConfigErrors; nothing when none."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)


def did_you_mean(word: str, known: Sequence[str], cutoff: float = 0.6) -> str | None:
    """The one of ``known`` that ``word`` is most likely a misspelling of (in any case), if any."""
    by_lower = {name.lower(): name for name in known}
    close = difflib.get_close_matches(word.lower(), by_lower, n=1, cutoff=cutoff)
    return by_lower[close[0]] if close else None


def unknown_key_fix(key: object, known: Sequence[str]) -> str:
    """The fix for an unknown key: the close known one, or the list of the known ones."""
    close = did_you_mean(key, known) if isinstance(key, str) else None
    if close:
        return f"did you mean '{close}'?"
    return f"remove it; valid keys here are {', '.join(known)}"


def shows_as_setting(key: object) -> bool:
    """Whether ``key`` may appear in a message: only what looks like a setting name."""
    return isinstance(key, str) and _SETTING_NAME_RE.fullmatch(key) is not None


def type_name(value: object) -> str:
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


def show(value: str, limit: int = 60) -> str:
    """A non-secret user value, quoted and shortened for a message."""
    text = value if len(value) <= limit else value[: limit - 3] + "..."
    return repr(text)


def os_reason(exc: OSError) -> str:
    """Why the OS refused, e.g. 'No such file or directory' (never the path)."""
    return exc.strerror or type(exc).__name__


# --- parsing ------------------------------------------------------------------------------------


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """One mapping holds the same key twice; ``key`` is that key (shown only if setting-like)."""

    def __init__(self, key: str, mark: yaml.Mark) -> None:
        super().__init__(None, None, "duplicate key", mark)
        self.key = key


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[str] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, str):
            if key in seen:
                raise DuplicateKeyError(key, key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load(text: str) -> Any:
    """Parse one YAML document with the safe loader; a duplicate key is a DuplicateKeyError."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass


def read_file(path: str, source: str, what: str, fix: str) -> str:
    """The text of the file at ``path`` (UTF-8, BOM allowed); a ConfigError naming ``what``."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read {what}: {os_reason(exc)}", fix) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # The exception's own text shows the offending byte; say only where it is.
        raise ConfigError(
            source, "", f"is not UTF-8 text (byte {exc.start})", "save the file as UTF-8"
        ) from None


def parse(text: str, source: str) -> Any:
    """The YAML document in ``text``; any failure is a ConfigError that quotes nothing of it."""
    try:
        return load(text)
    except yaml.YAMLError as exc:
        fix = "keep only one of them" if isinstance(exc, DuplicateKeyError) else YAML_FIX
        raise ConfigError(source, "", f"invalid YAML{_yaml_problem(exc, text)}", fix) from None
    except ValueError:
        # PyYAML reads unquoted 2024-13-45 as a date and lets datetime's ValueError through.
        raise ConfigError(
            source,
            "",
            "invalid YAML: a value written like a date or time is impossible (e.g. 2024-13-45)",
            'put values that only look like dates in quotes ("...")',
        ) from None
    except RecursionError:
        raise ConfigError(
            source, "", "invalid YAML: lists or mappings nest too deeply", YAML_FIX
        ) from None


# What a YAML indicator character at the start of the broken construct means. Only these fixed
# characters are ever shown, never the text after them.
_INDICATORS = {
    "*": "a value starts with '*', which YAML reads as an alias",
    "&": "a value starts with '&', which YAML reads as an anchor",
    "!": "a value starts with '!', which YAML reads as a tag",
    "|": "a value starts with '|', which YAML reads as a block of text",
    ">": "a value starts with '>', which YAML reads as a block of text",
    "%": "a line starts with '%', which YAML reads as a directive",
    "@": "a value starts with '@', which YAML reserves",
    "`": "a value starts with '`', which YAML reserves",
    "\t": "a tab character, which YAML does not allow here (use spaces)",
    '"': "a quoted value starts here and is never closed",
    "'": "a quoted value starts here and is never closed",
    ":": "a ': ' inside a value, which YAML reads as a key (quote the value)",
}
_BY_KIND: tuple[tuple[type[yaml.YAMLError], str], ...] = (
    (yaml.scanner.ScannerError, "text YAML cannot read as a value"),
    (
        yaml.parser.ParserError,
        "the structure breaks here: check the indentation, and the ':' or '-' before it",
    ),
    (yaml.composer.ComposerError, "an alias or anchor YAML cannot resolve"),
    (yaml.constructor.ConstructorError, "a value YAML cannot build (e.g. a list used as a key)"),
)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """`` at line L, column C: what is wrong``, from the error's kind and the marked characters.

    The description comes from the exception class and the YAML indicator at the marks, never
    from PyYAML's message, which quotes the document (a passphrase starting with '*' or '!').
    """
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        where = f" at line {line}, column {column}"
        return f"{where}: a control character or other character YAML does not allow"
    if isinstance(exc, DuplicateKeyError):
        shown = f"the key '{exc.key}'" if shows_as_setting(exc.key) else "a key"
        hidden = "" if shows_as_setting(exc.key) else " (not shown: it may be a secret)"
        return f"{_at(exc.problem_mark)}: {shown} appears twice in one mapping{hidden}"
    marks = [
        mark
        for mark in (getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None))
        if mark is not None
    ]
    for mark in marks:
        line_start = text.rfind("\n", 0, mark.index) + 1
        if mark.index == line_start and text.startswith("---", mark.index) and mark.line > 0:
            return f"{_at(mark)}: a second YAML document starts here (a line '---')"
        if mark.index > 0 and text[mark.index - 1] == "\\" and mark is marks[0]:
            return (
                f"{_at(mark)}: a double-quoted value holds a backslash that starts no valid"
                " escape (use single quotes for values containing \\)"
            )
        description = _INDICATORS.get(text[mark.index : mark.index + 1])
        if description is not None:
            return f"{_at(mark)}: {description}"
    where = _at(marks[0]) if marks else ""
    for kind, description in _BY_KIND:
        if isinstance(exc, kind):
            return f"{where}: {description}"
    return f"{where}: the YAML cannot be parsed here"


def _at(mark: yaml.Mark | None) -> str:
    return "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
