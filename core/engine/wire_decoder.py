"""Bytes to wire messages: the decoder of ``waylay.core.engine.wire``'s frames (sans-I/O).

``WireDecoder.receive_data`` turns whatever bytes arrived into the complete messages they
hold, keeping at most one partial frame; the frame layout and the messages are described in
``waylay.core.engine.wire``. Anything malformed raises ``WireProtocolError``, naming the frame
type, the stream and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from waylay.core.engine.wire_fields import (
    HAS_FLOW_ID,
    REQUEST_ENDS,
    REQUEST_FIXED,
    REQUEST_FLAGS,
    RESPONSE_ENDS,
    RESPONSE_FIXED,
    check_body_size,
    check_body_timeout,
    check_bool,
    check_choice,
    check_int,
    check_nonce,
    check_optional_object,
    check_optional_str,
    check_optional_timeout,
    check_port,
    check_ports,
    check_row,
    check_str,
    check_stream,
)
from waylay.core.engine.wire_heads import header_pairs, unpack_strings
from waylay.core.engine.wire_messages import (
    CONCURRENT_STEAL,
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    MODES,
    NOTICE_LEVELS,
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
)

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
    if len(payload) < REQUEST_FIXED.size:
        raise WireProtocolError("payload too short for sub_id, port and flow_id")
    sub_id, port, flags, flow_id = REQUEST_FIXED.unpack_from(payload)
    if not port:
        check_port(port, "port")
    if flags & ~REQUEST_FLAGS:
        raise WireProtocolError(f"unknown flags {flags:#x}")
    strings, text = unpack_strings(payload, REQUEST_FIXED.size)
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
    s[8](message, flow_id if flags & HAS_FLOW_ID else None)
    s[9](message, bool(flags & REQUEST_ENDS))
    return message


def _decode_response(stream: int, payload: memoryview) -> Message:
    if len(payload) < RESPONSE_FIXED.size:
        raise WireProtocolError("payload too short for status, flags and body length")
    status, flags, body_length = RESPONSE_FIXED.unpack_from(payload)
    check_int(status, "status", 100, 999)
    if flags & ~RESPONSE_ENDS:
        raise WireProtocolError(f"unknown flags {flags:#x}")
    if body_length > len(payload) - RESPONSE_FIXED.size:
        raise WireProtocolError(f"body length {body_length} exceeds the payload")
    if body_length:
        body = payload[len(payload) - body_length:].tobytes()
        payload = payload[:len(payload) - body_length]
    else:
        body = b""
    strings, text = unpack_strings(payload, RESPONSE_FIXED.size)
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
        sub_id=check_stream(fields["sub_id"], "sub_id"),
        port=check_port(fields["port"], "port"),
        peer=check_str(fields["peer"], "peer"),
    )


def _decode_reset(stream: int, payload: memoryview) -> Message:
    return Reset(stream=stream, reason=check_str(_json_object(payload)["reason"], "reason"))


def _decode_flow(stream: int, payload: memoryview) -> Message:
    _link_only(stream)
    rows = _json_object(payload)["rows"]
    if not isinstance(rows, list):
        raise WireProtocolError("FLOW frame: rows must be a list")
    return Flow(records=tuple(check_row(r, "rows[]") for r in rows))


def _decode_ping(stream: int, payload: memoryview) -> Message:
    _link_only(stream)
    return Ping(nonce=check_nonce(bytes(payload), "nonce"))


def _decode_pong(stream: int, payload: memoryview) -> Message:
    _link_only(stream)
    return Pong(nonce=check_nonce(bytes(payload), "nonce"))


def _decode_notice(stream: int, payload: memoryview) -> Message:
    _link_only(stream)
    fields = _json_object(payload)
    return Notice(
        level=check_choice(fields["level"], "level", NOTICE_LEVELS),
        message=check_str(fields["message"], "message"),
    )


def _decode_error(stream: int, payload: memoryview) -> Message:
    fields = _json_object(payload)
    return Error(
        stream=stream,
        message=check_str(fields["message"], "message"),
        code=check_str(fields["code"], "code"),
    )


def _decode_subscribe(stream: int, payload: memoryview) -> Message:
    fields = _json_object(payload)
    return Subscribe(
        sub_id=stream,
        port=check_port(fields["port"], "port"),
        mode=check_choice(fields["mode"], "mode", MODES),
        filter=check_optional_object(fields["filter"], "filter"),
        capture=check_bool(fields.get("capture", False), "capture"),
        local=check_optional_str(fields.get("local"), "local"),
        response_timeout=check_optional_timeout(fields.get("response_timeout"), "response_timeout"),
        body_buffer_size=check_body_size(fields.get("body_buffer_size"), "body_buffer_size"),
        body_buffer_timeout=check_body_timeout(fields.get("body_buffer_timeout"),
                                               "body_buffer_timeout"),
        on_concurrent_steal=None if (concurrent := fields.get("on_concurrent_steal")) is None
        else check_choice(concurrent, "on_concurrent_steal", CONCURRENT_STEAL),
        inject_headers=check_bool(fields.get("inject_headers", False), "inject_headers"),
    )


def _decode_subscribed(stream: int, payload: memoryview) -> Message:
    fields = _json_object(payload)
    return Subscribed(
        sub_id=stream,
        port=check_port(fields["port"], "port"),
        mode=check_choice(fields["mode"], "mode", MODES),
        filter=check_optional_str(fields["filter"], "filter"),
    )


def _decode_unsubscribe(stream: int, payload: memoryview) -> Message:
    _empty(payload)
    return Unsubscribe(sub_id=stream)


def _decode_hello(stream: int, payload: memoryview) -> Message:
    _link_only(stream)
    fields = _json_object(payload)
    # Any version decodes, so that check_hello can name both versions when they differ.
    return Hello(
        token=check_str(fields["token"], "token"),
        client=check_str(fields["client"], "client"),
        version=check_stream(fields["version"], "version"),
    )


def _decode_welcome(stream: int, payload: memoryview) -> Message:
    _link_only(stream)
    fields = _json_object(payload)
    return Welcome(
        agent=check_str(fields["agent"], "agent"),
        session=check_str(fields["session"], "session"),
        listening_ports=check_ports(fields["listening_ports"], "listening_ports"),
        version=check_stream(fields["version"], "version"),
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


__all__ = ["WireDecoder"]
