"""Strict, minimal HTTP/1.1 message framing for the agent's hot path (sans-I/O).

Theory of operation
-------------------
The agent routes each request whole to one side and forwards the bytes it was sent, so it
needs to know where messages begin and end, not to rebuild them. This module finds those
boundaries (RFC 9112) and hands back the exact bytes consumed, to forward verbatim:

* ``parse_request_head`` / ``parse_response_head`` take a head off the front of a receive
  buffer once its final empty line has arrived, and say how the body is delimited
  (``Framing``, RFC 9112 §6.3) and whether the connection persists (§9.3).
* ``BodyReader`` consumes that body as it arrives, in any split, returning the raw bytes
  and the payload (chunk framing removed); bytes past the body's end stay in the buffer
  for the next pipelined message.
* ``response_head_bytes``, ``chunk`` and ``LAST_CHUNK`` write what the agent itself sends.

The head parsers hold no state between calls (only a bounded memo of field names already
validated); ``BodyReader`` is the only state machine (for chunked bodies
``ChunkState``: ``SIZE -> DATA -> DATA_END -> SIZE ... -> TRAILER -> DONE``).

Strictness follows h11 where leniency would let two parsers disagree about where a
message ends (request smuggling, RFC 9112 §11.2): a forwarded message is one that both
this parser and the next hop frame the same way, or one that is refused. Every refusal
is an ``HttpParseError`` carrying the status to answer with: for request heads and
bodies the status for the client (400, 431, 505); for response heads 502, the status a
proxy answers downstream when the upstream's response is malformed (RFC 9110 §15.6.3).
After any ``HttpParseError`` the connection's framing is lost: close it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal, assert_never

__all__ = [
    "CHUNKED",
    "LAST_CHUNK",
    "MAX_CHUNK_LINE_BYTES",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "NO_BODY",
    "UNTIL_CLOSE",
    "BodyReader",
    "ChunkState",
    "Framing",
    "HttpParseError",
    "RequestHead",
    "ResponseHead",
    "chunk",
    "length",
    "parse_request_head",
    "parse_response_head",
    "response_head_bytes",
]

# A head (request or status line, fields, empty line) larger than this is refused with 431
# before its end arrives: it bounds what a peer can make us buffer and rescan. Trailer
# sections share the bound.
MAX_HEAD_BYTES: Final = 64 * 1024
# More field lines than this is refused with 431: each costs a tuple and a few lookups.
MAX_HEADERS: Final = 256
# A chunk-size line (size and extensions) longer than this is refused: extensions are
# ignored, so a long one is only a way to make us buffer.
MAX_CHUNK_LINE_BYTES: Final = 4096
# Content-Length digits: 18 keeps the value below 2**63 (what the next hop can hold).
_MAX_LENGTH_DIGITS: Final = 18
# Chunk-size hex digits: 16 is 64 bits.
_MAX_CHUNK_SIZE_DIGITS: Final = 16
# How much of a method an incomplete head has checked on each call: enough to refuse
# garbage at once, little enough that a peer sending a huge "method" costs nothing per call.
_METHOD_PREFIX: Final = 64

_BAD_GATEWAY: Final = 502

# Byte classes (RFC 9110 §5.6.2 tchar, §5.5 field-vchar, RFC 5234 VCHAR/HEXDIG), used with
# bytes.translate(None, allowed): the result is empty exactly when every byte is allowed.
_TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VCHAR: Final = bytes(range(0x21, 0x7F))
# Field values, reason phrases and chunk extensions: HTAB, SP, VCHAR, obs-text. No CTLs:
# NUL, CR and LF must be refused (RFC 9110 §5.5); the other CTLs are refused too, as h11
# does for most of them, since nothing legitimate sends them.
_FIELD_CHARS: Final = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_HEAD_CHARS: Final = _FIELD_CHARS + b"\r\n"
_HEXDIG: Final = b"0123456789abcdefABCDEF"
_OWS: Final = b" \t"


class HttpParseError(Exception):
    """The peer sent bytes that are not a valid HTTP/1.1 message: its fault, not ours.

    ``status_hint`` is the status to answer with (see the module docstring).
    """

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_hint = status_hint


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
        return _parse_fields(self.raw, self.raw.find(b"\n") + 1, _BAD_GATEWAY, _BAD_GATEWAY)[0]

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


# Tokens (field names, methods) already validated, mapped to their lower-case form. Real
# traffic repeats a few dozen names, so checking and lower-casing each once saves a third
# of field parsing. Cleared when full, so a peer sending junk names cannot grow it.
_TOKEN_MEMO_SIZE: Final = 1024
_token_memo: dict[bytes, bytes] = {}


def _learn_token(token: bytes) -> bytes | None:
    """``token`` lower-cased if it is a token (RFC 9110 §5.6.2), else None."""
    if not token or token.translate(None, _TCHAR):
        return None
    if len(_token_memo) >= _TOKEN_MEMO_SIZE:
        _token_memo.clear()
    lower = _token_memo[token] = token.lower()
    return lower


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
            raise _bad_gateway(f"not an HTTP/1.x status line: {prefix!r}...")
        _check_field_count(buf.count(b"\n", 0, MAX_HEAD_BYTES) - 1, _BAD_GATEWAY)
        if len(buf) > MAX_HEAD_BYTES:
            raise _bad_gateway(f"response head larger than {MAX_HEAD_BYTES} bytes")
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
        _parse_request_line(_strip_cr(bytes(buf[:lf])), lf)
        _check_field_count(buf.count(b"\n", 0, MAX_HEAD_BYTES) - 1, 431)
    else:
        # The method so far (a prefix is enough to refuse, and bounds the work per call).
        sp = buf.find(b" ", 0, _METHOD_PREFIX)
        method = bytes(buf[:sp]) if sp >= 0 else _strip_cr(bytes(buf[:_METHOD_PREFIX]))
        if _learn_token(method) is None:
            raise _bad_method(method)
        if len(buf) > MAX_HEAD_BYTES:
            raise HttpParseError(f"request line longer than {MAX_HEAD_BYTES} bytes", 431)
    if len(buf) > MAX_HEAD_BYTES:
        raise HttpParseError(f"request head larger than {MAX_HEAD_BYTES} bytes", 431)


def _check_field_count(lines: int, status: int) -> None:
    if lines > MAX_HEADERS:
        raise HttpParseError(f"more than {MAX_HEADERS} header fields", status)


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


def _bad_method(method: bytes) -> HttpParseError:
    return HttpParseError(f"invalid method {method[:32]!r}: not a token (RFC 9112 §3.1)")


def _parse_request_line(line: bytes, lf: int) -> tuple[bytes, bytes, bytes]:
    """Method, target, version of ``line`` (its line ending removed; ``lf`` its LF index)."""
    parts = line.split(b" ")
    method = parts[0]
    if method not in _token_memo and _learn_token(method) is None:
        raise _bad_method(method)
    if lf > MAX_HEAD_BYTES:
        raise HttpParseError(f"request line longer than {MAX_HEAD_BYTES} bytes", 431)
    if len(parts) != 3:
        raise HttpParseError(
            f"malformed request line {line[:64]!r}: want method SP target SP version (RFC 9112 §3)"
        )
    target, version = parts[1], parts[2]
    if not target or target.translate(None, _VCHAR):
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
        if method in _token_memo or _learn_token(method) is not None:
            headers = _fields(raw, fast.end(1))
            return _request_from_fields(method, target, b"1.1" if minor == b"1" else b"1.0",
                                        headers, _tracked(headers), raw)
    lf = raw.find(b"\n")
    method, target, version = _parse_request_line(_strip_cr(raw[:lf]), lf)
    headers, tracked = _parse_fields(raw, lf + 1, 400, 431)
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
        content_length = _content_length(tracked, 400) if has_length else None
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
            codings = _transfer_codings(tracked, 400)
            if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
                raise HttpParseError(
                    "Transfer-Encoding must end with chunked, applied once (RFC 9112 §6.3)"
                )
            framing = CHUNKED
        elif content_length is not None:
            framing = length(content_length)

    tokens = _tokens(connection) if connection else ()
    if version == b"1.1":
        keep_alive = b"close" not in tokens
        # Expect and Upgrade are HTTP/1.1 features, ignored in HTTP/1.0 (RFC 9110
        # §10.1.1, §7.8).
        expects_continue = bool(expect) and b"100-continue" in _tokens(expect)
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
        tracked = [(name.lower(), value.rstrip(_OWS))
                   for name, value in FAST_RESPONSE_TRACKED.findall(raw)]
        return _response_from_fields(int(digits), reason or b"",
                                     b"1.1" if minor == b"1" else b"1.0", tracked, raw,
                                     request_method)
    lf = raw.find(b"\n")
    line = _strip_cr(raw[:lf])
    version = line[5:8]
    if line[:5] != b"HTTP/":
        raise _bad_gateway(f"not an HTTP/1.x status line: {line[:32]!r}")
    if version != b"1.1" and version != b"1.0":
        raise _bad_gateway(f"unsupported HTTP version in status line {line[:32]!r}")
    digits = line[9:12]
    if (
        line[8:9] != b" "
        or not digits.isdigit()
        or len(digits) != 3
        or digits[0] == 0x30  # "0xx" is below 100
        or line[12:13] not in (b"", b" ")
    ):
        raise _bad_gateway(f"malformed status line {line[:64]!r} (RFC 9112 §4)")
    status = int(digits)
    reason = line[13:]
    if reason and reason.translate(None, _FIELD_CHARS):
        raise _bad_gateway(f"invalid character in reason phrase {reason[:64]!r}")
    tracked = _parse_fields(raw, lf + 1, _BAD_GATEWAY, _BAD_GATEWAY)[1]
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
    content_length = _content_length(tracked, _BAD_GATEWAY) if has_length else None
    codings = _transfer_codings(tracked, _BAD_GATEWAY) if has_coding else None
    if codings is not None and content_length is not None:
        # We forward the bytes as received, so we cannot drop Content-Length as an
        # intermediary must before forwarding such a message (RFC 9112 §6.3 item 3).
        raise _bad_gateway("both Transfer-Encoding and Content-Length (RFC 9112 §6.3)")
    if (
        status < 200
        or status in (204, 304)
        or request_method == b"HEAD"
        or (request_method == b"CONNECT" and status < 300)  # a tunnel from here on
    ):
        framing = NO_BODY
    elif codings is not None:
        if codings.count(b"chunked") > 1:
            raise _bad_gateway("chunked applied more than once (RFC 9112 §6.1)")
        chunked = codings[-1] == b"chunked" and version == b"1.1"
        # Not chunked last, or HTTP/1.0 (faulty framing, §6.1): read until close (§6.3).
        framing = CHUNKED if chunked else UNTIL_CLOSE
    elif content_length is not None:
        framing = length(content_length)
    else:
        framing = UNTIL_CLOSE
    tokens = _tokens(connection) if connection else ()
    if framing is UNTIL_CLOSE or b"close" in tokens:
        keep_alive = False
    else:
        keep_alive = version == b"1.1" or b"keep-alive" in tokens
    return _response_head(status, reason, version, raw, framing, keep_alive)


def _bad_gateway(message: str) -> HttpParseError:
    return HttpParseError(f"upstream response: {message}", _BAD_GATEWAY)


# Fields that decide framing, persistence or routing; collected lower-cased while parsing.
_TRACKED: Final = frozenset(
    [b"content-length", b"transfer-encoding", b"connection", b"host", b"expect", b"upgrade"]
)

# The fast path's grammar: a head whose every line ends in CRLF, whose field names are
# tokens and whose values hold only HTAB, SP, VCHAR and obs-text (RFC 9110 §5.5, RFC 9112
# §5). Anything else (bare LF, obs-fold, a CTL, a bad name) takes the general path, which
# knows the exact error; a head the fast grammar accepts, the general path accepts too,
# with the same result (tests/core/test_http1_framing.py checks both ways).
TOKEN_PATTERN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELDS_RE: Final = rb"(?:" + TOKEN_PATTERN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
FAST_REQUEST: Final = re.compile(
    rb"(" + TOKEN_PATTERN + rb") ([!-~]+) HTTP/1\.([01])\r\n" + _FIELDS_RE)
FAST_RESPONSE: Final = re.compile(
    rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?\r\n" + _FIELDS_RE)
# One field line of a head the grammar above accepted: name, and value without leading
# OWS (trailing OWS, rare, is taken off by _fields).
_FAST_FIELD: Final = re.compile(rb"\n(" + TOKEN_PATTERN + rb"):[ \t]*([^\r]*)")


# The fields a response's framing depends on, in a head the fast grammar accepted.
FAST_RESPONSE_TRACKED: Final = re.compile(
    rb"\n(content-length|transfer-encoding|connection):[ \t]*([^\r]*)", re.IGNORECASE)


def _fields(raw: bytes, start: int) -> list[tuple[bytes, bytes]]:
    """The field lines of a head the fast grammar accepted, from ``start``."""
    headers: list[tuple[bytes, bytes]] = _FAST_FIELD.findall(raw, start)
    if b" \r" in raw or b"\t\r" in raw:
        headers = [(name, value.rstrip(b" \t")) for name, value in headers]
    return headers


def _tracked(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The tracked fields of ``headers``, names lower-cased (see _parse_fields)."""
    memo = _token_memo
    tracked = []
    for name, value in headers:
        lower = memo.get(name)
        if lower is None:
            lower = _learn_token(name)
            assert lower is not None  # the fast grammar admits tokens only
        if lower in _TRACKED:
            tracked.append((lower, value))
    return tracked


