"""Stolen HTTP/1.x requests delivered to a real local app on loopback
(waylay.core.client.local_http1, with its heads and pool): the frames the agent gets back,
the bytes the app gets, pooling, failures, upgrades."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waylay.core.client.local_http1 import Http1Delivery, LocalHttp1Pool
from waylay.core.client.local_http1_heads import (
    LocalRequestError,
    request_head_bytes,
    wire_headers,
)
from waylay.core.engine.http1_framing import parse_response_head
from waylay.core.engine.wire import (
    Data,
    End,
    Message,
    RequestStart,
    Reset,
    ResponseStart,
    Trailers,
    WireDecoder,
    headers_to_wire,
)

WAIT_S = 10.0  # only keeps a broken test from hanging; nothing is measured against it

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FakeLink:
    """The session's side as a delivery sees it: records frames and errors; request bytes
    are flushed when the test says a batch of frames ended."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.errors: list[str] = []
        self.holds = 0
        self.max_holds = 0
        self.paused = False  # the link towards the agent is full
        self.waiting: list[Callable[[], None]] = []
        self.to_flush: list[Http1Delivery] = []
        self.changed = asyncio.Event()

    def send(self, message: Message) -> None:
        self.sent.append(message)
        self.changed.set()

    def send_raw(self, frame: bytes) -> None:
        for message in WireDecoder().receive_data(frame):
            self.send(message)

    def report_error(self, message: str) -> None:
        self.errors.append(message)

    @property
    def write_paused(self) -> bool:
        return self.paused

    def when_writable(self, callback: Callable[[], None]) -> None:
        if self.paused:
            self.waiting.append(callback)
        else:
            callback()

    def resume(self) -> None:
        self.paused = False
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback()

    def hold(self) -> None:
        self.holds += 1
        self.max_holds = max(self.max_holds, self.holds)

    def release(self) -> None:
        self.holds -= 1

    def flush_later(self, delivery: Http1Delivery) -> None:
        self.to_flush.append(delivery)

    def batch_end(self) -> None:
        to_flush, self.to_flush = self.to_flush, []
        for delivery in to_flush:
            delivery.flush()

    async def until(self, done: Callable[[list[Message]], bool]) -> list[Message]:
        for _ in range(1000):  # bounded; each wait is bounded too
            if done(self.sent):
                return self.sent
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), WAIT_S)
        raise AssertionError(f"not done: {self.sent}")


def ended(messages: list[Message]) -> bool:
    return any(isinstance(m, End | Reset) or (isinstance(m, ResponseStart) and m.end)
               for m in messages)


def start(stream: int, method: str = "GET", target: str = "/",
          headers: tuple[tuple[str, str], ...] = (("Host", "svc"),)) -> RequestStart:
    return RequestStart(stream=stream, sub_id=1, port=80, method=method, target=target,
                        http_version="1.1", headers=headers, peer="10.0.0.9:1", flow_id=stream)


async def serve(handler: Handler) -> tuple[asyncio.Server, tuple[str, int]]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, ("127.0.0.1", int(server.sockets[0].getsockname()[1]))


def deliver(link: FakeLink, pool: LocalHttp1Pool, request: RequestStart,
            local: tuple[str, int], done: list[int]) -> Http1Delivery:
    delivery = Http1Delivery(link, pool, request, local, done.append)
    delivery.begin()
    return delivery


def test_a_small_answer_is_one_frame_and_the_connection_is_reused() -> None:
    """GET, answered with a Content-Length body in one write: one ResponseStart carrying
    the body and the end; the next request goes over the same connection."""
    async def scenario() -> None:
        heads: list[bytes] = []

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(2):
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-A: 1 \r\n\r\nlocal\n")
            await reader.read()
            writer.close()

        server, local = await serve(app)
        link, pool, done = FakeLink(), LocalHttp1Pool(), list[int]()
        for sid in (1, 2):
            delivery = deliver(link, pool, start(sid, target=f"/{sid}"), local, done)
            delivery.request_end()
            link.batch_end()
            await link.until(lambda sent, sid=sid: sid in done)
        first, second = link.sent
        assert first == ResponseStart(stream=1, status=200, reason="OK",
                                      headers=(("Content-Length", "6"), ("X-A", "1")),
                                      body=b"local\n", end=True)
        assert isinstance(second, ResponseStart) and second.stream == 2 and second.end
        assert heads == [b"GET /1 HTTP/1.1\r\nHost: svc\r\n\r\n",
                         b"GET /2 HTTP/1.1\r\nHost: svc\r\n\r\n"]
        assert (pool.opened, pool.reused) == (1, 1)
        pool.close()
        server.close()

    asyncio.run(scenario())


