"""A local app that accepts a stolen request and never answers (issue 11, item 3).

With ``agent.local_response_timeout`` set short, the remote caller gets a 504 naming the
local address, the session an ``error`` event, the request shows as ``started`` before its
``request`` event (status 504, same id), the local app's connection is let go, and
passthrough keeps working meanwhile. The hanging app is a thread of this test on host
loopback; the callers are curl from the host into the test's namespace (HTTP/1.1 and
HTTP/2 with prior knowledge).
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration import conftest as integration
from tests.integration.conftest import CLEAN_ENV, CURL_TIMEOUT_S, Bed, StartWaylay, curl

pytestmark = pytest.mark.integration

# The integration bed (a namespace with the remote apps) and its ``waylay run`` starter.
bed = integration.bed
waylay = integration.waylay

TIMEOUT_S = 2  # agent.local_response_timeout for these runs
CONFIG = json.dumps({
    "agent": {"local_response_timeout": TIMEOUT_S},
    "feature": {"network": {"incoming": {"mode": "steal",
                                         "http_filter": {"path_filter": "^/hang"}}}},
})
# Bounds that only keep a broken run from hanging the suite; nothing is timed against them.
HOLD_S = 60.0
MAX_CONNECTIONS = 50


class HangingApp:
    """On loopback: reads each request head and never answers; counts the heads it read
    and the connections the other side closed."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.heads: list[bytes] = []
        self.let_go = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="hanging-app",
                                          daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        for _ in range(int(HOLD_S / 0.2) * 4):  # bounded: the test ends far sooner
            if self._stop.is_set() or len(self._threads) >= MAX_CONNECTIONS:
                return
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._hold, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _hold(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(HOLD_S)
            data = b""
            try:
                for _ in range(1000):  # a head is a few reads at most
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                    if b"\r\n\r\n" in data:
                        break
                with self._lock:
                    self.heads.append(data.split(b"\r\n", 1)[0])
                for _ in range(1000):  # never answers; waits for the session to let go
                    if not conn.recv(65536):
                        with self._lock:
                            self.let_go += 1
                        return
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._accepter.join(timeout=5)


@pytest.fixture
def hanging() -> Iterator[HangingApp]:
    app = HangingApp()
    try:
        yield app
    finally:
        app.close()


def curl_in_background(url: str, *args: str) -> subprocess.Popen[bytes]:
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", str(CURL_TIMEOUT_S),
            "-w", "\n%{http_code}", *args, url]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=CLEAN_ENV)


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    """curl's status code and body, once it ended (killed past a generous bound)."""
    try:
        out, err = proc.communicate(timeout=CURL_TIMEOUT_S + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, f"curl failed ({proc.returncode}): {err.decode()}"
    body, _, code = out.rpartition(b"\n")
    return int(code), body


def events_of(run: Any, kind: str, path: str) -> list[dict[str, Any]]:
    return [e for e in run.of_type(kind) if e.get("path") == path]


def check_hang(bed: Bed, waylay: StartWaylay, hanging: HangingApp, path: str,
               *curl_args: str) -> None:
    run = waylay(CONFIG, ports=[f"80:{hanging.port}"])
    caller = curl_in_background(bed.url(path), *curl_args)
    try:
        # In flight: announced as soon as it was stolen.
        assert run.wait_for(lambda evs: any(e.get("type") == "started"
                                            and e.get("path") == path for e in evs)), (
            f"no started event; events {run.events}; stderr:\n{run.stderr}")
        # Passthrough is not held up by the hanging request.
        passed = curl(bed.url("/other"))
        assert (passed.status, passed.served_by) == (200, "remote")
        status, body = finish(caller)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait(timeout=10)
    where = f"127.0.0.1:{hanging.port}"
    assert status == 504, body
    assert where.encode() in body and f"within {TIMEOUT_S} s".encode() in body, body

    assert run.wait_for(lambda evs: any(e.get("type") == "error" and path in e["message"]
                                        for e in evs)), run.events
    (error,) = [e for e in run.of_type("error") if path in e["message"]]
    assert f"GET {path} on port 80" in error["message"]
    assert f"the local app at {where} did not answer within {TIMEOUT_S} s" in error["message"]

    assert run.wait_for(lambda evs: bool(events_of(run, "request", path))), run.events
    (started,) = events_of(run, "started", path)
    (done,) = events_of(run, "request", path)
    assert done["id"] == started["id"] and done["verdict"] == started["verdict"] == "stolen"
    assert done["status"] == 504
    assert run.events.index(started) < run.events.index(done)
    assert {k: started[k] for k in ("port", "method", "path", "protocol")} == {
        k: done[k] for k in ("port", "method", "path", "protocol")}

    # The session let go of the local app's connection (the app sees the request dropped).
    # A stolen h2 request first probes whether the app speaks h2c; this app hangs on
    # that preface too, so the request may never have been sent to it as HTTP/1.1.
    assert run.wait_for(lambda _evs: hanging.let_go >= len(hanging.heads) >= 1), (
        f"the local app's connections were kept: {hanging.heads}, {hanging.let_go} let go")
    assert set(hanging.heads) <= {f"GET {path} HTTP/1.1".encode(), b"PRI * HTTP/2.0"}


def test_http1_caller_gets_504_naming_the_local_app(bed: Bed, waylay: StartWaylay,
                                                    hanging: HangingApp) -> None:
    """HTTP/1.1: 504 naming the local address, error event, started then request event."""
    check_hang(bed, waylay, hanging, "/hang/h1")


def test_h2_caller_gets_504_naming_the_local_app(bed: Bed, waylay: StartWaylay,
                                                 hanging: HangingApp) -> None:
    """HTTP/2 (prior knowledge): the same bound, answered on the stolen stream."""
    check_hang(bed, waylay, hanging, "/hang/h2", "--http2-prior-knowledge")
