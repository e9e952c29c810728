"""Tests for waylay.core.system.local_targets: /proc/net/tcp parsing and local target discovery."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waylay.core.system.local_targets import (
    TcpSocket,
    _read_listen_table_as_root,
    list_local_targets,
    listening_ports,
    parse_proc_net_tcp,
)

# The kernel prints addresses in host byte order; the samples are little-endian.
little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="samples are little-endian"
)

TCP4 = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 99 1 0000000000000000 20 4 30 10 -1
"""  # noqa: E501

TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 100 0 0 10 0
"""  # noqa: E501

LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_INET)\n"
    "s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "s.listen()\n"
    "print(s.getsockname()[1], flush=True)\n"
    "time.sleep(120)\n"
)

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to create named network namespaces"
)


@little_endian_only
def test_parse_ipv4_rows() -> None:
    """IPv4 rows decode address, port, state, uid and inode; the header is skipped."""
    rows = parse_proc_net_tcp(TCP4)
    assert rows[0] == TcpSocket(
        local_address="127.0.0.1",
        local_port=8080,
        remote_address="0.0.0.0",
        remote_port=0,
        state=0x0A,
        uid=1000,
        inode=4242,
    )
    assert [(r.local_address, r.local_port, r.listening) for r in rows] == [
        ("127.0.0.1", 8080, True),
        ("0.0.0.0", 80, True),
        ("127.0.0.1", 8080, False),
    ]
    assert rows[2].remote_port == 54321


@little_endian_only
def test_parse_ipv6_rows() -> None:
    """IPv6 rows decode the four host-order words, including v4-mapped addresses."""
    rows = parse_proc_net_tcp(TCP6)
    assert [(r.local_address, r.local_port, r.inode) for r in rows] == [
        ("::1", 8081, 5151),
        (str(ipaddress.IPv6Address("::ffff:127.0.0.1")), 80, 0),
    ]


def test_listening_ports_keeps_listen_sockets_with_an_inode() -> None:
    """listening_ports maps inode -> port for LISTEN rows only (inode 0 is no socket)."""
    rows = parse_proc_net_tcp(TCP4 + TCP6)
    assert listening_ports(rows) == {4242: 8080, 17: 80, 5151: 8081}


@pytest.mark.parametrize(
    "line",
    [
        "",
        "garbage",
        "   0: 0100007F:1F90 00000000:0000 0A",  # truncated
        "   0: 0100007G:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",  # bad hex
        "   0: -100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",  # sign is not hex
        "   0: 0100007F1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",  # no colon
        "   0: 0100007F:1F9 00000000:0000 0A 0:0 0:0 0 0 0 1",  # short port
        "   0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 x 0 1",  # uid not a number
        "   0 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1",  # no "N:" slot
    ],
)
def test_malformed_rows_are_skipped(line: str) -> None:
    """A row that does not parse is skipped, not an exception."""
    assert parse_proc_net_tcp(line) == []


@given(st.text())
def test_parser_never_raises(text: str) -> None:
    """Any text parses to a (possibly empty) list."""
    assert isinstance(parse_proc_net_tcp(text), list)


@given(
    st.lists(
        st.tuples(st.ip_addresses(), st.integers(0, 65535), st.integers(1, 2**32)),
        max_size=5,
    )
)
def test_round_trip_through_kernel_format(entries: list[tuple[object, int, int]]) -> None:
    """Rows rendered the way the kernel prints them parse back to the same values."""
    lines = []
    for i, (address, port, inode) in enumerate(entries):
        packed = address.packed  # type: ignore[attr-defined]
        words = [int.from_bytes(packed[j : j + 4], sys.byteorder) for j in range(0, len(packed), 4)]
        hex_address = "".join(f"{w:08X}" for w in words)
        zero = "0" * len(hex_address)
        lines.append(
            f"{i:4}: {hex_address}:{port:04X} {zero}:0000 0A 00000000:00000000 "
            f"00:00000000 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0"
        )
    rows = parse_proc_net_tcp("\n".join(lines))
    assert [(r.local_address, r.local_port, r.inode) for r in rows] == [
        (str(a), p, n) for a, p, n in entries
    ]


# --- discovery on this machine ------------------------------------------------------------


def _start_listener(prefix: list[str], host: str, port: int) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [*prefix, sys.executable, "-c", LISTENER, host, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.kill()
        process.wait()
        pytest.fail("the test listener did not start")
    return process, int(line)


def _stop(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh named network namespace with lo up, deleted afterwards."""
    name = f"waylay-t-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_sees_a_listening_process() -> None:
    """A server listening on 127.0.0.1 shows up as pid/N with its port and command."""
    process, port = _start_listener([], "127.0.0.1", 0)
    try:
        found = {t.target: t for t in list_local_targets()}
        entry = found[f"pid/{process.pid}"]
        assert entry.kind == "pid"
        assert port in entry.ports
        assert "import socket" in entry.description
        assert entry.netns_inode == os.stat("/proc/self/ns/net").st_ino
    finally:
        _stop(process)


