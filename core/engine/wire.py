"""The agent ↔ client wire protocol: frames to messages and back, sans-I/O.

Theory of operation
-------------------
One byte stream (TCP, Unix socket or a Kubernetes port-forward) carries frames in both
directions. A frame is a 9-byte header, ``!IBI`` = (payload length, frame type, stream id),
then the payload. Stream 0 is the link itself (handshake, pings, flow records, notices, and
a fatal ``Error``); each intercepted request or stolen connection has its own stream id,
and a subscription's ``sub_id`` travels as the stream id of SUBSCRIBE / SUBSCRIBED /
UNSUBSCRIBE. Payloads are raw bytes (DATA, PING, PONG), empty (END, UNSUBSCRIBE), compact
binary for the per-request heads (REQUEST, RESPONSE, TRAILERS: ``waylay.core.engine.wire_heads``,
since every stolen request pays for them on both sides), or a UTF-8 JSON object whose fields are
listed next to each message class (``waylay.core.engine.wire_messages``).

There is no connection state here: this module only translates. ``encode`` turns one
message into one frame, ``encode_data`` splits a body over as many DATA frames as needed,
and ``WireDecoder.receive_data`` turns whatever bytes arrived into the complete messages
they hold, keeping at most one partial frame. Anything malformed, in either direction,
raises ``WireProtocolError``: the same checks run on encode and on decode, so a message
that encodes always decodes back equal to itself (JSON-valued fields excepted: a
``filter`` or ``record`` must hold only JSON types, with str keys, to compare equal).

HTTP header names and values are bytes on the wire of HTTP but str in JSON; they travel
as latin-1 decoded str, which maps every byte to one code point and back (lossless).
"""

from __future__ import annotations

import hmac
import json
import struct
from collections.abc import Callable
from typing import Any, Final, assert_never

from waylay.core.engine.flow import ROW_FIELDS, FlowRow
from waylay.core.engine.wire_heads import (
    check_latin1,
    flat_headers,
    header_pairs,
    pack_strings,
    unpack_strings,
)
from waylay.core.engine.wire_messages import (
    DEFAULT_RESPONSE_TIMEOUT_S,
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    MAX_RESPONSE_TIMEOUT_S,
    MAX_STREAM,
    MODES,
    NONCE_SIZE,
    NOTICE_LEVELS,
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
    WireProtocolError,
    headers_from_wire,
    headers_to_wire,
)

__all__ = [
    "DEFAULT_RESPONSE_TIMEOUT_S",
    "HEADER",
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "ConnectionStart",
    "Data",
    "End",
    "Error",
    "Flow",
    "FrameType",
    "Hello",
    "Message",
    "Notice",
    "Pause",
    "Ping",
    "Pong",
    "RequestStart",
    "Reset",
    "ResponseStart",
    "Resume",
    "Subscribe",
    "Subscribed",
    "Trailers",
    "Unsubscribe",
    "Welcome",
    "WireDecoder",
    "WireProtocolError",
    "check_hello",
    "encode",
    "encode_data",
    "headers_from_wire",
    "headers_to_wire",
]


# --- validation, shared by encode and decode ------------------------------------------------
# ``where`` names the offending value: "RequestStart.port" when encoding, the JSON field name
# ("port") when decoding, where the decoder adds the frame type and stream to the message.


