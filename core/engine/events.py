"""Events: what a session reports (docs/architecture.md §3), as typed values.

Theory of operation. The agent sends each finished request as a compact wire row
(``waylay.core.engine.flow.ROW_FIELDS``); the session parses it once, with
:func:`request_event`, into a :class:`RequestEvent`, and makes the other kinds itself
(:class:`StartedEvent` when a stolen request arrives, :class:`SubscribedEvent`,
:class:`WarningEvent`, :class:`ErrorEvent`). From there on every consumer (the dashboard,
``waylay run``) reads attributes. JSON exists only at the edges: :func:`to_json` makes the
object that ``waylay run --events`` writes (key names, order and omissions as documented),
and :func:`row_of` makes the wire row a stand-in agent sends.

A Kubernetes workload has one agent per pod: its events carry the ``pod`` they came from
(:func:`with_pod`), written last in JSON; ids are per agent, so (pod, id) names a request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, assert_never

from waylay.core.engine.flow import ROW_FIELDS, FlowRow, Verdict
from waylay.core.engine.wire_messages import RequestStart

# Header pairs as captured: latin-1 text, in arrival order.
Headers: TypeAlias = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Capture:
    """Headers and body starts of one exchange (sessions that asked for them).

    Bodies are latin-1 text, at most ``waylay.core.engine.flow.CAPTURE_BODY_BYTES`` each
    (``body_truncated`` says one was cut). A body is None only where a consumer dropped
    it from memory (the dashboard keeps bodies for its newest rows only): the agent always
    sends both.
    """

    request_headers: Headers
    request_body: str | None
    response_headers: Headers
    response_body: str | None
    body_truncated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorOutcome:
    """Beside a mirrored request's local answer (the event's ``status`` and
    ``duration_ms``): the remote app's answer, which the client got (None where it came
    from another session's local app), and what went wrong with the copy."""

    remote_status: int | None
    remote_duration_ms: float | None
    error: str | None = None
    # The local app's answer to the copy, captured (None: not captured, or dropped).
    local_headers: Headers | None = None
    local_body: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestEvent:
    """One finished request (or raw TCP connection: ``protocol`` "tcp", no method or
    path). ``status`` and ``duration_ms`` are the answer's that this session is
    entitled to: for a mirrored request, its own local app's."""

    id: int
    ts: float
    port: int
    protocol: str  # "http/1.1" | "h2" | "tcp"
    method: str | None
    authority: str | None
    path: str | None
    verdict: Verdict
    status: int | None
    duration_ms: float | None
    bytes_in: int  # body bytes from the remote client
    bytes_out: int  # body bytes sent back to it
    matched: str | None  # the filter clause that took it (stolen, mirrored)
    mirror: MirrorOutcome | None = None  # mirrored requests
    capture: Capture | None = None  # sessions that asked for captures
    # A passed request whose body a body filter could not read: why (not JSON, over the
    # body buffer's size or time, ...).
    body_skipped: str | None = None
    pod: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StartedEvent:
    """A stolen request reached the session and is in flight to the local app; its
    :class:`RequestEvent` (same ``id``) follows when the exchange ends."""

    id: int
    ts: float
    port: int
    protocol: str
    method: str | None
    authority: str | None
    path: str | None
    pod: str | None = None

    @property
    def verdict(self) -> Verdict:
        return Verdict.STOLEN


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribedEvent:
    """A port is intercepted: ``mode`` (steal, mirror), ``filter`` its text (None: the
    whole port)."""

    port: int
    mode: str
    filter: str | None
    pod: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WarningEvent:
    message: str
    pod: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorEvent:
    message: str
    pod: str | None = None


Event: TypeAlias = RequestEvent | StartedEvent | SubscribedEvent | WarningEvent | ErrorEvent
# The events that are about one request (a dashboard row).
FlowEvent: TypeAlias = RequestEvent | StartedEvent


def with_pod(event: Event, pod: str) -> Event:
    """``event`` as reported by the agent of ``pod``."""
    return dataclasses.replace(event, pod=pod)


def notice_event(level: str, message: str) -> WarningEvent | ErrorEvent:
    """An agent's notice: "error" is an error, any other level a warning."""
    return ErrorEvent(message=message) if level == "error" else WarningEvent(message=message)