def test_bodies_stream_both_ways_with_their_framing() -> None:
    """A Content-Length upload arrives whole at the app; a chunked answer arriving in
    pieces streams back as ResponseStart, Data frames and End."""
    async def scenario() -> None:
        got: list[bytes] = []

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            got.append(head + await reader.readexactly(10))
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            for piece in (b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.01)
            await reader.read()
            writer.close()

        server, local = await serve(app)
        link, pool, done = FakeLink(), LocalHttp1Pool(), list[int]()
        delivery = deliver(link, pool, start(3, "POST", "/up", (("Host", "svc"),
                                                                  ("Content-Length", "10"))),
                           local, done)
        delivery.frame(Data(stream=3, data=b"01234"))
        link.batch_end()
        delivery.frame(Data(stream=3, data=b"56789"))
        delivery.frame(End(stream=3))
        link.batch_end()
        sent = await link.until(ended)
        assert got == [b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\n0123456789"]
        head = sent[0]
        assert isinstance(head, ResponseStart) and head.status == 200 and not head.end
        assert b"".join(m.data for m in sent if isinstance(m, Data)) == b"hello world"
        assert isinstance(sent[-1], End) and done == [3]
        assert pool.opened == 1  # and it went back to the pool
        pool.close()
        server.close()

    asyncio.run(scenario())


def test_a_chunked_upload_ends_with_its_trailers() -> None:
    """A chunked request's trailers (an h2 client's, a gRPC call's) end its body."""
    async def scenario() -> None:
        got = asyncio.get_running_loop().create_future()

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.readuntil(b"x-sum: 9\r\n\r\n"))
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await reader.read()
            writer.close()

        server, local = await serve(app)
        link, pool, done = FakeLink(), LocalHttp1Pool(), list[int]()
        delivery = deliver(link, pool, start(4, "POST", "/", (("Host", "svc"), (
            "Transfer-Encoding", "chunked"))), local, done)
        delivery.frame(Data(stream=4, data=b"abc"))
        delivery.frame(Trailers(stream=4, headers=(("x-sum", "9"),)))
        delivery.frame(End(stream=4))
        link.batch_end()
        body = (await asyncio.wait_for(got, WAIT_S)).split(b"\r\n\r\n", 1)[1]
        assert body == b"3\r\nabc\r\n0\r\nx-sum: 9\r\n\r\n"
        await link.until(ended)
        pool.close()
        server.close()

    asyncio.run(scenario())


def test_an_app_closing_mid_answer_resets_the_stream_and_says_why() -> None:
    """The app closes before its answer is complete: the agent gets a Reset, the session
    an error naming the request and the local address."""
    async def scenario() -> None:
        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
            await writer.drain()
            writer.close()

        server, local = await serve(app)
        link, pool, done = FakeLink(), LocalHttp1Pool(), list[int]()
        deliver(link, pool, start(5, target="/cut"), local, done).request_end()
        link.batch_end()
        sent = await link.until(ended)
        assert isinstance(sent[-1], Reset)
        (error,) = link.errors
        assert error.startswith("GET /cut: local app at 127.0.0.1:") and "failed" in error
        assert done == [5] and pool.reused == 0
        pool.close()
        server.close()

    asyncio.run(scenario())


def test_an_unreachable_app_gets_the_caller_a_502_naming_it() -> None:
    """Nothing listens at the local address: a 502 whose body names it, and an error."""
    async def scenario() -> None:
        with socket.socket() as probe:  # a port nothing listens on (bound, never listening)
            probe.bind(("127.0.0.1", 0))
            local = ("127.0.0.1", probe.getsockname()[1])
            link, pool, done = FakeLink(), LocalHttp1Pool(), list[int]()
            deliver(link, pool, start(6), local, done).request_end()
            sent = await link.until(ended)
        head, data, end = sent
        assert isinstance(head, ResponseStart) and head.status == 502
        assert ("X-Waylay-Error", "local-unreachable") in head.headers
        assert isinstance(data, Data) and f"127.0.0.1:{local[1]}".encode() in data.data
        assert isinstance(end, End) and "unreachable" in link.errors[0]

    asyncio.run(scenario())


