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
and ``WireDecoder.receive_data`` (``waylay.core.engine.wire_decoder``) turns whatever bytes
arrived into the complete messages they hold, keeping at most one partial frame. Anything
malformed, in either direction, raises ``WireProtocolError``: the same checks
(``waylay.core.engine.wire_fields``) run on encode and on decode, so a message that encodes
always decodes back equal to itself (JSON-valued fields excepted: a ``filter`` or
``record`` must hold only JSON types, with str keys, to compare equal).

HTTP header names and values are bytes on the wire of HTTP but str in JSON; they travel
as latin-1 decoded str, which maps every byte to one code point and back (lossless).
"""

from __future__ import annotations

import hmac
import json
from typing import Final, assert_never

from waylay.core.engine.wire_decoder import WireDecoder
from waylay.core.engine.wire_fields import (
    HAS_FLOW_ID,
    REQUEST_ENDS,
    REQUEST_FIXED,
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
    shown,
)
from waylay.core.engine.wire_heads import check_latin1, flat_headers, pack_strings
from waylay.core.engine.wire_messages import (
    CONCURRENT_STEAL,
    DEFAULT_RESPONSE_TIMEOUT_S,
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    MODES,
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


# --- encoding -----------------------------------------------------------------------------
# The checks every message passes on both sides are in waylay.core.engine.wire_fields;
# decoding is in waylay.core.engine.wire_decoder.

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
            check_stream(stream, "Data.stream")
            return _frame(FrameType.DATA, stream, bytes(data))
        case End(stream=stream):
            return _frame(FrameType.END, check_stream(stream, "End.stream"), b"")
        case Pause(stream=stream):
            return _frame(FrameType.PAUSE, check_stream(stream, "Pause.stream"), b"")
        case Resume(stream=stream):
            return _frame(FrameType.RESUME, check_stream(stream, "Resume.stream"), b"")
        case RequestStart():
            stream = check_stream(message.stream, "RequestStart.stream")
            flow_id = message.flow_id
            fixed = REQUEST_FIXED.pack(
                check_stream(message.sub_id, "RequestStart.sub_id"),
                check_port(message.port, "RequestStart.port"),
                (0 if flow_id is None else HAS_FLOW_ID)
                | (REQUEST_ENDS if check_bool(message.end, "RequestStart.end") else 0),
                0 if flow_id is None else check_stream(flow_id, "RequestStart.flow_id"))
            flat = flat_headers(message.headers, "RequestStart.headers")
            packed = pack_strings(fixed, [message.method, message.target,
                                           message.http_version, message.peer, *flat],
                                   "RequestStart fields")
            if flat:
                check_latin1("".join(flat), "RequestStart.headers")
            return _frame(FrameType.REQUEST, stream, packed)
        case ResponseStart():
            stream = check_stream(message.stream, "ResponseStart.stream")
            body = message.body
            if type(body) is not bytes:
                raise WireProtocolError(f"ResponseStart.body must be bytes, got {shown(body)}")
            fixed = RESPONSE_FIXED.pack(
                check_int(message.status, "ResponseStart.status", 100, 999),
                RESPONSE_ENDS if check_bool(message.end, "ResponseStart.end") else 0, len(body))
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
            return _frame(FrameType.TRAILERS, check_stream(stream, "Trailers.stream"), packed)
        case ConnectionStart():
            stream = check_stream(message.stream, "ConnectionStart.stream")
            payload = {
                "sub_id": check_stream(message.sub_id, "ConnectionStart.sub_id"),
                "port": check_port(message.port, "ConnectionStart.port"),
                "peer": check_str(message.peer, "ConnectionStart.peer"),
            }
            return _frame(FrameType.CONNECTION, stream, _json_payload(payload, "ConnectionStart"))
        case Reset(stream=stream, reason=reason):
            payload = {"reason": check_str(reason, "Reset.reason")}
            return _frame(FrameType.RESET, check_stream(stream, "Reset.stream"),
                          _json_payload(payload, "Reset"))
        case Flow(records=records):
            payload = {"rows": [check_row(r, "Flow.records[]") for r in records]}
            return _frame(FrameType.FLOW, 0, _json_payload(payload, "Flow"))
        case Ping(nonce=nonce):
            return _frame(FrameType.PING, 0, check_nonce(nonce, "Ping.nonce"))
        case Pong(nonce=nonce):
            return _frame(FrameType.PONG, 0, check_nonce(nonce, "Pong.nonce"))
        case Notice(level=level, message=text):
            payload = {
                "level": check_choice(level, "Notice.level", NOTICE_LEVELS),
                "message": check_str(text, "Notice.message"),
            }
            return _frame(FrameType.NOTICE, 0, _json_payload(payload, "Notice"))
        case Error(stream=stream, message=text, code=code):
            payload = {"message": check_str(text, "Error.message"),
                       "code": check_str(code, "Error.code")}
            return _frame(FrameType.ERROR, check_stream(stream, "Error.stream"),
                          _json_payload(payload, "Error"))
        case Subscribe(sub_id=sub_id, port=port, mode=mode, filter=http_filter,
                       capture=capture, local=local, response_timeout=timeout,
                       body_buffer_size=body_size, body_buffer_timeout=body_ms,
                       on_concurrent_steal=concurrent, inject_headers=inject):
            payload = {
                "port": check_port(port, "Subscribe.port"),
                "mode": check_choice(mode, "Subscribe.mode", MODES),
                "filter": check_optional_object(http_filter, "Subscribe.filter"),
                "capture": check_bool(capture, "Subscribe.capture"),
            }
            # Absent rather than null when unset: the frame stays what older agents read.
            if local is not None:
                payload["local"] = check_str(local, "Subscribe.local")
            if timeout is not None:
                payload["response_timeout"] = check_optional_timeout(
                    timeout, "Subscribe.response_timeout")
            if body_size is not None:
                payload["body_buffer_size"] = check_body_size(
                    body_size, "Subscribe.body_buffer_size")
            if body_ms is not None:
                payload["body_buffer_timeout"] = check_body_timeout(
                    body_ms, "Subscribe.body_buffer_timeout")
            if concurrent is not None:
                payload["on_concurrent_steal"] = check_choice(
                    concurrent, "Subscribe.on_concurrent_steal", CONCURRENT_STEAL)
            if check_bool(inject, "Subscribe.inject_headers"):
                payload["inject_headers"] = True
            return _frame(
                FrameType.SUBSCRIBE,
                check_stream(sub_id, "Subscribe.sub_id"),
                _json_payload(payload, "Subscribe"),
            )
        case Subscribed(sub_id=sub_id, port=port, mode=mode, filter=text_filter):
            payload = {
                "port": check_port(port, "Subscribed.port"),
                "mode": check_choice(mode, "Subscribed.mode", MODES),
                "filter": check_optional_str(text_filter, "Subscribed.filter"),
            }
            return _frame(
                FrameType.SUBSCRIBED,
                check_stream(sub_id, "Subscribed.sub_id"),
                _json_payload(payload, "Subscribed"),
            )
        case Unsubscribe(sub_id=sub_id):
            return _frame(FrameType.UNSUBSCRIBE, check_stream(sub_id, "Unsubscribe.sub_id"), b"")
        case Hello(token=token, client=client, version=version):
            payload = {
                "token": check_str(token, "Hello.token"),
                "client": check_str(client, "Hello.client"),
                "version": check_stream(version, "Hello.version"),
            }
            return _frame(FrameType.HELLO, 0, _json_payload(payload, "Hello"))
        case Welcome():
            payload = {
                "agent": check_str(message.agent, "Welcome.agent"),
                "session": check_str(message.session, "Welcome.session"),
                "listening_ports": check_ports(message.listening_ports, "Welcome.listening_ports"),
                "version": check_stream(message.version, "Welcome.version"),
            }
            return _frame(FrameType.WELCOME, 0, _json_payload(payload, "Welcome"))
        case _:
            assert_never(message)


def encode_data(stream: int, data: bytes) -> bytes:
    """``data`` on ``stream`` as as many DATA frames as needed, each payload at most
    MAX_PAYLOAD; empty data gives no frame at all (b"")."""
    check_stream(stream, "Data.stream")
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for offset in range(0, len(view), MAX_PAYLOAD):
        chunk = view[offset : offset + MAX_PAYLOAD]
        parts.append(HEADER.pack(len(chunk), FrameType.DATA, stream))
        parts.append(chunk)
    return b"".join(parts)


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
