"""Strict, minimal HTTP/1.1 message framing for the agent's hot path (sans-I/O).

Theory of operation
-------------------
The agent routes each request whole to one side and forwards the bytes it was sent, so it
needs to know where messages begin and end, not to rebuild them. This module finds those
boundaries (RFC 9112) and hands back the exact bytes consumed, to forward verbatim:

* ``parse_request_head`` / ``parse_response_head`` take a head off the front of a receive
  buffer once its final empty line has arrived, and say how the body is delimited
  (``Framing``, RFC 9112 §6.3) and whether the connection persists (§9.3).
* ``BodyReader`` (``waylay.core.engine.http1_body``) consumes that body as it arrives, in
  any split, returning the raw bytes and the payload (chunk framing removed); bytes past
  the body's end stay in the buffer for the next pipelined message.
* ``response_head_bytes`` here, ``chunk`` and ``LAST_CHUNK`` there, write what the agent
  itself sends.

The limits, byte classes, field sections and the fast grammar of the usual head are
``waylay.core.engine.http1_syntax``, shared by both. The head parsers hold no state between
calls (only a bounded memo of field names already validated); ``BodyReader`` is the only
state machine (for chunked bodies ``ChunkState``: ``SIZE -> DATA -> DATA_END -> SIZE ...
-> TRAILER -> DONE``).

Strictness follows h11 where leniency would let two parsers disagree about where a
message ends (request smuggling, RFC 9112 §11.2): a forwarded message is one that both
this parser and the next hop frame the same way, or one that is refused. Every refusal
is an ``HttpParseError`` carrying the status to answer with: for request heads and
bodies the status for the client (400, 431, 505); for response heads 502, the status a
proxy answers downstream when the upstream's response is malformed (RFC 9110 §15.6.3).
After any ``HttpParseError`` the connection's framing is lost: close it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from waylay.core.engine.http1_syntax import (
    BAD_GATEWAY,
    FAST_REQUEST,
    FAST_RESPONSE,
    FAST_RESPONSE_TRACKED,
    FIELD_CHARS,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    OWS,
    TCHAR,
    VCHAR,
    HttpParseError,
    bad_gateway,
    fast_fields,
    fast_tracked,
    learn_token,
    list_tokens,
    parse_content_length,
    parse_fields,
    parse_transfer_codings,
    strip_cr,
    token_memo,
)

__all__ = [
    "CHUNKED",
    "NO_BODY",
    "UNTIL_CLOSE",
    "Framing",
    "RequestHead",
    "ResponseHead",
    "length",
    "parse_request_head",
    "parse_response_head",
    "response_head_bytes",
]


# How much of a method an incomplete head has checked on each call: enough to refuse
# garbage at once, little enough that a peer sending a huge "method" costs nothing per call.
_METHOD_PREFIX: Final = 64


FramingKind = Literal["none", "length", "chunked", "close"]


@dataclass(frozen=True, slots=True)
class Framing:
    """How a message body is delimited (RFC 9112 §6.3); ``length`` is set for "length"."""

    kind: FramingKind
    length: int = 0


NO_BODY: Final = Framing("none")
CHUNKED: Final = Framing("chunked")
UNTIL_CLOSE: Final = Framing("close")


_SET_KIND: Final = vars(Framing)["kind"].__set__
_SET_LENGTH: Final = vars(Framing)["length"].__set__


def length(n: int) -> Framing:
    """A body of exactly ``n`` bytes (Content-Length)."""
    if n < 0:
        raise ValueError(f"a body length cannot be negative: {n}")
    # Framing(...) would cost 0.5 us (see _request_head below); this builds the same.
    framing = object.__new__(Framing)
    _SET_KIND(framing, "length")
    _SET_LENGTH(framing, n)
    return framing


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request head. ``raw`` is its exact bytes, to forward verbatim.

    ``headers`` keep names as received and values with surrounding whitespace removed.
    Empty lines received before the request line (RFC 9112 §2.2) are not part of ``raw``.
    """

    method: bytes
    target: bytes
    version: bytes  # b"1.1" or b"1.0"
    headers: list[tuple[bytes, bytes]]
    raw: bytes
    framing: Framing
    keep_alive: bool
    expects_continue: bool
    upgrade: bool

    def header(self, name: bytes) -> bytes | None:
        """The first value of field ``name`` (given in lower case), or None."""
        return _first(self.headers, name)


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed response head. ``raw`` is its exact bytes, to forward verbatim.

    A passed response is forwarded, not read: its fields are parsed out of ``raw`` only
    when asked for (``headers``), which on the agent's hot path is never.
    """

    status: int
    reason: bytes
    version: bytes  # b"1.1" or b"1.0"
    raw: bytes
    framing: Framing
    keep_alive: bool

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The field lines: names as received, values without surrounding whitespace."""
        return parse_fields(self.raw, self.raw.find(b"\n") + 1, BAD_GATEWAY, BAD_GATEWAY)[0]

    @property
    def informational(self) -> bool:
        """1xx: another head follows (except after 101, where the protocol switches)."""
        return self.status < 200

    def header(self, name: bytes) -> bytes | None:
        """The first value of field ``name`` (given in lower case), or None."""
        return _first(self.headers, name)


