"""The bed's HTTP/1.1 test app, marking its answers and recording every request it acted on.

    python marker_app.py NAME [PORT] [--host HOST] [--status N] [--log FILE]

The same framing and answers as ``tests/integration/servers/http_app.py`` (its handler is
reused, so this is "the original server's framing": the standard library's request parser
and http_app's body reader), plus:

- every answer has status N (default 200) and ``X-Served-By: NAME``;
- every request the app answers is appended to FILE as one JSON line
  ``{"name", "method", "path", "body_length"}`` before the answer is sent, so a test can
  count exactly what this end framed;
- ``POST /die...``: reads half of the announced body, then the process exits at once
  (exit code 3): a local app that dies in the middle of a request body.

Prints ``LISTENING <port>`` on stdout once it accepts connections (PORT 0: any free port).
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import sys
import threading
from pathlib import Path

# http_app.py is a script next to the integration tests, not a package module: load it the
# way it runs there (this file also runs as a script, with no package around it).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration" / "servers"))
import http_app

_LOG_LOCK = threading.Lock()


class MarkerHandler(http_app.Handler):
    status = 200
    log_path: str | None = None

    def _answer(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        if self.log_path is not None:
            line = json.dumps({
                "name": self.server_name_tag, "method": self.command, "path": self.path,
                "body_length": int((extra or {}).get("X-Body-Length", "0")),
            })
            with _LOG_LOCK, open(self.log_path, "a", encoding="utf-8") as log:
                log.write(line + "\n")
        super()._answer(self.status, body, extra)

    def do_POST(self) -> None:
        if self.path.startswith("/die"):
            half = int(self.headers.get("Content-Length") or 0) // 2
            self.rfile.read(half)
            os._exit(3)  # no answer, no clean close: the process is simply gone
        super().do_POST()

    do_PUT = do_POST


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("port", type=int, nargs="?", default=0)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--log")
    args = parser.parse_args()
    MarkerHandler.server_name_tag = args.name
    MarkerHandler.status = args.status
    MarkerHandler.log_path = args.log
    server = http.server.ThreadingHTTPServer((args.host, args.port), MarkerHandler)
    server.daemon_threads = True
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
