"""HTTP/1.1 syntax as waylay's strict parser shares it (sans-I/O): the limits, the byte
classes, the error every refusal raises, field sections (RFC 9110 §5, RFC 9112 §5) with the
fields that decide framing, and the fast grammar of the usual head.

``waylay.core.engine.http1_framing`` parses heads and ``waylay.core.engine.http1_body``
bodies with these; ``waylay.core.engine.http1_simple`` recognises the usual head with the
same grammar. The framing module's docstring has the theory of operation.
"""

from __future__ import annotations

import re
from typing import Final

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
MAX_LENGTH_DIGITS: Final = 18
# Chunk-size hex digits: 16 is 64 bits.
MAX_CHUNK_SIZE_DIGITS: Final = 16

# What a refused response head answers downstream (RFC 9110 §15.6.3).
BAD_GATEWAY: Final = 502

# Byte classes (RFC 9110 §5.6.2 tchar, §5.5 field-vchar, RFC 5234 VCHAR/HEXDIG), used with
# bytes.translate(None, allowed): the result is empty exactly when every byte is allowed.
TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
VCHAR: Final = bytes(range(0x21, 0x7F))
# Field values, reason phrases and chunk extensions: HTAB, SP, VCHAR, obs-text. No CTLs:
# NUL, CR and LF must be refused (RFC 9110 §5.5); the other CTLs are refused too, as h11
# does for most of them, since nothing legitimate sends them.
FIELD_CHARS: Final = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
HEAD_CHARS: Final = FIELD_CHARS + b"\r\n"
HEXDIG: Final = b"0123456789abcdefABCDEF"
OWS: Final = b" \t"


class HttpParseError(Exception):
    """The peer sent bytes that are not a valid HTTP/1.1 message: its fault, not ours.

    ``status_hint`` is the status to answer with (see ``waylay.core.engine.http1_framing``'s
    docstring).
    """

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_hint = status_hint


def bad_gateway(message: str) -> HttpParseError:
    """The refusal of an upstream response."""
    return HttpParseError(f"upstream response: {message}", BAD_GATEWAY)


# Tokens (field names, methods) already validated, mapped to their lower-case form. Real
# traffic repeats a few dozen names, so checking and lower-casing each once saves a third
# of field parsing. Cleared when full, so a peer sending junk names cannot grow it.
_TOKEN_MEMO_SIZE: Final = 1024
token_memo: dict[bytes, bytes] = {}


def learn_token(token: bytes) -> bytes | None:
    """``token`` lower-cased if it is a token (RFC 9110 §5.6.2), else None."""
    if not token or token.translate(None, TCHAR):
        return None
    if len(token_memo) >= _TOKEN_MEMO_SIZE:
        token_memo.clear()
    lower = token_memo[token] = token.lower()
    return lower

def strip_cr(line: bytes) -> bytes:
    """``line`` without the CR of its CRLF, if it has one."""
    return line[:-1] if line.endswith(b"\r") else line



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
# OWS (trailing OWS, rare, is taken off by fast_fields).
_FAST_FIELD: Final = re.compile(rb"\n(" + TOKEN_PATTERN + rb"):[ \t]*([^\r]*)")


# The fields a response's framing depends on, in a head the fast grammar accepted.
FAST_RESPONSE_TRACKED: Final = re.compile(
    rb"\n(content-length|transfer-encoding|connection):[ \t]*([^\r]*)", re.IGNORECASE)


def fast_fields(raw: bytes, start: int) -> list[tuple[bytes, bytes]]:
    """The field lines of a head the fast grammar accepted, from ``start``."""
    headers: list[tuple[bytes, bytes]] = _FAST_FIELD.findall(raw, start)
    if b" \r" in raw or b"\t\r" in raw:
        headers = [(name, value.rstrip(b" \t")) for name, value in headers]
    return headers


