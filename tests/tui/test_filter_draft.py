"""The filter editor's model compiles with the engine and names the wrong field."""

from __future__ import annotations

import pytest

from waylay.core.engine.config import parse_config
from waylay.tui.filter_draft import DraftError, FilterDraft


def test_no_filter_compiles_to_none() -> None:
    compiled = FilterDraft().compile()
    assert compiled.http_filter is None and compiled.filter_ports is None


def test_a_single_filter_compiles_like_a_config_file() -> None:
    """The draft's filter is the one the same config file would give."""
    draft = FilterDraft(kind="header_filter", value="^x-user: alice$", ports="80, 8080")
    compiled = draft.compile()
    from_file = parse_config('{"feature": {"network": {"incoming": {"mode": "steal", '
                             '"http_filter": {"header_filter": "^x-user: alice$", '
                             '"ports": [80, 8080]}}}}}', fmt="json").incoming
    assert compiled.http_filter == from_file.http_filter
    assert compiled.filter_ports == from_file.filter_ports == frozenset({80, 8080})


def test_a_bad_regex_is_an_error_on_the_value() -> None:
    with pytest.raises(DraftError) as caught:
        FilterDraft(kind="path_filter", value="([").compile()
    assert caught.value.field == "value"
    assert "invalid regex" in caught.value.message and "path_filter" in caught.value.message


def test_a_bad_clause_names_its_index() -> None:
    draft = FilterDraft(kind="any_of", clauses=[("header", "ok"), ("method", "GE T")])
    with pytest.raises(DraftError) as caught:
        draft.compile()
    assert caught.value.field == "clause:1"


def test_an_empty_list_is_an_error_on_the_clauses() -> None:
    with pytest.raises(DraftError) as caught:
        FilterDraft(kind="all_of", clauses=[]).compile()
    assert caught.value.field == "clauses"


def test_bad_ports_are_an_error_on_the_ports() -> None:
    with pytest.raises(DraftError) as caught:
        FilterDraft(kind="method_filter", value="POST", ports="80 http").compile()
    assert caught.value.field == "ports"


@pytest.mark.parametrize("text", [
    '{"mode": "steal"}',
    '{"mode": "steal", "http_filter": {"path_filter": "^/api", "ports": [80]}}',
    '{"mode": "steal", "http_filter": {"any_of": [{"header": "x: 1"}, {"method": "POST"}]}}',
    '{"mode": "steal", "http_filter": {"all_of": [{"path": "a"}, {"path": "b"}]}}',
])
def test_a_config_round_trips_through_the_draft(text: str) -> None:
    """Loading a filter into the editor and compiling it back changes nothing."""
    incoming = parse_config(f'{{"feature": {{"network": {{"incoming": {text}}}}}}}',
                            fmt="json").incoming
    compiled = FilterDraft.from_incoming(incoming).compile()
    assert compiled.http_filter == incoming.http_filter
    assert compiled.filter_ports == incoming.filter_ports