@pytest.mark.integration
@needs_root
def test_sees_a_named_namespace_and_its_listener(netns: str) -> None:
    """A named namespace lists the ports of a process inside it; that process is listed too."""
    inode = os.stat(f"/run/netns/{netns}").st_ino
    process, port = _start_listener(["ip", "netns", "exec", netns], "127.0.0.1", 8080)
    try:
        found = {t.target: t for t in list_local_targets()}
        entry = found[f"netns/{netns}"]
        assert entry.kind == "netns"
        assert entry.description == "named network namespace"
        assert entry.netns_inode == inode
        assert entry.ports == (port,)
        assert found[f"pid/{process.pid}"].netns_inode == inode
        assert found[f"pid/{process.pid}"].ports == (8080,)
    finally:
        _stop(process)


@pytest.mark.integration
@needs_root
def test_empty_named_namespace_has_no_ports(netns: str) -> None:
    """A named namespace with nothing listening is listed with no ports."""
    found = {t.target: t for t in list_local_targets()}
    assert found[f"netns/{netns}"].ports == ()
    assert found[f"netns/{netns}"].netns_inode == os.stat(f"/run/netns/{netns}").st_ino


# Creates a listener inside the namespace, hands its descriptor over the Unix socket whose
# fd number is argv[1], and exits: a listening socket in a namespace where no process lives.
_HAND_OVER = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET)\n"
    "s.bind(('127.0.0.1', 9090))\n"
    "s.listen()\n"
    "socket.send_fds(socket.socket(fileno=int(sys.argv[1])), [b'x'], [s.fileno()])\n"
)


@pytest.mark.integration
@needs_root
def test_namespace_without_processes_read_with_ip_netns_exec(netns: str) -> None:
    """With no process inside, root reads the namespace's ports through `ip netns exec`."""
    ours, theirs = socket.socketpair()
    try:
        subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", _HAND_OVER, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            check=True,
            timeout=30,
        )
        theirs.close()
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        with socket.socket(fileno=fds[0]):
            assert list((_read_listen_table_as_root(netns) or {}).values()) == [9090]
            found = {t.target: t for t in list_local_targets()}
            assert found[f"netns/{netns}"].ports == (9090,)
    finally:
        ours.close()
        theirs.close()


@pytest.mark.integration
@needs_root
def test_stale_namespace_file_is_listed_as_stale() -> None:
    """A leftover file in /run/netns that is not a mounted namespace is shown as stale."""
    os.makedirs("/run/netns", exist_ok=True)
    path = f"/run/netns/waylay-stale-{secrets.token_hex(4)}"
    with open(path, "w"):
        pass
    try:
        found = {t.target: t for t in list_local_targets()}
        entry = found[f"netns/{os.path.basename(path)}"]
        assert entry.netns_inode is None
        assert entry.ports == ()
        assert "stale" in entry.description
    finally:
        os.unlink(path)


_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# Run as user nobody: lists targets while listening itself, prints what it saw.
_AS_NOBODY = (
    "import json, os, socket\n"
    "from waylay.core.system.local_targets import list_local_targets\n"
    "s = socket.socket()\n"
    "s.bind(('127.0.0.1', 0))\n"
    "s.listen()\n"
    "found = {t.target: list(t.ports) for t in list_local_targets() if t.kind == 'pid'}\n"
    "owners = {p: os.stat(f'/proc/{p[4:]}').st_uid for p in found}\n"
    "print(json.dumps({'me': f'pid/{os.getpid()}', 'port': s.getsockname()[1],\n"
    "                  'found': found, 'owners': owners}))\n"
)


def test_listing_as_a_plain_user_skips_what_it_cannot_read() -> None:
    """As a plain user the listing shows its own listeners and skips others' processes."""
    if os.geteuid() != 0:
        pytest.skip("runs the listing as user nobody through setpriv, which needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    failures = []
    # The venv's interpreter may sit under a directory nobody cannot enter (/root).
    for interpreter in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        done = subprocess.run(
            [*_NOBODY, "/bin/sh", "-c", 'exec "$0" -c "$1"', interpreter, _AS_NOBODY],
            capture_output=True,
            text=True,
            cwd="/",
            env={**os.environ, "PYTHONPATH": repo},
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            break
        failures.append(f"{interpreter}: {done.stderr.strip()[-200:]}")
    else:
        pytest.skip(f"user nobody cannot run a Python that imports waylay: {failures}")
    seen = json.loads(done.stdout)
    assert seen["port"] in seen["found"][seen["me"]]
    assert set(seen["owners"].values()) == {65534}
