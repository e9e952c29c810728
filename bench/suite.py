"""The benchmark suite: every figure of the agent's speed targets, measured in one run, as
one table of ratios (``./dev bench``).

Theory of operation. One network namespace with a veth pair to the host, nginx
(``return 200``) inside it as the origin on :80, and a second nginx on the host's loopback
as the developer's local app. wrk on the host loads the namespace's own address, keep-alive
(docs/architecture.md §5). In this order, so that each baseline runs before waylay's OUTPUT ``-o
lo``
rule would redirect the namespace's own loopback traffic:

1. ``direct``: wrk -> nginx:80.
2. ``proxy``: wrk -> nginx reverse proxy :8081 -> nginx:80 (what a good C proxy costs).
3. ``floor``: wrk -> ``bench/floor_relay.py`` :8082 -> nginx:80: a minimal uvloop +
   httptools relay that parses every request head and runs one regex search, "Python's
   own speed limit"; the agent is judged as a ratio of it. With ``memory``, the relay's
   memory per idle connection is measured too, as the floor of that figure.
4. the local app directly, one connection (the baseline of the stolen path's latency).
5. ``waylay run -p 80:LOCAL`` with a header filter: port 80 is REDIRECTed to the agent.
   ``memory``: 10,000 idle keep-alive connections through the agent
   (``bench/idle_memory.py``). ``passthrough``: wrk -> :80 without the header; every
   request is passed through to nginx. ``steal``: wrk -> :80 with the header; every request
   is stolen: agent -> wire -> ``waylay run`` -> local app, on one connection and on 16.
6. ``h2``: ``bench/h2_passthrough.py --json`` as a subprocess (its own namespace, h2load);
   its failure or absence is a line in the table, not the end of the run.

The figures of one run are compared with each other (ratios, added latency), never with
figures of another run or machine. Everything started here (namespace, nginx, relay,
waylay and its agent, the h2 benchmark) is stopped on exit, also on Ctrl-C; a second
Ctrl-C does not cut the cleanup short. Every load is bounded by ``wrk -d``.

Usage: ``./dev bench [-d SECONDS] [--only NAME,...] [--json] [--check]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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

from bench import idle_memory  # noqa: E402
from bench.passthrough import (  # noqa: E402
    EXIT_USAGE,
    NEVER_MATCHING_FILTER,
    ORIGIN_PORT,
    ORIGIN_SERVERS,
    PROXY_PORT,
    PROXY_SERVERS,
    TARGET_RATIO,
    BenchError,
    Waylay,
    _free_local_port,
    _kill_leftovers,
    _stop,
    _tail,
    _wait_listening,
    children,
    cpu_seconds,
    nginx,
    preflight,
    run,
    run_wrk,
    waylay_passthrough,
)
from tests.netns import netns, ns_popen, veth_pair  # noqa: E402

# The targets of the speed issue. A row with errors never meets its target.
TARGET_VS_DIRECT = TARGET_RATIO  # passthrough throughput / direct
TARGET_VS_FLOOR = 0.8  # passthrough throughput / the floor relay's
TARGET_ADDED_P50_MS = 0.5  # passthrough p50 - direct p50
TARGET_H2_RATIO = 0.08  # HTTP/2 passthrough throughput / HTTP/2 direct
TARGET_STEAL_ADDED_P50_MS = 0.5  # stolen p50 - local app p50, one connection each
TARGET_STEAL_RPS = 10_000  # stolen requests/s, 16 connections
TARGET_KIB = idle_memory.TARGET_KIB_PER_CONNECTION
TARGET_TUI_LAG_P95_MS = 50.0  # the dashboard's event-loop lag at TUI_RATE requests/s

SCENARIOS = ("direct", "proxy", "floor", "passthrough", "steal", "memory", "h2", "tui")
# What a scenario's ratios need; ``--only`` measures these too.
NEEDS = {"proxy": ("direct",), "floor": ("direct",), "passthrough": ("direct", "floor")}

FLOOR_PORT = 8082
STEAL_HEADER = NEVER_MATCHING_FILTER  # the filter's header: wrk sends it on stolen rows only
LOCAL_BODY = b"local\n"  # the local app's answer: tells a stolen answer from a passed one
H2_SCRIPT = REPO / "bench" / "h2_passthrough.py"
H2_SLACK_S = 90.0  # beyond its two loads: setup, warm-ups, waylay's start and stop
TUI_SCRIPT = REPO / "bench" / "tui_lag.py"
TUI_RATE = 5000  # requests/s of the dashboard target
TUI_SLACK_S = 60.0  # beyond its flood: the app's start, the drain (10 s at most), the exit
SUBPROCESS_STOP_S = 60.0  # after our SIGINT, a benchmark subprocess's own cleanup


def local_servers(port: int) -> str:
    return f"""\
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 100000000;
        location / {{ return 200 "{LOCAL_BODY.decode().strip()}\\n"; }}
    }}"""


# --- measuring ----------------------------------------------------------------------------


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text, file=sys.stderr, flush=True)


def _load(args: argparse.Namespace, label: str, url: str, connections: int,
          cpu_of: Callable[[], dict[str, int]], headers: Sequence[str] = ()) -> dict[str, Any]:
    """A warm-up, then one measured wrk run; the CPU share of the processes ``cpu_of``
    names (the intermediaries of this path), in percent of one core."""
    threads = min(2, connections)
    if args.warmup > 0:
        run_wrk(url, threads=threads, connections=connections, seconds=args.warmup,
                headers=headers)
    pids = cpu_of()
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    result = run_wrk(url, threads=threads, connections=connections, seconds=args.duration,
                     headers=headers)
    elapsed = time.monotonic() - started
    cpu = {name: round(100 * (cpu_seconds(pid) - before[name]) / elapsed)
           for name, pid in pids.items()}
    _say(args, f"  {label}: {result.requests_per_s:,.0f} requests/s, p50 "
         f"{result.p50_ms:.3f} ms, {result.failures} errors")
    return {"label": label, "connections": connections,
            "requests_per_s": result.requests_per_s, "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms, "errors": result.failures, "cpu_percent": cpu}


def _get(host: str, port: int, headers: Sequence[str] = ()) -> bytes:
    """The body of one GET (raw socket: ``http.client`` would add nothing, but this shows
    exactly what is sent)."""
    lines = "".join(f"{h}\r\n" for h in headers)
    request = f"GET / HTTP/1.1\r\nHost: bench\r\n{lines}Connection: close\r\n\r\n".encode()
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        for _ in range(1000):  # bounded: the answers here are a few hundred bytes
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer.partition(b"\r\n\r\n")[2]


@contextlib.contextmanager
def floor_relay(ns: str, ns_ip: str, workdir: Path) -> Iterator[subprocess.Popen[Any]]:
    """``bench/floor_relay.py`` in ``ns`` on :FLOOR_PORT, relaying to nginx:80."""
    log = workdir / "floor.stderr"
    argv = [sys.executable, str(REPO / "bench" / "floor_relay.py"),
            "--listen", f"0.0.0.0:{FLOOR_PORT}", "--upstream", f"127.0.0.1:{ORIGIN_PORT}"]
    with open(log, "wb") as err:
        process = ns_popen(ns, argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                           start_new_session=True)
    try:
        _wait_listening((ns_ip, FLOOR_PORT), process, log, "the floor relay")
        body = _get(ns_ip, FLOOR_PORT)
        if body != b"ok\n":
            raise BenchError(f"a request through the floor relay got {body[:200]!r}")
        yield process
    finally:
        _stop(process, signal.SIGTERM, 10)


def _memory(args: argparse.Namespace, label: str, pid: int, host: str,
            port: int) -> dict[str, Any]:
    result = idle_memory.measure(pid, host, port, args.memory_connections).as_dict()
    _say(args, f"  {label}: {result['kib_per_connection']:.2f} KiB per idle connection "
         f"({result['connections']:,} held, {result['failures']} failed)")
    return {"label": label, **result}


def _first(items: list[int]) -> dict[str, int]:
    return {"nginx": items[0]} if items else {}


def measure_http1(stack: contextlib.ExitStack, args: argparse.Namespace,
                  selected: set[str], report: dict[str, Any]) -> None:
    rows: dict[str, Any] = report["rows"]
    memory: dict[str, Any] = report["memory"]
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="waylay-suite-")))
    os.chmod(workdir, 0o755)  # nginx workers run unprivileged
    ns = stack.enter_context(netns("wlsuite"))
    _host_ip, ns_ip = stack.enter_context(veth_pair(ns))
    # Whatever still runs in the namespace when we leave (an agent orphaned by a failed
    # stop) would keep it alive: end it before the namespace is deleted.
    stack.callback(_kill_leftovers, ns)
    origin = stack.enter_context(nginx(ns, ns_ip, ORIGIN_PORT, ORIGIN_SERVERS, workdir,
                                       "origin"))
    url = f"http://{ns_ip}:{ORIGIN_PORT}/"
    report["url"] = url
    _say(args, f"waylay bench: namespace {ns} at {ns_ip}; each load: {args.warmup} s "
         f"warm-up, then {args.duration} s measured")

    if "direct" in selected:
        rows["direct"] = _load(args, "HTTP/1.1 direct (nginx)", url, args.connections,
                               lambda: _first(children(origin.pid)))
    if "proxy" in selected:
        with nginx(ns, ns_ip, PROXY_PORT, PROXY_SERVERS, workdir, "proxy") as proxy:
            rows["proxy"] = _load(args, "nginx reverse proxy", f"http://{ns_ip}:{PROXY_PORT}/",
                                  args.connections, lambda: _first(children(proxy.pid)))
    if "floor" in selected or "memory" in selected:
        with floor_relay(ns, ns_ip, workdir) as relay:
            if "floor" in selected:
                rows["floor"] = _load(args, "floor relay (uvloop+httptools+regex)",
                                      f"http://{ns_ip}:{FLOOR_PORT}/", args.connections,
                                      lambda: {"relay": relay.pid})
            if "memory" in selected:
                memory["floor"] = _memory(args, "floor relay", relay.pid, ns_ip, FLOOR_PORT)

    if not selected & {"passthrough", "steal", "memory"}:
        return
    local_port = _free_local_port()
    local = stack.enter_context(nginx(None, "127.0.0.1", local_port,
                                      local_servers(local_port), workdir, "local"))
    if "steal" in selected:
        rows["local_1"] = _load(args, "local app direct, 1 connection",
                                f"http://127.0.0.1:{local_port}/", 1,
                                lambda: _first(children(local.pid)))
    with waylay_passthrough(ns, ns_ip, workdir, local_port=local_port) as waylay:
        worker = waylay.worker_pid()
        if worker is None:
            raise BenchError("cannot find the agent worker process in the namespace")
        body = _get(ns_ip, ORIGIN_PORT, [STEAL_HEADER])
        if body != LOCAL_BODY:
            raise BenchError(f"a request with {STEAL_HEADER!r} was not stolen: it got "
                             f"{body[:200]!r}")

        def agent_cpu() -> dict[str, int]:
            return {"agent": worker}

        def steal_cpu() -> dict[str, int]:
            return {"agent": worker, "client": waylay.process.pid}

        if "memory" in selected:
            memory["agent"] = _memory(args, "waylay agent", worker, ns_ip, ORIGIN_PORT)
            time.sleep(1)  # let the agent finish closing them before the next load
        if "passthrough" in selected:
            rows["passthrough"] = _load(args, "waylay passthrough, filtered port", url,
                                        args.connections, agent_cpu)
        if "steal" in selected:
            rows["steal_1"] = _load(args, "stolen, 1 connection", url, 1, steal_cpu,
                                    [STEAL_HEADER])
            rows["steal_16"] = _load(args, "stolen, 16 connections", url, 16, steal_cpu,
                                     [STEAL_HEADER])
    report["waylay_summary"] = _summary(waylay)
    report["warnings"] += waylay.warnings


def _summary(waylay: Waylay) -> str:
    summary = waylay.summary()
    if waylay.process.returncode not in (0, 130, -signal.SIGINT):
        summary += (f" (waylay run exited with {waylay.process.returncode}: "
                    f"{_tail(waylay.stderr, 500)})")
    return summary


def _json_subprocess(script: Path, options: Sequence[str], timeout: float) -> dict[str, Any]:
    """``script --json OPTIONS`` in a subprocess: its JSON document, or ``{"error": ...}``
    saying why there is none. A Ctrl-C here is passed on as one SIGINT and its cleanup is
    awaited (bounded): the HTTP/2 benchmark owns a namespace and an agent of its own."""
    name = str(script.relative_to(REPO))
    if not script.exists():
        return {"error": f"{name} is missing"}
    argv = [sys.executable, str(script), "--json", *options]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # Its own session: our signal handler decides what it gets, exactly once.
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                   start_new_session=True)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _stop(process, signal.SIGINT, SUBPROCESS_STOP_S)
            return {"error": f"{name} did not finish in {timeout:g} s"}
        finally:
            # KeyboardInterrupt included: its cleanup must run.
            _stop(process, signal.SIGINT, SUBPROCESS_STOP_S)
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if process.returncode != 0:
        return {"error": f"{name} exited {process.returncode}: "
                         f"{errors.strip()[-400:] or text.strip()[-400:]}"}
    try:
        document = json.loads(text)
    except ValueError as exc:
        return {"error": f"cannot read {name} --json ({exc}): {text.strip()[:300]}"}
    if not isinstance(document, dict):
        return {"error": f"{name} --json printed no object: {text.strip()[:300]}"}
    return document


def measure_h2(args: argparse.Namespace) -> dict[str, Any]:
    """The HTTP/2 rows, from ``bench/h2_passthrough.py --json`` (or ``{"error": ...}``)."""
    options = ["-d", str(args.duration), "--warmup", str(args.warmup)]
    _say(args, f"  HTTP/2: bench/h2_passthrough.py --json {' '.join(options)}")
    h2 = _json_subprocess(H2_SCRIPT, options, 2 * (args.duration + args.warmup) + H2_SLACK_S)
    if "error" in h2:
        return h2
    try:
        direct, agent = h2["results"]["direct"], h2["results"]["agent"]
        for result in (direct, agent):
            float(result["requests_per_s"])
    except (KeyError, TypeError, ValueError) as exc:
        return {"error": f"bench/h2_passthrough.py --json lacks {exc!r}"}
    _say(args, f"  HTTP/2: direct {direct['requests_per_s']:,.0f}, through the agent "
         f"{agent['requests_per_s']:,.0f} requests/s")
    return {"direct": direct, "agent": agent, "h2load": h2.get("h2load"),
            "waylay_summary": h2.get("waylay_summary", "")}


def measure_tui(args: argparse.Namespace) -> dict[str, Any]:
    """The dashboard row, from ``bench/tui_lag.py --json`` (or ``{"error": ...}``)."""
    options = ["--rate", f"{TUI_RATE}", "--duration", str(args.duration)]
    _say(args, f"  dashboard: bench/tui_lag.py --json {' '.join(options)}")
    tui = _json_subprocess(TUI_SCRIPT, options, args.duration + TUI_SLACK_S)
    if "error" in tui:
        return tui
    try:
        for value in (tui["lag"]["p95_ms"], tui["sent"], tui["received"]):
            float(value)
    except (KeyError, TypeError, ValueError) as exc:
        return {"error": f"bench/tui_lag.py --json lacks {exc!r}"}
    _say(args, f"  dashboard: event-loop lag p95 {tui['lag']['p95_ms']:.1f} ms, "
         f"{tui['received']:,} of {tui['sent']:,} events received")
    return tui


# --- the report ---------------------------------------------------------------------------


def _ratio(rows: dict[str, Any], name: str, baseline: str) -> float | None:
    if name not in rows or baseline not in rows or not rows[baseline]["requests_per_s"]:
        return None
    ratio: float = rows[name]["requests_per_s"] / rows[baseline]["requests_per_s"]
    return round(ratio, 3)


def _target(what: str, measured: str, target: str, met: bool | None) -> dict[str, Any]:
    return {"what": what, "measured": measured, "target": target, "met": met}


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per target of the speed issue that this run measured (``met`` None: its
    baseline was not measured)."""
    rows, memory, h2 = report["rows"], report["memory"], report.get("h2")
    found = []
    if "passthrough" in rows:
        agent = rows["passthrough"]
        clean = agent["errors"] == 0
        for baseline, minimum in (("direct", TARGET_VS_DIRECT), ("floor", TARGET_VS_FLOOR)):
            ratio = _ratio(rows, "passthrough", baseline)
            found.append(_target(
                f"HTTP/1.1 passthrough vs {baseline}", "-" if ratio is None else f"{ratio:.2f}x",
                f">= {minimum:.2f}x", None if ratio is None else clean and ratio >= minimum))
        if "direct" in rows:
            added = agent["p50_ms"] - rows["direct"]["p50_ms"]
            found.append(_target("HTTP/1.1 passthrough added p50", f"{added:+.3f} ms",
                                 f"<= +{TARGET_ADDED_P50_MS} ms",
                                 clean and added <= TARGET_ADDED_P50_MS))
        found.append(_target("HTTP/1.1 passthrough errors", f"{agent['errors']}", "0", clean))
    if h2 is not None:
        if "error" in h2:
            found.append(_target("HTTP/2 passthrough vs direct", "not measured",
                                 f">= {TARGET_H2_RATIO:.2f}x, 0 failures", None))
        else:
            ratio = h2["agent"]["requests_per_s"] / max(1e-9, h2["direct"]["requests_per_s"])
            failures = h2["agent"].get("failures", 0)
            found.append(_target("HTTP/2 passthrough vs direct",
                                 f"{ratio:.2f}x, {failures} failures",
                                 f">= {TARGET_H2_RATIO:.2f}x, 0 failures",
                                 failures == 0 and ratio >= TARGET_H2_RATIO))
    if "steal_1" in rows and "local_1" in rows:
        steal = rows["steal_1"]
        added = steal["p50_ms"] - rows["local_1"]["p50_ms"]
        found.append(_target("stolen, 1 connection: added p50", f"{added:+.3f} ms",
                             f"<= +{TARGET_STEAL_ADDED_P50_MS} ms",
                             steal["errors"] == 0 and added <= TARGET_STEAL_ADDED_P50_MS))
    if "steal_16" in rows:
        steal = rows["steal_16"]
        found.append(_target("stolen, 16 connections", f"{steal['requests_per_s']:,.0f} req/s",
                             f">= {TARGET_STEAL_RPS:,} req/s",
                             steal["errors"] == 0 and steal["requests_per_s"] >= TARGET_STEAL_RPS))
    tui = report.get("tui")
    if tui is not None:
        if "error" in tui:
            found.append(_target("dashboard lag p95, nothing lost", "not measured",
                                 f"<= {TARGET_TUI_LAG_P95_MS:g} ms, all", None))
        else:
            lag, lost = tui["lag"]["p95_ms"], tui["sent"] - tui["received"]
            found.append(_target("dashboard lag p95, nothing lost",
                                 f"{lag:.1f} ms, {lost:,} lost",
                                 f"<= {TARGET_TUI_LAG_P95_MS:g} ms, 0 lost",
                                 lost <= 0 and lag <= TARGET_TUI_LAG_P95_MS))
    if "agent" in memory:
        m = memory["agent"]
        found.append(_target("agent memory per idle connection",
                             f"{m['kib_per_connection']:.2f} KiB", f"<= {TARGET_KIB:g} KiB",
                             m["failures"] == 0 and m["kib_per_connection"] <= TARGET_KIB))
    return found


