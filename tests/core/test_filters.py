"""mirrord-compatible HTTP filters: matching rules, the regex budget, and compile errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waylay.core.engine import jsonc
from waylay.core.engine.errors import ConfigError
from waylay.core.engine.filter_clauses import RegexClause
from waylay.core.engine.filters import (
    HttpFilter,
    MatchResult,
    RequestView,
    compile_http_filter,
)


def req(
    target: str = "/",
    *,
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
    authority: str | None = None,
) -> RequestView:
    return RequestView(method=method, target=target, headers=headers, authority=authority)


def hf(**clauses: object) -> HttpFilter:
    return compile_http_filter(clauses)


def compile_error(obj: dict[str, object]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_http_filter(obj, key_path="feature.network.incoming.http_filter", source="m.json")
    return info.value


# -- header_filter ---------------------------------------------------------------------


def test_header_filter_is_searched_unanchored_in_name_colon_value() -> None:
    """A header regex matches anywhere in the rendered "name: value" line."""
    f = hf(header_filter="alice")
    assert f.evaluate(req(headers=(("X-User", "bob"), ("X-User", "malice")))).matched
    assert not f.evaluate(req(headers=(("X-User", "bob"),))).matched


def test_header_filter_sees_the_name_lower_cased() -> None:
    """Header names are lower-cased before matching, whatever case they arrived in."""
    f = hf(header_filter="(?-i)^x-user: alice$")
    assert f.evaluate(req(headers=(("X-USER", "alice"),))).matched
    assert not f.evaluate(req(headers=(("X-USER", "ALICE"),))).matched


def test_header_filter_is_case_insensitive() -> None:
    """The regex itself is case-insensitive, as with mirrord's (?i) prefix."""
    f = hf(header_filter="X-User: ALICE")
    result = f.evaluate(req(headers=(("x-user", "alice"),)))
    assert result == MatchResult(matched=True, clause="header_filter: X-User: ALICE", timed_out=())


def test_header_filter_sees_h2_authority_as_host() -> None:
    """An HTTP/2 :authority is offered to header filters as "host: <authority>"."""
    f = hf(header_filter=r"^host: api\..+")
    assert f.evaluate(req(authority="api.example.com")).matched
    assert not f.evaluate(req(authority="web.example.com")).matched
    assert f.evaluate(req(headers=(("Host", "api.example.com"),))).matched


def test_header_filter_supports_lookaround_and_unicode_classes() -> None:
    """Lookahead, lookbehind and \\p{..} classes work (the `regex` package); a value that
    is not visible ASCII is never matched (see the tests at the end)."""
    f = hf(header_filter=r"(?<=x-name: )\p{Latin}+$")
    assert f.evaluate(req(headers=(("X-Name", "abc"),))).matched
    assert not f.evaluate(req(headers=(("X-Name", "123"),))).matched
    assert not f.evaluate(req(headers=(("X-Name", "abcé"),))).matched


# -- path_filter -----------------------------------------------------------------------


def test_path_filter_tries_path_then_path_with_query() -> None:
    """A path regex matches the path without the query or the path with it."""
    assert hf(path_filter="^/a$").evaluate(req("/a?x=1")).matched
    assert hf(path_filter=r"x=1$").evaluate(req("/a?x=1")).matched
    assert hf(path_filter=r"^/a\?x").evaluate(req("/a?x=1")).matched
    assert not hf(path_filter="^/b").evaluate(req("/a?x=/b")).matched


def test_path_filter_is_case_insensitive() -> None:
    """Path regexes ignore case."""
    assert hf(path_filter="^/API/").evaluate(req("/api/v1")).matched


def test_path_filter_reads_absolute_form_targets() -> None:
    """An absolute-form target is matched on its path and query only."""
    f = hf(path_filter="^/a/b$")
    assert f.evaluate(req("http://example.com/a/b?q=1")).matched
    assert hf(path_filter="^/$").evaluate(req("http://example.com")).matched


# -- method_filter ---------------------------------------------------------------------


def test_method_filter_is_case_insensitive_equality() -> None:
    """A method filter matches the method exactly, ignoring case."""
    f = hf(method_filter="post")
    assert f.evaluate(req(method="POST")).matched
    assert not f.evaluate(req(method="POSTX")).matched
    assert not f.evaluate(req(method="GET")).matched


def test_method_filter_does_not_fold_non_ascii_letters() -> None:
    """A method spelled with U+017F (long s) does not match POST through Unicode folding."""
    assert not hf(method_filter="POST").evaluate(req(method="PO\u017fT")).matched


