"""Playbook tests of the sans-I/O HTTP/2 router: real h2 peers on both sides, commands out."""

from __future__ import annotations

import itertools
from typing import Any

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.events import Event as H2Event
from hpack import NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from waylay.core.engine.filters import RequestView
from waylay.core.engine.h2_router import H2Router
from waylay.core.engine.h2_streams import STREAM_WINDOW
from waylay.core.engine.routing import (
    PASS,
    CloseDownstream,
    Command,
    ConnectUpstream,
    DownstreamClosed,
    DownstreamData,
    Event,
    LocalAborted,
    LocalData,
    LocalEnd,
    LocalResponse,
    LocalTrailers,
    MirrorData,
    MirrorEnd,
    MirrorStart,
    RecordFlow,
    ReleaseUpstream,
    Route,
    SendDownstream,
    SendUpstream,
    StealAbort,
    StealData,
    StealEnd,
    StealStart,
    StealTrailers,
    UpstreamClosed,
    UpstreamData,
)

SEEN: list[RequestView] = []


def steal_if_header(view: RequestView) -> Route:
    """Steal requests carrying ``x-steal: yes`` (a stand-in for a compiled filter)."""
    SEEN.append(view)
    if any(n == "x-steal" and v == "yes" for n, v in view.headers):
        return Route(steal_by=7, clause="header_filter: x-steal: yes")
    return PASS


def request(path: str, *, steal: bool = False, method: str = "GET",
            extra: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    headers = [(":method", method), (":scheme", "http"), (":authority", "svc.local"),
               (":path", path), ("user-agent", "test")]
    if steal:
        headers.append(("x-steal", "yes"))
    return headers + list(extra)


class Bed:
    """The router between a fake remote client and a fake original app (both real h2)."""

    def __init__(self, *, client_acks: bool = True, app_acks: bool = True) -> None:
        self.router = H2Router(port=80, authority="10.0.0.2:80", decide=steal_if_header,
                               next_id=itertools.count(1).__next__)
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.client.initiate_connection()
        self.app = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.app.initiate_connection()
        self.client_acks = client_acks
        self.app_acks = app_acks
        self.commands: list[Command] = []
        self.client_events: list[H2Event] = []
        self.app_events: list[H2Event] = []
        self.connected = False
        self.now = 0.0

    def feed(self, event: Event) -> list[Command]:
        self.now += 0.25
        out = self.router.handle(event, self.now)
        self.commands += out
        for command in out:
            if isinstance(command, ConnectUpstream):
                self.connected = True
            elif isinstance(command, SendDownstream):
                self._to_client(command.data)
            elif isinstance(command, SendUpstream):
                self._to_app(command.data)
        return out

    def _to_client(self, data: bytes) -> None:
        for ev in self.client.receive_data(data):
            self.client_events.append(ev)
            if isinstance(ev, ConnectionTerminated):
                # h2 would end the connection; an RFC 9113 §6.8 client lets the streams
                # the GOAWAY covers finish.
                self.client.state_machine.state = ConnectionState.CLIENT_OPEN
            if isinstance(ev, DataReceived) and self.client_acks:
                self.client.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)

    def _to_app(self, data: bytes) -> None:
        for ev in self.app.receive_data(data):
            self.app_events.append(ev)
            if isinstance(ev, DataReceived) and self.app_acks:
                self.app.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)

    def pump(self) -> None:
        """Move bytes between the three parties until nobody has anything to say."""
        for _ in range(1000):
            moved = False
            data = self.client.data_to_send()
            if data:
                moved = True
                self.feed(DownstreamData(data=data))
            data = self.app.data_to_send()
            if data and self.connected:
                moved = True
                self.feed(UpstreamData(data=data))
            if not moved:
                return
        raise AssertionError("the peers never went quiet")

    def of(self, kind: type) -> list[Any]:
        return [c for c in self.commands if isinstance(c, kind)]

    def client_got(self, kind: type, stream: int | None = None) -> list[Any]:
        return [e for e in self.client_events if isinstance(e, kind)
                and (stream is None or getattr(e, "stream_id", None) == stream)]

    def app_got(self, kind: type) -> list[Any]:
        return [e for e in self.app_events if isinstance(e, kind)]

    def client_body(self, stream: int) -> bytes:
        return b"".join(e.data for e in self.client_got(DataReceived, stream))

    def app_body(self, stream: int) -> bytes:
        return b"".join(e.data for e in self.app_got(DataReceived) if e.stream_id == stream)


