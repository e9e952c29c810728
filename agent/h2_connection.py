"""The asyncio driver of one intercepted HTTP/2 connection (``waylay.core.engine.h2_router``).

The connection driver hands a connection over here once ``waylay.core.engine.detect`` saw the h2
prior-knowledge preface: ``start_h2`` puts an ``H2Interception`` protocol on its
transport. This module only executes the router's commands: bytes to the remote client
and to the original app, one wire stream per stolen h2 stream, flow records. It runs on
callbacks (``asyncio.Protocol``), with no task per connection or per stream: a task
exists only while the upstream connection is being opened, or while a congested
session's link is waited for.

The upstream connection is always a fresh one, opened by the agent's ``Connector``
(``waylay.agent.upstream``: marked ``SO_MARK`` = ``PASSTHROUGH_MARK``, so the agent's own
redirect lets it through): HTTP/2 state (HPACK tables, stream ids,
settings) lives with the connection, so a pooled HTTP/1.1 keep-alive connection cannot
carry it, and an h2 connection is not given back to the pool either. One upstream
connection serves every passed stream of the downstream one.

Backpressure: the router buffers only what the h2 windows allow. Beyond that, reading
stops on the side whose output cannot leave: while the client's transport is over its
write-buffer bound (``WRITE_HIGH_WATER``) neither the original app nor the client is
read (the client's own control frames, PING and SETTINGS floods, need answers that would
queue there); while the original app's transport is over it the client is not read; and
while a session's link is over its own high-water mark, the client (whose stolen
request bodies feed it) is not read. A stolen response the client reads slowly is
paused at the session (``waylay.agent.streams`` sends PAUSE for that stream only) once its backlog
passes ``MAX_LOCAL_BACKLOG``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import time
from typing import TYPE_CHECKING, assert_never, cast

from waylay.agent.mirror_stream import copy_to_mirrors
from waylay.agent.upstream import Connector, connect_marked
from waylay.core.engine.h2_router import MAX_LOCAL_BACKLOG, H2Router
from waylay.core.engine.routing import (
    AwaitBody,
    CloseDownstream,
    Command,
    ConnectUpstream,
    Decide,
    DownstreamClosed,
    DownstreamData,
    Event,
    LocalAborted,
    LocalData,
    LocalEnd,
    LocalResponse,
    LocalTrailers,
    MirrorData,
    MirrorEnd,
    MirrorStart,
    RecordFlow,
    ReleaseUpstream,
    SendDownstream,
    SendUpstream,
    StealAbort,
    StealData,
    StealEnd,
    StealStart,
    StealTrailers,
    UpstreamClosed,
    UpstreamData,
)

if TYPE_CHECKING:
    from waylay.agent.link import ClientLink
    from waylay.agent.mirror_stream import MirrorStream
    from waylay.agent.streams import LocalEvent, Stream
    from waylay.agent.worker import Agent

# Bytes queued on a transport before the side feeding it stops being read: the
# per-connection buffer bound in each direction (as waylay.agent.connection_state's).
WRITE_HIGH_WATER = 256 * 1024
# How long a stolen answer may wait for a client that reads none of it before the stream
# is reset: the wait holds up the session's link (every stream on it), and the session's
# pings, which the agent needs to see within 15 s.
STALL_TIMEOUT_S = 8.0


class Hold(enum.Enum):
    """Why the client is not being read; several can hold at once (a set of them). Each is
    added when its buffer passes its bound and removed when it drains; the client is read
    again once none holds."""

    CLIENT_FULL = "the client's transport is over its write-buffer bound"
    UPSTREAM_FULL = "the original app's transport is over its write-buffer bound"
    LINK_FULL = "a session's link that stolen bodies go to is congested"


class _StolenStream:
    """What a wire stream needs from the connection it belongs to, for one h2 stream."""

    def __init__(self, conn: H2Interception, stream: int) -> None:
        self._conn = conn
        self._stream = stream
        self.peer = conn.peer

    def on_local(self, event: LocalEvent) -> None:
        self._conn.on_local(self._stream, event)

    def congested(self) -> bool:
        return self._conn.stream_congested(self._stream)

    def backlog(self) -> int:
        return self._conn.stream_backlog(self._stream)

    def on_local_whole(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                       body: bytes) -> None:
        self.on_local(LocalResponse(status=status, reason=reason, headers=headers))
        if body:
            self.on_local(LocalData(data=body))
        self.on_local(LocalEnd())

    async def drain_downstream(self) -> None:
        await self._conn.drain_stream(self._stream)

    # Raw bytes and half-closes belong to whole stolen connections, never to a request.
    def write_local(self, data: bytes) -> None:
        pass

    def end_local(self) -> None:
        pass

    def abort_local(self) -> None:
        self.on_local(LocalAborted(reason="the session reset the stream"))


class _Upstream(asyncio.Protocol):
    """The original app's side: its bytes go to the router of the connection."""

    def __init__(self, conn: H2Interception) -> None:
        self._conn = conn
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._conn.upstream_connected(self)

    def data_received(self, data: bytes) -> None:
        self._conn.upstream_event(self, UpstreamData(data=data))

    def eof_received(self) -> bool:
        self._conn.upstream_event(self, UpstreamClosed())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.upstream_event(self, UpstreamClosed(reason=str(exc) if exc else None))

    def pause_writing(self) -> None:
        self._conn.pause_downstream(Hold.UPSTREAM_FULL)

    def resume_writing(self) -> None:
        self._conn.resume_downstream(Hold.UPSTREAM_FULL)


