"""Copies of a request (or of a connection's client bytes) for mirroring sessions.

A copy rides its own wire stream of the session's link (``waylay.agent.link``); the
local app's answer is measured and dropped. A congested session loses its copies, the
remote client never waits for one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from waylay.agent.streams import LocalBound, WireStream
from waylay.core.engine.flow import MirrorResult
from waylay.core.engine.wire import Data, End, Message, Reset, ResponseStart, headers_from_wire

if TYPE_CHECKING:
    from waylay.agent.link import ClientLink
    from waylay.core.engine.flow import FlowRecord


class MirrorStream(WireStream):
    """A copy of a request (or of a connection's client bytes) for a mirroring session.

    The local app's answer is measured (status, time) into this stream's own
    ``MirrorResult`` and dropped: the remote client only ever hears the original app, and
    only this session ever sees its local app's answer.
    """

    def __init__(self, link: ClientLink, stream_id: int, record: FlowRecord | None,
                 clause: str | None, on_done: Callable[[MirrorStream], None],
                 *, bound: LocalBound | None = None) -> None:
        super().__init__(link, stream_id)
        self.record = record
        self.result = MirrorResult(clause=clause)
        self.started = time.monotonic()
        self._on_done = on_done
        link.mirrors_in_flight += 1
        # A request copy's answer has the same bound as a stolen request's: a local app
        # that never answers must not hold the session's row (nor a copy slot) for good.
        self._timer: asyncio.TimerHandle | None = None
        if bound is not None and record is not None:
            self._timer = asyncio.get_running_loop().call_later(
                bound.seconds, self.reset,
                f"the local app did not answer the copy within {bound.seconds:g} s")

    def receive(self, message: Message) -> None:
        result = self.result
        match message:
            case ResponseStart(status=status, headers=headers):
                result.status = status
                if self.record is not None and self.record.request_headers is not None:
                    # the session asked to capture
                    result.headers = headers_from_wire(headers)
                    result.body = bytearray()
                if message.body and result.body is not None:
                    result.capture_body(message.body)
                if message.end:
                    self._end()
            case Data(data=data) if result.body is not None:
                result.capture_body(data)
            case End():
                self._end()
            case Reset(reason=reason):
                result.error = reason
                self._finish()
            case _:
                pass  # the local app's body: measured, not kept

    def reset(self, reason: str) -> None:
        """The copy is abandoned (dropped for congestion, or its client left): say why."""
        if not self.finished.is_set() and self.result.error is None:
            self.result.error = reason
        super().reset(reason)

    def _end(self) -> None:
        self._got_end = True
        if self.record is not None:
            self._finish()  # a request copy is done once its answer is
        else:
            self._maybe_finish()

    def link_lost(self) -> None:
        if not self.done:
            self.result.error = "the session's link to the agent ended"
            self._finish()

    def pace(self) -> None:
        """Copies are never paced: their answers are measured and dropped."""

    def _finish(self) -> None:
        if self.done:
            return
        if self._timer is not None:
            self._timer.cancel()
        super()._finish()
        self.link.mirrors_in_flight -= 1
        self.result.duration_ms = round((time.monotonic() - self.started) * 1000.0, 3)
        self._on_done(self)


def copy_to_mirrors(mirrors: Iterable[MirrorStream], data: bytes) -> list[MirrorStream]:
    """Send client bytes to each copy; a congested session loses its copy (reset, and
    counted for a warning), never slowing the connection down. Returns the copies kept."""
    kept = []
    for mirror in mirrors:
        if mirror.link.congested:
            mirror.reset("dropped: the session is not keeping up")
            mirror.link.mirror_drops += 1
            mirror.link.note()
        else:
            mirror.send_data(data)
            kept.append(mirror)
    return kept
