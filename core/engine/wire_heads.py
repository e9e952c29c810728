"""The compact payload of the per-request frames: REQUEST, RESPONSE, TRAILERS (sans-I/O).

Every stolen or mirrored request crosses the link as a REQUEST frame and its answer comes
back as a RESPONSE frame, so on a busy port these two are encoded once per request on each
side. JSON cost a dictionary, an encoder pass and a field-by-field Python check per frame;
this layout costs one ``struct`` call, one UTF-8 encode or decode and C-level slicing:

    fixed fields (struct, per frame type) | count: u16 | count x length: u32 | text

``text`` is the frame's strings concatenated, UTF-8 with ``surrogatepass`` (so any Python
str survives, as it did in JSON with ``ensure_ascii``); each length counts code points of
its string, so decoding slices the decoded text directly. The strings are the frame's own
(method, target, ...) first, then each header's name and value: the headers are the tail
of the text, and their latin-1 check is one scan of that tail.

Nothing here knows the frame types: ``waylay.core.engine.wire`` puts the fixed fields around these
strings and names the frame in its errors.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from waylay.core.engine.wire_messages import WireProtocolError

COUNT: Final = struct.Struct("!H")
MAX_STRINGS: Final = 0xFFFF  # what the count's u16 holds
# Length structs are built once per string count; counts up to this many are kept (a
# request with 60 headers has 124 strings). Larger counts, rare, build theirs each time.
_CACHED_COUNTS: Final = 256
_lengths_structs: dict[int, struct.Struct] = {}


def _lengths(count: int) -> struct.Struct:
    found = _lengths_structs.get(count)
    if found is None:
        found = struct.Struct(f"!{count}I")
        if count <= _CACHED_COUNTS:
            _lengths_structs[count] = found
    return found


def flat_headers(headers: object, where: str) -> list[str]:
    """Header pairs (a tuple or list of 2-item tuples or lists) as one flat list, name
    then value; the strings are checked by ``pack_strings`` and ``check_latin1``."""
    if type(headers) is not tuple and type(headers) is not list:
        raise WireProtocolError(f"{where} must be a list of [name, value] pairs")
    flat: list[str] = []
    for pair in headers:
        if (type(pair) is not tuple and type(pair) is not list) or len(pair) != 2:
            raise WireProtocolError(f"{where} must hold [name, value] pairs, got {pair!r:.60}")
        flat += pair
    return flat


def check_latin1(text: str, where: str) -> None:
    """Header text must be latin-1 (each character one byte of HTTP, ``headers_from_wire``)."""
    # Almost every header is ASCII, and isascii() is the cheapest check there is.
    if not text.isascii() and max(text) > "\xff":
        raise WireProtocolError(f"{where} has characters outside latin-1")


def pack_strings(fixed: bytes, strings: Sequence[str], where: str) -> bytes:
    """``fixed``, then the count, lengths and text of ``strings``."""
    try:
        text = "".join(strings)
    except TypeError:
        bad = next(s for s in strings if not isinstance(s, str))
        raise WireProtocolError(f"{where} must be strings, got {bad!r:.60}") from None
    count = len(strings)
    if count > MAX_STRINGS:
        raise WireProtocolError(f"{where} has {count} strings, over {MAX_STRINGS}")
    return b"".join((fixed, COUNT.pack(count), _lengths(count).pack(*map(len, strings)),
                     text.encode("utf-8", "surrogatepass")))


def unpack_strings(payload: memoryview, offset: int) -> tuple[list[str], str]:
    """The strings after ``offset`` (count, lengths, text) and their whole text."""
    if len(payload) < offset + COUNT.size:
        raise WireProtocolError("payload too short for its fixed fields")
    (count,) = COUNT.unpack_from(payload, offset)
    lengths_struct = _lengths(count)
    start = offset + COUNT.size + lengths_struct.size
    if len(payload) < start:
        raise WireProtocolError(f"payload too short for {count} string lengths")
    try:
        text = str(payload[start:], "utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise WireProtocolError(f"strings are not UTF-8: {exc}") from None
    strings = []
    pos = 0
    for length in lengths_struct.unpack_from(payload, offset + COUNT.size):
        end = pos + length
        strings.append(text[pos:end])
        pos = end
    if pos != len(text):
        raise WireProtocolError(f"string lengths add up to {pos} characters, "
                                f"the text has {len(text)}")
    return strings, text


def header_pairs(strings: list[str], first: int, text: str, where: str) -> tuple[
        tuple[str, str], ...]:
    """``strings[first:]`` as (name, value) pairs, checked to be latin-1; ``text`` is all
    the strings joined (the headers are its tail)."""
    flat = strings[first:]
    if len(flat) % 2:
        raise WireProtocolError(f"{where} must hold [name, value] pairs (odd count)")
    if flat:
        check_latin1(text[len(text) - sum(map(len, flat)):], where)
    return tuple(zip(flat[0::2], flat[1::2], strict=True))
