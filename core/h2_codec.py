"""HPACK for the h2 router's connections, cheaper than hpack's own (sans-I/O).

Theory of operation
-------------------
A passed HTTP/2 stream has its header blocks decoded and encoded again twice (request
and response), and with the ``hpack`` package that coding was most of the router's cost.
Two substitutes, plugged into h2's ``H2Connection.encoder`` / ``.decoder`` by ``install``:

* ``StatelessEncoder`` never inserts into the dynamic table: every field is an indexed
  static-table entry, or a literal *without indexing* (RFC 7541 §6.2.2) with a static
  name index where there is one, or *never indexed* (§6.2.3) when the field came to us
  that way (an intermediary must keep that, §7.1.3). So a field's encoding depends on the
  field alone and is memoised; the peer's decoder table stays empty. The cost is a few
  bytes more per block, on a network path that is local. Strings are sent without
  Huffman coding (§5.2 allows either).
* ``CachingDecoder`` memoises whole blocks that leave its dynamic table unchanged: the
  steady state of a connection, where a client re-sending the same fields references
  its table and adds nothing. A version counter, bumped by every table insertion and
  resize, keys the memo, so a hit is always exactly what decoding would have produced.

Both memos are bounded (``MEMO_ENTRIES``) and simply cleared when full.
"""

from __future__ import annotations

from collections.abc import Iterable

from h2.connection import H2Connection
from hpack import Decoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.table import HeaderTable

# Memoised fields (encoder) and blocks (decoder) per connection: the distinct headers of
# a busy API fit, and a memo of hostile variety costs at most this many entries.
MEMO_ENTRIES = 2048

_STATIC: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)

_TABLE_SIZE_ZERO = b"\x20"  # dynamic table size update to 0 (RFC 7541 §6.3)


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """RFC 7541 §5.1 integer with an N-bit prefix; ``flags`` fill the bits above it."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    return _integer(len(data), 7, 0x00) + data  # H bit clear: no Huffman coding


def encode_field(name: bytes, value: bytes, sensitive: bool) -> bytes:
    """One header field, independent of any dynamic table."""
    if not sensitive:
        index = _STATIC.get((name, value))
        if index is not None:
            return _integer(index, 7, 0x80)  # §6.1 indexed
    flags = 0x10 if sensitive else 0x00  # §6.2.3 never indexed, §6.2.2 without indexing
    name_index = _STATIC_NAMES.get(name)
    if name_index is not None:
        return _integer(name_index, 4, flags) + _string(value)
    return bytes((flags,)) + _string(name) + _string(value)


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


class StatelessEncoder:
    """What h2 needs of an encoder (``encode``, ``header_table_size``); see the module doc."""

    def __init__(self) -> None:
        self._memo: dict[tuple[bytes, bytes, bool], bytes] = {}
        self._size_update = False

    @property
    def header_table_size(self) -> int:
        return 0

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # The peer changed SETTINGS_HEADER_TABLE_SIZE: say we use none of it, which fits
        # any limit (a size update opens the next block, RFC 7541 §4.2).
        self._size_update = True

    def encode(self, headers: Iterable[tuple[bytes | str, bytes | str]],
               huffman: bool = True) -> bytes:
        memo = self._memo
        parts = [_TABLE_SIZE_ZERO] if self._size_update else []
        self._size_update = False
        for header in headers:
            name, value = _as_bytes(header[0]), _as_bytes(header[1])
            key = (name, value, isinstance(header, NeverIndexedHeaderTuple))
            encoded = memo.get(key)
            if encoded is None:
                encoded = encode_field(*key)
                if len(memo) >= MEMO_ENTRIES:
                    memo.clear()
                memo[key] = encoded
            parts.append(encoded)
        return b"".join(parts)


class _VersionedTable(HeaderTable):
    """hpack's table, counting its changes."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.version += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        self.version += 1
        HeaderTable.maxsize.fset(self, value)  # type: ignore[attr-defined]


class CachingDecoder(Decoder):
    """hpack's decoder with a memo of blocks that change nothing; see the module doc."""

    def __init__(self) -> None:
        super().__init__()
        self._table = _VersionedTable()
        self.header_table = self._table
        self.max_allowed_table_size = self._table.maxsize
        self._memo: dict[bytes, tuple[int, list[HeaderTuple]]] = {}

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        key = bytes(data)
        version = self._table.version
        hit = self._memo.get(key)
        if hit is not None and hit[0] == version and raw:
            return list(hit[1])
        headers = list(super().decode(data, raw=raw))
        if raw and self._table.version == version:
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            self._memo[key] = (version, headers)
            return list(headers)
        return headers


def install(conn: H2Connection) -> None:
    """Give a fresh h2 connection the codec of this module (before any frame)."""
    decoder = CachingDecoder()
    decoder.max_header_list_size = conn.decoder.max_header_list_size
    conn.decoder = decoder
    conn.encoder = StatelessEncoder()  # type: ignore[assignment]
