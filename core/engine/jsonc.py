"""Tolerant JSON: standard JSON plus comments and trailing commas, with positions.

mirrord's own documentation prints config files with trailing commas and ``//`` comments,
and users paste them as written, so waylay reads that dialect (a strict superset of
RFC 8259 JSON): ``// line`` and ``/* block */`` comments wherever whitespace may appear,
and one trailing comma before ``}`` or ``]``.

Theory of operation: a recursive-descent parser over the whole text. Every value and every
object key gets a :class:`Position` (1-based line and column, counted in characters),
addressed by its :data:`KeyPath` from the root (``("feature", "network", "incoming")``,
``(..., "any_of", 1, "header")``), so later validation can point at the offending text.
Anything that is not this dialect raises :class:`ConfigError` with line and column;
duplicate keys are an error too (json.loads silently keeps the last one, which hides typos).
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from waylay.core.engine.errors import ConfigError

Key = str | int
KeyPath = tuple[Key, ...]

# Nesting bound: a config is a few levels deep; the bound keeps a hostile or broken file
# from exhausting Python's recursion limit (RecursionError would be a traceback).
MAX_DEPTH = 200

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_STRING_CHUNK = re.compile(r'[^"\\\x00-\x1f]*')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERALS: tuple[tuple[str, object], ...] = (("true", True), ("false", False), ("null", None))


@dataclass(frozen=True)
class Position:
    """A place in a text: 1-based line and column (column counted in characters)."""

    line: int
    column: int


@dataclass(frozen=True)
class Positions:
    """Where each value (and each object key) of a document sits, by key path."""

    values: Mapping[KeyPath, Position] = field(default_factory=dict)
    keys: Mapping[KeyPath, Position] = field(default_factory=dict)

    def value(self, path: KeyPath) -> Position | None:
        """The position of the value at ``path``, or of its nearest known ancestor."""
        for end in range(len(path), -1, -1):
            found = self.values.get(path[:end])
            if found is not None:
                return found
        return None

    def key(self, path: KeyPath) -> Position | None:
        """The position of the key that names ``path`` (the value's, for list items)."""
        return self.keys.get(path) or self.value(path)

    def under(self, prefix: KeyPath) -> Positions:
        """The positions inside ``prefix``, re-addressed relative to it."""
        n = len(prefix)
        return Positions(
            values={p[n:]: v for p, v in self.values.items() if p[:n] == prefix},
            keys={p[n:]: v for p, v in self.keys.items() if p[:n] == prefix and len(p) > n},
        )


@dataclass(frozen=True)
class Document:
    """A parsed document: the plain value (dict / list / str / int / float / bool / None)."""

    value: object
    positions: Positions


@dataclass(frozen=True)
class Locator:
    """Blames a key path: builds the ConfigError naming file, key path, line and column.

    ``prefix`` is the dotted key path of the value that ``positions`` are relative to, so a
    part of a document (an ``http_filter`` object) can be checked on its own and still be
    reported with its full path.
    """

    source: str | None = None
    prefix: str = ""
    positions: Positions = field(default_factory=Positions)

    def error(self, message: str, path: KeyPath = (), *, at_key: bool = False) -> ConfigError:
        """An error about the value at ``path`` (or about its key, for unknown keys)."""
        at = self.positions.key(path) if at_key else self.positions.value(path)
        return ConfigError(
            message,
            key_path=render_key_path(path, self.prefix),
            source=self.source,
            line=None if at is None else at.line,
            column=None if at is None else at.column,
        )

    def unknown_key(self, path: KeyPath, key: object, allowed: Sequence[str]) -> ConfigError:
        """An error about an unknown key inside ``path``, with a "did you mean"."""
        name = str(key)  # YAML keys may be numbers or booleans
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f" (expected {', '.join(allowed)})"
        return self.error(f"unknown key {key!r}{hint}", (*path, name), at_key=True)

    def describe(self, message: str, path: KeyPath = (), *, at_key: bool = False) -> str:
        """The same text as :meth:`error`, for a warning."""
        return str(self.error(message, path, at_key=at_key))

    def under(self, path: KeyPath) -> Locator:
        """The locator for the value at ``path``."""
        return Locator(
            source=self.source,
            prefix=render_key_path(path, self.prefix),
            positions=self.positions.under(path),
        )


def describe_type(value: object) -> str:
    """How an error names the kind of a parsed value: "a list", "null", ..."""
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "a list"
        case Mapping():
            return "an object"
        case _:
            return type(value).__name__


def render_key_path(path: KeyPath, prefix: str = "") -> str:
    """``("any_of", 1, "header")`` under ``"http_filter"`` -> ``http_filter.any_of[1].header``."""
    out = prefix
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def parse(text: str, *, source: str | None = None) -> Document:
    """Parse ``text``; raise ConfigError (with line and column) if it is not tolerant JSON."""
    parser = _Parser(text, source)
    return Document(value=parser.document(), positions=parser.positions())


def _end_of(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """Where a run of ``pattern`` (which may match empty) starting at ``pos`` ends."""
    match = pattern.match(text, pos)
    return pos if match is None else match.end()


class _Parser:
    def __init__(self, text: str, source: str | None) -> None:
        self.text = text
        self.source = source
        # A leading byte-order mark is an encoding artefact, not content.
        self.pos = 1 if text.startswith("\ufeff") else 0
        self.line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
        self.values: dict[KeyPath, Position] = {}
        self.keys: dict[KeyPath, Position] = {}

    def positions(self) -> Positions:
        return Positions(values=self.values, keys=self.keys)

    # -- positions and errors ----------------------------------------------------------

    def where(self, offset: int) -> Position:
        index = bisect.bisect_right(self.line_starts, offset) - 1
        return Position(index + 1, offset - self.line_starts[index] + 1)

    def error(self, message: str, path: KeyPath, offset: int | None = None) -> ConfigError:
        at = self.where(self.pos if offset is None else offset)
        return ConfigError(
            message,
            key_path=render_key_path(path),
            source=self.source,
            line=at.line,
            column=at.column,
        )

    def describe_here(self) -> str:
        if self.pos >= len(self.text):
            return "end of input"
        return repr(self.text[self.pos])

    # -- lexical ----------------------------------------------------------------------

    def skip(self, path: KeyPath) -> None:
        """Skip whitespace and comments."""
        text = self.text
        while True:
            self.pos = _end_of(_WS, text, self.pos)
            if text.startswith("//", self.pos):
                newline = text.find("\n", self.pos)
                self.pos = len(text) if newline < 0 else newline + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.error("unterminated /* comment", path)
                self.pos = end + 2
            else:
                return

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    # -- grammar ----------------------------------------------------------------------

    def document(self) -> object:
        self.skip(())
        value = self.parse_value((), 0)
        self.skip(())
        if self.pos < len(self.text):
            raise self.error(f"unexpected {self.describe_here()} after the document", ())
        return value

    def parse_value(self, path: KeyPath, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise self.error(f"nested deeper than {MAX_DEPTH} levels", path)
        self.values[path] = self.where(self.pos)
        char = self.peek()
        if char == "{":
            return self.parse_object(path, depth)
        if char == "[":
            return self.parse_array(path, depth)
        if char == '"':
            return self.parse_string(path)
        if char == "-" or char.isdigit():
            return self.parse_number(path)
        for word, literal in _LITERALS:
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return literal
        raise self.error(f"expected a value, found {self.describe_here()}", path)

    def parse_object(self, path: KeyPath, depth: int) -> dict[str, object]:
        self.pos += 1  # "{"
        out: dict[str, object] = {}
        self.skip(path)
        while self.peek() != "}":
            if self.peek() != '"':
                raise self.error(
                    f"expected a key in quotes or '}}', found {self.describe_here()}", path
                )
            key_offset = self.pos
            key = self.parse_string(path)
            child = (*path, key)
            if key in out:
                raise self.error(f"duplicate key {key!r}", child, key_offset)
            self.keys[child] = self.where(key_offset)
            self.skip(child)
            if self.peek() != ":":
                raise self.error(
                    f"expected ':' after key {key!r}, found {self.describe_here()}", child
                )
            self.pos += 1
            self.skip(child)
            out[key] = self.parse_value(child, depth + 1)
            self.skip(child)
            if self.peek() == ",":
                self.pos += 1
                self.skip(path)  # a trailing comma may now be followed by "}"
            elif self.peek() != "}":
                raise self.error(f"expected ',' or '}}', found {self.describe_here()}", child)
        self.pos += 1
        return out

    def parse_array(self, path: KeyPath, depth: int) -> list[object]:
        self.pos += 1  # "["
        out: list[object] = []
        self.skip(path)
        while self.peek() != "]":
            child = (*path, len(out))
            if self.peek() in (",", ""):
                raise self.error(f"expected a value or ']', found {self.describe_here()}", child)
            out.append(self.parse_value(child, depth + 1))
            self.skip(child)
            if self.peek() == ",":
                self.pos += 1
                self.skip(path)
            elif self.peek() != "]":
                raise self.error(f"expected ',' or ']', found {self.describe_here()}", child)
        self.pos += 1
        return out

    def parse_string(self, path: KeyPath) -> str:
        start = self.pos
        self.pos += 1  # opening quote
        parts: list[str] = []
        text = self.text
        while True:
            chunk = _end_of(_STRING_CHUNK, text, self.pos)
            parts.append(text[self.pos : chunk])
            self.pos = chunk
            char = self.peek()
            if char == '"':
                self.pos += 1
                return "".join(parts)
            if char == "":
                raise self.error("unterminated string", path, start)
            if char != "\\":
                raise self.error(f"control character {char!r} in string (use an escape)", path)
            parts.append(self.escape(path))

    def escape(self, path: KeyPath) -> str:
        code = self.text[self.pos + 1 : self.pos + 2]
        if code in _ESCAPES:
            self.pos += 2
            return _ESCAPES[code]
        if code != "u":
            raise self.error(f"invalid escape '\\{code}'", path)
        first = self.hex4(path)
        # A UTF-16 surrogate pair written as two escapes is one character (RFC 8259 §7);
        # a lone surrogate stays as it is, like json.loads.
        if 0xD800 <= first <= 0xDBFF and self.text.startswith("\\u", self.pos):
            saved = self.pos
            second = self.hex4(path)
            if 0xDC00 <= second <= 0xDFFF:
                return chr(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))
            self.pos = saved
        return chr(first)

    def hex4(self, path: KeyPath) -> int:
        digits = self.text[self.pos + 2 : self.pos + 6]
        if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise self.error("invalid \\u escape (needs 4 hex digits)", path)
        self.pos += 6
        return int(digits, 16)

    def parse_number(self, path: KeyPath) -> int | float:
        match = _NUMBER.match(self.text, self.pos)
        if match is None:
            raise self.error(f"expected a number, found {self.describe_here()}", path)
        self.pos = match.end()
        literal = match.group()
        try:
            if match.group(1) is None and match.group(2) is None:
                return int(literal)
            return float(literal)
        except ValueError as exc:  # e.g. an integer past Python's digit limit
            raise self.error(f"number {literal[:20]!r} cannot be read: {exc}", path) from None
