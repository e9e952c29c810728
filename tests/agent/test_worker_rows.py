"""Who hears of which request (waylay.agent.worker: record, record_row, _send_record): each
session gets only its own view. A real Agent and Registry, fake session links that
capture the rows they are sent; mirror copies are real MirrorStreams answered by hand."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from waylay.agent.mirror_stream import MirrorStream
from waylay.agent.streams import LocalBound
from waylay.agent.worker import Agent
from waylay.core.engine.events import request_event, to_json
from waylay.core.engine.filters import compile_http_filter
from waylay.core.engine.flow import FlowRecord, FlowRow, Verdict
from waylay.core.engine.registry import Subscription
from waylay.core.engine.routing import MirrorStart
from waylay.core.engine.wire import End, Message, Reset, ResponseStart

PORT = 80
OTHER_PORT = 81


class FakeLink:
    """What the agent uses of a ClientLink; captures flow rows, frames and warnings."""

    def __init__(self, link_id: int) -> None:
        self.link_id = link_id
        self.name = f"session-{link_id}"
        self.rows: list[FlowRow] = []
        self.sent: list[Message] = []
        self.warnings: list[str] = []
        self.streams: dict[int, Any] = {}
        self.mirrors_in_flight = 0
        self.congested = False
        self.client_subs: dict[int, int] = {}
        self.bounds: dict[int, Any] = {}
        self.mirror_drops = 0
        self.shadowed = 0

    def hold_head(self, stream: Any) -> None:
        stream.release_head()  # the real link holds it until the loop turn ends

    def send_flow(self, row: FlowRow) -> None:
        self.rows.append(row)

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def send_raw(self, frame: bytes) -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def note(self) -> None:
        pass

    def bound_for(self, sub_id: int) -> LocalBound:
        return LocalBound()

    def events(self) -> list[dict[str, Any]]:
        return [to_json(request_event(row)) for row in self.rows]


class Bed:
    """An agent with four sessions: on port 80 a steal (link 1, sub 11) and two mirrors
    (links 2 and 3, subs 12 and 13); on port 81 a steal (link 4, sub 14)."""

    def __init__(self) -> None:
        self.agent = Agent(token="t", chain="WAYLAY-test", redirector=None,  # type: ignore[arg-type]
                           ttl=60.0)
        self.links = {i: FakeLink(i) for i in (1, 2, 3, 4)}
        self.agent.links.update(self.links)  # type: ignore[arg-type]
        for sub_id, link_id, port, mode, flt in [
            (11, 1, PORT, "steal", {"header_filter": "^x-steal: yes$"}),
            (12, 2, PORT, "mirror", {"path_filter": "^/m"}),
            (13, 3, PORT, "mirror", {"path_filter": "^/m"}),
            (14, 4, OTHER_PORT, "steal", {"path_filter": "^/x"}),
        ]:
            self.agent.registry.add(Subscription(sub_id=sub_id, link_id=link_id, port=port,
                                                 mode=mode, http_filter=compile_http_filter(flt)))
            self.links[link_id].client_subs[sub_id] = sub_id + 100
        self._ids = itertools.count(1)

    def record(self, *, verdict: Verdict = Verdict.PASSED, path: str = "/m/1",
               port: int = PORT, protocol: str = "http/1.1",
               matched: str | None = None) -> FlowRecord:
        return FlowRecord(id=next(self._ids), ts=1000.0, port=port, protocol=protocol,
                          verdict=verdict, method="GET" if protocol != "tcp" else None,
                          authority="svc", path=path if protocol != "tcp" else None,
                          matched=matched)

    def mirror(self, sub_id: int, record: FlowRecord, clause: str) -> MirrorStream:
        stream = self.agent.open_mirror_stream(sub_id, record.port, "10.0.0.9:1234", MirrorStart(
            sub_id=sub_id, method="GET", target=record.path or "/", http_version="1.1",
            headers=[(b"Host", b"svc")], record=record, clause=clause))
        assert stream is not None
        return stream

    def rows_of(self, link_id: int) -> list[dict[str, Any]]:
        return self.links[link_id].events()


def answer(stream: MirrorStream, status: int) -> None:
    """The mirroring session's local app answers its copy."""
    stream.receive(ResponseStart(stream=stream.stream_id, status=status, reason="",
                                 headers=(("x-local", "yes"),)))
    stream.receive(End(stream=stream.stream_id))


def finish(record: FlowRecord, status: int) -> None:
    record.status = status
    record.bytes_out = 6
    record.finish(1000.25)


