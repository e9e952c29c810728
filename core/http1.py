"""HTTP/1.1 per-request routing for one intercepted connection (sans-I/O, built on h11).

Theory of operation
-------------------
Three parties meet here: the remote client ("downstream"), the original app
("upstream") and a waylay session's local app (reached through the wire protocol as a
stolen stream). Downstream is parsed by an h11 server connection. Each request is routed
on its own when its head is complete (``Decide``): passed requests are re-sent on an h11
client connection to the original app, stolen ones are handed to the session as
``Steal*`` commands. Responses from either side are written back through the same h11
server connection, so framing (Content-Length, chunked, HEAD, 1xx) is always correct for
the remote client whatever the other side did.

One request is in flight at a time. h11 holds pipelined requests (RFC 9112 §9.3.2) in its
buffer until the current response is complete, so answers go out in order; the driver
stops reading downstream while ``wants_downstream`` is false, which bounds that buffer.

``Expect: 100-continue`` (RFC 9110 §10.1.1) is answered by the engine itself as soon as
the route is known, and the header is not forwarded: neither the original app nor the
local app then waits for a body that is already on its way.

The upstream connection stays bound to this downstream connection while both live (the
driver returns it to its pool on ``ReleaseUpstream``): keep-alive clients therefore cost
no connection setup per passed request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h11

from core.filters import RequestView
from core.flow import FlowRecord, Verdict
from core.routing import (
    PASS,
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

# Largest request or response head we accept; h11 answers 431-ish errors past it.
MAX_HEAD_BYTES = 64 * 1024
# Pipelined bytes held while a response is in flight before the driver stops reading.
MAX_BUFFERED_DOWNSTREAM = 256 * 1024

_HOP_BY_HOP_EXPECT = b"expect"


class _Exchange:
    """The request in flight and what has happened to it so far."""

    __slots__ = ("record", "request_done", "response_done", "response_started", "route")

    def __init__(self, record: FlowRecord, route: Route) -> None:
        self.record = record
        self.route = route
        self.request_done = False
        self.response_started = False
        self.response_done = False


class Http1Router:
    """Routes the requests of one downstream HTTP/1.1 connection; see the module doc."""

    def __init__(self, *, port: int, authority: str, decide: Decide,
                 next_id: Callable[[], int]) -> None:
        self._port = port
        self._authority = authority  # original destination, used when a request lacks Host
        self._decide = decide
        self._next_id = next_id
        self._down = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._up: h11.Connection | None = None
        self._exchange: _Exchange | None = None
        self._now = 0.0
        self.closed = False
        self.requests = 0

    @property
    def wants_downstream(self) -> bool:
        """False while enough pipelined bytes wait in h11's buffer (backpressure)."""
        if self.closed:
            return False
        if self._exchange is None:
            return True
        return len(self._down.trailing_data[0]) < MAX_BUFFERED_DOWNSTREAM

    def handle(self, event: Event, now: float) -> list[Command]:
        """Feed one event; return the commands to execute, in order."""
        self._now = now
        out: list[Command] = []
        if self.closed:
            return out
        match event:
            case DownstreamData(data=data):
                self._down.receive_data(data)
                self._pump_downstream(out)
            case DownstreamClosed():
                self._down.receive_data(b"")
                self._pump_downstream(out)
            case UpstreamData(data=data):
                self._from_upstream(data, out)
            case UpstreamClosed(reason=reason):
                self._upstream_closed(reason, out)
            case LocalResponse(status=status, reason=reason, headers=headers):
                self._respond_head(status, reason, headers, out)
            case LocalData(data=data):
                self._respond_data(data, out)
            case LocalEnd():
                self._respond_end([], out)
            case LocalAborted(reason=reason):
                self._fail_response(f"waylay: the local app failed: {reason}", out)
            case _:
                raise AssertionError(f"unhandled event {event!r}")
        return out

    # --- downstream: the remote client's requests ---------------------------------------

    def _pump_downstream(self, out: list[Command]) -> None:
        while not self.closed:
            try:
                event = self._down.next_event()
            except h11.RemoteProtocolError as exc:
                self._bad_request(exc, out)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._start_request(event, out)
            elif isinstance(event, h11.Data):
                self._request_data(bytes(event.data), out)
            elif isinstance(event, h11.EndOfMessage):
                self._request_end(list(event.headers.raw_items()), out)
            elif isinstance(event, h11.ConnectionClosed):
                self._downstream_gone(out)
                return

    def _start_request(self, request: h11.Request, out: list[Command]) -> None:
        raw = list(request.headers.raw_items())
        target = request.target.decode("latin-1")
        method = request.method.decode("latin-1")
        view = RequestView(
            method=method,
            target=target,
            headers=tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw),
        )
        route = self._decide(view)
        host = next((v for n, v in raw if n.lower() == b"host"), None)
        record = FlowRecord(
            id=self._next_id(),
            ts=self._now,
            port=self._port,
            protocol="http/1.1",
            verdict=Verdict.PASSED if route.steal_by is None else Verdict.STOLEN,
            method=method,
            authority=host.decode("latin-1") if host is not None else None,
            path=target,
            matched=route.clause,
        )
        self.requests += 1
        self._exchange = _Exchange(record, route)
        if self._down.they_are_waiting_for_100_continue:
            out.append(SendDownstream(data=self._send_down(h11.InformationalResponse(
                status_code=100, headers=[]))))
        forwarded = [(n, v) for n, v in raw if n.lower() != _HOP_BY_HOP_EXPECT]
        if host is None:
            forwarded.append((b"Host", self._authority.encode("latin-1")))
        if route.steal_by is None:
            if self._up is not None and self._up.our_state is not h11.IDLE:
                # Left mid-cycle by an early response to the previous request.
                self._release_upstream(False, out)
            if self._up is None:
                self._up = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
                out.append(ConnectUpstream())
            data = self._up.send(h11.Request(method=request.method, target=request.target,
                                             headers=forwarded))
            out.append(SendUpstream(data=data or b""))
        else:
            out.append(StealStart(
                sub_id=route.steal_by,
                method=method,
                target=target,
                http_version=request.http_version.decode("ascii"),
                headers=forwarded,
            ))

    def _request_data(self, data: bytes, out: list[Command]) -> None:
        exchange = self._exchange
        assert exchange is not None
        exchange.record.bytes_in += len(data)
        if exchange.route.steal_by is not None:
            out.append(StealData(data=data))
        elif self._up is not None:
            out.append(SendUpstream(data=self._up.send(h11.Data(data=data)) or b""))

    def _request_end(self, trailers: list[tuple[bytes, bytes]], out: list[Command]) -> None:
        exchange = self._exchange
        assert exchange is not None
        exchange.request_done = True
        if exchange.route.steal_by is not None:
            out.append(StealEnd())
        elif self._up is not None:
            data = self._up.send(h11.EndOfMessage(headers=trailers))
            out.append(SendUpstream(data=data or b""))
        self._maybe_next_cycle(out)

    def _bad_request(self, exc: h11.RemoteProtocolError, out: list[Command]) -> None:
        """A malformed request: answer it with h11's suggested status and close."""
        if self._exchange is not None:
            self._exchange.record.status = exc.error_status_hint
        if self._down.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = f"waylay: malformed request: {exc}\n".encode()
            self._send_simple(exc.error_status_hint, body, out)
        self._close(out)

    def _downstream_gone(self, out: list[Command]) -> None:
        """The remote client closed between requests (or mid-response: the exchange is cut)."""
        self._close(out)

    # --- upstream: the original app's responses -----------------------------------------

    def _from_upstream(self, data: bytes, out: list[Command]) -> None:
        up = self._up
        if up is None:
            return
        up.receive_data(data)
        while True:
            try:
                event = up.next_event()
            except h11.RemoteProtocolError as exc:
                self._release_upstream(False, out)
                self._fail_response(f"waylay: the original app sent a bad response: {exc}", out)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.InformationalResponse):
                if event.status_code != 100:  # our own 100 already went out
                    out.append(SendDownstream(data=self._send_down(event)))
            elif isinstance(event, h11.Response):
                self._respond_head(event.status_code, event.reason,
                                   list(event.headers.raw_items()), out)
            elif isinstance(event, h11.Data):
                self._respond_data(bytes(event.data), out)
            elif isinstance(event, h11.EndOfMessage):
                self._respond_end(list(event.headers.raw_items()), out)
                return
            elif isinstance(event, h11.ConnectionClosed):
                self._upstream_closed(None, out)
                return

    def _upstream_closed(self, reason: str | None, out: list[Command]) -> None:
        if self._up is None:
            return
        self._up = None
        out.append(ReleaseUpstream(reusable=False))
        exchange = self._exchange
        if exchange is not None and exchange.route.steal_by is None and not exchange.response_done:
            why = reason or "it closed the connection before answering"
            self._fail_response(f"waylay: the original app failed: {why}", out)

    def _release_upstream(self, reusable: bool, out: list[Command]) -> None:
        if self._up is not None:
            self._up = None
            out.append(ReleaseUpstream(reusable=reusable))

    # --- responses to the remote client (from either side) -----------------------------

    def _respond_head(self, status: int, reason: bytes,
                      headers: list[tuple[bytes, bytes]], out: list[Command]) -> None:
        exchange = self._exchange
        if exchange is None or exchange.response_started:
            return
        exchange.response_started = True
        exchange.record.status = status
        try:
            data = self._send_down(h11.Response(status_code=status, reason=reason,
                                                headers=headers))
        except h11.LocalProtocolError as exc:
            exchange.response_started = False
            self._fail_response(f"waylay: unusable response head: {exc}", out)
            return
        out.append(SendDownstream(data=data))

    def _respond_data(self, data: bytes, out: list[Command]) -> None:
        exchange = self._exchange
        if exchange is None or not exchange.response_started or exchange.response_done:
            return
        exchange.record.bytes_out += len(data)
        out.append(SendDownstream(data=self._send_down(h11.Data(data=data))))

    def _respond_end(self, trailers: list[tuple[bytes, bytes]], out: list[Command]) -> None:
        exchange = self._exchange
        if exchange is None or not exchange.response_started or exchange.response_done:
            return
        try:
            data = self._send_down(h11.EndOfMessage(headers=trailers))
        except h11.LocalProtocolError:
            # The body was shorter than its Content-Length: the response is broken.
            self._abort_exchange(out)
            return
        out.append(SendDownstream(data=data))
        exchange.response_done = True
        self._record(exchange, out)
        if exchange.route.steal_by is None and self._up is not None:
            up = self._up
            if up.our_state is h11.DONE and up.their_state is h11.DONE:
                up.start_next_cycle()
            elif up.our_state is not h11.SEND_BODY:
                self._release_upstream(False, out)
        self._maybe_next_cycle(out)

    def _fail_response(self, message: str, out: list[Command]) -> None:
        """Answer 502 if nothing was sent yet, otherwise cut the connection."""
        exchange = self._exchange
        if exchange is None or exchange.response_done:
            return
        if exchange.response_started:
            self._abort_exchange(out)
            return
        exchange.response_started = True
        exchange.record.status = 502
        body = (message + "\n").encode("utf-8", "replace")
        self._send_simple(502, body, out, close=True)
        exchange.response_done = True
        self._record(exchange, out)
        self._maybe_next_cycle(out)

    def _abort_exchange(self, out: list[Command]) -> None:
        exchange = self._exchange
        if exchange is not None and not exchange.response_done:
            exchange.response_done = True
            self._record(exchange, out)
        self._release_upstream(False, out)
        self._close(out)

    def _send_simple(self, status: int, body: bytes, out: list[Command],
                     close: bool = False) -> None:
        headers = [(b"Content-Type", b"text/plain; charset=utf-8"),
                   (b"Content-Length", str(len(body)).encode())]
        if close:
            headers.append((b"Connection", b"close"))
        out.append(SendDownstream(data=self._send_down(
            h11.Response(status_code=status, headers=headers))
            + self._send_down(h11.Data(data=body)) + self._send_down(h11.EndOfMessage())))

    # --- cycle bookkeeping --------------------------------------------------------------

    def _maybe_next_cycle(self, out: list[Command]) -> None:
        exchange = self._exchange
        if exchange is None or not (exchange.request_done and exchange.response_done):
            if exchange is not None and exchange.response_done and self._down.our_state in (
                h11.MUST_CLOSE, h11.CLOSED
            ):
                self._close(out)
            return
        self._exchange = None
        down = self._down
        if down.our_state is h11.DONE and down.their_state is h11.DONE:
            down.start_next_cycle()
            self._pump_downstream(out)
        else:
            self._close(out)

    def _record(self, exchange: _Exchange, out: list[Command]) -> None:
        exchange.record.finish(self._now)
        out.append(RecordFlow(record=exchange.record, owner=exchange.route.steal_by,
                              timed_out=exchange.route.timed_out))

    def _send_down(self, event: Any) -> bytes:
        return self._down.send(event) or b""

    def _close(self, out: list[Command]) -> None:
        if self.closed:
            return
        self.closed = True
        exchange = self._exchange
        if exchange is not None and not exchange.response_done:
            exchange.response_done = True
            if exchange.route.steal_by is not None:
                out.append(StealAbort(reason="connection closed"))
            self._record(exchange, out)
        up = self._up
        if up is not None:
            self._up = None
            out.append(ReleaseUpstream(reusable=up.our_state is h11.IDLE
                                       and up.their_state is h11.IDLE))
        out.append(CloseDownstream())


__all__ = ["PASS", "Http1Router"]
