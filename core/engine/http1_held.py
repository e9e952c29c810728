"""A request held back for a body filter (sans-I/O): its body read, within bounds, before
anything of it leaves. A part of ``Http1Router`` (``waylay.core.engine.http1``), which
inherits these methods, as it does ``Http1Responses``.

mirrord's body filter reads the whole body (docs/architecture.md §2). When a port's
filter cannot decide a request from its head (``Route.wants_body``), the router keeps the
request, head and body as they came, until one of:

* the body is complete: the filters decide with it;
* more than ``body_limit`` body bytes arrived (``agent.max_body_buffer_size``), or the
  driver says ``body_deadline`` passed (``agent.max_body_buffer_timeout``): the filters
  decide without it (``BodySkip.TOO_LARGE`` / ``TIMEOUT``: no body clause matches).

Then the request goes where the route says with every byte it came with (a passed one
byte-exact, chunk framing included) and the rest of its body follows as usual; the flow
record of a request passed undecided says why (``FlowRecord.body_skipped``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from waylay.core.engine.body_filter import BodySkip
from waylay.core.engine.http1_exchange import BodyHold, Exchange
from waylay.core.engine.http1_sink import Http1Sink
from waylay.core.engine.http1_syntax import HttpParseError
from waylay.core.engine.routing import Decide


class Http1Held:
    """The held-request part of ``Http1Router``: its state and the rest of its methods are
    the router's (declared here for the type checker only)."""

    if not TYPE_CHECKING:
        __slots__ = ()

    if TYPE_CHECKING:
        closed: bool
        _sink: Http1Sink
        _down: bytearray
        _down_eof: bool
        _now: float
        _exchange: Exchange | None
        _decide: Decide

        def _pump_downstream(self) -> None: ...
        def _dispatch(self, exchange: Exchange) -> None: ...
        def _bad_request(self, exc: HttpParseError) -> None: ...

    @property
    def body_deadline(self) -> float | None:
        """When the request held for its body is passed undecided (the driver calls
        ``body_timeout`` then); None when no request is held."""
        exchange = self._exchange
        return None if exchange is None or exchange.hold is None else exchange.hold.deadline

    def body_timeout(self, now: float) -> None:
        """``body_deadline`` has passed: decide without the rest of the body."""
        exchange = self._exchange
        if self.closed or exchange is None or exchange.hold is None:
            return
        self._now = now
        self._release_held(exchange, exchange.hold, BodySkip.TIMEOUT)
        self._pump_downstream()

    def _read_held(self, exchange: Exchange, hold: BodyHold) -> bool:
        """Read the held request's body; True once it is decided (and sent on)."""
        body = exchange.request_body
        try:
            raw, decoded = body.read(self._down)
            if self._down_eof and not body.done:
                body.eof()
        except HttpParseError as exc:
            self._bad_request(exc)
            return False
        hold.raw += raw
        hold.decoded += decoded
        if len(hold.decoded) > hold.limit:
            self._release_held(exchange, hold, BodySkip.TOO_LARGE)
        elif body.done:
            self._release_held(exchange, hold, bytes(hold.decoded))
        else:
            return False
        return not self.closed

    def _release_held(self, exchange: Exchange, hold: BodyHold,
                      body: bytes | BodySkip) -> None:
        """Decide the held request with ``body`` (or why there is none), send its head and
        what was read of its body where the route says, as it came."""
        exchange.route = self._decide(hold.view, body)
        self._dispatch(exchange)  # reads hold.continued: no second 100 Continue
        exchange.hold = None
        decoded = bytes(hold.decoded)
        if decoded:
            record = exchange.record
            record.bytes_in += len(decoded)
            if record.request_body is not None:
                record.capture_request_body(decoded)
            if exchange.route.mirror_to:
                self._sink.mirror_data(decoded)
            if exchange.stolen:
                self._sink.steal_data(decoded)
        if hold.raw and not exchange.stolen:
            self._sink.send_upstream(bytes(hold.raw))
