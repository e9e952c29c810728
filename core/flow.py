"""Flow records: what waylay reports about each intercepted request (DESIGN §3 event lines)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


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

    def finish(self, now: float) -> None:
        self.duration_ms = round((now - self.ts) * 1000.0, 3)

    def to_event(self) -> dict[str, Any]:
        return {
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
