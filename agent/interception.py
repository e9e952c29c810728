"""The asyncio driver for one redirected connection: detection, then HTTP routing or a relay.

A connection on a port with filters is detected first (``core.detect``). Meanwhile the
agent already connects to the original app: if the app speaks first (SMTP, MySQL, SSH...)
its greeting is relayed at once and the connection becomes a plain relay, so a
server-first protocol is never held up. HTTP/1.x is routed per request by
``core.http1.Http1Router``; this module only executes its commands. Anything else is
relayed untouched to the original app.

A port stolen without a filter hands the whole connection to the session at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import TYPE_CHECKING, assert_never

from agent.h2_connection import serve_h2
from core.detect import Protocol, detect, h2_server_preface
from core.filters import RequestView
from core.flow import FlowRecord, Verdict
from core.http1 import Http1Router
from core.observer import Http1Observer
from core.pool import READ_CHUNK, tune
from core.pool import Connection as Upstream
from core.routing import (
    CloseDownstream,
    Command,
    ConnectUpstream,
    DownstreamClosed,
    DownstreamData,
    Event,
    LocalAborted,
    MirrorData,
    MirrorEnd,
    MirrorStart,
    RecordFlow,
    ReleaseUpstream,
    Route,
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
    from agent.link import MirrorStream, Stream
    from agent.worker import Agent

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
WHOLE_PORT = "whole port"  # the "matched" text of traffic taken by an unfiltered steal
# Bytes written to a peer before a reader waits for them to drain: the per-connection
# buffer bound in each direction.
WRITE_HIGH_WATER = 256 * 1024


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """Where the client meant to connect before iptables REDIRECT (None if not redirected)."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


