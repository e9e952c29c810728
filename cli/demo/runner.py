"""`waylay demo`: put the sample, the local app, the traffic and a session together.

Theory of operation. ``Demo.run`` goes through three phases, and every way out of any of
them (normal end, Ctrl-C, SIGTERM, SIGHUP, an error) passes through the tear-down:

1. start: remove what crashed demos left (``sandbox.clean_leftovers``), record this run,
   start the shop in its namespace (``sandbox.open_sandbox``) and the local dev app on
   127.0.0.1;
2. run, either
   - headless: attach a session (``waylay.core.client.attach``) with the config, remote port 80
     delivered to the local app; once it subscribed, start the traffic generator; print
     each event as a JSON line on stdout (as ``waylay run --events -``); stop after
     ``--seconds`` or a signal; then judge the run (``checks``), or
   - the dashboard: start the generator, then open the dashboard on the target exactly as
     ``waylay ui -t TARGET`` does, with a hint of what to try;
3. tear down: stop the generator, the session (its agent leaves with its last session and
   its guard removes the rules), the local app and the shop, every process left in the
   namespace, and the namespace itself. Signals are held off meanwhile: it is bounded.

Exit codes: 0 when traffic flowed and was routed as the config says, 1 when it was not,
130 when interrupted before traffic flowed, and docs/architecture.md §3's 2 / 3 / 4 for a bad
config,
an unreachable target, a missing privilege or tool.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, Final

from waylay.cli.demo.checks import PROBLEMS_SHOWN, TrafficReport, judge, parse_report, view_lines
from waylay.cli.demo.processes import Children, RunRecord, start_time
from waylay.cli.demo.sandbox import SHOP_PORT, Sandbox, clean_leftovers, close_sandbox, open_sandbox
from waylay.cli.demo.traffic import REQUEST_TIMEOUT_S, USERS
from waylay.cli.run import EventWriter
from waylay.core.client.attach import attach
from waylay.core.engine.config import Config, Mode, default_config, load_config
from waylay.core.engine.errors import AgentError, UsageError, WaylayError
from waylay.core.engine.events import ErrorEvent, Event, SubscribedEvent
from waylay.core.engine.target import parse_target
from waylay.core.system.interpreter import python_command

EXIT_NOT_ROUTED: Final = 1
EXIT_INTERRUPTED: Final = 130
# Without --seconds: the dashboard's traffic lasts this long, a headless run until Ctrl-C
# but at most MAX_SECONDS (every loop is bounded).
DASHBOARD_SECONDS: Final = 3600.0
MAX_SECONDS: Final = 24 * 3600.0
# Bounds on waiting for the session; not performance expectations.
SUBSCRIBE_TIMEOUT_S: Final = 20.0
SESSION_STOP_TIMEOUT_S: Final = 20.0
# After the generator stops, time for the agent's last batch of flow records to arrive.
FLOW_SETTLE_S: Final = 0.5
POLL_S: Final = 0.2
# What to try, for the demo's hint line (its first line) and the log (every line).
HINT: Final = (
    "mirror mode: the shop answers, local-dev gets copies. Try f, header_filter, "
    "^x-user: alice$, Enter; then m, s",
    "Mirror mode: the remote shop answers every request, your local-dev app gets a copy.",
    "Try: f, kind header_filter, value ^x-user: alice$, Enter (only alice is mirrored); then "
    "m, s: alice's requests become STOLEN (answered by local-dev), everyone else's PASSED.",
    "To take everyone but the kubelet's probes: ^User-Agent: (?!kube-probe). q quits and "
    "removes everything.",
)

SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def progress(text: str) -> None:
    print(f"waylay demo: {text}", file=sys.stderr, flush=True)


def demo_command(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else default_config()
    for warning in config.warnings:
        print(f"waylay: warning: {warning}", file=sys.stderr)
    if config.target:
        progress(f"ignoring the config's target {config.target!r}: the demo intercepts its "
                 "own sample shop")
        config = dataclasses.replace(config, target=None)
    seconds: float | None = args.seconds
    if seconds is not None and not 0 < seconds <= MAX_SECONDS:
        raise UsageError(f"--seconds must be more than 0 and at most {MAX_SECONDS:.0f}")
    interactive = not args.headless
    if interactive and (why := dashboard_unavailable()) is not None:
        progress(f"{why}; running headless instead (event lines on stdout; "
                 "--headless skips this notice)")
        interactive = False
    return Demo(config, args.config, seconds).run(interactive)


def dashboard_unavailable() -> str | None:
    """Why the dashboard cannot open here, or None."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return "not a terminal, so no dashboard"
    try:
        import waylay.tui.app  # noqa: F401  (Textual is loaded only for the dashboard)
    except Exception as exc:
        return f"the dashboard is not available ({type(exc).__name__}: {exc})"
    return None


