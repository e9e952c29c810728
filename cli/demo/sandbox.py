"""The sample's private network namespace, made, torn down, and cleaned up after a crash.

Theory of operation (docs/architecture.md §5):

- As root: a named namespace ``waylay-demo-<pid>`` with ``lo`` up, joined to the host by a
  veth pair addressed from a /30 of SUBNET_POOL that no address or route on the host uses
  (chosen under a lock, so demos started together never pick the same one). The shop
  listens on :80 inside; the target is ``netns/NAME``; the traffic generator runs on the
  host and reaches the shop through the veth, arriving through PREROUTING as a pod's
  clients do.
- Otherwise: ``unshare --user --map-root-user --net`` runs the shop in a user + network
  namespace of its own, on 127.0.0.1:80; the target is ``pid/<shop>``; the generator runs
  inside that namespace (``nsenter --preserve-credentials --user --net``) and reaches the
  shop over loopback, where the agent's ``OUTPUT -o lo`` rule intercepts it.

Tear-down stops every process left in the namespace (all of them are the demo's: the
shop, the generator, an agent), then deletes the named namespace, which takes the veth
pair with it. A user namespace disappears with its last process. Traffic goes only to
loopback or into this namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from waylay.cli.demo.processes import Children, RunRecord, demo_directory, same_process
from waylay.core.engine.errors import PrivilegeError, TargetError
from waylay.core.system.interpreter import python_command

NETNS_PREFIX: Final = "waylay-demo-"
# A /16 the demo carves /30s from. Not one of the ranges Kubernetes, Docker or k3s use
# by default (10.0/16, 10.42-43/16, 10.96/12, 10.244/16), nor the tests' 10.200/16.
SUBNET_POOL: Final = ipaddress.ip_network("10.213.0.0/16")
# Routes this broad (a VPN's 10/8) do not make a /30 "used": the /30's own on-link route
# is more specific and only this namespace is behind it.
BROAD_PREFIX: Final = 8
SHOP_PORT: Final = 80
COMMAND_TIMEOUT_S: Final = 20
# After SIGTERM to the processes left in the namespace, how long before SIGKILL.
KILL_GRACE_S: Final = 3.0

Progress = Callable[[str], None]


@dataclass
class Sandbox:
    """Where the sample shop runs and how to reach it."""

    target: str  # "netns/NAME" or "pid/N"
    shop_host: str  # the address the generator sends to
    enter: list[str]  # the prefix that runs the generator next to the shop ([] on the host)
    description: str
    netns: str | None = None  # the named namespace (root)
    shop_pid: int = 0
    netns_inode: int | None = None  # the shop's network namespace, for the tear-down
    _host_if: str | None = field(default=None, repr=False)


def tool(name: str, package: str) -> str:
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if path is None:
        raise PrivilegeError(f"`{name}` is missing: install the Debian package {package} "
                             f"(sudo apt-get install {package})")
    return path


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([tool("ip", "iproute2"), *args], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S, check=False)
    if check and done.returncode != 0:
        raise TargetError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _python_module(module: str) -> list[str]:
    # Isolated: the shop runs as root (waylay.core.system.interpreter).
    return python_command(module)


# --- making one --------------------------------------------------------------------------


def open_sandbox(children: Children, progress: Progress) -> Sandbox:
    """Start the sample shop in a private namespace (the kind depends on privilege)."""
    if os.geteuid() == 0:
        return _open_named(children, progress)
    return _open_user(children, progress)


def _open_named(children: Children, progress: Progress) -> Sandbox:
    name = f"{NETNS_PREFIX}{os.getpid()}"
    progress(f"starting the sample shop in a private network namespace ({name}) ...")
    children.record.netns = name  # recorded before it exists: a crash after this is cleaned
    children.record.save()
    if os.path.exists(f"/run/netns/{name}"):
        _remove_named(name)  # left by a dead demo that had our pid
    _ip("netns", "add", name)
    sandbox = Sandbox(target=f"netns/{name}", shop_host="", enter=[], netns=name,
                      description=f"network namespace {name}")
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        tag = secrets.token_hex(4)  # interface names have at most 15 characters
        host_if, ns_if = f"wd{tag}h", f"wd{tag}n"
        with _subnet_lock():
            host_ip, ns_ip = free_subnet(_host_networks(), seed=os.getpid())
            _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name)
            sandbox._host_if = host_if
            _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", name, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("-n", name, "link", "set", ns_if, "up")
        sandbox.shop_host = ns_ip
        sandbox.description += f", reached over a veth pair at {ns_ip} (host side {host_ip})"
        shop = children.start([tool("ip", "iproute2"), "netns", "exec", name,
                               *_python_module("waylay.cli.demo.shop"), "--port", str(SHOP_PORT),
                               "--owner-pid", str(os.getpid())], "the sample shop")
        sandbox.shop_pid = shop.pid
        children.wait_listening(shop, "the sample shop")
        sandbox.netns_inode = _inode(f"/run/netns/{name}")
    except BaseException:
        close_sandbox(sandbox, children)
        raise
    return sandbox


def _open_user(children: Children, progress: Progress) -> Sandbox:
    progress("starting the sample shop in a private user + network namespace (no root "
             "needed) ...")
    unshare = tool("unshare", "util-linux")
    tool("nsenter", "util-linux")
    tool("ip", "iproute2")
    shop = children.start([unshare, "--user", "--map-root-user", "--net",
                           *_python_module("waylay.cli.demo.shop"), "--lo-up",
                           "--host", "127.0.0.1",
                           "--port", str(SHOP_PORT), "--owner-pid", str(os.getpid())],
                          "the sample shop")
    sandbox = Sandbox(target=f"pid/{shop.pid}", shop_host="127.0.0.1", shop_pid=shop.pid,
                      enter=[tool("nsenter", "util-linux"), "--preserve-credentials",
                             "--user", "--net", "--target", str(shop.pid)],
                      description=f"a user + network namespace (shop pid {shop.pid})")
    try:
        children.wait_listening(shop, "the sample shop")
    except TargetError as exc:
        close_sandbox(sandbox, children)
        if "unshare" in str(exc) or "Operation not permitted" in str(exc):
            raise PrivilegeError(
                f"{exc}\nthis system does not let a plain user create a user namespace "
                "(see the sysctls kernel.unprivileged_userns_clone and "
                "kernel.apparmor_restrict_unprivileged_userns); run `sudo waylay demo` "
                "instead, which uses a named namespace") from None
        raise
    sandbox.netns_inode = _inode(f"/proc/{shop.pid}/ns/net")
    return sandbox


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


# --- subnets -----------------------------------------------------------------------------


@contextlib.contextmanager
def _subnet_lock() -> Iterator[None]:
    fd = os.open(demo_directory() / "subnet.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_ROUTE_KINDS = {"local", "broadcast", "unicast", "unreachable", "blackhole", "prohibit",
                "throw", "multicast", "anycast", "nat"}


def _host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has an address in or a route to (all tables)."""
    found: list[ipaddress.IPv4Network] = []
    addrs = _ip("-4", "-o", "addr", "show").stdout
    for match in re.finditer(r"\binet (\d+\.\d+\.\d+\.\d+/\d+)", addrs):
        found.append(ipaddress.IPv4Interface(match.group(1)).network)
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        if words and words[0] in _ROUTE_KINDS:
            words = words[1:]
        if not words or words[0] == "default":
            continue
        with contextlib.suppress(ValueError):
            found.append(ipaddress.IPv4Network(words[0], strict=False))
    return found


