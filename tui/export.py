"""Requests out of the dashboard: copy as curl, export as HAR 1.2 (pure functions).

Events (``waylay.core.engine.events``) carry what the engine captured: always method,
authority, path, status, sizes and timings; headers and bodies only when the engine sends
them (the event's ``capture``: latin-1 text, bodies maybe truncated). Missing parts are
left out, and a truncated body is marked in the HAR (``_waylay.body_truncated``) and in a
comment in the curl command. This and ``waylay run --events`` are the only places events
become JSON.
"""

from __future__ import annotations

import datetime
import json
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from waylay.core.engine.events import FlowEvent, Headers, RequestEvent

# Headers curl computes itself; copying them would conflict with what it sends.
_CURL_SKIP = frozenset({"content-length", "host", "connection", "transfer-encoding"})
_HTTP_VERSION = {"http/1.1": "HTTP/1.1", "h2": "HTTP/2", "tcp": "TCP"}


def request_url(event: FlowEvent) -> str:
    """``http://authority/path``; without an authority, the intercepted port on localhost."""
    authority = event.authority or f"localhost:{event.port}"
    path = event.path or "/"
    return f"http://{authority}{path}"


def to_curl(event: FlowEvent) -> str:
    """A curl command line that repeats the request (as far as it was captured)."""
    capture = event.capture if isinstance(event, RequestEvent) else None
    method = event.method or "GET"
    parts = ["curl"]
    if method != "GET":
        parts += ["-X", method]
    if event.protocol == "h2":
        parts.append("--http2-prior-knowledge")
    headers = capture.request_headers if capture else ()
    host = next((v for n, v in headers if n.lower() == "host"), None)
    for name, value in headers:
        if name.lower() not in _CURL_SKIP and not name.startswith(":"):
            parts += ["-H", f"{name}: {value}"]
    if host and event.authority and host != event.authority:
        parts += ["-H", f"Host: {host}"]
    body = capture.request_body if capture else None
    if body:
        parts += ["--data-binary", body]
    parts.append(request_url(event))
    command = " ".join(shlex.quote(p) for p in parts)
    if body and capture and capture.body_truncated:
        command += "  # body truncated by the capture"
    return command


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _headers(pairs: Headers | None) -> list[dict[str, str]]:
    return [{"name": n, "value": v} for n, v in (pairs or ())]


def _mime(headers: Headers | None) -> str:
    for name, value in headers or ():
        if name.lower() == "content-type":
            return value
    return ""


def har_entry(event: FlowEvent) -> dict[str, Any]:
    """One HAR entry; a request still in flight has status 0 and no sizes yet."""
    done = event if isinstance(event, RequestEvent) else None
    capture = done.capture if done else None
    path = event.path or "/"
    query = path.partition("?")[2]
    version = _HTTP_VERSION.get(event.protocol, event.protocol)
    req_headers = capture.request_headers if capture else None
    resp_headers = capture.response_headers if capture else None
    bytes_in, bytes_out = (done.bytes_in, done.bytes_out) if done else (0, 0)
    request: dict[str, Any] = {
        "method": event.method or "CONNECT",
        "url": request_url(event),
        "httpVersion": version,
        "cookies": [],
        "headers": _headers(req_headers),
        "queryString": [{"name": n, "value": v}
                        for n, v in parse_qsl(query, keep_blank_values=True)],
        "headersSize": -1,
        "bodySize": bytes_in,
    }
    if capture is not None and capture.request_body is not None:
        request["postData"] = {"mimeType": _mime(req_headers), "text": capture.request_body}
    status = done.status if done else None
    content: dict[str, Any] = {"size": bytes_out, "mimeType": _mime(resp_headers)}
    if capture is not None and capture.response_body is not None:
        content["text"] = capture.response_body
    duration = float((done.duration_ms if done else None) or 0.0)
    return {
        "startedDateTime": _iso(float(event.ts)),
        "time": duration,
        "request": request,
        "response": {
            "status": status if status is not None else 0,
            "statusText": "",
            "httpVersion": version,
            "cookies": [],
            "headers": _headers(resp_headers),
            "content": content,
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": bytes_out,
        },
        "cache": {},
        "timings": {"send": 0, "wait": duration, "receive": 0},
        "_waylay": {
            "id": event.id,
            "port": event.port,
            "verdict": str(event.verdict),
            "matched": done.matched if done else None,
            "body_truncated": bool(capture and capture.body_truncated),
        },
    }


def to_har(events: Iterable[FlowEvent], *, version: str) -> dict[str, Any]:
    """A HAR 1.2 document of the HTTP requests among ``events`` (raw TCP is left out)."""
    return {"log": {
        "version": "1.2",
        "creator": {"name": "waylay", "version": version},
        "entries": [har_entry(e) for e in events if e.method],
    }}


def write_har(path: str | Path, events: Iterable[FlowEvent], *, version: str) -> int:
    """Write :func:`to_har` of ``events`` to ``path`` (blocking); how many entries."""
    doc = to_har(events, version=version)
    Path(path).write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")
    return len(doc["log"]["entries"])
