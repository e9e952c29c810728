"""Idle keep-alive connections by destination (asyncio), shared by the agent and the session.

The agent pools its marked connections to the original app; the session pools its
connections to the local app. Both reuse the most recently used connection first (the
least likely to have been closed by the server) and drop connections idle too long.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Destination = tuple[str, int]

# Idle connections kept per destination: enough for a busy keep-alive client mix, small
# enough that an idle process holds few of the server's connection slots.
MAX_IDLE_PER_DESTINATION = 64
# Drop idle connections well before common server keep-alive timeouts (nginx: 75 s,
# many app servers 5-30 s) so a reused connection is rarely one the server just closed.
IDLE_TIMEOUT_S = 4.0
CONNECT_TIMEOUT_S = 10.0
READ_CHUNK = 64 * 1024


def tune(sock: socket.socket) -> None:
    """TCP_NODELAY on every TCP socket: requests and responses are small, latency-bound."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(eq=False)
class Connection:
    """One pooled connection."""

    destination: Destination
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default=0.0)

    @property
    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


async def open_tcp(destination: Destination, *, mark: int | None = None) -> Connection:
    """Connect with TCP_NODELAY (and ``SO_MARK`` when given); raises OSError or TimeoutError."""
    family = socket.AF_INET6 if ":" in destination[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36), mark)
        tune(sock)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, destination), CONNECT_TIMEOUT_S)
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_CHUNK)
    except BaseException:
        sock.close()
        raise
    return Connection(destination, reader, writer)


class ConnectionPool:
    """Reusable connections by destination; ``connect`` opens a new one when none is idle."""

    def __init__(self, connect: Callable[[Destination], Awaitable[Connection]]) -> None:
        self._connect = connect
        self._idle: dict[Destination, deque[Connection]] = {}
        self.opened = 0
        self.reused = 0

    async def get(self, destination: Destination) -> Connection:
        idle = self._idle.get(destination)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable and now - conn.idle_since < IDLE_TIMEOUT_S:
                self.reused += 1
                return conn
            conn.close()
        conn = await self._connect(destination)
        self.opened += 1
        return conn

    def put(self, conn: Connection) -> None:
        if not conn.usable:
            conn.close()
            return
        idle = self._idle.setdefault(conn.destination, deque())
        if len(idle) >= MAX_IDLE_PER_DESTINATION:
            idle.popleft().close()
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def drop(self, port: int) -> None:
        """Close the idle connections to any destination on ``port``."""
        for destination in [d for d in self._idle if d[1] == port]:
            for conn in self._idle.pop(destination):
                conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
