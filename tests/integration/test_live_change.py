"""A running session changes its filter in place: the next request follows the new rule."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from tests.integration.conftest import Bed, requires_root_netns
from tests.netns import nat_rules
from waylay.core.client.attach import attach
from waylay.core.engine.config import parse_config
from waylay.core.engine.events import Event, SubscribedEvent
from waylay.core.engine.target import parse_target

pytestmark = [pytest.mark.integration, requires_root_netns]

FLIPS = 50
STEAL_ALICE = ('{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
               '{"header_filter": "^x-user: alice$"}}}}}')
STEAL_BOB = STEAL_ALICE.replace("alice", "bob")


def test_filter_flipped_fifty_times_on_a_keep_alive_connection(bed: Bed) -> None:
    """Flip alice<->bob 50 times mid-traffic: no failure, each answer follows the filter."""
    alice = parse_config(STEAL_ALICE, fmt="json").incoming
    bob = parse_config(STEAL_BOB, fmt="json").incoming
    before = nat_rules(bed.ns)

    async def scenario() -> list[tuple[str, str]]:
        events: list[Event] = []
        attached = await attach(parse_target(f"netns/{bed.ns}"), incoming=alice,
                                cli_ports={80: bed.local_http}, on_event=events.append)
        runner = asyncio.create_task(attached.run())
        try:
            while not any(isinstance(e, SubscribedEvent) for e in events):
                await asyncio.sleep(0.05)
            seen: list[tuple[str, str]] = []
            async with httpx.AsyncClient(trust_env=False, timeout=30.0,
                                         limits=httpx.Limits(max_connections=1)) as client:
                current = "alice"
                for flip in range(FLIPS):
                    # The filter in force now is `current`: both users ask, on one connection.
                    for user in ("alice", "bob"):
                        response = await client.get(bed.url(f"/flip/{flip}/{user}"),
                                                    headers={"X-User": user})
                        assert response.status_code == 200
                        expected = "local" if user == current else "remote"
                        seen.append((expected, response.headers["x-served-by"]))
                    current = "bob" if current == "alice" else "alice"
                    taken = await attached.update(alice if current == "alice" else bob)
                    assert taken
            return seen
        finally:
            attached.stop()
            await runner

    seen = asyncio.run(scenario())
    assert len(seen) == 2 * FLIPS
    assert [want for want, _ in seen] == [got for _, got in seen]
    assert nat_rules(bed.ns) == before  # no iptables leftovers after the session


def test_mode_change_from_steal_to_mirror_in_place(bed: Bed) -> None:
    """Switching steal -> mirror keeps the session: matching requests are then answered remote."""
    steal = parse_config(STEAL_ALICE, fmt="json").incoming
    mirror = dataclasses.replace(steal, mode=type(steal.mode)("mirror"))

    async def scenario() -> tuple[str, str]:
        events: list[Event] = []
        attached = await attach(parse_target(f"netns/{bed.ns}"), incoming=steal,
                                cli_ports={80: bed.local_http}, on_event=events.append)
        runner = asyncio.create_task(attached.run())
        try:
            while not any(isinstance(e, SubscribedEvent) for e in events):
                await asyncio.sleep(0.05)
            async with httpx.AsyncClient(trust_env=False, timeout=30.0) as client:
                before = await client.get(bed.url("/mode/1"), headers={"X-User": "alice"})
                assert await attached.update(mirror)
                after = await client.get(bed.url("/mode/2"), headers={"X-User": "alice"})
            return before.headers["x-served-by"], after.headers["x-served-by"]
        finally:
            attached.stop()
            await runner

    assert asyncio.run(scenario()) == ("local", "remote")
