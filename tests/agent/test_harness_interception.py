"""The connection driver (waylay.agent.interception) inside the real agent, without root.

Each test runs the real ``Agent``, its redirect listener's protocol and a real session link
(``tests/agent/harness.py``): a remote client on loopback, the original app a real HTTP
server, the session a stub speaking the wire protocol. Only SO_ORIGINAL_DST, SO_MARK and
iptables are stand-ins, given to the agent as its constructor's seams.
"""

from __future__ import annotations

import asyncio

from tests.agent.harness import (
    WAIT_S,
    AppRequest,
    Harness,
    OriginApp,
    app_answer,
    until,
    with_harness,
)
from waylay.agent.connection_state import WRITE_HIGH_WATER, Mode
from waylay.core.engine.wire import ConnectionStart

STEAL = {"header_filter": "^x-steal: yes$"}  # a filtered steal: the port is routed per request


def get(path: str, *extra: str, body: bytes = b"") -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: svc", *extra]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def local(method: str, path: str, body_len: int = 0) -> bytes:
    """The stub session's answer, as the client receives it."""
    body = f"local {method} {path} {body_len}".encode()
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def passed(path: str, body: bytes = b"") -> bytes:
    """The original app's answer, as the client receives it (byte for byte)."""
    return app_answer(AppRequest(b"GET", path.encode(), {}, body))


def test_keep_alive_passthrough_is_byte_exact() -> None:
    """Requests nobody steals reach the app byte for byte over one connection, and its
    answers come back byte for byte; the session sees a row per request."""
    async def test(h: Harness) -> None:
        session = await h.session()
        await session.subscribe(h.port, "steal", STEAL)
        client = await h.connect()
        sent = b""
        for i in range(3):
            request = get(f"/p/{i}", "X-Odd:  spaced ", "accept: */*")
            sent += request
            client.send(request)
            expected = passed(f"/p/{i}")
            assert await client.read(len(expected)) == expected
        assert len(h.app.connections) == 1
        assert bytes(h.app.connections[0].received) == sent
        await until(lambda: len(session.rows()) == 3, "three rows")
        assert [(r["path"], r["verdict"], r["status"]) for r in session.rows()] == [
            (f"/p/{i}", "passed", 200) for i in range(3)]
        assert not session.requests

    with_harness(test)


def test_a_stolen_request_goes_over_the_link_and_back() -> None:
    """A matching request reaches the session as wire frames (head, body) and the local
    answer reaches the client; the original app never sees it."""
    async def test(h: Harness) -> None:
        session = await h.session()
        await session.subscribe(h.port, "steal", STEAL)
        client = await h.connect()
        client.send(get("/s", "x-steal: yes", body=b"payload"))
        head, body = await client.read_response()
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert body == b"local GET /s 7"
        [request] = session.requests.values()
        assert (request.head.method, request.head.target, request.head.port) == ("GET", "/s",
                                                                                  h.port)
        assert ("x-steal", "yes") in request.head.headers
        assert bytes(request.body) == b"payload" and request.ended
        assert not h.app.requests()
        await until(lambda: len(session.rows()) == 1, "the row")
        row = session.rows()[0]
        assert (row["verdict"], row["status"], row["path"]) == ("stolen", 200, "/s")

    with_harness(test)


def test_pipelined_requests_are_answered_in_order_whoever_answers() -> None:
    """Three pipelined requests in one write (passed, stolen, passed) are answered in
    order on the one connection."""
    async def test(h: Harness) -> None:
        session = await h.session()
        await session.subscribe(h.port, "steal", STEAL)
        client = await h.connect()
        client.send(get("/a") + get("/b", "x-steal: yes") + get("/c"))
        expected = passed("/a") + local("GET", "/b") + passed("/c")
        assert await client.read(len(expected)) == expected
        assert [r.target for r in h.app.requests()] == [b"/a", b"/c"]
        assert [r.head.target for r in session.requests.values()] == ["/b"]

    with_harness(test)


def test_a_half_closed_client_gets_its_answers_then_the_close() -> None:
    """A client that sends its requests and half-closes still gets every answer (passed
    and stolen), then the connection ends."""
    async def test(h: Harness) -> None:
        session = await h.session()
        await session.subscribe(h.port, "steal", STEAL)
        client = await h.connect()
        client.send(get("/a") + get("/b", "x-steal: yes"))
        client.shut()
        assert await client.read_to_eof() == passed("/a") + local("GET", "/b")

    with_harness(test)


