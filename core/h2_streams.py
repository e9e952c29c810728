"""The HTTP/2 router's per-stream state and its h2 plumbing (sans-I/O).

``core.h2_router`` decides and moves; this module holds what it moves with: the windows
both h2 connections advertise (which are also the router's buffer bounds), a factory for
those connections, ``StreamState`` (where one stream stands in each direction), sending
within a peer's windows, and the header translations between an h2 stream and a session's
request or response head.
"""

from __future__ import annotations

from collections.abc import Iterable

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.exceptions import StreamClosedError
from h2.settings import SettingCodes

from core.flow import FlowRecord
from core.h2_codec import install as install_codec
from core.routing import Route

# The windows we advertise to both peers. They are also the bound of what the router
# buffers per stream and per connection in each direction: a peer may not send more than
# this before we acknowledge, and we acknowledge only what the other side took. 256 KiB
# per stream keeps a veth or loopback path busy; 1 MiB per connection lets four streams
# run at full speed at once.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 1024 * 1024
DEFAULT_WINDOW = 65_535  # RFC 9113 §6.9.2: every window starts here
# Streams a client may open at once on one connection (RFC 9113 §5.1.2); more wait in
# the client. The original app's own limit is honoured separately (passed streams queue).
MAX_CONCURRENT_STREAMS = 128

# Connection-specific fields (RFC 9113 §8.2.2) that may come from an HTTP/1.1 local app
# and must not appear in an HTTP/2 message.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                        b"transfer-encoding", b"te", b"upgrade"})
NO_BODY_STATUS = frozenset({204, 304})

Headers = list[tuple[bytes, bytes]]


def new_connection(*, client_side: bool, trust_inbound: bool) -> H2Connection:
    """An h2 connection as the router uses it, its preface and settings queued.

    Header blocks are forwarded as they came (checked when received, or built here), so
    outbound validation and normalisation would only cost time; ``trust_inbound`` skips
    the inbound checks too (the original app's answers: the client checks them, as it
    would without waylay). Push is refused (RFC 9113 §8.4).
    """
    conn = H2Connection(H2Configuration(
        client_side=client_side, header_encoding=None, normalize_inbound_headers=False,
        validate_inbound_headers=not trust_inbound, validate_outbound_headers=False,
        normalize_outbound_headers=False))
    install_codec(conn)
    conn.initiate_connection()
    settings: dict[SettingCodes | int, int] = {SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW}
    if client_side:
        settings[SettingCodes.ENABLE_PUSH] = 0
    else:
        settings[SettingCodes.MAX_CONCURRENT_STREAMS] = MAX_CONCURRENT_STREAMS
    conn.update_settings(settings)
    conn.increment_flow_control_window(CONNECTION_WINDOW - DEFAULT_WINDOW)
    return conn


def to_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def pairs(headers: Iterable[tuple[bytes | str, bytes | str]]) -> Headers:
    """h2's header tuples as a list, kept as they are: with ``header_encoding=None`` they
    are bytes already, and a never-indexed field must stay one when forwarded
    (RFC 7541 §7.1.3; ``core.h2_codec`` keeps the distinction)."""
    return [h if type(h[0]) is bytes and type(h[1]) is bytes
            else (to_bytes(h[0]), to_bytes(h[1])) for h in headers]  # type: ignore[misc]


def reopen(conn: H2Connection, state: ConnectionState) -> None:
    """h2 closes the whole connection when a GOAWAY is sent or received; RFC 9113 §6.8
    lets the streams the GOAWAY covers finish. Put the state machine back so they can
    (the router itself never opens a stream past the GOAWAY)."""
    conn.state_machine.state = state


def send_within_window(conn: H2Connection, sid: int, buf: bytearray) -> int:
    """Send what the peer's windows allow of ``buf`` (removing it); bytes sent."""
    sent = 0
    while buf:
        try:
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
        except StreamClosedError:
            return sent
        if room <= 0:
            break
        chunk = bytes(buf[:room])
        try:
            conn.send_data(sid, chunk)
        except StreamClosedError:
            return sent
        del buf[:room]
        sent += len(chunk)
    return sent


def session_head(regular: Headers, host: bytes) -> Headers:
    """A request's fields as a session gets them: ``host`` first (from :authority), no
    pseudo-header fields, no Expect (answered by the agent), cookies in one field as
    HTTP/1.1 delivery needs it (RFC 9113 §8.2.3). ``regular`` has no pseudo-fields."""
    head = [] if any(n == b"host" for n, _ in regular) else [(b"host", host)]
    cookies = [v for n, v in regular if n == b"cookie"]
    if cookies:
        head.append((b"cookie", b"; ".join(cookies)))
    return head + [(n, v) for n, v in regular if n not in (b"cookie", b"expect")]


def response_fields(status: int, headers: Headers) -> Headers:
    """A local app's response head as HTTP/2 fields (lower-case, no hop-by-hop fields)."""
    kept = [(n.lower(), v) for n, v in headers
            if n.lower() not in HOP_BY_HOP and not n.startswith(b":") and n.lower() != b"host"]
    return [(b":status", str(status).encode()), *kept]


def trailer_fields(headers: Headers) -> Headers:
    return [(n.lower(), v) for n, v in headers
            if not n.startswith(b":") and n.lower() not in HOP_BY_HOP]


class StreamState:
    """One downstream stream and where it stands in each direction."""

    __slots__ = (
        "down_id",
        "head_only",
        "record",
        "recorded",
        "req_buf",
        "req_discard",
        "req_ended",
        "req_headers",
        "req_sent_end",
        "req_trailers",
        "resp_buf",
        "resp_done",
        "resp_ended",
        "resp_head",
        "resp_started",
        "resp_trailers",
        "route",
        "up_id",
    )

    def __init__(self, down_id: int, route: Route, record: FlowRecord,
                 req_headers: Headers) -> None:
        self.down_id = down_id
        self.route = route
        self.record = record
        self.req_headers = req_headers
        self.up_id: int | None = None
        # client -> original app or session
        self.req_buf = bytearray()  # passed: waiting for the upstream window
        self.req_ended = False  # the client sent END_STREAM
        self.req_trailers: Headers | None = None
        self.req_sent_end = False  # we ended the request upstream
        self.req_discard = False  # the answer is complete: further body is dropped
        # original app or local app -> client
        self.resp_buf = bytearray()  # waiting for the client's window
        self.resp_started = False
        self.resp_head: Headers | None = None  # a head held back until the answer ends
        self.resp_ended = False  # the response body is complete (buffered or sent)
        self.resp_trailers: Headers | None = None
        self.resp_done = False  # END_STREAM or RST_STREAM went to the client
        self.head_only = False  # HEAD, 204, 304: no body may follow (RFC 9110 §6.4.1)
        self.recorded = False

    @property
    def stolen(self) -> bool:
        return self.route.steal_by is not None
