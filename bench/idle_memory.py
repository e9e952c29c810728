"""Memory probe: what one idle keep-alive connection through the agent costs it.

Theory of operation. From the host, open ``--connections`` (10,000) keep-alive connections
to the namespace's address; each sends one request, reads its whole answer and then stays
open, idle. The process that relays them (the waylay agent's worker, or for reference the
floor relay of ``bench/floor_relay.py``) holds, for each, the client socket, the upstream
socket to the origin and whatever state it keeps between requests. Its resident set
(``VmRSS`` in ``/proc/PID/status``) before and after, divided by the number of open
connections, is the cost of one idle connection. The number of file descriptors it gained
(``/proc/PID/fd``) shows the connections really are held there (two each: client and
upstream).

The "before" reading follows a warm-up (a few hundred connections opened, used and
closed), so that one-off allocations of the first requests (imports, caches, the
allocator's first arenas) do not count as per-connection cost. Python rarely returns freed
memory to the system, so the probe measures growth, never shrinkage.

Every wait is bounded (per connection and overall), the number of connections is the
given count, and every connection is closed at the end, also on error or Ctrl-C.

Standalone: ``sudo .venv/bin/python bench/idle_memory.py [-n 10000]`` builds the same bed
as ``bench/passthrough.py`` (namespace, nginx, ``waylay run`` with a filter nothing
matches) and measures the agent worker; ``./dev bench`` includes it as a row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.passthrough import (  # noqa: E402
    ORIGIN_PORT,
    ORIGIN_SERVERS,
    BenchError,
    _kill_leftovers,
    nginx,
    preflight,
    run,
    waylay_passthrough,
)
from tests.netns import netns, veth_pair  # noqa: E402

TARGET_KIB_PER_CONNECTION = 8.0
"""The issue's target: at most this much agent memory per idle keep-alive connection."""

CONNECTIONS = 10_000
WARMUP_CONNECTIONS = 300
CONCURRENCY = 200  # connections being opened at once: bounds the SYN burst on the agent
CONNECT_TIMEOUT_S = 10.0  # one connection: connect, request, whole answer
OVERALL_TIMEOUT_S = 180.0  # the whole opening phase
SETTLE_S = 1.0  # after the last answer, before reading VmRSS: let the relay go idle
MAX_HEAD = 16 * 1024  # an answer head larger than this is not our nginx's
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: waylay-idle-memory\r\n\r\n"
FD_SLACK = 256  # descriptors beyond the connections: the loop, stdio, the link, logs
FDS_PER_CONNECTION = 2  # a relay's worst case: the client's socket and its upstream


def vm_rss_kib(pid: int) -> int:
    """The resident set of ``pid`` in KiB (``VmRSS``); raises BenchError if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError as exc:
        raise BenchError(f"cannot read /proc/{pid}/status: {exc}") from None
    raise BenchError(f"/proc/{pid}/status has no VmRSS line")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def raise_nofile(needed: int) -> int:
    """Raise this process's RLIMIT_NOFILE (inherited by the processes it starts, the agent
    among them) towards ``needed``: the soft limit up to the hard one, and the hard one too
    where the process may (CAP_SYS_RESOURCE). The soft limit reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    return min(needed, hard)


