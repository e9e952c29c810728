"""Delivering stolen traffic to the local app (asyncio; the session's side of a wire stream).

A stolen request arrives as ``RequestStart`` then ``Data``* ``End`` frames; it is re-sent
to the local app with h11 on a pooled keep-alive connection and the response streams back
as ``ResponseStart`` ``Data``* ``End``. A whole stolen TCP connection is a byte relay with
half-close. When the local app cannot be reached the remote client gets a 502 whose body
names the local address, and an ``error`` event says the same (no retry ladder: a
developer wants to see that their app is down, not have it hidden).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import h11

from waylay.core.client.local_h2 import LocalH2, downgrade_head
from waylay.core.engine.wire import (
    ConnectionStart,
    Data,
    End,
    Message,
    RequestStart,
    Reset,
    ResponseStart,
    Trailers,
    encode_data,
    headers_from_wire,
    headers_to_wire,
)
from waylay.core.system.pool import READ_CHUNK, Connection, ConnectionPool, Destination, open_tcp

MAX_HEAD_BYTES = 64 * 1024


class StreamLink(Protocol):
    """What delivery needs from the session: a way to send frames and report errors."""

    def send(self, message: Message) -> None: ...
    def send_raw(self, frame: bytes) -> None: ...
    async def drain(self) -> None: ...
    async def drain_stream(self, sid: int) -> None:
        """Before more is sent on ``sid``: the link has room and the agent has not
        paused that stream (its remote client is slow)."""
    def report_error(self, message: str) -> None: ...


class LocalPool(ConnectionPool):
    """Keep-alive connections to the local app (and its h2c connections:
    ``waylay.core.client.local_h2``)."""

    def __init__(self) -> None:
        super().__init__(open_tcp)
        self.h2 = LocalH2()

    def close(self) -> None:
        super().close()
        self.h2.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    return str(exc) or type(exc).__name__


def _send_bad_gateway(link: StreamLink, sid: int, message: str) -> None:
    body = f"waylay: {message}\n".encode()
    link.send(ResponseStart(stream=sid, status=502, reason="Bad Gateway", headers=(
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("X-Waylay-Error", "local-unreachable"),
    )))
    link.send_raw(encode_data(sid, body))
    link.send(End(stream=sid))


async def deliver_request(link: StreamLink, pool: ConnectionPool, start: RequestStart,
                          frames: asyncio.Queue[Message], local: Destination) -> None:
    """Send one stolen request to the local app and stream its response back.

    A stolen HTTP/2 request stays HTTP/2 when the local app speaks it
    (``waylay.core.client.local_h2``); otherwise it is downgraded to HTTP/1.1 here.
    """
    sid = start.stream
    where = f"{local[0]}:{local[1]}"
    h2 = start.http_version == "2"
    if h2 and isinstance(pool, LocalPool) and await pool.h2.deliver(link, start, frames, local):
        return
    try:
        conn = await pool.get(local)
    except (OSError, TimeoutError) as exc:
        message = f"local app at {where} is unreachable: {_describe(exc)}"
        link.report_error(f"{start.method} {start.target} on port {start.port}: {message}")
        _send_bad_gateway(link, sid, message)
        return
    proto = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
    reusable = False
    upgraded: _Upgraded | None = None
    first: Message | None = None
    try:
        headers = headers_from_wire(start.headers)
        chunked = False
        if h2:
            first = await frames.get()
            headers, chunked = downgrade_head(start, first)
        conn.writer.write(proto.send(h11.Request(
            method=start.method.encode("latin-1"), target=start.target.encode("latin-1"),
            headers=headers)) or b"")
        async with asyncio.TaskGroup() as group:
            sender = group.create_task(_send_body(proto, conn, frames, first, chunked),
                                       name=f"body-{sid}")
            reusable = await _relay_response(link, proto, conn, sid, where, trailers=h2)
            if not reusable:
                sender.cancel()
    except* _Upgraded as switched:
        first_switch = switched.exceptions[0]
        upgraded = first_switch if isinstance(first_switch, _Upgraded) else None
    except* _Aborted:
        reusable = False
    except* (ConnectionError, OSError, h11.ProtocolError) as errors:
        why = _describe(errors.exceptions[0])
        link.report_error(f"{start.method} {start.target}: local app at {where} failed: {why}")
        link.send(Reset(stream=sid, reason=f"local app failed: {why}"))
    finally:
        if upgraded is not None:
            pass  # the connection is the tunnel's now (below)
        elif reusable and proto.our_state is h11.DONE and proto.their_state is h11.DONE:
            pool.put(conn)
        else:
            conn.close()
    if upgraded is not None:
        # h11 takes a 101 before our request's end went out; its End frame is then still
        # to come and must not be taken for the end of the tunnel.
        request_open = proto.our_state is h11.SEND_BODY
        await _tunnel(link, conn, frames, sid, upgraded.leftover, request_open=request_open)


class _Aborted(Exception):
    """The agent reset the stream: the remote client went away."""


async def _send_body(proto: h11.Connection, conn: Connection, frames: asyncio.Queue[Message],
                     first: Message | None = None, chunked: bool = False) -> None:
    trailers: list[tuple[bytes, bytes]] = []
    while True:
        frame = first if first is not None else await frames.get()
        first = None
        if isinstance(frame, Data):
            conn.writer.write(proto.send(h11.Data(data=frame.data)) or b"")
            await conn.writer.drain()
        elif isinstance(frame, Trailers):
            if chunked:  # only a chunked body can carry trailers (RFC 9112 §7.1.2)
                trailers = headers_from_wire(frame.headers)
        elif isinstance(frame, End):
            conn.writer.write(proto.send(h11.EndOfMessage(headers=trailers)) or b"")
            return
        elif isinstance(frame, Reset):
            raise _Aborted(frame.reason)


async def _relay_response(link: StreamLink, proto: h11.Connection, conn: Connection,
                          sid: int, where: str, *, trailers: bool = False) -> bool:
    """Stream the local response to the agent; True if the connection can be reused."""
    while True:
        event = proto.next_event()
        if event is h11.NEED_DATA:
            data = await conn.reader.read(READ_CHUNK)
            proto.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:  # the local app accepted an upgrade (WebSocket)
                link.send(ResponseStart(stream=sid, status=101,
                                        reason=event.reason.decode("latin-1"),
                                        headers=headers_to_wire(list(event.headers.raw_items()))))
                raise _Upgraded(bytes(proto.trailing_data[0]))
            continue  # the agent already answered 100-continue itself
        if isinstance(event, h11.Response):
            link.send(ResponseStart(stream=sid, status=event.status_code,
                                    reason=event.reason.decode("latin-1"),
                                    headers=headers_to_wire(list(event.headers.raw_items()))))
        elif isinstance(event, h11.Data):
            link.send_raw(encode_data(sid, bytes(event.data)))
            await link.drain_stream(sid)
        elif isinstance(event, h11.EndOfMessage):
            if trailers and event.headers:  # an HTTP/2 client gets them (gRPC's status)
                link.send(Trailers(stream=sid,
                                   headers=headers_to_wire(list(event.headers.raw_items()))))
            link.send(End(stream=sid))
            return True
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            raise ConnectionError(f"local app at {where} closed the connection mid-response")


class _Upgraded(Exception):
    """The local app answered 101: the stream becomes a byte tunnel (``leftover`` first)."""

    def __init__(self, leftover: bytes) -> None:
        super().__init__("upgraded")
        self.leftover = leftover


async def _tunnel(link: StreamLink, conn: Connection, frames: asyncio.Queue[Message],
                  sid: int, leftover: bytes, *, request_open: bool) -> None:
    """Relay an upgraded connection (a stolen WebSocket) until either side ends it."""
    if leftover:
        link.send_raw(encode_data(sid, leftover))
    while request_open:  # the rest of the request that was upgraded: not tunnel bytes
        frame = await frames.get()
        if isinstance(frame, Reset):
            conn.close()
            return
        request_open = not isinstance(frame, End)
    await _relay(link, conn, frames, sid)


async def deliver_connection(link: StreamLink, start: ConnectionStart,
                             frames: asyncio.Queue[Message], local: Destination) -> None:
    """Relay a whole stolen TCP connection to the local app, with half-close both ways."""
    sid = start.stream
    where = f"{local[0]}:{local[1]}"
    try:
        conn = await open_tcp(local)
    except (OSError, TimeoutError) as exc:
        link.report_error(f"connection on port {start.port}: local app at {where} is "
                          f"unreachable: {_describe(exc)}")
        link.send(Reset(stream=sid, reason=f"local app unreachable: {_describe(exc)}"))
        return
    await _relay(link, conn, frames, sid)


async def _relay(link: StreamLink, conn: Connection, frames: asyncio.Queue[Message],
                 sid: int) -> None:
    """Bytes both ways between a wire stream and the local app, half-close included,
    until both directions ended or either side reset; then the connection is closed."""
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_frames_to_local(conn, frames), name=f"to-local-{sid}")
            group.create_task(_local_to_frames(link, conn, sid), name=f"from-local-{sid}")
    except* _Aborted:
        pass
    except* (ConnectionError, OSError) as errors:
        link.send(Reset(stream=sid, reason=f"local app failed: {errors.exceptions[0]}"))
    finally:
        conn.close()


async def _frames_to_local(conn: Connection, frames: asyncio.Queue[Message]) -> None:
    while True:
        frame = await frames.get()
        if isinstance(frame, Data):
            conn.writer.write(frame.data)
            await conn.writer.drain()
        elif isinstance(frame, End):
            if conn.writer.can_write_eof():
                conn.writer.write_eof()
            return
        elif isinstance(frame, Reset):
            raise _Aborted(frame.reason)


async def _local_to_frames(link: StreamLink, conn: Connection, sid: int) -> None:
    while True:
        data = await conn.reader.read(READ_CHUNK)
        if not data:
            link.send(End(stream=sid))
            return
        link.send_raw(encode_data(sid, data))
        await link.drain_stream(sid)


