"""Delivering stolen HTTP/2 requests to the local app over HTTP/2 (asyncio, session side).

A stolen h2 request arrives as ``RequestStart(http_version="2")``. When the local app
speaks h2c with prior knowledge (RFC 9113 §3.3), the session keeps HTTP/2: one
multiplexed connection per local address carries every stolen stream, with trailers and
full duplex (what gRPC needs). Whether an address speaks it is learned from the first
connection (the app's SETTINGS within ``PROBE_TIMEOUT_S``) and remembered for
``MEMORY_S``; otherwise ``LocalH2.deliver`` returns False and ``waylay.core.client.local_delivery``
downgrades the request to HTTP/1.1 (``downgrade_head`` adapts its head).

Flow control runs end to end here too: the local app's response data is acknowledged
only once the link to the agent took it (``link.drain``), and the request body is sent
within the app's windows, waiting for its WINDOW_UPDATEs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Protocol

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.events import Event as H2Event
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from waylay.core.engine.h2_streams import CONNECTION_WINDOW, DEFAULT_WINDOW, STREAM_WINDOW
from waylay.core.engine.wire import (
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
from waylay.core.system.pool import READ_CHUNK, Connection, Destination, open_tcp

# How long a new local connection may take to show it speaks HTTP/2 (its SETTINGS).
# An HTTP/1.1 server answers the preface at once with an error or a close.
PROBE_TIMEOUT_S = 3.0
# How long "this address speaks only HTTP/1.1" is believed before asking again (the
# developer may restart their app with h2c on).
MEMORY_S = 60.0
# Bytes queued on the socket to the local app before a sender waits for it.
WRITE_HIGH_WATER = 256 * 1024

_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                         b"transfer-encoding", b"upgrade", b"host"})


class NotH2(Exception):
    """The local app did not answer the HTTP/2 preface with SETTINGS."""


class _Aborted(Exception):
    """The agent reset the stream: the remote client went away."""


@dataclass(frozen=True)
class _Lost:
    """Queued to every stream when the connection to the local app ends."""

    reason: str


def downgrade_head(start: RequestStart, first: Message | None
                   ) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The HTTP/1.1 head of a stolen h2 request, and whether its body goes chunked.

    HTTP/2 frames a body without Content-Length; HTTP/1.1 needs Transfer-Encoding:
    chunked for it (RFC 9112 §6.1). ``first`` is the request's first body frame (an End
    means there is no body). ``host`` is already among the headers (the agent derives it
    from ``:authority``).
    """
    headers = [(n, v) for n, v in headers_from_wire(start.headers)
               if n.lower() not in (b"te", b"connection")]
    sized = any(n.lower() == b"content-length" for n, _ in headers)
    chunked = not sized and not isinstance(first, End)
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    return headers, chunked


def _request_fields(start: RequestStart, local: Destination) -> list[tuple[bytes, bytes]]:
    headers = headers_from_wire(start.headers)
    authority = next((v for n, v in headers if n.lower() == b"host"),
                     f"{local[0]}:{local[1]}".encode())
    fields = [(b":method", start.method.encode("latin-1")), (b":scheme", b"http"),
              (b":authority", authority), (b":path", start.target.encode("latin-1") or b"/")]
    for name, value in headers:
        lowered = name.lower()
        if lowered in _HOP_BY_HOP or (lowered == b"te" and value.lower() != b"trailers"):
            continue
        fields.append((lowered, value))
    return fields


