"""mirrord's JSON body filter and waylay's query-string clause: compiling, matching, and
why an undecidable body does not match (configs in mirrord's documented forms)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waylay.core.engine.body_filter import BodySkip
from waylay.core.engine.config import parse_config
from waylay.core.engine.errors import ConfigError
from waylay.core.engine.filters import HttpFilter, RequestView, compile_http_filter

JSON_HEADERS = (("Content-Type", "application/json"),)

# The examples of mirrord's "Filtering by JSON body" page, as written there (trailing
# commas included).
MIRRORD_BODY_FILTER = """{
  "feature": {
    "network": {
      "incoming": {
        "mode": "steal",
        "http_filter": {
          "body_filter": {
            "body": "json",
            "query": "$.data[*].legacyEntityIds.legacyUserIdentityId",
            "matches": "^identity123$",
          }
        }
      }
    }
  }
}"""
MIRRORD_ALL_OF = """{
  "feature": {
    "network": {
      "incoming": {
        "http_filter": {
          "all_of": [
            {
              "path": "/orders"
            },
            {
              "body": "json",
              "query": "$..[?(typeof(@.price) == 'number')].price",
              "matches": "99$"
            }
          ]
        }
      }
    }
  }
}"""
ORDER_A = {"orderId": "123", "items": [{"name": "A", "price": 199}, {"name": "B", "price": 42}]}
ORDER_B = {"orderId": "124", "items": [{"name": "A", "price": 150}, {"name": "B", "price": 42}]}
ORDER_C = {"orderId": "125", "items": [{"name": "A", "price": 199}]}


def loaded(text: str) -> HttpFilter:
    config = parse_config(text, fmt="json", source="mirrord.json")
    assert config.incoming.http_filter is not None
    return config.incoming.http_filter


def post(target: str = "/", headers: tuple[tuple[str, str], ...] = JSON_HEADERS,
         method: str = "POST") -> RequestView:
    return RequestView(method=method, target=target, headers=headers)


def body(value: object) -> bytes:
    return json.dumps(value).encode()


def body_filter(query: str, matches: str) -> HttpFilter:
    return compile_http_filter({"body_filter": {"body": "json", "query": query,
                                                "matches": matches}})


def compile_error(obj: dict[str, object]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_http_filter(obj, key_path="feature.network.incoming.http_filter", source="m.json")
    return info.value


# -- mirrord's documented examples ------------------------------------------------------


def test_mirrord_body_filter_example_loads_and_matches() -> None:
    """The body_filter example of mirrord's docs takes a body with the identity, not others."""
    f = loaded(MIRRORD_BODY_FILTER)
    assert f.needs_body
    hit = {"data": [{"legacyEntityIds": {"legacyUserIdentityId": "identity123"}}]}
    miss = {"data": [{"legacyEntityIds": {"legacyUserIdentityId": "identity1234"}}]}
    assert f.evaluate(post(), body=body(hit)).matched
    assert not f.evaluate(post(), body=body(miss)).matched


def test_mirrord_all_of_example_takes_request_a_only() -> None:
    """mirrord's all_of example: request A is stolen; B (no price ending 99) and C (other
    path) are not."""
    f = loaded(MIRRORD_ALL_OF)
    result = f.evaluate(post("/orders"), body=body(ORDER_A))
    assert result.matched
    assert result.clause == "all_of[path: /orders, body: " \
        "$..[?(typeof(@.price) == 'number')].price ~ 99$]"
    assert not f.evaluate(post("/orders"), body=body(ORDER_B)).matched
    assert not f.evaluate(post("/payments"), body=body(ORDER_C)).matched


def test_typeof_tells_numbers_from_strings() -> None:
    """mirrord's typeof: a numeric 4444 matches, the string "4444" does not."""
    f = body_filter("$.books[?(typeof(@) == 'number')]", "4$")
    assert f.evaluate(post(), body=body({"books": [1111, 2222, 4444]})).matched
    assert not f.evaluate(post(), body=body({"books": ["1111", "2222", "4444"]})).matched


def test_typeof_of_mixed_nodes_is_nothing() -> None:
    """typeof over nodes of different types is Nothing, which equals no type name."""
    f = body_filter("$[?(typeof(@.n.*) == 'number')].id", ".")
    assert f.evaluate(post(), body=body([{"id": "same", "n": {"a": 1, "b": 2}}])).matched
    assert not f.evaluate(post(), body=body([{"id": "mixed", "n": {"a": 1, "b": "2"}}])).matched
    assert not f.evaluate(post(), body=body([{"id": "none", "n": {}}])).matched


def test_schema_doc_example_numbers_of_three_to_five_digits() -> None:
    """The schema's own example: any book number of 3 to 5 digits matches."""
    f = body_filter("$.library.books[*]", r"^\d{3,5}$")
    assert f.evaluate(post(), body=body({"library": {"books": [34555, 1233, 234]}})).matched
    assert not f.evaluate(post(), body=body({"library": {"books": [12, 123456]}})).matched


