"""Flow records: what waylay reports about each intercepted request, and their compact wire
rows (the session makes each row a ``waylay.core.engine.events.RequestEvent``;
docs/architecture.md §3)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

# Body bytes kept per direction when capturing: enough for a JSON API payload in the
# detail view, small enough that 50,000 remembered requests stay within memory.
CAPTURE_BODY_BYTES = 16 * 1024


class Verdict(enum.StrEnum):
    STOLEN = "stolen"
    PASSED = "passed"
    MIRRORED = "mirrored"


@dataclass(kw_only=True, slots=True)
class FlowRecord:
    """One request (or one raw TCP connection) from arrival to the end of its response.

    Mutable while the exchange runs; reported per session by ``to_row`` when done.
    ``bytes_in`` counts body bytes from the remote client, ``bytes_out`` body bytes sent
    back to it.
    """

    id: int
    ts: float
    port: int
    protocol: str
    verdict: Verdict
    method: str | None = None
    authority: str | None = None
    path: str | None = None
    status: int | None = None
    duration_ms: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    matched: str | None = None
    # Captured for the dashboard's detail view when a session asked for it (else None).
    request_headers: list[tuple[bytes, bytes]] | None = None
    response_headers: list[tuple[bytes, bytes]] | None = None
    request_body: bytearray | None = None
    response_body: bytearray | None = None
    body_truncated: bool = False
    # Mirrored requests: copies whose local answer is still awaited (each session's own
    # answer stays with its copy, a MirrorResult, never on this shared record).
    mirrors_pending: int = 0
    remote_done: bool = False
    # A passed request whose body a body filter could not read: why (content type, not
    # JSON, over agent.max_body_buffer_size or _timeout); the event's "body_skipped".
    body_skipped: str | None = None

    def capture_request_body(self, data: bytes) -> None:
        self.request_body = self._capped(self.request_body, data)

    def capture_response_body(self, data: bytes) -> None:
        self.response_body = self._capped(self.response_body, data)

    def _capped(self, body: bytearray | None, data: bytes) -> bytearray | None:
        if body is None:
            return None
        room = CAPTURE_BODY_BYTES - len(body)
        if len(data) > room:
            self.body_truncated = True
        body += data[: max(room, 0)]
        return body

    @classmethod
    def from_row(cls, row: FlowRow) -> FlowRecord:
        """The record of a wire row without extras (``to_row`` of a plain record)."""
        return cls(id=row[0], ts=row[1], port=row[2], protocol=row[3], method=row[4],
                   authority=row[5], path=row[6], verdict=Verdict(row[7]), status=row[8],
                   duration_ms=row[9], bytes_in=row[10], bytes_out=row[11], matched=row[12])

    def finish(self, now: float) -> None:
        self.duration_ms = round((now - self.ts) * 1000.0, 3)

    def to_row(self, *, mirror: MirrorResult | None = None,
               hide_remote: bool = False) -> FlowRow:
        """This record as one session sees it, in the wire's compact form.

        ``mirror``: that session mirrored the request (its own local answer and clause);
        without it a mirrored request shows as passed (the session's filter did not take
        it). ``hide_remote``: the remote answer came from another session's local app (a
        request stolen by one session, mirrored by this one): leave it out.
        """
        extras: dict[str, Any] | None = None
        if mirror is None:
            verdict = self.verdict
            if verdict is Verdict.MIRRORED:
                verdict = Verdict.PASSED
            row: FlowRow = [self.id, round(self.ts, 6), self.port, self.protocol, self.method,
                            self.authority, self.path, str(verdict), self.status,
                            self.duration_ms, self.bytes_in, self.bytes_out,
                            self.matched if verdict is not Verdict.PASSED else None, None]
        else:
            row = [self.id, round(self.ts, 6), self.port, self.protocol, self.method,
                   self.authority, self.path, "mirrored", mirror.status, mirror.duration_ms,
                   self.bytes_in, self.bytes_out, mirror.clause, None]
            extras = {"remote_status": None if hide_remote else self.status,
                      "remote_duration_ms": None if hide_remote else self.duration_ms}
            if mirror.error is not None:
                extras["mirror_error"] = mirror.error
            if mirror.headers is not None:
                extras["local_response_headers"] = _text_pairs(mirror.headers)
                extras["local_response_body"] = bytes(mirror.body or b"").decode("latin-1")
        if self.request_headers is not None:
            extras = extras or {}
            extras["request_headers"] = _text_pairs(self.request_headers)
            extras["request_body"] = bytes(self.request_body or b"").decode("latin-1")
            if hide_remote:
                extras["response_headers"], extras["response_body"] = [], ""
            else:
                extras["response_headers"] = _text_pairs(self.response_headers or [])
                extras["response_body"] = bytes(self.response_body or b"").decode("latin-1")
            extras["body_truncated"] = self.body_truncated
        if self.body_skipped is not None:
            extras = extras or {}
            extras["body_skipped"] = self.body_skipped
        row[-1] = extras
        return row


# The compact form of a request event on the wire (``waylay.core.engine.wire`` FLOW frames): the
# agent sends one list per record in this order, no dict and no key names per request; the
# session parses it into the typed event with ``waylay.core.engine.events.request_event``.
# The last element is None, or a dict of the keys a mirrored or captured request adds.
ROW_FIELDS = ("id", "ts", "port", "protocol", "method", "authority", "path", "verdict",
              "status", "duration_ms", "bytes_in", "bytes_out", "matched")
FlowRow = list[Any]


@dataclass(kw_only=True, slots=True)
class MirrorResult:
    """What one mirroring session's local app did with its copy of a request. Each
    session gets only its own (never another session's local answer)."""

    clause: str | None  # that session's filter clause that matched
    status: int | None = None
    duration_ms: float | None = None
    error: str | None = None
    headers: list[tuple[bytes, bytes]] | None = None  # captured: the local answer
    body: bytearray | None = None
    body_truncated: bool = False

    def capture_body(self, data: bytes) -> None:
        if self.body is None:
            return
        room = CAPTURE_BODY_BYTES - len(self.body)
        if len(data) > room:
            self.body_truncated = True
        self.body += data[: max(room, 0)]


def _text_pairs(headers: list[tuple[bytes, bytes]]) -> list[list[str]]:
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]