def test_a_passed_request_goes_to_every_session_on_its_port() -> None:
    """A passed record reaches every session on its port as passed, none on other ports."""
    bed = Bed()
    record = bed.record(path="/plain")
    finish(record, 200)
    bed.agent.record(record, None, ())
    for link_id in (1, 2, 3):
        (event,) = bed.rows_of(link_id)
        assert (event["id"], event["verdict"], event["status"]) == (record.id, "passed", 200)
        assert event["matched"] is None and event["duration_ms"] == 250.0
        assert event["path"] == "/plain" and event["bytes_out"] == 6
    assert bed.rows_of(4) == []


def test_a_fast_lane_row_goes_to_every_session_on_its_port() -> None:
    """record_row sends the row and time-budget warnings to every session on its port only."""
    bed = Bed()
    row: FlowRow = [7, 1000.0, PORT, "http/1.1", "GET", "svc", "/a", "passed", 200, 1.5,
                    0, 2, None, None]
    bed.agent.record_row(PORT, row, ("header_filter: ^x-steal: yes$",))
    for link_id in (1, 2, 3):
        assert bed.links[link_id].rows == [row]
        (warning,) = bed.links[link_id].warnings
        assert "hit its time budget on request 7 (GET /a)" in warning
    assert bed.links[4].rows == [] and bed.links[4].warnings == []


def test_a_stolen_request_goes_to_its_thief_only() -> None:
    """A stolen record reaches the session that stole it, and nobody else on the port."""
    bed = Bed()
    record = bed.record(verdict=Verdict.STOLEN, path="/s", matched="header_filter: x")
    finish(record, 201)
    bed.agent.record(record, 11, ())
    (event,) = bed.rows_of(1)
    assert (event["verdict"], event["status"], event["matched"]) == ("stolen", 201,
                                                                     "header_filter: x")
    assert bed.rows_of(2) == [] and bed.rows_of(3) == [] and bed.rows_of(4) == []


def test_a_stolen_request_of_a_session_that_left_goes_nowhere() -> None:
    """The thief's session gone: its stolen record is not shown to the others."""
    bed = Bed()
    del bed.agent.links[1]
    record = bed.record(verdict=Verdict.STOLEN, path="/s")
    finish(record, 200)
    bed.agent.record(record, 11, ())
    assert all(bed.rows_of(i) == [] for i in (1, 2, 3, 4))


@pytest.mark.parametrize("remote_first", [True, False])
def test_a_mirrored_request_shows_each_session_its_own_copy(remote_first: bool) -> None:
    """Each mirroring session sees its own copy's answer and clause, as soon as both its
    copy and the original are done (never waiting for another session's copy); others see
    it passed, at once."""
    bed = Bed()
    record = bed.record()
    m2, m3 = bed.mirror(12, record, "path_filter: ^/m (2)"), bed.mirror(13, record,
                                                                          "path_filter: ^/m (3)")
    assert record.verdict is Verdict.MIRRORED and record.mirrors_pending == 2
    if remote_first:
        finish(record, 200)
        bed.agent.record(record, None, ())
        answer(m2, 201)
    else:
        answer(m2, 201)
        finish(record, 200)
    # A copy is still out: only its session waits; the others have their rows already
    # (session 1 saw it passed; session 2's copy is answered), session 4 is on no port.
    assert bed.rows_of(3) == [] and bed.rows_of(4) == []
    if remote_first:
        assert len(bed.rows_of(1)) == 1 and len(bed.rows_of(2)) == 1
    else:
        assert all(bed.rows_of(i) == [] for i in (1, 2))  # the original is still out
    if remote_first:
        answer(m3, 503)
    else:
        answer(m3, 503)
        bed.agent.record(record, None, ())
    (two,) = bed.rows_of(2)
    (three,) = bed.rows_of(3)
    (one,) = bed.rows_of(1)
    assert (two["verdict"], two["status"], two["matched"]) == ("mirrored", 201,
                                                                "path_filter: ^/m (2)")
    assert (three["verdict"], three["status"], three["matched"]) == ("mirrored", 503,
                                                                      "path_filter: ^/m (3)")
    for event in (two, three):
        assert (event["remote_status"], event["remote_duration_ms"]) == (200, 250.0)
        assert event["duration_ms"] is not None and "mirror_error" not in event
    assert (one["verdict"], one["status"], one["matched"]) == ("passed", 200, None)
    assert "remote_status" not in one
    assert bed.rows_of(4) == []


