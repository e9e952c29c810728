"""The floor probe: the least an HTTP/1.1 filtering relay must do, in Python.

It parses every request head (httptools, Node's llhttp), runs one ``regex`` search on a
header line with a pattern that matches nothing, and forwards the bytes as they came to
the origin over one kept-alive upstream connection per client connection; responses are
relayed back unparsed. uvloop, ``asyncio.Protocol`` both ways, TCP_NODELAY, back-pressure
by pausing the other side's reading. No routing, no records, no stealing: whatever the
waylay agent does on top of this is its own cost, so ``bench/suite.py`` reports the agent
as a ratio of this relay's throughput ("Python's own speed limit" on this machine).

    python bench/floor_relay.py --listen 0.0.0.0:8082 --upstream 127.0.0.1:80
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket

import httptools
import regex
import uvloop

# Never matches a request of the benchmark; searched with a timeout as waylay's filters are.
PATTERN = regex.compile(r"(?i)^x-waylay-floor: steal-me$")
REGEX_TIMEOUT_S = 0.1


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Upstream(asyncio.Protocol):
    """The relay's connection to the origin: responses go back to the client unparsed."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _nodelay(transport)
        self.client.upstream_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()

    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()


class Client(asyncio.Protocol):
    """One client connection: parse each request head, search one header, forward."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.address = upstream
        self.upstream: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # what arrived before the upstream connected
        self.first_header: bytes | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.relay_only = False  # after an upgrade: bytes, not HTTP

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        _nodelay(transport)
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(loop.create_connection(
            lambda: Upstream(self), *self.address))
        self.connecting.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[object]) -> None:
        if task.cancelled() or task.exception() is not None:
            self.transport.close()

    def upstream_made(self, transport: asyncio.Transport) -> None:
        self.upstream = transport
        transport.writelines(self.pending)
        self.pending.clear()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.first_header = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.first_header is None:
            self.first_header = name.lower() + b": " + value

    def on_headers_complete(self) -> None:
        line = (self.first_header or b"").decode("latin-1")
        self.matched = PATTERN.search(line, timeout=REGEX_TIMEOUT_S) is not None

    def data_received(self, data: bytes) -> None:
        if not self.relay_only:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self.relay_only = True
            except httptools.HttpParserError:
                self.transport.close()
                return
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()
        else:
            self.connecting.cancel()

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstream), *listen, backlog=4096,
                                      reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", type=_address, required=True, metavar="HOST:PORT")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.listen, args.upstream))


if __name__ == "__main__":
    main()
