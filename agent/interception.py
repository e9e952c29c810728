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

The original app's side is ``waylay.agent.upstream_side``'s, relays and whole steals
``waylay.agent.byte_relay``'s: parts this connection inherits, not layers it calls through.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING, assert_never, cast

from waylay.agent import h2_connection
from waylay.agent.byte_relay import ByteRelay
from waylay.agent.connection_state import BY_LINK, BY_ROUTER, WRITE_HIGH_WATER, Mode
from waylay.agent.mirror_stream import copy_to_mirrors
from waylay.agent.upstream_side import UpstreamSide
from waylay.core.engine.body_filter import BodySkip
from waylay.core.engine.detect import Protocol, detect
from waylay.core.engine.filters import RequestView
from waylay.core.engine.flow import FlowRecord, FlowRow, Verdict
from waylay.core.engine.http1 import Http1Router
from waylay.core.engine.observer import Http1Observer
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
from waylay.core.system.pool import tune

if TYPE_CHECKING:
    from waylay.agent.mirror_stream import MirrorStream
    from waylay.agent.streams import LocalEvent, Stream
    from waylay.agent.upstream import Upstream
    from waylay.agent.worker import Agent

# Bytes of a connection's start kept while its protocol is not yet known (waylay.core.engine.detect
# decides within a few bytes; this only bounds a peer that never completes a line).
MAX_DETECT_BYTES = 64 * 1024


class InterceptedConnection(ByteRelay, UpstreamSide, asyncio.Protocol):
    """One connection a remote client made to an intercepted port.

    It is the engine's ``Http1Sink`` (commands arrive as calls), an ``UpstreamOwner`` (the
    original app's side, ``waylay.agent.upstream_side``) and a ``StreamOwner`` of
    ``waylay.agent.streams`` (the session's side). Relays and whole steals are
    ``waylay.agent.byte_relay``'s; the connection's modes are ``waylay.agent.connection_state``'s.
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
            if self._paused & BY_ROUTER:
                self._resume(BY_ROUTER)
        else:
            self._pause(BY_ROUTER)
        stream = self._stream
        if stream is not None:
            if stream.finished.is_set():
                self._stream = None  # that stolen exchange is over: its link is not ours
            elif stream.link.congested and not self._paused & BY_LINK:
                self._wait_for_link(stream)

    def _wait_for_link(self, stream: Stream) -> None:
        self._pause(BY_LINK)

        async def drained() -> None:
            try:
                await stream.drain()
            finally:
                self._resume(BY_LINK)

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

    # --- the session's side (StreamOwner of waylay.agent.streams) ----------------------

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

