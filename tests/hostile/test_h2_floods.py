"""HTTP/2 floods from a raw client (the h2 package over a socket) at a filtered steal port.

The session steals streams carrying ``x-user: alice`` on H2_PORT (hypercorn answers as
``remote`` in the namespace, and as ``local`` on loopback). Each flood is sent on a
connection of its own: rapid reset (HEADERS then RST_STREAM, many times), a SETTINGS
flood, a CONTINUATION flood (a header block that never ends) and an HPACK bomb (one
small block that decodes to megabytes of fields). The agent must survive (the same
worker, the session up), answer or close the flooded connection within a bounded wait,
and serve a normal stolen and a normal passed h2 request on a new connection afterwards.
Stolen streams reach the local app through ``servers/h2_frame_relay.py``, which reports
how the session treated the local app during a flood.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame

from tests.hostile.conftest import (
    DEADLINE_S,
    H2_PORT,
    HOSTILE_SERVERS,
    PYTHON,
    HostileBed,
    assert_same_agent,
    incoming,
)
from tests.integration.conftest import (
    WaylayRun,
    finish_waylay,
    launch_waylay,
    requires_root_netns,
    start_server,
    stop_process,
    waylay_argv,
    write_config,
)

pytestmark = [pytest.mark.integration, requires_root_netns,
              pytest.mark.usefixtures("memory_checkpoint")]

FRAME_RELAY = HOSTILE_SERVERS / "h2_frame_relay.py"
STEAL_ALICE = incoming("steal", '{"header_filter": "^x-user: alice$"}')
RAPID_RESETS = 2000  # past the agent's rapid-reset budget (1,000): it must cut the flood
RESETS_RELAYED = 900  # within that budget: every stolen stream's reset reaches the session
SETTINGS_FRAMES = 10_000
CONTINUATION_FRAMES = 10_000
BOMB_FIELD = 4000  # bytes of one field value; fits the default 4096-byte HPACK table
BOMB_REFERENCES = 4000  # about one byte each, ~16 MB of fields once decoded


@dataclass
class Outcome:
    """What a raw client saw on its connection."""

    responses: dict[int, dict[bytes, bytes]] = field(default_factory=dict)  # stream -> headers
    bodies: dict[int, bytes] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)
    reset: set[int] = field(default_factory=set)
    goaway: ConnectionTerminated | None = None
    closed: bool = False  # EOF or reset from the agent
    protocol_error: str | None = None  # our h2 state machine rejected what came


class RawH2:
    """A client connection driven by hand: the h2 state machine, or raw frames."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=DEADLINE_S)
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.outcome = Outcome()
        self.authority = f"{host}:{port}".encode()
        self.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def flush(self, raw: bytes = b"") -> bool:
        """Send what h2 queued (and ``raw``); False if the agent has closed on us."""
        data = self.conn.data_to_send() + raw
        try:
            self.sock.sendall(data)
        except OSError:
            self.outcome.closed = True
            return False
        return True

    def headers(self, path: str, user: str) -> list[tuple[bytes, bytes]]:
        return [(b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"http"),
                (b":authority", self.authority), (b"x-user", user.encode())]

    def pump(self, timeout: float) -> bool:
        """Read once (waiting at most ``timeout``) and feed h2; False once the link is over."""
        if self.outcome.closed or self.outcome.goaway is not None:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return True
        except OSError:
            self.outcome.closed = True
            return False
        if not data:
            self.outcome.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self.outcome.protocol_error = str(exc)
            return False
        for event in events:
            self._note(event)
        self.flush()
        return self.outcome.goaway is None

    def _note(self, event: object) -> None:
        out = self.outcome
        if isinstance(event, ResponseReceived):
            out.responses[event.stream_id] = dict(event.headers)
        elif isinstance(event, DataReceived):
            out.bodies[event.stream_id] = out.bodies.get(event.stream_id, b"") + event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, StreamEnded):
            out.ended.add(event.stream_id)
        elif isinstance(event, StreamReset):
            out.reset.add(event.stream_id)
        elif isinstance(event, ConnectionTerminated):
            out.goaway = event

    def drain(self) -> None:
        """Read what has arrived so far without waiting (keeps both sides' buffers moving)."""
        while self.pump(0.0) and self.readable():
            pass

    def readable(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0])

    def get(self, path: str, user: str) -> tuple[int, bytes, bytes] | None:
        """One request on this connection: (status, x-served-by, body), or None if the
        connection ended first. Bounded by DEADLINE_S."""
        if self.outcome.closed or self.outcome.goaway is not None:
            return None
        try:
            sid = self.conn.get_next_available_stream_id()
            self.conn.send_headers(sid, self.headers(path, user), end_stream=True)
        except ProtocolError:
            return None
        if not self.flush():
            return None
        return self.wait_stream(sid)

    def wait_stream(self, sid: int) -> tuple[int, bytes, bytes] | None:
        """The answer on stream ``sid`` (status, x-served-by, body), or None when the
        stream is reset or the connection ends first; bounded by DEADLINE_S."""
        deadline = time.monotonic() + DEADLINE_S
        while sid not in self.outcome.ended and sid not in self.outcome.reset:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer and no close on stream {sid} "
                                     f"within {DEADLINE_S:g} s: {self.outcome}")
            if not self.pump(min(left, 1.0)):
                return None
        if sid in self.outcome.reset:
            return None
        head = self.outcome.responses[sid]
        return (int(head[b":status"]), head.get(b"x-served-by", b""),
                self.outcome.bodies.get(sid, b""))

    def settle(self) -> None:
        """Read until the agent closes the connection or goes quiet (bounded)."""
        deadline = time.monotonic() + DEADLINE_S
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if not self.pump(0.5):
                return
            if not self.readable():
                if time.monotonic() - quiet_since >= 2.0:
                    return
            else:
                quiet_since = time.monotonic()