def bench(stack: contextlib.ExitStack, args: argparse.Namespace) -> dict[str, Any]:
    preflight()
    selected = set(args.only)
    report: dict[str, Any] = {
        "cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                     "connections": args.connections,
                     "memory_connections": args.memory_connections},
        "scenarios": [name for name in SCENARIOS if name in selected],
        "rows": {}, "memory": {}, "waylay_summary": "", "warnings": [],
    }
    if report["load_average_at_start"][0] > 0.5:
        _say(args, f"waylay bench: load average {report['load_average_at_start'][0]:.2f}: "
             "other work on this machine competes for its CPUs and lowers every figure")
    # Before anything starts: nginx, the relays and the agent inherit the raised limit.
    idle_memory.connections_within_limit(args.memory_connections)
    if selected - {"h2", "tui"}:  # the others share the namespace built here
        with contextlib.ExitStack() as http1:
            measure_http1(http1, args, selected, report)
    if "h2" in selected:
        report["h2"] = measure_h2(args)
    if "tui" in selected:
        report["tui"] = measure_tui(args)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = targets(report)
    report["target"] = {"met": all(t["met"] for t in report["targets"])}
    return report


def _cpu(row: dict[str, Any]) -> str:
    """CPU share per process, and its CPU time per request: the figure other work on the
    machine disturbs least (a busy machine lowers req/s, not the work per request)."""
    rps = max(row["requests_per_s"], 1e-9)
    return " + ".join(f"{who} {pct} ({pct / 100 / rps * 1e6:.1f} us/req)"
                      for who, pct in row["cpu_percent"].items())


