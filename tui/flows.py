"""The traffic buffer: one row per request, bounded, updated in place, filtered for view.

Theory of operation. Request events (docs/architecture.md §3) arrive in batches. Each becomes a
:class:`FlowRow` keyed by ``(session, id)``; a later event with the same key (a response
arriving for a "started" request, or any refinement) is merged into the row in place and
bumps its ``version``, which is what the table's line cache keys on. Rows get a store-wide
increasing ``key``, so every view of the store is sorted by key and can be searched with
bisect.

Memory is bounded twice: at most ``capacity`` rows (the oldest are evicted and counted as
dropped), and only the newest ``body_rows`` rows keep captured bodies.

Nothing here imports textual or does I/O: the table widget renders what this holds.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# The issue asks for a buffer of at least 50,000 requests. A row without bodies is an
# event dict of ~15 small fields (about 1 KiB with Python's overhead): ~50 MiB at most.
CAPACITY = 50_000
# Captured bodies (truncated by the engine, but each may still be tens of KiB) are kept
# only for the newest rows, so the body memory stays bounded whatever the capacity.
BODY_ROWS = 2_000
# Evicted rows leave a hole at the front of the list; compact when it is this large and
# at least half the list (amortised O(1) per eviction, no O(n) shift per row).
_COMPACT_AT = 4_096

_BODY_KEYS = ("request_body", "response_body", "local_response_body")
_BODY_KEY_SET = frozenset(_BODY_KEYS)
_HEADER_KEYS = ("request_headers", "response_headers", "local_response_headers")
REQUEST_TYPES = frozenset({"request", "request_started", "started"})


@dataclass(slots=True, eq=False)
class FlowRow:
    """One request (or raw TCP connection): the merged event dict and a render version."""

    key: int  # store-wide, increasing in arrival order
    session: int  # which session of this dashboard it came from
    event: dict[str, Any]
    version: int = 0
    _haystack: str | None = field(default=None, repr=False)

    def get(self, name: str, default: Any = None) -> Any:
        return self.event.get(name, default)

    @property
    def verdict(self) -> str | None:
        """"stolen" | "passed" | "mirrored", or None while the exchange is in progress."""
        return self.event.get("verdict")

    @property
    def complete(self) -> bool:
        return self.event.get("type") == "request" or self.event.get("duration_ms") is not None

    def merge(self, event: dict[str, Any]) -> None:
        """Fold a later event for the same request in; known values are never blanked."""
        for name, value in event.items():
            if value is not None or name not in self.event:
                if name == "type" and self.event.get("type") == "request":
                    continue  # a late "started" must not turn a finished row back
                self.event[name] = value
        self.version += 1
        self._haystack = None

    @property
    def haystack(self) -> str:
        """Lower-cased text that the table's free-text search looks in."""
        if self._haystack is None:
            e = self.event
            self._haystack = " ".join(
                str(part) for part in (
                    e.get("verdict"), e.get("protocol"), e.get("method"), e.get("authority"),
                    e.get("path"), e.get("status"), e.get("port"), e.get("matched"),
                    e.get("pod"))
                if part is not None).lower()
        return self._haystack


def _identity(event: dict[str, Any]) -> object:
    """Which request an event is about. Ids are per agent: a workload's pods each have
    their own agent, so there the pod is part of the identity."""
    ident = event.get("id")
    if ident is None:
        return None
    pod = event.get("pod")
    return ident if pod is None else (pod, ident)


@dataclass(frozen=True, kw_only=True)
class Ingested:
    """What one batch did to the store."""

    added: list[FlowRow]
    updated: list[FlowRow]
    evicted: int


