"""Faults around a session: the local app dies mid-body, the client stops or dies
mid-response, the agent's worker is killed.

The first two run against the shared agent (``hostile_bed``) and must leave it as it
was: the same worker, the session up, normal requests answered. Killing the worker needs
an agent of its own (the integration ``bed``): its guard must remove the NAT rules, as
``iptables -t nat -S`` inside the namespace shows, and the session must end with an error.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.conftest import (
    DEADLINE_S,
    MARKER_APP,
    PYTHON,
    HostileBed,
    RunStarter,
    assert_same_agent,
    http_get,
    incoming,
    signal_process,
    wait_until,
)
from tests.integration.conftest import (
    EVENT_TIMEOUT_S,
    REMOTE_HTTP_PORT,
    Bed,
    StartWaylay,
    agent_pids,
    pid_alive,
    requires_root_netns,
    start_server,
    stop_process,
)
from tests.netns import ns_run

pytestmark = [pytest.mark.integration, requires_root_netns]

STEAL_MARKED = incoming("steal", '{"header_filter": "^x-steal: yes$"}')
STEAL = {"X-Steal": "yes"}
UPLOAD = 4 * 1024 * 1024  # the body the dying app gets half of
DOWNLOAD = 64 * 1024 * 1024  # far more than every buffer on the way: the client must read


def _normal_requests_work(hb: HostileBed, local: str = "local") -> None:
    status, headers, _ = http_get(hb.ns_ip, REMOTE_HTTP_PORT, "/after/stolen", STEAL)
    assert (status, headers.get("x-served-by")) == (200, local)
    status, headers, _ = http_get(hb.ns_ip, REMOTE_HTTP_PORT, "/after/passed")
    assert (status, headers.get("x-served-by")) == (200, "remote")


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dying_app() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Marker apps started by the test, stopped (by pid) at teardown."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            stop_process(proc)


def _upload(host: str, path: str, size: int) -> tuple[bytes, bool]:
    """POST ``size`` bytes (stolen) on a raw socket, sending from a thread while reading;
    (what came back, whether the upload was cut short)."""
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Steal: yes\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    cut = threading.Event()
    with socket.create_connection((host, REMOTE_HTTP_PORT), timeout=DEADLINE_S) as sock:

        def send() -> None:
            try:
                sock.sendall(head + b"u" * size)
            except OSError:
                cut.set()

        sender = threading.Thread(target=send, daemon=True, name="upload")
        sender.start()
        reply = b""
        try:
            while chunk := sock.recv(1 << 16):
                reply += chunk
                if b"\r\n\r\n" in reply and len(reply) > 4096:
                    break
        except OSError:
            pass  # a reset after (or instead of) the answer: judged by the caller
        sender.join(timeout=DEADLINE_S)
    return reply, cut.is_set()


def test_local_app_dies_mid_body(memory_checkpoint: HostileBed, hostile_run: RunStarter,
                                 dying_app: list[subprocess.Popen[bytes]]) -> None:
    """The local app exits halfway through a stolen upload: the client gets a 502 or a
    close (no hang), the session lives on, and a restarted app is used again."""
    hb = memory_checkpoint
    port = _free_loopback_port()
    proc, _ = start_server([str(PYTHON), str(MARKER_APP), "dying", str(port),
                            "--host", "127.0.0.1"], "dying app")
    dying_app.append(proc)
    run = hostile_run(STEAL_MARKED, [f"{REMOTE_HTTP_PORT}:{port}"])
    reply, cut = _upload(hb.ns_ip, "/die/now", UPLOAD)
    assert proc.wait(timeout=DEADLINE_S) == 3  # it did die mid-body
    status_line = reply.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 502") or not reply, (reply[:500], cut)
    # The session survives; with the app gone, a stolen request is answered 502 naming it.
    assert run.proc.poll() is None, run.stderr
    assert_same_agent(hb)
    status, _, body = http_get(hb.ns_ip, REMOTE_HTTP_PORT, "/while-dead", STEAL)
    assert status == 502 and f"127.0.0.1:{port}".encode() in body, body
    assert run.wait_for(lambda evs: any(e.get("type") == "error" for e in evs)), run.events
    status, headers, _ = http_get(hb.ns_ip, REMOTE_HTTP_PORT, "/while-dead/passed")
    assert (status, headers.get("x-served-by")) == (200, "remote")
    # The developer restarts the app on the same port: stolen requests reach it again.
    again, _ = start_server([str(PYTHON), str(MARKER_APP), "restarted", str(port),
                             "--host", "127.0.0.1"], "restarted app")
    dying_app.append(again)
    _normal_requests_work(hb, local="restarted")
    upload = [e for e in run.requests if e.get("path") == "/die/now"]
    print(f"local app died mid-body: client got {status_line.decode() or 'a close'}"
          f"{' (upload cut short)' if cut else ''}; events {upload}; "
          f"errors {[e['message'] for e in run.of_type('error')]}")


# Runs as its own process (so it can be stopped and killed): GET a big body, read 64 KiB,
# say STARTED, then keep reading slowly (a bounded number of reads).
_SLOW_CLIENT = """
import socket, sys, time
host, path, steal = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
s = socket.create_connection((host, 80), timeout=60)
extra = "X-Steal: yes\\r\\n" if steal else ""
s.sendall(f"GET {path} HTTP/1.1\\r\\nHost: x\\r\\n{extra}\\r\\n".encode())
got = 0
while got < 65536:
    got += len(s.recv(65536))
