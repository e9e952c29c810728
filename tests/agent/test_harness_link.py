"""A session's link to the agent (waylay.agent.link) over the real wire protocol, no root.

The real ``Agent`` and ``ClientLink`` (``tests/agent/harness.py``); the session is a stub
on a socketpair, the redirect rules are kept by ``FakeIptables``.
"""

from __future__ import annotations

from tests.agent.harness import (
    TOKEN,
    Harness,
    SessionStub,
    StolenRequest,
    until,
    with_harness,
)
from waylay.core.engine.wire import Error, Subscribed

STEAL = {"header_filter": "^x-steal: yes$"}


def get(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: svc", *extra]) + "\r\n\r\n").encode()


def test_subscribe_redirects_the_port_and_unsubscribe_gives_it_back() -> None:
    """Subscribing adds the port's REDIRECT to the agent's listener and steals; after
    Unsubscribe the rule is gone and the same request reaches the original app."""
    async def test(h: Harness) -> None:
        session = await h.session()
        sub_id = await session.subscribe(h.port, "steal", STEAL)
        [subscribed] = session.of(Subscribed)
        assert (subscribed.port, subscribed.mode, subscribed.filter) == (
            h.port, "steal", "header_filter: ^x-steal: yes$")
        assert h.redirector.redirected() == {h.port: h.agent.proxy_port}
        assert h.redirector.resets == [h.port]  # connections from before the steal: reset
        client = await h.connect()
        client.send(get("/one", "x-steal: yes"))
        _, body = await client.read_response()
        assert body == b"local GET /one 0"

        session.unsubscribe(sub_id)
        await until(lambda: not h.redirector.redirected(), "the rule removed")
        assert h.port not in h.agent.registry.ports()
        client.send(get("/two", "x-steal: yes"))  # an old connection stays with the agent
        _, body = await client.read_response()
        assert body == b"app GET /two 0"

    with_harness(test)


def test_a_mirror_subscription_never_resets_connections() -> None:
    """A mirror subscribes the port without touching the connections already open."""
    async def test(h: Harness) -> None:
        session = await h.session()
        await session.subscribe(h.port, "mirror", None)
        assert h.redirector.redirected() == {h.port: h.agent.proxy_port}
        assert h.redirector.resets == []

    with_harness(test)


def test_a_bad_filter_is_refused_and_the_link_goes_on() -> None:
    """A filter that does not compile is refused on its own stream; the link stays."""
    async def test(h: Harness) -> None:
        session = await h.session()
        try:
            await session.subscribe(h.port, "steal", {"path_filter": "("})
        except AssertionError as exc:
            assert "refused" in str(exc)
        else:
            raise AssertionError("a bad filter was accepted")
        assert not h.redirector.redirected()
        await session.subscribe(h.port, "steal", STEAL)  # the same link still serves
        assert h.redirector.redirected() == {h.port: h.agent.proxy_port}

    with_harness(test)


def test_a_wrong_token_is_refused_and_never_counts_as_a_session() -> None:
    """A Hello with the wrong token gets an Error and the link is closed; the agent
    keeps no session for it."""
    async def test(h: Harness) -> None:
        stub = SessionStub(h.agent)
        h.sessions.append(stub)
        try:
            await stub.attach(token=TOKEN + "x")
        except AssertionError as exc:
            assert "bad session token" in str(exc)
        else:
            raise AssertionError("a wrong token was accepted")
        assert [e.code for e in stub.of(Error)] == ["handshake"]
        assert not h.agent.links

    with_harness(test)


def hold(request: StolenRequest) -> None:
    """A local app that never answers."""
    return None


def test_a_session_that_leaves_mid_request_gets_the_client_a_502_and_frees_the_port() -> None:
    """When the session's link ends while its stolen request waits for an answer, the
    client gets a 502, the port's rule is removed, and later requests pass to the app."""
    async def test(h: Harness) -> None:
        session = await h.session(answer=hold)
        await session.subscribe(h.port, "steal", STEAL)
        client = await h.connect()
        client.send(get("/held", "x-steal: yes"))
        await until(lambda: any(r.ended for r in session.requests.values()),
                    "the request at the session")
        await session.close()
        head, body = await client.read_response()
        assert head.startswith(b"HTTP/1.1 502 ")
        assert b"link to the agent ended" in body
        await until(lambda: not h.redirector.redirected(), "the port released")
        assert not h.agent.links and not h.agent.registry.ports()
        again = await h.connect()
        again.send(get("/after", "x-steal: yes"))
        _, body = await again.read_response()
        assert body == b"app GET /after 0"

    with_harness(test)


def test_a_second_session_is_not_disturbed_when_the_first_leaves() -> None:
    """Two sessions on two ports: one leaving releases only its own port."""
    async def test(h: Harness) -> None:
        first = await h.session()
        second = await h.session()
        await first.subscribe(h.port, "steal", STEAL)
        await second.subscribe(h.port + 1 if h.port < 65535 else h.port - 1, "mirror", None)
        assert len(h.redirector.redirected()) == 2
        await first.close()
        await until(lambda: len(h.redirector.redirected()) == 1, "one port released")
        assert h.port not in h.redirector.redirected()
        assert len(h.agent.links) == 1

    with_harness(test)