# -- all_of / any_of -------------------------------------------------------------------


def test_all_of_needs_every_clause() -> None:
    """all_of matches only when every inner filter matches."""
    f = hf(all_of=[{"header": "^x-debug: 1$"}, {"path": "^/api/"}, {"method": "post"}])
    hit = req("/api/x", method="POST", headers=(("X-Debug", "1"),))
    result = f.evaluate(hit)
    assert result.matched
    assert result.clause == f.text == "all_of[header: ^x-debug: 1$, path: ^/api/, method: post]"
    assert not f.evaluate(req("/api/x", method="GET", headers=(("X-Debug", "1"),))).matched
    assert not f.evaluate(req("/web", method="POST", headers=(("X-Debug", "1"),))).matched


def test_any_of_needs_one_clause_and_names_it() -> None:
    """any_of matches when one inner filter matches, and reports that one."""
    f = hf(any_of=[{"path": "^/a"}, {"method": "DELETE"}])
    assert f.text == "any_of[path: ^/a, method: DELETE]"
    assert f.evaluate(req("/b", method="delete")).clause == "method: DELETE"
    assert f.evaluate(req("/a")).clause == "path: ^/a"
    assert f.evaluate(req("/b")).clause is None


# -- text / to_mirrord / immutability ---------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        {"header_filter": "X-User: alice"},
        {"path_filter": "^/a"},
        {"method_filter": "Patch"},
        {"all_of": [{"header": "a"}, {"path": "b"}, {"method": "GET"}]},
        {"any_of": [{"path": "^/a"}]},
    ],
)
def test_to_mirrord_round_trips(obj: dict[str, object]) -> None:
    """to_mirrord gives mirrord's JSON form, which compiles back to an equal filter."""
    f = compile_http_filter(obj)
    assert f.to_mirrord() == obj
    assert compile_http_filter(f.to_mirrord()) == f
    assert hash(compile_http_filter(f.to_mirrord())) == hash(f)


def test_ports_are_ignored_by_the_filter_compiler() -> None:
    """ports beside the filter is config.py's business; the filter leaves it out."""
    f = compile_http_filter({"path_filter": "x", "ports": [80]})
    assert f.to_mirrord() == {"path_filter": "x"}


def test_filter_is_immutable() -> None:
    """A compiled filter cannot be changed in place."""
    f = hf(path_filter="x")
    with pytest.raises(AttributeError):
        f._root = f._root


# -- the regex time budget -------------------------------------------------------------


def test_catastrophic_regex_times_out_as_no_match() -> None:
    """A catastrophic pattern ends (the regex package's timeout), as no match, reported."""
    f = hf(header_filter="(a+)+$")
    evil = req(headers=(("X-A", "a" * 5000 + "!"), ("X-B", "ok")))
    result = f.evaluate(evil)
    assert not result.matched
    assert result.timed_out == ("header_filter: (a+)+$",)


def test_timed_out_clause_does_not_stop_other_clauses() -> None:
    """In any_of, a clause that times out counts as no match; another may still match."""
    f = hf(any_of=[{"header": "(a+)+$"}, {"path": "^/ok"}])
    result = f.evaluate(req("/ok", headers=(("X-A", "a" * 5000 + "!"),)))
    assert result.matched
    assert result.clause == "path: ^/ok"
    assert result.timed_out == ("header: (a+)+$",)


class _SpendsItsShare:
    """A stand-in compiled regex that uses up every timeout it is given, then times out;
    with a fake clock it advances that clock by the time spent."""

    def __init__(self, now: list[float] | None = None) -> None:
        self.timeouts: list[float] = []
        self._now = now

    def search(self, string: str, *, timeout: float) -> object | None:
        self.timeouts.append(timeout)
        if self._now is not None:
            self._now[0] += timeout
        raise TimeoutError


def _spending_filter(pattern: _SpendsItsShare) -> HttpFilter:
    return HttpFilter(RegexClause(kind="header", pattern="(a+)+$", text="header_filter: (a+)+$",
                             compiled=pattern))


