"""The fields of wire messages: the checks the encoder and the decoder share, and the fixed
binary layouts of the per-request heads (sans-I/O).

``waylay.core.engine.wire`` encodes and ``waylay.core.engine.wire_decoder`` decodes with these,
so that a message that encodes always decodes back equal to itself. ``where`` names the
offending value: "RequestStart.port" when encoding, the JSON field name ("port") when
decoding, where the decoder adds the frame type and stream to the message.
"""

from __future__ import annotations

import struct
from typing import Final

from waylay.core.engine.body_filter import MAX_BODY_BUFFER_SIZE, MAX_BODY_BUFFER_TIMEOUT_MS
from waylay.core.engine.flow import ROW_FIELDS, FlowRow
from waylay.core.engine.wire_messages import (
    MAX_RESPONSE_TIMEOUT_S,
    MAX_STREAM,
    NONCE_SIZE,
    WireProtocolError,
)

# The fixed fields of the compact heads (waylay.core.engine.wire_heads): REQUEST's sub_id, port,
# flags and flow_id; RESPONSE's status. TRAILERS has none.
# The fixed fields of the compact heads (waylay.core.engine.wire_heads): REQUEST's sub_id, port,
# flags and flow_id; RESPONSE's status. TRAILERS has none.
REQUEST_FIXED: Final = struct.Struct("!IHBI")
HAS_FLOW_ID: Final = 1  # REQUEST flags bit: flow_id is set (else it is None)
REQUEST_ENDS: Final = 2  # REQUEST flags bit: the request is complete (no body frames follow)
REQUEST_FLAGS: Final = HAS_FLOW_ID | REQUEST_ENDS
RESPONSE_FIXED: Final = struct.Struct("!HBI")  # status, flags, body length
RESPONSE_ENDS: Final = 1  # RESPONSE flags bit: the response is complete


def shown(value: object) -> str:
    """``value`` for an error message, cut short: a peer's payload may be 256 KiB."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def check_int(value: object, where: str, low: int, high: int) -> int:
    # type() rather than isinstance(): bool is an int subclass, and True is not a port.
    if type(value) is not int or not low <= value <= high:
        raise WireProtocolError(f"{where} must be an integer in {low}..{high}, got {shown(value)}")
    return value


def check_stream(value: object, where: str) -> int:
    return check_int(value, where, 0, MAX_STREAM)


def check_port(value: object, where: str) -> int:
    return check_int(value, where, 1, 65535)


def check_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise WireProtocolError(f"{where} must be true or false, got {value!r}")
    return value


def check_str(value: object, where: str) -> str:
    if type(value) is not str:
        raise WireProtocolError(f"{where} must be a string, got {shown(value)}")
    return value


def check_optional_str(value: object, where: str) -> str | None:
    return None if value is None else check_str(value, where)


def check_optional_timeout(value: object, where: str) -> int | None:
    return None if value is None else check_int(value, where, 1, MAX_RESPONSE_TIMEOUT_S)


def check_body_size(value: object, where: str) -> int | None:
    return None if value is None else check_int(value, where, 1, MAX_BODY_BUFFER_SIZE)


def check_body_timeout(value: object, where: str) -> int | None:
    return None if value is None else check_int(value, where, 1, MAX_BODY_BUFFER_TIMEOUT_MS)


def check_choice(value: object, where: str, choices: tuple[str, ...]) -> str:
    if type(value) is not str or value not in choices:
        raise WireProtocolError(f"{where} must be one of {', '.join(choices)}; got {shown(value)}")
    return value


def check_ports(value: object, where: str) -> tuple[int, ...]:
    if type(value) is not tuple and type(value) is not list:
        raise WireProtocolError(f"{where} must be a list of ports, got {shown(value)}")
    return tuple(check_port(port, where) for port in value)


def check_object(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise WireProtocolError(f"{where} must be a JSON object, got {shown(value)}")
    return value


def check_row(value: object, where: str) -> FlowRow:
    """A flow row (``waylay.core.engine.flow.ROW_FIELDS`` in order, then null or an object)."""
    if (not isinstance(value, list) or len(value) != len(ROW_FIELDS) + 1
            or not (value[-1] is None or isinstance(value[-1], dict))):
        raise WireProtocolError(f"{where} must be a flow row of {len(ROW_FIELDS)} values and "
                                f"null or an object, got {shown(value)}")
    return value


def check_optional_object(value: object, where: str) -> dict[str, object] | None:
    return None if value is None else check_object(value, where)


def check_nonce(value: object, where: str) -> bytes:
    if type(value) is not bytes or len(value) != NONCE_SIZE:
        raise WireProtocolError(f"{where} must be exactly {NONCE_SIZE} bytes, got {shown(value)}")
    return value