def _shown(value: object) -> str:
    """``value`` for an error message, cut short: a peer's payload may be 256 KiB."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _int(value: object, where: str, low: int, high: int) -> int:
    # type() rather than isinstance(): bool is an int subclass, and True is not a port.
    if type(value) is not int or not low <= value <= high:
        raise WireProtocolError(f"{where} must be an integer in {low}..{high}, got {_shown(value)}")
    return value


def _stream(value: object, where: str) -> int:
    return _int(value, where, 0, MAX_STREAM)


def _port(value: object, where: str) -> int:
    return _int(value, where, 1, 65535)


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise WireProtocolError(f"{where} must be true or false, got {value!r}")
    return value


def _str(value: object, where: str) -> str:
    if type(value) is not str:
        raise WireProtocolError(f"{where} must be a string, got {_shown(value)}")
    return value


def _optional_str(value: object, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _optional_timeout(value: object, where: str) -> int | None:
    return None if value is None else _int(value, where, 1, MAX_RESPONSE_TIMEOUT_S)


def _choice(value: object, where: str, choices: tuple[str, ...]) -> str:
    if type(value) is not str or value not in choices:
        raise WireProtocolError(f"{where} must be one of {', '.join(choices)}; got {_shown(value)}")
    return value


def _ports(value: object, where: str) -> tuple[int, ...]:
    if type(value) is not tuple and type(value) is not list:
        raise WireProtocolError(f"{where} must be a list of ports, got {_shown(value)}")
    return tuple(_port(port, where) for port in value)


def _object(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise WireProtocolError(f"{where} must be a JSON object, got {_shown(value)}")
    return value


def _row(value: object, where: str) -> FlowRow:
    """A flow row (``waylay.core.engine.flow.ROW_FIELDS`` in order, then null or an object)."""
    if (not isinstance(value, list) or len(value) != len(ROW_FIELDS) + 1
            or not (value[-1] is None or isinstance(value[-1], dict))):
        raise WireProtocolError(f"{where} must be a flow row of {len(ROW_FIELDS)} values and "
                                f"null or an object, got {_shown(value)}")
    return value


def _optional_object(value: object, where: str) -> dict[str, object] | None:
    return None if value is None else _object(value, where)


def _nonce(value: object, where: str) -> bytes:
    if type(value) is not bytes or len(value) != NONCE_SIZE:
        raise WireProtocolError(f"{where} must be exactly {NONCE_SIZE} bytes, got {_shown(value)}")
    return value


# --- encoding -----------------------------------------------------------------------------

# The fixed fields of the compact heads (waylay.core.engine.wire_heads): REQUEST's sub_id, port,
# flags and flow_id; RESPONSE's status. TRAILERS has none.
_REQUEST_FIXED: Final = struct.Struct("!IHBI")
_HAS_FLOW_ID: Final = 1  # REQUEST flags bit: flow_id is set (else it is None)
_ENDS: Final = 2  # REQUEST flags bit: the request is complete (no body frames follow)
_REQUEST_FLAGS: Final = _HAS_FLOW_ID | _ENDS
_RESPONSE_FIXED: Final = struct.Struct("!HBI")  # status, flags, body length
_RESPONSE_ENDS: Final = 1  # RESPONSE flags bit: the response is complete

# ensure_ascii: any Python str (lone surrogates included) survives the round trip, and the
# payload is plain ASCII, which is valid UTF-8.
_JSON_ENCODER: Final = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _json_payload(obj: dict[str, object], where: str) -> bytes:
    try:
        return _JSON_ENCODER.encode(obj).encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        raise WireProtocolError(f"{where} is not JSON-serialisable: {exc}") from None


def _frame(ftype: FrameType, stream: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise WireProtocolError(
            f"{ftype.name} payload is {len(payload)} bytes, over MAX_PAYLOAD ({MAX_PAYLOAD})"
        )
    return HEADER.pack(len(payload), ftype, stream) + payload


def encode(message: Message) -> bytes:
    """One message → one frame. Raises WireProtocolError if the message is invalid or its
    payload exceeds MAX_PAYLOAD (use encode_data for bodies of any size)."""
    # Ordered by frequency: the per-request messages first.
    match message:
        case Data(stream=stream, data=data):
            _stream(stream, "Data.stream")
            return _frame(FrameType.DATA, stream, bytes(data))
        case End(stream=stream):
            return _frame(FrameType.END, _stream(stream, "End.stream"), b"")
        case Pause(stream=stream):
            return _frame(FrameType.PAUSE, _stream(stream, "Pause.stream"), b"")
        case Resume(stream=stream):
            return _frame(FrameType.RESUME, _stream(stream, "Resume.stream"), b"")
        case RequestStart():
            stream = _stream(message.stream, "RequestStart.stream")
            flow_id = message.flow_id
            fixed = _REQUEST_FIXED.pack(
                _stream(message.sub_id, "RequestStart.sub_id"),
                _port(message.port, "RequestStart.port"),
                (0 if flow_id is None else _HAS_FLOW_ID)
                | (_ENDS if _bool(message.end, "RequestStart.end") else 0),
                0 if flow_id is None else _stream(flow_id, "RequestStart.flow_id"))
            flat = flat_headers(message.headers, "RequestStart.headers")
            packed = pack_strings(fixed, [message.method, message.target,
                                           message.http_version, message.peer, *flat],
                                   "RequestStart fields")
            if flat:
                check_latin1("".join(flat), "RequestStart.headers")
            return _frame(FrameType.REQUEST, stream, packed)
        case ResponseStart():
            stream = _stream(message.stream, "ResponseStart.stream")
            body = message.body
            if type(body) is not bytes:
                raise WireProtocolError(f"ResponseStart.body must be bytes, got {_shown(body)}")
            fixed = _RESPONSE_FIXED.pack(
                _int(message.status, "ResponseStart.status", 100, 999),
                _RESPONSE_ENDS if _bool(message.end, "ResponseStart.end") else 0, len(body))
            flat = flat_headers(message.headers, "ResponseStart.headers")
            packed = pack_strings(fixed, [message.reason, *flat], "ResponseStart fields")
            if flat:
                check_latin1("".join(flat), "ResponseStart.headers")
            return _frame(FrameType.RESPONSE, stream, packed + body if body else packed)
        case Trailers(stream=stream, headers=headers):
            flat = flat_headers(headers, "Trailers.headers")
            packed = pack_strings(b"", flat, "Trailers.headers")
            if flat:
                check_latin1("".join(flat), "Trailers.headers")
            return _frame(FrameType.TRAILERS, _stream(stream, "Trailers.stream"), packed)
        case ConnectionStart():
            stream = _stream(message.stream, "ConnectionStart.stream")
            payload = {
                "sub_id": _stream(message.sub_id, "ConnectionStart.sub_id"),
                "port": _port(message.port, "ConnectionStart.port"),
                "peer": _str(message.peer, "ConnectionStart.peer"),
            }
            return _frame(FrameType.CONNECTION, stream, _json_payload(payload, "ConnectionStart"))
        case Reset(stream=stream, reason=reason):
            payload = {"reason": _str(reason, "Reset.reason")}
            return _frame(
                FrameType.RESET, _stream(stream, "Reset.stream"), _json_payload(payload, "Reset")
            )
        case Flow(records=records):
            payload = {"rows": [_row(r, "Flow.records[]") for r in records]}
            return _frame(FrameType.FLOW, 0, _json_payload(payload, "Flow"))
        case Ping(nonce=nonce):
            return _frame(FrameType.PING, 0, _nonce(nonce, "Ping.nonce"))
        case Pong(nonce=nonce):
            return _frame(FrameType.PONG, 0, _nonce(nonce, "Pong.nonce"))
        case Notice(level=level, message=text):
            payload = {
                "level": _choice(level, "Notice.level", NOTICE_LEVELS),
                "message": _str(text, "Notice.message"),
            }
            return _frame(FrameType.NOTICE, 0, _json_payload(payload, "Notice"))
        case Error(stream=stream, message=text, code=code):
            payload = {"message": _str(text, "Error.message"), "code": _str(code, "Error.code")}
            return _frame(
                FrameType.ERROR, _stream(stream, "Error.stream"), _json_payload(payload, "Error")
            )
        case Subscribe(sub_id=sub_id, port=port, mode=mode, filter=http_filter,
                       capture=capture, local=local, response_timeout=timeout):
            payload = {
                "port": _port(port, "Subscribe.port"),
                "mode": _choice(mode, "Subscribe.mode", MODES),
                "filter": _optional_object(http_filter, "Subscribe.filter"),
                "capture": _bool(capture, "Subscribe.capture"),
            }
            # Absent rather than null when unset: the frame stays what older agents read.
            if local is not None:
                payload["local"] = _str(local, "Subscribe.local")
            if timeout is not None:
                payload["response_timeout"] = _optional_timeout(
                    timeout, "Subscribe.response_timeout")
            return _frame(
                FrameType.SUBSCRIBE,
                _stream(sub_id, "Subscribe.sub_id"),
                _json_payload(payload, "Subscribe"),
            )
        case Subscribed(sub_id=sub_id, port=port, mode=mode, filter=text_filter):
            payload = {
                "port": _port(port, "Subscribed.port"),
                "mode": _choice(mode, "Subscribed.mode", MODES),
                "filter": _optional_str(text_filter, "Subscribed.filter"),
            }
            return _frame(
                FrameType.SUBSCRIBED,
                _stream(sub_id, "Subscribed.sub_id"),
                _json_payload(payload, "Subscribed"),
            )
        case Unsubscribe(sub_id=sub_id):
            return _frame(FrameType.UNSUBSCRIBE, _stream(sub_id, "Unsubscribe.sub_id"), b"")
        case Hello(token=token, client=client, version=version):
            payload = {
                "token": _str(token, "Hello.token"),
                "client": _str(client, "Hello.client"),
                "version": _stream(version, "Hello.version"),
            }
            return _frame(FrameType.HELLO, 0, _json_payload(payload, "Hello"))
        case Welcome():
            payload = {
                "agent": _str(message.agent, "Welcome.agent"),
                "session": _str(message.session, "Welcome.session"),
                "listening_ports": _ports(message.listening_ports, "Welcome.listening_ports"),
                "version": _stream(message.version, "Welcome.version"),
            }
            return _frame(FrameType.WELCOME, 0, _json_payload(payload, "Welcome"))
        case _:
            assert_never(message)


def encode_data(stream: int, data: bytes) -> bytes:
    """``data`` on ``stream`` as as many DATA frames as needed, each payload at most
    MAX_PAYLOAD; empty data gives no frame at all (b"")."""
    _stream(stream, "Data.stream")
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for offset in range(0, len(view), MAX_PAYLOAD):
        chunk = view[offset : offset + MAX_PAYLOAD]
        parts.append(HEADER.pack(len(chunk), FrameType.DATA, stream))
        parts.append(chunk)
    return b"".join(parts)


# --- decoding -----------------------------------------------------------------------------
# Each decoder turns one payload into its message. Errors name only the field ("port"), and
# the decode loop adds the frame type and stream, so that a good frame pays for no message
# text. JSON fields are read by subscript: the loop reports a KeyError as a missing field.


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_JSON_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _json_object(payload: memoryview) -> dict[str, Any]:
    try:
        obj = _JSON_DECODER.decode(str(payload, "utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise WireProtocolError(f"payload is not UTF-8 JSON: {exc}") from None
    if type(obj) is not dict:
        raise WireProtocolError(f"payload must be a JSON object, got {type(obj).__name__}")
    return obj


def _link_only(stream: int) -> None:
    if stream != 0:
        raise WireProtocolError("this frame belongs on stream 0")


def _empty(payload: memoryview) -> None:
    if len(payload):
        raise WireProtocolError(f"payload must be empty, has {len(payload)} bytes")


# The generated __init__ of a frozen dataclass sets each field through object.__setattr__;
# the per-request messages are built instead through their slots' descriptors (what that
# __init__ amounts to, at a fraction of the cost), as waylay.core.engine.http1_framing does for
# heads.
def _slot_setters(cls: type) -> tuple[Callable[[object, object], None], ...]:
    fields = tuple(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    assert cls.__slots__ == fields, cls  # type: ignore[attr-defined]
    return tuple(getattr(cls, name).__set__ for name in fields)


_DATA_SET: Final = _slot_setters(Data)
_END_SET: Final = _slot_setters(End)
_REQUEST_SET: Final = _slot_setters(RequestStart)
_RESPONSE_SET: Final = _slot_setters(ResponseStart)
_new = object.__new__


def _decode_data(stream: int, payload: memoryview) -> Message:
    message = _new(Data)
    _DATA_SET[0](message, stream)
    _DATA_SET[1](message, payload.tobytes())
    return message


def _decode_end(stream: int, payload: memoryview) -> Message:
    if len(payload):
        _empty(payload)
    message = _new(End)
    _END_SET[0](message, stream)
    return message


def _decode_pause(stream: int, payload: memoryview) -> Message:
    _empty(payload)
    return Pause(stream=stream)


def _decode_resume(stream: int, payload: memoryview) -> Message:
    _empty(payload)
    return Resume(stream=stream)


def _decode_request(stream: int, payload: memoryview) -> Message:
    if len(payload) < _REQUEST_FIXED.size:
        raise WireProtocolError("payload too short for sub_id, port and flow_id")
    sub_id, port, flags, flow_id = _REQUEST_FIXED.unpack_from(payload)
    if not port:
        _port(port, "port")
    if flags & ~_REQUEST_FLAGS:
        raise WireProtocolError(f"unknown flags {flags:#x}")
    strings, text = unpack_strings(payload, _REQUEST_FIXED.size)
    if len(strings) < 4:
        raise WireProtocolError("lacks method, target, http_version or peer")
    message = _new(RequestStart)
    s = _REQUEST_SET  # stream, sub_id, port, method, target, version, headers, peer, flow_id, end
    s[0](message, stream)
    s[1](message, sub_id)
    s[2](message, port)
    s[3](message, strings[0])
    s[4](message, strings[1])
    s[5](message, strings[2])
    s[6](message, header_pairs(strings, 4, text, "headers"))
    s[7](message, strings[3])
    s[8](message, flow_id if flags & _HAS_FLOW_ID else None)
    s[9](message, bool(flags & _ENDS))
    return message


def _decode_response(stream: int, payload: memoryview) -> Message:
    if len(payload) < _RESPONSE_FIXED.size:
        raise WireProtocolError("payload too short for status, flags and body length")
    status, flags, body_length = _RESPONSE_FIXED.unpack_from(payload)
    _int(status, "status", 100, 999)
    if flags & ~_RESPONSE_ENDS:
        raise WireProtocolError(f"unknown flags {flags:#x}")
    if body_length > len(payload) - _RESPONSE_FIXED.size:
        raise WireProtocolError(f"body length {body_length} exceeds the payload")
    if body_length:
        body = payload[len(payload) - body_length:].tobytes()
        payload = payload[:len(payload) - body_length]
    else:
        body = b""
    strings, text = unpack_strings(payload, _RESPONSE_FIXED.size)
    if not strings:
        raise WireProtocolError("lacks the reason")
    message = _new(ResponseStart)
    s = _RESPONSE_SET  # stream, status, reason, headers, body, end
    s[0](message, stream)
    s[1](message, status)
    s[2](message, strings[0])
    s[3](message, header_pairs(strings, 1, text, "headers"))
    s[4](message, body)
    s[5](message, bool(flags))
    return message


def _decode_trailers(stream: int, payload: memoryview) -> Message:
    strings, text = unpack_strings(payload, 0)
    return Trailers(stream=stream, headers=header_pairs(strings, 0, text, "headers"))


def _decode_connection(stream: int, payload: memoryview) -> Message:
    fields = _json_object(payload)
    return ConnectionStart(
        stream=stream,
        sub_id=_stream(fields["sub_id"], "sub_id"),
        port=_port(fields["port"], "port"),
        peer=_str(fields["peer"], "peer"),
    )


def _decode_reset(stream: int, payload: memoryview) -> Message:
    return Reset(stream=stream, reason=_str(_json_object(payload)["reason"], "reason"))


def _decode_flow(stream: int, payload: memoryview) -> Message:
    _link_only(stream)
    rows = _json_object(payload)["rows"]
    if not isinstance(rows, list):
        raise WireProtocolError("FLOW frame: rows must be a list")
    return Flow(records=tuple(_row(r, "rows[]") for r in rows))


def _decode_ping(stream: int, payload: memoryview) -> Message:
    _link_only(stream)
    return Ping(nonce=_nonce(bytes(payload), "nonce"))


def _decode_pong(stream: int, payload: memoryview) -> Message:
    _link_only(stream)
    return Pong(nonce=_nonce(bytes(payload), "nonce"))


def _decode_notice(stream: int, payload: memoryview) -> Message:
    _link_only(stream)
    fields = _json_object(payload)
    return Notice(
        level=_choice(fields["level"], "level", NOTICE_LEVELS),
        message=_str(fields["message"], "message"),
    )


def _decode_error(stream: int, payload: memoryview) -> Message:
    fields = _json_object(payload)
    return Error(
        stream=stream,
        message=_str(fields["message"], "message"),
        code=_str(fields["code"], "code"),
    )


def _decode_subscribe(stream: int, payload: memoryview) -> Message:
    fields = _json_object(payload)
    return Subscribe(
        sub_id=stream,
        port=_port(fields["port"], "port"),
        mode=_choice(fields["mode"], "mode", MODES),
        filter=_optional_object(fields["filter"], "filter"),
        capture=_bool(fields.get("capture", False), "capture"),
        local=_optional_str(fields.get("local"), "local"),
        response_timeout=_optional_timeout(fields.get("response_timeout"), "response_timeout"),
    )


def _decode_subscribed(stream: int, payload: memoryview) -> Message:
    fields = _json_object(payload)
    return Subscribed(
        sub_id=stream,
        port=_port(fields["port"], "port"),
        mode=_choice(fields["mode"], "mode", MODES),
        filter=_optional_str(fields["filter"], "filter"),
    )


def _decode_unsubscribe(stream: int, payload: memoryview) -> Message:
    _empty(payload)
    return Unsubscribe(sub_id=stream)


def _decode_hello(stream: int, payload: memoryview) -> Message:
    _link_only(stream)
    fields = _json_object(payload)
    # Any version decodes, so that check_hello can name both versions when they differ.
    return Hello(
        token=_str(fields["token"], "token"),
        client=_str(fields["client"], "client"),
        version=_stream(fields["version"], "version"),
    )


def _decode_welcome(stream: int, payload: memoryview) -> Message:
    _link_only(stream)
    fields = _json_object(payload)
    return Welcome(
        agent=_str(fields["agent"], "agent"),
        session=_str(fields["session"], "session"),
        listening_ports=_ports(fields["listening_ports"], "listening_ports"),
        version=_stream(fields["version"], "version"),
    )


# Frame type → payload decoder. A type missing from this table is a protocol error.
_DECODERS: Final[dict[int, Callable[[int, memoryview], Message]]] = {
    FrameType.HELLO: _decode_hello,
    FrameType.WELCOME: _decode_welcome,
    FrameType.ERROR: _decode_error,
    FrameType.PING: _decode_ping,
    FrameType.PONG: _decode_pong,
    FrameType.SUBSCRIBE: _decode_subscribe,
    FrameType.SUBSCRIBED: _decode_subscribed,
    FrameType.UNSUBSCRIBE: _decode_unsubscribe,
    FrameType.REQUEST: _decode_request,
    FrameType.CONNECTION: _decode_connection,
    FrameType.DATA: _decode_data,
    FrameType.END: _decode_end,
    FrameType.PAUSE: _decode_pause,
    FrameType.RESUME: _decode_resume,
    FrameType.RESPONSE: _decode_response,
    FrameType.RESET: _decode_reset,
    FrameType.FLOW: _decode_flow,
    FrameType.NOTICE: _decode_notice,
    FrameType.TRAILERS: _decode_trailers,
}


def _check_header(length: int, ftype: int) -> None:
    """Reject a header as soon as it is read, before waiting for (or buffering) its payload."""
    if length > MAX_PAYLOAD:
        raise WireProtocolError(
            f"frame announces a {length}-byte payload, over MAX_PAYLOAD ({MAX_PAYLOAD})"
        )
    if ftype not in _DECODERS:
        raise WireProtocolError(f"unknown frame type {ftype}")


def _frame_error(ftype: int, stream: int, problem: str) -> WireProtocolError:
    return WireProtocolError(f"{FrameType(ftype).name} frame on stream {stream}: {problem}")


class WireDecoder:
    """Bytes in, complete messages out (sans-I/O, like h2's ``receive_data``).

    Frames are decoded in place from the bytes given; only the trailing partial frame, if
    any, is copied into an internal buffer, which therefore never holds more than one frame
    (at most HEADER_SIZE + MAX_PAYLOAD bytes). After a WireProtocolError the link is beyond
    repair: the decoder raises again on every later call.
    """

    __slots__ = ("_buffer", "_failure", "_need")

    def __init__(self) -> None:
        self._buffer = bytearray()  # the start of one incomplete frame
        self._need = HEADER_SIZE  # size of that frame, once its header is in the buffer
        self._failure: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> list[Message]:
        """The messages completed by ``data``, in order; raises WireProtocolError on bad
        input (no message of that call is returned then)."""
        if self._failure is not None:
            raise WireProtocolError(f"decoder already failed: {self._failure}")
        try:
            return self._receive(data)
        except WireProtocolError as exc:
            self._failure = str(exc)
            self._buffer = bytearray()
            raise

    def _receive(self, data: bytes) -> list[Message]:
        messages: list[Message] = []
        start = 0
        buffer = self._buffer
        if buffer:
            # Top up the pending frame with only the bytes it lacks, so that the rest of
            # data is decoded in place rather than copied into the buffer.
            view = memoryview(data)
            if len(buffer) < HEADER_SIZE:
                start = min(HEADER_SIZE - len(buffer), len(view))
                buffer += view[:start]
                if len(buffer) < HEADER_SIZE:
                    return messages
                length, ftype, _ = HEADER.unpack_from(buffer)
                _check_header(length, ftype)
                self._need = HEADER_SIZE + length
            take = min(self._need - len(buffer), len(view) - start)
            buffer += view[start : start + take]
            start += take
            if len(buffer) < self._need:
                return messages
            self._decode(buffer, 0, messages)
            # A fresh buffer, not clear(): a memoryview of the old one may still be alive.
            self._buffer = bytearray()
        end = self._decode(data, start, messages)
        if end < len(data):
            self._buffer += memoryview(data)[end:]
        return messages

    def _decode(self, source: bytes | bytearray, offset: int, out: list[Message]) -> int:
        """Append the complete frames of ``source[offset:]`` to ``out``; return the offset of
        the first byte not consumed, having set ``_need`` for the partial frame there."""
        view = memoryview(source)
        end = len(view)
        unpack_from = HEADER.unpack_from
        decoders = _DECODERS
        while end - offset >= HEADER_SIZE:
            length, ftype, stream = unpack_from(source, offset)
            if length > MAX_PAYLOAD or ftype not in decoders:
                _check_header(length, ftype)
            body = offset + HEADER_SIZE
            stop = body + length
            if stop > end:
                self._need = HEADER_SIZE + length
                return offset
            try:
                out.append(decoders[ftype](stream, view[body:stop]))
            except WireProtocolError as exc:
                raise _frame_error(ftype, stream, str(exc)) from None
            except KeyError as exc:  # a JSON field read by subscript (see "decoding")
                raise _frame_error(ftype, stream, f"payload lacks field {exc.args[0]!r}") from None
            offset = stop
        self._need = HEADER_SIZE
        return offset


# --- handshake ----------------------------------------------------------------------------


def check_hello(message: Message, token: str) -> Hello:
    """The agent's side of the handshake: ``message`` must be a Hello of this protocol
    version carrying ``token``; returns it, else raises WireProtocolError."""
    if not isinstance(message, Hello):
        raise WireProtocolError(f"expected HELLO as the first frame, got {type(message).__name__}")
    if message.version != PROTOCOL_VERSION:
        raise WireProtocolError(
            f"protocol version mismatch: client speaks {message.version}, "
            f"agent speaks {PROTOCOL_VERSION}"
        )
    # Constant time, so the token cannot be guessed byte by byte from response timings.
    given = message.token.encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(given, token.encode("utf-8", "surrogatepass")):
        raise WireProtocolError("bad session token")
    return message
