"""Raw TCP through the agent: passed through untouched on a filtered port, taken whole when
the port is stolen without a filter, and server-first protocols never held up.

The remote side runs ``servers/tcp_app.py``: an echo server on 7000 and a greeter (it
speaks first, like SMTP) on 7001. Both answer ``<who>:`` and the bytes they got and, when
the client half-closes, append ``TRAILER + <who>`` and close, so a test can tell which
side answered and whether half-close travelled through.
"""

from __future__ import annotations

import socket

import pytest

from tests.integration.conftest import (
    REMOTE_ECHO_PORT,
    REMOTE_GREET_PORT,
    REMOTE_HTTP_PORT,
    Bed,
    StartWaylay,
    requires_root_netns,
)
from tests.integration.servers.tcp_app import GREETING_PREFIX, TRAILER

pytestmark = [pytest.mark.integration, requires_root_netns]

# The filter applies on every intercepted port (no http_filter.ports).
FILTER_EVERYWHERE = (
    '{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
    '{"header_filter": "X-My-Header: my-header-value",},}}}}'
)
STEAL_ALL = '{"feature": {"network": {"incoming": "steal"}}}'
# The filter applies on 80 and 8080 only: other intercepted ports are taken whole.
FILTER_ON_80 = (
    '{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
    '{"header_filter": "X-My-Header: my-header-value", "ports": [80, 8080]},}}}}'
)
# Not a greeting: only says "not held up forever" so a broken agent fails instead of hanging.
READ_TIMEOUT_S = 5.0
MAX_REPLY = 4 * 1024 * 1024

BINARY = bytes(range(256)) * 64 + b"\x00\r\n\r\nGET / HTTP/1.1\r\n\r\n" + bytes(range(255, -1, -1))


def read_exactly(sock: socket.socket, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only if the peer closed); a timeout fails the test."""
    got = b""
    while len(got) < n:
        try:
            chunk = sock.recv(min(65536, n - len(got)))
        except TimeoutError:
            pytest.fail(f"only {len(got)} of {n} bytes within {READ_TIMEOUT_S:g} s: {got[:80]!r}")
        if not chunk:
            break
        got += chunk
    return got


def read_to_eof(sock: socket.socket) -> bytes:
    got = b""
    while len(got) < MAX_REPLY:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"no EOF within {READ_TIMEOUT_S:g} s after {got[:80]!r}")
        if not chunk:
            break
        got += chunk
    return got


def echo_exchange(address: tuple[str, int], payload: bytes, who: bytes) -> bytes:
    """Send ``payload`` on an open connection; the echo read back (``who:`` + payload)."""
    with socket.create_connection(address, timeout=READ_TIMEOUT_S) as sock:
        sock.sendall(payload)
        return read_exactly(sock, len(who) + 1 + len(payload))


def half_close_exchange(address: tuple[str, int], payload: bytes) -> bytes:
    """Send ``payload``, half-close at once; everything read back until the server's EOF."""
    with socket.create_connection(address, timeout=READ_TIMEOUT_S) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return read_to_eof(sock)


def _ports(bed: Bed, echo_local: int | None = None) -> list[str]:
    echo = bed.local_echo if echo_local is None else echo_local
    return [f"{REMOTE_HTTP_PORT}:{bed.local_http}", f"{REMOTE_ECHO_PORT}:{echo}",
            f"{REMOTE_GREET_PORT}:{echo}"]


@pytest.mark.parametrize("payload", [BINARY, b"HELLO there, this is not HTTP\r\n"],
                         ids=["binary", "text-line"])
def test_non_http_on_filtered_port_passes_through_untouched(
    bed: Bed, waylay: StartWaylay, payload: bytes
) -> None:
    """A non-HTTP protocol on a port with an HTTP filter reaches the original app unchanged."""
    run = waylay(FILTER_EVERYWHERE, ports=_ports(bed))
    reply = echo_exchange((bed.ns_ip, REMOTE_ECHO_PORT), payload, b"remote")
    assert reply == b"remote:" + payload
    (event,) = run.wait_requests(1)
    assert (event["port"], event["protocol"], event["verdict"]) == (
        REMOTE_ECHO_PORT, "tcp", "passed"), event
    assert event["bytes_in"] == len(payload), event


def test_half_close_on_filtered_port_keeps_the_answer_coming(
    bed: Bed, waylay: StartWaylay
) -> None:
    """After a passed-through client half-closes, the original app's answer still reaches it."""
    waylay(FILTER_EVERYWHERE, ports=_ports(bed))
    reply = half_close_exchange((bed.ns_ip, REMOTE_ECHO_PORT), BINARY)
    assert reply == b"remote:" + BINARY + TRAILER + b"remote"


def test_short_message_then_half_close_on_filtered_port_is_relayed(
    bed: Bed, waylay: StartWaylay
) -> None:
    """A few bytes that could still begin an HTTP request, then EOF, reach the original app."""
    waylay(FILTER_EVERYWHERE, ports=_ports(bed))
    reply = half_close_exchange((bed.ns_ip, REMOTE_ECHO_PORT), b"QUIT")
    assert reply == b"remote:QUIT" + TRAILER + b"remote"


@pytest.mark.parametrize("config", [STEAL_ALL, FILTER_ON_80], ids=["steal", "filter-on-80"])
def test_unfiltered_steal_takes_the_whole_connection(
    bed: Bed, waylay: StartWaylay, config: str
) -> None:
    """On a port stolen without a filter, any TCP protocol reaches the local app whole."""
    run = waylay(config, ports=[f"{REMOTE_ECHO_PORT}:{bed.local_echo}"])
    assert run.of_type("subscribed")[0]["filter"] is None
    assert echo_exchange((bed.ns_ip, REMOTE_ECHO_PORT), BINARY, b"local") == b"local:" + BINARY
    # Half-close travels both ways on a whole stolen connection.
    reply = half_close_exchange((bed.ns_ip, REMOTE_ECHO_PORT), BINARY)
    assert reply == b"local:" + BINARY + TRAILER + b"local"
    events = run.wait_requests(2)
    assert [(e["port"], e["protocol"], e["verdict"]) for e in events] == [
        (REMOTE_ECHO_PORT, "tcp", "stolen")] * 2, events


def test_server_first_protocol_gets_its_greeting_without_sending_first(
    bed: Bed, waylay: StartWaylay
) -> None:
    """A server that speaks first on a filtered port greets a client that has sent nothing."""
    run = waylay(FILTER_EVERYWHERE, ports=_ports(bed))
    greeting = GREETING_PREFIX + b"remote\r\n"
    with socket.create_connection((bed.ns_ip, REMOTE_GREET_PORT), timeout=READ_TIMEOUT_S) as sock:
        assert read_exactly(sock, len(greeting)) == greeting
        sock.sendall(b"EHLO test\r\n")
        assert read_exactly(sock, len(b"remote:EHLO test\r\n")) == b"remote:EHLO test\r\n"
    (event,) = run.wait_requests(1)
    assert (event["port"], event["protocol"], event["verdict"]) == (
        REMOTE_GREET_PORT, "tcp", "passed"), event