def free_subnet(used: list[ipaddress.IPv4Network], *, seed: int) -> tuple[str, str]:
    """(host address, namespace address) of a /30 of SUBNET_POOL that ``used`` leaves free.

    The search starts at a place picked by ``seed`` so concurrent demos start apart.
    """
    narrow = [n for n in used if n.prefixlen > BROAD_PREFIX]
    count = 2 ** (30 - SUBNET_POOL.prefixlen)
    for step in range(count):
        index = (seed * 7 + step) % count
        subnet = ipaddress.IPv4Network((int(SUBNET_POOL.network_address) + 4 * index, 30))
        if not any(subnet.overlaps(n) for n in narrow):
            host_ip, ns_ip = subnet.hosts()
            return str(host_ip), str(ns_ip)
    raise TargetError(f"no free /30 left in {SUBNET_POOL} for the demo's veth pair")


# --- tearing down ------------------------------------------------------------------------


def pids_in_netns(inode: int) -> list[int]:
    """Processes (that we can see) whose network namespace has this inode."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    found.append(int(entry))
    return found


def _kill_all_in(inode: int | None) -> None:
    """SIGTERM every process left in the namespace, then SIGKILL the ones that linger.

    SIGTERM first: an agent's guard then removes its rules itself.
    """
    if inode is None:
        return
    pids = pids_in_netns(inode)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + KILL_GRACE_S
        while time.monotonic() < deadline:
            pids = [p for p in pids if same_process(p, None) and _not_zombie(p)]
            if not pids:
                return
            time.sleep(0.05)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def close_sandbox(sandbox: Sandbox, children: Children) -> None:
    """Stop the shop and whatever else runs in its namespace; delete a named namespace."""
    children.stop_all()
    _kill_all_in(sandbox.netns_inode)
    if sandbox.netns is not None:
        _remove_named(sandbox.netns, inode_known=sandbox.netns_inode is not None)
    if sandbox._host_if is not None:
        _ip("link", "del", sandbox._host_if, check=False)  # already gone with the namespace


def _remove_named(name: str, *, inode_known: bool = False) -> None:
    path = f"/run/netns/{name}"
    if not os.path.exists(path):
        return
    if not inode_known:
        _kill_all_in(_inode(path))
    _ip("netns", "del", name, check=False)


def clean_leftovers(progress: Progress) -> None:
    """Remove what demos that died without cleaning up left behind (never a live demo's)."""
    directory = demo_directory()
    recorded: set[str] = set()
    for path in sorted(directory.glob("run-*.json")):
        record = RunRecord.load(path)
        if record is None:
            continue
        if record.netns:
            recorded.add(record.netns)
        if record.owner_alive():  # a demo running now (or this one, once recorded)
            continue
        # Its children exit by themselves within a second of their owner's death; a
        # SIGKILL covers one that could not (pid and start time must still match).
        for pid, started in record.children:
            if pid is not None and same_process(pid, started):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if record.netns and os.geteuid() == 0:
            _remove_named(record.netns)
        with contextlib.suppress(OSError):
            path.unlink()
        progress(f"removed the leftovers of a demo that ended abruptly (pid {record.owner})")
    if os.geteuid() != 0 or not os.path.isdir("/run/netns"):
        return
    for name in os.listdir("/run/netns"):
        owner = name.removeprefix(NETNS_PREFIX)
        if (name.startswith(NETNS_PREFIX) and name not in recorded and owner.isdigit()
                and not same_process(int(owner), None)):
            _remove_named(name)
            progress(f"removed the leftover namespace {name}")
