"""The traffic buffer: one row per request, bounded, updated in place, filtered for view.

Theory of operation. Request events (``waylay.core.engine.events``, docs/architecture.md §3)
arrive in batches. Each becomes a :class:`FlowRow` keyed by ``(session, id)``; a later event
with the same key (the request event of a "started" one, or any refinement) replaces the
row's event, keeping what it knew that the new one does not say, and bumps its ``version``,
which is what the table's line cache keys on. Rows get a store-wide
increasing ``key``, so every view of the store is sorted by key and can be searched with
bisect.

Memory is bounded twice: at most ``capacity`` rows (the oldest are evicted and counted as
dropped), and only the newest ``body_rows`` rows keep captured bodies.

Nothing here imports textual or does I/O: the table widget renders what this holds.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from waylay.core.engine.events import Event, FlowEvent, RequestEvent, StartedEvent
from waylay.core.engine.flow import Verdict

# The issue asks for a buffer of at least 50,000 requests. A row without bodies is an
# event of ~16 small fields (about 1 KiB with Python's overhead): ~50 MiB at most.
CAPACITY = 50_000
# Captured bodies (truncated by the engine, but each may still be tens of KiB) are kept
# only for the newest rows, so the body memory stays bounded whatever the capacity.
BODY_ROWS = 2_000
# Evicted rows leave a hole at the front of the list; compact when it is this large and
# at least half the list (amortised O(1) per eviction, no O(n) shift per row).
_COMPACT_AT = 4_096



@dataclass(slots=True, eq=False)
class FlowRow:
    """One request (or raw TCP connection): its latest event and a render version."""

    key: int  # store-wide, increasing in arrival order
    session: int  # which session of this dashboard it came from
    event: FlowEvent
    version: int = 0
    # Its captured bodies were dropped from memory (only the newest rows keep them).
    bodies_dropped: bool = False
    _haystack: str | None = field(default=None, repr=False)

    @property
    def verdict(self) -> Verdict:
        return self.event.verdict

    @property
    def finished(self) -> RequestEvent | None:
        """The request event, once the exchange is over (None while it is in flight)."""
        return self.event if isinstance(self.event, RequestEvent) else None

    @property
    def complete(self) -> bool:
        return isinstance(self.event, RequestEvent)

    def merge(self, event: FlowEvent) -> None:
        """Take a later event for the same request; known values are never blanked."""
        if not (isinstance(self.event, RequestEvent) and isinstance(event, StartedEvent)):
            self.event = _merged(self.event, event)
        # else a late "started" must not turn a finished row back
        self.version += 1
        self._haystack = None

    @property
    def haystack(self) -> str:
        """Lower-cased text that the table's free-text search looks in."""
        if self._haystack is None:
            e, done = self.event, self.finished
            self._haystack = " ".join(
                str(part) for part in (
                    e.verdict, e.protocol, e.method, e.authority, e.path,
                    done.status if done else None, e.port, done.matched if done else None,
                    e.pod)
                if part is not None).lower()
        return self._haystack


def _merged(old: FlowEvent, new: FlowEvent) -> FlowEvent:
    """``new``, with what ``old`` knew where ``new`` says nothing (None)."""
    known = {f.name: value for f in dataclasses.fields(new)
             if getattr(new, f.name) is None
             and (value := getattr(old, f.name, None)) is not None}
    return dataclasses.replace(new, **known) if known else new


def _identity(event: FlowEvent) -> object:
    """Which request an event is about. Ids are per agent: a workload's pods each have
    their own agent, so there the pod is part of the identity."""
    return event.id if event.pod is None else (event.pod, event.id)


def _has_bodies(event: FlowEvent) -> bool:
    """``event`` holds captured bodies that are not empty."""
    if not isinstance(event, RequestEvent):
        return False
    capture, mirror = event.capture, event.mirror
    return bool((capture is not None and (capture.request_body or capture.response_body))
                or (mirror is not None and mirror.local_body))


def _without_bodies(event: RequestEvent) -> RequestEvent:
    """``event`` keeping its headers but not its bodies."""
    capture, mirror = event.capture, event.mirror
    return dataclasses.replace(
        event,
        capture=None if capture is None else dataclasses.replace(
            capture, request_body=None, response_body=None),
        mirror=None if mirror is None else dataclasses.replace(mirror, local_body=None))


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

    def ingest(self, events: Iterable[Event], session: int = 0) -> Ingested:
        """Add or update one row per request or started event; other kinds are ignored."""
        added: list[FlowRow] = []
        updated: dict[int, FlowRow] = {}
        batch_start = self._next_key
        for event in events:
            if not isinstance(event, RequestEvent | StartedEvent):
                continue
            ident = _identity(event)
            row = self._by_id.get((session, ident))
            if isinstance(event, RequestEvent) and (row is None or not row.complete):
                self.received += 1
            if row is not None:
                row.merge(event)
                if row.key < batch_start:
                    updated[row.key] = row
            else:
                row = FlowRow(key=self._next_key, session=session, event=event)
                self._next_key += 1
                self._rows.append(row)
                self._by_id[(session, ident)] = row
                added.append(row)
            if _has_bodies(event):
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
            done = row.finished
            if done is not None and _has_bodies(done):
                row.event = _without_bodies(done)
                row.bodies_dropped = True
                row.version += 1


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
# What each searchable field reads from a row.
_VALUES: dict[str, Callable[[FlowRow], object]] = {
    "verdict": lambda row: row.event.verdict,
    "method": lambda row: row.event.method,
    "status": lambda row: row.finished.status if row.finished else None,
    "port": lambda row: row.event.port,
    "authority": lambda row: row.event.authority,
    "path": lambda row: row.event.path,
    "protocol": lambda row: row.event.protocol,
    "matched": lambda row: row.finished.matched if row.finished else None,
}


@dataclass(frozen=True)
class _Term:
    field: str | None  # a key of _VALUES, or None for free text
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
        value = _VALUES[term.field](row)
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
