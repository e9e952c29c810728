"""Playbooks of the HTTP/1.1 router holding a request for a body filter: decided with the
whole body, or passed exactly as it came when the body is over its bounds."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from waylay.core.engine.filters import compile_http_filter
from waylay.core.engine.http1 import Http1Router
from waylay.core.engine.registry import Registry, Subscription
from waylay.core.engine.routing import (
    AwaitBody,
    Command,
    ConnectUpstream,
    DownstreamData,
    RecordFlow,
    SendDownstream,
    SendUpstream,
    StealData,
    StealEnd,
    StealStart,
    UpstreamData,
)

FILTER = {"body_filter": {"body": "json", "query": "$.user", "matches": "^alice$"}}
ALICE = b'{"user": "alice"}'
BOB = b'{"user": "bob"}'
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def router(limit: int = 64, timeout_ms: int = 1000) -> Http1Router:
    registry = Registry()
    registry.add(Subscription(sub_id=7, link_id=1, port=80, mode="steal",
                              http_filter=compile_http_filter(FILTER),
                              body_buffer_size=limit, body_buffer_timeout_ms=timeout_ms))
    return Http1Router(port=80, authority="10.0.0.2:80",
                       decide=lambda view, body=None: registry.decide(80, view, body),
                       next_id=itertools.count(1).__next__)


def of(commands: list[Command], kind: type) -> list[Any]:
    return [c for c in commands if isinstance(c, kind)]


def request(body: bytes, *, chunked: bool = False, json: bool = True) -> bytes:
    head = b"POST /orders HTTP/1.1\r\nHost: a\r\n"
    if json:
        head += b"Content-Type: application/json\r\n"
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 5]), body[i:i + 5])
                          for i in range(0, len(body), 5)) + b"0\r\n\r\n"
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + framed
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def upstream_bytes(commands: list[Command]) -> bytes:
    return b"".join(c.data for c in of(commands, SendUpstream))


@given(st.booleans(), st.integers(min_value=1, max_value=40))
def test_a_matching_body_is_stolen_in_any_split(chunked: bool, cut: int) -> None:
    """Content-Length or chunked, in two reads anywhere: held, then stolen with its body."""
    r = router()
    raw = request(ALICE, chunked=chunked)
    first = r.handle(DownstreamData(data=raw[:len(raw) - cut]), 0.0)
    assert not of(first, SendUpstream) and not of(first, StealStart)  # nothing left yet
    rest = r.handle(DownstreamData(data=raw[len(raw) - cut:]), 0.1)
    commands = first + rest
    assert [c.sub_id for c in of(commands, StealStart)] == [7]
    assert b"".join(c.data for c in of(commands, StealData)) == ALICE
    assert of(commands, StealEnd) and not of(commands, SendUpstream)


@given(st.booleans())
def test_a_body_that_does_not_match_goes_upstream_byte_for_byte(chunked: bool) -> None:
    """bob's body: the request reaches the original app exactly as it came."""
    r = router()
    raw = request(BOB, chunked=chunked)
    commands = r.handle(DownstreamData(data=raw), 0.0)
    assert of(commands, ConnectUpstream) and not of(commands, StealStart)
    assert upstream_bytes(commands) == raw


@given(st.booleans())
def test_a_body_over_the_bound_is_passed_exactly_with_its_reason(chunked: bool) -> None:
    """Past body_limit the request is passed undecided, as it came, and says why."""
    r = router(limit=16)
    body = b'{"user": "alice", "pad": "' + b"x" * 100 + b'"}'
    raw = request(body, chunked=chunked)
    commands = r.handle(DownstreamData(data=raw), 0.0)
    assert upstream_bytes(commands) == raw and not of(commands, StealStart)
    done = r.handle(UpstreamData(data=OK), 0.1)
    (record,) = [c.record for c in of(done, RecordFlow)]
    assert (record.verdict, record.body_skipped) == (
        "passed", "body over agent.max_body_buffer_size")


def test_a_held_request_past_its_deadline_is_passed_with_its_reason() -> None:
    """The driver's timer (AwaitBody) ends the wait: the request goes upstream undecided."""
    r = router(timeout_ms=250)
    raw = request(ALICE)
    first = r.handle(DownstreamData(data=raw[:-3]), 10.0)
    assert [c.deadline for c in of(first, AwaitBody)] == [10.25]
    r.body_timeout(10.25)  # the driver's call; the recorder keeps what it sends
    rest = r.handle(DownstreamData(data=raw[-3:]), 10.3)
    assert upstream_bytes(rest) == raw and not of(rest, StealStart)
    done = r.handle(UpstreamData(data=OK), 10.4)
    (record,) = [c.record for c in of(done, RecordFlow)]
    assert record.verdict == "passed"
    assert record.body_skipped == "body incomplete after agent.max_body_buffer_timeout"


def test_expect_continue_is_answered_while_the_body_is_held() -> None:
    """A client that waits for 100 Continue gets it, so its body can decide."""
    r = router()
    head = (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(ALICE))
    commands = r.handle(DownstreamData(data=head), 0.0)
    assert b"".join(c.data for c in of(commands, SendDownstream)) == (
        b"HTTP/1.1 100 Continue\r\n\r\n")
    commands = r.handle(DownstreamData(data=ALICE), 0.1)
    assert of(commands, StealStart) and not of(commands, SendDownstream)


def test_a_request_that_is_not_json_is_not_held() -> None:
    """No JSON Content-Type: decided from the head, passed at once, the reason recorded."""
    r = router()
    raw = request(ALICE, json=False)
    commands = r.handle(DownstreamData(data=raw), 0.0)
    assert upstream_bytes(commands) == raw and not of(commands, AwaitBody)
