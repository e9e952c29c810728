"""The stream mechanics of the HTTP/2 router (sans-I/O): windows, the app's side, endings.

``waylay.core.engine.h2_router`` decides where each stream goes; ``StreamRelay``, its base, holds
what both connections share and moves the routed streams' bytes:

* the original app's connection ("upstream", an ``H2Peer`` on which we are the client):
  passed streams are opened there with their own stream ids (``_by_up`` maps them back),
  and its frames (answers, resets, windows, GOAWAY) are relayed to the client's streams;
* the flow control of both directions (RFC 9113 §5.2): a stream's bytes wait in its
  buffer until the receiving peer's stream and connection windows take them, and only
  then are they acknowledged to the sending peer (``_ack_client``, ``_ack_app``), so
  what waits here is bounded by the windows we advertise. Streams whose bytes wait are
  kept in ``_req_blocked`` / ``_resp_blocked`` and tried again when a window opens;
* endings: 502 or reset when an answer cannot come, refusals (REFUSED_STREAM, safe to
  retry), the flow record once an answer is over, and forgetting a stream once both
  directions are over (``_finish``).

DATA from the original app is copied once, from the bytes read into the bytes written to
the client, when it fits the client's windows at once (the common case); otherwise it
waits in the stream's buffer.
"""

from __future__ import annotations

from collections import deque

from hpack import HPACKError

from waylay.core.engine import h2_frames as f
from waylay.core.engine.h2_codec import MAX_HEADER_LIST_SIZE, HeaderBlock, encoded
from waylay.core.engine.h2_frames import ErrorCode
from waylay.core.engine.h2_peer import H2Error, H2Peer, decode_error
from waylay.core.engine.h2_streams import (
    ANS_COMPLETE,
    ANS_HEAD,
    ANS_NONE,
    CONNECTION_WINDOW,
    REQ_ENDED,
    REQ_OPEN,
    REQ_SENT,
    STREAM_WINDOW,
    StreamState,
    status_of,
)
from waylay.core.engine.routing import (
    CloseDownstream,
    Command,
    ConnectUpstream,
    RecordFlow,
    ReleaseUpstream,
    SendDownstream,
    SendUpstream,
    StealAbort,
)

# Stream-level WINDOW_UPDATEs go out once this much is owed on a stream (see h2_peer).
STREAM_ACK_AT = STREAM_WINDOW // 8
MAX_STREAM_ID = 2**31 - 1
# A header table of 0 for the original app: an encoder like nginx's then never indexes,
# so the same answer is the same bytes every time and its decoding is memoised
# (``waylay.core.engine.h2_codec``); its blocks grow by a few bytes on a local path. The decoder
# still accepts a 4096-byte table (RFC 7541 §4.2 lets the app use it until it has read our
# SETTINGS).
UP_SETTINGS = {f.HEADER_TABLE_SIZE: 0, f.ENABLE_PUSH: 0, f.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
               f.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE}


