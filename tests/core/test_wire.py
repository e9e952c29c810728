"""The wire codec: round trips, framing, bounds, and rejection of bad input."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import struct
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waylay.core.engine.flow import ROW_FIELDS
from waylay.core.engine.wire import (
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    ConnectionStart,
    Data,
    End,
    Error,
    Flow,
    FrameType,
    Hello,
    Message,
    Notice,
    Pause,
    Ping,
    Pong,
    RequestStart,
    Reset,
    ResponseStart,
    Resume,
    Subscribe,
    Subscribed,
    Trailers,
    Unsubscribe,
    Welcome,
    WireDecoder,
    WireProtocolError,
    check_hello,
    encode,
    encode_data,
    headers_from_wire,
    headers_to_wire,
)

# --- strategies ---------------------------------------------------------------------------

streams = st.integers(0, 2**32 - 1)
ports = st.integers(1, 65535)
texts = st.text(max_size=12)
modes = st.sampled_from(["steal", "mirror"])
wire_headers = st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=24)), max_size=5).map(
    headers_to_wire
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
flow_rows = st.tuples(
    st.lists(json_values, min_size=len(ROW_FIELDS), max_size=len(ROW_FIELDS)),
    st.none() | json_objects,
).map(lambda parts: [*parts[0], parts[1]])

STRATEGIES: dict[type, st.SearchStrategy[Message]] = {
    Hello: st.builds(Hello, token=texts, client=texts, version=streams),
    Welcome: st.builds(
        Welcome,
        agent=texts,
        session=texts,
        listening_ports=st.lists(ports, max_size=4).map(tuple),
        version=streams,
    ),
    Error: st.builds(Error, stream=streams, message=texts, code=texts),
    Ping: st.builds(Ping, nonce=st.binary(min_size=8, max_size=8)),
    Pong: st.builds(Pong, nonce=st.binary(min_size=8, max_size=8)),
    Subscribe: st.builds(
        Subscribe, sub_id=streams, port=ports, mode=modes, filter=st.none() | json_objects,
        capture=st.booleans(), local=st.none() | texts,
        response_timeout=st.none() | st.integers(1, 86_400),
    ),
    Subscribed: st.builds(
        Subscribed, sub_id=streams, port=ports, mode=modes, filter=st.none() | texts
    ),
    Unsubscribe: st.builds(Unsubscribe, sub_id=streams),
    RequestStart: st.builds(
        RequestStart,
        stream=streams,
        sub_id=streams,
        port=ports,
        method=texts,
        target=texts,
        http_version=texts,
        headers=wire_headers,
        peer=texts,
        flow_id=st.none() | streams,
        end=st.booleans(),
    ),
    ConnectionStart: st.builds(
        ConnectionStart, stream=streams, sub_id=streams, port=ports, peer=texts
    ),
    Data: st.builds(Data, stream=streams, data=st.binary(max_size=64)),
    End: st.builds(End, stream=streams),
    Pause: st.builds(Pause, stream=streams),
    Resume: st.builds(Resume, stream=streams),
    ResponseStart: st.builds(
        ResponseStart,
        stream=streams,
        status=st.integers(100, 999),
        reason=texts,
        headers=wire_headers,
        body=st.binary(max_size=32),
        end=st.booleans(),
    ),
    Reset: st.builds(Reset, stream=streams, reason=texts),
    Trailers: st.builds(Trailers, stream=streams, headers=wire_headers),
    Flow: st.builds(Flow, records=st.lists(flow_rows, max_size=3).map(tuple)),
    Notice: st.builds(Notice, level=st.sampled_from(["warning", "error"]), message=texts),
}
messages = st.one_of(*STRATEGIES.values())
message_lists = st.lists(messages, max_size=8)


def encode_all(items: list[Message]) -> bytes:
    return b"".join(encode(item) for item in items)


def feed(decoder: WireDecoder, chunks: list[bytes]) -> list[Message]:
    out: list[Message] = []
    for chunk in chunks:
        out.extend(decoder.receive_data(chunk))
    return out


def frame(ftype: int, stream: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), ftype, stream) + payload


def decode_json_frame(ftype: FrameType, obj: object, stream: int = 0) -> list[Message]:
    return WireDecoder().receive_data(frame(ftype, stream, json.dumps(obj).encode()))


# --- round trips --------------------------------------------------------------------------


def test_every_frame_type_has_a_message_strategy() -> None:
    """The round-trip strategies cover one message class per frame type."""
    assert set(STRATEGIES) == set(typing.get_args(Message))
    assert len(STRATEGIES) == len(FrameType)


@given(message_lists)
def test_round_trip_fed_whole(items: list[Message]) -> None:
    """Messages encoded then decoded in one piece come back equal, with nothing left over."""
    decoder = WireDecoder()
    assert decoder.receive_data(encode_all(items)) == items
    assert decoder.buffered == 0


@given(message_lists)
def test_round_trip_fed_byte_by_byte(items: list[Message]) -> None:
    """Messages fed one byte at a time come back equal."""
    wire = encode_all(items)
    decoder = WireDecoder()
    assert feed(decoder, [wire[i : i + 1] for i in range(len(wire))]) == items
    assert decoder.buffered == 0


@given(message_lists, st.data())
def test_round_trip_fed_in_random_chunks(items: list[Message], data: st.DataObject) -> None:
    """Messages fed in arbitrary chunk splits come back equal."""
    wire = encode_all(items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    bounds = [0, *cuts, len(wire)]
    chunks = [wire[a:b] for a, b in itertools.pairwise(bounds)]
    decoder = WireDecoder()
    assert feed(decoder, chunks) == items
    assert decoder.buffered == 0


@given(messages)
def test_frame_header_names_type_and_payload_length(message: Message) -> None:
    """Each encoded frame's header gives its payload's exact length and a known type."""
    wire = encode(message)
    length, ftype, _ = HEADER.unpack_from(wire)
    assert length == len(wire) - HEADER_SIZE
    assert FrameType(ftype).value == ftype


def test_wire_format_of_ping_is_pinned() -> None:
    """A Ping is header (8, PING, stream 0) followed by the raw nonce."""
    wire = encode(Ping(nonce=b"ABCDEFGH"))
    assert wire == b"\x00\x00\x00\x08\x04\x00\x00\x00\x00ABCDEFGH"


def test_wire_format_of_subscribe_is_pinned() -> None:
    """Subscribe carries sub_id as the stream id and {port, mode, filter, capture} as JSON."""
    wire = encode(Subscribe(sub_id=7, port=80, mode="steal", filter={"path_filter": "^/api"}))
    length, ftype, stream = HEADER.unpack_from(wire)
    assert (ftype, stream, length) == (FrameType.SUBSCRIBE, 7, len(wire) - HEADER_SIZE)
    payload = json.loads(wire[HEADER_SIZE:])
    assert payload == {"port": 80, "mode": "steal", "filter": {"path_filter": "^/api"},
                       "capture": False}
    # An older client that never sends "capture" means false.
    body = json.dumps({"port": 80, "mode": "steal", "filter": None}).encode()
    (old,) = WireDecoder().receive_data(HEADER.pack(len(body), FrameType.SUBSCRIBE, 7) + body)
    assert old == Subscribe(sub_id=7, port=80, mode="steal", filter=None)
    assert (old.local, old.response_timeout) == (None, None)


def test_subscribe_carries_the_local_address_and_response_timeout_when_set() -> None:
    """``local`` and ``response_timeout`` are in the JSON only when set, and decode back."""
    message = Subscribe(sub_id=2, port=80, mode="steal", filter=None,
                        local="127.0.0.1:8080", response_timeout=5)
    wire = encode(message)
    assert json.loads(wire[HEADER_SIZE:]) == {"port": 80, "mode": "steal", "filter": None,
                                              "capture": False, "local": "127.0.0.1:8080",
                                              "response_timeout": 5}
    assert WireDecoder().receive_data(wire) == [message]


def compact(fixed: bytes, strings: list[str]) -> bytes:
    """A compact head payload built by hand (waylay.core.engine.wire_heads): the fixed fields, the
    string count (u16), each string's length in code points (u32), the UTF-8 text."""
    text = "".join(strings).encode("utf-8", "surrogatepass")
    return (fixed + struct.pack("!H", len(strings))
            + struct.pack(f"!{len(strings)}I", *map(len, strings)) + text)


