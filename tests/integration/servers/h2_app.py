"""A small HTTP/2 (h2c prior knowledge) and HTTP/1.1 test app on hypercorn, saying who answered.

    python h2_app.py NAME [PORT] [--host HOST]

The same answers as ``http_app.py``, over either protocol (hypercorn tells h2c prior
knowledge from HTTP/1.1 by the first bytes), plus ``X-Http-Version`` (``2`` or ``1.1``):

- ``GET /bytes/N``: N deterministic bytes (``pattern(N)``, as ``http_app``'s), with
  ``X-Body-Sha256``.
- ``POST`` / ``PUT``: reads the body and answers with its sha256 in the body and in
  ``X-Body-Sha256``, its length in ``X-Body-Length``.
- ``GET /slow/MS``: waits MS milliseconds first (concurrency tests).
- anything else: ``NAME <target>`` as text, and ``X-Host`` (the Host / :authority seen).

Prints ``LISTENING <port>`` on stdout once it accepts connections (PORT 0: any free port).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import socket
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

NAME = "?"
_BLOCK = bytes(range(256)) * 256  # the same bytes as http_app.pattern


def pattern(n: int) -> bytes:
    """The N bytes ``GET /bytes/N`` answers with (as ``http_app.pattern``)."""
    whole, rest = divmod(n, len(_BLOCK))
    return _BLOCK * whole + _BLOCK[:rest]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    method = scope["method"]
    path = scope["path"]
    target = path + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    body = bytearray()
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    extra: list[tuple[str, str]] = []
    if method in ("POST", "PUT"):
        digest = hashlib.sha256(body).hexdigest()
        answer = (digest + "\n").encode()
        extra = [("x-body-sha256", digest), ("x-body-length", str(len(body)))]
    elif path.startswith("/bytes/"):
        answer = pattern(int(path.split("/")[2]))
        extra = [("x-body-sha256", hashlib.sha256(answer).hexdigest())]
    else:
        if path.startswith("/slow/"):
            await asyncio.sleep(int(path.split("/")[2]) / 1000)
        answer = f"{NAME} {target}\n".encode()
    fields = [("x-served-by", NAME), ("x-path", target), ("x-http-version",
              scope["http_version"]), ("x-host", headers.get("host", "")),
              ("content-type", "application/octet-stream"),
              ("content-length", str(len(answer))), *extra]
    await send({"type": "http.response.start", "status": 200,
                "headers": [(k.encode(), v.encode()) for k, v in fields]})
    view = memoryview(answer)
    step = 256 * 1024
    for offset in range(0, max(len(view), 1), step):
        await send({"type": "http.response.body", "body": bytes(view[offset:offset + step]),
                    "more_body": offset + step < len(view)})


async def main() -> None:
    global NAME
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("port", type=int, nargs="?", default=0)
    parser.add_argument("--host", default="0.0.0.0")
    args = parser.parse_args()
    NAME = args.name
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    sock.set_inheritable(True)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = None
    config.h2_max_inbound_frame_size = 16384
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


if __name__ == "__main__":
    asyncio.run(main())