@dataclass
class FloodBed:
    hb: HostileBed
    run: WaylayRun
    relay_log: Path  # what h2_frame_relay saw between the session and the local app

    def relay_records(self) -> list[dict[str, Any]]:
        try:
            text = self.relay_log.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def flood_bed(memory_checkpoint: HostileBed,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[FloodBed]:
    """The steal of alice's streams, delivered to the local app through a frame relay."""
    hb = memory_checkpoint
    tmp = tmp_path_factory.mktemp("h2flood")
    relay_log = tmp / "relay.jsonl"
    relay, relay_port = start_server([str(PYTHON), str(FRAME_RELAY), str(hb.local_h2),
                                      "--log", str(relay_log)], "h2 frame relay")
    config = write_config(tmp, STEAL_ALICE)
    run = launch_waylay(waylay_argv(f"netns/{hb.ns}", config, [f"{H2_PORT}:{relay_port}"]), 1)
    try:
        yield FloodBed(hb, run, relay_log)
    finally:
        finish_waylay(run)
        stop_process(relay)


def _fresh_get(fb: FloodBed, path: str, user: str) -> tuple[int, bytes, bytes] | None:
    client = RawH2(fb.hb.ns_ip, H2_PORT)
    try:
        return client.get(path, user)
    finally:
        client.close()


def _normal_h2_works(fb: FloodBed, label: str) -> None:
    """New connections: bob's stream is answered by the remote app, alice's by the local one."""
    bob = _fresh_get(fb, f"/after/{label}/bob", "bob")
    assert bob is not None and bob[:2] == (200, b"remote"), bob
    alice = _fresh_get(fb, f"/after/{label}/alice", "alice")
    assert alice is not None and alice[:2] == (200, b"local"), alice


def _survived(fb: FloodBed, client: RawH2, label: str) -> str:
    """The agent answers or closes the flooded connection, lives on, and serves others."""
    # Either the flooded connection still answers, or it has been closed (GOAWAY or EOF).
    answer = client.get(f"/flooded/{label}", "bob")
    client.close()
    out = client.outcome
    if answer is None:
        assert out.closed or out.goaway is not None or out.protocol_error, out
        verdict = (f"closed (GOAWAY {out.goaway.error_code!r})" if out.goaway is not None
                   else f"closed ({out.protocol_error or 'EOF'})")
    else:
        assert answer[:2] == (200, b"remote"), answer
        verdict = "connection kept, next request answered"
    assert fb.run.proc.poll() is None, fb.run.stderr
    assert_same_agent(fb.hb)
    _normal_h2_works(fb, label)
    return verdict


def _rapid_reset(fb: FloodBed, label: str, streams: int,
                 users: tuple[str, ...]) -> tuple[RawH2, int]:
    """Open and at once reset ``streams`` streams, asking as ``users`` in turn."""
    client = RawH2(fb.hb.ns_ip, H2_PORT)
    sent = 0
    for i in range(streams):
        try:
            sid = client.conn.get_next_available_stream_id()
            user = users[i % len(users)]
            client.conn.send_headers(sid, client.headers(f"/{label}/{i}", user),
                                     end_stream=True)
            client.conn.reset_stream(sid)
        except ProtocolError:
            break  # our own state machine refuses (e.g. after a GOAWAY): the flood is over
        sent += 1
        if i % 100 == 99:
            if not client.flush():
                break
            client.drain()
            if client.outcome.goaway is not None:
                break
    client.flush()
    client.settle()
    return client, sent


@pytest.mark.parametrize(("streams", "users"), [
    (RAPID_RESETS, ("alice", "bob")),
    (RAPID_RESETS, ("alice",)),
    (RESETS_RELAYED, ("alice",)),
], ids=["2000-half-stolen", "2000-stolen", "900-stolen"])
def test_rapid_reset(flood_bed: FloodBed, streams: int, users: tuple[str, ...]) -> None:
    """Streams opened and reset at once: the agent survives, answers or closes, serves on,
    and the local app never has to end its connection to the session in error."""
    already = len(flood_bed.relay_records())
    client, sent = _rapid_reset(flood_bed, "reset", streams, users)
    verdict = _survived(flood_bed, client, "reset")
    records = flood_bed.relay_records()[already:]
    broken = [r for r in records if r["event"] == "frame_after_rst"]
    errors = [r for r in records if r["event"] == "goaway" and r["error_code"] != 0]
    # Frames the session sent on streams it had already reset are only reported: the h2
    # package answers each frame that was in flight toward a stream it reset with another
    # RST_STREAM (RFC 9113 §5.1 says to ignore them), a race that hypercorn tolerates.
    print(f"rapid reset {streams} ({'/'.join(users)}): {sent} streams sent; {verdict}; "
          f"toward the local app: {len(broken)} frames after RST_STREAM, GOAWAY errors {errors}")
    assert not errors, f"the local app ended connections in error: {errors}"


def test_settings_flood(flood_bed: FloodBed) -> None:
    """10,000 SETTINGS frames without reading the ACKs: the agent survives, serves on."""
    client = RawH2(flood_bed.hb.ns_ip, H2_PORT)
    sent = 0
    for i in range(SETTINGS_FRAMES):
        client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 65535 + i % 2})
        sent += 1
        if i % 500 == 499 and not client.flush():
            break
    client.flush()
    client.settle()
    print(f"settings flood: {sent} frames sent; {_survived(flood_bed, client, 'settings')}")


