"""Stolen HTTP/1.x requests delivered to the local app on pooled keep-alive connections.

The session's hot path (asyncio, no task per request). A stolen or mirrored request
arrives as ``RequestStart``, ``Data``*, ``Trailers``?, ``End``; ``Http1Delivery`` writes it
to a connection to the local app taken from ``LocalHttp1Pool`` (most recently used first,
``waylay.core.client.local_http1_pool``) and turns the app's answer into ``ResponseStart``,
``Data``*, ``End`` for the agent. The connections are ``asyncio.Protocol`` objects: the
app's bytes are parsed in ``data_received`` by the same strict framing code the agent
forwards responses with (``waylay.core.engine.http1_framing``), and the request goes out as
one write per batch of frames (the session calls ``flush`` once the frames of one read are
handed over). Only opening a new connection takes a task. The heads' translation between
the wire's text and HTTP/1.1 bytes is ``waylay.core.client.local_http1_heads``.

What HTTP/1.1 asks of a client (RFC 9112), as h11 did here before:

* the request is sent as HTTP/1.1, its body framed as its head says (Content-Length, or
  chunked with the trailers the agent passed on);
* interim answers are skipped (the agent answered 100-continue itself), except 101 to a
  request that asked for an upgrade: the stream becomes a byte tunnel both ways, with
  half-close (a stolen WebSocket);
* the answer's framing follows the request's method and its status (HEAD, 204, 304), and a
  connection is reused only when both sides keep it alive and nothing is left over.

When the local app cannot be reached the caller gets a 502 naming the address, and an error
event says so; when it fails mid-answer (closes early, sends a malformed response) the
stream is reset and an error event says why. A Reset from the agent (its caller left, or
the local app was too slow) closes the connection: the app sees the request abandoned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, Protocol

from waylay.core.client.local_http1_heads import (
    FIELD_TEXT,
    OWS,
    LocalRequestError,
    field_tokens,
    request_head_bytes,
    wire_headers,
)
from waylay.core.client.local_http1_pool import WRITE_HIGH_WATER, LocalConnection, LocalHttp1Pool
from waylay.core.engine.http1_body import LAST_CHUNK, BodyReader, chunk
from waylay.core.engine.http1_framing import NO_BODY, ResponseHead, parse_response_head
from waylay.core.engine.http1_simple import simple_response
from waylay.core.engine.http1_syntax import HttpParseError
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
)
from waylay.core.system.pool import Destination

# A response body up to this size, complete when its head is parsed, rides in the
# ResponseStart frame (one frame instead of three); larger ones stream as DATA frames.
INLINE_BODY_MAX: Final = 64 * 1024


class DeliveryLink(Protocol):
    """What a delivery needs from the session's end of the link."""

    def send(self, message: Message) -> None: ...
    def send_raw(self, frame: bytes) -> None: ...
    def report_error(self, message: str) -> None: ...
    @property
    def write_paused(self) -> bool: ...
    def when_writable(self, callback: Callable[[], None]) -> None: ...
    def hold(self) -> None: ...
    def release(self) -> None: ...
    def flush_later(self, delivery: Http1Delivery) -> None: ...