def test_wire_format_of_request_is_pinned() -> None:
    """RequestStart: sub_id, port, flags and flow_id, then method, target, version, peer
    and each header's name and value as counted strings."""
    message = RequestStart(
        stream=3,
        sub_id=1,
        port=8080,
        method="GET",
        target="/x?y=1",
        http_version="1.1",
        headers=(("host", "svc"),),
        peer="10.0.0.2:5555",
    )
    wire = encode(message)
    assert HEADER.unpack_from(wire)[1:] == (FrameType.REQUEST, 3)
    strings = ["GET", "/x?y=1", "1.1", "10.0.0.2:5555", "host", "svc"]
    # no flow_id (a mirror copy): flags 0
    assert wire[HEADER_SIZE:] == compact(struct.pack("!IHBI", 1, 8080, 0, 0), strings)
    with_id = dataclasses.replace(message, flow_id=42)
    wire = encode(with_id)
    assert wire[HEADER_SIZE:] == compact(struct.pack("!IHBI", 1, 8080, 1, 42), strings)
    assert WireDecoder().receive_data(wire) == [with_id]
    whole = dataclasses.replace(with_id, end=True)  # a bodiless request: no END follows
    wire = encode(whole)
    assert wire[HEADER_SIZE:] == compact(struct.pack("!IHBI", 1, 8080, 3, 42), strings)
    assert WireDecoder().receive_data(wire) == [whole]