async def _drain_if_full(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if transport.get_write_buffer_size() > WRITE_HIGH_WATER and not transport.is_closing():
        with contextlib.suppress(ConnectionError):
            await writer.drain()


class InterceptedConnection:
    """One connection a remote client made to an intercepted port."""

    def __init__(self, agent: Agent, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, destination: tuple[str, int]) -> None:
        self._agent = agent
        self._reader = reader
        self._writer = writer
        self._destination = destination
        self.port = destination[1]
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._router: Http1Router | None = None
        self._mode = "detect"
        self._up: Upstream | None = None
        self._up_task: asyncio.Task[None] | None = None
        self._up_pending: list[bytes] | None = None  # writes queued while connecting
        self._stream: Stream | None = None
        self._whole_owner: int | None = None
        self._mirrors: list[MirrorStream] = []  # copies of the current request or connection
        self._observer: Http1Observer | None = None  # per-request records of a whole steal
        self._up_sent = False  # bytes went to the current upstream: not reusable as-is
        self._relay_record: FlowRecord | None = None  # a relayed or whole-stolen connection
        self._resume = asyncio.Event()
        self._done = asyncio.Event()  # the engine closed the connection
        self._up_eof = False  # the client's EOF is to be passed on to the app
        self._closed = False

    # --- entry ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            owner = self._agent.registry.whole_connection_owner(self.port)
            if owner is not None:
                await self._steal_whole(owner.sub_id)
            else:
                self._connect_upstream()  # early: server-first protocols, and speed
                await self._read_downstream()
        except (ConnectionError, OSError):
            pass
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._router is not None and not self._router.closed:
            self._execute(self._router.handle(DownstreamClosed(), time.time()))
        if self._stream is not None:
            self._stream.reset("connection closed")
            self._stream = None
        for mirror in self._mirrors:
            mirror.reset("connection closed")
        self._mirrors = []
        record, self._relay_record = self._relay_record, None
        if record is not None:
            record.finish(time.time())
            owner = self._whole_owner if record.verdict is Verdict.STOLEN else None
            self._agent.record(record, owner, ())
        # An early connection the engine never used is as good as new: keep it.
        self._drop_upstream(reusable=self._mode != "relay" and not self._up_sent)
        self._writer.close()
        self._closed = True

    # --- downstream -------------------------------------------------------------------

    async def _read_downstream(self) -> None:
        head = b""
        while not self._closed:
            router = self._router
            if router is not None and not router.wants_downstream:
                self._resume.clear()
                await self._resume.wait()
                continue
            data = await self._reader.read(READ_CHUNK)
            if self._mode == "detect":
                if not data:
                    if head:  # a short message, then EOF: relay it and wait for the answer
                        self._start_relay(head)
                        await self._end_relay()
                    return
                head += data
                protocol = detect(head)
                if protocol is Protocol.NEED_MORE:
                    continue
                if protocol is Protocol.HTTP1:
                    self._start_http(head)
                elif protocol is Protocol.H2:
                    await self._serve_h2(head)
                    return
                else:
                    self._start_relay(head)
                head = b""
            elif self._mode == "http":
                assert self._router is not None
                event = DownstreamData(data=data) if data else DownstreamClosed()
                self._execute(self._router.handle(event, time.time()))
                if not data:
                    # A half-closed client still gets the answer in flight; the router
                    # closes the connection once it is sent.
                    await self._done.wait()
                    return
                # Bound what this connection queues towards the session or the app.
                if self._stream is not None:
                    await self._stream.drain()
                if self._up is not None:
                    await _drain_if_full(self._up.writer)
            else:  # relay
                if not data:
                    await self._end_relay()
                    return
                self._send_upstream(data)
                if self._up is not None:
                    await _drain_if_full(self._up.writer)
            await _drain_if_full(self._writer)

    def _start_http(self, head: bytes) -> None:
        self._mode = "http"
        agent = self._agent
        dest = f"{self._destination[0]}:{self._destination[1]}"
        self._router = Http1Router(
            port=self.port, authority=dest,
            decide=self._decide,
            next_id=agent.next_flow_id,
            capture=lambda: agent.registry.capturing(self.port),
        )
        self._execute(self._router.handle(DownstreamData(data=head), time.time()))

    async def _serve_h2(self, head: bytes) -> None:
        """HTTP/2 prior knowledge: routed per stream by ``agent.h2_connection``, which opens
        its own upstream connection (h2 state cannot ride a pooled HTTP/1.1 one)."""
        self._mode = "h2"
        self._drop_upstream(reusable=not self._up_sent)
        await serve_h2(self._agent, self._reader, self._writer, self._destination, head,
                       peer=self.peer, decide=self._decide)

    def _decide(self, view: RequestView) -> Route:
        route = self._agent.registry.decide(self.port, view)
        if route.shadowed:
            self._agent.shadowed(route.shadowed)
        return route

    def _start_relay(self, head: bytes) -> None:
        self._mode = "relay"
        agent = self._agent
        self._relay_record = FlowRecord(id=agent.next_flow_id(), ts=time.time(),
                                        port=self.port, protocol="tcp", verdict=Verdict.PASSED)
        for sub in agent.registry.whole_mirrors(self.port):
            mirror = agent.open_mirror_stream(sub.sub_id, self.port, self.peer, None)
            if mirror is not None:
                self._mirrors.append(mirror)
                self._relay_record.verdict = Verdict.MIRRORED
        if head:
            self._send_upstream(head)

    # --- upstream ---------------------------------------------------------------------

    def _connect_upstream(self) -> None:
        if self._up is not None or self._up_pending is not None:
            return
        self._up_pending = []
        self._up_task = asyncio.create_task(self._upstream_lifetime(), name="upstream")

    async def _upstream_lifetime(self) -> None:
        try:
            up = await self._agent.pool.get(self._destination)
        except (TimeoutError, OSError) as exc:
            pending, self._up_pending = self._up_pending, None
            if self._mode == "http" and pending is not None:
                self._feed(UpstreamClosed(reason=f"cannot connect to {self._dest_text}: {exc}"))
            elif self._mode == "relay":
                self._writer.close()
            return
        pending, self._up_pending = self._up_pending or [], None
        self._up = up
        for data in pending:
            up.writer.write(data)
        if self._up_eof and up.writer.can_write_eof():
            up.writer.write_eof()
        try:
            while self._up is up:
                data = await up.reader.read(READ_CHUNK)
                if self._up is not up:
                    return  # released while we were reading: the bytes belong to no one
                if self._mode == "detect":
                    if not data or h2_server_preface(data):
                        # An h2c server greets at once; it is no server-first protocol.
                        # The h2 driver opens its own connection (a relay, a new one).
                        self._drop_upstream(reusable=False)
                        return
                    self._start_relay(b"")  # the server spoke first
                if self._mode == "relay":
                    if not data:
                        if self._writer.can_write_eof():
                            self._writer.write_eof()
                        return
                    if self._relay_record is not None:
                        self._relay_record.bytes_out += len(data)
                    self._writer.write(data)
                    await _drain_if_full(self._writer)
                elif self._mode == "http":
                    event = UpstreamData(data=data) if data else UpstreamClosed()
                    self._feed(event)
                    if not data:
                        return
                    await _drain_if_full(self._writer)
        except (ConnectionError, OSError) as exc:
            if self._up is up and self._mode == "http":
                self._feed(UpstreamClosed(reason=str(exc)))

    @property
    def _dest_text(self) -> str:
        return f"{self._destination[0]}:{self._destination[1]}"

    def _send_upstream(self, data: bytes) -> None:
        if self._mode == "relay" and self._relay_record is not None:
            self._relay_record.bytes_in += len(data)
            if self._mirrors:
                self._copy_to_mirrors(data)
        self._up_sent = True
        if self._up is not None:
            self._up.writer.write(data)
        elif self._up_pending is not None:
            self._up_pending.append(data)
        else:
            self._connect_upstream()
            assert self._up_pending is not None
            self._up_pending.append(data)

    async def _end_relay(self) -> None:
        """The client half-closed a relayed connection: pass the EOF on, wait for the app's."""
        self._up_eof = True
        for mirror in self._mirrors:
            mirror.end()
        if self._up is not None and self._up.writer.can_write_eof():
            self._up.writer.write_eof()
        task = self._up_task
        if task is not None and task is not asyncio.current_task():
            await asyncio.wait({task})

    def _drop_upstream(self, *, reusable: bool) -> None:
        up, self._up = self._up, None
        self._up_sent = False
        self._up_pending = None
        task, self._up_task = self._up_task, None
        reader_busy = task is not None and task is not asyncio.current_task() and not task.done()
        if reader_busy:
            assert task is not None
            task.cancel()
        if up is None:
            return
        if not reusable:
            up.close()
        elif reader_busy:
            # Its reader task is still inside reader.read(): pool the connection only once
            # the cancellation has landed, or the next owner's read would collide with it.
            assert task is not None
            pool = self._agent.pool
            task.add_done_callback(lambda _task: pool.put(up))
        else:
            self._agent.pool.put(up)

    # --- the engine's commands --------------------------------------------------------

    def _feed(self, event: Event) -> None:
        if self._router is not None and not self._router.closed:
            self._execute(self._router.handle(event, time.time()))
            if self._router.wants_downstream:
                self._resume.set()

    def on_local(self, event: Event) -> None:
        """An event from the session that owns the stolen request in flight."""
        self._feed(event)

    def _execute(self, commands: list[Command]) -> None:
        for command in commands:
            match command:
                case SendDownstream(data=data):
                    self._writer.write(data)
                case CloseDownstream():
                    self._closed = True
                    self._writer.close()
                    self._resume.set()
                    self._done.set()
                case ConnectUpstream():
                    self._connect_upstream()
                case SendUpstream(data=data):
                    self._send_upstream(data)
                case ReleaseUpstream(reusable=reusable):
                    self._drop_upstream(reusable=reusable)
                case StealStart():
                    self._stream = self._agent.open_request_stream(self, command)
                    if self._stream is None:
                        # The session vanished between the decision and now.
                        asyncio.get_running_loop().call_soon(
                            self._feed, LocalAborted(reason="the session is gone"))
                case StealData(data=data):
                    if self._stream is not None:
                        self._stream.send_data(data)
                case StealEnd():
                    if self._stream is not None:
                        self._stream.end()
                case StealTrailers(headers=headers):
                    if self._stream is not None:
                        self._stream.send_trailers(headers)
                case StealAbort(reason=reason):
                    if self._stream is not None:
                        self._stream.reset(reason)
                        self._stream = None
                case MirrorStart(sub_id=sub_id):
                    stream = self._agent.open_mirror_stream(sub_id, self.port, self.peer,
                                                            command)
                    if stream is not None:
                        self._mirrors.append(stream)
                case MirrorData(data=data):
                    self._copy_to_mirrors(data)
                case MirrorEnd():
                    for mirror in self._mirrors:
                        mirror.end()
                    self._mirrors = []
                case RecordFlow(record=record, owner=owner, timed_out=timed_out):
                    # The stream may live on (a stolen upgrade); the next StealStart
                    # replaces it, and a finished one ignores whatever comes.
                    self._agent.record(record, owner, timed_out)
                case _:
                    assert_never(command)

    def _copy_to_mirrors(self, data: bytes) -> None:
        """Copy client bytes to the mirrors; a congested session loses its copy, never
        slows this connection down."""
        kept = []
        for mirror in self._mirrors:
            if mirror.link.congested:
                mirror.reset("dropped: the session is not keeping up")
                mirror.link.mirror_drops += 1
                mirror.link.note()
            else:
                mirror.send_data(data)
                kept.append(mirror)
        self._mirrors = kept

    # --- whole-connection steal -------------------------------------------------------

    async def _steal_whole(self, sub_id: int) -> None:
        self._mode = "whole"
        self._whole_owner = sub_id
        record = FlowRecord(id=self._agent.next_flow_id(), ts=time.time(), port=self.port,
                            protocol="tcp", verdict=Verdict.STOLEN, matched=WHOLE_PORT)
        self._relay_record = record
        self._observer = Http1Observer(port=self.port, verdict=Verdict.STOLEN,
                                       matched=WHOLE_PORT, next_id=self._agent.next_flow_id)
        stream = self._agent.open_connection_stream(self, sub_id)
        if stream is None:
            return
        self._stream = stream
        while not stream.finished.is_set():
            data = await self._reader.read(READ_CHUNK)
            self._observer.from_client(data, time.time())
            if not data:
                stream.end()
                break
            record.bytes_in += len(data)
            stream.send_data(data)
            await stream.drain()
        await stream.finished.wait()
        self._stream = None
        if self._observer.seen:
            self._relay_record = None  # reported request by request instead

    async def drain_downstream(self) -> None:
        """Wait while too much is queued towards the remote client (bounds the buffer)."""
        await _drain_if_full(self._writer)

    def write_local(self, data: bytes) -> None:
        """Bytes from the local app on a whole stolen connection."""
        if self._relay_record is not None:
            self._relay_record.bytes_out += len(data)
        self._writer.write(data)
        if self._observer is not None:
            for done in self._observer.from_server(data, time.time()):
                self._agent.record(done, self._whole_owner, ())

    def end_local(self) -> None:
        """The local app half-closed a whole stolen connection."""
        if self._writer.can_write_eof() and not self._writer.is_closing():
            self._writer.write_eof()

    def abort_local(self) -> None:
        """The session reset a whole stolen connection: cut it."""
        self._writer.close()


async def serve_connection(agent: Agent, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
    """Entry for the agent's redirect listener."""
    sock: socket.socket = writer.get_extra_info("socket")
    tune(sock)
    destination = original_destination(sock)
    if destination is None or destination[1] == agent.proxy_port:
        writer.close()  # someone connected to the listener directly: nothing to intercept
        return
    await InterceptedConnection(agent, reader, writer, destination).run()
