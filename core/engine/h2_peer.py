"""One HTTP/2 connection of the router, below the streams (sans-I/O).

Theory of operation
-------------------
The router holds two of these: the remote client's connection (``server=True``: we are
its server) and the original app's (we are its client). An ``H2Peer`` splits the bytes
received into frames (RFC 9113 §4), answers what concerns the connection alone, and
hands the router only what concerns streams, as ``(type, flags, stream, payload,
flow_len)`` tuples:

* handled here: the preface (§3.4), SETTINGS (applied and acknowledged, §6.5), PING
  (answered, §6.7), connection-level WINDOW_UPDATE (§6.9), PRIORITY and unknown frame
  types (ignored, §5.3.2 and §5.5), padding (stripped), CONTINUATION (a header block
  is handed on once complete, as one HEADERS or PUSH_PROMISE entry, §6.10);
* handed on: DATA (payload without padding; ``flow_len`` is what it costs the windows),
  HEADERS and PUSH_PROMISE (the complete block; the promised stream id leads a
  PUSH_PROMISE payload), RST_STREAM, stream-level WINDOW_UPDATE, GOAWAY.

A connection error raises ``H2Error``; the router answers GOAWAY and closes.

It also holds the connection-level flow-control state and the output buffer. Data the
router handed on is acknowledged with ``ack``; the WINDOW_UPDATE goes out once a quarter
of the window is owed, so a stream of small frames costs one WINDOW_UPDATE per many
frames, and the peer is never stalled by the batching (it keeps three quarters of its
window while we owe it the rest).

Flood bounds: a header block may take at most ``MAX_HEADER_FRAMES`` frames and
``MAX_HEADER_BLOCK`` bytes (a CONTINUATION flood ends the connection); the answers to
SETTINGS and PING floods queue in ``out``, and the driver stops reading a peer whose
answers it does not read (the transport's write buffer bound).
"""

from __future__ import annotations

from hpack import HPACKError, OversizedHeaderListError

from waylay.core.engine import h2_frames as f
from waylay.core.engine.h2_codec import MAX_HEADER_LIST_SIZE, CachingDecoder, StatelessEncoder
from waylay.core.engine.h2_frames import ErrorCode

# Frames one header block may span, and its compressed size (RFC 9113 §6.10 sets no
# limit: these stop a CONTINUATION flood; a legitimate block fits far below them).
MAX_HEADER_FRAMES = 64
MAX_HEADER_BLOCK = MAX_HEADER_LIST_SIZE + 16 * 1024

Frame = tuple[int, int, int, memoryview, int]

_ORIGIN_STREAM = frozenset({f.DATA, f.HEADERS, f.PRIORITY, f.RST_STREAM, f.CONTINUATION,
                            f.PUSH_PROMISE})
_CONNECTION_ONLY = frozenset({f.SETTINGS, f.PING, f.GOAWAY})


