"""What an HTTP/1.1 head costs to parse, by parser, in one run (no root, no network).

    .venv/bin/python bench/parsers.py            # a few seconds
    .venv/bin/python bench/parsers.py --json

The agent keeps its own strict parser (``core/engine/http1_framing.py``, with the fast lane's
recognisers in ``core/engine/http1_simple.py``) rather than llhttp through httptools. This
measures the price of that choice per message, against httptools (Node's llhttp, the
parser under uvicorn) and h11 (the oracle of what is valid) on the same heads: a wrk-style
GET, a browser-style GET, and an nginx response. Read the figures next to the agent's
CPU time per request in ``./dev bench``: the difference here is what a C parser could
save per request at most. Why waylay pays it is in docs/architecture.md ("The hot path"):
llhttp reports no message boundary inside a buffer (per-request routing of pipelined
requests needs one), cannot be told a response answers HEAD, and differs from h11 on
what it accepts; the fast lane's grammar agrees with the general parser, which agrees
with h11.
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable

import h11
import httptools

from waylay.core.engine.http1_body import BodyReader
from waylay.core.engine.http1_framing import parse_request_head, parse_response_head
from waylay.core.engine.http1_simple import simple_request, simple_response

WRK_GET = b"GET / HTTP/1.1\r\nHost: 10.200.0.2\r\n\r\n"
BROWSER_GET = (
    b"GET /api/orders?page=2 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: Mozilla/5.0 "
    b"(X11; Linux x86_64)\r\nAccept: application/json\r\nAccept-Language: en-GB,en;q=0.9\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\nX-User: alice\r\nCookie: session=abc123\r\n"
    b"Connection: keep-alive\r\n\r\n"
)
NGINX_OK = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 15:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"
)


class _Callbacks:
    """httptools calls these; keeping the fields is what a router would have to do."""

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_message_complete(self) -> None:
        self.done = True


def _httptools_request(data: bytes) -> Callable[[], object]:
    def run() -> object:
        callbacks = _Callbacks()
        httptools.HttpRequestParser(callbacks).feed_data(data)
        return callbacks.fields

    return run


def _httptools_response(data: bytes) -> Callable[[], object]:
    def run() -> object:
        callbacks = _Callbacks()
        parser = httptools.HttpResponseParser(callbacks)
        parser.feed_data(data)
        return parser.get_status_code()

    return run


def _h11(data: bytes, role: type[h11.CLIENT] | type[h11.SERVER]) -> Callable[[], object]:
    def run() -> object:
        conn = h11.Connection(role)
        if role is h11.CLIENT:  # a client connection must have sent a request first
            conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            conn.send(h11.EndOfMessage())
        conn.receive_data(data)
        return conn.next_event()

    return run


def _general_response(data: bytes) -> Callable[[], object]:
    def run() -> object:
        buf = bytearray(data)
        head = parse_response_head(buf, request_method=b"GET")
        assert head is not None
        return BodyReader(head.framing).read(buf)

    return run


def cases() -> dict[str, dict[str, Callable[[], object]]]:
    return {
        "wrk GET (1 field)": {
            "waylay fast lane (waylay.core.engine.http1_simple)": lambda: simple_request(WRK_GET),
            "waylay general parser": lambda: parse_request_head(bytearray(WRK_GET)),
            "httptools (llhttp)": _httptools_request(WRK_GET),
            "h11": _h11(WRK_GET, h11.SERVER),
        },
        "browser GET (8 fields)": {
            "waylay fast lane (engine.http1_simple)": lambda: simple_request(BROWSER_GET),
            "waylay general parser": lambda: parse_request_head(bytearray(BROWSER_GET)),
            "httptools (llhttp)": _httptools_request(BROWSER_GET),
            "h11": _h11(BROWSER_GET, h11.SERVER),
        },
        "nginx 200 with body (5 fields)": {
            "waylay fast lane (engine.http1_simple)": lambda: simple_response(NGINX_OK, "GET"),
            "waylay general parser": _general_response(NGINX_OK),
            "httptools (llhttp)": _httptools_response(NGINX_OK),
            "h11": _h11(NGINX_OK, h11.CLIENT),
        },
    }


def measure(number: int) -> dict[str, dict[str, float]]:
    """Microseconds per message, best of three runs of ``number``."""
    results: dict[str, dict[str, float]] = {}
    for case, parsers in cases().items():
        results[case] = {}
        for name, run in parsers.items():
            best = min(timeit.repeat(run, number=number, repeat=3))
            results[case][name] = best / number * 1e6
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--number", type=int, default=20_000,
                        help="messages per timing run (default 20000)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    results = measure(args.number)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("HTTP/1.1 head parsing, microseconds per message (best of 3), ratio to httptools")
    for case, by_parser in results.items():
        print(f"\n{case}")
        base = by_parser["httptools (llhttp)"]
        for name, us in by_parser.items():
            print(f"  {name:40s} {us:7.2f} us   {us / base:5.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
