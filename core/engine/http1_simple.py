"""The usual HTTP/1.1 messages, recognised cheaply (sans-I/O): the agent's fast lane.

Most requests crossing the agent are a bodiless head arriving as one read (a GET, a
kubelet probe), answered by a response whose head and Content-Length body arrive as one
read. ``waylay.core.engine.http1.Http1Router`` passes those straight through when nothing takes
them: the request's bytes go upstream as they came, the response's downstream as they came,
without buffering or the general parser's objects (docs/architecture.md, "The hot path").

Each function here says "yes, and these are the facts" only where the general parser
(``waylay.core.engine.http1_framing``) would accept the same bytes with the same facts; for anything
else it says None and the router takes the general path, which knows every rule and
every error. tests/core/test_http1_simple.py checks that agreement on random messages.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from waylay.core.engine.http1_syntax import (
    FAST_REQUEST,
    FAST_RESPONSE,
    FAST_RESPONSE_TRACKED,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    TOKEN_PATTERN,
)

# One field line of a head FAST_REQUEST accepted, decoded: name, value without leading
# OWS (trailing OWS, rare, is taken off below).
_FIELD_TEXT: Final = re.compile("\n(" + TOKEN_PATTERN.decode() + "):[ \t]*([^\r]*)")
# Fields that make a request take the general path: a body, Expect, Upgrade.
_GENERAL_FIELDS: Final = frozenset({"content-length", "transfer-encoding", "expect", "upgrade"})


class SimpleRequest(NamedTuple):
    """A bodiless request head with no Expect and no Upgrade, as text (latin-1)."""

    method: str
    target: str
    version: str  # "1.1" or "1.0"
    headers: tuple[tuple[str, str], ...]
    host: str | None
    keep_alive: bool


class SimpleResponse(NamedTuple):
    """A final response complete in one read, framed by Content-Length (or bodiless)."""

    status: int
    body_bytes: int
    keep_alive: bool


def simple_request(data: bytes) -> SimpleRequest | None:
    """``data`` as one whole bodiless request head, or None (then: the general path)."""
    end = data.find(b"\r\n\r\n")
    if end != len(data) - 4 or end < 0 or len(data) > MAX_HEAD_BYTES:
        return None
    match = FAST_REQUEST.fullmatch(data)
    if match is None or data.count(b"\n") > MAX_HEADERS + 1:
        return None
    text = data.decode("latin-1")
    fields: list[tuple[str, str]] = _FIELD_TEXT.findall(text)
    if " \r" in text or "\t\r" in text:
        fields = [(name, value.rstrip(" \t")) for name, value in fields]
    host: str | None = None
    hosts = 0
    connection = ""
    for name, value in fields:
        lower = name.lower()
        if lower == "host":
            hosts += 1
            host = value
        elif lower == "connection":
            connection = f"{connection},{value}" if connection else value
        elif lower in _GENERAL_FIELDS:
            return None
    minor = match.group(3)
    if hosts > 1 or (hosts == 0 and minor == b"1"):
        return None  # the general path refuses it, with the reason
    tokens = [t.strip(" \t") for t in connection.lower().split(",")] if connection else ()
    if minor == b"1":
        keep_alive = "close" not in tokens
        version = "1.1"
    else:
        keep_alive = "keep-alive" in tokens and "close" not in tokens
        version = "1.0"
    method, target = text[:match.end(1)], text[match.end(1) + 1:match.end(2)]
    return SimpleRequest(method, target, version, tuple(fields), host, keep_alive)


def simple_response(data: bytes, request_method: str) -> SimpleResponse | None:
    """``data`` as one whole final response to ``request_method``, or None."""
    if request_method in ("HEAD", "CONNECT"):
        return None  # their framing differs (RFC 9112 §6.3): the general path knows
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
    if end < 0:
        return None
    head_end = end + 4
    match = FAST_RESPONSE.fullmatch(data, 0, head_end)
    if match is None or data.count(b"\n", 0, head_end) > MAX_HEADERS + 1:
        return None
    status = int(match.group(2))
    if status < 200:
        return None
    length: int | None = None
    connection = b""
    for name, value in FAST_RESPONSE_TRACKED.findall(data, 0, head_end):
        lower = name.lower()
        value = value.rstrip(b" \t")
        if lower == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 18:
                return None  # repeats and lists: the general path checks they agree
            length = int(value)
        elif lower == b"connection":
            connection = connection + b"," + value if connection else value
        else:
            return None  # Transfer-Encoding
    body = len(data) - head_end
    if status in (204, 304):
        if body:
            return None
    elif length is None or body != length:
        return None
    tokens = [t.strip(b" \t") for t in connection.lower().split(b",")] if connection else ()
    keep_alive = False if b"close" in tokens else match.group(1) == b"1" or b"keep-alive" in tokens
    return SimpleResponse(status, body, keep_alive)
