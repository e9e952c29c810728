"""The answers of one HTTP/1.1 connection to its remote client (sans-I/O): a passed
request's response relayed from the original app byte for byte, and a stolen request's
answer from the local app framed for the client. A part of ``Http1Router``
(``waylay.core.engine.http1``), which inherits these methods: the driver's calls reach them
with no layer in between (docs/architecture.md, "The hot path").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from waylay.core.engine.http1_body import LAST_CHUNK, BodyReader, chunk
from waylay.core.engine.http1_exchange import Exchange, Tunnel
from waylay.core.engine.http1_framing import (
    CHUNKED,
    NO_BODY,
    UNTIL_CLOSE,
    length,
    parse_response_head,
    response_head_bytes,
)
from waylay.core.engine.http1_sink import Http1Sink
from waylay.core.engine.http1_syntax import HttpParseError
from waylay.core.engine.routing import STOLEN_MARK, VERDICT_HEADER, marked_head

# Hop-by-hop fields of the local app's response (RFC 9110 §7.6.1): they describe the
# session's connection to the local app, not ours to the remote client.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                         b"transfer-encoding", b"te", b"trailer", b"upgrade"})


class Http1Responses:
    """The response half of ``Http1Router``: its state and the rest of its methods are the
    router's (declared here for the type checker only)."""

    # No slots of its own (the state is the router's), hidden from the type checker: it
    # would check the router's assignments in these methods against them.
    if not TYPE_CHECKING:
        __slots__ = ()

    if TYPE_CHECKING:
        closed: bool
        _sink: Http1Sink
        _down: bytearray
        _up: bytearray
        _exchange: Exchange | None
        _tunnel: Tunnel
        _has_upstream: bool

        def _pump_downstream(self) -> None: ...
        def _finish_if_done(self, exchange: Exchange) -> bool: ...
        def _fail(self, message: str, status: int = 502) -> None: ...
        def _abort(self) -> None: ...
        def _record(self, exchange: Exchange) -> None: ...
        def _close(self) -> None: ...

    # --- upstream: the original app's responses to passed requests ---------------------

    def _pump_upstream(self) -> None:
        # Everything this call sends downstream goes out as one write.
        out: list[bytes] = []
        try:
            self._pump_upstream_into(out)
        finally:
            if out:
                self._sink.send_downstream(out[0] if len(out) == 1 else b"".join(out))

    def _pump_upstream_into(self, out: list[bytes]) -> None:
        up = self._up
        while not self.closed and up:
            if self._tunnel is Tunnel.UPSTREAM:
                out.append(bytes(up))
                up.clear()
                return
            exchange = self._exchange
            if exchange is None or exchange.stolen or exchange.response_done:
                # Bytes nobody asked for: this connection can't be trusted any more.
                up.clear()
                self._release_upstream(False)
                return
            record = exchange.record
            if exchange.response is None:
                try:
                    head = parse_response_head(up, request_method=exchange.request.method)
                except HttpParseError as exc:
                    self._release_upstream(False)
                    self._flush(out)
                    self._fail(f"waylay: the original app sent a bad response: {exc.message}")
                    return
                if head is None:
                    return
                out.append(head.raw if not exchange.route.mark else marked_head(head.raw))
                if head.status < 200:  # informational: another head follows
                    if head.status == 101:
                        self._flush(out)
                        self._switch_protocols(exchange)
                    continue
                exchange.response = head
                if record.request_headers is not None:
                    record.response_headers = head.headers
                exchange.response_body = BodyReader(head.framing)
                exchange.response_started = True
                record.status = head.status
                if not head.keep_alive:
                    exchange.close_after = True
            body = exchange.response_body
            assert body is not None
            if not body.done:
                try:
                    raw, decoded = body.read(up)
                except HttpParseError:
                    self._flush(out)
                    self._abort()
                    return
                if raw:
                    out.append(raw)
                if decoded:
                    record.bytes_out += len(decoded)
                    if record.response_body is not None:
                        record.capture_response_body(decoded)
                if not body.done:
                    return
            exchange.response_done = True
            if up:  # bytes after the response: not a connection to reuse
                up.clear()
                exchange.close_after = True
            self._flush(out)
            self._finish_if_done(exchange)
            if self._exchange is None:
                self._pump_downstream()
            return

    def _flush(self, out: list[bytes]) -> None:
        """Send what ``_pump_upstream`` collected now: something else is sent next."""
        if out:
            self._sink.send_downstream(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _switch_protocols(self, exchange: Exchange) -> None:
        """101 to a passed upgrade: from now on bytes flow untouched both ways."""
        self._tunnel = Tunnel.UPSTREAM
        exchange.record.status = 101
        exchange.response_started = exchange.response_done = True
        exchange.request_done = True
        self._record(exchange)
        self._exchange = None
        if self._down:
            self._sink.send_upstream(bytes(self._down))
            self._down.clear()

    def _upstream_closed(self, reason: str | None) -> None:
        if not self._has_upstream:
            return
        self._has_upstream = False
        self._sink.release_upstream(False)
        if self._tunnel is Tunnel.UPSTREAM:
            self._close()
            return
        exchange = self._exchange
        if exchange is None or exchange.stolen or exchange.response_done:
            return
        body = exchange.response_body
        if body is not None and exchange.response is not None and (
            exchange.response.framing.kind == "close"
        ):
            body.eof()
            exchange.response_done = True
            exchange.close_after = True
            self._finish_if_done(exchange)
            return
        why = reason or "it closed the connection before the response was complete"
        self._fail(f"waylay: the original app failed: {why}")

    def _release_upstream(self, reusable: bool) -> None:
        if self._has_upstream:
            self._has_upstream = False
            self._up.clear()
            self._sink.release_upstream(reusable)

    # --- the local app's response to a stolen request ----------------------------------

    def _local_head(self, status: int, reason: bytes,
                    headers: list[tuple[bytes, bytes]]) -> None:
        exchange = self._exchange
        if exchange is None or not exchange.stolen or exchange.response_started:
            return
        request = exchange.request
        if status == 101 and request.upgrade:
            self._local_switch(exchange, reason, headers)
            return
        kept = []
        value: bytes | None = None  # the first Content-Length
        for name, field in headers:  # one pass: this runs for every stolen answer
            lower = name.lower()
            if lower not in _HOP_BY_HOP:
                if value is None and lower == b"content-length":
                    value = field
                kept.append((name, field))
        if request.method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
            framing = NO_BODY
        elif value is not None:
            framing = length(int(value)) if value.strip().isdigit() else UNTIL_CLOSE
        elif request.version == b"1.1":
            framing = CHUNKED
            kept.append((b"Transfer-Encoding", b"chunked"))
        else:
            framing = UNTIL_CLOSE  # HTTP/1.0 client: the end of the body is the close
        if framing is UNTIL_CLOSE:
            exchange.close_after = True
        if exchange.close_after:
            kept.append((b"Connection", b"close"))
        elif request.version == b"1.0":
            kept.append((b"Connection", b"keep-alive"))
        if exchange.route.mark:
            kept.append((VERDICT_HEADER, STOLEN_MARK))
        exchange.stolen_framing = framing
        if exchange.record.request_headers is not None:
            exchange.record.response_headers = kept
        exchange.response_started = True
        exchange.record.status = status
        self._sink.send_downstream(response_head_bytes(status, reason, kept))

    def _local_switch(self, exchange: Exchange, reason: bytes,
                      headers: list[tuple[bytes, bytes]]) -> None:
        """The local app accepted a stolen upgrade (RFC 9110 §7.8): the connection is its
        now, both ways, byte for byte (a WebSocket to the local app)."""
        kept = [(n, v) for n, v in headers
                if n.lower() not in (b"content-length", b"transfer-encoding")]
        self._sink.send_downstream(response_head_bytes(101, reason, kept))
        self._tunnel = Tunnel.LOCAL
        exchange.record.status = 101
        exchange.response_started = exchange.response_done = True
        self._record(exchange)
        self._exchange = None
        self._pump_downstream()  # bytes the client sent right behind its request

    def _local_data(self, data: bytes) -> None:
        if self._tunnel is Tunnel.LOCAL:
            self._sink.send_downstream(data)
            return
        exchange = self._exchange
        if (exchange is None or not exchange.stolen or not exchange.response_started
                or exchange.response_done or not data):
            return
        framing = exchange.stolen_framing
        if framing.kind == "none":
            return
        exchange.record.bytes_out += len(data)
        if exchange.record.response_body is not None:
            exchange.record.capture_response_body(data)
        self._sink.send_downstream(chunk(data) if framing is CHUNKED else data)

    def _local_end(self) -> None:
        if self._tunnel is Tunnel.LOCAL:
            self._close()  # the local app ended the upgraded connection
            return
        exchange = self._exchange
        if (exchange is None or not exchange.stolen or not exchange.response_started
                or exchange.response_done):
            return
        if exchange.stolen_framing is CHUNKED:
            self._sink.send_downstream(LAST_CHUNK)
        exchange.response_done = True
        self._finish_if_done(exchange)
        if self._exchange is None:
            self._pump_downstream()


__all__ = ["Http1Responses"]
