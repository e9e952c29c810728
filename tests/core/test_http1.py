"""Playbook tests of the sans-I/O HTTP/1.1 router: events in, commands out."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from core.filters import RequestView
from core.http1 import Http1Router
from core.routing import (
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


def of(commands: list[Command], kind: type) -> list:
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
    event = of(out, RecordFlow)[0].record.to_event()
    assert event["request_headers"] == [["Host", "h"], ["Content-Length", "4"]]
    assert event["response_headers"] == [["Content-Length", "6"]]
    assert (event["request_body"], event["response_body"]) == ("ping", "remote")
    assert event["body_truncated"] is False


def test_without_capture_events_have_only_the_stable_keys() -> None:
    """By default a request event has exactly DESIGN §3's keys."""
    r = router()
    r.handle(DownstreamData(data=GET), 0.0)
    event = of(r.handle(UpstreamData(data=OK), 0.1), RecordFlow)[0].record.to_event()
    assert set(event) == {"type", "id", "ts", "port", "protocol", "method", "authority",
                          "path", "verdict", "status", "duration_ms", "bytes_in",
                          "bytes_out", "matched"}


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
