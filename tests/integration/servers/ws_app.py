"""A WebSocket echo server that says who it is (``websockets`` package).

    python3 ws_app.py NAME PORT [--host HOST]

Echoes every message as ``NAME: <message>``; prints ``LISTENING <port>`` once it accepts.
"""

from __future__ import annotations

import argparse
import asyncio

from websockets.asyncio.server import ServerConnection, serve


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="0.0.0.0")
    args = parser.parse_args()

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(f"{args.name}: {message}")

    async def run() -> None:
        async with serve(echo, args.host, args.port) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            print(f"LISTENING {port}", flush=True)
            await asyncio.Future()

    asyncio.run(run())


if __name__ == "__main__":
    main()
