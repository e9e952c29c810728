"""Playbook tests of the sans-I/O HTTP/1.1 router: events in, commands out."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waylay.core.engine.events import request_event, to_json
from waylay.core.engine.filters import RequestView
from waylay.core.engine.http1 import Http1Router
from waylay.core.engine.http1_sink import CommandRecorder
from waylay.core.engine.routing import (
    PASS,
    CloseDownstream,
    Command,
    ConnectUpstream,
    DownstreamClosed,
    DownstreamData,
    LocalAborted,
    LocalData,
    LocalEnd,
    LocalResponse,
    MirrorEnd,
    MirrorStart,
    RecordFlow,
    ReleaseUpstream,
    Route,
    SendDownstream,
    SendUpstream,
    StealData,
    StealEnd,
    StealStart,
    UpstreamClosed,
    UpstreamData,
)


def steal_if_header(view: RequestView) -> Route:
    """Steal requests carrying ``X-Steal: yes`` (a stand-in for a compiled filter)."""
    if any(n.lower() == "x-steal" and v == "yes" for n, v in view.headers):
        return Route(steal_by=7, clause="header_filter: X-Steal: yes")
    return PASS


def router() -> Http1Router:
    return Http1Router(port=80, authority="10.0.0.2:80", decide=steal_if_header,
                       next_id=itertools.count(1).__next__)


def of(commands: list[Command], kind: type) -> list[Any]:
    return [c for c in commands if isinstance(c, kind)]


def down_bytes(commands: list[Command]) -> bytes:
    return b"".join(c.data for c in of(commands, SendDownstream))


def up_bytes(commands: list[Command]) -> bytes:
    return b"".join(c.data for c in of(commands, SendUpstream))


GET = b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n"
GET_STEAL = b"GET /b HTTP/1.1\r\nHost: svc\r\nX-Steal: yes\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nremote"


def test_passed_request_goes_upstream_and_response_comes_back() -> None:
    """An unmatched request is re-sent upstream; the answer returns and is recorded passed."""
    r = router()
    out = r.handle(DownstreamData(data=GET), 1.0)
    assert of(out, ConnectUpstream)
    assert up_bytes(out).startswith(b"GET /a HTTP/1.1\r\n")
    out = r.handle(UpstreamData(data=OK), 1.5)
    assert down_bytes(out).endswith(b"remote")
    (rec,) = of(out, RecordFlow)
    assert rec.owner is None and rec.record.status == 200
    assert rec.record.verdict == "passed" and rec.record.duration_ms == 500.0


def test_stolen_request_goes_to_the_session() -> None:
    """A matched request becomes Steal* commands and the local answer goes downstream."""
    r = router()
    out = r.handle(DownstreamData(data=GET_STEAL), 1.0)
    (start,) = of(out, StealStart)
    assert start.sub_id == 7 and start.target == "/b" and of(out, StealEnd)
    assert not of(out, ConnectUpstream)
    out = r.handle(LocalResponse(status=201, reason=b"Created",
                                 headers=[(b"content-length", b"5")]), 1.1)
    out += r.handle(LocalData(data=b"local"), 1.1)
    out += r.handle(LocalEnd(), 1.2)
    assert down_bytes(out).startswith(b"HTTP/1.1 201 Created\r\n")
    assert down_bytes(out).endswith(b"local")
    (rec,) = of(out, RecordFlow)
    assert rec.owner == 7 and rec.record.matched == "header_filter: X-Steal: yes"


def test_keep_alive_mixes_stolen_and_passed_in_order() -> None:
    """Pipelined requests on one connection are routed one by one and answered in order."""
    r = router()
    out = r.handle(DownstreamData(data=GET + GET_STEAL + GET), 0.0)
    # Only the first is in flight: h11 holds the rest until its response is complete.
    assert len(of(out, ConnectUpstream)) == 1 and not of(out, StealStart)
    out = r.handle(UpstreamData(data=OK), 0.1)
    assert down_bytes(out).endswith(b"remote")
    assert of(out, StealStart)  # the second request now goes to the session
    out = r.handle(LocalResponse(status=200, reason=b"OK",
                                 headers=[(b"content-length", b"5")]), 0.2)
    out += r.handle(LocalData(data=b"local"), 0.2)
    out += r.handle(LocalEnd(), 0.2)
    assert down_bytes(out).startswith(b"HTTP/1.1 200 OK") and b"local" in down_bytes(out)
    # The third reuses the same upstream connection: no new ConnectUpstream.
    assert up_bytes(out).startswith(b"GET /a") and not of(out, ConnectUpstream)


def test_expect_100_continue_on_a_passed_request_is_the_apps_to_answer() -> None:
    """A passed request keeps its Expect header; the app's 100 Continue is relayed."""
    r = router()
    head = (b"POST /up HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\n"
            b"Content-Length: 4\r\n\r\n")
    out = r.handle(DownstreamData(data=head), 0.0)
    assert up_bytes(out) == head and not down_bytes(out)
    out = r.handle(UpstreamData(data=b"HTTP/1.1 100 Continue\r\n\r\n"), 0.0)
    assert down_bytes(out) == b"HTTP/1.1 100 Continue\r\n\r\n"
    out = r.handle(DownstreamData(data=b"body"), 0.0)
    assert up_bytes(out) == b"body"


