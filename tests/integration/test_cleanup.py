"""The agent's iptables rules never outlive it: the nat table after a run equals the one before.

Covers the ways a run ends (Ctrl-C, SIGTERM, the worker SIGKILLed under the guard) and the
one case nothing can clean at once (guard and worker SIGKILLed together): the next run
reports that leftover, and ``--clean-on-start`` removes it without touching a live agent's.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.integration.conftest import (
    Bed,
    StartWaylay,
    agent_pids,
    curl,
    pid_alive,
    poll,
    requires_root_netns,
    summary_counts,
)
from tests.netns import nat_rules, ns_run, ns_runner
from waylay.agent.iptables import remove_chain

pytestmark = [pytest.mark.integration, requires_root_netns]

HEADER_CONFIG = (
    '{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
    '{"header_filter": "X-My-Header: my-header-value", "ports": [80, 8080]},}}}}'
)
STEAL = ("-H", "X-My-Header: my-header-value")
# How long the guard (or the client) may take to notice and clean up; only a bound.
CLEANUP_TIMEOUT_S = 10.0


def _waylay_chains(rules: str) -> list[str]:
    return sorted({line.split()[0][1:] for line in rules.splitlines()
                   if line.startswith(":WAYLAY-")})


def _intercepting(bed: Bed) -> None:
    """The run is live: a matching request is answered by the local app."""
    assert curl(bed.url("/cleanup/probe"), *STEAL).served_by == "local"


def _agents_gone(bed: Bed) -> bool:
    found = agent_pids(bed.ns)
    return not any(pid_alive(p) for p in found["guard"] + found["worker"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_rules_are_removed_when_the_run_ends(
    bed: Bed, waylay: StartWaylay, sig: signal.Signals
) -> None:
    """Ctrl-C or SIGTERM to `waylay run`: exit 0, summary line, nat table as before, agent gone."""
    before = nat_rules(bed.ns)
    run = waylay(HEADER_CONFIG)
    during = nat_rules(bed.ns)
    assert len(_waylay_chains(during)) == 1, during
    _intercepting(bed)
    run.wait_requests(1)
    assert run.stop(sig) == 0, run.stderr
    assert summary_counts(run.stderr) == {"stolen": 1, "passed": 0, "mirrored": 0, "errors": 0}
    assert nat_rules(bed.ns) == before
    assert poll(lambda: _agents_gone(bed), CLEANUP_TIMEOUT_S), agent_pids(bed.ns)
    assert curl(bed.url("/cleanup/after"), *STEAL).served_by == "remote"


def test_rules_are_removed_when_the_worker_is_killed(bed: Bed, waylay: StartWaylay) -> None:
    """SIGKILL of the agent worker: its guard removes the rules; the run ends with an error."""
    before = nat_rules(bed.ns)
    run = waylay(HEADER_CONFIG)
    _intercepting(bed)
    workers = agent_pids(bed.ns)["worker"]
    assert len(workers) == 1, agent_pids(bed.ns)
    os.kill(workers[0], signal.SIGKILL)
    assert poll(lambda: nat_rules(bed.ns) == before, CLEANUP_TIMEOUT_S), nat_rules(bed.ns)
    assert poll(lambda: _agents_gone(bed), CLEANUP_TIMEOUT_S), agent_pids(bed.ns)
    # Traffic reaches the original app again, and the client noticed its agent is gone.
    assert curl(bed.url("/cleanup/after"), *STEAL).served_by == "remote"
    code = run.wait()
    assert code not in (0, None), run.stderr
    assert run.of_type("error"), f"no error event: {run.events}\nstderr:\n{run.stderr}"


def _kill_agent_hard(bed: Bed) -> None:
    found = agent_pids(bed.ns)
    assert len(found["guard"]) == 1 and len(found["worker"]) == 1, found
    for pid in found["guard"] + found["worker"]:
        os.kill(pid, signal.SIGKILL)
    assert poll(lambda: _agents_gone(bed), CLEANUP_TIMEOUT_S), agent_pids(bed.ns)


def test_leftover_is_reported_then_removed_with_clean_on_start(
    bed: Bed, waylay: StartWaylay
) -> None:
    """Guard and worker SIGKILLed: the next run warns of the chain; --clean-on-start removes it."""
    before = nat_rules(bed.ns)
    first = waylay(HEADER_CONFIG)
    _intercepting(bed)
    _kill_agent_hard(bed)
    leftover_rules = nat_rules(bed.ns)
    (leftover,) = _waylay_chains(leftover_rules)
    first.wait()

    second = waylay(HEADER_CONFIG)
    warnings = [e["message"] for e in second.of_type("warning")]
    assert any(leftover in w and "--clean-on-start" in w for w in warnings), second.events
    assert leftover in second.stderr and "warning" in second.stderr, second.stderr
    _intercepting(bed)  # a leftover does not stop a new session from working
    assert second.stop() == 0, second.stderr
    assert nat_rules(bed.ns) == leftover_rules  # reported, not touched

    third = waylay(HEADER_CONFIG, extra=["--clean-on-start"])
    assert leftover not in _waylay_chains(nat_rules(bed.ns))
    assert not any(leftover in e["message"] for e in third.of_type("warning")), third.events
    _intercepting(bed)
    assert third.stop() == 0, third.stderr
    assert nat_rules(bed.ns) == before


def _add_chain(ns: str, chain: str, owner: int) -> None:
    """A chain the way agent/iptables.py writes one, owned (per its comment) by ``owner``."""
    comment = ["-m", "comment", "--comment", f"waylay owner={owner}"]
    for args in (["-N", chain],
                 ["-A", chain, "-m", "mark", "--mark", "0x2000/0x2000", *comment, "-j", "RETURN"],
                 ["-I", "PREROUTING", "1", "-p", "tcp", *comment, "-j", chain],
                 ["-I", "OUTPUT", "1", "-p", "tcp", "-o", "lo", *comment, "-j", chain]):
        ns_run(ns, ["iptables", "-w", "-t", "nat", *args], check=True)


def test_clean_on_start_removes_dead_owners_chains_but_not_a_live_agents(
    bed: Bed, waylay: StartWaylay
) -> None:
    """A chain whose owner pid is gone is removed by --clean-on-start; a live owner's is kept."""
    before = nat_rules(bed.ns)
    dead = subprocess.Popen(["true"])  # a pid that no longer runs
    dead.wait()
    assert not pid_alive(dead.pid)
    live_owner = os.getpid()  # alive for the whole test, in the pid namespace agents share
    dead_chain, live_chain = "WAYLAY-deadbeef", "WAYLAY-a11ve000"
    try:
        _add_chain(bed.ns, dead_chain, dead.pid)
        _add_chain(bed.ns, live_chain, live_owner)

        reporting = waylay(HEADER_CONFIG)
        warnings = " ".join(e["message"] for e in reporting.of_type("warning"))
        assert dead_chain in warnings, reporting.events
        assert live_chain not in warnings, reporting.events  # a live agent's: not a leftover
        assert reporting.stop() == 0
        assert set(_waylay_chains(nat_rules(bed.ns))) == {dead_chain, live_chain}

        cleaning = waylay(HEADER_CONFIG, extra=["--clean-on-start"])
        chains = _waylay_chains(nat_rules(bed.ns))
        assert dead_chain not in chains and live_chain in chains, chains
        assert cleaning.stop() == 0
        assert _waylay_chains(nat_rules(bed.ns)) == [live_chain]
    finally:
        for chain in (dead_chain, live_chain):
            remove_chain(chain, ns_runner(bed.ns))
    assert nat_rules(bed.ns) == before