class FlowStore:
    """The rows, oldest first, at most ``capacity`` of them."""

    def __init__(self, capacity: int = CAPACITY, body_rows: int = BODY_ROWS) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.body_rows = body_rows
        self._rows: list[FlowRow] = []
        self._head = 0
        self._by_id: dict[tuple[int, object], FlowRow] = {}
        self._with_bodies: deque[FlowRow] = deque()
        self._next_key = 0
        # Requests finished, each counted once: an in-flight ("started") row counts when
        # its request event arrives, so the total never counts a stolen request twice.
        self.received = 0
        self.dropped = 0  # rows evicted because the buffer was full
        self.cleared = 0  # rows removed by clear()

    def __len__(self) -> int:
        return len(self._rows) - self._head

    def __getitem__(self, index: int) -> FlowRow:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._rows[self._head + index]

    def __iter__(self) -> Iterator[FlowRow]:
        return iter(self._rows[self._head:])

    @property
    def first_key(self) -> int:
        """Key of the oldest row still held (the next key if empty)."""
        return self._rows[self._head].key if len(self) else self._next_key

    def recent(self, n: int) -> list[FlowRow]:
        """The newest ``n`` rows, oldest first."""
        start = max(self._head, len(self._rows) - n)
        return self._rows[start:]

    def find(self, key: int) -> FlowRow | None:
        index = self.index_of(key)
        return self[index] if index is not None else None

    def index_of(self, key: int) -> int | None:
        i = bisect.bisect_left(self._rows, key, lo=self._head, key=_row_key)
        if i < len(self._rows) and self._rows[i].key == key:
            return i - self._head
        return None

    def ingest(self, events: Iterable[dict[str, Any]], session: int = 0) -> Ingested:
        """Add or update one row per request event; other event types are ignored."""
        added: list[FlowRow] = []
        updated: dict[int, FlowRow] = {}
        batch_start = self._next_key
        for event in events:
            if event.get("type") not in REQUEST_TYPES:
                continue
            finished = event.get("type") == "request"
            ident = _identity(event)
            row = self._by_id.get((session, ident)) if ident is not None else None
            if finished and (row is None or row.event.get("type") != "request"):
                self.received += 1
            if row is not None:
                row.merge(_compact(event))
                if row.key < batch_start:
                    updated[row.key] = row
            else:
                row = FlowRow(key=self._next_key, session=session, event=_compact(event))
                self._next_key += 1
                self._rows.append(row)
                if ident is not None:
                    self._by_id[(session, ident)] = row
                added.append(row)
            if not _BODY_KEY_SET.isdisjoint(event):
                self._with_bodies.append(row)
        evicted = self._evict()
        self._trim_bodies()
        return Ingested(added=[r for r in added if r.key >= self.first_key],
                        updated=[r for r in updated.values() if r.key >= self.first_key],
                        evicted=evicted)

    def clear(self) -> int:
        """Forget every row (counted in ``cleared``); returns how many."""
        n = len(self)
        self.cleared += n
        self._rows = []
        self._head = 0
        self._by_id.clear()
        self._with_bodies.clear()
        return n

    def _evict(self) -> int:
        excess = len(self) - self.capacity
        if excess <= 0:
            return 0
        for row in self._rows[self._head:self._head + excess]:
            self._by_id.pop((row.session, _identity(row.event)), None)
        self._head += excess
        self.dropped += excess
        if self._head >= _COMPACT_AT and self._head * 2 >= len(self._rows):
            del self._rows[:self._head]
            self._head = 0
        return excess

    def _trim_bodies(self) -> None:
        while len(self._with_bodies) > self.body_rows:
            row = self._with_bodies.popleft()
            if any(row.event.get(name) for name in _BODY_KEYS):
                for name in _BODY_KEYS:
                    if row.event.pop(name, None) is not None:
                        row.event["body_dropped"] = True
                row.version += 1