class Demo:
    def __init__(self, config: Config, config_path: str | None, seconds: float | None) -> None:
        self.config = config
        self.config_path = config_path
        self.seconds = seconds
        self.record = RunRecord(owner=os.getpid(), owner_start=start_time(os.getpid()))
        self.children = Children(self.record)
        self.sandbox: Sandbox | None = None
        self.local_port = 0
        self.generator: subprocess.Popen[bytes] | None = None
        self.report: TrafficReport | None = None

    # --- the phases ---------------------------------------------------------------------

    def run(self, interactive: bool) -> int:
        previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
        _handle_signals(_interrupt)
        try:
            try:
                self._start()
                if interactive:
                    return self._dashboard()
                code = asyncio.run(self._headless())
                _handle_signals(_interrupt)  # asyncio.run restored the defaults
                return code
            except KeyboardInterrupt:
                progress("interrupted")
                return EXIT_INTERRUPTED
            finally:
                _handle_signals(_hold_off)
                self._teardown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self) -> None:
        clean_leftovers(progress)
        self.record.save()
        self.sandbox = open_sandbox(self.children, progress)
        progress("starting the local dev version of the shop on 127.0.0.1 ...")
        local = self.children.start([*python_command("waylay.cli.demo.local_app"),
                                     "--owner-pid", str(os.getpid())], "the local dev app")
        self.local_port = self.children.wait_listening(local, "the local dev app")
        progress(f"the sample shop runs in {self.sandbox.description}; target "
                 f"{self.sandbox.target}; local-dev listens on 127.0.0.1:{self.local_port}")

    def _teardown(self) -> None:
        progress("cleaning up (generator, session, apps, namespace) ...")
        if self.generator is not None:
            self.report = self._finish_generator()
        if self.sandbox is not None:
            close_sandbox(self.sandbox, self.children)
        else:
            self.children.stop_all()
        self.record.remove()

    # --- the traffic generator ----------------------------------------------------------

    def _start_generator(self, seconds: float) -> None:
        assert self.sandbox is not None
        progress(f"starting the traffic generator ({', '.join(USERS)} and a kube-probe "
                 "every second) ...")
        self.generator = self.children.start(
            [*self.sandbox.enter, *python_command("waylay.cli.demo.traffic"),
             "--host", self.sandbox.shop_host, "--port", str(SHOP_PORT),
             "--seconds", f"{seconds:g}", "--owner-pid", str(os.getpid())],
            "the traffic generator")

    def _finish_generator(self) -> TrafficReport | None:
        """Stop the generator (it finishes the requests in flight) and read its report."""
        proc, self.generator = self.generator, None
        if proc is None:
            return self.report
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=REQUEST_TIMEOUT_S + 5.0)
        except (subprocess.TimeoutExpired, ValueError, OSError):
            self.children.stop(proc)
            progress("the traffic generator did not finish in time")
            return None
        report = parse_report(out.decode(errors="replace"))
        if report is None:
            progress(f"the traffic generator exited ({proc.returncode}) without a report"
                     + self.children.log_tail(proc))
        return report

    # --- headless -----------------------------------------------------------------------

    async def _headless(self) -> int:
        assert self.sandbox is not None
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        events = EventWriter(sys.stdout, human=False)
        subscribed = asyncio.Event()

        def on_event(event: Event) -> None:
            events(event)
            if isinstance(event, SubscribedEvent):
                subscribed.set()

        target = parse_target(self.sandbox.target)
        attaching = asyncio.create_task(attach(
            target, incoming=self.config.incoming, cli_ports={SHOP_PORT: self.local_port},
            on_event=on_event, on_progress=lambda text: progress(f"{text} ...")),
            name="demo-attach")
        if not await _until(attaching, stop):
            attaching.cancel()
            with contextlib.suppress(BaseException):
                await attaching
            progress("interrupted while starting")
            return EXIT_INTERRUPTED
        attached = attaching.result()
        session = asyncio.create_task(attached.run(), name="demo-session")
        failure: WaylayError | None = None
        try:
            if self.config.incoming.mode is not Mode.OFF:
                await _until(session, stop, subscribed.wait(), timeout=SUBSCRIBE_TIMEOUT_S)
            if session.done():
                session.result()  # raises the session's error
                raise AgentError("the session ended before traffic started")
            if stop.is_set():
                progress("interrupted while starting")
                return EXIT_INTERRUPTED
            if self.config.incoming.mode is not Mode.OFF and not subscribed.is_set():
                raise AgentError(f"the session did not subscribe port {SHOP_PORT} within "
                                 f"{SUBSCRIBE_TIMEOUT_S:g} s")
            seconds = self.seconds or MAX_SECONDS
            self._start_generator(seconds)
            progress("traffic is flowing" + (f" for {seconds:g} s" if self.seconds else
                                             "; Ctrl-C stops the demo"))
            assert self.generator is not None
            await _until(session, stop, _exited(self.generator), timeout=seconds + 60.0)
            self.report = await asyncio.to_thread(self._finish_generator)
            if not session.done():
                await asyncio.sleep(FLOW_SETTLE_S)
        except AgentError as exc:
            failure = exc
        finally:
            attached.stop()
            try:
                await asyncio.wait_for(session, SESSION_STOP_TIMEOUT_S)
            except AgentError as exc:
                failure = failure or exc
            except TimeoutError:
                progress("the session did not stop in time")
        if failure is not None:
            events(ErrorEvent(message=str(failure)))
        stats = attached.session.stats
        print(f"waylay: {stats.summary()}", file=sys.stderr, flush=True)
        verdict = judge(self.config.incoming, SHOP_PORT, self.report, stats)
        for line in verdict.lines:
            progress(line)
        if failure is not None:
            return failure.exit_code
        return 0 if verdict.ok else EXIT_NOT_ROUTED

    # --- the dashboard ------------------------------------------------------------------

    def _dashboard(self) -> int:
        from waylay.cli.demo.dashboard import DemoApp

        assert self.sandbox is not None
        self._start_generator(self.seconds or DASHBOARD_SECONDS)
        progress(f"opening the dashboard on {self.sandbox.target} ...")

        async def stop_generator() -> None:
            self.report = await asyncio.to_thread(self._finish_generator)

        app = DemoApp(before_quit=stop_generator, hint=HINT, target=self.sandbox.target,
                      config=self.config, config_path=self.config_path,
                      cli_ports={SHOP_PORT: self.local_port})
        seconds = self.seconds
        quitting: set[asyncio.Task[None]] = set()

        def quit_soon() -> None:
            if not quitting:
                quitting.add(asyncio.get_running_loop().create_task(app.action_quit()))

        async def start(pilot: Any) -> None:
            loop = asyncio.get_running_loop()
            for sig in SIGNALS:
                loop.add_signal_handler(sig, quit_soon)
            if seconds is not None:
                app.set_timer(seconds, quit_soon, name="demo-end")

        code = app.run(auto_pilot=start)
        _handle_signals(_interrupt)  # the app's event loop restored the defaults
        if self.generator is not None:
            self.report = self._finish_generator()
        if self.report is not None:
            for line in view_lines(self.report):
                progress(line)
            for problem in self.report.problems[:PROBLEMS_SHOWN]:
                progress(f"  failed: {problem}")
        return code or 0


