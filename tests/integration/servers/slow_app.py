"""A local app that takes DELAY seconds to answer each request (for mirror tests).

    python3 slow_app.py DELAY [--host HOST]

Answers ``slow <target>`` with ``X-Served-By: slow`` after sleeping DELAY seconds; counts
requests and prints ``LISTENING <port>`` once it accepts connections (any free port).
"""

from __future__ import annotations

import argparse
import http.server
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("delay", type=float)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            time.sleep(args.delay)
            body = f"slow {self.path}\n".encode()
            self.send_response(200)
            self.send_header("X-Served-By", "slow")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((args.host, 0), Handler)
    server.daemon_threads = True
    print(f"LISTENING {server.server_address[1]}", flush=True)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
