"""The HTTP/2 router's per-stream state and header translations (sans-I/O).

``waylay.core.engine.h2_router`` decides and moves; this module holds what it moves with: the
windows both connections advertise (which are also the router's buffer bounds), ``RequestHead``
(a client's request head, parsed and checked once per distinct header block),
``StreamState`` (where one stream stands in each direction), and the header translations
between an h2 stream and a session's request or response head.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Final

from hpack import HeaderTuple

from waylay.core.engine.filters import RequestView
from waylay.core.engine.flow import FlowRecord
from waylay.core.engine.routing import Route

# The windows we advertise to both peers. They are also the bound of what the router
# buffers per stream and per connection in each direction: a peer may not send more than
# this before we acknowledge, and we acknowledge only what the other side took. 256 KiB
# per stream keeps a veth or loopback path busy; 1 MiB per connection lets four streams
# run at full speed at once.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 1024 * 1024
DEFAULT_WINDOW = 65_535  # RFC 9113 §6.9.2: every window starts here
# Streams a client may open at once on one connection (RFC 9113 §5.1.2); more are
# refused. The original app's own limit is honoured separately (passed streams queue).
MAX_CONCURRENT_STREAMS = 128

# Connection-specific fields (RFC 9113 §8.2.2): never in an HTTP/2 message; some may come
# from an HTTP/1.1 local app and are dropped from its answers.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                        b"transfer-encoding", b"te", b"upgrade"})
NO_BODY_STATUS = frozenset({204, 304})
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})

# RFC 9113 §8.2.1: names never hold controls, space, upper case or non-ASCII; values
# never hold NUL, CR or LF, nor start or end with whitespace.
_BAD_NAME = re.compile(rb"[\x00-\x20A-Z\x7f-\xff]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")

Headers = list[tuple[bytes, bytes]]


class MalformedHead(Exception):
    """A request or trailer block breaks RFC 9113 §8 (a stream error, PROTOCOL_ERROR)."""


def _check_fields(fields: list[HeaderTuple]) -> None:
    for name, value in fields:
        if not name or _BAD_NAME.search(name, 1 if name[:1] == b":" else 0):
            raise MalformedHead(f"invalid field name {name!r}")
        if value and _BAD_VALUE.search(value):
            raise MalformedHead(f"invalid value in field {name!r}")
        if name in HOP_BY_HOP and not (name == b"te" and value == b"trailers"):
            raise MalformedHead(f"connection-specific field {name!r}")


class RequestHead:
    """A client's request head, parsed and checked (RFC 9113 §8.3.1) once per block."""

    __slots__ = ("authority", "content_length", "encoded", "expect_continue", "fields",
                 "method", "path", "regular", "shown", "view")

    def __init__(self, fields: list[HeaderTuple]) -> None:
        _check_fields(fields)
        pseudo: dict[bytes, bytes] = {}
        regular: Headers = []
        for name, value in fields:
            if name[:1] == b":":
                if regular:
                    raise MalformedHead("a pseudo-header field after a regular one")
                if name not in _REQUEST_PSEUDO or name in pseudo:
                    raise MalformedHead(f"unknown or repeated pseudo-header field {name!r}")
                pseudo[name] = value
            else:
                regular.append((name, value))
        method = pseudo.get(b":method")
        if not method:
            raise MalformedHead("no :method")
        if method == b"CONNECT":
            if b":scheme" in pseudo or b":path" in pseudo or b":authority" not in pseudo:
                raise MalformedHead("CONNECT takes :authority only")
        elif not pseudo.get(b":scheme") or not pseudo.get(b":path"):
            raise MalformedHead("no :scheme or :path")
        self.fields = fields
        self.encoded: bytes | None = None  # the fields as ``StatelessEncoder`` writes them
        self.regular = regular
        self.method = method.decode("latin-1")
        self.path = pseudo.get(b":path", b"").decode("latin-1")
        authority = pseudo.get(b":authority")
        host = next((v for n, v in regular if n == b"host"), None)
        shown = authority if authority is not None else host
        self.authority = authority
        self.shown = shown.decode("latin-1") if shown is not None else None
        view_headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in regular]
        if authority is not None and host is None:
            # docs/architecture.md §2: :authority is offered to header filters as host.
            view_headers.insert(0, ("host", authority.decode("latin-1")))
        self.view = RequestView(method=self.method, target=self.path,
                                headers=tuple(view_headers), authority=self.shown)
        lengths = {v for n, v in regular if n == b"content-length"}
        if len(lengths) > 1 or any(not v.isdigit() for v in lengths):
            raise MalformedHead("invalid content-length")
        self.content_length = int(lengths.pop()) if lengths else None
        self.expect_continue = any(n == b"expect" and v.lower() == b"100-continue"
                                   for n, v in regular)


