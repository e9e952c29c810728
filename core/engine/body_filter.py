"""mirrord's JSON body filter: the JSONPath query, the body's JSON, and why a body was skipped.

A body clause (``body_filter``, or ``{"body": "json", ...}`` inside ``all_of`` / ``any_of``)
is mirrord's ``BodyFilter::Json`` (docs/architecture.md §2):

1. The request's ``Content-Type`` must contain ``application/json``; otherwise the clause
   does not match, and the body is not needed to say so.
2. The whole body is parsed as JSON (UTF-8, RFC 8259); a body that does not parse does
   not match.
3. ``query``, a JSONPath (RFC 9535) compiled when the config is read, selects values.
4. Each value is turned into text (a string as it is, anything else as compact JSON) and
   ``matches``, a regex, is searched in it; one hit is enough. Unlike header and path
   regexes, ``matches`` is case-sensitive: mirrord compiles it without ``(?i)``.

mirrord adds one function to RFC 9535's, ``typeof(nodes)``, returning ``"null"``,
``"bool"``, ``"number"``, ``"string"``, ``"array"`` or ``"object"`` when every node has
that type, and Nothing otherwise; waylay has it too, so mirrord's documented queries
(``$..[?(typeof(@.price) == 'number')].price``) work unchanged.

This module is the JSON side only; ``core/engine/filters.py`` runs the ``matches`` regex
under the request's time budget, like every other regex.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import regex
from jsonpath import CompoundJSONPath, JSONPath, JSONPathEnvironment, JSONPathError
from jsonpath.filter import UNDEFINED
from jsonpath.function_extensions import ExpressionType, FilterFunction
from jsonpath.function_extensions.match import Match
from jsonpath.function_extensions.search import Search
from jsonpath.match import NodeList

# mirrord's defaults for the body buffer of JSON body filters (agent.max_body_buffer_size,
# agent.max_body_buffer_timeout): 64 KiB - 1 bytes, 1000 ms.
DEFAULT_BODY_BUFFER_SIZE = 65_535
DEFAULT_BODY_BUFFER_TIMEOUT_MS = 1_000
# The largest a config may ask for: the agent holds one such buffer per request in
# flight on a port with a body filter, so a typo must not make it gigabytes; and a
# request held a minute is one its client has given up on.
MAX_BODY_BUFFER_SIZE = 16 * 1024 * 1024
MAX_BODY_BUFFER_TIMEOUT_MS = 60_000

# The media type mirrord looks for in Content-Type (contained, case-insensitively, so
# "application/json; charset=utf-8" counts).
JSON_MEDIA_TYPE = "application/json"


class BodySkip(StrEnum):
    """Why a body clause could not look at a request's JSON (it counts as no match)."""

    NOT_JSON = "content-type is not application/json"
    INVALID_JSON = "body is not valid JSON"
    QUERY_FAILED = "the JSONPath query failed on this body"
    NOT_BUFFERED = "body not buffered"
    # The two bounds of the agent's body buffer (agent.max_body_buffer_size / _timeout):
    # a body past them is passed as it came, undecided.
    TOO_LARGE = "body over agent.max_body_buffer_size"
    TIMEOUT = "body incomplete after agent.max_body_buffer_timeout"


class JsonQueryError(ValueError):
    """A ``query`` that is not a JSONPath waylay can run; the message says where."""


@dataclass(frozen=True, slots=True)
class JsonDocument:
    """A parsed body (``value`` may be None: JSON ``null``)."""

    value: object


