"""Protocol detection from the first bytes a client sends on an intercepted connection.

Theory of operation: the agent feeds the bytes received so far to ``detect``. The answer is
final as soon as the bytes allow it: an HTTP/2 prior-knowledge preface (RFC 9113 §3.4), an
HTTP/1.x request line (RFC 9112 §3), or anything else, which is relayed as raw TCP. While
the bytes are still a prefix of a possible request line the answer is ``NEED_MORE``.
Server-first protocols never reach this function: the agent relays an upstream greeting
as soon as it arrives (see ``waylay.agent.interception``).
"""

from __future__ import annotations

import enum

import regex

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# A request line: method token (RFC 9110 §9.1 tchar), one space, a target of visible
# ASCII, one space, HTTP/1.0 or HTTP/1.1 and the line end. RFC 9112 §2.2 lets a server
# accept a bare LF. The bounds keep a hostile prefix from being buffered forever.
_REQUEST_LINE = regex.compile(
    rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32} [\x21-\x7e]{1,8192} HTTP/1\.[01]\r?\n"
)
MAX_DETECT_BYTES = 8192 + 64  # longest request line _REQUEST_LINE admits


class Protocol(enum.Enum):
    HTTP1 = "http/1.1"
    H2 = "h2"
    TCP = "tcp"
    NEED_MORE = "need-more"


def h2_server_preface(data: bytes) -> bool:
    """True if ``data`` opens with a server's HTTP/2 preface: a SETTINGS frame on stream 0
    (RFC 9113 §3.4), which an h2c server may send before the client said anything."""
    return (len(data) >= 9 and data[3] == 0x04 and not data[4] & 0x01
            and data[5:9] == b"\x00\x00\x00\x00"
            and int.from_bytes(data[:3], "big") % 6 == 0)


def detect(data: bytes) -> Protocol:
    """Classify a connection by its first client bytes (``data`` is everything so far)."""
    if not data:
        return Protocol.NEED_MORE
    if data.startswith(H2_PREFACE):
        return Protocol.H2
    if H2_PREFACE.startswith(data):
        return Protocol.NEED_MORE
    line_end = data.find(b"\n")
    line = data if line_end < 0 else data[: line_end + 1]
    match = _REQUEST_LINE.fullmatch(line, partial=True)
    if match is None:
        return Protocol.TCP
    if match.partial:
        return Protocol.NEED_MORE if len(data) < MAX_DETECT_BYTES else Protocol.TCP
    return Protocol.HTTP1
