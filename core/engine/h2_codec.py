"""HPACK for the h2 router's connections, cheaper than hpack's own (sans-I/O).

Theory of operation
-------------------
A passed HTTP/2 stream has its header blocks decoded and encoded again twice (request
and response). Two pieces keep that cheap:

* ``StatelessEncoder`` never inserts into the dynamic table: every field is an indexed
  static-table entry, or a literal *without indexing* (RFC 7541 §6.2.2) with a static
  name index where there is one, or *never indexed* (§6.2.3) when the field came to us
  that way (an intermediary must keep that, §7.1.3). So a field's encoding depends on the
  field alone and is memoised, and so is a whole block's (``HeaderBlock.encoded``); the
  peer's decoder table stays empty. The cost is a few bytes more per block, on a network
  path that is local. Strings are sent without Huffman coding (§5.2 allows either).
* ``CachingDecoder`` memoises whole blocks that leave its dynamic table unchanged: the
  steady state of a connection, where a client re-sending the same fields references
  its table and adds nothing. A version counter, bumped by every table insertion and
  resize, keys the memo, so a hit is always exactly what decoding would have produced.
  The memo holds ``HeaderBlock`` objects, on which the router also keeps what it derived
  from the fields (the request head it parsed, the re-encoded block): a repeated block
  costs one dictionary lookup.

Both memos are bounded (``MEMO_ENTRIES``) and simply cleared when full. Decoding is
bounded too: a block may inflate to at most ``max_header_list_size`` (an HPACK bomb, a
small block referencing a large table entry many times, stops there).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from hpack import Decoder, HeaderTuple, NeverIndexedHeaderTuple

# hpack's table class is not part of its public API (hpack exports Encoder, Decoder and the
# header tuples), and no public hook tells when a decoder's dynamic table changed. The
# memo needs exactly that, so ``_VersionedTable`` extends it; hpack is bounded to <5 in
# pyproject.toml and tests/test_private_apis.py fails, naming what changed, if hpack's
# decoder stops using the table this way.
from hpack.table import HeaderTable

from waylay.core.engine.hpack_static import STATIC_TABLE, entry_size

if TYPE_CHECKING:
    from waylay.core.engine.h2_streams import RequestHead

# Memoised fields (encoder) and blocks (decoder) per connection: the distinct headers of
# a busy API fit, and a memo of hostile variety costs at most this many entries.
MEMO_ENTRIES = 2048
# RFC 9113 §6.5.2 SETTINGS_MAX_HEADER_LIST_SIZE we announce and enforce: the decoded size
# of a block (names, values and 32 bytes per field) at most this.
MAX_HEADER_LIST_SIZE = 64 * 1024

_STATIC: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(STATIC_TABLE, start=1):
    _STATIC.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)

TABLE_SIZE_ZERO = b"\x20"  # dynamic table size update to 0 (RFC 7541 §6.3)


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
    """Header blocks that need no dynamic table at the peer; see the module doc."""

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

    def prefix(self) -> bytes:
        """What the next block must start with: a pending table size update, once."""
        if self._size_update:
            self._size_update = False
            return TABLE_SIZE_ZERO
        return b""

    def fields(self, headers: Iterable[tuple[bytes | str, bytes | str]]) -> bytes:
        """The fields alone, without the prefix: the same bytes on any connection."""
        memo = self._memo
        parts = []
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

    def encode(self, headers: Iterable[tuple[bytes | str, bytes | str]]) -> bytes:
        """A whole block: the prefix, then the fields."""
        return self.prefix() + self.fields(headers)


class _VersionedTable(HeaderTable):
    """hpack's table, counting its changes."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def add(self, name: bytes, value: bytes) -> None:
        # An entry larger than the table empties it (RFC 7541 §4.4): into an empty table
        # that changes nothing. nginx, told to use a table of 0, still sends "with
        # incremental indexing" literals, and its blocks stay memoisable that way.
        if self.dynamic_entries or entry_size(name, value) <= self.maxsize:
            self.version += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        size: int = HeaderTable.maxsize.fget(self)  # type: ignore[attr-defined]
        return size

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        self.version += 1
        HeaderTable.maxsize.fset(self, value)  # type: ignore[attr-defined]


class HeaderBlock:
    """One decoded header block, as memoised: its fields and what was derived from them.

    ``fields`` come as hpack gives them with ``raw=True``: (bytes, bytes) tuples, a
    ``NeverIndexedHeaderTuple`` for a field that must stay never indexed. The other slots
    are filled by the router the first time it needs them, and must be pure functions of
    the fields (the block is shared by every stream that sends the same bytes).
    """

    __slots__ = ("encoded", "fields", "request")

    def __init__(self, fields: list[HeaderTuple]) -> None:
        self.fields = fields
        self.request: RequestHead | None = None
        self.encoded: bytes | None = None  # StatelessEncoder.fields of the fields


class CachingDecoder:
    """hpack's decoder behind a memo of blocks that change nothing; see the module doc."""

    def __init__(self, max_header_list_size: int = MAX_HEADER_LIST_SIZE) -> None:
        self._decoder = Decoder(max_header_list_size=max_header_list_size)
        self._table = _VersionedTable()
        self._decoder.header_table = self._table
        self._memo: dict[bytes, tuple[int, HeaderBlock]] = {}

    @property
    def header_table(self) -> HeaderTable:
        return self._table

    def decode(self, data: bytes | memoryview) -> HeaderBlock:
        """Decode one complete block (raises hpack's ``HPACKError`` subclasses)."""
        memo = self._memo
        version = self._table.version
        hit = memo.get(data)  # type: ignore[arg-type]  # a memoryview hashes as bytes do
        if hit is not None and hit[0] == version:
            return hit[1]
        key = bytes(data)
        block = HeaderBlock(list(self._decoder.decode(key, raw=True)))
        if self._table.version == version:
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            memo[key] = (version, block)
        return block


def encoded(block: HeaderBlock, encoder: StatelessEncoder) -> bytes:
    """The block's fields as ``encoder`` writes them (without a size-update prefix)."""
    data = block.encoded
    if data is None:
        data = block.encoded = encoder.fields(block.fields)
    return data