def test_budget_is_shared_by_the_whole_evaluation() -> None:
    """Many catastrophic headers share one budget: all their searches together get at most
    the budget, not one budget per header (with and without a clock)."""
    evil = req(headers=tuple((f"X-{i}", "a" * 50 + "!") for i in range(20)))
    pattern = _SpendsItsShare()
    result = _spending_filter(pattern).evaluate(evil, budget_s=0.05)
    assert len(pattern.timeouts) == 20 and sum(pattern.timeouts) <= 0.05 + 1e-9
    assert result.timed_out == ("header_filter: (a+)+$",)
    now = [100.0]
    pattern = _SpendsItsShare(now)
    result = _spending_filter(pattern).evaluate(evil, budget_s=0.05, clock=lambda: now[0])
    assert sum(pattern.timeouts) <= 0.05 + 1e-9 and now[0] - 100.0 <= 0.05 + 1e-9
    assert result.timed_out == ("header_filter: (a+)+$",)


class _PreemptedOnce:
    """A stand-in regex whose first search "times out" (the process was descheduled),
    then matches at once; a CPU clock shows the retry used no time of its own."""

    def __init__(self) -> None:
        self.calls = 0

    def search(self, string: str, *, timeout: float) -> object | None:
        self.calls += 1
        if self.calls == 1:
            raise TimeoutError
        return object()


def test_a_search_descheduled_on_a_busy_machine_is_not_a_timeout() -> None:
    """A wall-clock timeout with no CPU time spent is retried: the request still matches."""
    pattern = _PreemptedOnce()
    f = HttpFilter(RegexClause(kind="header", pattern="^x: 1$", text="header_filter: ^x: 1$",
                          compiled=pattern))
    result = f.evaluate(req(headers=(("X", "1"),)), cpu_clock=lambda: 0.0)
    assert result.matched and result.timed_out == () and pattern.calls == 2


def test_a_search_that_spends_its_time_is_not_retried_forever() -> None:
    """A search that uses its whole share of CPU is out of time after one retry."""
    cpu = [0.0]
    pattern = _SpendsItsShare(cpu)
    result = _spending_filter(pattern).evaluate(req(headers=(("X", "a"),)), budget_s=0.01,
                                                cpu_clock=lambda: cpu[0])
    assert not result.matched and result.timed_out == ("header_filter: (a+)+$",)
    assert len(pattern.timeouts) == 2


def test_a_catastrophic_regex_really_times_out() -> None:
    """The regex package's own timeout stops a catastrophic search: counted as no match."""
    f = hf(header_filter="(a+)+$")
    result = f.evaluate(req(headers=(("X-A", "a" * 5000 + "!"),)), budget_s=0.01)
    assert not result.matched and result.timed_out == ("header_filter: (a+)+$",)


def test_exhausted_budget_counts_as_no_match_but_methods_still_match() -> None:
    """With no budget left, regex clauses time out; method equality needs no regex."""
    f = hf(any_of=[{"path": "^/"}, {"method": "GET"}])
    result = f.evaluate(req("/a"), budget_s=0.0)
    assert result.matched and result.clause == "method: GET"
    assert result.timed_out == ("path: ^/",)


def test_clause_that_matches_on_another_header_is_not_reported_timed_out() -> None:
    """A header clause that times out on one line but matches another is a plain match."""
    f = hf(header_filter="(a+)+$|^x-b: ok")
    result = f.evaluate(req(headers=(("X-A", "a" * 5000 + "!"), ("X-B", "ok"))))
    assert result.matched and result.timed_out == ()


# -- compile errors --------------------------------------------------------------------


def test_error_two_filters_at_the_top() -> None:
    """Only one of header/path/method/all_of/any_of is allowed, as in mirrord."""
    err = compile_error({"header_filter": "a", "path_filter": "b"})
    assert err.key_path == "feature.network.incoming.http_filter.path_filter"
    assert "exactly one" in err.message and err.source == "m.json"


def test_error_no_filter_at_all() -> None:
    """An http_filter object without any filter key is an error here."""
    err = compile_error({"ports": [80]})
    assert err.key_path == "feature.network.incoming.http_filter"
    assert "needs one of" in err.message


def test_error_unknown_key_suggests_the_close_one() -> None:
    """A misspelt key is named with a suggestion."""
    err = compile_error({"header_fliter": "a"})
    assert err.key_path == "feature.network.incoming.http_filter.header_fliter"
    assert "did you mean 'header_filter'" in err.message