# --- signals and waiting ---------------------------------------------------------------


def _handle_signals(handler: Callable[[int, FrameType | None], None]) -> None:
    for sig in SIGNALS:
        signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Outside the event loops, SIGTERM and SIGHUP end the demo as Ctrl-C does."""
    raise KeyboardInterrupt


_held_off = False


def _hold_off(signum: int, frame: FrameType | None) -> None:
    """During the tear-down a signal is noted, not obeyed: the tear-down is bounded."""
    global _held_off
    if not _held_off:
        _held_off = True
        progress("still cleaning up; this ends by itself in a few seconds")


async def _exited(proc: subprocess.Popen[bytes]) -> None:
    while proc.poll() is None:
        await asyncio.sleep(POLL_S)


async def _until(task: asyncio.Task[Any], stop: asyncio.Event,
                 also: Coroutine[Any, Any, Any] | None = None,
                 timeout: float | None = None) -> bool:
    """Wait for ``task`` (or ``also``) to finish, ``stop``, or ``timeout``; False if ``stop``."""
    waiters: set[asyncio.Future[Any]] = {task}
    stopper = asyncio.ensure_future(stop.wait())
    extra = asyncio.ensure_future(also) if also is not None else None
    waiters.add(stopper)
    if extra is not None:
        waiters.add(extra)
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (stopper, extra):
            if future is not None and not future.done():
                future.cancel()
    return not stop.is_set()