def _compact(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``event`` holding only atomic values and tuples of them.

    Header lists become tuples of pairs: then CPython's collector stops tracking the
    event (a dict or tuple of untracked values is untracked), so 50,000 rows cost the
    full collections that run while traffic flows almost nothing. Tracked, they made
    200 ms pauses of the UI at ~10,000 rows.
    """
    out = dict(event)
    for name in _HEADER_KEYS:
        value = out.get(name)
        if isinstance(value, list):
            out[name] = tuple(map(tuple, value))
    return out


def _row_key(row: FlowRow) -> int:
    return row.key


class FlowView:
    """The rows the table shows: all of the store, or those matching a query."""

    def __init__(self, store: FlowStore) -> None:
        self.store = store
        self.query: RowQuery | None = None
        self._rows: list[FlowRow] = []
        self._head = 0

    def __len__(self) -> int:
        if self.query is None:
            return len(self.store)
        return len(self._rows) - self._head

    def __getitem__(self, index: int) -> FlowRow:
        if self.query is None:
            return self.store[index]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._rows[self._head + index]

    def index_of(self, key: int) -> int | None:
        if self.query is None:
            return self.store.index_of(key)
        i = bisect.bisect_left(self._rows, key, lo=self._head, key=_row_key)
        if i < len(self._rows) and self._rows[i].key == key:
            return i - self._head
        return None

    def nearest_index(self, key: int) -> int:
        """Index of the row with ``key``, else of the first row after it (clamped)."""
        rows, lo = (self.store._rows, self.store._head) if self.query is None else (
            self._rows, self._head)
        i = bisect.bisect_left(rows, key, lo=lo, key=_row_key) - lo
        return max(0, min(i, len(self) - 1))

    def set_query(self, query: RowQuery | None) -> None:
        """Show only rows matching ``query`` (None: every row); rebuilds in O(rows)."""
        self.query = query if query is not None and not query.empty else None
        self._rows = [] if self.query is None else [r for r in self.store if self.query(r)]
        self._head = 0

    def sync(self, ingested: Ingested) -> tuple[int, int]:
        """Follow the store after a batch: (rows gained at the end, rows lost at the start)."""
        if self.query is None:
            return len(ingested.added), ingested.evicted
        first = self.store.first_key
        before = self._head
        while self._head < len(self._rows) and self._rows[self._head].key < first:
            self._head += 1
        lost = self._head - before
        if self._head >= _COMPACT_AT and self._head * 2 >= len(self._rows):
            del self._rows[:self._head]
            self._head = 0
        gained = [r for r in ingested.added if self.query(r)]
        self._rows.extend(gained)
        return len(gained), lost

    def reset(self) -> None:
        """After store.clear()."""
        self._rows = []
        self._head = 0


_FIELDS = {
    "verdict": "verdict", "v": "verdict",
    "method": "method", "m": "method",
    "status": "status", "s": "status",
    "port": "port", "p": "port",
    "host": "authority", "h": "authority",
    "path": "path",
    "proto": "protocol", "protocol": "protocol",
    "match": "matched", "matched": "matched",
}


@dataclass(frozen=True)
class _Term:
    field: str | None  # event key, or None for free text
    value: str
    negate: bool


class RowQuery:
    """The table's ``/`` search: words that must all match.

    ``word`` is searched (case-insensitively) in verdict, protocol, method, host, path,
    status, port and matched clause; ``field:value`` tests one field (``verdict:``/``v:``
    prefix, ``method:``/``m:``, ``status:``/``s:`` exact or ``5xx``, ``port:``/``p:``,
    ``host:``/``h:`` and ``path:`` substring, ``proto:``, ``match:``); a leading ``-`` or
    ``!`` negates a word.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        terms = []
        for word in text.split():
            negate = word[0] in "-!" and len(word) > 1
            if negate:
                word = word[1:]
            name, sep, value = word.partition(":")
            if sep and name.lower() in _FIELDS and value:
                terms.append(_Term(_FIELDS[name.lower()], value.lower(), negate))
            else:
                terms.append(_Term(None, word.lower(), negate))
        self.terms = tuple(terms)

    @property
    def empty(self) -> bool:
        return not self.terms

    def __call__(self, row: FlowRow) -> bool:
        return all(self._test(term, row) != term.negate for term in self.terms)

    @staticmethod
    def _test(term: _Term, row: FlowRow) -> bool:
        if term.field is None:
            return term.value in row.haystack
        value = row.event.get(term.field)
        if value is None:
            return False
        text = str(value).lower()
        if term.field == "status":
            if len(term.value) == 3 and term.value.endswith("xx"):
                return text[:1] == term.value[0]
            return text == term.value
        if term.field in ("verdict", "protocol"):
            return text.startswith(term.value)
        if term.field in ("method", "port"):
            return text == term.value
        return term.value in text
