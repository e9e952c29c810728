"""HTTP/2 passthrough benchmark: what a filtered steal costs the h2 streams it does not take.

Theory of operation. Like ``bench/passthrough.py`` (whose helpers it reuses), it builds
its own network namespace with a veth pair and runs nginx inside, here serving h2c with
prior knowledge (``listen 80 http2``, ``return 200``). ``h2load`` on the host loads the
namespace's own address (docs/architecture.md §5), many streams per connection:

1. **direct**: h2load straight at nginx:80.
2. **waylay agent**: ``waylay run -t netns/NS -p 80:LOCAL`` with a header filter that no
   request matches: port 80 is REDIRECTed to the agent, which routes every h2 stream
   (``waylay.core.engine.h2_router``) and passes it through to nginx on its own upstream h2
   connection. h2load hits the very same URL as in (1).

The issue's first target: through the agent, at least ``TARGET_RATIO`` of the direct
throughput, with no failed request.

Everything started here (nginx, waylay, the namespace and its veth) is stopped in
``finally`` blocks, also on Ctrl-C. Every load is bounded by ``h2load -D``. Needs root,
nginx (with its HTTP/2 module, as Debian's nginx-light has) and h2load (nghttp2-client).

Usage: ``.venv/bin/python bench/h2_passthrough.py [-d SECONDS] [-c CLIENTS]
[-m STREAMS] [-t THREADS] [--json] [--check]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.passthrough import (  # noqa: E402
    EXIT_MISSING,
    EXIT_USAGE,
    NEVER_MATCHING_FILTER,
    ORIGIN_PORT,
    STARTUP_TIMEOUT_S,
    STOP_TIMEOUT_S,
    BenchError,
    Waylay,
    _frame_name,
    _free_local_port,
    _kill_leftovers,
    _redirect_installed,
    _stop,
    _tail,
    children,
    cpu_seconds,
    nginx,
    run,
)
from tests.netns import have_root_netns, netns, veth_pair  # noqa: E402

TARGET_RATIO = 0.08
"""The issue's target: h2 passthrough throughput at least this fraction of direct."""

H2LOAD_SLACK_S = 30.0  # h2load -D bounds the load; this bounds a wedged h2load

ORIGIN_SERVERS = f"""\
    server {{
        listen {ORIGIN_PORT} http2;
        http2_max_concurrent_streams 256;
        keepalive_requests 100000000;
        location / {{ return 200 "ok\\n"; }}
    }}"""


# --- h2load -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class H2loadResult:
    """What one h2load run measured (request times in milliseconds)."""

    requests_per_s: float
    succeeded: int
    failed: int
    errored: int
    non_2xx: int
    mean_ms: float
    max_ms: float

    @property
    def failures(self) -> int:
        return self.failed + self.errored + self.non_2xx


_TIME_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_RATE = re.compile(r"^finished in [\d.]+\w+, ([\d.]+) req/s", re.M)
_REQUESTS = re.compile(r"^requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored", re.M)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_REQUEST_TIME = re.compile(r"^time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+"
                           r"([\d.]+)(us|ms|s)", re.M)


def parse_h2load(text: str) -> H2loadResult:
    """Parse h2load's summary; raises ValueError naming what is missing."""
    rate, requests = _RATE.search(text), _REQUESTS.search(text)
    status, times = _STATUS.search(text), _REQUEST_TIME.search(text)
    missing = [name for name, found in (("req/s", rate), ("requests:", requests),
                                        ("status codes:", status),
                                        ("time for request:", times)) if found is None]
    if missing or rate is None or requests is None or status is None or times is None:
        raise ValueError(f"h2load output lacks {', '.join(missing)}:\n{text}")
    return H2loadResult(
        requests_per_s=float(rate.group(1)),
        succeeded=int(requests.group(1)), failed=int(requests.group(2)),
        errored=int(requests.group(3)),
        non_2xx=sum(int(status.group(i)) for i in (2, 3, 4)),
        max_ms=float(times.group(3)) * _TIME_MS[times.group(4)],
        mean_ms=float(times.group(5)) * _TIME_MS[times.group(6)],
    )