def test_a_reset_from_the_agent_lets_the_app_connection_go() -> None:
    """The agent resets the stream (its caller left): the app sees its connection close."""
    async def scenario() -> None:
        closed = asyncio.Event()

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await reader.read()  # never answers; returns when the session lets go
            closed.set()
            writer.close()

        server, local = await serve(app)
        link, pool, done = FakeLink(), LocalHttp1Pool(), list[int]()
        delivery = deliver(link, pool, start(7), local, done)
        delivery.request_end()
        link.batch_end()
        for _ in range(100):  # bounded: until the connection is open and the head sent
            if pool.opened:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        delivery.reset()
        await asyncio.wait_for(closed.wait(), WAIT_S)
        assert done == [7] and link.sent == []
        pool.close()
        server.close()

    asyncio.run(scenario())


def test_an_upgrade_becomes_a_tunnel_with_half_close() -> None:
    """101 to a request asking for an upgrade: bytes flow both ways as Data frames, the
    agent's End half-closes towards the app, the app's close ends the stream."""
    async def scenario() -> None:
        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n"
                         b"Connection: Upgrade\r\n\r\nhi")
            data = await reader.read()  # until the session half-closes
            writer.write(data.upper())
            await writer.drain()
            writer.close()

        server, local = await serve(app)
        link, pool, done = FakeLink(), LocalHttp1Pool(), list[int]()
        delivery = deliver(link, pool, start(8, headers=(
            ("Host", "svc"), ("Connection", "Upgrade"), ("Upgrade", "echo"))), local, done)
        delivery.request_end()
        link.batch_end()
        await link.until(lambda sent: any(isinstance(m, Data) for m in sent))
        delivery.frame(Data(stream=8, data=b"ping"))
        delivery.frame(End(stream=8))
        link.batch_end()
        sent = await link.until(lambda sent: isinstance(sent[-1], End))
        head = sent[0]
        assert isinstance(head, ResponseStart) and head.status == 101 and not head.end
        assert b"".join(m.data for m in sent if isinstance(m, Data)) == b"hiPING"
        await link.until(lambda sent: bool(done))
        pool.close()
        server.close()

    asyncio.run(scenario())


def test_a_close_delimited_answer_ends_with_the_close_and_is_not_reused() -> None:
    """An answer without Content-Length or chunking ends when the app closes."""
    async def scenario() -> None:
        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
            await writer.drain()
            writer.close()

        server, local = await serve(app)
        link, pool, done = FakeLink(), LocalHttp1Pool(), list[int]()
        deliver(link, pool, start(9), local, done).request_end()
        link.batch_end()
        sent = await link.until(ended)
        assert b"".join(m.data for m in sent if isinstance(m, Data)) == b"until the end"
        assert isinstance(sent[-1], End) and not link.errors
        await link.until(lambda sent: bool(done))
        assert pool.take(local) is None
        server.close()

    asyncio.run(scenario())


def test_a_head_request_expects_no_body_whatever_the_length_says() -> None:
    """HEAD's answer has no body even with Content-Length (RFC 9112 §6.3)."""
    async def scenario() -> None:
        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            await reader.read()
            writer.close()

        server, local = await serve(app)
        link, pool, done = FakeLink(), LocalHttp1Pool(), list[int]()
        deliver(link, pool, start(10, "HEAD"), local, done).request_end()
        link.batch_end()
        (head,) = await link.until(ended)
        assert isinstance(head, ResponseStart) and head.end and head.body == b""
        pool.close()
        server.close()

    asyncio.run(scenario())


def test_an_early_answer_lets_the_connection_go() -> None:
    """The app answers before the upload is all sent (a 413): the answer goes to the agent
    and the connection, with a body half sent, is not reused."""
    async def scenario() -> None:
        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
            await reader.read()
            writer.close()

        server, local = await serve(app)
        link, pool, done = FakeLink(), LocalHttp1Pool(), list[int]()
        delivery = deliver(link, pool, start(11, "POST", "/", (("Host", "svc"), (
            "Content-Length", "1000000"))), local, done)
        delivery.frame(Data(stream=11, data=b"x" * 1000))
        link.batch_end()
        (head,) = await link.until(ended)
        assert isinstance(head, ResponseStart) and head.status == 413 and head.end
        await link.until(lambda sent: bool(done))
        assert pool.take(local) is None
        server.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("G T", "/", ()),
        ("GET", "/a b", ()),
        ("GET", "", ()),
        ("GET", "/", (("Bad Name", "x"),)),
        ("GET", "/", (("", "x"),)),
        ("GET", "/", (("X-Split", "a\r\nX-Evil: 1"),)),
        ("GET", "/", (("X-Nul", "a\x00"),)),
    ],
)
def test_a_head_that_could_split_is_never_sent(method: str, target: str,
                                               headers: tuple[tuple[str, str], ...]) -> None:
    """Methods that are not tokens, targets with spaces or CTLs, bad names and values with
    CR, LF or NUL are refused (they could smuggle a second request to the app)."""
    with pytest.raises(LocalRequestError):
        request_head_bytes(method, target, headers)


