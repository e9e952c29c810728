"""The few library internals waylay relies on still behave as it relies on them.

Each one is used because the library has no public way to do the job; each test here names
the internal and where waylay uses it, so that a new release that changes it fails with a
message saying what to revisit rather than as a wrong header or a hung stream later.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, DataReceived, StreamEnded
from h2.exceptions import ProtocolError
from hpack import Decoder, Encoder
from hpack.table import HeaderTable

from waylay.core.engine.h2_codec import CachingDecoder
from waylay.core.engine.hpack_static import STATIC_TABLE, entry_size

_H2_GOAWAY = ("h2's H2Connection.state_machine.state (set back to CLIENT_OPEN after a "
              "graceful GOAWAY in waylay.core.client.local_h2._LocalConnection._dispatch)")
_HPACK_TABLE = ("hpack's Decoder.header_table / hpack.table.HeaderTable (extended by "
                "waylay.core.engine.h2_codec._VersionedTable to key the block memo)")


def _pair() -> tuple[H2Connection, H2Connection]:
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def _request(client: H2Connection, server: H2Connection) -> int:
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"),
                              (b":path", b"/"), (b":authority", b"x")])
    server.receive_data(client.data_to_send())
    return sid


def _goaway(client: H2Connection, server: H2Connection, last: int) -> None:
    server.close_connection(ErrorCodes.NO_ERROR, last_stream_id=last)
    events = client.receive_data(server.data_to_send())
    assert any(isinstance(e, ConnectionTerminated) for e in events)


def test_h2_closes_on_goaway_without_the_state_reset() -> None:
    """h2 still refuses to send after a graceful GOAWAY (else the workaround can go)."""
    client, server = _pair()
    sid = _request(client, server)
    _goaway(client, server, sid)
    try:
        client.send_data(sid, b"body", end_stream=True)
    except ProtocolError:
        return
    raise AssertionError(f"h2 now keeps streams open after GOAWAY: drop the use of {_H2_GOAWAY}")


def test_h2_state_reset_lets_covered_streams_finish() -> None:
    """Setting h2's connection state back to CLIENT_OPEN lets a covered stream finish."""
    client, server = _pair()
    sid = _request(client, server)
    _goaway(client, server, sid)
    machine = getattr(client, "state_machine", None)
    assert machine is not None and hasattr(machine, "state"), f"{_H2_GOAWAY} is gone"
    machine.state = ConnectionState.CLIENT_OPEN
    # The test's server is h2 too, which also closes once it sent the GOAWAY: the same
    # reset stands in for a server (the local app) that lets the stream finish.
    server.state_machine.state = ConnectionState.SERVER_OPEN
    try:
        client.send_data(sid, b"body", end_stream=True)
        events = server.receive_data(client.data_to_send())
        server.send_headers(sid, [(b":status", b"200")], end_stream=True)
        answer = client.receive_data(server.data_to_send())
    except ProtocolError as exc:
        raise AssertionError(f"{_H2_GOAWAY} no longer works: {exc}") from None
    assert any(isinstance(e, DataReceived) for e in events), _H2_GOAWAY
    assert any(isinstance(e, StreamEnded) for e in answer), _H2_GOAWAY


def test_hpack_decoder_uses_a_replaceable_header_table() -> None:
    """hpack's Decoder keeps its dynamic table in ``header_table``, a ``HeaderTable``."""
    decoder = Decoder()
    assert isinstance(getattr(decoder, "header_table", None), HeaderTable), _HPACK_TABLE
    assert isinstance(HeaderTable.__dict__.get("maxsize"), property), _HPACK_TABLE


def test_caching_decoder_never_serves_a_stale_block() -> None:
    """A block referencing the dynamic table decodes anew once the table changed."""
    encoder, decoder = Encoder(), CachingDecoder()
    decoder.decode(encoder.encode([(b"x-id", b"1")]))  # inserted at dynamic index 62
    reference = bytes([0x80 | 62])  # indexed field 62: whatever the table holds there
    first = decoder.decode(reference).fields
    assert first == [(b"x-id", b"1")], _HPACK_TABLE
    assert decoder.decode(reference).fields == first  # the memo, the table unchanged
    decoder.decode(encoder.encode([(b"x-id", b"2")]))  # now index 62; "1" moved to 63
    assert decoder.decode(reference).fields == [(b"x-id", b"2")], (
        f"the block memo served a stale block: {_HPACK_TABLE} changed")


def test_caching_decoder_sees_table_resizes() -> None:
    """A dynamic table size update in a block invalidates the memo too."""
    encoder, decoder = Encoder(), CachingDecoder()
    decoder.decode(encoder.encode([(b"x-id", b"1")]))
    reference = bytes([0x80 | 62])
    assert decoder.decode(reference).fields == [(b"x-id", b"1")]
    decoder.decode(b"\x20")  # size update to 0 (RFC 7541 §6.3): the table empties
    try:
        fields = decoder.decode(reference).fields
    except Exception:  # index 62 no longer exists: what hpack raises is its own business
        return
    raise AssertionError(f"a resize left the memo serving {fields!r}: {_HPACK_TABLE} changed")


def test_static_table_matches_hpack() -> None:
    """waylay's copy of RFC 7541 Appendix A agrees with hpack's decoder."""
    assert len(STATIC_TABLE) == 61
    decoder = Decoder()
    for index, field in enumerate(STATIC_TABLE, start=1):
        assert list(decoder.decode(bytes([0x80 | index]), raw=True)) == [field]
    assert entry_size(b"ab", b"cde") == 37
