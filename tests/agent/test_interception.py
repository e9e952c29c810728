"""The agent's connection driver (waylay.agent.interception) over real loopback sockets, no root.

A fake agent (a real ``Registry``, an ``UpstreamPool`` whose connections go straight to a
loopback "original app" of the test, flow records captured as events), an injected
original destination in place of ``SO_ORIGINAL_DST``, and plain clients. Everything runs
under uvloop, as the agent does. Nothing here measures time: waits are bounded only so a
broken test cannot hang.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

import waylay.agent.h2_connection as h2_connection
from waylay.agent.connection_state import WRITE_HIGH_WATER, Mode
from waylay.agent.interception import InterceptedConnection
from waylay.agent.upstream import UPSTREAM_HIGH_WATER, Upstream, UpstreamPool
from waylay.core.engine.events import request_event, to_json
from waylay.core.engine.filters import compile_http_filter
from waylay.core.engine.flow import FlowRecord, FlowRow
from waylay.core.engine.registry import Registry, Subscription
from waylay.core.engine.routing import LocalData, LocalEnd, LocalResponse, MirrorStart, StealStart
from waylay.core.system.pool import Destination

WAIT_S = 10.0  # only keeps a broken test from hanging; nothing is measured against it
POLL_S = 0.01
# What one read can add on top of a buffer's high-water mark before the pause takes
# effect (a loop reads at most a few hundred KiB at a time): far below the payloads here.
READ_SLACK = 1024 * 1024


def run(main: Coroutine[Any, Any, None]) -> None:
    """Under uvloop, as the agent runs (its transports are not asyncio's classes)."""
    uvloop.run(main)


async def until(condition: Callable[[], bool], what: str, *, bound_s: float = WAIT_S) -> None:
    """Wait (bounded) until ``condition`` holds."""
    for _ in range(int(bound_s / POLL_S)):
        if condition():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"never happened: {what}")


# --- the fake agent --------------------------------------------------------------------


class LoopbackPool(UpstreamPool):
    """The real pool, opening plain loopback connections: no SO_MARK (that needs root),
    and no redirect to bypass here; it keeps every Upstream it made for inspection."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[Upstream] = []

    async def connect(self, destination: Destination, owner: Any = None) -> Upstream:
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(lambda: Upstream(destination, owner),
                                             *destination)
        self.opened += 1
        self.made.append(up)
        return up


class FakeLink:
    congested = False

    async def drain(self) -> None:
        return None


class RequestStream:
    """A stolen request's wire stream: the fake session answers once the request ends."""

    def __init__(self, owner: Any, start: StealStart) -> None:
        self.owner = owner
        self.start = start
        self.link = FakeLink()
        self.body = bytearray()
        self.resets: list[str] = []
        self.finished = asyncio.Event()

    def send_data(self, data: bytes) -> None:
        self.body += data

    async def drain(self) -> None:
        await self.link.drain()

    def end(self) -> None:
        answer = b"local %s %d" % (self.start.target.encode(), len(self.body))
        loop = asyncio.get_running_loop()
        loop.call_soon(self.owner.on_local, LocalResponse(
            status=200, reason=b"OK", headers=[(b"Content-Length", b"%d" % len(answer))]))
        loop.call_soon(self.owner.on_local, LocalData(data=answer))
        loop.call_soon(self.finished.set)  # as waylay.agent.link's Stream: finished on the End
        loop.call_soon(self.owner.on_local, LocalEnd())

    def reset(self, reason: str) -> None:
        self.resets.append(reason)


class WholeStream:
    """A whole stolen connection: the fake local app answers each read in upper case and
    half-closes when the client does."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.link = FakeLink()
        self.finished = asyncio.Event()
        self.received = bytearray()
        self.resets: list[str] = []
        self.ended = False

    def send_data(self, data: bytes) -> None:
        self.received += data
        asyncio.get_running_loop().call_soon(self.owner.write_local, data.upper())

    async def drain(self) -> None:
        await self.link.drain()

    def end(self) -> None:
        asyncio.get_running_loop().call_soon(self.owner.end_local)

    def reset(self, reason: str) -> None:
        self.resets.append(reason)


class MirrorCopy:
    """A mirror copy: what it was sent, and whether it ended."""

    def __init__(self, start: MirrorStart | None) -> None:
        self.start = start
        self.link = FakeLink()
        self.data = bytearray()
        self.ended = False
        self.resets: list[str] = []

    def send_data(self, data: bytes) -> None:
        self.data += data

    def end(self) -> None:
        self.ended = True

    def reset(self, reason: str) -> None:
        self.resets.append(reason)


class FakeAgent:
    """What InterceptedConnection uses of ``waylay.agent.worker.Agent``."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.pool = LoopbackPool()
        self.proxy_port = 0
        self.find_destination: Callable[[object], tuple[str, int] | None] = lambda sock: None
        self.next_flow_id = itertools.count(1).__next__
        self.flows: list[dict[str, Any]] = []  # request events, in the order reported
        self.owners: list[int | None] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.request_streams: list[RequestStream] = []
        self.whole_streams: list[WholeStream] = []
        self.mirrors: list[MirrorCopy] = []
        self.shadowed_subs: list[int] = []

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def shadowed(self, sub_ids: tuple[int, ...]) -> None:
        self.shadowed_subs.extend(sub_ids)

    def open_request_stream(self, conn: Any, start: StealStart) -> RequestStream:
        stream = RequestStream(conn, start)
        self.request_streams.append(stream)
        return stream

    def open_connection_stream(self, conn: Any, sub_id: int) -> WholeStream:
        stream = WholeStream(conn)
        self.whole_streams.append(stream)
        return stream

    def open_mirror_stream(self, sub_id: int, port: int, peer: str,
                           start: MirrorStart | None) -> MirrorCopy:
        copy = MirrorCopy(start)
        self.mirrors.append(copy)
        return copy

    def record(self, record: FlowRecord, owner: int | None, timed_out: tuple[str, ...]) -> None:
        self.flows.append(to_json(request_event(record.to_row())))
        self.owners.append(owner)

    def record_row(self, port: int, row: FlowRow, timed_out: tuple[str, ...]) -> None:
        assert row[2] == port
        self.flows.append(to_json(request_event(row)))
        self.owners.append(None)


