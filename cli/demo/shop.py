"""The demo's sample service: a small shop-like JSON API over HTTP/1.1.

Endpoints (every JSON body carries ``"served_by"``, every answer ``X-Served-By``):

==========================  ==========================================================
``GET /health/live``        200 ``{"status": "live"}``
``GET /health/ready``       200 ``{"status": "ready", "orders": N}``
``GET /api/orders``         200, the caller's (``X-User``) latest orders
``POST /api/orders``        201 for ``{"item": str, "qty": 1..99}``, else 400
``GET /api/users/{id}``     200, 404 for an unknown id; user 13's record is corrupt in
                            the remote shop: 500 (the local dev version has the fix)
``GET /api/reports/sales``  200 after a deliberate delay (a slow endpoint)
==========================  ==========================================================

Run as ``python -m waylay.cli.demo.shop --port 80`` (inside the sample's namespace); it prints
``LISTENING <port>`` once it accepts connections, and exits on SIGTERM / SIGINT or when
its owner (``--owner-pid``) dies. ``--lo-up`` first brings up ``lo`` (a fresh network
namespace has it down).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from waylay.cli.demo.http_io import Request, Response, serve
from waylay.cli.demo.lifetime import wait_for_end

USERS: Final = {1: "alice", 2: "bob", 3: "carol", 4: "dave", 5: "erin", 13: "mallory"}
CATALOGUE: Final = ("espresso beans", "grinder", "milk jug", "filter papers", "kettle")
BROKEN_USER: Final = 13
# The slow endpoint's delay: long enough to stand out in the dashboard's durations.
SLOW_S: Final = 0.8
# Orders kept in memory; older ones are forgotten (the demo may run for hours).
ORDERS_KEPT: Final = 500
_USER_PATH = re.compile(r"^/api/users/(\d{1,9})$")


@dataclass(frozen=True, kw_only=True)
class Flavour:
    """Who answers: the remote shop, or the developer's local version."""

    served_by: str  # the body field
    header: str  # X-Served-By
    fixed_user_13: bool  # the bug the developer is fixing locally


REMOTE: Final = Flavour(served_by="remote", header="remote-shop", fixed_user_13=False)


class Shop:
    """The API's behaviour, with its in-memory orders."""

    def __init__(self, flavour: Flavour, *, slow_s: float = SLOW_S) -> None:
        self.flavour = flavour
        self.slow_s = slow_s
        self.orders: deque[dict[str, object]] = deque(maxlen=ORDERS_KEPT)
        self._ids = itertools.count(1001)
        for user, item in (("alice", "grinder"), ("bob", "kettle"), ("carol", "milk jug")):
            self._add_order(user, item, 1)

    async def handle(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path in ("/health/live", "/health/ready"):
            if method != "GET":
                return self._json(405, {"error": "use GET"})
            if path == "/health/live":
                return self._json(200, {"status": "live"})
            return self._json(200, {"status": "ready", "orders": len(self.orders)})
        if path == "/api/orders":
            if method == "GET":
                return self._list_orders(request.header("x-user"))
            if method == "POST":
                return self._create_order(request)
            return self._json(405, {"error": "use GET or POST"})
        if (match := _USER_PATH.match(path)) is not None:
            if method != "GET":
                return self._json(405, {"error": "use GET"})
            return self._user(int(match.group(1)))
        if path == "/api/reports/sales":
            await asyncio.sleep(self.slow_s)
            return self._json(200, {"report": "sales", "orders": len(self.orders),
                                    "items": sorted(CATALOGUE)})
        return self._json(404, {"error": f"no route for {method} {path}"})

    def _list_orders(self, user: str | None) -> Response:
        mine = [o for o in self.orders if user is None or o["user"] == user]
        return self._json(200, {"user": user, "orders": mine[-5:], "count": len(mine)})

    def _create_order(self, request: Request) -> Response:
        try:
            doc = json.loads(request.body)
        except ValueError:
            return self._json(400, {"error": "the body is not JSON"})
        if not isinstance(doc, dict):
            return self._json(400, {"error": "the body must be a JSON object"})
        item, qty = doc.get("item"), doc.get("qty", 1)
        if not isinstance(item, str) or item not in CATALOGUE:
            return self._json(400, {"error": f"unknown item {item!r}"})
        if not isinstance(qty, int) or isinstance(qty, bool) or not 1 <= qty <= 99:
            return self._json(400, {"error": "qty must be an integer 1-99"})
        order = self._add_order(request.header("x-user") or "anonymous", item, qty)
        return self._json(201, {"order": order})

    def _add_order(self, user: str, item: str, qty: int) -> dict[str, object]:
        order: dict[str, object] = {"id": next(self._ids), "user": user, "item": item,
                                    "qty": qty}
        self.orders.append(order)
        return order

    def _user(self, user_id: int) -> Response:
        name = USERS.get(user_id)
        if name is None:
            return self._json(404, {"error": f"no user {user_id}"})
        if user_id == BROKEN_USER and not self.flavour.fixed_user_13:
            return self._json(500, {"error": "user store: corrupt record for user 13"})
        return self._json(200, {"user": {"id": user_id, "name": name}})

    def _json(self, status: int, doc: dict[str, object]) -> Response:
        body = json.dumps({**doc, "served_by": self.flavour.served_by}).encode()
        return Response(status=status, body=body, headers=(
            ("content-type", "application/json"),
            ("x-served-by", self.flavour.header),
        ))


def parse_args(argv: Sequence[str] | None, *, host: str, port: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=host)
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--owner-pid", type=int, default=0,
                        help="exit when this process is gone")
    parser.add_argument("--lo-up", action="store_true",
                        help="bring up the loopback interface first (fresh namespace)")
    parser.add_argument("--slow", type=float, default=SLOW_S, metavar="SECONDS",
                        help="delay of /api/reports/sales")
    return parser.parse_args(argv)


def run(flavour: Flavour, args: argparse.Namespace) -> int:
    """Serve ``flavour`` until stopped; the process's exit code."""
    if args.lo_up:
        ip = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
        if ip is None:
            print("shop: `ip` is missing (install iproute2)", file=sys.stderr)
            return 4
        done = subprocess.run([ip, "link", "set", "lo", "up"], capture_output=True,
                              text=True, timeout=10, check=False)
        if done.returncode != 0:
            print(f"shop: cannot bring up lo: {done.stderr.strip()}", file=sys.stderr)
            return 4
    return asyncio.run(_serve(Shop(flavour, slow_s=args.slow), args))


async def _serve(shop: Shop, args: argparse.Namespace) -> int:
    try:
        server = await serve(shop.handle, args.host, args.port)
    except OSError as exc:
        print(f"shop: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 3
    async with server:
        port = server.sockets[0].getsockname()[1]
        print(f"LISTENING {port}", flush=True)
        await wait_for_end(args.owner_pid)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(REMOTE, parse_args(argv, host="0.0.0.0", port=80))


if __name__ == "__main__":
    sys.exit(main())
