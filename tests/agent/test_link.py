"""The bound on a stolen request's local app (waylay.agent.streams, on a ClientLink): 504
for the caller, an error notice for the session, a reset wire stream; and the bound each
Subscribe sets."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from waylay.agent.link import ClientLink
from waylay.agent.mirror_stream import MirrorStream
from waylay.agent.streams import PAUSED_STREAM_LIMIT, LocalBound, Stream
from waylay.core.engine.flow import FlowRecord, Verdict
from waylay.core.engine.registry import Subscription
from waylay.core.engine.routing import Event, LocalAborted, LocalResponse
from waylay.core.engine.wire import (
    DEFAULT_RESPONSE_TIMEOUT_S,
    Data,
    Hello,
    Message,
    Notice,
    Pause,
    RequestStart,
    Reset,
    ResponseStart,
    Resume,
    Subscribe,
    Subscribed,
    WireDecoder,
    encode,
)

WAIT_S = 10.0  # only keeps a broken test from hanging; nothing is measured against it


class FakeLink:
    """What a Stream uses of its ClientLink: send frames, the streams table, a name, the
    event loop."""

    def __init__(self) -> None:
        self.name = "waylay-cli/7"
        self.sent: list[Message] = []
        self.streams: dict[int, Any] = {}
        self.loop = asyncio.get_running_loop()

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def send_raw(self, frame: bytes) -> None:
        self.sent.extend(WireDecoder().receive_data(frame))

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.sent if isinstance(m, kind)]


class Owner:
    """The connection the stolen request belongs to; records what it is told."""

    peer = "10.0.0.9:5555"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.wholes: list[tuple[int, bytes, list[tuple[bytes, bytes]], bytes]] = []
        self.aborted = False

    def on_local(self, event: Event) -> None:
        self.events.append(event)

    def congested(self) -> bool:
        return False

    def backlog(self) -> int:
        return 0

    def on_local_whole(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                       body: bytes) -> None:
        self.wholes.append((status, reason, headers, body))

    async def drain_downstream(self) -> None:
        return None

    def write_local(self, data: bytes) -> None:
        pass

    def end_local(self) -> None:
        pass

    def abort_local(self) -> None:
        self.aborted = True


def open_stream(link: FakeLink, owner: Owner, bound: LocalBound | None, *,
                whole: bool = False) -> Stream:
    stream = Stream(link, 3, owner, whole=whole, bound=bound,  # type: ignore[arg-type]
                    what="GET /x on port 80")
    link.streams[3] = stream
    return stream


async def quiet_for(bound: LocalBound) -> None:
    """Let several times the bound pass (the clock must have been stopped by then)."""
    await asyncio.sleep(bound.seconds * 4)


def test_a_local_app_that_never_answers_gets_the_caller_a_504_naming_it() -> None:
    """Past the bound: an error notice names the request, the local address and the
    setting; the wire stream is reset; the owner is told to answer 504 with the address."""
    async def scenario() -> None:
        link, owner = FakeLink(), Owner()
        stream = open_stream(link, owner, LocalBound(seconds=0.05, local="127.0.0.1:8080"))
        await asyncio.wait_for(stream.finished.wait(), WAIT_S)
        assert link.of(Notice) == [Notice(
            level="error", message="GET /x on port 80: the local app at 127.0.0.1:8080 did "
            "not answer within 0.05 s (agent.local_response_timeout)")]
        assert link.of(Reset) == [Reset(stream=3, reason="the local app did not answer "
                                        "within 0.05 s")]
        assert owner.events == [LocalAborted(
            reason="no answer from 127.0.0.1:8080 within 0.05 s", status=504)]
        assert 3 not in link.streams

    asyncio.run(scenario())


def test_without_its_address_the_local_app_is_named_by_its_session() -> None:
    """An older session does not send its local address: the session's name stands in."""
    async def scenario() -> None:
        link, owner = FakeLink(), Owner()
        stream = open_stream(link, owner, LocalBound(seconds=0.05))
        await asyncio.wait_for(stream.finished.wait(), WAIT_S)
        (notice,) = link.of(Notice)
        assert "the local app of session waylay-cli/7 did not answer" in notice.message
        (aborted,) = owner.events
        assert isinstance(aborted, LocalAborted) and aborted.status == 504
        assert "the local app of session waylay-cli/7" in aborted.reason

    asyncio.run(scenario())


def test_the_response_head_stops_the_clock() -> None:
    """The bound is on the response head: once it came, a slow body is not cut."""
    async def scenario() -> None:
        link, owner = FakeLink(), Owner()
        bound = LocalBound(seconds=0.05, local="127.0.0.1:8080")
        stream = open_stream(link, owner, bound)
        stream.receive(ResponseStart(stream=3, status=200, reason="OK", headers=()))
        await quiet_for(bound)
        assert not link.of(Notice) and not link.of(Reset)
        assert [type(e) for e in owner.events] == [LocalResponse]
        assert not stream.finished.is_set()

    asyncio.run(scenario())


