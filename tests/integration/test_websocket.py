"""WebSockets through waylay: a matched upgrade goes to the local app, others to the remote."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from tests.integration.conftest import (
    PYTHON,
    SERVERS,
    Bed,
    StartWaylay,
    requires_root_netns,
    start_server,
    stop_process,
)

pytestmark = [pytest.mark.integration, requires_root_netns]

WS_PORT = 8765
STEAL_ALICE = ('{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
               '{"header_filter": "^x-user: alice$"}}}}}')


@pytest.fixture(scope="module")
def ws_servers(bed: Bed) -> Iterator[int]:
    """A remote echo server in the namespace and a local one; yields the local port."""
    remote, _ = start_server([str(PYTHON), str(SERVERS / "ws_app.py"), "remote", str(WS_PORT)],
                             "remote websocket", ns=bed.ns)
    local, local_port = start_server(
        [str(PYTHON), str(SERVERS / "ws_app.py"), "local", "0", "--host", "127.0.0.1"],
        "local websocket")
    try:
        yield local_port
    finally:
        stop_process(local)
        stop_process(remote)


async def _talk(url: str, user: str, messages: list[str]) -> list[str]:
    async with connect(url, additional_headers={"X-User": user}, proxy=None,
                       open_timeout=15) as ws:
        answers = []
        for message in messages:
            await ws.send(message)
            answers.append(str(await asyncio.wait_for(ws.recv(), 15)))
        return answers


def test_matched_upgrade_is_the_local_apps_and_others_the_remote(
        bed: Bed, waylay: StartWaylay, ws_servers: int) -> None:
    """alice's WebSocket echoes from local, bob's from remote; messages flow both ways."""
    run = waylay(STEAL_ALICE, ports=[f"{WS_PORT}:{ws_servers}"])
    url = f"ws://{bed.ns_ip}:{WS_PORT}/chat"
    messages = [f"hello {i}" for i in range(5)] + ["x" * 100_000]
    try:
        alice = asyncio.run(_talk(url, "alice", messages))
    except Exception as exc:
        raise AssertionError(
            f"alice's WebSocket failed: {exc!r}\n{run.events}\n{run.stderr}") from exc
    bob = asyncio.run(_talk(url, "bob", messages))
    assert alice == [f"local: {m}" for m in messages]
    assert bob == [f"remote: {m}" for m in messages]
    events = {e["path"] + e["verdict"]: e for e in run.wait_requests(2)}
    assert events["/chatstolen"]["status"] == 101
    assert events["/chatpassed"]["status"] == 101
    with contextlib.suppress(Exception):
        run.stop()