def check_trailers(fields: list[HeaderTuple]) -> Headers:
    """A request's trailer block, checked: no pseudo-header fields (RFC 9113 §8.1)."""
    _check_fields(fields)
    if any(n[:1] == b":" for n, _ in fields):
        raise MalformedHead("a pseudo-header field in trailers")
    return list(fields)


def status_of(fields: list[HeaderTuple]) -> int | None:
    """A response block's :status, or None when it has none (trailers) or a bad one."""
    for name, value in fields:
        if name == b":status":
            return int(value) if value.isdigit() else None
    return None


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


class Upload(IntEnum):
    """Where a stream's request stands (``StreamState.req``)."""

    OPEN = 0  # the client may send more of it
    ENDED = 1  # the client sent END_STREAM
    SENT = 2  # passed streams: the end (END_STREAM or trailers) went upstream too


class Answer(IntEnum):
    """Where a stream's response stands, as its source gave it (``StreamState.resp``)."""

    NONE = 0  # no final head yet (1xx heads are forwarded without a state change)
    HEAD = 1  # the final head came (sent, or held for a Trailers-Only answer)
    COMPLETE = 2  # the body and any trailers came (buffered or sent)


# Module names for the per-frame paths: a global lookup, compared by identity.
REQ_OPEN: Final = Upload.OPEN
REQ_ENDED: Final = Upload.ENDED
REQ_SENT: Final = Upload.SENT
ANS_NONE: Final = Answer.NONE
ANS_HEAD: Final = Answer.HEAD
ANS_COMPLETE: Final = Answer.COMPLETE


class StreamState:
    """One downstream stream and where it stands in each direction.

    Each direction moves forward only, one step per event; a missing row is a bug::

        req   OPEN  -> ENDED     the client's END_STREAM (on HEADERS, DATA or trailers),
                                 or the stream reset (either side): nothing more is read
              ENDED -> SENT      passed: the request's end went upstream
              OPEN  -> SENT      passed: HEADERS with END_STREAM opened it upstream
        resp  NONE  -> HEAD      the final head (from the app, the local app or a 502/504)
              HEAD  -> COMPLETE  END_STREAM from the app, LocalEnd, or a whole error body

    Two flags cut a direction short at any point: ``req_discard`` (the answer is over, or
    failed: request bytes still coming are acknowledged and dropped) and ``resp_done``
    (END_STREAM or RST_STREAM went to the client: nothing more is sent there). A reset
    before the answer completed leaves ``resp`` where it was, with ``resp_done`` set.

    Windows are kept as *credit*: a stream's send window towards a peer is that peer's
    current SETTINGS_INITIAL_WINDOW_SIZE plus the credit, so a settings change applies to
    every stream at once (RFC 9113 §6.9.2) without visiting them.
    """

    __slots__ = (
        "down_credit",
        "down_id",
        "down_recv",
        "down_unacked",
        "head",
        "head_only",
        "mirrored",
        "record",
        "recorded",
        "req",
        "req_buf",
        "req_discard",
        "req_left",
        "req_trailers",
        "resp",
        "resp_buf",
        "resp_done",
        "resp_head",
        "resp_trailers",
        "route",
        "stolen",
        "up_credit",
        "up_id",
        "up_recv",
        "up_unacked",
    )

    def __init__(self, down_id: int, route: Route, record: FlowRecord,
                 head: RequestHead) -> None:
        self.down_id = down_id
        self.route = route
        self.record = record
        self.head = head
        self.stolen = route.steal_by is not None
        self.mirrored = bool(route.mirror_to)
        self.up_id: int | None = None
        # client -> original app or session
        self.down_recv = STREAM_WINDOW  # what the client may still send on this stream
        self.down_unacked = 0  # handed on, not yet returned to the client
        self.req_left = head.content_length  # body bytes still announced (RFC 9113 §8.1.1)
        self.req_buf = bytearray()  # passed: waiting for the upstream window
        self.req: Upload = REQ_OPEN
        self.req_trailers: bytes | None = None  # passed: the encoded trailer block
        self.req_discard = False  # the answer is complete: further body is dropped
        self.up_credit = 0  # send window towards the original app, beyond its initial one
        # original app or local app -> client
        self.up_recv = STREAM_WINDOW  # what the original app may still send us
        self.up_unacked = 0
        self.down_credit = 0  # send window towards the client, beyond its initial one
        self.resp_buf = bytearray()  # waiting for the client's window
        self.resp: Answer = ANS_NONE
        self.resp_head: bytes | None = None  # an encoded head held until the answer ends
        self.resp_trailers: bytes | None = None  # encoded, sent after the body
        self.resp_done = False  # END_STREAM or RST_STREAM went to the client
        self.head_only = head.method == "HEAD"  # no body may follow (RFC 9110 §6.4.1)
        self.recorded = False
