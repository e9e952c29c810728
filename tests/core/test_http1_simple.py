"""The fast lane's recognisers (waylay.core.engine.http1_simple) agree with the general parser.

Whenever ``simple_request`` or ``simple_response`` says "yes, with these facts", the
general parser (``parse_request_head`` / ``parse_response_head`` + ``BodyReader``) must
accept the same bytes as exactly one whole message with the same facts; where they say
None the router takes the general path, so None is always safe. Hypothesis generates
valid heads and random byte mutations of them; the examples pin what must be None.
"""

from __future__ import annotations

import contextlib
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waylay.core.engine.http1_body import BodyReader
from waylay.core.engine.http1_framing import parse_request_head, parse_response_head
from waylay.core.engine.http1_simple import (
    SimpleRequest,
    SimpleResponse,
    simple_request,
    simple_response,
)
from waylay.core.engine.http1_syntax import MAX_HEADERS, HttpParseError

TCHAR = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
VCHAR = bytes(range(0x21, 0x7F))
OBS_TEXT = bytes(range(0x80, 0x100))
# Bytes a mutation writes: the ones that change framing most, and any byte at all.
INTERESTING = b"\r\n \t:,;\x00\x0b\x7f\x80\xffAaZz09-/"

tokens = st.text(alphabet=TCHAR, min_size=1, max_size=10).map(lambda s: s.encode())
ows = st.sampled_from([b"", b"", b" ", b"\t", b"  ", b" \t "])


@st.composite
def field_values(draw: st.DrawFn) -> bytes:
    """A field value without surrounding whitespace: VCHAR and obs-text, inner SP/HTAB."""
    ends = st.sampled_from(list(VCHAR[:40] + OBS_TEXT[:8]))
    inner = st.sampled_from(list(VCHAR + OBS_TEXT[:8] + b" \t"))
    if draw(st.integers(0, 5)) == 0:
        return b""
    middle = draw(st.lists(inner, max_size=12))
    if not middle and draw(st.booleans()):
        return bytes([draw(ends)])
    return bytes([draw(ends), *middle, draw(ends)])


def random_case(draw: st.DrawFn, name: bytes) -> bytes:
    """``name`` with each letter's case drawn at random."""
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return bytes(c ^ 0x20 if flip and chr(c).isalpha() else c
                 for c, flip in zip(name, flips, strict=True))


@st.composite
def connection_values(draw: st.DrawFn) -> bytes:
    """A Connection list: tokens that matter and some that do not, with OWS and commas."""
    items = draw(st.lists(st.sampled_from(
        [b"close", b"keep-alive", b"upgrade", b"te", b"foo", b"Close", b"KEEP-ALIVE", b""]),
        min_size=1, max_size=3))
    joined = b"".join(item + draw(ows) + b"," + draw(ows) for item in items[:-1]) + items[-1]
    return joined or b"foo"


