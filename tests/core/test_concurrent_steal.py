"""on_concurrent_steal: config, wire and the registry's answer to a second whole steal."""

from __future__ import annotations

import json

import pytest

from waylay.core.engine.config import ConcurrentSteal, parse_config
from waylay.core.engine.errors import ConfigError
from waylay.core.engine.filters import RequestView
from waylay.core.engine.registry import Registry, Subscription, SubscriptionRefused
from waylay.core.engine.wire import HEADER_SIZE, WireDecoder, encode
from waylay.core.engine.wire_fields import WireProtocolError
from waylay.core.engine.wire_messages import Subscribe


def whole(sub_id: int, concurrent: ConcurrentSteal = ConcurrentSteal.ABORT) -> Subscription:
    return Subscription(sub_id=sub_id, link_id=sub_id, port=80, mode="steal", http_filter=None,
                        concurrent=concurrent)


def incoming(value: object) -> str:
    return json.dumps({"feature": {"network": {"incoming": {
        "mode": "steal", "on_concurrent_steal": value}}}})


@pytest.mark.parametrize("value", ["abort", "continue", "override"])
def test_the_three_values_load(value: str) -> None:
    """mirrord's three values load, without a warning."""
    config = parse_config(incoming(value), fmt="json", source="m.json")
    assert config.incoming.on_concurrent_steal is ConcurrentSteal(value)
    assert config.warnings == ()


def test_absent_means_abort_and_a_bad_value_names_the_key() -> None:
    """The default refuses, as before; a wrong value is an error at its key."""
    plain = parse_config('{"feature": {"network": {"incoming": "steal"}}}', fmt="json")
    assert plain.incoming.on_concurrent_steal is ConcurrentSteal.ABORT
    with pytest.raises(ConfigError) as caught:
        parse_config(incoming("steal-it"), fmt="json", source="m.json")
    text = str(caught.value)
    assert "feature.network.incoming.on_concurrent_steal" in text
    assert "abort, continue or override" in text and "'steal-it'" in text


def test_subscribe_carries_it_only_when_not_abort() -> None:
    """The frame stays what older agents read unless the session asks for more."""
    asked = Subscribe(sub_id=1, port=80, mode="steal", filter=None, on_concurrent_steal="override")
    wire = encode(asked)
    assert json.loads(wire[HEADER_SIZE:])["on_concurrent_steal"] == "override"
    assert WireDecoder().receive_data(wire) == [asked]
    plain = encode(Subscribe(sub_id=1, port=80, mode="steal", filter=None))
    assert "on_concurrent_steal" not in json.loads(plain[HEADER_SIZE:])
    with pytest.raises(WireProtocolError):
        encode(Subscribe(sub_id=1, port=80, mode="steal", filter=None,
                         on_concurrent_steal="share"))


def test_abort_refuses_a_second_whole_steal_and_names_the_options() -> None:
    """The default: refused, and the message names continue and override."""
    registry = Registry()
    registry.add(whole(1))
    with pytest.raises(SubscriptionRefused, match=r"continue \(wait for it\) or override"):
        registry.add(whole(2))
    assert [s.sub_id for s in registry.subscriptions(80)] == [1]


def test_continue_queues_behind_the_first_until_it_leaves() -> None:
    """continue: accepted, the first keeps whole connections and requests until it goes."""
    registry = Registry()
    registry.add(whole(1))
    assert registry.add(whole(2, ConcurrentSteal.CONTINUE)) == ()
    request = RequestView(method="GET", target="/", headers=())
    assert registry.whole_connection_owner(80).sub_id == 1  # type: ignore[union-attr]
    assert registry.decide(80, request).steal_by == 1
    registry.remove(1)
    assert registry.whole_connection_owner(80).sub_id == 2  # type: ignore[union-attr]
    assert registry.decide(80, request).steal_by == 2


def test_override_takes_the_port_and_returns_whom_it_displaced() -> None:
    """override: the earlier whole steal is removed and returned, to be told; filtered
    steals and mirrors on the port stay."""
    registry = Registry()
    registry.add(whole(1))
    mirror = Subscription(sub_id=3, link_id=3, port=80, mode="mirror", http_filter=None)
    registry.add(mirror)
    displaced = registry.add(whole(2, ConcurrentSteal.OVERRIDE))
    assert [s.sub_id for s in displaced] == [1]
    assert [s.sub_id for s in registry.subscriptions(80)] == [3, 2]
    assert registry.whole_connection_owner(80).sub_id == 2  # type: ignore[union-attr]


def test_a_live_change_to_a_whole_steal_follows_the_same_rule() -> None:
    """Registry.replace refuses (abort) or displaces (override) like add."""
    registry = Registry()
    registry.add(whole(1))
    filtered = Subscription(sub_id=2, link_id=2, port=80, mode="mirror", http_filter=None)
    registry.add(filtered)
    with pytest.raises(SubscriptionRefused):
        registry.replace(whole(2))
    assert [s.sub_id for s in registry.replace(whole(2, ConcurrentSteal.OVERRIDE))] == [1]
    assert [s.sub_id for s in registry.subscriptions(80)] == [2]
