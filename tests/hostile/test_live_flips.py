"""Live filter flips under load: SIGHUP re-reads the config while clients keep asking.

The config file alternates between stealing alice's requests and stealing bob's; after
each rewrite ``waylay run`` gets SIGHUP and says ``reloaded`` once the agent took the new
filter. Two clients (one keep-alive connection, one connection per request) ask as alice
and bob in turn the whole time. A request whose whole life lies between two flips has a
known filter in force, and its answer must come from where that filter sends it; one
that overlapped a flip may go either way (we cannot tell which filter it met). None may
fail, and every stolen request's event must name the filter that matches its user.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.hostile.conftest import (
    DEADLINE_S,
    HostileBed,
    assert_same_agent,
    incoming,
    wait_until,
)
from tests.integration.conftest import (
    REMOTE_HTTP_PORT,
    finish_waylay,
    launch_waylay,
    requires_root_netns,
    waylay_argv,
)

pytestmark = [pytest.mark.integration, requires_root_netns,
              pytest.mark.usefixtures("memory_checkpoint")]

FLIPS = 100
MAX_REQUESTS_PER_CLIENT = 5000  # bounds the load even if flips stall
PER_FLIP = 2  # requests each client completes under one filter before the next flip


def _config(user: str) -> str:
    return incoming("steal", f'{{"header_filter": "^x-user: {user}$"}}')


def _user_in_force(state: int) -> str:
    return "alice" if state % 2 == 0 else "bob"  # state 0 (the start) steals alice


@dataclass
class Flips:
    """How many flips were signalled and how many the session confirmed."""

    signalled: int = 0
    applied: int = 0
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    completed: list[int] = field(default_factory=lambda: [0, 0])  # per client, since flip

    def window(self) -> tuple[int, int]:
        with self.lock:
            return self.applied, self.signalled


@dataclass
class Outcome:
    path: str
    user: str
    lo: int  # flips applied before it was sent
    hi: int  # flips signalled by the time its answer was in
    status: int | None
    served_by: str | None
    error: str | None = None


def _client(index: int, host: str, flips: Flips, out: list[Outcome]) -> None:
    """Ask as alice and bob in turn until the flips are done (bounded by count)."""
    keep_alive = index == 0
    conn: http.client.HTTPConnection | None = None
    for i in range(MAX_REQUESTS_PER_CLIENT):
        if flips.done:
            break
        user = "alice" if i % 2 == 0 else "bob"
        path = f"/flip/{index}/{i}/{user}"
        lo, _ = flips.window()
        status = served = error = None
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, REMOTE_HTTP_PORT, timeout=DEADLINE_S)
            conn.request("GET", path, headers={"X-User": user})
            response = conn.getresponse()
            response.read()
            status, served = response.status, response.getheader("X-Served-By")
        except (OSError, http.client.HTTPException) as exc:
            error = repr(exc)
        finally:
            if conn is not None and (not keep_alive or error is not None):
                conn.close()
                conn = None
        _, hi = flips.window()
        out.append(Outcome(path, user, lo, hi, status, served, error))
        with flips.lock:
            flips.completed[index] += 1
    if conn is not None:
        conn.close()


def test_live_flips_under_load(memory_checkpoint: HostileBed, tmp_path: Path) -> None:
    """100 SIGHUP flips alice<->bob under two clients: 0 failed, 0 misrouted."""
    hb = memory_checkpoint
    config = tmp_path / "flip.json"
    config.write_text(_config("alice"))
    run = launch_waylay(waylay_argv(f"netns/{hb.ns}", config,
                                    [f"{REMOTE_HTTP_PORT}:{hb.bed.local_http}"]), 1)
    flips = Flips()
    results: list[list[Outcome]] = [[], []]
    clients = [threading.Thread(target=_client, args=(i, hb.ns_ip, flips, results[i]),
                                name=f"flip-client-{i}", daemon=True) for i in range(2)]

    def reloads() -> int:
        return sum(e.get("message", "").startswith("reloaded ")
                   for e in run.of_type("warning"))

    try:
        for client in clients:
            client.start()
        for flip in range(1, FLIPS + 1):
            # Each client gets a few requests under the filter now in force, then flip.
            assert wait_until(lambda: min(flips.completed) >= PER_FLIP, interval=0.005), (
                f"clients stalled at flip {flip}: {flips.completed}")
            staged = tmp_path / "flip.json.new"
            staged.write_text(_config(_user_in_force(flip)))
            os.replace(staged, config)  # the reload never reads a half-written file
            with flips.lock:
                flips.signalled = flip
            run.proc.send_signal(signal.SIGHUP)
            assert run.wait_for(lambda _evs, n=flip: reloads() >= n, DEADLINE_S), (
                f"flip {flip} not confirmed: {run.of_type('error')}\n{run.stderr}")
            with flips.lock:
                flips.applied = flip
                flips.completed = [0, 0]
        assert wait_until(lambda: min(flips.completed) >= PER_FLIP, interval=0.005)
    finally:
        flips.done = True
        for client in clients:
            client.join(timeout=DEADLINE_S * 2)
    outcomes = results[0] + results[1]
    failed = [o for o in outcomes if o.error is not None or o.status != 200]
    known = [o for o in outcomes if o.lo == o.hi and o.error is None]
    misrouted = [o for o in known
                 if o.served_by != ("local" if o.user == _user_in_force(o.lo) else "remote")]
    overlapping = len(outcomes) - len(known)
    # The session's own account: a stolen request always names the filter of its user.
    assert run.wait_for(lambda evs: sum(e.get("type") == "request" for e in evs)
                        >= len(outcomes) - len(failed), DEADLINE_S)
    wrong_filter = [e for e in run.requests if e["verdict"] == "stolen"
                    and e["matched"] != f"header_filter: ^x-user: {e['path'].rsplit('/', 1)[1]}$"]
    print(f"live flips: {FLIPS} flips, {len(outcomes)} requests, {len(failed)} failed, "
          f"{len(misrouted)} misrouted, {overlapping} overlapped a flip (either way allowed)")
    try:
        assert not failed, failed[:10]
        assert not misrouted, misrouted[:10]
        assert not wrong_filter, wrong_filter[:10]
        assert reloads() == FLIPS
        assert run.proc.poll() is None, run.stderr
        assert_same_agent(hb)
    finally:
        finish_waylay(run)