def _parse_fields(
    raw: bytes, start: int, status: int, too_many_status: int
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """The field lines of ``raw`` from ``start`` (RFC 9112 §5), and the tracked ones."""
    block_end = len(raw) - (2 if raw[-2] == 0x0D else 1)  # drop the final empty line
    if block_end <= start:
        return [], []
    # and the last field line's ending
    text = raw[start : block_end - (2 if raw[block_end - 2] == 0x0D else 1)]
    lf = text.count(b"\n")
    if lf >= MAX_HEADERS:  # lf + 1 lines
        raise HttpParseError(f"more than {MAX_HEADERS} header fields", too_many_status)
    lines = text.split(b"\r\n")
    crlf = len(lines) - 1
    if lf != crlf or text.count(b"\r") != crlf:
        # Bare LF line endings (allowed, RFC 9112 §2.2), or a bare CR (refused, same §).
        # Split the block with its last line ending still on, so that a CR is taken
        # off a line only when it is part of that line's CRLF.
        lines = [_strip_cr(line) for line in raw[start:block_end].split(b"\n")]
        del lines[-1]  # the empty string after the last LF
        if any(b"\r" in line for line in lines):
            raise HttpParseError("bare CR in header section (RFC 9112 §2.2)", status)
    if text.translate(None, _HEAD_CHARS):
        raise HttpParseError("control character in header section (RFC 9110 §5.5)", status)
    headers: list[tuple[bytes, bytes]] = []
    tracked: list[tuple[bytes, bytes]] = []
    memo = _token_memo
    for line in lines:
        name, colon, value = line.partition(b":")
        lower = memo.get(name)
        if lower is None:
            lower = _learn_token(name)
            if lower is None:
                raise _field_error(line, status)
        if not colon:
            raise _field_error(line, status)
        value = value.strip()  # only SP and HTAB can be there: CTLs were refused above
        headers.append((name, value))
        if lower in _TRACKED:
            tracked.append((lower, value))
    return headers, tracked


def _field_error(line: bytes, status: int) -> HttpParseError:
    name, colon, _ = line.partition(b":")
    if line[:1] in (b" ", b"\t"):
        why = "obsolete line folding (RFC 9112 §5.2)"
    elif not colon:
        why = "no colon"
    elif name.rstrip(_OWS) != name:
        why = "whitespace between field name and colon (RFC 9112 §5.1)"
    else:
        why = "field name is not a token (RFC 9110 §5.1)"
    return HttpParseError(f"invalid field line {line[:64]!r}: {why}", status)


def _content_length(tracked: list[tuple[bytes, bytes]], status: int) -> int | None:
    """The Content-Length, if any; repeats (lines or a list) must agree (RFC 9110 §8.6)."""
    found: int | None = None
    for name, value in tracked:
        if name != b"content-length":
            continue
        for item in value.split(b","):
            item = item.strip(_OWS)
            if not item.isdigit() or len(item) > _MAX_LENGTH_DIGITS:
                raise HttpParseError(f"invalid Content-Length {value[:32]!r}", status)
            n = int(item)
            if found is not None and n != found:
                raise HttpParseError(f"conflicting Content-Length values {value[:32]!r}", status)
            found = n
    return found


def _transfer_codings(tracked: list[tuple[bytes, bytes]], status: int) -> list[bytes]:
    """The transfer codings in order, lower-cased (RFC 9112 §6.1); at least one."""
    codings: list[bytes] = []
    for name, value in tracked:
        if name != b"transfer-encoding":
            continue
        for item in value.lower().split(b","):
            item = item.strip(_OWS)
            if not item:
                continue  # empty list elements are allowed (RFC 9110 §5.6.1)
            coding = item.partition(b";")[0].rstrip(_OWS)
            if not coding or coding.translate(None, _TCHAR):
                raise HttpParseError(f"invalid Transfer-Encoding {value[:32]!r}", status)
            # "chunked" with parameters is not chunked: it stays as written, never final.
            codings.append(item if coding == b"chunked" else coding)
    if not codings:
        raise HttpParseError("empty Transfer-Encoding", status)
    return codings


def _tokens(value: bytes) -> list[bytes]:
    """The lower-cased elements of a comma-separated list (RFC 9110 §5.6.1)."""
    if b"," not in value:  # the usual single token (field values come stripped)
        return [value.lower()]
    return [item.strip(_OWS) for item in value.lower().split(b",")]


# --- bodies ------------------------------------------------------------------------------


class ChunkState(IntEnum):
    """Where a chunked body stands (RFC 9112 §7.1). Legal transitions, one per input:

    ========  ==========================  ========
    state     input                       next
    ========  ==========================  ========
    SIZE      a size line, size > 0       DATA
    SIZE      a size line, size 0         TRAILER
    DATA      the chunk's last byte       DATA_END
    DATA_END  CRLF                        SIZE
    TRAILER   a trailer field line        TRAILER
    TRAILER   an empty line               DONE
    ========  ==========================  ========

    Anything else is an ``HttpParseError``; DONE takes no input.
    """

    SIZE = 0
    DATA = 1
    DATA_END = 2
    TRAILER = 3
    DONE = 4


# Module names for the per-byte loop: a global lookup, compared by identity.
_SIZE: Final = ChunkState.SIZE
_DATA: Final = ChunkState.DATA
_DATA_END: Final = ChunkState.DATA_END
_TRAILER: Final = ChunkState.TRAILER
_DONE: Final = ChunkState.DONE


class BodyReader:
    """Consumes one message body as it arrives (any split), per its ``Framing``.

    Chunked framing is strict: every line in it must end in CRLF. Accepting a bare LF
    there is a known way for two parsers to disagree about chunk boundaries ("chunk
    extension / line terminator" smuggling), so unlike heads it is refused. Errors carry
    status_hint 400; in a response body, answer 502 instead.
    """

    __slots__ = (
        "_kind",
        "_received",
        "_remaining",
        "_state",
        "_trailer_bytes",
        "done",
        "trailers",
    )

    def __init__(self, framing: Framing) -> None:
        self._kind = framing.kind
        self._remaining = framing.length  # "length": bytes left; "chunked": of this chunk
        self._received = 0
        self._state: ChunkState = _SIZE
        self._trailer_bytes = 0
        self.done = framing.kind == "none" or (framing.kind == "length" and not framing.length)
        self.trailers: list[tuple[bytes, bytes]] = []

    def read(self, buf: bytearray) -> tuple[bytes, bytes]:
        """Consume what ``buf`` holds of this body: (raw bytes consumed, payload in them).

        Never consumes past the body's end: the next pipelined message stays in ``buf``.
        """
        if self.done or not buf:
            return b"", b""
        if self._kind == "length":
            n = min(self._remaining, len(buf))
            data = _take(buf, n)
            self._remaining -= n
            self._received += n
            self.done = not self._remaining
            return data, data
        if self._kind == "close":
            data = bytes(buf)
            buf.clear()
            return data, data
        return self._read_chunked(buf)

    def eof(self) -> None:
        """The peer closed: ends a "close" body; an unfinished body is an error."""
        if self.done:
            return
        if self._kind == "close":
            self.done = True
            return
        if self._kind == "length":
            detail = f"{self._received} of {self._received + self._remaining} bytes received"
        else:
            detail = "chunked body incomplete"
        raise HttpParseError(f"peer closed mid-body ({detail})")

    def _read_chunked(self, buf: bytearray) -> tuple[bytes, bytes]:
        pos, n, state = 0, len(buf), self._state
        spans: list[tuple[int, int]] = []
        while pos < n:
            if state is _DATA:
                take = min(self._remaining, n - pos)
                spans.append((pos, pos + take))
                pos += take
                self._remaining -= take
                if not self._remaining:
                    state = _DATA_END
            elif state is _SIZE:
                end = _line_end(buf, pos, MAX_CHUNK_LINE_BYTES, "chunk-size line", 400)
                if end < 0:
                    break
                self._remaining = _chunk_size(bytes(buf[pos:end]))
                pos = end + 2
                state = _DATA if self._remaining else _TRAILER
            elif state is _DATA_END:
                if buf[pos] != 0x0D or (pos + 1 < n and buf[pos + 1] != 0x0A):
                    raise HttpParseError(
                        f"chunk data not followed by CRLF: {bytes(buf[pos : pos + 2])!r} "
                        "(RFC 9112 §7.1)"
                    )
                if pos + 1 == n:
                    break
                pos += 2
                state = _SIZE
            elif state is _TRAILER:
                budget = MAX_HEAD_BYTES - self._trailer_bytes
                end = _line_end(buf, pos, budget, "trailer section", 431)
                if end < 0:
                    break
                line = bytes(buf[pos:end])
                self._trailer_bytes += end + 2 - pos
                pos = end + 2
                if not line:
                    state = _DONE
                    break
                self.trailers.append(_trailer_field(line))
                if len(self.trailers) > MAX_HEADERS:
                    raise HttpParseError(f"more than {MAX_HEADERS} trailer fields", 431)
            elif state is _DONE:  # pragma: no cover - DONE exits the loop above
                raise AssertionError(state)
            else:
                assert_never(state)
        self._state = state
        self.done = state is _DONE
        if not pos:
            return b"", b""
        view = memoryview(buf)
        try:
            raw = view[:pos].tobytes()
            if len(spans) == 1:
                start, stop = spans[0]
                decoded = view[start:stop].tobytes()
            else:
                decoded = b"".join([view[start:stop] for start, stop in spans])
        finally:
            view.release()
        del buf[:pos]
        return raw, decoded


def _line_end(buf: bytearray, pos: int, limit: int, what: str, too_long_status: int) -> int:
    """Index of the CRLF ending the line at ``pos`` (at most ``limit`` long), or -1."""
    end = buf.find(b"\r\n", pos, pos + limit + 2)
    if end < 0:
        if buf.find(b"\n", pos, pos + limit + 2) >= 0:
            raise HttpParseError(f"bare LF in {what}: chunked framing needs CRLF")
        if len(buf) - pos >= limit + 2:
            raise HttpParseError(f"{what} longer than {limit} bytes", too_long_status)
    return end


def _take(buf: bytearray, n: int) -> bytes:
    """Remove and return the first ``n`` bytes of ``buf`` with a single copy."""
    if n == len(buf):
        data = bytes(buf)
        buf.clear()
        return data
    view = memoryview(buf)
    try:
        data = view[:n].tobytes()
    finally:
        view.release()
    del buf[:n]
    return data


def _chunk_size(line: bytes) -> int:
    """The size on a chunk-size line; extensions are checked for CTLs, then ignored."""
    if b"\n" in line:
        raise HttpParseError("bare LF in chunk-size line: chunked framing needs CRLF")
    size, semicolon, extensions = line.partition(b";")
    if semicolon:
        size = size.rstrip(_OWS)  # BWS before ";" (RFC 9112 §7.1.1)
        if extensions.translate(None, _FIELD_CHARS):
            raise HttpParseError(f"invalid character in chunk extension {line[:64]!r}")
    if not size or len(size) > _MAX_CHUNK_SIZE_DIGITS or size.translate(None, _HEXDIG):
        raise HttpParseError(f"invalid chunk size {line[:64]!r} (RFC 9112 §7.1)")
    return int(size, 16)


def _trailer_field(line: bytes) -> tuple[bytes, bytes]:
    if b"\n" in line:
        raise HttpParseError("bare LF in trailer section: chunked framing needs CRLF")
    if line.translate(None, _FIELD_CHARS):
        raise HttpParseError("control character in trailer section (RFC 9110 §5.5)")
    name, colon, value = line.partition(b":")
    if not colon or not name or name.translate(None, _TCHAR):
        raise _field_error(line, 400)
    return name, value.strip(_OWS)


# --- writing -----------------------------------------------------------------------------

LAST_CHUNK: Final = b"0\r\n\r\n"


def response_head_bytes(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """An HTTP/1.1 response head, through its empty line.

    Raises HttpParseError (502) rather than write a head that would split or smuggle: a
    status outside 100-999, a name that is not a token, CR/LF/NUL or another CTL in a
    value or the reason. The caller writes the framing headers it needs.
    """
    if not 100 <= status <= 999:
        raise HttpParseError(f"cannot send status {status}", _BAD_GATEWAY)
    if reason.translate(None, _FIELD_CHARS):
        raise HttpParseError(f"cannot send reason phrase {reason[:64]!r}", _BAD_GATEWAY)
    names = [name for name, _ in headers]
    # Every name and every value checked in one C-level pass each; the loop below only
    # runs to name the culprit.
    if (not all(names) or b"".join(names).translate(None, _TCHAR)
            or b"".join([value for _, value in headers]).translate(None, _FIELD_CHARS)):
        for name, value in headers:
            if not name or name.translate(None, _TCHAR) or value.translate(None, _FIELD_CHARS):
                raise HttpParseError(f"cannot send header {name[:64]!r}", _BAD_GATEWAY)
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    parts += [b"%s: %s\r\n" % pair for pair in headers]
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk (RFC 9112 §7.1); empty data gives b"" (not the last chunk)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)
