"""The integration test bed: a "remote" service in a network namespace, a local app, waylay.

Theory of operation. ``bed`` (one per test module) creates a network namespace joined to
the host by a veth pair and starts, inside it, the "remote" servers we did not write
(``servers/http_app.py`` on port 80: the standard library's ThreadingHTTPServer;
``servers/tcp_app.py`` echo on 7000 and a server-first greeter on 7001), all answering as
``remote``. On host loopback it starts the same apps answering as ``local``. Tests talk
to ``http://<ns_ip>/...`` from the host (arriving through PREROUTING, like a pod's
clients) or to 127.0.0.1 from inside the namespace (a sidecar).

``waylay`` starts ``waylay run -t netns/NS -f CONFIG -p ... --events -`` as a subprocess,
waits for its ``subscribed`` events, collects its event lines and stderr in background
threads, and stops it on teardown (SIGINT, then SIGKILL only if it hangs).

Traffic goes only to loopback and to the namespaces created here (docs/architecture.md §5); every
process started here is stopped by pid on teardown, and every wait is bounded.
``WAYLAY_TEST_VENV`` names another virtual environment holding waylay (default: the
repository's ``.venv``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.netns import have_root_netns, netns, ns_popen, veth_pair

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("WAYLAY_TEST_VENV", REPO / ".venv"))
WAYLAY = VENV / "bin" / "waylay"
PYTHON = VENV / "bin" / "python"
SERVERS = Path(__file__).resolve().parent / "servers"
HTTP_APP = SERVERS / "http_app.py"
TCP_APP = SERVERS / "tcp_app.py"

REMOTE_HTTP_PORT = 80
REMOTE_ECHO_PORT = 7000
REMOTE_GREET_PORT = 7001

# Upper bounds that only keep a broken run from hanging the suite; no test passes or fails
# on how long something took.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
EVENT_TIMEOUT_S = 15.0
CURL_TIMEOUT_S = 30

# No proxy from the environment may see the test's traffic (it must stay on the test bed).
CLEAN_ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}

ROOT_REASON = have_root_netns()
requires_root_netns = pytest.mark.skipif(ROOT_REASON is not None, reason=ROOT_REASON or "")


# --- processes ---------------------------------------------------------------------------


def wait_listening(proc: subprocess.Popen[bytes], what: str,
                   timeout: float = START_TIMEOUT_S) -> int:
    """Read ``LISTENING <port>`` from a test server's stdout; its port."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
            if b"\n" in line:
                first = line.split(b"\n", 1)[0].decode()
                assert first.startswith("LISTENING "), f"{what}: unexpected output {first!r}"
                return int(first.split()[1])
    stop_process(proc)
    raise AssertionError(f"{what} did not start (exit {proc.returncode}): {line!r}")


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
                 timeout: float = 5.0) -> int:
    """Signal one process we started (by pid), wait, SIGKILL if it lingers; its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=timeout)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    return proc.returncode


def start_server(argv: Sequence[str], what: str, *, ns: str | None = None,
                 **kw: Any) -> tuple[subprocess.Popen[bytes], int]:
    """Start a test server (inside ``ns`` if given); (process, port) once it listens."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.DEVNULL)
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = ns_popen(ns, list(argv), **kw) if ns else subprocess.Popen(list(argv), **kw)
    return proc, wait_listening(proc, what)


def netns_inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


def pids_in_netns(ns: str) -> list[int]:
    """Pids of the processes whose network namespace is ``ns`` (all of them ours)."""
    inode = netns_inode(ns)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                found.append(int(entry))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def agent_pids(ns: str) -> dict[str, list[int]]:
    """The waylay agent processes in ``ns``: ``{"guard": [...], "worker": [...]}``."""
    found: dict[str, list[int]] = {"guard": [], "worker": []}
    for pid in pids_in_netns(ns):
        argv = cmdline(pid)
        joined = " ".join(argv)
        if "-m waylay.agent" not in joined:
            continue
        found["worker" if "--worker" in argv else "guard"].append(pid)
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][:1] != "Z"
    return True


def poll(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Call ``predicate`` until it returns something truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


# --- HTTP clients ------------------------------------------------------------------------


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]  # names lower-cased; the last value wins
    body: bytes
    num_connects: int

    @property
    def served_by(self) -> str | None:
        return self.headers.get("x-served-by")