def started_event(start: RequestStart, flow_id: int, ts: float) -> StartedEvent:
    """The in-flight event of a stolen request, from its head (``ts``: when it arrived).
    What only the end knows (status, duration, sizes) comes with its RequestEvent."""
    host = next((value for name, value in start.headers if name.lower() == "host"), None)
    return StartedEvent(id=flow_id, ts=round(ts, 6), port=start.port,
                        protocol="h2" if start.http_version == "2" else "http/1.1",
                        method=start.method, authority=host, path=start.target)


# --- the wire row -> the event ------------------------------------------------------------

_ROW_LEN = len(ROW_FIELDS) + 1


def request_event(row: FlowRow) -> RequestEvent:
    """The event of one wire row (``ROW_FIELDS`` in order, then null or an object of
    extras); raises ValueError, naming the field, if it is not one."""
    if not isinstance(row, list) or len(row) != _ROW_LEN:
        raise ValueError(f"a flow row has {_ROW_LEN} elements")
    (ident, ts, port, protocol, method, authority, path, verdict, status, duration_ms,
     bytes_in, bytes_out, matched, extras) = row
    # One expression for the usual, well-formed row: this runs for every request the
    # agent reports (thousands a second on a busy port).
    if not (type(ident) is int and type(port) is int and type(protocol) is str
            and type(bytes_in) is int and type(bytes_out) is int
            and (type(ts) is float or type(ts) is int)
            and (method is None or type(method) is str)
            and (authority is None or type(authority) is str)
            and (path is None or type(path) is str)
            and (status is None or type(status) is int)
            and (duration_ms is None or type(duration_ms) is float
                 or type(duration_ms) is int)
            and (matched is None or type(matched) is str)
            and (extras is None or type(extras) is dict)):
        _refuse(row)
    member = _VERDICTS.get(verdict) if type(verdict) is str else None
    if member is None:
        raise ValueError(f"flow row: verdict {verdict!r:.40} is not one of "
                         f"{', '.join(Verdict)}")
    mirror = capture = skipped = None
    if extras:
        if "remote_status" in extras or "remote_duration_ms" in extras:
            mirror = _mirror(extras)
        if "request_headers" in extras:
            capture = _capture(extras)
        skipped = _opt_str(extras.get("body_skipped"), "body_skipped")
    return RequestEvent(
        id=ident, ts=ts, port=port, protocol=protocol, method=method, authority=authority,
        path=path, verdict=member, status=status, duration_ms=duration_ms,
        bytes_in=bytes_in, bytes_out=bytes_out, matched=matched, mirror=mirror,
        capture=capture, body_skipped=skipped)


_VERDICTS = {str(member): member for member in Verdict}


def _refuse(row: FlowRow) -> None:
    """Raise the ValueError that names the first field of ``row`` of the wrong type."""
    for value, name, check in zip(row, ROW_FIELDS, _CHECKS, strict=False):
        check(value, name)
    if row[-1] is not None and not isinstance(row[-1], dict):
        raise ValueError("a flow row ends in null or an object")


def _mirror(extras: dict[str, Any]) -> MirrorOutcome:
    local = extras.get("local_response_headers")
    return MirrorOutcome(
        remote_status=_opt_int(extras.get("remote_status"), "remote_status"),
        remote_duration_ms=_opt_number(extras.get("remote_duration_ms"), "remote_duration_ms"),
        error=_opt_str(extras.get("mirror_error"), "mirror_error"),
        local_headers=None if local is None else _headers(local, "local_response_headers"),
        local_body=None if local is None else _str(extras.get("local_response_body", ""),
                                                    "local_response_body"))


def _capture(extras: dict[str, Any]) -> Capture:
    return Capture(
        request_headers=_headers(extras["request_headers"], "request_headers"),
        request_body=_str(extras.get("request_body", ""), "request_body"),
        response_headers=_headers(extras.get("response_headers", []), "response_headers"),
        response_body=_str(extras.get("response_body", ""), "response_body"),
        body_truncated=extras.get("body_truncated") is True)


def _int(value: object, name: str) -> int:
    if type(value) is not int:
        raise ValueError(f"flow row: {name} must be an integer, got {value!r:.40}")
    return value


def _opt_int(value: object, name: str) -> int | None:
    return None if value is None else _int(value, name)


def _number(value: object, name: str) -> float:
    if type(value) is not float and type(value) is not int:
        raise ValueError(f"flow row: {name} must be a number, got {value!r:.40}")
    return value


