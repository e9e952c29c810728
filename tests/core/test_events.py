"""Typed events: a wire row parses once into a RequestEvent, and its JSON (``waylay run
--events``) is exactly the object the row always made: same keys, order and omissions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from waylay.core.engine.events import (
    Capture,
    ErrorEvent,
    MirrorOutcome,
    RequestEvent,
    StartedEvent,
    SubscribedEvent,
    WarningEvent,
    notice_event,
    request_event,
    row_of,
    started_event,
    to_json,
    with_pod,
)
from waylay.core.engine.flow import ROW_FIELDS, FlowRecord, FlowRow, MirrorResult, Verdict
from waylay.core.engine.wire import RequestStart


def reference_json(row: FlowRow) -> dict[str, Any]:
    """What a row meant before events were typed: "type", the row's fields in order, then
    its extras as sent."""
    event: dict[str, Any] = {"type": "request"}
    event.update(zip(ROW_FIELDS, row, strict=False))
    event.update(row[-1] or {})
    return event


def record(verdict: Verdict, *, capture: bool = False, **fields: Any) -> FlowRecord:
    rec = FlowRecord(id=7, ts=1700000000.123456789, port=80, protocol="http/1.1",
                     verdict=verdict, method="POST", authority="shop", path="/api?x=1",
                     status=201, duration_ms=3.25, bytes_in=4, bytes_out=9,
                     matched="path: ^/api" if verdict is not Verdict.PASSED else None,
                     **fields)
    if capture:
        rec.request_headers = [(b"Host", b"shop"), (b"Content-Length", b"4")]
        rec.response_headers = [(b"Content-Type", b"application/json")]
        rec.request_body, rec.response_body = bytearray(b"ping"), bytearray(b'{"ok": 1}')
    return rec


def rows() -> dict[str, FlowRow]:
    """Representative rows, as the agent makes them."""
    mirror = MirrorResult(clause="path: ^/api", status=500, duration_ms=1.5)
    failed = MirrorResult(clause=None, error="connection refused")
    answered = MirrorResult(clause="path: ^/api", status=200, duration_ms=2.0,
                            headers=[(b"X-Local", b"1")], body=bytearray(b"local"))
    # A passed request whose body a body filter could not read: the reason comes last.
    skipped = record(Verdict.PASSED, capture=True).to_row()
    skipped[-1]["body_skipped"] = "not JSON (text/plain)"
    tcp = FlowRecord(id=9, ts=5.0, port=5432, protocol="tcp", verdict=Verdict.STOLEN,
                     duration_ms=10.0, bytes_in=100, bytes_out=200, matched="whole port")
    return {
        "stolen": record(Verdict.STOLEN).to_row(),
        "passed": record(Verdict.PASSED).to_row(),
        "mirrored seen as passed": record(Verdict.MIRRORED).to_row(),
        "mirrored": record(Verdict.MIRRORED).to_row(mirror=mirror),
        "mirror error": record(Verdict.MIRRORED).to_row(mirror=failed),
        "mirror of another's steal": record(Verdict.STOLEN).to_row(mirror=mirror,
                                                                   hide_remote=True),
        "mirror with local answer, captured": record(
            Verdict.MIRRORED, capture=True).to_row(mirror=answered),
        "captured, truncated": record(Verdict.STOLEN, capture=True,
                                      body_truncated=True).to_row(),
        "captured, hidden remote": record(Verdict.STOLEN, capture=True).to_row(
            mirror=answered, hide_remote=True),
        "raw tcp": tcp.to_row(),
        "body skipped": skipped,
        "unanswered": FlowRecord(id=3, ts=2.5, port=80, protocol="h2",
                                 verdict=Verdict.STOLEN, method="GET", path="/").to_row(),
    }


@pytest.mark.parametrize("name", list(rows()))
def test_row_to_event_to_json_is_the_rows_old_object(name: str) -> None:
    """For every kind of row, the typed event's JSON line is byte for byte the old one."""
    row = json.loads(json.dumps(rows()[name]))  # as the wire delivers it
    event = request_event(row)
    assert json.dumps(to_json(event)) == json.dumps(reference_json(row))


