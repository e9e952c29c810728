"""Requests out of the dashboard: copy as curl, export as HAR 1.2 (pure functions).

Events carry what the engine captured: always method, authority, path, status, sizes and
timings; headers and bodies only when the engine sends them (``request_headers``,
``response_headers``, ``request_body``, ``response_body``: latin-1 decoded, maybe
truncated). Missing parts are left out, and a truncated body is marked in the HAR
(``_waylay.body_truncated``) and in a comment in the curl command.
"""

from __future__ import annotations

import datetime
import json
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

# Headers curl computes itself; copying them would conflict with what it sends.
_CURL_SKIP = frozenset({"content-length", "host", "connection", "transfer-encoding"})
_HTTP_VERSION = {"http/1.1": "HTTP/1.1", "h2": "HTTP/2", "tcp": "TCP"}


def request_url(event: Mapping[str, Any]) -> str:
    """``http://authority/path``; without an authority, the intercepted port on localhost."""
    authority = event.get("authority") or f"localhost:{event.get('port')}"
    path = event.get("path") or "/"
    return f"http://{authority}{path}"


def to_curl(event: Mapping[str, Any]) -> str:
    """A curl command line that repeats the request (as far as it was captured)."""
    method = str(event.get("method") or "GET")
    parts = ["curl"]
    if method != "GET":
        parts += ["-X", method]
    if event.get("protocol") == "h2":
        parts.append("--http2-prior-knowledge")
    headers = event.get("request_headers") or []
    host = next((v for n, v in headers if str(n).lower() == "host"), None)
    for name, value in headers:
        if str(name).lower() not in _CURL_SKIP and not str(name).startswith(":"):
            parts += ["-H", f"{name}: {value}"]
    if host and event.get("authority") and host != event.get("authority"):
        parts += ["-H", f"Host: {host}"]
    body = event.get("request_body")
    if body:
        parts += ["--data-binary", str(body)]
    parts.append(request_url(event))
    command = " ".join(shlex.quote(p) for p in parts)
    if body and event.get("body_truncated"):
        command += "  # body truncated by the capture"
    return command


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _headers(pairs: Iterable[Any] | None) -> list[dict[str, str]]:
    return [{"name": str(n), "value": str(v)} for n, v in (pairs or [])]


def _mime(headers: Iterable[Any] | None) -> str:
    for name, value in headers or []:
        if str(name).lower() == "content-type":
            return str(value)
    return ""


def har_entry(event: Mapping[str, Any]) -> dict[str, Any]:
    path = str(event.get("path") or "/")
    query = path.partition("?")[2]
    version = _HTTP_VERSION.get(str(event.get("protocol")), str(event.get("protocol")))
    req_headers, resp_headers = event.get("request_headers"), event.get("response_headers")
    request: dict[str, Any] = {
        "method": event.get("method") or "CONNECT",
        "url": request_url(event),
        "httpVersion": version,
        "cookies": [],
        "headers": _headers(req_headers),
        "queryString": [{"name": n, "value": v}
                        for n, v in parse_qsl(query, keep_blank_values=True)],
        "headersSize": -1,
        "bodySize": int(event.get("bytes_in") or 0),
    }
    if event.get("request_body") is not None:
        request["postData"] = {"mimeType": _mime(req_headers), "text": event["request_body"]}
    status = event.get("status")
    content: dict[str, Any] = {"size": int(event.get("bytes_out") or 0),
                               "mimeType": _mime(resp_headers)}
    if event.get("response_body") is not None:
        content["text"] = event["response_body"]
    duration = float(event.get("duration_ms") or 0.0)
    return {
        "startedDateTime": _iso(float(event.get("ts") or 0.0)),
        "time": duration,
        "request": request,
        "response": {
            "status": int(status) if status is not None else 0,
            "statusText": "",
            "httpVersion": version,
            "cookies": [],
            "headers": _headers(resp_headers),
            "content": content,
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": int(event.get("bytes_out") or 0),
        },
        "cache": {},
        "timings": {"send": 0, "wait": duration, "receive": 0},
        "_waylay": {
            "id": event.get("id"),
            "port": event.get("port"),
            "verdict": event.get("verdict"),
            "matched": event.get("matched"),
            "body_truncated": bool(event.get("body_truncated")),
        },
    }


def to_har(events: Iterable[Mapping[str, Any]], *, version: str) -> dict[str, Any]:
    """A HAR 1.2 document of the HTTP requests among ``events`` (raw TCP is left out)."""
    return {"log": {
        "version": "1.2",
        "creator": {"name": "waylay", "version": version},
        "entries": [har_entry(e) for e in events if e.get("method")],
    }}


def write_har(path: str | Path, events: Iterable[Mapping[str, Any]], *, version: str) -> int:
    """Write :func:`to_har` of ``events`` to ``path`` (blocking); how many entries."""
    doc = to_har(events, version=version)
    Path(path).write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")
    return len(doc["log"]["entries"])