# -- how values become text --------------------------------------------------------------


@pytest.mark.parametrize(("value", "pattern"), [
    ("abc", "^abc$"),  # a string as it is, without quotes
    (42, "^42$"),
    (1.5, r"^1\.5$"),
    (True, "^true$"),
    (None, "^null$"),
    ([1, "a"], r'^\[1,"a"\]$'),  # compact JSON
    ({"k": "é"}, '^{"k":"é"}$'),  # not escaped to \\u00e9
])
def test_values_become_text_as_mirrord_writes_them(value: object, pattern: str) -> None:
    """Strings match as they are; anything else as compact JSON."""
    assert body_filter("$.v", pattern).evaluate(post(), body=body({"v": value})).matched


def test_matches_is_case_sensitive_unlike_header_and_path() -> None:
    """mirrord compiles matches without (?i)."""
    f = body_filter("$.user", "^alice$")
    assert f.evaluate(post(), body=body({"user": "alice"})).matched
    assert not f.evaluate(post(), body=body({"user": "ALICE"})).matched


def test_one_matching_value_is_enough() -> None:
    """The clause matches when at least one selected value matches."""
    f = body_filter("$.items[*].name", "^B$")
    assert f.evaluate(post(), body=body(ORDER_A)).matched


def test_a_document_that_is_a_string_is_queried_as_itself() -> None:
    """A top-level JSON string is the root value, not JSON text to read again."""
    f = body_filter("$", r"^\[1\]$")
    assert f.evaluate(post(), body=b'"[1]"').matched


def test_no_selected_value_is_no_match_without_a_reason() -> None:
    """A query that selects nothing is an ordinary no match: nothing was skipped."""
    result = body_filter("$.missing", ".").evaluate(post(), body=body({"a": 1}))
    assert (result.matched, result.body_skipped) == (False, None)


# -- bodies that cannot be decided --------------------------------------------------------


@pytest.mark.parametrize(("headers", "raw", "reason"), [
    ((), body({"user": "a"}), BodySkip.NOT_JSON),
    ((("content-type", "text/plain"),), body({"user": "a"}), BodySkip.NOT_JSON),
    (JSON_HEADERS, b'{"user": ', BodySkip.INVALID_JSON),
    (JSON_HEADERS, b"\xff\xfe{}", BodySkip.INVALID_JSON),
    (JSON_HEADERS, b'{"user": NaN}', BodySkip.INVALID_JSON),
    (JSON_HEADERS, b"[" * 100_000 + b"]" * 100_000, BodySkip.INVALID_JSON),
    (JSON_HEADERS, b"", BodySkip.INVALID_JSON),
    (JSON_HEADERS, None, BodySkip.NOT_BUFFERED),
    (JSON_HEADERS, BodySkip.TOO_LARGE, BodySkip.TOO_LARGE),
    (JSON_HEADERS, BodySkip.TIMEOUT, BodySkip.TIMEOUT),
])
def test_an_undecidable_body_does_not_match_and_says_why(
        headers: tuple[tuple[str, str], ...], raw: bytes | BodySkip | None,
        reason: BodySkip) -> None:
    """Wrong content type, bad JSON, or no body: no match, with the reason."""
    result = body_filter("$.user", "a").evaluate(post(headers=headers), body=raw)
    assert (result.matched, result.body_skipped) == (False, reason)


def test_content_type_with_parameters_counts_as_json() -> None:
    """mirrord's check is "contains application/json", case-insensitively."""
    headers = (("Content-Type", "Application/JSON; charset=utf-8"),)
    assert body_filter("$.user", "a").evaluate(post(headers=headers),
                                               body=body({"user": "a"})).matched


def test_a_query_that_fails_on_the_body_is_no_match() -> None:
    """Descending through a document deeper than the JSONPath engine goes is no match."""
    deep: object = "x"
    for _ in range(150):
        deep = {"a": deep}
    result = body_filter("$..a", "x").evaluate(post(), body=body(deep))
    assert (result.matched, result.body_skipped) == (False, BodySkip.QUERY_FAILED)


def test_another_clause_can_match_when_the_body_cannot_be_read() -> None:
    """any_of: a header match takes the request even if the body is not JSON."""
    f = compile_http_filter({"any_of": [
        {"body": "json", "query": "$.user", "matches": "a"}, {"header": "^x-debug: 1$"}]})
    result = f.evaluate(post(headers=(("x-debug", "1"),)), body=b"not json")
    assert result.matched
    assert result.body_skipped is None


# -- deciding from the head alone -------------------------------------------------------