def _cpu_per_request(row: dict[str, Any]) -> float | None:
    """Microseconds of CPU per request of the row's first process (the intermediary)."""
    shares = list(row.get("cpu_percent", {}).values())
    if not shares or not row["requests_per_s"]:
        return None
    return float(shares[0]) / 100 / row["requests_per_s"] * 1e6


def print_table(report: dict[str, Any]) -> None:
    rows, memory = report["rows"], report["memory"]
    s = report["settings"]
    start, end = report["load_average_at_start"], report["load_average_at_end"]
    print(f"\nwaylay bench: {report['cpus']} CPUs, load average {start[0]:.2f} at the start, "
          f"{end[0]:.2f} at the end; each load {s['warmup_s']} s warm-up + "
          f"{s['duration_s']} s measured")
    head = (f"{'':40} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>11} "
            f"{'+p50 ms':>8} {'errors':>6}  CPU % (of one core)")
    print(head)

    def line(row: dict[str, Any], ratio: str = "", added: str = "") -> None:
        print(f"  {row['label']:38} {row['requests_per_s']:>9,.0f} {row['p50_ms']:>8.3f} "
              f"{row['p99_ms']:>8.3f} {ratio:>11} {added:>8} {row['errors']:>6}  {_cpu(row)}")

    def ratio_text(name: str, baseline: str, tag: str) -> str:
        ratio = _ratio(rows, name, baseline)
        return "" if ratio is None else f"{ratio:.2f}x {tag}"

    def added_text(name: str, baseline: str) -> str:
        if name not in rows or baseline not in rows:
            return ""
        return f"{rows[name]['p50_ms'] - rows[baseline]['p50_ms']:+.3f}"

    if rows.keys() & {"direct", "proxy", "floor", "passthrough"}:
        print(f"HTTP/1.1, wrk -t2 -c{s['connections']}, keep-alive")
        for name in ("direct", "proxy", "floor", "passthrough"):
            if name in rows:
                line(rows[name], ratio_text(name, "direct", "dir"),
                     added_text(name, "direct") if name != "direct" else "")
        if "passthrough" in rows and "floor" in rows:
            print(f"  {'  the agent vs the floor relay':38} {'':>9} {'':>8} {'':>8} "
                  f"{ratio_text('passthrough', 'floor', 'floor'):>11}")
            agent_us = _cpu_per_request(rows["passthrough"])
            floor_us = _cpu_per_request(rows["floor"])
            if agent_us and floor_us:
                print(f"    CPU per request: agent {agent_us:.1f} us, floor relay "
                      f"{floor_us:.1f} us ({floor_us / agent_us:.2f}x the floor's efficiency)")
    h2 = report.get("h2")
    if h2 is not None:
        if "error" in h2:
            print(f"HTTP/2: not measured: {h2['error']}")
        else:
            load = h2.get("h2load") or {}
            print(f"HTTP/2, h2load -c{load.get('clients', '?')} -m{load.get('streams', '?')} "
                  f"(latency columns: mean and max time per request)")
            direct = h2["direct"]["requests_per_s"]
            for key, label in (("direct", "HTTP/2 direct (nginx h2c)"),
                               ("agent", "waylay HTTP/2 passthrough")):
                r = h2[key]
                cpu = r.get("cpu_percent") or []  # its first process: nginx, or the agent
                who = f"{'nginx' if key == 'direct' else 'agent'} {cpu[0]:.0f}" if cpu else ""
                ratio = f"{r['requests_per_s'] / max(1e-9, direct):.2f}x dir"
                print(f"  {label:38} {r['requests_per_s']:>9,.0f} {r.get('mean_ms', 0):>8.3f} "
                      f"{r.get('max_ms', 0):>8.3f} {ratio:>11} {'':>8} "
                      f"{r.get('failures', 0):>6}  {who}")
    if rows.keys() & {"local_1", "steal_1", "steal_16"}:
        print("stolen path: agent -> wire -> waylay run -> local app (nginx on 127.0.0.1)")
        for name in ("local_1", "steal_1", "steal_16"):
            if name in rows:
                line(rows[name], "", added_text(name, "local_1") if name == "steal_1" else "")
    if memory:
        print("memory: idle keep-alive connections (one request each, then held open)")
        for name in ("floor", "agent"):
            if name in memory:
                m = memory[name]
                capped = (f", {m['requested']:,} asked, descriptor limit {m['fd_limit']:,}"
                          if m["connections"] + m["failures"] < m["requested"] else "")
                failed = f", {m['failures']} FAILED: {m['first_error']}" if m["failures"] else ""
                print(f"  {m['label'] + ', VmRSS growth':38} {m['kib_per_connection']:>6.2f} "
                      f"KiB per connection ({m['connections']:,} held{capped}{failed}; "
                      f"{m['rss_before_kib'] / 1024:.1f} -> {m['rss_after_kib'] / 1024:.1f} MiB, "
                      f"{m['fds_added']:+,} fds)")
    tui = report.get("tui")
    if tui is not None:
        if "error" in tui:
            print(f"dashboard: not measured: {tui['error']}")
        else:
            lag, pressed = tui["lag"], tui.get("key_latency") or {}
            keys = (f"; key -> action p50 {pressed['p50_ms']:.0f} ms, p95 "
                    f"{pressed['p95_ms']:.0f} ms" if pressed else "")
            print(f"dashboard (bench/tui_lag.py, {tui.get('rate_per_s', TUI_RATE):,.0f} "
                  "requests/s of flow records)")
            print(f"  {'event-loop lag':38} p50 {lag['p50_ms']:.1f} ms, p95 "
                  f"{lag['p95_ms']:.1f} ms, max {lag['max_ms']:.0f} ms{keys}; events "
                  f"{tui['received']:,} of {tui['sent']:,} received, "
                  f"{tui.get('dropped', 0):,} dropped (counted); UI thread "
                  f"{100 * tui.get('ui_thread_cpu_share', 0):.0f} %")
    if report["waylay_summary"]:
        print(f"waylay run: {report['waylay_summary']}")
    for warning in report["warnings"]:
        print(f"WARNING: {warning}")
    if h2 is not None and h2.get("waylay_summary"):
        print(f"waylay run (HTTP/2): {h2['waylay_summary']}")
    if report["targets"]:
        print(f"\n{'targets':40} {'measured':>22} {'target':>22}  result")
        for t in report["targets"]:
            verdict = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
            print(f"  {t['what']:38} {t['measured']:>22} {t['target']:>22}  {verdict}")


