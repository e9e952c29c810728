"""`waylay run`'s event output: JSON lines for every event, human lines for finished ones."""

from __future__ import annotations

import io
import json

import pytest

from waylay.cli.run import EventWriter

STARTED = {"type": "started", "id": 4, "ts": 1.0, "port": 80, "protocol": "http/1.1",
           "method": "GET", "authority": "svc", "path": "/slow", "verdict": "stolen"}


def test_started_events_are_json_lines_but_not_human_lines(
        capsys: pytest.CaptureFixture[str]) -> None:
    """An in-flight request is an --events line; stderr gets its line once it finishes."""
    sink = io.StringIO()
    write = EventWriter(sink, human=True)
    write(STARTED)
    assert json.loads(sink.getvalue()) == STARTED
    assert capsys.readouterr().err == ""
    write({**STARTED, "type": "request", "status": 504, "duration_ms": 2000.0,
           "bytes_in": 0, "bytes_out": 60, "matched": None})
    assert "GET /slow -> 504" in capsys.readouterr().err