def test_head_alone_leaves_a_json_request_undecided() -> None:
    """A lone body clause on a JSON request needs the body."""
    assert body_filter("$.user", "a").evaluate_head(post()) is None


def test_head_alone_decides_a_request_that_is_not_json() -> None:
    """Without a JSON Content-Type the body can never match, so it is not needed."""
    result = body_filter("$.user", "a").evaluate_head(post(headers=()))
    assert result is not None
    assert (result.matched, result.body_skipped) == (False, BodySkip.NOT_JSON)


def test_head_alone_decides_all_of_when_another_clause_fails() -> None:
    """all_of with a path that does not match is decided without the body."""
    f = loaded(MIRRORD_ALL_OF)
    result = f.evaluate_head(post("/payments"))
    assert result is not None and not result.matched
    assert f.evaluate_head(post("/orders")) is None


def test_head_alone_decides_any_of_when_another_clause_matches() -> None:
    """any_of with a matching header is decided without the body."""
    f = compile_http_filter({"any_of": [
        {"body": "json", "query": "$.user", "matches": "a"}, {"header": "^x-debug: 1$"}]})
    result = f.evaluate_head(post(headers=(*JSON_HEADERS, ("x-debug", "1"))))
    assert result is not None and result.matched
    assert f.evaluate_head(post()) is None


def test_head_alone_is_evaluate_for_filters_without_a_body_clause() -> None:
    """A filter that does not need the body is decided by its head, as always."""
    f = compile_http_filter({"path_filter": "^/a"})
    assert not f.needs_body
    assert f.evaluate_head(post("/a")) == f.evaluate(post("/a"))


@given(st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=4), st.booleans())
def test_head_decision_agrees_with_the_full_evaluation(kinds: list[int], all_of: bool) -> None:
    """Whenever the head alone decides, evaluating with the body gives the same answer."""
    members: list[dict[str, str]] = []
    for kind in kinds:
        if kind == 0:
            members.append({"path": "^/a"})
        elif kind == 1:
            members.append({"header": "^x-k: 1$"})
        else:
            members.append({"body": "json", "query": "$.u", "matches": "^a$"})
    f = compile_http_filter({"all_of" if all_of else "any_of": members})
    for target in ("/a", "/b"):
        for headers in (JSON_HEADERS, (("x-k", "1"),), (*JSON_HEADERS, ("x-k", "1"))):
            for raw in (body({"u": "a"}), body({"u": "b"})):
                request = post(target, headers)
                head = f.evaluate_head(request)
                if head is not None:
                    assert head.matched == f.evaluate(request, body=raw).matched


# -- in-query regexes and the time budget -------------------------------------------------


def test_in_query_match_and_search_work() -> None:
    """RFC 9535's match() and search() run inside queries."""
    doc = body({"users": [{"name": "alice", "id": 1}, {"name": "bob", "id": 2}]})
    assert body_filter("$.users[?match(@.name, 'al.*')].id", "^1$").evaluate(
        post(), body=doc).matched
    assert body_filter("$.users[?search(@.name, 'o')].id", "^2$").evaluate(
        post(), body=doc).matched


def test_a_catastrophic_matches_regex_runs_out_and_is_reported() -> None:
    """A matches regex that backtracks forever is cut off and named in timed_out."""
    f = body_filter("$.v", "(a|a)+$")
    result = f.evaluate(post(), body=body({"v": "a" * 40 + "!"}), budget_s=0.005)
    assert not result.matched
    assert result.timed_out == ("body_filter: $.v ~ (a|a)+$",)


def test_a_catastrophic_in_query_regex_runs_out_and_is_reported() -> None:
    """An in-query search() that backtracks forever is cut off, as no match, reported."""
    values = [{"v": "a" * 40 + "!"} for _ in range(50)]
    f = body_filter("$[?search(@.v, '(a|a)+b')].v", ".")
    result = f.evaluate(post(), body=body(values), budget_s=0.005)
    assert not result.matched
    assert result.timed_out == ("body_filter: $[?search(@.v, '(a|a)+b')].v ~ .",)


# -- the query-string clause ---------------------------------------------------------------


def test_query_clause_searches_the_query_string_case_insensitively() -> None:
    """{"query": re} is searched in the text after "?", ignoring case."""
    f = compile_http_filter({"all_of": [{"query": "(^|&)user=alice(&|$)"}]})
    assert f.evaluate(post("/a?x=1&USER=Alice")).matched
    assert not f.evaluate(post("/a?user=alicex")).matched
    assert not f.needs_body


def test_query_clause_does_not_see_the_path() -> None:
    """The path is not part of the query string."""
    f = compile_http_filter({"any_of": [{"query": "alice"}]})
    assert not f.evaluate(post("/alice?x=1")).matched


