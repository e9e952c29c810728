"""The client session (asyncio): attach to an agent, subscribe ports, deliver stolen traffic.

This is the only way the CLI and the dashboard talk to an agent. A session owns one link
(a stream pair to the agent's control socket). The agent opens one wire stream per stolen
request (or per stolen TCP connection); the session delivers each to the local app over
pooled keep-alive HTTP/1.1 connections (``core.local_delivery``) and streams the answer
back. Every finished request, stolen or passed, arrives from the agent as a flow record
and leaves as an event dict (docs/architecture.md §3) through ``on_event``; a stolen request also
leaves
a ``started`` event as soon as it arrives (same ``id`` as its later ``request`` event), so
a request the local app is slow to answer is visible while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.config import IncomingConfig, Mode
from core.errors import AgentError
from core.filters import HttpFilter
from core.flow import event_from_row
from core.local_delivery import LocalPool, deliver_connection, deliver_request
from core.wire import (
    DEFAULT_RESPONSE_TIMEOUT_S,
    ConnectionStart,
    Data,
    End,
    Error,
    Flow,
    Hello,
    Message,
    Notice,
    Pause,
    Ping,
    Pong,
    RequestStart,
    Reset,
    Resume,
    Subscribe,
    Subscribed,
    Trailers,
    Unsubscribe,
    Welcome,
    WireDecoder,
    WireProtocolError,
    encode,
)

EventSink = Callable[[dict[str, Any]], None]

PING_INTERVAL_S = 5.0
LINK_TIMEOUT_S = 15.0  # no frame from the agent for this long: the link is dead
# Frames queued for one stolen stream before the link reader waits: bounds memory when
# the local app reads a big upload slowly.
STREAM_QUEUE_FRAMES = 64
LINK_HIGH_WATER = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class PortPlan:
    """One remote port to intercept and where its traffic goes."""

    remote: int
    local: int
    mode: Mode
    http_filter: HttpFilter | None


def plan_ports(incoming: IncomingConfig, cli_ports: dict[int, int | None],
               listening: list[int]) -> list[PortPlan]:
    """Decide which remote ports to subscribe.

    Ports named on the command line (``-p REMOTE[:LOCAL]``) come first; otherwise the
    config's ``ports`` allow-list, else the ports of ``port_mapping`` and
    ``http_filter.ports``, else every port the agent found listening in the target; then
    ``ignore_ports`` is applied.
    """
    if incoming.mode is Mode.OFF:
        return []
    if cli_ports:
        remotes = list(cli_ports)
    elif incoming.ports is not None:
        remotes = sorted(incoming.ports)
    else:
        named = set(incoming.port_mapping) | set(incoming.filter_ports or ())
        remotes = sorted(named) if named else list(listening)
    plans = []
    for remote in remotes:
        if not incoming.intercepts(remote) and remote not in cli_ports:
            continue
        local = cli_ports.get(remote) or incoming.local_port(remote)
        plans.append(PortPlan(remote=remote, local=local, mode=incoming.mode,
                              http_filter=incoming.filter_for(remote)))
    return plans


@dataclass
class SessionStats:
    stolen: int = 0
    passed: int = 0
    mirrored: int = 0
    errors: int = 0
    warnings: int = 0

    def summary(self) -> str:
        return (f"{self.stolen} stolen, {self.passed} passed, {self.mirrored} mirrored, "
                f"{self.errors} errors")


@dataclass
class _StreamState:
    queue: asyncio.Queue[Message]
    task: asyncio.Task[None] | None = None


@dataclass
class Session:
    """One attachment to one agent. ``run`` returns when the link ends or ``stop`` is called."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    token: str
    incoming: IncomingConfig
    cli_ports: dict[int, int | None]
    on_event: EventSink
    local_host: str = "127.0.0.1"
    capture: bool = False  # ask for headers and body starts in request events
    # Whole seconds the local app has to start answering a stolen request; the agent
    # enforces it (agent.local_response_timeout).
    local_response_timeout: int = DEFAULT_RESPONSE_TIMEOUT_S
    client_name: str = field(default_factory=lambda: f"waylay-cli/{os.getpid()}")
    stats: SessionStats = field(default_factory=SessionStats)
    plans: list[PortPlan] = field(default_factory=list)
    welcome: Welcome | None = None

    def __post_init__(self) -> None:
        self._decoder = WireDecoder()
        self._streams: dict[int, _StreamState] = {}
        self._pool = LocalPool()
        self._stopping = asyncio.Event()
        self.ended_cleanly = False  # run() ended by stop(), not by a link failure
        self.planned = False  # welcomed, and the ports to subscribe are decided (plans)
        self._last_seen = time.monotonic()
        self._plans_by_sub: dict[int, PortPlan] = {}
        self._pending_subs: dict[int, asyncio.Future[bool]] = {}
        # Streams the agent PAUSEd; the event is set on RESUME (or when the stream ends).
        self._paused: dict[int, asyncio.Event] = {}
        self._sub_ids = itertools.count(1)

    def send(self, message: Message) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(message))

    def send_raw(self, frame: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame)

    async def drain(self) -> None:
        if self.writer.transport.get_write_buffer_size() > LINK_HIGH_WATER:
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    async def drain_stream(self, sid: int) -> None:
        """Wait before sending more on stream ``sid``: while the link is full, and while
        the agent has that stream PAUSEd (its remote client is slow)."""
        await self.drain()
        paused = self._paused.get(sid)
        if paused is not None:
            await paused.wait()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Handshake, subscribe, then serve until stopped; raises AgentError on link failure."""
        try:
            if self.welcome is None:
                await self.handshake()
            async with asyncio.TaskGroup() as group:
                reader: asyncio.Task[Any] = group.create_task(self._read_loop(),
                                                              name="session-reader")
                pinger: asyncio.Task[Any] = group.create_task(self._ping_loop(),
                                                              name="session-pinger")
                await self._subscribe_all()
                stopper: asyncio.Task[Any] = group.create_task(self._stopping.wait(),
                                                               name="session-stop")
                done, _ = await asyncio.wait({reader, pinger, stopper},
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in (reader, pinger, stopper):
                    task.cancel()
                self.ended_cleanly = stopper in done
                for task in done:
                    if task is not stopper and not task.cancelled():
                        exc = task.exception()
                        if exc is not None:
                            raise exc
        except BaseExceptionGroup as group:
            # A plain except, not except*: before Python 3.11.4 raising inside except*
            # wraps the error in a new group, and callers could not catch AgentError.
            failure = _first(group, AgentError)
            if failure is None:
                raise
            raise failure from None
        finally:
            for state in self._streams.values():
                if state.task is not None:
                    state.task.cancel()
            self._pool.close()
            self.writer.close()

    async def handshake(self) -> None:
        """Hello -> Welcome. ``run`` does it when it was not done before; doing it first
        tells a caller whether the agent takes the session before anything is served."""
        self.send(Hello(token=self.token, client=self.client_name))
        while True:
            try:
                data = await asyncio.wait_for(self.reader.read(64 * 1024), LINK_TIMEOUT_S)
            except TimeoutError:
                raise AgentError("the agent did not answer the handshake") from None
            if not data:
                raise AgentError("the agent closed the link during the handshake")
            messages = self._decode(data)
            if not messages:
                continue
            first, rest = messages[0], messages[1:]
            if isinstance(first, Error):
                raise AgentError(f"the agent refused the session: {first.message}")
            if not isinstance(first, Welcome):
                raise AgentError(f"unexpected {type(first).__name__} from the agent")
            self.welcome = first
            for message in rest:
                await self._dispatch(message)
            return

    async def _subscribe_all(self) -> None:
        assert self.welcome is not None
        self.plans = plan_ports(self.incoming, self.cli_ports,
                                list(self.welcome.listening_ports))
        self.planned = True
        if not self.plans:
            self._event({"type": "warning", "message": "nothing to intercept: no port "
                         "given and none listening in the target (use -p PORT)"
                         if self.incoming.mode is not Mode.OFF else
                         "mode is off: no traffic is intercepted"})
            return
        results = await asyncio.gather(
            *(self._subscribe(next(self._sub_ids), plan) for plan in self.plans))
        if not any(results):
            raise AgentError("the agent refused every subscription")

    def _subscribe(self, sub_id: int, plan: PortPlan) -> asyncio.Future[bool]:
        """Send a Subscribe (new, or replacing ``sub_id`` in place); resolves to accepted."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending_subs[sub_id] = future
        self._plans_by_sub[sub_id] = plan
        self.send(Subscribe(
            sub_id=sub_id, port=plan.remote, mode=str(plan.mode),
            filter=plan.http_filter.to_mirrord() if plan.http_filter else None,
            capture=self.capture, local=f"{self.local_host}:{plan.local}",
            response_timeout=self.local_response_timeout))
        return future

    async def update(self, incoming: IncomingConfig,
                     cli_ports: dict[int, int | None] | None = None) -> bool:
        """Replace mode, filter and ports while traffic flows; True if the agent took it all.

        A port that stays subscribed keeps its subscription, changed in place (the agent
        swaps the filter atomically: the next request, on any connection, sees it; no
        iptables call). Ports no longer wanted are unsubscribed, new ones subscribed.
        """
        assert self.welcome is not None, "update() before the session started"
        if cli_ports is not None:
            self.cli_ports = cli_ports
        self.incoming = incoming
        wanted = {p.remote: p for p in plan_ports(incoming, self.cli_ports,
                                                  list(self.welcome.listening_ports))}
        current = {p.remote: sub_id for sub_id, p in self._plans_by_sub.items()}
        waits = []
        for port, sub_id in current.items():
            if port not in wanted:
                del self._plans_by_sub[sub_id]
                self.send(Unsubscribe(sub_id=sub_id))
        for port, plan in wanted.items():
            existing = current.get(port)
            if existing is None:
                waits.append(self._subscribe(next(self._sub_ids), plan))
            elif self._plans_by_sub[existing] != plan:
                waits.append(self._subscribe(existing, plan))
        self.plans = list(wanted.values())
        return all(await asyncio.gather(*waits))

    async def _read_loop(self) -> None:
        while True:
            try:
                data = await self.reader.read(256 * 1024)
            except (ConnectionError, OSError) as exc:
                raise AgentError(f"the link to the agent broke: {exc}") from None
            if not data:
                raise AgentError("the agent closed the link")
            self._last_seen = time.monotonic()
            for message in self._decode(data):
                await self._dispatch(message)

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            if time.monotonic() - self._last_seen > LINK_TIMEOUT_S:
                raise AgentError(f"the agent did not answer for {LINK_TIMEOUT_S:g} s")
            self.send(Ping(nonce=os.urandom(8)))

    def _decode(self, data: bytes) -> list[Message]:
        try:
            return self._decoder.receive_data(data)
        except WireProtocolError as exc:
            raise AgentError(f"protocol error on the link to the agent: {exc}") from None

    async def _dispatch(self, message: Message) -> None:
        match message:
            case Flow(records=rows):
                for row in rows:
                    record = event_from_row(row)
                    self._count(record)
                    self._event(record)
            case RequestStart(stream=sid, flow_id=flow_id):
                if flow_id is not None:  # stolen (mirror copies have no id of their own)
                    self._event(_started(message, flow_id))
                self._open_stream(sid, message)
            case ConnectionStart(stream=sid):
                self._open_stream(sid, message)
            case Reset(stream=sid):
                # The agent dropped the stream (its caller left, or the local app did not
                # answer in time): stop delivering it. Its local connection is closed, so
                # the app sees the request abandoned and no task waits on it for good.
                state = self._streams.pop(sid, None)
                if state is not None and state.task is not None:
                    state.task.cancel()
            case Pause(stream=sid):
                if sid in self._streams:
                    self._paused.setdefault(sid, asyncio.Event())
            case Resume(stream=sid):
                resumed = self._paused.pop(sid, None)
                if resumed is not None:
                    resumed.set()
            case Data(stream=sid) | End(stream=sid) | Trailers(stream=sid):
                state = self._streams.get(sid)
                if state is not None:
                    await state.queue.put(message)
            case Subscribed(sub_id=sub_id, port=port, mode=mode, filter=text):
                self._event({"type": "subscribed", "port": port, "mode": mode, "filter": text})
                self._settle(sub_id, True)
            case Error(stream=0, message=text):
                raise AgentError(f"the agent ended the session: {text}")
            case Error(stream=sub_id, message=text):
                self._event({"type": "error", "message": text})
                self._settle(sub_id, False)
            case Notice(level=level, message=text):
                self._event({"type": "error" if level == "error" else "warning",
                             "message": text})
            case Ping(nonce=nonce):
                self.send(Pong(nonce=nonce))
            case Pong():
                pass
            case _:
                self._event({"type": "warning",
                             "message": f"ignored unexpected {type(message).__name__}"})

    def _settle(self, sub_id: int, ok: bool) -> None:
        future = self._pending_subs.get(sub_id)
        if future is not None and not future.done():
            future.set_result(ok)

    def _open_stream(self, sid: int, start: RequestStart | ConnectionStart) -> None:
        plan = next((p for p in self.plans if p.remote == start.port), None)
        local = (self.local_host, plan.local if plan is not None else start.port)
        state = _StreamState(queue=asyncio.Queue(STREAM_QUEUE_FRAMES))
        self._streams[sid] = state
        if isinstance(start, RequestStart):
            work = deliver_request(self, self._pool, start, state.queue, local)
        else:
            work = deliver_connection(self, start, state.queue, local)
        state.task = asyncio.create_task(self._stream_task(sid, work), name=f"stream-{sid}")

    async def _stream_task(self, sid: int, work: Any) -> None:
        try:
            await work
        finally:
            self._streams.pop(sid, None)
            paused = self._paused.pop(sid, None)
            if paused is not None:
                paused.set()

    def report_error(self, message: str) -> None:
        """A delivery failed (the local app is unreachable, ...)."""
        self._event({"type": "error", "message": message})

    def _count(self, record: dict[str, Any]) -> None:
        verdict = record.get("verdict")
        if verdict == "stolen":
            self.stats.stolen += 1
        elif verdict == "passed":
            self.stats.passed += 1
        elif verdict == "mirrored":
            self.stats.mirrored += 1

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "error":
            self.stats.errors += 1
        elif event.get("type") == "warning":
            self.stats.warnings += 1
        self.on_event(event)


def _started(start: RequestStart, flow_id: int) -> dict[str, Any]:
    """The ``started`` event of a stolen request: the keys its ``request`` event will have
    that are known at arrival (status, duration and sizes come with the flow record)."""
    host = next((value for name, value in start.headers if name.lower() == "host"), None)
    return {"type": "started", "id": flow_id, "ts": round(time.time(), 6), "port": start.port,
            "protocol": "h2" if start.http_version == "2" else "http/1.1",
            "method": start.method, "authority": host, "path": start.target,
            "verdict": "stolen"}


def _first(group: BaseExceptionGroup[BaseException], kind: type[AgentError]) -> AgentError | None:
    """The first ``kind`` error among a task group's (possibly nested) failures."""
    for exc in group.exceptions:
        if isinstance(exc, kind):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first(exc, kind)
            if found is not None:
                return found
    return None
