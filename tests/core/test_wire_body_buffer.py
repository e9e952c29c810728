"""The session's body buffer bounds travel in Subscribe, only when set, and are checked."""

from __future__ import annotations

import json

import pytest

from waylay.core.engine.wire import HEADER, HEADER_SIZE, FrameType, WireDecoder, encode
from waylay.core.engine.wire_fields import WireProtocolError
from waylay.core.engine.wire_messages import Subscribe


def test_subscribe_carries_the_body_buffer_bounds_when_set() -> None:
    """body_buffer_size / body_buffer_timeout are in the JSON when set and decode back."""
    message = Subscribe(sub_id=2, port=80, mode="steal", filter=None,
                        body_buffer_size=1024, body_buffer_timeout=250)
    wire = encode(message)
    payload = json.loads(wire[HEADER_SIZE:])
    assert (payload["body_buffer_size"], payload["body_buffer_timeout"]) == (1024, 250)
    assert WireDecoder().receive_data(wire) == [message]
    plain = json.loads(encode(Subscribe(sub_id=2, port=80, mode="steal", filter=None))
                       [HEADER_SIZE:])
    assert "body_buffer_size" not in plain and "body_buffer_timeout" not in plain


@pytest.mark.parametrize("fields", [{"body_buffer_size": 0}, {"body_buffer_size": 2**40},
                                    {"body_buffer_timeout": "1s"}])
def test_a_body_buffer_bound_out_of_range_is_a_protocol_error(fields: dict[str, object]
                                                              ) -> None:
    """A peer's bound outside what a config may set is refused, not obeyed."""
    body = json.dumps({"port": 80, "mode": "steal", "filter": None, **fields}).encode()
    with pytest.raises(WireProtocolError):
        WireDecoder().receive_data(HEADER.pack(len(body), FrameType.SUBSCRIBE, 7) + body)
