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
- ``all_of`` / ``any_of``: a non-empty list of the inner forms, AND / OR.

Every regex search runs under a time budget (the ``regex`` package's ``timeout=``): a search
that runs out counts as "no match" and is reported in :attr:`MatchResult.timed_out`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import regex

from waylay.core.engine.errors import ConfigError
from waylay.core.engine.jsonc import KeyPath, Locator, Positions, describe_type

# Total regex time for evaluating one request. Filters run inline on the agent's event loop
# for every request on a filtered port, so a pathological pattern must not stall other
# connections: 20 ms caps the latency one request can add, while a sane filter needs
# microseconds (about a thousand times less).
MATCH_BUDGET_S = 0.02

FILTER_KEYS = ("header_filter", "path_filter", "method_filter", "all_of", "any_of")
_INNER_KEYS = ("header", "path", "method")
# A header value of visible ASCII only (and tabs): mirrord reads a value as text only if it
# is (the http crate's HeaderValue::to_str), and leaves any other header out of header
# matching, so "x-filter: y" does not match "x-filter: yés" (docs/architecture.md §2).
# str.isascii() and str.isprintable() decide the usual value at C speed; this is for tabs.
_visible = regex.compile(r"[\t\x20-\x7e]*").fullmatch
_TOKEN = regex.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 token


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


@dataclass(frozen=True, kw_only=True)
class MatchResult:
    """The outcome of evaluating a filter against one request."""

    matched: bool
    clause: str | None  # text of the clause that decided a match; None if no match
    timed_out: tuple[str, ...]  # clauses whose regex hit the budget (counted as no match)


class _Pattern(Protocol):
    def search(self, string: str, *, timeout: float) -> object | None: ...


@dataclass(frozen=True, kw_only=True)
class _Regex:
    """A header or path clause: ``kind`` is "header" or "path"."""

    kind: str
    pattern: str
    text: str
    compiled: _Pattern = field(compare=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class _Method:
    method: str  # upper-cased
    original: str
    text: str


@dataclass(frozen=True, kw_only=True)
class _Group:
    all: bool  # True: all_of, False: any_of
    members: tuple[_Regex | _Method, ...]
    text: str


_Clause = _Regex | _Method | _Group

_NO_MATCH = MatchResult(matched=False, clause=None, timed_out=())


class HttpFilter:
    """An immutable, compiled HTTP filter. Build it with :func:`compile_http_filter`."""

    __slots__ = ("_root",)
    _root: _Clause

    def __init__(self, root: _Clause) -> None:
        object.__setattr__(self, "_root", root)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("HttpFilter is immutable; compile a new one")

    @property
    def text(self) -> str:
        """Short description, e.g. ``header_filter: X-User: alice``."""
        return self._root.text

    def to_mirrord(self) -> dict[str, object]:
        """mirrord's JSON form (without ``ports``); compile_http_filter reads it back."""
        root = self._root
        if isinstance(root, _Group):
            return {"all_of" if root.all else "any_of": [_inner_json(m) for m in root.members]}
        key, value = _inner_json(root).popitem()
        return {f"{key}_filter": value}

    def evaluate(self, request: RequestView, *, budget_s: float = MATCH_BUDGET_S,
                 clock: Callable[[], float] | None = None,
                 cpu_clock: Callable[[], float] | None = None) -> MatchResult:
        """Does ``request`` match? Never takes much longer than ``budget_s`` in regex time.

        Time enters from outside (this module reads no clock): with ``clock`` the time a
        fast search leaves unused goes to the searches after it; without, each search
        gets an equal share of the budget. With ``cpu_clock`` (the thread's CPU time), a
        search that timed out only because it was descheduled is tried again (_search).
        """
        root = self._root
        if type(root) is _Regex and root.kind == "header":
            return self._evaluate_header(root, request, budget_s, clock, cpu_clock)
        if type(root) is _Method:
            method = request.method  # see _Run.leaf
            if method.isascii() and method.upper() == root.method:
                return MatchResult(matched=True, clause=root.text, timed_out=())
            return _NO_MATCH
        run = _Run(request, root, budget_s, clock, cpu_clock)
        if isinstance(root, _Group):
            matched, clause = run.group(root)
        else:
            matched, clause = run.leaf(root), root.text
        return MatchResult(
            matched=matched,
            clause=clause if matched else None,
            timed_out=tuple(dict.fromkeys(run.timed_out)),
        )

    @staticmethod
    def _evaluate_header(leaf: _Regex, request: RequestView, budget_s: float,
                         clock: Callable[[], float] | None,
                         cpu_clock: Callable[[], float] | None) -> MatchResult:
        """``evaluate`` for a lone header clause, the commonest filter, without the
        general ``_Run`` bookkeeping (same rules: header lines, then the authority)."""
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
                if not (value.isascii() and value.isprintable()) and not _visible(value):
                    left -= 1
                    continue
                line = f"{name.lower()}: {value}"
            else:
                line = f"host: {authority}"
            share = budget_s / total  # never less: see _Run.leaf
            if clock is not None:
                share = max(share, (deadline - clock()) / left)
            left -= 1
            if share <= 0:
                timed_out = True
                continue
            found = _search(search, line, share, cpu_clock)
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


def _inner_json(clause: _Regex | _Method) -> dict[str, object]:
    if isinstance(clause, _Method):
        return {"method": clause.original}
    return {clause.kind: clause.pattern}


class _Run:
    """One evaluation: the request rendered once, and the regex time budget.

    The budget is shared fairly: each search may use the remaining time divided by the
    searches still planned, so one catastrophic header cannot starve the others, and the
    total never exceeds the budget.
    """

    def __init__(self, request: RequestView, root: _Clause, budget_s: float,
                 clock: Callable[[], float] | None,
                 cpu_clock: Callable[[], float] | None = None) -> None:
        self.request = request
        path, query = _split_target(request.target)
        self.paths = [path] if query is None else [path, f"{path}?{query}"]
        self.timed_out: list[str] = []
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.budget_s = budget_s
        self.deadline = clock() + budget_s if clock is not None else 0.0
        leaves = root.members if isinstance(root, _Group) else (root,)
        self.searches_left = sum(self._searches(leaf) for leaf in leaves)
        self.searches_total = max(self.searches_left, 1)

    @functools.cached_property
    def header_lines(self) -> list[str]:
        """``name: value`` per header, name lower-cased; rendered only if a clause needs it."""
        lines = [f"{name.lower()}: {value}" for name, value in self.request.headers
                 if value.isascii() and value.isprintable() or _visible(value)]
        if self.request.authority is not None:
            lines.append(f"host: {self.request.authority}")
        return lines

    def _searches(self, leaf: _Regex | _Method) -> int:
        if isinstance(leaf, _Method):
            return 0
        if leaf.kind == "path":
            return len(self.paths)
        return len(self.request.headers) + (self.request.authority is not None)

    def group(self, group: _Group) -> tuple[bool, str | None]:
        for member in group.members:
            hit = self.leaf(member)
            if group.all and not hit:
                return False, None
            if not group.all and hit:
                return True, member.text
        return group.all, group.text if group.all else None

    def leaf(self, leaf: _Regex | _Method) -> bool:
        if isinstance(leaf, _Method):
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
            found = _search(leaf.compiled.search, subject, share, self.cpu_clock)
            if found:
                return True
            if found is None:
                timed_out = True
        if timed_out:
            self.timed_out.append(leaf.text)
        return False


# A search that timed out is tried again this many times when it did not use its time
# itself (see _search).
_PREEMPTED_RETRIES = 2


def _search(search: Callable[..., object | None], subject: str, share: float,
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


def _split_target(target: str) -> tuple[str, str | None]:
    """Path and query of a request target (RFC 9112 §3.2); absolute-form loses its origin."""
    if not target.startswith("/") and "://" in target:
        rest = target.split("://", 1)[1]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        target = rest[cut:]
        if not target.startswith("/"):
            target = "/" + target
    path, sep, query = target.partition("?")
    return path, (query if sep else None)


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
            raise _unknown_key(where, key, (*FILTER_KEYS, "ports"))
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
        return HttpFilter(_Group(all=key == "all_of", members=members, text=text))
    kind = key.removesuffix("_filter")
    return HttpFilter(_compile_leaf(kind, value, where, (key,), f"{key}: "))


def _compile_members(value: object, where: Locator, key: str) -> tuple[_Regex | _Method, ...]:
    if not isinstance(value, list):
        raise where.error('expected a list of {"header"|"path"|"method": ...}', (key,))
    if not value:
        raise where.error("empty list (it needs at least one filter)", (key,))
    members: list[_Regex | _Method] = []
    for index, item in enumerate(value):
        path: KeyPath = (key, index)
        if not isinstance(item, Mapping) or not item:
            raise where.error('expected an object like {"header": "..."}', path)
        for inner in item:
            if inner not in _INNER_KEYS:
                raise _unknown_key(where.under(path), inner, _INNER_KEYS)
        if len(item) > 1:
            raise where.error(f"has {' and '.join(item)}; each entry holds exactly one", path)
        (inner,) = item
        members.append(_compile_leaf(inner, item[inner], where, (*path, inner), f"{inner}: "))
    return tuple(members)


def _compile_leaf(
    kind: str, value: object, where: Locator, path: KeyPath, label: str
) -> _Regex | _Method:
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
        return _Method(method=value.upper(), original=value, text=f"{label}{value}")
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
    return _Regex(
        kind=kind, pattern=value, text=f"{label}{value}", compiled=cast(_Pattern, compiled)
    )


def _unknown_key(where: Locator, key: object, allowed: Sequence[str]) -> ConfigError:
    if key in ("body_filter", "body"):
        # Ignoring it would silently take requests the user meant to leave alone.
        return where.error("body filters are not supported by waylay", (key,), at_key=True)
    return where.unknown_key((), key, allowed)