def test_wire_format_of_response_is_pinned() -> None:
    """ResponseStart: status, flags and body length, then the reason and each header's
    name and value, then the body."""
    strings = ["Not Found", "Content-Length", "0", "x-caf\xe9", "\xff"]
    message = ResponseStart(stream=4, status=404, reason="Not Found",
                            headers=(("Content-Length", "0"), ("x-caf\xe9", "\xff")))
    wire = encode(message)
    assert HEADER.unpack_from(wire)[1:] == (FrameType.RESPONSE, 4)
    assert wire[HEADER_SIZE:] == compact(struct.pack("!HBI", 404, 0, 0), strings)
    assert WireDecoder().receive_data(wire) == [message]
    whole = dataclasses.replace(message, body=b"gone\n", end=True)  # the whole answer
    wire = encode(whole)
    assert wire[HEADER_SIZE:] == compact(struct.pack("!HBI", 404, 1, 5), strings) + b"gone\n"
    assert WireDecoder().receive_data(wire) == [whole]


def test_wire_format_of_trailers_is_pinned() -> None:
    """Trailers carry the stream id in the header and each field's name and value."""
    wire = encode(Trailers(stream=5, headers=(("grpc-status", "3"), ("grpc-message", "bad"))))
    assert HEADER.unpack_from(wire)[1:] == (FrameType.TRAILERS, 5)
    assert wire[HEADER_SIZE:] == compact(b"", ["grpc-status", "3", "grpc-message", "bad"])


def test_trailers_reject_bad_headers() -> None:
    """A TRAILERS frame whose strings are not name/value pairs is refused."""
    with pytest.raises(WireProtocolError, match=r"TRAILERS frame on stream 2.*pairs"):
        WireDecoder().receive_data(frame(FrameType.TRAILERS, 2, compact(b"", ["a"])))
    with pytest.raises(WireProtocolError, match=r"TRAILERS frame on stream 2.*too short"):
        WireDecoder().receive_data(frame(FrameType.TRAILERS, 2, b""))


def test_hello_defaults_to_this_protocol_version() -> None:
    """Hello and Welcome carry PROTOCOL_VERSION unless told otherwise."""
    assert Hello(token="t", client="c").version == PROTOCOL_VERSION == 2
    assert Welcome(agent="a", session="s", listening_ports=()).version == PROTOCOL_VERSION


def test_messages_are_frozen_and_keyword_only() -> None:
    """Messages cannot be changed after construction nor built positionally."""
    end = End(stream=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        end.stream = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        End(1)  # type: ignore[call-arg]


@given(st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=8)), max_size=4))
def test_headers_survive_latin1_round_trip(headers: list[tuple[bytes, bytes]]) -> None:
    """Any header bytes survive headers_to_wire then headers_from_wire."""
    assert headers_from_wire(headers_to_wire(headers)) == headers


def test_headers_from_wire_rejects_text_outside_latin1() -> None:
    """A header str with a code point above U+00FF cannot be turned back into bytes."""
    with pytest.raises(WireProtocolError, match="latin-1"):
        headers_from_wire((("x-name", "\u20ac"),))


# --- DATA splitting -----------------------------------------------------------------------