class H2Error(Exception):
    """The peer broke the protocol: the connection ends with GOAWAY(``code``)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class H2Peer:
    """Framing, settings, connection windows, HPACK state and output of one connection."""

    def __init__(self, *, server: bool, settings: dict[int, int], window: int) -> None:
        self.server = server
        self.decoder = CachingDecoder()
        self.encoder = StatelessEncoder()
        # The peer's settings, as they bind what we send (RFC 9113 §6.5.2 defaults).
        self.max_frame = f.DEFAULT_MAX_FRAME
        self.initial_window = f.DEFAULT_WINDOW
        # Until its SETTINGS arrive, assume the peer takes the 100 streams RFC 9113
        # §6.5.2 recommends as a minimum.
        self.max_streams = 100
        self.send_window = f.DEFAULT_WINDOW  # connection-level: what we may still send
        self.recv_window = window  # connection-level: what the peer may still send us
        self._owed = 0  # handed on by the router, not yet returned to the peer
        self._ack_at = window // 4
        self._buf = b""  # the start of a frame not complete yet
        self._preface = server  # a server first reads the client's connection preface
        self._got_settings = False
        self._block: bytearray | None = None  # a header block awaiting CONTINUATION
        self._block_head = (0, 0, 0)  # its frame type, flags and stream
        self._block_frames = 0
        self.out = bytearray(b"" if server else f.PREFACE)
        self.out += f.settings(settings)
        if window > f.DEFAULT_WINDOW:
            self.out += f.window_update(0, window - f.DEFAULT_WINDOW)

    # --- receiving --------------------------------------------------------------------

    def frames(self, data: bytes) -> list[Frame]:
        """The stream-level frames in ``data`` (with what came before); see the module doc.

        Raises ``H2Error`` on a connection error.
        """
        if self._buf:
            data = self._buf + data
            self._buf = b""
        elif type(data) is not bytes:
            data = bytes(data)  # payloads are memoryviews of it, hashed by the HPACK memo
        view = memoryview(data)
        end = len(data)
        at = 0
        if self._preface:
            if end < len(f.PREFACE):
                if not f.PREFACE.startswith(data):
                    raise H2Error(ErrorCode.PROTOCOL_ERROR, "no HTTP/2 connection preface")
                self._buf = data
                return []
            if data[:len(f.PREFACE)] != f.PREFACE:
                raise H2Error(ErrorCode.PROTOCOL_ERROR, "no HTTP/2 connection preface")
            self._preface = False
            at = len(f.PREFACE)
        out: list[Frame] = []
        unpack = f.HEAD.unpack_from
        while end - at >= 9:
            high, low, kind, flags, stream = unpack(data, at)
            length = high << 16 | low
            if length > f.DEFAULT_MAX_FRAME:  # we never announce a larger SETTINGS_MAX_FRAME_SIZE
                raise H2Error(ErrorCode.FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            if end - at - 9 < length:
                break
            stream &= 0x7FFFFFFF
            payload = view[at + 9:at + 9 + length]
            at += 9 + length
            if not self._got_settings and (kind != f.SETTINGS or flags & f.ACK):
                raise H2Error(ErrorCode.PROTOCOL_ERROR, "the first frame is not SETTINGS")
            if self._block is not None and kind != f.CONTINUATION:
                raise H2Error(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted")
            if kind == f.DATA:
                if not stream:
                    raise H2Error(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
                self.recv_window -= length
                if self.recv_window < 0:
                    raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, "the connection window")
                if flags & f.PADDED:
                    payload = self._unpad(payload)
                    if length - len(payload):
                        self.ack(length - len(payload))  # padding: nobody else takes it
                out.append((kind, flags, stream, payload, length))
            elif kind == f.HEADERS or kind == f.PUSH_PROMISE:
                self._header_frame(kind, flags, stream, payload, out)
            elif kind == f.CONTINUATION:
                self._continuation(flags, stream, payload, out)
            elif kind == f.RST_STREAM or kind == f.WINDOW_UPDATE:
                if length != 4:
                    raise H2Error(ErrorCode.FRAME_SIZE_ERROR, f"frame type {kind}, length {length}")
                if stream:
                    out.append((kind, flags, stream, payload, 0))
                elif kind == f.RST_STREAM:
                    raise H2Error(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
                else:
                    self._window_update(f.unpack_u32(payload) & 0x7FFFFFFF)
            elif kind in _CONNECTION_ONLY:
                if stream:
                    raise H2Error(ErrorCode.PROTOCOL_ERROR, f"frame type {kind} on a stream")
                if kind == f.SETTINGS:
                    self._settings(flags, payload)
                elif kind == f.PING:
                    if length != 8:
                        raise H2Error(ErrorCode.FRAME_SIZE_ERROR, "a PING not 8 bytes long")
                    if not flags & f.ACK:
                        self.out += f.ping_ack(bytes(payload))
                else:
                    if length < 8:
                        raise H2Error(ErrorCode.FRAME_SIZE_ERROR, "a short GOAWAY")
                    out.append((kind, flags, stream, payload, 0))
            elif kind == f.PRIORITY and not stream:
                raise H2Error(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
            # Unknown frame types are ignored (RFC 9113 §5.5).
        if at < end:
            self._buf = data[at:]
        return out

    @staticmethod
    def _unpad(payload: memoryview) -> memoryview:
        if not payload:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, "padding without a length")
        pad = payload[0]
        if pad >= len(payload):
            raise H2Error(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1:len(payload) - pad]

    def _header_frame(self, kind: int, flags: int, stream: int, payload: memoryview,
                      out: list[Frame]) -> None:
        if not stream:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, "a header block on stream 0")
        if kind == f.PUSH_PROMISE and self.server:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        if flags & f.PADDED:
            payload = self._unpad(payload)
        if kind == f.HEADERS and flags & f.PRIORITY_FLAG:
            if len(payload) < 5:
                raise H2Error(ErrorCode.FRAME_SIZE_ERROR, "a short HEADERS priority")
            payload = payload[5:]
        if flags & f.END_HEADERS:
            out.append((kind, flags, stream, payload, 0))
            return
        self._block = bytearray(payload)
        self._block_head = (kind, flags, stream)
        self._block_frames = 1

    def _continuation(self, flags: int, stream: int, payload: memoryview,
                      out: list[Frame]) -> None:
        block = self._block
        kind, first_flags, first_stream = self._block_head
        if block is None or stream != first_stream:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block += payload
        self._block_frames += 1
        if len(block) > MAX_HEADER_BLOCK or self._block_frames > MAX_HEADER_FRAMES:
            raise H2Error(ErrorCode.ENHANCE_YOUR_CALM, "a header block too large")
        if flags & f.END_HEADERS:
            self._block = None
            out.append((kind, first_flags | f.END_HEADERS, stream, memoryview(bytes(block)),
                        0))

    def _window_update(self, increment: int) -> None:
        if not increment:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
        self.send_window += increment
        if self.send_window > f.MAX_WINDOW:
            raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, "the connection window overflowed")

    def _settings(self, flags: int, payload: memoryview) -> None:
        if flags & f.ACK:
            if payload:
                raise H2Error(ErrorCode.FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2Error(ErrorCode.FRAME_SIZE_ERROR, "a SETTINGS payload not of 6-byte units")
        for key, value in f.iter_settings(payload):
            if key == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE")
                self.initial_window = value
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= f.MAX_MAX_FRAME:
                    raise H2Error(ErrorCode.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE")
                self.max_frame = value
            elif key == f.MAX_CONCURRENT_STREAMS:
                self.max_streams = value
            elif key == f.HEADER_TABLE_SIZE:
                self.encoder.header_table_size = value
            elif key == f.ENABLE_PUSH and value > 1:
                raise H2Error(ErrorCode.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH")
        self._got_settings = True
        self.out += f.SETTINGS_ACK

    # --- sending ----------------------------------------------------------------------

    def ack(self, length: int) -> None:
        """``length`` bytes of DATA were handed on: return them to the peer's window."""
        owed = self._owed + length
        if owed >= self._ack_at:
            self.out += f.window_update(0, owed)
            self.recv_window += owed
            owed = 0
        self._owed = owed

    def headers(self, stream: int, block: bytes, *, end_stream: bool) -> None:
        """A header block (fields already encoded by ``encoder``) on ``stream``."""
        prefix = self.encoder.prefix()
        if prefix:
            block = prefix + block
        if len(block) <= self.max_frame:  # the common case: one HEADERS frame
            out = self.out
            out += f.head(len(block), f.HEADERS,
                          f.END_HEADERS | f.END_STREAM if end_stream else f.END_HEADERS, stream)
            out += block
        else:
            self.out += f.headers(stream, block, end_stream=end_stream, max_frame=self.max_frame)

    def take(self) -> bytes:
        """Everything queued for the peer, as one write."""
        data = bytes(self.out)
        self.out.clear()
        return data


def decode_error(exc: HPACKError) -> H2Error:
    """An HPACK failure leaves the decoder's table unknown: a connection error."""
    if isinstance(exc, OversizedHeaderListError):
        return H2Error(ErrorCode.ENHANCE_YOUR_CALM, f"HPACK: {exc}")
    return H2Error(ErrorCode.COMPRESSION_ERROR, f"HPACK: {exc}")
