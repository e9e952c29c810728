"""The session's end of the link (waylay.core.client.session_link): taking over a stream pair,
frames handed over in order, one write per loop turn, and back-pressure both ways."""

from __future__ import annotations

import asyncio
import socket

from waylay.core.client.session_link import SessionLink
from waylay.core.engine.wire import Data, End, Message, Ping, WireDecoder, encode

WAIT_S = 10.0  # only keeps a broken test from hanging; nothing is measured against it


class Recorder:
    """What the session does with the link's callbacks."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.batches = 0
        self.closed: list[str] = []
        self.got = asyncio.Event()

    def message(self, message: Message) -> None:
        self.messages.append(message)
        self.got.set()

    def batch_end(self) -> None:
        self.batches += 1

    def on_closed(self, why: Exception) -> None:
        self.closed.append(str(why))
        self.got.set()

    async def until(self, count: int) -> None:
        for _ in range(1000):  # bounded; each wait is bounded too
            if len(self.messages) >= count or self.closed:
                return
            self.got.clear()
            await asyncio.wait_for(self.got.wait(), WAIT_S)


async def pair() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, socket.socket]:
    mine, theirs = socket.socketpair()
    theirs.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=mine)
    return reader, writer, theirs


def take(writer: asyncio.StreamWriter, seen: Recorder) -> SessionLink:
    return SessionLink.take_over(writer, WireDecoder(), seen.message, seen.batch_end,
                                 seen.on_closed)


def test_bytes_the_reader_already_held_come_first() -> None:
    """Frames the agent sent before the take-over (buffered by the stream reader) are
    handed over before later ones, in order."""
    async def scenario() -> None:
        reader, writer, theirs = await pair()
        theirs.send(encode(Data(stream=1, data=b"early")))
        await asyncio.sleep(0.05)  # the stream reader reads them into its buffer meanwhile
        seen = Recorder()
        link = take(writer, seen)
        theirs.send(encode(Data(stream=1, data=b"late")))
        await link.start(reader)
        await seen.until(2)
        assert seen.messages == [Data(stream=1, data=b"early"), Data(stream=1, data=b"late")]
        link.close()
        theirs.close()

    asyncio.run(scenario())


def test_frames_sent_in_one_loop_turn_leave_as_one_write() -> None:
    """Many frames sent in one callback reach the agent together, in order."""
    async def scenario() -> None:
        reader, writer, theirs = await pair()
        seen = Recorder()
        link = take(writer, seen)
        await link.start(reader)
        writes: list[bytes] = []
        transport = writer.transport
        original = transport.write

        def counting(data: bytes) -> None:  # type: ignore[override]
            writes.append(bytes(data))
            original(data)

        transport.write = counting  # type: ignore[method-assign]
        for stream in range(1, 21):
            link.send(End(stream=stream))
        await asyncio.sleep(0.05)
        assert len(writes) == 1
        frames = WireDecoder().receive_data(writes[0])
        assert frames == [End(stream=s) for s in range(1, 21)]
        link.close()
        theirs.close()

    asyncio.run(scenario())


def test_a_hold_keeps_later_frames_waiting_in_order() -> None:
    """While a delivery holds the link, the frames behind the one that filled it wait;
    after the release they come, in order."""
    async def scenario() -> None:
        reader, writer, theirs = await pair()
        seen = Recorder()
        held: list[SessionLink] = []

        def message(message: Message) -> None:
            seen.message(message)
            if message == Ping(nonce=b"holdhold"):
                held[0].hold()

        link = SessionLink.take_over(writer, WireDecoder(), message, seen.batch_end,
                                     seen.on_closed)
        held.append(link)
        await link.start(reader)
        theirs.send(encode(Ping(nonce=b"holdhold")) + encode(End(stream=1))
                    + encode(End(stream=2)))
        await seen.until(1)
        await asyncio.sleep(0.05)
        assert seen.messages == [Ping(nonce=b"holdhold")]
        theirs.send(encode(End(stream=3)))
        await asyncio.sleep(0.05)
        assert len(seen.messages) == 1  # still held: nothing more, not even new frames
        link.release()
        await seen.until(4)
        assert seen.messages[1:] == [End(stream=1), End(stream=2), End(stream=3)]
        link.close()
        theirs.close()

    asyncio.run(scenario())


def test_drain_waits_while_the_link_is_paused() -> None:
    """A producer's drain returns at once normally, waits while the link is paused, and
    when_writable callbacks run when it resumes."""
    async def scenario() -> None:
        reader, writer, theirs = await pair()
        seen = Recorder()
        link = take(writer, seen)
        await link.start(reader)
        await asyncio.wait_for(link.drain(), WAIT_S)
        link.pause_writing()
        woken: list[str] = []
        link.when_writable(lambda: woken.append("resumed"))
        waiter = asyncio.create_task(link.drain())
        await asyncio.sleep(0.02)
        assert not waiter.done() and link.write_paused
        link.resume_writing()
        await asyncio.wait_for(waiter, WAIT_S)
        assert woken == ["resumed"]
        link.close()
        theirs.close()

    asyncio.run(scenario())


def test_a_malformed_frame_ends_the_link_saying_why() -> None:
    """Bytes that are not frames close the link with a protocol error."""
    async def scenario() -> None:
        reader, writer, theirs = await pair()
        seen = Recorder()
        link = take(writer, seen)
        await link.start(reader)
        theirs.send(b"\x00\x00\x00\x00\xfe\x00\x00\x00\x00")  # an unknown frame type
        await seen.until(1)
        assert seen.closed and "protocol error" in seen.closed[0] and link.closed
        theirs.close()

    asyncio.run(scenario())


def test_the_agent_closing_ends_the_link() -> None:
    """The agent's close reaches the session once, as the link's end."""
    async def scenario() -> None:
        reader, writer, theirs = await pair()
        seen = Recorder()
        link = take(writer, seen)
        await link.start(reader)
        theirs.close()
        await seen.until(1)
        assert seen.closed == ["the agent closed the link"]
        link.close()
        assert len(seen.closed) == 1

    asyncio.run(scenario())