@st.composite
def extra_fields(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    """Ordinary fields with random token names."""
    return draw(st.lists(st.tuples(tokens, field_values()), max_size=6))


def build(draw: st.DrawFn, first: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    """A CRLF head with random OWS around each value."""
    lines = [first + b"\r\n"]
    lines += [name + b":" + draw(ows) + value + draw(ows) + b"\r\n" for name, value in fields]
    return b"".join(lines) + b"\r\n"


def insert_randomly(draw: st.DrawFn, fields: list[tuple[bytes, bytes]],
                    extra: list[tuple[bytes, bytes]]) -> None:
    for item in extra:
        fields.insert(draw(st.integers(0, len(fields))), item)


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    """A valid request head (mostly); Host absent/present/duplicated, Connection tokens,
    and sometimes a field that gives it a body or a special meaning."""
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    method = draw(st.one_of(st.sampled_from([b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"POST",
                                             b"CONNECT"]), tokens))
    target = draw(st.one_of(
        st.sampled_from([b"/", b"/a?b=c", b"*", b"http://x/y", b"svc:443", b"/%41~!$&'()"]),
        st.lists(st.sampled_from(list(VCHAR)), min_size=1, max_size=20).map(bytes)))
    fields = draw(extra_fields())
    extra: list[tuple[bytes, bytes]] = []
    hosts = draw(st.sampled_from([0, 1, 1, 1, 2]))
    for _ in range(hosts):
        extra.append((random_case(draw, b"host"),
                      draw(st.sampled_from([b"a.example", b"b:8080", b"", b"[::1]:80"]))))
    if draw(st.booleans()):
        extra.append((random_case(draw, b"connection"), draw(connection_values())))
    special = draw(st.sampled_from([None, None, None, "content-length", "transfer-encoding",
                                    "expect", "upgrade"]))
    if special is not None:
        value = {"content-length": b"0", "transfer-encoding": b"chunked",
                 "expect": b"100-continue", "upgrade": b"websocket"}[special]
        extra.append((random_case(draw, special.encode()), value))
    insert_randomly(draw, fields, extra)
    return build(draw, method + b" " + target + b" HTTP/" + version, fields)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, str]:
    """A response (head and whatever body bytes follow) and the request method it answers."""
    method = draw(st.sampled_from(["GET", "GET", "POST", "HEAD", "CONNECT", "PUT"]))
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    usual = st.sampled_from([100, 101, 103, 200, 201, 204, 206, 301, 304, 404, 500])
    status = draw(st.one_of(usual, usual, usual, st.integers(100, 999)))
    reason = draw(st.sampled_from([b"", b"OK", b"Not Found", b"\xe9t\xe9 ok", b"a\tb"]))
    first = b"HTTP/%s %d" % (version, status)
    if reason or draw(st.booleans()):
        first += b" " + reason
    fields = draw(extra_fields())
    body = draw(st.binary(max_size=40))
    extra: list[tuple[bytes, bytes]] = []
    framing = draw(st.sampled_from(["length"] * 6 + ["none", "chunked", "both", "twice", "list",
                                                     "bad"]))
    n = b"%d" % len(body)
    if framing in ("length", "both"):
        extra.append((random_case(draw, b"content-length"),
                      draw(st.sampled_from([n, n, b"0" + n]))))
    if framing in ("chunked", "both"):
        extra.append((random_case(draw, b"transfer-encoding"), b"chunked"))
        if framing == "chunked" and draw(st.booleans()):
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    if framing == "twice":
        extra += [(b"Content-Length", n), (b"content-length", n)]
    if framing == "list":
        extra.append((b"Content-Length", n + b", " + n))
    if framing == "bad":
        extra.append((b"Content-Length", draw(st.sampled_from([b"+1", b"-1", b"0x10", b"1 2",
                                                               b"1" * 19, b""]))))
    if draw(st.booleans()):
        extra.append((random_case(draw, b"connection"), draw(connection_values())))
    insert_randomly(draw, fields, extra)
    head = build(draw, first, fields)
    # Mostly the exact body, sometimes a byte short or over (another message's start).
    tail = draw(st.sampled_from(["exact"] * 5 + ["short", "over", "none"]))
    if tail == "short":
        body = body[:-1]
    elif tail == "over":
        body += draw(st.sampled_from([b"H", b"HTTP/1.1 200 OK\r\n\r\n"]))
    elif tail == "none":
        body = b""
    return head + body, method


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few random bytes replaced, inserted or deleted."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        if not out:
            break
        pos = draw(st.integers(0, len(out) - 1))
        byte = draw(st.one_of(st.sampled_from(list(INTERESTING)), st.integers(0, 255)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        if op == "replace":
            out[pos] = byte
        elif op == "insert":
            out.insert(pos, byte)
        else:
            del out[pos]
    return bytes(out)


# --- the agreement, checked --------------------------------------------------------------


def text(value: bytes) -> str:
    return value.decode("latin-1")


def check_request(data: bytes, simple: SimpleRequest) -> None:
    """The general parser takes ``data`` as exactly one bodiless request with ``simple``'s facts."""
    buf = bytearray(data)
    head = parse_request_head(buf)
    assert head is not None, "the general parser wants more bytes"
    assert not buf, "the general parser left bytes: not one whole message"
    assert head.raw == data
    assert BodyReader(head.framing).done and head.framing.kind == "none"
    assert not head.expects_continue and not head.upgrade
    assert simple.method == text(head.method)
    assert simple.target == text(head.target)
    assert simple.version == text(head.version)
    assert simple.headers == tuple((text(n), text(v)) for n, v in head.headers)
    host = head.header(b"host")
    assert simple.host == (text(host) if host is not None else None)
    assert simple.keep_alive == head.keep_alive


def check_response(data: bytes, method: str, simple: SimpleResponse) -> None:
    """The general parser takes ``data`` as exactly one final response with ``simple``'s facts."""
    buf = bytearray(data)
    head = parse_response_head(buf, request_method=method.encode())
    assert head is not None, "the general parser wants more bytes"
    assert not head.informational
    body = BodyReader(head.framing)
    raw, decoded = body.read(buf)
    assert body.done, "the general parser wants more body"
    assert not buf, "the general parser left bytes: not one whole message"
    assert head.raw + raw == data
    assert simple.status == head.status
    assert simple.body_bytes == len(decoded) == len(raw)
    assert simple.keep_alive == head.keep_alive


def general_request_or_error(data: bytes) -> None:
    """Run the general parser; errors are allowed (the fast lane said None there)."""
    with contextlib.suppress(HttpParseError):
        parse_request_head(bytearray(data))


@settings(max_examples=600, deadline=None)
@given(request_heads())
def test_a_simple_request_is_what_the_general_parser_reads(data: bytes) -> None:
    """Generated request heads: every yes of simple_request is the general parser's reading."""
    simple = simple_request(data)
    if simple is not None:
        check_request(data, simple)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_requests_never_make_the_two_disagree(data: st.DataObject) -> None:
    """Randomly mutated heads: simple_request says None or exactly what the general parser reads."""
    wire = data.draw(mutations(data.draw(request_heads())))
    simple = simple_request(wire)
    if simple is not None:
        check_request(wire, simple)
    else:
        general_request_or_error(wire)


@settings(max_examples=600, deadline=None)
@given(responses())
def test_a_simple_response_is_what_the_general_parser_reads(case: tuple[bytes, str]) -> None:
    """Generated responses: every yes of simple_response is the general parser's reading."""
    data, method = case
    simple = simple_response(data, method)
    if simple is not None:
        check_response(data, method, simple)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_responses_never_make_the_two_disagree(data: st.DataObject) -> None:
    """Randomly mutated responses: simple_response says None or exactly the general reading."""
    wire, method = data.draw(responses())
    wire = data.draw(mutations(wire))
    simple = simple_response(wire, method)
    if simple is not None:
        check_response(wire, method, simple)


@st.composite
def plain_requests(draw: st.DrawFn) -> bytes:
    """A head the fast lane is for: bodiless, one Host, no Expect/Upgrade, CRLF lines."""
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    method = draw(st.sampled_from([b"GET", b"HEAD", b"DELETE", b"OPTIONS"]))
    fields = [(n, v) for n, v in draw(extra_fields())
              if n.lower() not in (b"host", b"content-length", b"transfer-encoding", b"expect",
                                   b"upgrade", b"connection")]
    extra = [(random_case(draw, b"host"), b"svc")]
    if draw(st.booleans()):
        extra.append((b"Connection", draw(connection_values())))
    insert_randomly(draw, fields, extra)
    return build(draw, method + b" /p?q=1 HTTP/" + version, fields)


@settings(max_examples=300, deadline=None)
@given(plain_requests())
def test_the_usual_request_takes_the_fast_lane(data: bytes) -> None:
    """An ordinary bodiless request head, arriving whole, is recognised (the lane is used)."""
    simple = simple_request(data)
    assert simple is not None
    check_request(data, simple)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"1.1", b"1.0"]), st.sampled_from([200, 201, 204, 304, 404, 500]),
       st.binary(max_size=64), st.sampled_from([None, b"close", b"keep-alive"]))
