"""agent/guard.py: the rules never outlive the agent, and leftovers are reported or cleaned."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import waylay.agent.guard as guard
from tests.netns import have_root_netns, nat_rules, netns, ns_popen, ns_runner
from waylay.agent.guard import run_guard
from waylay.agent.iptables import FakeIptables, IptablesError, Redirector, find_chains

REPO = Path(__file__).resolve().parents[2]

# The dummy agent: takes a mode, accepts (and reports) --chain X, then does as the mode says.
WORKER = """
import json, os, signal, sys, time
mode = sys.argv[1]
chain = sys.argv[sys.argv.index("--chain") + 1]
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode == "graceful":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
event = {"worker": "started", "chain": chain, "pid": os.getpid(), "pgid": os.getpgid(0),
         "env": os.environ.get("WAYLAY_TEST_ENV")}
print(json.dumps(event), flush=True)
if mode.startswith("exit"):
    sys.exit(int(mode[4:]))
if mode == "selfkill":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(60)
"""

# The guard as the agent entrypoint runs it: events as JSON lines on stdout.
GUARD = """
import json, sys
import waylay.agent.guard as guard
guard.KILL_GRACE_S = float(sys.argv[3])
rc = guard.run_guard(
    json.loads(sys.argv[1]),
    clean_on_start=sys.argv[2] == "1",
    report=lambda event: print(json.dumps(event), flush=True),
)
print(json.dumps({"guard": "exit", "rc": rc}), flush=True)
sys.exit(rc)
"""


def worker(mode: str) -> list[str]:
    return [sys.executable, "-c", WORKER, mode]


def _worker_events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"worker"')]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- unit: in-process guard, FakeIptables, real worker processes -----------------------------


def test_normal_exit_returns_code_and_removes_chain(capfd: pytest.CaptureFixture[str]) -> None:
    """The worker gets --chain NAME of an installed chain; its exit code is returned; rules go."""
    fake = FakeIptables()
    events: list[dict[str, object]] = []
    assert run_guard(worker("exit3"), clean_on_start=False, report=events.append, run=fake) == 3
    (started,) = _worker_events(capfd.readouterr().out)
    chain = started["chain"]
    assert ["iptables", "-w", "-t", "nat", "-N", chain] in fake.calls
    assert chain not in fake.chains
    assert fake.chains["PREROUTING"] == fake.chains["OUTPUT"] == []
    assert events == []


def test_worker_runs_in_its_own_process_group(capfd: pytest.CaptureFixture[str]) -> None:
    """The worker leads its own process group, so a terminal's Ctrl-C reaches it only once."""
    run_guard(worker("exit0"), clean_on_start=False, report=lambda e: None, run=FakeIptables())
    (started,) = _worker_events(capfd.readouterr().out)
    assert started["pgid"] == started["pid"]


def test_env_is_passed_to_the_worker(capfd: pytest.CaptureFixture[str]) -> None:
    """env= becomes the worker's environment."""
    env = {**os.environ, "WAYLAY_TEST_ENV": "yes"}
    run_guard(
        worker("exit0"), clean_on_start=False, report=lambda e: None, run=FakeIptables(), env=env
    )
    (started,) = _worker_events(capfd.readouterr().out)
    assert started["env"] == "yes"


def test_killed_worker_gives_128_plus_signal_and_removes_chain() -> None:
    """A worker killed by SIGKILL yields 137, and the chain is still removed."""
    fake = FakeIptables()
    assert (
        run_guard(worker("selfkill"), clean_on_start=False, report=lambda e: None, run=fake) == 137
    )
    assert set(fake.chains) == {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}


def test_signal_mask_is_restored() -> None:
    """run_guard blocks signals only while it runs."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    run_guard(worker("exit0"), clean_on_start=False, report=lambda e: None, run=FakeIptables())
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


def test_install_failure_starts_no_worker(tmp_path: Path) -> None:
    """If the rules cannot be installed the worker never starts and nothing is left behind."""
    fake = FakeIptables()
    fake.fail_when = lambda argv: "OUTPUT" in argv and "-I" in argv
    marker = tmp_path / "ran"
    argv = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    with pytest.raises(IptablesError):
        run_guard(argv, clean_on_start=False, report=lambda e: None, run=fake)
    assert not marker.exists()
    assert find_chains(fake) == []


def test_worker_that_cannot_start_still_removes_chain() -> None:
    """A worker binary that does not exist raises, and the chain is removed."""
    fake = FakeIptables()
    with pytest.raises(FileNotFoundError):
        run_guard(
            ["/nonexistent/waylay-agent"], clean_on_start=False, report=lambda e: None, run=fake
        )
    assert find_chains(fake) == []


def test_dead_owner_chain_is_reported_not_touched() -> None:
    """Without clean_on_start a dead agent's chain is reported as a warning and left alone."""
    fake = FakeIptables()
    dead = _dead_pid()
    Redirector(chain="WAYLAY-0000dead", owner_pid=dead, run=fake).install()
    events: list[dict[str, object]] = []
    run_guard(worker("exit0"), clean_on_start=False, report=events.append, run=fake)
    assert events == [
        {
            "event": "warning",
            "message": f"leftover waylay rules in chain WAYLAY-0000dead (owner pid {dead} is "
            "gone); remove them with --clean-on-start",
        }
    ]
    assert "WAYLAY-0000dead" in fake.chains


