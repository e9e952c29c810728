"""Per-request records for a connection waylay relays whole (sans-I/O, built on h11).

A port stolen without a filter hands whole TCP connections to the local app: nothing is
routed per request. Users still want one event per HTTP request, so the relay shows the
bytes of both directions to an ``Http1Observer``. It replays them through two h11
connections that mirror the two peers' roles (a server fed the client's bytes, a client
fed the server's), which keeps request/response framing exact, including pipelining and
HEAD. Anything that is not HTTP/1.1, or an upgrade, turns the observer off for good; the
relay then reports the connection as one ``tcp`` record. Observing never changes a byte.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import h11

from waylay.core.engine.flow import FlowRecord, Verdict

MAX_HEAD_BYTES = 64 * 1024


class Http1Observer:
    """Watches one relayed connection; returns a record for each exchange it sees end."""

    def __init__(self, *, port: int, verdict: Verdict, matched: str | None,
                 next_id: Callable[[], int]) -> None:
        self._port = port
        self._verdict = verdict
        self._matched = matched
        self._next_id = next_id
        self._as_server = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._as_client = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._open: deque[FlowRecord] = deque()
        self.active = True
        self.seen = 0  # requests observed so far

    def from_client(self, data: bytes, now: float) -> list[FlowRecord]:
        """Bytes the remote client sent (b"" at its EOF)."""
        if self.active:
            try:
                self._as_server.receive_data(data)
                self._pump_requests(now)
            except h11.ProtocolError:
                self.active = False
        return []

    def from_server(self, data: bytes, now: float) -> list[FlowRecord]:
        """Bytes the answering app sent; returns the records of exchanges now complete."""
        done: list[FlowRecord] = []
        if self.active:
            try:
                self._as_client.receive_data(data)
                self._pump_responses(now, done)
            except h11.ProtocolError:
                self.active = False
        return done

    def _pump_requests(self, now: float) -> None:
        while True:
            event = self._as_server.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._open.append(FlowRecord(
                    id=self._next_id(), ts=now, port=self._port, protocol="http/1.1",
                    verdict=self._verdict, method=event.method.decode("latin-1"),
                    authority=_host(event), path=event.target.decode("latin-1"),
                    matched=self._matched,
                ))
                self.seen += 1
            elif isinstance(event, h11.Data) and self._open:
                self._open[-1].bytes_in += len(event.data)
            elif isinstance(event, h11.ConnectionClosed):
                return
            self._sync(self._as_client, event)

    def _pump_responses(self, now: float, done: list[FlowRecord]) -> None:
        while True:
            event = self._as_client.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                self.active = False  # upgraded: no more HTTP/1.1 on this connection
                return
            if isinstance(event, h11.Response) and self._open:
                self._open[0].status = event.status_code
            elif isinstance(event, h11.Data) and self._open:
                self._open[0].bytes_out += len(event.data)
            self._sync(self._as_server, event)
            if isinstance(event, h11.EndOfMessage) and self._open:
                record = self._open.popleft()
                record.finish(now)
                done.append(record)
                self._next_cycle(now)

    def _next_cycle(self, now: float) -> None:
        server, client = self._as_server, self._as_client
        if server.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE} and (
            client.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}
        ):
            server.start_next_cycle()
            client.start_next_cycle()
            self._pump_requests(now)  # pipelined requests h11 held back
        elif server.our_state in (h11.MUST_CLOSE, h11.CLOSED):
            self.active = False

    @staticmethod
    def _sync(conn: h11.Connection, event: Any) -> None:
        """Replay an event on the mirror connection so its state machine keeps up."""
        conn.send(event)


def _host(request: h11.Request) -> str | None:
    for name, value in request.headers:
        if name == b"host":
            return bytes(value).decode("latin-1")
    return None