def curl(url: str, *args: str, ns: str | None = None, user: Sequence[str] = (),
         timeout: int = CURL_TIMEOUT_S) -> CurlResult:
    """One curl request (from the host, or inside ``ns``); fails the test if curl fails."""
    with tempfile.TemporaryDirectory(prefix="wl-curl-") as tmp:
        os.chmod(tmp, 0o777)  # curl may run as another user (the user-namespace test)
        head, body = os.path.join(tmp, "head"), os.path.join(tmp, "body")
        argv = [*user, "curl", "-sS", "--noproxy", "*", "--max-time", str(timeout),
                "-D", head, "-o", body, "-w", "%{http_code} %{num_connects}", *args, url]
        if ns is not None:
            argv = ["ip", "netns", "exec", ns, *argv]
        done = subprocess.run(argv, capture_output=True, timeout=timeout + 10, env=CLEAN_ENV)
        assert done.returncode == 0, (
            f"curl {url} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
        )
        code, connects = done.stdout.decode().split()
        headers: dict[str, str] = {}
        with open(head, "rb") as f:
            for raw in f.read().decode("latin-1").splitlines():
                name, sep, value = raw.partition(":")
                if sep and not raw.startswith("HTTP/"):
                    headers[name.strip().lower()] = value.strip()
        with open(body, "rb") as f:
            content = f.read()
    return CurlResult(int(code), headers, content, int(connects))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the test bed ------------------------------------------------------------------------


@dataclass
class Bed:
    """One namespace with the remote servers, and the local apps on host loopback."""

    ns: str
    host_ip: str
    ns_ip: str
    local_http: int
    local_echo: int
    tmp: Path

    def url(self, path: str) -> str:
        return f"http://{self.ns_ip}:{REMOTE_HTTP_PORT}{path}"


@contextlib.contextmanager
def make_bed(tmp: Path) -> Iterator[Bed]:
    procs: list[subprocess.Popen[bytes]] = []
    with netns("wlit") as ns, veth_pair(ns) as (host_ip, ns_ip):
        try:
            py = str(PYTHON)
            procs.append(start_server([py, str(HTTP_APP), "remote", str(REMOTE_HTTP_PORT)],
                                      "remote http", ns=ns)[0])
            procs.append(start_server([py, str(TCP_APP), "echo", "remote",
                                       str(REMOTE_ECHO_PORT)], "remote echo", ns=ns)[0])
            procs.append(start_server([py, str(TCP_APP), "greet", "remote",
                                       str(REMOTE_GREET_PORT)], "remote greeter", ns=ns)[0])
            local_http, local_http_port = start_server(
                [py, str(HTTP_APP), "local", "0", "--host", "127.0.0.1"], "local http")
            procs.append(local_http)
            local_echo, local_echo_port = start_server(
                [py, str(TCP_APP), "echo", "local", "0", "--host", "127.0.0.1"], "local echo")
            procs.append(local_echo)
            yield Bed(ns=ns, host_ip=host_ip, ns_ip=ns_ip, local_http=local_http_port,
                      local_echo=local_echo_port, tmp=tmp)
        finally:
            for proc in procs:
                stop_process(proc)
            # Anything a failed test left running in the namespace (an agent whose client
            # was killed) would keep it alive: every process in there is ours.
            for pid in pids_in_netns(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    """The module's test bed (remote servers in a namespace, local apps on loopback)."""
    if ROOT_REASON is not None:
        pytest.skip(ROOT_REASON)
    with make_bed(tmp_path_factory.mktemp("bed")) as b:
        yield b


# --- waylay run --------------------------------------------------------------------------


class WaylayRun:
    """A running ``waylay run ... --events -``: its events as they arrive, and its end."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.other_stdout: list[str] = []
        self._stderr = bytearray()
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True, name="waylay-stdout"),
            threading.Thread(target=self._read_stderr, daemon=True, name="waylay-stderr"),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            with self._cond:
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    self.other_stdout.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := self.proc.stderr.read1(65536):
            with self._cond:
                self._stderr += chunk

    @property
    def stderr(self) -> str:
        with self._cond:
            return self._stderr.decode(errors="replace")

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get("type") == kind]

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.of_type("request")

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool],
                 timeout: float = EVENT_TIMEOUT_S) -> bool:
        """Wait until ``predicate(events)`` holds (or the run ends, or ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None
                                 and not self._threads[0].is_alive()):
                    return predicate(self.events)
                self._cond.wait(min(left, 0.2))
            return True

    def wait_requests(self, n: int, timeout: float = EVENT_TIMEOUT_S) -> list[dict[str, Any]]:
        """The first ``n`` request events, once they arrived; fails the test otherwise."""
        ok = self.wait_for(
            lambda evs: sum(e.get("type") == "request" for e in evs) >= n, timeout)
        got = self.requests
        assert ok, f"expected {n} request events, got {len(got)}: {got}\nstderr: {self.stderr}"
        return got[:n]

    def stop(self, sig: int = signal.SIGINT, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig``, wait for the exit; its exit code (SIGKILL after ``timeout``)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"waylay run did not exit within {timeout:g} s "
                                 f"(killed); stderr:\n{self.stderr}") from None
        for thread in self._threads:
            thread.join(timeout=5)
        return self.proc.returncode


def write_config(directory: Path, text: str, name: str = "waylay.json") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def waylay_argv(target: str, config: Path | None, ports: Sequence[str],
                extra: Sequence[str] = ()) -> list[str]:
    argv = [str(WAYLAY), "run", "-t", target]
    if config is not None:
        argv += ["-f", str(config)]
    for port in ports:
        argv += ["-p", port]
    return [*argv, "--events", "-", *extra]


def launch_waylay(argv: Sequence[str], ports: int, *, wait: bool = True,
                  env: dict[str, str] | None = None, cwd: str | None = None) -> WaylayRun:
    """Start ``waylay run`` (``argv``); with ``wait``, return once ``ports`` subscribed events came.

    Fails the test with waylay's stderr when the subscriptions do not arrive.
    """
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=CLEAN_ENV if env is None else env,
                            cwd=cwd)
    run = WaylayRun(proc)
    if wait:
        ok = run.wait_for(
            lambda evs: sum(e.get("type") == "subscribed" for e in evs) >= ports,
            START_TIMEOUT_S)
        if not ok:
            code = run.stop()
            raise AssertionError(f"waylay run did not subscribe {ports} port(s) (exit {code}); "
                                 f"events {run.events}; stderr:\n{run.stderr}")
    return run


