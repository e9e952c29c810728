"""An in-process stand-in for waylay's agent: the real wire protocol, synthetic traffic.

Like httpx's ``MockTransport``, this ships with the package so that the dashboard's Pilot
tests, the lag benchmark and the screenshot script run without root: ``FakeAgent``
answers a *real* ``waylay.core.client.session.Session`` over a socket pair, from its own thread and
event loop (as a real agent runs in its own process), so everything on the dashboard's
side (``waylay.core.client.attach.AttachedSession``, the session's decoder and ``on_event``, the
client, the app) is the real code.

It follows the agent's rules where the dashboard can see them: a Subscribe on a live
``sub_id`` replaces mode and filter in place; modes it does not support are refused with
an ``Error`` on the subscription (as an agent without mirror support does); requests on a
subscribed port are routed by the engine's own filter (``waylay.core.engine.filters``): taken whole
without a filter, else matched per request; everything else passes. Records carry what
the engine's do, capture keys only for a session that asked for them. It never imports
``agent``. Traffic never touches a network: requests are synthetic flow records (but for
``start_request``, a stolen stream the session delivers to its local app on loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from waylay.core.client.attach import AttachedSession
from waylay.core.client.session import EventSink, Session
from waylay.core.engine.config import AgentConfig, IncomingConfig, Mode
from waylay.core.engine.errors import ConfigError
from waylay.core.engine.events import Capture, MirrorOutcome, RequestEvent, row_of
from waylay.core.engine.filters import HttpFilter, RequestView, compile_http_filter
from waylay.core.engine.flow import Verdict
from waylay.core.engine.registry import WHOLE_PORT, Registry, Subscription, SubscriptionRefused
from waylay.core.engine.target import Target
from waylay.core.engine.wire import (
    MAX_PAYLOAD,
    End,
    Error,
    Flow,
    Hello,
    Notice,
    Ping,
    Pong,
    RequestStart,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Welcome,
    WireDecoder,
    encode,
)

# The real agent's flow batching (agent/link.py): at most 200 records or 50 ms per frame.
FLOW_BATCH_MAX = 200
FLOW_BATCH_DELAY_S = 0.05
FAKE_MATCH_BUDGET_S = 1.0


@dataclass(frozen=True, kw_only=True)
class SyntheticRequest:
    """One request as a client sent it; the fake agent decides its verdict."""

    method: str = "GET"
    path: str = "/"
    port: int = 80
    authority: str | None = "shop.local"
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None
    protocol: str = "http/1.1"
    status: int = 200
    response_headers: tuple[tuple[str, str], ...] = (("content-type", "text/plain"),)
    response_body: str | None = None
    duration_ms: float = 3.2
    ts: float | None = None


class _Exited:
    """``asyncio.subprocess.Process`` as far as AttachedSession uses it: already exited."""

    pid = 0
    returncode = 0

    async def wait(self) -> int:
        return 0


@dataclass
class _FakeProcess:
    """What AttachedSession.close() stops: counts stops, like the real agent's process."""

    agent: FakeAgent
    socket_path: str = "fake"
    token: str = "fake"
    ready: dict[str, object] = field(default_factory=dict)
    process: _Exited = field(default_factory=_Exited)

    async def stop(self, timeout: float = 5.0) -> int:
        self.agent.stopped += 1
        return 0


