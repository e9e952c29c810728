"""mirrord-compatible HTTP filters: compiled once from config, evaluated per request.

The matching rules are mirrord's (docs/architecture.md §2), so a filter written for mirrord takes
the same
requests here:

- ``header_filter`` / ``{"header": re}``: the regex is *searched* (unanchored) in every
  header rendered as ``name: value`` with the name lower-cased, case-insensitively; one
  matching header line is enough. For HTTP/2 the ``:authority`` pseudo-header is offered as
  ``host: <authority>`` too (mirrord misses this; RFC 9113 §8.3.1 makes it the Host).
- ``path_filter`` / ``{"path": re}``: searched case-insensitively in the path without the
  query, then in path+query; either matching is enough.
- ``method_filter`` / ``{"method": m}``: case-insensitive equality (methods are ASCII tokens,
  RFC 9110 §9.1).
- ``body_filter`` / ``{"body": "json", "query": jsonpath, "matches": re}``: mirrord's JSON
  body filter (``core/engine/body_filter.py``): a filter with one *needs the body*
  (:attr:`HttpFilter.needs_body`), which the caller buffers within bounds and hands to
  :meth:`HttpFilter.evaluate`; a body that is missing, not JSON or not labelled JSON does
  not match, and :attr:`MatchResult.body_skipped` says why.
- ``{"query": re}`` (waylay's own, inside ``all_of`` / ``any_of``): searched
  case-insensitively in the query string (after ``?``, as received); no query, no match.
- ``all_of`` / ``any_of``: a non-empty list of the inner forms, AND / OR.

Every regex search runs under a time budget (the ``regex`` package's ``timeout=``): a search
that runs out counts as "no match" and is reported in :attr:`MatchResult.timed_out`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import regex

from waylay.core.engine.body_filter import (
    BodySkip,
    JsonQueryError,
    compile_json_query,
    compile_matches,
)
from waylay.core.engine.filter_clauses import (
    BodyClause,
    Clause,
    Evaluation,
    ExtendedEvaluation,
    GroupClause,
    Leaf,
    MethodClause,
    Pattern,
    RegexClause,
    search_within,
    visible_value,
)

# The request as a filter sees it lives with the evaluation; callers import it from here.
from waylay.core.engine.filter_clauses import RequestView as RequestView
from waylay.core.engine.filter_clauses import request_view as request_view
from waylay.core.engine.jsonc import KeyPath, Locator, Positions, describe_type

# Total regex time for evaluating one request. Filters run inline on the agent's event loop
# for every request on a filtered port, so a pathological pattern must not stall other
# connections: 20 ms caps the latency one request can add, while a sane filter needs
# microseconds (about a thousand times less).
MATCH_BUDGET_S = 0.02

FILTER_KEYS = ("header_filter", "path_filter", "method_filter", "body_filter", "all_of",
               "any_of")
_INNER_KEYS = ("header", "path", "method", "query", "body")
_BODY_KEYS = ("body", "query", "matches")
_TOKEN = regex.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 token


@dataclass(frozen=True, kw_only=True)
class MatchResult:
    """The outcome of evaluating a filter against one request."""

    matched: bool
    clause: str | None  # text of the clause that decided a match; None if no match
    timed_out: tuple[str, ...]  # clauses whose regex hit the budget (counted as no match)
    # Why a body clause could not read the body (counted as no match); None when every
    # body clause evaluated read it, or there is none.
    body_skipped: BodySkip | None = None


_NO_MATCH = MatchResult(matched=False, clause=None, timed_out=())


class HttpFilter:
    """An immutable, compiled HTTP filter. Build it with :func:`compile_http_filter`."""

    __slots__ = ("_extended", "_root", "needs_body")
    _root: Clause
    needs_body: bool  # a body clause is in it: evaluate() wants the request's body
    _extended: bool  # a body or query clause is in it: evaluated by ExtendedEvaluation

    def __init__(self, root: Clause) -> None:
        object.__setattr__(self, "_root", root)
        leaves = root.members if isinstance(root, GroupClause) else (root,)
        needs_body = any(isinstance(leaf, BodyClause) for leaf in leaves)
        object.__setattr__(self, "needs_body", needs_body)
        object.__setattr__(self, "_extended", needs_body or any(
            isinstance(leaf, RegexClause) and leaf.kind == "query" for leaf in leaves))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("HttpFilter is immutable; compile a new one")

    @property
    def text(self) -> str:
        """Short description, e.g. ``header_filter: X-User: alice``."""
        return self._root.text

    def to_mirrord(self) -> dict[str, object]:
        """mirrord's JSON form (without ``ports``); compile_http_filter reads it back."""
        root = self._root
        if isinstance(root, GroupClause):
            return {"all_of" if root.all else "any_of": [_inner_json(m) for m in root.members]}
        if isinstance(root, BodyClause):
            return {"body_filter": _inner_json(root)}
        key, value = _inner_json(root).popitem()
        return {f"{key}_filter": value}

    def evaluate(self, request: RequestView, *, body: bytes | BodySkip | None = None,
                 budget_s: float = MATCH_BUDGET_S,
                 clock: Callable[[], float] | None = None,
                 cpu_clock: Callable[[], float] | None = None) -> MatchResult:
        """Does ``request`` match? Never takes much longer than ``budget_s`` in regex time.

        ``body`` is the whole request body when the caller has it (only filters that
        :attr:`needs_body` look), or why it has not (``None``: not buffered); a body
        clause without a body does not match and ``body_skipped`` says why.

        Time enters from outside (this module reads no clock): with ``clock`` the time a
        fast search leaves unused goes to the searches after it; without, each search
        gets an equal share of the budget. With ``cpu_clock`` (the thread's CPU time), a
        search that timed out only because it was descheduled is tried again
        (search_within).
        """
        root = self._root
        # A lone header or method clause is never extended: their fast paths come first.
        if type(root) is RegexClause and root.kind == "header":
            return self._evaluate_header(root, request, budget_s, clock, cpu_clock)
        if type(root) is MethodClause:
            method = request.method  # see Evaluation.leaf
            if method.isascii() and method.upper() == root.method:
                return MatchResult(matched=True, clause=root.text, timed_out=())
            return _NO_MATCH
        if self._extended:
            result = self._evaluate_extended(request, body, budget_s, clock, cpu_clock, False)
            assert result is not None  # only a head-only evaluation leaves it open
            return result
        run = Evaluation(request, root, budget_s, clock, cpu_clock)
        if isinstance(root, GroupClause):
            matched, clause = run.group(root)
        else:
            matched, clause = run.leaf(root), root.text
        return MatchResult(
            matched=matched,
            clause=clause if matched else None,
            timed_out=tuple(dict.fromkeys(run.timed_out)),
        )

    def evaluate_head(self, request: RequestView, *, budget_s: float = MATCH_BUDGET_S,
                      clock: Callable[[], float] | None = None,
                      cpu_clock: Callable[[], float] | None = None) -> MatchResult | None:
        """The result if the head alone decides it, else None: the body is needed.

        For a filter that does not :attr:`needs_body` this is :meth:`evaluate`. Otherwise
        the other clauses may decide without the body (``all_of`` with a path that does
        not match; ``any_of`` with a header that does), and so may a Content-Type that
        is not JSON; only what is left undecided is worth buffering the body for.
        """
        if not self.needs_body:
            return self.evaluate(request, budget_s=budget_s, clock=clock, cpu_clock=cpu_clock)
        return self._evaluate_extended(request, None, budget_s, clock, cpu_clock, True)

    def _evaluate_extended(self, request: RequestView, body: bytes | BodySkip | None,
                           budget_s: float, clock: Callable[[], float] | None,
                           cpu_clock: Callable[[], float] | None,
                           head_only: bool) -> MatchResult | None:  # None only if head_only
        root = self._root
        run = ExtendedEvaluation(request, root, budget_s, clock, cpu_clock, body, head_only)
        matched: bool | None
        if isinstance(root, GroupClause):
            matched, clause = run.tri_group(root)
        else:
            matched, clause = run.tri_leaf(root), root.text
        if matched is None:
            return None
        return MatchResult(
            matched=matched,
            clause=clause if matched else None,
            timed_out=tuple(dict.fromkeys(run.timed_out)),
            body_skipped=None if matched else run.body_skipped,
        )

    @staticmethod
    def _evaluate_header(leaf: RegexClause, request: RequestView, budget_s: float,
                         clock: Callable[[], float] | None,
                         cpu_clock: Callable[[], float] | None) -> MatchResult:
        """``evaluate`` for a lone header clause, the commonest filter, without the
        general ``Evaluation`` bookkeeping (same rules: header lines, then the authority)."""
        headers = request.headers
        authority = request.authority
        total = len(headers) + (authority is not None)
        deadline = clock() + budget_s if clock is not None else 0.0
        search = leaf.compiled.search
        timed_out = False
        left = total
        for index in range(total):
            if index < len(headers):
                name, value = headers[index]
                if not (value.isascii() and value.isprintable()) and not visible_value(value):
                    left -= 1
                    continue
                line = f"{name.lower()}: {value}"
            else:
                line = f"host: {authority}"
            share = budget_s / total  # never less: see Evaluation.leaf
            if clock is not None:
                share = max(share, (deadline - clock()) / left)
            left -= 1
            if share <= 0:
                timed_out = True
                continue
            found = search_within(search, line, share, cpu_clock)
            if found:
                return MatchResult(matched=True, clause=leaf.text, timed_out=())
            if found is None:
                timed_out = True
        if timed_out:
            return MatchResult(matched=False, clause=None, timed_out=(leaf.text,))
        return _NO_MATCH

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HttpFilter) and self.to_mirrord() == other.to_mirrord()

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"HttpFilter({self.text!r})"


