"""The headless demo's verdict: answers judged against the config's filter, and the counts."""

from __future__ import annotations

import json

from waylay.cli.demo.checks import judge, parse_report
from waylay.core.client.session import SessionStats
from waylay.core.engine.config import IncomingConfig, parse_config

ALICE_STEAL = ('{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
               '{"header_filter": "^x-user: alice$"}}}}}')
PATH_STEAL = ('{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
              '{"path_filter": "^/api/orders"}}}}}')


def incoming(text: str) -> IncomingConfig:
    return parse_config(text, fmt="json").incoming


def shape(user: str, target: str, local: int, remote: int, failed: int = 0,
          method: str = "GET") -> dict[str, object]:
    headers = [["host", "10.213.0.2"], ["user-agent", "shop-web/2.4"], ["x-user", user]]
    return {"user": user, "method": method, "target": target, "headers": headers,
            "tally": {"local": local, "remote": remote, "failed": failed}}


def report(*shapes: dict[str, object], problems: tuple[str, ...] = ()) -> str:
    users: dict[str, dict[str, int]] = {}
    for s in shapes:
        tally = s["tally"]
        assert isinstance(tally, dict)
        total = users.setdefault(str(s["user"]), {"local": 0, "remote": 0, "failed": 0})
        for key in total:
            total[key] += tally[key]
    doc = {"type": "traffic", "seconds": 5.0, "reason": "time",
           "requests": sum(sum(u.values()) for u in users.values()), "users": users,
           "shapes": list(shapes), "other": {}, "problems": list(problems)}
    return "some noise\n" + json.dumps(doc) + "\n"


def test_alice_steal_routed_as_configured_is_ok() -> None:
    """Alice's answers local, everyone else's remote, stolen and passed seen: ok."""
    text = report(shape("alice", "/api/orders", 4, 0), shape("bob", "/api/orders", 0, 5))
    verdict = judge(incoming(ALICE_STEAL), 80, parse_report(text),
                    SessionStats(stolen=4, passed=5))
    assert verdict.ok, verdict.lines
    assert verdict.expected["alice"].local == 4 and verdict.expected["bob"].remote == 5
    assert any("alice" in line and "local-dev" in line for line in verdict.lines)


def test_a_misrouted_answer_fails_and_is_named() -> None:
    """One of bob's answers from local-dev under the alice filter: not ok, bob named."""
    text = report(shape("alice", "/api/orders", 4, 0), shape("bob", "/api/orders", 1, 5))
    verdict = judge(incoming(ALICE_STEAL), 80, parse_report(text),
                    SessionStats(stolen=5, passed=5))
    assert not verdict.ok
    assert any(line.startswith("NOT OK: bob: 1x GET /api/orders") for line in verdict.lines)


def test_the_filter_is_judged_per_request_shape() -> None:
    """A path filter sends one of alice's shapes local and the other remote."""
    text = report(shape("alice", "/api/orders", 3, 0), shape("alice", "/api/users/1", 0, 2))
    verdict = judge(incoming(PATH_STEAL), 80, parse_report(text),
                    SessionStats(stolen=3, passed=2))
    assert verdict.ok, verdict.lines
    assert (verdict.expected["alice"].local, verdict.expected["alice"].remote) == (3, 2)


def test_mirror_needs_mirrored_events_and_remote_answers() -> None:
    """Mirror: all answers remote is not enough without mirrored events."""
    text = report(shape("bob", "/api/orders", 0, 6))
    mirror = incoming('{"feature": {"network": {"incoming": "mirror"}}}')
    assert judge(mirror, 80, parse_report(text), SessionStats(mirrored=6)).ok
    verdict = judge(mirror, 80, parse_report(text), SessionStats())
    assert not verdict.ok
    assert "NOT OK: the session saw no mirrored request" in " ".join(verdict.lines)


def test_no_traffic_failures_and_session_errors_are_not_ok() -> None:
    """Too few answers, failed requests, or session errors each fail the run."""
    mirror = incoming('{"feature": {"network": {"incoming": "mirror"}}}')
    few = report(shape("bob", "/api/orders", 0, 1))
    assert "no traffic flowed" in " ".join(
        judge(mirror, 80, parse_report(few), SessionStats(mirrored=1)).lines)
    failed = report(shape("bob", "/api/orders", 0, 6, failed=1), problems=("bob: reset",))
    assert not judge(mirror, 80, parse_report(failed), SessionStats(mirrored=6)).ok
    fine = report(shape("bob", "/api/orders", 0, 6))
    assert not judge(mirror, 80, parse_report(fine), SessionStats(mirrored=6, errors=1)).ok


def test_a_missing_report_is_not_ok() -> None:
    """No report line from the generator: not ok, and said so."""
    assert parse_report("Traceback ...\n") is None
    verdict = judge(incoming(ALICE_STEAL), 80, None, SessionStats())
    assert not verdict.ok and "did not report" in verdict.lines[0]