class H2Interception(asyncio.Protocol):
    """One downstream HTTP/2 connection, driven by callbacks until it closes."""

    def __init__(self, agent: Agent, transport: asyncio.Transport,
                 destination: tuple[str, int], *, peer: str, decide: Decide,
                 connect: Connector = connect_marked) -> None:
        self._agent = agent
        self._connect = connect
        self._down = transport
        self._destination = destination
        self.peer = peer
        port = destination[1]
        self._router = H2Router(
            port=port, authority=f"{destination[0]}:{port}", decide=decide,
            next_id=agent.next_flow_id, capture=lambda: agent.registry.capturing(port))
        self._up: _Upstream | None = None
        self._up_task: asyncio.Task[None] | None = None
        self._up_pending: list[bytes] | None = None  # writes queued while connecting
        self._stolen: dict[int, Stream] = {}  # h2 stream id -> its wire stream
        self._mirrors: dict[int, list[MirrorStream]] = {}  # h2 stream id -> its copies
        self._paused: set[Hold] = set()  # why the client is not being read
        self._down_full = False  # the client's transport is over its write-buffer bound
        self._link_wait: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()  # the router moved: backlogs may have shrunk
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._shut = False

    def start(self, head: bytes) -> None:
        """Begin with ``head``, the bytes detection already read."""
        self._down.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if not self._down.is_reading() and not self._down.is_closing():
            self._down.resume_reading()
        self._feed(DownstreamData(data=head))

    # --- the client's transport -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # the transport was handed over; __init__ has it

    def data_received(self, data: bytes) -> None:
        self._feed(DownstreamData(data=data))
        if self._stolen:
            self._wait_for_congested_links()

    def eof_received(self) -> bool:
        # A half-closed client still gets the answers in flight; the router closes the
        # connection once they are sent.
        self._feed(DownstreamClosed())
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown()

    def pause_writing(self) -> None:
        self._down_full = True
        self.pause_downstream(Hold.CLIENT_FULL)
        if self._up is not None and self._up.transport is not None:
            self._up.transport.pause_reading()

    def resume_writing(self) -> None:
        self._down_full = False
        self.resume_downstream(Hold.CLIENT_FULL)
        if self._up is not None and self._up.transport is not None:
            self._up.transport.resume_reading()
        self._progress.set()

    def pause_downstream(self, reason: Hold) -> None:
        if not self._paused and not self._down.is_closing():
            self._down.pause_reading()
        self._paused.add(reason)

    def resume_downstream(self, reason: Hold) -> None:
        self._paused.discard(reason)
        if not self._paused and not self._down.is_closing():
            self._down.resume_reading()

    def _wait_for_congested_links(self) -> None:
        """Stop reading the client while a session it sends stolen bodies to is congested."""
        if self._link_wait is not None:
            return
        congested = {s.link for s in self._stolen.values() if s.link.congested}
        if congested:
            self.pause_downstream(Hold.LINK_FULL)
            self._link_wait = asyncio.create_task(self._drain_links(congested),
                                                  name="h2-link-drain")

    async def _drain_links(self, links: set[ClientLink]) -> None:
        try:
            for link in links:
                await link.drain()
        finally:
            self._link_wait = None
            self.resume_downstream(Hold.LINK_FULL)

    # --- events into the router -------------------------------------------------------

    def _feed(self, event: Event) -> None:
        router = self._router
        if not router.closed:
            self._execute(router.handle(event, time.time()))
        self._progress.set()

    def upstream_event(self, up: _Upstream, event: Event) -> None:
        """From ``up``; ignored once that connection was released."""
        if up is self._up:
            self._feed(event)

    def on_local(self, stream: int, event: LocalEvent) -> None:
        """An event from the session that owns stolen ``stream``."""
        match event:
            case LocalResponse() | LocalData() | LocalTrailers() | LocalEnd() | LocalAborted():
                self._feed(dataclasses.replace(event, stream=stream))
            case _:
                assert_never(event)

    def stream_backlog(self, stream: int) -> int:
        """Bytes of the stolen ``stream``'s answer waiting for the client."""
        return self._router.local_backlog(stream)

    def stream_congested(self, stream: int) -> bool:
        """Too much of the stolen ``stream``'s answer waits for the client (drain_stream
        would wait)."""
        return not self._shut and (self._down_full
                                   or self._router.local_backlog(stream) > MAX_LOCAL_BACKLOG)

    async def drain_stream(self, stream: int) -> None:
        """Wait while the client is too slow for the stolen ``stream``'s answer.

        The session is told to PAUSE this stream meanwhile (``waylay.agent.streams``), its other
        streams go on; a client that takes nothing of the answer for ``STALL_TIMEOUT_S``
        loses the stream (RST_STREAM).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STALL_TIMEOUT_S
        backlog = self._router.local_backlog(stream)
        while (self._down_full or backlog > MAX_LOCAL_BACKLOG) and not self._shut:
            left = deadline - loop.time()
            if left <= 0:
                wire = self._stolen.pop(stream, None)
                if wire is not None:
                    wire.reset("the remote client stopped reading the answer")
                self.on_local(stream, LocalAborted(reason="the client stopped reading"))
                return
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)
            now = self._router.local_backlog(stream)
            if now < backlog:
                deadline = loop.time() + STALL_TIMEOUT_S  # it reads: give it time
            backlog = now

    def _shutdown(self) -> None:
        if self._shut:
            return
        self._shut = True
        if not self._router.closed:
            self._execute(self._router.close(time.time()))
        for stream in self._stolen.values():
            stream.reset("connection closed")
        self._stolen.clear()
        for mirrors in self._mirrors.values():
            for mirror in mirrors:
                mirror.reset("connection closed")
        self._mirrors.clear()
        self._drop_upstream()
        if self._link_wait is not None:
            self._link_wait.cancel()
        self._down.close()
        self._progress.set()
        if not self.closed.done():
            self.closed.set_result(None)

    # --- upstream ---------------------------------------------------------------------

    def _connect_upstream(self) -> None:
        self._up_pending = []
        up = self._up = _Upstream(self)
        self._up_task = asyncio.create_task(self._open_upstream(up), name="h2-upstream")

    async def _open_upstream(self, up: _Upstream) -> None:
        host, port = self._destination
        try:
            await self._connect(self._destination, up)
        except (TimeoutError, OSError) as exc:
            self._up_pending = None
            self.upstream_event(up, UpstreamClosed(
                reason=f"cannot connect to {host}:{port}: {exc or type(exc).__name__}"))
        finally:
            self._up_task = None

    def upstream_connected(self, up: _Upstream) -> None:
        """``up`` is connected: what was queued goes first (its answer may come before
        ``create_connection`` even returns)."""
        transport = up.transport
        assert transport is not None
        if up is not self._up:
            transport.close()
            return
        pending, self._up_pending = self._up_pending or [], None
        transport.write(b"".join(pending))
        if self._down_full:
            transport.pause_reading()

    def _send_upstream(self, data: bytes) -> None:
        up = self._up
        if up is not None and up.transport is not None:
            up.transport.write(data)
        elif self._up_pending is not None:
            self._up_pending.append(data)

    def _drop_upstream(self) -> None:
        up, self._up = self._up, None
        self._up_pending = None
        task, self._up_task = self._up_task, None
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
        if up is not None and up.transport is not None:
            up.transport.close()
        self.resume_downstream(Hold.UPSTREAM_FULL)

    # --- the router's commands --------------------------------------------------------

    def _copy_to_mirrors(self, sid: int, data: bytes) -> None:
        """Copy a request's body to its mirrors; a congested session loses its copy, never
        slows this connection down (as ``waylay.agent.interception`` does)."""
        kept = copy_to_mirrors(self._mirrors.get(sid, ()), data)
        if kept:
            self._mirrors[sid] = kept
        else:
            self._mirrors.pop(sid, None)

    def _execute(self, commands: list[Command]) -> None:
        for command in commands:
            match command:
                case SendDownstream(data=data):
                    self._down.write(data)
                case SendUpstream(data=data):
                    self._send_upstream(data)
                case RecordFlow(record=record, owner=owner, timed_out=timed_out, stream=sid):
                    if owner is not None:
                        self._stolen.pop(sid, None)  # that exchange is over
                    if self._mirrors:
                        for mirror in self._mirrors.pop(sid, ()):
                            mirror.reset("the request ended early")  # or answered early
                    self._agent.record(record, owner, timed_out)
                case StealData(stream=sid, data=data):
                    stream = self._stolen.get(sid)
                    if stream is not None:
                        stream.send_data(data)
                case StealStart(stream=sid):
                    opened = self._agent.open_request_stream(_StolenStream(self, sid), command)
                    if opened is None:
                        # The session vanished between the decision and now.
                        asyncio.get_running_loop().call_soon(
                            self.on_local, sid, LocalAborted(reason="the session is gone"))
                    else:
                        self._stolen[sid] = opened
                case StealTrailers(stream=sid, headers=headers):
                    stream = self._stolen.get(sid)
                    if stream is not None:
                        stream.send_trailers(headers)
                case StealEnd(stream=sid):
                    stream = self._stolen.get(sid)
                    if stream is not None:
                        stream.end()
                case StealAbort(stream=sid, reason=reason):
                    stream = self._stolen.pop(sid, None)
                    if stream is not None:
                        stream.reset(reason)
                case ConnectUpstream():
                    self._connect_upstream()
                case ReleaseUpstream():
                    self._drop_upstream()
                case CloseDownstream():
                    self._down.close()
                case MirrorStart(stream=sid, sub_id=sub_id):
                    copy = self._agent.open_mirror_stream(sub_id, self._destination[1],
                                                          self.peer, command)
                    if copy is not None:
                        self._mirrors.setdefault(sid, []).append(copy)
                case MirrorData(stream=sid, data=data):
                    self._copy_to_mirrors(sid, data)
                case MirrorEnd(stream=sid):
                    for mirror in self._mirrors.pop(sid, ()):
                        mirror.end()
                case AwaitBody():
                    pass  # HTTP/2 streams are not held for their bodies (yet)
                case _:
                    assert_never(command)


def start_h2(agent: Agent, transport: asyncio.Transport, destination: tuple[str, int],
             head: bytes, *, peer: str, decide: Decide,
             connect: Connector = connect_marked) -> H2Interception:
    """Take over the downstream transport of a connection detected as HTTP/2 prior
    knowledge: the returned protocol is set on it, and ``head`` (the bytes already read)
    is processed as the first data. The connection is served until it closes (the
    protocol's ``closed`` future). ``connect`` opens the upstream connection (the
    agent's pool's connector)."""
    conn = H2Interception(agent, transport, destination, peer=peer, decide=decide,
                          connect=connect)
    transport.set_protocol(conn)
    conn.start(head)
    return conn


async def serve_h2(agent: Agent, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   destination: tuple[str, int], head: bytes, *, peer: str,
                   decide: Decide, connect: Connector = connect_marked) -> None:
    """Route an HTTP/2 prior-knowledge connection per stream until it closes.

    A bridge for a stream-based caller: the transport under ``writer`` is taken over
    (``start_h2``); what ``reader`` still buffered comes first.
    """
    transport = cast(asyncio.Transport, writer.transport)
    conn = H2Interception(agent, transport, destination, peer=peer, decide=decide,
                          connect=connect)
    transport.set_protocol(conn)
    reader.feed_eof()  # nothing more arrives there: what it holds is all it will give
    rest = await reader.read()
    conn.start(head + rest)
    await conn.closed
