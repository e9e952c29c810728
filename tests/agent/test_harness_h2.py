"""HTTP/2 prior knowledge inside the real agent, no root (``tests/agent/harness.py``).

The connection driver hands an h2 connection to ``waylay.agent.h2_connection``, which
opens the original app through the agent's own connector (the seam the harness fills with
plain loopback connections); a stolen stream goes over the real session link. The h2
library is the client and the origin.
"""

from __future__ import annotations

import asyncio

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, ResponseReceived, StreamEnded

from tests.agent.harness import WAIT_S, Harness, with_harness
from waylay.agent.connection_state import Mode


async def h2_origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An h2c origin answering ``origin <path>`` to every request."""
    conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    paths: dict[int, str] = {}
    while data := await reader.read(65536):
        for event in conn.receive_data(data):
            if isinstance(event, RequestReceived):
                paths[event.stream_id] = dict(event.headers)[":path"]
            elif isinstance(event, StreamEnded):
                sid = event.stream_id
                conn.send_headers(sid, [(":status", "200")])
                conn.send_data(sid, f"origin {paths[sid]}".encode(), end_stream=True)
        writer.write(conn.data_to_send())
    writer.close()


def test_h2_streams_pass_to_the_origin_or_go_to_the_session() -> None:
    """On one h2 connection, a stream nobody steals reaches the origin through the
    agent's connector, and a matching one is answered by the session's stub."""
    async def test(h: Harness) -> None:
        origin = await asyncio.start_server(h2_origin, "127.0.0.1", 0)
        address = ("127.0.0.1", origin.sockets[0].getsockname()[1])
        try:
            session = await h.session()
            await session.subscribe(address[1], "steal", {"header_filter": "^x-steal: yes$"})
            client = await h.connect(destination=address)
            h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
            h2.initiate_connection()
            base = [(":method", "GET"), (":scheme", "http"), (":authority", "svc")]
            h2.send_headers(1, [*base, (":path", "/passed")], end_stream=True)
            h2.send_headers(3, [*base, (":path", "/stolen"), ("x-steal", "yes")],
                            end_stream=True)
            client.send(h2.data_to_send())
            bodies: dict[int, bytes] = {1: b"", 3: b""}
            statuses: dict[int, str] = {}
            ended: set[int] = set()

            async def read() -> None:
                while ended != {1, 3}:
                    data = await client.reader.read(65536)
                    assert data, "the agent closed the connection"
                    for event in h2.receive_data(data):
                        if isinstance(event, ResponseReceived):
                            statuses[event.stream_id] = dict(event.headers)[":status"]
                        elif isinstance(event, DataReceived):
                            bodies[event.stream_id] += event.data
                            h2.acknowledge_received_data(event.flow_controlled_length,
                                                         event.stream_id)
                        elif isinstance(event, StreamEnded):
                            ended.add(event.stream_id)
                    client.send(h2.data_to_send())

            await asyncio.wait_for(read(), WAIT_S)
            assert statuses == {1: "200", 3: "200"}
            assert bodies[1] == b"origin /passed"
            assert bodies[3] == b"local GET /stolen 0"
            assert [r.head.target for r in session.requests.values()] == ["/stolen"]
            assert h.conns[-1].mode is Mode.H2
        finally:
            origin.close()

    with_harness(test)
