"""HTTP/1.1 message bodies for the agent's hot path (sans-I/O): ``BodyReader`` consumes a
body framed as its head said (``waylay.core.engine.http1_framing.Framing``: Content-Length,
chunked, until close), in any split, and ``chunk`` / ``LAST_CHUNK`` write the chunked
bodies waylay sends itself.

``BodyReader`` is the parser's only state machine (for chunked bodies ``ChunkState``:
``SIZE -> DATA -> DATA_END -> SIZE ... -> TRAILER -> DONE``).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final, assert_never

from waylay.core.engine.http1_framing import Framing
from waylay.core.engine.http1_syntax import (
    FIELD_CHARS,
    HEXDIG,
    MAX_CHUNK_LINE_BYTES,
    MAX_CHUNK_SIZE_DIGITS,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    OWS,
    TCHAR,
    HttpParseError,
    field_error,
)

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
        size = size.rstrip(OWS)  # BWS before ";" (RFC 9112 §7.1.1)
        if extensions.translate(None, FIELD_CHARS):
            raise HttpParseError(f"invalid character in chunk extension {line[:64]!r}")
    if not size or len(size) > MAX_CHUNK_SIZE_DIGITS or size.translate(None, HEXDIG):
        raise HttpParseError(f"invalid chunk size {line[:64]!r} (RFC 9112 §7.1)")
    return int(size, 16)


def _trailer_field(line: bytes) -> tuple[bytes, bytes]:
    if b"\n" in line:
        raise HttpParseError("bare LF in trailer section: chunked framing needs CRLF")
    if line.translate(None, FIELD_CHARS):
        raise HttpParseError("control character in trailer section (RFC 9110 §5.5)")
    name, colon, value = line.partition(b":")
    if not colon or not name or name.translate(None, TCHAR):
        raise field_error(line, 400)
    return name, value.strip(OWS)



# --- writing -----------------------------------------------------------------------------

LAST_CHUNK: Final = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk (RFC 9112 §7.1); empty data gives b"" (not the last chunk)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


__all__ = ["LAST_CHUNK", "BodyReader", "ChunkState", "chunk"]
