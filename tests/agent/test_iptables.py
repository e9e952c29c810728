"""agent/iptables.py: the redirect chain, against FakeIptables and real iptables in a namespace."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from tests.netns import have_root_netns, nat_rules, netns, ns_popen, ns_run, ns_runner, veth_pair
from waylay.agent.iptables import (
    CHAIN_PREFIX,
    PASSTHROUGH_MARK,
    FakeIptables,
    IptablesError,
    Leftover,
    Redirector,
    find_chains,
    new_chain_name,
    remove_chain,
    subprocess_runner,
)
from waylay.core.engine.errors import PrivilegeError

OWNER = 4242


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- unit: FakeIptables ---------------------------------------------------------------------


def test_new_chain_name_is_prefixed_unique_and_short() -> None:
    """Chain names are WAYLAY- plus 8 hex digits, fresh each time, within 28 characters."""
    names = {new_chain_name() for _ in range(50)}
    assert len(names) == 50
    assert all(re.fullmatch(r"WAYLAY-[0-9a-f]{8}", n) and len(n) <= 28 for n in names)


def test_install_creates_mark_return_first_and_both_jumps() -> None:
    """install() adds the mark RETURN, then PREROUTING and OUTPUT -o lo jumps, all commented."""
    fake = FakeIptables()
    Redirector(chain="WAYLAY-00000001", owner_pid=OWNER, run=fake).install()
    comment = ["-m", "comment", "--comment", f"waylay owner={OWNER}"]
    assert fake.chains["WAYLAY-00000001"] == [
        ["-m", "mark", "--mark", "0x2000/0x2000", *comment, "-j", "RETURN"]
    ]
    assert fake.chains["PREROUTING"] == [["-p", "tcp", *comment, "-j", "WAYLAY-00000001"]]
    assert fake.chains["OUTPUT"] == [["-p", "tcp", "-o", "lo", *comment, "-j", "WAYLAY-00000001"]]
    assert all(call[:4] == ["iptables", "-w", "-t", "nat"] for call in fake.calls)


def test_redirect_is_idempotent_and_retargets() -> None:
    """redirect() adds one rule per port; repeating is a no-op; a new target replaces the old."""
    fake = FakeIptables()
    r = Redirector(chain="WAYLAY-00000002", owner_pid=OWNER, run=fake)
    r.install()
    r.redirect(80, 9000)
    r.redirect(80, 9000)
    r.redirect(443, 9000)
    assert r.ports == frozenset({80, 443})
    assert len(fake.chains[r.chain]) == 3
    r.redirect(80, 9001)
    redirects = [rule for rule in fake.chains[r.chain] if "REDIRECT" in rule]
    assert [(rule[3], rule[-1]) for rule in redirects] == [("443", "9000"), ("80", "9001")]


def test_unredirect_removes_only_that_port() -> None:
    """unredirect() deletes one port's rule; unknown ports are a no-op."""
    fake = FakeIptables()
    r = Redirector(chain="WAYLAY-00000003", owner_pid=OWNER, run=fake)
    r.install()
    r.redirect(80, 9000)
    r.redirect(81, 9000)
    r.unredirect(80)
    r.unredirect(80)
    r.unredirect(12345)
    assert r.ports == frozenset({81})
    assert [rule[3] for rule in fake.chains[r.chain] if "REDIRECT" in rule] == ["81"]


def test_redirect_rejects_bad_ports() -> None:
    """Ports outside 1..65535 are refused before any iptables command."""
    fake = FakeIptables()
    r = Redirector(chain="WAYLAY-00000004", owner_pid=OWNER, run=fake)
    with pytest.raises(ValueError):
        r.redirect(0, 9000)
    with pytest.raises(ValueError):
        r.redirect(80, 70000)
    assert fake.calls == []