@pytest.mark.parametrize("name", list(rows()))
def test_event_to_row_round_trips(name: str) -> None:
    """A stand-in agent's rows (row_of) read back as the same event and the same row."""
    row = json.loads(json.dumps(rows()[name]))
    event = request_event(row)
    assert row_of(event) == row
    assert request_event(row_of(event)) == event


def test_events_are_typed_attributes() -> None:
    """Mirror and capture keys become their own values; the verdict an enum."""
    event = request_event(rows()["mirror with local answer, captured"])
    assert event.verdict is Verdict.MIRRORED
    assert (event.status, event.matched) == (200, "path: ^/api")
    assert event.mirror == MirrorOutcome(remote_status=201, remote_duration_ms=3.25,
                                         local_headers=(("X-Local", "1"),), local_body="local")
    assert event.capture == Capture(
        request_headers=(("Host", "shop"), ("Content-Length", "4")), request_body="ping",
        response_headers=(("Content-Type", "application/json"),),
        response_body='{"ok": 1}')
    plain = request_event(rows()["passed"])
    assert (plain.verdict, plain.mirror, plain.capture, plain.matched) == (
        Verdict.PASSED, None, None, None)


def test_a_pods_events_say_so_last() -> None:
    """with_pod adds ``pod`` as the last key of any kind of event."""
    row = rows()["captured, truncated"]
    line = to_json(with_pod(request_event(row), "shop-7f9c"))
    assert list(line)[-1] == "pod"
    assert line == {**reference_json(row), "pod": "shop-7f9c"}
    assert to_json(with_pod(WarningEvent(message="m"), "p")) == {
        "type": "warning", "message": "m", "pod": "p"}


def test_other_kinds_json() -> None:
    """started, subscribed, warning and error events keep their documented keys."""
    start = RequestStart(stream=5, sub_id=1, port=8080, method="GET", target="/slow",
                         http_version="1.1", headers=(("Host", "svc"),), peer="1.2.3.4:5",
                         flow_id=42)
    started = started_event(start, 42, 1700000000.1234567)
    assert started == StartedEvent(id=42, ts=1700000000.123457, port=8080,
                                   protocol="http/1.1", method="GET", authority="svc",
                                   path="/slow")
    assert json.dumps(to_json(started)) == json.dumps({
        "type": "started", "id": 42, "ts": 1700000000.123457, "port": 8080,
        "protocol": "http/1.1", "method": "GET", "authority": "svc", "path": "/slow",
        "verdict": "stolen"})
    assert to_json(SubscribedEvent(port=80, mode="mirror", filter=None)) == {
        "type": "subscribed", "port": 80, "mode": "mirror", "filter": None}
    assert notice_event("error", "x") == ErrorEvent(message="x")
    assert notice_event("warning", "y") == WarningEvent(message="y")
    assert to_json(notice_event("info", "z")) == {"type": "warning", "message": "z"}


@pytest.mark.parametrize(("row", "says"), [
    ([1, 2], "elements"),
    ("not a row", "elements"),
    ([1, 1.0, 80, "tcp", None, None, None, "stolen", None, None, 0, 0, None, "x"],
     "null or an object"),
    ([1, 1.0, 80, "tcp", None, None, None, "taken", None, None, 0, 0, None, None], "verdict"),
    (["1", 1.0, 80, "tcp", None, None, None, "stolen", None, None, 0, 0, None, None], "id"),
    ([1, 1.0, 80, "tcp", None, None, None, "stolen", "200", None, 0, 0, None, None],
     "status"),
    ([1, 1.0, 80, "http/1.1", "GET", None, "/", "passed", 200, 1.0, 0, 0, None,
      {"request_headers": [["a"]]}], "request_headers"),
])
def test_bad_rows_are_refused_naming_the_field(row: Any, says: str) -> None:
    """A row that is not one raises ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=says):
        request_event(row)


def test_request_events_are_frozen() -> None:
    """Events are values: consumers cannot change what another consumer sees."""
    event = request_event(rows()["stolen"])
    with pytest.raises(AttributeError):
        event.status = 500  # type: ignore[misc]
    assert isinstance(event, RequestEvent)