def test_a_mirror_copy_that_failed_carries_its_error_to_its_session_only() -> None:
    """A failed copy shows its error to its own session only."""
    bed = Bed()
    record = bed.record()
    m2, m3 = bed.mirror(12, record, "c2"), bed.mirror(13, record, "c3")
    finish(record, 200)
    bed.agent.record(record, None, ())
    m2.receive(Reset(stream=m2.stream_id, reason="local app unreachable"))
    answer(m3, 200)
    (two,) = bed.rows_of(2)
    (three,) = bed.rows_of(3)
    assert two["mirror_error"] == "local app unreachable" and two["status"] is None
    assert "mirror_error" not in three and three["status"] == 200


def test_a_stolen_and_mirrored_request_hides_the_thiefs_answer_from_the_mirror() -> None:
    """Stolen and mirrored: the mirror sees its copy with the thief's answer hidden."""
    bed = Bed()
    record = bed.record(verdict=Verdict.STOLEN, matched="header_filter: ^x-steal: yes$")
    record.request_headers = [(b"Host", b"svc"), (b"X-Steal", b"yes")]
    record.request_body = bytearray(b"")
    record.response_headers = [(b"X-Secret", b"thief's")]
    record.response_body = bytearray(b"thief's answer")
    m2 = bed.mirror(12, record, "path_filter: ^/m")
    assert record.verdict is Verdict.STOLEN
    finish(record, 200)
    bed.agent.record(record, 11, ())
    # The thief has its row at once; the mirror's waits for its own copy's answer.
    assert len(bed.rows_of(1)) == 1 and all(bed.rows_of(i) == [] for i in (2, 3, 4))
    answer(m2, 202)
    (thief,) = bed.rows_of(1)
    assert (thief["verdict"], thief["status"]) == ("stolen", 200)
    assert thief["response_body"] == "thief's answer"
    (mirror,) = bed.rows_of(2)
    assert (mirror["verdict"], mirror["status"], mirror["matched"]) == ("mirrored", 202,
                                                                         "path_filter: ^/m")
    assert mirror["remote_status"] is None and mirror["remote_duration_ms"] is None
    assert mirror["response_headers"] == [] and mirror["response_body"] == ""
    assert mirror["local_response_headers"] == [["x-local", "yes"]]
    assert bed.rows_of(3) == [] and bed.rows_of(4) == []


def test_a_mirrored_raw_tcp_connection_shows_as_mirrored_to_whole_mirrors_only() -> None:
    """A mirrored TCP connection shows mirrored to unfiltered mirrors, passed to others."""
    bed = Bed()
    bed.agent.registry.add(Subscription(sub_id=15, link_id=2, port=82, mode="mirror",
                                        http_filter=None))
    bed.agent.registry.add(Subscription(sub_id=16, link_id=3, port=82, mode="steal",
                                        http_filter=compile_http_filter({"path_filter": "/"})))
    record = bed.record(verdict=Verdict.MIRRORED, port=82, protocol="tcp")
    record.finish(1000.5)
    bed.agent.record(record, None, ())
    (two,) = bed.rows_of(2)
    (three,) = bed.rows_of(3)
    assert (two["verdict"], two["matched"], two["protocol"]) == ("mirrored", None, "tcp")
    assert three["verdict"] == "passed"
    assert bed.rows_of(1) == [] and bed.rows_of(4) == []


def test_each_record_is_sent_once_per_session() -> None:
    """Many records of all kinds: no session ever gets a row twice or another port's."""
    bed = Bed()
    for i in range(30):
        kind = i % 3
        if kind == 0:
            record = bed.record(path=f"/p{i}")
            finish(record, 200)
            bed.agent.record(record, None, ())
        elif kind == 1:
            record = bed.record(verdict=Verdict.STOLEN, path=f"/s{i}")
            finish(record, 200)
            bed.agent.record(record, 11, ())
        else:
            record = bed.record(path=f"/m{i}")
            copy = bed.mirror(12, record, "c")
            finish(record, 200)
            bed.agent.record(record, None, ())
            answer(copy, 200)
    for link_id in (1, 2, 3):
        ids = [event["id"] for event in bed.rows_of(link_id)]
        assert len(ids) == len(set(ids))
        assert {event["port"] for event in bed.rows_of(link_id)} <= {PORT}
    assert len(bed.rows_of(1)) == 30  # the thief: its steals and every passed/mirrored
    assert len(bed.rows_of(2)) == 20 and len(bed.rows_of(3)) == 20
    assert {e["verdict"] for e in bed.rows_of(2) if e["path"].startswith("/m")} == {"mirrored"}
    assert {e["verdict"] for e in bed.rows_of(3) if e["path"].startswith("/m")} == {"passed"}
    assert bed.agent._held == {} and bed.agent._mirror_results == {} and bed.agent._waiting == {}