def _first(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for field, value in headers:
        if field.lower() == name:
            return value
    return None


# The generated __init__ of a frozen dataclass sets each field through
# object.__setattr__ (~1 us for a RequestHead, a fifth of the parse); the parser instead
# fills the slots through their descriptors, which is what that __init__ amounts to.
_REQUEST_SLOTS: Final = tuple(getattr(RequestHead, f).__set__ for f in RequestHead.__slots__)
_RESPONSE_SLOTS: Final = tuple(getattr(ResponseHead, f).__set__ for f in ResponseHead.__slots__)
# The setters below rely on this order.
assert RequestHead.__slots__ == tuple(RequestHead.__dataclass_fields__)
assert ResponseHead.__slots__ == tuple(ResponseHead.__dataclass_fields__)


def _request_head(
    method: bytes,
    target: bytes,
    version: bytes,
    headers: list[tuple[bytes, bytes]],
    raw: bytes,
    framing: Framing,
    keep_alive: bool,
    expects_continue: bool,
    upgrade: bool,
) -> RequestHead:
    head = object.__new__(RequestHead)
    s = _REQUEST_SLOTS
    s[0](head, method)
    s[1](head, target)
    s[2](head, version)
    s[3](head, headers)
    s[4](head, raw)
    s[5](head, framing)
    s[6](head, keep_alive)
    s[7](head, expects_continue)
    s[8](head, upgrade)
    return head


def _response_head(
    status: int,
    reason: bytes,
    version: bytes,
    raw: bytes,
    framing: Framing,
    keep_alive: bool,
) -> ResponseHead:
    head = object.__new__(ResponseHead)
    s = _RESPONSE_SLOTS
    s[0](head, status)
    s[1](head, reason)
    s[2](head, version)
    s[3](head, raw)
    s[4](head, framing)
    s[5](head, keep_alive)
    return head


# --- heads -------------------------------------------------------------------------------


def parse_request_head(buf: bytearray) -> RequestHead | None:
    """Take a complete request head off the front of ``buf``; None while it is incomplete.

    Empty lines before the request line are dropped from ``buf`` (RFC 9112 §2.2). On
    success the head's bytes are removed from ``buf`` and nothing else is. Raises
    HttpParseError as soon as the bytes so far cannot start a valid head, with the error
    the whole head would get, so the outcome is the same however the input is split.

    Holding no state, each call rescans ``buf`` (up to MAX_HEAD_BYTES, ~100 us at worst).
    A head can only complete when an LF arrives, so call again only when the bytes just
    received contain b"\n" (or ``buf`` was empty before them, for early refusal of
    garbage): a peer trickling a large head byte by byte then costs at most
    MAX_HEADERS + 2 calls per head instead of one per byte.
    """
    if buf and buf[0] in b"\r\n":
        _skip_empty_lines(buf)
    if not buf or buf == b"\r":  # nothing yet, or maybe half of an empty line
        return None
    end = _head_end(buf)
    if end < 0:
        _check_partial_request(buf)
        return None
    raw = bytes(buf) if end == len(buf) else bytes(buf[:end])
    head = _parse_request(raw)
    del buf[:end]
    return head


def parse_response_head(buf: bytearray, *, request_method: bytes) -> ResponseHead | None:
    """Take a complete response head off the front of ``buf``; None while it is incomplete.

    ``request_method`` is the method of the request this answers: it decides the framing
    of HEAD and CONNECT responses (RFC 9112 §6.3). Errors carry status_hint 502.
    """
    end = _head_end(buf)
    if end < 0:
        prefix = bytes(buf[:5])
        if not b"HTTP/".startswith(prefix):
            raise bad_gateway(f"not an HTTP/1.x status line: {prefix!r}...")
        _check_field_count(buf.count(b"\n", 0, MAX_HEAD_BYTES) - 1, BAD_GATEWAY)
        if len(buf) > MAX_HEAD_BYTES:
            raise bad_gateway(f"response head larger than {MAX_HEAD_BYTES} bytes")
        return None
    raw = bytes(buf) if end == len(buf) else bytes(buf[:end])
    head = _parse_response(raw, request_method)
    del buf[:end]
    return head


def _skip_empty_lines(buf: bytearray) -> None:
    """Drop leading empty lines (CRLF or LF)."""
    i, n = 0, len(buf)
    while i < n:
        if buf[i] == 0x0A:
            i += 1
        elif buf[i] == 0x0D and i + 1 < n and buf[i + 1] == 0x0A:
            i += 2
        else:
            break
    del buf[:i]


def _head_end(buf: bytearray) -> int:
    """Index just past the first empty line (LF, optional CR, LF), or -1 if there is
    none within MAX_HEAD_BYTES (so a long buffer is never scanned past the limit)."""
    i = buf.find(b"\n\r\n", 0, MAX_HEAD_BYTES)
    if i >= 0:
        j = buf.find(b"\n\n", 0, i + 1)
        return j + 2 if j >= 0 else i + 3
    j = buf.find(b"\n\n", 0, MAX_HEAD_BYTES)
    return j + 2 if j >= 0 else -1


def _check_partial_request(buf: bytearray) -> None:
    """Refuse an incomplete head early, with the error the complete one would get.

    Each check here is one the complete head gets first, in the same order, so refusing
    early never changes the outcome, only when it is known.
    """
    lf = buf.find(b"\n")
    if lf >= 0:
        _parse_request_line(strip_cr(bytes(buf[:lf])), lf)
        _check_field_count(buf.count(b"\n", 0, MAX_HEAD_BYTES) - 1, 431)
    else:
        # The method so far (a prefix is enough to refuse, and bounds the work per call).
        sp = buf.find(b" ", 0, _METHOD_PREFIX)
        method = bytes(buf[:sp]) if sp >= 0 else strip_cr(bytes(buf[:_METHOD_PREFIX]))
        if learn_token(method) is None:
            raise _bad_method(method)
        if len(buf) > MAX_HEAD_BYTES:
            raise HttpParseError(f"request line longer than {MAX_HEAD_BYTES} bytes", 431)
    if len(buf) > MAX_HEAD_BYTES:
        raise HttpParseError(f"request head larger than {MAX_HEAD_BYTES} bytes", 431)


def _check_field_count(lines: int, status: int) -> None:
    if lines > MAX_HEADERS:
        raise HttpParseError(f"more than {MAX_HEADERS} header fields", status)



def _bad_method(method: bytes) -> HttpParseError:
    return HttpParseError(f"invalid method {method[:32]!r}: not a token (RFC 9112 §3.1)")


def _parse_request_line(line: bytes, lf: int) -> tuple[bytes, bytes, bytes]:
    """Method, target, version of ``line`` (its line ending removed; ``lf`` its LF index)."""
    parts = line.split(b" ")
    method = parts[0]
    if method not in token_memo and learn_token(method) is None:
        raise _bad_method(method)
    if lf > MAX_HEAD_BYTES:
        raise HttpParseError(f"request line longer than {MAX_HEAD_BYTES} bytes", 431)
    if len(parts) != 3:
        raise HttpParseError(
            f"malformed request line {line[:64]!r}: want method SP target SP version (RFC 9112 §3)"
        )
    target, version = parts[1], parts[2]
    if not target or target.translate(None, VCHAR):
        raise HttpParseError(f"invalid request target {target[:64]!r} (RFC 9112 §3.2)")
    if version == b"HTTP/1.1":
        return method, target, b"1.1"
    if version == b"HTTP/1.0":
        return method, target, b"1.0"
    number = version[5:]
    if version.startswith(b"HTTP/") and (
        (len(number) == 1 and number.isdigit())
        or (len(number) == 3 and number[1:2] == b"." and number.replace(b".", b"").isdigit())
    ):
        raise HttpParseError(f"HTTP version {number!r} not supported", 505)
    raise HttpParseError(f"invalid HTTP version {version[:32]!r} (RFC 9112 §2.3)")


def _parse_request(raw: bytes) -> RequestHead:
    fast = FAST_REQUEST.fullmatch(raw)
    if fast is not None and raw.count(b"\n") <= MAX_HEADERS + 1:
        # The usual head (CRLF lines, token names, no obs-fold, no CTLs): the fields come
        # from one C-level scan. Same result as the general path below (tested).
        method, target, minor = fast.groups()
        if method in token_memo or learn_token(method) is not None:
            headers = fast_fields(raw, fast.end(1))
            return _request_from_fields(method, target, b"1.1" if minor == b"1" else b"1.0",
                                        headers, fast_tracked(headers), raw)
    lf = raw.find(b"\n")
    method, target, version = _parse_request_line(strip_cr(raw[:lf]), lf)
    headers, tracked = parse_fields(raw, lf + 1, 400, 431)
    return _request_from_fields(method, target, version, headers, tracked, raw)


def _request_from_fields(method: bytes, target: bytes, version: bytes,
                         headers: list[tuple[bytes, bytes]],
                         tracked: list[tuple[bytes, bytes]], raw: bytes) -> RequestHead:
    """The request head's framing and persistence (RFC 9112 §6.3, §9.3) from its fields."""
    hosts = 0
    connection = expect = b""
    has_upgrade = has_length = has_coding = False
    for name, value in tracked:
        if name == b"host":
            hosts += 1
        elif name == b"connection":
            connection = connection + b"," + value if connection else value
        elif name == b"content-length":
            has_length = True
        elif name == b"transfer-encoding":
            has_coding = True
        elif name == b"expect":
            expect = expect + b"," + value if expect else value
        else:
            has_upgrade = True
    if hosts != 1 and (hosts or version == b"1.1"):
        raise HttpParseError(
            "more than one Host header (RFC 9112 §3.2)"
            if hosts
            else "HTTP/1.1 request without a Host header (RFC 9112 §3.2)"
        )

    framing = NO_BODY
    if has_length or has_coding:
        content_length = parse_content_length(tracked, 400) if has_length else None
        if has_coding:
            if content_length is not None:
                # Request smuggling defence (RFC 9112 §6.1, §11.2): the next hop might
                # frame the body by Content-Length while we frame it as chunked.
                raise HttpParseError(
                    "both Transfer-Encoding and Content-Length: refusing an ambiguous "
                    "message length (RFC 9112 §6.1)"
                )
            if version == b"1.0":
                raise HttpParseError("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1)")
            codings = parse_transfer_codings(tracked, 400)
            if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
                raise HttpParseError(
                    "Transfer-Encoding must end with chunked, applied once (RFC 9112 §6.3)"
                )
            framing = CHUNKED
        elif content_length is not None:
            framing = length(content_length)

    tokens = list_tokens(connection) if connection else ()
    if version == b"1.1":
        keep_alive = b"close" not in tokens
        # Expect and Upgrade are HTTP/1.1 features, ignored in HTTP/1.0 (RFC 9110
        # §10.1.1, §7.8).
        expects_continue = bool(expect) and b"100-continue" in list_tokens(expect)
        upgrade = has_upgrade and b"upgrade" in tokens
    else:
        keep_alive = b"keep-alive" in tokens and b"close" not in tokens
        expects_continue = upgrade = False
    return _request_head(
        method, target, version, headers, raw, framing, keep_alive, expects_continue, upgrade
    )


def _parse_response(raw: bytes, request_method: bytes) -> ResponseHead:
    fast = FAST_RESPONSE.fullmatch(raw)
    if fast is not None and raw.count(b"\n") <= MAX_HEADERS + 1:
        # See _parse_request: the usual head, fields from one C-level scan.
        minor, digits, reason = fast.groups()
        tracked = [(name.lower(), value.rstrip(OWS))
                   for name, value in FAST_RESPONSE_TRACKED.findall(raw)]
        return _response_from_fields(int(digits), reason or b"",
                                     b"1.1" if minor == b"1" else b"1.0", tracked, raw,
                                     request_method)
    lf = raw.find(b"\n")
    line = strip_cr(raw[:lf])
    version = line[5:8]
    if line[:5] != b"HTTP/":
        raise bad_gateway(f"not an HTTP/1.x status line: {line[:32]!r}")
    if version != b"1.1" and version != b"1.0":
        raise bad_gateway(f"unsupported HTTP version in status line {line[:32]!r}")
    digits = line[9:12]
    if (
        line[8:9] != b" "
        or not digits.isdigit()
        or len(digits) != 3
        or digits[0] == 0x30  # "0xx" is below 100
        or line[12:13] not in (b"", b" ")
    ):
        raise bad_gateway(f"malformed status line {line[:64]!r} (RFC 9112 §4)")
    status = int(digits)
    reason = line[13:]
    if reason and reason.translate(None, FIELD_CHARS):
        raise bad_gateway(f"invalid character in reason phrase {reason[:64]!r}")
    tracked = parse_fields(raw, lf + 1, BAD_GATEWAY, BAD_GATEWAY)[1]
    return _response_from_fields(status, reason, version, tracked, raw, request_method)


def _response_from_fields(status: int, reason: bytes, version: bytes,
                          tracked: list[tuple[bytes, bytes]], raw: bytes,
                          request_method: bytes) -> ResponseHead:
    """The response head's framing and persistence (RFC 9112 §6.3, §9.3) from its fields."""
    connection = b""
    has_length = has_coding = False
    for name, value in tracked:
        if name == b"connection":
            connection = connection + b"," + value if connection else value
        elif name == b"content-length":
            has_length = True
        elif name == b"transfer-encoding":
            has_coding = True
    content_length = parse_content_length(tracked, BAD_GATEWAY) if has_length else None
    codings = parse_transfer_codings(tracked, BAD_GATEWAY) if has_coding else None
    if codings is not None and content_length is not None:
        # We forward the bytes as received, so we cannot drop Content-Length as an
        # intermediary must before forwarding such a message (RFC 9112 §6.3 item 3).
        raise bad_gateway("both Transfer-Encoding and Content-Length (RFC 9112 §6.3)")
    if (
        status < 200
        or status in (204, 304)
        or request_method == b"HEAD"
        or (request_method == b"CONNECT" and status < 300)  # a tunnel from here on
    ):
        framing = NO_BODY
    elif codings is not None:
        if codings.count(b"chunked") > 1:
            raise bad_gateway("chunked applied more than once (RFC 9112 §6.1)")
        chunked = codings[-1] == b"chunked" and version == b"1.1"
        # Not chunked last, or HTTP/1.0 (faulty framing, §6.1): read until close (§6.3).
        framing = CHUNKED if chunked else UNTIL_CLOSE
    elif content_length is not None:
        framing = length(content_length)
    else:
        framing = UNTIL_CLOSE
    tokens = list_tokens(connection) if connection else ()
    if framing is UNTIL_CLOSE or b"close" in tokens:
        keep_alive = False
    else:
        keep_alive = version == b"1.1" or b"keep-alive" in tokens
    return _response_head(status, reason, version, raw, framing, keep_alive)




# --- writing -----------------------------------------------------------------------------

def response_head_bytes(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """An HTTP/1.1 response head, through its empty line.

    Raises HttpParseError (502) rather than write a head that would split or smuggle: a
    status outside 100-999, a name that is not a token, CR/LF/NUL or another CTL in a
    value or the reason. The caller writes the framing headers it needs.
    """
    if not 100 <= status <= 999:
        raise HttpParseError(f"cannot send status {status}", BAD_GATEWAY)
    if reason.translate(None, FIELD_CHARS):
        raise HttpParseError(f"cannot send reason phrase {reason[:64]!r}", BAD_GATEWAY)
    names = [name for name, _ in headers]
    # Every name and every value checked in one C-level pass each; the loop below only
    # runs to name the culprit.
    if (not all(names) or b"".join(names).translate(None, TCHAR)
            or b"".join([value for _, value in headers]).translate(None, FIELD_CHARS)):
        for name, value in headers:
            if not name or name.translate(None, TCHAR) or value.translate(None, FIELD_CHARS):
                raise HttpParseError(f"cannot send header {name[:64]!r}", BAD_GATEWAY)
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    parts += [b"%s: %s\r\n" % pair for pair in headers]
    parts.append(b"\r\n")
    return b"".join(parts)
