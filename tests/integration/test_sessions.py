"""Several sessions on one agent: precedence, refusal, coexistence, clean departures."""

from __future__ import annotations

import signal
import time

import pytest

from tests.integration.conftest import (
    Bed,
    StartWaylay,
    agent_pids,
    curl,
    requires_root_netns,
)
from tests.netns import nat_rules

pytestmark = [pytest.mark.integration, requires_root_netns]


def steal(filter_json: str | None) -> str:
    body = f', "http_filter": {filter_json}' if filter_json else ""
    return f'{{"feature": {{"network": {{"incoming": {{"mode": "steal"{body}}}}}}}}}'


ALICE = steal('{"header_filter": "^x-user: alice$"}')
API = steal('{"path_filter": "^/api"}')
WHOLE = steal(None)
MIRROR = '{"feature": {"network": {"incoming": "mirror"}}}'


def test_second_session_joins_the_same_agent(bed: Bed, waylay: StartWaylay) -> None:
    """Two runs on one target share one agent (one guard, one worker)."""
    before = nat_rules(bed.ns)
    first = waylay(ALICE)
    second = waylay(API)
    pids = agent_pids(bed.ns)
    assert len(pids["guard"]) == 1 and len(pids["worker"]) == 1, pids
    assert "joining the agent" in second.stderr
    second.stop()
    first.stop()
    assert nat_rules(bed.ns) == before


def test_earliest_subscription_wins_and_the_other_is_told(bed: Bed,
                                                         waylay: StartWaylay) -> None:
    """Both filters match: the first session takes it; the second gets only a warning."""
    first = waylay(ALICE)
    second = waylay(API)
    both = curl(bed.url("/api/both"), "-H", "X-User: alice")
    api_only = curl(bed.url("/api/only"), "-H", "X-User: bob")
    assert (both.served_by, api_only.served_by) == ("local", "local")
    first_events = first.wait_requests(1)
    assert [e["path"] for e in first_events] == ["/api/both"]
    assert second.wait_for(lambda evs: any(
        e.get("type") == "warning" and "went to another session" in e.get("message", "")
        for e in evs), 10.0), second.events
    # The second session saw the request it took, never the one the first took.
    second_requests = second.wait_requests(1)
    assert "/api/both" not in [e["path"] for e in second_requests if e["verdict"] == "stolen"]
    assert not any("/api/both" in str(e) for e in second.events if e.get("type") == "warning")


def test_second_unfiltered_steal_is_refused(bed: Bed, waylay: StartWaylay) -> None:
    """Only one session may take a port whole; the second is refused with a clear error."""
    first = waylay(WHOLE)
    second = waylay(WHOLE, wait=False)
    code = second.wait()
    assert code == 3, second.stderr
    assert "already stolen without a filter" in second.stderr
    assert "on_concurrent_steal" in second.stderr  # the way out is named
    assert curl(bed.url("/still")).served_by == "local"  # the first is undisturbed
    first.stop()


def whole_steal(on_concurrent_steal: str) -> str:
    return ('{"feature": {"network": {"incoming": {"mode": "steal", '
            f'"on_concurrent_steal": "{on_concurrent_steal}"}}}}}}}}')


def stolen_paths(run: object) -> list[str]:
    return [e["path"] for e in run.events  # type: ignore[attr-defined]
            if e.get("type") == "request" and e.get("verdict") == "stolen"]


def test_on_concurrent_steal_override_takes_the_port_and_tells_the_first(
        bed: Bed, waylay: StartWaylay) -> None:
    """override: the second whole steal takes the port; the first session is told why."""
    first = waylay(WHOLE)
    assert curl(bed.url("/before")).served_by == "local"
    second = waylay(whole_steal("override"))
    assert first.wait_for(lambda evs: any(
        e.get("type") == "error" and "taken over" in e.get("message", "") for e in evs), 10.0), \
        first.events
    assert curl(bed.url("/after")).served_by == "local"
    assert second.wait_for(lambda evs: "/after" in stolen_paths(second), 10.0), second.events
    assert "/after" not in stolen_paths(first)
    second.stop()
    first.stop()


def test_on_concurrent_steal_continue_waits_for_the_first(bed: Bed, waylay: StartWaylay
                                                          ) -> None:
    """continue: the second whole steal is accepted and queued; it takes the port when
    the first session leaves."""
    first = waylay(WHOLE)
    second = waylay(whole_steal("continue"))
    assert curl(bed.url("/first")).served_by == "local"
    assert first.wait_for(lambda evs: "/first" in stolen_paths(first), 10.0), first.events
    assert first.stop(signal.SIGINT) == 0
    assert curl(bed.url("/second")).served_by == "local"
    assert second.wait_for(lambda evs: "/second" in stolen_paths(second), 10.0), second.events
    assert "/first" not in stolen_paths(second)
    second.stop()


def test_steal_and_mirror_coexist_and_a_departure_reverts_only_its_part(
        bed: Bed, waylay: StartWaylay) -> None:
    """A steal and a mirror share a port; when the steal leaves, alice goes back to remote."""
    stealer = waylay(ALICE)
    mirror = waylay(MIRROR)
    assert curl(bed.url("/c/alice"), "-H", "X-User: alice").served_by == "local"
    assert curl(bed.url("/c/bob"), "-H", "X-User: bob").served_by == "remote"
    mirrored = mirror.wait_for(lambda evs: any(
        e.get("path") == "/c/bob" and e.get("verdict") == "mirrored" for e in evs), 10.0)
    assert mirrored, mirror.events
    stealer.proc.send_signal(signal.SIGINT)
    assert stealer.wait() == 0
    assert curl(bed.url("/c/alice-after"), "-H", "X-User: alice").served_by == "remote"
    assert mirror.wait_for(lambda evs: any(e.get("path") == "/c/alice-after" for e in evs),
                           10.0)


def test_a_silent_session_is_dropped_and_its_port_reverts(bed: Bed,
                                                          waylay: StartWaylay) -> None:
    """A session that stops answering (SIGSTOP) is dropped within ~15 s; others go on."""
    keeper = waylay(API)  # the first session starts the agent and stays healthy
    frozen = waylay(ALICE)
    assert curl(bed.url("/frozen/1"), "-H", "X-User: alice").served_by == "local"
    frozen.proc.send_signal(signal.SIGSTOP)  # its link goes silent, its socket stays open
    try:
        deadline = time.monotonic() + 40.0  # bounds the wait; 15 s silence + a ping cycle
        while time.monotonic() < deadline:
            try:  # while the session is silent, its stolen requests wait on it
                if curl(bed.url("/frozen/2"), "-H", "X-User: alice",
                        timeout=5).served_by == "remote":
                    break
            except AssertionError:
                pass
            time.sleep(1.0)
        else:
            raise AssertionError("the silent session's steal was never dropped")
        assert curl(bed.url("/api/x")).served_by == "local"  # the other session is unharmed
        assert keeper.proc.poll() is None
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