def test_continuation_flood(flood_bed: FloodBed) -> None:
    """A header block continued 10,000 times and never ended: the agent closes, serves on."""
    client = RawH2(flood_bed.hb.ns_ip, H2_PORT)
    sid = client.conn.get_next_available_stream_id()
    block = client.conn.encoder.encode(client.headers("/continuation", "alice"))
    first = HeadersFrame(sid, data=block)  # no END_HEADERS: CONTINUATION frames follow
    junk = b"x-junk: " + b"j" * 100
    client.flush(first.serialize())
    sent = 0
    batch = b"".join(ContinuationFrame(sid, data=junk).serialize() for _ in range(100))
    for _ in range(CONTINUATION_FRAMES // 100):
        if not client.flush(batch):
            break  # the agent closed the connection: the flood is over
        sent += 100
    # Our h2 state machine never saw those frames: read raw until the agent closes.
    deadline = time.monotonic() + DEADLINE_S
    said = b""
    client.sock.settimeout(1.0)
    while time.monotonic() < deadline:
        try:
            chunk = client.sock.recv(1 << 16)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        said += chunk
    else:
        raise AssertionError(f"the agent kept a never-ending header block open "
                             f"({sent} CONTINUATION frames) for {DEADLINE_S:g} s")
    client.close()
    goaways = _goaway_codes(said)
    assert flood_bed.run.proc.poll() is None, flood_bed.run.stderr
    assert_same_agent(flood_bed.hb)
    _normal_h2_works(flood_bed, "continuation")
    print(f"continuation flood: {sent} frames sent before the agent closed"
          + (f" (GOAWAY {goaways})" if goaways else " (no GOAWAY)"))


def _goaway_codes(data: bytes) -> list[int]:
    """The error codes of the GOAWAY frames among the frames in ``data``."""
    codes = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        if isinstance(frame, GoAwayFrame):
            frame.parse_body(view[9:9 + length])
            codes.append(frame.error_code)
        view = view[9 + length:]
    return codes


def test_hpack_bomb(flood_bed: FloodBed) -> None:
    """4,000 references to one 4 KB table entry (~16 MB decoded): the agent survives."""
    client = RawH2(flood_bed.hb.ns_ip, H2_PORT)
    sid = client.conn.get_next_available_stream_id()
    # hpack's encoder inserts the field once (RFC 7541 §6.2.1), then sends each repeat as
    # a one-byte index into the dynamic table: a small block that decodes to megabytes.
    bomb = [(b"x-bomb", b"b" * BOMB_FIELD)] * BOMB_REFERENCES
    client.conn.send_headers(sid, client.headers("/bomb", "alice") + bomb, end_stream=True)
    wire = client.conn.data_to_send()
    sent = len(wire)
    client.flush(wire)
    answer = client.wait_stream(sid)
    out = client.outcome
    assert answer is not None or sid in out.reset or out.closed or out.goaway is not None \
        or out.protocol_error, out
    verdict = (f"answered {answer[0]}" if answer is not None else
               "stream reset" if sid in out.reset else
               f"connection closed (GOAWAY {out.goaway.error_code!r})" if out.goaway is not None
               else "connection closed")
    after = _survived(flood_bed, client, "bomb")
    print(f"hpack bomb: {sent} bytes on the wire; {verdict}; afterwards {after}")
