"""Passthrough benchmark: what a filtered steal costs the requests it does *not* take.

Theory of operation. The benchmark builds its own network namespace with a veth pair to
the host and runs nginx (``return 200``) inside it, then loads it with ``wrk`` from the
host, keep-alive, always at the namespace's own address (docs/architecture.md §5):

1. **direct**: wrk straight at nginx:80.
2. **nginx proxy** (``--nginx-proxy``, on by default): a second nginx in the namespace,
   a reverse proxy on :8081 with upstream keep-alive to 127.0.0.1:80. It is the reference
   point (measured at about 0.35-0.45x direct): a good C proxy costs that much.
3. **waylay agent**: ``waylay run -t netns/NS -p 80:LOCAL`` with a header filter that no
   request matches, so the agent REDIRECTs port 80 to itself and passes every request
   through to nginx. wrk hits the very same URL as in (1).

Each intermediary is one process next to one nginx worker, so the comparison is fair.
The first target of the passthrough issue: through the agent, at least ``TARGET_RATIO`` of
the direct throughput and at most ``TARGET_ADDED_P50_MS`` more median latency.

Everything started here (nginx, waylay, the namespace and its veth) is stopped in
``finally`` blocks, also on Ctrl-C; a second Ctrl-C cannot cut that cleanup short. Every
load is bounded by ``wrk -d``. Needs root (namespaces, iptables), nginx and wrk.

Usage: ``.venv/bin/python bench/passthrough.py [-d SECONDS] [-c CONNECTIONS] [-t THREADS]
[--json] [--check]`` (``./dev bench`` runs ``bench/suite.py``, which reuses this module);
``--profile FILE`` adds one more agent run under py-spy and prints the agent's hot spots.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.netns import have_root_netns, netns, ns_popen, ns_run, veth_pair  # noqa: E402

TARGET_RATIO = 0.25
"""The issue's target: passthrough throughput at least this fraction of direct."""
TARGET_ADDED_P50_MS = 0.5
"""... and at most this much added median latency."""

ORIGIN_PORT = 80
PROXY_PORT = 8081  # the nginx reverse proxy baseline, inside the namespace
# A header no request carries: every request is passed through, none is stolen.
NEVER_MATCHING_FILTER = "X-Waylay-Bench: steal-me"

STARTUP_TIMEOUT_S = 20.0  # nginx listening, waylay subscribed
STOP_TIMEOUT_S = 15.0  # waylay's own stop waits up to 5 s for the agent, which gives its
# worker 5 s before the guard removes the rules
WRK_SLACK_S = 30.0  # wrk -d bounds the load; this bounds a wedged wrk
FIRST_REQUEST_ATTEMPTS = 3  # the check that the agent passes requests through

EXIT_USAGE = 2
EXIT_MISSING = 4  # missing privilege or system tool, as in waylay's own CLI


class BenchError(Exception):
    """A setup step failed; the message says which and why."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- wrk ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class WrkResult:
    """What one wrk run measured (latencies in milliseconds)."""

    requests_per_s: float
    requests: int
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int

    @property
    def failures(self) -> int:
        return self.socket_errors + self.non_2xx


_TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_REQUESTS_PER_S = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(text: str) -> WrkResult:
    """Parse ``wrk --latency`` output; raises ValueError naming what is missing."""
    percentiles = {int(p): float(v) * _TIME_UNITS_MS[unit]
                   for p, v, unit in _PERCENTILE.findall(text)}
    rate = _REQUESTS_PER_S.search(text)
    total = _TOTAL.search(text)
    missing = [name for name, found in (("Requests/sec", rate), ("N requests in", total))
               if found is None]
    missing += [f"{p}% latency" for p in (50, 75, 90, 99) if p not in percentiles]
    if missing or rate is None or total is None:
        raise ValueError(f"wrk output lacks {', '.join(missing)}:\n{text}")
    errors = _SOCKET_ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests_per_s=float(rate.group(1)),
        requests=int(total.group(1)),
        p50_ms=percentiles[50], p75_ms=percentiles[75],
        p90_ms=percentiles[90], p99_ms=percentiles[99],
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk(url: str, *, threads: int, connections: int, seconds: int,
            headers: Sequence[str] = ()) -> WrkResult:
    """One bounded wrk run; ``headers`` are ``"Name: value"`` lines added to each request."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            *(arg for header in headers for arg in ("-H", header)), url]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=seconds + WRK_SLACK_S)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed (exit {done.returncode}): "
                         f"{done.stderr.strip() or done.stdout.strip()}")
    try:
        return parse_wrk(done.stdout)
    except ValueError as exc:
        raise BenchError(str(exc)) from None


