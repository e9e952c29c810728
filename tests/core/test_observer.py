"""The observer turns the bytes of a whole relayed connection into per-request records."""

from __future__ import annotations

import itertools

from waylay.core.engine.flow import Verdict
from waylay.core.engine.observer import Http1Observer


def observer() -> Http1Observer:
    return Http1Observer(port=80, verdict=Verdict.STOLEN, matched="whole port",
                         next_id=itertools.count(1).__next__)


def test_pipelined_exchanges_are_recorded_in_order() -> None:
    """Two pipelined requests give two records with their own status and sizes."""
    obs = observer()
    obs.from_client(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\n"
                    b"Content-Length: 3\r\n\r\nxyz", 1.0)
    first = obs.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1.25)
    second = obs.from_server(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"4\r\ndone\r\n0\r\n\r\n", 1.5)
    assert [(r.path, r.status, r.bytes_out) for r in first] == [("/a", 200, 2)]
    assert [(r.method, r.path, r.status, r.bytes_in, r.bytes_out) for r in second] == [
        ("POST", "/b", 201, 3, 4)]
    assert first[0].duration_ms == 250.0 and first[0].authority == "h"


def test_non_http_turns_the_observer_off() -> None:
    """A binary protocol is not HTTP: no records, observer inactive."""
    obs = observer()
    obs.from_client(b"\x16\x03\x01\x00\x05hello", 0.0)
    assert not obs.active and obs.from_server(b"\x16\x03", 0.1) == []


def test_upgrade_stops_observing() -> None:
    """After a 101 the bytes are no longer HTTP/1.1 and are not parsed."""
    obs = observer()
    obs.from_client(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\n", 0.0)
    obs.from_server(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\n\x81\x05hello", 0.1)
    assert not obs.active


def test_head_response_without_body() -> None:
    """A HEAD answer completes at its head, whatever its Content-Length says."""
    obs = observer()
    obs.from_client(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", 0.0)
    (record,) = obs.from_server(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", 0.1)
    assert record.method == "HEAD" and record.bytes_out == 0
