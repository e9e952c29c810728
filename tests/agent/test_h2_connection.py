"""The HTTP/2 connection driver over real sockets, no root: a fake agent and session, an
h2 client on a socketpair, an h2 origin app on loopback (h2 is the oracle on both ends)."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)

from tests.agent.harness import connect_loopback
from waylay.agent.h2_connection import H2Interception, serve_h2, start_h2
from waylay.core.engine.filters import RequestView
from waylay.core.engine.routing import (
    PASS,
    LocalData,
    LocalEnd,
    LocalResponse,
    LocalTrailers,
    Route,
    StealStart,
)

TIMEOUT_S = 10.0


def run(main: Awaitable[None]) -> None:
    """Under uvloop, as the agent runs (its transports are not asyncio's classes)."""
    uvloop.run(main)  # type: ignore[arg-type]


def steal_if_header(view: RequestView) -> Route:
    """Steal requests carrying ``x-steal: yes``."""
    if ("x-steal", "yes") in view.headers:
        return Route(steal_by=7, clause="header_filter: x-steal: yes")
    return PASS


class FakeLink:
    congested = False

    async def drain(self) -> None:
        return None


class FakeSessionStream:
    """A stolen request's wire stream; the fake session answers once the request ends."""

    def __init__(self, owner: Any, start: StealStart) -> None:
        self.owner = owner
        self.start = start
        self.link = FakeLink()
        self.body = bytearray()
        self.resets: list[str] = []

    def send_data(self, data: bytes) -> None:
        self.body += data

    def send_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        pass

    def end(self) -> None:
        loop = asyncio.get_running_loop()
        answer = f"local {self.start.target} {len(self.body)}".encode()
        for event in (LocalResponse(status=200, reason=b"OK", headers=[(b"x-by", b"local")]),
                      LocalData(data=answer), LocalTrailers(headers=[(b"grpc-status", b"0")]),
                      LocalEnd()):
            loop.call_soon(self.owner.on_local, event)

    def reset(self, reason: str) -> None:
        self.resets.append(reason)


class FakeRegistry:
    def capturing(self, port: int) -> bool:
        return False


class FakeAgent:
    def __init__(self) -> None:
        self.registry = FakeRegistry()
        self.next_flow_id = itertools.count(1).__next__
        self.records: list[Any] = []
        self.streams: list[FakeSessionStream] = []

    def open_request_stream(self, owner: Any, start: StealStart) -> FakeSessionStream:
        stream = FakeSessionStream(owner, start)
        self.streams.append(stream)
        return stream

    def open_mirror_stream(self, *args: Any) -> None:
        return None

    def record(self, record: Any, owner: int | None, timed_out: tuple[str, ...]) -> None:
        self.records.append(record)


async def origin_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An h2c server answering ``remote <path> <body length>`` to every request."""
    conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    paths: dict[int, str] = {}
    bodies: dict[int, int] = {}
    while data := await reader.read(65536):
        for event in conn.receive_data(data):
            if isinstance(event, RequestReceived):
                paths[event.stream_id] = dict(event.headers)[":path"]
                bodies[event.stream_id] = 0
            elif isinstance(event, DataReceived):
                bodies[event.stream_id] += len(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                sid = event.stream_id
                conn.send_headers(sid, [(":status", "200"), ("x-by", "remote")])
                conn.send_data(sid, f"remote {paths[sid]} {bodies[sid]}".encode(),
                               end_stream=True)
        writer.write(conn.data_to_send())
    writer.close()


class Client:
    """An h2 client on one end of a socketpair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.reader, self.writer = reader, writer
        self.heads: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytes] = {}
        self.trailers: dict[int, dict[str, str]] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}

    def preface(self) -> bytes:
        self.conn.initiate_connection()
        return self.conn.data_to_send()

    def request(self, sid: int, path: str, *, steal: bool = False, body: bytes = b"") -> None:
        headers = [(":method", "POST" if body else "GET"), (":scheme", "http"),
                   (":authority", "svc"), (":path", path)]
        if steal:
            headers.append(("x-steal", "yes"))
        self.conn.send_headers(sid, headers, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.bodies[sid] = b""
        self.writer.write(self.conn.data_to_send())

    async def until(self, done: Callable[[], bool]) -> None:
        async def loop() -> None:
            while not done():
                data = await self.reader.read(65536)
                assert data, "the agent closed the connection"
                for ev in self.conn.receive_data(data):
                    sid = getattr(ev, "stream_id", 0)
                    if isinstance(ev, ResponseReceived):
                        self.heads[sid] = dict(ev.headers)
                    elif isinstance(ev, DataReceived):
                        self.bodies[sid] += ev.data
                        self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    elif isinstance(ev, TrailersReceived):
                        self.trailers[sid] = dict(ev.headers)
                    elif isinstance(ev, StreamEnded):
                        self.ended.add(sid)
                    elif isinstance(ev, StreamReset):
                        self.resets[sid] = ev.error_code
                        self.ended.add(sid)
                self.writer.write(self.conn.data_to_send())
        await asyncio.wait_for(loop(), TIMEOUT_S)


async def with_bed(test: Callable[[Client, FakeAgent, H2Interception], Awaitable[None]],
                   *, bridge: bool = False, origin: bool = True) -> None:
    server = await asyncio.start_server(origin_app, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    if not origin:
        server.close()
        await server.wait_closed()  # nothing listens there any more
    agent_side, client_side = socket.socketpair()
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(sock=client_side)
    client = Client(reader, writer)
    agent: Any = FakeAgent()
    try:
        if bridge:
            writer.write(client.preface())
            a_reader, a_writer = await asyncio.open_connection(sock=agent_side)
            head = await a_reader.read(24)
            task = asyncio.create_task(serve_h2(agent, a_reader, a_writer, ("127.0.0.1", port),
                                                head, peer="test", decide=steal_if_header,
                                                connect=connect_loopback))
            await asyncio.sleep(0)
            conn = None
        else:
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, agent_side)
            # The preface comes after the hand-over: the placeholder protocol drops data.
            conn = start_h2(agent, transport, ("127.0.0.1", port), b"", peer="test",  # type: ignore[arg-type]
                            decide=steal_if_header, connect=connect_loopback)
            writer.write(client.preface())
        await test(client, agent, conn)  # type: ignore[arg-type]
        writer.close()
        if conn is not None:
            await asyncio.wait_for(conn.closed, TIMEOUT_S)
        else:
            await asyncio.wait_for(task, TIMEOUT_S)
    finally:
        writer.close()
        server.close()


def test_stolen_and_passed_streams_share_the_connection() -> None:
    """Passed streams reach the origin app, stolen ones the session, each answer its own."""
    async def test(client: Client, agent: FakeAgent, conn: H2Interception) -> None:
        for sid in (1, 3, 5, 7):
            client.request(sid, f"/{sid}", steal=sid in (3, 7), body=b"x" * sid)
        await client.until(lambda: client.ended >= {1, 3, 5, 7})
        assert client.bodies == {1: b"remote /1 1", 3: b"local /3 3", 5: b"remote /5 5",
                                 7: b"local /7 7"}
        assert client.trailers[3] == {"grpc-status": "0"}
        assert [s.start.target for s in agent.streams] == ["/3", "/7"]
        assert sorted(r.path for r in agent.records) == ["/1", "/3", "/5", "/7"]

    run(with_bed(test))


@pytest.mark.parametrize("bridge", [False, True])
def test_many_streams(bridge: bool) -> None:
    """Hundreds of streams over one connection, through start_h2 or the streams bridge."""
    async def test(client: Client, agent: FakeAgent, conn: H2Interception) -> None:
        for batch in range(10):
            sids = [1 + 2 * (batch * 50 + i) for i in range(50)]
            for sid in sids:
                client.request(sid, f"/{sid}", steal=sid % 10 == 1)
            await client.until(lambda sids=sids: client.ended >= set(sids))  # type: ignore[misc]
        assert len(agent.records) == 500
        assert all(client.bodies[sid].endswith(b" 0") for sid in client.bodies)

    run(with_bed(test, bridge=bridge))


def test_an_unreachable_origin_gives_502_and_stolen_streams_still_work() -> None:
    """Connecting to the original app fails: passed streams get a 502 naming it."""
    async def test(client: Client, agent: FakeAgent, conn: H2Interception) -> None:
        client.request(1, "/passed")
        client.request(3, "/stolen", steal=True)
        await client.until(lambda: client.ended >= {1, 3})
        assert client.heads[1][":status"] == "502"
        assert b"cannot connect to 127.0.0.1:" in client.bodies[1]
        assert client.bodies[3] == b"local /stolen 0"

    run(with_bed(test, origin=False))


def test_a_vanished_client_aborts_its_stolen_streams() -> None:
    """The client's connection breaks mid-request: the session's stream is reset, the
    flow is recorded, the protocol's ``closed`` resolves."""
    async def test(client: Client, agent: FakeAgent, conn: H2Interception) -> None:
        client.conn.send_headers(1, [(":method", "POST"), (":scheme", "http"),
                                     (":authority", "svc"), (":path", "/up"),
                                     ("x-steal", "yes")])
        client.conn.send_data(1, b"partial")
        client.writer.write(client.conn.data_to_send())
        for _ in range(100):
            if agent.streams and agent.streams[0].body:
                break
            await asyncio.sleep(0.01)
        client.writer.transport.abort()
        await asyncio.wait_for(conn.closed, TIMEOUT_S)
        (stream,) = agent.streams
        assert stream.body == b"partial" and stream.resets
        assert [r.path for r in agent.records] == ["/up"]

    run(with_bed(test))