class StreamRelay:
    """The streams of one downstream connection and the bytes they move; see the module doc."""

    def __init__(self, down: H2Peer) -> None:
        self._down = down  # the remote client's connection
        self._up: H2Peer | None = None
        self._up_going_away = False  # the original app sent GOAWAY: no new streams there
        self._next_up = 1
        self._streams: dict[int, StreamState] = {}  # by downstream id
        self._by_up: dict[int, StreamState] = {}  # passed streams by upstream id
        self._waiting: deque[StreamState] = deque()  # passed streams over the app's limit
        # Streams with bytes (or an end) waiting for a window, by downstream id.
        self._resp_blocked: dict[int, StreamState] = {}
        self._req_blocked: dict[int, StreamState] = {}
        self._finished_upstream: list[StreamState] = []  # answered within one read
        self._highest_in = 0  # the highest stream id the client opened
        self._draining = False  # the client or we said GOAWAY: finish, then close
        self._now = 0.0
        self.closed = False

    # --- shared by both sides -------------------------------------------------------------

    def _decode(self, peer: H2Peer, block: memoryview) -> HeaderBlock:
        try:
            return peer.decoder.decode(block)
        except HPACKError as exc:
            raise decode_error(exc) from None
        except (ValueError, IndexError) as exc:
            raise H2Error(ErrorCode.COMPRESSION_ERROR, f"HPACK: {exc}") from None

    def _ack_client(self, s: StreamState, length: int) -> None:
        """Return ``length`` bytes of ``s`` to the client's windows."""
        self._down.ack(length)
        if s.req is REQ_OPEN:
            owed = s.down_unacked + length
            if owed >= STREAM_ACK_AT:
                self._down.out += f.window_update(s.down_id, owed)
                s.down_recv += owed
                owed = 0
            s.down_unacked = owed

    # --- upstream: the original app's side of passed streams ------------------------------

    def _open_upstream_stream(self, s: StreamState, out: list[Command]) -> None:
        if self._up_going_away or self._next_up > MAX_STREAM_ID:
            self._refuse(s)
            self._finish(s, out)
            return
        up = self._up
        if up is None:
            up = self._up = H2Peer(server=False, settings=UP_SETTINGS,
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
        ends = s.req is not REQ_OPEN and not s.req_buf and s.req_trailers is None
        head = s.head
        block = head.encoded
        if block is None:  # once per distinct request block: the head is memoised
            block = head.encoded = up.encoder.fields(head.fields)
        up.headers(up_id, block, end_stream=ends)
        if ends:
            s.req = REQ_SENT
        elif s.req_buf or s.req is REQ_ENDED:
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
        if s.resp is ANS_NONE:
            status = status_of(block.fields)
            if status is not None and status < 200 and not ended:
                self._down.headers(s.down_id, fields, end_stream=False)  # 1xx: forwarded
                return
            s.record.status = status
            if s.record.request_headers is not None:
                s.record.response_headers = list(block.fields)
            s.resp = ANS_HEAD
            # A HEADERS frame that ends the stream stays one (gRPC's Trailers-Only).
            self._down.headers(s.down_id, fields, end_stream=ended)
            if ended:
                s.resp, s.resp_done = ANS_COMPLETE, True
                self._finished_upstream.append(s)
            return
        # Trailers: after the body still waiting for the client's window, if any.
        s.resp_trailers = fields
        s.resp = ANS_COMPLETE
        self._flush_response(s)
        if s.resp_done:
            self._finished_upstream.append(s)

    def _app_data(self, up_id: int, flags: int, payload: memoryview, flow_len: int) -> None:
        up = self._up
        assert up is not None
        s = self._by_up.get(up_id)
        if s is None or s.resp_done or s.resp is ANS_NONE:
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
            s.resp = ANS_COMPLETE
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
        if s.resp is not ANS_COMPLETE and s.up_id is not None:
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
            if up_id > last and s.resp is ANS_NONE:
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
            if s.resp_done or s.resp is ANS_COMPLETE:
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
        if self._up is not None and not (s.req is REQ_SENT and s.resp is ANS_COMPLETE):
            self._up.out += f.rst_stream(up_id, code)

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
        if up is None or up_id is None or s.req is REQ_SENT:
            return
        buf = s.req_buf
        if buf:
            sent = self._send_data(up, up_id, buf, s.up_credit,
                                   end=s.req is not REQ_OPEN and s.req_trailers is None)
            s.up_credit -= sent
            if sent:
                self._ack_client(s, sent)
            if buf:
                self._req_blocked[s.down_id] = s
                return
            if s.req is not REQ_OPEN and s.req_trailers is None:
                s.req = REQ_SENT
        if s.req is REQ_ENDED:
            if s.req_trailers is not None:
                up.headers(up_id, s.req_trailers, end_stream=True)
            else:
                up.out += f.head(0, f.DATA, f.END_STREAM, up_id)
            s.req = REQ_SENT
        self._req_blocked.pop(s.down_id, None)

    def _flush_response(self, s: StreamState) -> None:
        """Send what the client's windows take of ``s``'s answer, then its end."""
        if s.resp_done:
            self._resp_blocked.pop(s.down_id, None)
            return
        down = self._down
        if s.resp_head is not None:
            if not (s.resp is ANS_COMPLETE or s.resp_buf or s.resp_trailers):
                return  # the end of a Trailers-Only answer is still to come
            head, s.resp_head = s.resp_head, None
            ended = s.resp is ANS_COMPLETE and not s.resp_buf and not s.resp_trailers
            down.headers(s.down_id, head, end_stream=ended)
            if ended:
                s.resp_done = True
                return
        buf = s.resp_buf
        if buf:
            sent = self._send_data(down, s.down_id, buf, s.down_credit,
                                   end=s.resp is ANS_COMPLETE and s.resp_trailers is None)
            s.down_credit -= sent
            if sent and not s.stolen:
                self._ack_app(s, sent)
            if buf:
                self._resp_blocked[s.down_id] = s
                return
            if s.resp is ANS_COMPLETE and s.resp_trailers is None:
                s.resp_done = True
        if s.resp is ANS_COMPLETE and not s.resp_done:
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
        if s.stolen and s.req is REQ_OPEN:
            out.append(StealAbort(stream=s.down_id, reason="the stream failed"))
        self._discard_request(s)
        if s.resp is not ANS_NONE:
            self._reset_downstream(s, ErrorCode.INTERNAL_ERROR)
            return
        body = (message + "\n").encode("utf-8", "replace")
        s.record.status = status
        s.resp = ANS_HEAD
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
            s.resp = ANS_COMPLETE
            s.resp_trailers = None
            self._flush_response(s)

    def _refuse(self, s: StreamState) -> None:
        """The original app will not take this stream: the client may retry it elsewhere."""
        self._discard_request(s)
        self._reset_downstream(s, ErrorCode.REFUSED_STREAM)

    def _reset_downstream(self, s: StreamState, code: int) -> None:
        """Reset the client's stream (also after a complete answer, if the client is still
        sending: RFC 9113 §8.1 lets a server stop an upload that way)."""
        if not (s.resp_done and s.req is not REQ_OPEN):
            self._down.out += f.rst_stream(s.down_id, code)
        s.resp_done = True
        if s.req is REQ_OPEN:
            s.req = REQ_ENDED
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
        over = s.req is not REQ_OPEN or s.req_discard
        if over and self._streams.pop(s.down_id, None) is not None and s.up_id is not None:
            if s.req is not REQ_SENT:
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