def test_a_stream_that_ended_otherwise_is_never_timed_out() -> None:
    """A caller that left (the stream reset) stops the clock: no late notice or 504."""
    async def scenario() -> None:
        link, owner = FakeLink(), Owner()
        bound = LocalBound(seconds=0.05, local="127.0.0.1:8080")
        stream = open_stream(link, owner, bound)
        stream.reset("the remote client went away")
        await quiet_for(bound)
        assert not link.of(Notice) and owner.events == []

    asyncio.run(scenario())


def test_whole_stolen_connections_are_not_timed() -> None:
    """A whole stolen connection has no response head to wait for."""
    async def scenario() -> None:
        link, owner = FakeLink(), Owner()
        bound = LocalBound(seconds=0.05, local="127.0.0.1:8080")
        stream = open_stream(link, owner, bound, whole=True)
        await quiet_for(bound)
        assert not link.of(Notice) and owner.events == [] and not owner.aborted
        assert not stream.finished.is_set()

    asyncio.run(scenario())


class FakeAgent:
    """What ClientLink asks of the agent during a handshake and subscriptions."""

    token = "secret"
    name = "waylay-agent/1"
    chain = "WAYLAY-test"

    def __init__(self) -> None:
        self.subs: list[Subscription] = []
        self._ids = itertools.count(10)

    def listening_ports(self) -> list[int]:
        return [80, 81]

    def next_sub_id(self) -> int:
        return next(self._ids)

    async def subscribe(self, sub: Subscription) -> None:
        self.subs.append(sub)

    async def unsubscribe(self, sub_id: int) -> None:
        pass

    async def link_closed(self, link: ClientLink) -> None:
        pass


class FakeTransport:
    def get_write_buffer_size(self) -> int:
        return 0