def respond(bed: Bed, app_stream: int, body: bytes, *,
            trailers: list[tuple[str, str]] | None = None, status: str = "200") -> None:
    bed.app.send_headers(app_stream, [(":status", status), ("x-served-by", "remote")])
    bed.app.send_data(app_stream, body, end_stream=trailers is None)
    if trailers is not None:
        bed.app.send_headers(app_stream, trailers, end_stream=True)
    bed.pump()


def test_passed_stream_goes_upstream_and_the_answer_comes_back() -> None:
    """An unmatched stream is re-opened upstream as is; the answer and trailers return."""
    bed = Bed()
    bed.client.send_headers(1, request("/a"), end_stream=True)
    bed.pump()
    assert bed.of(ConnectUpstream) and not bed.of(StealStart)
    (req,) = bed.app_got(RequestReceived)
    assert dict(req.headers)[":path"] == "/a" and dict(req.headers)[":authority"] == "svc.local"
    respond(bed, req.stream_id, b"remote", trailers=[("grpc-status", "0")])
    (resp,) = bed.client_got(ResponseReceived, 1)
    assert dict(resp.headers)["x-served-by"] == "remote"
    assert bed.client_body(1) == b"remote"
    (trailers,) = bed.client_got(TrailersReceived, 1)
    assert trailers.headers == [("grpc-status", "0")]
    (rec,) = bed.of(RecordFlow)
    assert rec.owner is None and rec.record.status == 200 and rec.record.protocol == "h2"
    assert rec.record.bytes_out == 6 and rec.record.verdict == "passed"
    assert rec.record.authority == "svc.local" and rec.record.path == "/a"


def test_header_filters_see_authority_as_host() -> None:
    """docs/architecture.md §2: :authority is offered to header filters as ``host: ...``."""
    SEEN.clear()
    bed = Bed()
    bed.client.send_headers(1, request("/h"), end_stream=True)
    bed.pump()
    assert ("host", "svc.local") in SEEN[-1].headers
    assert SEEN[-1].authority == "svc.local" and SEEN[-1].target == "/h"


def test_stolen_stream_goes_to_the_session_and_the_local_answer_back() -> None:
    """A matched stream becomes Steal* commands with its id; Local* events answer it."""
    bed = Bed()
    bed.client.send_headers(1, request("/s", steal=True, method="POST"))
    bed.client.send_data(1, b"body")
    bed.client.send_headers(1, [("x-checksum", "abc")], end_stream=True)
    bed.pump()
    (start,) = bed.of(StealStart)
    assert start.stream == 1 and start.sub_id == 7 and start.http_version == "2"
    assert start.method == "POST" and start.target == "/s"
    assert (b"host", b"svc.local") in start.headers
    assert not any(n.startswith(b":") for n, _ in start.headers)
    assert [c.data for c in bed.of(StealData)] == [b"body"]
    assert bed.of(StealTrailers)[0].headers == [(b"x-checksum", b"abc")]
    assert bed.of(StealEnd) == [StealEnd(stream=1)]
    assert not bed.connected  # nothing was passed: no upstream connection at all
    bed.feed(LocalResponse(stream=1, status=200, reason=b"OK",
                           headers=[(b"Content-Type", b"text/plain"), (b"Connection", b"x")]))
    bed.feed(LocalData(stream=1, data=b"local"))
    bed.feed(LocalTrailers(stream=1, headers=[(b"grpc-status", b"0")]))
    bed.feed(LocalEnd(stream=1))
    bed.pump()
    (resp,) = bed.client_got(ResponseReceived, 1)
    assert resp.headers == [(":status", "200"), ("content-type", "text/plain")]
    assert bed.client_body(1) == b"local"
    assert bed.client_got(TrailersReceived, 1)[0].headers == [("grpc-status", "0")]
    assert bed.client_got(StreamEnded, 1)
    (rec,) = bed.of(RecordFlow)
    assert rec.owner == 7 and rec.stream == 1 and rec.record.verdict == "stolen"
    assert (rec.record.bytes_in, rec.record.bytes_out, rec.record.status) == (4, 5, 200)