class _RegexAllowance:
    """The time an in-query ``match()`` / ``search()`` may take (RFC 9535 §2.4.6, §2.4.7).

    Those regexes run inside the JSONPath engine, once per node, with no timeout of their
    own; the evaluation sets one here. Once one search has run out, the rest of the
    evaluation's in-query searches are skipped (no match), so a pathological pattern
    costs one timeout, not one per node.
    """

    __slots__ = ("timed_out", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.timed_out = False


# Context-local, so two evaluations in different threads or tasks never share it.
_allowance: contextvars.ContextVar[_RegexAllowance | None] = contextvars.ContextVar(
    "waylay_jsonpath_regex_allowance", default=None)
# An in-query regex outside any evaluation (a test calling the library directly).
_DEFAULT_REGEX_TIMEOUT_S = 0.02


def _timed(run: Any, value: object, pattern: object, compiled: object | None) -> bool:
    if not isinstance(value, str) or not isinstance(pattern, str) or compiled is None:
        return False
    allowance = _allowance.get()
    if allowance is not None and allowance.timed_out:
        return False
    timeout = _DEFAULT_REGEX_TIMEOUT_S if allowance is None else allowance.timeout
    try:
        return run(compiled, value, timeout) is not None
    except TimeoutError:
        if allowance is not None:
            allowance.timed_out = True
        return False


class _TimedMatch(Match):
    """RFC 9535 ``match()`` (whole-string I-Regexp), under the evaluation's time budget."""

    def __call__(self, value: object, pattern: object) -> bool:
        compiled = self.check_cache(pattern) if isinstance(pattern, str) else None
        return _timed(lambda c, v, t: c.fullmatch(v, timeout=t), value, pattern, compiled)


class _TimedSearch(Search):
    """RFC 9535 ``search()`` (I-Regexp anywhere), under the evaluation's time budget."""

    def __call__(self, value: object, pattern: object) -> bool:
        compiled = self.check_cache(pattern) if isinstance(pattern, str) else None
        return _timed(lambda c, v, t: c.search(v, timeout=t), value, pattern, compiled)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _TypeOf(FilterFunction):
    """mirrord's ``typeof`` function extension: one JSON type shared by all nodes, or
    Nothing (no nodes, or mixed types)."""

    arg_types = [ExpressionType.NODES]  # noqa: RUF012  # the library declares it so
    return_type = ExpressionType.VALUE

    def __call__(self, nodes: NodeList | object) -> object:
        if isinstance(nodes, NodeList):
            kinds = {_json_type(node.obj) for node in nodes}
        else:  # the library hands ``@`` itself over as its value, not as a node list
            kinds = set() if nodes is UNDEFINED else {_json_type(nodes)}
        return kinds.pop() if len(kinds) == 1 else UNDEFINED


class _Environment(JSONPathEnvironment):
    """RFC 9535 strictly (no python-jsonpath extensions such as ``|`` or ``~``), plus
    mirrord's ``typeof``, with the standard regex functions under a time budget."""

    def setup_function_extensions(self) -> None:
        super().setup_function_extensions()
        self.function_extensions["match"] = _TimedMatch()
        self.function_extensions["search"] = _TimedSearch()
        self.function_extensions["typeof"] = _TypeOf()


_ENVIRONMENT = _Environment(strict=True)


def compile_json_query(query: str) -> JSONPath:
    """Compile ``query`` (RFC 9535); JsonQueryError says what is wrong and where."""
    try:
        compiled = _ENVIRONMENT.compile(query)
    except JSONPathError as exc:
        raise JsonQueryError(_describe(exc)) from None
    except RecursionError:
        raise JsonQueryError("nested too deeply") from None
    if isinstance(compiled, CompoundJSONPath):  # strict mode never builds one; be sure
        raise JsonQueryError("unions of whole queries are not RFC 9535")
    return compiled


def _describe(exc: JSONPathError) -> str:
    """The library's first line (what is wrong) and, when it knows, the column."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    token = getattr(exc, "token", None)
    index = getattr(token, "index", None)
    return f"{first} (at character {index + 1})" if isinstance(index, int) else first


def is_json_request(headers: Sequence[tuple[str, str]]) -> bool:
    """Does a Content-Type header name JSON (mirrord's check, see the module doc)?"""
    return any(name.lower() == "content-type" and JSON_MEDIA_TYPE in value.lower()
               for name, value in headers)


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # Python accepts NaN and Infinity; JSON does not


def parse_json_body(body: bytes) -> JsonDocument | BodySkip:
    """The body as JSON, or INVALID_JSON (not UTF-8, not JSON, or nested too deeply)."""
    try:
        text = body.decode("utf-8")
        return JsonDocument(json.loads(text, parse_constant=_refuse_constant))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError too
        return BodySkip.INVALID_JSON


@dataclass(frozen=True, slots=True)
class QueryResult:
    """What a query selected, and whether an in-query regex ran out on the way."""

    values: list[object]
    regex_timed_out: bool


def query_values(path: JSONPath, document: JsonDocument,
                 regex_timeout: float) -> QueryResult | BodySkip:
    """The values ``path`` selects, or QUERY_FAILED; in-query regexes get ``regex_timeout``
    each (see ``_RegexAllowance``)."""
    value = document.value
    # The library reads a str argument as JSON text; a document that *is* a string is
    # handed over as the JSON text of that string, which reads back as itself.
    data = json.dumps(value) if isinstance(value, str) else value
    allowance = _RegexAllowance(regex_timeout)
    token = _allowance.set(allowance)
    try:
        values = path.findall(data)  # type: ignore[arg-type]  # any JSON value is fine
    except (JSONPathError, RecursionError):
        return BodySkip.QUERY_FAILED
    finally:
        _allowance.reset(token)
    return QueryResult(values=values, regex_timed_out=allowance.timed_out)


def value_texts(values: list[object]) -> Iterator[str]:
    """Each selected value as the text ``matches`` is searched in: a string as it is,
    anything else as compact JSON (mirrord's serde_json ``to_string``)."""
    for value in values:
        if isinstance(value, str):
            yield value
        else:
            yield json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def compile_matches(pattern: str) -> regex.Pattern[str]:
    """``matches``, case-sensitive as in mirrord; raises regex.error / ValueError."""
    return regex.compile(pattern)