def run_h2load(url: str, args: argparse.Namespace, seconds: int) -> H2loadResult:
    argv = ["h2load", f"-c{args.clients}", f"-m{args.streams}", f"-t{args.threads}",
            f"-D{seconds}", url]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env,
                          timeout=seconds + H2LOAD_SLACK_S)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed (exit {done.returncode}): "
                         f"{done.stderr.strip() or done.stdout.strip()}")
    try:
        return parse_h2load(done.stdout)
    except ValueError as exc:
        raise BenchError(str(exc)) from None


def _measure(name: str, url: str, args: argparse.Namespace,
             pids_of: Callable[[], list[int]]) -> dict[str, Any]:
    if args.warmup > 0:
        run_h2load(url, args, args.warmup)
    pids = pids_of()
    before = [cpu_seconds(pid) for pid in pids]
    started = time.monotonic()
    result = run_h2load(url, args, args.duration)
    elapsed = time.monotonic() - started
    cpu = [round(100 * (cpu_seconds(pid) - b) / elapsed, 1)
           for pid, b in zip(pids, before, strict=True)]
    if not args.json:
        print(f"  {name}: {result.requests_per_s:,.0f} requests/s, mean "
              f"{result.mean_ms:.3f} ms, {result.failures} failures", file=sys.stderr,
              flush=True)
    return {**dataclasses.asdict(result), "failures": result.failures, "cpu_percent": cpu}


# --- waylay -------------------------------------------------------------------------------


def _h2_get(url: str) -> str:
    done = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10",
                           "--http2-prior-knowledge", url], capture_output=True, text=True,
                          check=False, timeout=20)
    return done.stdout if done.returncode == 0 else f"curl failed: {done.stderr.strip()}"


@contextlib.contextmanager
def waylay_h2_passthrough(ns: str, ns_ip: str, workdir: Path) -> Iterator[Waylay]:
    """``waylay run`` stealing port 80 with a filter nothing matches; SIGINT on exit."""
    executable = Path(sys.executable).parent / "waylay"
    if not executable.exists():
        raise BenchError(f"{executable} not found: run ./dev setup", EXIT_MISSING)
    config = workdir / "waylay.json"
    config.write_text(json.dumps({"feature": {"network": {"incoming": {
        "mode": "steal", "http_filter": {"header_filter": NEVER_MATCHING_FILTER}}}}}))
    log = workdir / "waylay.stderr"
    argv = [str(executable), "run", "-t", f"netns/{ns}", "-f", str(config),
            "-p", f"{ORIGIN_PORT}:{_free_local_port()}", "--events", "/dev/null", "-q",
            "--ttl", "5"]
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
        answer = _h2_get(f"http://{ns_ip}:{ORIGIN_PORT}/")
        if answer != "ok\n":
            raise BenchError(f"an h2 request through the agent got {answer[:200]!r}")
        yield running
    finally:
        _stop(process, signal.SIGINT, STOP_TIMEOUT_S)


# --- profiling ----------------------------------------------------------------------------

# Where the agent's time goes, by the first rule a sample's stack meets (leaf = the
# innermost frame). Names of agent functions: update them when the agent is refactored.
_Rule = Callable[[list[str]], bool]
_WRITE_LEAVES = ("write (", "writelines (", "writev (libc", "send (libc", "_write_ready (")
_READ_LEAVES = ("recv (libc", "read (libc", "_read_ready (")
_BREAKDOWN: tuple[tuple[str, _Rule], ...] = (
    ("socket writes (the syscall, and waiting for the CPU after it woke the peer)",
     lambda frames: frames[-1].startswith(_WRITE_LEAVES)),
    ("HPACK (hpack, core/engine/h2_codec.py)",
     lambda frames: any("hpack/" in f or "h2_codec.py" in f for f in frames)),
    ("the h2 package (frames, stream states, windows)",
     lambda frames: any("h2/" in f or "hyperframe/" in f for f in frames)),
    ("flow records sent to the session (Agent.record)",
     lambda frames: any(f.startswith("Agent.record (") for f in frames)),
    ("the HTTP filter (decide)",
     lambda frames: any("core/engine/filters.py" in f or "registry.py" in f for f in frames)),
    ("HTTP/2 router (core/h2_*.py, own code)",
     lambda frames: any("core/h2_" in f for f in frames)),
    ("the driver (agent/h2_connection.py, own code)",
     lambda frames: any("agent/h2_connection.py" in f for f in frames)),
    ("socket reads", lambda frames: frames[-1].startswith(_READ_LEAVES)),
    ("event loop itself (uvloop, epoll)",
     lambda frames: frames[-1].startswith(("Runner.run (", "epoll_pwait (", "run_forever ("))),
    ("everything else", lambda frames: True),
)


