"""HTTP/1.1 per-request routing for one intercepted connection (sans-I/O).

Theory of operation
-------------------
Three parties meet here: the remote client ("downstream"), the original app
("upstream") and a waylay session's local app (reached through the wire protocol as a
stolen stream). Downstream bytes are split into requests by ``core.http1_framing``; each
request is routed on its own as soon as its head is complete (``Decide``):

* a **passed** request is forwarded upstream as its exact bytes, and the response comes
  back as its exact bytes: the original app and the remote client see the same
  conversation they would without waylay (Expect/100-continue, HEAD, trailers, upgrades
  included), and the agent pays only for finding message boundaries;
* a **stolen** request goes to the session as a head plus decoded body data; the local
  app's response is framed here for the remote client (Content-Length kept, otherwise
  chunked, or close-delimited for HTTP/1.0).

One request is in flight at a time; pipelined requests (RFC 9112 §9.3.2) wait in the
downstream buffer until the current response is complete, so answers go out in order.
The driver stops reading downstream while ``wants_downstream`` is false, which bounds
that buffer. A passed upgrade (101 Switching Protocols, RFC 9110 §15.2.2) turns the
connection into a tunnel to the original app.

The upstream connection stays bound to this downstream connection while both live (the
driver returns it to its pool on ``ReleaseUpstream``): a keep-alive client costs no
connection setup per passed request.
"""

from __future__ import annotations

from collections.abc import Callable

from core.filters import RequestView
from core.flow import FlowRecord, Verdict
from core.http1_framing import (
    CHUNKED,
    LAST_CHUNK,
    MAX_HEAD_BYTES,
    NO_BODY,
    UNTIL_CLOSE,
    BodyReader,
    Framing,
    HttpParseError,
    RequestHead,
    ResponseHead,
    chunk,
    length,
    parse_request_head,
    parse_response_head,
    response_head_bytes,
)
from core.routing import (
    CloseDownstream,
    Command,
    ConnectUpstream,
    Decide,
    DownstreamClosed,
    DownstreamData,
    Event,
    LocalAborted,
    LocalData,
    LocalEnd,
    LocalResponse,
    LocalTrailers,
    MirrorData,
    MirrorEnd,
    MirrorStart,
    RecordFlow,
    ReleaseUpstream,
    Route,
    SendDownstream,
    SendUpstream,
    StealAbort,
    StealData,
    StealEnd,
    StealStart,
    UpstreamClosed,
    UpstreamData,
)

# Pipelined bytes held while a response is in flight before the driver stops reading.
MAX_BUFFERED_DOWNSTREAM = 256 * 1024

# Hop-by-hop fields of the local app's response (RFC 9110 §7.6.1): they describe the
# session's connection to the local app, not ours to the remote client.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                         b"transfer-encoding", b"te", b"trailer", b"upgrade"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Exchange:
    """The request in flight and what has happened to it so far."""

    __slots__ = ("close_after", "record", "request", "request_body", "request_done",
                 "response", "response_body", "response_done", "response_started",
                 "route", "stolen_framing")

    def __init__(self, request: RequestHead, record: FlowRecord, route: Route) -> None:
        self.request = request
        self.record = record
        self.route = route
        self.request_body = BodyReader(request.framing)
        self.request_done = False
        self.response: ResponseHead | None = None  # passed requests: the upstream head
        self.response_body: BodyReader | None = None
        self.response_started = False
        self.response_done = False
        self.stolen_framing: Framing = NO_BODY  # stolen requests: how we frame the answer
        self.close_after = not request.keep_alive

    @property
    def stolen(self) -> bool:
        return self.route.steal_by is not None


