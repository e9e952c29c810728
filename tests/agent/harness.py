"""A root-free bed for the agent's drivers: the real ``Agent`` on loopback.

What runs is the agent's own code: ``waylay.agent.worker.Agent`` with its registry and
``UpstreamPool``, its redirect listener's protocol (``InterceptedConnection``, and the h2
driver behind it), and a real ``ClientLink`` per session, speaking the real wire protocol
(``waylay.core.engine.wire``). Only what needs root is replaced, through the seams the
``Agent`` takes once, at construction:

- ``Destinations`` stands in for ``SO_ORIGINAL_DST``: a ``Client`` connects to the agent's
  listener directly, and the lookup says which address it "meant" (by default the
  ``OriginApp``'s), as iptables REDIRECT would have;
- ``connect_loopback`` stands in for marked sockets (``SO_MARK`` needs CAP_NET_ADMIN, and
  there is no redirect to bypass here);
- ``FakeRedirector`` is the real ``Redirector`` over ``FakeIptables`` (its rules can be
  read), with the reset of pre-steal connections (``ss -K``) recorded, never run.

Around it: ``OriginApp``, a real HTTP/1.1 keep-alive server that keeps every byte it
received; ``SessionStub``, a session over a socketpair that answers stolen requests and
whole stolen connections, and keeps every frame; ``Client``, a remote client. Every
socket is on 127.0.0.1 or a socketpair; every wait is bounded (``WAIT_S``) so a broken
test fails instead of hanging, and nothing is measured against a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import uvloop

from waylay.agent.interception import InterceptedConnection, serve_connection
from waylay.agent.iptables import FakeIptables, Redirector
from waylay.agent.worker import Agent
from waylay.core.engine.flow import ROW_FIELDS
from waylay.core.engine.wire import (
    ConnectionStart,
    Data,
    End,
    Error,
    Flow,
    Hello,
    Message,
    Notice,
    Pause,
    RequestStart,
    Reset,
    ResponseStart,
    Resume,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Welcome,
    WireDecoder,
    encode,
)
from waylay.core.system.pool import Destination

WAIT_S = 10.0  # only keeps a broken test from hanging; nothing is measured against it
POLL_S = 0.005
TOKEN = "harness-token"
CHAIN = "WAYLAY-harness0"


def run(main: Coroutine[Any, Any, None]) -> None:
    """Under uvloop, as the agent runs (its transports are not asyncio's classes)."""
    uvloop.run(main)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``condition`` holds."""
    for _ in range(int(WAIT_S / POLL_S)):
        if condition():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"never happened: {what}")


def free_port() -> int:
    """A loopback port nobody listens on (connecting there is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- the seams ----------------------------------------------------------------------------


async def connect_loopback(destination: Destination, protocol: asyncio.Protocol) -> None:
    """A ``Connector`` without ``SO_MARK``: a plain connection (there is no redirect here)."""
    await asyncio.get_running_loop().create_connection(lambda: protocol, *destination)


class Destinations:
    """The fake ``SO_ORIGINAL_DST``: where each accepted connection was going, by the
    client's address; ``default`` for a client not named (None: not redirected)."""

    def __init__(self, default: Destination | None) -> None:
        self.default = default
        self.by_client: dict[tuple[str, int], Destination | None] = {}

    def __call__(self, sock: socket.socket) -> Destination | None:
        try:
            peer = sock.getpeername()
        except OSError:
            return self.default
        return self.by_client.get((peer[0], peer[1]), self.default)


class FakeRedirector(Redirector):
    """The real chain bookkeeping over ``FakeIptables``; ``reset_connections`` records."""

    def __init__(self) -> None:
        self.iptables = FakeIptables()
        super().__init__(chain=CHAIN, owner_pid=os.getpid(), run=self.iptables)
        self.install()
        self.resets: list[int] = []

    def reset_connections(self, port: int) -> int:
        self.resets.append(port)
        return 0

    def redirected(self) -> dict[int, int]:
        """Port -> the agent's listener port, as the chain's REDIRECT rules say."""
        rules = self.iptables.chains[CHAIN]
        return {int(r[r.index("--dport") + 1]): int(r[r.index("--to-ports") + 1])
                for r in rules if "REDIRECT" in r}


# --- the original app ---------------------------------------------------------------------


@dataclass
class AppRequest:
    method: bytes
    target: bytes
    headers: dict[bytes, bytes]
    body: bytes


@dataclass
class AppConnection:
    """One connection the app accepted: every byte it read, in order."""

    received: bytearray = field(default_factory=bytearray)
    requests: list[AppRequest] = field(default_factory=list)
    writer: asyncio.StreamWriter | None = None
    closed: bool = False


def app_answer(request: AppRequest) -> bytes:
    body = b"app %s %s %d" % (request.method, request.target, len(request.body))
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class OriginApp:
    """A real HTTP/1.1 keep-alive server on loopback (the original app).

    Each request is answered by ``answer`` (``app_answer`` by default: the method, the
    target and the body's length); when the request or the answer says ``Connection:
    close``, the connection is closed after the answer. Requests are parsed by the
    test's own minimal reader (Content-Length bodies only).
    """

    def __init__(self, answer: Callable[[AppRequest], bytes] = app_answer) -> None:
        self.answer = answer
        self.connections: list[AppConnection] = []
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> Destination:
        assert self.server is not None
        return "127.0.0.1", self.server.sockets[0].getsockname()[1]

    async def start(self) -> Destination:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.address

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = AppConnection(writer=writer)
        self.connections.append(conn)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                conn.received += head
                lines = head[:-4].split(b"\r\n")
                method, target, _ = lines[0].split(b" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
                conn.received += body
                request = AppRequest(method, target, headers, body)
                conn.requests.append(request)
                answer = self.answer(request)
                writer.write(answer)
                await writer.drain()
                said = answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
                if (headers.get(b"connection", b"").lower() == b"close"
                        or b"\r\nconnection: close\r\n" in said):
                    break
        finally:
            conn.closed = True
            writer.close()

    def requests(self) -> list[AppRequest]:
        return [r for c in self.connections for r in c.requests]

    def close(self) -> None:
        for conn in self.connections:
            if conn.writer is not None:
                conn.writer.close()
        if self.server is not None:
            self.server.close()


# --- the remote client --------------------------------------------------------------------


class Client:
    """A remote client of the intercepted port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), WAIT_S)

    async def read_response(self) -> tuple[bytes, bytes]:
        """One Content-Length response: its head (with the blank line) and its body."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT_S)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return head, await self.read(length)

    async def read_to_eof(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), WAIT_S)

    def shut(self) -> None:
        """Half-close: no more bytes from this client."""
        self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()


# --- the session ----------------------------------------------------------------------------


@dataclass
class StolenRequest:
    """A request the agent handed to the session, as the frames said."""

    head: RequestStart
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: str | None = None


@dataclass
class StolenConnection:
    """A whole stolen connection: the client's bytes, and whether it half-closed."""

    start: ConnectionStart
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: str | None = None


LocalAnswer = Callable[[StolenRequest], tuple[int, list[tuple[str, str]], bytes] | None]


def local_answer(request: StolenRequest) -> tuple[int, list[tuple[str, str]], bytes]:
    """The session's local app: the method, the target and the body's length."""
    head = request.head
    body = b"local %s %s %d" % (head.method.encode(), head.target.encode(), len(request.body))
    return 200, [("content-length", str(len(body)))], body


class SessionStub:
    """A session on the agent's control link, over a socketpair, speaking the wire protocol.

    It answers each stolen request once the request is complete, with ``answer`` (None
    from it: no answer, the request stays open), answers whole stolen connections in upper
    case, ends its side when the client does, and keeps every frame it got.
    """

    def __init__(self, agent: Agent, *, answer: LocalAnswer = local_answer) -> None:
        self.agent = agent
        self.answer = answer
        self.frames: list[Message] = []
        self.requests: dict[int, StolenRequest] = {}
        self.connections: dict[int, StolenConnection] = {}
        self._decoder = WireDecoder()
        self._next_sub = 1
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def attach(self, *, token: str = TOKEN) -> Welcome:
        """Connect to the agent as ``Agent.serve``'s control listener would, say Hello."""
        agent_side, mine = socket.socketpair()
        agent_reader, agent_writer = await asyncio.open_connection(sock=agent_side)
        self._tasks.append(asyncio.create_task(self.agent.attach(agent_reader, agent_writer),
                                               name="harness-attach"))
        reader, self._writer = await asyncio.open_connection(sock=mine)
        self._tasks.append(asyncio.create_task(self._read(reader), name="harness-session"))
        self.send(Hello(token=token, client="harness/1"))
        await until(lambda: bool(self.of(Welcome)) or bool(self.of(Error)), "a Welcome")
        welcome = self.of(Welcome)
        if not welcome:
            raise AssertionError(f"refused: {self.of(Error)}")
        return welcome[0]

    def send(self, message: Message) -> None:
        assert self._writer is not None
        self._writer.write(encode(message))

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.frames if isinstance(m, kind)]

    def rows(self) -> list[dict[str, Any]]:
        """The flow records the agent reported: each wire row's fields by name (its last
        element, the extras of a mirrored or captured request, under "extras")."""
        return [{**dict(zip(ROW_FIELDS, row, strict=False)), "extras": row[-1]}
                for flow in self.of(Flow) for row in flow.records]

    async def subscribe(self, port: int, mode: str = "steal",
                        http_filter: dict[str, object] | None = None) -> int:
        """Subscribe and wait for the agent's answer; returns the session's sub id."""
        sub_id = self._next_sub
        self._next_sub += 1
        self.send(Subscribe(sub_id=sub_id, port=port, mode=mode, filter=http_filter))
        await until(lambda: any(m.sub_id == sub_id for m in self.of(Subscribed))
                    or any(e.stream == sub_id for e in self.of(Error)), "the subscription")
        refused = [e for e in self.of(Error) if e.stream == sub_id]
        if refused:
            raise AssertionError(f"refused: {refused[0].message}")
        return sub_id

    def unsubscribe(self, sub_id: int) -> None:
        self.send(Unsubscribe(sub_id=sub_id))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(256 * 1024):
                for message in self._decoder.receive_data(data):
                    self.frames.append(message)
                    self._handle(message)

    def _handle(self, message: Message) -> None:
        match message:
            case RequestStart(stream=stream):
                request = self.requests[stream] = StolenRequest(head=message)
                if message.end:
                    self._complete(request)
            case ConnectionStart(stream=stream):
                self.connections[stream] = StolenConnection(start=message)
            case Data(stream=stream, data=data):
                if stream in self.requests:
                    self.requests[stream].body += data
                elif stream in self.connections:
                    self.connections[stream].data += data
                    self.send(Data(stream=stream, data=data.upper()))
            case End(stream=stream):
                if stream in self.requests:
                    self._complete(self.requests[stream])
                elif stream in self.connections:
                    self.connections[stream].ended = True
                    self.send(End(stream=stream))
            case Reset(stream=stream, reason=reason):
                found = self.requests.get(stream) or self.connections.get(stream)
                if found is not None:
                    found.reset = reason
            case _:
                pass  # kept in self.frames: Welcome, Subscribed, Flow, Notice, Error...

    def _complete(self, request: StolenRequest) -> None:
        request.ended = True
        answer = self.answer(request)
        if answer is None:
            return
        status, headers, body = answer
        self.send(ResponseStart(stream=request.head.stream, status=status, reason="OK",
                                headers=tuple(headers), body=body, end=True))

    def stop_reading(self) -> None:
        """A slow session: read nothing more from the agent until ``go_on_reading``."""
        assert self._writer is not None
        self._writer.transport.pause_reading()

    def go_on_reading(self) -> None:
        assert self._writer is not None
        self._writer.transport.resume_reading()

    def warnings(self) -> list[str]:
        return [n.message for n in self.of(Notice)]

    def paused(self) -> list[int]:
        return [m.stream for m in self.of(Pause)]

    def resumed(self) -> list[int]:
        return [m.stream for m in self.of(Resume)]

    async def close(self) -> None:
        """The session goes away (its link closes)."""
        if self._writer is not None:
            self._writer.close()
        await asyncio.wait(self._tasks, timeout=WAIT_S)


# --- the bed ---------------------------------------------------------------------------------


class Harness:
    """The real agent, its redirect listener on loopback, the original app, and sessions."""

    def __init__(self, app: OriginApp) -> None:
        self.app = app
        self.destinations = Destinations(None)
        self.redirector = FakeRedirector()
        self.agent = Agent(token=TOKEN, chain=CHAIN, redirector=self.redirector, ttl=60.0,
                           find_destination=self.destinations, connect=connect_loopback)
        self.conns: list[InterceptedConnection] = []
        self.sessions: list[SessionStub] = []
        self.clients: list[Client] = []
        self._listener: asyncio.Server | None = None

    async def start(self) -> None:
        self.destinations.default = await self.app.start()
        self._listener = await asyncio.get_running_loop().create_server(
            self._accept, "127.0.0.1", 0)
        self.agent.proxy_port = self._listener.sockets[0].getsockname()[1]

    def _accept(self) -> InterceptedConnection:
        conn = serve_connection(self.agent)
        self.conns.append(conn)
        return conn

    @property
    def port(self) -> int:
        """The intercepted port: the original app's."""
        return self.app.address[1]

    async def session(self, *, answer: LocalAnswer = local_answer) -> SessionStub:
        stub = SessionStub(self.agent, answer=answer)
        await stub.attach()
        self.sessions.append(stub)
        return stub

    async def connect(self, *, destination: Destination | str | None = "app",
                      rcvbuf: int | None = None) -> Client:
        """A remote client whose connection was REDIRECTed from ``destination`` (the
        app by default; None: a direct connection to the listener)."""
        assert self._listener is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind(("127.0.0.1", 0))  # known before the agent accepts it
        if destination != "app":
            assert not isinstance(destination, str)
            self.destinations.by_client[sock.getsockname()] = destination
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.agent.proxy_port))
        client = Client(*await asyncio.open_connection(sock=sock))
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            client.close()
        for stub in self.sessions:
            await stub.close()
        if self._listener is not None:
            self._listener.close()
        self.agent.pool.close()
        self.app.close()
        tasks = list(self.agent._tasks)  # its background waits (upstream connects, drains)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def with_harness(test: Callable[[Harness], Awaitable[None]], *,
                 app: OriginApp | None = None) -> None:
    """Run ``test`` against a fresh harness under uvloop, and tear it down."""
    async def main() -> None:
        harness = Harness(app or OriginApp())
        await harness.start()
        try:
            await test(harness)
        finally:
            await harness.close()

    run(main())
