"""Who takes what: a table of subscriptions, and the routing decision per request (sans-I/O).

This is the one routing rule (docs/architecture.md §2): the agent routes by it, the
dashboard's fake agent and its filter preview use it too, so none of them can disagree.

Precedence is deterministic: subscriptions on a port are consulted in the order they were
made (earliest first); the first steal whose filter matches takes the request, and every
matching mirror gets a copy. An unfiltered steal takes whole connections; a second one on
the same port follows its session's ``on_concurrent_steal``: refused (abort, the default),
queued behind the first (continue: it takes the port when the first ends), or taking the
port from the first, which is removed (override). Steals and mirrors coexist.
Filters are immutable and the table is replaced, never edited in place, so a decision
always sees one consistent state (the agent is single-threaded; this keeps it obvious).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from waylay.core.engine.body_filter import (
    DEFAULT_BODY_BUFFER_SIZE,
    DEFAULT_BODY_BUFFER_TIMEOUT_MS,
    BodySkip,
)
from waylay.core.engine.config import ConcurrentSteal, Mode
from waylay.core.engine.errors import WaylayError
from waylay.core.engine.filters import MATCH_BUDGET_S, HttpFilter, MatchResult, RequestView
from waylay.core.engine.routing import PASS, Route

# The "matched" text of traffic an unfiltered steal takes (whole connections, and the
# requests of connections already routed one by one when it arrived).
WHOLE_PORT = "whole port"
# The two modes a subscription has, as module names: the per-request loop compares by
# identity (``Subscription`` turns the wire's strings into these members).
STEAL = Mode.STEAL
MIRROR = Mode.MIRROR


class SubscriptionRefused(WaylayError):
    """A subscription conflicts with another session's."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Subscription:
    """One session's claim on a port.

    ``mode`` is STEAL or MIRROR (never OFF: a session that intercepts nothing does not
    subscribe); a plain "steal"/"mirror" string is turned into the member. A subscription
    is immutable: ``Registry.replace`` swaps it for one with the other mode or filter, and
    either mode may follow either (steal <-> mirror, in place, keeping its precedence).
    """

    sub_id: int  # agent-wide unique id (the link maps it to the client's own id)
    link_id: int  # the client connection that owns it
    port: int
    mode: Mode
    http_filter: HttpFilter | None
    capture: bool = False  # the session wants headers and body starts in flow records
    # The session's agent.max_body_buffer_size / _timeout: how much of a body its body
    # filter may wait for (bytes, milliseconds).
    body_buffer_size: int = DEFAULT_BODY_BUFFER_SIZE
    body_buffer_timeout_ms: int = DEFAULT_BODY_BUFFER_TIMEOUT_MS
    # What this subscription does if it takes whole connections and another already does.
    concurrent: ConcurrentSteal = ConcurrentSteal.ABORT
    # The session's agent.inject_headers: answers on this port carry the verdict header.
    inject_headers: bool = False

    def __post_init__(self) -> None:
        mode = Mode(self.mode)
        if mode is Mode.OFF:
            raise ValueError("a subscription steals or mirrors; mode off subscribes nothing")
        object.__setattr__(self, "mode", mode)

    @property
    def takes_whole_connections(self) -> bool:
        return self.mode is STEAL and self.http_filter is None