def test_encode_data_splits_at_max_payload() -> None:
    """A body over MAX_PAYLOAD becomes several DATA frames that decode back to the body."""
    body = bytes(range(256)) * (2 * MAX_PAYLOAD // 256) + b"tail"
    wire = encode_data(5, body)
    decoded = WireDecoder().receive_data(wire)
    chunks = [m.data for m in decoded if isinstance(m, Data) and m.stream == 5]
    assert len(chunks) == len(decoded)
    assert [len(chunk) for chunk in chunks] == [MAX_PAYLOAD, MAX_PAYLOAD, 4]
    assert b"".join(chunks) == body


def test_encode_data_of_nothing_is_nothing() -> None:
    """encode_data with an empty body gives no frame at all."""
    assert encode_data(1, b"") == b""


def test_encode_data_of_exactly_max_payload_is_one_frame() -> None:
    """A body of exactly MAX_PAYLOAD bytes is one frame, equal to encode(Data(...))."""
    body = b"x" * MAX_PAYLOAD
    assert encode_data(9, body) == encode(Data(stream=9, data=body))


def test_encode_rejects_oversize_data() -> None:
    """encode refuses a single DATA frame over MAX_PAYLOAD."""
    with pytest.raises(WireProtocolError, match="MAX_PAYLOAD"):
        encode(Data(stream=1, data=b"x" * (MAX_PAYLOAD + 1)))


def test_encode_rejects_oversize_json() -> None:
    """encode refuses a JSON payload over MAX_PAYLOAD, naming the frame type."""
    with pytest.raises(WireProtocolError, match="RESPONSE payload"):
        encode(
            ResponseStart(stream=1, status=200, reason="OK", headers=(("x", "y" * MAX_PAYLOAD),))
        )


# --- framing and bounds -------------------------------------------------------------------


def test_oversize_header_is_rejected_before_its_payload() -> None:
    """A header announcing more than MAX_PAYLOAD is refused as soon as it is read."""
    with pytest.raises(WireProtocolError, match="MAX_PAYLOAD"):
        WireDecoder().receive_data(HEADER.pack(MAX_PAYLOAD + 1, FrameType.DATA, 1))


def test_oversize_header_is_rejected_when_it_arrives_in_pieces() -> None:
    """An oversize header split across calls is refused once its ninth byte arrives."""
    decoder = WireDecoder()
    header = HEADER.pack(2**32 - 1, FrameType.DATA, 1)
    assert decoder.receive_data(header[:5]) == []
    with pytest.raises(WireProtocolError, match="MAX_PAYLOAD"):
        decoder.receive_data(header[5:])


def test_unknown_frame_type_is_rejected() -> None:
    """A frame type outside the table is a protocol error naming the type."""
    with pytest.raises(WireProtocolError, match="unknown frame type 9"):
        WireDecoder().receive_data(frame(9, 0, b""))


def test_truncated_stream_yields_nothing_until_complete() -> None:
    """Every proper prefix of a frame decodes to nothing; the last byte completes it."""
    wire = encode(Reset(stream=4, reason="gone"))
    decoder = WireDecoder()
    for i in range(len(wire) - 1):
        assert decoder.receive_data(wire[i : i + 1]) == []
        assert decoder.buffered == i + 1
    assert decoder.receive_data(wire[-1:]) == [Reset(stream=4, reason="gone")]
    assert decoder.buffered == 0


def test_full_frames_before_a_partial_one_are_returned() -> None:
    """Complete frames in a chunk are returned at once; the trailing partial one waits."""
    first, second = encode(End(stream=1)), encode(Data(stream=2, data=b"hello"))
    decoder = WireDecoder()
    assert decoder.receive_data(first + second[:-2]) == [End(stream=1)]
    assert decoder.buffered == len(second) - 2
    assert decoder.receive_data(second[-2:] + first) == [
        Data(stream=2, data=b"hello"),
        End(stream=1),
    ]


def test_buffer_is_bounded_by_one_maximal_frame() -> None:
    """The decoder never holds more than a header plus MAX_PAYLOAD bytes between calls."""
    wire = encode(Data(stream=1, data=b"z" * MAX_PAYLOAD))
    decoder = WireDecoder()
    assert decoder.receive_data(wire[:-1]) == []
    assert decoder.buffered == HEADER_SIZE + MAX_PAYLOAD - 1
    assert decoder.receive_data(wire[-1:] + wire[:100]) == [Data(stream=1, data=b"z" * MAX_PAYLOAD)]
    assert decoder.buffered == 100


def test_accepts_memoryview_and_bytearray_input() -> None:
    """receive_data takes any bytes-like chunk, as transports may hand over."""
    wire = encode(Data(stream=1, data=b"abc")) * 2
    decoder = WireDecoder()
    assert decoder.receive_data(bytearray(wire[:5])) == []  # type: ignore[arg-type]
    assert decoder.receive_data(memoryview(wire)[5:]) == [Data(stream=1, data=b"abc")] * 2  # type: ignore[arg-type]


# --- rejection of bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"{", "not UTF-8 JSON"),
        (b"\xff\xfe{}", "not UTF-8 JSON"),
        (b'{"level": "warning", "message": "x"} []', "not UTF-8 JSON"),
        (b'["level", "message"]', "must be a JSON object"),
        (b'{"level": "warning"}', "NOTICE frame on stream 0: payload lacks field 'message'"),
        (b'{"level": "warning", "message": 3}', "message must be a string, got 3"),
        (b'{"level": "info", "message": "x"}', "one of warning, error"),
        (b'{"level": "warning", "message": NaN}', "not UTF-8 JSON"),
    ],
)
def test_bad_json_payload_is_rejected(payload: bytes, complaint: str) -> None:
    """Malformed, non-object, incomplete or mistyped JSON is a protocol error saying why."""
    with pytest.raises(WireProtocolError, match=complaint):
        WireDecoder().receive_data(frame(FrameType.NOTICE, 0, payload))


