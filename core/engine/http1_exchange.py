"""The state of one HTTP/1.1 connection's request in flight, as ``waylay.core.engine.http1``
keeps it (sans-I/O): the exchange on the general path, the fast lane's simple request, and
what the connection became after a 101.
"""

from __future__ import annotations

import enum

from waylay.core.engine.filters import RequestView
from waylay.core.engine.flow import FlowRecord, FlowRow
from waylay.core.engine.http1_body import BodyReader
from waylay.core.engine.http1_framing import NO_BODY, Framing, RequestHead, ResponseHead
from waylay.core.engine.routing import Route


class Tunnel(enum.Enum):
    """What the connection is after a 101: still HTTP, or raw bytes to one side."""

    NONE = "none"
    UPSTREAM = "upstream"  # a passed upgrade: bytes relayed to the original app
    LOCAL = "local"  # a stolen upgrade: bytes relayed to the session's local app


class Exchange:
    """The request in flight and what has happened to it so far."""

    __slots__ = ("close_after", "hold", "record", "request", "request_body", "request_done",
                 "response", "response_body", "response_done", "response_started",
                 "route", "stolen", "stolen_framing")

    def __init__(self, request: RequestHead, record: FlowRecord, route: Route) -> None:
        self.request = request
        self.record = record
        self.route = route
        self.stolen = route.steal_by is not None
        self.request_body = BodyReader(request.framing)
        self.request_done = False
        self.response: ResponseHead | None = None  # passed requests: the upstream head
        self.response_body: BodyReader | None = None
        self.response_started = False
        self.response_done = False
        self.stolen_framing: Framing = NO_BODY  # stolen requests: how we frame the answer
        self.close_after = not request.keep_alive
        self.hold: BodyHold | None = None  # undecided until its body is read (body filter)


class BodyHold:
    """A request held back while its body is read for a body filter: nothing of it has
    left yet. Bounded by ``limit`` body bytes (plus one read) and by ``deadline``."""

    __slots__ = ("continued", "deadline", "decoded", "limit", "raw", "view")

    def __init__(self, view: RequestView, limit: int, deadline: float) -> None:
        self.view = view
        self.limit = limit
        self.deadline = deadline
        self.raw = bytearray()  # the body as it came (chunk framing included)
        self.decoded = bytearray()  # its payload, what the filter reads
        self.continued = False  # a 100 Continue went out to get the body


class Lane:
    """A simple request sent upstream whole, awaiting its response (the fast lane)."""

    __slots__ = ("keep_alive", "method", "raw", "route", "row")

    def __init__(self, raw: bytes, method: str, row: FlowRow, route: Route,
                 keep_alive: bool) -> None:
        self.raw = raw
        self.method = method
        self.row = row  # its flow record, as a wire row (ts: the start, unrounded)
        self.route = route
        self.keep_alive = keep_alive


__all__ = ["BodyHold", "Exchange", "Lane", "Tunnel"]
