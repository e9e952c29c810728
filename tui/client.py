"""The dashboard's one network task: a core session, and messages back to the app.

Theory of operation. :class:`SessionClient` runs at most one session at a time, in one
named asyncio task it owns (``start`` / ``shutdown``). It talks to the agent only through
``waylay.core.client.attach`` (docs/architecture.md §1), exactly as ``waylay run`` does, and to the
app only by posting the messages of ``waylay.tui.messages``; it never touches a widget.

The engine calls ``on_event`` on the event loop for every event. Those calls only append
to a list; a timer posts the list as one :class:`TrafficBatch` a few times a second, so a
flood of 1,000 requests/s costs the UI five messages/s, not a thousand.

A session whose every subscription is refused ends (``AgentError``), and an agent may
not support mirror mode. So a session asked to start in mirror mode attaches in mode off
and then asks for mirror through ``update``: a refusal comes back as a clear
:class:`UpdateResult` while the session (and the target's traffic) stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, assert_never

from textual.message import Message

from waylay.core.client.attach import Attachment, attach
from waylay.core.engine.config import AgentConfig, IncomingConfig, Mode
from waylay.core.engine.errors import WaylayError
from waylay.core.engine.events import (
    ErrorEvent,
    Event,
    RequestEvent,
    StartedEvent,
    SubscribedEvent,
    WarningEvent,
)
from waylay.core.engine.target import Target
from waylay.tui.messages import (
    SessionEnded,
    SessionProgress,
    SessionState,
    TrafficBatch,
    UpdateResult,
)

AttachFn = Callable[..., Awaitable[Attachment]]

# Coalescing interval: 5 batches per second keeps the table live to the eye while the
# per-batch costs (layout, scrollbar, counters) are paid 5 times a second, not per event.
BATCH_INTERVAL_S = 0.2
# Events held between two flushes. The flush runs on the same loop as the producer, so
# this is only reached if the loop stalls for long; then request events are dropped (and
# counted in ``overflow``) rather than growing without bound. Errors are always kept.
MAX_PENDING = 50_000
# How long quitting waits for the agent to stop (it removes its iptables rules first).
SHUTDOWN_TIMEOUT_S = 15.0
# The session's own handshake timeout bounds the wait for the agent's welcome.
_WELCOME_POLL_S = 0.02
_OFF_WARNING = "mode is off"


class SessionClient:
    """At most one running session; its events and state go to ``post`` as messages."""

    def __init__(self, post: Callable[[Message], object], *, attach_fn: AttachFn = attach,
                 batch_interval: float = BATCH_INTERVAL_S, ttl: float = 30.0,
                 clean_on_start: bool = False, capture: bool = True,
                 agent: AgentConfig | None = None) -> None:
        self._post = post
        self._attach = attach_fn
        # Headers and body starts for the detail view, from engines that can send them.
        self._attach_extra = {"capture": True} if capture and _accepts(attach_fn, "capture") \
            else {}
        self._batch_interval = batch_interval
        self._ttl = ttl
        self._clean_on_start = clean_on_start
        self._agent = agent or AgentConfig()
        self._kube_context: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._attached: Attachment | None = None
        self._pending: list[Event] = []
        self._pending_session = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._update_lock = asyncio.Lock()
        self._update_errors: list[str] | None = None
        self._hide_off_warning = False
        self.session_no = 0
        self.target: Target | None = None
        self.incoming = IncomingConfig()
        self.cli_ports: dict[int, int | None] = {}
        self.overflow = 0

    @property
    def busy(self) -> bool:
        """A session is starting or running."""
        return self._task is not None and not self._task.done()

    @property
    def attached(self) -> bool:
        return self._attached is not None and self._attached.session.welcome is not None

    @property
    def listening(self) -> tuple[int, ...]:
        if self._attached is None or self._attached.session.welcome is None:
            return ()
        return tuple(self._attached.session.welcome.listening_ports)

    def start(self, target: Target, incoming: IncomingConfig,
              cli_ports: dict[int, int | None], *, kube_context: str | None = None) -> int:
        """Start a session on ``target`` in the background; returns its number.
        ``kube_context`` is the Kubernetes context of a Kubernetes target (None: the
        kubeconfig's current one)."""
        if self.busy:
            raise RuntimeError("a session is running: shutdown() first")
        self._kube_context = kube_context
        self.session_no += 1
        self.target, self.incoming, self.cli_ports = target, incoming, dict(cli_ports)
        self._task = asyncio.create_task(self._run(self.session_no, target),
                                         name=f"waylay-session-{self.session_no}")
        return self.session_no

    async def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """End the session (the agent stops and removes its rules) and wait for it."""
        task = self._task
        if task is None or task.done():
            return
        if self._attached is not None:
            self._attached.stop()
        else:
            task.cancel()  # still attaching: launch_local_agent stops a half-started agent
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout)

    async def apply(self, incoming: IncomingConfig, cli_ports: dict[int, int | None] | None
                    = None, *, what: str, quiet: bool = False) -> bool:
        """Replace mode / filter / ports on the running session; reverts if refused.

        Without a session the settings are kept for the next one. Posts an UpdateResult.
        """
        async with self._update_lock:
            previous, previous_ports = self.incoming, dict(self.cli_ports)
            attached = self._attached
            if attached is None or attached.session.welcome is None:
                self.incoming = incoming
                if cli_ports is not None:
                    self.cli_ports = dict(cli_ports)
                self._post(UpdateResult(session=self.session_no, accepted=True,
                                        incoming=incoming, previous=previous, what=what,
                                        errors=[], quiet=quiet))
                return True
            self._update_errors = []
            try:
                result: object = await attached.update(incoming, cli_ports)
            except WaylayError as exc:
                self._update_errors.append(str(exc))
                result = False
            finally:
                errors, self._update_errors = self._update_errors, None
            # AttachedSession.update may return None (it drops Session.update's bool):
            # then the agent's refusals, which arrive as error events before it returns,
            # are the answer.
            accepted = result if isinstance(result, bool) else not errors
            if accepted:
                self.incoming = incoming
                if cli_ports is not None:
                    self.cli_ports = dict(cli_ports)
            else:
                # Part of it may have been taken: put the whole previous state back, so
                # what the dashboard shows is what the agent does.
                with contextlib.suppress(WaylayError):
                    await attached.update(previous, previous_ports)
            self._post(UpdateResult(session=self.session_no, accepted=accepted,
                                    incoming=incoming, previous=previous, what=what,
                                    errors=errors, quiet=quiet))
            self._post_state(self.session_no)
            return accepted

    # --- the session task -------------------------------------------------------------

    async def _run(self, n: int, target: Target) -> None:
        wanted = self.incoming
        # See the module docstring: mirror is asked for after attaching.
        start = dataclasses.replace(wanted, mode=Mode.OFF) if wanted.mode is Mode.MIRROR \
            else wanted
        self._hide_off_warning = start is not wanted
        # How the agent runs (local targets take only agent.local_response_timeout).
        extra: dict[str, Any] = dict(self._attach_extra, agent=self._agent)
        if not target.is_local:  # which cluster
            extra.update(kube_context=self._kube_context)
        try:
            attached = await self._attach(
                target, incoming=start, cli_ports=self.cli_ports,
                on_event=functools.partial(self._on_event, n),
                on_progress=lambda text: self._post(SessionProgress(n, str(target), text)),
                ttl=self._ttl, clean_on_start=self._clean_on_start, **extra)
        except WaylayError as exc:
            self._post(SessionEnded(n, str(target), str(exc), exc.exit_code))
            return
        except Exception as exc:  # never let a bug in a launcher take the dashboard down
            self._post(SessionEnded(n, str(target), f"cannot start the session: {exc!r}", 1))
            return
        # Settings applied while the agent started were kept in self.incoming (apply()
        # without a session); they are sent once the handshake is done.
        changed = self.incoming is not wanted
        wanted = self.incoming
        self._attached = attached
        self.incoming = start
        runner = asyncio.create_task(attached.run(), name=f"waylay-session-{n}-link")
        error: WaylayError | Exception | None = None
        try:
            # Planned, not just welcomed: the session bar shows the ports subscribed.
            while not attached.session.planned and not runner.done():
                await asyncio.sleep(_WELCOME_POLL_S)
            if not runner.done():
                if self.incoming is not start:  # applied during the handshake
                    wanted, changed, self.incoming = self.incoming, True, start
                self._post(SessionProgress(n, str(target), "attached"))
                self._post_state(n)
                if wanted is not start:
                    await self.apply(wanted, self.cli_ports,
                                     what="settings changed while attaching" if changed
                                     else f"mode {wanted.mode}", quiet=not changed)
            await runner
        except WaylayError as exc:
            error = exc
        except Exception as exc:
            error = exc
        finally:
            if not runner.done():
                attached.stop()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(runner)
            self._attached = None
            self._flush()
        if error is None:
            self._post(SessionEnded(n, str(target), None, 0))
        elif isinstance(error, WaylayError):
            self._post(SessionEnded(n, str(target), str(error), error.exit_code))
        else:
            self._post(SessionEnded(n, str(target), f"the session failed: {error!r}", 1))

    def _post_state(self, n: int) -> None:
        attached = self._attached
        if attached is None or self.target is None:
            return
        self._post(SessionState(session=n, target=str(self.target), incoming=self.incoming,
                                cli_ports=dict(self.cli_ports),
                                plans=list(attached.session.plans),
                                listening=self.listening))

    # --- events -----------------------------------------------------------------------

    def _on_event(self, n: int, event: Event) -> None:
        """The engine's on_event: called on the loop for every event; must stay cheap."""
        droppable = False
        match event:
            case RequestEvent() | StartedEvent():
                droppable = True
            case ErrorEvent(message=message):
                if self._update_errors is not None:
                    self._update_errors.append(message)
            case WarningEvent(message=message):
                if self._hide_off_warning and message.startswith(_OFF_WARNING):
                    self._hide_off_warning = False  # our own stand-in for mirror
                    return
            case SubscribedEvent():
                pass
            case _:
                assert_never(event)
        if n != self._pending_session:
            self._flush()
            self._pending_session = n
        if droppable and len(self._pending) >= MAX_PENDING:
            self.overflow += 1
            return
        self._pending.append(event)
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(self._batch_interval, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._pending:
            events, self._pending = self._pending, []
            self._post(TrafficBatch(session=self._pending_session, events=events))


def _accepts(function: Callable[..., object], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
