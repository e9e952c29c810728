"""The HTTP/2 router's protocol rules and flood bounds: playbooks with real h2 peers.

Where h2 refuses to send what a hostile or broken peer would, the frames are built with
hyperframe and hpack and fed as raw bytes; h2 still checks everything the router answers.
"""

from __future__ import annotations

import itertools

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from hpack import Encoder
from hyperframe.frame import HeadersFrame, PushPromiseFrame, RstStreamFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.test_h2_router import Bed, request, respond, steal_if_header
from waylay.core.engine import h2_frames as f
from waylay.core.engine.h2_router import RESET_BUDGET, H2Router
from waylay.core.engine.h2_streams import MAX_CONCURRENT_STREAMS, STREAM_WINDOW
from waylay.core.engine.routing import (
    CloseDownstream,
    Command,
    DownstreamData,
    LocalData,
    LocalEnd,
    LocalResponse,
    RecordFlow,
    SendDownstream,
    SendUpstream,
    UpstreamData,
)


def sloppy_client() -> H2Connection:
    """An h2 client that sends headers as given (no outbound checks)."""
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False))
    conn.initiate_connection()
    return conn


def test_malformed_requests_reset_only_their_stream() -> None:
    """Upper-case names, connection-specific fields, a missing :path: RST_STREAM
    PROTOCOL_ERROR (RFC 9113 §8.1.1); the connection carries on."""
    bed = Bed()
    bed.client = sloppy_client()
    bed.client.send_headers(1, [*request("/a"), ("X-Upper", "1")], end_stream=True)
    bed.client.send_headers(3, [*request("/b"), ("connection", "close")], end_stream=True)
    bed.client.send_headers(5, [(":method", "GET"), (":scheme", "http"),
                                (":authority", "svc")], end_stream=True)
    bed.client.send_headers(7, request("/fine"), end_stream=True)
    bed.pump()
    assert {e.stream_id: e.error_code for e in bed.client_got(StreamReset)} == {
        1: ErrorCodes.PROTOCOL_ERROR, 3: ErrorCodes.PROTOCOL_ERROR,
        5: ErrorCodes.PROTOCOL_ERROR}
    (req,) = bed.app_got(RequestReceived)
    assert dict(req.headers)[":path"] == "/fine"


def test_a_body_longer_than_its_content_length_is_refused() -> None:
    """content-length and the DATA received must agree (RFC 9113 §8.1.1)."""
    bed = Bed()
    bed.client = sloppy_client()
    bed.client.send_headers(1, [*request("/up", method="POST"), ("content-length", "3")])
    bed.client.send_data(1, b"12345", end_stream=True)
    bed.pump()
    assert bed.client_got(StreamReset, 1)[0].error_code == ErrorCodes.PROTOCOL_ERROR
    assert bed.app_got(StreamReset)  # the half-sent request is cancelled upstream too


def test_request_trailers_of_a_passed_stream_reach_the_app() -> None:
    """gRPC-style request trailers ride upstream after the body."""
    bed = Bed()
    bed.client.send_headers(1, request("/t", method="POST"))
    bed.client.send_data(1, b"body")
    bed.client.send_headers(1, [("x-sum", "abc")], end_stream=True)
    bed.pump()
    (trailers,) = bed.app_got(TrailersReceived)
    assert trailers.headers == [("x-sum", "abc")]
    assert bed.app_body(trailers.stream_id) == b"body"


def raw_headers(encoder: Encoder, sid: int, headers: list[tuple[str, str]], *,
                end_stream: bool) -> bytes:
    flags = ("END_HEADERS", "END_STREAM") if end_stream else ("END_HEADERS",)
    return HeadersFrame(sid, encoder.encode(headers), flags=flags).serialize()