def h2_hot_spots(raw: str, top: int) -> dict[str, Any]:
    """Summarise py-spy's raw (collapsed) stacks of the event-loop thread: a breakdown
    (first matching rule) and the top functions by self time (percent of samples)."""
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
            continue  # a helper thread parked on its queue: not the event loop
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or ["?"]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        rows[next(label for label, rule in _BREAKDOWN if rule(frames))] += count
    if not samples:
        return {"samples": 0, "breakdown": [], "top": []}
    return {
        "samples": samples,
        "breakdown": [{"what": label, "percent": round(100 * rows[label] / samples, 1)}
                      for label, _ in _BREAKDOWN],
        "top": [{"function": name, "self_percent": round(100 * n / samples, 1),
                 "total_percent": round(100 * inclusive[name] / samples, 1)}
                for name, n in own.most_common(top)],
    }


def profile_agent(waylay: Waylay, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One more h2load run with py-spy sampling the agent worker; its hot spots."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(py_spy, os.X_OK):
        raise BenchError("py-spy not found: .venv/bin/pip install py-spy", EXIT_MISSING)
    pid = waylay.worker_pid()
    if pid is None:
        raise BenchError("cannot find the agent worker process in the namespace")
    argv = [py_spy, "record", "--pid", str(pid), "--format", "raw", "-o", args.profile,
            "--duration", str(max(1, args.duration - 1)), "--rate", "250",
            "--native" if args.profile_native else "--nonblocking"]
    spy = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)  # let py-spy attach before the load starts
        run_h2load(url, args, args.duration)
        output, _ = spy.communicate(timeout=H2LOAD_SLACK_S)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0:
        raise BenchError(f"py-spy failed ({spy.returncode}): {output.strip()}")
    spots = h2_hot_spots(Path(args.profile).read_text(), args.profile_top)
    return {"file": args.profile, "pid": pid, "native": args.profile_native, **spots}


# --- the benchmark ------------------------------------------------------------------------


def preflight() -> None:
    reason = have_root_netns()
    if reason is not None:
        raise BenchError(f"the benchmark {reason}", EXIT_MISSING)
    for tool, package in (("nginx", "nginx-light"), ("h2load", "nghttp2-client"),
                          ("curl", "curl")):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            raise BenchError(f"{tool} is not installed (apt-get install {package})",
                             EXIT_MISSING)


def bench(stack: contextlib.ExitStack, args: argparse.Namespace) -> dict[str, Any]:
    preflight()
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="waylay-h2bench-")))
    os.chmod(workdir, 0o755)  # nginx workers run unprivileged
    ns = stack.enter_context(netns("wlh2bench"))
    _host_ip, ns_ip = stack.enter_context(veth_pair(ns))
    stack.callback(_kill_leftovers, ns)
    origin = stack.enter_context(nginx(ns, ns_ip, ORIGIN_PORT, ORIGIN_SERVERS, workdir,
                                       "origin"))
    url = f"http://{ns_ip}:{ORIGIN_PORT}/"
    load = os.getloadavg()[0]
    if not args.json:
        print(f"waylay h2 bench: namespace {ns} at {ns_ip}; h2load -c{args.clients} "
              f"-m{args.streams} -t{args.threads} -D{args.duration} (after a "
              f"{args.warmup} s warm-up); load average {load:.2f}", file=sys.stderr,
              flush=True)
    results: dict[str, Any] = {}
    results["direct"] = _measure("direct", url, args, lambda: children(origin.pid))
    with waylay_h2_passthrough(ns, ns_ip, workdir) as waylay:
        def agent_pids() -> list[int]:
            worker = waylay.worker_pid()
            return [*([worker] if worker else []), waylay.process.pid, *children(origin.pid)]

        results["agent"] = _measure("through the waylay agent", url, args, agent_pids)
        profile: dict[str, Any] | None = None
        if args.profile:
            if not args.json:
                print(f"  profiling the agent worker (pid {waylay.worker_pid()}) with "
                      "py-spy ...", file=sys.stderr, flush=True)
            profile = profile_agent(waylay, url, args)
    ratio = round(results["agent"]["requests_per_s"] / results["direct"]["requests_per_s"], 3)
    met = ratio >= TARGET_RATIO and results["agent"]["failures"] == 0
    return {"h2load": {"clients": args.clients, "streams": args.streams,
                       "threads": args.threads, "duration_s": args.duration,
                       "warmup_s": args.warmup},
            "cpus": os.cpu_count(), "load_average_at_start": round(load, 2), "url": url,
            "results": results, "throughput_ratio": ratio,
            "waylay_summary": waylay.summary(), "profile": profile,
            "target": {"min_throughput_ratio": TARGET_RATIO, "met": met}}


