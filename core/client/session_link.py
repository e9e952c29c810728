"""The session's end of the link to the agent: frames in and out, with back-pressure (asyncio).

Every stolen request crosses this link twice (its head and body in, its answer out), so it
is an ``asyncio.Protocol`` rather than a stream pair: the bytes the loop reads are decoded
and each message is handed to the session at once, in a callback, without a task or an
``await`` per frame. Frames the session sends are gathered and written once per turn of the
event loop: under load one write carries the answers of many requests, and a response's
head, body and end leave together (no small writes for the kernel to stall or split).

Back-pressure, both ways:

* towards the agent: the transport's buffer above ``LINK_HIGH_WATER`` marks the link
  paused; producers wait for it (``drain``) or stop reading their own source until it
  resumes (``when_writable``);
* from the agent: a delivery that cannot take more (the local app reads a big upload
  slowly) ``hold``s the link. The link stops reading, the frames already read wait in
  order, and reading resumes when every hold is ``release``d. This holds up the
  session's other streams meanwhile (head-of-line), as a bounded queue per stream did.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import cast

from waylay.core.engine.wire import Message, WireDecoder, WireProtocolError, encode

# Bytes queued towards the agent before producers wait (the link's write buffer).
LINK_HIGH_WATER = 1024 * 1024


class LinkClosed(Exception):
    """The link to the agent ended; the message says how."""


class SessionLink(asyncio.Protocol):
    """The link's transport, taken over from the stream pair it was opened with.

    ``on_message`` gets each frame from the agent; ``on_batch_end`` runs after the frames
    of one read were handed over (deliveries write what those frames produced then, in one
    write each); ``on_closed`` gets a ``LinkClosed`` once, when the link ends or breaks.
    """

    def __init__(self, transport: asyncio.Transport, decoder: WireDecoder,
                 on_message: Callable[[Message], None], on_batch_end: Callable[[], None],
                 on_closed: Callable[[LinkClosed], None]) -> None:
        self._transport = transport
        self._decoder = decoder
        self._on_message = on_message
        self._on_batch_end = on_batch_end
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._write_paused = False
        self._resumed: asyncio.Future[None] | None = None
        self._writable_waiters: list[Callable[[], None]] = []
        self._holds = 0
        self._backlog: collections.deque[Message] = collections.deque()
        self._resume_scheduled = False
        self.closed = False
        self.started = False
        self.received = 0  # reads so far: the session's liveness check counts on them
        # Until start(): bytes and the end that arrived, kept for after the reader's own.
        self._early: list[bytes] | None = []
        self._early_end: LinkClosed | None = None

    @classmethod
    def take_over(cls, writer: asyncio.StreamWriter, decoder: WireDecoder,
                  on_message: Callable[[Message], None], on_batch_end: Callable[[], None],
                  on_closed: Callable[[LinkClosed], None]) -> SessionLink:
        """Take the transport of a stream pair; nothing may read its reader any more.
        Frames are handed over once ``start`` has run."""
        transport = cast(asyncio.Transport, writer.transport)
        link = cls(transport, decoder, on_message, on_batch_end, on_closed)
        transport.set_protocol(link)
        transport.set_write_buffer_limits(high=LINK_HIGH_WATER)
        return link

    async def start(self, reader: asyncio.StreamReader) -> None:
        """Hand over the bytes the reader already holds (the agent may speak first), then
        whatever arrived since the take-over, then everything as it comes."""
        self.started = True
        reader.feed_eof()  # the reader gets nothing more: read() returns what it holds
        held = await reader.read()
        early, self._early = self._early, None
        data = b"".join([held, *early]) if early is not None else held
        if data:
            self.data_received(data)
        ended, self._early_end = self._early_end, None
        if ended is not None:
            self._close(ended)
        elif not self.closed:
            self._transport.resume_reading()  # the stream reader may have paused it

    # --- frames out ---------------------------------------------------------------------

    def send(self, message: Message) -> None:
        self.send_raw(encode(message))

    def send_raw(self, frame: bytes) -> None:
        if self.closed:
            return
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what was sent since the last flush, as one write."""
        self._flush_scheduled = False
        out = self._out
        if out and not self.closed:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    @property
    def write_paused(self) -> bool:
        """Too much is queued towards the agent: producers should wait."""
        return self._write_paused

    async def drain(self) -> None:
        """Wait while the link is paused (returns at once when it is not, or it closed)."""
        while self._write_paused and not self.closed:
            if self._resumed is None:
                self._resumed = self._loop.create_future()
            await asyncio.shield(self._resumed)

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the paused link resumes (or closes)."""
        self._writable_waiters.append(callback)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writers()

    def _wake_writers(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)
        waiters, self._writable_waiters = self._writable_waiters, []
        for callback in waiters:
            callback()

    # --- frames in ----------------------------------------------------------------------

    def hold(self) -> None:
        """Stop handing over frames (and reading) until ``release``: a delivery is full."""
        if not self._holds and not self.closed:
            self._transport.pause_reading()
        self._holds += 1

    def release(self) -> None:
        self._holds -= 1
        if not self._holds and not self._resume_scheduled:
            # Not from inside the caller's own callback: the held frames come next turn.
            self._resume_scheduled = True
            self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._resume_scheduled = False
        if self._holds or self.closed:
            return
        self._hand_over()
        if not self._holds and not self.closed:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._early is not None:
            self._early.append(data)
            return
        self.received += 1
        try:
            messages = self._decoder.receive_data(data)
        except WireProtocolError as exc:
            self._close(LinkClosed(f"protocol error on the link to the agent: {exc}"))
            return
        if self._holds or self._backlog:
            self._backlog.extend(messages)
            return
        on_message = self._on_message
        for index, message in enumerate(messages):
            on_message(message)
            if self._holds and index + 1 < len(messages):
                self._backlog.extend(messages[index + 1:])
                break
            if self.closed:
                break
        self._on_batch_end()

    def _hand_over(self) -> None:
        backlog = self._backlog
        on_message = self._on_message
        while backlog and not self._holds and not self.closed:
            on_message(backlog.popleft())
        self._on_batch_end()

    def eof_received(self) -> bool:
        self._close(LinkClosed("the agent closed the link"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"the link to the agent broke: {exc}" if exc else "the agent closed the link"
        self._close(LinkClosed(why))

    def close(self) -> None:
        """Flush what is queued and close the link (the session is stopping)."""
        if not self.closed:
            self.flush()
        self._early = None
        self._close(LinkClosed("the session closed the link"))

    def _close(self, why: LinkClosed) -> None:
        if self._early is not None:
            self._early_end = self._early_end or why
            return
        if self.closed:
            return
        self.closed = True
        self._backlog.clear()
        self._transport.close()
        self._wake_writers()
        self._on_closed(why)
