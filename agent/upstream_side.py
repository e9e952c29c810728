"""The original app's side of an intercepted connection (the ``UpstreamOwner`` of
``waylay.agent.upstream``): getting a pooled or new connection to it, what goes to it, what
comes back, and giving it back. A part of ``InterceptedConnection``
(``waylay.agent.interception``), which inherits these methods: the upstream's callbacks reach
them with no layer in between (docs/architecture.md, "The hot path").
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, assert_never

from waylay.agent.connection_state import BY_PENDING, BY_UPSTREAM, WRITE_HIGH_WATER, Mode
from waylay.core.engine.detect import h2_server_preface

if TYPE_CHECKING:
    import asyncio

    from waylay.agent.upstream import Upstream
    from waylay.agent.worker import Agent
    from waylay.core.engine.flow import FlowRecord
    from waylay.core.engine.http1 import Http1Router
    from waylay.core.system.pool import Destination


class UpstreamSide:
    """The original app's half of ``InterceptedConnection``: its state and the rest of its
    methods are the connection's (declared here for the type checker only)."""

    # No slots of its own (the state is the connection's), hidden from the type checker:
    # it would check the connection's assignments in these methods against them.
    if not TYPE_CHECKING:
        __slots__ = ()

    if TYPE_CHECKING:
        mode: Mode
        _agent: Agent
        _transport: asyncio.Transport | None
        _destination: Destination
        _head: bytes
        _router: Http1Router | None
        _up: Upstream | None
        _connecting: bool
        _up_pending: list[bytes]
        _up_eof_pending: bool
        _up_sent: bool
        _write_paused: bool
        _relay_record: FlowRecord | None
        _client_eof: bool
        _far_eof: bool

        def _pause(self, why: int) -> None: ...
        def _resume(self, why: int) -> None: ...
        def _after_router(self) -> None: ...
        def _start_relay(self, head: bytes) -> None: ...
        def send_downstream(self, data: bytes) -> None: ...
        def _close_transport(self) -> None: ...

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
            self._resume(BY_PENDING)
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
        self._resume(BY_PENDING)

    def send_upstream(self, data: bytes) -> None:
        """Engine command: bytes for the original app (queued while it is being opened)."""
        self._up_sent = True
        up = self._up
        if up is not None:
            up.write(data)
            return
        self._up_pending.append(data)
        if sum(len(p) for p in self._up_pending) > WRITE_HIGH_WATER:
            self._pause(BY_PENDING)
        self.connect_upstream()

    def release_upstream(self, reusable: bool) -> None:
        """Engine command: done with the upstream connection."""
        self.drop_upstream(reusable=reusable)

    def drop_upstream(self, *, reusable: bool) -> None:
        up, self._up = self._up, None
        self._up_sent = False
        self._up_pending = []
        self._resume(BY_UPSTREAM | BY_PENDING)
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
        self._pause(BY_UPSTREAM)

    def upstream_resumed(self) -> None:
        self._resume(BY_UPSTREAM)

