"""Session-side HTTP/2 delivery: h2c when the local app speaks it, remembered otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded

from waylay.core.client.local_h2 import LocalH2, downgrade_head
from waylay.core.engine.wire import Data, End, Message, RequestStart, ResponseStart, Trailers

START = RequestStart(stream=5, sub_id=1, port=80, method="POST", target="/svc/Call",
                     http_version="2", headers=(("host", "svc.local"), ("te", "trailers"),
                                                ("x-user", "alice")), peer="10.0.0.1:5")


class FakeLink:
    """Collects what delivery sends towards the agent."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.raw = b""
        self.errors: list[str] = []

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def send_raw(self, frame: bytes) -> None:
        self.raw += frame

    async def drain(self) -> None:
        return None

    async def drain_stream(self, sid: int) -> None:
        return None

    def report_error(self, message: str) -> None:
        self.errors.append(message)


async def _h2_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A tiny h2c server: answers each request with its body, then grpc-like trailers."""
    conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    bodies: dict[int, bytes] = {}
    heads: dict[int, dict[str, str]] = {}
    while data := await reader.read(65536):
        for event in conn.receive_data(data):
            if isinstance(event, RequestReceived):
                heads[event.stream_id] = dict(event.headers)
                bodies[event.stream_id] = b""
            elif isinstance(event, DataReceived):
                bodies[event.stream_id] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                sid = event.stream_id
                conn.send_headers(sid, [(":status", "200"),
                                        ("x-authority", heads[sid][":authority"])])
                conn.send_data(sid, bodies[sid])
                conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        writer.write(conn.data_to_send())
    writer.close()


async def _http1_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    writer.write(b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Length: 0\r\n\r\n")
    writer.close()


@asynccontextmanager
async def server(handler: Callable[..., object]) -> AsyncIterator[tuple[str, int]]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
    try:
        yield srv.sockets[0].getsockname()[:2]
    finally:
        srv.close()


def test_downgrade_head_adds_chunked_only_for_a_body_of_unknown_length() -> None:
    """HTTP/1.1 needs chunked for an h2 body without Content-Length; no body, no framing."""
    headers, chunked = downgrade_head(START, Data(stream=5, data=b"x"))
    assert chunked and (b"transfer-encoding", b"chunked") in headers
    assert (b"host", b"svc.local") in headers and not any(n == b"te" for n, _ in headers)
    headers, chunked = downgrade_head(START, End(stream=5))
    assert not chunked and not any(n == b"transfer-encoding" for n, _ in headers)


def test_h2_local_app_gets_h2_with_trailers_both_ways() -> None:
    """An h2c local app is used as such: :authority from host, body, trailers back."""
    async def run() -> tuple[bool, FakeLink, bool | None]:
        async with server(_h2_echo) as local:
            h2 = LocalH2()
            frames: asyncio.Queue[Message] = asyncio.Queue()
            for frame in (Data(stream=5, data=b"ping"),
                          Trailers(stream=5, headers=(("x-sum", "1"),)), End(stream=5)):
                frames.put_nowait(frame)
            link = FakeLink()
            used = await asyncio.wait_for(h2.deliver(link, START, frames, local), 10)
            known = h2.speaks_h2(local)
            h2.close()
            return used, link, known
    used, link, known = asyncio.run(run())
    assert used and known is True and not link.errors
    head, trailers, end = link.sent
    assert isinstance(head, ResponseStart) and head.status == 200
    assert ("x-authority", "svc.local") in head.headers
    assert b"ping" in link.raw
    assert isinstance(trailers, Trailers) and trailers.headers == (("grpc-status", "0"),)
    assert end == End(stream=5)


def test_http1_local_app_is_remembered_and_not_probed_again() -> None:
    """An app that answers the preface with HTTP/1.1 gets False, and is remembered."""
    async def run() -> tuple[bool, bool | None, bool]:
        async with server(_http1_only) as local:
            h2 = LocalH2()
            frames: asyncio.Queue[Message] = asyncio.Queue()
            link = FakeLink()
            first = await asyncio.wait_for(h2.deliver(link, START, frames, local), 10)
            known = h2.speaks_h2(local)
            second = await asyncio.wait_for(h2.deliver(link, START, frames, local), 1)
            return first or second, known, frames.empty()
    used, known, untouched = asyncio.run(run())
    assert not used and known is False and untouched