def test_one_connection_mixes_stolen_and_passed_streams() -> None:
    """Concurrent streams are routed one by one; each answer reaches its own stream."""
    bed = Bed()
    for sid in (1, 3, 5, 7):
        bed.client.send_headers(sid, request(f"/{sid}", steal=sid in (3, 7)), end_stream=True)
    bed.pump()
    assert [c.stream for c in bed.of(StealStart)] == [3, 7]
    passed = bed.app_got(RequestReceived)
    assert [dict(r.headers)[":path"] for r in passed] == ["/1", "/5"]
    for sid in (7, 3):
        bed.feed(LocalResponse(stream=sid, status=201, reason=b"", headers=[]))
        bed.feed(LocalData(stream=sid, data=f"local {sid}".encode()))
        bed.feed(LocalEnd(stream=sid))
    for r in passed:
        respond(bed, r.stream_id, f"remote {dict(r.headers)[':path']}".encode())
    assert {sid: bed.client_body(sid) for sid in (1, 3, 5, 7)} == {
        1: b"remote /1", 3: b"local 3", 5: b"remote /5", 7: b"local 7"}
    assert sorted(r.stream for r in bed.of(RecordFlow)) == [1, 3, 5, 7]


def test_passed_upload_waits_for_the_apps_window() -> None:
    """A passed upload is acknowledged to the client only as the app's windows take it."""
    bed = Bed(app_acks=False)
    bed.client.send_headers(1, request("/up", method="POST"))
    bed.pump()
    body = bytes(range(256)) * 4096  # 1 MiB
    sent = 0

    def send_what_fits() -> None:
        nonlocal sent
        for _ in range(1000):
            room = min(bed.client.local_flow_control_window(1), 16384, len(body) - sent)
            if room <= 0:
                return
            bed.client.send_data(1, body[sent:sent + room],
                                 end_stream=sent + room == len(body))
            sent += room
            bed.pump()

    send_what_fits()
    # The app acknowledged nothing: the client is stalled, and the router holds at most
    # its own stream window of what the app has not taken.
    assert 0 < sent < len(body)
    assert sent - len(bed.app_body(1)) <= STREAM_WINDOW
    bed.app_acks = True
    for _ in range(200):
        unacked = sum(e.flow_controlled_length for e in bed.app_got(DataReceived))
        acked = getattr(bed, "acked", 0)
        if unacked > acked:
            bed.app.acknowledge_received_data(unacked - acked, 1)
            bed.acked = unacked  # type: ignore[attr-defined]
        bed.pump()
        send_what_fits()
        if len(bed.app_body(1)) == len(body):
            break
    assert bed.app_body(1) == body
    assert bed.app_got(StreamEnded)