def test_the_usual_response_takes_the_fast_lane(version: bytes, status: int, body: bytes,
                                                 connection: bytes | None) -> None:
    """A final response with Content-Length, complete in one read, is recognised."""
    if status in (204, 304):
        body = b""
    head = b"HTTP/%s %d X\r\nContent-Length: %d\r\n" % (version, status, len(body))
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    data = head + b"Server: t\r\n\r\n" + body
    simple = simple_response(data, "GET")
    assert simple is not None
    check_response(data, "GET", simple)


# --- where the fast lane must stand aside --------------------------------------------------

GET = b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n"


@pytest.mark.parametrize("data", [
    GET + GET,  # pipelined: the general path orders them
    GET + b"G",
    GET[:-2],  # partial head
    GET[:-1],
    GET[:10],
    b"",
    b"\r\n" + GET,  # an empty line first: the general path drops it
    b"GET /a HTTP/1.1\nHost: svc\n\n",  # bare LF
    b"GET /a HTTP/1.1\r\nHost: svc\r\n  folded\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello",  # a body
    b"POST /a HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"PUT /a HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /a HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two Hosts
    b"GET /a HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n",
    b"GET /a HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\x00\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\rb\r\n\r\n",
    b"GET /a HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1) + b"Host: a\r\n\r\n",
])
def test_simple_request_says_none(data: bytes) -> None:
    """Pipelined or partial data, bodies, Expect, Upgrade, Host trouble, odd syntax: None."""
    assert simple_request(data) is None


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(("data", "method"), [
    (OK, "HEAD"),  # HEAD and CONNECT frame differently (RFC 9112 §6.3)
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", "HEAD"),
    (OK, "CONNECT"),
    (b"HTTP/1.1 200 OK\r\n\r\n", "CONNECT"),
    (b"HTTP/1.1 100 Continue\r\n\r\n", "GET"),  # 1xx: another head follows
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", "GET"),
    (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", "GET"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" + OK, "GET"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "GET"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", "GET"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", "GET"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok", "GET"),
    (OK + b"x", "GET"),  # trailing bytes after the body
    (OK + OK, "GET"),
    (OK[:-1], "GET"),  # the body not all there yet
    (OK[:20], "GET"),
    (b"HTTP/1.1 200 OK\r\n\r\nbody until close", "GET"),  # close-delimited
    (b"HTTP/1.1 200 OK\r\n\r\n", "GET"),
    (b"HTTP/1.1 204 No Content\r\n\r\nx", "GET"),  # bytes after a bodiless answer
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\nok", "GET"),
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "GET"),  # bare LF
    (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", "GET"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 19 + b"\r\n\r\nok", "GET"),
    (b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\nok", "GET"),
    (b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok", "GET"),
])
def test_simple_response_says_none(data: bytes, method: str) -> None:
    """HEAD/CONNECT answers, 1xx, chunked, repeated lengths, trailing or missing bytes: None."""
    assert simple_response(data, method) is None


@pytest.mark.parametrize(("data", "facts"), [
    (OK, SimpleResponse(200, 2, True)),
    (b"HTTP/1.1 204 No Content\r\n\r\n", SimpleResponse(204, 0, True)),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", SimpleResponse(304, 0, True)),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", SimpleResponse(200, 2, False)),
    (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok",
     SimpleResponse(200, 2, True)),
    (b"HTTP/1.1 404 Not Found\r\nConnection: foo, close\r\nContent-Length: 0\r\n\r\n",
     SimpleResponse(404, 0, False)),
    (b"HTTP/1.1 200\r\ncontent-length:  2 \r\n\r\nok", SimpleResponse(200, 2, True)),
])
def test_simple_response_facts(data: bytes, facts: SimpleResponse) -> None:
    """Known responses give the status, body length and persistence the general parser does."""
    assert simple_response(data, "GET") == facts
    check_response(data, "GET", facts)


@pytest.mark.parametrize(("data", "facts"), [
    (GET, SimpleRequest("GET", "/a", "1.1", (("Host", "svc"),), "svc", True)),
    (b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
     SimpleRequest("GET", "/a", "1.0", (("Connection", "keep-alive"),), None, True)),
    (b"GET /a HTTP/1.0\r\n\r\n", SimpleRequest("GET", "/a", "1.0", (), None, False)),
    (b"GET /a HTTP/1.1\r\nHost:  svc \t\r\nX-A: \t b c \r\n\r\n",
     SimpleRequest("GET", "/a", "1.1", (("Host", "svc"), ("X-A", "b c")), "svc", True)),
    (b"GET /a HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, Close\r\n\r\n",
     SimpleRequest("GET", "/a", "1.1", (("Host", "svc"), ("Connection", "keep-alive, Close")),
                   "svc", False)),
    (b"get * HTTP/1.1\r\nhOsT: \xe9\r\n\r\n",
     SimpleRequest("get", "*", "1.1", (("hOsT", "\xe9"),), "\xe9", True)),
])
def test_simple_request_facts(data: bytes, facts: SimpleRequest) -> None:
    """Known request heads give the facts the general parser does."""
    assert simple_request(data) == facts
    check_request(data, facts)
