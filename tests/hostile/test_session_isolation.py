"""Two sessions on one port never see each other's traffic or local answers (--capture).

Session A delivers to ``local-a`` (answers 201), session B to ``local-b`` (answers 202),
both with ``--capture``, so every event carries the local app's status, headers and body.
In mirror mode both filters match every request: each session must get its own copy's
answer and name its own filter. In steal mode the filters take different requests (and
one request matches both, so the earlier session takes it): a session only ever sees the
requests it took (plus the passed ones, which every session on the port is shown).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.hostile.conftest import (
    HostileBed,
    RunStarter,
    assert_same_agent,
    http_get,
    incoming,
)
from tests.integration.conftest import REMOTE_HTTP_PORT, WaylayRun, requires_root_netns

pytestmark = [pytest.mark.integration, requires_root_netns,
              pytest.mark.usefixtures("memory_checkpoint")]

REQUESTS = 20
ALICE_FILTER = '{"header_filter": "^x-user: alice$"}'
ISO_FILTER = '{"path_filter": "^/iso"}'
BOB_PATH_FILTER = '{"path_filter": "^/bob"}'
CAPTURE = ["--capture"]


def _header(event: dict[str, Any], key: str, name: str) -> str | None:
    for field_name, value in event.get(key) or []:
        if field_name.lower() == name:
            return str(value)
    return None


def _filter_of(run: WaylayRun) -> str:
    (subscribed,) = run.of_type("subscribed")
    return str(subscribed["filter"])


def _start_pair(hb: HostileBed, start: RunStarter, mode: str, a_filter: str,
                b_filter: str) -> tuple[WaylayRun, WaylayRun]:
    a = start(incoming(mode, a_filter), [f"{REMOTE_HTTP_PORT}:{hb.local_a}"], CAPTURE)
    b = start(incoming(mode, b_filter), [f"{REMOTE_HTTP_PORT}:{hb.local_b}"], CAPTURE)
    return a, b


def test_mirror_sessions_see_only_their_own_local_answers(agent_memory: HostileBed,
                                                          hostile_run: RunStarter) -> None:
    """Both mirror filters match: each session's events carry its own app's answer and
    its own filter, never the other's."""
    hb = agent_memory
    a, b = _start_pair(hb, hostile_run, "mirror", ALICE_FILTER, ISO_FILTER)
    for i in range(REQUESTS):
        status, headers, _ = http_get(hb.ns_ip, REMOTE_HTTP_PORT, f"/iso/{i}",
                                      {"X-User": "alice"})
        assert (status, headers.get("x-served-by")) == (200, "remote")
    wrong: list[str] = []
    for run, name, status in ((a, "local-a", 201), (b, "local-b", 202)):
        run.wait_requests(REQUESTS)
        events = run.requests
        own_filter = _filter_of(run)
        for event in events:
            where = f"{name} event {event['path']}"
            if event["verdict"] != "mirrored" or event["remote_status"] != 200:
                wrong.append(f"{where}: verdict {event['verdict']} / {event['remote_status']}")
            if event["status"] != status:
                wrong.append(f"{where}: local status {event['status']}")
            served = _header(event, "local_response_headers", "x-served-by")
            if served != name:
                wrong.append(f"{where}: local answer served by {served}")
            if not str(event.get("local_response_body", "")).startswith(f"{name} "):
                wrong.append(f"{where}: local body {event.get('local_response_body')!r}")
            if event["matched"] != own_filter:
                wrong.append(f"{where}: matched {event['matched']!r}, not {own_filter!r}")
    assert_same_agent(hb)
    assert not wrong, f"{len(wrong)} cross-session leaks:\n" + "\n".join(wrong[:40])


def test_steal_sessions_see_only_the_requests_they_took(agent_memory: HostileBed,
                                                       hostile_run: RunStarter) -> None:
    """A takes alice's, B takes /bob, a request matching both goes to A alone; neither
    session is shown a request the other took, nor the other app's answer."""
    hb = agent_memory
    a, b = _start_pair(hb, hostile_run, "steal", ALICE_FILTER, BOB_PATH_FILTER)
    sent: dict[str, tuple[dict[str, str], str, int]] = {}  # path -> (headers, app, status)
    for i in range(REQUESTS):
        sent[f"/alice/{i}"] = ({"X-User": "alice"}, "local-a", 201)
        sent[f"/bob/{i}"] = ({"X-User": "bob"}, "local-b", 202)
        sent[f"/carol/{i}"] = ({"X-User": "carol"}, "remote", 200)
    sent["/bob/both"] = ({"X-User": "alice"}, "local-a", 201)  # both match: A is earlier
    for path, (headers, app, status) in sent.items():
        got_status, got, body = http_get(hb.ns_ip, REMOTE_HTTP_PORT, path, headers)
        assert (got_status, got.get("x-served-by")) == (status, app), (path, got, body)
    taken_by = {"local-a": a, "local-b": b}
    for name, run in taken_by.items():
        own = sorted(p for p, (_, app, _) in sent.items() if app == name)
        passed = sorted(p for p, (_, app, _) in sent.items() if app == "remote")
        run.wait_requests(len(own) + len(passed))
        events = run.requests  # all of them: one too many is the failure looked for
        stolen = sorted(e["path"] for e in events if e["verdict"] == "stolen")
        others = [e for e in events if e["path"] not in own and e["path"] not in passed]
        assert not others, f"{name}'s session saw requests it did not take: {others}"
        assert stolen == own, (name, stolen)
        for event in events:
            if event["verdict"] == "stolen":
                assert _header(event, "response_headers", "x-served-by") == name, event
                assert event["status"] == (201 if name == "local-a" else 202), event
                assert event["matched"] == _filter_of(run), event
            else:
                assert event["verdict"] == "passed" and event["path"] in passed, event
                assert _header(event, "response_headers", "x-served-by") == "remote", event
        assert not any("/bob/both" in str(w) for w in run.of_type("warning")), run.events
    # B was told once that a request its filter matched went to an earlier session.
    assert b.wait_for(lambda evs: any(
        e.get("type") == "warning" and "went to another session" in e.get("message", "")
        for e in evs)), b.events
    assert_same_agent(hb)
