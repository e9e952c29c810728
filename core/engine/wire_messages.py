"""The wire protocol's vocabulary: frame types, the message classes, header text (sans-I/O).

``waylay.core.engine.wire`` turns these messages into frames and back; see its docstring for the
frame layout. Every message is a frozen keyword-only dataclass; ``Message`` is their union.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, TypeAlias

from waylay.core.engine.flow import FlowRow

# 2: flow records as compact rows; PAUSE / RESUME per stream; REQUEST, RESPONSE and
# TRAILERS payloads compact (waylay.core.engine.wire_heads), not JSON.
PROTOCOL_VERSION: Final = 2

HEADER: Final = struct.Struct("!IBI")  # payload length u32, frame type u8, stream id u32
HEADER_SIZE: Final = HEADER.size  # 9

# The largest payload a frame may carry. It bounds what a receiver buffers for one frame
# (at most HEADER_SIZE + MAX_PAYLOAD bytes), whatever the peer announces; bodies larger
# than this are split over several DATA frames by encode_data.
MAX_PAYLOAD: Final = 256 * 1024

MAX_STREAM: Final = 2**32 - 1  # stream ids (and sub_ids) fill the header's u32
MODES: Final = ("steal", "mirror")
CONCURRENT_STEAL: Final = ("abort", "continue", "override")  # config.ConcurrentSteal
NOTICE_LEVELS: Final = ("warning", "error")
NONCE_SIZE: Final = 8
# How long a session's local app may take to start answering a stolen request, when the
# session does not say (an older client): long enough for a debugger's breakpoint, short
# enough that a hung app does not hold the remote caller for good. The config's
# ``agent.local_response_timeout`` sets it per session; both are whole seconds.
DEFAULT_RESPONSE_TIMEOUT_S: Final = 60
MAX_RESPONSE_TIMEOUT_S: Final = 86_400


class WireProtocolError(Exception):
    """A frame or message breaks the wire protocol; the message says what was wrong.

    Raised for bad input on decode (the peer's fault: the link should be closed) and for a
    message that cannot be encoded (the caller's fault).
    """


class FrameType(IntEnum):
    """The frame type byte of the header."""

    HELLO = 1  # client → agent, first frame: session token and protocol version
    WELCOME = 2  # agent → client, handshake accepted
    ERROR = 3  # either way; on stream 0 it is fatal for the link
    PING = 4
    PONG = 5
    SUBSCRIBE = 6  # client → agent: intercept a port
    SUBSCRIBED = 7  # agent → client: the subscription is live
    UNSUBSCRIBE = 8
    REQUEST = 10  # agent → client: a new HTTP request on a stream
    CONNECTION = 11  # agent → client: a whole stolen TCP connection on a stream
    DATA = 12  # either way: body bytes or TCP bytes of a stream
    END = 13  # either way: end of this direction of a stream (end of body / half-close)
    RESPONSE = 14  # client → agent: the local app's response head
    RESET = 15  # either way: abort the stream
    FLOW = 16  # agent → client: a batch of flow records
    NOTICE = 17  # agent → client: a warning or error for the user
    TRAILERS = 18  # either way: trailer fields of a stream's message; END follows
    PAUSE = 19  # agent → client: stop sending on this stream (its remote client is slow)
    RESUME = 20  # agent → client: send on this stream again


# --- messages ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Hello:
    """First frame of the client, stream 0. JSON ``{token, client, version}``."""

    token: str
    client: str
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, kw_only=True, slots=True)
class Welcome:
    """The agent's answer to a good Hello, stream 0.

    JSON ``{agent, session, listening_ports, version}``.
    """

    agent: str
    session: str
    listening_ports: tuple[int, ...]
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, kw_only=True, slots=True)
class Error:
    """A refusal or failure; ``stream`` 0 means the link is unusable. JSON ``{message, code}``."""

    stream: int
    message: str
    code: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Ping:
    """Liveness probe, stream 0; the payload is the 8-byte nonce."""

    nonce: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Pong:
    """Answer to a Ping, echoing its 8-byte nonce, stream 0."""

    nonce: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Subscribe:
    """Intercept ``port``; ``sub_id`` is the stream id. JSON ``{port, mode, filter}``.

    ``mode`` is "steal" or "mirror"; ``filter`` is mirrord's ``http_filter`` object, or None
    for the whole port. A Subscribe reusing a live ``sub_id`` (same port) replaces its mode
    and filter in place, atomically, keeping its precedence: a live filter change.
    ``capture`` asks for headers and the start of bodies in this port's flow records (the
    dashboard's detail view); absent in the JSON means false.
    ``local`` is where the session delivers this port ("127.0.0.1:8080"), named in the
    answer a caller gets when the local app is too slow; ``response_timeout`` is how many
    whole seconds the local app has to start answering a stolen request. Absent (older
    clients) they mean unknown and ``DEFAULT_RESPONSE_TIMEOUT_S``.
    ``body_buffer_size`` (bytes) and ``body_buffer_timeout`` (milliseconds) bound how much
    of a request body the agent waits for when this filter needs it (the session's
    ``agent.max_body_buffer_size`` / ``_timeout``); absent: mirrord's defaults.
    ``on_concurrent_steal`` ("abort", "continue", "override") says what a steal without a
    filter does when another session steals the port without one; absent: "abort".
    ``inject_headers``: answers on this port carry the verdict header (absent: false).
    """

    sub_id: int
    port: int
    mode: str
    filter: dict[str, object] | None
    capture: bool = False
    local: str | None = None
    response_timeout: int | None = None
    body_buffer_size: int | None = None
    body_buffer_timeout: int | None = None
    on_concurrent_steal: str | None = None
    inject_headers: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Subscribed:
    """A subscription is live; ``filter`` is its human-readable text. Same JSON as Subscribe."""

    sub_id: int
    port: int
    mode: str
    filter: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Unsubscribe:
    """Drop a subscription; ``sub_id`` is the stream id, the payload is empty."""

    sub_id: int


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestStart:
    """A request head opening ``stream``.

    Compact payload (``waylay.core.engine.wire_heads``): ``!IHBI`` sub_id, port, flags (bit 0:
    flow_id present, bit 1: end), flow_id; then the strings method, target, http_version, peer and
    each header's name and value. ``flow_id`` is the id of the flow record that will report
    this request (stolen requests only; None for mirror copies), so a session can show
    the request while it is in flight. ``end``: the request is complete (it has no body):
    no DATA and no END follow for it, as if an END came right after this frame.
    """

    stream: int
    sub_id: int
    port: int
    method: str
    target: str
    http_version: str
    headers: tuple[tuple[str, str], ...]
    peer: str
    flow_id: int | None = None
    end: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionStart:
    """A whole stolen TCP connection opening ``stream``. JSON ``{sub_id, port, peer}``."""

    stream: int
    sub_id: int
    port: int
    peer: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Data:
    """Bytes of a stream; the payload is the data itself."""

    stream: int
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class End:
    """End of this direction of ``stream`` (end of body, or TCP half-close); empty payload."""

    stream: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Pause:
    """Stop sending on ``stream`` until RESUME: its remote client reads slower than the
    local app answers. Per stream, so one slow client never holds up the link's other
    streams; empty payload. What was already on its way is still delivered."""

    stream: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Resume:
    """Send on ``stream`` again (after PAUSE); empty payload."""

    stream: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ResponseStart:
    """The response head on ``stream``, possibly with its body and its end.

    Compact payload (``waylay.core.engine.wire_heads``): ``!HBI`` status, flags (bit 0: end), body
    length; then the strings reason and each header's name and value; then the body.
    ``body`` is the start of the response body, as if a DATA frame carrying it followed;
    ``end``: the response is complete, as if an END followed. A small answer that the
    local app sent whole is one frame.
    """

    stream: int
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    end: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Trailers:
    """Trailer fields ending the message on ``stream`` (gRPC's ``grpc-status``), sent after
    its last DATA and before its END. Compact payload (``waylay.core.engine.wire_heads``): each
    field's name and value."""

    stream: int
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Reset:
    """Abort ``stream`` in both directions. JSON ``{reason}``."""

    stream: int
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Flow:
    """Flow records, stream 0, batched (``{"rows": [...]}``): on a busy port one frame
    carries many, each a compact row (``waylay.core.engine.flow.ROW_FIELDS``), which keeps the
    per-request cost of reporting small on both sides; ``waylay.core.engine.events.request_event``
    makes the event."""

    records: tuple[FlowRow, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Notice:
    """A message for the user, stream 0; ``level`` is "warning" or "error".

    JSON ``{level, message}``.
    """

    level: str
    message: str


Message: TypeAlias = (
    Hello
    | Welcome
    | Error
    | Ping
    | Pong
    | Subscribe
    | Subscribed
    | Unsubscribe
    | RequestStart
    | ConnectionStart
    | Data
    | End
    | ResponseStart
    | Trailers
    | Reset
    | Flow
    | Notice
    | Pause
    | Resume
)


# --- headers ------------------------------------------------------------------------------


def headers_to_wire(headers: list[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """HTTP headers as bytes → the wire's latin-1 str pairs (lossless for any byte)."""
    return tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in headers)


def headers_from_wire(headers: tuple[tuple[str, str], ...]) -> list[tuple[bytes, bytes]]:
    """The wire's latin-1 str pairs → HTTP headers as bytes; exact inverse of headers_to_wire."""
    try:
        return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    except UnicodeEncodeError as exc:
        raise WireProtocolError(f"header text outside latin-1: {exc.object!r}") from None
