"""A small HTTP/1.1 test app that says who answered (stdlib only; runs as any user).

    python3 http_app.py NAME [PORT] [--host HOST]

Answers every request with ``X-Served-By: NAME`` and ``X-Path: <request target>``:

- ``GET /bytes/N``: N deterministic bytes (``pattern(N)``), with ``X-Body-Sha256``.
- ``POST`` / ``PUT``: reads the body (Content-Length or chunked) and answers with its
  sha256 in the body and in ``X-Body-Sha256``, its length in ``X-Body-Length``.
- anything else: ``NAME <target>`` as text.

Prints ``LISTENING <port>`` on stdout once it accepts connections (PORT 0: any free port).
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import sys

_BLOCK = bytes(range(256)) * 256  # 64 KiB; pattern(N) is this repeated and cut


def pattern(n: int) -> bytes:
    """The N bytes ``GET /bytes/N`` answers with."""
    whole, rest = divmod(n, len(_BLOCK))
    return _BLOCK * whole + _BLOCK[:rest]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_name_tag = "?"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("X-Served-By", self.server_name_tag)
        self.send_header("X-Path", self.path)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/bytes/"):
            n = int(self.path.split("/")[2].split("?")[0])
            body = pattern(n)
            self._answer(200, body, {"X-Body-Sha256": hashlib.sha256(body).hexdigest()})
            return
        self._answer(200, f"{self.server_name_tag} {self.path}\n".encode())

    do_HEAD = do_GET
    do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(8)  # CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length)

    def do_POST(self) -> None:
        body = self._read_body()
        digest = hashlib.sha256(body).hexdigest()
        self._answer(200, (digest + "\n").encode(),
                     {"X-Body-Sha256": digest, "X-Body-Length": str(len(body))})

    do_PUT = do_POST


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("port", type=int, nargs="?", default=0)
    parser.add_argument("--host", default="0.0.0.0")
    args = parser.parse_args()
    Handler.server_name_tag = args.name
    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
