"""Subscriptions: deterministic precedence, refusal of a second unfiltered steal."""

from __future__ import annotations

import pytest

from waylay.core.engine.filters import RequestView, compile_http_filter
from waylay.core.engine.registry import Registry, Subscription, SubscriptionRefused


def sub(sub_id: int, link: int, flt: dict[str, object] | None, port: int = 80) -> Subscription:
    return Subscription(sub_id=sub_id, link_id=link, port=port, mode="steal",
                        http_filter=compile_http_filter(flt) if flt is not None else None)


def view(*headers: tuple[str, str], target: str = "/") -> RequestView:
    return RequestView(method="GET", target=target, headers=headers)


def test_earliest_matching_subscription_wins() -> None:
    """Where two filters match, the earlier subscription takes the request."""
    reg = Registry()
    reg.add(sub(1, 1, {"header_filter": "x-user: alice"}))
    reg.add(sub(2, 2, {"path_filter": "^/api"}))
    route = reg.decide(80, view(("X-User", "alice"), target="/api/x"))
    assert route.steal_by == 1
    assert reg.decide(80, view(target="/api/x")).steal_by == 2
    assert reg.decide(80, view(target="/other")).steal_by is None


def test_second_unfiltered_steal_is_refused() -> None:
    """Only one session may take a port whole."""
    reg = Registry()
    reg.add(sub(1, 1, None))
    with pytest.raises(SubscriptionRefused, match="port 80"):
        reg.add(sub(2, 2, None))
    reg.add(sub(3, 2, {"method_filter": "POST"}))  # a filtered one may still join


def test_link_removal_reverts_its_ports() -> None:
    """Removing a link's subscriptions frees the ports only it used."""
    reg = Registry()
    reg.add(sub(1, 1, None, port=80))
    reg.add(sub(2, 2, {"method_filter": "GET"}, port=81))
    gone = reg.remove_link(1)
    assert [s.sub_id for s in gone] == [1]
    assert reg.ports() == frozenset({81})
    assert reg.whole_connection_owner(80) is None


def test_timed_out_filter_counts_as_no_match() -> None:
    """A catastrophic regex is cut off by the budget and the request passes."""
    reg = Registry()
    reg.add(sub(1, 1, {"header_filter": "^x-evil: (a|aa)+$"}))
    route = reg.decide(80, view(("X-Evil", "a" * 40 + "!")))
    assert route.steal_by is None
    assert route.timed_out


def test_unfiltered_steal_takes_requests_of_connections_already_routed() -> None:
    """A port switched to a whole steal takes the next request on older connections too."""
    reg = Registry()
    reg.add(sub(1, 1, {"header_filter": "x-user: alice"}))
    reg.add(sub(2, 2, None))
    assert reg.decide(80, view(("X-User", "bob"))).steal_by == 2
    assert reg.decide(80, view(("X-User", "alice"))).steal_by == 1  # earlier one first