def test_an_unfiltered_steal_hands_the_whole_connection_to_the_session() -> None:
    """With no filter the session gets the connection itself: every byte both ways,
    whatever the protocol, and each side's half-close."""
    async def test(h: Harness) -> None:
        session = await h.session()
        await session.subscribe(h.port, "steal", None)
        client = await h.connect()
        first = b"\x00\x01 not http \xff"
        client.send(first)
        assert await client.read(len(first)) == first.upper()
        client.send(b"more")
        client.shut()
        assert await client.read_to_eof() == b"MORE"
        [conn] = session.connections.values()
        assert bytes(conn.data) == b"\x00\x01 not http \xffmore" and conn.ended
        assert [m.port for m in session.of(ConnectionStart)] == [h.port]
        assert not h.app.connections  # the original app was never asked
        await until(lambda: len(session.rows()) == 1, "the connection's row")
        row = session.rows()[0]
        assert (row["protocol"], row["verdict"], row["bytes_in"], row["bytes_out"]) == (
            "tcp", "stolen", len(first) + 4, len(first) + 4)

    with_harness(test)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A raw TCP app: echoes every read, then says bye when the client half-closes."""
    while data := await reader.read(65536):
        writer.write(data)
    writer.write(b"bye")
    writer.close()


def test_a_non_http_connection_is_relayed_untouched() -> None:
    """Bytes that are not HTTP go to the original app unchanged, both ways, with the
    client's half-close passed on; nothing is handed to the session."""
    async def test(h: Harness) -> None:
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        raw_app = ("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            session = await h.session()
            await session.subscribe(raw_app[1], "steal", STEAL)
            client = await h.connect(destination=raw_app)
            payload = bytes(range(256)) * 4
            client.send(payload)
            assert await client.read(len(payload)) == payload
            client.shut()
            assert await client.read_to_eof() == b"bye"
            assert not session.requests and not session.connections
            await until(lambda: len(session.rows()) == 1, "the relay's row")
            row = session.rows()[0]
            assert (row["protocol"], row["verdict"], row["bytes_in"]) == ("tcp", "passed",
                                                                          len(payload))
            assert h.conns[-1].mode is Mode.CLOSED
        finally:
            server.close()

    with_harness(test)


def test_a_direct_connection_to_the_listener_is_closed() -> None:
    """A connection that was not redirected (no original destination) is closed at once."""
    async def test(h: Harness) -> None:
        client = await h.connect(destination=None)
        assert await client.read_to_eof() == b""
        assert not h.app.connections

    with_harness(test)


BIG = 32 * 1024 * 1024  # more than loopback's socket buffers hold (a few MiB each way)


def big_answer(request: AppRequest) -> bytes:
    if request.target == b"/big":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"x" * BIG
    return app_answer(request)


def test_a_slow_client_pauses_the_app_and_bounds_what_the_agent_holds() -> None:
    """While the client reads none of a large answer, the agent stops reading the app:
    what it queues for the client stays near its bound; then all of it arrives."""
    async def test(h: Harness) -> None:
        await (await h.session()).subscribe(h.port, "steal", STEAL)
        client = await h.connect(rcvbuf=64 * 1024)
        client.send(get("/big"))
        conn = h.conns[-1]
        await until(conn.congested, "the client's side over its bound")

        def app_blocked() -> bool:  # the app has bytes it cannot send: nobody reads them
            writer = h.app.connections[0].writer
            return writer is not None and writer.transport.get_write_buffer_size() > 0

        await until(app_blocked, "the app's writes held back")
        assert conn.backlog() < WRITE_HIGH_WATER + 1024 * 1024
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.endswith(b"Content-Length: %d\r\n\r\n" % BIG)
        body = await asyncio.wait_for(client.reader.readexactly(BIG), WAIT_S)
        assert body == b"x" * BIG
        assert not conn.congested()

    with_harness(test, app=OriginApp(big_answer))


def test_a_slow_session_pauses_the_client_of_a_stolen_upload() -> None:
    """While the session reads nothing, a stolen upload stops being read from its client
    once the session's link is over its bound; when the session reads again, the whole
    body arrives and the client gets the answer."""
    async def test(h: Harness) -> None:
        session = await h.session()
        await session.subscribe(h.port, "steal", STEAL)
        session.stop_reading()
        client = await h.connect()
        head = get("/up", "x-steal: yes", f"Content-Length: {BIG}")
        client.send(head + b"u" * BIG)
        [link] = h.agent.links.values()
        await until(lambda: link.congested, "the link over its bound")
        await until(lambda: client.writer.transport.get_write_buffer_size() > 0,
                    "the client's upload held back")
        session.go_on_reading()
        _, body = await client.read_response()
        assert body == b"local GET /up %d" % BIG
        [request] = session.requests.values()
        assert len(request.body) == BIG and request.ended

    with_harness(test)
