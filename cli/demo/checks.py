"""The verdict of a headless demo: did traffic flow, and was it routed as the config says?

The traffic generator reports, per request shape (user, method, target, headers as sent),
how many answers came from the local dev app, how many from the remote shop, and how many
failed. For each shape the config decides where its answers must come from, with the very
filter the agent uses (``waylay.core.engine.filters``): in steal mode, a request the filter takes
(or every request, on a port stolen without a filter) must be answered by local-dev, any other
by the remote shop; in mirror and off modes the remote shop answers everything. The
session's own counts must agree: stolen requests where some were expected, passed ones
where some were expected, mirrored copies in mirror mode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from waylay.cli.demo.traffic import PROBE_USER
from waylay.core.client.session import SessionStats
from waylay.core.engine.config import IncomingConfig, Mode
from waylay.core.engine.filters import RequestView

# Fewer answers than this and the demo did not show anything: not a success.
MIN_ANSWERS: Final = 3
PROBLEMS_SHOWN: Final = 5


@dataclass
class Count:
    local: int = 0
    remote: int = 0
    failed: int = 0

    @property
    def answered(self) -> int:
        return self.local + self.remote


@dataclass(frozen=True, kw_only=True)
class ShapeResult:
    user: str
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    count: Count


@dataclass
class TrafficReport:
    """The generator's report (its one JSON line)."""

    seconds: float = 0.0
    requests: int = 0
    users: dict[str, Count] = field(default_factory=dict)
    shapes: list[ShapeResult] = field(default_factory=list)
    other: Count = field(default_factory=Count)
    problems: list[str] = field(default_factory=list)

    @property
    def total(self) -> Count:
        total = Count()
        for count in self.users.values():
            total.local += count.local
            total.remote += count.remote
            total.failed += count.failed
        return total


def _count(doc: Any) -> Count:
    if not isinstance(doc, dict):
        return Count()
    return Count(**{k: int(doc.get(k, 0)) for k in ("local", "remote", "failed")})


def parse_report(text: str) -> TrafficReport | None:
    """The report in the generator's output (its last JSON line), or None if there is none."""
    for line in reversed(text.splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("type") == "traffic":
            break
    else:
        return None
    shapes = [ShapeResult(user=str(s["user"]), method=str(s["method"]),
                          target=str(s["target"]),
                          headers=tuple((str(k), str(v)) for k, v in s["headers"]),
                          count=_count(s.get("tally")))
              for s in doc.get("shapes", []) if isinstance(s, dict)]
    return TrafficReport(
        seconds=float(doc.get("seconds", 0.0)), requests=int(doc.get("requests", 0)),
        users={str(u): _count(c) for u, c in dict(doc.get("users", {})).items()},
        shapes=shapes, other=_count(doc.get("other")),
        problems=[str(p) for p in doc.get("problems", [])])


def goes_local(incoming: IncomingConfig, port: int, shape: ShapeResult) -> bool:
    """Must the local dev app answer this request (steal, and the filter takes it)?"""
    return incoming.mode is Mode.STEAL and matches(incoming, port, shape)


def matches(incoming: IncomingConfig, port: int, shape: ShapeResult) -> bool:
    """Does the config take this request (a filter match, or a port taken whole)?"""
    flt = incoming.filter_for(port)
    if flt is None:
        return True
    view = RequestView(method=shape.method, target=shape.target, headers=shape.headers)
    return flt.evaluate(view).matched


@dataclass
class Verdict:
    ok: bool
    lines: list[str]  # the generator's view and what went wrong, for stderr
    expected: dict[str, Count]  # per user: how many answers should come from each side


def judge(incoming: IncomingConfig, port: int, report: TrafficReport | None,
          stats: SessionStats) -> Verdict:
    """Did traffic flow, and did every answer come from where the config sends it?"""
    if report is None:
        return Verdict(ok=False, expected={},
                       lines=["the traffic generator did not report (see the errors above)"])
    expected: dict[str, Count] = {}
    misrouted: list[str] = []
    want_local = want_remote = taken = 0
    for shape in report.shapes:
        local = goes_local(incoming, port, shape)
        if incoming.mode is not Mode.OFF and matches(incoming, port, shape):
            taken += shape.count.answered
        want = expected.setdefault(shape.user, Count())
        if local:
            want.local += shape.count.answered
            want_local += shape.count.answered
            wrong = shape.count.remote
        else:
            want.remote += shape.count.answered
            want_remote += shape.count.answered
            wrong = shape.count.local
        if wrong:
            misrouted.append(f"{shape.user}: {wrong}x {shape.method} {shape.target} answered "
                             f"by {'the remote shop' if local else 'local-dev'}, expected "
                             f"{'local-dev' if local else 'the remote shop'}")
    total = report.total
    problems: list[str] = []
    if total.answered < MIN_ANSWERS:
        problems.append(f"no traffic flowed: {total.answered} answers in "
                        f"{report.seconds:g} s")
    if total.failed:
        problems.append(f"{total.failed} requests failed: "
                        + "; ".join(report.problems[:PROBLEMS_SHOWN]))
    problems.extend(misrouted[:PROBLEMS_SHOWN])
    if stats.errors:
        problems.append(f"the session reported {stats.errors} errors (see above)")
    if incoming.mode is Mode.STEAL:
        if want_local and not stats.stolen:
            problems.append("the session saw no stolen request, though some were expected")
        if want_remote and not stats.passed:
            problems.append("the session saw no passed request, though some were expected")
    if incoming.mode is Mode.MIRROR and taken and not stats.mirrored:
        problems.append("the session saw no mirrored request, though the filter takes some")
    lines = view_lines(report, expected)
    if problems:
        lines += [f"NOT OK: {p}" for p in problems]
    else:
        lines.append("ok: " + _success(incoming, want_local, want_remote, stats))
    return Verdict(ok=not problems, lines=lines, expected=expected)


def _success(incoming: IncomingConfig, want_local: int, want_remote: int,
             stats: SessionStats) -> str:
    if incoming.mode is Mode.STEAL:
        return (f"every answer came from where the filter sends it ({want_local} from "
                f"local-dev, {want_remote} from the remote shop)")
    if incoming.mode is Mode.MIRROR:
        return (f"the remote shop answered all {want_remote} requests; {stats.mirrored} "
                "copies were mirrored to local-dev")
    return f"mode off: the remote shop answered all {want_remote} requests"


def view_lines(report: TrafficReport, expected: dict[str, Count] | None = None) -> list[str]:
    """The generator's view: answers per user, from local-dev and from the remote shop."""
    lines = [f"the traffic generator's view ({report.requests} requests in "
             f"{report.seconds:.0f} s):",
             f"  {'user':12}{'local-dev':>10}{'remote':>8}{'failed':>8}"
             + ("  expected" if expected is not None else "")]
    # The users in name order, the kubelet's probes last.
    for user in sorted(report.users, key=lambda u: (u == PROBE_USER, u)):
        count = report.users[user]
        line = f"  {user:12}{count.local:>10}{count.remote:>8}{count.failed:>8}"
        want = (expected or {}).get(user)
        if want is not None:
            line += "  " + (f"{want.local} local-dev, {want.remote} remote"
                            if want.local and want.remote
                            else "local-dev" if want.local else "remote")
        lines.append(line)
    return lines
