"""`waylay run`: a headless session until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import IO, Any, assert_never

from waylay.core.client.attach import Attachment, attach
from waylay.core.engine.config import Config, Mode, default_config, load_config
from waylay.core.engine.errors import AgentError, UsageError, WaylayError
from waylay.core.engine.events import (
    ErrorEvent,
    Event,
    RequestEvent,
    StartedEvent,
    SubscribedEvent,
    WarningEvent,
    to_json,
)
from waylay.core.engine.target import parse_target

# One encoder for every line (json.dumps with options builds a new one per call).
_JSON = json.JSONEncoder(separators=(",", ":"))


class EventWriter:
    """Where events go: JSON lines (``--events``) and/or a short human line on stderr."""

    def __init__(self, sink: IO[str] | None, human: bool) -> None:
        self._sink = sink
        self._human = human
        self._flush_pending = False

    def __call__(self, event: Event) -> None:
        if self._sink is not None:
            self._sink.write(_JSON.encode(to_json(event)) + "\n")
            self._flush_soon()
        # "started" lines are for --events and the dashboard; the human line comes at
        # the end of each request (an error event names one that hangs).
        if isinstance(event, ErrorEvent | WarningEvent) or (
                self._human and not isinstance(event, StartedEvent)):
            print(_human_line(event), file=sys.stderr, flush=True)

    def _flush_soon(self) -> None:
        """Lines written in one turn of the event loop reach the file together (a busy
        port makes two events per stolen request); outside a loop, at once."""
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush()
            return
        self._flush_pending = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if self._sink is not None and not self._sink.closed:
            self._sink.flush()


def _human_line(event: Event) -> str:
    """One line for stderr; events of a multi-pod target start with their pod."""
    line = _describe(event)
    pod = event.pod
    if pod and not line.startswith("waylay: "):
        return f"[{pod}] {line}"
    return f"waylay: [{pod}] {line[len('waylay: '):]}" if pod else line


def _describe(event: Event) -> str:
    match event:
        case RequestEvent():
            status = event.status or "-"
            what = f"{event.method} {event.path}" if event.method else "TCP connection"
            matched = f"  [{event.matched}]" if event.matched else ""
            return (f"{str(event.verdict).upper():8} :{event.port} {what} -> "
                    f"{status} ({event.duration_ms} ms){matched}")
        case StartedEvent():
            what = f"{event.method} {event.path}" if event.method else "TCP connection"
            return f"{str(event.verdict).upper():8} :{event.port} {what} in flight"
        case SubscribedEvent():
            flt = f" filter {event.filter}" if event.filter else " (whole port)"
            return f"waylay: {event.mode} port {event.port}{flt}"
        case WarningEvent():
            return f"waylay: warning: {event.message}"
        case ErrorEvent():
            return f"waylay: error: {event.message}"
        case _:
            assert_never(event)


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config) if args.config else default_config()
    config = config.with_kube_flags(context=args.context, namespace=args.namespace)
    config = config.with_agent_ttl(args.ttl)
    if args.mode:
        incoming = dataclasses.replace(config.incoming, mode=Mode(args.mode))
        config = dataclasses.replace(config, incoming=incoming)
    for warning in config.warnings:
        print(f"waylay: warning: {warning}", file=sys.stderr)
    return config


def run_command(args: argparse.Namespace) -> int:
    config = _load(args)
    target_text = args.target or config.target
    if not target_text:
        raise UsageError("no target: give -t (pod/NAME, deployment/NAME, netns/NAME, pid/N, "
                         "...) or `target` in the config")
    parse_target(target_text, namespace=config.namespace)  # a bad target fails before any I/O
    cli_ports: dict[int, int | None] = dict(args.port)
    sink: IO[str] | None = None
    if args.events == "-":
        sink = sys.stdout
    elif args.events:
        try:
            sink = open(args.events, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UsageError(f"cannot write events to {args.events}: {exc}") from exc
    events = EventWriter(sink, human=not args.quiet and args.events != "-")
    try:
        return _event_loop_runner()(_run(args, config, target_text, cli_ports, events))
    finally:
        if sink is not None and sink is not sys.stdout:
            sink.close()


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    """uvloop's when installed (as the agent uses): every stolen request costs this
    process a few loop turns, which uvloop makes several times cheaper."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


async def _run(args: argparse.Namespace, config: Config, target_text: str,
               cli_ports: dict[int, int | None], events: EventWriter) -> int:
    target = parse_target(target_text, namespace=config.namespace)
    attached = await attach(
        target, incoming=config.incoming, cli_ports=cli_ports, on_event=events,
        on_progress=lambda text: print(f"waylay: {text} ...", file=sys.stderr, flush=True),
        local_host=args.local_host, ttl=float(config.agent.ttl), clean_on_start=args.clean_on_start,
        capture=args.capture, agent=config.agent, kube_context=config.kube_context)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, attached.stop)
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = loop.create_task(_reload(args, attached, cli_ports, events), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await attached.run()
        return 0
    except AgentError as exc:
        events(ErrorEvent(message=str(exc)))
        return exc.exit_code
    finally:
        print(f"waylay: {attached.session.stats.summary()}", file=sys.stderr, flush=True)


async def _reload(args: argparse.Namespace, attached: Attachment,
                  cli_ports: dict[int, int | None], events: EventWriter) -> None:
    """SIGHUP: read the config file again and apply it to the running session in place.

    A broken file is reported and changes nothing: the session keeps its current filter.
    """
    if not args.config:
        events(WarningEvent(message="SIGHUP: no config file (-f) to reload"))
        return
    try:
        config = _load(args)
    except WaylayError as exc:
        events(ErrorEvent(message=f"reload refused, filter unchanged: {exc}"))
        return
    accepted = await attached.update(config.incoming, cli_ports)
    events(WarningEvent(message=f"reloaded {args.config}") if accepted else
           ErrorEvent(message=f"the agent refused part of {args.config}; see the errors above"))
