"""A TCP relay for h2c that reports HTTP/2 rule breaks of its client (stdlib + hyperframe).

    python h2_frame_relay.py TARGET_PORT --log FILE [--host HOST]

Listens on HOST (default 127.0.0.1), any free port, and relays each connection to
127.0.0.1:TARGET_PORT byte for byte, reading the frames both ways. It appends JSON lines
to FILE:

- ``{"conn": N, "event": "frame_after_rst", "type": T, "stream": S}``: the client sent a
  frame other than PRIORITY on a stream it had already reset (RFC 9113 §5.1: a closed
  stream; §5.4.2: no RST_STREAM in answer to one's own). At most 20 per connection;
- ``{"conn": N, "event": "goaway", "error_code": E, "last_stream_id": L}`` for each
  GOAWAY the server sent;
- ``{"conn": N, "event": "closed", "first": "server"|"client", "headers": H,
  "rst_streams": R, "frames_after_rst": F}`` when the connection ends.

Prints ``LISTENING <port>`` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
from typing import Any

from hyperframe.frame import Frame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, PRIORITY, GOAWAY = 0x1, 0x3, 0x2, 0x7
MAX_REPORTED = 20  # violations written per connection (the count covers all of them)


class Connection:
    def __init__(self, conn_id: int, log: str) -> None:
        self.id = conn_id
        self.log = log
        self.reset: set[int] = set()
        self.headers = 0
        self.rst_streams = 0
        self.after_rst = 0
        self.first_closed: str | None = None

    def write(self, record: dict[str, Any]) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"conn": self.id, **record}) + "\n")

    def client_frame(self, kind: int, stream: int) -> None:
        if stream in self.reset and kind != PRIORITY:
            self.after_rst += 1
            if self.after_rst <= MAX_REPORTED:
                self.write({"event": "frame_after_rst", "type": kind, "stream": stream})
        if kind == HEADERS:
            self.headers += 1
        elif kind == RST_STREAM:
            self.rst_streams += 1
            self.reset.add(stream)

    def server_frame(self, frame: Frame) -> None:
        if frame.type == GOAWAY:
            self.write({"event": "goaway", "error_code": frame.error_code,  # type: ignore[attr-defined]
                        "last_stream_id": frame.last_stream_id})  # type: ignore[attr-defined]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                conn: Connection, side: str) -> None:
    buf = bytearray()
    preface = side == "client"
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
            buf += data
            if preface:
                if len(buf) < len(PREFACE):
                    continue
                del buf[:len(PREFACE)]
                preface = False
            while len(buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(bytes(buf[:9])))
                if len(buf) < 9 + length:
                    break
                if side == "client":
                    conn.client_frame(frame.type, frame.stream_id)
                else:
                    frame.parse_body(memoryview(bytes(buf[9:9 + length])))
                    conn.server_frame(frame)
                del buf[:9 + length]
    except (ConnectionError, ValueError):
        pass
    finally:
        if conn.first_closed is None:
            conn.first_closed = side
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target", type=int)
    parser.add_argument("--log", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    ids = itertools.count(1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(next(ids), args.log)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", args.target)
        await asyncio.gather(_pipe(reader, up_writer, conn, "client"),
                             _pipe(up_reader, writer, conn, "server"))
        conn.write({"event": "closed", "first": conn.first_closed, "headers": conn.headers,
                    "rst_streams": conn.rst_streams, "frames_after_rst": conn.after_rst})

    server = await asyncio.start_server(handle, args.host, 0)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
