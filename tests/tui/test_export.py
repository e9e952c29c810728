"""Copy as curl and HAR export."""

from __future__ import annotations

import shlex
from typing import Any

from tests.tui.events import captured, request, started
from waylay.core.engine.events import RequestEvent
from waylay.core.engine.flow import Verdict
from waylay.tui.export import to_curl, to_har

CAPTURE = captured(request_headers=(("Host", "shop.local"), ("Content-Type", "application/json"),
                                    ("Content-Length", "11"), ("X-User", "o'brien")),
                   response_headers=(("Content-Type", "application/json"),),
                   request_body='{"a": "b"}\n', response_body="{}")


def ev(**kw: Any) -> RequestEvent:
    fields: dict[str, Any] = dict(
        ts=1_790_000_000.25, method="POST", path="/api/orders?x=1&y=",
        verdict=Verdict.STOLEN, status=201, duration_ms=12.5, bytes_in=11, bytes_out=2,
        matched="method: POST", capture=CAPTURE)
    fields.update(kw)
    return request(3, **fields)


def test_curl_repeats_the_request() -> None:
    """Method, headers (minus the ones curl computes), body and URL, shell-quoted."""
    argv = shlex.split(to_curl(ev()))
    assert argv == ["curl", "-X", "POST", "-H", "Content-Type: application/json",
                    "-H", "X-User: o'brien", "--data-binary", '{"a": "b"}\n',
                    "http://shop.local/api/orders?x=1&y="]


def test_curl_without_capture_uses_what_the_event_has() -> None:
    event = ev(method="GET", authority=None, capture=None)
    assert to_curl(event) == "curl 'http://localhost:80/api/orders?x=1&y='"


def test_curl_marks_a_truncated_body() -> None:
    truncated = captured(request_body="{}", body_truncated=True)
    assert to_curl(ev(capture=truncated)).endswith("# body truncated by the capture")


def test_har_has_one_entry_per_http_request() -> None:
    """HAR 1.2 with request, response, timings and waylay's verdict; TCP is left out."""
    har = to_har([ev(), ev(id=4, protocol="tcp", method=None, path=None)], version="9")
    assert har["log"]["version"] == "1.2" and har["log"]["creator"]["name"] == "waylay"
    (entry,) = har["log"]["entries"]
    assert entry["startedDateTime"] == "2026-09-21T14:13:20.250Z"
    assert entry["time"] == 12.5
    assert entry["request"]["url"] == "http://shop.local/api/orders?x=1&y="
    assert entry["request"]["queryString"] == [{"name": "x", "value": "1"},
                                               {"name": "y", "value": ""}]
    assert entry["request"]["postData"] == {"mimeType": "application/json",
                                            "text": '{"a": "b"}\n'}
    assert entry["response"]["status"] == 201
    assert entry["response"]["content"] == {"size": 2, "mimeType": "application/json",
                                            "text": "{}"}
    assert entry["_waylay"] == {"id": 3, "port": 80, "verdict": "stolen",
                                "matched": "method: POST", "body_truncated": False}


def test_a_request_in_flight_is_exported_without_an_answer() -> None:
    """A started request has its method and URL, status 0 and no sizes yet."""
    (entry,) = to_har([started(5, ts=1_790_000_000.0)], version="9")["log"]["entries"]
    assert entry["request"]["url"] == "http://shop.local/p/5"
    assert (entry["response"]["status"], entry["time"], entry["request"]["bodySize"]) == (
        0, 0.0, 0)
    assert entry["_waylay"]["verdict"] == "stolen" and "postData" not in entry["request"]