def _inner_json(clause: Leaf) -> dict[str, object]:
    if isinstance(clause, MethodClause):
        return {"method": clause.original}
    if isinstance(clause, BodyClause):
        return {"body": "json", "query": clause.query, "matches": clause.matches}
    return {clause.kind: clause.pattern}


def compile_http_filter(
    obj: Mapping[str, object],
    *,
    key_path: str = "http_filter",
    source: str | None = None,
    positions: Positions | None = None,
) -> HttpFilter:
    """Check and compile mirrord's ``http_filter`` object (``ports`` is ignored here).

    Raises ConfigError naming the key path (under ``key_path``) and, when ``positions``
    (relative to ``obj``) are given, line and column.
    """
    where = Locator(source=source, prefix=key_path, positions=positions or Positions())
    if not isinstance(obj, Mapping):
        raise where.error(f"expected an object with one of {', '.join(FILTER_KEYS)}")
    for key in obj:
        if key not in (*FILTER_KEYS, "ports"):
            raise where.unknown_key((), key, (*FILTER_KEYS, "ports"))
    present = [key for key in obj if key in FILTER_KEYS]  # in the order written
    if not present:
        raise where.error(f"needs one of {', '.join(FILTER_KEYS)}")
    if len(present) > 1:
        raise where.error(
            f"has both {present[0]} and {present[1]}; mirrord allows exactly one filter at the "
            "top of http_filter (combine them with all_of or any_of)",
            (present[1],),
            at_key=True,
        )
    key = present[0]
    value = obj[key]
    if key in ("all_of", "any_of"):
        members = _compile_members(value, where, key)
        text = f"{key}[{', '.join(m.text for m in members)}]"
        return HttpFilter(GroupClause(all=key == "all_of", members=members, text=text))
    if key == "body_filter":
        if not isinstance(value, Mapping):
            raise where.error(
                'expected an object like {"body": "json", "query": "$.user", "matches": "^a$"}',
                (key,))
        return HttpFilter(_compile_body(value, where, (key,), "body_filter: "))
    kind = key.removesuffix("_filter")
    return HttpFilter(_compile_leaf(kind, value, where, (key,), f"{key}: "))


