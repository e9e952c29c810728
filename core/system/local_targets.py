"""Local targets for `waylay targets`: named network namespaces and listening processes.

Theory of operation. Everything comes from procfs, read best effort:

1. For every process, the inode of ``/proc/P/ns/net`` says which network namespace it is
   in. Processes of other users cannot be inspected without root; they are skipped.
2. Each network namespace's TCP table is read once, from ``/proc/P/net/tcp`` and ``tcp6``
   of one process in it, and parsed by the pure ``parse_proc_net_tcp``. Sockets in state
   LISTEN map socket inode -> port.
3. A process listens on the ports whose socket inodes it holds as ``socket:[INODE]`` links
   in ``/proc/P/fd``: one ``pid/P`` entry per such process.
4. Named namespaces are the files in /run/netns (what ``ip netns list`` shows). Their ports
   come from the table of a process inside them; when no visible process is inside, root
   reads the table with ``ip netns exec NAME cat /proc/net/tcp /proc/net/tcp6``, anyone
   else gets no ports.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import struct
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

TCP_LISTEN: Final = 0x0A  # include/net/tcp_states.h: TCP_LISTEN
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")

NETNS_RUN_DIR: Final = "/run/netns"  # iproute2's NETNS_RUN_DIR

# A process's command line is shown in a one-line table; longer ones are cut here.
_DESCRIPTION_MAX: Final = 200
# `ip netns exec ... cat` of two small procfs files; anything slower is stuck.
_IP_NETNS_EXEC_TIMEOUT: Final = 5.0


@dataclass(frozen=True, kw_only=True)
class LocalTarget:
    """One line of `waylay targets`: something on this machine that can be intercepted."""

    target: str  # "netns/shop" or "pid/1234", accepted by parse_target
    kind: str  # "netns" | "pid"
    description: str  # e.g. "python3 server.py" or "named network namespace"
    ports: tuple[int, ...]  # listening TCP ports, sorted (best effort; () if unreadable)
    netns_inode: int | None  # the network namespace's inode, None if unknown


@dataclass(frozen=True, kw_only=True)
class TcpSocket:
    """One row of /proc/net/tcp or /proc/net/tcp6."""

    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    state: int  # TCP_* from include/net/tcp_states.h
    uid: int
    inode: int

    @property
    def listening(self) -> bool:
        """True for a socket in state LISTEN."""
        return self.state == TCP_LISTEN


def parse_proc_net_tcp(text: str) -> list[TcpSocket]:
    """Parse the text of /proc/net/tcp, /proc/net/tcp6, or both concatenated.

    Header lines and lines that do not parse are skipped: the file is read best effort and
    a format surprise must not break `waylay targets`. Addresses are decoded in the host's
    byte order, which is how the kernel prints them.
    """
    sockets = []
    for line in text.splitlines():
        socket = _parse_row(line)
        if socket is not None:
            sockets.append(socket)
    return sockets


def listening_ports(sockets: Iterable[TcpSocket]) -> dict[int, int]:
    """Map socket inode -> port for the sockets in state LISTEN."""
    return {s.inode: s.local_port for s in sockets if s.listening and s.inode}


def list_local_targets() -> list[LocalTarget]:
    """Named network namespaces (sorted by name), then listening processes (by pid)."""
    processes = _scan_processes()
    tables: dict[int, dict[int, int]] = {}  # netns inode -> {socket inode: port}
    for pid, netns in processes.items():
        if netns not in tables:
            table = _read_listen_table(f"/proc/{pid}/net")
            if table is not None:
                tables[netns] = table
    return _named_namespaces(tables) + _listening_processes(processes, tables)


def _parse_row(line: str) -> TcpSocket | None:
    fields = line.split()
    # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    if len(fields) < 10 or not fields[0].endswith(":"):
        return None
    try:
        local_address, local_port = _parse_endpoint(fields[1])
        remote_address, remote_port = _parse_endpoint(fields[2])
        return TcpSocket(
            local_address=local_address,
            local_port=local_port,
            remote_address=remote_address,
            remote_port=remote_port,
            state=int(fields[3], 16),
            uid=int(fields[7]),
            inode=int(fields[9]),
        )
    except ValueError:
        return None


def _parse_endpoint(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` -> ("127.0.0.1", 8080); raises ValueError when malformed."""
    address_hex, sep, port_hex = text.partition(":")
    if (
        not sep
        or len(address_hex) not in (8, 32)
        or len(port_hex) != 4
        or not _HEX_DIGITS.issuperset(address_hex + port_hex)
    ):
        raise ValueError(text)
    # The kernel prints the address as 32-bit words in host byte order.
    words = [int(address_hex[i : i + 8], 16) for i in range(0, len(address_hex), 8)]
    packed = b"".join(struct.pack("=I", word) for word in words)
    address = ipaddress.IPv4Address(packed) if len(packed) == 4 else ipaddress.IPv6Address(packed)
    return str(address), int(port_hex, 16)