class _LocalConnection:
    """One h2c connection to the local app, shared by the stolen streams going there."""

    def __init__(self, tcp: Connection, h2: H2Connection) -> None:
        self._tcp = tcp
        self._h2 = h2
        self._streams: dict[int, asyncio.Queue[H2Event | _Lost]] = {}
        self._moved = asyncio.Event()  # a window grew, a stream slot freed, or it died
        self.dead: str | None = None
        self._going_away = False
        self._reader = asyncio.create_task(self._read(), name="local-h2-reader")

    @classmethod
    async def open(cls, local: Destination) -> _LocalConnection:
        """Connect and wait for the app's SETTINGS; NotH2 if it does not speak HTTP/2."""
        tcp = await open_tcp(local)
        h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None,
                                          normalize_inbound_headers=False))
        h2.initiate_connection()
        h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                            SettingCodes.ENABLE_PUSH: 0})
        h2.increment_flow_control_window(CONNECTION_WINDOW - DEFAULT_WINDOW)
        try:
            tcp.writer.write(h2.data_to_send())
            deadline = time.monotonic() + PROBE_TIMEOUT_S
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NotH2("no HTTP/2 SETTINGS within the probe time")
                data = await asyncio.wait_for(tcp.reader.read(READ_CHUNK), left)
                if not data:
                    raise NotH2("it closed the connection after the HTTP/2 preface")
                try:
                    events = h2.receive_data(data)
                except ProtocolError as exc:
                    raise NotH2(f"it answered the preface with something else: {exc}") from None
                if any(isinstance(e, RemoteSettingsChanged) for e in events):
                    break
            tcp.writer.write(h2.data_to_send())  # our SETTINGS ACK
        except BaseException:
            tcp.close()
            raise
        return cls(tcp, h2)

    @property
    def usable(self) -> bool:
        return self.dead is None and not self._going_away and self._tcp.usable

    def close(self) -> None:
        self._reader.cancel()
        self._tcp.close()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self._tcp.writer.is_closing():
            self._tcp.writer.write(data)

    async def _read(self) -> None:
        reason = "the local app closed the connection"
        try:
            while True:
                data = await self._tcp.reader.read(READ_CHUNK)
                if not data:
                    break
                for event in self._h2.receive_data(data):
                    self._dispatch(event)
                self._flush()
        except ProtocolError as exc:
            reason = f"the local app broke the HTTP/2 protocol: {exc}"
            self._flush()  # the GOAWAY h2 prepared
        except (ConnectionError, OSError) as exc:
            reason = f"the connection to the local app broke: {exc}"
        finally:
            self.dead = reason
            for queue in self._streams.values():
                queue.put_nowait(_Lost(reason))
            self._moved.set()
            self._tcp.close()

    def _dispatch(self, event: H2Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        if isinstance(event, ConnectionTerminated):
            self._going_away = True
            if event.error_code == ErrorCodes.NO_ERROR:
                # Let the streams the GOAWAY covers finish (RFC 9113 §6.8). h2 closes the
                # whole connection on any GOAWAY and has no public way to keep it open
                # for them, so its (unprefixed but undocumented) connection state machine
                # is set back; tests/test_private_apis.py fails if h2 changes it.
                self._h2.state_machine.state = ConnectionState.CLIENT_OPEN
            last = event.last_stream_id or 0
            for sid, queue in self._streams.items():
                if sid > last or event.error_code != ErrorCodes.NO_ERROR:
                    queue.put_nowait(_Lost("the local app refused the stream (GOAWAY)"))
        elif stream_id is not None and stream_id in self._streams:
            self._streams[stream_id].put_nowait(event)
        if isinstance(event, WindowUpdated | StreamEnded | StreamReset | RemoteSettingsChanged):
            self._moved.set()

    async def _wait(self) -> None:
        if self.dead is not None:
            raise ConnectionError(self.dead)
        self._moved.clear()
        await self._moved.wait()
        if self.dead is not None:
            raise ConnectionError(self.dead)

    # --- one stream -------------------------------------------------------------------

    async def open_stream(self, fields: list[tuple[bytes, bytes]],
                          no_body: bool) -> tuple[int, asyncio.Queue[H2Event | _Lost]]:
        h2 = self._h2
        while h2.open_outbound_streams >= h2.remote_settings.max_concurrent_streams:
            await self._wait()
        if not self.usable:
            raise ConnectionError(self.dead or "the local app is going away")
        sid = h2.get_next_available_stream_id()
        queue: asyncio.Queue[H2Event | _Lost] = asyncio.Queue()  # bounded by our windows
        self._streams[sid] = queue
        h2.send_headers(sid, fields, end_stream=no_body)
        self._flush()
        return sid, queue

    def forget(self, sid: int, *, reset: bool) -> None:
        self._streams.pop(sid, None)
        if reset and self.dead is None:
            with contextlib.suppress(ProtocolError):
                self._h2.reset_stream(sid, ErrorCodes.CANCEL)
            self._flush()

    async def send_body(self, sid: int, frames: asyncio.Queue[Message],
                        first: Message | None) -> None:
        """The agent's frames of one request body, within the app's windows."""
        ended = False
        while True:
            frame = first if first is not None else await frames.get()
            first = None
            if isinstance(frame, Data):
                await self._send_data(sid, frame.data)
            elif isinstance(frame, Trailers):
                self._h2.send_headers(sid, headers_from_wire(frame.headers), end_stream=True)
                self._flush()
                ended = True
            elif isinstance(frame, End):
                if not ended:
                    self._h2.end_stream(sid)
                    self._flush()
                return
            elif isinstance(frame, Reset):
                raise _Aborted(frame.reason)

    async def _send_data(self, sid: int, data: bytes) -> None:
        h2 = self._h2
        offset = 0
        while offset < len(data):
            room = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
            if room <= 0:
                await self._wait()
                continue
            h2.send_data(sid, data[offset:offset + room])
            offset += room
            self._flush()
            writer = self._tcp.writer
            if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                await writer.drain()

    async def relay_response(self, link: _Link, wire_sid: int, sid: int,
                             queue: asyncio.Queue[H2Event | _Lost]) -> None:
        """The app's answer on ``sid`` to the agent as ResponseStart, Data*, Trailers?, End."""
        while True:
            event = await queue.get()
            if isinstance(event, _Lost):
                raise ConnectionError(event.reason)
            if isinstance(event, DataReceived):
                if event.data:
                    link.send_raw(encode_data(wire_sid, event.data))
                    await link.drain_stream(wire_sid)
                if self.dead is None:
                    self._h2.acknowledge_received_data(event.flow_controlled_length, sid)
                    self._flush()
            elif isinstance(event, ResponseReceived):
                headers = [(_b(n), _b(v)) for n, v in event.headers]
                status = next((v for n, v in headers if n == b":status"), b"502")
                link.send(ResponseStart(stream=wire_sid, status=int(status), reason="",
                                        headers=headers_to_wire(
                                            [(n, v) for n, v in headers
                                             if not n.startswith(b":")])))
            elif isinstance(event, TrailersReceived):
                link.send(Trailers(stream=wire_sid, headers=headers_to_wire(
                    [(_b(n), _b(v)) for n, v in event.headers])))
            elif isinstance(event, StreamEnded):
                link.send(End(stream=wire_sid))
                return
            elif isinstance(event, StreamReset):
                raise ConnectionError(f"the local app reset the stream "
                                      f"({ErrorCodes(event.error_code).name})")


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


class _Link(Protocol):
    """What delivery needs from the session (structurally
    ``waylay.core.client.local_delivery.StreamLink``)."""

    def send(self, message: Message) -> None: ...
    def send_raw(self, frame: bytes) -> None: ...
    async def drain(self) -> None: ...
    async def drain_stream(self, sid: int) -> None: ...
    def report_error(self, message: str) -> None: ...


class LocalH2:
    """Per local address: the shared h2c connection, and whether the address speaks h2c."""

    def __init__(self) -> None:
        self._conns: dict[Destination, _LocalConnection] = {}
        self._locks: dict[Destination, asyncio.Lock] = {}
        self._h1_since: dict[Destination, float] = {}  # addresses that spoke only HTTP/1.1

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def speaks_h2(self, local: Destination) -> bool | None:
        """What is remembered about ``local``: True, False, or None (not known yet)."""
        if local in self._conns:
            return True
        since = self._h1_since.get(local)
        if since is not None and time.monotonic() - since < MEMORY_S:
            return False
        return None

    async def _connection(self, local: Destination) -> _LocalConnection | None:
        if self.speaks_h2(local) is False:
            return None
        async with self._locks.setdefault(local, asyncio.Lock()):
            conn = self._conns.get(local)
            if conn is not None and conn.usable:
                return conn
            if conn is not None:
                del self._conns[local]  # dead or going away: it finishes its own streams
            if self.speaks_h2(local) is False:
                return None
            try:
                conn = await _LocalConnection.open(local)
            except NotH2:
                self._h1_since[local] = time.monotonic()
                return None
            except (OSError, TimeoutError):
                return None  # unreachable: the HTTP/1.1 path reports it as usual
            self._h1_since.pop(local, None)
            self._conns[local] = conn
            return conn

    async def deliver(self, link: _Link, start: RequestStart,
                      frames: asyncio.Queue[Message], local: Destination) -> bool:
        """Deliver over HTTP/2 if ``local`` speaks it; False (nothing consumed) if not."""
        conn = await self._connection(local)
        if conn is None:
            return False
        wire_sid = start.stream
        where = f"{local[0]}:{local[1]}"
        first = await frames.get()
        no_body = isinstance(first, End)
        sid = 0
        reset = True  # unless the exchange completes; a cancelled delivery resets too
        try:
            sid, queue = await conn.open_stream(_request_fields(start, local), no_body)
            async with asyncio.TaskGroup() as group:
                sender = group.create_task(
                    conn.send_body(sid, frames, None if no_body else first),
                    name=f"h2-body-{wire_sid}")
                await conn.relay_response(link, wire_sid, sid, queue)
                # The answer complete before the request: the app wants no more of it.
                reset = not sender.done()
                if reset:
                    sender.cancel()
        except* _Aborted:
            pass
        except* (ConnectionError, OSError, ProtocolError) as errors:
            why = str(errors.exceptions[0]) or type(errors.exceptions[0]).__name__
            link.report_error(f"{start.method} {start.target}: local app at {where} "
                              f"failed: {why}")
            link.send(Reset(stream=wire_sid, reason=f"local app failed: {why}"))
        finally:
            if sid:
                conn.forget(sid, reset=reset)
        return True
