"""The router's HPACK: the stateless encoder and the memoising decoder agree with hpack's."""

from __future__ import annotations

from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hypothesis import given
from hypothesis import strategies as st

from waylay.core.engine.h2_codec import CachingDecoder, StatelessEncoder, encode_field

names = st.sampled_from([b":method", b":path", b":status", b"content-type", b"cookie",
                         b"x-user", b"grpc-status", b"accept-encoding", b"user-agent"]) | \
    st.binary(min_size=1, max_size=12).map(lambda b: b.lower())
values = st.sampled_from([b"GET", b"/", b"200", b"gzip, deflate", b""]) | st.binary(max_size=300)
fields = st.tuples(names, values)
blocks = st.lists(st.lists(fields, max_size=8), max_size=12)


@given(blocks)
def test_stateless_encoding_decodes_to_the_same_fields(block_list: list[list[tuple]]) -> None:
    """hpack's own decoder reads every block back exactly, table untouched."""
    encoder, decoder = StatelessEncoder(), Decoder()
    for block in block_list:
        assert decoder.decode(encoder.encode(block), raw=True) == block
    assert len(decoder.header_table.dynamic_entries) == 0


def test_never_indexed_fields_stay_never_indexed() -> None:
    """A field that arrived never-indexed is sent never-indexed (RFC 7541 §7.1.3)."""
    secret = NeverIndexedHeaderTuple(b"authorization", b"Bearer x")
    (decoded,) = Decoder().decode(StatelessEncoder().encode([secret]), raw=True)
    assert isinstance(decoded, NeverIndexedHeaderTuple)
    assert encode_field(b":method", b"GET", False) == b"\x82"  # static index 2


def test_a_table_size_change_is_announced_once() -> None:
    """After the peer's SETTINGS_HEADER_TABLE_SIZE changes, the next block says size 0."""
    encoder = StatelessEncoder()
    encoder.header_table_size = 0
    first = encoder.encode([(b":method", b"GET")])
    assert first == b"\x20\x82" and encoder.encode([(b":method", b"GET")]) == b"\x82"
    decoder = Decoder()
    decoder.max_allowed_table_size = 0
    assert decoder.decode(first, raw=True) == [(b":method", b"GET")]


@given(blocks, st.lists(st.integers(0, 11), max_size=30), st.data())
def test_caching_decoder_matches_hpack_on_any_conversation(
        block_list: list[list[tuple]], order: list[int], data: st.DataObject) -> None:
    """Blocks from a stateful encoder, repeats and table resizes included, decode alike."""
    if not block_list:
        return
    encoder, plain, caching = Encoder(), Decoder(), CachingDecoder()
    for step in order or [0]:
        if data.draw(st.booleans()) and step % 5 == 0:
            encoder.header_table_size = data.draw(st.sampled_from([0, 64, 256, 4096]))
        block = block_list[step % len(block_list)]
        wire = encoder.encode(block, huffman=data.draw(st.booleans()))
        expected = plain.decode(wire, raw=True)
        assert caching.decode(memoryview(wire)).fields == expected
        assert list(caching.header_table.dynamic_entries) == list(
            plain.header_table.dynamic_entries)


def test_a_repeated_block_that_changes_nothing_is_one_lookup() -> None:
    """A block that leaves the table alone comes back as the same memoised object."""
    encoder, caching = Encoder(), CachingDecoder()
    fields = [(b":method", b"GET"), (b"x-user", b"alice")]
    first = caching.decode(encoder.encode(fields))  # inserts x-user into the table
    again = encoder.encode(fields)  # now all indexed: the table does not move
    block = caching.decode(again)
    assert block is not first and block.fields == first.fields == fields
    assert caching.decode(memoryview(b"pad" + again)[3:]) is block


def test_insertions_into_a_zero_size_table_keep_the_memo() -> None:
    """nginx with a table of 0 still sends incremental-indexing literals: no table change,
    so the block is memoised (the first one also resizes the table: not memoised)."""
    encoder, caching = Encoder(), CachingDecoder()
    encoder.header_table_size = 0
    first = encoder.encode([(b"server", b"nginx")], huffman=False)
    again = encoder.encode([(b"server", b"nginx")], huffman=False)
    assert caching.decode(first).fields == [(b"server", b"nginx")]
    block = caching.decode(again)
    assert caching.decode(again) is block
    assert len(caching.header_table.dynamic_entries) == 0
