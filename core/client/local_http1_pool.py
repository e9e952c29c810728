"""The session's connections to the local app for HTTP/1.x: one ``asyncio.Protocol`` per TCP
connection, and the pool that keeps them alive between stolen requests (most recently used
first, bounded per address, dropped after an idle timeout).

A connection hands the app's bytes, its half-close and its loss to the delivery it serves
(``waylay.core.client.local_http1.Http1Delivery``) by direct calls, as the session's hot path
wants: no task or queue per request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final, Protocol, cast

from waylay.core.system.pool import (
    CONNECT_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_IDLE_PER_DESTINATION,
    Destination,
    tune,
)

# Request bytes held for a connection still being opened, or queued in a connection's
# transport, before the link stops handing over frames: bounds the session's memory when
# the local app reads a big upload slowly.
WRITE_HIGH_WATER: Final = 256 * 1024


class LocalUser(Protocol):
    """The delivery a connection serves: what it hears of the local app."""

    def local_data(self, data: bytes) -> None: ...
    def local_eof(self) -> bool: ...
    def local_lost(self, exc: Exception | None) -> None: ...
    def local_writable(self) -> None: ...


class LocalConnection(asyncio.Protocol):
    """One TCP connection to the local app: idle in its pool, or serving one delivery."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self.transport: asyncio.Transport | None = None
        self.delivery: LocalUser | None = None
        self.closed = False
        self.write_paused = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            tune(sock)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        delivery = self.delivery
        if delivery is not None:
            delivery.local_data(data)
        else:
            self.close()  # bytes nobody asked for: this connection cannot be trusted

    def eof_received(self) -> bool:
        delivery = self.delivery
        if delivery is not None:
            return delivery.local_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.write_paused = False
        delivery, self.delivery = self.delivery, None
        if delivery is not None:
            delivery.local_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.delivery is not None:
            self.delivery.local_writable()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class LocalHttp1Pool:
    """Idle keep-alive connections to the local app, by address."""

    def __init__(self) -> None:
        self._idle: dict[Destination, list[LocalConnection]] = {}
        self._busy: set[LocalConnection] = set()
        self.opened = 0
        self.reused = 0

    def take(self, destination: Destination) -> LocalConnection | None:
        """The most recently used idle connection to ``destination`` (the least likely to
        have been closed by the app), or None."""
        idle = self._idle.get(destination)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_TIMEOUT_S:
                self.reused += 1
                self._busy.add(conn)
                return conn
            conn.close()
        return None

    async def open(self, destination: Destination) -> LocalConnection:
        """A new connection (TCP_NODELAY); raises OSError or TimeoutError."""
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: LocalConnection(destination), *destination),
            CONNECT_TIMEOUT_S)
        self.opened += 1
        self._busy.add(conn)
        return conn

    def put(self, conn: LocalConnection) -> None:
        self._busy.discard(conn)
        conn.delivery = None
        if conn.closed:
            return
        idle = self._idle.setdefault(conn.destination, [])
        if len(idle) >= MAX_IDLE_PER_DESTINATION:
            idle.pop(0).close()
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def discard(self, conn: LocalConnection) -> None:
        self._busy.discard(conn)
        conn.delivery = None
        conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()


__all__ = ["WRITE_HIGH_WATER", "LocalConnection", "LocalHttp1Pool", "LocalUser"]