def raw_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, stream, payload) of each frame in ``data``."""
    out, at = [], 0
    while at < len(data):
        length = int.from_bytes(data[at:at + 3], "big")
        kind, sid = data[at + 3], int.from_bytes(data[at + 5:at + 9], "big") & 0x7FFFFFFF
        out.append((kind, sid, data[at + 9:at + 9 + length]))
        at += 9 + length
    return out


def test_streams_over_the_announced_limit_are_refused() -> None:
    """More open streams than SETTINGS_MAX_CONCURRENT_STREAMS: REFUSED_STREAM (§5.1.2)."""
    bed = Bed()
    bed.pump()
    encoder = Encoder()
    sids = [1 + 2 * i for i in range(MAX_CONCURRENT_STREAMS + 2)]
    wire = b"".join(raw_headers(encoder, sid, request(f"/{sid}", steal=True), end_stream=False)
                    for sid in sids)  # none of them ends
    out = bed.router.handle(DownstreamData(data=wire), 1.0)
    sent = b"".join(c.data for c in out if isinstance(c, SendDownstream))
    refused = [(sid, p) for kind, sid, p in raw_frames(sent) if kind == f.RST_STREAM]
    assert refused == [(sid, b"\x00\x00\x00\x07") for sid in sids[-2:]]  # REFUSED_STREAM
    assert bed.router.active_streams == MAX_CONCURRENT_STREAMS


def rapid_resets(count: int, seconds_each: float) -> tuple[H2Router, list[Command]]:
    """``count`` streams opened and reset at once, ``seconds_each`` apart (by the clock
    given to the router), in reads of 50."""
    bed = Bed()
    bed.pump()
    router, encoder, now = bed.router, Encoder(), 1.0
    out: list[Command] = []
    wire = b""
    for i in range(count):
        sid = 1 + 2 * i
        wire += raw_headers(encoder, sid, request(f"/r{i}"), end_stream=True)
        wire += RstStreamFrame(sid, error_code=ErrorCodes.CANCEL).serialize()
        if i % 50 == 49:
            now += seconds_each * 50
            out += router.handle(DownstreamData(data=wire), now)
            wire = b""
            if router.closed:
                break
    return router, out


def test_rapid_reset_ends_the_connection() -> None:
    """Streams reset before their answer, faster than the budget refills: GOAWAY
    ENHANCE_YOUR_CALM and the connection closes (CVE-2023-44487)."""
    router, out = rapid_resets(int(RESET_BUDGET) + 100, seconds_each=0.0001)
    sent = b"".join(c.data for c in out if isinstance(c, SendDownstream))
    ((_, _, payload),) = [fr for fr in raw_frames(sent) if fr[0] == f.GOAWAY]
    assert f.unpack_goaway(payload)[1] == ErrorCodes.ENHANCE_YOUR_CALM
    assert isinstance(out[-1], CloseDownstream) and router.closed
    assert len([c for c in out if isinstance(c, RecordFlow)]) <= RESET_BUDGET + 50


def test_cancelling_at_a_human_pace_is_fine() -> None:
    """The same resets spread over time (a few hundred per second) never hit the budget."""
    router, out = rapid_resets(int(RESET_BUDGET) * 2, seconds_each=0.004)
    assert not router.closed
    assert len([c for c in out if isinstance(c, RecordFlow)]) == RESET_BUDGET * 2


def test_an_hpack_bomb_ends_the_connection() -> None:
    """A small block decoding past SETTINGS_MAX_HEADER_LIST_SIZE: GOAWAY, closed."""
    bed = Bed()
    bed.pump()
    encoder = Encoder()
    block = encoder.encode([*request("/bomb"), *[("x-bomb", "b" * 4000)] * 100])
    assert len(block) < 5000
    bed.feed(DownstreamData(data=HeadersFrame(1, block, flags=("END_HEADERS", "END_STREAM"))
                            .serialize()))
    (goaway,) = bed.client_got(ConnectionTerminated)
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert bed.router.closed


def test_a_passed_download_waits_for_the_client_window_end_to_end() -> None:
    """The app's bytes beyond the client's window wait in the router, bounded by the
    window we gave the app; a larger client window (SETTINGS) lets them through."""
    bed = Bed(client_acks=False)
    bed.client.send_headers(1, request("/big"), end_stream=True)
    bed.pump()
    (req,) = bed.app_got(RequestReceived)
    body = bytes(range(256)) * 2048  # 512 KiB
    bed.app.send_headers(req.stream_id, [(":status", "200")])
    sent = 0

    def app_sends() -> None:
        nonlocal sent
        for _ in range(1000):
            room = min(bed.app.local_flow_control_window(req.stream_id), 16_384,
                       len(body) - sent)
            if room <= 0:
                return
            bed.app.send_data(req.stream_id, body[sent:sent + room],
                              end_stream=sent + room == len(body))
            sent += room
            bed.pump()

    app_sends()
    got = len(bed.client_body(1))
    assert got == 65_535  # the client's own window, nothing more
    assert 0 < sent - got <= STREAM_WINDOW  # what the router holds is bounded
    bed.client.update_settings({f.INITIAL_WINDOW_SIZE: 4 << 20})
    bed.client.increment_flow_control_window(4 << 20)
    for _ in range(100):
        bed.pump()
        app_sends()
        if bed.client_got(StreamEnded, 1):
            break
    assert bed.client_body(1) == body


def test_informational_answers_are_forwarded() -> None:
    """A 103 from the app reaches the client before the final answer."""
    bed = Bed()
    bed.client.send_headers(1, request("/hints"), end_stream=True)
    bed.pump()
    (req,) = bed.app_got(RequestReceived)
    bed.app.send_headers(req.stream_id, [(":status", "103"), ("link", "</a.css>")])
    respond(bed, req.stream_id, b"final")
    (info,) = bed.client_got(InformationalResponseReceived, 1)
    assert dict(info.headers)[":status"] == "103"
    assert dict(bed.client_got(ResponseReceived, 1)[0].headers)[":status"] == "200"
    assert bed.of(RecordFlow)[0].record.status == 200


def test_a_push_from_the_app_is_refused() -> None:
    """We said SETTINGS_ENABLE_PUSH 0: a PUSH_PROMISE is refused, the stream goes on."""
    bed = Bed()
    bed.client.send_headers(1, request("/p"), end_stream=True)
    bed.pump()
    (req,) = bed.app_got(RequestReceived)
    sent_before = len(bed.of(SendUpstream))
    promise = PushPromiseFrame(req.stream_id, promised_stream_id=2,
                               data=bed.app.encoder.encode(request("/pushed")),
                               flags=("END_HEADERS",)).serialize()
    bed.feed(UpstreamData(data=promise))
    refused = b"".join(c.data for c in bed.of(SendUpstream)[sent_before:])
    assert f.rst_stream(2, f.ErrorCode.REFUSED_STREAM) in refused
    respond(bed, req.stream_id, b"still fine")
    assert bed.client_body(1) == b"still fine"


def test_client_goaway_finishes_its_streams_then_closes() -> None:
    """GOAWAY(NO_ERROR) from the client: streams in flight are answered, then close."""
    bed = Bed()
    bed.client.send_headers(1, request("/last"), end_stream=True)
    bed.pump()
    bed.feed(DownstreamData(data=f.goaway(0, 0)))
    assert not bed.of(CloseDownstream)
    (req,) = bed.app_got(RequestReceived)
    respond(bed, req.stream_id, b"done")
    assert bed.client_body(1) == b"done"
    assert isinstance(bed.commands[-1], CloseDownstream)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_any_split_of_the_app_bytes_gives_the_same_answers(data: st.DataObject) -> None:
    """The original app's bytes cut anywhere reach the client as the same answers."""
    bed = Bed()
    for sid in (1, 3):
        bed.client.send_headers(sid, request(f"/{sid}"), end_stream=True)
    bed.pump()
    reqs = bed.app_got(RequestReceived)
    for req in reqs:
        bed.app.send_headers(req.stream_id, [(":status", "200")])
        bed.app.send_data(req.stream_id, b"x" * 3000 + str(req.stream_id).encode())
        bed.app.send_headers(req.stream_id, [("grpc-status", "0")], end_stream=True)
    wire = bed.app.data_to_send()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    for a, b in itertools.pairwise([0, *cuts, len(wire)]):
        bed.feed(UpstreamData(data=wire[a:b]))
    bed.pump()
    for sid, req in zip((1, 3), reqs, strict=True):
        assert bed.client_body(sid) == b"x" * 3000 + str(req.stream_id).encode()
        assert bed.client_got(TrailersReceived, sid)[0].headers == [("grpc-status", "0")]
    assert len(bed.client_got(DataReceived)) >= 2


