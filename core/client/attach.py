"""Start a session on a target: launch its agent, attach, run, stop (asyncio).

The one entry point the CLI and the dashboard share: ``attach`` returns an
``AttachedSession`` whose ``run()`` serves until ``stop()``; ``update()`` replaces the
mode, filter or ports of the running session without restarting anything. Progress while
the agent starts is reported through ``on_progress`` (it can take seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from waylay.core.client.session import EventSink, PortPlan, Session, SessionStats
from waylay.core.engine.config import AgentConfig, IncomingConfig
from waylay.core.engine.events import notice_event
from waylay.core.engine.target import Target
from waylay.core.engine.wire import Welcome
from waylay.core.system import agent_directory
from waylay.core.system.agent_launch import AgentProcess, launch_local_agent
from waylay.core.system.loading import load

ProgressSink = Callable[[str], None]


class SessionView(Protocol):
    """What callers read of a running session: one ``Session``, or a ``SessionGroup``
    standing for the sessions of every pod of a Kubernetes workload."""

    @property
    def welcome(self) -> Welcome | None: ...

    @property
    def stats(self) -> SessionStats: ...

    @property
    def ended_cleanly(self) -> bool: ...

    @property
    def plans(self) -> list[PortPlan]: ...

    @property
    def planned(self) -> bool: ...


class Attachment(Protocol):
    """What ``attach`` returns: ``AttachedSession`` (local) or ``KubeAttachment``."""

    @property
    def session(self) -> SessionView: ...

    async def run(self) -> None: ...

    def stop(self) -> None: ...

    async def update(self, incoming: IncomingConfig,
                     cli_ports: dict[int, int | None] | None = None) -> bool: ...

    async def close(self) -> None: ...


# How long the starter of an agent waits for it to exit by itself after its session
# ended; an agent still up after that serves other sessions and is left to them.
AGENT_EXIT_WAIT_S = 5.0


@dataclass
class AttachedSession:
    """A running session, and the agent it started (None if it joined another's agent)."""

    target: Target
    agent: AgentProcess | None
    session: Session
    key: str | None = None

    async def run(self) -> None:
        """Serve until ``stop()`` or until the link fails (AgentError); always stops the agent."""
        try:
            await self.session.run()
        finally:
            await self.close()

    def stop(self) -> None:
        self.session.stop()

    async def update(self, incoming: IncomingConfig,
                     cli_ports: dict[int, int | None] | None = None) -> bool:
        """Replace mode, filter and ports in place (see ``Session.update``); True if taken."""
        return await self.session.update(incoming, cli_ports)

    async def close(self) -> None:
        """End this session's part. The agent leaves by itself with its last session (its
        guard removing every rule); one still serving others is left running."""
        self.session.stop()
        agent = self.agent
        if agent is None:
            return
        try:
            await asyncio.wait_for(agent.process.wait(), AGENT_EXIT_WAIT_S)
        except TimeoutError:
            if not self.session.ended_cleanly:
                with contextlib.suppress(ProcessLookupError):
                    await agent.stop()  # our link broke: the agent may be wedged
            return
        await agent.stop()  # reaps it, drains its pipes, removes its socket directory
        if self.key is not None:
            agent_directory.forget(self.key)


async def attach(target: Target, *, incoming: IncomingConfig,
                 cli_ports: dict[int, int | None], on_event: EventSink,
                 on_progress: ProgressSink | None = None, local_host: str = "127.0.0.1",
                 ttl: float = 30.0, clean_on_start: bool = False,
                 capture: bool = False, agent: AgentConfig | None = None,
                 kube_context: str | None = None) -> Attachment:
    """Launch the agent in ``target`` and connect a session to it (not yet running).

    Kubernetes targets go to ``waylay.core.kube.attach`` (``agent`` and ``kube_context`` apply
    there); local ones start or join the agent of their network namespace (of ``agent``,
    only ``local_response_timeout`` and the body buffer's bounds apply to them)."""
    if not target.is_local:
        # The kubernetes client loads slowly (off the event loop) and must not be imported
        # from two threads at once (waylay.core.system.loading).
        kube_attach = await asyncio.to_thread(load, "waylay.core.kube.attach")
        return await kube_attach.attach_kubernetes(  # type: ignore[no-any-return]
            target, incoming=incoming, cli_ports=cli_ports, on_event=on_event,
            on_progress=on_progress, local_host=local_host, capture=capture,
            agent=agent or AgentConfig(), kube_context=kube_context)
    progress = on_progress or (lambda _message: None)
    progress(f"starting the agent in {target}")
    timeout = (agent or AgentConfig()).local_response_timeout
    body_buffer = (agent or AgentConfig()).body_buffer
    inject_headers = (agent or AgentConfig()).inject_headers

    def agent_message(message: dict[str, object]) -> None:
        kind = message.get("event")
        if kind in ("warning", "error"):
            on_event(notice_event(kind, str(message.get("message"))))
        elif kind == "cleaned":
            progress(f"removed leftover rules in chain {message.get('chain')}")

    key = agent_directory.namespace_key(target)
    existing = agent_directory.find(key) if key is not None else None
    if existing is not None:
        try:
            progress(f"joining the agent already serving {existing.target}")
            reader, writer = await asyncio.open_unix_connection(existing.socket_path)
        except OSError:
            existing = None  # it just went away: start our own
        else:
            session = Session(reader=reader, writer=writer, token=existing.token,
                              incoming=incoming, cli_ports=cli_ports, on_event=on_event,
                              local_host=local_host, capture=capture,
                              local_response_timeout=timeout, body_buffer=body_buffer,
                              inject_headers=inject_headers)
            return AttachedSession(target=target, agent=None, session=session, key=key)
    process = await launch_local_agent(
        target, ttl=ttl, extra_args=["--clean-on-start"] if clean_on_start else [],
        on_message=agent_message)
    try:
        progress("connecting to the agent")
        reader, writer = await asyncio.open_unix_connection(process.socket_path)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            await process.stop()
        raise
    if key is not None:
        agent_directory.remember(key, agent_directory.AgentRecord(
            socket_path=process.socket_path, token=process.token, pid=process.process.pid,
            target=str(target)))
    session = Session(reader=reader, writer=writer, token=process.token, incoming=incoming,
                      cli_ports=cli_ports, on_event=on_event, local_host=local_host,
                      capture=capture, local_response_timeout=timeout,
                      body_buffer=body_buffer, inject_headers=inject_headers)
    return AttachedSession(target=target, agent=process, session=session, key=key)
