"""The client session (asyncio): attach to an agent, subscribe ports, deliver stolen traffic.

This is the only way the CLI and the dashboard talk to an agent. A session owns one link
(a stream pair to the agent's control socket, whose transport ``waylay.core.client.session_link``
takes over). The agent opens one wire stream per stolen request (or per stolen TCP connection);
the session delivers each to the local app and streams the answer back: HTTP/1.x requests
over pooled keep-alive connections driven by callbacks (``waylay.core.client.local_http1``, the hot
path: no task per request), HTTP/2 requests and whole connections by a task each
(``waylay.core.client.local_delivery``, ``waylay.core.client.local_h2``). Every finished request,
stolen or passed, arrives from the agent as a flow row, is parsed once into a typed
``RequestEvent`` (``waylay.core.engine.events``, docs/architecture.md §3) and leaves through
``on_event``; a stolen request also leaves a ``StartedEvent`` as soon as it arrives (same
``id`` as its later request event), so a request the local app is slow to answer is visible
while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, assert_never

from waylay.core.client.local_delivery import LocalPool, deliver_connection, deliver_request
from waylay.core.client.local_http1 import Http1Delivery, LocalHttp1Pool
from waylay.core.client.session_link import LinkClosed, SessionLink
from waylay.core.engine import events
from waylay.core.engine.config import ConcurrentSteal, IncomingConfig, Mode
from waylay.core.engine.errors import AgentError
from waylay.core.engine.filters import HttpFilter
from waylay.core.engine.flow import Verdict
from waylay.core.engine.wire import (
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
    encode,
)

EventSink = Callable[[events.Event], None]

PING_INTERVAL_S = 5.0
LINK_TIMEOUT_S = 15.0  # no frame from the agent for this long: the link is dead
# Frames queued for one stream delivered by a task (HTTP/2, whole connections) before the
# link stops handing over frames: bounds memory when the local app reads a big upload
# slowly.
STREAM_QUEUE_FRAMES = 64


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


class _QueuedStream:
    """A stream delivered by a task (``waylay.core.client.local_delivery``) that reads its frames
    from a bounded queue; a full queue holds the link until the task takes the frame."""

    def __init__(self, session: Session, sid: int) -> None:
        self.session = session
        self.sid = sid
        self.queue: asyncio.Queue[Message] = asyncio.Queue(STREAM_QUEUE_FRAMES)
        self.task: asyncio.Task[None] | None = None
        self._waiting = 0  # frames waiting for room (each holds the link)
        self._putters: set[asyncio.Task[None]] = set()

    def frame(self, message: Message) -> None:
        if not self._waiting:
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(message)
                return
        self._waiting += 1
        link = self.session.link
        if link is not None:
            link.hold()
        putter = asyncio.get_running_loop().create_task(self._put(message),
                                                        name=f"queue-{self.sid}")
        self._putters.add(putter)
        putter.add_done_callback(self._putters.discard)

    async def _put(self, message: Message) -> None:
        try:
            if self.task is not None and not self.task.done():
                await self.queue.put(message)
        finally:
            self._waiting -= 1
            link = self.session.link
            if link is not None:
                link.release()

    def reset(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.drop_waiting()

    def drop_waiting(self) -> None:
        """The delivery is over: frames still waiting for room are dropped (their holds on
        the link with them)."""
        for putter in list(self._putters):
            putter.cancel()


_Stream = Http1Delivery | _QueuedStream


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
    # agent.max_body_buffer_size (bytes) and _timeout (ms) for a body filter; None: the
    # agent's defaults (mirrord's).
    body_buffer: tuple[int, int] | None = None
    # agent.inject_headers: answers on this session's filtered ports carry Waylay-Agent.
    inject_headers: bool = False
    client_name: str = field(default_factory=lambda: f"waylay-cli/{os.getpid()}")
    stats: SessionStats = field(default_factory=SessionStats)
    plans: list[PortPlan] = field(default_factory=list)
    welcome: Welcome | None = None

    def __post_init__(self) -> None:
        self._decoder = WireDecoder()
        self._streams: dict[int, _Stream] = {}
        self._pool = LocalPool()  # HTTP/2 and whole connections (waylay.core.client.local_delivery)
        self._http1 = LocalHttp1Pool()
        self._to_flush: list[Http1Delivery] = []
        self.link: SessionLink | None = None
        self._link_ended: asyncio.Future[str] | None = None  # how it ended
        self._hello_answer: asyncio.Future[Message] | None = None
        self._seen_reads = 0
        self._stopping = asyncio.Event()
        self.ended_cleanly = False  # run() ended by stop(), not by a link failure
        self.planned = False  # welcomed, and the ports to subscribe are decided (plans)
        self._last_seen = time.monotonic()
        self._plans_by_sub: dict[int, PortPlan] = {}
        self._pending_subs: dict[int, asyncio.Future[bool]] = {}
        # Streams the agent PAUSEd; the event is set on RESUME (or when the stream ends).
        self._paused: dict[int, asyncio.Event] = {}
        self._sub_ids = itertools.count(1)

    # --- the link (waylay.core.client.session_link), as deliveries see it
    # --------------------------

    def send(self, message: Message) -> None:
        self.send_raw(encode(message))

    def send_raw(self, frame: bytes) -> None:
        if self.link is not None:
            self.link.send_raw(frame)
        elif not self.writer.is_closing():
            self.writer.write(frame)

    async def drain(self) -> None:
        if self.link is not None:
            await self.link.drain()

    @property
    def write_paused(self) -> bool:
        return self.link is not None and self.link.write_paused

    def when_writable(self, callback: Callable[[], None]) -> None:
        if self.link is not None:
            self.link.when_writable(callback)
        else:
            callback()

    def hold(self) -> None:
        if self.link is not None:
            self.link.hold()

    def release(self) -> None:
        if self.link is not None:
            self.link.release()

    def flush_later(self, delivery: Http1Delivery) -> None:
        """``delivery`` wrote request bytes: they go out once this read's frames are in."""
        self._to_flush.append(delivery)

    def _batch_end(self) -> None:
        to_flush, self._to_flush = self._to_flush, []
        for delivery in to_flush:
            delivery.flush()

    def _take_link(self) -> SessionLink:
        """The link's transport, from the stream pair (once)."""
        if self.link is None:
            loop = asyncio.get_running_loop()
            self._link_ended = loop.create_future()
            self.link = SessionLink.take_over(self.writer, self._decoder, self._on_frame,
                                              self._batch_end, self._on_link_closed)
        return self.link

    def _on_link_closed(self, why: LinkClosed) -> None:
        answer = self._hello_answer
        if answer is not None and not answer.done():
            answer.set_exception(AgentError("the agent closed the link during the handshake"))
        self._end_link(str(why))

    def _end_link(self, why: str) -> None:
        """The link is over: ``run`` raises AgentError(why) unless it was stopping."""
        ended = self._link_ended
        if ended is not None and not ended.done():
            ended.set_result(why)
        if self.link is not None:
            self.link.close()

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
            else:
                await self._start_link()
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
            for stream in list(self._streams.values()):
                stream.reset()
            self._streams.clear()
            self._pool.close()
            self._http1.close()
            if self.link is not None:
                self.link.close()
            self.writer.close()

    async def handshake(self) -> None:
        """Hello -> Welcome. ``run`` does it when it was not done before; doing it first
        tells a caller whether the agent takes the session before anything is served."""
        loop = asyncio.get_running_loop()
        self._hello_answer = loop.create_future()
        self.send(Hello(token=self.token, client=self.client_name))
        await self._start_link()
        try:
            first = await asyncio.wait_for(self._hello_answer, LINK_TIMEOUT_S)
        except TimeoutError:
            raise AgentError("the agent did not answer the handshake") from None
        finally:
            self._hello_answer = None
        if isinstance(first, Error):
            raise AgentError(f"the agent refused the session: {first.message}")
        if not isinstance(first, Welcome):
            raise AgentError(f"unexpected {type(first).__name__} from the agent")

    async def _start_link(self) -> None:
        link = self._take_link()
        if link.started:
            return
        await link.start(self.reader)

    async def _subscribe_all(self) -> None:
        assert self.welcome is not None
        self.plans = plan_ports(self.incoming, self.cli_ports,
                                list(self.welcome.listening_ports))
        self.planned = True
        if not self.plans:
            self._event(events.WarningEvent(
                message="nothing to intercept: no port given and none listening in the "
                "target (use -p PORT)" if self.incoming.mode is not Mode.OFF else
                "mode is off: no traffic is intercepted"))
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
            response_timeout=self.local_response_timeout,
            body_buffer_size=self.body_buffer[0] if self.body_buffer else None,
            body_buffer_timeout=self.body_buffer[1] if self.body_buffer else None,
            on_concurrent_steal=(None if self.incoming.on_concurrent_steal
                                 is ConcurrentSteal.ABORT
                                 else str(self.incoming.on_concurrent_steal)),
            inject_headers=self.inject_headers))
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
        """Wait for the link's end (frames are handled as they arrive, in callbacks)."""
        assert self._link_ended is not None
        raise AgentError(await self._link_ended)

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            if self.link is not None and self.link.received != self._seen_reads:
                self._seen_reads = self.link.received
                self._last_seen = time.monotonic()
            if time.monotonic() - self._last_seen > LINK_TIMEOUT_S:
                raise AgentError(f"the agent did not answer for {LINK_TIMEOUT_S:g} s")
            self.send(Ping(nonce=os.urandom(8)))

    def _on_frame(self, message: Message) -> None:
        """One frame from the agent (a callback of the link: nothing here waits)."""
        answer = self._hello_answer
        if answer is not None and not answer.done():  # the first frame: Welcome or not
            if isinstance(message, Welcome):
                self.welcome = message
            answer.set_result(message)
            return
        try:
            self._dispatch(message)
        except AgentError as exc:
            self._end_link(str(exc))

    def _dispatch(self, message: Message) -> None:
        match message:
            case Flow(records=rows):
                for row in rows:
                    try:
                        record = events.request_event(row)
                    except ValueError as exc:  # one bad record: the others still count
                        self._event(events.WarningEvent(message=f"ignored a flow record: {exc}"))
                        continue
                    self._count(record)
                    self._event(record)
            case RequestStart(stream=sid, flow_id=flow_id):
                if flow_id is not None:  # stolen (mirror copies have no id of their own)
                    self._event(events.started_event(message, flow_id, time.time()))
                self._open_stream(sid, message)
            case ConnectionStart(stream=sid):
                self._open_stream(sid, message)
            case Data(stream=sid) | End(stream=sid) | Trailers(stream=sid):
                stream = self._streams.get(sid)
                if stream is not None:
                    stream.frame(message)
            case Reset(stream=sid):
                # The agent dropped the stream (its caller left, or the local app did not
                # answer in time): stop delivering it. Its local connection is closed, so
                # the app sees the request abandoned and nothing waits on it for good.
                stream = self._streams.pop(sid, None)
                if stream is not None:
                    stream.reset()
            case Pause(stream=sid):
                # Its remote client is slow: send no more of this answer until RESUME.
                stream = self._streams.get(sid)
                if stream is not None:
                    self._paused.setdefault(sid, asyncio.Event())
                    if isinstance(stream, Http1Delivery):
                        stream.pause()
            case Resume(stream=sid):
                resumed = self._paused.pop(sid, None)
                if resumed is not None:
                    resumed.set()
                stream = self._streams.get(sid)
                if isinstance(stream, Http1Delivery):
                    stream.resume()
            case Subscribed(sub_id=sub_id, port=port, mode=mode, filter=text):
                self._event(events.SubscribedEvent(port=port, mode=str(mode), filter=text))
                self._settle(sub_id, True)
            case Error(stream=0, message=text):
                raise AgentError(f"the agent ended the session: {text}")
            case Error(stream=sub_id, message=text):
                self._event(events.ErrorEvent(message=text))
                self._settle(sub_id, False)
            case Notice(level=level, message=text):
                self._event(events.notice_event(level, text))
            case Ping(nonce=nonce):
                self.send(Pong(nonce=nonce))
            case Pong():
                pass
            case _:
                self._event(events.WarningEvent(
                    message=f"ignored unexpected {type(message).__name__}"))

    def _settle(self, sub_id: int, ok: bool) -> None:
        future = self._pending_subs.get(sub_id)
        if future is not None and not future.done():
            future.set_result(ok)

    def _open_stream(self, sid: int, start: RequestStart | ConnectionStart) -> None:
        plan = next((p for p in self.plans if p.remote == start.port), None)
        local = (self.local_host, plan.local if plan is not None else start.port)
        old = self._streams.pop(sid, None)
        if old is not None:  # a stream id reused before its end: the old one is over
            old.reset()
        if isinstance(start, RequestStart) and start.http_version != "2":
            delivery = Http1Delivery(self, self._http1, start, local, self._stream_done)
            self._streams[sid] = delivery
            delivery.begin()
            if start.end:
                delivery.request_end()
            return
        queued = _QueuedStream(self, sid)
        self._streams[sid] = queued
        if isinstance(start, RequestStart):
            if start.end:
                queued.queue.put_nowait(End(stream=sid))
            work = deliver_request(self, self._pool, start, queued.queue, local)
        else:
            work = deliver_connection(self, start, queued.queue, local)
        queued.task = asyncio.create_task(self._stream_task(queued, work), name=f"stream-{sid}")

    def _stream_done(self, sid: int) -> None:
        self._streams.pop(sid, None)
        self._unpause(sid)

    def _unpause(self, sid: int) -> None:
        """A stream ended: nothing waits on its PAUSE any more."""
        paused = self._paused.pop(sid, None)
        if paused is not None:
            paused.set()

    async def _stream_task(self, queued: _QueuedStream, work: Any) -> None:
        try:
            await work
        finally:
            queued.drop_waiting()
            if self._streams.get(queued.sid) is queued:
                del self._streams[queued.sid]
            self._unpause(queued.sid)

    def report_error(self, message: str) -> None:
        """A delivery failed (the local app is unreachable, ...)."""
        self._event(events.ErrorEvent(message=message))

    def _count(self, record: events.RequestEvent) -> None:
        match record.verdict:
            case Verdict.STOLEN:
                self.stats.stolen += 1
            case Verdict.PASSED:
                self.stats.passed += 1
            case Verdict.MIRRORED:
                self.stats.mirrored += 1
            case _:
                assert_never(record.verdict)

    def _event(self, event: events.Event) -> None:
        match event:
            case events.ErrorEvent():
                self.stats.errors += 1
            case events.WarningEvent():
                self.stats.warnings += 1
            case events.RequestEvent() | events.StartedEvent() | events.SubscribedEvent():
                pass
            case _:
                assert_never(event)
        self.on_event(event)


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