def test_a_request_head_is_written_as_http11() -> None:
    """The head is the request line, each field as received, and the empty line."""
    assert request_head_bytes("GET", "/a?b=1", (("Host", "svc"), ("X-L", "caf\xe9"))) == (
        b"GET /a?b=1 HTTP/1.1\r\nHost: svc\r\nX-L: caf\xe9\r\n\r\n")


token = st.text(alphabet="abcXYZ-_019!", min_size=1, max_size=8)
value = st.text(alphabet=" \tab\x80\xffz:;,", max_size=8).map(lambda v: v.strip(" \t"))


@given(st.lists(st.tuples(token, value, st.sampled_from(["", " ", "\t "])), max_size=6))
def test_wire_headers_are_the_heads_fields(fields: list[tuple[str, str, str]]) -> None:
    """The fast scan gives the fields the general parser gives, as latin-1 text (trailing
    whitespace of a value dropped)."""
    lines = "".join(f"{name}:{' ' if i % 2 else ''}{val}{pad}\r\n"
                    for i, (name, val, pad) in enumerate(fields))
    raw = f"HTTP/1.1 200 OK\r\n{lines}Content-Length: 0\r\n\r\n".encode("latin-1")
    head = parse_response_head(bytearray(raw), request_method=b"GET")
    assert head is not None
    assert wire_headers(head) == headers_to_wire(head.headers)


def test_a_slow_app_holds_the_link_until_it_has_read() -> None:
    """An upload faster than the app reads it: the delivery holds the link (no more frames
    are taken) and releases it once the app caught up; every byte arrives."""
    async def scenario() -> None:
        size = 16 * 1024 * 1024  # past what the kernel buffers on loopback
        got = asyncio.get_running_loop().create_future()

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(0.2)  # busy elsewhere while the upload piles up
            got.set_result(await reader.readexactly(size))
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await reader.read()
            writer.close()

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # a small window
        listener.bind(("127.0.0.1", 0))
        server = await asyncio.start_server(app, sock=listener)
        local = ("127.0.0.1", int(listener.getsockname()[1]))
        link, pool, done = FakeLink(), LocalHttp1Pool(), list[int]()
        delivery = deliver(link, pool, start(12, "PUT", "/big", (
            ("Host", "svc"), ("Content-Length", str(size)))), local, done)
        link.batch_end()
        for _ in range(100):  # bounded: until the connection is open
            if pool.opened:
                break
            await asyncio.sleep(0.01)
        piece = bytes(range(256)) * 1024
        for _ in range(size // len(piece)):
            delivery.frame(Data(stream=12, data=piece))
            link.batch_end()
        delivery.frame(End(stream=12))
        link.batch_end()
        assert link.max_holds == 1  # the app's side filled up: the link was held
        assert await asyncio.wait_for(got, WAIT_S) == piece * (size // len(piece))
        await link.until(ended)
        assert link.holds == 0  # and released once the app caught up
        pool.close()
        server.close()

    asyncio.run(scenario())


def test_a_full_link_pauses_reading_the_app() -> None:
    """While the link towards the agent is full, the app's connection is not read; it is
    read again once the link drains, and the answer arrives whole."""
    async def scenario() -> None:
        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"a" * 1000)
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"b" * 199_000)
            await writer.drain()
            await reader.read()
            writer.close()

        server, local = await serve(app)
        link, pool, done = FakeLink(), LocalHttp1Pool(), list[int]()
        link.paused = True
        deliver(link, pool, start(13), local, done).request_end()
        link.batch_end()
        await link.until(lambda sent: any(isinstance(m, Data) for m in sent))
        await asyncio.sleep(0.3)
        assert link.waiting and not any(isinstance(m, End) for m in link.sent)
        link.resume()
        sent = await link.until(ended)
        assert sum(len(m.data) for m in sent if isinstance(m, Data)) == 200_000
        pool.close()
        server.close()

    asyncio.run(scenario())
