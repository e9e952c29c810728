"""What a filter would do: the live preview and the detail view's "why", by the engine's rules.

Everything is decided by the engine's own code: ``waylay.core.client.session.plan_ports`` says which
ports a config intercepts and whether the filter applies there, and
``HttpFilter.evaluate`` says whether a request matches. The routing rules (docs/architecture.md §2)
on top of that are the agent's: an intercepted port without a filter is taken whole; on a
filtered port each HTTP request is matched on its own and anything that is not HTTP passes.

A request event may come without its headers (the engine does not always capture them).
Then header clauses see only what the event carries: the ``Host`` (from ``authority``),
and the preview says how many requests were judged that way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from waylay.core.client.session import PortPlan, plan_ports
from waylay.core.engine.config import IncomingConfig, Mode
from waylay.core.engine.events import FlowEvent, RequestEvent
from waylay.core.engine.filters import HttpFilter, MatchResult, RequestView, compile_http_filter
from waylay.core.engine.flow import Verdict

# How many of the most recent requests the preview judges ("would steal 37 of 500").
PREVIEW_WINDOW = 500
# Wall time one preview may spend. Every evaluation is capped by the engine's own regex
# budget (20 ms), so a catastrophic pattern could otherwise take 500 x 20 ms = 10 s.
PREVIEW_TIME_BUDGET_S = 1.0

TAKEN_VERB = {Mode.STEAL: "steal", Mode.MIRROR: "mirror", Mode.OFF: "take"}


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What the engine would do with one request under a config."""

    taken: bool
    reason: str  # "filter" | "unfiltered-port" | "not-intercepted" | "not-http" | "off"
    clause: str | None = None
    timed_out: bool = False
    headerless: bool = False  # a header clause was judged without captured headers


@dataclass(frozen=True, kw_only=True)
class Preview:
    mode: Mode
    considered: int
    taken_keys: frozenset[int]
    whole_port: int  # taken because their port is intercepted without a filter
    headerless: int
    timed_out: int
    stopped_early: bool = False

    @property
    def taken(self) -> int:
        return len(self.taken_keys)

    def summary(self) -> str:
        if self.mode is Mode.OFF:
            return f"mode off: would take none of {self.considered}"
        text = f"would {TAKEN_VERB[self.mode]} {self.taken} of {self.considered}"
        if self.whole_port:
            text += f" ({self.whole_port} on ports taken whole)"
        return text

    def notes(self) -> list[str]:
        notes = []
        if self.headerless:
            notes.append(f"{self.headerless} without captured headers: header filters are "
                         "evaluated only on requests captured with headers (here: Host only)")
        if self.timed_out:
            notes.append(f"{self.timed_out} hit the regex time budget (no match, as in the "
                         "agent)")
        if self.stopped_early:
            notes.append("preview stopped early: the filter is too slow")
        return notes


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Which ports a config intercepts, as the session would plan them."""

    mode: Mode
    by_port: Mapping[int, PortPlan] = field(default_factory=dict)

    @classmethod
    def of(cls, incoming: IncomingConfig, cli_ports: dict[int, int | None],
           listening: Sequence[int]) -> Plan:
        plans = plan_ports(incoming, cli_ports, list(listening))
        return cls(mode=incoming.mode, by_port={p.remote: p for p in plans})


def request_view(event: FlowEvent) -> tuple[RequestView | None, bool]:
    """The filter's view of a request event, and whether its headers were captured.

    None for what is not an HTTP request (a raw TCP connection).
    """
    method, path = event.method, event.path
    if event.protocol == "tcp" or not method or path is None:
        return None, False
    capture = event.capture if isinstance(event, RequestEvent) else None
    authority = event.authority
    h2 = event.protocol == "h2"
    headers: tuple[tuple[str, str], ...]
    if capture is not None:
        headers = capture.request_headers
    elif authority and not h2:
        headers = (("host", authority),)  # HTTP/1.1 carries it as the Host header
    else:
        headers = ()
    return RequestView(method=method, target=path, headers=headers,
                       authority=authority if h2 and authority else None), \
        capture is not None


def uses_headers(http_filter: HttpFilter) -> bool:
    obj = http_filter.to_mirrord()
    if "header_filter" in obj:
        return True
    members = obj.get("any_of") or obj.get("all_of")
    return isinstance(members, list) and any(
        isinstance(m, dict) and "header" in m for m in members)


def decide(event: FlowEvent, plan: Plan,
           clock: Callable[[], float] | None = None) -> Decision:
    """The engine's verdict for ``event`` under ``plan`` (docs/architecture.md §2 routing rules)."""
    if plan.mode is Mode.OFF:
        return Decision(taken=False, reason="off")
    port_plan = plan.by_port.get(event.port)
    if port_plan is None:
        return Decision(taken=False, reason="not-intercepted")
    if port_plan.http_filter is None:
        return Decision(taken=True, reason="unfiltered-port")
    view, captured = request_view(event)
    if view is None:
        return Decision(taken=False, reason="not-http")
    result = port_plan.http_filter.evaluate(view, clock=clock)
    return Decision(taken=result.matched, reason="filter", clause=result.clause,
                    timed_out=bool(result.timed_out),
                    headerless=not captured and uses_headers(port_plan.http_filter))