def test_remove_restores_table_and_is_idempotent() -> None:
    """remove() leaves the table as before install, and may be called again (or without install)."""
    fake = FakeIptables()
    fake.chains["PREROUTING"].append(["-p", "udp", "-j", "RETURN"])
    before = fake.rules()
    r = Redirector(chain="WAYLAY-00000005", owner_pid=OWNER, run=fake)
    r.install()
    r.redirect(80, 9000)
    r.remove()
    assert fake.rules() == before
    assert r.ports == frozenset()
    r.remove()
    Redirector(chain="WAYLAY-0000000f", owner_pid=OWNER, run=fake).remove()
    assert fake.rules() == before


def test_remove_tolerates_parts_already_gone() -> None:
    """remove() finishes when someone already deleted a jump or the chain's rules."""
    fake = FakeIptables()
    r = Redirector(chain="WAYLAY-00000006", owner_pid=OWNER, run=fake)
    r.install()
    fake.chains["OUTPUT"].clear()
    fake.chains[r.chain].clear()
    r.remove()
    assert r.chain not in fake.chains
    assert fake.chains["PREROUTING"] == []


def test_install_failure_rolls_back() -> None:
    """A failure part-way through install() removes what was created, then raises."""
    fake = FakeIptables()
    fake.fail_when = lambda argv: "OUTPUT" in argv and "-I" in argv
    r = Redirector(chain="WAYLAY-00000007", owner_pid=OWNER, run=fake)
    with pytest.raises(IptablesError):
        r.install()
    assert r.chain not in fake.chains
    assert fake.chains["PREROUTING"] == []


def test_install_refuses_an_existing_chain_and_leaves_it() -> None:
    """install() on a name that exists fails without touching that chain."""
    fake = FakeIptables()
    Redirector(chain="WAYLAY-00000008", owner_pid=1, run=fake).install()
    before = fake.rules()
    with pytest.raises(IptablesError):
        Redirector(chain="WAYLAY-00000008", owner_pid=OWNER, run=fake).install()
    assert fake.rules() == before


def test_remove_propagates_real_failures() -> None:
    """A failure that is not 'already gone' is raised by remove()."""
    fake = FakeIptables()
    r = Redirector(chain="WAYLAY-00000009", owner_pid=OWNER, run=fake)
    r.install()
    fake.fail_when = lambda argv: "-X" in argv
    with pytest.raises(IptablesError):
        r.remove()


def test_find_chains_reads_owner_and_liveness() -> None:
    """find_chains() lists WAYLAY- chains only, owner from the comment, alive by pid."""
    fake = FakeIptables()
    dead = _dead_pid()
    Redirector(chain="WAYLAY-0000000a", owner_pid=os.getpid(), run=fake).install()
    Redirector(chain="WAYLAY-0000000b", owner_pid=dead, run=fake).install()
    fake(["iptables", "-t", "nat", "-N", "OTHER"])
    fake(["iptables", "-t", "nat", "-N", "WAYLAY-0000000c"])  # owner never recorded
    assert find_chains(fake) == [
        Leftover("WAYLAY-0000000a", os.getpid(), alive=True),
        Leftover("WAYLAY-0000000b", dead, alive=False),
        Leftover("WAYLAY-0000000c", None, alive=False),
    ]


def test_find_chains_counts_eperm_as_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """An owner pid we may not signal (EPERM: someone else's process) counts as alive."""
    fake = FakeIptables()
    Redirector(chain="WAYLAY-0000000d", owner_pid=OWNER, run=fake).install()

    def kill(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    assert find_chains(fake) == [Leftover("WAYLAY-0000000d", OWNER, alive=True)]


def test_remove_chain_removes_only_that_chain() -> None:
    """remove_chain() deletes one chain and every jump to it, nothing else."""
    fake = FakeIptables()
    keep = Redirector(chain="WAYLAY-0000000e", owner_pid=OWNER, run=fake)
    keep.install()
    keep.redirect(80, 9000)
    before = fake.rules()
    gone = Redirector(chain="WAYLAY-00000010", owner_pid=OWNER, run=fake)
    gone.install()
    fake(["iptables", "-t", "nat", "-A", "POSTROUTING", "-j", "WAYLAY-00000010"])
    remove_chain("WAYLAY-00000010", fake)
    assert fake.rules() == before
    remove_chain("WAYLAY-00000010", fake)


# --- unit: the real runner's error mapping ---------------------------------------------------


def test_runner_missing_binary_is_a_privilege_error() -> None:
    """A missing iptables binary says which package to install."""
    with pytest.raises(PrivilegeError, match=r"apt-get install iptables"):
        subprocess_runner(["waylay-no-such-iptables", "-S"])


def _fake_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stderr: str, code: int) -> None:
    tool = tmp_path / "iptables"
    tool.write_text(f"#!/bin/sh\necho '{stderr}' >&2\nexit {code}\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")