class Probe(InterceptedConnection):
    """The driver under test, keeping its client transport where the test can see it."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        super().connection_made(transport)


# --- the original app ------------------------------------------------------------------


@dataclass
class Request:
    method: bytes
    target: bytes
    headers: dict[bytes, bytes]
    body: bytes


Answer = Callable[[Request], bytes | Awaitable[bytes]]


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       got: bytearray, gate: asyncio.Event | None) -> Request | None:
    """One request, by a minimal parser of the test's own; every byte read goes to ``got``."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        got += exc.partial
        return None
    got += head
    lines = head[:-4].split(b"\r\n")
    method, target, _ = lines[0].split(b" ")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if gate is not None:
        await gate.wait()
    if headers.get(b"expect", b"").lower() == b"100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = bytearray()
    if b"content-length" in headers:
        raw = await reader.readexactly(int(headers[b"content-length"]))
        got += raw
        body += raw
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            got += line
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    got += trailer
                got += trailer
                break
            data = await reader.readexactly(size + 2)
            got += data
            body += data[:-2]
    return Request(method, target, headers, bytes(body))


def remote(request: Request) -> bytes:
    """The default answer: says which request it answers."""
    body = b"remote %s %s %d" % (request.method, request.target, len(request.body))
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@dataclass
class HttpApp:
    """The original app: answers each request with ``answer``; keeps every byte it read
    per connection. An upgrade it answered with 101 becomes an echo."""

    answer: Answer = remote
    gate: asyncio.Event | None = None  # set: bodies are read only once it is set
    received: list[bytearray] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    @property
    def connections(self) -> int:
        return len(self.received)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = bytearray()
        self.received.append(got)
        try:
            while (request := await read_request(reader, writer, got, self.gate)) is not None:
                self.requests.append(request)
                answer = self.answer(request)
                out = await answer if inspect.isawaitable(answer) else answer
                writer.write(out)
                await writer.drain()
                if out.startswith(b"HTTP/1.1 101 "):
                    while data := await reader.read(65536):
                        got += data
                        writer.write(data)
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def listen(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                   Awaitable[None]],
                 *, rcvbuf: int | None = None) -> asyncio.Server:
    """A loopback server; ``rcvbuf`` fixes its connections' receive buffers (small, so a
    test can fill the path with a few MiB)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    return await asyncio.start_server(handler, sock=sock)


def port_of(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


# --- the bed ---------------------------------------------------------------------------


class Client:
    """A remote client of the intercepted port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), WAIT_S)

    async def read_to_eof(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), WAIT_S)

    def shut(self) -> None:
        """Half-close: no more bytes from this client."""
        self.writer.write_eof()


class Bed:
    """The fake agent behind a loopback listener standing in for the redirect listener."""

    def __init__(self, destination: tuple[str, int] | None) -> None:
        self.agent = FakeAgent()
        self.destination = destination
        self.conns: list[Probe] = []
        self.server: asyncio.Server | None = None
        self.clients: list[Client] = []

    def original_destination(self, sock: object) -> tuple[str, int] | None:
        return self.destination

    @property
    def app(self) -> tuple[str, int]:
        """The original destination (the app's address, or a port nobody serves)."""
        assert self.destination is not None
        return self.destination

    def _new_conn(self) -> Probe:
        conn = Probe(self.agent)  # type: ignore[arg-type]
        self.conns.append(conn)
        return conn

    async def start(self) -> None:
        self.server = await asyncio.get_running_loop().create_server(
            self._new_conn, "127.0.0.1", 0)
        self.agent.proxy_port = port_of(self.server)

    async def connect(self, *, rcvbuf: int | None = None) -> Client:
        assert self.server is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port_of(self.server)))
        client = Client(*await asyncio.open_connection(sock=sock))
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            client.writer.close()
        if self.server is not None:
            self.server.close()
        self.agent.pool.close()
        tasks = list(self.agent.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def with_bed(monkeypatch: pytest.MonkeyPatch, app: HttpApp | None,
             test: Callable[[Bed], Awaitable[None]], *,
             app_handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                   Awaitable[None]] | None = None,
             rcvbuf: int | None = None, destination: str = "app") -> None:
    """Run ``test`` against a bed whose original destination is the app's address (or
    ``destination``: "none" for a direct connection, "closed" for a port nobody serves)."""
    async def main() -> None:
        handler = app_handler or (app.serve if app is not None else None)
        server = await listen(handler, rcvbuf=rcvbuf) if handler is not None else None
        if destination == "closed":
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            dest: tuple[str, int] | None = ("127.0.0.1", probe.getsockname()[1])
            probe.close()  # nobody listens there now: connecting is refused
        elif destination == "none":
            dest = None
        else:
            assert server is not None
            dest = ("127.0.0.1", port_of(server))
        bed = Bed(dest)
        bed.agent.find_destination = bed.original_destination  # the injected SO_ORIGINAL_DST
        await bed.start()
        try:
            await test(bed)
        finally:
            await bed.close()
            if server is not None:
                server.close()

    run(main())