print("STARTED", s.getsockname()[1], flush=True)
try:
    for _ in range(100000):
        if not s.recv(4096):
            break
        time.sleep(0.01)
except OSError:
    pass  # reset: the connection ended all the same
"""


def _start_slow_client(host: str, path: str,
                       steal: bool) -> tuple[subprocess.Popen[bytes], int]:
    """The slow client, once it has read the first 64 KiB of the answer; and its port."""
    client = subprocess.Popen([str(PYTHON), "-c", _SLOW_CLIENT, host, path, "1" if steal else "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)
    assert client.stdout is not None
    said = b""
    started = re.compile(rb"STARTED (\d+)\n")
    with selectors.DefaultSelector() as sel:
        sel.register(client.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + DEADLINE_S
        while not started.search(said) and time.monotonic() < deadline:
            if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                chunk = os.read(client.stdout.fileno(), 4096)
                if not chunk:
                    break
                said += chunk
    found = started.search(said)
    if found is None:
        stop_process(client, signal.SIGKILL)
        raise AssertionError(f"slow client did not start reading (exit {client.poll()}, "
                             f"said {said!r})")
    return client, int(found.group(1))


def _agent_side(hb: HostileBed, client_port: int) -> str:
    """The agent's end of the client's connection, as ``ss`` in the namespace lists it."""
    return ns_run(hb.ns, ["ss", "-Htn", "dst", f"{hb.bed.host_ip}:{client_port}"]).stdout


def _send_queue(hb: HostileBed, client_port: int) -> int:
    fields = _agent_side(hb, client_port).split()
    return int(fields[2]) if len(fields) > 2 else 0


def _stop_client(hb: HostileBed, route: str) -> tuple[subprocess.Popen[bytes], int, str]:
    """A client reading a big answer, SIGSTOPped once the agent's socket to it is full
    (its send queue holds data and stops growing): from then on the agent must buffer or
    hold back. Returns (client, its port, the request's path)."""
    path = f"/bytes/{DOWNLOAD}?{route}"
    client, port = _start_slow_client(hb.ns_ip, path, route == "stolen")
    signal_process(client, signal.SIGSTOP)
    readings: list[int] = []

    def full() -> bool:
        readings.append(_send_queue(hb, port))
        return len(readings) >= 3 and readings[-1] > 0 and readings[-1] == readings[-3]

    assert wait_until(full, interval=0.25), f"send queue readings {readings[-5:]}"
    return client, port, path


def _kill_client(hb: HostileBed, client: subprocess.Popen[bytes], port: int) -> None:
    signal_process(client, signal.SIGKILL)
    client.wait(timeout=DEADLINE_S)
    # Nothing hangs: the agent lets go of the dead client's connection.
    assert wait_until(lambda: not _agent_side(hb, port)), _agent_side(hb, port)


@pytest.mark.parametrize("route", ["stolen", "passed"])
def test_client_stopped_then_killed_mid_response(memory_checkpoint: HostileBed,
                                                 hostile_run: RunStarter, route: str) -> None:
    """A client SIGSTOPped mid-download, then SIGKILLed: the agent drops the connection,
    is unharmed, and the session serves on."""
    hb = memory_checkpoint
    run = hostile_run(STEAL_MARKED, [f"{REMOTE_HTTP_PORT}:{hb.bed.local_http}"])
    client, port, _ = _stop_client(hb, route)
    try:
        assert_same_agent(hb)
    finally:
        _kill_client(hb, client, port)
    assert run.proc.poll() is None, run.stderr
    assert_same_agent(hb)
    _normal_requests_work(hb)


@pytest.mark.parametrize("route", ["stolen", "passed"])
def test_stopped_client_holds_up_no_other_request(memory_checkpoint: HostileBed,
                                                  hostile_run: RunStarter, route: str) -> None:
    """While a client is stopped mid-download, other stolen and passed requests are
    answered and the session stays up."""
    hb = memory_checkpoint
    run = hostile_run(STEAL_MARKED, [f"{REMOTE_HTTP_PORT}:{hb.bed.local_http}"])
    client, port, _ = _stop_client(hb, route)
    try:
        _normal_requests_work(hb)
        assert run.proc.poll() is None and not run.of_type("error"), run.events
        assert_same_agent(hb)
    finally:
        _kill_client(hb, client, port)


@pytest.mark.parametrize("route", ["stolen", "passed"])
def test_killed_clients_request_is_reported(memory_checkpoint: HostileBed,
                                            hostile_run: RunStarter, route: str) -> None:
    """The request of a client killed mid-response still ends in one request event."""
    hb = memory_checkpoint
    run = hostile_run(STEAL_MARKED, [f"{REMOTE_HTTP_PORT}:{hb.bed.local_http}"])
    client, port, path = _stop_client(hb, route)
    _kill_client(hb, client, port)
    assert run.wait_for(lambda evs: any(e.get("type") == "request" and e.get("path") == path
                                        for e in evs), EVENT_TIMEOUT_S), (
        f"no event for the killed client's request; events {run.requests}")
    (event,) = [e for e in run.requests if e.get("path") == path]
    assert event["verdict"] == route and event["bytes_out"] < DOWNLOAD, event


def _nat_rules_s(ns: str) -> str:
    return ns_run(ns, ["iptables", "-w", "-t", "nat", "-S"], check=True).stdout


def test_worker_killed_guard_removes_rules(bed: Bed, waylay: StartWaylay,
                                           tmp_path: Path) -> None:
    """SIGKILL of the worker mid-download: the client's connection ends, the guard removes
    every waylay rule (iptables -t nat -S), the session ends with an error, traffic reaches
    the original app."""
    before = _nat_rules_s(bed.ns)
    run = waylay(STEAL_MARKED)
    during = _nat_rules_s(bed.ns)
    assert "WAYLAY-" in during and "WAYLAY-" not in before, during
    client, _ = _start_slow_client(bed.ns_ip, f"/bytes/{DOWNLOAD}", True)
    try:
        workers = agent_pids(bed.ns)["worker"]
        assert len(workers) == 1, agent_pids(bed.ns)
        os.kill(workers[0], signal.SIGKILL)
        assert client.wait(timeout=DEADLINE_S) == 0  # its connection ended: no hang
    finally:
        signal_process(client, signal.SIGKILL)
        client.wait(timeout=DEADLINE_S)
    assert wait_until(lambda: "WAYLAY" not in _nat_rules_s(bed.ns)), _nat_rules_s(bed.ns)
    assert _nat_rules_s(bed.ns) == before
    assert wait_until(lambda: not any(pid_alive(p) for pids in agent_pids(bed.ns).values()
                                      for p in pids)), agent_pids(bed.ns)
    assert run.wait() not in (0, None), run.stderr
    assert run.of_type("error"), run.events
    status, headers, _ = http_get(bed.ns_ip, REMOTE_HTTP_PORT, "/after-kill", STEAL)
    assert (status, headers.get("x-served-by")) == (200, "remote")
