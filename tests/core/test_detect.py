"""Protocol detection decides as soon as the first bytes allow."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from waylay.core.engine.detect import (
    H2_PREFACE,
    MAX_DETECT_BYTES,
    Protocol,
    detect,
    h2_server_preface,
)


def test_http1_request_line() -> None:
    """A complete HTTP/1.x request line is HTTP/1."""
    assert detect(b"GET /x HTTP/1.1\r\nHost: a\r\n") is Protocol.HTTP1
    assert detect(b"POST / HTTP/1.0\n") is Protocol.HTTP1


def test_prefix_needs_more() -> None:
    """A prefix of a possible request line waits for more bytes."""
    for prefix in (b"G", b"GET", b"GET /", b"GET /x HTTP/1."):
        assert detect(prefix) is Protocol.NEED_MORE


def test_non_http_decided_on_first_byte() -> None:
    """TLS, binary and other protocols are TCP as soon as a byte contradicts HTTP."""
    assert detect(b"\x16\x03\x01") is Protocol.TCP
    assert detect(b"\x00") is Protocol.TCP
    assert detect(b"GET / HTTP/2\r\n") is Protocol.TCP
    assert detect(b"hello world\r\n") is Protocol.TCP


def test_h2_preface() -> None:
    """The HTTP/2 prior-knowledge preface is h2; its prefix waits."""
    assert detect(H2_PREFACE + b"\x00\x00") is Protocol.H2
    assert detect(H2_PREFACE[:10]) is Protocol.NEED_MORE


def test_endless_request_line_gives_up() -> None:
    """A line that never ends is not buffered forever."""
    assert detect(b"GET /" + b"a" * MAX_DETECT_BYTES) is Protocol.TCP


@given(st.binary(max_size=200))
def test_whole_and_prefix_agree(data: bytes) -> None:
    """Once decided, adding bytes never changes the answer."""
    first = detect(data)
    if first is not Protocol.NEED_MORE:
        assert detect(data + b"more bytes\r\n") is first


def test_h2_server_preface_is_recognised() -> None:
    """A SETTINGS frame on stream 0 is an h2c server's greeting; other bytes are not."""
    assert h2_server_preface(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64")
    assert h2_server_preface(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # empty SETTINGS
    assert not h2_server_preface(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")  # an ACK
    assert not h2_server_preface(b"220 smtp.example ESMTP\r\n")
    assert not h2_server_preface(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert not h2_server_preface(b"\x00\x00\x06\x04")
