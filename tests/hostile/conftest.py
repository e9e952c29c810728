"""The hostile-input bed: the integration bed, shared by the hostile modules, with one agent.

Theory of operation. ``hostile_bed`` (one per test session) is the integration bed of
``tests/integration/conftest.py`` (a namespace with the "remote" apps, "local" apps on host
loopback) plus:

- ``servers/marker_app.py`` recorders: ``remote`` on RECORDER_PORT inside the namespace
  (the filtered steal port of the smuggling corpus) and ``local`` on loopback, each
  appending one JSON line per request it answered to its log, so a test counts exactly
  what each end framed;
- two marked local apps for two sessions, ``local-a`` answering 201 and ``local-b``
  answering 202 (isolation tests);
- the hypercorn h2c app as ``remote`` on H2_PORT in the namespace and ``local`` on loopback.

One ``keeper`` session mirrors an otherwise unused port (the echo port) for the whole test
session, so every hostile test runs against the same agent process: a test that crashes
the agent shows up as a changed or missing worker pid (``assert_same_agent``), and the
worker's resident memory before and after all hostile traffic is comparable.
``agent_memory`` records it (VmRSS from /proc) and prints it at the end of the run, in
the terminal summary (no assertion on it). Being session-scoped, the bed and its agent
stay up from the first hostile test that uses them to the end of the pytest run.

The integration bed's ``bed`` and ``waylay`` fixtures are re-exported for modules that need
an agent of their own (killing the worker must not kill the keeper's agent).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (  # noqa: F401 - bed and waylay are re-exported fixtures
    PYTHON,
    REMOTE_ECHO_PORT,
    REMOTE_HTTP_PORT,
    ROOT_REASON,
    SERVERS,
    Bed,
    WaylayRun,
    agent_pids,
    bed,
    finish_waylay,
    launch_waylay,
    make_bed,
    pid_alive,
    start_server,
    stop_process,
    waylay,
    waylay_argv,
    write_config,
)

HOSTILE_SERVERS = Path(__file__).resolve().parent / "servers"
MARKER_APP = HOSTILE_SERVERS / "marker_app.py"
H2_APP = SERVERS / "h2_app.py"

RECORDER_PORT = 8090  # the recorders' port in the namespace (intercepted by the corpus run)
H2_PORT = 8080
# Upper bound on any single wait in the hostile tests; never a pass/fail criterion.
DEADLINE_S = 30.0


def vm_rss_kib(pid: int) -> int | None:
    """The resident set size of ``pid`` in KiB (``VmRSS`` in /proc/PID/status), if alive."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Recorder:
    """A marker_app recording what it answered to ``log``."""

    name: str
    port: int
    log: Path

    def records(self) -> list[dict[str, Any]]:
        try:
            text = self.log.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class HostileBed:
    bed: Bed
    remote_recorder: Recorder  # in the namespace on RECORDER_PORT
    local_recorder: Recorder  # on loopback
    local_a: int  # marker app "local-a", status 201, on loopback
    local_b: int  # marker app "local-b", status 202
    local_h2: int  # hypercorn h2c app "local" on loopback
    keeper: WaylayRun | None = None
    worker_pid: int | None = None
    memory: list[tuple[str, int | None, int | None]] = field(default_factory=list)

    @property
    def ns(self) -> str:
        return self.bed.ns

    @property
    def ns_ip(self) -> str:
        return self.bed.ns_ip

    def url(self, path: str, port: int = REMOTE_HTTP_PORT) -> str:
        return f"http://{self.bed.ns_ip}:{port}{path}"

    def worker(self) -> int | None:
        workers = [p for p in agent_pids(self.ns)["worker"] if pid_alive(p)]
        return workers[0] if len(workers) == 1 else None

    def note_memory(self, label: str) -> None:
        pid = self.worker()
        self.memory.append((label, pid, vm_rss_kib(pid) if pid is not None else None))


def assert_same_agent(hb: HostileBed) -> None:
    """The agent the keeper started is still the one running: nothing crashed it."""
    assert hb.keeper is not None and hb.keeper.proc.poll() is None, (
        f"the keeper session ended; stderr:\n{hb.keeper.stderr if hb.keeper else ''}")
    assert hb.worker() == hb.worker_pid, (
        f"agent worker changed: was {hb.worker_pid}, now {agent_pids(hb.ns)}")


def start_marker(name: str, *argv: str, ns: str | None = None,
                 procs: list[subprocess.Popen[bytes]]) -> int:
    proc, port = start_server([str(PYTHON), str(MARKER_APP), name, *argv], name, ns=ns)
    procs.append(proc)
    return port


# Summary lines printed at the end of the run (pytest_terminal_summary below).
MEMORY_REPORT: list[str] = []


