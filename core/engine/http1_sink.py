"""What the HTTP/1.1 engine asks of its driver (sans-I/O): ``Http1Sink``, the commands of
``waylay.core.engine.routing`` as calls, and ``CommandRecorder``, the sink that writes them
down as commands again for ``Http1Router.handle`` (playbook tests and readers).

docs/architecture.md, "The hot path", says why the engine calls instead of returning
command objects.
"""

from __future__ import annotations

from typing import Protocol

from waylay.core.engine.flow import FlowRecord, FlowRow
from waylay.core.engine.routing import (
    AwaitBody,
    CloseDownstream,
    Command,
    ConnectUpstream,
    MirrorData,
    MirrorEnd,
    MirrorStart,
    RecordFlow,
    ReleaseUpstream,
    SendDownstream,
    SendUpstream,
    StealAbort,
    StealData,
    StealEnd,
    StealStart,
)


class Http1Sink(Protocol):
    """What the engine asks of its driver: the commands of ``waylay.core.engine.routing``, as
    calls."""

    def send_downstream(self, data: bytes) -> None: ...
    def close_downstream(self) -> None: ...
    def connect_upstream(self) -> None: ...
    def send_upstream(self, data: bytes) -> None: ...
    def release_upstream(self, reusable: bool) -> None: ...
    def steal_start(self, command: StealStart) -> None: ...
    def steal_data(self, data: bytes) -> None: ...
    def steal_end(self) -> None: ...
    def steal_abort(self, reason: str) -> None: ...
    def mirror_start(self, command: MirrorStart) -> None: ...
    def mirror_data(self, data: bytes) -> None: ...
    def mirror_end(self) -> None: ...
    def await_body(self, deadline: float) -> None: ...
    def record_flow(self, record: FlowRecord, owner: int | None,
                    timed_out: tuple[str, ...]) -> None: ...
    def record_row(self, row: FlowRow, timed_out: tuple[str, ...]) -> None:
        """A passed request's record, already in wire form (the fast lane's)."""


class CommandRecorder:
    """An ``Http1Sink`` that writes each call down as a ``waylay.core.engine.routing`` command."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def take(self) -> list[Command]:
        commands, self.commands = self.commands, []
        return _coalesce(commands)

    def send_downstream(self, data: bytes) -> None:
        self.commands.append(SendDownstream(data=data))

    def close_downstream(self) -> None:
        self.commands.append(CloseDownstream())

    def connect_upstream(self) -> None:
        self.commands.append(ConnectUpstream())

    def send_upstream(self, data: bytes) -> None:
        self.commands.append(SendUpstream(data=data))

    def release_upstream(self, reusable: bool) -> None:
        self.commands.append(ReleaseUpstream(reusable=reusable))

    def steal_start(self, command: StealStart) -> None:
        self.commands.append(command)

    def steal_data(self, data: bytes) -> None:
        self.commands.append(StealData(data=data))

    def steal_end(self) -> None:
        self.commands.append(StealEnd())

    def steal_abort(self, reason: str) -> None:
        self.commands.append(StealAbort(reason=reason))

    def mirror_start(self, command: MirrorStart) -> None:
        self.commands.append(command)

    def mirror_data(self, data: bytes) -> None:
        self.commands.append(MirrorData(data=data))

    def mirror_end(self) -> None:
        self.commands.append(MirrorEnd())

    def await_body(self, deadline: float) -> None:
        self.commands.append(AwaitBody(deadline=deadline))

    def record_flow(self, record: FlowRecord, owner: int | None,
                    timed_out: tuple[str, ...]) -> None:
        self.commands.append(RecordFlow(record=record, owner=owner, timed_out=timed_out))

    def record_row(self, row: FlowRow, timed_out: tuple[str, ...]) -> None:
        self.record_flow(FlowRecord.from_row(row), None, timed_out)


def _coalesce(commands: list[Command]) -> list[Command]:
    """Merge adjacent sends to the same peer, as the driver writes them."""
    if len(commands) < 2:
        return commands
    merged: list[Command] = []
    for command in commands:
        last = merged[-1] if merged else None
        if isinstance(command, SendDownstream) and isinstance(last, SendDownstream):
            merged[-1] = SendDownstream(data=last.data + command.data)
        elif isinstance(command, SendUpstream) and isinstance(last, SendUpstream):
            merged[-1] = SendUpstream(data=last.data + command.data)
        else:
            merged.append(command)
    return merged



__all__ = ["CommandRecorder", "Http1Sink"]
