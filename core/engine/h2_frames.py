"""HTTP/2 framing for the router (sans-I/O): frame layout, constants, frame builders.

RFC 9113 §4.1: every frame is a 9-byte header (24-bit length, type, flags, reserved bit
and 31-bit stream id) and a payload. ``waylay.core.engine.h2_peer`` splits a byte stream into frames
with ``HEAD`` and builds the frames it sends with the functions below. They return bytes
ready for the wire; the router appends them to one output buffer per connection, so a
batch of frames leaves as one write.
"""

from __future__ import annotations

import struct
from enum import IntEnum

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4, sent by the client

HEAD = struct.Struct(">BHBBL")  # length high byte, length low 16 bits, type, flags, stream
HEAD_SIZE = 9
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")

DEFAULT_MAX_FRAME = 16_384  # RFC 9113 §6.5.2 SETTINGS_MAX_FRAME_SIZE initial value
MAX_MAX_FRAME = 16_777_215
DEFAULT_WINDOW = 65_535  # RFC 9113 §6.9.2: every window starts here
MAX_WINDOW = 2**31 - 1
DEFAULT_TABLE_SIZE = 4096  # RFC 9113 §6.5.2 SETTINGS_HEADER_TABLE_SIZE initial value

# Frame types (RFC 9113 §6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# SETTINGS identifiers (RFC 9113 §6.5.2).
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6


class ErrorCode(IntEnum):
    """RFC 9113 §7 error codes."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


def head(length: int, kind: int, flags: int, stream: int) -> bytes:
    return HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream)


def settings(values: dict[int, int]) -> bytes:
    payload = b"".join(_SETTING.pack(k, v) for k, v in values.items())
    return head(len(payload), SETTINGS, 0, 0) + payload


SETTINGS_ACK = head(0, SETTINGS, ACK, 0)


def window_update(stream: int, increment: int) -> bytes:
    return head(4, WINDOW_UPDATE, 0, stream) + _U32.pack(increment)


def rst_stream(stream: int, code: int) -> bytes:
    return head(4, RST_STREAM, 0, stream) + _U32.pack(code)


def goaway(last_stream: int, code: int, debug: bytes = b"") -> bytes:
    return head(8 + len(debug), GOAWAY, 0, 0) + _GOAWAY.pack(last_stream, code) + debug


def ping_ack(payload: bytes) -> bytes:
    return head(8, PING, ACK, 0) + payload


def headers(stream: int, block: bytes, *, end_stream: bool, max_frame: int) -> bytes:
    """A header block as HEADERS (+ CONTINUATION frames when it exceeds ``max_frame``)."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return head(len(block), HEADERS, flags | END_HEADERS, stream) + block
    parts = [head(max_frame, HEADERS, flags, stream), block[:max_frame]]
    at = max_frame
    while at < len(block):
        chunk = block[at:at + max_frame]
        at += len(chunk)
        parts.append(head(len(chunk), CONTINUATION, END_HEADERS if at >= len(block) else 0,
                          stream))
        parts.append(chunk)
    return b"".join(parts)


def unpack_u32(payload: memoryview | bytes) -> int:
    value: int = _U32.unpack_from(payload)[0]
    return value


def unpack_goaway(payload: memoryview | bytes) -> tuple[int, int]:
    last, code = _GOAWAY.unpack_from(payload)
    return last & 0x7FFFFFFF, code


def iter_settings(payload: memoryview | bytes) -> list[tuple[int, int]]:
    return [_SETTING.unpack_from(payload, at) for at in range(0, len(payload), 6)]


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return hex(code)