def test_deeply_nested_json_is_a_protocol_error() -> None:
    """JSON nested past the parser's recursion limit is a protocol error, not RecursionError."""
    payload = b'{"record":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(WireProtocolError):
        WireDecoder().receive_data(frame(FrameType.FLOW, 0, payload))


@pytest.mark.parametrize(
    "fields",
    [
        {"port": 0, "mode": "steal", "filter": None},
        {"port": 65536, "mode": "steal", "filter": None},
        {"port": True, "mode": "steal", "filter": None},
        {"port": 80.0, "mode": "steal", "filter": None},
        {"port": 80, "mode": "STEAL", "filter": None},
        {"port": 80, "mode": "steal", "filter": "path"},
        {"port": 80, "mode": "steal"},
        {"port": 80, "mode": "steal", "filter": None, "response_timeout": 0},
        {"port": 80, "mode": "steal", "filter": None, "response_timeout": 1.5},
        {"port": 80, "mode": "steal", "filter": None, "response_timeout": 86_401},
        {"port": 80, "mode": "steal", "filter": None, "local": 8080},
    ],
)
def test_bad_subscribe_fields_are_rejected(fields: dict[str, object]) -> None:
    """Out-of-range ports, bools for ints, unknown modes and a non-object filter are refused."""
    with pytest.raises(WireProtocolError, match="SUBSCRIBE"):
        decode_json_frame(FrameType.SUBSCRIBE, fields, stream=1)


@pytest.mark.parametrize("status", [0, 99, 1000, 65535])
def test_bad_status_is_rejected_on_decode(status: int) -> None:
    """A response status outside 100..999 is refused."""
    with pytest.raises(WireProtocolError, match="status"):
        WireDecoder().receive_data(
            frame(FrameType.RESPONSE, 1, compact(struct.pack("!HBI", status, 0, 0), ["OK"])))


@pytest.mark.parametrize("strings", [["OK", "a"], ["OK", "a", "b", "c"], ["OK", "a", "\u20ac"],
                                     ["OK", "\u0100", "b"]])