def response(body: bytes, *extra: bytes, status: bytes = b"200 OK") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n" % len(body)
            + b"".join(line + b"\r\n" for line in extra) + b"\r\n" + body)


# --- passthrough -----------------------------------------------------------------------


def test_keep_alive_passthrough_is_byte_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep-alive requests cross byte for byte over one upstream connection, each recorded."""
    app = HttpApp()
    requests = [
        b"GET /one HTTP/1.1\r\nHost: svc\r\nUser-Agent: t\r\n\r\n",
        b"GET /two?x=1 HTTP/1.1\r\nhost: svc\r\nX-Odd:  spaced \t\r\n\r\n",
        b"POST /three HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello",
        b"DELETE /four HTTP/1.1\r\nHost: svc\r\n\r\n",
    ]

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        for request in requests:
            client.send(request)
            request_line = request.split(b"\r\n")[0].split(b" ")
            body_len = len(request.partition(b"\r\n\r\n")[2])
            expected = remote(Request(request_line[0], request_line[1], {}, b"x" * body_len))
            assert await client.read(len(expected)) == expected
        await until(lambda: len(bed.agent.flows) == 4, "four flow records")
        assert bytes(app.received[0]) == b"".join(requests)
        assert app.connections == 1
        flows = bed.agent.flows
        assert [f["path"] for f in flows] == ["/one", "/two?x=1", "/three", "/four"]
        assert {f["verdict"] for f in flows} == {"passed"}
        assert {f["status"] for f in flows} == {200}
        assert [f["bytes_in"] for f in flows] == [0, 0, 5, 0]
        assert flows[0]["bytes_out"] == len(b"remote GET /one 0")
        assert {f["port"] for f in flows} == {bed.app[1]}
        assert all(f["authority"] == "svc" and f["duration_ms"] >= 0 for f in flows)

    with_bed(monkeypatch, app, test)


def test_pipelined_requests_are_answered_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests sent in one write reach the app exactly and are answered in order."""
    app = HttpApp()
    stream = (b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
              b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
              b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n")

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(stream)
        expected = b"".join(remote(Request(m, t, {}, b"x" * n))
                            for m, t, n in [(b"GET", b"/1", 0), (b"POST", b"/2", 3),
                                            (b"GET", b"/3", 0)])
        assert await client.read(len(expected)) == expected
        await until(lambda: len(bed.agent.flows) == 3, "three flow records")
        assert bytes(app.received[0]) == stream
        assert [f["path"] for f in bed.agent.flows] == ["/1", "/2", "/3"]

    with_bed(monkeypatch, app, test)


def test_chunked_bodies_both_ways_are_byte_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked bodies, extensions and trailers included, cross both ways exactly."""
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-Sum: 6\r\n\r\n")
    app = HttpApp(answer=lambda request: answer)
    upload = (b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"3;name=v\r\nabc\r\nA\r\n0123456789\r\n0\r\nTrailer-A: 1\r\n\r\n")

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        for half in (upload[:50], upload[50:]):
            client.send(half)
            await asyncio.sleep(0)
        assert await client.read(len(answer)) == answer
        await until(lambda: len(bed.agent.flows) == 1, "a flow record")
        assert bytes(app.received[0]) == upload
        assert app.requests[0].body == b"abc0123456789"
        flow = bed.agent.flows[0]
        assert (flow["bytes_in"], flow["bytes_out"], flow["status"]) == (13, 6, 200)

    with_bed(monkeypatch, app, test)


def test_expect_100_continue_is_the_apps_to_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client waits for the app's 100 Continue (relayed), then sends its body."""
    app = HttpApp()
    head = b"PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(head)
        continue_ = b"HTTP/1.1 100 Continue\r\n\r\n"
        assert await client.read(len(continue_)) == continue_
        client.send(b"data")
        expected = remote(Request(b"PUT", b"/x", {}, b"data"))
        assert await client.read(len(expected)) == expected
        await until(lambda: len(bed.agent.flows) == 1, "a flow record")
        assert bytes(app.received[0]) == head + b"data"
        assert bed.agent.flows[0]["status"] == 200

    with_bed(monkeypatch, app, test)


def test_head_answer_has_no_body_and_the_connection_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A HEAD answer (length, no body) is relayed whole and the next request follows."""
    def answer(request: Request) -> bytes:
        if request.method == b"HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
        return remote(request)

    app = HttpApp(answer=answer)

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
        assert await client.read(len(head)) == head
        client.send(b"GET /g HTTP/1.1\r\nHost: h\r\n\r\n")
        expected = remote(Request(b"GET", b"/g", {}, b""))
        assert await client.read(len(expected)) == expected
        await until(lambda: len(bed.agent.flows) == 2, "two flow records")
        assert [(f["method"], f["bytes_out"]) for f in bed.agent.flows] == [
            ("HEAD", 0), ("GET", len(b"remote GET /g 0"))]

    with_bed(monkeypatch, app, test)


def test_a_close_delimited_answer_is_relayed_until_the_app_closes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer without a length is relayed until the app closes, then the client is closed."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"z" * 100_000

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
        assert await client.read_to_eof() == answer
        await until(lambda: len(bed.agent.flows) == 1, "a flow record")
        assert (bed.agent.flows[0]["status"], bed.agent.flows[0]["bytes_out"]) == (200, 100_000)

    with_bed(monkeypatch, None, test, app_handler=until_close)


def test_upgrade_becomes_a_tunnel_to_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 101 to a passed upgrade turns the connection into a byte tunnel both ways."""
    switch = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\n\r\n")
    app = HttpApp(answer=lambda request: switch)
    upgrade = (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"\r\n")

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(upgrade)
        assert await client.read(len(switch)) == switch
        frames = [b"\x81\x02hi", bytes(range(256)), b"GET / HTTP/1.1\r\n\r\n"]
        for frame in frames:
            client.send(frame)
            assert await client.read(len(frame)) == frame
        await until(lambda: len(bed.agent.flows) == 1, "the upgrade's record")
        assert bed.agent.flows[0]["status"] == 101
        client.shut()
        assert await client.read_to_eof() == b""
        await until(lambda: bed.conns[0].mode is Mode.CLOSED, "the tunnel closed")
        assert bytes(app.received[0]) == upgrade + b"".join(frames)

    with_bed(monkeypatch, app, test)


def test_stolen_and_passed_requests_share_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Matching requests go to the session, the rest to the app, in order on one connection."""
    app = HttpApp()
    passed = b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n"
    stolen = b"POST /s HTTP/1.1\r\nHost: h\r\nX-Steal: yes\r\nContent-Length: 2\r\n\r\nhi"

    async def test(bed: Bed) -> None:
        port = bed.app[1]
        bed.agent.registry.add(Subscription(
            sub_id=5, link_id=1, port=port, mode="steal",
            http_filter=compile_http_filter({"header_filter": "^x-steal: yes$"})))
        client = await bed.connect()
        local = b"local /s 2"
        expected = [remote(Request(b"GET", b"/p", {}, b"")),
                    response(local), remote(Request(b"GET", b"/p", {}, b""))]
        for request, answer in zip([passed, stolen, passed], expected, strict=True):
            client.send(request)
            assert await client.read(len(answer)) == answer
        await until(lambda: len(bed.agent.flows) == 3, "three flow records")
        assert [f["verdict"] for f in bed.agent.flows] == ["passed", "stolen", "passed"]
        assert bed.agent.owners == [None, 5, None]
        assert bed.agent.flows[1]["matched"] == "header_filter: ^x-steal: yes$"
        (stream,) = bed.agent.request_streams
        assert stream.body == b"hi" and stream.start.flow_id == bed.agent.flows[1]["id"]
        assert bytes(app.received[0]) == passed + passed

    with_bed(monkeypatch, app, test)


def test_a_steal_whose_session_is_gone_is_answered_502(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session vanished between the decision and the stream: the client gets 502."""
    async def test(bed: Bed) -> None:
        bed.agent.registry.add(Subscription(
            sub_id=5, link_id=1, port=bed.app[1], mode="steal",
            http_filter=compile_http_filter({"header_filter": "^x-steal: yes$"})))
        monkeypatch.setattr(bed.agent, "open_request_stream", lambda conn, start: None)
        client = await bed.connect()
        client.send(b"GET /s HTTP/1.1\r\nHost: h\r\nX-Steal: yes\r\n\r\n")
        answer = await client.read_to_eof()
        assert answer.startswith(b"HTTP/1.1 502 ") and b"the session is gone" in answer
        await until(lambda: len(bed.agent.flows) == 1, "a flow record")
        assert (bed.agent.flows[0]["status"], bed.agent.owners) == (502, [5])

    with_bed(monkeypatch, HttpApp(), test)


class CongestedLink(FakeLink):
    """A session link with too much queued: drain waits until the test lets it go."""

    def __init__(self) -> None:
        self.congested = True
        self.drained = asyncio.Event()

    async def drain(self) -> None:
        await self.drained.wait()
        self.congested = False


def test_a_congested_session_pauses_the_client_of_a_stolen_upload(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A stolen upload to a congested session pauses the client until the link drains."""
    link = CongestedLink()

    def open_request_stream(conn: Any, start: StealStart) -> RequestStream:
        stream = RequestStream(conn, start)
        stream.link = link
        bed_streams.append(stream)
        return stream

    bed_streams: list[RequestStream] = []
    body = b"b" * (1024 * 1024)

    async def test(bed: Bed) -> None:
        bed.agent.registry.add(Subscription(
            sub_id=5, link_id=1, port=bed.app[1], mode="steal",
            http_filter=compile_http_filter({"path_filter": "^/up"})))
        monkeypatch.setattr(bed.agent, "open_request_stream", open_request_stream)
        client = await bed.connect()
        client.send(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body)
        conn = bed.conns[0]
        await until(lambda: bool(bed_streams), "the stolen stream")
        await until(lambda: not conn.transport.is_reading(), "the client paused")
        assert len(bed_streams[0].body) < len(body)
        link.drained.set()
        expected = response(b"local /up %d" % len(body))
        assert await client.read(len(expected)) == expected
        assert bed_streams[0].body == body

    with_bed(monkeypatch, HttpApp(), test)


def test_passed_requests_after_a_steal_do_not_wait_for_that_sessions_link(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Passed requests after an answered steal do not wait for that session's congested link."""
    link = CongestedLink()
    link.congested = False

    def open_request_stream(conn: Any, start: StealStart) -> RequestStream:
        stream = RequestStream(conn, start)
        stream.link = link
        return stream

    async def test(bed: Bed) -> None:
        bed.agent.registry.add(Subscription(
            sub_id=5, link_id=1, port=bed.app[1], mode="steal",
            http_filter=compile_http_filter({"path_filter": "^/s"})))
        monkeypatch.setattr(bed.agent, "open_request_stream", open_request_stream)
        client = await bed.connect()
        client.send(b"GET /s HTTP/1.1\r\nHost: h\r\n\r\n")
        stolen = response(b"local /s 0")
        assert await client.read(len(stolen)) == stolen
        link.congested = True  # the session is busy with other connections' traffic
        for path in (b"/p1", b"/p2", b"/p3"):
            client.send(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path)
            expected = remote(Request(b"GET", path, {}, b""))
            got = await asyncio.wait_for(client.reader.readexactly(len(expected)), 3.0)
            assert got == expected
        link.drained.set()

    with_bed(monkeypatch, HttpApp(), test)


def test_mirrored_request_is_passed_exactly_and_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request matching a mirror goes to the app unchanged; the copy gets its body."""
    app = HttpApp()
    request = b"POST /m HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody"

    async def test(bed: Bed) -> None:
        port = bed.app[1]
        bed.agent.registry.add(Subscription(
            sub_id=6, link_id=2, port=port, mode="mirror",
            http_filter=compile_http_filter({"path_filter": "^/m"})))
        client = await bed.connect()
        client.send(request)
        expected = remote(Request(b"POST", b"/m", {}, b"body"))
        assert await client.read(len(expected)) == expected
        await until(lambda: len(bed.agent.flows) == 1, "a flow record")
        (copy,) = bed.agent.mirrors
        assert copy.start is not None and copy.start.target == "/m"
        assert copy.data == b"body" and copy.ended
        assert bytes(app.received[0]) == request

    with_bed(monkeypatch, app, test)


def test_unfiltered_steal_takes_the_whole_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unfiltered steal takes the connection whole; the app is never contacted."""
    app = HttpApp()

    async def test(bed: Bed) -> None:
        port = bed.app[1]
        bed.agent.registry.add(Subscription(sub_id=8, link_id=3, port=port, mode="steal",
                                            http_filter=None))
        client = await bed.connect()
        client.send(b"\x00binary")
        assert await client.read(7) == b"\x00BINARY"
        client.shut()
        assert await client.read_to_eof() == b""
        await until(lambda: len(bed.agent.flows) == 1, "the connection's record")
        flow = bed.agent.flows[0]
        assert (flow["protocol"], flow["verdict"], flow["matched"]) == ("tcp", "stolen",
                                                                       "whole port")
        assert (flow["bytes_in"], flow["bytes_out"]) == (7, 7)
        assert bed.agent.owners == [8]
        assert app.connections == 0 and bed.agent.pool.opened == 0

    with_bed(monkeypatch, app, test)


class GreetingWholeStream(WholeStream):
    """A local app that speaks first and half-closes at once (a server-first protocol)."""

    def __init__(self, owner: Any) -> None:
        super().__init__(owner)
        loop = asyncio.get_running_loop()
        loop.call_soon(owner.write_local, b"hello")
        loop.call_soon(owner.end_local)

    def send_data(self, data: bytes) -> None:
        self.received += data  # heard, not answered: this app said all it had to say

    def end(self) -> None:
        self.ended = True  # the session's End went out already: nothing more comes back


def test_whole_steal_closed_both_ways_local_first_ends_the_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the local app and then the client have half-closed, the connection ends."""
    async def test(bed: Bed) -> None:
        port = bed.app[1]
        bed.agent.registry.add(Subscription(sub_id=8, link_id=3, port=port, mode="steal",
                                            http_filter=None))
        monkeypatch.setattr(bed.agent, "open_connection_stream",
                            lambda conn, sub_id: GreetingWholeStream(conn))
        client = await bed.connect()
        assert await client.read_to_eof() == b"hello"
        client.send(b"x")
        client.shut()
        # A shorter bound: while the bug stands this waits in vain (a close takes ms).
        await until(lambda: bed.conns[0].mode is Mode.CLOSED, "the connection closed",
                    bound_s=3.0)
        await until(lambda: len(bed.agent.flows) == 1, "the connection's record")

    with_bed(monkeypatch, HttpApp(), test)


# --- raw TCP ---------------------------------------------------------------------------


def test_raw_tcp_is_relayed_exactly_with_the_clients_half_close(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-HTTP bytes are relayed exactly; the client's EOF reaches the app, which still answers."""
    got = bytearray()

    async def echo_then_bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client's EOF
        got.extend(data)
        writer.write(data + b"bye")
        await writer.drain()
        writer.close()

    payload = b"\x16\x03\x01\x00\x05hello" + bytes(range(256)) * 40

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(payload)
        client.shut()
        assert await client.read_to_eof() == payload + b"bye"
        await until(lambda: len(bed.agent.flows) == 1, "the connection's record")
        flow = bed.agent.flows[0]
        assert (flow["protocol"], flow["verdict"]) == ("tcp", "passed")
        assert (flow["bytes_in"], flow["bytes_out"]) == (len(payload), len(payload) + 3)
        assert bytes(got) == payload

    with_bed(monkeypatch, None, test, app_handler=echo_then_bye)


async def pong_and_shut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        got: bytearray) -> None:
    """An app that answers PONG and half-closes, then reads until the client's EOF."""
    got.extend(await reader.readexactly(5))
    writer.write(b"PONG")
    writer.write_eof()
    got.extend(await reader.read())
    writer.close()


def test_raw_tcp_half_close_from_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app half-closes first: the client sees EOF and its later bytes still reach the app."""
    got = bytearray()

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(b"PING\x00")
        assert await client.read_to_eof() == b"PONG"
        client.send(b"MORE")
        client.shut()
        await until(lambda: bytes(got) == b"PING\x00MORE", "the app got the late bytes")

    with_bed(monkeypatch, None, test,
             app_handler=lambda reader, writer: pong_and_shut(reader, writer, got))


def test_raw_tcp_closed_both_ways_app_first_ends_the_relay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Once both sides have half-closed (the app first), the relay ends and is recorded."""
    got = bytearray()

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(b"PING\x00")
        assert await client.read_to_eof() == b"PONG"
        client.send(b"MORE")
        client.shut()
        await until(lambda: bytes(got) == b"PING\x00MORE", "the app got the late bytes")
        # A shorter bound: while the bug stands this waits in vain (a close takes ms).
        await until(lambda: bed.conns[0].mode is Mode.CLOSED, "the relay closed", bound_s=3.0)
        await until(lambda: len(bed.agent.flows) == 1, "the connection's record")

    with_bed(monkeypatch, None, test,
             app_handler=lambda reader, writer: pong_and_shut(reader, writer, got))


def test_raw_tcp_app_closing_first_ends_the_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    """An app that says goodbye and closes, then the client closes: the relay ends."""
    async def quit_(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"221 bye\r\n")
        writer.close()

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(b"QUIT\r\n")
        assert await client.read_to_eof() == b"221 bye\r\n"
        client.writer.close()
        # A shorter bound: while the bug stands this waits in vain (a close takes ms).
        await until(lambda: bed.conns[0].mode is Mode.CLOSED, "the relay closed", bound_s=3.0)
        await until(lambda: len(bed.agent.flows) == 1, "the connection's record")

    with_bed(monkeypatch, None, test, app_handler=quit_)


def test_a_server_first_greeting_is_relayed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An app that speaks first is heard before the client says anything, then bytes relay."""
    async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        line = await reader.readline()
        writer.write(b"250 " + line)
        await writer.drain()
        await reader.read()
        writer.close()

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        assert await client.read(11) == b"220 ready\r\n"
        client.send(b"EHLO x\r\n")
        assert await client.read(12) == b"250 EHLO x\r\n"
        client.shut()
        assert await client.read_to_eof() == b""
        await until(lambda: len(bed.agent.flows) == 1, "the connection's record")
        assert bed.agent.flows[0]["protocol"] == "tcp"
        assert bed.agent.flows[0]["bytes_out"] == 23

    with_bed(monkeypatch, None, test, app_handler=smtp)


def test_h2_prior_knowledge_is_handed_to_the_h2_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP/2 preface hands over to the h2 driver; the unused early upstream is pooled."""
    handed: list[tuple[bytes, tuple[str, int]]] = []

    def fake_start_h2(agent: Any, transport: Any, destination: tuple[str, int], head: bytes,
                      **kwargs: Any) -> None:
        handed.append((head, destination))
        transport.close()

    monkeypatch.setattr(h2_connection, "start_h2", fake_start_h2)
    app = HttpApp()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        await until(lambda: bed.agent.pool.opened == 1, "the early upstream connection")
        client.send(preface + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        assert await client.read_to_eof() == b""
        assert handed and handed[0][0].startswith(preface)
        assert handed[0][1] == bed.destination
        assert bed.destination is not None
        assert bed.agent.pool.take(bed.destination) is not None

    with_bed(monkeypatch, app, test)


# --- failures --------------------------------------------------------------------------


def test_malformed_request_is_answered_400_and_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request with a broken field gets 400 and the close; the app gets none of it."""
    app = HttpApp()

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        answer = await client.read_to_eof()
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b"Connection: close" in answer and b"malformed request" in answer
        await until(lambda: bed.conns[0].mode is Mode.CLOSED, "the connection closed")
        assert all(not got for got in app.received)

    with_bed(monkeypatch, app, test)


def test_unreachable_app_is_answered_502(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody at the original destination: the client gets a 502 naming it, recorded as such."""
    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        answer = await client.read_to_eof()
        assert answer.startswith(b"HTTP/1.1 502 ")
        host, port = bed.app
        assert b"cannot connect to %s:%d" % (host.encode(), port) in answer
        await until(lambda: len(bed.agent.flows) == 1, "a flow record")
        assert (bed.agent.flows[0]["status"], bed.agent.flows[0]["path"]) == (502, "/x")

    with_bed(monkeypatch, None, test, destination="closed")


def test_unreachable_app_closes_a_raw_tcp_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-HTTP bytes with nobody at the original destination: the client is closed."""
    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(b"\x00\x01\x02 not http")
        assert await client.read_to_eof() == b""

    with_bed(monkeypatch, None, test, destination="closed")


def test_an_app_that_closes_without_answering_gets_the_client_a_502(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The app reads a passed request and closes: the client gets 502 and the close."""
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(b"GET /gone HTTP/1.1\r\nHost: h\r\n\r\n")
        answer = await client.read_to_eof()
        assert answer.startswith(b"HTTP/1.1 502 ")
        assert b"closed the connection before the response was complete" in answer
        await until(lambda: len(bed.agent.flows) == 1, "a flow record")
        assert bed.agent.flows[0]["status"] == 502

    with_bed(monkeypatch, None, test, app_handler=hang_up)


def test_an_app_that_closes_mid_answer_cuts_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """An app closing mid-answer: the client gets what was sent, then the close."""
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(partial)
        await writer.drain()
        writer.close()

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(b"GET /half HTTP/1.1\r\nHost: h\r\n\r\n")
        assert await client.read_to_eof() == partial
        await until(lambda: len(bed.agent.flows) == 1, "a flow record")
        assert (bed.agent.flows[0]["status"], bed.agent.flows[0]["bytes_out"]) == (200, 4)

    with_bed(monkeypatch, None, test, app_handler=half)


@pytest.mark.parametrize("how", ["no original destination", "the listener itself"])
def test_a_direct_connection_to_the_listener_is_closed(monkeypatch: pytest.MonkeyPatch,
                                                      how: str) -> None:
    """A connection not redirected (or to the listener's own port) is closed, nothing opened."""
    async def test(bed: Bed) -> None:
        if how == "the listener itself":
            bed.destination = ("127.0.0.1", bed.agent.proxy_port)
        client = await bed.connect()
        client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert await client.read_to_eof() == b""
        assert bed.conns[0].mode is Mode.CLOSED
        assert bed.agent.pool.opened == 0 and not bed.agent.flows

    with_bed(monkeypatch, None, test, destination="none")


# --- bounds ----------------------------------------------------------------------------


def test_a_slow_reader_pauses_the_app_and_bounds_the_buffer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client not reading pauses the app's side, the agent's buffer bounded; all arrives."""
    big = bytes(range(256)) * (64 * 1024)  # 16 MiB
    answer = response(big)
    app = HttpApp(answer=lambda request: answer)

    async def test(bed: Bed) -> None:
        client = await bed.connect(rcvbuf=16 * 1024)
        client.send(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
        conn = bed.conns[0]
        await until(lambda: bool(bed.agent.pool.made), "the upstream connection")
        to_app = bed.agent.pool.made[0].transport
        assert to_app is not None
        await until(lambda: not to_app.is_reading(), "the agent paused reading the app")
        for _ in range(3):  # and it stays so, bounded, while the client does not read
            assert conn.transport.get_write_buffer_size() <= WRITE_HIGH_WATER + READ_SLACK
            assert not to_app.is_reading()
            await asyncio.sleep(POLL_S)
        assert await client.read(len(answer)) == answer
        await until(lambda: len(bed.agent.flows) == 1, "a flow record")
        assert bed.agent.flows[0]["bytes_out"] == len(big)
        assert to_app.is_reading()  # resumed once the client caught up

    with_bed(monkeypatch, app, test)


def test_a_slow_app_pauses_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """An app not reading an upload pauses the client; the agent's buffer stays bounded."""
    big = b"u" * (16 * 1024 * 1024)
    gate = asyncio.Event()
    app = HttpApp(gate=gate)
    head = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(big)

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(head + big)
        conn = bed.conns[0]
        await until(lambda: not conn.transport.is_reading(),
                    "the agent paused reading the client")
        (up,) = bed.agent.pool.made
        assert up.transport is not None
        for _ in range(3):
            assert up.transport.get_write_buffer_size() <= UPSTREAM_HIGH_WATER + READ_SLACK
            assert not conn.transport.is_reading()
            await asyncio.sleep(POLL_S)
        gate.set()
        expected = remote(Request(b"POST", b"/up", {}, big))
        assert await client.read(len(expected)) == expected
        assert len(app.received[0]) == len(head) + len(big)
        await until(lambda: len(bed.agent.flows) == 1, "a flow record")
        assert bed.agent.flows[0]["bytes_in"] == len(big)

    with_bed(monkeypatch, app, test, rcvbuf=16 * 1024)


def test_a_slow_app_pauses_a_raw_tcp_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay whose app does not read pauses the client, bounded; all bytes arrive later."""
    gate = asyncio.Event()
    got = bytearray()
    big = b"\x00" + bytes(range(256)) * (64 * 1024)

    async def late_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        got.extend(await reader.read())
        writer.write(b"%d" % len(got))
        writer.close()

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(big)
        conn = bed.conns[0]
        await until(lambda: not conn.transport.is_reading(), "the agent paused the client")
        (up,) = bed.agent.pool.made
        assert up.transport is not None
        assert up.transport.get_write_buffer_size() <= UPSTREAM_HIGH_WATER + READ_SLACK
        gate.set()
        client.shut()
        assert await client.read_to_eof() == b"%d" % len(big)
        assert bytes(got) == big

    with_bed(monkeypatch, None, test, app_handler=late_reader, rcvbuf=16 * 1024)


def test_a_flood_of_pipelined_requests_pauses_the_client(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelined requests piling up behind an unanswered one pause the client; all answered."""
    release = asyncio.Event()

    async def answer(request: Request) -> bytes:
        if request.target == b"/0":
            await release.wait()
        return remote(request)

    app = HttpApp(answer=answer)
    count = 300
    requests = [b"GET /%d HTTP/1.1\r\nHost: h\r\nX-Pad: %s\r\n\r\n" % (i, b"p" * 4000)
                for i in range(count)]

    async def test(bed: Bed) -> None:
        client = await bed.connect()
        client.send(b"".join(requests))
        conn = bed.conns[0]
        await until(lambda: not conn.transport.is_reading(),
                    "the agent paused reading the client")
        release.set()
        expected = b"".join(remote(Request(b"GET", b"/%d" % i, {}, b"")) for i in range(count))
        assert await client.read(len(expected)) == expected
        assert bytes(app.received[0]) == b"".join(requests)
        await until(lambda: len(bed.agent.flows) == count, "every record")
        assert [f["path"] for f in bed.agent.flows] == [f"/{i}" for i in range(count)]

    with_bed(monkeypatch, app, test)


# --- the pool --------------------------------------------------------------------------


def test_the_upstream_connection_is_reused_by_the_next_client(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client leaving between requests pools its upstream; the next clients reuse it."""
    app = HttpApp()

    async def test(bed: Bed) -> None:
        for i in range(3):
            client = await bed.connect()
            client.send(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
            expected = remote(Request(b"GET", b"/%d" % i, {}, b""))
            assert await client.read(len(expected)) == expected
            client.shut()
            assert await client.read_to_eof() == b""
            await until(lambda: bed.conns[-1].mode is Mode.CLOSED, "the client's connection "
                        "closed")
        assert app.connections == 1
        assert (bed.agent.pool.opened, bed.agent.pool.reused) == (1, 2)
        assert [f["path"] for f in bed.agent.flows] == ["/0", "/1", "/2"]

    with_bed(monkeypatch, app, test)


def test_a_client_that_leaves_silently_gives_its_early_connection_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client leaving without a byte pools its early upstream, which the next client uses."""
    app = HttpApp()

    async def test(bed: Bed) -> None:
        silent = await bed.connect()
        await until(lambda: bed.agent.pool.opened == 1, "the early upstream connection")
        silent.writer.close()
        await until(lambda: bed.conns[0].mode is Mode.CLOSED, "the silent client gone")
        client = await bed.connect()
        client.send(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
        expected = remote(Request(b"GET", b"/after", {}, b""))
        assert await client.read(len(expected)) == expected
        assert app.connections == 1 and bed.agent.pool.opened == 1
        assert bytes(app.received[0]) == b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n"

    with_bed(monkeypatch, app, test)


def test_an_upstream_that_answered_close_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer with Connection: close ends both connections; the next client connects anew."""
    app = HttpApp(answer=lambda request: response(b"bye", b"Connection: close"))

    async def test(bed: Bed) -> None:
        for _ in range(2):
            client = await bed.connect()
            client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            assert await client.read_to_eof() == response(b"bye", b"Connection: close")
            await until(lambda: bed.conns[-1].mode is Mode.CLOSED, "closed")
        assert bed.agent.pool.opened == 2 and bed.agent.pool.reused == 0

    with_bed(monkeypatch, app, test)
