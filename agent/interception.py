"""The asyncio driver for one redirected connection: detection, then HTTP routing or a relay.

Every request of a live service on an intercepted port crosses this module, so it is
written for speed (docs/architecture.md, "The hot path"): an ``asyncio.Protocol`` whose
callbacks do the work, with no task, stream or command object per request. uvloop calls
``data_received``; the bytes go straight into the sans-I/O engine, which answers through
the ``Http1Sink`` methods below; back-pressure is ``pause_reading`` / ``resume_reading``.

A connection on a port with filters is detected first (``waylay.core.engine.detect``). Meanwhile the
agent already connects to the original app: if the app speaks first (SMTP, MySQL, SSH...)
its greeting is relayed at once and the connection becomes a plain relay, so a
server-first protocol is never held up. HTTP/1.x is routed per request by
``waylay.core.engine.http1.Http1Router``; HTTP/2 is handed to ``waylay.agent.h2_connection``.
Anything else is relayed untouched to the original app.

A port stolen without a filter hands the whole connection to the session at once.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, assert_never, cast

from waylay.agent import h2_connection
from waylay.agent.link import copy_to_mirrors
from waylay.agent.upstream import Upstream
from waylay.core.engine.body_filter import BodySkip
from waylay.core.engine.detect import Protocol, detect, h2_server_preface
from waylay.core.engine.filters import RequestView
from waylay.core.engine.flow import FlowRecord, FlowRow, Verdict
from waylay.core.engine.http1 import Http1Router
from waylay.core.engine.observer import Http1Observer
from waylay.core.engine.registry import WHOLE_PORT
from waylay.core.engine.routing import (
    LocalAborted,
    LocalData,
    LocalEnd,
    LocalResponse,
    LocalTrailers,
    MirrorStart,
    Route,
    StealStart,
)
from waylay.core.system.pool import Destination, tune

if TYPE_CHECKING:
    from waylay.agent.link import LocalEvent, MirrorStream, Stream
    from waylay.agent.worker import Agent

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
# Bytes written to a peer before the other side stops being read: the per-connection
# buffer bound in each direction.
WRITE_HIGH_WATER = 256 * 1024
# Bytes of a connection's start kept while its protocol is not yet known (waylay.core.engine.detect
# decides within a few bytes; this only bounds a peer that never completes a line).
MAX_DETECT_BYTES = 64 * 1024


DestinationLookup = Callable[[socket.socket], Destination | None]
"""Where an accepted connection was going (None: it was not redirected); the agent's is
``original_destination``, a test without iptables gives its own (``tests/agent/harness.py``)."""


def original_destination(sock: socket.socket) -> Destination | None:
    """Where the client meant to connect before iptables REDIRECT (None if not redirected)."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


class Mode(enum.Enum):
    """What a connection turned out to be; DETECT until its first bytes say.

    Transitions (any other is a bug)::

        DETECT --HTTP/1.x head-------------> HTTP
        DETECT --h2 preface----------------> H2      (the transport changes hands)
        DETECT --other bytes, the app spoke
                 first, or the client's EOF-> RELAY
        (accept) --unfiltered steal--------> WHOLE   (never detected: the session's)
        any --connection lost--------------> CLOSED  (final; also a direct connection)

    HTTP stays HTTP: an upgrade becomes a tunnel inside the engine, not a new mode.
    """

    DETECT = "detect"
    HTTP = "http"  # routed per request by waylay.core.engine.http1
    RELAY = "relay"  # not HTTP: bytes to the original app untouched
    WHOLE = "whole"  # an unfiltered steal: the whole connection is the session's
    H2 = "h2"  # handed to waylay.agent.h2_connection
    CLOSED = "closed"


# Why a connection's client is not being read (several can hold at once).
_BY_ROUTER = 1  # pipelined requests fill the engine's buffer
_BY_UPSTREAM = 2  # the original app reads slower than the client sends
_BY_LINK = 4  # the session's link is congested (a stolen body streams to it)
_BY_PENDING = 8  # the upstream connection is still being opened


