"""Network namespaces for integration tests: create, wire up, run inside, always clean up.

Everything here creates only namespaces and links of its own, named uniquely per process
and call, and deletes them on exit (also when the test fails). Tests send traffic only to
loopback or to addresses inside these namespaces (docs/architecture.md §5).

Typical use::

    reason = have_root_netns()
    pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")

    with netns() as ns, veth_pair(ns) as (host_ip, ns_ip):
        ns_run(ns, ["iptables", "-t", "nat", "-S"], check=True)
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from waylay.agent.iptables import CommandRunner, subprocess_runner

_counter = itertools.count()
# 10.200.0.0/16 holds 16384 /30 subnets; each veth_pair takes one that is free on the host.
_SUBNET_POOL = ipaddress.ip_network("10.200.0.0/16")
_SUBNETS = 2 ** (30 - _SUBNET_POOL.prefixlen)
_TIMEOUT_S = 30


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, check=check, timeout=_TIMEOUT_S
    )


@functools.cache
def have_root_netns() -> str | None:
    """None when this machine lets us create namespaces and use iptables; else why not."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create network namespaces"
    for tool in ("ip", "iptables", "iptables-save"):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            return f"{tool} is not installed (apt-get install iproute2 iptables)"
    try:
        with netns("wlprobe") as ns:
            ns_run(ns, ["iptables", "-w", "-t", "nat", "-S"], check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        return f"cannot create a network namespace and use iptables in it: {detail}"
    return None


def _unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"


@contextmanager
def netns(prefix: str = "wl") -> Iterator[str]:
    """A fresh named network namespace with ``lo`` up; deleted on exit.

    Processes still running inside keep the namespace itself alive: stop them first.
    """
    name = _unique(prefix)
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _ip("netns", "del", name, check=False)


def _host_addresses() -> str:
    return _ip("-4", "-o", "addr", "show").stdout + _ip("-4", "route", "show").stdout


def free_subnet() -> tuple[str, str]:
    """(host_ip, ns_ip) of a 10.200.X.Y/30 that no address or route on the host uses yet.

    The search starts from this process's pid and a per-process counter, so parallel tests
    start far apart.
    """
    in_use = _host_addresses()
    start = os.getpid() * 16 + next(_counter)
    for step in range(_SUBNETS):
        index = (start + step) % _SUBNETS
        base = int(_SUBNET_POOL.network_address) + 4 * index
        subnet = ipaddress.ip_network((base, 30))
        if not re.search(rf"\b{re.escape(str(subnet.network_address))}/30\b", in_use) and not any(
            re.search(rf"\b{re.escape(str(host))}/", in_use) for host in subnet.hosts()
        ):
            host_ip, ns_ip = subnet.hosts()
            return str(host_ip), str(ns_ip)
    raise RuntimeError("no free /30 left in 10.200.0.0/16")


@contextmanager
def veth_pair(
    ns: str, *, host_ip: str | None = None, ns_ip: str | None = None, prefix_len: int = 30
) -> Iterator[tuple[str, str]]:
    """A veth link between the host and ``ns``, both ends addressed and up; removed on exit.

    Yields ``(host_ip, ns_ip)``. Without addresses, a free 10.200.X.Y/30 is chosen.
    """
    if (host_ip is None) != (ns_ip is None):
        raise ValueError("give both host_ip and ns_ip, or neither")
    if host_ip is None or ns_ip is None:
        host_ip, ns_ip = free_subnet()
    tag = secrets.token_hex(5)  # interface names: at most 15 characters
    host_if, ns_if = f"wl{tag}h", f"wl{tag}n"
    _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
    try:
        _ip("addr", "add", f"{host_ip}/{prefix_len}", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{ns_ip}/{prefix_len}", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        yield host_ip, ns_ip
    finally:
        # Deleting one end deletes both; it is already gone if the namespace was deleted.
        _ip("link", "del", host_if, check=False)


def ns_run(ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` of ``argv`` inside ``ns`` (text output captured unless redirected)."""
    if "stdout" not in kw and "stderr" not in kw:
        kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", _TIMEOUT_S)
    return subprocess.run(["ip", "netns", "exec", ns, *argv], **kw)


def ns_popen(ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` of ``argv`` inside ``ns``; its pid is the program's own."""
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)


def ns_runner(ns: str) -> CommandRunner:
    """A waylay ``CommandRunner`` whose commands run inside ``ns`` (real iptables there)."""

    def run(argv: Sequence[str]) -> str:
        return subprocess_runner(["ip", "netns", "exec", ns, *argv])

    return run


_COUNTERS = re.compile(r" \[\d+:\d+\]$")


def nat_rules(ns: str) -> str:
    """``iptables-save -t nat`` in ``ns`` without comment lines and counters, for comparison."""
    out = ns_run(ns, ["iptables-save", "-t", "nat"], check=True).stdout
    lines = [_COUNTERS.sub("", line) for line in out.splitlines() if not line.startswith("#")]
    return "\n".join(lines)
