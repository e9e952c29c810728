"""`waylay run`'s event output: JSON lines for every event, human lines for finished ones."""

from __future__ import annotations

import io

import pytest

from waylay.cli.run import EventWriter
from waylay.core.engine.events import (
    ErrorEvent,
    RequestEvent,
    StartedEvent,
    SubscribedEvent,
    WarningEvent,
)
from waylay.core.engine.flow import Verdict

STARTED = StartedEvent(id=4, ts=1.0, port=80, protocol="http/1.1", method="GET",
                       authority="svc", path="/slow")
FINISHED = RequestEvent(id=4, ts=1.0, port=80, protocol="http/1.1", method="GET",
                        authority="svc", path="/slow", verdict=Verdict.STOLEN, status=504,
                        duration_ms=2000.0, bytes_in=0, bytes_out=60, matched=None)


def test_started_events_are_json_lines_but_not_human_lines(
        capsys: pytest.CaptureFixture[str]) -> None:
    """An in-flight request is an --events line; stderr gets its line once it finishes."""
    sink = io.StringIO()
    write = EventWriter(sink, human=True)
    write(STARTED)
    assert sink.getvalue() == (
        '{"type":"started","id":4,"ts":1.0,"port":80,"protocol":"http/1.1","method":"GET",'
        '"authority":"svc","path":"/slow","verdict":"stolen"}\n')
    assert capsys.readouterr().err == ""
    write(FINISHED)
    assert "GET /slow -> 504" in capsys.readouterr().err


def test_every_kind_is_one_compact_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Subscribed, warning and error events are JSON lines too, the pod last when known."""
    sink = io.StringIO()
    write = EventWriter(sink, human=False)
    write(SubscribedEvent(port=80, mode="steal", filter="path: ^/api"))
    write(WarningEvent(message="slow", pod="shop-1"))
    write(ErrorEvent(message="refused"))
    assert sink.getvalue().splitlines() == [
        '{"type":"subscribed","port":80,"mode":"steal","filter":"path: ^/api"}',
        '{"type":"warning","message":"slow","pod":"shop-1"}',
        '{"type":"error","message":"refused"}']
    # Warnings and errors reach stderr even without human lines, the pod named first.
    assert capsys.readouterr().err.splitlines() == ["waylay: [shop-1] warning: slow",
                                                    "waylay: error: refused"]


def test_human_lines_of_requests_name_the_pod(capsys: pytest.CaptureFixture[str]) -> None:
    """A pod's request line starts with the pod, then verdict, port, request and status."""
    write = EventWriter(None, human=True)
    write(RequestEvent(id=1, ts=1.0, port=80, protocol="http/1.1", method="GET",
                       authority="svc", path="/a", verdict=Verdict.MIRRORED, status=200,
                       duration_ms=1.5, bytes_in=0, bytes_out=2, matched="path: ^/a",
                       pod="shop-2"))
    assert capsys.readouterr().err == (
        "[shop-2] MIRRORED :80 GET /a -> 200 (1.5 ms)  [path: ^/a]\n")
