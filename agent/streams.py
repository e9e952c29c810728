"""The streams of a session's link, seen from the agent: a stolen request or connection.

Each stolen request (or whole stolen connection) is one wire stream of the session's
link (``waylay.agent.link``): ``WireStream`` is its sending half and its end, ``Stream`` the
stolen exchange itself, handing the local app's answer to the ``StreamOwner`` (the
intercepted connection, or one HTTP/2 stream) and pacing the session when that owner's
remote client is slow. Copies for mirroring sessions are ``waylay.agent.mirror_stream``'s.

A stolen request has a bound: the session's local app must start answering (its response
head must come back) within the session's ``response_timeout``, counted from the moment
the agent opens the request's stream. Past it the remote caller gets a 504 naming the
local app, the session an error notice, and the stream is reset (the session stops
delivering it). The response body, once started, takes as long as it takes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

from waylay.core.engine.routing import (
    LocalAborted,
    LocalData,
    LocalEnd,
    LocalResponse,
    LocalTrailers,
)
from waylay.core.engine.wire import (
    DEFAULT_RESPONSE_TIMEOUT_S,
    Data,
    End,
    Message,
    Notice,
    Pause,
    RequestStart,
    Reset,
    ResponseStart,
    Resume,
    Trailers,
    encode_data,
    headers_from_wire,
    headers_to_wire,
)

if TYPE_CHECKING:
    from waylay.agent.link import ClientLink

log = logging.getLogger("waylay.agent")

# Bytes of a PAUSEd stream's answer the agent buffers for its slow client before it gives
# up on the stream: a session that obeys PAUSE has at most its link's buffer (about
# LINK_HIGH_WATER of waylay.agent.link plus the socket's) in flight, so only one that
# ignores it gets here. Eight times LINK_HIGH_WATER.
PAUSED_STREAM_LIMIT = 8 * 1024 * 1024


LocalEvent: TypeAlias = LocalResponse | LocalData | LocalTrailers | LocalEnd | LocalAborted
"""What the session's local app says on a stolen request's stream (the engine's events
from the session's side)."""


class WireStream:
    """One wire stream from the agent to a session: the sending half and its end.

    A request's head is held until the first of its body, its end or the end of the loop
    turn: a bodiless request (the usual one) leaves as one frame, its RequestStart marked
    ``end``.
    """

    def __init__(self, link: ClientLink, stream_id: int) -> None:
        self.link = link
        self.stream_id = stream_id
        self.done = False
        self._finished: asyncio.Event | None = None  # made when someone waits for the end
        self._sent_end = False
        self._got_end = False
        self._head: _Head | None = None

    @property
    def finished(self) -> asyncio.Event:
        """Set once the stream is over (both ends, or a reset)."""
        if self._finished is None:
            self._finished = asyncio.Event()
            if self.done:
                self._finished.set()
        return self._finished

    def open_request(self, head: _Head) -> None:
        """Announce the request ``head`` (fields of a RequestStart without its stream)."""
        self._head = head
        self.link.hold_head(self)

    def release_head(self, *, end: bool = False) -> None:
        """Send the held head, if any (``end``: the request is complete with it)."""
        head, self._head = self._head, None
        if head is not None:
            sub_id, port, method, target, version, headers, peer, flow_id = head
            self.link.send(RequestStart(
                stream=self.stream_id, sub_id=sub_id, port=port, method=method,
                target=target, http_version=version, headers=headers, peer=peer,
                flow_id=flow_id, end=end))

    def send_data(self, data: bytes) -> None:
        if not self.done:
            if self._head is not None:
                self.release_head()
            self.link.send_raw(encode_data(self.stream_id, data))

    def end(self) -> None:
        if not self.done and not self._sent_end:
            self._sent_end = True
            if self._head is not None:
                self.release_head(end=True)
            else:
                self.link.send(End(stream=self.stream_id))
            self._maybe_finish()

    def reset(self, reason: str) -> None:
        if not self.done:
            if self._head is not None:
                self._head = None  # never announced: the session has nothing to drop
            else:
                self.link.send(Reset(stream=self.stream_id, reason=reason))
            self._finish()

    def receive(self, message: Message) -> None:
        raise NotImplementedError

    def pace(self) -> None:
        raise NotImplementedError

    def link_lost(self) -> None:
        raise NotImplementedError

    def _maybe_finish(self) -> None:
        if self._sent_end and self._got_end:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        if self._finished is not None:
            self._finished.set()
        self.link.streams.pop(self.stream_id, None)


# A RequestStart's fields but its stream: sub_id, port, method, target, http_version,
# headers, peer, flow_id.
_Head = tuple[int, int, str, str, str, tuple[tuple[str, str], ...], str, int | None]


class StreamOwner(Protocol):
    """The connection a stolen stream belongs to: an ``InterceptedConnection``, or one
    stream of an HTTP/2 connection (``waylay.agent.h2_connection``)."""

    peer: str

    def on_local(self, event: LocalEvent) -> None: ...
    def congested(self) -> bool:
        """Too much of the local app's answer is queued towards the remote client."""
    def backlog(self) -> int:
        """Bytes of the local app's answer queued towards the remote client."""
    def on_local_whole(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                       body: bytes) -> None:
        """The local app's whole answer at once: LocalResponse, LocalData, LocalEnd."""
    async def drain_downstream(self) -> None:
        """Return once the remote client has taken enough of it (or is gone)."""
    def write_local(self, data: bytes) -> None: ...
    def end_local(self) -> None: ...
    def abort_local(self) -> None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalBound:
    """How long a session's local app has to start answering a stolen request, and where
    that app is (named in the caller's 504; None when an older session did not say)."""

    seconds: float = DEFAULT_RESPONSE_TIMEOUT_S
    local: str | None = None


class Stream(WireStream):
    """A stolen request, or a whole stolen connection: the local app answers the client.

    A stolen request given a ``bound`` is timed from here to its ResponseStart (see the
    module docstring); ``what`` names the request in the error ("GET /x on port 80").
    Whole connections have no response to wait for and are never timed.
    """

    def __init__(self, link: ClientLink, stream_id: int, conn: StreamOwner,
                 *, whole: bool, bound: LocalBound | None = None, what: str = "") -> None:
        super().__init__(link, stream_id)
        self.conn = conn
        self.whole = whole
        self.tunnel = False  # a stolen upgrade the local app accepted
        self._paused = False  # the session was told to PAUSE this stream
        self.bound = bound
        self.what = what
        self._timer: asyncio.TimerHandle | None = None
        if bound is not None and not whole:
            self._timer = link.loop.call_later(bound.seconds, self._too_slow)

    def _too_slow(self) -> None:
        """The local app did not start answering in time: reset the wire stream (the
        session stops delivering it), tell the session, and answer the caller 504."""
        self._timer = None
        bound = self.bound
        if self.done or bound is None:
            return
        within = f"within {bound.seconds:g} s"
        if bound.local is not None:
            app, named = bound.local, f"the local app at {bound.local}"
        else:
            app = named = f"the local app of session {self.link.name}"
        self.link.send(Notice(level="error", message=f"{self.what}: {named} did not answer "
                              f"{within} (agent.local_response_timeout)"))
        self.reset(f"the local app did not answer {within}")
        self.conn.on_local(LocalAborted(reason=f"no answer from {app} {within}", status=504))

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super()._finish()

    async def drain(self) -> None:
        await self.link.drain()

    def send_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        if not self.done:
            self.link.send(Trailers(stream=self.stream_id, headers=headers_to_wire(headers)))

    def receive(self, message: Message) -> None:
        """A frame from the session for this stream."""
        conn = self.conn
        match message:
            case ResponseStart(status=status, reason=reason, headers=headers):
                if self._timer is not None:  # the bound is on the head only: it came
                    self._timer.cancel()
                    self._timer = None
                if status == 101:
                    # An upgrade: the stream now carries the new protocol both ways and
                    # each direction gets a fresh End (the request's already went).
                    self.tunnel = True
                    self._sent_end = self._got_end = False
                elif message.end and not self.whole:
                    # The whole answer in one frame (the usual small one): one call.
                    self._got_end = True
                    self._finish()
                    conn.on_local_whole(status, reason.encode("latin-1"),
                                        headers_from_wire(headers), message.body)
                    return
                conn.on_local(LocalResponse(status=status, reason=reason.encode("latin-1"),
                                            headers=headers_from_wire(headers)))
                if message.body:
                    self._data(message.body)
                if message.end:
                    self._end()
            case Data(data=data):
                self._data(data)
            case End():
                self._end()
            case Trailers(headers=headers):
                if not self.whole:
                    conn.on_local(LocalTrailers(headers=headers_from_wire(headers)))
            case Reset(reason=reason):
                self._finish()
                if self.whole:
                    conn.abort_local()
                else:
                    conn.on_local(LocalAborted(reason=reason))
            case _:
                log.debug("ignoring %r on stream %d", message, self.stream_id)

    def _data(self, data: bytes) -> None:
        if self.whole:
            self.conn.write_local(data)
        else:
            self.conn.on_local(LocalData(data=data))

    def _end(self) -> None:
        self._got_end = True
        conn = self.conn
        if self.whole:
            conn.end_local()
            self._maybe_finish()
        elif self.tunnel:
            self._maybe_finish()
            conn.on_local(LocalEnd())
        else:
            self._finish()
            conn.on_local(LocalEnd())


    def pace(self) -> None:
        """After a frame for this stream: if its remote client is too slow, PAUSE the
        session's sending on this stream only, and RESUME once the client caught up.
        The link itself never waits for one client (no head-of-line blocking)."""
        if self.finished.is_set():
            return
        if self._paused:
            if self.conn.backlog() > PAUSED_STREAM_LIMIT:
                self._give_up("the session kept sending after PAUSE")
            return
        if not self.conn.congested():
            return
        self._paused = True
        self.link.send(Pause(stream=self.stream_id))
        self.link.agent.spawn(self._resume_when_drained(), name="stream-pace")

    def _give_up(self, reason: str) -> None:
        """Drop the stream at both ends: its bytes have nowhere bounded to go."""
        self.reset(reason)
        if self.whole:
            self.conn.abort_local()
        else:
            self.conn.on_local(LocalAborted(reason=reason))

    async def _resume_when_drained(self) -> None:
        try:
            await self.conn.drain_downstream()
        finally:
            self._paused = False
            if not self.finished.is_set():
                self.link.send(Resume(stream=self.stream_id))

    def link_lost(self) -> None:
        if self.done:
            return
        self._finish()
        if self.whole:
            self.conn.abort_local()
        else:
            self.conn.on_local(LocalAborted(reason="the session's link to the agent ended"))
