"""Nothing from the caller's working directory or PYTHON* environment runs in the root agent.

``waylay run`` is started from a directory holding modules named like the agent's
dependencies (``h2``, ``uvloop``) and waylay's own ``agent`` package, with ``PYTHONPATH``
naming a directory with another ``agent`` package.
Each of them, if imported, appends a line to a marker file and fails. The agent must
import none of them, get none of the ``PYTHON*`` variables, and the session must work.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import conftest as bedding
from tests.integration.conftest import (
    CLEAN_ENV,
    START_TIMEOUT_S,
    Bed,
    agent_pids,
    cmdline,
    curl,
    finish_waylay,
    launch_waylay,
    pid_alive,
    pids_in_netns,
    poll,
    requires_root_netns,
    waylay_argv,
    write_config,
)
from tests.netns import nat_rules

pytestmark = [pytest.mark.integration, requires_root_netns]

# The integration bed: remote servers in a namespace, local apps on loopback.
bed = bedding.bed

ALICE = ('{"feature": {"network": {"incoming": {"mode": "steal", '
         '"http_filter": {"header_filter": "^x-user: alice$"}}}}}')
EXIT_TIMEOUT_S = 20.0  # a bound only: how long the agent may take to leave after the run

# Written as h2.py / uvloop.py: what an attacker would leave where someone runs waylay.
SHADOW = '''\
import os, sys
with open({marker!r}, "a") as f:
    f.write(f"{{os.getpid()}} {{__name__}} from {{__file__}} in {{sys.argv!r}}\\n")
raise ImportError("a module shadowed from " + os.path.dirname(__file__))
'''


def _agents(bed: Bed) -> list[int]:
    found = agent_pids(bed.ns)
    return [pid for pid in found["guard"] + found["worker"] if pid_alive(pid)]


@pytest.fixture(autouse=True)
def no_agent_left(bed: Bed) -> Iterator[None]:
    """A failed test's agent must not be joined by the next test (nothing would launch)."""
    yield
    for pid in agent_pids(bed.ns)["guard"]:  # the guard removes the rules on SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not poll(lambda: not _agents(bed), EXIT_TIMEOUT_S):
        for pid in _agents(bed):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read()
    pairs = (entry.decode(errors="replace").partition("=") for entry in raw.split(b"\0") if entry)
    return {name: value for name, _, value in pairs}


def _target(bed: Bed, kind: str) -> str:
    if kind == "netns":
        return f"netns/{bed.ns}"
    return f"pid/{min(pids_in_netns(bed.ns))}"  # one of the remote servers


@pytest.mark.parametrize("kind", ["netns", "pid"])
def test_agent_ignores_the_callers_directory_and_python_environment(
    bed: Bed, tmp_path: Path, kind: str
) -> None:
    """Shadowing modules in the cwd and on PYTHONPATH never run in the agent; the run works."""
    assert not _agents(bed), f"an agent is already running: {agent_pids(bed.ns)}"
    marker = tmp_path / "shadow-imported"
    cwd, python_path = tmp_path / "work", tmp_path / "pythonpath"
    shadow = SHADOW.format(marker=str(marker))
    for directory in (cwd, python_path):
        directory.mkdir()
        # A "waylay.agent" package shadowing waylay's own: `python -m waylay.agent` would run
        # it (with or without a waylay/__init__.py: both forms are tried).
        package = directory / "waylay" / "agent"
        package.mkdir(parents=True)
        if directory == cwd:
            (directory / "waylay" / "__init__.py").write_text(shadow)
        for name in ("__init__", "__main__"):
            (package / f"{name}.py").write_text(shadow)
    # Dependencies shadowed in the working directory (the client's sys.path does not hold
    # it). PYTHONPATH holds only the "waylay.agent" package: the client is the caller's own
    # process and imports what PYTHONPATH offers (h2, uvloop); it never imports "waylay.agent".
    for name in ("h2", "uvloop"):
        (cwd / f"{name}.py").write_text(shadow)
    env = {**CLEAN_ENV, "PYTHONPATH": str(python_path),
           "PYTHONUSERBASE": str(python_path)}
    before = nat_rules(bed.ns)
    config = write_config(tmp_path, ALICE)
    run = launch_waylay(waylay_argv(_target(bed, kind), config, [f"80:{bed.local_http}"]), 1,
                        wait=False, env=env, cwd=str(cwd))
    try:
        run.wait_for(lambda evs: any(e.get("type") == "subscribed" for e in evs)
                     or marker.exists(), START_TIMEOUT_S)
        assert not marker.exists(), (f"the agent imported modules of the caller:\n"
                                     f"{marker.read_text()}\nstderr:\n{run.stderr}")
        assert run.of_type("subscribed"), f"no subscription: {run.events}\n{run.stderr}"
        agents = agent_pids(bed.ns)
        assert len(agents["guard"]) == 1 and len(agents["worker"]) == 1, agents
        for pid in agents["guard"] + agents["worker"]:
            assert "-I" in cmdline(pid), cmdline(pid)
            leaked = sorted(name for name in _environ(pid) if name.startswith("PYTHON"))
            assert not leaked, f"{cmdline(pid)} got {leaked}"
        assert curl(bed.url("/shadow"), "-H", "X-User: alice").served_by == "local"
        assert run.stop() == 0, run.stderr
    finally:
        finish_waylay(run)
    assert poll(lambda: not _agents(bed), EXIT_TIMEOUT_S), agent_pids(bed.ns)
    assert not marker.exists(), marker.read_text()
    assert nat_rules(bed.ns) == before