class InterceptedConnection(asyncio.Protocol):
    """One connection a remote client made to an intercepted port.

    It is the engine's ``Http1Sink`` (commands arrive as calls), an ``UpstreamOwner`` (the
    original app's side) and a ``StreamOwner`` of ``waylay.agent.link`` (the session's side).
    """

    # Slots: an idle keep-alive connection should cost little (bench/ measures it).
    __slots__ = ("_agent", "_body_timer", "_client_eof", "_connecting", "_corked",
                 "_destination", "_drained", "_far_eof", "_head", "_loop", "_mirrors",
                 "_observer", "_paused", "_relay_record", "_router", "_stream", "_transport",
                 "_up", "_up_eof_pending",
                 "_up_pending", "_up_sent", "_whole_owner", "_write_paused", "mode", "peer", "port")

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._transport: asyncio.Transport | None = None
        self._destination = ("", 0)
        self.port = 0
        self.peer = "?"
        self.mode = Mode.DETECT
        self._head = b""  # DETECT: the bytes so far
        self._router: Http1Router | None = None
        self._up: Upstream | None = None
        self._connecting = False  # an Upstream is being opened for us
        self._up_pending: list[bytes] = []  # bytes for the app while it is being opened
        self._up_eof_pending = False  # the client's EOF, to pass on once connected
        self._up_sent = False  # bytes went to the current upstream: not reusable as-is
        self._paused = 0  # _BY_* bits
        self._write_paused = False
        self._drained: asyncio.Event | None = None  # made on demand by drain_downstream
        self._stream: Stream | None = None
        self._whole_owner: int | None = None
        self._mirrors: list[MirrorStream] = []  # copies of the current request or connection
        self._observer: Http1Observer | None = None  # per-request records of a whole steal
        self._relay_record: FlowRecord | None = None  # a relayed or whole-stolen connection
        self._client_eof = False
        self._far_eof = False  # the app (relay) or the local app (whole steal) half-closed
        # A stolen answer's pieces (head, body, end) arrive as separate frames, mostly in
        # one read of the link: they are written to the client together, once the read is
        # handed over (None: not corked).
        self._corked: list[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._body_timer: asyncio.TimerHandle | None = None  # a request held for its body

    # --- asyncio.Protocol: the remote client ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        sock: socket.socket | None = transport.get_extra_info("socket")
        agent = self._agent
        destination = agent.find_destination(sock) if sock is not None else None
        if destination is None or destination[1] == agent.proxy_port:
            self.mode = Mode.CLOSED
            transport.close()  # someone connected to the listener directly: nothing to do
            return
        if sock is not None:
            tune(sock)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._destination = destination
        self.port = destination[1]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        owner = agent.registry.whole_connection_owner(self.port)
        if owner is not None:
            self._steal_whole(owner.sub_id)
        else:
            self.connect_upstream()  # early: server-first protocols, and speed

    def data_received(self, data: bytes) -> None:
        mode = self.mode
        if mode is Mode.HTTP:
            router = self._router
            assert router is not None
            router.downstream_data(data, time.time())
            self._after_router()
        elif mode is Mode.DETECT:
            self._detect(data)
        elif mode is Mode.RELAY:
            self._relay_from_client(data)
        elif mode is Mode.WHOLE:
            self._whole_from_client(data)
        elif mode is Mode.H2 or mode is Mode.CLOSED:
            pass  # H2: the h2 driver reads this transport now; CLOSED: too late
        else:
            assert_never(mode)

    def eof_received(self) -> bool:
        self._client_eof = True
        mode = self.mode
        if mode is Mode.HTTP:
            assert self._router is not None
            # A half-closed client still gets the answer in flight; the router closes
            # the connection once it is sent.
            self._router.downstream_closed(time.time())
            return not self._router.closed
        if mode is Mode.DETECT:
            if not self._head:
                return False
            self._start_relay(self._head)  # a short message, then EOF: relay it
            self._head = b""
            mode = self.mode
        if mode is Mode.RELAY:
            self._end_relay()
        elif mode is Mode.WHOLE:
            if self._stream is not None:
                if self._observer is not None:
                    self._observer.from_client(b"", time.time())
                self._stream.end()
        else:
            return False  # H2 (the h2 driver's now) or CLOSED: nothing to pass on
        if self._far_eof:
            self._close_transport()  # both ways are closed now: the connection is done
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown()

    def pause_writing(self) -> None:
        """The client reads slower than we write: stop reading what feeds it."""
        self._write_paused = True
        if self._up is not None:
            self._up.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._up is not None:
            self._up.resume_reading()
        if self._drained is not None:
            self._drained.set()

    # --- reading the client: pause and resume -----------------------------------------

    def _pause(self, why: int) -> None:
        transport = self._transport
        if not self._paused and transport is not None and not transport.is_closing():
            transport.pause_reading()
        self._paused |= why

    def _resume(self, why: int) -> None:
        if not self._paused & why:
            return
        self._paused &= ~why
        transport = self._transport
        if not self._paused and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _after_router(self) -> None:
        """Bound what this connection queues: in the engine, and towards a session."""
        router = self._router
        assert router is not None
        if not self._paused and self._stream is None and router.wants_downstream:
            return  # the usual case: nothing to bound
        if router.wants_downstream:
            if self._paused & _BY_ROUTER:
                self._resume(_BY_ROUTER)
        else:
            self._pause(_BY_ROUTER)
        stream = self._stream
        if stream is not None:
            if stream.finished.is_set():
                self._stream = None  # that stolen exchange is over: its link is not ours
            elif stream.link.congested and not self._paused & _BY_LINK:
                self._wait_for_link(stream)

    def _wait_for_link(self, stream: Stream) -> None:
        self._pause(_BY_LINK)

        async def drained() -> None:
            try:
                await stream.drain()
            finally:
                self._resume(_BY_LINK)

        self._agent.spawn(drained(), name="link-drain")

    # --- detection --------------------------------------------------------------------

    def _detect(self, data: bytes) -> None:
        head = self._head = self._head + data
        protocol = detect(head)
        if protocol is Protocol.NEED_MORE:
            if len(head) > MAX_DETECT_BYTES:
                self._start_relay(head)
                self._head = b""
            return
        self._head = b""
        if protocol is Protocol.HTTP1:
            self._start_http(head)
        elif protocol is Protocol.H2:
            self._start_h2(head)
        else:
            self._start_relay(head)

    def _start_http(self, head: bytes) -> None:
        self.mode = Mode.HTTP
        agent = self._agent
        port = self.port
        registry = agent.registry
        self._router = Http1Router(
            port=port, authority=f"{self._destination[0]}:{port}",
            decide=self._decide, next_id=agent.next_flow_id,
            capture=lambda: registry.capturing(port), sink=self,
        )
        self._router.downstream_data(head, time.time())
        self._after_router()

    def _start_h2(self, head: bytes) -> None:
        """HTTP/2 prior knowledge: routed per stream by ``waylay.agent.h2_connection``, which opens
        its own upstream connection (h2 state cannot ride a pooled HTTP/1.1 one)."""
        self.mode = Mode.H2
        self.drop_upstream(reusable=not self._up_sent)
        transport = self._transport
        assert transport is not None
        agent = self._agent
        h2_connection.start_h2(agent, transport, self._destination, head,
                               peer=self.peer, decide=self._decide_without_body,
                               connect=agent.pool.connector)

    def _decide(self, view: RequestView, body: bytes | BodySkip | None = None) -> Route:
        route = self._agent.registry.decide(self.port, view, body)
        if route.shadowed:
            self._agent.shadowed(route.shadowed)
        return route

    def _decide_without_body(self, view: RequestView,
                             body: bytes | BodySkip | None = None) -> Route:
        """HTTP/2 streams are routed from their heads: the h2 engine does not hold a
        stream for its body yet, so a body filter decides without it (and says so)."""
        route = self._decide(view, body)
        return self._decide(view, BodySkip.NOT_BUFFERED) if route.wants_body else route

    # --- relay: a connection that is not HTTP -----------------------------------------

    def _start_relay(self, head: bytes) -> None:
        self.mode = Mode.RELAY
        agent = self._agent
        record = FlowRecord(id=agent.next_flow_id(), ts=time.time(), port=self.port,
                            protocol="tcp", verdict=Verdict.PASSED)
        self._relay_record = record
        for sub in agent.registry.whole_mirrors(self.port):
            mirror = agent.open_mirror_stream(sub.sub_id, self.port, self.peer, None)
            if mirror is not None:
                self._mirrors.append(mirror)
                record.verdict = Verdict.MIRRORED
        if head:
            self._relay_from_client(head)

    def _relay_from_client(self, data: bytes) -> None:
        record = self._relay_record
        if record is not None:
            record.bytes_in += len(data)
        if self._mirrors:
            self._copy_to_mirrors(data)
        self.send_upstream(data)

    def _end_relay(self) -> None:
        """The client half-closed a relayed connection: pass the EOF on, wait for the app's."""
        for mirror in self._mirrors:
            mirror.end()
        self._mirrors = []
        if self._up is not None:
            self._up.write_eof()
        else:
            self._up_eof_pending = True
            self.connect_upstream()

    # --- the original app (UpstreamOwner) ---------------------------------------------

    def connect_upstream(self) -> None:
        """Engine command: get a connection to the original app; sends may follow at once."""
        if self._up is not None or self._connecting:
            return
        up = self._agent.pool.take(self._destination)
        if up is not None:
            self._attach_upstream(up)
            return
        self._connecting = True
        self._agent.spawn(self._open_upstream(), name="upstream-connect")

    async def _open_upstream(self) -> None:
        try:
            up = await self._agent.pool.connect(self._destination, self)
        except (TimeoutError, OSError) as exc:
            self._connecting = False
            self._up_pending = []
            self._resume(_BY_PENDING)
            if self.mode is Mode.CLOSED:
                return
            if self.mode is Mode.HTTP and self._router is not None:
                dest = f"{self._destination[0]}:{self._destination[1]}"
                self._router.upstream_closed(f"cannot connect to {dest}: {exc}", time.time())
                self._after_router()
            elif self.mode is Mode.RELAY:
                self._close_transport()
            return
        self._connecting = False
        if self.mode in (Mode.CLOSED, Mode.H2, Mode.WHOLE):
            up.close()  # it may have spoken to us already: not a clean one to pool
            return
        self._attach_upstream(up)

    def _attach_upstream(self, up: Upstream) -> None:
        self._up = up
        up.owner = self
        pending, self._up_pending = self._up_pending, []
        if pending:
            up.write(pending[0] if len(pending) == 1 else b"".join(pending))
        if self._up_eof_pending:
            up.write_eof()
        if self._write_paused:
            up.pause_reading()
        self._resume(_BY_PENDING)

    def send_upstream(self, data: bytes) -> None:
        """Engine command: bytes for the original app (queued while it is being opened)."""
        self._up_sent = True
        up = self._up
        if up is not None:
            up.write(data)
            return
        self._up_pending.append(data)
        if sum(len(p) for p in self._up_pending) > WRITE_HIGH_WATER:
            self._pause(_BY_PENDING)
        self.connect_upstream()

    def release_upstream(self, reusable: bool) -> None:
        """Engine command: done with the upstream connection."""
        self.drop_upstream(reusable=reusable)

    def drop_upstream(self, *, reusable: bool) -> None:
        up, self._up = self._up, None
        self._up_sent = False
        self._up_pending = []
        self._resume(_BY_UPSTREAM | _BY_PENDING)
        if up is None:
            return
        up.owner = None
        if reusable:
            self._agent.pool.put(up)
        else:
            up.close()

    def upstream_data(self, data: bytes) -> None:
        mode = self.mode
        if mode is Mode.HTTP:
            router = self._router
            assert router is not None
            router.upstream_data(data, time.time())
            self._after_router()
        elif mode is Mode.RELAY:
            if self._relay_record is not None:
                self._relay_record.bytes_out += len(data)
            self.send_downstream(data)
        elif mode is Mode.DETECT:
            if h2_server_preface(data):
                # An h2c server greets at once; it is no server-first protocol. The h2
                # driver opens its own connection.
                self.drop_upstream(reusable=False)
                return
            self._start_relay(self._head)  # the server spoke first
            self._head = b""
            self.upstream_data(data)
        elif mode is Mode.WHOLE or mode is Mode.H2 or mode is Mode.CLOSED:
            pass  # the connection never uses (or no longer uses) this upstream
        else:
            assert_never(mode)

    def upstream_eof(self) -> None:
        mode = self.mode
        if mode is Mode.HTTP:
            self._upstream_gone(None)
        elif mode is Mode.RELAY:
            transport = self._transport
            if transport is not None and not transport.is_closing() and transport.can_write_eof():
                transport.write_eof()
            self._far_eof = True
            if self._client_eof:
                self._close_transport()
        elif mode is Mode.DETECT:
            self.drop_upstream(reusable=False)  # the next send connects again
        elif mode is Mode.WHOLE or mode is Mode.H2 or mode is Mode.CLOSED:
            pass
        else:
            assert_never(mode)

    def upstream_lost(self, exc: Exception | None) -> None:
        # Only the connection serving us calls this (a released one has no owner), also
        # before _attach_upstream ran, while the coroutine that opened it was resuming.
        mode = self.mode
        if mode is Mode.HTTP:
            self._upstream_gone(str(exc) if exc is not None else None)
        elif mode is Mode.RELAY:
            self._up = None
            self._close_transport()
        else:
            self._up = None

    def _upstream_gone(self, reason: str | None) -> None:
        router = self._router
        assert router is not None
        router.upstream_closed(reason, time.time())
        self._after_router()

    def upstream_paused(self) -> None:
        self._pause(_BY_UPSTREAM)

    def upstream_resumed(self) -> None:
        self._resume(_BY_UPSTREAM)

    # --- the engine's other commands (Http1Sink) --------------------------------------

    def send_downstream(self, data: bytes) -> None:
        corked = self._corked
        if corked is not None:
            corked.append(data)
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _cork(self) -> None:
        """Gather what is sent to the client until the loop's next turn (one write)."""
        if self._corked is None and self._loop is not None:
            self._corked = []
            self._loop.call_soon(self._uncork)

    def _uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked:
            self.send_downstream(corked[0] if len(corked) == 1 else b"".join(corked))

    def close_downstream(self) -> None:
        self._close_transport()

    def steal_start(self, command: StealStart) -> None:
        self._stream = self._agent.open_request_stream(self, command)
        if self._stream is None:
            # The session vanished between the decision and now.
            asyncio.get_running_loop().call_soon(
                self.on_local, LocalAborted(reason="the session is gone"))

    def steal_data(self, data: bytes) -> None:
        if self._stream is not None:
            self._stream.send_data(data)

    def steal_end(self) -> None:
        if self._stream is not None:
            self._stream.end()

    def steal_abort(self, reason: str) -> None:
        if self._stream is not None:
            self._stream.reset(reason)
            self._stream = None

    def mirror_start(self, command: MirrorStart) -> None:
        stream = self._agent.open_mirror_stream(command.sub_id, self.port, self.peer, command)
        if stream is not None:
            self._mirrors.append(stream)

    def mirror_data(self, data: bytes) -> None:
        self._copy_to_mirrors(data)

    def mirror_end(self) -> None:
        for mirror in self._mirrors:
            mirror.end()
        self._mirrors = []

    def record_flow(self, record: FlowRecord, owner: int | None,
                    timed_out: tuple[str, ...]) -> None:
        # The stream may live on (a stolen upgrade); the next steal_start replaces it, and
        # a finished one ignores whatever comes.
        self._agent.record(record, owner, timed_out)

    def record_row(self, row: FlowRow, timed_out: tuple[str, ...]) -> None:
        self._agent.record_row(self.port, row, timed_out)

    def _copy_to_mirrors(self, data: bytes) -> None:
        """Copy client bytes to the mirrors; a congested session loses its copy, never
        slows this connection down."""
        self._mirrors = copy_to_mirrors(self._mirrors, data)

    # --- the session's side (StreamOwner of waylay.agent.link) -------------------------------

    def on_local(self, event: LocalEvent) -> None:
        """An event from the session that owns the stolen request in flight."""
        router = self._router
        if router is None or router.closed:
            return
        self._cork()
        now = time.time()
        match event:
            case LocalResponse(status=status, reason=reason, headers=headers):
                router.local_response(status, reason, headers, now)
            case LocalData(data=data):
                router.local_data(data, now)
            case LocalEnd():
                router.local_end(now)
            case LocalAborted(reason=reason):
                router.local_aborted(reason, event.status, now)
            case LocalTrailers():
                pass  # an HTTP/1.1 client gets a stolen answer without its trailers
            case _:
                assert_never(event)
        self._after_router()

    def congested(self) -> bool:
        """The client reads slower than we write to it (the transport said so)."""
        return self._write_paused

    def backlog(self) -> int:
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def on_local_whole(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                       body: bytes) -> None:
        """The local app's whole answer at once (``on_local`` of its three events)."""
        router = self._router
        if router is None or router.closed:
            return
        self._cork()
        now = time.time()
        router.local_response(status, reason, headers, now)
        if body:
            router.local_data(body, now)
        router.local_end(now)
        self._after_router()

    async def drain_downstream(self) -> None:
        """Wait while too much is queued towards the remote client (bounds the buffer)."""
        while self._write_paused and self.mode is not Mode.CLOSED:
            if self._drained is None:
                self._drained = asyncio.Event()
            self._drained.clear()
            await self._drained.wait()

    # --- whole-connection steal -------------------------------------------------------

    def _steal_whole(self, sub_id: int) -> None:
        self.mode = Mode.WHOLE
        agent = self._agent
        self._whole_owner = sub_id
        self._relay_record = FlowRecord(id=agent.next_flow_id(), ts=time.time(),
                                        port=self.port, protocol="tcp",
                                        verdict=Verdict.STOLEN, matched=WHOLE_PORT)
        self._observer = Http1Observer(port=self.port, verdict=Verdict.STOLEN,
                                       matched=WHOLE_PORT, next_id=agent.next_flow_id)
        stream = agent.open_connection_stream(self, sub_id)
        if stream is None:
            self._close_transport()
            return
        self._stream = stream

    def _whole_from_client(self, data: bytes) -> None:
        stream = self._stream
        if stream is None or stream.finished.is_set():
            return
        if self._observer is not None:
            self._observer.from_client(data, time.time())
        if self._relay_record is not None:
            self._relay_record.bytes_in += len(data)
        stream.send_data(data)
        if stream.link.congested and not self._paused & _BY_LINK:
            self._wait_for_link(stream)

    def write_local(self, data: bytes) -> None:
        """Bytes from the local app on a whole stolen connection (none after its EOF)."""
        if self._far_eof:
            return
        self._cork()
        if self._relay_record is not None:
            self._relay_record.bytes_out += len(data)
        self.send_downstream(data)
        if self._observer is not None:
            for done in self._observer.from_server(data, time.time()):
                self._agent.record(done, self._whole_owner, ())

    def end_local(self) -> None:
        """The local app half-closed a whole stolen connection."""
        self._uncork()
        transport = self._transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()
        self._far_eof = True
        if self._client_eof:
            self._close_transport()

    def abort_local(self) -> None:
        """The session reset a whole stolen connection: cut it."""
        self._close_transport()

    # --- the end ----------------------------------------------------------------------

    def _close_transport(self) -> None:
        self._uncork()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def await_body(self, deadline: float) -> None:
        """The router holds a request for its body filter until ``deadline`` at most."""
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = asyncio.get_running_loop().call_later(
            max(0.0, deadline - time.time()), self._body_deadline_passed)

    def _body_deadline_passed(self) -> None:
        self._body_timer = None
        router = self._router
        if router is not None and self.mode is Mode.HTTP:
            router.body_timeout(time.time())
            self._after_router()

    def _shutdown(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        mode, self.mode = self.mode, Mode.CLOSED
        if mode is Mode.H2:
            return  # the h2 driver owned the transport since the handover
        router = self._router
        if router is not None and not router.closed:
            router.abort(time.time())  # the answer in flight cannot be delivered any more
        if self._stream is not None:
            self._stream.reset("connection closed")
            self._stream = None
        for mirror in self._mirrors:
            mirror.reset("connection closed")
        self._mirrors = []
        record, self._relay_record = self._relay_record, None
        if record is not None:
            if mode is Mode.WHOLE and self._observer is not None and self._observer.seen:
                pass  # reported request by request instead
            else:
                record.finish(time.time())
                owner = self._whole_owner if record.verdict is Verdict.STOLEN else None
                self._agent.record(record, owner, ())
        # An early connection the engine never used is as good as new: keep it.
        self.drop_upstream(reusable=mode is Mode.DETECT and not self._up_sent)
        if self._drained is not None:
            self._drained.set()
        self._close_transport()


def serve_connection(agent: Agent) -> InterceptedConnection:
    """Protocol factory of the agent's redirect listener."""
    return InterceptedConnection(agent)

