"""The pools of connections, no root: the agent's ``UpstreamPool`` (waylay.agent.upstream)
inside the real agent, and the session's ``ConnectionPool`` (waylay.core.system.pool).

Reuse is seen from the original app (how many connections it accepted); a connection
the app closed is never handed out again; a refused connect is reported, not pooled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tests.agent.harness import (
    AppRequest,
    Harness,
    OriginApp,
    app_answer,
    connect_loopback,
    free_port,
    run,
    until,
    with_harness,
)
from waylay.agent.upstream import UpstreamPool
from waylay.core.system.pool import Connection, ConnectionPool, open_tcp

STEAL = {"header_filter": "^x-steal: yes$"}


def get(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: svc", *extra]) + "\r\n\r\n").encode()


# --- the agent's pool, inside the agent ---------------------------------------------------


def test_the_next_client_reuses_the_upstream_connection() -> None:
    """Clients one after another are served over one connection to the original app."""
    async def test(h: Harness) -> None:
        await (await h.session()).subscribe(h.port, "steal", STEAL)
        for i in range(3):
            client = await h.connect()
            client.send(get(f"/{i}"))
            _, body = await client.read_response()
            assert body == b"app GET /%d 0" % i
            client.close()
        assert len(h.app.connections) == 1
        assert h.agent.pool.opened == 1 and h.agent.pool.reused >= 2

    with_harness(test)


def closing_answer(request: AppRequest) -> bytes:
    return app_answer(request).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


def test_an_upstream_connection_the_app_closed_is_not_reused() -> None:
    """An app that answers ``Connection: close`` gets a new connection for each client."""
    async def test(h: Harness) -> None:
        await (await h.session()).subscribe(h.port, "steal", STEAL)
        for i in range(2):
            client = await h.connect()
            client.send(get(f"/{i}"))
            _, body = await client.read_response()
            assert body == b"app GET /%d 0" % i
            assert await client.read_to_eof() == b""  # the app said close: so does the agent
        assert len(h.app.connections) == 2
        assert h.agent.pool.reused == 0

    with_harness(test, app=OriginApp(closing_answer))


def test_an_unreachable_app_is_reported_to_the_client_as_502() -> None:
    """When connecting to the original app is refused, the client gets a 502 naming it,
    and nothing is pooled."""
    async def test(h: Harness) -> None:
        await (await h.session()).subscribe(h.port, "steal", STEAL)
        gone = ("127.0.0.1", free_port())
        client = await h.connect(destination=gone)
        client.send(get("/x"))
        head, body = await client.read_response()
        assert head.startswith(b"HTTP/1.1 502 ")
        assert b"cannot connect to 127.0.0.1:%d" % gone[1] in body
        assert h.agent.pool.opened == 0 and h.agent.pool.take(gone) is None

    with_harness(test)


def test_the_pool_reports_a_refused_connect_and_counts_nothing() -> None:
    """``UpstreamPool.connect`` raises the connector's error; nothing is opened."""
    async def main() -> None:
        pool = UpstreamPool(connect_loopback)
        with pytest.raises(ConnectionRefusedError):
            await pool.connect(("127.0.0.1", free_port()))
        assert pool.opened == 0

    run(main())


# --- the session's pool -------------------------------------------------------------------


async def ask(conn: Connection, path: str) -> bytes:
    conn.writer.write(get(path))
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10.0)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return await asyncio.wait_for(conn.reader.readexactly(length), 10.0)


def with_app(test: Callable[[OriginApp, ConnectionPool], Awaitable[None]],
             app: OriginApp | None = None) -> None:
    async def main() -> None:
        origin = app or OriginApp()
        await origin.start()
        pool = ConnectionPool(open_tcp)
        try:
            await test(origin, pool)
        finally:
            pool.close()
            origin.close()

    run(main())


def test_the_session_pool_reuses_a_connection() -> None:
    """A connection put back is the one handed out next; the app accepted one."""
    async def test(app: OriginApp, pool: ConnectionPool) -> None:
        first = await pool.get(app.address)
        assert await ask(first, "/a") == b"app GET /a 0"
        pool.put(first)
        second = await pool.get(app.address)
        assert second is first
        assert await ask(second, "/b") == b"app GET /b 0"
        assert (pool.opened, pool.reused, len(app.connections)) == (1, 1, 1)

    with_app(test)


def test_the_session_pool_never_hands_out_a_connection_the_server_closed() -> None:
    """A pooled connection the server closed meanwhile is dropped; a new one is opened."""
    async def test(app: OriginApp, pool: ConnectionPool) -> None:
        first = await pool.get(app.address)
        assert await ask(first, "/a") == b"app GET /a 0"
        pool.put(first)
        await until(lambda: app.connections[0].closed, "the app closed it")
        await until(lambda: not first.usable, "its EOF seen")
        second = await pool.get(app.address)
        assert second is not first
        assert await ask(second, "/b") == b"app GET /b 0"
        assert (pool.opened, pool.reused) == (2, 0)

    with_app(test, OriginApp(closing_answer))


def test_the_session_pool_reports_a_refused_connect() -> None:
    """Connecting where nobody listens raises, and the pool counts nothing opened."""
    async def test(app: OriginApp, pool: ConnectionPool) -> None:
        with pytest.raises(ConnectionRefusedError):
            await pool.get(("127.0.0.1", free_port()))
        assert pool.opened == 0

    with_app(test)