def test_expect_100_continue_on_a_stolen_request_is_answered_by_the_router() -> None:
    """A stolen request waiting for 100-continue gets it at once; Expect is not forwarded."""
    r = router()
    head = (b"POST /up HTTP/1.1\r\nHost: svc\r\nX-Steal: yes\r\nExpect: 100-continue\r\n"
            b"Content-Length: 4\r\n\r\n")
    out = r.handle(DownstreamData(data=head), 0.0)
    assert down_bytes(out) == b"HTTP/1.1 100 Continue\r\n\r\n"
    (start,) = of(out, StealStart)
    assert all(name.lower() != b"expect" for name, _ in start.headers)


def test_chunked_request_body_is_streamed_to_the_session() -> None:
    """A chunked upload reaches the session as its decoded data, then StealEnd."""
    r = router()
    head = (b"POST /b HTTP/1.1\r\nHost: svc\r\nX-Steal: yes\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    out = r.handle(DownstreamData(data=head + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), 0.0)
    assert b"".join(c.data for c in of(out, StealData)) == b"abcde"
    assert of(out, StealEnd)


def test_malformed_request_gets_400_and_close() -> None:
    """Garbage on the wire is answered with h11's suggested status, then closed."""
    r = router()
    out = r.handle(DownstreamData(data=b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 0.0)
    assert down_bytes(out).startswith(b"HTTP/1.1 400 ")
    assert of(out, CloseDownstream) and r.closed


def test_upstream_failure_becomes_502() -> None:
    """A passed request whose upstream connection fails is answered 502 with the reason."""
    r = router()
    r.handle(DownstreamData(data=GET), 0.0)
    out = r.handle(UpstreamClosed(reason="connection refused"), 0.1)
    assert down_bytes(out).startswith(b"HTTP/1.1 502 ")
    assert b"connection refused" in down_bytes(out)
    assert of(out, ReleaseUpstream)


def test_session_abort_before_response_is_502() -> None:
    """A stolen request the session cannot deliver is answered 502."""
    r = router()
    r.handle(DownstreamData(data=GET_STEAL), 0.0)
    out = r.handle(LocalAborted(reason="link lost"), 0.1)
    assert down_bytes(out).startswith(b"HTTP/1.1 502 ")


def test_a_local_app_that_timed_out_is_answered_with_the_abort_status() -> None:
    """An abort carrying 504 (the local app's time is up) answers 504 with the reason,
    records it, and closes the connection; the steal named the flow record it reports."""
    r = router()
    (start,) = of(r.handle(DownstreamData(data=GET_STEAL), 0.0), StealStart)
    out = r.handle(LocalAborted(reason="no answer from 127.0.0.1:8080 within 2 s",
                                status=504), 2.0)
    sent = down_bytes(out)
    assert sent.startswith(b"HTTP/1.1 504 ")
    assert sent.endswith(b"waylay: the local app failed: no answer from 127.0.0.1:8080 "
                         b"within 2 s\n")
    (rec,) = of(out, RecordFlow)
    assert rec.record.status == 504 and rec.owner == 7
    assert start.flow_id == rec.record.id
    assert of(out, CloseDownstream)


def test_an_abort_after_the_answer_began_cuts_the_connection_whatever_its_status() -> None:
    """Once the local app's head went out, an abort cannot become a 504: the connection
    is cut instead (the client sees a truncated answer, never a second head)."""
    r = router()
    r.handle(DownstreamData(data=GET_STEAL), 0.0)
    r.handle(LocalResponse(status=200, reason=b"OK",
                           headers=[(b"Content-Length", b"10")]), 0.1)
    out = r.handle(LocalAborted(reason="late", status=504), 0.2)
    assert b"504" not in down_bytes(out)
    assert of(out, CloseDownstream)


def test_client_close_mid_body_aborts_the_stolen_stream() -> None:
    """When the remote client vanishes in the middle of a stolen upload the stream is aborted."""
    r = router()
    r.handle(DownstreamData(data=b"POST /b HTTP/1.1\r\nHost: svc\r\nX-Steal: yes\r\n"
                                 b"Content-Length: 10\r\n\r\nabc"), 0.0)
    out = r.handle(DownstreamClosed(), 0.1)
    assert any(type(c).__name__ == "StealAbort" for c in out)
    assert of(out, CloseDownstream)


def test_half_closed_client_still_gets_its_answer() -> None:
    """A client that shuts down its sending side after a full request is still answered."""
    r = router()
    r.handle(DownstreamData(data=GET_STEAL), 0.0)
    assert not r.handle(DownstreamClosed(), 0.1)
    out = r.handle(LocalResponse(status=200, reason=b"OK",
                                 headers=[(b"content-length", b"2")]), 0.2)
    out += r.handle(LocalData(data=b"ok"), 0.2) + r.handle(LocalEnd(), 0.2)
    assert down_bytes(out).endswith(b"ok") and of(out, CloseDownstream)


def test_head_response_has_no_body() -> None:
    """A HEAD answer with Content-Length is relayed without waiting for a body."""
    r = router()
    r.handle(DownstreamData(data=b"HEAD /a HTTP/1.1\r\nHost: svc\r\n\r\n"), 0.0)
    out = r.handle(UpstreamData(data=b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"), 0.1)
    assert of(out, RecordFlow)
    assert down_bytes(out).endswith(b"\r\n\r\n")


def test_missing_host_is_added_for_the_session() -> None:
    """A stolen HTTP/1.0 request without Host gets the original destination as Host."""
    r = router()
    out = r.handle(DownstreamData(data=b"GET /x HTTP/1.0\r\nX-Steal: yes\r\n\r\n"), 0.0)
    (start,) = of(out, StealStart)
    assert (b"Host", b"10.0.0.2:80") in start.headers


def test_passed_bytes_are_forwarded_unchanged() -> None:
    """A passed request and its response cross the router byte for byte."""
    r = router()
    request = (b"POST /p HTTP/1.1\r\nhOsT: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n")
    out = r.handle(DownstreamData(data=request), 0.0)
    assert up_bytes(out) == request
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    out = r.handle(UpstreamData(data=response), 0.1)
    assert down_bytes(out) == response
    (rec,) = of(out, RecordFlow)
    assert (rec.record.bytes_in, rec.record.bytes_out) == (3, 2)


def test_stolen_response_without_length_is_chunked() -> None:
    """A local response without Content-Length reaches an HTTP/1.1 client chunked."""
    r = router()
    r.handle(DownstreamData(data=GET_STEAL), 0.0)
    out = r.handle(LocalResponse(status=200, reason=b"OK", headers=[]), 0.1)
    out += r.handle(LocalData(data=b"hello"), 0.1) + r.handle(LocalEnd(), 0.1)
    assert down_bytes(out).endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in down_bytes(out)


def test_passed_upgrade_becomes_a_tunnel() -> None:
    """A 101 answer to a passed upgrade relays raw bytes both ways afterwards."""
    r = router()
    r.handle(DownstreamData(data=b"GET /ws HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\n\r\n"), 0.0)
    switch = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\n\r\nframe")
    out = r.handle(UpstreamData(data=switch), 0.1)
    assert down_bytes(out).endswith(b"\r\n\r\nframe") and of(out, RecordFlow)
    out = r.handle(DownstreamData(data=b"\x81\x02hi"), 0.2)
    assert up_bytes(out) == b"\x81\x02hi"


def test_request_bytes_fed_one_at_a_time() -> None:
    """Byte-by-byte input routes the same as the whole request."""
    r = router()
    out: list[Command] = []
    for i in range(len(GET_STEAL)):
        out += r.handle(DownstreamData(data=GET_STEAL[i:i + 1]), 0.0)
    (start,) = of(out, StealStart)
    assert start.target == "/b"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_any_downstream_bytes_give_commands_never_exceptions(data: bytes, eof: bool) -> None:
    """Arbitrary client bytes are routed, answered or refused, never a crash."""
    r = router()
    r.handle(DownstreamData(data=b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" + data), 0.0)
    r.handle(UpstreamData(data=OK), 0.1)
    if eof:
        r.handle(DownstreamClosed(), 0.2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_passthrough_is_byte_exact_under_any_split(cuts: list[int]) -> None:
    """Pipelined passed requests reach upstream byte for byte, however the input is split."""
    stream = GET + b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello" + GET
    r = router()
    sent = b""
    pos = 0
    for cut in cuts:
        sent += up_bytes(r.handle(DownstreamData(data=stream[pos:pos + cut]), 0.0))
        pos += cut
    sent += up_bytes(r.handle(DownstreamData(data=stream[pos:]), 0.0))
    for _ in range(3):  # answer each request in turn; the next one follows
        sent += up_bytes(r.handle(UpstreamData(data=OK), 0.1))
    assert sent == stream


def test_capture_records_headers_and_body_starts() -> None:
    """With capture on, the record carries both heads and the bodies' first bytes."""
    r = Http1Router(port=80, authority="10.0.0.2:80", decide=steal_if_header,
                    next_id=itertools.count(1).__next__, capture=lambda: True)
    r.handle(DownstreamData(data=b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nping"),
             0.0)
    out = r.handle(UpstreamData(data=OK), 0.1)
    event = to_json(request_event(of(out, RecordFlow)[0].record.to_row()))
    assert event["request_headers"] == [["Host", "h"], ["Content-Length", "4"]]
    assert event["response_headers"] == [["Content-Length", "6"]]
    assert (event["request_body"], event["response_body"]) == ("ping", "remote")
    assert event["body_truncated"] is False


def test_without_capture_events_have_only_the_stable_keys() -> None:
    """By default a request event has exactly docs/architecture.md §3's keys."""
    r = router()
    r.handle(DownstreamData(data=GET), 0.0)
    event = to_json(request_event(
        of(r.handle(UpstreamData(data=OK), 0.1), RecordFlow)[0].record.to_row()))
    assert set(event) == {"type", "id", "ts", "port", "protocol", "method", "authority",
                          "path", "verdict", "status", "duration_ms", "bytes_in",
                          "bytes_out", "matched"}


# --- the fast lane (waylay.core.engine.http1_simple) and its promotion to the general path
# -------------


class CountingDecide:
    """``steal_if_header`` plus a mirror rule, counting the calls per target."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, view: RequestView) -> Route:
        self.calls.append(view.target)
        if any(n.lower() == "x-mirror" and v == "yes" for n, v in view.headers):
            return Route(steal_by=None, clause="path_filter: /m", mirror_to=(9,),
                         mirror_clauses=("path_filter: /m",))
        return steal_if_header(view)


def lane_router(*, capture: bool = False) -> tuple[Http1Router, CountingDecide]:
    decide = CountingDecide()
    return Http1Router(port=80, authority="10.0.0.2:80", decide=decide,
                       next_id=itertools.count(1).__next__,
                       capture=lambda: capture), decide


GET_A = b"GET /a HTTP/1.1\r\nHost: svc\r\nAccept: */*\r\n\r\n"
GET_B = b"GET /b HTTP/1.1\r\nHost: svc\r\n\r\n"
OK_A = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Seq: a\r\n\r\nremote"
OK_B = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nbb"
CHUNKED_OK = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\nT: 1\r\n\r\n")


def only_record(commands: list[Command]) -> RecordFlow:
    (rec,) = of(commands, RecordFlow)
    return rec  # type: ignore[no-any-return]


def test_fast_lane_passes_a_simple_exchange_byte_for_byte() -> None:
    """A simple GET and its one-read answer pass as they came and are recorded."""
    r, decide = lane_router()
    out = r.handle(DownstreamData(data=GET_A), 10.0)
    assert out == [ConnectUpstream(), SendUpstream(data=GET_A)]
    out = r.handle(UpstreamData(data=OK_A), 10.25)
    assert out[0] == SendDownstream(data=OK_A)
    rec = only_record(out).record
    assert (rec.verdict, rec.status, rec.bytes_in, rec.bytes_out) == ("passed", 200, 0, 6)
    assert (rec.method, rec.path, rec.authority, rec.port) == ("GET", "/a", "svc", 80)
    assert rec.duration_ms == 250.0 and rec.ts == 10.0 and only_record(out).owner is None
    out = r.handle(DownstreamData(data=GET_B), 11.0)
    assert out == [SendUpstream(data=GET_B)]  # the same upstream: no ConnectUpstream
    out = r.handle(UpstreamData(data=OK_B), 11.5)
    assert down_bytes(out) == OK_B and only_record(out).record.status == 201
    assert decide.calls == ["/a", "/b"] and not r.closed


def test_fast_lane_response_in_two_pieces_takes_the_general_path() -> None:
    """An answer arriving in two reads is promoted: bytes exact, one record, right facts."""
    r, decide = lane_router()
    r.handle(DownstreamData(data=GET_A), 1.0)
    out = r.handle(UpstreamData(data=OK_A[:20]), 1.1)
    assert not of(out, RecordFlow)
    out += r.handle(UpstreamData(data=OK_A[20:]), 1.5)
    assert down_bytes(out) == OK_A
    rec = only_record(out).record
    assert (rec.status, rec.bytes_out, rec.duration_ms, rec.verdict) == (200, 6, 500.0, "passed")
    assert decide.calls == ["/a"] and not r.closed
    # The connection goes on: the next simple request uses the lane again.
    out = r.handle(DownstreamData(data=GET_B), 2.0)
    assert up_bytes(out) == GET_B and not of(out, ConnectUpstream)
    assert down_bytes(r.handle(UpstreamData(data=OK_B), 2.0)) == OK_B


def test_fast_lane_chunked_response_takes_the_general_path() -> None:
    """A chunked answer is promoted and relayed raw; bytes_out counts the decoded body."""
    r, _ = lane_router()
    r.handle(DownstreamData(data=GET_A), 1.0)
    out = r.handle(UpstreamData(data=CHUNKED_OK), 1.002)
    assert down_bytes(out) == CHUNKED_OK
    rec = only_record(out).record
    assert (rec.status, rec.bytes_out, rec.duration_ms) == (200, 7, 2.0)
    assert not r.closed


def test_fast_lane_response_head_alone_then_body() -> None:
    """A head without its body yet, then the body byte by byte: promoted, exact."""
    r, _ = lane_router()
    r.handle(DownstreamData(data=GET_A), 0.0)
    head_end = OK_A.index(b"\r\n\r\n") + 4
    out = r.handle(UpstreamData(data=OK_A[:head_end]), 0.1)
    for i in range(head_end, len(OK_A)):
        out += r.handle(UpstreamData(data=OK_A[i:i + 1]), 0.2)
    assert down_bytes(out) == OK_A
    assert only_record(out).record.bytes_out == 6


def test_pipelined_request_while_the_lane_is_in_flight_waits_its_turn() -> None:
    """A request arriving while the lane's is in flight waits, then follows; each decided once."""
    r, decide = lane_router()
    r.handle(DownstreamData(data=GET_A), 1.0)
    out = r.handle(DownstreamData(data=GET_B), 1.1)
    assert not up_bytes(out) and not down_bytes(out)  # held until the answer is complete
    out = r.handle(UpstreamData(data=OK_A), 1.2)
    assert down_bytes(out) == OK_A and up_bytes(out) == GET_B
    first = only_record(out).record
    assert (first.path, first.status, first.bytes_out, first.duration_ms) == ("/a", 200, 6, 200.0)
    out = r.handle(UpstreamData(data=OK_B), 1.4)
    assert down_bytes(out) == OK_B
    second = only_record(out).record
    assert (second.path, second.status, second.bytes_out) == ("/b", 201, 2)
    # Timed from when it was taken up (sent upstream at 1.2), as the general path times
    # every pipelined request, not from its arrival at 1.1.
    assert second.id != first.id and (second.ts, second.duration_ms) == (1.2, 200.0)
    assert decide.calls == ["/a", "/b"]


def test_two_pipelined_requests_in_one_read_skip_the_lane() -> None:
    """Two requests in one read are not simple: the general path answers both in order."""
    r, decide = lane_router()
    out = r.handle(DownstreamData(data=GET_A + GET_B), 0.0)
    assert up_bytes(out) == GET_A
    out = r.handle(UpstreamData(data=OK_A), 0.1)
    assert down_bytes(out) == OK_A and up_bytes(out) == GET_B
    out = r.handle(UpstreamData(data=OK_B), 0.2)
    assert down_bytes(out) == OK_B and decide.calls == ["/a", "/b"]


def test_client_eof_while_the_lane_is_in_flight_still_gets_the_answer() -> None:
    """A client that half-closes after a simple request gets its answer, then the close."""
    r, _ = lane_router()
    r.handle(DownstreamData(data=GET_A), 1.0)
    assert r.handle(DownstreamClosed(), 1.1) == []
    out = r.handle(UpstreamData(data=OK_A), 1.2)
    assert down_bytes(out) == OK_A
    rec = only_record(out).record
    assert (rec.status, rec.bytes_out, rec.duration_ms) == (200, 6, 200.0)
    assert isinstance(out[-1], CloseDownstream) and r.closed
    # Between requests, the upstream is as good as new.
    assert of(out, ReleaseUpstream) == [ReleaseUpstream(reusable=True)]


def test_upstream_close_while_the_lane_is_in_flight_is_a_502() -> None:
    """The app closing before answering a simple request: 502, recorded, closed."""
    r, _ = lane_router()
    r.handle(DownstreamData(data=GET_A), 1.0)
    out = r.handle(UpstreamClosed(), 1.3)
    sent = down_bytes(out)
    assert sent.startswith(b"HTTP/1.1 502 ") and b"closed the connection" in sent
    rec = only_record(out).record
    assert (rec.status, rec.bytes_out, rec.duration_ms, rec.path) == (502, 0, 300.0, "/a")
    assert of(out, ReleaseUpstream) == [ReleaseUpstream(reusable=False)]
    assert of(out, CloseDownstream) and r.closed


def test_upstream_close_mid_answer_on_the_lane_cuts_the_connection() -> None:
    """The app closing mid-answer on the lane cuts the connection and records the exchange."""
    r, _ = lane_router()
    r.handle(DownstreamData(data=GET_A), 1.0)
    out = r.handle(UpstreamData(data=OK_A[:-3]), 1.1)
    out += r.handle(UpstreamClosed(), 1.2)
    assert down_bytes(out) == OK_A[:-3]
    rec = only_record(out).record
    assert rec.status == 200 and rec.bytes_out == 3
    assert of(out, CloseDownstream) and r.closed


def test_connection_refused_on_the_lane_is_a_502_naming_the_reason() -> None:
    """Connecting upstream fails for a simple request: 502 carrying the reason."""
    r, _ = lane_router()
    r.handle(DownstreamData(data=GET_A), 1.0)
    out = r.handle(UpstreamClosed(reason="cannot connect to 10.0.0.2:80: refused"), 1.0)
    assert b"cannot connect to 10.0.0.2:80: refused" in down_bytes(out)
    assert only_record(out).record.status == 502


def test_a_simple_request_the_filter_steals_is_decided_once() -> None:
    """A simple request that matches a steal is routed to the session (decided once)."""
    r, decide = lane_router()
    out = r.handle(DownstreamData(data=GET_STEAL), 1.0)
    (start,) = of(out, StealStart)
    assert (start.sub_id, start.target, start.method) == (7, "/b", "GET")
    assert of(out, StealEnd) and not of(out, ConnectUpstream) and not up_bytes(out)
    assert decide.calls == ["/b"]
    out = r.handle(LocalResponse(status=200, reason=b"OK",
                                 headers=[(b"Content-Length", b"5")]), 1.5)
    out += r.handle(LocalData(data=b"local"), 1.5) + r.handle(LocalEnd(), 1.75)
    assert down_bytes(out) == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlocal"
    rec = only_record(out)
    assert rec.owner == 7 and rec.record.verdict == "stolen"
    assert (rec.record.status, rec.record.bytes_out, rec.record.duration_ms) == (200, 5, 750.0)
    assert start.flow_id == rec.record.id and decide.calls == ["/b"]


def test_a_simple_request_the_filter_mirrors_is_decided_once() -> None:
    """A simple request that matches a mirror goes up byte for byte and is copied once."""
    r, decide = lane_router()
    request = b"GET /m HTTP/1.1\r\nHost: svc\r\nX-Mirror: yes\r\n\r\n"
    out = r.handle(DownstreamData(data=request), 1.0)
    assert up_bytes(out) == request
    (start,) = of(out, MirrorStart)
    assert (start.sub_id, start.target, start.clause) == (9, "/m", "path_filter: /m")
    assert of(out, MirrorEnd)
    out = r.handle(UpstreamData(data=OK_A), 1.1)
    assert down_bytes(out) == OK_A
    rec = only_record(out).record
    assert rec is start.record  # the mirror's outcome joins this record
    assert (rec.status, rec.bytes_out, rec.matched) == (200, 6, "path_filter: /m")
    assert decide.calls == ["/m"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["pass", "steal", "mirror"]), min_size=1, max_size=6))
def test_every_request_is_decided_exactly_once(kinds: list[str]) -> None:
    """Whatever mix of passed, stolen and mirrored simple requests, one decision each."""
    r, decide = lane_router()
    for i, kind in enumerate(kinds):
        extra = {"pass": b"", "steal": b"X-Steal: yes\r\n", "mirror": b"X-Mirror: yes\r\n"}[kind]
        out = r.handle(DownstreamData(data=b"GET /%d HTTP/1.1\r\nHost: h\r\n%s\r\n" % (i, extra)),
                       float(i))
        if kind == "steal":
            out = r.handle(LocalResponse(status=204, reason=b"", headers=[]), float(i))
            out += r.handle(LocalEnd(), float(i))
        else:
            out = r.handle(UpstreamData(data=OK_B), float(i))
        assert only_record(out).record.path == f"/{i}"
    assert decide.calls == [f"/{i}" for i in range(len(kinds))]


def test_capture_on_takes_the_general_path() -> None:
    """With capture on a simple request takes the general path: heads and body recorded."""
    r, decide = lane_router(capture=True)
    out = r.handle(DownstreamData(data=GET_A), 1.0)
    assert up_bytes(out) == GET_A
    out = r.handle(UpstreamData(data=OK_A), 1.5)
    assert down_bytes(out) == OK_A
    rec = only_record(out).record
    assert rec.request_headers == [(b"Host", b"svc"), (b"Accept", b"*/*")]
    assert rec.response_headers == [(b"Content-Length", b"6"), (b"X-Seq", b"a")]
    assert rec.response_body == bytearray(b"remote")
    assert (rec.status, rec.bytes_out, rec.duration_ms) == (200, 6, 500.0)
    assert decide.calls == ["/a"]


def test_lane_answer_with_connection_close_ends_the_connection() -> None:
    """A one-read answer saying Connection: close is passed, then both sides are closed."""
    r, _ = lane_router()
    r.handle(DownstreamData(data=GET_A), 0.0)
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    out = r.handle(UpstreamData(data=answer), 0.1)
    assert down_bytes(out) == answer
    assert of(out, ReleaseUpstream) == [ReleaseUpstream(reusable=False)]
    assert isinstance(out[-1], CloseDownstream) and r.closed


def test_http_1_0_request_on_the_lane_closes_after_its_answer() -> None:
    """An HTTP/1.0 request without keep-alive is answered, then the connection closes."""
    r, _ = lane_router()
    request = b"GET /old HTTP/1.0\r\n\r\n"
    assert up_bytes(r.handle(DownstreamData(data=request), 0.0)) == request
    out = r.handle(UpstreamData(data=OK_B), 0.1)
    assert down_bytes(out) == OK_B and of(out, CloseDownstream) and r.closed
    assert only_record(out).record.authority is None


def test_head_request_on_the_lane_relays_a_bodiless_answer() -> None:
    """A HEAD answer on the lane is promoted and relayed whole; the next request follows."""
    r, _ = lane_router()
    r.handle(DownstreamData(data=b"HEAD /a HTTP/1.1\r\nHost: svc\r\n\r\n"), 0.0)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
    out = r.handle(UpstreamData(data=answer), 0.1)
    assert down_bytes(out) == answer
    rec = only_record(out).record
    assert (rec.method, rec.status, rec.bytes_out) == ("HEAD", 200, 0)
    assert up_bytes(r.handle(DownstreamData(data=GET_B), 0.2)) == GET_B


def test_interim_responses_on_the_lane_are_relayed_before_the_answer() -> None:
    """103 Early Hints then the answer, in one read: promoted, relayed exactly."""
    r, _ = lane_router()
    r.handle(DownstreamData(data=GET_A), 0.0)
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK_A
    out = r.handle(UpstreamData(data=answer), 0.1)
    assert down_bytes(out) == answer and only_record(out).record.status == 200


def test_extra_bytes_after_a_lane_answer_end_the_connection() -> None:
    """Bytes after a lane answer: the answer passes, the connection is not reused and ends."""
    r, _ = lane_router()
    r.handle(DownstreamData(data=GET_A), 0.0)
    out = r.handle(UpstreamData(data=OK_A + b"junk"), 0.1)
    assert down_bytes(out) == OK_A
    assert ReleaseUpstream(reusable=False) in out and r.closed


def test_client_gone_while_the_lane_is_in_flight_records_the_request() -> None:
    """The driver aborting mid-lane records the request (no status) and closes."""
    recorder = CommandRecorder()
    r = Http1Router(port=80, authority="10.0.0.2:80", decide=steal_if_header,
                    next_id=itertools.count(1).__next__, sink=recorder)
    r.downstream_data(GET_A, 1.0)
    assert recorder.take() == [ConnectUpstream(), SendUpstream(data=GET_A)]
    r.abort(1.5)
    out = recorder.take()
    rec = only_record(out).record
    assert (rec.path, rec.status, rec.duration_ms) == ("/a", None, 500.0)
    assert ReleaseUpstream(reusable=False) in out and r.closed


# --- the fast lane changes nothing but speed ----------------------------------------------


@st.composite
def conversations(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """Requests and their answers, of the kinds the lane takes and the kinds it leaves."""
    requests, answers = [], []
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["get", "get", "get", "head", "post", "old", "mirror"]))
        if kind == "post":
            requests.append(b"POST /%d HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc" % i)
        elif kind == "head":
            requests.append(b"HEAD /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
        elif kind == "old":
            requests.append(b"GET /%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % i)
        elif kind == "mirror":
            requests.append(b"GET /%d HTTP/1.1\r\nHost: h\r\nX-Mirror: yes\r\n\r\n" % i)
        else:
            requests.append(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
        body = draw(st.binary(max_size=12))
        answer = draw(st.sampled_from(["length", "length", "chunked", "204", "close", "1xx"]))
        if kind == "head":
            answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
        elif answer == "chunked":
            answers.append(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           + (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n")
        elif answer == "204":
            answers.append(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif answer == "close":
            answers.append(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(body), body))
        elif answer == "1xx":
            answers.append(b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        else:
            answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return requests, answers


def play(router: Http1Router, schedule: list[tuple[str, bytes]]) -> list[Any]:
    """Feed the schedule; the commands out, with records as the rows sessions get."""
    out: list[Any] = []
    for t, (side, data) in enumerate(schedule):
        event: Any = {"down": DownstreamData(data=data), "up": UpstreamData(data=data),
                      "eof": DownstreamClosed(), "upclose": UpstreamClosed()}[side]
        for command in router.handle(event, 100.0 + t / 1000):
            out.append(command.record.to_row() if isinstance(command, RecordFlow) else command)
    return out


@settings(max_examples=400, deadline=None)
@given(conversations(), st.data())
def test_the_fast_lane_is_invisible(conversation: tuple[list[bytes], list[bytes]],
                                    data: st.DataObject) -> None:
    """Any conversation, split anyhow, gives the same commands with or without the lane."""
    requests, answers = conversation
    schedule: list[tuple[str, bytes]] = []
    for request, answer in zip(requests, answers, strict=True):
        for side, message in (("down", request), ("up", answer)):
            whole = data.draw(st.booleans())
            cuts = [] if whole else sorted(data.draw(st.sets(
                st.integers(1, max(1, len(message) - 1)), max_size=3)))
            bounds = [0, *cuts, len(message)]
            schedule += [(side, message[a:b]) for a, b in itertools.pairwise(bounds)
                         if message[a:b]]
    # Sometimes a request arrives early (pipelined), or the client or app leaves at the end.
    if len(schedule) > 2 and data.draw(st.booleans()):
        i = data.draw(st.integers(1, len(schedule) - 1))
        downs = [j for j in range(i, len(schedule)) if schedule[j][0] == "down"]
        if downs:
            schedule.insert(i, schedule.pop(downs[0]))
    schedule += data.draw(st.sampled_from([[], [], [("eof", b"")], [("upclose", b"")]]))
    fast, _ = lane_router()
    general, _ = lane_router()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("waylay.core.engine.http1.simple_request", lambda data: None)
        expected = play(general, schedule)
    assert play(fast, schedule) == expected

def test_a_simple_stolen_request_is_one_start_and_end_with_the_same_record() -> None:
    """A bodiless stolen request arriving whole (the fast recogniser's case) gives the
    StealStart the general path gives, then StealEnd, and the record of a stolen one."""
    for data in (GET_STEAL, b"GET /b?q=1 HTTP/1.1\r\nHost: svc\r\nX-Steal: yes\r\n"
                            b"Connection: close\r\n\r\n"):
        fast, general = router(), router()
        out = fast.handle(DownstreamData(data=data), 1.0)
        # Split in two, the same request takes the general path.
        ref = general.handle(DownstreamData(data=data[:5]), 1.0)
        ref += general.handle(DownstreamData(data=data[5:]), 1.0)
        assert of(out, StealStart) == of(ref, StealStart)
        assert [type(c) for c in out] == [type(c) for c in ref]
        for r, base in ((fast, out), (general, ref)):
            base += r.handle(LocalResponse(status=200, reason=b"OK",
                                           headers=[(b"Content-Length", b"2")]), 1.5)
            base += r.handle(LocalData(data=b"ok"), 1.5)
            base += r.handle(LocalEnd(), 2.0)
        assert down_bytes(out) == down_bytes(ref)
        (mine,), (theirs,) = of(out, RecordFlow), of(ref, RecordFlow)
        assert mine.record.to_row() == theirs.record.to_row()
        assert of(out, CloseDownstream) == of(ref, CloseDownstream)


def test_a_simple_stolen_http10_request_gets_a_host_for_the_local_app() -> None:
    """An HTTP/1.0 request without Host, stolen, reaches the session with the address the
    client meant as its Host (the general path does the same)."""
    out = router().handle(DownstreamData(data=b"GET /x HTTP/1.0\r\nX-Steal: yes\r\n\r\n"), 0.0)
    (start,) = of(out, StealStart)
    assert (b"Host", b"10.0.0.2:80") in start.headers and start.http_version == "1.0"
    assert of(out, StealEnd)
