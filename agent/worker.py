"""The agent worker: listeners, sessions, subscriptions and the redirect rules they need.

It runs under ``waylay.agent.guard``, which installed the (empty) iptables chain named by
``--chain`` and removes it whenever this process ends. The worker only adds and removes
the REDIRECT rule of each subscribed port; a filter change never touches iptables.

Two listeners: the redirect listener (every intercepted port is REDIRECTed to it and
``SO_ORIGINAL_DST`` tells which), and the control listener where sessions attach with the
token (a Unix socket: filesystem paths cross network namespaces).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from waylay.agent.interception import serve_connection
from waylay.agent.iptables import PortRedirector, Redirector
from waylay.agent.link import ClientLink
from waylay.agent.mirror_stream import MirrorStream
from waylay.agent.original_destination import DestinationLookup, original_destination
from waylay.agent.streams import Stream
from waylay.agent.upstream import Connector, UpstreamPool, connect_marked
from waylay.core.engine.flow import FlowRecord, FlowRow, MirrorResult, Verdict
from waylay.core.engine.registry import Registry, Subscription
from waylay.core.engine.wire import ConnectionStart, Notice, headers_to_wire
from waylay.core.system.local_targets import listening_ports, parse_proc_net_tcp

if TYPE_CHECKING:
    from waylay.agent.interception import InterceptedConnection
    from waylay.agent.streams import StreamOwner
    from waylay.core.engine.routing import MirrorStart, StealStart


# Unanswered mirror copies per session before new ones are dropped: bounds the agent's
# memory and the local app's backlog (a copy answered 2 s late is of little use anyway).
MAX_MIRRORS_IN_FLIGHT = 64
# Sessions ping every 5 s: a link silent for this long belongs to a session that is gone
# (a laptop that slept, a dead port-forward) and its subscriptions are removed.
LINK_SILENCE_S = 15.0


def emit(event: dict[str, object]) -> None:
    """One JSON line on stdout: how the launcher learns the agent's state.

    The launcher may be gone (the agent outlives it while other sessions use it): then
    there is nobody to tell, which is fine.
    """
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


class Agent:
    """The state of one agent process (single-threaded; driven by asyncio).

    What needs root is given here, once: ``redirector`` (the iptables REDIRECT rules and
    the reset of connections that bypass them), ``find_destination`` (``SO_ORIGINAL_DST``
    of a redirected connection) and ``connect`` (marked sockets to the original app). A
    test without root gives its own (``tests/agent/harness.py``) and drives the rest as it is.
    """

    def __init__(self, *, token: str, chain: str, redirector: PortRedirector, ttl: float,
                 linger: float = 0.0,
                 find_destination: DestinationLookup = original_destination,
                 connect: Connector = connect_marked) -> None:
        self.token = token
        self.chain = chain
        self.name = f"waylay-agent/{os.getpid()}"
        self.redirector = redirector
        self.find_destination = find_destination
        self.ttl = ttl  # how long to wait for a first session
        self.linger = linger  # how long to stay once the last session left
        self._ever_attached = False
        self._shutting_down = False
        self._link_tasks: set[asyncio.Task[object]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshakes = 0  # control connections not yet authenticated
        self.registry = Registry(clock=time.perf_counter, cpu_clock=time.thread_time)
        self.pool = UpstreamPool(connect)
        self.links: dict[int, ClientLink] = {}
        self.proxy_port = 0
        self.next_flow_id = itertools.count(1).__next__
        self.next_sub_id = itertools.count(1).__next__
        self._next_stream_id = itertools.count(1).__next__
        self._next_link_id = itertools.count(1).__next__
        self._iptables_lock = asyncio.Lock()
        self._idle_since = time.monotonic()
        # Records of mirrored requests whose copies are still being answered.
        self._held: dict[int, tuple[int | None, tuple[str, ...]]] = {}
        # Each mirroring session's own outcome of a held record, by record id and link id.
        self._mirror_results: dict[int, dict[int, MirrorResult]] = {}
        # The sessions (link ids) whose copy of a request is still unanswered, by record id.
        self._waiting: dict[int, set[int]] = {}

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run ``coro`` as a task the agent keeps a reference to until it ends (a
        connection's rare waits: opening an upstream, a congested session's drain)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- sessions and subscriptions ---------------------------------------------------

    async def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection to the control socket; a session once its Hello carries the token.

        Only authenticated sessions enter ``self.links``: a refused connection (wrong or
        no token, garbage, silence, connect-and-close) never counts, so the agent still
        leaves with its last session, or after its TTL when none ever came.
        """
        link = ClientLink(self, self._next_link_id(), reader, writer)
        # A handshake in progress holds the exit back, for at most HANDSHAKE_TIMEOUT_S:
        # a second developer's session connecting as the last one leaves must not find
        # the agent gone, and a connection that never authenticates cannot keep it.
        self._handshakes += 1
        try:
            accepted = await link.handshake()
        finally:
            self._handshakes -= 1
        if not accepted:
            return
        self.links[link.link_id] = link
        self._ever_attached = True
        task = asyncio.current_task()
        if task is not None:
            self._link_tasks.add(task)
        try:
            await link.run()
        finally:
            if task is not None:
                self._link_tasks.discard(task)

    async def subscribe(self, sub: Subscription) -> None:
        newly = sub.port not in self.registry.ports()
        self.displaced(self.registry.add(sub))
        if newly:
            try:
                async with self._iptables_lock:
                    await asyncio.to_thread(self.redirector.redirect, sub.port, self.proxy_port)
            except BaseException:
                self.registry.remove(sub.sub_id)
                raise
            if sub.mode == "steal":
                await self._reset_old_connections(sub.port)

    async def _reset_old_connections(self, port: int) -> None:
        """Connections made before the redirect never reach the agent (NAT decides at a
        connection's first packet), so a sidecar's keep-alive connection would bypass a
        steal forever. The policy: reset them once, right when the steal begins; their
        clients reconnect, through the agent. Mirror never does this (it must not disturb).
        """
        self.pool.drop(port)  # our own idle connections to the app would be reset too
        try:
            killed = await asyncio.to_thread(self.redirector.reset_connections, port)
        except (OSError, subprocess.SubprocessError) as exc:
            self._warn_all(f"could not reset the connections open before the steal of port "
                           f"{port} ({exc}); they keep reaching the original app")
            return
        if killed:
            self._warn_all(f"reset {killed} connection(s) to port {port} opened before the "
                           "steal began; their clients reconnect through waylay")

    def _unexpected(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """A bug in the agent: tell the sessions (an error event) instead of only stderr."""
        exc = context.get("exception")
        where = context.get("message", "unexpected error")
        detail = "".join(traceback.format_exception(exc)) if exc is not None else ""
        message = f"agent error: {where}: {exc!r}" if exc is not None else f"agent: {where}"
        emit({"event": "error", "message": message, "detail": detail[-4000:]})
        for link in self.links.values():
            link.send(Notice(level="error", message=message))
        loop.default_exception_handler(context)

    def _warn_all(self, message: str) -> None:
        for link in self.links.values():
            link.warn(message)

    def displaced(self, subs: tuple[Subscription, ...]) -> None:
        """Tell the sessions whose steals an ``on_concurrent_steal: override`` took away;
        their subscriptions are already out of the registry."""
        for sub in subs:
            link = self.links.get(sub.link_id)
            if link is not None:
                link.lost(sub, f"port {sub.port} was taken over by another session's steal "
                               "(its on_concurrent_steal is override); requests on it now go "
                               "to that session")

    async def unsubscribe(self, sub_id: int) -> None:
        sub = self.registry.remove(sub_id)
        if sub is not None:
            await self._release_ports({sub.port})

    async def link_closed(self, link: ClientLink) -> None:
        self.links.pop(link.link_id, None)
        gone = self.registry.remove_link(link.link_id)
        await self._release_ports({s.port for s in gone})
        if not self.links:
            self._idle_since = time.monotonic()

    async def _release_ports(self, ports: set[int]) -> None:
        """Ports nobody subscribes any more go back to the original app untouched."""
        if self._shutting_down:
            return  # the guard removes the whole chain as soon as we are gone
        for port in ports - self.registry.ports():
            async with self._iptables_lock:
                await asyncio.to_thread(self.redirector.unredirect, port)

    def _link_of(self, sub_id: int) -> tuple[ClientLink, Subscription] | None:
        sub = self.registry.get(sub_id)
        if sub is None:
            return None
        link = self.links.get(sub.link_id)
        return (link, sub) if link is not None else None

    # --- streams ----------------------------------------------------------------------

    def open_request_stream(self, conn: StreamOwner, start: StealStart) -> Stream | None:
        found = self._link_of(start.sub_id)
        if found is None:
            return None
        link, sub = found
        stream = Stream(link, self._next_stream_id(), conn, whole=False,
                        bound=link.bound_for(sub.sub_id),
                        what=f"{start.method} {start.target} on port {sub.port}")
        link.streams[stream.stream_id] = stream
        stream.open_request((link.client_subs.get(sub.sub_id, 0), sub.port, start.method,
                             start.target, start.http_version, headers_to_wire(start.headers),
                             conn.peer, start.flow_id or None))
        return stream

    def open_connection_stream(self, conn: InterceptedConnection, sub_id: int) -> Stream | None:
        found = self._link_of(sub_id)
        if found is None:
            return None
        link, sub = found
        stream = Stream(link, self._next_stream_id(), conn, whole=True)
        link.streams[stream.stream_id] = stream
        link.send(ConnectionStart(stream=stream.stream_id,
                                  sub_id=link.client_subs.get(sub.sub_id, 0),
                                  port=sub.port, peer=conn.peer))
        return stream

    def open_mirror_stream(self, sub_id: int, port: int, peer: str,
                           start: MirrorStart | None) -> MirrorStream | None:
        """A copy for a mirroring session, or None when it must be dropped.

        Copies never wait: when the session already has MAX_MIRRORS_IN_FLIGHT copies
        unanswered, or its link is congested, this one is dropped and counted, so a slow
        or dead local app never slows the original app's path.
        """
        found = self._link_of(sub_id)
        if found is None:
            return None
        link, sub = found
        if link.mirrors_in_flight >= MAX_MIRRORS_IN_FLIGHT or link.congested:
            link.mirror_drops += 1
            link.note()
            return None
        record = start.record if start is not None else None
        clause = start.clause if start is not None else None
        stream = MirrorStream(link, self._next_stream_id(), record, clause, self._mirror_done,
                              bound=link.bounds.get(sub.sub_id))
        link.streams[stream.stream_id] = stream
        client_sub = link.client_subs.get(sub.sub_id, 0)
        if start is None:
            link.send(ConnectionStart(stream=stream.stream_id, sub_id=client_sub, port=port,
                                      peer=peer))
        else:
            record = start.record
            record.mirrors_pending += 1
            self._waiting.setdefault(record.id, set()).add(link.link_id)
            if record.verdict is Verdict.PASSED:
                record.verdict = Verdict.MIRRORED
            stream.open_request((client_sub, port, start.method, start.target,
                                 start.http_version, headers_to_wire(start.headers), peer, None))
        return stream

    def _mirror_done(self, stream: MirrorStream) -> None:
        """A session's copy is answered (or abandoned): once the original is done too,
        that session gets its row, without waiting for other sessions' copies."""
        record = stream.record
        if record is None:
            return
        link_id = stream.link.link_id
        self._mirror_results.setdefault(record.id, {}).setdefault(link_id, stream.result)
        record.mirrors_pending -= 1
        waiting = self._waiting.get(record.id)
        if waiting is not None:
            waiting.discard(link_id)
        if record.remote_done:
            owner, timed_out = self._held.get(record.id, (None, ()))
            self._send_record(record, owner, timed_out, only=frozenset({link_id}))
        if record.mirrors_pending == 0:
            self._waiting.pop(record.id, None)
            if record.remote_done:
                self._held.pop(record.id, None)
                self._mirror_results.pop(record.id, None)

    def shadowed(self, sub_ids: tuple[int, ...]) -> None:
        """Tell sessions whose filter matched a request that an earlier session took it."""
        for sub_id in sub_ids:
            found = self._link_of(sub_id)
            if found is not None:
                found[0].shadowed += 1
                found[0].note()

    def record(self, record: FlowRecord, owner: int | None,
               timed_out: tuple[str, ...]) -> None:
        """A request is finished on the remote side: report it now to every session but
        those whose copy of it is still being answered (they get theirs when it is)."""
        record.remote_done = True
        waiting = self._waiting.get(record.id)
        if record.mirrors_pending and waiting:
            self._held[record.id] = (owner, timed_out)
            self._send_record(record, owner, timed_out, skip=frozenset(waiting))
            return
        self._send_record(record, owner, timed_out)
        self._waiting.pop(record.id, None)
        self._mirror_results.pop(record.id, None)

    def record_row(self, port: int, row: FlowRow, timed_out: tuple[str, ...]) -> None:
        """A passed request's record, already a wire row: to every session on ``port``."""
        links = self.links
        for link_id in self.registry.link_ids(port):
            link = links.get(link_id)
            if link is not None:
                link.send_flow(row)
                for clause in timed_out:
                    link.warn(f"filter {clause} hit its time budget on request {row[0]} "
                              f"({row[4]} {row[6]}); counted as no match")

    def _send_record(self, record: FlowRecord, owner: int | None, timed_out: tuple[str, ...],
                     *, skip: frozenset[int] = frozenset(),
                     only: frozenset[int] | None = None) -> None:
        """To its thief only, or to every session on the port; each session sees only its
        own mirror of it (its local app's answer, its clause), never another's. ``skip``
        and ``only`` narrow the sessions (by link id) this call reports to."""
        results = self._mirror_results.get(record.id) or {}
        if owner is not None and not results and not skip and only is None:
            # A stolen request nobody mirrored (the usual case): its thief only.
            found = self._link_of(owner)
            if found is not None:
                found[0].send_flow(record.to_row())
                for clause in timed_out:
                    found[0].warn(f"filter {clause} hit its time budget on request "
                                  f"{record.id} ({record.method} {record.path}); counted as "
                                  "no match")
            return
        if owner is not None:
            found = self._link_of(owner)
            targets = [found[0]] if found is not None else []
            # Sessions that mirrored a stolen request see their copy, not the thief's answer.
            targets += [self.links[i] for i in sorted(results)
                        if i in self.links and self.links[i] not in targets]
        else:
            links = self.links
            targets = [links[i] for i in self.registry.link_ids(record.port) if i in links]
        if skip or only is not None:
            targets = [link for link in targets if link.link_id not in skip
                       and (only is None or link.link_id in only)]
        plain: FlowRow | None = None
        whole_mirrors: set[int] | None = None
        for link in targets:
            result = results.get(link.link_id)
            if result is None and record.verdict is Verdict.MIRRORED and not results:
                # A mirrored raw TCP connection: its copies are not answered per request.
                if whole_mirrors is None:
                    whole_mirrors = {s.link_id for s in self.registry.whole_mirrors(record.port)}
                if link.link_id in whole_mirrors:
                    result = MirrorResult(clause=None)
            if result is not None:
                row = record.to_row(mirror=result, hide_remote=owner is not None
                                    and link.link_id != self._owner_link(owner))
            else:
                if plain is None:
                    plain = record.to_row()
                row = plain
            link.send_flow(row)
            for clause in timed_out:
                link.warn(f"filter {clause} hit its time budget on request {record.id} "
                          f"({record.method} {record.path}); counted as no match")

    def _owner_link(self, owner: int | None) -> int | None:
        found = self._link_of(owner) if owner is not None else None
        return found[0].link_id if found is not None else None

    def listening_ports(self) -> list[int]:
        """TCP ports listening in this network namespace, the agent's own excluded."""
        text = ""
        for name in ("tcp", "tcp6"):
            try:
                with open(f"/proc/self/net/{name}") as f:
                    text += f.read()
            except OSError:
                continue
        ports = set(listening_ports(parse_proc_net_tcp(text)).values())
        ports.discard(self.proxy_port)
        return sorted(ports)

    # --- lifetime ---------------------------------------------------------------------

    async def serve(self, listen: str, proxy_port: int) -> None:
        """Serve until the TTL, the last session leaving, or a signal. ``listen`` is
        ``unix:PATH`` (local targets) or ``tcp:127.0.0.1:PORT`` (in a pod, reached by the
        API server's port-forward; loopback only, checked by ``waylay.agent.main``)."""
        loop = asyncio.get_running_loop()
        redirect_server = await loop.create_server(
            lambda: serve_connection(self), host="0.0.0.0", port=proxy_port,
            reuse_address=True, backlog=1024,
        )
        self.proxy_port = redirect_server.sockets[0].getsockname()[1]
        control_path = listen[len("unix:"):] if listen.startswith("unix:") else None
        if control_path is not None:
            if os.path.exists(control_path):
                os.unlink(control_path)
            control_server = await asyncio.start_unix_server(self.attach, path=control_path)
            os.chmod(control_path, 0o600)  # the token is the lock; the mode is the door
        else:
            host, _, port = listen[len("tcp:"):].rpartition(":")
            control_server = await asyncio.start_server(self.attach, host=host.strip("[]"),
                                                        port=int(port))
        stop = asyncio.Event()
        loop.set_exception_handler(self._unexpected)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        emit({"event": "ready", "listen": listen, "chain": self.chain,
              "proxy_port": self.proxy_port, "pid": os.getpid()})
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                now = time.monotonic()
                for link in list(self.links.values()):
                    if now - link.last_seen > LINK_SILENCE_S:
                        link.warn(f"no word from this session for {LINK_SILENCE_S:g} s")
                        link.close()  # its reader ends; its ports revert to passthrough
                limit = self.linger if self._ever_attached else self.ttl
                if (not self.links and not self._handshakes
                        and time.monotonic() - self._idle_since >= limit):
                    why = ("the last session left" if self._ever_attached
                           else f"no session came within {self.ttl:g} s")
                    emit({"event": "exit", "reason": why})
                    break
        finally:
            self._shutting_down = True
            redirect_server.close()
            control_server.close()
            for link in list(self.links.values()):
                link.close()
            if self._link_tasks:  # let them say goodbye (flush their last records)
                await asyncio.wait(set(self._link_tasks), timeout=2.0)
            self.pool.close()
            if control_path is not None and os.path.exists(control_path):
                os.unlink(control_path)


def run_worker(*, token: str, chain: str, listen: str, proxy_port: int,
               ttl: float, linger: float = 0.0) -> int:
    """Entry point of the worker process (started by the guard)."""
    redirector = Redirector(chain=chain, owner_pid=os.getppid())
    agent = Agent(token=token, chain=chain, redirector=redirector, ttl=ttl, linger=linger)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(agent.serve(listen, proxy_port))
    except OSError as exc:
        emit({"event": "error", "message": f"agent cannot listen: {exc}", "exit": 3})
        return 3
    return 0