def _compile_members(value: object, where: Locator, key: str) -> tuple[Leaf, ...]:
    if not isinstance(value, list):
        raise where.error('expected a list of {"header"|"path"|"method"|"query"|"body": ...}',
                          (key,))
    if not value:
        raise where.error("empty list (it needs at least one filter)", (key,))
    members: list[Leaf] = []
    for index, item in enumerate(value):
        path: KeyPath = (key, index)
        if not isinstance(item, Mapping) or not item:
            raise where.error('expected an object like {"header": "..."}', path)
        if "body" in item or "matches" in item:
            # mirrord's inner body filter: its fields sit in the entry itself.
            members.append(_compile_body(item, where, path, "body: "))
            continue
        for inner in item:
            if inner not in _INNER_KEYS:
                raise where.unknown_key(path, inner, _INNER_KEYS)
        if len(item) > 1:
            raise where.error(f"has {' and '.join(item)}; each entry holds exactly one", path)
        (inner,) = item
        members.append(_compile_leaf(inner, item[inner], where, (*path, inner), f"{inner}: "))
    return tuple(members)


def _compile_body(item: Mapping[str, object], where: Locator, path: KeyPath,
                  label: str) -> BodyClause:
    """mirrord's ``{"body": "json", "query": ..., "matches": ...}`` (its current schema,
    ``BodyFilter`` tagged by ``body``)."""
    for key in item:
        if key not in _BODY_KEYS:
            raise where.unknown_key(path, key, _BODY_KEYS)
    kind = item.get("body")
    if isinstance(kind, Mapping):
        # An older page of mirrord's docs showed {"body": {"type": "json", ...}}; mirrord's
        # schema never read it, so a file with it does not work there either.
        raise where.error('write the body filter flat: {"body": "json", "query": ..., '
                          '"matches": ...} (mirrord\'s schema has no nested "type")',
                          (*path, "body"))
    if kind != "json":
        shown = repr(kind) if isinstance(kind, str) else describe_type(kind)
        if "body" not in item:
            raise where.error('a body filter needs "body": "json"', path)
        raise where.error(f'expected "json" (the one body type mirrord has), got {shown}',
                          (*path, "body"))
    for key in ("query", "matches"):
        if key not in item:
            raise where.error(f"a body filter needs {key!r}", path)
        if not isinstance(item[key], str):
            raise where.error(f"expected a string, got {describe_type(item[key])}", (*path, key))
        if not item[key]:
            raise where.error("empty string", (*path, key))
    query, matches = cast(str, item["query"]), cast(str, item["matches"])
    try:
        compiled_path = compile_json_query(query)
    except JsonQueryError as exc:
        raise where.error(f"invalid JSONPath {query!r} in {label.rstrip(': ')}: {exc}",
                          (*path, "query")) from None
    try:
        compiled = compile_matches(matches)
    except (regex.error, ValueError) as exc:
        raise where.error(f"invalid regex {matches!r} in {label.rstrip(': ')}: {exc}",
                          (*path, "matches")) from None
    except RecursionError:
        raise where.error(f"invalid regex in {label.rstrip(': ')}: nested too deeply",
                          (*path, "matches")) from None
    return BodyClause(query=query, matches=matches, text=f"{label}{query} ~ {matches}",
                 path=compiled_path, compiled=cast(Pattern, compiled))