def test_query_clause_without_a_query_does_not_match() -> None:
    """No "?" means no query string: even a pattern matching "" does not match."""
    f = compile_http_filter({"any_of": [{"query": "^$"}]})
    assert not f.evaluate(post("/a")).matched
    assert f.evaluate(post("/a?")).matched


def test_query_clause_in_absolute_form_targets() -> None:
    """An absolute-form target's query is found after its origin."""
    f = compile_http_filter({"any_of": [{"query": "^q=1$"}]})
    assert f.evaluate(post("http://example.test/a?q=1")).matched


# -- compile errors name the key ---------------------------------------------------------


@pytest.mark.parametrize(("obj", "key_path", "words"), [
    ({"body_filter": {"body": "json", "query": "$.a | $.b", "matches": "x"}},
     "body_filter.query", "invalid JSONPath '$.a | $.b' in body_filter: unexpected token"),
    ({"body_filter": {"body": "json", "query": "a.b", "matches": "x"}},
     "body_filter.query", "invalid JSONPath 'a.b'"),
    ({"body_filter": {"body": "json", "query": "$[?nope(@)]", "matches": "x"}},
     "body_filter.query", "function 'nope' is not defined"),
    ({"body_filter": {"body": "json", "query": "$.a", "matches": "(x"}},
     "body_filter.matches", "invalid regex '(x' in body_filter"),
    ({"any_of": [{"body": "json", "query": "$.x[", "matches": "x"}]},
     "any_of[0].query", "invalid JSONPath '$.x[' in body"),
    ({"body_filter": {"body": "xml", "query": "$.a", "matches": "x"}},
     "body_filter.body", 'expected "json"'),
    ({"body_filter": {"body": {"type": "json", "query": "$.a", "matches": "x"}}},
     "body_filter.body", "flat"),
    ({"body_filter": {"body": "json", "matches": "x"}}, "body_filter", "needs 'query'"),
    ({"body_filter": {"body": "json", "query": "$.a"}}, "body_filter", "needs 'matches'"),
    ({"body_filter": {"body": "json", "query": "", "matches": "x"}},
     "body_filter.query", "empty string"),
    ({"body_filter": {"body": "json", "query": 3, "matches": "x"}},
     "body_filter.query", "got a number"),
    ({"body_filter": {"body": "json", "query": "$.a", "matches": "x", "mathces": "y"}},
     "body_filter.mathces", "did you mean 'matches'"),
    ({"body_filter": "json"}, "body_filter", "expected an object"),
    ({"any_of": [{"query": "$.a", "matches": "x"}]}, "any_of[0]", 'needs "body": "json"'),
    ({"any_of": [{"query": "(x"}]}, "any_of[0].query", "invalid regex '(x' in query"),
    ({"any_of": [{"query": ""}]}, "any_of[0].query", "empty string"),
    ({"body_filter": {"body": "json", "query": "$.a", "matches": "x"}, "path_filter": "a"},
     "path_filter", "exactly one filter"),
])
def test_compile_errors_name_the_key(obj: dict[str, object], key_path: str,
                                     words: str) -> None:
    """A bad body or query clause is an error naming its key path."""
    err = compile_error(obj)
    assert err.key_path == f"feature.network.incoming.http_filter.{key_path}"
    assert words in err.message


def test_a_bad_jsonpath_in_a_file_has_line_and_column() -> None:
    """The JSONPath error points at the query's line in the file."""
    text = MIRRORD_BODY_FILTER.replace("$.data[*]", "$.data[*")
    with pytest.raises(ConfigError) as info:
        parse_config(text, fmt="json", source="mirrord.json")
    assert info.value.key_path == "feature.network.incoming.http_filter.body_filter.query"
    assert info.value.line == 9


def test_to_mirrord_round_trips() -> None:
    """A body filter and a query clause survive to_mirrord and back."""
    for obj in ({"body_filter": {"body": "json", "query": "$.a", "matches": "x"}},
                {"any_of": [{"query": "a=1"}, {"body": "json", "query": "$.b", "matches": "y"}]}):
        f = compile_http_filter(obj)
        assert f.to_mirrord() == obj
        assert compile_http_filter(f.to_mirrord()) == f


def test_yaml_and_toml_forms_load() -> None:
    """The same body filter written in YAML and TOML loads as in JSON."""
    yaml_text = """
feature:
  network:
    incoming:
      mode: steal
      http_filter:
        body_filter: {body: json, query: "$.user", matches: "^alice$"}
"""
    toml_text = """
[feature.network.incoming]
mode = "steal"
[feature.network.incoming.http_filter.body_filter]
body = "json"
query = "$.user"
matches = "^alice$"
"""
    for text, fmt in ((yaml_text, "yaml"), (toml_text, "toml")):
        f = parse_config(text, fmt=fmt).incoming.http_filter
        assert f is not None and f.needs_body
        assert f.evaluate(post(), body=body({"user": "alice"})).matched