def test_stolen_download_is_held_until_the_client_reads() -> None:
    """A stolen response larger than the client's window waits, counted as backlog."""
    bed = Bed(client_acks=False)
    bed.client.send_headers(1, request("/down", steal=True), end_stream=True)
    bed.pump()
    bed.feed(LocalResponse(stream=1, status=200, reason=b"", headers=[]))
    body = b"x" * 300_000
    bed.feed(LocalData(stream=1, data=body))
    bed.feed(LocalEnd(stream=1))
    got = len(bed.client_body(1))
    assert got == 65_535  # the client's default window, nothing more
    assert bed.router.local_backlog(1) == len(body) - got
    for _ in range(100):
        for ev in bed.client_got(DataReceived, 1):
            bed.client.acknowledge_received_data(ev.flow_controlled_length, 1)
        bed.client_events = [e for e in bed.client_events if not isinstance(e, DataReceived)]
        bed.pump()
        if bed.client_got(StreamEnded, 1):
            break
    assert bed.router.local_backlog(1) == 0
    assert bed.client_got(StreamEnded, 1)
    assert bed.of(RecordFlow)[0].record.bytes_out == len(body)


def test_client_reset_of_a_passed_stream_resets_it_upstream() -> None:
    """RST_STREAM from the client reaches the app with the same code."""
    bed = Bed()
    bed.client.send_headers(1, request("/r", method="POST"))
    bed.pump()
    bed.client.reset_stream(1, ErrorCodes.CANCEL)
    bed.pump()
    (reset,) = bed.app_got(StreamReset)
    assert reset.error_code == ErrorCodes.CANCEL
    assert bed.of(RecordFlow)[0].record.status is None


def test_client_reset_of_a_stolen_stream_aborts_it() -> None:
    """RST_STREAM from the client abandons the stolen stream at the session."""
    bed = Bed()
    bed.client.send_headers(1, request("/r", steal=True, method="POST"))
    bed.pump()
    bed.client.reset_stream(1, ErrorCodes.CANCEL)
    bed.pump()
    assert [c.stream for c in bed.of(StealAbort)] == [1]
    assert bed.of(RecordFlow)[0].owner == 7
    bed.feed(LocalResponse(stream=1, status=200, reason=b"", headers=[]))  # too late
    assert not bed.client_got(ResponseReceived)


def test_upstream_reset_reaches_the_client_with_its_code() -> None:
    """RST_STREAM from the app is passed on to the client's stream."""
    bed = Bed()
    bed.client.send_headers(1, request("/r"), end_stream=True)
    bed.pump()
    (req,) = bed.app_got(RequestReceived)
    bed.app.reset_stream(req.stream_id, ErrorCodes.REFUSED_STREAM)
    bed.pump()
    (reset,) = bed.client_got(StreamReset, 1)
    assert reset.error_code == ErrorCodes.REFUSED_STREAM


def test_upstream_lost_before_the_answer_gives_502() -> None:
    """The app's connection failing before a response starts gives the client a 502."""
    bed = Bed()
    bed.client.send_headers(1, request("/x"), end_stream=True)
    bed.pump()
    bed.feed(UpstreamClosed(reason="cannot connect to 10.0.0.2:80: refused"))
    bed.pump()
    (resp,) = bed.client_got(ResponseReceived, 1)
    assert dict(resp.headers)[":status"] == "502"
    assert b"refused" in bed.client_body(1)
    assert bed.of(ReleaseUpstream) == [ReleaseUpstream(reusable=False)]
    # The next passed stream opens a new upstream connection.
    bed.client.send_headers(3, request("/y"), end_stream=True)
    bed.pump()
    assert len(bed.of(ConnectUpstream)) == 2


def test_local_failure_gives_502_or_a_reset() -> None:
    """The session failing before the head gives 502; after it, the stream is reset."""
    bed = Bed()
    bed.client.send_headers(1, request("/a", steal=True), end_stream=True)
    bed.client.send_headers(3, request("/b", steal=True), end_stream=True)
    bed.pump()
    bed.feed(LocalAborted(stream=1, reason="local app at 127.0.0.1:9 is unreachable"))
    bed.feed(LocalResponse(stream=3, status=200, reason=b"", headers=[]))
    bed.feed(LocalAborted(stream=3, reason="link lost"))
    bed.pump()
    assert dict(bed.client_got(ResponseReceived, 1)[0].headers)[":status"] == "502"
    assert b"unreachable" in bed.client_body(1)
    assert bed.client_got(StreamReset, 3)[0].error_code == ErrorCodes.INTERNAL_ERROR