def connections_within_limit(requested: int) -> int:
    """How many of ``requested`` connections a relay can hold under the descriptor limit
    it inherits from this process (raised first as far as allowed)."""
    limit = raise_nofile(FDS_PER_CONNECTION * requested + FD_SLACK)
    return max(1, min(requested, (limit - FD_SLACK) // FDS_PER_CONNECTION))


async def _open_one(host: str, port: int) -> asyncio.StreamWriter:
    """Connect, send one request, read its whole answer (Content-Length body); the open
    connection."""
    reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
    try:
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if not head.startswith(b"HTTP/1.1 200 "):
            status_line = head.split(b"\r\n", 1)[0]
            raise ConnectionError(f"answer {status_line!r}")
        await reader.readexactly(length)
    except BaseException:
        writer.close()
        raise
    return writer


async def _open_many(host: str, port: int, count: int,
                     held: list[asyncio.StreamWriter]) -> list[str]:
    """Open ``count`` idle connections into ``held``; the errors of those that failed."""
    gate = asyncio.Semaphore(CONCURRENCY)
    errors: list[str] = []

    async def one() -> None:
        async with gate:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    held.append(await _open_one(host, port))
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError, TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    async with asyncio.timeout(OVERALL_TIMEOUT_S), asyncio.TaskGroup() as group:
        for _ in range(count):
            group.create_task(one())
    return errors


async def _close_all(held: list[asyncio.StreamWriter]) -> None:
    for writer in held:
        writer.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await asyncio.gather(*(w.wait_closed() for w in held), return_exceptions=True)
    held.clear()


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemoryResult:
    """What the probe measured of one relay process."""

    pid: int
    requested: int
    fd_limit: int  # RLIMIT_NOFILE the relay inherited: it may cap the connections
    connections: int  # held open at the "after" reading
    failures: int
    first_error: str
    rss_before_kib: int
    rss_after_kib: int
    fds_added: int
    seconds_to_open: float

    @property
    def kib_per_connection(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / max(1, self.connections)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self),
                "kib_per_connection": round(self.kib_per_connection, 2)}


async def _probe(pid: int, host: str, port: int, count: int, requested: int) -> MemoryResult:
    held: list[asyncio.StreamWriter] = []
    try:
        await _open_many(host, port, min(WARMUP_CONNECTIONS, count), held)
        await _close_all(held)
        await asyncio.sleep(SETTLE_S)
        rss_before, fds_before = vm_rss_kib(pid), open_fds(pid)
        started = time.monotonic()
        errors = await _open_many(host, port, count, held)
        opened_in = time.monotonic() - started
        await asyncio.sleep(SETTLE_S)
        return MemoryResult(pid=pid, requested=requested,
                            fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                            connections=len(held), failures=len(errors),
                            first_error=errors[0] if errors else "",
                            rss_before_kib=rss_before, rss_after_kib=vm_rss_kib(pid),
                            fds_added=open_fds(pid) - fds_before,
                            seconds_to_open=round(opened_in, 2))
    finally:
        await _close_all(held)


def measure(pid: int, host: str, port: int, requested: int = CONNECTIONS) -> MemoryResult:
    """Open ``requested`` idle keep-alive connections to ``host:port`` (relayed by ``pid``),
    or as many as the descriptor limit allows the relay (``connections_within_limit``:
    call it before starting the relay, which inherits the raised limit), read ``pid``'s
    VmRSS growth, close them all."""
    count = connections_within_limit(requested)
    return asyncio.run(_probe(pid, host, port, count, requested))


# --- standalone ---------------------------------------------------------------------------


def bench(stack: contextlib.ExitStack, args: argparse.Namespace) -> dict[str, Any]:
    preflight()
    connections_within_limit(args.connections)  # before the agent starts: it inherits it
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="waylay-mem-")))
    os.chmod(workdir, 0o755)  # nginx workers run unprivileged
    ns = stack.enter_context(netns("wlmem"))
    _host_ip, ns_ip = stack.enter_context(veth_pair(ns))
    stack.callback(_kill_leftovers, ns)
    stack.enter_context(nginx(ns, ns_ip, ORIGIN_PORT, ORIGIN_SERVERS, workdir, "origin"))
    waylay = stack.enter_context(waylay_passthrough(ns, ns_ip, workdir))
    pid = waylay.worker_pid()
    if pid is None:
        raise BenchError("cannot find the agent worker process in the namespace")
    result = measure(pid, ns_ip, ORIGIN_PORT, args.connections)
    met = result.failures == 0 and result.kib_per_connection <= TARGET_KIB_PER_CONNECTION
    return {"agent": result.as_dict(),
            "target": {"max_kib_per_connection": TARGET_KIB_PER_CONNECTION, "met": met}}


def print_report(report: dict[str, Any]) -> None:
    r = report["agent"]
    target = report["target"]
    if r["connections"] + r["failures"] < r["requested"]:
        print(f"{r['requested']:,} connections requested; the descriptor limit "
              f"(RLIMIT_NOFILE {r['fd_limit']:,}, not raisable here) allows "
              f"{r['connections'] + r['failures']:,} at {FDS_PER_CONNECTION} each")
    print(f"agent worker (pid {r['pid']}): {r['connections']:,} idle connections "
          f"(opened in {r['seconds_to_open']} s, {r['failures']} failed"
          f"{': ' + r['first_error'] if r['failures'] else ''}), VmRSS "
          f"{r['rss_before_kib'] / 1024:.1f} -> {r['rss_after_kib'] / 1024:.1f} MiB, "
          f"{r['fds_added']:+,} descriptors")
    print(f"{r['kib_per_connection']:.2f} KiB per idle connection; target <= "
          f"{target['max_kib_per_connection']:g} KiB: {'met' if target['met'] else 'NOT MET'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/idle_memory.py",
        description="The agent worker's memory per idle keep-alive connection. Needs root "
        "and nginx.")
    parser.add_argument("-n", "--connections", type=int, default=CONNECTIONS,
                        help="idle connections to hold open (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the target is met")
    args = parser.parse_args(argv)
    if args.connections < 1:
        parser.error("need -n >= 1")
    return run(args, bench, print_report)


if __name__ == "__main__":
    sys.exit(main())
