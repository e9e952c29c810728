"""HTTP/2 per-stream routing for one intercepted connection (sans-I/O).

Theory of operation
-------------------
The remote client ("downstream") speaks HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3)
to us as its server. Each stream is routed on its own the moment its request head is
complete (``Decide``), so one connection mixes stolen and passed streams:

* a **passed** stream is re-opened on our own HTTP/2 connection to the original app
  ("upstream", one per downstream connection, opened on the first passed stream). It is
  relayed frame by frame with its stream id mapped: the request block re-encoded once
  per distinct block (``core.h2_codec``), DATA frames copied once from the bytes read
  into the bytes written, trailers and resets forwarded, both ways;
* a **stolen** stream goes to a session as ``StealStart`` / ``StealData`` /
  ``StealTrailers`` / ``StealEnd`` carrying the downstream stream id, and the local app's
  answer comes back as ``LocalResponse`` / ``LocalData`` / ``LocalTrailers`` /
  ``LocalEnd`` for that stream.

There is no general HTTP/2 state machine here: ``core.h2_peer`` handles what concerns a
connection (preface, settings, pings, connection windows, CONTINUATION), and this module
keeps, per stream, only what relaying needs (``core.h2_streams.StreamState``). Frames
that break the protocol end the connection (GOAWAY, RFC 9113 §5.4.1) or the stream
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
HPACK inflation are bounded in ``core.h2_peer`` and ``core.h2_codec``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from hpack import HPACKError

from core import h2_frames as f
from core.flow import FlowRecord, Verdict
from core.h2_codec import MAX_HEADER_LIST_SIZE, HeaderBlock, encoded
from core.h2_frames import ErrorCode
from core.h2_peer import H2Error, H2Peer, decode_error
from core.h2_streams import (
    CONNECTION_WINDOW,
    MAX_CONCURRENT_STREAMS,
    NO_BODY_STATUS,
    STREAM_WINDOW,
    Headers,
    MalformedHead,
    RequestHead,
    StreamState,
    check_trailers,
    response_fields,
    session_head,
    status_of,
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
# Streams a client may reset before their answer began, at once and per second after
# that (RFC 9113 §10.5: an endpoint may limit such work). A browser cancelling now and
# then never comes near; a rapid-reset flood spends it in a fraction of a second.
RESET_BUDGET = 1000.0
RESET_REFILL_PER_S = 500.0
# Stream-level WINDOW_UPDATEs go out once this much is owed on a stream (see h2_peer).
STREAM_ACK_AT = STREAM_WINDOW // 8
MAX_STREAM_ID = 2**31 - 1

_DOWN_SETTINGS = {f.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                  f.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                  f.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE}
# A header table of 0 for the original app: an encoder like nginx's then never indexes,
# so the same answer is the same bytes every time and its decoding is memoised
# (``core.h2_codec``); its blocks grow by a few bytes on a local path. The decoder still
# accepts a 4096-byte table (RFC 7541 §4.2 lets the app use it until it has read our
# SETTINGS).
_UP_SETTINGS = {f.HEADER_TABLE_SIZE: 0, f.ENABLE_PUSH: 0, f.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                f.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE}
_CONTINUE = (b":status", b"100")


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
        self._down = H2Peer(server=True, settings=_DOWN_SETTINGS, window=CONNECTION_WINDOW)
        self._up: H2Peer | None = None
        self._up_going_away = False  # the original app sent GOAWAY: no new streams there
        self._next_up = 1
        self._streams: dict[int, StreamState] = {}  # by downstream id
        self._by_up: dict[int, StreamState] = {}  # passed streams by upstream id
        self._waiting: deque[StreamState] = deque()  # passed streams over the app's limit
        # Streams with bytes (or an end) waiting for a window, by downstream id.
        self._resp_blocked: dict[int, StreamState] = {}
        self._req_blocked: dict[int, StreamState] = {}
        self._highest_in = 0  # the highest stream id the client opened
        self._down_eof = False
        self._draining = False  # the client or we said GOAWAY: finish, then close
        self._finished_upstream: list[StreamState] = []  # answered within one read
        self._reset_budget = RESET_BUDGET
        self._reset_clock = 0.0
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
            case UpstreamData(data=data):
                self._upstream_data(data, out)
            case DownstreamClosed():
                # The client can send nothing more: requests still incomplete never
                # will be; answers to complete ones may still go out (a half-close).
                self._down_eof = self._draining = True
                for s in list(self._streams.values()):
                    if not s.req_ended:
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
                raise AssertionError(f"unhandled event {event!r}")
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

    def _decode(self, peer: H2Peer, block: memoryview) -> HeaderBlock:
        try:
            return peer.decoder.decode(block)
        except HPACKError as exc:
            raise decode_error(exc) from None
        except (ValueError, IndexError) as exc:
            raise H2Error(ErrorCode.COMPRESSION_ERROR, f"HPACK: {exc}") from None

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
            s.req_ended = ended  # END_STREAM rides on the HEADERS upstream too
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
            s.req_ended = ended
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
        if s.req_ended:
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
        s.req_ended = True
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
        if s is None or s.req_ended:
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

    def _ack_client(self, s: StreamState, length: int) -> None:
        """Return ``length`` bytes of ``s`` to the client's windows."""
        self._down.ack(length)
        if not s.req_ended:
            owed = s.down_unacked + length
            if owed >= STREAM_ACK_AT:
                self._down.out += f.window_update(s.down_id, owed)
                s.down_recv += owed
                owed = 0
            s.down_unacked = owed

    def _client_window(self, sid: int, increment: int, out: list[Command]) -> None:
        s = self._streams.get(sid)
        if s is None:
            return  # a stream already over, or idle (nothing to send there either way)
        if not increment:
            self._stream_error(s, ErrorCode.PROTOCOL_ERROR, out)
            return
        s.down_credit += increment
        if sid in self._resp_blocked:
            self._flush_response(s)
            self._finish(s, out)

    def _client_reset(self, s: StreamState, code: int, out: list[Command], *,
                      counted: bool) -> None:
        """The client reset a stream: pass the reset on and forget the stream."""
        if counted and not s.resp_started:
            self._spend_reset_budget()
        s.req_ended = s.resp_done = True
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

    # --- upstream: the original app's side of passed streams ------------------------------

    def _open_upstream_stream(self, s: StreamState, out: list[Command]) -> None:
        if self._up_going_away or self._next_up > MAX_STREAM_ID:
            self._refuse(s)
            self._finish(s, out)
            return
        up = self._up
        if up is None:
            up = self._up = H2Peer(server=False, settings=_UP_SETTINGS,
                                   window=CONNECTION_WINDOW)
            self._next_up = 1
            out.append(ConnectUpstream())
        if self._waiting or len(self._by_up) >= up.max_streams:
            if s not in self._waiting:
                self._waiting.append(s)
            return
        up_id = self._next_up
        self._next_up += 2
        s.up_id = up_id
        self._by_up[up_id] = s
        ends = s.req_ended and not s.req_buf and s.req_trailers is None
        head = s.head
        block = head.encoded
        if block is None:  # once per distinct request block: the head is memoised
            block = head.encoded = up.encoder.fields(head.fields)
        up.headers(up_id, block, end_stream=ends)
        s.req_sent_end = ends
        if not ends and (s.req_buf or s.req_ended):
            self._flush_request(s)

    def _start_waiting(self, out: list[Command]) -> None:
        up = self._up
        while self._waiting and up is not None and not self._up_going_away and (
            len(self._by_up) < up.max_streams
        ):
            self._open_upstream_stream(self._waiting.popleft(), out)

    def _upstream_data(self, data: bytes, out: list[Command]) -> None:
        up = self._up
        if up is None:
            return
        try:
            for kind, flags, up_id, payload, flow_len in up.frames(data):
                if kind == f.DATA:
                    self._app_data(up_id, flags, payload, flow_len)
                elif kind == f.HEADERS:
                    self._app_headers(up_id, flags, payload)
                elif kind == f.RST_STREAM:
                    s = self._by_up.pop(up_id, None)
                    if s is not None:
                        s.up_id = None
                        self._reset_downstream(s, f.unpack_u32(payload))
                        self._finish(s, out)
                elif kind == f.WINDOW_UPDATE:
                    s = self._by_up.get(up_id)
                    if s is not None:
                        s.up_credit += f.unpack_u32(payload) & 0x7FFFFFFF
                        if s.down_id in self._req_blocked:
                            self._flush_request(s)
                elif kind == f.PUSH_PROMISE:
                    # We said SETTINGS_ENABLE_PUSH 0; decoded all the same (HPACK state).
                    self._decode(up, payload[4:])
                    up.out += f.rst_stream(f.unpack_u32(payload) & 0x7FFFFFFF,
                                           ErrorCode.REFUSED_STREAM)
                elif kind == f.GOAWAY:
                    last, code = f.unpack_goaway(payload)
                    self._upstream_goaway(last, code, out)
                    if self._up is not up:
                        break
        except H2Error as exc:
            if self._up is up:
                up.out += f.goaway(0, exc.code)
                self._upstream_lost(f"it broke the HTTP/2 protocol: {exc}", out)
        finished, self._finished_upstream = self._finished_upstream, []
        for s in finished:
            self._finish(s, out)
        if self._up is not up:
            return
        if self._req_blocked:
            # A WINDOW_UPDATE or SETTINGS may have opened the app's windows.
            self._flush_blocked_requests()
        self._start_waiting(out)

    def _app_headers(self, up_id: int, flags: int, payload: memoryview) -> None:
        up = self._up
        assert up is not None
        block = self._decode(up, payload)
        s = self._by_up.get(up_id)
        if s is None or s.resp_done:
            return
        ended = bool(flags & f.END_STREAM)
        fields = encoded(block, self._down.encoder)
        if not s.resp_started:
            status = status_of(block.fields)
            if status is not None and status < 200 and not ended:
                self._down.headers(s.down_id, fields, end_stream=False)  # 1xx: forwarded
                return
            s.record.status = status
            if s.record.request_headers is not None:
                s.record.response_headers = list(block.fields)
            s.resp_started = True
            # A HEADERS frame that ends the stream stays one (gRPC's Trailers-Only).
            self._down.headers(s.down_id, fields, end_stream=ended)
            if ended:
                s.resp_ended = s.resp_done = True
                self._finished_upstream.append(s)
            return
        # Trailers: after the body still waiting for the client's window, if any.
        s.resp_trailers = fields
        s.resp_ended = True
        self._flush_response(s)
        if s.resp_done:
            self._finished_upstream.append(s)

    def _app_data(self, up_id: int, flags: int, payload: memoryview, flow_len: int) -> None:
        up = self._up
        assert up is not None
        s = self._by_up.get(up_id)
        if s is None or s.resp_done or not s.resp_started:
            up.ack(flow_len)
            return
        s.up_recv -= flow_len
        if s.up_recv < 0:
            up.ack(flow_len)
            raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, f"stream {up_id}'s window")
        size = len(payload)
        padding = flow_len - size
        if padding:
            self._ack_app(s, padding)
        ended = bool(flags & f.END_STREAM)
        if ended:
            s.resp_ended = True
        if size:
            record = s.record
            record.bytes_out += size
            if record.response_body is not None:
                record.capture_response_body(bytes(payload))
        if s.resp_buf or s.head_only:
            if not s.head_only:
                s.resp_buf += payload
            else:
                self._ack_app(s, size)
            self._flush_response(s)
        else:
            # The common case: nothing waiting before it, relayed as it came if the
            # client's windows take it all.
            down = self._down
            room = min(down.send_window, down.initial_window + s.down_credit)
            if size <= room and size <= down.max_frame:
                out_buf = down.out
                out_buf += f.head(size, f.DATA, f.END_STREAM if ended else 0, s.down_id)
                out_buf += payload
                down.send_window -= size
                s.down_credit -= size
                if ended:
                    s.resp_done = True
                if size:
                    self._ack_app(s, size)
            else:
                s.resp_buf += payload
                self._flush_response(s)
        if s.resp_done:
            self._finished_upstream.append(s)

    def _ack_app(self, s: StreamState, length: int) -> None:
        """Return ``length`` bytes of ``s`` to the original app's windows."""
        up = self._up
        if up is None:
            return
        up.ack(length)
        if not s.resp_ended and s.up_id is not None:
            owed = s.up_unacked + length
            if owed >= STREAM_ACK_AT:
                up.out += f.window_update(s.up_id, owed)
                s.up_recv += owed
                owed = 0
            s.up_unacked = owed

    def _upstream_goaway(self, last: int, code: int, out: list[Command]) -> None:
        if code != ErrorCode.NO_ERROR:
            self._upstream_lost(f"it ended the connection (GOAWAY {f.error_name(code)})",
                                out)
            return
        self._up_going_away = True
        for up_id, s in list(self._by_up.items()):
            if up_id > last and not s.resp_started:
                del self._by_up[up_id]
                s.up_id = None
                self._refuse(s)
                self._finish(s, out)
        while self._waiting:
            s = self._waiting.popleft()
            self._refuse(s)
            self._finish(s, out)
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
        self._req_blocked.clear()
        for s in lost:
            s.up_id = None
            if s.resp_done or s.resp_ended:
                # Complete already: what is buffered still goes to the client, and the
                # rest of an upload has nowhere to go.
                self._discard_request(s)
            else:
                self._fail(s, f"waylay: the original app failed: {reason}", out)
            self._finish(s, out)

    def _reset_upstream(self, s: StreamState, code: int) -> None:
        up_id, s.up_id = s.up_id, None
        if up_id is None:
            return
        self._by_up.pop(up_id, None)
        self._req_blocked.pop(s.down_id, None)
        if self._up is not None and not (s.req_sent_end and s.resp_ended):
            self._up.out += f.rst_stream(up_id, code)

    # --- the local app's answer to stolen streams -----------------------------------------

    def _local_head(self, sid: int, status: int, headers: Headers,
                    out: list[Command]) -> None:
        s = self._streams.get(sid)
        if s is None or not s.stolen or s.resp_started or s.resp_done or status < 200:
            return
        fields = response_fields(status, headers)
        s.record.status = status
        if s.record.request_headers is not None:
            s.record.response_headers = fields
        s.head_only = s.head_only or status in NO_BODY_STATUS
        s.resp_started = True
        block = self._down.encoder.fields(fields)
        if any(n == b"grpc-status" for n, _ in fields):
            # gRPC's Trailers-Only response: the status must end the stream in the same
            # HEADERS frame (gRPC over HTTP/2), so the head waits for the end.
            s.resp_head = block
            return
        self._down.headers(sid, block, end_stream=False)

    def _local_data(self, sid: int, data: bytes, out: list[Command]) -> None:
        s = self._streams.get(sid)
        if s is None or not s.stolen or not s.resp_started or s.resp_ended or s.head_only:
            return
        s.record.bytes_out += len(data)
        if s.record.response_body is not None:
            s.record.capture_response_body(data)
        s.resp_buf += data
        self._flush_response(s)
        self._finish(s, out)

    def _local_trailers(self, sid: int, headers: Headers) -> None:
        s = self._streams.get(sid)
        if s is None or not s.stolen or not s.resp_started or s.resp_ended:
            return
        s.resp_trailers = self._down.encoder.fields(trailer_fields(headers)) or None

    def _local_end(self, sid: int, out: list[Command]) -> None:
        s = self._streams.get(sid)
        if s is not None and s.stolen and s.resp_started and not s.resp_ended:
            s.resp_ended = True
            self._flush_response(s)
            self._finish(s, out)

    # --- moving bytes within the windows --------------------------------------------------

    def _flush_blocked_responses(self, out: list[Command]) -> None:
        for s in list(self._resp_blocked.values()):
            self._flush_response(s)
            self._finish(s, out)

    def _flush_blocked_requests(self) -> None:
        for s in list(self._req_blocked.values()):
            self._flush_request(s)

    def _flush_request(self, s: StreamState) -> None:
        """Send what the original app's windows take of ``s``'s request body, then its end."""
        up = self._up
        up_id = s.up_id
        if up is None or up_id is None or s.req_sent_end:
            return
        buf = s.req_buf
        if buf:
            sent = self._send_data(up, up_id, buf, s.up_credit,
                                   end=s.req_ended and s.req_trailers is None)
            s.up_credit -= sent
            if sent:
                self._ack_client(s, sent)
            if buf:
                self._req_blocked[s.down_id] = s
                return
            if s.req_ended and s.req_trailers is None:
                s.req_sent_end = True
        if s.req_ended and not s.req_sent_end:
            if s.req_trailers is not None:
                up.headers(up_id, s.req_trailers, end_stream=True)
            else:
                up.out += f.head(0, f.DATA, f.END_STREAM, up_id)
            s.req_sent_end = True
        self._req_blocked.pop(s.down_id, None)

    def _flush_response(self, s: StreamState) -> None:
        """Send what the client's windows take of ``s``'s answer, then its end."""
        if s.resp_done:
            self._resp_blocked.pop(s.down_id, None)
            return
        down = self._down
        if s.resp_head is not None:
            if not (s.resp_ended or s.resp_buf or s.resp_trailers):
                return  # the end of a Trailers-Only answer is still to come
            head, s.resp_head = s.resp_head, None
            ended = s.resp_ended and not s.resp_buf and not s.resp_trailers
            down.headers(s.down_id, head, end_stream=ended)
            if ended:
                s.resp_done = True
                return
        buf = s.resp_buf
        if buf:
            sent = self._send_data(down, s.down_id, buf, s.down_credit,
                                   end=s.resp_ended and s.resp_trailers is None)
            s.down_credit -= sent
            if sent and not s.stolen:
                self._ack_app(s, sent)
            if buf:
                self._resp_blocked[s.down_id] = s
                return
            if s.resp_ended and s.resp_trailers is None:
                s.resp_done = True
        if s.resp_ended and not s.resp_done:
            if s.resp_trailers is not None:
                down.headers(s.down_id, s.resp_trailers, end_stream=True)
            else:
                down.out += f.head(0, f.DATA, f.END_STREAM, s.down_id)
            s.resp_done = True
        self._resp_blocked.pop(s.down_id, None)

    @staticmethod
    def _send_data(peer: H2Peer, sid: int, buf: bytearray, credit: int, *, end: bool) -> int:
        """Send what ``peer``'s windows allow of ``buf`` (removing it), END_STREAM on the
        last frame if ``end`` and it all went; returns the bytes sent."""
        room = min(peer.send_window, peer.initial_window + credit)
        total = min(room, len(buf))
        if total <= 0:
            return 0
        out = peer.out
        at = 0
        with memoryview(buf) as view:
            while at < total:
                size = min(total - at, peer.max_frame)
                last = at + size == len(buf)
                out += f.head(size, f.DATA, f.END_STREAM if end and last else 0, sid)
                out += view[at:at + size]
                at += size
        del buf[:total]
        peer.send_window -= total
        return total

    # --- endings --------------------------------------------------------------------------

    def _fail(self, s: StreamState, message: str, out: list[Command], *,
              status: int = 502) -> None:
        """Answer ``status`` if no response started yet, otherwise reset the stream."""
        if s.resp_done:
            return
        if s.stolen and not s.req_ended:
            out.append(StealAbort(stream=s.down_id, reason="the stream failed"))
        self._discard_request(s)
        if s.resp_started:
            self._reset_downstream(s, ErrorCode.INTERNAL_ERROR)
            return
        body = (message + "\n").encode("utf-8", "replace")
        s.record.status = status
        s.resp_started = True
        s.resp_head = None
        self._down.headers(s.down_id, self._down.encoder.fields([
            (b":status", str(status).encode()),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]), end_stream=s.head_only)
        if s.head_only:
            s.resp_done = True
        else:
            s.resp_buf[:] = body
            s.resp_ended = True
            s.resp_trailers = None
            self._flush_response(s)

    def _refuse(self, s: StreamState) -> None:
        """The original app will not take this stream: the client may retry it elsewhere."""
        self._discard_request(s)
        self._reset_downstream(s, ErrorCode.REFUSED_STREAM)

    def _reset_downstream(self, s: StreamState, code: int) -> None:
        """Reset the client's stream (also after a complete answer, if the client is still
        sending: RFC 9113 §8.1 lets a server stop an upload that way)."""
        if not (s.resp_done and s.req_ended):
            self._down.out += f.rst_stream(s.down_id, code)
        s.resp_done = s.req_ended = True
        self._discard_request(s)
        self._discard_response(s)

    def _discard_request(self, s: StreamState) -> None:
        """Drop the request body still held; hand its window back to the client."""
        s.req_discard = True
        self._req_blocked.pop(s.down_id, None)
        if s.req_buf:
            self._ack_client(s, len(s.req_buf))
            s.req_buf.clear()

    def _discard_response(self, s: StreamState) -> None:
        self._resp_blocked.pop(s.down_id, None)
        if s.resp_buf and not s.stolen:
            self._ack_app(s, len(s.resp_buf))
        s.resp_buf.clear()

    def _goaway_downstream(self) -> None:
        if not self._draining:
            self._draining = True
            self._down.out += f.goaway(self._highest_in, ErrorCode.NO_ERROR)

    def _finish(self, s: StreamState, out: list[Command]) -> None:
        """Record ``s`` once its response is over; forget it once over both ways."""
        if not s.resp_done:
            return
        if not s.recorded:
            s.recorded = True
            s.record.finish(self._now)
            out.append(RecordFlow(record=s.record, owner=s.route.steal_by,
                                  timed_out=s.route.timed_out, stream=s.down_id))
        over = s.req_ended or s.req_discard
        if over and self._streams.pop(s.down_id, None) is not None and s.up_id is not None:
            if not s.req_sent_end:
                self._reset_upstream(s, ErrorCode.CANCEL)
            else:
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
        self._resp_blocked.clear()
        self._req_blocked.clear()
        self._collect(out)
        self.closed = True
        if self._up is not None:
            self._up = None
            out.append(ReleaseUpstream(reusable=False))
        out.append(CloseDownstream())

    def _collect(self, out: list[Command]) -> None:
        """The bytes both connections want sent, as one write each."""
        if self._up is not None and self._up.out:
            out.append(SendUpstream(data=self._up.take()))
        if self._down.out:
            out.append(SendDownstream(data=self._down.take()))


__all__ = ["MAX_LOCAL_BACKLOG", "H2Router"]