@pytest.fixture(scope="session")
def hostile_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileBed]:
    """The shared bed and its keeper session (see the module docstring)."""
    if ROOT_REASON is not None:
        pytest.skip(ROOT_REASON)
    tmp = tmp_path_factory.mktemp("hostile")
    procs: list[subprocess.Popen[bytes]] = []
    with make_bed(tmp) as base:
        hb: HostileBed | None = None
        try:
            py = str(PYTHON)
            remote_log, local_log = tmp / "remote.jsonl", tmp / "local.jsonl"
            start_marker("remote", str(RECORDER_PORT), "--log", str(remote_log),
                         ns=base.ns, procs=procs)
            local_port = start_marker("local", "0", "--host", "127.0.0.1",
                                      "--log", str(local_log), procs=procs)
            local_a = start_marker("local-a", "0", "--host", "127.0.0.1", "--status", "201",
                                   procs=procs)
            local_b = start_marker("local-b", "0", "--host", "127.0.0.1", "--status", "202",
                                   procs=procs)
            procs.append(start_server([py, str(H2_APP), "remote", str(H2_PORT)],
                                      "remote h2 app", ns=base.ns)[0])
            h2_local, local_h2 = start_server([py, str(H2_APP), "local", "0",
                                               "--host", "127.0.0.1"], "local h2 app")
            procs.append(h2_local)
            hb = HostileBed(
                bed=base, remote_recorder=Recorder("remote", RECORDER_PORT, remote_log),
                local_recorder=Recorder("local", local_port, local_log),
                local_a=local_a, local_b=local_b, local_h2=local_h2)
            hb.keeper = launch_waylay(waylay_argv(
                f"netns/{base.ns}", None, [f"{REMOTE_ECHO_PORT}:{base.local_echo}"],
                ["--mode", "mirror"]), 1)
            hb.worker_pid = hb.worker()
            assert hb.worker_pid is not None, agent_pids(base.ns)
            yield hb
        finally:
            if hb is not None and hb.keeper is not None:
                finish_waylay(hb.keeper)
            for proc in procs:
                stop_process(proc)


@pytest.fixture(scope="session")
def agent_memory(hostile_bed: HostileBed) -> Iterator[HostileBed]:
    """VmRSS of the shared agent worker before the first hostile test and after the last."""
    hostile_bed.note_memory("before the hostile tests")
    yield hostile_bed
    hostile_bed.note_memory("after the hostile tests")
    lines = [f"agent worker VmRSS {label}: "
             + (f"{rss} KiB (pid {pid})" if rss is not None else f"n/a (worker pid {pid})")
             for label, pid, rss in hostile_bed.memory]
    for line in lines:
        print(line, flush=True)  # shown with -s
    MEMORY_REPORT.extend(lines)


@pytest.fixture(scope="module")
def memory_checkpoint(agent_memory: HostileBed,
                      request: pytest.FixtureRequest) -> Iterator[HostileBed]:
    """After each module using it, one more VmRSS reading of the shared worker (report)."""
    yield agent_memory
    agent_memory.note_memory(f"after {request.module.__name__.rsplit('.', 1)[-1]}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEMORY_REPORT:
        terminalreporter.section("waylay agent memory (hostile tests)")
        for line in MEMORY_REPORT:
            terminalreporter.write_line(line)


RunStarter = Callable[..., WaylayRun]


@pytest.fixture
def hostile_run(agent_memory: HostileBed, tmp_path: Path) -> Iterator[RunStarter]:
    """``start(config_text, ports=[...], extra=[...], wait=True)``: a ``waylay run`` joining
    the shared agent; runs still alive at teardown get SIGINT."""
    runs: list[WaylayRun] = []
    counter = iter(range(1000))

    def start(config_text: str | None, ports: Sequence[str], extra: Sequence[str] = (),
              wait: bool = True) -> WaylayRun:
        config = (write_config(tmp_path, config_text, f"waylay-{next(counter)}.json")
                  if config_text is not None else None)
        run = launch_waylay(waylay_argv(f"netns/{agent_memory.ns}", config, ports, extra),
                            len(ports), wait=wait)
        runs.append(run)
        return run

    try:
        yield start
    finally:
        for run in runs:
            finish_waylay(run)


def incoming(mode: str, filter_json: str | None = None) -> str:
    """A mirrord config with ``mode`` and, if given, ``http_filter`` (a JSON object text)."""
    body = f', "http_filter": {filter_json}' if filter_json else ""
    return f'{{"feature": {{"network": {{"incoming": {{"mode": "{mode}"{body}}}}}}}}}'


def wait_until(predicate: Callable[[], Any], timeout: float = DEADLINE_S,
               interval: float = 0.1) -> Any:
    """``predicate()`` once truthy, or its last value after ``timeout`` (a bound only)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def http_get(host: str, port: int, path: str, headers: dict[str, str] | None = None,
             timeout: float = DEADLINE_S) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def signal_process(proc: subprocess.Popen[Any], sig: int) -> None:
    """Signal a process we started, by its pid; no error if it already ended."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)