# --- processes ----------------------------------------------------------------------------


def _stop(process: subprocess.Popen[Any], sig: int, timeout: float) -> None:
    """Send ``sig``; SIGKILL the process group if it has not exited after ``timeout``."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # started with start_new_session
        process.wait(5)


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


def _wait_listening(address: tuple[str, int], process: subprocess.Popen[Any],
                    log: Path, what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise BenchError(f"{what} exited ({process.returncode}): {_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=1):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{what} is not listening on {address} after "
                             f"{STARTUP_TIMEOUT_S:g} s: {_tail(log)}")
        time.sleep(0.05)


def _get(host: str, port: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (an nginx master's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append(int(entry.name))
    return sorted(found)


def namespace_pids(ns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                          check=False, timeout=10)
    return [int(p) for p in done.stdout.split()]


# --- nginx --------------------------------------------------------------------------------


_NGINX_MAIN = """\
worker_processes 1;
daemon off;
error_log stderr warn;
pid {dir}/nginx.pid;
# Room for the memory probe's 10,000 idle connections (bench/idle_memory.py); nginx
# inherits the descriptor limit the benchmark raised.
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{servers}
}}
"""

# Keep-alive without nginx's default cap of 1,000 requests per connection (which makes
# every path reconnect a few times per second under load) nor its 75 s idle timeout (the
# memory probe holds connections open).
ORIGIN_SERVERS = f"""\
    server {{
        listen {ORIGIN_PORT};
        keepalive_requests 100000000;
        keepalive_timeout 300s;
        location / {{ return 200 "ok\\n"; }}
    }}"""

PROXY_SERVERS = f"""\
    upstream origin {{
        server 127.0.0.1:{ORIGIN_PORT};
        keepalive 64;
    }}
    server {{
        listen {PROXY_PORT};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


@contextlib.contextmanager
def nginx(ns: str | None, ns_ip: str, port: int, servers: str, workdir: Path,
          name: str) -> Iterator[subprocess.Popen[Any]]:
    """nginx (one worker) inside ``ns`` (None: on the host) with these ``server`` blocks,
    listening on ``ns_ip:port``; stopped on exit."""
    directory = workdir / name
    directory.mkdir()
    conf = directory / "nginx.conf"
    conf.write_text(_NGINX_MAIN.format(dir=directory, servers=servers))
    log = directory / "stderr.log"
    argv = ["nginx", "-p", f"{directory}/", "-c", str(conf), "-e", "stderr"]
    with open(log, "wb") as err:
        if ns is None:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                       start_new_session=True)
        else:
            process = ns_popen(ns, argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                               start_new_session=True)
    try:
        _wait_listening((ns_ip, port), process, log, f"nginx ({name})")
        yield process
    finally:
        _stop(process, signal.SIGTERM, 10)


# --- waylay -------------------------------------------------------------------------------


@dataclasses.dataclass
class Waylay:
    """A running ``waylay run`` and where to find its agent worker."""

    process: subprocess.Popen[Any]
    stderr: Path
    ns: str
    # Failed first requests that a retry got past: an agent bug worth seeing, not a reason
    # to lose the whole run.
    warnings: list[str] = dataclasses.field(default_factory=list)

    def worker_pid(self) -> int | None:
        """The agent worker (``python -m waylay.agent --worker``) running in the namespace."""
        for pid in namespace_pids(self.ns):
            argv = _cmdline(pid)
            if "agent" in argv and "--worker" in argv:
                return pid
        return None

    def summary(self) -> str:
        """waylay's closing ``N stolen, N passed, ...`` line (after it exited)."""
        lines = [line for line in _tail(self.stderr, 20000).splitlines()
                 if "stolen," in line and "passed," in line]
        return lines[-1].removeprefix("waylay: ") if lines else ""


def _redirect_installed(ns: str) -> bool:
    rules = ns_run(ns, ["iptables", "-w", "-t", "nat", "-S"], check=False).stdout
    return any(line.startswith("-A WAYLAY-") and f"--dport {ORIGIN_PORT}" in line
               and "REDIRECT" in line for line in rules.splitlines())


def _free_local_port() -> int:
    # Nothing listens there: no request matches the filter, so nothing is delivered.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def waylay_passthrough(ns: str, ns_ip: str, workdir: Path,
                       local_port: int | None = None) -> Iterator[Waylay]:
    """``waylay run`` stealing port 80 with a header filter no request of wrk matches unless
    wrk sends ``NEVER_MATCHING_FILTER`` as a header, delivering to ``local_port`` (default: a
    port where nothing listens); SIGINT on exit."""
    executable = Path(sys.executable).parent / "waylay"
    if not executable.exists():
        raise BenchError(f"{executable} not found: run ./dev setup", EXIT_MISSING)
    config = workdir / "waylay.json"
    config.write_text(json.dumps({"feature": {"network": {"incoming": {
        "mode": "steal", "http_filter": {"header_filter": NEVER_MATCHING_FILTER}}}}}))
    log = workdir / "waylay.stderr"
    argv = [str(executable), "run", "-t", f"netns/{ns}", "-f", str(config),
            "-p", f"{ORIGIN_PORT}:{local_port or _free_local_port()}", "--events", "/dev/null",
            "-q", "--ttl", "5"]  # a short TTL: an agent orphaned by a crash goes away soon
    with open(log, "wb") as err:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=err, start_new_session=True)
    running = Waylay(process=process, stderr=log, ns=ns)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _redirect_installed(ns):
            if process.poll() is not None:
                raise BenchError(f"waylay run exited ({process.returncode}): {_tail(log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"waylay did not redirect port {ORIGIN_PORT} after "
                                 f"{STARTUP_TIMEOUT_S:g} s: {_tail(log)}")
            time.sleep(0.1)
        for attempt in range(1, FIRST_REQUEST_ATTEMPTS + 1):
            try:
                status, body = _get(ns_ip, ORIGIN_PORT)
            except (OSError, http.client.HTTPException) as exc:
                status, body = 0, repr(exc).encode()
            if (status, body) == (200, b"ok\n"):
                break
            failure = (f"request {attempt} through the agent got {status} "
                       f"{body[:200]!r}")
            if attempt == FIRST_REQUEST_ATTEMPTS:
                raise BenchError(failure)
            running.warnings.append(failure)
            print(f"bench: {failure}; trying again", file=sys.stderr, flush=True)
            time.sleep(0.5)
        yield running
    finally:
        _stop(process, signal.SIGINT, STOP_TIMEOUT_S)


