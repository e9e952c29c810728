"""The parts of an intercepted connection whose bytes cross whole, not request by request:
a relay to the original app (a connection that is not HTTP), and a whole connection
stolen for a session (a port stolen without a filter). A part of ``InterceptedConnection``
(``waylay.agent.interception``), which inherits these methods: its callbacks reach them with
no layer in between (docs/architecture.md, "The hot path").
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

from waylay.agent.connection_state import BY_LINK, Mode
from waylay.core.engine.flow import FlowRecord, Verdict
from waylay.core.engine.observer import Http1Observer
from waylay.core.engine.registry import WHOLE_PORT

if TYPE_CHECKING:
    import asyncio

    from waylay.agent.interception import InterceptedConnection
    from waylay.agent.mirror_stream import MirrorStream
    from waylay.agent.streams import Stream
    from waylay.agent.upstream import Upstream
    from waylay.agent.worker import Agent


class ByteRelay:
    """The relay and whole-steal half of ``InterceptedConnection``: its state and the rest
    of its methods are the connection's (declared here for the type checker only)."""

    # No slots of its own (the state is the connection's), hidden from the type checker:
    # it would check the connection's assignments in these methods against them.
    if not TYPE_CHECKING:
        __slots__ = ()

    if TYPE_CHECKING:
        mode: Mode
        port: int
        peer: str
        _agent: Agent
        _transport: asyncio.Transport | None
        _up: Upstream | None
        _up_eof_pending: bool
        _paused: int
        _stream: Stream | None
        _whole_owner: int | None
        _mirrors: list[MirrorStream]
        _observer: Http1Observer | None
        _relay_record: FlowRecord | None
        _client_eof: bool
        _far_eof: bool

        def send_upstream(self, data: bytes) -> None: ...
        def connect_upstream(self) -> None: ...
        def send_downstream(self, data: bytes) -> None: ...
        def _copy_to_mirrors(self, data: bytes) -> None: ...
        def _wait_for_link(self, stream: Stream) -> None: ...
        def _cork(self) -> None: ...
        def _uncork(self) -> None: ...
        def _close_transport(self) -> None: ...

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
        # This is a part of an InterceptedConnection (the only class that inherits it).
        stream = agent.open_connection_stream(cast("InterceptedConnection", self), sub_id)
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
        if stream.link.congested and not self._paused & BY_LINK:
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