def fast_tracked(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The tracked fields of ``headers``, names lower-cased (see parse_fields)."""
    memo = token_memo
    tracked = []
    for name, value in headers:
        lower = memo.get(name)
        if lower is None:
            lower = learn_token(name)
            assert lower is not None  # the fast grammar admits tokens only
        if lower in _TRACKED:
            tracked.append((lower, value))
    return tracked


def parse_fields(
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
        lines = [strip_cr(line) for line in raw[start:block_end].split(b"\n")]
        del lines[-1]  # the empty string after the last LF
        if any(b"\r" in line for line in lines):
            raise HttpParseError("bare CR in header section (RFC 9112 §2.2)", status)
    if text.translate(None, HEAD_CHARS):
        raise HttpParseError("control character in header section (RFC 9110 §5.5)", status)
    headers: list[tuple[bytes, bytes]] = []
    tracked: list[tuple[bytes, bytes]] = []
    memo = token_memo
    for line in lines:
        name, colon, value = line.partition(b":")
        lower = memo.get(name)
        if lower is None:
            lower = learn_token(name)
            if lower is None:
                raise field_error(line, status)
        if not colon:
            raise field_error(line, status)
        value = value.strip()  # only SP and HTAB can be there: CTLs were refused above
        headers.append((name, value))
        if lower in _TRACKED:
            tracked.append((lower, value))
    return headers, tracked


def field_error(line: bytes, status: int) -> HttpParseError:
    """The refusal of a bad field line, saying what is wrong with it."""
    name, colon, _ = line.partition(b":")
    if line[:1] in (b" ", b"\t"):
        why = "obsolete line folding (RFC 9112 §5.2)"
    elif not colon:
        why = "no colon"
    elif name.rstrip(OWS) != name:
        why = "whitespace between field name and colon (RFC 9112 §5.1)"
    else:
        why = "field name is not a token (RFC 9110 §5.1)"
    return HttpParseError(f"invalid field line {line[:64]!r}: {why}", status)


def parse_content_length(tracked: list[tuple[bytes, bytes]], status: int) -> int | None:
    """The Content-Length, if any; repeats (lines or a list) must agree (RFC 9110 §8.6)."""
    found: int | None = None
    for name, value in tracked:
        if name != b"content-length":
            continue
        for item in value.split(b","):
            item = item.strip(OWS)
            if not item.isdigit() or len(item) > MAX_LENGTH_DIGITS:
                raise HttpParseError(f"invalid Content-Length {value[:32]!r}", status)
            n = int(item)
            if found is not None and n != found:
                raise HttpParseError(f"conflicting Content-Length values {value[:32]!r}", status)
            found = n
    return found


def parse_transfer_codings(tracked: list[tuple[bytes, bytes]], status: int) -> list[bytes]:
    """The transfer codings in order, lower-cased (RFC 9112 §6.1); at least one."""
    codings: list[bytes] = []
    for name, value in tracked:
        if name != b"transfer-encoding":
            continue
        for item in value.lower().split(b","):
            item = item.strip(OWS)
            if not item:
                continue  # empty list elements are allowed (RFC 9110 §5.6.1)
            coding = item.partition(b";")[0].rstrip(OWS)
            if not coding or coding.translate(None, TCHAR):
                raise HttpParseError(f"invalid Transfer-Encoding {value[:32]!r}", status)
            # "chunked" with parameters is not chunked: it stays as written, never final.
            codings.append(item if coding == b"chunked" else coding)
    if not codings:
        raise HttpParseError("empty Transfer-Encoding", status)
    return codings


def list_tokens(value: bytes) -> list[bytes]:
    """The lower-cased elements of a comma-separated list (RFC 9110 §5.6.1)."""
    if b"," not in value:  # the usual single token (field values come stripped)
        return [value.lower()]
    return [item.strip(OWS) for item in value.lower().split(b",")]


__all__ = [
    "BAD_GATEWAY",
    "FAST_REQUEST",
    "FAST_RESPONSE",
    "FAST_RESPONSE_TRACKED",
    "FIELD_CHARS",
    "HEAD_CHARS",
    "HEXDIG",
    "MAX_CHUNK_LINE_BYTES",
    "MAX_CHUNK_SIZE_DIGITS",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "MAX_LENGTH_DIGITS",
    "OWS",
    "TCHAR",
    "TOKEN_PATTERN",
    "VCHAR",
    "HttpParseError",
    "bad_gateway",
    "fast_fields",
    "fast_tracked",
    "field_error",
    "learn_token",
    "list_tokens",
    "parse_content_length",
    "parse_fields",
    "parse_transfer_codings",
    "strip_cr",
    "token_memo",
]