def finish_waylay(run: WaylayRun) -> None:
    """Teardown: SIGINT a run still alive (SIGKILL if it hangs), close its pipes."""
    if run.proc.poll() is None:
        with contextlib.suppress(AssertionError):
            run.stop()
    for stream in (run.proc.stdout, run.proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


StartWaylay = Callable[..., WaylayRun]


@pytest.fixture
def waylay(bed: Bed, tmp_path: Path) -> Iterator[StartWaylay]:
    """``start(config_text, ports=[...], extra=[...], wait=True)``: a running ``waylay run``.

    ``ports`` are ``-p`` values (default ``80:<local http>``). With ``wait``, returns once
    one ``subscribed`` event per port arrived (fails the test with stderr otherwise).
    Runs still alive at teardown get SIGINT.
    """
    runs: list[WaylayRun] = []
    counter = iter(range(1000))

    def start(config_text: str | None, ports: Sequence[str] | None = None,
              extra: Sequence[str] = (), wait: bool = True) -> WaylayRun:
        ports = [f"{REMOTE_HTTP_PORT}:{bed.local_http}"] if ports is None else list(ports)
        config = (write_config(tmp_path, config_text, f"waylay-{next(counter)}.json")
                  if config_text is not None else None)
        run = launch_waylay(waylay_argv(f"netns/{bed.ns}", config, ports, extra), len(ports),
                            wait=wait)
        runs.append(run)
        return run

    try:
        yield start
    finally:
        for run in runs:
            finish_waylay(run)


def summary_counts(stderr: str) -> dict[str, int]:
    """``waylay: 3 stolen, 1 passed, 0 mirrored, 0 errors`` -> {"stolen": 3, ...}."""
    for line in reversed(stderr.splitlines()):
        if "stolen" in line and "passed" in line:
            parts = line.removeprefix("waylay:").split(",")
            return {p.split()[1]: int(p.split()[0]) for p in parts if len(p.split()) == 2}
    raise AssertionError(f"no summary line on stderr:\n{stderr}")

