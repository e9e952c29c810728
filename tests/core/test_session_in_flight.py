"""The session's side of a stolen request in flight: its ``started`` event, the bound it
asks the agent for, and a stream the agent resets (the local connection is let go)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from waylay.core.client.session import Session
from waylay.core.engine.config import IncomingConfig, Mode
from waylay.core.engine.events import Event, StartedEvent
from waylay.core.engine.flow import Verdict
from waylay.core.engine.wire import (
    End,
    Message,
    RequestStart,
    Reset,
    Subscribe,
    Subscribed,
    Welcome,
    WireDecoder,
    encode,
)

WAIT_S = 10.0  # only keeps a broken test from hanging; nothing is measured against it


class HangingApp:
    """A local app on loopback that reads requests and never answers; it notes when a
    connection of its closes."""

    def __init__(self) -> None:
        self.requests = 0
        self.got_request = asyncio.Event()
        self.closed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /hang "):
            self.requests += 1
            self.got_request.set()
        await reader.read()  # never answers; returns at the session's close
        self.closed.set()
        writer.close()


class AgentSide:
    """The agent's end of the link: reads the session's frames, sends frames to it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = WireDecoder()
        self.received: list[Message] = []

    async def start(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(sock=self.sock)

    def send(self, message: Message) -> None:
        self.writer.write(encode(message))

    async def until(self, kind: type) -> Any:
        for _ in range(1000):  # bounded by count; each read waits at most WAIT_S
            found = [m for m in self.received if isinstance(m, kind)]
            if found:
                return found[0]
            data = await asyncio.wait_for(self.reader.read(65536), WAIT_S)
            assert data, "the session closed the link"
            self.received += self.decoder.receive_data(data)
        raise AssertionError(f"no {kind.__name__} from the session")


def test_a_stolen_request_is_announced_then_let_go_when_the_agent_resets_it() -> None:
    """RequestStart with a flow id gives a ``started`` event (the request event's keys);
    the Subscribe names the local address and the timeout; a Reset from the agent closes
    the connection to a local app that never answered."""
    async def scenario() -> None:
        app = HangingApp()
        local_port = await app.start()
        mine, theirs = socket.socketpair()
        agent = AgentSide(theirs)
        await agent.start()
        reader, writer = await asyncio.open_connection(sock=mine)
        events: list[Event] = []
        session = Session(reader=reader, writer=writer, token="t",
                          incoming=IncomingConfig(mode=Mode.STEAL),
                          cli_ports={80: local_port}, on_event=events.append,
                          local_response_timeout=7)
        agent.send(Welcome(agent="a", session="s", listening_ports=(80,)))
        runner = asyncio.create_task(session.run())
        sub: Subscribe = await agent.until(Subscribe)
        assert (sub.local, sub.response_timeout) == (f"127.0.0.1:{local_port}", 7)
        agent.send(Subscribed(sub_id=sub.sub_id, port=80, mode="steal", filter=None))
        agent.send(RequestStart(stream=5, sub_id=sub.sub_id, port=80, method="GET",
                                target="/hang", http_version="1.1",
                                headers=(("Host", "shop.local"),), peer="10.0.0.9:1",
                                flow_id=42))
        agent.send(End(stream=5))
        await asyncio.wait_for(app.got_request.wait(), WAIT_S)
        (started,) = [e for e in events if isinstance(e, StartedEvent)]
        assert started == StartedEvent(id=42, ts=started.ts, port=80, protocol="http/1.1",
                                       method="GET", authority="shop.local", path="/hang")
        assert started.verdict is Verdict.STOLEN
        agent.send(Reset(stream=5, reason="the local app did not answer within 7 s"))
        await asyncio.wait_for(app.closed.wait(), WAIT_S)
        assert app.requests == 1
        session.stop()
        await asyncio.wait_for(runner, WAIT_S)
        assert app.server is not None
        app.server.close()

    asyncio.run(scenario())


def test_mirror_copies_are_not_announced() -> None:
    """A RequestStart without a flow id (a mirror copy) gives no ``started`` event."""
    async def scenario() -> None:
        mine, theirs = socket.socketpair()
        agent = AgentSide(theirs)
        await agent.start()
        reader, writer = await asyncio.open_connection(sock=mine)
        events: list[Event] = []
        session = Session(reader=reader, writer=writer, token="t",
                          incoming=IncomingConfig(mode=Mode.MIRROR),
                          cli_ports={80: 9}, on_event=events.append)
        agent.send(Welcome(agent="a", session="s", listening_ports=(80,)))
        runner = asyncio.create_task(session.run())
        sub: Subscribe = await agent.until(Subscribe)
        agent.send(Subscribed(sub_id=sub.sub_id, port=80, mode="mirror", filter=None))
        agent.send(RequestStart(stream=5, sub_id=sub.sub_id, port=80, method="GET",
                                target="/copy", http_version="1.1", headers=(), peer="p"))
        agent.send(End(stream=5))
        await agent.until(End)  # the copy was delivered (to nothing: a 502) and answered
        assert not [e for e in events if isinstance(e, StartedEvent)]
        session.stop()
        await asyncio.wait_for(runner, WAIT_S)

    asyncio.run(scenario())


class CountingLink:
    """Counts the holds a stream takes on the session's link."""

    def __init__(self) -> None:
        self.holds = 0

    def hold(self) -> None:
        self.holds += 1

    def release(self) -> None:
        self.holds -= 1


def test_a_reset_stream_lets_go_of_the_link_its_full_queue_held() -> None:
    """A stream delivered by a task (h2, whole connections) whose queue is full holds the
    link; when the agent resets it, or its delivery ends, the hold goes with it."""
    from waylay.core.client.session import STREAM_QUEUE_FRAMES, _QueuedStream

    async def scenario() -> None:
        for ending in ("reset", "done"):
            session = type("FakeSession", (), {"link": CountingLink()})()
            stream = _QueuedStream(session, 9)  # type: ignore[arg-type]
            never = asyncio.get_running_loop().create_future()
            stream.task = asyncio.create_task(asyncio.wait_for(never, WAIT_S))
            for _ in range(STREAM_QUEUE_FRAMES):
                stream.frame(End(stream=9))
            stream.frame(End(stream=9))  # no room: the link is held
            await asyncio.sleep(0)
            assert session.link.holds == 1
            if ending == "reset":
                stream.reset()
            else:
                stream.task.cancel()
                stream.drop_waiting()
            for _ in range(100):  # bounded: a few loop turns
                if not session.link.holds:
                    break
                await asyncio.sleep(0.01)
            assert session.link.holds == 0

    asyncio.run(scenario())
