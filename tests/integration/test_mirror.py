"""Mirror mode: the original app answers everything, the local app gets copies."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.conftest import (
    PYTHON,
    SERVERS,
    Bed,
    StartWaylay,
    curl,
    requires_root_netns,
    start_server,
    stop_process,
)

pytestmark = [pytest.mark.integration, requires_root_netns]

MIRROR_ALL = '{"feature": {"network": {"incoming": "mirror"}}}'
MIRROR_ALICE = ('{"feature": {"network": {"incoming": {"mode": "mirror", "http_filter": '
                '{"header_filter": "^x-user: alice$"}}}}}')
REQUESTS = 400  # bounded load: well past the 64 copies an agent keeps in flight
CLIENTS = 8


def test_mirror_copies_every_request_while_remote_answers(bed: Bed,
                                                          waylay: StartWaylay) -> None:
    """Every answer comes from the remote app; each event is mirrored with both statuses."""
    run = waylay(MIRROR_ALL)
    answers = [curl(bed.url(f"/m/{i}")) for i in range(5)]
    assert {a.served_by for a in answers} == {"remote"}
    events = run.wait_requests(5)
    assert {e["verdict"] for e in events} == {"mirrored"}
    assert all(e["status"] == 200 and e["remote_status"] == 200 for e in events)
    assert sorted(e["path"] for e in events) == sorted(f"/m/{i}" for i in range(5))


def test_mirror_with_a_filter_copies_only_matching_requests(bed: Bed,
                                                            waylay: StartWaylay) -> None:
    """With a filter, matching requests are mirrored and the rest only passed."""
    run = waylay(MIRROR_ALICE)
    alice = curl(bed.url("/alice"), "-H", "X-User: alice")
    bob = curl(bed.url("/bob"), "-H", "X-User: bob")
    assert (alice.served_by, bob.served_by) == ("remote", "remote")
    events = {e["path"]: e for e in run.wait_requests(2)}
    assert events["/alice"]["verdict"] == "mirrored"
    assert events["/alice"]["matched"] == "header_filter: ^x-user: alice$"
    assert events["/bob"]["verdict"] == "passed"


def _latencies(url: str, n: int, clients: int = CLIENTS) -> list[float]:
    """``n`` keep-alive GETs from ``clients`` concurrent clients; seconds each (all must be
    answered by the remote app)."""

    def one_client(k: int) -> list[float]:
        times = []
        with httpx.Client(trust_env=False, timeout=30.0) as client:
            for i in range(n // clients):
                start = time.perf_counter()
                response = client.get(f"{url}?c={k}&i={i}")
                times.append(time.perf_counter() - start)
                assert response.headers["x-served-by"] == "remote"
        return times

    with ThreadPoolExecutor(clients) as pool:
        return [t for times in pool.map(one_client, range(clients)) for t in times]


def test_slow_local_app_never_slows_the_original_path(bed: Bed, waylay: StartWaylay) -> None:
    """A local app taking 2 s per copy: remote latency stays as without waylay; drops reported."""
    slow, slow_port = start_server([str(PYTHON), str(SERVERS / "slow_app.py"), "2"],
                                   "slow local app")
    try:
        url = bed.url("/latency")
        baseline = _latencies(url, 80)
        run = waylay(MIRROR_ALL, ports=[f"80:{slow_port}"])
        mirrored = _latencies(url, REQUESTS)
        warnings = run.wait_for(
            lambda evs: any("dropped" in e.get("message", "") for e in evs
                            if e.get("type") == "warning"), 15.0)
    finally:
        stop_process(slow)
    # A copy answered in 2 s must never be waited for: no request comes near that, and
    # the typical one is in the same range as without waylay (generous: the agent adds
    # a hop, and this machine's two cores are shared with everything else).
    assert max(mirrored) < 1.0, f"a remote request waited for the local app: {max(mirrored)}"
    assert statistics.median(mirrored) < 20 * statistics.median(baseline) + 0.005
    assert warnings, f"no drop warning; events: {run.events[-5:]}"
    drops = [e["message"] for e in run.of_type("warning") if "dropped" in e["message"]]
    assert any(int(m.split()[1]) > 0 for m in drops)


def test_captured_mirror_events_carry_both_answers(bed: Bed, waylay: StartWaylay) -> None:
    """With --capture a mirrored event holds the remote answer and the local one."""
    run = waylay(MIRROR_ALL, extra=["--capture"])
    assert curl(bed.url("/both")).served_by == "remote"
    (event,) = run.wait_requests(1)
    remote = {n.lower(): v for n, v in event["response_headers"]}
    local = {n.lower(): v for n, v in event["local_response_headers"]}
    assert (remote["x-served-by"], local["x-served-by"]) == ("remote", "local")
    assert event["response_body"] == "remote /both\n"
    assert event["local_response_body"] == "local /both\n"
