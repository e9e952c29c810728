"""HTTP/2 per-stream routing for one intercepted connection (sans-I/O).

Theory of operation
-------------------
The remote client ("downstream") speaks HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3)
to an h2 *server* connection held here. Each stream is routed on its own the moment its
request head is complete (``Decide``), so one connection mixes stolen and passed streams:

* a **passed** stream is re-opened on an h2 *client* connection towards the original app
  ("upstream", one per downstream connection, opened on the first passed stream). Its
  headers, data, trailers and resets are forwarded both ways, stream ids mapped;
* a **stolen** stream goes to a session as ``StealStart`` / ``StealData`` /
  ``StealTrailers`` / ``StealEnd`` carrying the downstream stream id, and the local app's
  answer comes back as ``LocalResponse`` / ``LocalData`` / ``LocalTrailers`` /
  ``LocalEnd`` for that stream.

Flow control (RFC 9113 §5.2) is honoured end to end, and it is what bounds the buffers:
data received from one peer is acknowledged (``acknowledge_received_data``) only when it
was handed on, that is, when the other h2 connection accepted it within *its* peer's
windows, or when it went to the session's link. Whatever does not fit waits in the
stream's buffer until a WINDOW_UPDATE (or a SETTINGS change) opens the window again; the
sender cannot outrun it by more than the window we advertise (``STREAM_WINDOW``,
``CONNECTION_WINDOW``). The local app's answers have no h2 window towards us: their
per-stream backlog is exposed (``local_backlog``) and the driver stops reading the
session's link while it is over ``MAX_LOCAL_BACKLOG``.

Resets map stream to stream (RST_STREAM codes kept). A GOAWAY from either peer lets the
streams it covers finish (RFC 9113 §6.8): those the original app never processed are
refused to the client (REFUSED_STREAM, safe to retry) and new passed streams are refused
too. An upstream that breaks fails its streams: 502 if no response started, else a reset;
the next passed stream opens a new upstream connection.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable

from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    PushedStreamReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.events import Event as H2Event
from h2.exceptions import ProtocolError

from core.filters import RequestView
from core.flow import FlowRecord, Verdict
from core.h2_streams import (
    NO_BODY_STATUS,
    Headers,
    StreamState,
    new_connection,
    pairs,
    reopen,
    response_fields,
    send_within_window,
    session_head,
    trailer_fields,
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
    SendDownstream,
    SendUpstream,
    StealAbort,
    StealData,
    StealEnd,
    StealStart,
    StealTrailers,
    UpstreamClosed,
    UpstreamData,
)

# Bytes of a stolen response held for a client that reads slower than the local app
# writes, before the driver stops reading the session's link (per stream).
MAX_LOCAL_BACKLOG = 256 * 1024


class H2Router:
    """Routes the streams of one downstream HTTP/2 connection; see the module doc."""

    def __init__(self, *, port: int, authority: str, decide: Decide,
                 next_id: Callable[[], int],
                 capture: Callable[[], bool] = lambda: False) -> None:
        self._port = port
        self._authority = authority.encode("latin-1")  # when a request has no :authority
        self._decide = decide
        self._next_id = next_id
        self._capture = capture
        # Header blocks are forwarded as they came (already checked when received, or
        # built here), so outbound validation and normalisation would only cost time.
        self._down = new_connection(client_side=False, trust_inbound=False)
        self._up: H2Connection | None = None
        self._up_going_away = False  # the original app sent GOAWAY: no new streams there
        self._streams: dict[int, StreamState] = {}  # by downstream id
        self._by_up: dict[int, StreamState] = {}  # passed streams by upstream id
        self._waiting: deque[StreamState] = deque()  # passed streams over the app's limit
        self._down_eof = False
        self._draining = False  # the client or we said GOAWAY: finish, then close
        self._now = 0.0
        self.closed = False
        self.requests = 0

    @property
    def wants_downstream(self) -> bool:
        """Always true while open: flow control, not the driver, bounds what we buffer."""
        return not self.closed

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def local_backlog(self, stream: int) -> int:
        """Bytes of a stolen response waiting for the client's window (0 when gone)."""
        s = self._streams.get(stream)
        return len(s.resp_buf) if s is not None else 0

    def handle(self, event: Event, now: float) -> list[Command]:
        """Feed one event; return the commands to execute, in order."""
        self._now = now
        out: list[Command] = []
        if self.closed:
            return out
        match event:
            case DownstreamData(data=data):
                self._downstream_data(data, out)
            case DownstreamClosed():
                # The client can send nothing more: requests still incomplete never
                # will be; answers to complete ones may still go out (a half-close).
                self._down_eof = self._draining = True
                for s in list(self._streams.values()):
                    if not s.req_ended:
                        self._client_reset(s, ErrorCodes.CANCEL, out)
            case UpstreamData(data=data):
                self._upstream_data(data, out)
            case UpstreamClosed(reason=reason):
                self._upstream_lost(reason or "it closed the connection", out)
            case LocalResponse(stream=sid, status=status, headers=headers):
                self._local_head(sid, status, headers)
            case LocalData(stream=sid, data=data):
                self._local_data(sid, data)
            case LocalTrailers(stream=sid, headers=headers):
                self._local_trailers(sid, headers)
            case LocalEnd(stream=sid):
                self._local_end(sid)
            case LocalAborted(stream=sid, reason=reason):
                aborted = self._streams.get(sid)
                if aborted is not None and aborted.stolen:
                    self._fail(aborted, f"waylay: the local app failed: {reason}", out)
            case _:
                raise AssertionError(f"unhandled event {event!r}")
        if self.closed:
            return out
        self._flush_all()
        self._finish_streams(out)
        if self._draining and not self._streams:
            self._close(out)
        else:
            self._collect(out)
        return out

    def close(self, now: float) -> list[Command]:
        """The connection broke (or the driver is done with it): abort every stream."""
        self._now = now
        out: list[Command] = []
        self._close(out)
        return out

    # --- downstream: the remote client's streams ------------------------------------------

    def _downstream_data(self, data: bytes, out: list[Command]) -> None:
        try:
            events = self._down.receive_data(data)
        except ProtocolError:
            self._close(out)  # h2 queued the GOAWAY naming the error; _close sends it
            return
        for event in events:
            self._on_down_event(event, out)

    def _on_down_event(self, event: H2Event, out: list[Command]) -> None:
        if isinstance(event, DataReceived):
            self._request_data(event, out)
        elif isinstance(event, RequestReceived):
            self._request_head(event.stream_id, pairs(event.headers),
                               event.stream_ended is not None, out)
        elif isinstance(event, StreamEnded):
            s = self._streams.get(event.stream_id)
            if s is not None and s.route.mirror_to and not s.req_discard:
                out.append(MirrorEnd(stream=s.down_id))
            if s is not None and not s.req_ended:
                s.req_ended = True
                if s.stolen and not s.req_discard:
                    out.append(StealEnd(stream=s.down_id))
        elif isinstance(event, TrailersReceived):
            s = self._streams.get(event.stream_id)
            if s is not None and not s.req_discard:
                trailers = pairs(event.headers)
                if s.stolen:
                    out.append(StealTrailers(stream=s.down_id, headers=trailers))
                else:
                    s.req_trailers = trailers
        elif isinstance(event, StreamReset):
            s = self._streams.get(event.stream_id)
            if s is not None:
                self._client_reset(s, event.error_code, out)
        elif isinstance(event, ConnectionTerminated):
            if event.error_code == ErrorCodes.NO_ERROR and not self._down_eof:
                reopen(self._down, ConnectionState.SERVER_OPEN)
                self._draining = True
            else:
                self._close(out)
        # WindowUpdated, RemoteSettingsChanged: _flush_all runs after every event batch.
        # Pings, priorities, settings acks and unknown frames need nothing from us.

    def _request_head(self, sid: int, headers: Headers, ended: bool,
                      out: list[Command]) -> None:
        if self._draining:
            self._down.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        pseudo = {n: v for n, v in headers if n.startswith(b":")}
        regular = [(n, v) for n, v in headers if not n.startswith(b":")]
        method = pseudo.get(b":method", b"").decode("latin-1")
        path = pseudo.get(b":path", b"").decode("latin-1")
        authority = pseudo.get(b":authority")
        host = next((v for n, v in regular if n == b"host"), None)
        shown = authority if authority is not None else host
        view_headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in regular]
        if authority is not None and host is None:
            # DESIGN §2: :authority is offered to header filters as host.
            view_headers.insert(0, ("host", authority.decode("latin-1")))
        route = self._decide(RequestView(
            method=method, target=path, headers=tuple(view_headers),
            authority=shown.decode("latin-1") if shown is not None else None))
        record = FlowRecord(
            id=self._next_id(), ts=self._now, port=self._port, protocol="h2",
            verdict=Verdict.PASSED if route.steal_by is None else Verdict.STOLEN,
            method=method, authority=shown.decode("latin-1") if shown is not None else None,
            path=path, matched=route.clause)
        if self._capture():
            record.request_headers = headers
            record.request_body = bytearray()
            record.response_body = bytearray()
        self.requests += 1
        s = StreamState(sid, route, record, headers)
        s.head_only = method == "HEAD"
        self._streams[sid] = s
        if route.steal_by is None and not route.mirror_to:
            s.req_ended = ended  # END_STREAM rides on the HEADERS upstream too
            self._open_upstream_stream(s, out)
            return
        # The head as a session gets it: host from :authority, no pseudo-header fields,
        # cookies in one field as HTTP/1.1 delivery needs it (RFC 9113 §8.2.3).
        wire = session_head(regular, shown if shown is not None else self._authority)
        for sub_id in route.mirror_to:
            out.append(MirrorStart(stream=sid, sub_id=sub_id, method=method, target=path,
                                   http_version="2", headers=wire, record=record))
        if route.steal_by is None:
            s.req_ended = ended
            self._open_upstream_stream(s, out)
            return
        if any(n == b"expect" and v.lower() == b"100-continue" for n, v in regular):
            # Answered here, as HTTP/1.1 stolen requests are (RFC 9110 §10.1.1).
            self._down.send_headers(sid, [(b":status", b"100")])
        out.append(StealStart(stream=sid, sub_id=route.steal_by, method=method, target=path,
                              http_version="2", headers=wire))

    def _request_data(self, event: DataReceived, out: list[Command]) -> None:
        sid = event.stream_id
        data = event.data
        padding = event.flow_controlled_length - len(data)
        s = self._streams.get(sid)
        if s is not None and s.route.mirror_to and data and not s.req_discard:
            out.append(MirrorData(stream=sid, data=data))
        if s is None or s.req_discard or s.stolen:
            # Stolen: the session's link consumes it at once (the driver waits on the
            # link's buffer before reading more); nobody's: dropped.
            self._down.acknowledge_received_data(event.flow_controlled_length, sid)
            if s is not None and s.stolen and not s.req_discard and data:
                s.record.bytes_in += len(data)
                if s.record.request_body is not None:
                    s.record.capture_request_body(data)
                out.append(StealData(stream=sid, data=data))
            return
        if padding:
            self._down.acknowledge_received_data(padding, sid)
        s.record.bytes_in += len(data)
        if s.record.request_body is not None:
            s.record.capture_request_body(data)
        s.req_buf += data  # acknowledged as the upstream connection takes it

    def _client_reset(self, s: StreamState, code: int, out: list[Command]) -> None:
        """The client reset a stream: pass the reset on and forget the stream."""
        s.req_ended = s.resp_done = True
        self._discard_request(s)
        self._discard_response(s)
        if s.stolen:
            out.append(StealAbort(stream=s.down_id, reason="the client reset the stream"))
        elif s.up_id is not None:
            self._reset_upstream(s, code)
        elif s in self._waiting:
            self._waiting.remove(s)

    # --- upstream: the original app's side of passed streams ------------------------------

    def _open_upstream_stream(self, s: StreamState, out: list[Command]) -> None:
        if self._up_going_away:
            self._refuse(s)
            return
        up = self._up
        if up is None:
            # The original app's answers are forwarded as they come: the client checks
            # them, as it would without waylay.
            up = self._up = new_connection(client_side=True, trust_inbound=True)
            out.append(ConnectUpstream())
        if self._waiting or up.open_outbound_streams >= up.remote_settings.max_concurrent_streams:
            if s not in self._waiting:
                self._waiting.append(s)
            return
        up_id = up.get_next_available_stream_id()
        s.up_id = up_id
        self._by_up[up_id] = s
        ends = s.req_ended and not s.req_buf and s.req_trailers is None
        up.send_headers(up_id, s.req_headers, end_stream=ends)
        s.req_sent_end = ends

    def _start_waiting(self, out: list[Command]) -> None:
        up = self._up
        while self._waiting and up is not None and not self._up_going_away and (
            up.open_outbound_streams < up.remote_settings.max_concurrent_streams
        ):
            self._open_upstream_stream(self._waiting.popleft(), out)

    def _upstream_data(self, data: bytes, out: list[Command]) -> None:
        up = self._up
        if up is None:
            return
        try:
            events = up.receive_data(data)
        except ProtocolError as exc:
            self._upstream_lost(f"it broke the HTTP/2 protocol: {exc}", out)
            return
        for event in events:
            self._on_up_event(event, out)
        self._start_waiting(out)

    def _on_up_event(self, event: H2Event, out: list[Command]) -> None:
        up = self._up
        assert up is not None
        if isinstance(event, DataReceived):
            s = self._by_up.get(event.stream_id)
            padding = event.flow_controlled_length - len(event.data)
            if s is None or s.resp_done:
                up.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            if padding:
                up.acknowledge_received_data(padding, event.stream_id)
            s.record.bytes_out += len(event.data)
            if s.record.response_body is not None:
                s.record.capture_response_body(event.data)
            s.resp_buf += event.data  # acknowledged as the client's window takes it
        elif isinstance(event, ResponseReceived):
            s = self._by_up.get(event.stream_id)
            if s is not None and not s.resp_done:
                headers = pairs(event.headers)
                status = next((v for n, v in headers if n == b":status"), b"")
                s.record.status = int(status) if status.isdigit() else None
                if s.record.request_headers is not None:
                    s.record.response_headers = headers
                s.resp_started = True
                # A HEADERS frame that ends the stream stays one (gRPC's Trailers-Only).
                ended = event.stream_ended is not None
                self._down.send_headers(s.down_id, headers, end_stream=ended)
                s.resp_ended = s.resp_done = ended
        elif isinstance(event, InformationalResponseReceived):
            s = self._by_up.get(event.stream_id)
            if s is not None and not s.resp_done:
                self._down.send_headers(s.down_id, pairs(event.headers))
        elif isinstance(event, TrailersReceived):
            s = self._by_up.get(event.stream_id)
            if s is not None:
                s.resp_trailers = pairs(event.headers)
        elif isinstance(event, StreamEnded):
            s = self._by_up.get(event.stream_id)
            if s is not None:
                s.resp_ended = True
        elif isinstance(event, StreamReset):
            s = self._by_up.pop(event.stream_id, None)
            if s is not None:
                self._reset_downstream(s, event.error_code)
                s.up_id = None
        elif isinstance(event, PushedStreamReceived) and event.pushed_stream_id is not None:
            up.reset_stream(event.pushed_stream_id, ErrorCodes.REFUSED_STREAM)
        elif isinstance(event, ConnectionTerminated):
            self._upstream_goaway(event, out)
        # WindowUpdated, RemoteSettingsChanged: _flush_all and _start_waiting follow.

    def _upstream_goaway(self, event: ConnectionTerminated, out: list[Command]) -> None:
        last = event.last_stream_id if event.last_stream_id is not None else 0
        if event.error_code != ErrorCodes.NO_ERROR:
            self._upstream_lost(f"it ended the connection (GOAWAY {event.error_code!r})", out)
            return
        assert self._up is not None
        reopen(self._up, ConnectionState.CLIENT_OPEN)
        self._up_going_away = True
        for up_id, s in list(self._by_up.items()):
            if up_id > last and not s.resp_started:
                del self._by_up[up_id]
                s.up_id = None
                self._refuse(s)
        while self._waiting:
            self._refuse(self._waiting.popleft())
        # The client should open its next streams on a new connection, whose passed
        # streams get a new upstream connection.
        self._goaway_downstream()

    def _upstream_lost(self, reason: str, out: list[Command]) -> None:
        """The upstream connection failed or closed: fail its streams, drop it."""
        if self._up is None:
            return
        self._up = None
        self._up_going_away = False
        out.append(ReleaseUpstream(reusable=False))
        lost = list(self._by_up.values()) + list(self._waiting)
        self._by_up.clear()
        self._waiting.clear()
        for s in lost:
            s.up_id = None
            if s.resp_done or s.resp_ended:
                # Complete already: what is buffered still goes to the client, and the
                # rest of an upload has nowhere to go.
                self._discard_request(s)
                continue
            self._fail(s, f"waylay: the original app failed: {reason}", out)

    def _reset_upstream(self, s: StreamState, code: int) -> None:
        up_id, s.up_id = s.up_id, None
        if up_id is None:
            return
        self._by_up.pop(up_id, None)
        if self._up is not None and not (s.req_sent_end and s.resp_ended):
            with contextlib.suppress(ProtocolError):
                self._up.reset_stream(up_id, code)

    # --- the local app's answer to stolen streams -----------------------------------------

    def _local_head(self, sid: int, status: int, headers: Headers) -> None:
        s = self._streams.get(sid)
        if s is None or not s.stolen or s.resp_started or s.resp_done or status < 200:
            return
        fields = response_fields(status, headers)
        s.record.status = status
        if s.record.request_headers is not None:
            s.record.response_headers = fields
        s.head_only = s.head_only or status in NO_BODY_STATUS
        s.resp_started = True
        if any(n == b"grpc-status" for n, _ in fields):
            # gRPC's Trailers-Only response: the status must end the stream in the same
            # HEADERS frame (gRPC over HTTP/2), so the head waits for the end.
            s.resp_head = fields
            return
        self._down.send_headers(sid, fields)

    def _local_data(self, sid: int, data: bytes) -> None:
        s = self._streams.get(sid)
        if s is None or not s.stolen or not s.resp_started or s.resp_ended or s.head_only:
            return
        s.record.bytes_out += len(data)
        if s.record.response_body is not None:
            s.record.capture_response_body(data)
        s.resp_buf += data

    def _local_trailers(self, sid: int, headers: Headers) -> None:
        s = self._streams.get(sid)
        if s is None or not s.stolen or not s.resp_started or s.resp_ended:
            return
        s.resp_trailers = trailer_fields(headers)

    def _local_end(self, sid: int) -> None:
        s = self._streams.get(sid)
        if s is not None and s.stolen and s.resp_started:
            s.resp_ended = True

    # --- moving bytes within the windows --------------------------------------------------

    def _flush_all(self) -> None:
        for s in list(self._streams.values()):
            if not s.stolen and s.up_id is not None and not s.req_sent_end:
                self._flush_request(s)
            if s.resp_started and not s.resp_done:
                self._flush_response(s)

    def _flush_request(self, s: StreamState) -> None:
        up = self._up
        assert up is not None and s.up_id is not None
        sent = send_within_window(up, s.up_id, s.req_buf)
        if sent:
            self._down.acknowledge_received_data(sent, s.down_id)
        if s.req_buf or not s.req_ended:
            return
        if s.req_trailers is not None:
            up.send_headers(s.up_id, s.req_trailers, end_stream=True)
        else:
            up.end_stream(s.up_id)
        s.req_sent_end = True

    def _flush_response(self, s: StreamState) -> None:
        if s.resp_head is not None:
            if not (s.resp_ended or s.resp_buf or s.resp_trailers):
                return  # the end of a Trailers-Only answer is still to come
            head, s.resp_head = s.resp_head, None
            ended = s.resp_ended and not s.resp_buf and not s.resp_trailers
            self._down.send_headers(s.down_id, head, end_stream=ended)
            if ended:
                s.resp_done = True
                return
        sent = send_within_window(self._down, s.down_id, s.resp_buf)
        if sent and s.up_id is not None and self._up is not None:
            self._up.acknowledge_received_data(sent, s.up_id)
        if s.resp_buf or not s.resp_ended:
            return
        if s.resp_trailers:
            self._down.send_headers(s.down_id, s.resp_trailers, end_stream=True)
        else:
            self._down.end_stream(s.down_id)
        s.resp_done = True

    # --- endings --------------------------------------------------------------------------

    def _fail(self, s: StreamState, message: str, out: list[Command]) -> None:
        """Answer 502 if no response started yet, otherwise reset the stream."""
        if s.resp_done:
            return
        if s.stolen and not s.req_ended:
            out.append(StealAbort(stream=s.down_id, reason="the stream failed"))
        self._discard_request(s)
        if s.resp_started:
            self._reset_downstream(s, ErrorCodes.INTERNAL_ERROR)
            return
        body = (message + "\n").encode("utf-8", "replace")
        s.record.status = 502
        s.resp_started = True
        self._down.send_headers(s.down_id, [
            (b":status", b"502"), (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ], end_stream=s.head_only)
        if s.head_only:
            s.resp_done = True
        else:
            s.resp_buf[:] = body
            s.resp_ended = True
            s.resp_trailers = None

    def _refuse(self, s: StreamState) -> None:
        """The original app will not take this stream: the client may retry it elsewhere."""
        self._discard_request(s)
        self._reset_downstream(s, ErrorCodes.REFUSED_STREAM)

    def _reset_downstream(self, s: StreamState, code: int) -> None:
        """Reset the client's stream (also after a complete answer, if the client is still
        sending: RFC 9113 §8.1 lets a server stop an upload that way)."""
        if not (s.resp_done and s.req_ended):
            with contextlib.suppress(ProtocolError):
                self._down.reset_stream(s.down_id, code)
        s.resp_done = s.req_ended = True
        self._discard_request(s)
        self._discard_response(s)

    def _discard_request(self, s: StreamState) -> None:
        """Drop the request body still held; hand its window back to the client."""
        s.req_discard = True
        if s.req_buf:
            self._down.acknowledge_received_data(len(s.req_buf), s.down_id)
            s.req_buf.clear()

    def _discard_response(self, s: StreamState) -> None:
        if s.resp_buf and not s.stolen and self._up is not None and s.up_id is not None:
            self._up.acknowledge_received_data(len(s.resp_buf), s.up_id)
        s.resp_buf.clear()

    def _goaway_downstream(self) -> None:
        if not self._draining:
            self._draining = True
            self._down.close_connection(
                ErrorCodes.NO_ERROR, last_stream_id=self._down.highest_inbound_stream_id)
            reopen(self._down, ConnectionState.SERVER_OPEN)

    def _finish_streams(self, out: list[Command]) -> None:
        """Record streams whose response is over; forget those over both ways."""
        for sid, s in list(self._streams.items()):
            if not s.resp_done:
                continue
            if not s.recorded:
                s.recorded = True
                s.record.finish(self._now)
                out.append(RecordFlow(record=s.record, owner=s.route.steal_by,
                                      timed_out=s.route.timed_out, stream=sid))
            if s.req_ended or s.req_discard:
                del self._streams[sid]
                if s.up_id is not None:
                    self._by_up.pop(s.up_id, None)

    def _close(self, out: list[Command]) -> None:
        if self.closed:
            return
        for sid, s in list(self._streams.items()):
            if s.stolen and not s.resp_done:
                out.append(StealAbort(stream=sid, reason="connection closed"))
            if not s.recorded:
                s.recorded = True
                s.record.finish(self._now)
                out.append(RecordFlow(record=s.record, owner=s.route.steal_by,
                                      timed_out=s.route.timed_out, stream=sid))
        self._streams.clear()
        self._by_up.clear()
        self._waiting.clear()
        self._collect(out)
        self.closed = True
        if self._up is not None:
            self._up = None
            out.append(ReleaseUpstream(reusable=False))
        out.append(CloseDownstream())

    def _collect(self, out: list[Command]) -> None:
        """The bytes both h2 connections want sent, as one write each."""
        if self._up is not None:
            data = self._up.data_to_send()
            if data:
                out.append(SendUpstream(data=data))
        data = self._down.data_to_send()
        if data:
            out.append(SendDownstream(data=data))


__all__ = ["MAX_LOCAL_BACKLOG", "H2Router"]