def test_bad_headers_are_rejected_on_decode(strings: list[str]) -> None:
    """Headers must be name/value pairs of latin-1 strings."""
    with pytest.raises(WireProtocolError, match="headers"):
        WireDecoder().receive_data(
            frame(FrameType.RESPONSE, 1, compact(struct.pack("!HBI", 200, 0, 0), strings)))


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"", "too short"),
        (struct.pack("!IHBI", 1, 80, 0, 0), "too short"),
        (struct.pack("!IHBIH", 1, 80, 0, 0, 2) + b"\0\0\0\1", "too short for 2 string"),
        (compact(struct.pack("!IHBI", 1, 80, 0, 0), ["GET", "/", "1.1"]), "lacks"),
        (compact(struct.pack("!IHBI", 1, 0, 0, 0), ["GET", "/", "1.1", "p"]), "port"),
        (compact(struct.pack("!IHBI", 1, 80, 4, 0), ["GET", "/", "1.1", "p"]), "flags"),
        (struct.pack("!IHBIH", 1, 80, 0, 0, 1) + struct.pack("!I", 3) + b"ab", "add up"),
        (struct.pack("!IHBIH", 1, 80, 0, 0, 1) + struct.pack("!I", 1) + b"\xff", "UTF-8"),
    ],
)
def test_bad_request_payloads_are_rejected(payload: bytes, complaint: str) -> None:
    """A REQUEST payload cut short, with strings that do not add up, that are not UTF-8,
    or with bad fixed fields is a protocol error saying why."""
    with pytest.raises(WireProtocolError, match=f"REQUEST frame on stream 1.*{complaint}"):
        WireDecoder().receive_data(frame(FrameType.REQUEST, 1, payload))


@pytest.mark.parametrize(
    "frame_bytes",
    [
        frame(FrameType.PING, 0, b"1234567"),
        frame(FrameType.PONG, 0, b"123456789"),
        frame(FrameType.END, 1, b"x"),
        frame(FrameType.UNSUBSCRIBE, 1, b"{}"),
        frame(FrameType.PING, 3, b"12345678"),
        frame(FrameType.HELLO, 1, b'{"token": "t", "client": "c", "version": 1}'),
        frame(FrameType.FLOW, 2, b"{}"),
        frame(FrameType.HELLO, 0, b'{"token": "t", "client": "c"}'),
        frame(
            FrameType.WELCOME, 0, b'{"agent":"a","session":"s","listening_ports":[0],"version":1}'
        ),
    ],
)
def test_malformed_frames_are_rejected(frame_bytes: bytes) -> None:
    """Wrong nonce sizes, payloads on empty frames, link frames off stream 0 are refused."""
    with pytest.raises(WireProtocolError):
        WireDecoder().receive_data(frame_bytes)


@pytest.mark.parametrize(
    "message",
    [
        Data(stream=-1, data=b""),
        End(stream=2**32),
        Ping(nonce=b"short"),
        Pong(nonce=b"much too long"),
        Subscribe(sub_id=1, port=0, mode="steal", filter=None),
        Subscribe(sub_id=1, port=80, mode="copy", filter=None),
        Subscribe(sub_id=1, port=80, mode="steal", filter=None, response_timeout=0),
        RequestStart(stream=1, sub_id=1, port=80, method="GET", target="/", http_version="1.1",
                     headers=(), peer="", flow_id=-1),
        RequestStart(stream=1, sub_id=1, port=80, method=1, target="/",  # type: ignore[arg-type]
                     http_version="1.1", headers=(), peer=""),
        RequestStart(stream=1, sub_id=1, port=80, method="GET", target="/", http_version="1.1",
                     headers=(("a",),), peer=""),  # type: ignore[arg-type]
        Trailers(stream=1, headers=(("a", 2),)),  # type: ignore[arg-type]
        Subscribed(sub_id=1, port=70000, mode="mirror", filter=None),
        ResponseStart(stream=1, status=99, reason="", headers=()),
        ResponseStart(stream=1, status=200, reason="", headers=(("x", "\u20ac"),)),
        ConnectionStart(stream=1, sub_id=1, port=True, peer=""),
        Notice(level="info", message="x"),
        Flow(records=([math.nan] * len(ROW_FIELDS) + [None],)),
        Flow(records=([object()] * len(ROW_FIELDS) + [None],)),
        Flow(records=([1, 2],)),
        Hello(token=1, client="c"),  # type: ignore[arg-type]
        Welcome(agent="a", session="s", listening_ports=(80, 0)),
    ],
)
def test_invalid_messages_are_refused_on_encode(message: Message) -> None:
    """encode applies the same checks as decode, so it never emits an undecodable frame."""
    with pytest.raises(WireProtocolError):
        encode(message)


def test_encode_data_rejects_bad_stream() -> None:
    """encode_data validates the stream id like encode does."""
    with pytest.raises(WireProtocolError, match="stream"):
        encode_data(2**32, b"x")


def test_decoder_stays_failed_after_an_error() -> None:
    """After a protocol error the decoder refuses all further input."""
    decoder = WireDecoder()
    with pytest.raises(WireProtocolError):
        decoder.receive_data(frame(42, 0, b""))
    assert decoder.buffered == 0
    with pytest.raises(WireProtocolError, match="already failed"):
        decoder.receive_data(encode(End(stream=1)))


