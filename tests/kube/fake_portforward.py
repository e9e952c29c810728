"""Port-forward over WebSocket as the kubelet serves it: the ``v4.channel.k8s.io`` protocol.

Theory of operation. The HTTP layer validates the upgrade (``handshake_headers``, RFC 6455
§4.2.1) and answers 101 with ``Sec-WebSocket-Accept`` (§4.2.2). ``PortForwardSession``
then owns the socket. Framing is websockets' sans-I/O ``Protocol``: it unmasks client
frames (§5.3; unmasked ones fail the connection), answers pings (§5.5.2) and runs the close
handshake (§7.1); this module reassembles fragmented messages (§5.4).

v4 channels: for the i-th requested port, channel 2i carries data and 2i+1 errors. The
first message on each channel is the channel byte plus the port number (2 bytes, little
endian); every later message is the channel byte plus payload. For each port, a thread
enters the pod's network namespace with ``setns(2)`` (per thread for network namespaces),
connects to localhost:PORT there as the kubelet does (IPv4, then IPv6), leaves again, and
relays. A failed connect is reported on the error channel with the kubelet's wording. When
every port's TCP side has ended, the server closes the WebSocket (status 1000); when the
client closes it, every TCP side is closed. The v4 protocol has no per-channel close, so a
client cannot half-close one port.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import os
import select
import socket
import struct
import threading
import time
from email.message import Message

from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

V4_PROTOCOL = "v4.channel.k8s.io"
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
# The official client sends at most 1 MiB + 1 channel byte per message; anything much
# larger is a broken peer, refused with close code 1009 instead of buffered.
MAX_MESSAGE = 16 << 20
CONNECT_TIMEOUT_S = 5.0
CLOSE_WAIT_S = 5.0  # how long a sent close frame waits for the client's answer
_POLL_S = 0.5  # how often the session notices the cluster shutting down
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class HandshakeError(Exception):
    """The upgrade request is not an acceptable WebSocket handshake (HTTP code, message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def handshake_headers(method: str, headers: Message[str, str],
                      protocols: list[str]) -> dict[str, str]:
    """The 101 response headers for a valid upgrade request; HandshakeError otherwise.

    ``protocols`` are all offered ``Sec-WebSocket-Protocol`` values (several headers or a
    comma-separated list); only v4.channel.k8s.io is modeled.
    """
    upgrade = headers.get("Upgrade", "").lower()
    connection = [t.strip().lower() for t in headers.get("Connection", "").split(",")]
    if method != "GET" or upgrade != "websocket" or "upgrade" not in connection:
        raise HandshakeError(400, "Upgrade request required")
    if headers.get("Sec-WebSocket-Version", "") != "13":
        raise HandshakeError(426, "unsupported WebSocket version (RFC 6455 §4.4: use 13)")
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid_key = False
    if not valid_key:
        raise HandshakeError(400, "invalid Sec-WebSocket-Key")
    offered = [p.strip() for value in protocols for p in value.split(",") if p.strip()]
    if V4_PROTOCOL not in offered:
        raise HandshakeError(400, f"the fake API server models only the {V4_PROTOCOL} "
                             f"port-forward subprotocol; offered: {offered}")
    accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
    return {"Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Accept": accept, "Sec-WebSocket-Protocol": V4_PROTOCOL}


# --- connecting inside a network namespace -----------------------------------------------


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _go_error(exc: OSError) -> str:
    """An OS error worded like Go's net package (``connect: connection refused``)."""
    if isinstance(exc, TimeoutError) or exc.errno is None:
        return "i/o timeout"
    return f"connect: {os.strerror(exc.errno).lower()}"


def connect_in_netns(netns: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> socket.socket:
    """A TCP connection to localhost:``port`` made inside the named network namespace.

    Switches the CALLING thread into the namespace and back (call it from a thread of your
    own: if switching back failed, that thread must not open other sockets). The socket
    keeps the namespace it was created in. Raises OSError worded like the kubelet's.
    """
    failures: list[str] = []
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                for family, host, label in ((socket.AF_INET, "127.0.0.1", "tcp4 127.0.0.1"),
                                            (socket.AF_INET6, "::1", "tcp6 [::1]")):
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    try:
                        sock.settimeout(timeout)
                        sock.connect((host, port))
                        sock.settimeout(None)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        return sock
                    except OSError as exc:
                        sock.close()
                        failures.append(f"dial {label}:{port}: {_go_error(exc)}")
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)
    raise OSError(f'failed to connect to localhost:{port} inside namespace "{netns}", '
                  f"IPv4: {failures[0]} IPv6 {failures[1]} ")


# --- the session -------------------------------------------------------------------------


class _Port:
    def __init__(self, index: int, number: int) -> None:
        self.index, self.number = index, number
        self.conn: socket.socket | None = None
        self.ready = threading.Event()  # set once the connect succeeded or failed

    def header(self, channel: int) -> bytes:
        return bytes([channel]) + struct.pack("<H", self.number)


class PortForwardSession:
    """One upgraded port-forward connection, relayed until either side ends it."""

    def __init__(self, sock: socket.socket, *, netns: str, pod: str, uid: str,
                 ports: list[int], closing: threading.Event) -> None:
        self._sock = sock
        self._netns, self._pod, self._uid = netns, pod, uid
        self._ports = [_Port(i, p) for i, p in enumerate(ports)]
        self._remaining = len(ports)
        self._closing = closing
        self._ws = Protocol(Side.SERVER, max_size=MAX_MESSAGE)
        self._lock = threading.Lock()  # guards self._ws and writes to self._sock
        self._partial: bytearray | None = None
        self._close_deadline: float | None = None

    def run(self) -> None:
        """Relay until the WebSocket is closed; closes every TCP side before returning."""
        threads = []
        try:
            for port in self._ports:
                self._send(port.header(2 * port.index))
                self._send(port.header(2 * port.index + 1))
            for port in self._ports:
                thread = threading.Thread(target=self._forward, args=(port,), daemon=True,
                                          name=f"fake-portforward-{self._pod}-{port.number}")
                thread.start()
                threads.append(thread)
            self._read_client()
        finally:
            for port in self._ports:
                port.ready.set()
                if port.conn is not None:
                    with contextlib.suppress(OSError):
                        port.conn.shutdown(socket.SHUT_RDWR)
            for thread in threads:
                thread.join(timeout=CONNECT_TIMEOUT_S + 5)
            for port in self._ports:
                if port.conn is not None:
                    port.conn.close()

    # WebSocket side

    def _flush(self) -> None:
        """Write what the protocol produced (lock held); b"" means half-close (SEND_EOF)."""
        for chunk in self._ws.data_to_send():
            if chunk:
                self._sock.sendall(chunk)
            else:
                self._sock.shutdown(socket.SHUT_WR)

    def _send(self, message: bytes) -> None:
        with self._lock:
            if self._ws.state is State.OPEN:
                self._ws.send_binary(message)
                with contextlib.suppress(OSError):  # the reader notices a dead client
                    self._flush()

    def _close(self, code: int, reason: str = "") -> None:
        with self._lock:
            if self._ws.state is State.OPEN:
                self._ws.send_close(code, reason)
                with contextlib.suppress(OSError):
                    self._flush()

    def _read_client(self) -> None:
        while True:
            if self._closing.is_set():
                self._close(1001, "fake API server shutting down")
            if self._ws.state is not State.OPEN and self._close_deadline is None:
                self._close_deadline = time.monotonic() + CLOSE_WAIT_S
            if self._close_deadline is not None and time.monotonic() > self._close_deadline:
                return
            if self._ws.close_sent is not None and self._ws.close_rcvd is not None:
                return  # §7.1.1: after the close handshake the server closes TCP first
            readable, _, _ = select.select([self._sock], [], [], _POLL_S)
            if not readable:
                continue
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            with self._lock:
                if data:
                    self._ws.receive_data(data)
                else:
                    self._ws.receive_eof()
                events = self._ws.events_received()
                with contextlib.suppress(OSError):
                    self._flush()
            for event in events:
                assert isinstance(event, Frame)
                self._on_frame(event)
            if not data or self._ws.state is State.CLOSED:
                return

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self._partial = bytearray(frame.data)
        elif frame.opcode is Opcode.CONT and self._partial is not None:
            self._partial += frame.data
        else:
            return  # control frames: the protocol already answered pings and closes
        if frame.fin:
            message, self._partial = bytes(self._partial), None
            self._deliver(message)

    def _deliver(self, message: bytes) -> None:
        channel = message[0] if message else 1
        if channel % 2 or channel // 2 >= len(self._ports) or len(message) < 2:
            return  # nothing travels from the client on error channels
        port = self._ports[channel // 2]
        port.ready.wait(CONNECT_TIMEOUT_S + 1)
        if port.conn is not None:
            with contextlib.suppress(OSError):  # its forwarding thread reports the end
                port.conn.sendall(message[1:])

    # TCP side

    def _forward(self, port: _Port) -> None:
        try:
            try:
                conn = port.conn = connect_in_netns(self._netns, port.number)
            except OSError as exc:
                self._send(bytes([2 * port.index + 1]) + (
                    f"error forwarding port {port.number} to pod {self._pod}, "
                    f"uid {self._uid}: {exc}").encode())
                return
            finally:
                port.ready.set()
            with contextlib.suppress(OSError):
                while data := conn.recv(65536):
                    self._send(bytes([2 * port.index]) + data)
        finally:
            with self._lock:
                self._remaining -= 1
                last = self._remaining == 0
            if last:
                self._close(1000)