class Http1Router:
    """Routes the requests of one downstream HTTP/1.1 connection; see the module doc."""

    def __init__(self, *, port: int, authority: str, decide: Decide,
                 next_id: Callable[[], int],
                 capture: Callable[[], bool] = lambda: False) -> None:
        self._port = port
        self._capture = capture  # asked per request: sessions may switch it on and off
        self._authority = authority.encode("latin-1")  # added as Host when one is missing
        self._decide = decide
        self._next_id = next_id
        self._down = bytearray()
        self._up = bytearray()
        self._down_eof = False
        self._tunnel_sent_end = False
        self._awaiting_head = False  # a partial head is buffered (see DownstreamData)
        self._has_upstream = False
        # After a 101: "upstream" relays to the original app, "local" to the session.
        self._tunnel = ""
        self._exchange: _Exchange | None = None
        self._now = 0.0
        self.closed = False
        self.requests = 0

    @property
    def wants_downstream(self) -> bool:
        """False while enough pipelined bytes wait in the buffer (backpressure)."""
        return not self.closed and (
            bool(self._tunnel) or len(self._down) < MAX_BUFFERED_DOWNSTREAM)

    def handle(self, event: Event, now: float) -> list[Command]:
        """Feed one event; return the commands to execute, in order."""
        self._now = now
        out: list[Command] = []
        if self.closed:
            return out
        match event:
            case DownstreamData(data=data):
                self._down += data
                # A head can only complete with a line end: a head dripping in byte by
                # byte is not rescanned on every byte (that would be quadratic).
                if (self._awaiting_head and b"\n" not in data
                        and len(self._down) <= MAX_HEAD_BYTES):
                    return out
                self._pump_downstream(out)
            case DownstreamClosed():
                self._down_eof = True
                self._pump_downstream(out)
            case UpstreamData(data=data):
                self._up += data
                self._pump_upstream(out)
            case UpstreamClosed(reason=reason):
                self._upstream_closed(reason, out)
            case LocalResponse(status=status, reason=reason, headers=headers):
                self._local_head(status, reason, headers, out)
            case LocalData(data=data):
                self._local_data(data, out)
            case LocalEnd():
                self._local_end(out)
            case LocalAborted(reason=reason, status=status):
                self._fail(f"waylay: the local app failed: {reason}", out, status=status)
            case LocalTrailers():
                pass  # an HTTP/1.1 client gets a stolen answer without its trailers
            case _:
                raise AssertionError(f"unhandled event {event!r}")
        return _coalesce(out)

    # --- downstream: the remote client's requests ---------------------------------------

    def _pump_downstream(self, out: list[Command]) -> None:
        while not self.closed:
            if self._tunnel == "upstream":
                if self._down:
                    out.append(SendUpstream(data=bytes(self._down)))
                    self._down.clear()
                if self._down_eof:
                    self._close(out)
                return
            if self._tunnel == "local":
                if self._down:
                    out.append(StealData(data=bytes(self._down)))
                    self._down.clear()
                if self._down_eof and not self._tunnel_sent_end:
                    self._tunnel_sent_end = True
                    out.append(StealEnd())  # half-close; the local side ends the tunnel
                return
            exchange = self._exchange
            if exchange is None:
                try:
                    head = parse_request_head(self._down)
                except HttpParseError as exc:
                    self._bad_request(exc, out)
                    return
                self._awaiting_head = head is None and bool(self._down)
                if head is None:
                    if self._down_eof:
                        self._close(out)  # a clean close between requests, or a torn head
                    return
                exchange = self._start(head, out)
            if exchange.request_done:
                if self._down_eof and exchange.response_done:
                    self._close(out)
                return  # pipelined bytes wait until the response is complete
            try:
                raw, decoded = exchange.request_body.read(self._down)
                if self._down_eof and not exchange.request_body.done:
                    exchange.request_body.eof()
            except HttpParseError as exc:
                self._bad_request(exc, out)
                return
            exchange.record.bytes_in += len(decoded)
            if exchange.record.request_body is not None and decoded:
                exchange.record.capture_request_body(decoded)
            if exchange.route.mirror_to and decoded:
                out.append(MirrorData(data=decoded))
            if exchange.stolen:
                if decoded:
                    out.append(StealData(data=decoded))
            elif raw:
                out.append(SendUpstream(data=raw))
            if not exchange.request_body.done:
                return
            exchange.request_done = True
            if exchange.route.mirror_to:
                out.append(MirrorEnd())
            if exchange.stolen:
                out.append(StealEnd())
            if not self._finish_if_done(exchange, out):
                return

    def _start(self, head: RequestHead, out: list[Command]) -> _Exchange:
        method = head.method.decode("latin-1")
        target = head.target.decode("latin-1")
        route = self._decide(RequestView(
            method=method, target=target,
            headers=tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers),
        ))
        host = head.header(b"host")
        record = FlowRecord(
            id=self._next_id(), ts=self._now, port=self._port, protocol="http/1.1",
            verdict=Verdict.PASSED if route.steal_by is None else Verdict.STOLEN,
            method=method, authority=host.decode("latin-1") if host is not None else None,
            path=target, matched=route.clause,
        )
        if self._capture():
            record.request_headers = head.headers
            record.request_body = bytearray()
            record.response_body = bytearray()
        self.requests += 1
        exchange = _Exchange(head, record, route)
        self._exchange = exchange
        if route.mirror_to:
            copy = [(n, v) for n, v in head.headers if n.lower() != b"expect"]
            if host is None:
                copy.append((b"Host", self._authority))
            for sub_id in route.mirror_to:
                out.append(MirrorStart(sub_id=sub_id, method=method, target=target,
                                       http_version=head.version.decode("ascii"),
                                       headers=copy, record=record))
        if route.steal_by is None:
            if not self._has_upstream:
                self._has_upstream = True
                out.append(ConnectUpstream())
            out.append(SendUpstream(data=head.raw))
            return exchange
        if head.expects_continue:
            out.append(SendDownstream(data=_CONTINUE))  # RFC 9110 §10.1.1
        headers = [(n, v) for n, v in head.headers if n.lower() != b"expect"]
        if host is None:
            headers.append((b"Host", self._authority))
        out.append(StealStart(sub_id=route.steal_by, flow_id=record.id, method=method,
                              target=target, http_version=head.version.decode("ascii"),
                              headers=headers))
        return exchange

    def _bad_request(self, exc: HttpParseError, out: list[Command]) -> None:
        """A malformed request: answer it with the parser's suggested status and close."""
        exchange = self._exchange
        if exchange is None or not exchange.response_started:
            body = f"waylay: malformed request: {exc.message}\n".encode()
            if exchange is not None:
                exchange.record.status = exc.status_hint
            self._send_simple(exc.status_hint, body, out)
        self._close(out)

    # --- upstream: the original app's responses to passed requests ---------------------

    def _pump_upstream(self, out: list[Command]) -> None:
        while not self.closed and self._up:
            if self._tunnel == "upstream":
                out.append(SendDownstream(data=bytes(self._up)))
                self._up.clear()
                return
            exchange = self._exchange
            if exchange is None or exchange.stolen or exchange.response_done:
                # Bytes nobody asked for: this connection can't be trusted any more.
                self._up.clear()
                self._release_upstream(False, out)
                return
            if exchange.response is None:
                try:
                    head = parse_response_head(self._up, request_method=exchange.request.method)
                except HttpParseError as exc:
                    self._release_upstream(False, out)
                    self._fail(f"waylay: the original app sent a bad response: {exc.message}",
                               out)
                    return
                if head is None:
                    return
                out.append(SendDownstream(data=head.raw))
                if head.informational:
                    if head.status == 101:
                        self._switch_protocols(exchange, out)
                    continue
                exchange.response = head
                if exchange.record.request_headers is not None:
                    exchange.record.response_headers = head.headers
                exchange.response_body = BodyReader(head.framing)
                exchange.response_started = True
                exchange.record.status = head.status
                if not head.keep_alive:
                    exchange.close_after = True
            body = exchange.response_body
            assert body is not None
            try:
                raw, decoded = body.read(self._up)
            except HttpParseError:
                self._abort(out)
                return
            if raw:
                out.append(SendDownstream(data=raw))
            exchange.record.bytes_out += len(decoded)
            if exchange.record.response_body is not None and decoded:
                exchange.record.capture_response_body(decoded)
            if not body.done:
                return
            exchange.response_done = True
            if self._up:  # bytes after the response: not a connection to reuse
                self._up.clear()
                exchange.close_after = True
            self._finish_if_done(exchange, out)
            if self._exchange is None:
                self._pump_downstream(out)
            return

    def _switch_protocols(self, exchange: _Exchange, out: list[Command]) -> None:
        """101 to a passed upgrade: from now on bytes flow untouched both ways."""
        self._tunnel = "upstream"
        exchange.record.status = 101
        exchange.response_started = exchange.response_done = True
        exchange.request_done = True
        self._record(exchange, out)
        self._exchange = None
        if self._down:
            out.append(SendUpstream(data=bytes(self._down)))
            self._down.clear()

    def _upstream_closed(self, reason: str | None, out: list[Command]) -> None:
        if not self._has_upstream:
            return
        self._has_upstream = False
        out.append(ReleaseUpstream(reusable=False))
        if self._tunnel == "upstream":
            self._close(out)
            return
        exchange = self._exchange
        if exchange is None or exchange.stolen or exchange.response_done:
            return
        body = exchange.response_body
        if body is not None and exchange.response is not None and (
            exchange.response.framing.kind == "close"
        ):
            body.eof()
            exchange.response_done = True
            exchange.close_after = True
            self._finish_if_done(exchange, out)
            return
        why = reason or "it closed the connection before the response was complete"
        self._fail(f"waylay: the original app failed: {why}", out)

    def _release_upstream(self, reusable: bool, out: list[Command]) -> None:
        if self._has_upstream:
            self._has_upstream = False
            self._up.clear()
            out.append(ReleaseUpstream(reusable=reusable))

    # --- the local app's response to a stolen request ----------------------------------

    def _local_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                    out: list[Command]) -> None:
        exchange = self._exchange
        if exchange is None or not exchange.stolen or exchange.response_started:
            return
        request = exchange.request
        if status == 101 and request.upgrade:
            self._local_switch(exchange, reason, headers, out)
            return
        kept = [(n, v) for n, v in headers if n.lower() not in _HOP_BY_HOP]
        sized = any(n.lower() == b"content-length" for n, _ in kept)
        if request.method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
            framing = NO_BODY
        elif sized:
            value = next(v for n, v in kept if n.lower() == b"content-length")
            framing = length(int(value)) if value.strip().isdigit() else UNTIL_CLOSE
        elif request.version == b"1.1":
            framing = CHUNKED
            kept.append((b"Transfer-Encoding", b"chunked"))
        else:
            framing = UNTIL_CLOSE  # HTTP/1.0 client: the end of the body is the close
        if framing is UNTIL_CLOSE:
            exchange.close_after = True
        if exchange.close_after:
            kept.append((b"Connection", b"close"))
        elif request.version == b"1.0":
            kept.append((b"Connection", b"keep-alive"))
        exchange.stolen_framing = framing
        if exchange.record.request_headers is not None:
            exchange.record.response_headers = kept
        exchange.response_started = True
        exchange.record.status = status
        out.append(SendDownstream(data=response_head_bytes(status, reason, kept)))

    def _local_switch(self, exchange: _Exchange, reason: bytes,
                      headers: list[tuple[bytes, bytes]], out: list[Command]) -> None:
        """The local app accepted a stolen upgrade (RFC 9110 §7.8): the connection is its
        now, both ways, byte for byte (a WebSocket to the local app)."""
        kept = [(n, v) for n, v in headers
                if n.lower() not in (b"content-length", b"transfer-encoding")]
        out.append(SendDownstream(data=response_head_bytes(101, reason, kept)))
        self._tunnel = "local"
        exchange.record.status = 101
        exchange.response_started = exchange.response_done = True
        self._record(exchange, out)
        self._exchange = None
        self._pump_downstream(out)  # bytes the client sent right behind its request

    def _local_data(self, data: bytes, out: list[Command]) -> None:
        if self._tunnel == "local":
            out.append(SendDownstream(data=data))
            return
        exchange = self._exchange
        if (exchange is None or not exchange.stolen or not exchange.response_started
                or exchange.response_done or not data):
            return
        framing = exchange.stolen_framing
        if framing.kind == "none":
            return
        exchange.record.bytes_out += len(data)
        if exchange.record.response_body is not None:
            exchange.record.capture_response_body(data)
        out.append(SendDownstream(data=chunk(data) if framing is CHUNKED else data))

    def _local_end(self, out: list[Command]) -> None:
        if self._tunnel == "local":
            self._close(out)  # the local app ended the upgraded connection
            return
        exchange = self._exchange
        if (exchange is None or not exchange.stolen or not exchange.response_started
                or exchange.response_done):
            return
        if exchange.stolen_framing is CHUNKED:
            out.append(SendDownstream(data=LAST_CHUNK))
        exchange.response_done = True
        self._finish_if_done(exchange, out)
        if self._exchange is None:
            self._pump_downstream(out)

    # --- endings ------------------------------------------------------------------------

    def _finish_if_done(self, exchange: _Exchange, out: list[Command]) -> bool:
        """Close the books on a complete exchange; True if the next request may follow."""
        if not exchange.response_done:
            return False
        if not exchange.request_done:
            # An early answer (413, 401, ...) while the body still arrives: end the
            # connection rather than read a body nobody wants.
            exchange.close_after = True
        self._record(exchange, out)
        self._exchange = None
        if not exchange.stolen and (exchange.close_after or not exchange.request_done):
            self._release_upstream(False, out)
        if exchange.close_after:
            self._close(out)
            return False
        return True

    def _fail(self, message: str, out: list[Command], *, status: int = 502) -> None:
        """Answer ``status`` if nothing was sent yet, otherwise cut the connection."""
        exchange = self._exchange
        if exchange is None or exchange.response_done:
            return
        if exchange.response_started:
            self._abort(out)
            return
        exchange.record.status = status
        self._send_simple(status, (message + "\n").encode("utf-8", "replace"), out)
        exchange.response_started = exchange.response_done = True
        exchange.close_after = True
        self._finish_if_done(exchange, out)

    def _abort(self, out: list[Command]) -> None:
        self._release_upstream(False, out)
        self._close(out)

    def _send_simple(self, status: int, body: bytes, out: list[Command]) -> None:
        head = response_head_bytes(status, b"", [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
        ])
        out.append(SendDownstream(data=head + body))

    def _record(self, exchange: _Exchange, out: list[Command]) -> None:
        exchange.record.finish(self._now)
        out.append(RecordFlow(record=exchange.record, owner=exchange.route.steal_by,
                              timed_out=exchange.route.timed_out))

    def _close(self, out: list[Command]) -> None:
        if self.closed:
            return
        self.closed = True
        exchange, self._exchange = self._exchange, None
        if exchange is not None and not exchange.response_done:
            if exchange.stolen:
                out.append(StealAbort(reason="connection closed"))
            self._record(exchange, out)
        if self._tunnel == "local" and not self._tunnel_sent_end:
            out.append(StealAbort(reason="connection closed"))
        if self._has_upstream:
            self._has_upstream = False
            out.append(ReleaseUpstream(reusable=exchange is None and not self._tunnel
                                       and not self._up))
        out.append(CloseDownstream())


def _coalesce(commands: list[Command]) -> list[Command]:
    """Merge adjacent sends to the same peer: one write (one syscall) instead of several."""
    if len(commands) < 2:
        return commands
    merged: list[Command] = []
    for command in commands:
        last = merged[-1] if merged else None
        if isinstance(command, SendDownstream) and isinstance(last, SendDownstream):
            merged[-1] = SendDownstream(data=last.data + command.data)
        elif isinstance(command, SendUpstream) and isinstance(last, SendUpstream):
            merged[-1] = SendUpstream(data=last.data + command.data)
        else:
            merged.append(command)
    return merged


__all__ = ["Http1Router"]
