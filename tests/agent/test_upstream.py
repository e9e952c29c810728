"""The pool of connections to the original app (waylay.agent.upstream), over loopback, no root.

Connections are made as ``connect_upstream`` makes them, minus ``SO_MARK`` (root only):
an ``Upstream`` protocol on a plain loopback connection. Expiry is driven by the
connection's ``idle_since`` stamp, never by waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

import waylay.agent.upstream as upstream
from waylay.agent.upstream import Upstream, UpstreamPool
from waylay.core.system.pool import IDLE_TIMEOUT_S

WAIT_S = 10.0  # only keeps a broken test from hanging
POLL_S = 0.01


def run(main: Coroutine[Any, Any, None]) -> None:
    """Under uvloop, as the agent runs."""
    uvloop.run(main)


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(int(WAIT_S / POLL_S)):
        if condition():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"never happened: {what}")


class App:
    """A loopback app that keeps its side of every connection, to speak or close on cue."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return "127.0.0.1", self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()


class Owner:
    """An UpstreamOwner writing down what it is told."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.lost = False

    def upstream_data(self, data: bytes) -> None:
        self.data += data

    def upstream_eof(self) -> None:
        self.eof = True

    def upstream_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def upstream_paused(self) -> None:
        pass

    def upstream_resumed(self) -> None:
        pass


async def open_up(destination: tuple[str, int]) -> Upstream:
    _, up = await asyncio.get_running_loop().create_connection(
        lambda: Upstream(destination), *destination)
    return up


def with_app(test: Callable[[App, tuple[str, int], UpstreamPool], Awaitable[None]]) -> None:
    async def main() -> None:
        app = App()
        destination = await app.start()
        pool = UpstreamPool()
        try:
            await test(app, destination, pool)
        finally:
            pool.close()
            app.close()

    run(main())


def test_take_from_an_empty_pool_is_none() -> None:
    """Nothing pooled for a destination: take says None (the caller connects)."""
    async def test(app: App, dest: tuple[str, int], pool: UpstreamPool) -> None:
        assert pool.take(dest) is None
        assert pool.reused == 0

    with_app(test)


def test_put_then_take_hands_the_same_connection_back() -> None:
    """A connection put back is handed out again, most recently used first, and counted."""
    async def test(app: App, dest: tuple[str, int], pool: UpstreamPool) -> None:
        first, second = await open_up(dest), await open_up(dest)
        first.owner = Owner()
        pool.put(first)
        assert first.owner is None  # the pool owns it now
        pool.put(second)
        assert pool.take(dest) is second
        assert pool.take(dest) is first
        assert pool.take(dest) is None
        assert pool.reused == 2
        assert first.usable and second.usable

    with_app(test)


def test_connections_are_pooled_by_destination() -> None:
    """A connection to one destination is never handed out for another."""
    async def test(app: App, dest: tuple[str, int], pool: UpstreamPool) -> None:
        other = App()
        other_dest = await other.start()
        try:
            up = await open_up(dest)
            pool.put(up)
            assert pool.take(other_dest) is None
            assert pool.take(dest) is up
        finally:
            other.close()

    with_app(test)


def test_an_expired_connection_is_closed_not_handed_out() -> None:
    """A connection idle for IDLE_TIMEOUT_S or more is closed when met, and skipped."""
    async def test(app: App, dest: tuple[str, int], pool: UpstreamPool) -> None:
        stale, fresh = await open_up(dest), await open_up(dest)
        pool.put(fresh)
        pool.put(stale)
        stale.idle_since -= IDLE_TIMEOUT_S  # as if it had idled that long
        assert pool.take(dest) is fresh
        assert stale.closed and not stale.usable
        assert pool.take(dest) is None
        assert pool.reused == 1

    with_app(test)


def test_an_unusable_connection_is_not_pooled() -> None:
    """A connection already closed is closed for good when put back, never pooled."""
    async def test(app: App, dest: tuple[str, int], pool: UpstreamPool) -> None:
        up = await open_up(dest)
        up.close()
        pool.put(up)
        assert pool.take(dest) is None

    with_app(test)


def test_the_oldest_idle_connection_goes_when_the_pool_is_full(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_IDLE_PER_DESTINATION idle connections the least recently used is closed."""
    monkeypatch.setattr(upstream, "MAX_IDLE_PER_DESTINATION", 2)

    async def test(app: App, dest: tuple[str, int], pool: UpstreamPool) -> None:
        ups = [await open_up(dest) for _ in range(3)]
        for up in ups:
            pool.put(up)
        assert ups[0].closed
        assert pool.take(dest) is ups[2]
        assert pool.take(dest) is ups[1]
        assert pool.take(dest) is None

    with_app(test)


