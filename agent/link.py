"""One attached session, seen from the agent: its control connection, subscriptions, streams.

The first frame must be a ``Hello`` carrying the session token; anything else ends the
link. After that the session subscribes ports and answers the requests the agent steals
for it, each on its own wire stream. When the link ends, for whatever reason, its
subscriptions are removed (its ports revert to passthrough) and its open streams are
aborted; other sessions are not disturbed.

The link's streams (a stolen request or connection, and the local app's bound on it) are
``waylay.agent.streams``'s; mirror copies are ``waylay.agent.mirror_stream``'s. This module is
the connection that carries them: the handshake, subscriptions, one write per loop turn,
and the batched reports (flow records, counted warnings).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from waylay.agent.streams import LocalBound, WireStream
from waylay.core.engine.body_filter import DEFAULT_BODY_BUFFER_SIZE as BODY_SIZE
from waylay.core.engine.body_filter import DEFAULT_BODY_BUFFER_TIMEOUT_MS as BODY_MS
from waylay.core.engine.config import ConcurrentSteal, Mode
from waylay.core.engine.errors import ConfigError
from waylay.core.engine.filters import compile_http_filter
from waylay.core.engine.registry import Subscription, SubscriptionRefused
from waylay.core.engine.wire import (
    DEFAULT_RESPONSE_TIMEOUT_S,
    Data,
    End,
    Error,
    Flow,
    Hello,
    Message,
    Notice,
    Ping,
    Pong,
    Reset,
    ResponseStart,
    Subscribe,
    Subscribed,
    Trailers,
    Unsubscribe,
    Welcome,
    WireDecoder,
    WireProtocolError,
    check_hello,
    encode,
)

if TYPE_CHECKING:
    from waylay.agent.mirror_stream import MirrorStream
    from waylay.agent.streams import Stream
    from waylay.agent.worker import Agent
    from waylay.core.engine.flow import FlowRow

HANDSHAKE_TIMEOUT_S = 10.0
# Bytes queued towards a session before the agent waits for it (per link).
LINK_HIGH_WATER = 1024 * 1024
# Flow records wait at most this long, or until this many are queued, before they are
# sent: the dashboard's refresh rate is coarser than that, and batching keeps reporting
# cheap on a busy port. The count keeps a frame far below the wire's MAX_PAYLOAD.
FLOW_BATCH_DELAY_S = 0.05
FLOW_BATCH_MAX = 200
# Counted warnings (dropped mirror copies, shadowed requests) go out at most this often.
NOTES_DELAY_S = 1.0


# The frames that belong to a stream the agent opened (the rest are the link's own).
_STREAM_FRAMES = frozenset({ResponseStart, Data, End, Reset, Trailers})


class ClientLink:
    """The control connection of one session.

    Frames towards the session are gathered and written once per turn of the event loop:
    on a busy port one write carries the heads of many stolen requests, and a request's
    head and end leave together. Frames from the session are handled as they are decoded
    (no ``await`` per frame); the remote clients they answer are drained once per read.
    """

    def __init__(self, agent: Agent, link_id: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.agent = agent
        self.link_id = link_id
        self._reader = reader
        self._writer = writer
        self.loop = asyncio.get_running_loop()
        self._out: list[bytes] = []  # frames not written yet (see send_raw)
        self._out_bytes = 0
        self._flush_scheduled = False
        self._heads: list[WireStream] = []  # streams holding their request head
        self.streams: dict[int, Stream | MirrorStream] = {}
        self.mirrors_in_flight = 0
        self.last_seen = time.monotonic()  # the session pings; silence means it is gone
        self.mirror_drops = 0  # copies dropped since the last warning about it
        self.shadowed = 0  # requests matching this session's filter taken by an earlier one
        self.client_subs: dict[int, int] = {}  # agent sub id -> the session's own sub id
        self.bounds: dict[int, LocalBound] = {}  # agent sub id -> its local app's bound
        self._flows: list[FlowRow] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._notes_handle: asyncio.TimerHandle | None = None
        self._decoder = WireDecoder()
        self._early: list[Message] = []  # frames that arrived with the Hello
        self.name = "?"

    def send(self, message: Message) -> None:
        self.send_raw(encode(message))

    def send_raw(self, frame: bytes) -> None:
        """Queue ``frame``; what is queued in one turn of the loop leaves as one write."""
        if self._writer.is_closing():
            return
        self._out.append(frame)
        self._out_bytes += len(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def hold_head(self, stream: WireStream) -> None:
        """``stream`` holds its request head: it is sent at the latest with this turn's
        frames."""
        self._heads.append(stream)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        heads, self._heads = self._heads, []
        for stream in heads:
            stream.release_head()
        self._flush_scheduled = False
        out, self._out = self._out, []
        self._out_bytes = 0
        if out and not self._writer.is_closing():
            self._writer.write(out[0] if len(out) == 1 else b"".join(out))

    def _queued(self) -> int:
        return self._writer.transport.get_write_buffer_size() + self._out_bytes

    @property
    def congested(self) -> bool:
        """Too much is queued towards this session: mirror copies are dropped, not queued."""
        return self._queued() > LINK_HIGH_WATER

    async def drain(self) -> None:
        if self._queued() > LINK_HIGH_WATER:
            self.flush()
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()

    async def handshake(self) -> bool:
        """Read and check the session's Hello, within HANDSHAKE_TIMEOUT_S.

        False when the connection is refused (a wrong or missing token, bytes that are not
        a Hello, silence, a close): the peer is told why and the connection is closed. Such
        a connection never becomes a session: the agent does not count it, so it neither
        keeps the agent alive nor receives anything meant for sessions.
        """
        try:
            hello = await asyncio.wait_for(self._read_hello(), HANDSHAKE_TIMEOUT_S)
        except (WireProtocolError, TimeoutError, ConnectionError, OSError) as exc:
            reason = "handshake timed out" if isinstance(exc, TimeoutError) else str(exc)
            self.send(Error(stream=0, message=reason, code="handshake"))
            self.flush()
            self._writer.close()
            return False
        self.name = hello.client
        return True

    async def run(self) -> None:
        """Serve the session after a successful ``handshake`` until its link ends."""
        self.send(Welcome(agent=self.agent.name, session=self.agent.chain,
                          listening_ports=tuple(self.agent.listening_ports())))
        try:
            early, self._early = self._early, []
            await self._dispatch_all(early)
            while True:
                data = await self._reader.read(256 * 1024)
                if not data:
                    break
                self.last_seen = time.monotonic()
                await self._dispatch_all(self._decoder.receive_data(data))
        except WireProtocolError as exc:
            self.send(Error(stream=0, message=f"protocol error: {exc}", code="protocol"))
        except (ConnectionError, OSError):
            pass
        finally:
            await self._teardown()

    async def _read_hello(self) -> Hello:
        while True:
            data = await self._reader.read(64 * 1024)
            if not data:
                raise ConnectionError("the session closed during the handshake")
            messages = self._decoder.receive_data(data)
            if messages:
                hello = check_hello(messages[0], self.agent.token)
                # Frames sent right behind the Hello wait until the session is registered.
                self._early = messages[1:]
                return hello

    async def _dispatch_all(self, messages: list[Message]) -> None:
        """Hand the frames of one read over; then pace each stream they touched: a stream
        whose remote client is too slow is PAUSEd at the session (``Stream.pace``), the
        link itself never waits for one client."""
        streams = self.streams
        touched: list[Stream | MirrorStream] = []
        for message in messages:
            if type(message) in _STREAM_FRAMES:
                stream = streams.get(message.stream)  # type: ignore[union-attr]
                if stream is not None:
                    stream.receive(message)
                    if not touched or touched[-1] is not stream:
                        touched.append(stream)
            else:
                await self._dispatch(message)
        for stream in touched if len(touched) < 2 else dict.fromkeys(touched):
            stream.pace()

    async def _dispatch(self, message: Message) -> None:
        match message:
            case Ping(nonce=nonce):
                self.send(Pong(nonce=nonce))
            case Pong():
                pass
            case Subscribe():
                await self._subscribe(message)
            case Unsubscribe(sub_id=client_sub):
                for sub_id, mine in list(self.client_subs.items()):
                    if mine == client_sub:
                        del self.client_subs[sub_id]
                        self.bounds.pop(sub_id, None)
                        await self.agent.unsubscribe(sub_id)
            case _:
                self.send(Error(stream=0, message=f"unexpected {type(message).__name__}",
                                code="protocol"))

    async def _subscribe(self, message: Subscribe) -> None:
        try:
            http_filter = (compile_http_filter(message.filter)
                           if message.filter is not None else None)
            existing = next((mine for mine, theirs in self.client_subs.items()
                             if theirs == message.sub_id), None)
            sub = Subscription(sub_id=existing or self.agent.next_sub_id(),
                               link_id=self.link_id, port=message.port, mode=Mode(message.mode),
                               http_filter=http_filter, capture=message.capture,
                               body_buffer_size=message.body_buffer_size or BODY_SIZE,
                               body_buffer_timeout_ms=message.body_buffer_timeout or BODY_MS,
                               concurrent=ConcurrentSteal(message.on_concurrent_steal
                                                          or ConcurrentSteal.ABORT),
                               inject_headers=message.inject_headers)
            if existing is None:
                await self.agent.subscribe(sub)
            else:  # a filter change: no iptables call
                self.agent.displaced(self.agent.registry.replace(sub))
        except (SubscriptionRefused, ConfigError) as exc:
            self.send(Error(stream=message.sub_id, message=str(exc), code="refused"))
            return
        except Exception as exc:  # iptables failures and the like: report, keep the link
            self.send(Error(stream=message.sub_id, message=f"cannot intercept port "
                            f"{message.port}: {exc}", code="refused"))
            return
        self.client_subs[sub.sub_id] = message.sub_id
        self.bounds[sub.sub_id] = LocalBound(
            seconds=message.response_timeout or DEFAULT_RESPONSE_TIMEOUT_S, local=message.local)
        self.send(Subscribed(sub_id=message.sub_id, port=message.port, mode=message.mode,
                             filter=http_filter.text if http_filter is not None else None))

    def lost(self, sub: Subscription, why: str) -> None:
        """``sub`` was taken from this session (another one's override): forget it, say
        why on its stream."""
        client_sub = self.client_subs.pop(sub.sub_id, None)
        self.bounds.pop(sub.sub_id, None)
        if client_sub is not None:
            self.send(Error(stream=client_sub, message=why, code="taken"))

    def bound_for(self, sub_id: int) -> LocalBound:
        """The bound on stolen requests of this link's subscription ``sub_id``."""
        return self.bounds.get(sub_id) or LocalBound()

    def close(self) -> None:
        self.flush_flows()
        self.flush()
        self._writer.close()

    def send_flow(self, record: FlowRow) -> None:
        """Queue a flow record; records leave in batches (few frames on a busy port)."""
        self._flows.append(record)
        if len(self._flows) >= FLOW_BATCH_MAX:
            self.flush_flows()
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(FLOW_BATCH_DELAY_S, self.flush_flows)

    def flush_flows(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._flows:
            records, self._flows = tuple(self._flows), []
            self.send(Flow(records=records))

    def note(self) -> None:
        """Counters changed (drops, shadowed requests): report them within a second."""
        if self._notes_handle is None:
            loop = asyncio.get_running_loop()
            self._notes_handle = loop.call_later(NOTES_DELAY_S, self.flush_notes)

    def flush_notes(self) -> None:
        self._notes_handle = None
        if self.mirror_drops:
            self.warn(f"dropped {self.mirror_drops} mirror copies: the local app (or the "
                      "link to it) is slower than the traffic; the original app was not "
                      "slowed down")
            self.mirror_drops = 0
        if self.shadowed:
            self.warn(f"{self.shadowed} requests matching your filter went to another "
                      "session that subscribed earlier")
            self.shadowed = 0

    def warn(self, message: str) -> None:
        self.send(Notice(level="warning", message=message))

    async def _teardown(self) -> None:
        self.flush_flows()
        if self._notes_handle is not None:
            self._notes_handle.cancel()
            self.flush_notes()
        for stream in list(self.streams.values()):
            stream.link_lost()
        self.streams.clear()
        self.client_subs.clear()
        self.bounds.clear()
        await self.agent.link_closed(self)
        self.flush()
        self._writer.close()
