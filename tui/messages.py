"""What the session client tells the app: Textual messages, one dataclass per fact.

The client (``waylay.tui.client``) owns the network side; the app and widgets only react to these.
Traffic arrives coalesced: one :class:`TrafficBatch` carries every event of the last few
hundred milliseconds, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from waylay.core.client.session import PortPlan
from waylay.core.engine.config import IncomingConfig
from waylay.core.engine.events import Event


@dataclass
class SessionProgress(Message):
    """The session is starting; ``text`` says what it waits for."""

    session: int
    target: str
    text: str


@dataclass
class SessionState(Message):
    """The session is attached (or its subscriptions changed)."""

    session: int
    target: str
    incoming: IncomingConfig
    cli_ports: dict[int, int | None]
    plans: list[PortPlan]
    listening: tuple[int, ...]


@dataclass
class SessionEnded(Message):
    """The session is over: ``error`` says why when it failed (None: stopped by us)."""

    session: int
    target: str
    error: str | None
    exit_code: int = 0


@dataclass
class TrafficBatch(Message):
    """Events (``waylay.core.engine.events``, docs/architecture.md §3) from one session
    since the previous batch, in order."""

    session: int
    events: list[Event]


@dataclass
class UpdateResult(Message):
    """The outcome of applying new settings to the running session."""

    session: int
    accepted: bool
    incoming: IncomingConfig
    previous: IncomingConfig
    what: str  # what was changed, for the notification ("filter", "mode mirror", ...)
    errors: list[str]
    quiet: bool = False  # the client's own step (no "applied" toast; refusals still shown)
