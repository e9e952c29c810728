"""HTTP/2 per-stream routing for one intercepted connection (sans-I/O).

Theory of operation
-------------------
The remote client ("downstream") speaks HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3)
to us as its server. Each stream is routed on its own the moment its request head is
complete (``Decide``), so one connection mixes stolen and passed streams:

* a **passed** stream is re-opened on our own HTTP/2 connection to the original app
  ("upstream", one per downstream connection, opened on the first passed stream). It is
  relayed frame by frame with its stream id mapped: the request block re-encoded once
  per distinct block (``waylay.core.engine.h2_codec``), DATA frames copied once from the bytes read
  into the bytes written, trailers and resets forwarded, both ways;
* a **stolen** stream goes to a session as ``StealStart`` / ``StealData`` /
  ``StealTrailers`` / ``StealEnd`` carrying the downstream stream id, and the local app's
  answer comes back as ``LocalResponse`` / ``LocalData`` / ``LocalTrailers`` /
  ``LocalEnd`` for that stream.

There is no general HTTP/2 state machine here: ``waylay.core.engine.h2_peer`` handles what concerns
a connection (preface, settings, pings, connection windows, CONTINUATION), per stream only
what relaying needs is kept (``waylay.core.engine.h2_streams.StreamState``), and
``waylay.core.engine.h2_relay`` (the base class) moves the routed streams' bytes and runs the
original app's side; this module reads the client's frames, decides, and answers stolen streams.
Frames that break the protocol end the connection (GOAWAY, RFC 9113 §5.4.1) or the stream
(RST_STREAM, §5.4.2) as the RFC says; the h2 package stays the oracle in the tests.

Flow control (RFC 9113 §5.2) is honoured end to end, and it is what bounds the buffers:
data received from one peer is acknowledged only when it was handed on, that is, sent to
the other peer within *its* windows, or given to the session's link. Whatever does not
fit waits in the stream's buffer until a WINDOW_UPDATE (or a SETTINGS change) opens the
window again; the sender cannot outrun it by more than the window we advertise
(``STREAM_WINDOW``, ``CONNECTION_WINDOW``). The local app's answers have no h2 window
towards us: their per-stream backlog is exposed (``local_backlog``) and the driver stops
reading the session's link while it is over ``MAX_LOCAL_BACKLOG``.

Resets map stream to stream (RST_STREAM codes kept). A GOAWAY from either peer lets the
streams it covers finish (RFC 9113 §6.8): those the original app never processed are
refused to the client (REFUSED_STREAM, safe to retry) and new passed streams are refused
too. An upstream that breaks fails its streams: 502 if no response started, else a reset;
the next passed stream opens a new upstream connection.

Floods: streams a client resets before their answer began cost a budget that refills
with time (``RESET_BUDGET``, ``RESET_REFILL_PER_S``); a client that spends it (the
"rapid reset" attack, CVE-2023-44487) gets GOAWAY(ENHANCE_YOUR_CALM). Header blocks and
HPACK inflation are bounded in ``waylay.core.engine.h2_peer`` and ``waylay.core.engine.h2_codec``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

from waylay.core.engine import h2_frames as f
from waylay.core.engine.flow import FlowRecord, Verdict
from waylay.core.engine.h2_codec import MAX_HEADER_LIST_SIZE, HeaderBlock, encoded
from waylay.core.engine.h2_frames import ErrorCode
from waylay.core.engine.h2_peer import H2Error, H2Peer
from waylay.core.engine.h2_relay import StreamRelay
from waylay.core.engine.h2_streams import (
    ANS_COMPLETE,
    ANS_HEAD,
    ANS_NONE,
    CONNECTION_WINDOW,
    MAX_CONCURRENT_STREAMS,
    NO_BODY_STATUS,
    REQ_ENDED,
    REQ_OPEN,
    STREAM_WINDOW,
    Headers,
    MalformedHead,
    RequestHead,
    StreamState,
    check_trailers,
    response_fields,
    session_head,
    trailer_fields,
)
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
    MirrorData,
    MirrorEnd,
    MirrorStart,
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
# Streams a client may reset before their answer began, at once and per second after
# that (RFC 9113 §10.5: an endpoint may limit such work). A browser cancelling now and
# then never comes near; a rapid-reset flood spends it in a fraction of a second.
RESET_BUDGET = 1000.0
RESET_REFILL_PER_S = 500.0

_DOWN_SETTINGS = {f.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                  f.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                  f.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE}
_CONTINUE = (b":status", b"100")


class H2Router(StreamRelay):
    """Routes the streams of one downstream HTTP/2 connection; see the module doc."""

    def __init__(self, *, port: int, authority: str, decide: Decide,
                 next_id: Callable[[], int],
                 capture: Callable[[], bool] = lambda: False) -> None:
        super().__init__(H2Peer(server=True, settings=_DOWN_SETTINGS,
                                window=CONNECTION_WINDOW))
        self._port = port
        self._authority = authority.encode("latin-1")  # when a request has no :authority
        self._decide = decide
        self._next_id = next_id
        self._capture = capture
        self._down_eof = False
        self._reset_budget = RESET_BUDGET
        self._reset_clock = 0.0
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
            case UpstreamData(data=data):
                self._upstream_data(data, out)
            case DownstreamClosed():
                # The client can send nothing more: requests still incomplete never
                # will be; answers to complete ones may still go out (a half-close).
                self._down_eof = self._draining = True
                for s in list(self._streams.values()):
                    if s.req is REQ_OPEN:
                        self._client_reset(s, ErrorCode.CANCEL, out, counted=False)
            case UpstreamClosed(reason=reason):
                self._upstream_lost(reason or "it closed the connection", out)
            case LocalResponse(stream=sid, status=status, headers=headers):
                self._local_head(sid, status, headers, out)
            case LocalData(stream=sid, data=data):
                self._local_data(sid, data, out)
            case LocalTrailers(stream=sid, headers=headers):
                self._local_trailers(sid, headers)
            case LocalEnd(stream=sid):
                self._local_end(sid, out)
            case LocalAborted(stream=sid, reason=reason, status=status):
                aborted = self._streams.get(sid)
                if aborted is not None and aborted.stolen:
                    self._fail(aborted, f"waylay: the local app failed: {reason}", out,
                               status=status)
                    self._finish(aborted, out)
            case _:
                assert_never(event)
        if self.closed:
            return out
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

    # --- downstream: the remote client's frames -------------------------------------------

    def _downstream_data(self, data: bytes, out: list[Command]) -> None:
        down = self._down
        try:
            frames = down.frames(data)
            for kind, flags, sid, payload, flow_len in frames:
                if kind == f.HEADERS:
                    self._client_headers(sid, flags, payload, out)
                elif kind == f.DATA:
                    self._client_data(sid, flags, payload, flow_len, out)
                elif kind == f.RST_STREAM:
                    s = self._streams.get(sid)
                    if s is not None:
                        self._client_reset(s, f.unpack_u32(payload), out, counted=True)
                    elif sid > self._highest_in:
                        raise H2Error(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
                elif kind == f.WINDOW_UPDATE:
                    self._client_window(sid, f.unpack_u32(payload) & 0x7FFFFFFF, out)
                elif kind == f.GOAWAY:
                    _last, code = f.unpack_goaway(payload)
                    if code != ErrorCode.NO_ERROR or self._down_eof:
                        self._close(out)
                        return
                    self._draining = True  # we push nothing: finish the client's streams
        except H2Error as exc:
            self._connection_error(exc, out)
            return
        if self._resp_blocked:
            # A WINDOW_UPDATE or SETTINGS may have opened the client's windows.
            self._flush_blocked_responses(out)

    def _connection_error(self, exc: H2Error, out: list[Command]) -> None:
        """The client broke the protocol (RFC 9113 §5.4.1): GOAWAY naming it, then close."""
        self._down.out += f.goaway(self._highest_in, exc.code, str(exc).encode()[:200])
        self._close(out)

    def _client_headers(self, sid: int, flags: int, payload: memoryview,
                        out: list[Command]) -> None:
        block = self._decode(self._down, payload)  # always: the HPACK state moves on
        s = self._streams.get(sid)
        if s is not None:
            self._client_trailers(s, flags, block, out)
            return
        if not sid & 1:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, f"client stream {sid} is even")
        if sid <= self._highest_in:
            # A stream already over (RFC 9113 §5.1: closed); a stream we reset may still
            # see frames in flight, and it gets the reset again.
            self._down.out += f.rst_stream(sid, ErrorCode.STREAM_CLOSED)
            return
        self._highest_in = sid
        if self._draining or len(self._streams) >= MAX_CONCURRENT_STREAMS:
            self._down.out += f.rst_stream(sid, ErrorCode.REFUSED_STREAM)
            return
        head = block.request
        if head is None:
            try:
                head = block.request = RequestHead(block.fields)
            except MalformedHead:
                self._down.out += f.rst_stream(sid, ErrorCode.PROTOCOL_ERROR)
                return
        self._request_head(sid, head, bool(flags & f.END_STREAM), out)

    def _request_head(self, sid: int, head: RequestHead, ended: bool,
                      out: list[Command]) -> None:
        route = self._decide(head.view)
        steal_by = route.steal_by
        record = FlowRecord(
            id=self._next_id(), ts=self._now, port=self._port, protocol="h2",
            verdict=Verdict.PASSED if steal_by is None else Verdict.STOLEN,
            method=head.method, authority=head.shown, path=head.path, matched=route.clause)
        if self._capture():
            record.request_headers = list(head.fields)
            record.request_body = bytearray()
            record.response_body = bytearray()
        self.requests += 1
        s = StreamState(sid, route, record, head)
        self._streams[sid] = s
        if steal_by is None and not route.mirror_to:
            if ended:  # END_STREAM rides on the HEADERS upstream too
                s.req = REQ_ENDED
            if ended and s.req_left:
                self._stream_error(s, ErrorCode.PROTOCOL_ERROR, out)
                return
            self._open_upstream_stream(s, out)
            return
        # The head as a session gets it: host from :authority, no pseudo-header fields,
        # cookies in one field as HTTP/1.1 delivery needs it (RFC 9113 §8.2.3).
        wire = session_head(head.regular, head.authority if head.authority is not None
                            else self._authority)
        for sub_id in route.mirror_to:
            out.append(MirrorStart(stream=sid, sub_id=sub_id, method=head.method,
                                   target=head.path, http_version="2", headers=wire,
                                   record=record))
        if steal_by is None:
            if ended:
                s.req = REQ_ENDED
            self._open_upstream_stream(s, out)
        else:
            if head.expect_continue:
                # Answered here, as HTTP/1.1 stolen requests are (RFC 9110 §10.1.1).
                self._down.headers(sid, self._down.encoder.fields([_CONTINUE]),
                                   end_stream=False)
            out.append(StealStart(stream=sid, sub_id=steal_by, flow_id=record.id,
                                  method=head.method, target=head.path, http_version="2",
                                  headers=wire))
        if ended:
            self._request_ended(s, out)

    def _client_trailers(self, s: StreamState, flags: int, block: HeaderBlock,
                         out: list[Command]) -> None:
        if s.req is not REQ_OPEN:
            self._stream_error(s, ErrorCode.STREAM_CLOSED, out)
            return
        try:
            if not flags & f.END_STREAM:
                raise MalformedHead("trailers without END_STREAM")
            trailers = check_trailers(block.fields)
        except MalformedHead:
            self._stream_error(s, ErrorCode.PROTOCOL_ERROR, out)
            return
        if not s.req_discard:
            if s.stolen:
                out.append(StealTrailers(stream=s.down_id, headers=trailers))
            else:
                s.req_trailers = encoded(block, self._down.encoder)
        self._request_ended(s, out)

    def _request_ended(self, s: StreamState, out: list[Command]) -> None:
        """The client sent END_STREAM on ``s``."""
        if s.req_left:
            self._stream_error(s, ErrorCode.PROTOCOL_ERROR, out)  # RFC 9113 §8.1.1
            return
        s.req = REQ_ENDED
        if s.req_discard:
            self._finish(s, out)
            return
        if s.mirrored:
            out.append(MirrorEnd(stream=s.down_id))
        if s.stolen:
            out.append(StealEnd(stream=s.down_id))
        elif s.up_id is not None:
            self._flush_request(s)
        self._finish(s, out)

    def _client_data(self, sid: int, flags: int, payload: memoryview, flow_len: int,
                     out: list[Command]) -> None:
        down = self._down
        s = self._streams.get(sid)
        if s is None or s.req is not REQ_OPEN:
            down.ack(flow_len)
            if sid > self._highest_in or not sid & 1:
                raise H2Error(ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            if s is not None:
                self._stream_error(s, ErrorCode.STREAM_CLOSED, out)
            return  # a stream already over: frames in flight are dropped
        s.down_recv -= flow_len
        size = len(payload)
        if s.down_recv < 0 or (s.req_left is not None and size > s.req_left):
            down.ack(flow_len)
            self._stream_error(s, ErrorCode.FLOW_CONTROL_ERROR if s.down_recv < 0
                               else ErrorCode.PROTOCOL_ERROR, out)
            return
        if s.req_left is not None:
            s.req_left -= size
        padding = flow_len - size
        if s.req_discard or s.stolen:
            # Stolen: the session's link consumes it at once (the driver stops reading
            # while the link is congested); nobody's: dropped.
            self._ack_client(s, flow_len)
            if size and not s.req_discard:
                data = bytes(payload)
                if s.mirrored:
                    out.append(MirrorData(stream=sid, data=data))
                self._count_in(s, data)
                out.append(StealData(stream=sid, data=data))
        else:
            if padding:
                self._ack_client(s, padding)
            if size:
                if s.mirrored:
                    out.append(MirrorData(stream=sid, data=bytes(payload)))
                self._count_in(s, payload)
                s.req_buf += payload  # acknowledged as the upstream connection takes it
                if s.up_id is not None:
                    self._flush_request(s)
        if flags & f.END_STREAM:
            self._request_ended(s, out)

    @staticmethod
    def _count_in(s: StreamState, data: bytes | memoryview) -> None:
        record = s.record
        record.bytes_in += len(data)
        if record.request_body is not None:
            record.capture_request_body(bytes(data))

    def _client_window(self, sid: int, increment: int, out: list[Command]) -> None:
        s = self._streams.get(sid)
        if s is None:
            return  # a stream already over, or idle (nothing to send there either way)
        if not increment:
            self._stream_error(s, ErrorCode.PROTOCOL_ERROR, out)
            return
        s.down_credit += increment
        if self._down.initial_window + s.down_credit > f.MAX_WINDOW:
            self._stream_error(s, ErrorCode.FLOW_CONTROL_ERROR, out)  # RFC 9113 §6.9.1
            return
        if sid in self._resp_blocked:
            self._flush_response(s)
            self._finish(s, out)

    def _client_reset(self, s: StreamState, code: int, out: list[Command], *,
                      counted: bool) -> None:
        """The client reset a stream: pass the reset on and forget the stream."""
        if counted and s.resp is ANS_NONE:
            self._spend_reset_budget()
        s.resp_done = True
        if s.req is REQ_OPEN:
            s.req = REQ_ENDED
        self._discard_request(s)
        self._discard_response(s)
        if s.stolen:
            out.append(StealAbort(stream=s.down_id, reason="the client reset the stream"))
        elif s.up_id is not None:
            self._reset_upstream(s, code)
        elif s in self._waiting:
            self._waiting.remove(s)
        self._finish(s, out)

    def _spend_reset_budget(self) -> None:
        elapsed = max(0.0, self._now - self._reset_clock)
        budget = self._reset_budget + elapsed * RESET_REFILL_PER_S
        self._reset_clock = self._now
        self._reset_budget = min(budget, RESET_BUDGET) - 1
        if self._reset_budget < 0:
            raise H2Error(ErrorCode.ENHANCE_YOUR_CALM, "too many streams reset")

    def _stream_error(self, s: StreamState, code: int, out: list[Command]) -> None:
        """The client broke the protocol on one stream (RFC 9113 §5.4.2): reset it."""
        if s.stolen and not s.resp_done:
            out.append(StealAbort(stream=s.down_id, reason="the client broke HTTP/2"))
        if s.up_id is not None:
            self._reset_upstream(s, ErrorCode.CANCEL)
        elif s in self._waiting:
            self._waiting.remove(s)
        self._reset_downstream(s, code)
        self._finish(s, out)

    # --- the local app's answer to stolen streams -----------------------------------------

    def _local_head(self, sid: int, status: int, headers: Headers,
                    out: list[Command]) -> None:
        s = self._streams.get(sid)
        if s is None or not s.stolen or s.resp is not ANS_NONE or s.resp_done or status < 200:
            return
        fields = response_fields(status, headers)
        s.record.status = status
        if s.record.request_headers is not None:
            s.record.response_headers = fields
        s.head_only = s.head_only or status in NO_BODY_STATUS
        s.resp = ANS_HEAD
        block = self._down.encoder.fields(fields)
        if any(n == b"grpc-status" for n, _ in fields):
            # gRPC's Trailers-Only response: the status must end the stream in the same
            # HEADERS frame (gRPC over HTTP/2), so the head waits for the end.
            s.resp_head = block
            return
        self._down.headers(sid, block, end_stream=False)

    def _local_data(self, sid: int, data: bytes, out: list[Command]) -> None:
        s = self._streams.get(sid)
        if s is None or not s.stolen or s.resp is not ANS_HEAD or s.head_only:
            return
        s.record.bytes_out += len(data)
        if s.record.response_body is not None:
            s.record.capture_response_body(data)
        s.resp_buf += data
        self._flush_response(s)
        self._finish(s, out)

    def _local_trailers(self, sid: int, headers: Headers) -> None:
        s = self._streams.get(sid)
        if s is None or not s.stolen or s.resp is not ANS_HEAD:
            return
        s.resp_trailers = self._down.encoder.fields(trailer_fields(headers)) or None

    def _local_end(self, sid: int, out: list[Command]) -> None:
        s = self._streams.get(sid)
        if s is not None and s.stolen and s.resp is ANS_HEAD:
            s.resp = ANS_COMPLETE
            self._flush_response(s)
            self._finish(s, out)


__all__ = ["MAX_LOCAL_BACKLOG", "H2Router"]
