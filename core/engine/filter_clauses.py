"""Compiled filter clauses, and one evaluation of them against a request (sans-I/O).

``core/engine/filters.py`` compiles mirrord's ``http_filter`` into these clauses and owns
the public API (``HttpFilter``); this module holds what one evaluation does: the request
as a filter sees it, the clauses, and the shared regex time budget
(docs/architecture.md §2).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import regex
from jsonpath import JSONPath

from waylay.core.engine.body_filter import (
    BodySkip,
    JsonDocument,
    is_json_request,
    parse_json_body,
    query_values,
    value_texts,
)

# A header value of visible ASCII only (and tabs): mirrord reads a value as text only if it
# is (the http crate's HeaderValue::to_str), and leaves any other header out of header
# matching, so "x-filter: y" does not match "x-filter: yés" (docs/architecture.md §2).
# str.isascii() and str.isprintable() decide the usual value at C speed; this is for tabs.
visible_value = regex.compile(r"[\t\x20-\x7e]*").fullmatch


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestView:
    """What a filter may look at in a request (no body)."""

    method: str
    target: str  # path plus optional query, as on the request line: "/a/b?q=1"
    headers: tuple[tuple[str, str], ...]  # as received, names in any case
    authority: str | None = None  # HTTP/2 :authority; offered to header filters as "host: ..."


# A frozen dataclass's __init__ sets each field through object.__setattr__ (~1 us for a
# RequestView, built once per request on the agent's hot path); filling the slots through
# their descriptors builds the same object for a fifth of that.
_VIEW_SLOTS = tuple(getattr(RequestView, f).__set__ for f in RequestView.__slots__)
assert RequestView.__slots__ == tuple(RequestView.__dataclass_fields__)


def request_view(method: str, target: str, headers: tuple[tuple[str, str], ...],
                 authority: str | None = None) -> RequestView:
    """``RequestView(method=..., ...)``, built the fast way (see ``_VIEW_SLOTS``)."""
    view = object.__new__(RequestView)
    set_method, set_target, set_headers, set_authority = _VIEW_SLOTS
    set_method(view, method)
    set_target(view, target)
    set_headers(view, headers)
    set_authority(view, authority)
    return view


class Pattern(Protocol):
    def search(self, string: str, *, timeout: float) -> object | None: ...


@dataclass(frozen=True, kw_only=True)
class RegexClause:
    """A regex clause: ``kind`` is "header", "path" or "query" (the query string)."""

    kind: str
    pattern: str
    text: str
    compiled: Pattern = field(compare=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class MethodClause:
    method: str  # upper-cased
    original: str
    text: str


@dataclass(frozen=True, kw_only=True)
class BodyClause:
    """A JSON body clause (mirrord's ``BodyFilter::Json``)."""

    query: str
    matches: str
    text: str
    path: JSONPath = field(compare=False, repr=False)
    compiled: Pattern = field(compare=False, repr=False)  # ``matches``
    # Never read for a body: only ExtendedEvaluation sees body clauses. It lets Evaluation
    # treat every leaf that is not a method as having a kind, with no type test on the
    # hot path.
    kind: str = field(default="body", init=False)


Leaf = RegexClause | MethodClause | BodyClause


@dataclass(frozen=True, kw_only=True)
class GroupClause:
    all: bool  # True: all_of, False: any_of
    members: tuple[Leaf, ...]
    text: str


Clause = RegexClause | MethodClause | BodyClause | GroupClause

class Evaluation:
    """One evaluation: the request rendered once, and the regex time budget.

    The budget is shared fairly: each search may use the remaining time divided by the
    searches still planned, so one catastrophic header cannot starve the others, and the
    total never exceeds the budget.
    """

    def __init__(self, request: RequestView, root: Clause, budget_s: float,
                 clock: Callable[[], float] | None,
                 cpu_clock: Callable[[], float] | None = None) -> None:
        self.request = request
        path, query = split_target(request.target)
        self.paths = [path] if query is None else [path, f"{path}?{query}"]
        self.timed_out: list[str] = []
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.budget_s = budget_s
        self.deadline = clock() + budget_s if clock is not None else 0.0
        leaves = root.members if isinstance(root, GroupClause) else (root,)
        self.searches_left = sum(self._searches(leaf) for leaf in leaves)
        self.searches_total = max(self.searches_left, 1)

    @functools.cached_property
    def header_lines(self) -> list[str]:
        """``name: value`` per header, name lower-cased; rendered only if a clause needs it."""
        lines = [f"{name.lower()}: {value}" for name, value in self.request.headers
                 if (value.isascii() and value.isprintable()) or visible_value(value)]
        if self.request.authority is not None:
            lines.append(f"host: {self.request.authority}")
        return lines

    def _searches(self, leaf: Leaf) -> int:
        if isinstance(leaf, MethodClause):
            return 0
        if leaf.kind == "path":
            return len(self.paths)
        return len(self.request.headers) + (self.request.authority is not None)

    def group(self, group: GroupClause) -> tuple[bool, str | None]:
        for member in group.members:
            hit = self.leaf(member)
            if group.all and not hit:
                return False, None
            if not group.all and hit:
                return True, member.text
        return group.all, group.text if group.all else None

    def leaf(self, leaf: Leaf) -> bool:
        if isinstance(leaf, MethodClause):
            # isascii: str.upper maps some non-ASCII letters onto ASCII (U+017F long s -> "S").
            method = self.request.method
            return method.isascii() and method.upper() == leaf.method
        subjects = self.header_lines if leaf.kind == "header" else self.paths
        timed_out = False
        for subject in subjects:
            # Each search gets at least an equal share of the budget (the total stays
            # within it), plus what faster searches before it left unused. The floor
            # matters on a busy machine: wall time spent descheduled must not leave a
            # search no time at all (that would misroute the request).
            share = self.budget_s / self.searches_total
            if self.clock is not None:
                share = max(share, (self.deadline - self.clock()) / max(self.searches_left, 1))
            self.searches_left -= 1
            if share <= 0:
                timed_out = True
                continue
            found = search_within(leaf.compiled.search, subject, share, self.cpu_clock)
            if found:
                return True
            if found is None:
                timed_out = True
        if timed_out:
            self.timed_out.append(leaf.text)
        return False


class ExtendedEvaluation(Evaluation):
    """An evaluation of a filter with a body or query clause (``HttpFilter._extended``).

    A class of its own so that filters without such clauses run exactly the code they
    ran before body filters existed. It is three-valued where the body is concerned: in
    ``head_only`` mode a body clause is unknown (None) unless the Content-Type already
    decides it, and ``all_of`` / ``any_of`` combine with Kleene's logic, so the caller
    knows whether buffering the body can change the answer.
    """

    def __init__(self, request: RequestView, root: Clause, budget_s: float,
                 clock: Callable[[], float] | None, cpu_clock: Callable[[], float] | None,
                 body: bytes | BodySkip | None, head_only: bool) -> None:
        self.query = split_target(request.target)[1]
        self.body = body
        self.head_only = head_only
        self.body_skipped: BodySkip | None = None
        super().__init__(request, root, budget_s, clock, cpu_clock)

    def _searches(self, leaf: Leaf) -> int:
        if isinstance(leaf, BodyClause):
            return 1  # one share for all the values its query selects
        if isinstance(leaf, RegexClause) and leaf.kind == "query":
            return self.query is not None
        return super()._searches(leaf)

    @functools.cached_property
    def document(self) -> JsonDocument | BodySkip:
        """The body as JSON, parsed once for all the body clauses of the filter."""
        body = self.body
        if not is_json_request(self.request.headers):
            return BodySkip.NOT_JSON
        if body is None:
            return BodySkip.NOT_BUFFERED
        if isinstance(body, BodySkip):
            return body
        return parse_json_body(body)

    def tri_group(self, group: GroupClause) -> tuple[bool | None, str | None]:
        unknown = False
        for member in group.members:
            hit = self.tri_leaf(member)
            if hit is None:
                unknown = True
            elif group.all and not hit:
                return False, None
            elif not group.all and hit:
                return True, member.text
        if unknown:
            return None, None
        return group.all, group.text if group.all else None

    def tri_leaf(self, leaf: Leaf) -> bool | None:
        if isinstance(leaf, BodyClause):
            return self.body_leaf(leaf)
        if isinstance(leaf, RegexClause) and leaf.kind == "query":
            return self.query_leaf(leaf)
        return self.leaf(leaf)

    def query_leaf(self, leaf: RegexClause) -> bool:
        if self.query is None:
            return False
        found = search_within(leaf.compiled.search, self.query, self._share(), self.cpu_clock)
        if found is None:
            self.timed_out.append(leaf.text)
        return bool(found)

    def _share(self) -> float:
        """One search's time, as Evaluation.leaf computes it (see there)."""
        share = self.budget_s / self.searches_total
        if self.clock is not None:
            share = max(share, (self.deadline - self.clock()) / max(self.searches_left, 1))
        self.searches_left -= 1
        return share

    def body_leaf(self, leaf: BodyClause) -> bool | None:
        if self.head_only:
            if is_json_request(self.request.headers):
                return None  # only the body can tell
            self.body_skipped = BodySkip.NOT_JSON
            return False
        document = self.document
        if isinstance(document, BodySkip):
            self.body_skipped = document
            return False
        searches_after = self.searches_left - 1  # other clauses' searches still planned
        share = self._share()
        result = query_values(leaf.path, document, share)
        if isinstance(result, BodySkip):
            self.body_skipped = result
            return False
        if result.regex_timed_out:
            self.timed_out.append(leaf.text)
        values = result.values
        timed_out = False
        search = leaf.compiled.search
        for index, text in enumerate(value_texts(values)):
            # The clause's share split among its values, with what earlier ones left.
            value_share = share / len(values)
            if self.clock is not None:
                left = searches_after + len(values) - index
                value_share = max(value_share, (self.deadline - self.clock()) / left)
            found = search_within(search, text, value_share, self.cpu_clock)
            if found:
                return True
            if found is None:
                timed_out = True
        if timed_out:
            self.timed_out.append(leaf.text)
        return False


# A search that timed out is tried again this many times when it did not use its time
# itself (see search_within).
_PREEMPTED_RETRIES = 2


def search_within(search: Callable[..., object | None], subject: str, share: float,
            cpu_clock: Callable[[], float] | None) -> bool | None:
    """Does the regex match ``subject`` within ``share`` seconds? None if it ran out.

    The regex package's timeout is wall time, so a search descheduled on a busy machine
    can "time out" having done almost nothing: counted as no match, that would misroute a
    request. A timed-out search is therefore run again, measuring the CPU time it takes:
    only one that used most of its share itself counts as out of time (a catastrophic
    pattern then costs at most twice its share; the time budget's purpose, bounding
    what one request can cost, holds).
    """
    try:
        return search(subject, timeout=share) is not None
    except TimeoutError:
        if cpu_clock is None:
            return None
    for _ in range(_PREEMPTED_RETRIES):
        started = cpu_clock()
        try:
            return search(subject, timeout=share) is not None
        except TimeoutError:
            if cpu_clock() - started >= share / 2:
                return None  # it really is that slow
    return None


def split_target(target: str) -> tuple[str, str | None]:
    """Path and query of a request target (RFC 9112 §3.2); absolute-form loses its origin."""
    if not target.startswith("/") and "://" in target:
        rest = target.split("://", 1)[1]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        target = rest[cut:]
        if not target.startswith("/"):
            target = "/" + target
    path, sep, query = target.partition("?")
    return path, (query if sep else None)
