"""Typed events for the dashboard's tests, with the defaults of a plain passed GET."""

from __future__ import annotations

from typing import Any

from waylay.core.engine.events import Capture, MirrorOutcome, RequestEvent, StartedEvent
from waylay.core.engine.flow import Verdict


def request(i: int, **fields: Any) -> RequestEvent:
    """The request event of request ``i``: a passed GET /p/i answered 200, unless told."""
    base: dict[str, Any] = dict(
        id=i, ts=100.0 + i, port=80, protocol="http/1.1", method="GET",
        authority="shop.local", path=f"/p/{i}", verdict=Verdict.PASSED, status=200,
        duration_ms=1.0, bytes_in=0, bytes_out=5, matched=None)
    base.update(fields)
    return RequestEvent(**base)


def started(i: int, **fields: Any) -> StartedEvent:
    """The in-flight event of stolen request ``i`` (GET /p/i)."""
    base: dict[str, Any] = dict(id=i, ts=100.0 + i, port=80, protocol="http/1.1",
                                method="GET", authority="shop.local", path=f"/p/{i}")
    base.update(fields)
    return StartedEvent(**base)


def captured(request_headers: tuple[tuple[str, str], ...] = (), request_body: str = "",
             response_headers: tuple[tuple[str, str], ...] = (), response_body: str = "",
             body_truncated: bool = False) -> Capture:
    return Capture(request_headers=request_headers, request_body=request_body,
                   response_headers=response_headers, response_body=response_body,
                   body_truncated=body_truncated)


def mirrored(remote_status: int | None, remote_duration_ms: float | None = 1.0,
             **fields: Any) -> MirrorOutcome:
    return MirrorOutcome(remote_status=remote_status, remote_duration_ms=remote_duration_ms,
                         **fields)