# --- profiling ----------------------------------------------------------------------------


def _frame_name(frame: str) -> str:
    """``handle (core/engine/http1.py:123)`` -> ``handle (core/engine/http1.py)``: one entry per
    function."""
    return re.sub(r":\d+\)$", ")", frame)


# Where the agent's time goes, by the first rule a sample's stack meets (leaf = the
# innermost frame). Names of agent functions: update them when the agent is refactored.
_WRITE_LEAVES = ("StreamWriter.write (", "write (libc", "writev (libc", "send (libc")
_Rule = Callable[[list[str]], bool]
_BREAKDOWN: tuple[tuple[str, _Rule], ...] = (
    ("socket writes (the syscall, and waiting for the CPU after it woke the peer)",
     lambda frames: frames[-1].startswith(_WRITE_LEAVES)),
    ("HTTP/1.1 engine (waylay.core.engine.http1 with h11, the filter)",
     lambda frames: any(f.startswith("Http1Router.handle (") for f in frames)),
    ("flow records sent to the session (Agent.record)",
     lambda frames: any(f.startswith("Agent.record (") for f in frames)),
    ("event loop itself (uvloop, epoll)",
     lambda frames: frames[-1].startswith(("Runner.run (", "epoll_pwait ("))),
    ("everything else (asyncio streams, agent/interception.py)", lambda frames: True),
)
_PARTS: tuple[tuple[str, _Rule], ...] = (  # shares of the whole, overlapping the rows above
    ("  of all: h11", lambda frames: any("h11/" in f for f in frames)),
    ("  of all: the HTTP filter (HttpFilter.evaluate)",
     lambda frames: any(f.startswith("HttpFilter.evaluate (") for f in frames)),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HotSpots:
    """A py-spy profile of the agent's event-loop thread, summarised (percent of samples)."""

    samples: int
    top: list[tuple[str, float, float]]  # (function, self %, total %), by self time
    breakdown: list[tuple[str, float]]


def hot_spots(raw: str, top: int) -> HotSpots:
    """Summarise py-spy's raw (collapsed) stacks, keeping the event loop's thread only."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    rows: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        if any(f.startswith("Thread._bootstrap (") for f in frames):
            continue  # asyncio.to_thread's helper, parked on its queue: not the event loop
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or ["?"]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        rows[next(label for label, rule in _BREAKDOWN if rule(frames))] += count
        for label, rule in _PARTS:
            if rule(frames):
                rows[label] += count
    if not samples:
        return HotSpots(samples=0, top=[], breakdown=[])
    return HotSpots(
        samples=samples,
        top=[(name, 100 * n / samples, 100 * inclusive[name] / samples)
             for name, n in own.most_common(top)],
        breakdown=[(label, 100 * rows[label] / samples) for label, _ in (*_BREAKDOWN, *_PARTS)],
    )


def profile_agent(waylay: Waylay, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One more wrk run with py-spy sampling the agent worker; its hot spots."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(py_spy, os.X_OK):
        raise BenchError("py-spy not found: .venv/bin/pip install py-spy", EXIT_MISSING)
    pid = waylay.worker_pid()
    if pid is None:
        raise BenchError("cannot find the agent worker process in the namespace")
    argv = [py_spy, "record", "--pid", str(pid), "--format", "raw", "-o", args.profile,
            "--duration", str(max(1, args.duration - 1)), "--rate", "250"]
    # Non-blocking sampling disturbs the agent least, but native stacks need it paused.
    argv.append("--native" if args.profile_native else "--nonblocking")
    spy = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)  # let py-spy attach before the load starts
        run_wrk(url, threads=args.threads, connections=args.connections,
                seconds=args.duration)
        output, _ = spy.communicate(timeout=WRK_SLACK_S)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0:
        raise BenchError(f"py-spy failed ({spy.returncode}): {output.strip()}")
    spots = hot_spots(Path(args.profile).read_text(), args.profile_top)
    return {"file": args.profile, "pid": pid, "samples": spots.samples,
            "native": args.profile_native,
            "breakdown": [{"what": label.strip(), "percent": round(share, 1)}
                          for label, share in spots.breakdown],
            "top": [{"function": name, "self_percent": round(own, 1),
                     "total_percent": round(total, 1)} for name, own, total in spots.top]}


# --- the benchmark ------------------------------------------------------------------------


def _measure(name: str, url: str, args: argparse.Namespace,
             pids_of: Callable[[], list[int]]) -> dict[str, Any]:
    """Warm up, then one measured wrk run; also the CPU share of the processes ``pids_of``
    names (the server side of this scenario)."""
    if args.warmup > 0:
        run_wrk(url, threads=args.threads, connections=args.connections, seconds=args.warmup)
    pids = pids_of()
    before = [cpu_seconds(pid) for pid in pids]
    started = time.monotonic()
    result = run_wrk(url, threads=args.threads, connections=args.connections,
                     seconds=args.duration)
    elapsed = time.monotonic() - started
    cpu = [round(100 * (cpu_seconds(pid) - b) / elapsed, 1)
           for pid, b in zip(pids, before, strict=True)]
    if not args.json:
        print(f"  {name}: {result.requests_per_s:,.0f} requests/s, p50 {result.p50_ms:.3f} ms, "
              f"p99 {result.p99_ms:.3f} ms", file=sys.stderr, flush=True)
    return {**dataclasses.asdict(result), "failures": result.failures, "cpu_percent": cpu}


def preflight() -> None:
    reason = have_root_netns()
    if reason is not None:
        raise BenchError(f"the benchmark {reason}", EXIT_MISSING)
    for tool, package in (("nginx", "nginx-light"), ("wrk", "wrk")):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            raise BenchError(f"{tool} is not installed (apt-get install {package})",
                             EXIT_MISSING)


def bench(stack: contextlib.ExitStack, args: argparse.Namespace) -> dict[str, Any]:
    preflight()
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="waylay-bench-")))
    os.chmod(workdir, 0o755)  # nginx workers run unprivileged
    ns = stack.enter_context(netns("wlbench"))
    _host_ip, ns_ip = stack.enter_context(veth_pair(ns))
    # Whatever is still running in our namespace when we leave (an agent orphaned by a
    # failed stop) would keep it alive: end it before the namespace is deleted.
    stack.callback(_kill_leftovers, ns)
    origin = stack.enter_context(nginx(ns, ns_ip, ORIGIN_PORT, ORIGIN_SERVERS, workdir,
                                       "origin"))
    url = f"http://{ns_ip}:{ORIGIN_PORT}/"

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    load = os.getloadavg()[0]
    if load > 0.5:
        say(f"waylay bench: load average {load:.2f} before the start: other work on this "
            "machine competes for its CPUs and lowers every figure")
    say(f"waylay bench: namespace {ns} at {ns_ip}; wrk -t{args.threads} "
        f"-c{args.connections} -d{args.duration}s (after a {args.warmup} s warm-up)")

    results: dict[str, Any] = {}
    results["direct"] = _measure("direct", url, args, lambda: children(origin.pid))
    if args.nginx_proxy:
        # Before waylay starts: its OUTPUT -o lo rule would redirect the proxy's upstream too.
        with nginx(ns, ns_ip, PROXY_PORT, PROXY_SERVERS, workdir, "proxy") as proxy:
            results["nginx_proxy"] = _measure(
                "nginx reverse proxy", f"http://{ns_ip}:{PROXY_PORT}/", args,
                lambda: children(proxy.pid) + children(origin.pid))
    profile: dict[str, Any] | None = None
    with waylay_passthrough(ns, ns_ip, workdir) as waylay:
        def agent_pids() -> list[int]:
            worker = waylay.worker_pid()
            return [*([worker] if worker else []), waylay.process.pid, *children(origin.pid)]

        results["agent"] = _measure("through the waylay agent", url, args, agent_pids)
        if args.profile:
            say(f"  profiling the agent worker (pid {waylay.worker_pid()}) with py-spy ...")
            profile = profile_agent(waylay, url, args)
    summary = waylay.summary()
    if waylay.process.returncode not in (0, 130, -signal.SIGINT):
        say(f"waylay run exited with {waylay.process.returncode}: {_tail(waylay.stderr)}")
    return _report(args, ns_ip, results, summary, profile, load)


def _kill_leftovers(ns: str) -> None:
    for pid in namespace_pids(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _report(args: argparse.Namespace, ns_ip: str, results: dict[str, Any], summary: str,
            profile: dict[str, Any] | None, load: float) -> dict[str, Any]:
    direct, agent = results["direct"], results["agent"]
    comparisons = {}
    for name in ("nginx_proxy", "agent"):
        if name in results:
            r = results[name]
            comparisons[name] = {
                "throughput_ratio": round(r["requests_per_s"] / direct["requests_per_s"], 3),
                "added_p50_ms": round(r["p50_ms"] - direct["p50_ms"], 3),
                "added_p99_ms": round(r["p99_ms"] - direct["p99_ms"], 3),
            }
    ratio = comparisons["agent"]["throughput_ratio"]
    added = comparisons["agent"]["added_p50_ms"]
    met = ratio >= TARGET_RATIO and added <= TARGET_ADDED_P50_MS and agent["failures"] == 0
    return {
        "wrk": {"threads": args.threads, "connections": args.connections,
                "duration_s": args.duration, "warmup_s": args.warmup},
        "cpus": os.cpu_count(), "load_average_at_start": round(load, 2), "url": f"http://{ns_ip}:{ORIGIN_PORT}/",
        "results": results, "comparisons": comparisons, "waylay_summary": summary,
        "target": {"min_throughput_ratio": TARGET_RATIO,
                   "max_added_p50_ms": TARGET_ADDED_P50_MS, "met": met},
        "profile": profile,
    }


_LABELS = {"direct": "direct", "nginx_proxy": "nginx reverse proxy",
           "agent": "waylay agent (passthrough)"}


def print_table(report: dict[str, Any]) -> None:
    wrk = report["wrk"]
    print(f"\nwrk -t{wrk['threads']} -c{wrk['connections']} -d{wrk['duration_s']}s, "
          f"nginx `return 200` in a namespace, {report['cpus']} CPUs, load average "
          f"{report['load_average_at_start']:.2f} at the start")
    print(f"{'':28} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6} "
          f"{'+p50 ms':>8} {'+p99 ms':>8} {'errors':>7}  CPU %")
    for name, r in report["results"].items():
        c = report["comparisons"].get(name)
        extra = (f"{c['throughput_ratio']:>5.2f}x {c['added_p50_ms']:>+8.3f} "
                 f"{c['added_p99_ms']:>+8.3f}") if c else f"{'1.00x':>6} {'':>8} {'':>8}"
        cpu = " + ".join(f"{p:.0f}" for p in r["cpu_percent"])
        print(f"{_LABELS[name]:28} {r['requests_per_s']:>11,.0f} {r['p50_ms']:>8.3f} "
              f"{r['p99_ms']:>8.3f} {extra} {r['failures']:>7}  {cpu}")
    print("CPU % (of one core): direct: origin nginx; proxy: proxy nginx + origin nginx; "
          "agent: agent worker + waylay run client + origin nginx")
    if report["waylay_summary"]:
        print(f"waylay: {report['waylay_summary']}")
    target = report["target"]
    c = report["comparisons"]["agent"]
    verdict = "MET" if target["met"] else "NOT MET"
    print(f"target (>= {target['min_throughput_ratio']:.2f}x direct, <= "
          f"{target['max_added_p50_ms']:.2f} ms added p50, no errors): {verdict} "
          f"({c['throughput_ratio']:.2f}x, {c['added_p50_ms']:+.3f} ms, "
          f"{report['results']['agent']['failures']} errors)")
    profile = report["profile"]
    if profile:
        print(f"\nagent worker hot spots (py-spy, {profile['samples']} samples, "
              f"raw stacks in {profile['file']}):")
        for row in profile["breakdown"]:
            indent = "  " if row["what"].startswith("of all") else ""
            print(f"{row['percent']:>7.1f} %  {indent}{row['what']}")
        print(f"\n{'self %':>7} {'total %':>8}  function")
        for row in profile["top"]:
            print(f"{row['self_percent']:>7.1f} {row['total_percent']:>8.1f}  "
                  f"{row['function']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/passthrough.py",
        description="Measure what waylay's passthrough costs: wrk against nginx in a "
        "network namespace, directly, through an nginx reverse proxy, and through the "
        "waylay agent with a filter that matches nothing. Needs root, nginx and wrk.")
    # wrk takes whole seconds only.
    parser.add_argument("-d", "--duration", type=int, default=8, metavar="SECONDS",
                        help="wrk duration of each measured run (default %(default)g)")
    parser.add_argument("-c", "--connections", type=int, default=16,
                        help="wrk keep-alive connections (default %(default)s)")
    parser.add_argument("-t", "--threads", type=int, default=2,
                        help="wrk threads (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, metavar="SECONDS",
                        help="unmeasured wrk run before each measured one (default "
                        "%(default)g; 0: none)")
    parser.add_argument("--nginx-proxy", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure an nginx reverse proxy, the reference point "
                        "(default: on)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout instead of the table")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 unless the target is met (>= {TARGET_RATIO}x direct "
                        f"throughput, <= {TARGET_ADDED_P50_MS} ms added p50)")
    parser.add_argument("--profile", metavar="FILE",
                        help="one more agent run under py-spy: write its raw stacks to FILE "
                        "and print the agent worker's hot spots")
    parser.add_argument("--profile-native", action="store_true",
                        help="with --profile: include native frames (uvloop, the kernel "
                        "boundary)")
    parser.add_argument("--profile-top", type=int, default=20, metavar="N",
                        help="with --profile: how many functions to list (default "
                        "%(default)s)")
    return parser


class _Interrupted:
    """Signal handler: the first SIGINT / SIGTERM / SIGHUP raises KeyboardInterrupt; later
    ones are ignored, so a second Ctrl-C cannot cut the cleanup short (the agent's rules,
    nginx, the namespace)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum = signum
            print("bench: interrupted; cleaning up", file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        print("bench: still cleaning up", file=sys.stderr, flush=True)


_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration <= 0 or args.connections < 1 or not 1 <= args.threads <= args.connections:
        print("bench: need -d > 0, -c >= 1 and 1 <= -t <= -c", file=sys.stderr)
        return EXIT_USAGE
    return run(args, bench, print_table)


def run(args: argparse.Namespace,
        measure: Callable[[contextlib.ExitStack, argparse.Namespace], dict[str, Any]],
        show: Callable[[dict[str, Any]], None]) -> int:
    """Measure with signals handled (a second Ctrl-C never cuts the cleanup), then report;
    shared by the HTTP/2 benchmark."""
    interrupted = _Interrupted()
    previous = {sig: signal.signal(sig, interrupted) for sig in _HANDLED_SIGNALS}
    try:
        with contextlib.ExitStack() as stack:
            report = measure(stack, args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 128 + (interrupted.signum or signal.SIGINT)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report)
    return 1 if args.check and not report["target"]["met"] else 0


if __name__ == "__main__":
    sys.exit(main())