def preview_steps(rows: Iterable[Any], plan: Plan, *, budget_s: float = PREVIEW_TIME_BUDGET_S,
                  slice_s: float = 0.01, clock: Callable[[], float] = time.monotonic,
                  ) -> Generator[None, None, Preview]:
    """Judge ``rows`` (FlowRow-like: ``.key`` and ``.event``) under ``plan``, in slices.

    Yields after every ``slice_s`` of work so the caller (the UI's event loop) can serve
    other events between slices; returns the Preview. It runs on the loop's own thread on
    purpose: the engine's regex budget is wall time, and a thread competing for the GIL
    would see false timeouts the agent never has.
    """
    deadline = clock() + budget_s
    slice_end = clock() + slice_s
    taken: set[int] = set()
    considered = whole = headerless = timed_out = 0
    stopped = False
    for row in rows:
        now = clock()
        if now > deadline:
            stopped = True
            break
        if now > slice_end:
            yield
            slice_end = clock() + slice_s
        considered += 1
        decision = decide(row.event, plan, clock=clock)
        if decision.taken:
            taken.add(row.key)
            whole += decision.reason == "unfiltered-port"
        headerless += decision.headerless
        timed_out += decision.timed_out
    return Preview(mode=plan.mode, considered=considered, taken_keys=frozenset(taken),
                   whole_port=whole, headerless=headerless, timed_out=timed_out,
                   stopped_early=stopped)


def preview(rows: Iterable[Any], plan: Plan, *, budget_s: float = PREVIEW_TIME_BUDGET_S,
            clock: Callable[[], float] = time.monotonic) -> Preview:
    """:func:`preview_steps` run to the end in one go."""
    steps = preview_steps(rows, plan, budget_s=budget_s, clock=clock)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


@dataclass(frozen=True, kw_only=True)
class ClauseResult:
    text: str
    matched: bool
    timed_out: bool


def clause_results(http_filter: HttpFilter, view: RequestView) -> list[ClauseResult]:
    """Each clause of ``http_filter`` evaluated on its own (for the "why" section)."""
    obj = http_filter.to_mirrord()
    members = obj.get("any_of") or obj.get("all_of")
    if not isinstance(members, list):
        result = http_filter.evaluate(view)
        return [_clause(http_filter.text, result)]
    out = []
    for member in members:
        ((kind, value),) = member.items()
        single = compile_http_filter({f"{kind}_filter": value})
        out.append(_clause(f"{kind}: {value}", single.evaluate(view)))
    return out


def _clause(text: str, result: MatchResult) -> ClauseResult:
    return ClauseResult(text=text, matched=result.matched, timed_out=bool(result.timed_out))


def explain(event: FlowEvent, plan: Plan) -> list[str]:
    """Lines saying why the current config takes or leaves this request."""
    lines: list[str] = []
    verdict, port = event.verdict, event.port
    matched = event.matched if isinstance(event, RequestEvent) else None
    if verdict in (Verdict.STOLEN, Verdict.MIRRORED):
        if matched:
            lines.append(f"{verdict} by the agent: clause «{matched}» matched")
        else:
            lines.append(f"{verdict} by the agent: port {port} was intercepted without a "
                         "filter (whole connections)")
    elif verdict is Verdict.PASSED:
        lines.append("passed through to the original app by the agent")
    decision = decide(event, plan)
    now = {
        "off": "with the current config (mode off) nothing is intercepted",
        "not-intercepted": f"with the current config port {port} is not intercepted",
        "unfiltered-port": f"with the current config port {port} is taken whole (no filter "
                           "there)",
        "not-http": "not HTTP: on a filtered port it passes untouched",
    }.get(decision.reason)
    if now is not None:
        lines.append(now)
        return lines
    port_plan = plan.by_port[port]
    assert port_plan.http_filter is not None
    view, captured = request_view(event)
    assert view is not None
    verb = TAKEN_VERB[plan.mode]
    lines.append(f"the current filter {port_plan.http_filter.text!r} would "
                 f"{verb if decision.taken else 'not ' + verb} it:")
    for clause in clause_results(port_plan.http_filter, view):
        mark = "✓" if clause.matched else "✗"
        extra = " (timed out: counts as no match)" if clause.timed_out else ""
        lines.append(f"  {mark} {clause.text}{extra}")
    if not captured and uses_headers(port_plan.http_filter):
        lines.append("  headers were not captured for this request: header clauses saw "
                     "only the Host")
    return lines
