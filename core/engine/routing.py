"""The vocabulary between a protocol engine and the agent: routes, events and commands.

A protocol engine (``waylay.core.engine.http1``, ``waylay.core.engine.h2_router``) is sans-I/O: the
agent's driver feeds it the events below and executes the commands it returns, in order. Routes come
from a ``Decide`` callable the agent supplies, so a filter change takes effect on the very next
request.

The local-side events and the steal commands carry a ``stream``: the HTTP/2 stream id the
stolen request arrived on. HTTP/1.1 has one request in flight per connection and leaves
it at 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from waylay.core.engine.body_filter import BodySkip
from waylay.core.engine.filters import RequestView
from waylay.core.engine.flow import FlowRecord


@dataclass(frozen=True, kw_only=True, slots=True)
class Route:
    """Where one request goes: to a client's local app (``steal_by``) or to the original app."""

    steal_by: int | None  # subscription id of the session that takes it; None = pass through
    clause: str | None = None  # the filter clause that matched, for the event line
    timed_out: tuple[str, ...] = ()  # filter clauses that hit the regex time budget
    mirror_to: tuple[int, ...] = ()  # mirror subscriptions that get a copy
    mirror_clauses: tuple[str | None, ...] = ()  # the clause of each, as in mirror_to
    shadowed: tuple[int, ...] = ()  # later steal subscriptions that matched too (and lost)
    # Undecided: a body filter needs the request's body. The engine buffers it, at most
    # ``body_limit`` bytes for at most ``body_timeout_ms``, and asks again with it.
    wants_body: bool = False
    body_limit: int = 0
    body_timeout_ms: int = 0
    body_skipped: str | None = None  # why a body filter could not read the body (no match)
    # The answer carries the verdict header (a session's agent.inject_headers: VERDICT_HEADER).
    mark: bool = False


PASS = Route(steal_by=None)
# agent.inject_headers: the answer to a request tells who answered it, as mirrord's agent
# does with its own header ("Mirrord-Agent: passed-through").
VERDICT_HEADER = b"Waylay-Agent"
PASSED_MARK = b"passed-through"
STOLEN_MARK = b"stolen"


def marked_head(data: bytes, value: bytes = PASSED_MARK) -> bytes:
    """``data`` (a response head, possibly followed by body bytes) with the verdict header
    added as the head's last field."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data  # not a CRLF head (the parser refuses those): left as it came
    return b"".join((data[:end + 2], VERDICT_HEADER, b": ", value, data[end:]))


class Decide(Protocol):
    """Routes one request: from its head alone (``body`` None), or, once a Route said it
    ``wants_body``, with the body, or with why the engine has none (``BodySkip``)."""

    def __call__(self, view: RequestView, body: bytes | BodySkip | None = None, /) -> Route:
        ...


# --- events: driver -> engine ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class DownstreamData:
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class DownstreamClosed:
    """The remote client closed its sending side (EOF) or the connection broke."""


@dataclass(frozen=True, kw_only=True, slots=True)
class UpstreamData:
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class UpstreamClosed:
    """The original app closed the connection (or connecting to it failed: ``reason``)."""

    reason: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalResponse:
    """The head of the local app's response to the stolen request in flight."""

    stream: int = 0
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalData:
    stream: int = 0
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalEnd:
    """The local app's response is complete."""

    stream: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalTrailers:
    """Trailer fields of the local app's response (gRPC's grpc-status); LocalEnd follows."""

    stream: int = 0
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalAborted:
    """The session could not deliver the stolen request, or its link died, or the local app
    did not start answering in time. If nothing was sent to the client yet it gets
    ``status`` (504 for a local app that timed out) with ``reason`` in the body."""

    stream: int = 0
    reason: str
    status: int = 502


Event = (
    DownstreamData
    | DownstreamClosed
    | UpstreamData
    | UpstreamClosed
    | LocalResponse
    | LocalData
    | LocalEnd
    | LocalTrailers
    | LocalAborted
)


# --- commands: engine -> driver -------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class SendDownstream:
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class CloseDownstream:
    """Close the connection to the remote client (after flushing what was sent)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectUpstream:
    """Get a connection to the original app; ``SendUpstream`` may follow at once (queued)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SendUpstream:
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class ReleaseUpstream:
    """Done with the upstream connection: back to the pool if ``reusable``, else closed."""

    reusable: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class StealStart:
    """Open a stream to session ``sub_id`` carrying this request head; ``flow_id`` is the
    id of the flow record that will report it (the session shows it while in flight)."""

    stream: int = 0
    sub_id: int
    flow_id: int = 0
    method: str
    target: str
    http_version: str
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, kw_only=True, slots=True)
class StealData:
    stream: int = 0
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class StealEnd:
    """The stolen request's body is complete."""

    stream: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class StealTrailers:
    """Trailer fields of the stolen request; StealEnd follows."""

    stream: int = 0
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, kw_only=True, slots=True)
class StealAbort:
    """Abandon the stolen stream (the remote client went away)."""

    stream: int = 0
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class MirrorStart:
    """Open a copy of the current request to mirror subscription ``sub_id``."""

    stream: int = 0
    sub_id: int
    method: str
    target: str
    http_version: str
    headers: list[tuple[bytes, bytes]]
    record: FlowRecord  # the request's record (the copy's outcome is kept per session)
    clause: str | None = None  # the mirroring session's own clause that matched


@dataclass(frozen=True, kw_only=True, slots=True)
class MirrorData:
    stream: int = 0
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class MirrorEnd:
    """The copied request's body is complete."""

    stream: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class AwaitBody:
    """A request is held for its body (a body filter): unless it is decided first, call the
    engine's ``body_timeout`` at ``deadline`` (on the clock the driver passes as ``now``)."""

    deadline: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordFlow:
    """A request is finished; ``owner`` is the subscription that stole it (None if passed)."""

    record: FlowRecord
    owner: int | None
    timed_out: tuple[str, ...] = ()
    stream: int = 0


Command = (
    SendDownstream
    | CloseDownstream
    | ConnectUpstream
    | SendUpstream
    | ReleaseUpstream
    | StealStart
    | StealData
    | StealEnd
    | StealTrailers
    | StealAbort
    | MirrorStart
    | MirrorData
    | MirrorEnd
    | AwaitBody
    | RecordFlow
)
