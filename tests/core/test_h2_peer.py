"""The router's HTTP/2 connection layer (waylay.core.engine.h2_peer): framing, settings, windows,
floods.

The h2 package is the oracle: a real h2 client produces the bytes and checks what the
peer answers; hyperframe builds the frames h2 would refuse to send.
"""

from __future__ import annotations

import itertools

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import PingAckReceived, SettingsAcknowledged, WindowUpdated
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, SettingsFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from waylay.core.engine import h2_frames as f
from waylay.core.engine.h2_frames import ErrorCode
from waylay.core.engine.h2_peer import MAX_HEADER_FRAMES, H2Error, H2Peer

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc"),
           (b":path", b"/p")]


def server_peer(window: int = 1 << 20) -> H2Peer:
    return H2Peer(server=True, settings={f.INITIAL_WINDOW_SIZE: 1 << 18}, window=window)


def client() -> H2Connection:
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    return conn


def frames_of(peer: H2Peer, data: bytes) -> list[tuple[int, int, int, bytes, int]]:
    return [(k, fl, s, bytes(p), n) for k, fl, s, p, n in peer.frames(data)]


def conversation() -> bytes:
    c = client()
    c.send_headers(1, REQUEST)
    c.send_data(1, b"a" * 1000, pad_length=17)
    c.send_headers(1, [(b"x-trailer", b"1")], end_stream=True)
    c.send_headers(3, REQUEST, end_stream=True)
    c.ping(b"12345678")
    c.reset_stream(3)
    return c.data_to_send()


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_any_split_gives_the_same_frames(data: st.DataObject) -> None:
    """A conversation fed whole, byte by byte or cut anywhere hands on the same frames."""
    wire = conversation()
    whole = frames_of(server_peer(), wire)
    peer = server_peer()
    one_by_one = [fr for i in range(len(wire)) for fr in frames_of(peer, wire[i:i + 1])]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    peer = server_peer()
    pieces = [fr for a, b in itertools.pairwise([0, *cuts, len(wire)])
              for fr in frames_of(peer, wire[a:b])]
    assert whole == one_by_one == pieces
    kinds = [k for k, *_ in whole]
    assert kinds == [f.HEADERS, f.DATA, f.HEADERS, f.HEADERS, f.RST_STREAM]  # PING answered
    assert whole[1][3] == b"a" * 1000 and whole[1][4] == 1000 + 17 + 1  # padding costs too


def test_settings_and_pings_are_answered() -> None:
    """The client's SETTINGS are applied and acknowledged, its PING answered in kind."""
    c = client()
    c.update_settings({f.INITIAL_WINDOW_SIZE: 1000, f.MAX_FRAME_SIZE: 20000})
    c.ping(b"pingpong")
    peer = server_peer()
    peer.frames(c.data_to_send())
    assert (peer.initial_window, peer.max_frame) == (1000, 20000)
    events = c.receive_data(peer.take())
    assert sum(isinstance(e, SettingsAcknowledged) for e in events) == 2
    assert [e.ping_data for e in events if isinstance(e, PingAckReceived)] == [b"pingpong"]


@pytest.mark.parametrize(("wire", "code"), [
    (b"GET / HTTP/1.1\r\n\r\n" + b"x" * 10, ErrorCode.PROTOCOL_ERROR),  # no preface
    (f.PREFACE + DataFrame(1, b"x").serialize(), ErrorCode.PROTOCOL_ERROR),  # no SETTINGS
    (f.PREFACE + SettingsFrame(0).serialize() + f.head(16385, f.DATA, 0, 1) + b"x" * 16385,
     ErrorCode.FRAME_SIZE_ERROR),
    (f.PREFACE + SettingsFrame(0).serialize() + f.head(4, f.WINDOW_UPDATE, 0, 0)
     + b"\x00\x00\x00\x00", ErrorCode.PROTOCOL_ERROR),  # an increment of 0
    (f.PREFACE + SettingsFrame(0).serialize() + f.head(5, f.SETTINGS, 0, 0) + b"\x00" * 5,
     ErrorCode.FRAME_SIZE_ERROR),
    (f.PREFACE + SettingsFrame(0, settings={f.INITIAL_WINDOW_SIZE: 2**31}).serialize(),
     ErrorCode.FLOW_CONTROL_ERROR),
    (f.PREFACE + SettingsFrame(0).serialize()
     + HeadersFrame(1, b"\x82", flags=()).serialize() + DataFrame(1, b"x").serialize(),
     ErrorCode.PROTOCOL_ERROR),  # a header block interrupted
])
def test_connection_errors(wire: bytes, code: ErrorCode) -> None:
    """Frames that break RFC 9113 at the connection level raise H2Error with its code."""
    with pytest.raises(H2Error) as caught:
        server_peer().frames(wire)
    assert caught.value.code == code


def test_continuation_is_joined_and_a_flood_is_cut() -> None:
    """A block over HEADERS + CONTINUATION is one entry; a never-ending one is refused."""
    c = client()
    block = c.encoder.encode([(k.decode(), v.decode()) for k, v in REQUEST])
    start = f.PREFACE + SettingsFrame(0).serialize()
    wire = (start + HeadersFrame(1, block[:3], flags=("END_STREAM",)).serialize()
            + ContinuationFrame(1, block[3:], flags=("END_HEADERS",)).serialize())
    ((kind, flags, sid, payload, _),) = server_peer().frames(wire)
    assert (kind, sid, bytes(payload)) == (f.HEADERS, 1, block)
    assert flags & f.END_STREAM and flags & f.END_HEADERS
    flood = start + HeadersFrame(1, block[:3]).serialize() + b"".join(
        ContinuationFrame(1, b"").serialize() for _ in range(MAX_HEADER_FRAMES + 1))
    with pytest.raises(H2Error) as caught:
        server_peer().frames(flood)
    assert caught.value.code == ErrorCode.ENHANCE_YOUR_CALM


def test_the_connection_window_is_enforced_and_returned_in_batches() -> None:
    """More DATA than the window is a FLOW_CONTROL_ERROR; acknowledged bytes come back
    as one WINDOW_UPDATE once a quarter of the window is owed."""
    c = client()
    c.increment_flow_control_window(1 << 20)
    peer = server_peer(window=65_535)
    peer.frames(c.data_to_send())
    c.receive_data(peer.take())
    peer.ack(16_382)
    assert not peer.out  # less than a quarter owed: nothing sent yet
    peer.ack(1)
    (update,) = [e for e in c.receive_data(peer.take()) if isinstance(e, WindowUpdated)]
    assert (update.stream_id, update.delta) == (0, 16_383)
    with pytest.raises(H2Error) as caught:
        peer.frames(b"".join(DataFrame(1, b"x" * 16_000).serialize() for _ in range(6)))
    assert caught.value.code == ErrorCode.FLOW_CONTROL_ERROR