def test_a_local_app_that_timed_out_gives_the_abort_status() -> None:
    """An abort carrying 504 answers the stream 504 with the reason and records it; the
    steal named the flow record that reports the stream."""
    bed = Bed()
    bed.client.send_headers(1, request("/slow", steal=True), end_stream=True)
    bed.pump()
    (start,) = bed.of(StealStart)
    bed.feed(LocalAborted(stream=1, reason="no answer from 127.0.0.1:8080 within 2 s",
                          status=504))
    bed.pump()
    assert dict(bed.client_got(ResponseReceived, 1)[0].headers)[":status"] == "504"
    assert b"no answer from 127.0.0.1:8080 within 2 s" in bed.client_body(1)
    (rec,) = bed.of(RecordFlow)
    assert rec.record.status == 504 and rec.record.id == start.flow_id


def test_upstream_goaway_refuses_unprocessed_streams_and_drains() -> None:
    """After the app's GOAWAY, streams it never saw are refused; processed ones finish."""
    bed = Bed()
    bed.client.send_headers(1, request("/1"), end_stream=True)
    bed.pump()
    (req,) = bed.app_got(RequestReceived)
    bed.app.close_connection(ErrorCodes.NO_ERROR, last_stream_id=req.stream_id)
    bed.pump()
    bed.app.state_machine.state = ConnectionState.SERVER_OPEN  # let it answer (§6.8)
    assert bed.client_got(ConnectionTerminated)  # the client is told to move on
    bed.client.send_headers(3, request("/3"), end_stream=True)
    bed.pump()
    assert bed.client_got(StreamReset, 3)[0].error_code == ErrorCodes.REFUSED_STREAM
    respond(bed, req.stream_id, b"late but fine")
    assert bed.client_body(1) == b"late but fine"
    assert isinstance(bed.commands[-1], CloseDownstream)  # drained: now it closes


def test_garbage_from_the_client_ends_the_connection_with_goaway() -> None:
    """A protocol error downstream: GOAWAY goes out, then the connection closes."""
    bed = Bed()
    bed.pump()
    out = bed.feed(DownstreamData(data=b"\x00\x00\x04\x09\x00\x00\x00\x00\x01abcd"))
    assert isinstance(out[-1], CloseDownstream)
    assert bed.client_got(ConnectionTerminated)