def _opt_number(value: object, name: str) -> float | None:
    return None if value is None else _number(value, name)


def _str(value: object, name: str) -> str:
    if type(value) is not str:
        raise ValueError(f"flow row: {name} must be a string, got {value!r:.40}")
    return value


def _opt_str(value: object, name: str) -> str | None:
    return None if value is None else _str(value, name)


def _any(value: object, name: str) -> object:
    return value  # the verdict: checked on its own


# The check of each of ROW_FIELDS, in order.
_CHECKS: tuple[Callable[[object, str], object], ...] = (
    _int, _number, _int, _str, _opt_str, _opt_str, _opt_str, _any, _opt_int, _opt_number,
    _int, _int, _opt_str)


def _headers(value: object, name: str) -> Headers:
    if not isinstance(value, list | tuple):
        raise ValueError(f"flow row: {name} must be a list of pairs")
    pairs = []
    for pair in value:
        if (not isinstance(pair, list | tuple) or len(pair) != 2
                or type(pair[0]) is not str or type(pair[1]) is not str):
            raise ValueError(f"flow row: {name} must be a list of [name, value] strings")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


# --- the event -> JSON, and -> a wire row (the edges) ----------------------------------------


def to_json(event: Event) -> dict[str, Any]:
    """The JSON object of ``event`` as ``waylay run --events`` writes it: ``type`` first,
    then docs/architecture.md §3's keys in their order; mirror and capture keys only where
    the request has them; ``pod`` last, only for a pod's events."""
    out: dict[str, Any]
    match event:
        case RequestEvent():
            out = {"type": "request", "id": event.id, "ts": event.ts, "port": event.port,
                   "protocol": event.protocol, "method": event.method,
                   "authority": event.authority, "path": event.path,
                   "verdict": str(event.verdict), "status": event.status,
                   "duration_ms": event.duration_ms, "bytes_in": event.bytes_in,
                   "bytes_out": event.bytes_out, "matched": event.matched}
            _put_extras(out, event)
        case StartedEvent():
            out = {"type": "started", "id": event.id, "ts": event.ts, "port": event.port,
                   "protocol": event.protocol, "method": event.method,
                   "authority": event.authority, "path": event.path,
                   "verdict": str(Verdict.STOLEN)}
        case SubscribedEvent():
            out = {"type": "subscribed", "port": event.port, "mode": event.mode,
                   "filter": event.filter}
        case WarningEvent():
            out = {"type": "warning", "message": event.message}
        case ErrorEvent():
            out = {"type": "error", "message": event.message}
        case _:
            assert_never(event)
    if event.pod is not None:
        out["pod"] = event.pod
    return out


def row_of(event: RequestEvent) -> FlowRow:
    """The wire row of ``event`` (:func:`request_event` reads it back); the pod is not
    part of it (a pod's agent does not know its name)."""
    extras: dict[str, Any] = {}
    _put_extras(extras, event)
    return [event.id, event.ts, event.port, event.protocol, event.method, event.authority,
            event.path, str(event.verdict), event.status, event.duration_ms, event.bytes_in,
            event.bytes_out, event.matched, extras or None]


def _put_extras(out: dict[str, Any], event: RequestEvent) -> None:
    """The keys a mirrored, captured or body-skipped request adds, in the order the agent
    sends them (``FlowRecord.to_row``)."""
    mirror, capture = event.mirror, event.capture
    if mirror is not None:
        out["remote_status"] = mirror.remote_status
        out["remote_duration_ms"] = mirror.remote_duration_ms
        if mirror.error is not None:
            out["mirror_error"] = mirror.error
        if mirror.local_headers is not None:
            out["local_response_headers"] = _pairs(mirror.local_headers)
            if mirror.local_body is not None:
                out["local_response_body"] = mirror.local_body
    if capture is not None:
        out["request_headers"] = _pairs(capture.request_headers)
        if capture.request_body is not None:
            out["request_body"] = capture.request_body
        out["response_headers"] = _pairs(capture.response_headers)
        if capture.response_body is not None:
            out["response_body"] = capture.response_body
        out["body_truncated"] = capture.body_truncated
    if event.body_skipped is not None:
        out["body_skipped"] = event.body_skipped


def _pairs(headers: Headers) -> list[list[str]]:
    return [[name, value] for name, value in headers]