# --- fuzzing: any input decodes or raises WireProtocolError --------------------------------


def outcome(chunks: list[bytes]) -> list[Message] | None:
    """The messages decoded from the chunks, or None if the decoder raised WireProtocolError."""
    try:
        return feed(WireDecoder(), chunks)
    except WireProtocolError:
        return None


def assert_same_outcome_whole_and_bytewise(wire: bytes) -> None:
    whole = outcome([wire])
    bytewise = outcome([wire[i : i + 1] for i in range(len(wire))])
    assert whole == bytewise


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_protocol_error(wire: bytes) -> None:
    """Random bytes decode or raise WireProtocolError, the same whole or byte by byte."""
    assert_same_outcome_whole_and_bytewise(wire)


@given(
    st.integers(0, 255),
    streams,
    st.one_of(
        st.binary(max_size=64),
        json_objects.map(lambda obj: json.dumps(obj).encode()),
        json_values.map(lambda obj: json.dumps(obj).encode()),
    ),
)
def test_well_framed_random_payloads_decode_or_raise(
    ftype: int, stream: int, payload: bytes
) -> None:
    """A valid header over any payload, of any type byte, decodes or raises WireProtocolError."""
    assert_same_outcome_whole_and_bytewise(frame(ftype, stream, payload))


@given(message_lists.filter(bool), st.data())
def test_corrupted_encodings_decode_or_raise(items: list[Message], data: st.DataObject) -> None:
    """Valid frames with bytes overwritten decode or raise WireProtocolError, never worse."""
    wire = bytearray(encode_all(items))
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    assert_same_outcome_whole_and_bytewise(bytes(wire))


# --- handshake ----------------------------------------------------------------------------


def test_check_hello_accepts_the_right_token_and_version() -> None:
    """A Hello of this version with the session token is returned as is."""
    hello = Hello(token="s3cret", client="waylay-cli/0.1")
    assert check_hello(hello, "s3cret") is hello


def test_check_hello_rejects_a_wrong_token() -> None:
    """A Hello with another token is refused as a bad session token."""
    with pytest.raises(WireProtocolError, match="bad session token"):
        check_hello(Hello(token="guess", client="c"), "s3cret")


def test_check_hello_compares_non_ascii_tokens() -> None:
    """Non-ASCII tokens are compared too, rather than crashing compare_digest."""
    assert check_hello(Hello(token="clé", client="c"), "clé").token == "clé"
    with pytest.raises(WireProtocolError, match="bad session token"):
        check_hello(Hello(token="cle", client="c"), "clé")


def test_check_hello_names_both_versions_on_mismatch() -> None:
    """A Hello of another protocol version is refused with both versions named."""
    with pytest.raises(WireProtocolError, match=r"client speaks 1, agent speaks 2"):
        check_hello(Hello(token="s3cret", client="c", version=1), "s3cret")


def test_check_hello_rejects_other_messages() -> None:
    """Anything but a Hello as the first message is refused."""
    with pytest.raises(WireProtocolError, match="expected HELLO"):
        check_hello(Ping(nonce=b"12345678"), "s3cret")


def test_decoded_hello_of_another_version_reaches_check_hello() -> None:
    """The decoder lets any version through so the handshake can say which one it got."""
    (message,) = WireDecoder().receive_data(encode(Hello(token="t", client="c", version=7)))
    with pytest.raises(WireProtocolError, match="client speaks 7"):
        check_hello(message, "t")


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (struct.pack("!HB", 200, 0), "too short"),
        (compact(struct.pack("!HBI", 200, 2, 0), ["OK"]), "flags"),
        (compact(struct.pack("!HBI", 200, 1, 99), ["OK"]), "body length"),
        (compact(struct.pack("!HBI", 200, 1, 3), ["OK"]), "too short for 1 string"),
        (compact(struct.pack("!HBI", 200, 1, 1), ["OK"]), "add up"),
    ],
)
def test_bad_response_payloads_are_rejected(payload: bytes, complaint: str) -> None:
    """A RESPONSE payload with unknown flags or a body length past its end is refused."""
    with pytest.raises(WireProtocolError, match=f"RESPONSE frame on stream 1.*{complaint}"):
        WireDecoder().receive_data(frame(FrameType.RESPONSE, 1, payload))