# What ``Http1Delivery._response`` holds after a whole answer went out in one frame.
_WHOLE: Final = ResponseHead(status=200, reason=b"", version=b"1.1", raw=b"", framing=NO_BODY,
                             keep_alive=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    return str(exc) or type(exc).__name__


class Http1Delivery:
    """One stolen (or mirrored) HTTP/1.x request on its way to the local app and back."""

    def __init__(self, link: DeliveryLink, pool: LocalHttp1Pool, start: RequestStart,
                 local: Destination, on_done: Callable[[int], None]) -> None:
        self.sid = start.stream
        self._link = link
        self._pool = pool
        self._start = start
        self._where = f"{local[0]}:{local[1]}"
        self._local = local
        self._on_done = on_done
        self._conn: LocalConnection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._out: list[bytes] = []  # request bytes not yet written (flushed per batch)
        self._out_bytes = 0
        self._flush_queued = False
        self._holding = False  # this delivery holds the link (its local side is full)
        self._paused = False  # the agent PAUSEd this stream (its remote client is slow)
        self._method = start.method.encode("latin-1")
        self._body_kind = "none"  # of the request: "none", "length" or "chunked"
        self._body_left = 0
        self._keep_alive = True
        self._upgrade = False
        self._request_done = False
        self._trailers: list[tuple[bytes, bytes]] = []
        self._buf = bytearray()  # the app's bytes not parsed yet
        self._response: ResponseHead | None = None  # the final head (_WHOLE: not kept)
        self._response_keep_alive = False
        self._body: BodyReader | None = None
        self._response_complete = False
        self._tunnel = False
        self._tunnel_request_open = False  # the upgraded request's own End is still due
        self._tunnel_sent_end = False  # the app half-closed: End went to the agent
        self._tunnel_got_end = False  # the agent's End: half-closed towards the app
        self.done = False

    # --- the request ------------------------------------------------------------------

    def begin(self) -> None:
        """Send the head (on an idle connection, or once a new one is open)."""
        start = self._start
        try:
            self._frame_request(start.headers)
            head = request_head_bytes(start.method, start.target, start.headers)
        except (LocalRequestError, UnicodeEncodeError) as exc:
            self._fail(str(exc))
            return
        self._write(head)
        conn = self._pool.take(self._local)
        if conn is not None:
            self._attach(conn)
        else:
            self._connecting = asyncio.get_running_loop().create_task(
                self._open(), name=f"local-connect-{self.sid}")

    def _frame_request(self, headers: tuple[tuple[str, str], ...]) -> None:
        """The request body's framing and the connection's fate, from the head (RFC 9112
        §6.3, §9.6): as h11 frames what it sends."""
        codings: list[str] | None = None
        length: str | None = None
        upgrade_field = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == "transfer-encoding":
                codings = field_tokens(value) if codings is None else codings + field_tokens(value)
            elif lowered == "content-length":
                length = value.strip(OWS)
            elif lowered == "connection":
                tokens = field_tokens(value)
                if "close" in tokens:
                    self._keep_alive = False
                if "upgrade" in tokens:
                    self._upgrade = True
            elif lowered == "upgrade":
                upgrade_field = True
        if codings is not None:
            if codings[-1:] != ["chunked"]:
                raise LocalRequestError("only Transfer-Encoding: chunked can be sent")
            self._body_kind = "chunked"
        elif length is not None:
            if not (length.isascii() and length.isdigit()):
                raise LocalRequestError(f"invalid Content-Length {length[:32]!r}")
            self._body_kind = "length"
            self._body_left = int(length)
        self._upgrade = self._upgrade and upgrade_field

    async def _open(self) -> None:
        try:
            conn = await self._pool.open(self._local)
        except (OSError, TimeoutError) as exc:
            self._connecting = None
            if not self.done:
                self._unreachable(exc)
            return
        self._connecting = None
        if self.done:
            self._pool.discard(conn)
            return
        self._attach(conn)
        self.flush()  # outside any batch of frames: nothing else would

    def _attach(self, conn: LocalConnection) -> None:
        self._conn = conn
        conn.delivery = self
        self._flush_soon()

    def frame(self, message: Message) -> None:
        """A frame from the agent for this stream (Data, Trailers, End)."""
        if self.done:
            return
        if self._tunnel:
            self._tunnel_frame(message)
            return
        if self._request_done:
            return
        if isinstance(message, Data):
            data = message.data
            if not data:
                return
            kind = self._body_kind
            if kind == "length":
                if len(data) > self._body_left:
                    self._fail("Too much data for declared Content-Length")
                    return
                self._body_left -= len(data)
                self._write(data)
            elif kind == "chunked":
                self._write(chunk(data))
            else:
                self._fail("Too much data for declared Content-Length")
        elif isinstance(message, Trailers):
            if self._body_kind == "chunked":  # only a chunked body can carry them (§7.1.2)
                self._trailers = headers_from_wire(message.headers)
        elif isinstance(message, End):
            self.request_end()

    def request_end(self) -> None:
        """The request is complete (an End frame, or a RequestStart marked ``end``)."""
        if self.done or self._request_done:
            return
        if self._body_kind == "length" and self._body_left:
            self._fail("Too little data for declared Content-Length")
            return
        if self._body_kind == "chunked":
            if self._trailers:
                self._write(b"0\r\n" + b"".join(b"%s: %s\r\n" % pair
                                                for pair in self._trailers) + b"\r\n")
            else:
                self._write(LAST_CHUNK)
        self._request_done = True
        if self._response_complete:
            self._finish()

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        self._out_bytes += len(data)
        if self._conn is None and self._out_bytes > WRITE_HIGH_WATER:
            self._hold()  # still connecting: stop taking frames
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._flush_queued and self._conn is not None:
            self._flush_queued = True
            self._link.flush_later(self)

    def flush(self) -> None:
        """Write the request bytes gathered since the last flush, as one write."""
        self._flush_queued = False
        conn = self._conn
        out = self._out
        if conn is None or not out or self.done:
            return
        conn.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        self._out_bytes = 0
        if conn.write_paused:
            self._hold()  # the app reads slower than the agent sends: wait for it
        else:
            self._unhold()

    def local_writable(self) -> None:
        self._unhold()

    def _hold(self) -> None:
        if not self._holding:
            self._holding = True
            self._link.hold()

    def _unhold(self) -> None:
        if self._holding:
            self._holding = False
            self._link.release()

    # --- the answer -------------------------------------------------------------------

    def local_data(self, data: bytes) -> None:
        if self.done:
            return
        if self._tunnel:
            self._to_agent(data)
        elif self._response is not None or self._buf or not self._whole_answer(data):
            self._buf += data
            try:
                self._pump()
            except HttpParseError as exc:
                self._fail(f"bad response: {exc.message.removeprefix('upstream response: ')}")
        conn = self._conn
        if not self.done and self._link.write_paused and conn is not None:
            # The link is full: read no more of the app until it drains.
            transport = conn.transport
            if transport is not None and not conn.closed:
                transport.pause_reading()
                self._link.when_writable(
                    lambda: None if conn.closed or self._paused else transport.resume_reading())

    def _whole_answer(self, data: bytes) -> bool:
        """The usual answer: a final response framed by Content-Length (or bodiless), all
        of it in ``data``: one frame for the agent, without the parser's objects
        (``waylay.core.engine.http1_simple`` says yes only where the general parser agrees)."""
        simple = simple_response(data, self._start.method)
        if simple is None or len(data) > INLINE_BODY_MAX:
            return False
        head_end = data.find(b"\r\n\r\n") + 4
        text = data[:head_end].decode("latin-1")
        fields: list[tuple[str, str]] = FIELD_TEXT.findall(text)
        if " \r" in text or "\t\r" in text:
            fields = [(name, value.rstrip(" \t")) for name, value in fields]
        line_end = text.find("\r\n")  # "HTTP/1.1 200[ reason]"
        self._response = _WHOLE
        self._response_keep_alive = simple.keep_alive
        self._link.send(ResponseStart(stream=self.sid, status=simple.status,
                                      reason=text[13:line_end] if line_end > 12 else "",
                                      headers=tuple(fields), body=data[head_end:], end=True))
        self._response_done(end_sent=True)
        return True

    def _pump(self) -> None:
        buf = self._buf
        link = self._link
        while True:
            if self._response is None:
                head = parse_response_head(buf, request_method=self._method)
                if head is None:
                    return
                if head.status < 200:
                    if head.status == 101:
                        self._switch(head)
                        return
                    continue  # interim (100, 103): the agent answered 100-continue itself
                self._response = head
                self._response_keep_alive = head.keep_alive
                reader = self._body = BodyReader(head.framing)
                data = reader.read(buf)[1] if buf else b""
                # The whole answer in hand (the usual small one): one frame for the agent.
                whole = reader.done and len(data) <= INLINE_BODY_MAX
                link.send(ResponseStart(stream=self.sid, status=head.status,
                                        reason=head.reason.decode("latin-1"),
                                        headers=wire_headers(head),
                                        body=data if whole else b"", end=whole))
                if whole:
                    self._response_done(end_sent=True)
                    return
                if data:
                    self._to_agent(data)
            body = self._body
            assert body is not None
            if not body.done:
                if not buf:
                    return
                _, data = body.read(buf)
                if data:
                    self._to_agent(data)
                if not body.done:
                    return
            self._response_done()
            return

    def _to_agent(self, data: bytes) -> None:
        self._link.send_raw(encode_data(self.sid, data))

    def _response_done(self, *, end_sent: bool = False) -> None:
        if not end_sent:
            self._link.send(End(stream=self.sid))
        self._response_complete = True
        if self._request_done:
            self._finish()
        elif not (self._body_kind == "none"
                  or (self._body_kind == "length" and not self._body_left)):
            # The answer came before the request's body was all sent (an early 413, 401):
            # the app wants no more of it, and the agent closes its caller's connection
            # and sends nothing more on this stream. The connection is let go now.
            self._end(reuse=False)
        # else: the request is all written and its End frame is on its way: the
        # connection is reusable once it comes.

    def _finish(self) -> None:
        """Both messages are complete: the connection goes back to the pool if both sides
        keep it alive and the app sent nothing past its answer."""
        reuse = self._response_keep_alive and self._keep_alive and not self._buf
        if reuse:
            self.flush()  # what the last frames wrote goes out before the next request
        self._end(reuse=reuse)

    def _switch(self, head: ResponseHead) -> None:
        """101 Switching Protocols: the stream becomes a byte tunnel (RFC 9110 §7.8)."""
        if not self._upgrade:
            raise HttpParseError("101 Switching Protocols to a request that asked for no "
                                 "upgrade", 502)
        self._link.send(ResponseStart(stream=self.sid, status=101,
                                      reason=head.reason.decode("latin-1"),
                                      headers=wire_headers(head)))
        self._tunnel = True
        # The 101 may come before the request's End: that End is not the tunnel's.
        self._tunnel_request_open = not self._request_done
        leftover = bytes(self._buf)
        self._buf.clear()
        if leftover:
            self._to_agent(leftover)

    def _tunnel_frame(self, message: Message) -> None:
        if self._tunnel_request_open:
            # The rest of the request that was upgraded: not tunnel bytes.
            self._tunnel_request_open = not isinstance(message, End)
            return
        if isinstance(message, Data):
            if message.data:
                self._write(message.data)
        elif isinstance(message, End):
            self._tunnel_got_end = True
            self.flush()
            conn = self._conn
            transport = conn.transport if conn is not None and not conn.closed else None
            if transport is not None and transport.can_write_eof():
                transport.write_eof()
            if self._tunnel_sent_end:
                self._end(reuse=False)

    def local_eof(self) -> bool:
        """The app half-closed; True keeps our sending side open (a tunnel's)."""
        if self.done:
            return False
        if self._tunnel:
            self._tunnel_sent_end = True
            self._link.send(End(stream=self.sid))
            if self._tunnel_got_end:
                self._end(reuse=False)
                return False
            return True
        self._closed_by_app(None)
        return False

    def local_lost(self, exc: Exception | None) -> None:
        if self.done:
            return
        if self._tunnel:
            if exc is not None:
                self._reset(f"local app failed: {_describe(exc)}")
            elif not self._tunnel_sent_end:
                self._link.send(End(stream=self.sid))
            self._end(reuse=False)
            return
        self._closed_by_app(exc)

    def _closed_by_app(self, exc: Exception | None) -> None:
        if self._response_complete:
            # Answered, and only the request's End frame is still due: nothing is lost,
            # the connection just cannot be reused.
            self._keep_alive = False
            return
        body = self._body
        if exc is None and body is not None and not body.done:
            try:
                body.eof()  # a close-delimited answer ends here
            except HttpParseError:
                pass
            else:
                self._response_done()
                return
        why = (_describe(exc) if exc is not None
               else f"local app at {self._where} closed the connection mid-response")
        self._fail(why)

    # --- endings ----------------------------------------------------------------------

    def pause(self) -> None:
        """The agent PAUSEd this stream (its remote client is slow): read no more of the
        local app's answer until ``resume``."""
        self._paused = True
        conn = self._conn
        if conn is not None and conn.transport is not None and not conn.closed:
            conn.transport.pause_reading()

    def resume(self) -> None:
        self._paused = False
        conn = self._conn
        if (conn is not None and conn.transport is not None and not conn.closed
                and not self._link.write_paused):
            conn.transport.resume_reading()

    def reset(self) -> None:
        """The agent dropped the stream, or the session is going: let the connection go."""
        if not self.done:
            self._end(reuse=False)

    def _unreachable(self, exc: BaseException) -> None:
        start = self._start
        message = f"local app at {self._where} is unreachable: {_describe(exc)}"
        self._link.report_error(f"{start.method} {start.target} on port {start.port}: "
                                f"{message}")
        body = f"waylay: {message}\n".encode()
        self._link.send(ResponseStart(stream=self.sid, status=502, reason="Bad Gateway",
                                      headers=(
                                          ("Content-Type", "text/plain; charset=utf-8"),
                                          ("Content-Length", str(len(body))),
                                          ("X-Waylay-Error", "local-unreachable"),
                                      )))
        self._link.send_raw(encode_data(self.sid, body))
        self._link.send(End(stream=self.sid))
        self._end(reuse=False)

    def _fail(self, why: str) -> None:
        start = self._start
        self._link.report_error(f"{start.method} {start.target}: local app at {self._where} "
                                f"failed: {why}")
        self._reset(f"local app failed: {why}")
        self._end(reuse=False)

    def _reset(self, reason: str) -> None:
        self._link.send(Reset(stream=self.sid, reason=reason))

    def _end(self, *, reuse: bool) -> None:
        if self.done:
            return
        self.done = True
        self._unhold()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        conn, self._conn = self._conn, None
        if conn is not None:
            if reuse:
                self._pool.put(conn)
            else:
                self._pool.discard(conn)
        self._out.clear()
        self._on_done(self.sid)


# The session takes the delivery and the pool it draws on from here.
__all__ = ["Http1Delivery", "LocalHttp1Pool"]