def test_the_router_never_sends_what_h2_would_reject() -> None:
    """A mixed conversation (settings changes, pings, steals, passes) keeps the client's
    and the app's h2 state machines happy from start to end."""
    bed = Bed()
    bed.router = H2Router(port=80, authority="a", decide=steal_if_header,
                          next_id=itertools.count(1).__next__)
    bed.client.update_settings({f.MAX_FRAME_SIZE: 20_000, f.HEADER_TABLE_SIZE: 100})
    bed.client.ping(b"12345678")
    for sid in (1, 3, 5):
        bed.client.send_headers(sid, request(f"/{sid}", steal=sid == 3), end_stream=True)
    bed.pump()
    bed.client.update_settings({f.INITIAL_WINDOW_SIZE: 100})  # small windows from now on
    bed.pump()
    for req in bed.app_got(RequestReceived):
        respond(bed, req.stream_id, b"y" * 500)
    bed.feed(LocalResponse(stream=3, status=200, reason=b"", headers=[]))
    bed.feed(LocalData(stream=3, data=b"z" * 500))
    bed.feed(LocalEnd(stream=3))
    for _ in range(20):
        bed.pump()
    assert bed.client_body(1) == bed.client_body(5) == b"y" * 500
    assert bed.client_body(3) == b"z" * 500
