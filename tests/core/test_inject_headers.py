"""agent.inject_headers: config, wire, the registry's marked routes and the head rewrite."""

from __future__ import annotations

import json

import pytest

from waylay.core.engine.config import parse_config
from waylay.core.engine.errors import ConfigError
from waylay.core.engine.filters import RequestView, compile_http_filter
from waylay.core.engine.registry import Registry, Subscription
from waylay.core.engine.routing import marked_head
from waylay.core.engine.wire import HEADER_SIZE, WireDecoder, encode
from waylay.core.engine.wire_messages import Subscribe

REQUEST = RequestView(method="GET", target="/", headers=(("x-take", "yes"),))


def test_the_agent_key_loads_and_a_non_boolean_names_it() -> None:
    """agent.inject_headers is a boolean, false by default."""
    assert not parse_config("{}", fmt="json").agent.inject_headers
    on = parse_config('{"agent": {"inject_headers": true}}', fmt="json")
    assert on.agent.inject_headers
    with pytest.raises(ConfigError, match=r"agent\.inject_headers.*true or false"):
        parse_config('{"agent": {"inject_headers": "yes"}}', fmt="json", source="m.json")


def test_subscribe_carries_it_only_when_on() -> None:
    """Absent from the frame unless asked for (older agents read it unchanged)."""
    on = Subscribe(sub_id=1, port=80, mode="steal", filter=None, inject_headers=True)
    wire = encode(on)
    assert json.loads(wire[HEADER_SIZE:])["inject_headers"] is True
    assert WireDecoder().receive_data(wire) == [on]
    off = encode(Subscribe(sub_id=1, port=80, mode="steal", filter=None))
    assert "inject_headers" not in json.loads(off[HEADER_SIZE:])


@pytest.mark.parametrize("inject", [True, False])
def test_routes_on_a_port_a_session_marks_say_so(inject: bool) -> None:
    """Every route on the port is marked (stolen and passed alike), on no other port."""
    registry = Registry()
    registry.add(Subscription(sub_id=1, link_id=1, port=80, mode="steal",
                              http_filter=compile_http_filter({"header_filter": "^x-take"}),
                              inject_headers=inject))
    registry.add(Subscription(sub_id=2, link_id=2, port=81, mode="mirror", http_filter=None))
    plain = RequestView(method="GET", target="/", headers=())
    assert registry.decide(80, REQUEST).steal_by == 1
    assert registry.decide(80, REQUEST).mark is inject
    assert registry.decide(80, plain).mark is inject
    assert registry.decide(81, plain).mark is False


def test_the_header_goes_last_in_the_head_and_the_body_is_untouched() -> None:
    """marked_head inserts one field before the blank line; a body after it is kept."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    assert marked_head(head) == (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                 b"Waylay-Agent: passed-through\r\n\r\nhi")
    assert marked_head(b"HTTP/1.1 204 No Content\r\n\r\n", b"stolen") == (
        b"HTTP/1.1 204 No Content\r\nWaylay-Agent: stolen\r\n\r\n")
