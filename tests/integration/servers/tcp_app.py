"""Small raw-TCP test servers (stdlib only).

    python3 tcp_app.py echo NAME [PORT] [--host HOST]
    python3 tcp_app.py greet NAME [PORT] [--host HOST]

``echo``: answers ``NAME + b":"`` followed by every byte it receives, unchanged; when the
client half-closes, sends ``TRAILER + NAME`` and closes. The client can tell which server
answered without closing, and whether a half-close travelled through.
``greet``: the same, but first sends ``GREETING_PREFIX + NAME + "\r\n"`` as soon as a
connection is accepted (a server-first protocol such as SMTP).

Prints ``LISTENING <port>`` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import socketserver

TRAILER = b"\n--served-by:"
GREETING_PREFIX = b"220 hello from "


class Handler(socketserver.BaseRequestHandler):
    name = b"?"
    greet = False

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(60)
        if self.greet:
            sock.sendall(GREETING_PREFIX + self.name + b"\r\n")
        prefix = self.name + b":"
        while True:
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(prefix + data)
            prefix = b""
        sock.sendall(TRAILER + self.name)
        sock.shutdown(socket.SHUT_WR)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["echo", "greet"])
    parser.add_argument("name")
    parser.add_argument("port", type=int, nargs="?", default=0)
    parser.add_argument("--host", default="0.0.0.0")
    args = parser.parse_args()
    Handler.name = args.name.encode()
    Handler.greet = args.kind == "greet"
    with Server((args.host, args.port), Handler) as server:
        print(f"LISTENING {server.server_address[1]}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


if __name__ == "__main__":
    main()
