"""Flow records: what waylay reports about each intercepted request (DESIGN §3 event lines)."""

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

    Mutable while the exchange runs; frozen into an event dict by ``to_event`` when done.
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
    # Mirrored requests: the local app's answer to the copy (the remote one is status).
    mirrors_pending: int = 0  # copies whose local answer is still awaited
    remote_done: bool = False
    mirror_status: int | None = None
    mirror_duration_ms: float | None = None
    mirror_error: str | None = None
    mirror_headers: list[tuple[bytes, bytes]] | None = None  # captured: the local answer
    mirror_body: bytearray | None = None

    def capture_mirror_body(self, data: bytes) -> None:
        self.mirror_body = self._capped(self.mirror_body, data)

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

    def finish(self, now: float) -> None:
        self.duration_ms = round((now - self.ts) * 1000.0, 3)

    def to_event(self) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "request",
            "id": self.id,
            "ts": round(self.ts, 6),
            "port": self.port,
            "protocol": self.protocol,
            "method": self.method,
            "authority": self.authority,
            "path": self.path,
            "verdict": str(self.verdict),
            "status": self.status,
            "duration_ms": self.duration_ms,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "matched": self.matched,
        }
        if self.verdict is Verdict.MIRRORED:
            # DESIGN §3: status and duration are the local app's; the remote's beside them.
            event["remote_status"] = self.status
            event["remote_duration_ms"] = self.duration_ms
            event["status"] = self.mirror_status
            event["duration_ms"] = self.mirror_duration_ms
            if self.mirror_error is not None:
                event["mirror_error"] = self.mirror_error
            if self.mirror_headers is not None:
                event["local_response_headers"] = _text_pairs(self.mirror_headers)
                event["local_response_body"] = bytes(self.mirror_body or b"").decode("latin-1")
        if self.request_headers is not None:
            event["request_headers"] = _text_pairs(self.request_headers)
            event["response_headers"] = _text_pairs(self.response_headers or [])
            event["request_body"] = bytes(self.request_body or b"").decode("latin-1")
            event["response_body"] = bytes(self.response_body or b"").decode("latin-1")
            event["body_truncated"] = self.body_truncated
        return event


def _text_pairs(headers: list[tuple[bytes, bytes]]) -> list[list[str]]:
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]
