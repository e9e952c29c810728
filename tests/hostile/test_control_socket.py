"""The agent's control socket against connections that are not sessions.

A wrong or missing token, garbage, a connect-and-close and a connection that never says
Hello are all refused, and none of them counts as a session: the agent still leaves (and
its NAT rules with it) when the last authenticated session does, and an agent that never
had one leaves after its TTL even while such a connection is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
from collections.abc import Callable, Iterator

import pytest

from tests.integration import conftest as bedding
from tests.integration.conftest import (
    Bed,
    StartWaylay,
    agent_pids,
    curl,
    pid_alive,
    poll,
    requires_root_netns,
)
from tests.netns import nat_rules
from waylay.agent.link import HANDSHAKE_TIMEOUT_S
from waylay.core.engine.target import parse_target
from waylay.core.engine.wire import (
    Error,
    Hello,
    Message,
    Welcome,
    WireDecoder,
    WireProtocolError,
    encode,
)
from waylay.core.system import agent_directory
from waylay.core.system.agent_launch import launch_local_agent

pytestmark = [pytest.mark.integration, requires_root_netns]

# The integration bed (remote servers in a namespace, local apps) and its `waylay run`.
bed = bedding.bed
waylay = bedding.waylay

ALICE = ('{"feature": {"network": {"incoming": {"mode": "steal", '
         '"http_filter": {"header_filter": "^x-user: alice$"}}}}}')
AS_ALICE = ("-H", "X-User: alice")
# Bounds only: how long the agent may take to refuse, and to leave once it should.
REFUSAL_TIMEOUT_S = HANDSHAKE_TIMEOUT_S + 10.0
EXIT_TIMEOUT_S = 20.0
MAX_READS = 100  # reads of a refusal before giving up on its end (it is one small frame)
# 18 bytes that are not a waylay frame (an HTTP request sent to the wrong port).
GARBAGE = b"GET / HTTP/1.1\r\n\r\n"


def _agents(bed: Bed) -> list[int]:
    found = agent_pids(bed.ns)
    return [pid for pid in found["guard"] + found["worker"] if pid_alive(pid)]


@pytest.fixture(autouse=True)
def no_agent_left(bed: Bed) -> Iterator[None]:
    """A test that failed with the agent still up must not hand it to the next test."""
    yield
    for pid in agent_pids(bed.ns)["guard"]:  # the guard removes the rules on SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not poll(lambda: not _agents(bed), EXIT_TIMEOUT_S):
        for pid in _agents(bed):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _control_socket(bed: Bed) -> str:
    key = agent_directory.namespace_key(parse_target(f"netns/{bed.ns}"))
    assert key is not None
    record = agent_directory.find(key)
    assert record is not None, "the session's agent is not recorded"
    return record.socket_path


def _until_closed(sock: socket.socket) -> tuple[list[Message], bool]:
    """What the agent sends until it closes the connection, and whether it did."""
    sock.settimeout(REFUSAL_TIMEOUT_S)
    decoder = WireDecoder()
    messages: list[Message] = []
    for _ in range(MAX_READS):
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionError):
            return messages, False
        if not data:
            return messages, True
        with contextlib.suppress(WireProtocolError):
            messages += decoder.receive_data(data)
    return messages, False


def _refused(sock: socket.socket, payload: bytes) -> None:
    """Send ``payload``: the agent answers a handshake error and closes, never Welcome."""
    sock.sendall(payload)
    messages, closed = _until_closed(sock)
    assert closed, f"the agent kept the connection open: {messages}"
    assert not any(isinstance(m, Welcome) for m in messages), messages
    assert any(isinstance(m, Error) and m.code == "handshake" for m in messages), messages


def _wrong_token(sock: socket.socket) -> None:
    _refused(sock, encode(Hello(token=secrets.token_urlsafe(32), client="intruder")))


def _no_token(sock: socket.socket) -> None:
    _refused(sock, encode(Hello(token="", client="intruder")))


def _garbage(sock: socket.socket) -> None:
    _refused(sock, GARBAGE)


def _connect_and_close(sock: socket.socket) -> None:
    sock.close()


def _silent(sock: socket.socket) -> None:
    """Say nothing and stay connected while the session ends (closed by the test after)."""


HOSTILE: dict[str, Callable[[socket.socket], None]] = {
    "wrong-token": _wrong_token,
    "no-token": _no_token,
    "garbage": _garbage,
    "connect-and-close": _connect_and_close,
    "silent": _silent,
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_refused_connection_does_not_keep_the_agent(bed: Bed, waylay: StartWaylay,
                                                       kind: str) -> None:
    """A refused control connection leaves the session working and the agent leaving with it."""
    assert not _agents(bed), f"an agent is already running: {agent_pids(bed.ns)}"
    before = nat_rules(bed.ns)
    run = waylay(ALICE)
    assert curl(bed.url("/hostile/before"), *AS_ALICE).served_by == "local"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(_control_socket(bed))
        HOSTILE[kind](sock)
        assert curl(bed.url("/hostile/after"), *AS_ALICE).served_by == "local"
        assert run.stop() == 0, run.stderr
        assert poll(lambda: not _agents(bed), EXIT_TIMEOUT_S), (
            f"the agent outlived its last session after a {kind} connection: "
            f"{agent_pids(bed.ns)}")
    assert nat_rules(bed.ns) == before
    assert curl(bed.url("/hostile/gone"), *AS_ALICE).served_by == "remote"


def test_refused_connections_do_not_hold_an_agent_past_its_ttl(bed: Bed) -> None:
    """No session ever came, only a wrong token and a silent connection: the TTL still ends it."""
    assert not _agents(bed), f"an agent is already running: {agent_pids(bed.ns)}"
    before = nat_rules(bed.ns)
    lines: list[dict[str, object]] = []

    async def scenario() -> int:
        agent = await launch_local_agent(parse_target(f"netns/{bed.ns}"), ttl=2.0,
                                         on_message=lines.append)
        writers: list[asyncio.StreamWriter] = []
        try:
            reader, writer = await asyncio.open_unix_connection(agent.socket_path)
            writers.append(writer)
            writer.write(encode(Hello(token=secrets.token_urlsafe(32), client="intruder")))
            async with asyncio.timeout(REFUSAL_TIMEOUT_S):
                await reader.read()  # refused: the agent closes it
            _, silent = await asyncio.open_unix_connection(agent.socket_path)
            writers.append(silent)  # says nothing, stays open
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                return await agent.process.wait()
        finally:
            for w in writers:
                w.close()
            await agent.stop()

    try:
        code = asyncio.run(scenario())
    except TimeoutError:
        pytest.fail(f"the agent stayed past its TTL; its lines: {lines}")
    assert code == 0
    reasons = [str(line.get("reason")) for line in lines if line.get("event") == "exit"]
    assert len(reasons) == 1 and reasons[0].startswith("no session came within"), lines
    assert nat_rules(bed.ns) == before
