"""The local app's HTTP/1.1 heads as the wire's text: a stolen request's head built from its
``RequestStart``, refusing what could split it in two, and a response head's fields for
``ResponseStart`` (sans-I/O helpers of ``waylay.core.client.local_http1``).

The wire carries names and values as latin-1 text (``waylay.core.engine.wire``); the local
app gets bytes.
"""

from __future__ import annotations

import re
from typing import Final

from waylay.core.engine.http1_framing import ResponseHead
from waylay.core.engine.http1_syntax import FAST_RESPONSE, TOKEN_PATTERN
from waylay.core.engine.wire import headers_to_wire

# The request head's parts, as the wire's latin-1 text (RFC 9110 §5.6.2 token, §5.5
# field-vchar; a request-target without CTL or space). A head that fails them is not sent:
# it could split into two requests at the local app. Names and values are each checked
# joined, in one C-level match: CR and LF are in neither class.
_TOKEN_CHARS: Final = "[!#$%&'*+\\-.^_`|~0-9A-Za-z]"
_TOKEN_TEXT: Final = re.compile(_TOKEN_CHARS + "+")
_TOKENS_TEXT: Final = re.compile(_TOKEN_CHARS + "*")
_TARGET_TEXT: Final = re.compile("[!-~\x80-\xff]+")
_VALUES_TEXT: Final = re.compile("[\t\x20-\x7e\x80-\xff]*")
OWS: Final = " \t"  # optional whitespace around a field value (RFC 9110 §5.6.3)
# One field line of a head FAST_RESPONSE accepted, as text: name, and value without its
# leading OWS (trailing OWS, rare, is taken off where it is found).
FIELD_TEXT: Final = re.compile("\n(" + TOKEN_PATTERN.decode() + "):[ \t]*([^\r]*)")


class LocalRequestError(Exception):
    """The request cannot be sent as HTTP/1.1 (the agent sent something no app should get)."""


def request_head_bytes(method: str, target: str, headers: tuple[tuple[str, str], ...]) -> bytes:
    """An HTTP/1.1 request head, through its empty line, from the wire's text; refuses what
    could split it into two requests at the local app (RFC 9112 §3, RFC 9110 §5)."""
    names = [name for name, _ in headers]
    if (_TOKEN_TEXT.fullmatch(method) is None or _TARGET_TEXT.fullmatch(target) is None
            or not all(names) or _TOKENS_TEXT.fullmatch("".join(names)) is None
            or _VALUES_TEXT.fullmatch("".join([value for _, value in headers])) is None):
        raise LocalRequestError(_head_problem(method, target, headers))
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _head_problem(method: str, target: str, headers: tuple[tuple[str, str], ...]) -> str:
    if _TOKEN_TEXT.fullmatch(method) is None:
        return f"invalid method {method[:32]!r}"
    if _TARGET_TEXT.fullmatch(target) is None:
        return f"invalid request target {target[:64]!r}"
    name = next((n for n, v in headers if _TOKEN_TEXT.fullmatch(n) is None
                 or _VALUES_TEXT.fullmatch(v) is None), "?")
    return f"invalid header field {name[:64]!r} (RFC 9110 §5)"


def wire_headers(head: ResponseHead) -> tuple[tuple[str, str], ...]:
    """The head's fields as the wire carries them (latin-1 text): for the usual head one
    decode and one C-level scan, the same fields ``head.headers`` gives."""
    raw = head.raw
    if FAST_RESPONSE.fullmatch(raw) is None:
        return headers_to_wire(head.headers)
    text = raw.decode("latin-1")
    fields: list[tuple[str, str]] = FIELD_TEXT.findall(text)
    if " \r" in text or "\t\r" in text:
        fields = [(name, value.rstrip(" \t")) for name, value in fields]
    return tuple(fields)


def field_tokens(value: str) -> list[str]:
    """A list-valued field's elements (Connection, Transfer-Encoding), lower-cased."""
    return [t.strip(OWS).lower() for t in value.split(",")]


__all__ = ["FIELD_TEXT", "OWS", "LocalRequestError", "field_tokens", "request_head_bytes",
           "wire_headers"]
