"""The demo's traffic generator: shop users and a kubelet's probes, with every answer checked.

Theory of operation. One task per user (alice, bob, carol, dave) keeps one keep-alive
connection to the shop, as a browser or a backend client would, and sends a mix of reads
and writes with short pauses: ``X-User: <name>`` on every request, now and then the slow
report and user 13 (whose record is corrupt in the remote shop: a 500). A probe task opens
a new connection every second for ``/health/live`` or ``/health/ready`` with
``User-Agent: kube-probe/1.30`` and ``Connection: close``, as the kubelet does.

Every answer is checked: ``X-Served-By`` and the body's ``served_by`` must agree and name
the remote shop or the local dev app, and the status must be what that server answers for
that request. The generator counts, per user and per request shape (method, target,
headers as sent), how many answers came from each side and how many failed, so the demo
can judge them against the config's filter. At the end it prints one JSON line (the
report) on stdout.

Bounded: it stops after ``--seconds`` (at most MAX_SECONDS), after MAX_REQUESTS, on
SIGTERM / SIGINT, or when its owner dies; requests in flight then get REQUEST_TIMEOUT_S.
Run as ``python -m waylay.cli.demo.traffic --host H --port P --seconds N``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Final

from waylay.cli.demo.http_io import Headers, HttpClient, HttpFailure, Response
from waylay.cli.demo.lifetime import wait_for_end
from waylay.cli.demo.shop import BROKEN_USER, CATALOGUE

USERS: Final = ("alice", "bob", "carol", "dave")
PROBE_USER: Final = "kube-probe"
PROBE_AGENT: Final = "kube-probe/1.30"
USER_AGENT: Final = "shop-web/2.4"
PROBE_INTERVAL_S: Final = 1.0
THINK_S: Final = (0.2, 0.8)  # a user's pause between two requests
# Above the shop's slow endpoint (0.8 s) with room for a loaded machine.
REQUEST_TIMEOUT_S: Final = 5.0
MAX_SECONDS: Final = 24 * 3600.0
MAX_REQUESTS: Final = 1_000_000  # a hard cap, whatever the duration
# The report's size bounds: distinct request shapes (a few dozen in practice) and problems.
MAX_SHAPES: Final = 1000
MAX_PROBLEMS: Final = 20

SERVERS: Final = {"remote-shop": "remote", "local-dev": "local"}


@dataclass
class Tally:
    local: int = 0
    remote: int = 0
    failed: int = 0

    def add(self, server: str | None) -> None:
        if server == "local":
            self.local += 1
        elif server == "remote":
            self.remote += 1
        else:
            self.failed += 1


@dataclass
class Shape:
    """One kind of request as sent, and who answered it."""

    user: str
    method: str
    target: str
    headers: list[list[str]]
    tally: Tally = field(default_factory=Tally)


@dataclass
class Report:
    seconds: float = 0.0
    reason: str = ""
    requests: int = 0
    connections: int = 0
    users: dict[str, Tally] = field(default_factory=dict)
    shapes: dict[tuple[str, str, str, Headers], Shape] = field(default_factory=dict)
    other: Tally = field(default_factory=Tally)  # shapes beyond MAX_SHAPES
    problems: list[str] = field(default_factory=list)

    def record(self, user: str, method: str, target: str, headers: Headers,
               server: str | None, problem: str | None) -> None:
        self.requests += 1
        self.users.setdefault(user, Tally()).add(server)
        key = (user, method, target, headers)
        shape = self.shapes.get(key)
        if shape is None and len(self.shapes) < MAX_SHAPES:
            shape = self.shapes[key] = Shape(user=user, method=method, target=target,
                                             headers=[list(h) for h in headers])
        (shape.tally if shape is not None else self.other).add(server)
        if problem is not None and len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{user}: {method} {target}: {problem}")

    def to_json(self) -> str:
        return json.dumps({
            "type": "traffic", "seconds": round(self.seconds, 2), "reason": self.reason,
            "requests": self.requests, "connections": self.connections,
            "users": {u: asdict(t) for u, t in self.users.items()},
            "shapes": [asdict(s) for s in self.shapes.values()],
            "other": asdict(self.other), "problems": self.problems,
        }, separators=(",", ":"))


def expected_status(method: str, target: str, server: str) -> int:
    """What the shop (``server`` "remote" or "local") answers to a request the generator sends."""
    if target == f"/api/users/{BROKEN_USER}":
        return 200 if server == "local" else 500
    return 201 if method == "POST" else 200


def judge(method: str, target: str, response: Response) -> tuple[str | None, str | None]:
    """(who answered: "local" | "remote" | None, what is wrong or None)."""
    header = response.header("x-served-by")
    server = SERVERS.get(header or "")
    if server is None:
        return None, f"answer {response.status} from an unknown server (X-Served-By {header!r})"
    try:
        doc = json.loads(response.body)
    except ValueError:
        return None, f"{header} answered {response.status} with a body that is not JSON"
    if not isinstance(doc, dict) or doc.get("served_by") != server:
        return None, f"X-Served-By says {header} but the body does not"
    want = expected_status(method, target, server)
    if response.status != want:
        return None, f"{header} answered {response.status}, expected {want}"
    return server, None


class Generator:
    """The users and the probes, sharing one report and one stop event."""

    def __init__(self, host: str, port: int, *, users: Sequence[str], seed: int,
                 max_requests: int = MAX_REQUESTS) -> None:
        self.host = host
        self.port = port
        self.users = list(users)
        self.seed = seed
        self.max_requests = max_requests
        self.report = Report()
        self.stop = asyncio.Event()
        self._clients: list[HttpClient] = []

    def _client(self) -> HttpClient:
        client = HttpClient(self.host, self.port, timeout=REQUEST_TIMEOUT_S)
        self._clients.append(client)
        return client

    async def _send(self, client: HttpClient, user: str, method: str, target: str,
                    headers: Headers, body: bytes = b"") -> None:
        sent: Headers = (("host", client.host_header), *headers)
        if body or method == "POST":
            sent = (*sent, ("content-length", str(len(body))))
        try:
            response = await client.request(method, target, headers, body)
        except HttpFailure as exc:
            self.report.record(user, method, target, sent, None, str(exc))
            return
        server, problem = judge(method, target, response)
        self.report.record(user, method, target, sent, server, problem)

    def _budget_left(self) -> bool:
        return not self.stop.is_set() and self.report.requests < self.max_requests

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def user(self, index: int, name: str) -> None:
        rng = random.Random(self.seed * 1000 + index)
        client = self._client()
        base: Headers = (("user-agent", USER_AGENT), ("accept", "application/json"),
                         ("x-user", name))
        own_id = index + 1
        while self._budget_left():
            roll = rng.random()
            if roll < 0.30:
                await self._send(client, name, "GET", "/api/orders", base)
            elif roll < 0.50:
                await self._send(client, name, "GET", f"/api/users/{own_id}", base)
            elif roll < 0.60:
                await self._send(client, name, "GET", f"/api/users/{rng.randint(1, 5)}", base)
            elif roll < 0.84:
                body = json.dumps({"item": rng.choice(CATALOGUE), "qty": rng.randint(1, 3)})
                await self._send(client, name, "POST", "/api/orders",
                                 (*base, ("content-type", "application/json")), body.encode())
            elif roll < 0.92:
                await self._send(client, name, "GET", "/api/reports/sales", base)
            else:
                await self._send(client, name, "GET", f"/api/users/{BROKEN_USER}", base)
            await self._pause(rng.uniform(*THINK_S))
        client.close()

    async def probes(self) -> None:
        loop = asyncio.get_running_loop()
        headers: Headers = (("user-agent", PROBE_AGENT), ("accept", "*/*"),
                            ("connection", "close"))
        tick = 0
        next_at = loop.time()
        while self._budget_left():
            client = self._client()  # the kubelet opens a connection per probe
            path = "/health/live" if tick % 2 == 0 else "/health/ready"
            await self._send(client, PROBE_USER, "GET", path, headers)
            client.close()
            tick += 1
            next_at += PROBE_INTERVAL_S
            await self._pause(max(0.0, next_at - loop.time()))

    async def run(self, owner_pid: int, seconds: float) -> Report:
        started = time.monotonic()
        tasks = [asyncio.create_task(self.user(i, name), name=f"user-{name}")
                 for i, name in enumerate(self.users)]
        tasks.append(asyncio.create_task(self.probes(), name="probes"))
        ender = asyncio.create_task(wait_for_end(owner_pid, self.stop, seconds), name="end")
        done, _ = await asyncio.wait([*tasks, ender], return_when=asyncio.FIRST_COMPLETED)
        if ender in done:
            why = ender.result()
            self.report.reason = "time" if why == "lifetime" else why
        else:
            failed = [t for t in done if not t.cancelled() and t.exception() is not None]
            self.report.reason = "requests" if not failed else "error"
            for task in failed:
                self.report.problems.append(f"{task.get_name()} failed: {task.exception()!r}")
        self.stop.set()
        # Requests in flight get their full timeout; then anything left is cut off.
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 1.0)
        for task in [*tasks, ender]:
            task.cancel()
        await asyncio.gather(*tasks, ender, return_exceptions=True)
        for client in self._clients:
            client.close()
        self.report.seconds = time.monotonic() - started
        self.report.connections = sum(c.connections for c in self._clients)
        return self.report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--users", default=",".join(USERS),
                        help="comma-separated user names (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS)
    parser.add_argument("--owner-pid", type=int, default=0,
                        help="stop when this process is gone")
    args = parser.parse_args(argv)
    users = [u for u in args.users.split(",") if u]
    seconds = min(max(args.seconds, 0.0), MAX_SECONDS)
    generator = Generator(args.host, args.port, users=users, seed=args.seed,
                          max_requests=min(args.max_requests, MAX_REQUESTS))
    report = asyncio.run(generator.run(args.owner_pid, seconds))
    print(report.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