def print_table(report: dict[str, Any]) -> None:
    h = report["h2load"]
    print(f"\nh2load -c{h['clients']} -m{h['streams']} -t{h['threads']} -D{h['duration_s']}, "
          f"nginx h2c `return 200` in a namespace, {report['cpus']} CPUs, load average "
          f"{report['load_average_at_start']:.2f} at the start")
    print(f"{'':28} {'requests/s':>11} {'mean ms':>8} {'max ms':>8} {'ratio':>6} "
          f"{'failures':>8}  CPU %")
    direct = report["results"]["direct"]["requests_per_s"]
    labels = {"direct": "direct", "agent": "waylay agent (passthrough)"}
    for name, r in report["results"].items():
        cpu = " + ".join(f"{p:.0f}" for p in r["cpu_percent"])
        print(f"{labels[name]:28} {r['requests_per_s']:>11,.0f} {r['mean_ms']:>8.3f} "
              f"{r['max_ms']:>8.3f} {r['requests_per_s'] / direct:>5.2f}x "
              f"{r['failures']:>8}  {cpu}")
    print("CPU % (of one core): direct: origin nginx; agent: agent worker + waylay run "
          "client + origin nginx")
    if report["waylay_summary"]:
        print(f"waylay: {report['waylay_summary']}")
    target = report["target"]
    print(f"target (>= {target['min_throughput_ratio']:.2f}x direct, no failures): "
          f"{'MET' if target['met'] else 'NOT MET'} ({report['throughput_ratio']:.2f}x)")
    profile = report.get("profile")
    if profile:
        print(f"\nagent worker hot spots (py-spy, {profile['samples']} samples, "
              f"raw stacks in {profile['file']}):")
        for row in profile["breakdown"]:
            print(f"{row['percent']:>7.1f} %  {row['what']}")
        print(f"\n{'self %':>7} {'total %':>8}  function")
        for row in profile["top"]:
            print(f"{row['self_percent']:>7.1f} {row['total_percent']:>8.1f}  "
                  f"{row['function']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/h2_passthrough.py",
        description="Measure what waylay's HTTP/2 passthrough costs: h2load against nginx "
        "(h2c) in a network namespace, directly and through the waylay agent with a filter "
        "that matches nothing. Needs root, nginx and h2load.")
    parser.add_argument("-d", "--duration", type=int, default=8, metavar="SECONDS",
                        help="h2load duration of each measured run (default %(default)s)")
    parser.add_argument("-c", "--clients", type=int, default=16,
                        help="h2load clients, one connection each (default %(default)s)")
    parser.add_argument("-m", "--streams", type=int, default=10,
                        help="concurrent streams per connection (default %(default)s)")
    parser.add_argument("-t", "--threads", type=int, default=2,
                        help="h2load threads (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, metavar="SECONDS",
                        help="unmeasured run before each measured one (default %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout instead of the table")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 unless the target is met (>= {TARGET_RATIO}x direct)")
    parser.add_argument("--profile", metavar="FILE",
                        help="one more agent run under py-spy: write its raw stacks to FILE "
                        "and print the agent worker's hot spots")
    parser.add_argument("--profile-native", action="store_true",
                        help="with --profile: include native frames (uvloop, libc)")
    parser.add_argument("--profile-top", type=int, default=25, metavar="N",
                        help="with --profile: how many functions to list (default "
                        "%(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration <= 0 or args.clients < 1 or args.streams < 1 or not (
        1 <= args.threads <= args.clients
    ):
        print("bench: need -d > 0, -c >= 1, -m >= 1 and 1 <= -t <= -c", file=sys.stderr)
        return EXIT_USAGE
    return run(args, bench, print_table)


if __name__ == "__main__":
    sys.exit(main())
