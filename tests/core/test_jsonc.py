"""Tolerant JSON: comments, trailing commas, positions, and errors with line and column."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waylay.core.engine.errors import ConfigError
from waylay.core.engine.jsonc import MAX_DEPTH, Position, Positions, parse, render_key_path


def parse_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, source="c.json")
    return info.value


def test_standard_json_values() -> None:
    """Plain JSON parses to the same Python values as json.loads."""
    text = '{"a": [1, -2.5, 3e2, true, false, null, "x\\n\\u00e9"], "b": {}}'
    assert parse(text).value == json.loads(text)


def test_line_and_block_comments() -> None:
    """// and /* */ comments are allowed wherever whitespace is."""
    text = '// head\n{ /* a */ "a" /* b */ : // c\n 1 /* d\n multi-line */ }\n// tail'
    assert parse(text).value == {"a": 1}


def test_comment_markers_inside_strings_are_text() -> None:
    """A // or /* inside a string is part of the string."""
    assert parse('{"url": "http://x/*y*/"}').value == {"url": "http://x/*y*/"}


def test_trailing_commas_in_objects_and_arrays() -> None:
    """One trailing comma before } or ] is accepted, as in mirrord's docs."""
    assert parse('{"a": [1, 2,], "b": {"c": 3,},}').value == {"a": [1, 2], "b": {"c": 3}}


def test_positions_of_values_and_keys() -> None:
    """Every value and key has a 1-based line and column, addressed by key path."""
    text = '{\n  "feature": {\n    "ports": [80,\n      8080]\n  }\n}'
    positions = parse(text).positions
    assert positions.values[()] == Position(1, 1)
    assert positions.keys[("feature",)] == Position(2, 3)
    assert positions.values[("feature",)] == Position(2, 14)
    assert positions.values[("feature", "ports", 0)] == Position(3, 15)
    assert positions.values[("feature", "ports", 1)] == Position(4, 7)


def test_positions_count_characters_not_bytes() -> None:
    """Columns count characters, so non-ASCII text before a value does not shift it."""
    positions = parse('{"é": "ü", "k": 1}').positions
    assert positions.values[("k",)] == Position(1, 17)


def test_position_lookup_falls_back_to_the_nearest_ancestor() -> None:
    """A missing path is located at its closest known parent; under() re-bases paths."""
    positions = parse('{"a": {"b": [1, 2]}}').positions
    assert positions.value(("a", "b", 5, "x")) == Position(1, 13)
    assert positions.key(("a", "b")) == Position(1, 8)
    inner = positions.under(("a",))
    assert inner.value(()) == Position(1, 7)
    assert inner.key(("b",)) == Position(1, 8)
    assert Positions().value(("x",)) is None


def test_render_key_path() -> None:
    """Key paths render dotted, with list indexes in brackets."""
    assert render_key_path(("any_of", 1, "header"), "http_filter") == "http_filter.any_of[1].header"
    assert render_key_path(("a", 0, 1)) == "a[0][1]"
    assert render_key_path(()) == ""


def test_duplicate_key_is_an_error_naming_the_key() -> None:
    """A repeated key is an error at the second occurrence, naming the key."""
    err = parse_error('{"a": {\n  "mode": "steal",\n  "mode": "off"}}')
    assert (err.line, err.column, err.key_path) == (3, 3, "a.mode")
    assert "duplicate key 'mode'" in err.message
    assert str(err).startswith("c.json:3:3: a.mode: duplicate key")


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("", 1, 1, "expected a value, found end of input"),
        ('{"a": 1', 1, 8, "expected ',' or '}', found end of input"),
        ('{"a": 1 "b": 2}', 1, 9, "expected ',' or '}'"),
        ('{"a" 1}', 1, 6, "expected ':' after key 'a'"),
        ("{a: 1}", 1, 2, "expected a key in quotes"),
        ('{"a": 1,,}', 1, 9, "expected a key in quotes"),
        ("[1,,2]", 1, 4, "expected a value or ']'"),
        ("[,]", 1, 2, "expected a value or ']'"),
        ("[1 2]", 1, 4, "expected ',' or ']'"),
        ('{"a": 1}\n}', 2, 1, "after the document"),
        ('{"a": "x\ny"}', 1, 9, "control character"),
        ('{"a":\n  "abc', 2, 3, "unterminated string"),
        ('{"a": "\\q"}', 1, 8, "invalid escape"),
        ('{"a": "\\u12"}', 1, 8, "invalid \\u escape"),
        ("{/* open", 1, 2, "unterminated /* comment"),
        ('{"a": tru}', 1, 7, "expected a value"),
        ('{"a": -}', 1, 7, "expected a number"),
        ('{"a": 01}', 1, 8, "expected ',' or '}'"),
        ('{"a": NaN}', 1, 7, "expected a value"),
        ("'single'", 1, 1, "expected a value"),
    ],
)
def test_syntax_errors_have_line_and_column(text: str, line: int, column: int, words: str) -> None:
    """Each syntax mistake is a ConfigError with its line and column."""
    err = parse_error(text)
    assert (err.line, err.column) == (line, column)
    assert words in err.message
    assert err.source == "c.json"


def test_syntax_error_names_the_key_path_being_read() -> None:
    """A mistake inside a value names the key path where it happened."""
    err = parse_error('{"feature": {"network": {"incoming": stea}}}')
    assert err.key_path == "feature.network.incoming"


def test_surrogate_pairs_and_lone_surrogates_match_json() -> None:
    """\\u escapes combine surrogate pairs and keep lone surrogates, like json.loads."""
    for text in ('"\\ud83d\\ude00"', '"\\ud83d"', '"\\ude00x"', '"\\ud83d\\u0041"'):
        assert parse(text).value == json.loads(text)


def test_byte_order_mark_is_skipped() -> None:
    """A leading UTF-8 byte-order mark is not content."""
    assert parse('\ufeff{"a": 1}').value == {"a": 1}


def test_nesting_depth_is_bounded() -> None:
    """Absurd nesting is a ConfigError, not a RecursionError."""
    err = parse_error("[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5))
    assert "nested deeper" in err.message
    assert parse("[" * 50 + "]" * 50).value is not None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300)
@given(
    json_values,
    st.sampled_from([None, 0, 2, "\t"]),
    st.booleans(),
)
def test_agrees_with_json_loads_on_valid_json(
    value: object, indent: int | str | None, ascii_only: bool
) -> None:
    """On valid JSON, the tolerant parser returns exactly what json.loads returns."""
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    assert parse(text).value == json.loads(text)


@settings(max_examples=300)
@given(st.text(alphabet='{}[],:"\\/*\n 0123456789.eE+-truefalsn', max_size=40))
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    """Any input parses or raises ConfigError; where json.loads also parses it, they agree."""
    try:
        ours = parse(text).value
    except ConfigError:
        return
    try:
        theirs = json.loads(text)
    except ValueError:
        return  # comments or trailing commas: our dialect only
    assert ours == theirs
