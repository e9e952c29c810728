"""Connections from the agent to the original app: marked so they bypass the redirect.

Every socket the agent opens towards the original app carries ``SO_MARK`` =
``PASSTHROUGH_MARK``; the agent's iptables chain RETURNs on that mark, so a passed request
reaches the app instead of coming back to the agent.

HTTP/1.1 and relayed connections use ``Upstream``, an ``asyncio.Protocol`` that hands
every callback to its current owner (the ``InterceptedConnection`` it serves) with no task
or stream in between, and ``UpstreamPool`` keeps idle ones for the next owner. HTTP/2
opens connections of its own (``waylay.agent.h2_connection``: its state cannot be pooled).

Both open them through a ``Connector``, given once to the pool: ``connect_marked`` in the
agent; a test without the privilege to set ``SO_MARK`` (and without a redirect to bypass)
gives a plain loopback one (``tests/agent/harness.py``).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from waylay.agent.iptables import PASSTHROUGH_MARK
from waylay.core.system.pool import (
    CONNECT_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_IDLE_PER_DESTINATION,
    Destination,
)

# Bytes queued towards the original app before its owner stops reading the client: the
# per-connection buffer bound in that direction.
UPSTREAM_HIGH_WATER = 256 * 1024


class UpstreamOwner(Protocol):
    """What an ``Upstream`` tells the connection it currently serves."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_eof(self) -> None: ...
    def upstream_lost(self, exc: Exception | None) -> None: ...
    def upstream_paused(self) -> None: ...
    def upstream_resumed(self) -> None: ...


class Upstream(asyncio.Protocol):
    """One marked connection to the original app; its events go to ``owner``.

    While it idles in the pool it has no owner: anything the app sends then (bytes, EOF)
    makes it unusable, and it is closed.
    """

    __slots__ = ("closed", "destination", "idle_since", "owner", "transport")

    def __init__(self, destination: Destination, owner: UpstreamOwner | None = None) -> None:
        self.destination = destination
        self.transport: asyncio.Transport | None = None
        # Set from the start: a server that speaks first may do so before the coroutine
        # that opened the connection resumes.
        self.owner: UpstreamOwner | None = owner
        self.idle_since = 0.0
        self.closed = False

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        transport.set_write_buffer_limits(high=UPSTREAM_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is not None:
            owner.upstream_data(data)
        else:
            self.close()  # bytes nobody asked for: never hand this connection out again

    def eof_received(self) -> bool:
        owner = self.owner
        self.closed = True
        if owner is not None:
            owner.upstream_eof()
            return True  # the owner closes once it has passed the EOF on
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_paused()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_resumed()

    # --- for the owner ----------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return (not self.closed and self.transport is not None
                and not self.transport.is_closing())

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def write_eof(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        self.owner = None
        if self.transport is not None:
            self.transport.close()


Connector = Callable[[Destination, asyncio.Protocol], Awaitable[object]]
"""Connects ``protocol`` to the original app at a destination (its ``connection_made`` runs
before the await returns); raises OSError or TimeoutError."""


def _marked_socket(destination: Destination) -> socket.socket:
    family = socket.AF_INET6 if ":" in destination[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36), PASSTHROUGH_MARK)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_marked(destination: Destination, protocol: asyncio.Protocol) -> None:
    """The agent's ``Connector``: a socket marked ``PASSTHROUGH_MARK``, so the agent's own
    redirect lets it through to the original app (TCP_NODELAY, bounded connect)."""
    loop = asyncio.get_running_loop()
    sock = _marked_socket(destination)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, destination), CONNECT_TIMEOUT_S)
        await loop.create_connection(lambda: protocol, sock=sock)
    except BaseException:
        sock.close()
        raise


class UpstreamPool:
    """Idle ``Upstream`` connections by destination, most recently used first (the least
    likely to have been closed by the app); idle ones expire before common keep-alive
    timeouts (``waylay.core.system.pool.IDLE_TIMEOUT_S``)."""

    def __init__(self, connector: Connector = connect_marked) -> None:
        self.connector = connector  # how new connections are opened (h2 uses it too)
        self._idle: dict[Destination, deque[Upstream]] = {}
        self.opened = 0
        self.reused = 0

    def take(self, destination: Destination) -> Upstream | None:
        """An idle connection to ``destination``, or None: then ``connect``."""
        idle = self._idle.get(destination)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            up = idle.pop()
            if up.usable and now - up.idle_since < IDLE_TIMEOUT_S:
                self.reused += 1
                return up
            up.close()
        return None

    async def connect(self, destination: Destination,
                      owner: UpstreamOwner | None = None) -> Upstream:
        """A new connection serving ``owner``; raises OSError or TimeoutError."""
        up = Upstream(destination, owner)
        await self.connector(destination, up)
        self.opened += 1
        return up

    def put(self, up: Upstream) -> None:
        up.owner = None
        if not up.usable:
            up.close()
            return
        up.resume_reading()  # an owner may have paused it; idle, it must see EOF
        idle = self._idle.setdefault(up.destination, deque())
        if len(idle) >= MAX_IDLE_PER_DESTINATION:
            idle.popleft().close()
        up.idle_since = time.monotonic()
        idle.append(up)

    def drop(self, port: int) -> None:
        """Close the idle connections to any destination on ``port``."""
        for destination in [d for d in self._idle if d[1] == port]:
            for up in self._idle.pop(destination):
                up.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for up in idle:
                up.close()
        self._idle.clear()
