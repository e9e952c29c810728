"""The sample shop and its local version, served and queried over loopback with keep-alive."""

from __future__ import annotations

import asyncio
import json

import pytest

from waylay.cli.demo.http_io import HttpClient, HttpFailure, Response, serve
from waylay.cli.demo.local_app import LOCAL
from waylay.cli.demo.shop import REMOTE, Flavour, Shop
from waylay.cli.demo.traffic import Generator, judge


async def _with_shop(flavour: Flavour, requests: list[tuple[str, str, bytes]]
                     ) -> tuple[list[Response], int]:
    server = await serve(Shop(flavour, slow_s=0.01).handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        client = HttpClient("127.0.0.1", port, timeout=5.0)
        answers = [await client.request(method, target, (("x-user", "alice"),), body)
                   for method, target, body in requests]
        client.close()
        return answers, client.connections


def run(flavour: Flavour, *requests: tuple[str, str, bytes]) -> tuple[list[Response], int]:
    return asyncio.run(_with_shop(flavour, list(requests)))


def test_remote_shop_endpoints_on_one_connection() -> None:
    """Every endpoint answers as documented, all on one keep-alive connection."""
    answers, connections = run(
        REMOTE, ("GET", "/health/live", b""), ("GET", "/health/ready", b""),
        ("GET", "/api/orders", b""), ("POST", "/api/orders", b'{"item": "kettle", "qty": 2}'),
        ("GET", "/api/users/2", b""), ("GET", "/api/users/13", b""),
        ("GET", "/api/users/77", b""), ("GET", "/api/reports/sales", b""),
        ("POST", "/api/orders", b"not json"), ("DELETE", "/api/orders", b""))
    assert [a.status for a in answers] == [200, 200, 200, 201, 200, 500, 404, 200, 400, 405]
    assert connections == 1
    assert {a.header("x-served-by") for a in answers} == {"remote-shop"}
    assert all(json.loads(a.body)["served_by"] == "remote" for a in answers)
    order = json.loads(answers[3].body)["order"]
    assert (order["user"], order["item"], order["qty"]) == ("alice", "kettle", 2)


def test_local_version_answers_recognisably_and_has_the_fix() -> None:
    """local-dev: its header and body field, and user 13 answered 200."""
    answers, _ = run(LOCAL, ("GET", "/api/users/13", b""), ("GET", "/api/orders", b""))
    assert [a.status for a in answers] == [200, 200]
    assert {a.header("x-served-by") for a in answers} == {"local-dev"}
    assert all(json.loads(a.body)["served_by"] == "local" for a in answers)


def test_the_generator_judges_who_answered() -> None:
    """The generator's check: matching header and body, and the status that side gives."""
    answers, _ = run(REMOTE, ("GET", "/api/users/13", b""))
    assert judge("GET", "/api/users/13", answers[0]) == ("remote", None)
    answers, _ = run(LOCAL, ("GET", "/api/users/13", b""))
    assert judge("GET", "/api/users/13", answers[0]) == ("local", None)
    forged = Response(status=200, headers=(("x-served-by", "local-dev"),),
                      body=b'{"served_by": "remote"}')
    server, problem = judge("GET", "/api/orders", forged)
    assert server is None and problem is not None and "does not" in problem


def test_a_refused_connection_is_an_http_failure() -> None:
    """Nothing listening: the client raises HttpFailure, not an OSError."""
    async def attempt() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        await HttpClient("127.0.0.1", port, timeout=2.0).request("GET", "/")

    with pytest.raises(HttpFailure):
        asyncio.run(attempt())


def test_generator_against_the_shop_counts_every_user() -> None:
    """A short run: answers from the remote shop for each user and the probes, none failed."""
    async def go() -> None:
        server = await serve(Shop(REMOTE, slow_s=0.01).handle, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            generator = Generator("127.0.0.1", port, users=["alice", "bob"], seed=3,
                                  max_requests=40)
            report = await generator.run(owner_pid=0, seconds=3.0)
        assert report.requests > 0 and not report.problems, report.problems
        assert set(report.users) == {"alice", "bob", "kube-probe"}
        assert all(t.local == 0 and t.failed == 0 for t in report.users.values())

    asyncio.run(go())
