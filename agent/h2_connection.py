"""The asyncio driver of one intercepted HTTP/2 connection (``core.h2_router``).

``agent.interception`` hands a connection over here once ``core.detect`` saw the h2
prior-knowledge preface. This module only executes the router's commands: bytes to the
remote client and to the original app, one wire stream per stolen h2 stream, flow records.

The upstream connection is always a fresh marked one (``agent.upstream.open_marked``):
HTTP/2 state (HPACK tables, stream ids, settings) lives with the connection, so a pooled
HTTP/1.1 keep-alive connection cannot carry it, and an h2 connection is not given back to
the pool either. One upstream connection serves every passed stream of the downstream one.

Backpressure: the router buffers only what the h2 windows allow, so the reader loops keep
reading; they wait only while a socket's write buffer is over ``WRITE_HIGH_WATER``, or a
session's link is over its own high-water mark. A stolen response the client reads
slowly holds up the link's reader (``drain_downstream``) once its backlog passes
``MAX_LOCAL_BACKLOG``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING, assert_never

from agent.upstream import open_marked
from core.h2_router import MAX_LOCAL_BACKLOG, H2Router
from core.pool import READ_CHUNK
from core.pool import Connection as Upstream
from core.routing import (
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
    from agent.link import ClientLink, MirrorStream, Stream
    from agent.worker import Agent

# Bytes written to a socket before its reader waits for them to drain: the per-connection
# buffer bound in each direction (the same as agent.interception's).
WRITE_HIGH_WATER = 256 * 1024
# How long a stolen answer may wait for a client that reads none of it before the stream
# is reset: the wait holds up the session's link (every stream on it), and the session's
# pings, which the agent needs to see within 15 s.
STALL_TIMEOUT_S = 8.0


async def _drain_if_full(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if transport.get_write_buffer_size() > WRITE_HIGH_WATER and not transport.is_closing():
        with contextlib.suppress(ConnectionError):
            await writer.drain()


class _StolenStream:
    """What a wire stream needs from the connection it belongs to, for one h2 stream."""

    def __init__(self, conn: H2Interception, stream: int) -> None:
        self._conn = conn
        self._stream = stream
        self.peer = conn.peer

    def on_local(self, event: Event) -> None:
        self._conn.on_local(self._stream, event)

    async def drain_downstream(self) -> None:
        await self._conn.drain_stream(self._stream)

    # Raw bytes and half-closes belong to whole stolen connections, never to a request.
    def write_local(self, data: bytes) -> None:
        pass

    def end_local(self) -> None:
        pass

    def abort_local(self) -> None:
        self.on_local(LocalAborted(reason="the session reset the stream"))


class H2Interception:
    """One downstream HTTP/2 connection, driven until it closes."""

    def __init__(self, agent: Agent, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, destination: tuple[str, int], *,
                 peer: str, decide: Decide) -> None:
        self._agent = agent
        self._reader = reader
        self._writer = writer
        self._destination = destination
        self.peer = peer
        port = destination[1]
        self._router = H2Router(
            port=port, authority=f"{destination[0]}:{port}", decide=decide,
            next_id=agent.next_flow_id, capture=lambda: agent.registry.capturing(port))
        self._up: Upstream | None = None
        self._up_task: asyncio.Task[None] | None = None
        self._up_pending: list[bytes] | None = None  # writes queued while connecting
        self._stolen: dict[int, Stream] = {}  # h2 stream id -> its wire stream
        self._mirrors: dict[int, list[MirrorStream]] = {}  # h2 stream id -> its copies
        self._progress = asyncio.Event()  # the router moved: backlogs may have shrunk
        self._closed = asyncio.Event()

    async def run(self, head: bytes) -> None:
        """Serve the connection; ``head`` holds the bytes detection already read."""
        try:
            self._feed(DownstreamData(data=head))
            while not self._router.closed:
                data = await self._reader.read(READ_CHUNK)
                self._feed(DownstreamData(data=data) if data else DownstreamClosed())
                if not data:
                    await self._closed.wait()  # answers in flight still go out
                    return
                await _drain_if_full(self._writer)
                if self._up is not None:
                    await _drain_if_full(self._up.writer)
                for link in self._links():
                    await link.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._shutdown()

    def _copy_to_mirrors(self, sid: int, data: bytes) -> None:
        """Copy a request's body to its mirrors; a congested session loses its copy, never
        slows this connection down (as ``agent.interception`` does)."""
        kept = []
        for mirror in self._mirrors.get(sid, ()):
            if mirror.link.congested:
                mirror.reset("dropped: the session is not keeping up")
                mirror.link.mirror_drops += 1
                mirror.link.note()
            else:
                mirror.send_data(data)
                kept.append(mirror)
        if kept:
            self._mirrors[sid] = kept
        else:
            self._mirrors.pop(sid, None)

    def _links(self) -> set[ClientLink]:
        return {stream.link for stream in self._stolen.values()}

    def _shutdown(self) -> None:
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
        self._writer.close()
        self._closed.set()
        self._progress.set()

    # --- events into the router -----------------------------------------------------------

    def _feed(self, event: Event) -> None:
        if not self._router.closed:
            self._execute(self._router.handle(event, time.time()))
        self._progress.set()

    def on_local(self, stream: int, event: Event) -> None:
        """An event from the session that owns stolen ``stream``."""
        match event:
            case LocalResponse() | LocalData() | LocalTrailers() | LocalEnd() | LocalAborted():
                self._feed(dataclasses.replace(event, stream=stream))
            case _:
                raise AssertionError(f"not a local event: {event!r}")

    async def drain_stream(self, stream: int) -> None:
        """Wait while the client is too slow for the stolen ``stream``'s answer.

        This holds up the session's link, so it is bounded: a client that takes nothing
        of the answer for ``STALL_TIMEOUT_S`` loses the stream (RST_STREAM), and the
        link moves on.
        """
        await _drain_if_full(self._writer)
        backlog = self._router.local_backlog(stream)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STALL_TIMEOUT_S
        while backlog > MAX_LOCAL_BACKLOG:
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

    # --- upstream -------------------------------------------------------------------------

    def _connect_upstream(self) -> None:
        self._up_pending = []
        self._up_task = asyncio.create_task(self._upstream_lifetime(), name="h2-upstream")

    async def _upstream_lifetime(self) -> None:
        dest = f"{self._destination[0]}:{self._destination[1]}"
        try:
            up = await open_marked(self._destination)
        except (TimeoutError, OSError) as exc:
            self._up_pending = None
            self._feed(UpstreamClosed(reason=f"cannot connect to {dest}: {exc}"))
            return
        pending, self._up_pending = self._up_pending or [], None
        self._up = up
        up.writer.write(b"".join(pending))
        try:
            while self._up is up:
                data = await up.reader.read(READ_CHUNK)
                if self._up is not up:
                    return
                self._feed(UpstreamData(data=data) if data else UpstreamClosed())
                if not data:
                    return
                await _drain_if_full(self._writer)
        except (ConnectionError, OSError) as exc:
            if self._up is up:
                self._feed(UpstreamClosed(reason=str(exc)))

    def _send_upstream(self, data: bytes) -> None:
        if self._up is not None:
            self._up.writer.write(data)
        elif self._up_pending is not None:
            self._up_pending.append(data)

    def _drop_upstream(self) -> None:
        up, self._up = self._up, None
        self._up_pending = None
        task, self._up_task = self._up_task, None
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
        if up is not None:
            up.close()

    # --- the router's commands ------------------------------------------------------------

    def _execute(self, commands: list[Command]) -> None:
        for command in commands:
            match command:
                case SendDownstream(data=data):
                    self._writer.write(data)
                case SendUpstream(data=data):
                    self._send_upstream(data)
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
                case RecordFlow(record=record, owner=owner, timed_out=timed_out, stream=sid):
                    if owner is not None:
                        self._stolen.pop(sid, None)  # that exchange is over
                    for mirror in self._mirrors.pop(sid, ()):
                        mirror.reset("the request ended early")  # reset, or answered early
                    self._agent.record(record, owner, timed_out)
                case ConnectUpstream():
                    self._connect_upstream()
                case ReleaseUpstream():
                    self._drop_upstream()
                case CloseDownstream():
                    self._writer.close()
                    self._closed.set()
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
                case _:
                    assert_never(command)


async def serve_h2(agent: Agent, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   destination: tuple[str, int], head: bytes, *, peer: str,
                   decide: Decide) -> None:
    """Route an HTTP/2 prior-knowledge connection per stream until it closes."""
    await H2Interception(agent, reader, writer, destination, peer=peer, decide=decide).run(head)
