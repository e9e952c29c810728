"""HTTP/1.1 per-request routing for one intercepted connection (sans-I/O).

Theory of operation
-------------------
Three parties meet here: the remote client ("downstream"), the original app
("upstream") and a waylay session's local app (reached through the wire protocol as a
stolen stream). Downstream bytes are split into requests by ``waylay.core.engine.http1_framing``;
each request is routed on its own as soon as its head is complete (``Decide``):

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
driver returns it to its pool on ``release_upstream``): a keep-alive client costs no
connection setup per passed request.

Two ways in, one engine. Every request of a live service on a filtered port crosses this
code, so the driver calls it directly (``downstream_data``, ``upstream_data``, ...) and
it answers by calling an ``Http1Sink`` (docs/architecture.md, "The hot path"): no event
or command objects per request. ``handle`` is the same engine behind the shared
event/command vocabulary of ``waylay.core.engine.routing``, for playbook tests and readers: it
records the sink calls as commands.

This module reads the remote client's requests and routes them; the answers going back
(relayed from the original app, or framed from the local app's) are
``waylay.core.engine.http1_responses``; the sink and its recorder ``http1_sink``; the state
of the request in flight ``http1_exchange``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

from waylay.core.engine.body_filter import BodySkip
from waylay.core.engine.filters import RequestView, request_view
from waylay.core.engine.flow import FlowRecord, Verdict
from waylay.core.engine.http1_exchange import BodyHold, Exchange, Lane, Tunnel
from waylay.core.engine.http1_framing import (
    NO_BODY,
    RequestHead,
    parse_request_head,
    response_head_bytes,
)
from waylay.core.engine.http1_held import Http1Held
from waylay.core.engine.http1_responses import Http1Responses
from waylay.core.engine.http1_simple import SimpleRequest, simple_request, simple_response
from waylay.core.engine.http1_sink import CommandRecorder, Http1Sink
from waylay.core.engine.http1_syntax import MAX_HEAD_BYTES, HttpParseError
from waylay.core.engine.routing import (
    Command,
    Decide,
    DownstreamClosed,
    DownstreamData,
    Event,
    LocalAborted,
    LocalData,
    LocalEnd,
    LocalResponse,
    LocalTrailers,
    MirrorStart,
    Route,
    StealStart,
    UpstreamClosed,
    UpstreamData,
    marked_head,
)

# Pipelined bytes held while a response is in flight before the driver stops reading.
MAX_BUFFERED_DOWNSTREAM = 256 * 1024

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Http1Router(Http1Responses, Http1Held):
    """Routes the requests of one downstream HTTP/1.1 connection; see the module doc. The
    responses' half of its methods is ``Http1Responses`` (``waylay.core.engine.http1_responses``);
    requests held for a body filter are ``Http1Held`` (``waylay.core.engine.http1_held``).

    Without a ``sink`` the router records commands for ``handle`` (playbook tests).
    """

    __slots__ = ("_authority", "_awaiting_head", "_capture", "_decide", "_down", "_down_eof",
                 "_exchange", "_has_upstream", "_lane", "_next_id", "_now", "_port", "_recorder",
                 "_route_ahead", "_sink", "_tunnel", "_tunnel_sent_end", "_up", "closed",
                 "requests")

    def __init__(self, *, port: int, authority: str, decide: Decide,
                 next_id: Callable[[], int],
                 capture: Callable[[], bool] = lambda: False,
                 sink: Http1Sink | None = None) -> None:
        self._port = port
        self._capture = capture  # asked per request: sessions may switch it on and off
        self._authority = authority.encode("latin-1")  # added as Host when one is missing
        self._decide = decide
        self._next_id = next_id
        self._recorder = CommandRecorder() if sink is None else None
        self._sink: Http1Sink = sink if sink is not None else self._recorder  # type: ignore[assignment]
        self._down = bytearray()
        self._up = bytearray()
        self._down_eof = False
        self._tunnel_sent_end = False
        self._awaiting_head = False  # a partial head is buffered (see downstream_data)
        self._has_upstream = False
        self._tunnel = Tunnel.NONE
        self._exchange: Exchange | None = None
        self._lane: Lane | None = None  # a simple request in the fast lane
        self._route_ahead: Route | None = None  # decided by the lane, for _start
        self._now = 0.0
        self.closed = False
        self.requests = 0

    @property
    def wants_downstream(self) -> bool:
        """False while enough pipelined bytes wait in the buffer (backpressure)."""
        return not self.closed and (
            self._tunnel is not Tunnel.NONE or len(self._down) < MAX_BUFFERED_DOWNSTREAM)

    # --- the event/command form (playbooks) ---------------------------------------------

    def handle(self, event: Event, now: float) -> list[Command]:
        """Feed one event; return the commands to execute, in order."""
        recorder = self._recorder
        if recorder is None:
            raise RuntimeError("this router drives a sink; call its methods instead")
        match event:
            case DownstreamData(data=data):
                self.downstream_data(data, now)
            case DownstreamClosed():
                self.downstream_closed(now)
            case UpstreamData(data=data):
                self.upstream_data(data, now)
            case UpstreamClosed(reason=reason):
                self.upstream_closed(reason, now)
            case LocalResponse(status=status, reason=reason, headers=headers):
                self.local_response(status, reason, headers, now)
            case LocalData(data=data):
                self.local_data(data, now)
            case LocalEnd():
                self.local_end(now)
            case LocalAborted(reason=reason, status=status):
                self.local_aborted(reason, status, now)
            case LocalTrailers():
                pass  # an HTTP/1.1 client gets a stolen answer without its trailers
            case _:
                assert_never(event)
        return recorder.take()

    # --- the driver's calls ------------------------------------------------------------

    def downstream_data(self, data: bytes, now: float) -> None:
        """Bytes from the remote client."""
        if self.closed:
            return
        self._now = now
        if self._lane is not None:
            self._promote()  # pipelined bytes: the general path orders them
        elif self._exchange is None and not self._down and self._tunnel is Tunnel.NONE:
            simple = simple_request(data)
            if simple is not None and self._start_simple(simple, data):
                return
        self._down += data
        # A head can only complete with a line end: a head dripping in byte by byte is
        # not rescanned on every byte (that would be quadratic).
        if self._awaiting_head and b"\n" not in data and len(self._down) <= MAX_HEAD_BYTES:
            return
        self._pump_downstream()

    def downstream_closed(self, now: float) -> None:
        """The remote client closed its sending side (EOF) or the connection broke."""
        if self.closed:
            return
        self._now = now
        if self._lane is not None:
            self._promote()
        self._down_eof = True
        self._pump_downstream()

    def upstream_data(self, data: bytes, now: float) -> None:
        """Bytes from the original app."""
        if self.closed:
            return
        self._now = now
        lane = self._lane
        if lane is not None:
            if not self._up and self._finish_simple(lane, data):
                return
            self._promote()
        self._up += data
        self._pump_upstream()

    def upstream_closed(self, reason: str | None, now: float) -> None:
        """The original app closed the connection (or connecting failed: ``reason``)."""
        if self.closed:
            return
        self._now = now
        if self._lane is not None:
            self._promote()
        self._upstream_closed(reason)

    def local_response(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                       now: float) -> None:
        """The head of the local app's response to the stolen request in flight."""
        if self.closed:
            return
        self._now = now
        self._local_head(status, reason, headers)

    def local_data(self, data: bytes, now: float) -> None:
        if self.closed:
            return
        self._now = now
        self._local_data(data)

    def local_end(self, now: float) -> None:
        if self.closed:
            return
        self._now = now
        self._local_end()

    def local_aborted(self, reason: str, status: int, now: float) -> None:
        """The session could not deliver the stolen request: answer ``status`` if nothing
        was sent yet (502, or 504 when the local app did not answer in time)."""
        if self.closed:
            return
        self._now = now
        self._fail(f"waylay: the local app failed: {reason}", status)

    def abort(self, now: float) -> None:
        """The connection to the remote client is gone: record and abandon what is in
        flight, release the upstream (reusable only between requests), close."""
        if self.closed:
            return
        self._now = now
        if self._lane is not None:
            self._promote()
        self._close()

    # --- the fast lane: a simple request passed through whole --------------------------

    def _start_simple(self, simple: SimpleRequest, data: bytes) -> bool:
        """Route a simple request (``waylay.core.engine.http1_simple``); True if it went the fast
        lane, False if it must take the general path (its route is decided already)."""
        if self._capture():
            return False
        view = request_view(simple.method, simple.target, simple.headers)
        route = self._decide(view)
        if route.wants_body:
            route = self._decide(view, b"")  # a simple request has no body
        if route.mirror_to:
            self._route_ahead = route  # decided once: _start uses it
            return False
        if route.steal_by is not None:
            self._steal_simple(simple, data, route)
            return True
        # The record as the wire row it will be (waylay.core.engine.flow.ROW_FIELDS): no FlowRecord.
        row = [self._next_id(), self._now, self._port, "http/1.1", simple.method,
               simple.host, simple.target, "passed", None, None, 0, 0, route.clause,
               None if route.body_skipped is None else {"body_skipped": route.body_skipped}]
        self.requests += 1
        self._lane = Lane(data, simple.method, row, route, simple.keep_alive)
        sink = self._sink
        if not self._has_upstream:
            self._has_upstream = True
            sink.connect_upstream()
        sink.send_upstream(data)
        return True

    def _steal_simple(self, simple: SimpleRequest, data: bytes, route: Route) -> None:
        """A simple request stolen: the exchange ``_start`` would make of it, from facts
        already known (no second parse), and the request is complete at once (bodiless)."""
        assert route.steal_by is not None
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in simple.headers]
        version = simple.version.encode("ascii")
        head = RequestHead(method=simple.method.encode("latin-1"),
                           target=simple.target.encode("latin-1"), version=version,
                           headers=headers, raw=data, framing=NO_BODY,
                           keep_alive=simple.keep_alive, expects_continue=False, upgrade=False)
        record = FlowRecord(id=self._next_id(), ts=self._now, port=self._port,
                            protocol="http/1.1", verdict=Verdict.STOLEN, method=simple.method,
                            authority=simple.host, path=simple.target, matched=route.clause)
        self.requests += 1
        exchange = Exchange(head, record, route)
        exchange.request_done = True
        self._exchange = exchange
        if simple.host is None:  # HTTP/1.0 without Host: the local app gets one
            headers = [*headers, (b"Host", self._authority)]
        sink = self._sink
        sink.steal_start(StealStart(sub_id=route.steal_by, flow_id=record.id,
                                    method=simple.method, target=simple.target,
                                    http_version=simple.version, headers=headers))
        sink.steal_end()

    def _finish_simple(self, lane: Lane, data: bytes) -> bool:
        """The whole response to the lane's request in ``data``: pass it on; True if so."""
        simple = simple_response(data, lane.method)
        if simple is None:
            return False
        self._lane = None
        row = lane.row
        started = row[1]
        row[1] = round(started, 6)
        row[8] = simple.status
        row[9] = round((self._now - started) * 1000.0, 3)
        row[11] = simple.body_bytes
        sink = self._sink
        sink.send_downstream(data if not lane.route.mark else marked_head(data))
        sink.record_row(row, lane.route.timed_out)
        if not (lane.keep_alive and simple.keep_alive):
            self._release_upstream(False)
            self._close()
        return True

    def _promote(self) -> None:
        """Anything but the lane's happy ending: the lane's request becomes the general
        path's exchange in flight (its head parses there as it did here)."""
        lane, self._lane = self._lane, None
        assert lane is not None
        head = parse_request_head(bytearray(lane.raw))
        assert head is not None
        exchange = Exchange(head, FlowRecord.from_row(lane.row), lane.route)
        exchange.record.body_skipped = lane.route.body_skipped
        exchange.request_done = True  # bodiless, and already sent upstream
        self._exchange = exchange

    # --- downstream: the remote client's requests ---------------------------------------

    def _pump_downstream(self) -> None:
        sink = self._sink
        while not self.closed:
            if self._tunnel is Tunnel.UPSTREAM:
                if self._down:
                    sink.send_upstream(bytes(self._down))
                    self._down.clear()
                if self._down_eof:
                    self._close()
                return
            if self._tunnel is Tunnel.LOCAL:
                if self._down:
                    sink.steal_data(bytes(self._down))
                    self._down.clear()
                if self._down_eof and not self._tunnel_sent_end:
                    self._tunnel_sent_end = True
                    sink.steal_end()  # half-close; the local side ends the tunnel
                return
            exchange = self._exchange
            if exchange is None:
                try:
                    head = parse_request_head(self._down)
                except HttpParseError as exc:
                    self._bad_request(exc)
                    return
                if head is None:
                    self._awaiting_head = bool(self._down)
                    if self._down_eof:
                        self._close()  # a clean close between requests, or a torn head
                    return
                self._awaiting_head = False
                exchange = self._start(head)
            if exchange.request_done:
                if self._down_eof and exchange.response_done:
                    self._close()
                return  # pipelined bytes wait until the response is complete
            if exchange.hold is not None and not self._read_held(exchange, exchange.hold):
                return  # still undecided: nothing of it has left
            body = exchange.request_body
            if not body.done:
                try:
                    raw, decoded = body.read(self._down)
                    if self._down_eof and not body.done:
                        body.eof()
                except HttpParseError as exc:
                    self._bad_request(exc)
                    return
                if decoded:
                    record = exchange.record
                    record.bytes_in += len(decoded)
                    if record.request_body is not None:
                        record.capture_request_body(decoded)
                    if exchange.route.mirror_to:
                        sink.mirror_data(decoded)
                    if exchange.stolen:
                        sink.steal_data(decoded)
                if raw and not exchange.stolen:
                    sink.send_upstream(raw)
                if not body.done:
                    return
            exchange.request_done = True
            if exchange.route.mirror_to:
                sink.mirror_end()
            if exchange.stolen:
                sink.steal_end()
            if not self._finish_if_done(exchange):
                return

    def _start(self, head: RequestHead) -> Exchange:
        method = head.method.decode("latin-1")
        target = head.target.decode("latin-1")
        route = self._route_ahead
        view: RequestView | None = None
        if route is not None:
            self._route_ahead = None
        else:
            view = request_view(
                method, target,
                tuple([(n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers]),
            )
            route = self._decide(view)
        host = head.header(b"host")
        record = FlowRecord(
            id=self._next_id(), ts=self._now, port=self._port, protocol="http/1.1",
            verdict=Verdict.PASSED, method=method,
            authority=host.decode("latin-1") if host is not None else None, path=target,
        )
        if self._capture():
            record.request_headers = head.headers
            record.request_body = bytearray()
            record.response_body = bytearray()
        self.requests += 1
        if route.wants_body and view is not None:
            framing = head.framing
            if framing.kind == "none" or (framing.kind == "length" and not framing.length):
                route = self._decide(view, b"")
            elif framing.kind == "length" and framing.length > route.body_limit:
                route = self._decide(view, BodySkip.TOO_LARGE)  # known to be too long
            else:  # hold the request back until its body decides (_read_held)
                exchange = Exchange(head, record, route)
                exchange.hold = BodyHold(view, route.body_limit,
                                         self._now + route.body_timeout_ms / 1000.0)
                self._exchange = exchange
                if head.expects_continue:  # the client waits for this to send the body
                    exchange.hold.continued = True
                    self._sink.send_downstream(_CONTINUE)
                self._sink.await_body(exchange.hold.deadline)
                return exchange
        exchange = Exchange(head, record, route)
        self._exchange = exchange
        self._dispatch(exchange)
        return exchange

    def _dispatch(self, exchange: Exchange) -> None:
        """Send a decided request's head where its route says."""
        sink = self._sink
        head, record, route = exchange.request, exchange.record, exchange.route
        stolen = exchange.stolen = route.steal_by is not None
        record.verdict = Verdict.STOLEN if stolen else Verdict.PASSED
        record.matched = route.clause
        if not stolen and not route.mirror_to:
            record.body_skipped = route.body_skipped
        method, target = record.method or "", record.path or ""
        host = head.header(b"host")
        if route.mirror_to:
            copy = [(n, v) for n, v in head.headers if n.lower() != b"expect"]
            if host is None:
                copy.append((b"Host", self._authority))
            clauses = route.mirror_clauses or (None,) * len(route.mirror_to)
            for sub_id, clause in zip(route.mirror_to, clauses, strict=True):
                sink.mirror_start(MirrorStart(sub_id=sub_id, method=method, target=target,
                                              http_version=head.version.decode("ascii"),
                                              headers=copy, record=record, clause=clause))
        if not stolen:
            if not self._has_upstream:
                self._has_upstream = True
                sink.connect_upstream()
            sink.send_upstream(head.raw)
            return
        if head.expects_continue and not (exchange.hold and exchange.hold.continued):
            sink.send_downstream(_CONTINUE)  # RFC 9110 §10.1.1
        headers = [(n, v) for n, v in head.headers if n.lower() != b"expect"]
        if host is None:
            headers.append((b"Host", self._authority))
        assert route.steal_by is not None
        sink.steal_start(StealStart(sub_id=route.steal_by, flow_id=record.id, method=method,
                                    target=target, http_version=head.version.decode("ascii"),
                                    headers=headers))

    def _bad_request(self, exc: HttpParseError) -> None:
        """A malformed request: answer it with the parser's suggested status and close."""
        exchange = self._exchange
        if exchange is None or not exchange.response_started:
            body = f"waylay: malformed request: {exc.message}\n".encode()
            if exchange is not None:
                exchange.record.status = exc.status_hint
            self._send_simple(exc.status_hint, body)
        self._close()

    # --- endings ------------------------------------------------------------------------

    def _finish_if_done(self, exchange: Exchange) -> bool:
        """Close the books on a complete exchange; True if the next request may follow."""
        if not exchange.response_done:
            return False
        if not exchange.request_done:
            # An early answer (413, 401, ...) while the body still arrives: end the
            # connection rather than read a body nobody wants.
            exchange.close_after = True
        self._record(exchange)
        self._exchange = None
        if not exchange.stolen and (exchange.close_after or not exchange.request_done):
            self._release_upstream(False)
        if exchange.close_after:
            self._close()
            return False
        return True

    def _fail(self, message: str, status: int = 502) -> None:
        """Answer ``status`` if nothing was sent yet, otherwise cut the connection."""
        exchange = self._exchange
        if exchange is None or exchange.response_done:
            return
        if exchange.response_started:
            self._abort()
            return
        exchange.record.status = status
        self._send_simple(status, (message + "\n").encode("utf-8", "replace"))
        exchange.response_started = exchange.response_done = True
        exchange.close_after = True
        self._finish_if_done(exchange)

    def _abort(self) -> None:
        self._release_upstream(False)
        self._close()

    def _send_simple(self, status: int, body: bytes) -> None:
        head = response_head_bytes(status, b"", [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
        ])
        self._sink.send_downstream(head + body)

    def _record(self, exchange: Exchange) -> None:
        exchange.record.finish(self._now)
        route = exchange.route
        self._sink.record_flow(exchange.record, route.steal_by, route.timed_out)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        sink = self._sink
        exchange, self._exchange = self._exchange, None
        if exchange is not None and not exchange.response_done:
            if exchange.stolen:
                sink.steal_abort("connection closed")
            self._record(exchange)
        if self._tunnel is Tunnel.LOCAL and not self._tunnel_sent_end:
            sink.steal_abort("connection closed")
        if self._has_upstream:
            self._has_upstream = False
            sink.release_upstream(exchange is None and self._tunnel is Tunnel.NONE
                                  and not self._up)
        sink.close_downstream()


__all__ = ["MAX_BUFFERED_DOWNSTREAM", "Http1Router"]
