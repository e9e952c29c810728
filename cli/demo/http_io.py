"""A small HTTP/1.1 server and keep-alive client over asyncio streams, driven by h11.

The demo's services and its traffic generator speak plain HTTP/1.1 (RFC 9112) with
keep-alive, so the agent sees realistic connections that carry many requests. Bodies are
read whole: the demo's bodies are a few hundred bytes, and every size and wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import h11

# The demo's bodies are below 2 KiB; anything much larger is refused (413), not buffered.
MAX_BODY: Final = 64 * 1024
# A request head larger than this is a protocol error (h11 answers 431-style by closing).
MAX_HEAD: Final = 16 * 1024
READ_CHUNK: Final = 16 * 1024
# A keep-alive connection with no new request for this long is closed by the server.
IDLE_TIMEOUT_S: Final = 30.0
# How long a server waits for the rest of a request once its first byte arrived.
REQUEST_TIMEOUT_S: Final = 10.0
# Connections served at once; more are closed at accept (the demo needs a dozen).
MAX_CONNECTIONS: Final = 256

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True)
class Request:
    method: str
    target: str  # path and query as on the request line
    headers: Headers  # names lower-cased, in order
    body: bytes

    def header(self, name: str) -> str | None:
        return _first(self.headers, name)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass(frozen=True, kw_only=True)
class Response:
    status: int
    headers: Headers  # names lower-cased, in order
    body: bytes

    def header(self, name: str) -> str | None:
        return _first(self.headers, name)


Handler = Callable[[Request], Awaitable[Response]]


class HttpFailure(Exception):
    """A request got no complete answer (connection refused or reset, timeout, bad HTTP)."""


def _first(headers: Headers, name: str) -> str | None:
    name = name.lower()
    return next((value for key, value in headers if key == name), None)


def _decode_headers(raw: Any) -> Headers:
    return tuple((bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1"))
                 for k, v in raw)


# --- server ------------------------------------------------------------------------------


async def serve(handler: Handler, host: str, port: int) -> asyncio.Server:
    """Start serving ``handler`` on host:port (0: any free port); the caller closes it."""
    active = 0

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        if active >= MAX_CONNECTIONS:
            writer.close()
            return
        active += 1
        try:
            await _serve_connection(handler, reader, writer)
        finally:
            active -= 1

    return await asyncio.start_server(connection, host, port, limit=MAX_HEAD)


async def _serve_connection(handler: Handler, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        while True:
            try:
                request = await _receive_request(conn, reader)
            except _TooLarge:
                await _send(conn, writer, _plain(413, "request body too large"))
                return
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _send(conn, writer, _plain(exc.error_status_hint, "bad request"))
                return
            if request is None:
                return
            try:
                response = await handler(request)
            except Exception as exc:  # a bug in a handler answers 500, never kills the server
                response = _plain(500, f"handler failed: {exc!r}")
            await _send(conn, writer, response)
            if h11.MUST_CLOSE in (conn.our_state, conn.their_state):
                return
            conn.start_next_cycle()
    except (OSError, TimeoutError, h11.LocalProtocolError):
        return  # the client went away, or never finished its request
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class _TooLarge(Exception):
    pass


async def _receive_request(conn: Any, reader: asyncio.StreamReader) -> Request | None:
    """The next whole request; None when the client closed an idle connection."""
    head: Any = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            timeout = IDLE_TIMEOUT_S if head is None and not body else REQUEST_TIMEOUT_S
            conn.receive_data(await asyncio.wait_for(reader.read(READ_CHUNK), timeout))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise _TooLarge
        elif isinstance(event, h11.EndOfMessage):
            return Request(method=bytes(head.method).decode("ascii"),
                           target=bytes(head.target).decode("latin-1"),
                           headers=_decode_headers(head.headers), body=bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _plain(status: int, text: str) -> Response:
    return Response(status=status, headers=(("content-type", "text/plain"),),
                    body=f"{text}\n".encode())


async def _send(conn: Any, writer: asyncio.StreamWriter, response: Response) -> None:
    headers = [(k, v) for k, v in response.headers if k != "content-length"]
    headers.append(("content-length", str(len(response.body))))
    try:
        reason = HTTPStatus(response.status).phrase.encode()
    except ValueError:
        reason = b""
    writer.write(conn.send(h11.Response(status_code=response.status, headers=headers,
                                        reason=reason)))
    if response.body:
        writer.write(conn.send(h11.Data(data=response.body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


# --- client ------------------------------------------------------------------------------


class HttpClient:
    """One keep-alive HTTP/1.1 connection to host:port, reopened when it closes.

    The server (or an interceptor) may close an idle keep-alive connection at any time
    (RFC 9112 §9.6), so a connection seen to have ended is not reused, and a request that
    fails on a reused connection before any answer arrived is retried once on a fresh one
    if it is idempotent (RFC 9110 §9.2.2), as browsers and httpx do.
    """

    def __init__(self, host: str, port: int, *, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        # The Host header as a client puts it (RFC 9110 §7.2: the port only if not 80).
        self.host_header = host if port == 80 else f"{host}:{port}"
        self._conn: Any = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connections = 0  # how many connections were opened (for the report)

    async def request(self, method: str, target: str, headers: Headers = (),
                      body: bytes = b"") -> Response:
        reused = self._writer is not None
        try:
            return await self._attempt(method, target, headers, body)
        except _NoAnswer as exc:
            self.close()
            if not (reused and method in ("GET", "HEAD", "OPTIONS")):
                raise HttpFailure(str(exc)) from None
        try:
            return await self._attempt(method, target, headers, body)
        except _NoAnswer as exc:
            self.close()
            raise HttpFailure(str(exc)) from None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._conn = self._reader = self._writer = None

    async def _attempt(self, method: str, target: str, headers: Headers,
                       body: bytes) -> Response:
        if self._dropped():
            self.close()
        try:
            async with asyncio.timeout(self.timeout):
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_connection(
                        self.host, self.port, limit=MAX_HEAD)
                    self._conn = h11.Connection(h11.CLIENT,
                                                max_incomplete_event_size=MAX_HEAD)
                    self.connections += 1
                return await self._exchange(method, target, headers, body)
        except HttpFailure:
            self.close()
            raise
        except TimeoutError:
            self.close()
            raise HttpFailure(f"no answer within {self.timeout:g} s") from None
        except (OSError, h11.ProtocolError) as exc:
            raise _NoAnswer(f"{type(exc).__name__}: {exc}") from None

    def _dropped(self) -> bool:
        """Did the idle connection end (FIN or reset seen) since its last answer?

        Checked before reuse, as urllib3 does: a request is then never written to a
        connection already known to be gone.
        """
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            return False
        return writer.is_closing() or reader.at_eof() or reader.exception() is not None

    async def _exchange(self, method: str, target: str, headers: Headers,
                        body: bytes) -> Response:
        conn, reader, writer = self._conn, self._reader, self._writer
        assert reader is not None and writer is not None
        sent = [("host", self.host_header), *headers]
        if body or method in ("POST", "PUT", "PATCH"):
            sent.append(("content-length", str(len(body))))
        writer.write(conn.send(h11.Request(method=method, target=target, headers=sent)))
        if body:
            writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        head: Any = None
        received = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_CHUNK)
                if not data and head is None:
                    raise _NoAnswer("the connection closed before an answer")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                received += event.data
                if len(received) > MAX_BODY:
                    raise HttpFailure("answer body too large")
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpFailure("the connection closed in the middle of the answer")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            self.close()
        return Response(status=int(head.status_code), headers=_decode_headers(head.headers),
                        body=bytes(received))


class _NoAnswer(Exception):
    """The connection failed before any part of an answer arrived."""