class FakeAgent:
    """A fake agent serving one session at a time (each ``attach`` makes a new link)."""

    def __init__(self, *, listening_ports: Sequence[int] = (80,),
                 refuse_modes: Iterable[str] = (), capture: bool = True,
                 attach_delay_s: float = 0.0, fail_attach: Exception | None = None) -> None:
        self.listening_ports = tuple(listening_ports)
        self.refuse_modes = frozenset(refuse_modes)
        self.capture = capture  # honour a session's capture request (headers, bodies)
        self.attach_delay_s = attach_delay_s
        self.fail_attach = fail_attach
        self.stopped = 0
        self.attaches = 0
        # The agent's own routing rule (waylay.core.engine.registry), so the fake routes as it does.
        self._registry = Registry(budget_s=FAKE_MATCH_BUDGET_S)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.subscribe_log: list[tuple[int, str, dict[str, object] | None, bool]] = []

    # --- the dashboard's side ---------------------------------------------------------

    async def attach(self, target: Target, *, incoming: IncomingConfig,
                     cli_ports: dict[int, int | None], on_event: EventSink,
                     on_progress: Callable[[str], None] | None = None,
                     local_host: str = "127.0.0.1", ttl: float = 30.0,
                     clean_on_start: bool = False, capture: bool = False,
                     agent: AgentConfig | None = None,
                     kube_context: str | None = None) -> AttachedSession:
        """Same signature and contract as ``waylay.core.client.attach.attach`` (every target is
        served by this one fake agent; ``agent`` and ``kube_context`` change nothing here)."""
        progress = on_progress or (lambda _text: None)
        progress(f"starting the agent in {target}")
        if self.attach_delay_s:
            await asyncio.sleep(self.attach_delay_s)
        if self.fail_attach is not None:
            raise self.fail_attach
        self.attaches += 1
        self._ensure_thread()
        assert self._loop is not None
        mine, theirs = socket.socketpair()
        asyncio.run_coroutine_threadsafe(self._serve(theirs), self._loop)
        progress("connecting to the agent")
        reader, writer = await asyncio.open_connection(sock=mine)
        session = Session(reader=reader, writer=writer, token="fake", incoming=incoming,
                          cli_ports=cli_ports, on_event=on_event, local_host=local_host,
                          capture=capture, local_response_timeout=(
                              agent or AgentConfig()).local_response_timeout)
        return AttachedSession(target=target, agent=_FakeProcess(self),  # type: ignore[arg-type]
                               session=session)

    def close(self) -> None:
        """Stop the agent's thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._cancel_all(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    async def _cancel_all(self) -> None:
        self._close_link()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the test's side (thread-safe) ------------------------------------------------

    def subscriptions(self) -> dict[int, tuple[str, str | None]]:
        """port -> (mode, filter text) of the live subscriptions."""
        with self._lock:
            return {s.port: (s.mode, s.http_filter.text if s.http_filter else None)
                    for port in self._registry.ports()
                    for s in self._registry.subscriptions(port)}

    def add_subscription(self, port: int, mode: str, http_filter: HttpFilter | None, *,
                         capture: bool = False) -> None:
        """Subscribe as a session would, without a session (tests of the routing)."""
        with self._lock:
            self._registry.add(Subscription(sub_id=next(self._ids) + 1_000_000, link_id=0,
                                            port=port, mode=Mode(mode), http_filter=http_filter,
                                            capture=capture))

    def send(self, requests: Iterable[SyntheticRequest]) -> None:
        """Route ``requests`` by the live subscriptions and report them as flow records."""
        records = [self.route(r) for r in requests]
        self.send_records(records)

    def send_records(self, records: Sequence[RequestEvent]) -> None:
        """Report ``records`` as the agent reports finished requests (FLOW rows)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._send_flows, list(records))

    def start_request(self, *, flow_id: int, port: int, method: str = "GET", path: str = "/",
                      authority: str | None = None) -> None:
        """Steal one request as the agent does: its head (RequestStart naming the flow id
        its record will have) and its end. The session shows it in flight and delivers it
        to its local app; whatever it answers is ignored here."""
        headers = (("host", authority),) if authority is not None else ()
        stream = next(self._ids) + 2_000_000
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._send, RequestStart(
                stream=stream, sub_id=0, port=port, method=method, target=path,
                http_version="1.1", headers=headers, peer="10.0.0.9:40000", flow_id=flow_id))
            self._loop.call_soon_threadsafe(self._send, End(stream=stream))

    def notice(self, level: str, message: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._send, Notice(level=level, message=message))

    def drop_link(self) -> None:
        """Close the link as a crashing agent would."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._close_link)

    def stream(self, rate: float, duration_s: float,
               make: Callable[[int], SyntheticRequest]) -> asyncio.Future[int]:
        """Send ``rate`` requests/s for ``duration_s`` in 50 ms batches, like the agent.

        Returns a concurrent future with the number sent.
        """
        self._ensure_thread()
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(  # type: ignore[return-value]
            self._stream(rate, duration_s, make), self._loop)

    def route(self, request: SyntheticRequest) -> RequestEvent:
        """The request event the agent would report for ``request``, routed by the
        agent's own rule (``waylay.core.engine.registry``)."""
        with self._lock:
            registry = self._registry
        verdict, matched = Verdict.PASSED, None
        if request.protocol == "tcp":
            if registry.whole_connection_owner(request.port) is not None:
                verdict, matched = Verdict.STOLEN, WHOLE_PORT
            elif registry.whole_mirrors(request.port):
                verdict = Verdict.MIRRORED
        else:
            h2 = request.protocol == "h2"
            host = (("host", request.authority),) if request.authority and not h2 else ()
            view = RequestView(method=request.method, target=request.path,
                               headers=(*host, *request.headers),
                               authority=request.authority if h2 else None)
            route = registry.decide(request.port, view)
            if route.steal_by is not None:
                verdict, matched = Verdict.STOLEN, route.clause
            elif route.mirror_to:
                verdict, matched = Verdict.MIRRORED, (route.mirror_clauses or (None,))[0]
        served = "local" if verdict is Verdict.STOLEN else "remote"
        body = request.response_body if request.response_body is not None else f"{served}\n"
        tcp = request.protocol == "tcp"
        status = None if tcp else request.status
        duration_ms = request.duration_ms
        mirror = capture = None
        if verdict is Verdict.MIRRORED:
            # As the engine reports it: status and duration are the local app's answer to
            # the copy, the remote's are beside them.
            mirror = MirrorOutcome(remote_status=status, remote_duration_ms=duration_ms)
            status = 200 if not tcp else None
            duration_ms = round(request.duration_ms * 0.8, 3)
        if self.capture and registry.capturing(request.port) and not tcp:
            h2 = request.protocol == "h2"
            host = (("host", request.authority),) if request.authority and not h2 else ()
            capture = Capture(request_headers=(*host, *request.headers),
                              request_body=request.body or "",
                              response_headers=(*request.response_headers,
                                                ("x-served-by", served)),
                              response_body=body)
        return RequestEvent(
            id=next(self._ids), ts=request.ts if request.ts is not None else time.time(),
            port=request.port, protocol=request.protocol,
            method=None if tcp else request.method, authority=request.authority,
            path=None if tcp else request.path, verdict=verdict, status=status,
            duration_ms=duration_ms, bytes_in=len(request.body or ""), bytes_out=len(body),
            matched=matched, mirror=mirror, capture=capture)

    # --- the agent's thread -----------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-agent",
                                        daemon=True)
        self._thread.start()

    async def _serve(self, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=sock)
        self._close_link()
        self._writer = writer
        decoder = WireDecoder()
        client_subs: dict[int, int] = {}
        try:
            while data := await reader.read(65536):
                for message in decoder.receive_data(data):
                    self._dispatch(message, client_subs)
        except (ConnectionError, OSError):
            pass
        finally:
            with self._lock:
                for sub_id in client_subs.values():
                    self._registry.remove(sub_id)
            if self._writer is writer:
                self._writer = None
            writer.close()

    def _dispatch(self, message: object, client_subs: dict[int, int]) -> None:
        match message:
            case Hello():
                self._send(Welcome(agent="fake-agent", session="fake",
                                   listening_ports=self.listening_ports))
            case Ping(nonce=nonce):
                self._send(Pong(nonce=nonce))
            case Subscribe(sub_id=sub_id, port=port, mode=mode, filter=obj):
                self._subscribe(sub_id, port, mode, obj, client_subs,
                                capture=bool(getattr(message, "capture", False)))
            case Unsubscribe(sub_id=sub_id):
                with self._lock:
                    self._registry.remove(client_subs.pop(sub_id, -1))
            case _:
                pass

    def _subscribe(self, sub_id: int, port: int, mode: str, obj: dict[str, object] | None,
                   client_subs: dict[int, int], *, capture: bool) -> None:
        if mode in self.refuse_modes:
            self.subscribe_log.append((port, mode, obj, False))
            self._send(Error(stream=sub_id, code="refused", message=(
                f"mode {mode!r} is not supported by this agent")))
            return
        try:
            http_filter = compile_http_filter(obj) if obj is not None else None
        except ConfigError as exc:
            self.subscribe_log.append((port, mode, obj, False))
            self._send(Error(stream=sub_id, code="refused", message=str(exc)))
            return
        with self._lock:
            known = sub_id in client_subs
            mine = client_subs.setdefault(sub_id, next(self._ids) + 1_000_000)
            sub = Subscription(sub_id=mine, link_id=1, port=port, mode=Mode(mode),
                               http_filter=http_filter, capture=capture)
            try:
                if known:
                    self._registry.replace(sub)
                else:
                    self._registry.add(sub)
            except SubscriptionRefused as exc:
                if not known:
                    del client_subs[sub_id]
                refused = str(exc)
            else:
                refused = ""
        self.subscribe_log.append((port, mode, obj, not refused))
        if refused:
            self._send(Error(stream=sub_id, code="refused", message=refused))
            return
        self._send(Subscribed(sub_id=sub_id, port=port, mode=mode,
                              filter=http_filter.text if http_filter else None))

    def _send(self, message: Any) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode(message))

    def _send_flows(self, records: list[RequestEvent]) -> None:
        batch: list[RequestEvent] = []
        for record in records:
            batch.append(record)
            if len(batch) >= FLOW_BATCH_MAX:
                self._send_flow(batch)
                batch = []
        if batch:
            self._send_flow(batch)

    def _send_flow(self, batch: list[RequestEvent]) -> None:
        frame = encode(Flow(records=tuple(row_of(r) for r in batch))) if batch else b""
        if len(frame) > MAX_PAYLOAD and len(batch) > 1:
            half = len(batch) // 2
            self._send_flow(batch[:half])
            self._send_flow(batch[half:])
            return
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(frame)

    def _close_link(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _stream(self, rate: float, duration_s: float,
                      make: Callable[[int], SyntheticRequest]) -> int:
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        while (elapsed := loop.time() - start) < duration_s:
            due = int(rate * min(elapsed + FLOW_BATCH_DELAY_S, duration_s))
            if due > sent:
                self._send_flows([self.route(make(i)) for i in range(sent, due)])
                sent = due
                if self._writer is not None:
                    with contextlib.suppress(ConnectionError):
                        await self._writer.drain()
            await asyncio.sleep(FLOW_BATCH_DELAY_S)
        return sent


# --- synthetic traffic ---------------------------------------------------------------------

_PATHS = ("/api/orders", "/api/orders/{n}", "/api/users/{n}", "/api/cart", "/health/ready",
          "/static/app.{n}.js", "/api/search?q=shoes&page={n}", "/metrics", "/login")
_USERS = ("alice", "bob", "carol", "dave")
_AGENTS = ("Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0", "kube-probe/1.30",
           "python-httpx/0.28")


def synthetic(n: int, *, seed: int = 7, ts0: float | None = None,
              step_s: float = 0.001) -> SyntheticRequest:
    """The ``n``-th request of a deterministic, varied stream (for benches and pictures)."""
    rnd = random.Random(seed * 1_000_003 + n)
    path = rnd.choice(_PATHS).format(n=rnd.randint(1, 9999))
    agent = "kube-probe/1.30" if path.startswith("/health") else rnd.choice(_AGENTS)
    method = "POST" if path in ("/api/orders", "/api/cart", "/login") and rnd.random() < 0.6 \
        else "GET"
    headers: list[tuple[str, str]] = [("user-agent", agent), ("accept", "application/json")]
    if path.startswith("/api"):
        headers.append(("x-user", rnd.choice(_USERS)))
    body = None
    if method == "POST":
        body = (f'{{"item": "sku-{rnd.randint(100, 999)}", "qty": {rnd.randint(1, 5)}, '
                f'"gift": {str(rnd.random() < 0.2).lower()}}}')
        headers.append(("content-type", "application/json"))
    status = rnd.choices((200, 201, 204, 304, 404, 500), (70, 8, 4, 8, 7, 3))[0]
    response_body = (f'{{"ok": {str(status < 400).lower()}, "id": {rnd.randint(1, 99999)}, '
                     f'"items": [{{"sku": "sku-{rnd.randint(100, 999)}", "price": '
                     f'{rnd.randint(1, 500)}.{rnd.randint(0, 99):02d}}}]}}')
    return SyntheticRequest(
        method=method, path=path, port=rnd.choice((80, 80, 80, 8080)),
        authority=rnd.choice(("shop.local", "api.shop.local")), headers=tuple(headers),
        body=body, status=status,
        response_headers=(("content-type", "application/json"),),
        response_body=response_body, duration_ms=round(rnd.lognormvariate(1.2, 0.8), 2),
        ts=None if ts0 is None else ts0 + n * step_s)
