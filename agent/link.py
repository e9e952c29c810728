"""One attached session, seen from the agent: its control connection, subscriptions, streams.

The first frame must be a ``Hello`` carrying the session token; anything else ends the
link. After that the session subscribes ports and answers the requests the agent steals
for it, each on its own wire stream. When the link ends, for whatever reason, its
subscriptions are removed (its ports revert to passthrough) and its open streams are
aborted; other sessions are not disturbed.

A stolen request has a bound: the session's local app must start answering (its response
head must come back) within the session's ``response_timeout``, counted from the moment
the agent opens the request's stream. Past it the remote caller gets a 504 naming the
local app, the session an error notice, and the stream is reset (the session stops
delivering it). The response body, once started, takes as long as it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

from waylay.core.engine.body_filter import DEFAULT_BODY_BUFFER_SIZE as BODY_SIZE
from waylay.core.engine.body_filter import DEFAULT_BODY_BUFFER_TIMEOUT_MS as BODY_MS
from waylay.core.engine.config import ConcurrentSteal, Mode
from waylay.core.engine.errors import ConfigError
from waylay.core.engine.filters import compile_http_filter
from waylay.core.engine.flow import MirrorResult
from waylay.core.engine.registry import Subscription, SubscriptionRefused
from waylay.core.engine.routing import (
    LocalAborted,
    LocalData,
    LocalEnd,
    LocalResponse,
    LocalTrailers,
)
from waylay.core.engine.wire import (
    DEFAULT_RESPONSE_TIMEOUT_S,
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
    ResponseStart,
    Resume,
    Subscribe,
    Subscribed,
    Trailers,
    Unsubscribe,
    Welcome,
    WireDecoder,
    WireProtocolError,
    check_hello,
    encode,
    encode_data,
    headers_from_wire,
    headers_to_wire,
)

if TYPE_CHECKING:
    from waylay.agent.worker import Agent
    from waylay.core.engine.flow import FlowRecord, FlowRow

log = logging.getLogger("waylay.agent")

HANDSHAKE_TIMEOUT_S = 10.0
# Bytes queued towards a session before the agent waits for it (per link).
LINK_HIGH_WATER = 1024 * 1024
# Bytes of a PAUSEd stream's answer the agent buffers for its slow client before it gives
# up on the stream: a session that obeys PAUSE has at most its link's buffer (about
# LINK_HIGH_WATER plus the socket's) in flight, so only one that ignores it gets here.
PAUSED_STREAM_LIMIT = 8 * LINK_HIGH_WATER
# Flow records wait at most this long, or until this many are queued, before they are
# sent: the dashboard's refresh rate is coarser than that, and batching keeps reporting
# cheap on a busy port. The count keeps a frame far below the wire's MAX_PAYLOAD.
FLOW_BATCH_DELAY_S = 0.05
FLOW_BATCH_MAX = 200
# Counted warnings (dropped mirror copies, shadowed requests) go out at most this often.
NOTES_DELAY_S = 1.0


LocalEvent: TypeAlias = LocalResponse | LocalData | LocalTrailers | LocalEnd | LocalAborted
"""What the session's local app says on a stolen request's stream (the engine's events
from the session's side)."""

# The frames that belong to a stream the agent opened (the rest are the link's own).
_STREAM_FRAMES = frozenset({ResponseStart, Data, End, Reset, Trailers})


class _WireStream:
    """One wire stream from the agent to a session: the sending half and its end.

    A request's head is held until the first of its body, its end or the end of the loop
    turn: a bodiless request (the usual one) leaves as one frame, its RequestStart marked
    ``end``.
    """

    def __init__(self, link: ClientLink, stream_id: int) -> None:
        self.link = link
        self.stream_id = stream_id
        self.done = False
        self._finished: asyncio.Event | None = None  # made when someone waits for the end
        self._sent_end = False
        self._got_end = False
        self._head: _Head | None = None

    @property
    def finished(self) -> asyncio.Event:
        """Set once the stream is over (both ends, or a reset)."""
        if self._finished is None:
            self._finished = asyncio.Event()
            if self.done:
                self._finished.set()
        return self._finished

    def open_request(self, head: _Head) -> None:
        """Announce the request ``head`` (fields of a RequestStart without its stream)."""
        self._head = head
        self.link.hold_head(self)

    def release_head(self, *, end: bool = False) -> None:
        """Send the held head, if any (``end``: the request is complete with it)."""
        head, self._head = self._head, None
        if head is not None:
            sub_id, port, method, target, version, headers, peer, flow_id = head
            self.link.send(RequestStart(
                stream=self.stream_id, sub_id=sub_id, port=port, method=method,
                target=target, http_version=version, headers=headers, peer=peer,
                flow_id=flow_id, end=end))

    def send_data(self, data: bytes) -> None:
        if not self.done:
            if self._head is not None:
                self.release_head()
            self.link.send_raw(encode_data(self.stream_id, data))

    def end(self) -> None:
        if not self.done and not self._sent_end:
            self._sent_end = True
            if self._head is not None:
                self.release_head(end=True)
            else:
                self.link.send(End(stream=self.stream_id))
            self._maybe_finish()

    def reset(self, reason: str) -> None:
        if not self.done:
            if self._head is not None:
                self._head = None  # never announced: the session has nothing to drop
            else:
                self.link.send(Reset(stream=self.stream_id, reason=reason))
            self._finish()

    def receive(self, message: Message) -> None:
        raise NotImplementedError

    def pace(self) -> None:
        raise NotImplementedError

    def link_lost(self) -> None:
        raise NotImplementedError

    def _maybe_finish(self) -> None:
        if self._sent_end and self._got_end:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        if self._finished is not None:
            self._finished.set()
        self.link.streams.pop(self.stream_id, None)


# A RequestStart's fields but its stream: sub_id, port, method, target, http_version,
# headers, peer, flow_id.
_Head = tuple[int, int, str, str, str, tuple[tuple[str, str], ...], str, int | None]


class StreamOwner(Protocol):
    """The connection a stolen stream belongs to: an ``InterceptedConnection``, or one
    stream of an HTTP/2 connection (``waylay.agent.h2_connection``)."""

    peer: str

    def on_local(self, event: LocalEvent) -> None: ...
    def congested(self) -> bool:
        """Too much of the local app's answer is queued towards the remote client."""
    def backlog(self) -> int:
        """Bytes of the local app's answer queued towards the remote client."""
    def on_local_whole(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                       body: bytes) -> None:
        """The local app's whole answer at once: LocalResponse, LocalData, LocalEnd."""
    async def drain_downstream(self) -> None:
        """Return once the remote client has taken enough of it (or is gone)."""
    def write_local(self, data: bytes) -> None: ...
    def end_local(self) -> None: ...
    def abort_local(self) -> None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalBound:
    """How long a session's local app has to start answering a stolen request, and where
    that app is (named in the caller's 504; None when an older session did not say)."""

    seconds: float = DEFAULT_RESPONSE_TIMEOUT_S
    local: str | None = None


class Stream(_WireStream):
    """A stolen request, or a whole stolen connection: the local app answers the client.

    A stolen request given a ``bound`` is timed from here to its ResponseStart (see the
    module docstring); ``what`` names the request in the error ("GET /x on port 80").
    Whole connections have no response to wait for and are never timed.
    """

    def __init__(self, link: ClientLink, stream_id: int, conn: StreamOwner,
                 *, whole: bool, bound: LocalBound | None = None, what: str = "") -> None:
        super().__init__(link, stream_id)
        self.conn = conn
        self.whole = whole
        self.tunnel = False  # a stolen upgrade the local app accepted
        self._paused = False  # the session was told to PAUSE this stream
        self.bound = bound
        self.what = what
        self._timer: asyncio.TimerHandle | None = None
        if bound is not None and not whole:
            self._timer = link.loop.call_later(bound.seconds, self._too_slow)

    def _too_slow(self) -> None:
        """The local app did not start answering in time: reset the wire stream (the
        session stops delivering it), tell the session, and answer the caller 504."""
        self._timer = None
        bound = self.bound
        if self.done or bound is None:
            return
        within = f"within {bound.seconds:g} s"
        if bound.local is not None:
            app, named = bound.local, f"the local app at {bound.local}"
        else:
            app = named = f"the local app of session {self.link.name}"
        self.link.send(Notice(level="error", message=f"{self.what}: {named} did not answer "
                              f"{within} (agent.local_response_timeout)"))
        self.reset(f"the local app did not answer {within}")
        self.conn.on_local(LocalAborted(reason=f"no answer from {app} {within}", status=504))

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super()._finish()

    async def drain(self) -> None:
        await self.link.drain()

    def send_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        if not self.done:
            self.link.send(Trailers(stream=self.stream_id, headers=headers_to_wire(headers)))

    def receive(self, message: Message) -> None:
        """A frame from the session for this stream."""
        conn = self.conn
        match message:
            case ResponseStart(status=status, reason=reason, headers=headers):
                if self._timer is not None:  # the bound is on the head only: it came
                    self._timer.cancel()
                    self._timer = None
                if status == 101:
                    # An upgrade: the stream now carries the new protocol both ways and
                    # each direction gets a fresh End (the request's already went).
                    self.tunnel = True
                    self._sent_end = self._got_end = False
                elif message.end and not self.whole:
                    # The whole answer in one frame (the usual small one): one call.
                    self._got_end = True
                    self._finish()
                    conn.on_local_whole(status, reason.encode("latin-1"),
                                        headers_from_wire(headers), message.body)
                    return
                conn.on_local(LocalResponse(status=status, reason=reason.encode("latin-1"),
                                            headers=headers_from_wire(headers)))
                if message.body:
                    self._data(message.body)
                if message.end:
                    self._end()
            case Data(data=data):
                self._data(data)
            case End():
                self._end()
            case Trailers(headers=headers):
                if not self.whole:
                    conn.on_local(LocalTrailers(headers=headers_from_wire(headers)))
            case Reset(reason=reason):
                self._finish()
                if self.whole:
                    conn.abort_local()
                else:
                    conn.on_local(LocalAborted(reason=reason))
            case _:
                log.debug("ignoring %r on stream %d", message, self.stream_id)

    def _data(self, data: bytes) -> None:
        if self.whole:
            self.conn.write_local(data)
        else:
            self.conn.on_local(LocalData(data=data))

    def _end(self) -> None:
        self._got_end = True
        conn = self.conn
        if self.whole:
            conn.end_local()
            self._maybe_finish()
        elif self.tunnel:
            self._maybe_finish()
            conn.on_local(LocalEnd())
        else:
            self._finish()
            conn.on_local(LocalEnd())


    def pace(self) -> None:
        """After a frame for this stream: if its remote client is too slow, PAUSE the
        session's sending on this stream only, and RESUME once the client caught up.
        The link itself never waits for one client (no head-of-line blocking)."""
        if self.finished.is_set():
            return
        if self._paused:
            if self.conn.backlog() > PAUSED_STREAM_LIMIT:
                self._give_up("the session kept sending after PAUSE")
            return
        if not self.conn.congested():
            return
        self._paused = True
        self.link.send(Pause(stream=self.stream_id))
        self.link.agent.spawn(self._resume_when_drained(), name="stream-pace")

    def _give_up(self, reason: str) -> None:
        """Drop the stream at both ends: its bytes have nowhere bounded to go."""
        self.reset(reason)
        if self.whole:
            self.conn.abort_local()
        else:
            self.conn.on_local(LocalAborted(reason=reason))

    async def _resume_when_drained(self) -> None:
        try:
            await self.conn.drain_downstream()
        finally:
            self._paused = False
            if not self.finished.is_set():
                self.link.send(Resume(stream=self.stream_id))

    def link_lost(self) -> None:
        if self.done:
            return
        self._finish()
        if self.whole:
            self.conn.abort_local()
        else:
            self.conn.on_local(LocalAborted(reason="the session's link to the agent ended"))


class MirrorStream(_WireStream):
    """A copy of a request (or of a connection's client bytes) for a mirroring session.

    The local app's answer is measured (status, time) into this stream's own
    ``MirrorResult`` and dropped: the remote client only ever hears the original app, and
    only this session ever sees its local app's answer.
    """

    def __init__(self, link: ClientLink, stream_id: int, record: FlowRecord | None,
                 clause: str | None, on_done: Callable[[MirrorStream], None],
                 *, bound: LocalBound | None = None) -> None:
        super().__init__(link, stream_id)
        self.record = record
        self.result = MirrorResult(clause=clause)
        self.started = time.monotonic()
        self._on_done = on_done
        link.mirrors_in_flight += 1
        # A request copy's answer has the same bound as a stolen request's: a local app
        # that never answers must not hold the session's row (nor a copy slot) for good.
        self._timer: asyncio.TimerHandle | None = None
        if bound is not None and record is not None:
            self._timer = asyncio.get_running_loop().call_later(
                bound.seconds, self.reset,
                f"the local app did not answer the copy within {bound.seconds:g} s")

    def receive(self, message: Message) -> None:
        result = self.result
        match message:
            case ResponseStart(status=status, headers=headers):
                result.status = status
                if self.record is not None and self.record.request_headers is not None:
                    # the session asked to capture
                    result.headers = headers_from_wire(headers)
                    result.body = bytearray()
                if message.body and result.body is not None:
                    result.capture_body(message.body)
                if message.end:
                    self._end()
            case Data(data=data) if result.body is not None:
                result.capture_body(data)
            case End():
                self._end()
            case Reset(reason=reason):
                result.error = reason
                self._finish()
            case _:
                pass  # the local app's body: measured, not kept

    def reset(self, reason: str) -> None:
        """The copy is abandoned (dropped for congestion, or its client left): say why."""
        if not self.finished.is_set() and self.result.error is None:
            self.result.error = reason
        super().reset(reason)

    def _end(self) -> None:
        self._got_end = True
        if self.record is not None:
            self._finish()  # a request copy is done once its answer is
        else:
            self._maybe_finish()

    def link_lost(self) -> None:
        if not self.done:
            self.result.error = "the session's link to the agent ended"
            self._finish()

    def pace(self) -> None:
        """Copies are never paced: their answers are measured and dropped."""

    def _finish(self) -> None:
        if self.done:
            return
        if self._timer is not None:
            self._timer.cancel()
        super()._finish()
        self.link.mirrors_in_flight -= 1
        self.result.duration_ms = round((time.monotonic() - self.started) * 1000.0, 3)
        self._on_done(self)


def copy_to_mirrors(mirrors: Iterable[MirrorStream], data: bytes) -> list[MirrorStream]:
    """Send client bytes to each copy; a congested session loses its copy (reset, and
    counted for a warning), never slowing the connection down. Returns the copies kept."""
    kept = []
    for mirror in mirrors:
        if mirror.link.congested:
            mirror.reset("dropped: the session is not keeping up")
            mirror.link.mirror_drops += 1
            mirror.link.note()
        else:
            mirror.send_data(data)
            kept.append(mirror)
    return kept


class ClientLink:
    """The control connection of one session.

    Frames towards the session are gathered and written once per turn of the event loop:
    on a busy port one write carries the heads of many stolen requests, and a request's
    head and end leave together. Frames from the session are handled as they are decoded
    (no ``await`` per frame); the remote clients they answer are drained once per read.
    """

    def __init__(self, agent: Agent, link_id: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.agent = agent
        self.link_id = link_id
        self._reader = reader
        self._writer = writer
        self.loop = asyncio.get_running_loop()
        self._out: list[bytes] = []  # frames not written yet (see send_raw)
        self._out_bytes = 0
        self._flush_scheduled = False
        self._heads: list[_WireStream] = []  # streams holding their request head
        self.streams: dict[int, Stream | MirrorStream] = {}
        self.mirrors_in_flight = 0
        self.last_seen = time.monotonic()  # the session pings; silence means it is gone
        self.mirror_drops = 0  # copies dropped since the last warning about it
        self.shadowed = 0  # requests matching this session's filter taken by an earlier one
        self.client_subs: dict[int, int] = {}  # agent sub id -> the session's own sub id
        self.bounds: dict[int, LocalBound] = {}  # agent sub id -> its local app's bound
        self._flows: list[FlowRow] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._notes_handle: asyncio.TimerHandle | None = None
        self._decoder = WireDecoder()
        self._early: list[Message] = []  # frames that arrived with the Hello
        self.name = "?"

    def send(self, message: Message) -> None:
        self.send_raw(encode(message))

    def send_raw(self, frame: bytes) -> None:
        """Queue ``frame``; what is queued in one turn of the loop leaves as one write."""
        if self._writer.is_closing():
            return
        self._out.append(frame)
        self._out_bytes += len(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def hold_head(self, stream: _WireStream) -> None:
        """``stream`` holds its request head: it is sent at the latest with this turn's
        frames."""
        self._heads.append(stream)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        heads, self._heads = self._heads, []
        for stream in heads:
            stream.release_head()
        self._flush_scheduled = False
        out, self._out = self._out, []
        self._out_bytes = 0
        if out and not self._writer.is_closing():
            self._writer.write(out[0] if len(out) == 1 else b"".join(out))

    def _queued(self) -> int:
        return self._writer.transport.get_write_buffer_size() + self._out_bytes

    @property
    def congested(self) -> bool:
        """Too much is queued towards this session: mirror copies are dropped, not queued."""
        return self._queued() > LINK_HIGH_WATER

    async def drain(self) -> None:
        if self._queued() > LINK_HIGH_WATER:
            self.flush()
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()

    async def handshake(self) -> bool:
        """Read and check the session's Hello, within HANDSHAKE_TIMEOUT_S.

        False when the connection is refused (a wrong or missing token, bytes that are not
        a Hello, silence, a close): the peer is told why and the connection is closed. Such
        a connection never becomes a session: the agent does not count it, so it neither
        keeps the agent alive nor receives anything meant for sessions.
        """
        try:
            hello = await asyncio.wait_for(self._read_hello(), HANDSHAKE_TIMEOUT_S)
        except (WireProtocolError, TimeoutError, ConnectionError, OSError) as exc:
            reason = "handshake timed out" if isinstance(exc, TimeoutError) else str(exc)
            self.send(Error(stream=0, message=reason, code="handshake"))
            self.flush()
            self._writer.close()
            return False
        self.name = hello.client
        return True

    async def run(self) -> None:
        """Serve the session after a successful ``handshake`` until its link ends."""
        self.send(Welcome(agent=self.agent.name, session=self.agent.chain,
                          listening_ports=tuple(self.agent.listening_ports())))
        try:
            early, self._early = self._early, []
            await self._dispatch_all(early)
            while True:
                data = await self._reader.read(256 * 1024)
                if not data:
                    break
                self.last_seen = time.monotonic()
                await self._dispatch_all(self._decoder.receive_data(data))
        except WireProtocolError as exc:
            self.send(Error(stream=0, message=f"protocol error: {exc}", code="protocol"))
        except (ConnectionError, OSError):
            pass
        finally:
            await self._teardown()

    async def _read_hello(self) -> Hello:
        while True:
            data = await self._reader.read(64 * 1024)
            if not data:
                raise ConnectionError("the session closed during the handshake")
            messages = self._decoder.receive_data(data)
            if messages:
                hello = check_hello(messages[0], self.agent.token)
                # Frames sent right behind the Hello wait until the session is registered.
                self._early = messages[1:]
                return hello

    async def _dispatch_all(self, messages: list[Message]) -> None:
        """Hand the frames of one read over; then pace each stream they touched: a stream
        whose remote client is too slow is PAUSEd at the session (``Stream.pace``), the
        link itself never waits for one client."""
        streams = self.streams
        touched: list[Stream | MirrorStream] = []
        for message in messages:
            if type(message) in _STREAM_FRAMES:
                stream = streams.get(message.stream)  # type: ignore[union-attr]
                if stream is not None:
                    stream.receive(message)
                    if not touched or touched[-1] is not stream:
                        touched.append(stream)
            else:
                await self._dispatch(message)
        for stream in touched if len(touched) < 2 else dict.fromkeys(touched):
            stream.pace()

    async def _dispatch(self, message: Message) -> None:
        match message:
            case Ping(nonce=nonce):
                self.send(Pong(nonce=nonce))
            case Pong():
                pass
            case Subscribe():
                await self._subscribe(message)
            case Unsubscribe(sub_id=client_sub):
                for sub_id, mine in list(self.client_subs.items()):
                    if mine == client_sub:
                        del self.client_subs[sub_id]
                        self.bounds.pop(sub_id, None)
                        await self.agent.unsubscribe(sub_id)
            case _:
                self.send(Error(stream=0, message=f"unexpected {type(message).__name__}",
                                code="protocol"))

    async def _subscribe(self, message: Subscribe) -> None:
        try:
            http_filter = (compile_http_filter(message.filter)
                           if message.filter is not None else None)
            existing = next((mine for mine, theirs in self.client_subs.items()
                             if theirs == message.sub_id), None)
            sub = Subscription(sub_id=existing or self.agent.next_sub_id(),
                               link_id=self.link_id, port=message.port, mode=Mode(message.mode),
                               http_filter=http_filter, capture=message.capture,
                               body_buffer_size=message.body_buffer_size or BODY_SIZE,
                               body_buffer_timeout_ms=message.body_buffer_timeout or BODY_MS,
                               concurrent=ConcurrentSteal(message.on_concurrent_steal
                                                          or ConcurrentSteal.ABORT),
                               inject_headers=message.inject_headers)
            if existing is None:
                await self.agent.subscribe(sub)
            else:  # a filter change: no iptables call
                self.agent.displaced(self.agent.registry.replace(sub))
        except (SubscriptionRefused, ConfigError) as exc:
            self.send(Error(stream=message.sub_id, message=str(exc), code="refused"))
            return
        except Exception as exc:  # iptables failures and the like: report, keep the link
            self.send(Error(stream=message.sub_id, message=f"cannot intercept port "
                            f"{message.port}: {exc}", code="refused"))
            return
        self.client_subs[sub.sub_id] = message.sub_id
        self.bounds[sub.sub_id] = LocalBound(
            seconds=message.response_timeout or DEFAULT_RESPONSE_TIMEOUT_S, local=message.local)
        self.send(Subscribed(sub_id=message.sub_id, port=message.port, mode=message.mode,
                             filter=http_filter.text if http_filter is not None else None))

    def lost(self, sub: Subscription, why: str) -> None:
        """``sub`` was taken from this session (another one's override): forget it, say
        why on its stream."""
        client_sub = self.client_subs.pop(sub.sub_id, None)
        self.bounds.pop(sub.sub_id, None)
        if client_sub is not None:
            self.send(Error(stream=client_sub, message=why, code="taken"))

    def bound_for(self, sub_id: int) -> LocalBound:
        """The bound on stolen requests of this link's subscription ``sub_id``."""
        return self.bounds.get(sub_id) or LocalBound()

    def close(self) -> None:
        self.flush_flows()
        self.flush()
        self._writer.close()

    def send_flow(self, record: FlowRow) -> None:
        """Queue a flow record; records leave in batches (few frames on a busy port)."""
        self._flows.append(record)
        if len(self._flows) >= FLOW_BATCH_MAX:
            self.flush_flows()
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(FLOW_BATCH_DELAY_S, self.flush_flows)

    def flush_flows(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._flows:
            records, self._flows = tuple(self._flows), []
            self.send(Flow(records=records))

    def note(self) -> None:
        """Counters changed (drops, shadowed requests): report them within a second."""
        if self._notes_handle is None:
            loop = asyncio.get_running_loop()
            self._notes_handle = loop.call_later(NOTES_DELAY_S, self.flush_notes)

    def flush_notes(self) -> None:
        self._notes_handle = None
        if self.mirror_drops:
            self.warn(f"dropped {self.mirror_drops} mirror copies: the local app (or the "
                      "link to it) is slower than the traffic; the original app was not "
                      "slowed down")
            self.mirror_drops = 0
        if self.shadowed:
            self.warn(f"{self.shadowed} requests matching your filter went to another "
                      "session that subscribed earlier")
            self.shadowed = 0

    def warn(self, message: str) -> None:
        self.send(Notice(level="warning", message=message))

    async def _teardown(self) -> None:
        self.flush_flows()
        if self._notes_handle is not None:
            self._notes_handle.cancel()
            self.flush_notes()
        for stream in list(self.streams.values()):
            stream.link_lost()
        self.streams.clear()
        self.client_subs.clear()
        self.bounds.clear()
        await self.agent.link_closed(self)
        self.flush()
        self._writer.close()