def test_an_idle_connection_that_receives_bytes_is_closed() -> None:
    """A pooled connection receiving unasked bytes is closed and never handed out."""
    async def test(app: App, dest: tuple[str, int], pool: UpstreamPool) -> None:
        up = await open_up(dest)
        await until(lambda: len(app.writers) == 1, "the app accepted")
        pool.put(up)
        app.writers[0].write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        await until(lambda: up.closed, "the pooled connection closed")
        assert pool.take(dest) is None

    with_app(test)


def test_an_idle_connection_that_gets_eof_is_closed() -> None:
    """The app closing a pooled connection: it is closed and never handed out."""
    async def test(app: App, dest: tuple[str, int], pool: UpstreamPool) -> None:
        up = await open_up(dest)
        await until(lambda: len(app.writers) == 1, "the app accepted")
        pool.put(up)
        app.writers[0].close()
        await until(lambda: up.closed, "the pooled connection closed")
        assert pool.take(dest) is None
        await until(lambda: up.transport is not None and up.transport.is_closing(),
                    "its transport closing")

    with_app(test)


def test_a_connection_paused_by_its_owner_is_resumed_when_pooled() -> None:
    """A connection left paused by its owner reads again once pooled, so it sees the app's EOF."""
    async def test(app: App, dest: tuple[str, int], pool: UpstreamPool) -> None:
        up = await open_up(dest)
        await until(lambda: len(app.writers) == 1, "the app accepted")
        up.pause_reading()
        pool.put(up)
        assert up.transport is not None and up.transport.is_reading()
        app.writers[0].close()
        await until(lambda: up.closed, "the pooled connection closed")
        assert pool.take(dest) is None

    with_app(test)


def test_an_owned_connection_passes_bytes_and_eof_to_its_owner() -> None:
    """An owned connection passes the app's bytes and EOF to its owner and stays open."""
    async def test(app: App, dest: tuple[str, int], pool: UpstreamPool) -> None:
        up = await open_up(dest)
        owner = Owner()
        up.owner = owner
        await until(lambda: len(app.writers) == 1, "the app accepted")
        app.writers[0].write(b"answer")
        app.writers[0].write_eof()
        await until(lambda: owner.eof, "the owner told of the EOF")
        assert owner.data == b"answer"
        assert up.transport is not None and not up.transport.is_closing()
        up.close()
        await until(lambda: owner.lost or up.owner is None, "released")

    with_app(test)


def test_drop_closes_the_idle_connections_of_one_port() -> None:
    """drop(port) closes that port's idle connections and leaves others pooled."""
    async def test(app: App, dest: tuple[str, int], pool: UpstreamPool) -> None:
        other = App()
        other_dest = await other.start()
        try:
            mine, theirs = await open_up(dest), await open_up(other_dest)
            pool.put(mine)
            pool.put(theirs)
            pool.drop(dest[1])
            assert mine.closed and not theirs.closed
            assert pool.take(dest) is None
            assert pool.take(other_dest) is theirs
        finally:
            other.close()

    with_app(test)


def test_close_closes_every_idle_connection() -> None:
    """close() closes all idle connections and empties the pool."""
    async def test(app: App, dest: tuple[str, int], pool: UpstreamPool) -> None:
        ups = [await open_up(dest) for _ in range(3)]
        for up in ups:
            pool.put(up)
        pool.close()
        assert all(up.closed for up in ups)
        assert pool.take(dest) is None
        await until(lambda: all(up.transport is not None and up.transport.is_closing()
                                for up in ups), "transports closing")

    with_app(test)