def _compile_leaf(
    kind: str, value: object, where: Locator, path: KeyPath, label: str
) -> RegexClause | MethodClause:
    if kind == "method" and isinstance(value, list):
        raise where.error(
            'expected one method as a string; for several use any_of: [{"method": "POST"}, '
            '{"method": "PUT"}]',
            path,
        )
    if not isinstance(value, str):
        raise where.error(f"expected a string, got {describe_type(value)}", path)
    if not value:
        raise where.error("empty string", path)
    if kind == "method":
        if _TOKEN.fullmatch(value) is None:
            raise where.error(f"{value!r} is not an HTTP method (RFC 9110 §9.1 token)", path)
        return MethodClause(method=value.upper(), original=value, text=f"{label}{value}")
    try:
        # IGNORECASE is what mirrord's "(?i)" prefix does, but keeps the positions in
        # regex's error messages pointing into the pattern as the user wrote it.
        compiled = regex.compile(value, flags=regex.IGNORECASE)
    except (regex.error, ValueError) as exc:  # ValueError: incompatible flags, e.g. (?u)(?a)
        raise where.error(f"invalid regex {value!r} in {label.rstrip(': ')}: {exc}", path) from None
    except RecursionError:
        raise where.error(
            f"invalid regex in {label.rstrip(': ')}: nested too deeply", path
        ) from None
    return RegexClause(
        kind=kind, pattern=value, text=f"{label}{value}", compiled=cast(Pattern, compiled)
    )