def test_runner_permission_denied_names_cap_net_admin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """iptables' 'Permission denied (you must be root)' becomes a PrivilegeError about root."""
    msg = "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied"
    _fake_tool(tmp_path, monkeypatch, f"{msg} (you must be root)", 4)
    with pytest.raises(PrivilegeError, match=r"CAP_NET_ADMIN.*root"):
        subprocess_runner(["iptables", "-t", "nat", "-S"])


def test_runner_other_failures_carry_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other failures are IptablesError with the command's stderr and exit status."""
    _fake_tool(tmp_path, monkeypatch, "iptables: No chain/target/match by that name.", 1)
    with pytest.raises(IptablesError) as caught:
        subprocess_runner(["iptables", "-t", "nat", "-F", "WAYLAY-nope"])
    assert caught.value.returncode == 1
    assert caught.value.is_missing
    assert "No chain/target/match" in str(caught.value)


# --- integration: real iptables in a namespace made by the test -------------------------------

_ROOT = have_root_netns()
_F = TypeVar("_F", bound=Callable[..., None])


def integration(test: _F) -> _F:
    """Mark a test as an integration test, skipped (with the reason) without root netns."""
    skip = pytest.mark.skipif(_ROOT is not None, reason=f"integration: {_ROOT}")
    return pytest.mark.integration(skip(test))  # type: ignore[no-any-return]


# Serves forever: answers every connection with its tag, then closes it.
_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[2].encode())
    c.close()
"""

# Connects to 127.0.0.1:PORT (with SO_MARK when asked) and prints what it reads, or "refused".
_CLIENT = """
import socket, sys
s = socket.socket()
if sys.argv[2] != "0":
    s.setsockopt(socket.SOL_SOCKET, 36, int(sys.argv[2], 0))  # SO_MARK
s.settimeout(5)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except ConnectionRefusedError:
    print("refused")
else:
    print(s.recv(100).decode())