def _netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:  # gone, or another user's process (needs ptrace access)
        return None


def _scan_processes() -> dict[int, int]:
    """pid -> network namespace inode, for the processes we may inspect."""
    processes = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for entry in entries:
        if entry.isdigit():
            netns = _netns_inode(f"/proc/{entry}/ns/net")
            if netns is not None:
                processes[int(entry)] = netns
    return processes


def _read_listen_table(net_dir: str) -> dict[int, int] | None:
    """The LISTEN sockets of a /proc/P/net directory, or None if it cannot be read."""
    texts = []
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{net_dir}/{name}", encoding="ascii", errors="replace") as file:
                texts.append(file.read())
        except OSError:  # tcp6 is absent when IPv6 is disabled; the process may be gone
            continue
    if not texts:
        return None
    return listening_ports(parse_proc_net_tcp("\n".join(texts)))


def _named_namespaces(tables: dict[int, dict[int, int]]) -> list[LocalTarget]:
    try:
        names = sorted(os.listdir(NETNS_RUN_DIR))
    except OSError:  # no namespace was ever named on this machine
        return []
    nsfs_device = _nsfs_device()
    result = []
    for name in names:
        path = os.path.join(NETNS_RUN_DIR, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        # A live namespace is an nsfs bind mount; a bare file is left over from a crash.
        inode = st.st_ino if nsfs_device is not None and st.st_dev == nsfs_device else None
        ports: Iterable[int] = ()
        if inode is not None:
            table = tables.get(inode)
            if table is None:
                table = _read_listen_table_as_root(name)
            if table is not None:
                ports = table.values()
        result.append(
            LocalTarget(
                target=f"netns/{name}",
                kind="netns",
                description="named network namespace"
                if inode is not None
                else "named network namespace (stale: not mounted)",
                ports=tuple(sorted(set(ports))),
                netns_inode=inode,
            )
        )
    return result


def _nsfs_device() -> int | None:
    try:
        return os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return None


def _read_listen_table_as_root(name: str) -> dict[int, int] | None:
    """Read a namespace's TCP table by running `cat` inside it; root only, else None."""
    ip = shutil.which("ip", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if os.geteuid() != 0 or ip is None:
        return None
    try:
        done = subprocess.run(
            [ip, "netns", "exec", name, "cat", "/proc/net/tcp", "/proc/net/tcp6"],
            capture_output=True,
            timeout=_IP_NETNS_EXEC_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    # cat fails on tcp6 alone when IPv6 is off; what it printed is still good.
    return listening_ports(parse_proc_net_tcp(done.stdout.decode("ascii", "replace")))


def _socket_inodes(pid: int) -> set[int]:
    fd_dir = f"/proc/{pid}/fd"
    inodes: set[int] = set()
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:[") and link.endswith("]"):
            inodes.add(int(link[8:-1]))
    return inodes


def _listening_processes(
    processes: dict[int, int], tables: dict[int, dict[int, int]]
) -> list[LocalTarget]:
    result = []
    for pid in sorted(processes):
        netns = processes[pid]
        table = tables.get(netns, {})
        if not table:
            continue
        ports = {table[inode] for inode in _socket_inodes(pid) if inode in table}
        if ports:
            result.append(
                LocalTarget(
                    target=f"pid/{pid}",
                    kind="pid",
                    description=_describe_process(pid),
                    ports=tuple(sorted(ports)),
                    netns_inode=netns,
                )
            )
    return result


def _describe_process(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read(4 * _DESCRIPTION_MAX)
    except OSError:
        raw = b""
    words = [w.decode("utf-8", "replace") for w in raw.split(b"\0") if w]
    text = " ".join(words)
    if not text:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as file:
                text = f"[{file.read().strip()}]"
        except OSError:
            text = "?"
    if len(text) > _DESCRIPTION_MAX:
        text = text[: _DESCRIPTION_MAX - 1] + "…"
    return text