def test_client_eof_finishes_answers_then_closes() -> None:
    """EOF from the client: complete requests still get their answer, then the close."""
    bed = Bed()
    bed.client.send_headers(1, request("/a", steal=True), end_stream=True)
    bed.client.send_headers(3, request("/b", steal=True, method="POST"))  # never ends
    bed.pump()
    bed.feed(DownstreamClosed())
    assert [c.stream for c in bed.of(StealAbort)] == [3]
    assert not bed.of(CloseDownstream)
    bed.feed(LocalResponse(stream=1, status=200, reason=b"", headers=[]))
    out = bed.feed(LocalEnd(stream=1))
    assert isinstance(out[-1], CloseDownstream)
    assert bed.client_got(StreamEnded, 1)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_any_split_of_the_client_bytes_routes_the_same(data: st.DataObject) -> None:
    """The same conversation fed in arbitrary chunks gives the same steal commands."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    client.initiate_connection()
    client.send_headers(1, request("/p", steal=True, method="POST"))
    client.send_data(1, b"0123456789" * 50, end_stream=True)
    client.send_headers(3, request("/q", steal=True), end_stream=True)
    wire = client.data_to_send()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    router = H2Router(port=80, authority="a", decide=steal_if_header,
                      next_id=itertools.count(1).__next__)
    out: list[Command] = []
    for a, b in itertools.pairwise([0, *cuts, len(wire)]):
        out += router.handle(DownstreamData(data=wire[a:b]), 1.0)
    steals = [c for c in out if isinstance(c, StealStart | StealData | StealEnd)]
    assert [type(c).__name__ for c in steals if not isinstance(c, StealData)] == [
        "StealStart", "StealEnd", "StealStart", "StealEnd"] or [
        type(c).__name__ for c in steals if not isinstance(c, StealData)] == [
        "StealStart", "StealStart", "StealEnd", "StealEnd"]
    assert b"".join(c.data for c in steals if isinstance(c, StealData)) == b"0123456789" * 50


def test_grpc_trailers_only_answer_stays_one_headers_frame() -> None:
    """A local head carrying grpc-status goes out with END_STREAM, as gRPC requires."""
    bed = Bed()
    bed.client.send_headers(1, request("/svc/M", steal=True), end_stream=True)
    bed.pump()
    bed.feed(LocalResponse(stream=1, status=200, reason=b"", headers=[
        (b"content-type", b"application/grpc"), (b"grpc-status", b"3"),
        (b"grpc-message", b"bad")]))
    assert not bed.client_got(ResponseReceived)  # held until the end
    bed.feed(LocalEnd(stream=1))
    (resp,) = bed.client_got(ResponseReceived, 1)
    assert resp.stream_ended is not None
    assert dict(resp.headers)["grpc-status"] == "3"
    assert not bed.client_got(DataReceived)


def test_passed_headers_that_end_the_stream_stay_one_frame() -> None:
    """An upstream HEADERS frame with END_STREAM reaches the client as one frame too."""
    bed = Bed()
    bed.client.send_headers(1, request("/svc/M"), end_stream=True)
    bed.pump()
    (req,) = bed.app_got(RequestReceived)
    assert req.stream_ended is not None  # and the request's END_STREAM rode its HEADERS
    bed.app.send_headers(req.stream_id, [(":status", "200"), ("grpc-status", "5")],
                         end_stream=True)
    bed.pump()
    (resp,) = bed.client_got(ResponseReceived, 1)
    assert resp.stream_ended is not None
    assert bed.of(RecordFlow)[0].record.status == 200


def test_mirrored_stream_is_passed_and_copied() -> None:
    """A mirror route passes the stream upstream and copies head, body and end by stream."""
    bed = Bed()
    bed.router = H2Router(port=80, authority="a", next_id=itertools.count(1).__next__,
                          decide=lambda view: Route(steal_by=None, mirror_to=(9,)))
    bed.client.send_headers(1, request("/m", method="POST",
                                       extra=(("cookie", "a=1"), ("cookie", "b=2"))))
    bed.client.send_data(1, b"copy me", end_stream=True)
    bed.pump()
    (start,) = bed.of(MirrorStart)
    assert (start.stream, start.sub_id, start.http_version) == (1, 9, "2")
    assert (b"host", b"svc.local") in start.headers
    assert (b"cookie", b"a=1; b=2") in start.headers
    assert [c.data for c in bed.of(MirrorData)] == [b"copy me"]
    assert bed.of(MirrorEnd) == [MirrorEnd(stream=1)]
    (req,) = bed.app_got(RequestReceived)
    assert bed.app_body(req.stream_id) == b"copy me"  # the original app still gets it all
    respond(bed, req.stream_id, b"remote")
    assert bed.client_body(1) == b"remote"


def test_never_indexed_fields_stay_never_indexed_upstream() -> None:
    """A field the client sent never-indexed reaches the app never-indexed (RFC 7541 §7.1.3)."""
    bed = Bed()
    bed.client.send_headers(1, [*request("/n"),
                                NeverIndexedHeaderTuple("authorization", "Bearer s3cret")],
                            end_stream=True)
    bed.pump()
    (req,) = bed.app_got(RequestReceived)
    (auth,) = [h for h in req.headers if h[0] == "authorization"]
    assert isinstance(auth, NeverIndexedHeaderTuple) and auth[1] == "Bearer s3cret"