@pytest.mark.parametrize(
    ("obj", "key_path", "words"),
    [
        ({"any_of": []}, "any_of", "empty list"),
        ({"all_of": "x"}, "all_of", "expected a list"),
        ({"path_filter": ""}, "path_filter", "empty string"),
        ({"header_filter": 3}, "header_filter", "got a number"),
        ({"any_of": [{"path": "a"}, {"header": ""}]}, "any_of[1].header", "empty string"),
        ({"any_of": [{"path": "a"}, "b"]}, "any_of[1]", "expected an object"),
        ({"any_of": [{}]}, "any_of[0]", "expected an object"),
        ({"all_of": [{"path": "a", "header": "b"}]}, "all_of[0]", "exactly one"),
        ({"all_of": [{"any_of": []}]}, "all_of[0].any_of", "unknown key"),
        ({"method_filter": ["POST", "PUT"]}, "method_filter", "any_of"),
        ({"method_filter": "GET POST"}, "method_filter", "not an HTTP method"),
        ({"any_of": [{"method": None}]}, "any_of[0].method", "got null"),
    ],
)
def test_error_names_the_key_path(obj: dict[str, object], key_path: str, words: str) -> None:
    """Each wrong shape is a ConfigError naming the exact key path."""
    err = compile_error(obj)
    assert err.key_path == f"feature.network.incoming.http_filter.{key_path}"
    assert words in err.message


def test_error_bad_regex_names_the_filter_and_the_regex_error() -> None:
    """A regex that does not compile is reported with the filter and regex's message."""
    err = compile_error({"any_of": [{"path": "ok"}, {"header": "x-(a"}]})
    assert err.key_path == "feature.network.incoming.http_filter.any_of[1].header"
    assert "invalid regex 'x-(a' in header" in err.message
    # the position is in the pattern as written (no "(?i)" prefix shifting it)
    assert err.message.endswith("missing ) at position 4")


def test_error_carries_line_and_column_from_positions() -> None:
    """Given a document's positions, errors point at the offending value."""
    text = '{\n  "any_of": [\n    {"path": "ok"},\n    {"header": "("}\n  ]\n}'
    doc = jsonc.parse(text)
    assert isinstance(doc.value, dict)
    with pytest.raises(ConfigError) as info:
        compile_http_filter(doc.value, source="f.json", positions=doc.positions)
    err = info.value
    assert (err.line, err.column, err.key_path) == (4, 16, "http_filter.any_of[1].header")
    assert str(err).startswith("f.json:4:16: http_filter.any_of[1].header: invalid regex")


@pytest.mark.parametrize("pattern", ["(?u)(?a)x", "(" * 2000 + ")" * 2000, "a{99999999999}"])
def test_odd_regex_failures_are_config_errors(pattern: str) -> None:
    """Flag conflicts, absurd nesting and huge repeats are ConfigErrors, not tracebacks."""
    assert "invalid regex" in compile_error({"path_filter": pattern}).message


@given(st.text(max_size=30))
def test_any_pattern_compiles_or_raises_config_error(pattern: str) -> None:
    """Whatever the pattern, compiling gives a filter or a ConfigError, never a traceback."""
    try:
        f = compile_http_filter({"path_filter": pattern})
    except ConfigError:
        return
    f.evaluate(req("/x?y"), budget_s=0.01)


# -- header values that are not visible ASCII (mirrord leaves them out) ----------------------

UTF8_AS_LATIN1 = "yés".encode().decode("latin-1")  # how the HTTP/1 parser hands it over


@pytest.mark.parametrize("value", ["yés", UTF8_AS_LATIN1, "y\x01", "y\x7f"])
@pytest.mark.parametrize("shape", ["header_filter", "any_of"])
def test_a_header_value_that_is_not_visible_ascii_is_left_out(value: str, shape: str) -> None:
    """`x-filter: y` does not match `x-filter: yés`: mirrord cannot read it as text."""
    http_filter = hf(header_filter="x-filter: y") if shape == "header_filter" else \
        hf(any_of=[{"header": "x-filter: y"}, {"path": "^/never$"}])
    assert not http_filter.evaluate(req(headers=(("X-Filter", value),))).matched
    # The other headers of the same request still count.
    both = (("X-Filter", value), ("X-Other", "1"), ("x-filter", "yes"))
    assert http_filter.evaluate(req(headers=both)).matched


@pytest.mark.parametrize("shape", ["header_filter", "all_of"])
def test_a_header_value_with_a_tab_is_visible_ascii(shape: str) -> None:
    """A tab is allowed in a header value, as in the http crate's HeaderValue::to_str."""
    http_filter = hf(header_filter="x-filter: a\tb") if shape == "header_filter" else \
        hf(all_of=[{"header": "x-filter: a\tb"}, {"method": "GET"}])
    assert http_filter.evaluate(req(headers=(("X-Filter", "a\tb"),))).matched