class FakeWriter:
    """Collects what the link sends to its session."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.transport = FakeTransport()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    async def drain(self) -> None:
        return None


def test_each_subscription_carries_its_local_address_and_timeout() -> None:
    """A Subscribe's ``local`` and ``response_timeout`` bound that subscription's stolen
    requests; a Subscribe without them (an older session) gets the default and no address."""
    async def scenario() -> None:
        agent, writer, reader = FakeAgent(), FakeWriter(), asyncio.StreamReader()
        link = ClientLink(agent, 1, reader, writer)  # type: ignore[arg-type]
        reader.feed_data(encode(Hello(token="secret", client="waylay-cli/7"))
                         + encode(Subscribe(sub_id=1, port=80, mode="steal", filter=None,
                                            local="127.0.0.1:8080", response_timeout=5))
                         + encode(Subscribe(sub_id=2, port=81, mode="steal", filter=None)))
        task = asyncio.create_task(link.run())

        def subscribed() -> int:
            return sum(isinstance(m, Subscribed)
                       for m in WireDecoder().receive_data(bytes(writer.data)))

        for _ in range(1000):  # bounded: a few loop turns are enough
            if subscribed() == 2:
                break
            await asyncio.sleep(0.01)
        first, second = agent.subs
        assert link.bound_for(first.sub_id) == LocalBound(seconds=5, local="127.0.0.1:8080")
        assert link.bound_for(second.sub_id) == LocalBound(
            seconds=DEFAULT_RESPONSE_TIMEOUT_S, local=None)
        reader.feed_eof()
        await asyncio.wait_for(task, WAIT_S)

    asyncio.run(scenario())


class SlowOwner(Owner):
    """A connection whose remote client stops reading, until ``drained`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.full = True
        self.drained = asyncio.Event()

    def congested(self) -> bool:
        return self.full

    async def drain_downstream(self) -> None:
        await self.drained.wait()
        self.full = False


class SpawningLink(FakeLink):
    """A FakeLink whose agent runs background tasks (the stream's resume)."""

    def __init__(self) -> None:
        super().__init__()
        self.agent = self
        self.tasks: list[asyncio.Task[None]] = []

    def spawn(self, coro: Any, *, name: str) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro, name=name))


def test_a_slow_client_pauses_its_own_stream_then_resumes_it() -> None:
    """A frame for a stream whose client is congested PAUSEs that stream at the session,
    once however many frames follow; when the client catches up, RESUME follows."""
    async def scenario() -> None:
        link, owner = SpawningLink(), SlowOwner()
        stream = open_stream(link, owner, None)  # type: ignore[arg-type]
        for _ in range(3):
            stream.receive(Data(stream=3, data=b"x" * 10))
            stream.pace()
        assert link.of(Pause) == [Pause(stream=3)] and not link.of(Resume)
        owner.drained.set()
        await asyncio.wait_for(asyncio.gather(*link.tasks), WAIT_S)
        assert link.of(Resume) == [Resume(stream=3)]
        stream.receive(Data(stream=3, data=b"y"))
        stream.pace()  # not congested any more: nothing new
        assert len(link.of(Pause)) == 1

HEAD = (1, 80, "GET", "/x", "1.1", (("Host", "svc"),), "10.0.0.9:5555", 42)


def test_a_bodiless_request_is_one_frame_and_a_turn_is_one_write() -> None:
    """A request head followed by its end in the same turn leaves as one RequestStart
    marked end; a request with a body as head, Data, End; one that is reset before its
    head left sends nothing. All that one turn queued is one write."""
    async def scenario() -> None:
        writer = FakeWriter()
        writes: list[bytes] = []
        write = writer.write
        writer.write = lambda data: (writes.append(bytes(data)), write(data))[1]  # type: ignore[method-assign]
        link = ClientLink(FakeAgent(), 1, asyncio.StreamReader(), writer)  # type: ignore[arg-type]
        owner = Owner()
        plain = Stream(link, 1, owner, whole=False)  # type: ignore[arg-type]
        plain.open_request(HEAD)
        plain.end()
        upload = Stream(link, 2, owner, whole=False)  # type: ignore[arg-type]
        upload.open_request(HEAD)
        upload.send_data(b"body")
        upload.end()
        gone = Stream(link, 3, owner, whole=False)  # type: ignore[arg-type]
        gone.open_request(HEAD)
        gone.reset("connection closed")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(writes) == 1
        first, *rest = WireDecoder().receive_data(bytes(writer.data))
        assert isinstance(first, RequestStart) and first.stream == 1 and first.end
        assert first.flow_id == 42 and first.headers == (("Host", "svc"),)
        assert [(type(m).__name__, m.stream) for m in rest] == [  # type: ignore[union-attr]
            ("RequestStart", 2), ("Data", 2), ("End", 2)]
        assert not rest[0].end  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_a_fast_client_never_pauses_anything() -> None:
    """Frames for a stream whose client keeps up send no PAUSE."""
    async def scenario() -> None:
        link, owner = SpawningLink(), SlowOwner()
        owner.full = False
        stream = open_stream(link, owner, None)  # type: ignore[arg-type]
        stream.receive(Data(stream=3, data=b"x"))
        stream.pace()
        assert not link.of(Pause) and not link.tasks

    asyncio.run(scenario())


def test_a_mirror_copy_never_answered_ends_with_the_reason() -> None:
    """A copy whose local app never answers is reset after the session's bound, and its
    result says why (its row is not held for good)."""
    async def scenario() -> None:
        link, done = FakeLink(), asyncio.Event()
        link.mirrors_in_flight = 0  # type: ignore[attr-defined]
        record = FlowRecord(id=1, ts=0.0, port=80, protocol="http/1.1",
                            verdict=Verdict.MIRRORED)
        stream = MirrorStream(link, 5, record, "path_filter: ^/",  # type: ignore[arg-type]
                              lambda s: done.set(), bound=LocalBound(seconds=0.05))
        await asyncio.wait_for(done.wait(), WAIT_S)
        assert stream.result.error == "the local app did not answer the copy within 0.05 s"
        assert link.of(Reset) == [Reset(stream=5, reason=stream.result.error)]

def test_a_whole_answer_in_one_frame_reaches_the_connection_in_one_call() -> None:
    """ResponseStart carrying the body and the end: the connection gets the whole answer
    at once and the stream is over (its bound no longer runs)."""
    async def scenario() -> None:
        link, owner = FakeLink(), Owner()
        stream = open_stream(link, owner, LocalBound(seconds=0.05, local="127.0.0.1:8080"))
        stream.receive(ResponseStart(stream=3, status=200, reason="OK",
                                     headers=(("Content-Length", "2"),), body=b"ok", end=True))
        assert owner.wholes == [(200, b"OK", [(b"Content-Length", b"2")], b"ok")]
        assert stream.done and 3 not in link.streams
        await asyncio.sleep(0.1)
        assert not link.of(Notice) and owner.events == []

    asyncio.run(scenario())


class FloodedOwner(SlowOwner):
    """A slow client whose queue keeps growing: the session ignores PAUSE."""

    queued = 0

    def backlog(self) -> int:
        return self.queued


def test_a_session_that_ignores_pause_loses_the_stream_not_the_agent() -> None:
    """Past PAUSED_STREAM_LIMIT queued for a paused stream, the agent resets it and the
    connection is told the answer failed; the agent's memory stays bounded."""
    async def scenario() -> None:
        link, owner = SpawningLink(), FloodedOwner()
        stream = open_stream(link, owner, None)  # type: ignore[arg-type]
        stream.receive(Data(stream=3, data=b"x"))
        stream.pace()
        assert link.of(Pause) == [Pause(stream=3)]
        owner.queued = PAUSED_STREAM_LIMIT + 1
        stream.receive(Data(stream=3, data=b"x"))
        stream.pace()
        assert link.of(Reset) == [Reset(stream=3, reason="the session kept sending after PAUSE")]
        assert isinstance(owner.events[-1], LocalAborted)
        owner.drained.set()
        await asyncio.wait_for(asyncio.gather(*link.tasks), WAIT_S)
        assert not link.of(Resume)  # the stream is over: nothing to resume

    asyncio.run(scenario())