# --- command line -------------------------------------------------------------------------


def _only(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or '(none)'}; choose from "
            f"{','.join(SCENARIOS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="./dev bench",
        description="waylay's benchmark suite: HTTP/1.1 direct, through nginx, through a "
        "minimal Python relay (the floor) and through the agent; HTTP/2; the stolen path; "
        "the agent's memory per idle connection. One table of ratios and the issue's "
        "targets, all measured in one run. Needs root, nginx, wrk and h2load.")
    parser.add_argument("-d", "--duration", type=int, default=5, metavar="SECONDS",
                        help="measured seconds of each load (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, metavar="SECONDS",
                        help="unmeasured load before each measured one (default %(default)s)")
    parser.add_argument("-c", "--connections", type=int, default=16,
                        help="wrk connections of the HTTP/1.1 rows (default %(default)s)")
    parser.add_argument("--memory-connections", type=int, default=idle_memory.CONNECTIONS,
                        metavar="N", help="idle connections of the memory probe (default "
                        "%(default)s; capped by the descriptor limit, 2 per connection)")
    parser.add_argument("--only", type=_only, default=list(SCENARIOS), metavar="NAME,...",
                        help=f"run only these of {','.join(SCENARIOS)} (plus the baselines "
                        "their ratios need: passthrough needs direct and floor)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout instead of the table")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless every measured target is met")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1 or (
            args.memory_connections < 1):
        print("bench: need -d > 0, --warmup >= 0, -c >= 1, --memory-connections >= 1",
              file=sys.stderr)
        return EXIT_USAGE
    for name in list(args.only):
        args.only.extend(n for n in NEEDS.get(name, ()) if n not in args.only)
    if "h2" in args.only and shutil.which("h2load") is None:
        print("bench: h2load is not installed (apt-get install nghttp2-client): the HTTP/2 "
              "rows will say so", file=sys.stderr)
    return run(args, bench, print_table)


if __name__ == "__main__":
    sys.exit(main())