class Registry:
    """Subscriptions by port, in arrival order."""

    def __init__(self, *, clock: Callable[[], float] | None = None,
                 cpu_clock: Callable[[], float] | None = None,
                 budget_s: float = MATCH_BUDGET_S) -> None:
        """``clock`` and ``cpu_clock`` reach the filters (``HttpFilter.evaluate``): the
        agent passes ``time.perf_counter`` and ``time.thread_time``; ``budget_s`` is the
        regex time per request."""
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._budget_s = budget_s
        self._by_port: dict[int, tuple[Subscription, ...]] = {}
        # Read per request, so kept ready rather than computed each time.
        self._capturing: frozenset[int] = frozenset()
        self._body_bounds: dict[int, tuple[int, int]] = {}
        self._link_ids: dict[int, tuple[int, ...]] = {}
        self._marking: frozenset[int] = frozenset()  # ports whose answers carry the verdict

    def _set(self, port: int, subs: tuple[Subscription, ...]) -> None:
        """The one place the table changes (a new dict each time: see the module doc)."""
        by_port = dict(self._by_port)
        if subs:
            by_port[port] = subs
        else:
            by_port.pop(port, None)
        self._by_port = by_port
        self._capturing = frozenset(p for p, ss in by_port.items() if any(s.capture for s in ss))
        # Ports with a body filter, and the largest bounds their sessions allow.
        self._body_bounds = {
            p: (max(s.body_buffer_size for s in wanting),
                max(s.body_buffer_timeout_ms for s in wanting))
            for p, ss in by_port.items()
            if (wanting := [s for s in ss if s.http_filter is not None
                            and s.http_filter.needs_body])}
        self._link_ids = {p: tuple(sorted({s.link_id for s in ss})) for p, ss in by_port.items()}
        self._marking = frozenset(p for p, ss in by_port.items()
                                  if any(s.inject_headers for s in ss))

    def add(self, sub: Subscription) -> tuple[Subscription, ...]:
        """Add ``sub`` last on its port; returns the subscriptions it displaced (only with
        ``on_concurrent_steal: override``), already removed."""
        current = self._by_port.get(sub.port, ())
        displaced: tuple[Subscription, ...] = ()
        if sub.takes_whole_connections:
            holders = tuple(s for s in current if s.takes_whole_connections)
            if holders and sub.concurrent is ConcurrentSteal.ABORT:
                raise SubscriptionRefused(
                    f"port {sub.port} is already stolen without a filter by another "
                    "session; add an http_filter to share it, or set on_concurrent_steal "
                    "to continue (wait for it) or override (take the port)")
            if sub.concurrent is ConcurrentSteal.OVERRIDE:
                displaced = holders
                current = tuple(s for s in current if s not in holders)
        self._set(sub.port, (*current, sub))
        return displaced

    def replace(self, sub: Subscription) -> tuple[Subscription, ...]:
        """Swap a subscription's mode and filter in place, keeping its precedence; returns
        what it displaced, as ``add`` does."""
        subs = self._by_port.get(sub.port, ())
        if not any(s.sub_id == sub.sub_id for s in subs):
            raise SubscriptionRefused(f"no subscription {sub.sub_id} on port {sub.port}")
        displaced: tuple[Subscription, ...] = ()
        if sub.takes_whole_connections:
            holders = tuple(s for s in subs if s.takes_whole_connections
                            and s.sub_id != sub.sub_id)
            if holders and sub.concurrent is ConcurrentSteal.ABORT:
                raise SubscriptionRefused(
                    f"port {sub.port} is already stolen without a filter by another "
                    "session; add an http_filter to share it")
            if sub.concurrent is ConcurrentSteal.OVERRIDE:
                displaced = holders
        self._set(sub.port, tuple(sub if s.sub_id == sub.sub_id else s for s in subs
                                  if s not in displaced))
        return displaced

    def remove(self, sub_id: int) -> Subscription | None:
        for port, subs in self._by_port.items():
            for sub in subs:
                if sub.sub_id == sub_id:
                    self._set(port, tuple(s for s in subs if s.sub_id != sub_id))
                    return sub
        return None

    def remove_link(self, link_id: int) -> list[Subscription]:
        gone = [s for subs in self._by_port.values() for s in subs if s.link_id == link_id]
        for sub in gone:
            self.remove(sub.sub_id)
        return gone

    def get(self, sub_id: int) -> Subscription | None:
        for subs in self._by_port.values():
            for sub in subs:
                if sub.sub_id == sub_id:
                    return sub
        return None

    def ports(self) -> frozenset[int]:
        return frozenset(self._by_port)

    def subscriptions(self, port: int) -> tuple[Subscription, ...]:
        return self._by_port.get(port, ())

    def whole_connection_owner(self, port: int) -> Subscription | None:
        for sub in self._by_port.get(port, ()):
            if sub.takes_whole_connections:
                return sub
        return None

    def capturing(self, port: int) -> bool:
        return port in self._capturing

    def link_ids(self, port: int) -> tuple[int, ...]:
        """The sessions (links) subscribed to ``port``, in link order."""
        return self._link_ids.get(port, ())

    def whole_mirrors(self, port: int) -> list[Subscription]:
        """Unfiltered mirrors: they copy connections that are not HTTP, too."""
        return [s for s in self._by_port.get(port, ())
                if s.mode is MIRROR and s.http_filter is None]

    def decide(self, port: int, request: RequestView,
               body: bytes | BodySkip | None = None) -> Route:
        """Route one HTTP request arriving on ``port`` (``_route``); on a port where a
        session asked for agent.inject_headers the route says to mark the answer."""
        route = self._route(port, request, body)
        return route if port not in self._marking else replace(route, mark=True)

    def _route(self, port: int, request: RequestView,
               body: bytes | BodySkip | None = None) -> Route:
        """Route one HTTP request arriving on ``port`` (see the module doc for precedence).

        The earliest matching steal takes it; later matching steals are reported as
        shadowed (their sessions are told, never shown the request); every matching mirror
        gets a copy. An unfiltered mirror matches everything; so does an unfiltered steal
        (it takes new connections whole; here it takes the requests of connections that
        were already routed one by one when it arrived).

        On a port with a body filter, a request whose head does not decide it gets a Route
        that ``wants_body`` (with the largest bounds of the sessions asking); the engine
        asks again with ``body``: the whole body, or why it has none.
        """
        if port in self._body_bounds:
            return self._decide_with_body(port, request, body)
        subs = self._by_port.get(port, ())
        only_filter = subs[0].http_filter if len(subs) == 1 else None
        if only_filter is not None and subs[0].mode is STEAL:
            only = subs[0]  # the common case, kept cheap
            result = only_filter.evaluate(request, budget_s=self._budget_s, clock=self._clock,
                                          cpu_clock=self._cpu_clock)
            if result.matched:
                return Route(steal_by=only.sub_id, clause=result.clause,
                             timed_out=result.timed_out)
            return Route(steal_by=None, timed_out=result.timed_out) if result.timed_out else PASS
        return self._combine(subs, [
            None if sub.http_filter is None else sub.http_filter.evaluate(
                request, budget_s=self._budget_s, clock=self._clock, cpu_clock=self._cpu_clock)
            for sub in subs])

    def _decide_with_body(self, port: int, request: RequestView,
                          body: bytes | BodySkip | None) -> Route:
        subs = self._by_port.get(port, ())
        results: list[MatchResult | None] = []
        for sub in subs:
            http_filter = sub.http_filter
            if http_filter is None:
                results.append(None)
                continue
            if body is None:
                result = http_filter.evaluate_head(request, budget_s=self._budget_s,
                                                   clock=self._clock, cpu_clock=self._cpu_clock)
                if result is None:  # only the body can tell: ask for it
                    limit, timeout_ms = self._body_bounds[port]
                    return Route(steal_by=None, wants_body=True, body_limit=limit,
                                 body_timeout_ms=timeout_ms)
            else:
                result = http_filter.evaluate(request, body=body, budget_s=self._budget_s,
                                              clock=self._clock, cpu_clock=self._cpu_clock)
            results.append(result)
        return self._combine(subs, results)

    @staticmethod
    def _combine(subs: tuple[Subscription, ...],
                 results: list[MatchResult | None]) -> Route:
        """The routing rule over each subscription's result (None: it has no filter)."""
        steal_by: int | None = None
        clause: str | None = None
        timed_out: list[str] = []
        mirrors: list[int] = []
        mirror_clauses: list[str | None] = []
        shadowed: list[int] = []
        skipped: str | None = None
        for sub, result in zip(subs, results, strict=True):
            if result is None:
                if sub.mode is MIRROR:
                    mirrors.append(sub.sub_id)
                    mirror_clauses.append(None)
                elif steal_by is None:
                    # New connections go to it whole; this takes the requests of
                    # connections that were already being routed one by one.
                    steal_by, clause = sub.sub_id, WHOLE_PORT
                continue
            timed_out.extend(result.timed_out)
            if not result.matched:
                skipped = skipped or result.body_skipped
                continue
            if sub.mode is MIRROR:
                mirrors.append(sub.sub_id)
                mirror_clauses.append(result.clause)
                clause = clause or result.clause
            elif steal_by is None:
                steal_by, clause = sub.sub_id, result.clause
            else:
                shadowed.append(sub.sub_id)
        if steal_by is None and not mirrors and not timed_out and skipped is None:
            return PASS
        return Route(steal_by=steal_by, clause=clause, timed_out=tuple(timed_out),
                     mirror_to=tuple(mirrors), mirror_clauses=tuple(mirror_clauses),
                     shadowed=tuple(shadowed), body_skipped=skipped)