"""


@pytest.fixture
def ns() -> Iterator[str]:
    """A fresh namespace with one foreign nat rule, so 'untouched' means something."""
    with netns("wlipt") as name:
        for chain in ("PREROUTING", "OUTPUT"):
            argv = ["iptables", "-t", "nat", "-A", chain, "-p", "udp", "-j", "RETURN"]
            ns_run(name, argv, check=True)
        yield name


@pytest.fixture
def servers(ns: str) -> Iterator[None]:
    """Tag servers in the namespace: ':80' answers 'app', ':9999' answers 'agent'."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for port, tag in ((80, "app"), (9999, "agent")):
            proc = ns_popen(
                ns,
                [sys.executable, "-c", _SERVER, str(port), tag],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _connect(ns: str, port: int, mark: int = 0) -> str:
    argv: Sequence[str] = [sys.executable, "-c", _CLIENT, str(port), hex(mark)]
    return str(ns_run(ns, argv, check=True).stdout.strip())


def _connect_from_host(ip: str, port: int) -> str:
    with socket.create_connection((ip, port), timeout=5) as sock:
        return sock.recv(100).decode()


@integration
@pytest.mark.usefixtures("servers")
def test_redirect_steals_loopback_and_spares_marked_sockets(ns: str) -> None:
    """After redirect(80, 9999) a client of 127.0.0.1:80 reaches :9999; SO_MARK 0x2000 does not."""
    before = nat_rules(ns)
    r = Redirector(chain=new_chain_name(), owner_pid=os.getpid(), run=ns_runner(ns))
    r.install()
    try:
        assert _connect(ns, 80) == "app"
        r.redirect(80, 9999)
        r.redirect(80, 9999)
        assert _connect(ns, 80) == "agent"
        assert _connect(ns, 80, mark=PASSTHROUGH_MARK) == "app"
        assert _connect(ns, 80, mark=PASSTHROUGH_MARK | 0x1) == "app"  # only our bit matters
        assert _connect(ns, 80, mark=0x1000) == "agent"
        rules = nat_rules(ns)
        ours = [line for line in rules.splitlines() if r.chain in line and line.startswith("-A")]
        assert len(ours) == 4  # two jumps, the mark RETURN, one REDIRECT
        assert all(f'--comment "waylay owner={os.getpid()}"' in line for line in ours)
        r.unredirect(80)
        assert _connect(ns, 80) == "app"
    finally:
        r.remove()
    assert nat_rules(ns) == before
    r.remove()
    assert nat_rules(ns) == before


@integration
@pytest.mark.usefixtures("servers")
def test_redirect_steals_traffic_arriving_over_a_link(ns: str) -> None:
    """The PREROUTING jump redirects connections from outside the namespace (over a veth)."""
    with veth_pair(ns) as (_host_ip, ns_ip):
        r = Redirector(chain=new_chain_name(), owner_pid=os.getpid(), run=ns_runner(ns))
        r.install()
        try:
            assert _connect_from_host(ns_ip, 80) == "app"
            r.redirect(80, 9999)
            assert _connect_from_host(ns_ip, 80) == "agent"
        finally:
            r.remove()
        assert _connect_from_host(ns_ip, 80) == "app"


@integration
def test_marked_socket_to_unserved_port_is_refused_not_redirected(ns: str) -> None:
    """With nothing on :80, a marked connection is refused instead of reaching the agent."""
    proc = ns_popen(
        ns, [sys.executable, "-c", _SERVER, "9999", "agent"], stdout=subprocess.PIPE, text=True
    )
    r = Redirector(chain=new_chain_name(), owner_pid=os.getpid(), run=ns_runner(ns))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        r.install()
        r.redirect(80, 9999)
        assert _connect(ns, 80) == "agent"
        assert _connect(ns, 80, mark=PASSTHROUGH_MARK) == "refused"
    finally:
        r.remove()
        proc.kill()
        proc.wait()


@integration
def test_find_chains_and_remove_chain_for_real(ns: str) -> None:
    """Real iptables: a dead owner is reported dead, our own pid alive; remove_chain is precise."""
    run = ns_runner(ns)
    before = nat_rules(ns)
    dead_pid = _dead_pid()
    live = Redirector(chain=new_chain_name(), owner_pid=os.getpid(), run=run)
    dead = Redirector(chain=new_chain_name(), owner_pid=dead_pid, run=run)
    try:
        live.install()
        live.redirect(80, 9999)
        dead.install()
        dead.redirect(81, 9999)
        found = {leftover.chain: leftover for leftover in find_chains(run)}
        assert found == {
            live.chain: Leftover(live.chain, os.getpid(), alive=True),
            dead.chain: Leftover(dead.chain, dead_pid, alive=False),
        }
        remove_chain(dead.chain, run)
        assert [leftover.chain for leftover in find_chains(run)] == [live.chain]
        assert live.chain in nat_rules(ns)
        assert dead.chain not in nat_rules(ns)
        remove_chain(dead.chain, run)  # already gone: fine
    finally:
        live.remove()
        dead.remove()
    assert nat_rules(ns) == before
    assert all(not c.startswith(CHAIN_PREFIX) for c in nat_rules(ns).split())


@integration
def test_real_errors_are_iptables_errors(ns: str) -> None:
    """A real iptables failure surfaces as IptablesError with iptables' own message."""
    run = ns_runner(ns)
    r = Redirector(chain=new_chain_name(), owner_pid=os.getpid(), run=run)
    r.install()
    try:
        with pytest.raises(IptablesError, match="exists"):
            Redirector(chain=r.chain, owner_pid=os.getpid(), run=run).install()
        assert r.chain in nat_rules(ns)
    finally:
        r.remove()