def test_dead_owner_chain_is_cleaned_with_clean_on_start() -> None:
    """With clean_on_start a dead agent's chain is removed and reported as cleaned."""
    fake = FakeIptables()
    Redirector(chain="WAYLAY-0000dead", owner_pid=_dead_pid(), run=fake).install()
    events: list[dict[str, object]] = []
    run_guard(worker("exit0"), clean_on_start=True, report=events.append, run=fake)
    assert events == [{"event": "cleaned", "chain": "WAYLAY-0000dead"}]
    assert find_chains(fake) == []


def test_live_owner_chain_is_never_touched() -> None:
    """A live agent's chain survives clean_on_start; at most an info event mentions it."""
    fake = FakeIptables()
    live = Redirector(chain="WAYLAY-00000a1e", owner_pid=os.getpid(), run=fake)
    live.install()
    live.redirect(80, 9000)
    before = fake.chains[live.chain][:]
    events: list[dict[str, object]] = []
    run_guard(worker("exit0"), clean_on_start=True, report=events.append, run=fake)
    assert [e["event"] for e in events] == ["info"]
    assert fake.chains[live.chain] == before
    assert [c.chain for c in find_chains(fake)] == [live.chain]


def test_ownerless_chain_is_rechecked_then_treated_as_leftover(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chain with no owner comment is looked at twice, then reported as a leftover."""
    monkeypatch.setattr(guard, "OWNERLESS_RECHECK_S", 0.0)
    fake = FakeIptables()
    fake(["iptables", "-t", "nat", "-N", "WAYLAY-00000000"])
    events: list[dict[str, object]] = []
    run_guard(worker("exit0"), clean_on_start=False, report=events.append, run=fake)
    assert [e["event"] for e in events] == ["warning"]
    assert "no owner recorded" in str(events[0]["message"])
    assert sum(call[-1] == "-S" for call in fake.calls[:3]) == 2


def test_empty_worker_argv_is_refused() -> None:
    """An empty worker command is a ValueError before any iptables command."""
    fake = FakeIptables()
    with pytest.raises(ValueError):
        run_guard([], clean_on_start=False, report=lambda e: None, run=fake)
    assert fake.calls == []


# --- integration: the guard process inside a namespace made by the test ----------------------

_ROOT = have_root_netns()
_F = TypeVar("_F", bound=Callable[..., None])


def integration(test: _F) -> _F:
    """Mark a test as an integration test, skipped (with the reason) without root netns."""
    skip = pytest.mark.skipif(_ROOT is not None, reason=f"integration: {_ROOT}")
    return pytest.mark.integration(skip(test))  # type: ignore[no-any-return]


class GuardProcess:
    """``run_guard`` running in its own process inside a namespace; its JSON lines queued."""

    def __init__(
        self, ns: str, worker_argv: list[str], *, clean_on_start: bool = False, grace: float = 5.0
    ) -> None:
        argv = [sys.executable, "-c", GUARD, json.dumps(worker_argv)]
        argv += ["1" if clean_on_start else "0", str(grace)]
        self.proc = ns_popen(ns, argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next_line(self, timeout: float = 10.0) -> dict[str, Any]:
        return self.lines.get(timeout=timeout)

    def wait_for_worker(self) -> dict[str, Any]:
        while "worker" not in (line := self.next_line()):
            pass
        return line

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def rest(self) -> list[dict[str, Any]]:
        self.wait()
        time.sleep(0.1)  # let the reader drain the pipe
        return [self.lines.get_nowait() for _ in range(self.lines.qsize())]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _process_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` has exited (a zombie counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def ns() -> Iterator[str]:
    """A fresh namespace made by this test."""
    with netns("wlgrd") as name:
        yield name


@pytest.fixture
def guards() -> Iterator[list[GuardProcess]]:
    """Guard processes started by a test; killed at the end whatever happened."""
    started: list[GuardProcess] = []
    try:
        yield started
    finally:
        for g in started:
            g.close()


def _chains(ns: str) -> list[str]:
    return [c.chain for c in find_chains(ns_runner(ns))]


@integration
def test_real_rules_exist_while_worker_runs_and_go_after_exit(
    ns: str, guards: list[GuardProcess]
) -> None:
    """Real iptables: the chain is there while the worker runs and gone after it exits."""
    before = nat_rules(ns)
    g = GuardProcess(ns, worker("exit7"))
    guards.append(g)
    started = g.wait_for_worker()
    # The worker may already have exited; the chain was installed before it was spawned.
    assert g.wait() == 7
    assert {"guard": "exit", "rc": 7} in g.rest()
    assert started["chain"] not in nat_rules(ns)
    assert nat_rules(ns) == before


@integration
def test_real_rules_removed_after_worker_is_sigkilled(ns: str, guards: list[GuardProcess]) -> None:
    """Real iptables: a worker SIGKILLed from outside gives 137 and the chain is removed."""
    before = nat_rules(ns)
    g = GuardProcess(ns, worker("sleep"))
    guards.append(g)
    started = g.wait_for_worker()
    assert started["chain"] in nat_rules(ns)
    assert '--comment "waylay owner=' in nat_rules(ns)
    os.kill(started["pid"], signal.SIGKILL)
    assert g.wait() == 137
    assert nat_rules(ns) == before


@integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_real_signal_to_guard_is_forwarded_and_rules_removed(
    ns: str, guards: list[GuardProcess], sig: signal.Signals
) -> None:
    """Real iptables: SIGTERM/SIGINT/SIGHUP to the guard reach the worker; the rules go."""
    before = nat_rules(ns)
    g = GuardProcess(ns, worker("sleep"))
    guards.append(g)
    started = g.wait_for_worker()
    assert started["chain"] in nat_rules(ns)
    g.proc.send_signal(sig)
    assert g.wait() == 128 + sig
    assert _process_gone(started["pid"])
    assert nat_rules(ns) == before


@integration
def test_real_graceful_worker_exit_code_is_kept(ns: str, guards: list[GuardProcess]) -> None:
    """A worker that handles the forwarded SIGTERM and exits 0 makes the guard return 0."""
    before = nat_rules(ns)
    g = GuardProcess(ns, worker("graceful"))
    guards.append(g)
    g.wait_for_worker()
    g.proc.send_signal(signal.SIGTERM)
    assert g.wait() == 0
    assert nat_rules(ns) == before


@integration
def test_real_worker_ignoring_sigterm_is_killed_after_grace(
    ns: str, guards: list[GuardProcess]
) -> None:
    """A worker that ignores the forwarded SIGTERM is SIGKILLed after the grace period."""
    before = nat_rules(ns)
    g = GuardProcess(ns, worker("ignore-term"), grace=0.5)
    guards.append(g)
    started = g.wait_for_worker()
    t0 = time.monotonic()
    g.proc.send_signal(signal.SIGTERM)
    assert g.wait() == 128 + signal.SIGKILL
    assert 0.4 <= time.monotonic() - t0 < 5.0
    assert _process_gone(started["pid"])
    assert nat_rules(ns) == before


@integration
def test_real_sigkilled_guard_leaves_rules_reported_then_cleaned(
    ns: str, guards: list[GuardProcess]
) -> None:
    """A SIGKILLed guard takes its worker along; its rules are reported, then cleaned on request."""
    before = nat_rules(ns)
    first = GuardProcess(ns, worker("sleep"))
    guards.append(first)
    started = first.wait_for_worker()
    first.proc.kill()
    first.wait()
    assert _process_gone(started["pid"]), "PR_SET_PDEATHSIG did not kill the worker"
    leftover = started["chain"]
    assert _chains(ns) == [leftover]

    second = GuardProcess(ns, worker("exit0"))
    guards.append(second)
    assert second.next_line() == {
        "event": "warning",
        "message": f"leftover waylay rules in chain {leftover} (owner pid {first.proc.pid} is "
        "gone); remove them with --clean-on-start",
    }
    assert second.wait() == 0
    assert _chains(ns) == [leftover]

    third = GuardProcess(ns, worker("exit0"), clean_on_start=True)
    guards.append(third)
    assert third.next_line() == {"event": "cleaned", "chain": leftover}
    assert third.wait() == 0
    assert nat_rules(ns) == before


@integration
def test_real_live_agent_chain_is_untouched(ns: str, guards: list[GuardProcess]) -> None:
    """Another live agent's chain survives a guard started with clean_on_start."""
    live = Redirector(chain="WAYLAY-11111111", owner_pid=os.getpid(), run=ns_runner(ns))
    live.install()
    try:
        live.redirect(80, 9999)
        with_live = nat_rules(ns)
        g = GuardProcess(ns, worker("exit0"), clean_on_start=True)
        guards.append(g)
        assert g.wait() == 0
        assert [line.get("event") for line in g.rest() if "event" in line] == ["info"]
        assert nat_rules(ns) == with_live
    finally:
        live.remove()
