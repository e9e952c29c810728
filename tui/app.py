"""waylay's dashboard: targets, the session bar, live traffic, the filter editor, stats.

Theory of operation. The app owns the data (``FlowStore`` and its ``FlowView``, the rate
buckets) and one :class:`SessionClient`, the only thing that does network work. The client
reports through messages (``waylay.tui.messages``); handlers here fold them into the data and
tell the widgets what changed. Blocking work (listing targets, reading and writing files,
judging a filter over recent traffic) runs in thread workers whose results come back with
``call_from_thread``. Nothing here imports ``agent``.

The app is the layout and the folding of the session's messages; its actions that open
something are parts it inherits: the filter editor and its preview
(``waylay.tui.filter_actions``), the mode, ports and help dialogs
(``waylay.tui.dialog_actions``), and the file actions (``waylay.tui.file_actions``).

Every I/O seam can be replaced for tests, benchmarks and screenshots: ``attach_fn`` (a
``waylay.core.client.attach.attach`` look-alike, e.g. ``waylay.tui.fake_agent.FakeAgent.attach``),
``targets_source``, ``kube`` (a ``waylay.tui.kube_browser.KubeBrowser`` with its own seams) and
``clock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, assert_never

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Header, Input

from waylay.core.engine.config import Config, IncomingConfig, default_config
from waylay.core.engine.errors import WaylayError
from waylay.core.engine.events import (
    ErrorEvent,
    Event,
    RequestEvent,
    StartedEvent,
    SubscribedEvent,
    WarningEvent,
)
from waylay.core.engine.target import Target, parse_target
from waylay.core.system.local_targets import LocalTarget, list_local_targets
from waylay.tui.client import AttachFn, SessionClient
from waylay.tui.commands import waylay_commands
from waylay.tui.detail import DetailScreen
from waylay.tui.dialog_actions import DialogActions
from waylay.tui.file_actions import FileActions
from waylay.tui.filter_actions import FilterActions
from waylay.tui.filter_editor import FilterEditor
from waylay.tui.flows import CAPACITY, FlowRow, FlowStore, FlowView, RowQuery
from waylay.tui.kube_browser import KubeBrowser
from waylay.tui.kube_tree import kube_place
from waylay.tui.messages import (
    SessionEnded,
    SessionProgress,
    SessionState,
    TrafficBatch,
    UpdateResult,
)
from waylay.tui.notices import NoticeGate, Toast
from waylay.tui.preview import PREVIEW_WINDOW, Plan, Preview
from waylay.tui.rates import RateBuckets
from waylay.tui.session_bar import BarState, SessionBar
from waylay.tui.stats_panel import LogPanel, StatsPanel
from waylay.tui.targets_pane import TargetsPane
from waylay.tui.traffic_table import TrafficTable

# While the filter editor is open, new traffic re-runs the preview at most this often.
PREVIEW_REFRESH_S = 0.5
# The table search is re-run this long after the last keystroke (a rebuild is O(rows)).
SEARCH_DEBOUNCE_S = 0.15
# How long a toast about an agent error or warning stays (how many: waylay.tui.notices).
NOTIFY_TIMEOUT_S = 6.0
# Full collections after this many collections of the middle generation, in the process
# that runs the dashboard (CPython's default is 10). See _freeze_startup_objects.
FULL_GC_THRESHOLD = 100


class WaylayApp(FilterActions, DialogActions, FileActions, App[int]):
    """``waylay ui``."""

    CSS_PATH = "app.tcss"
    TITLE = "waylay"
    ENABLE_COMMAND_PALETTE = True

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q,ctrl+q", "quit", "Quit", id="app.quit"),
        Binding("question_mark", "help", "Help", id="app.help"),
        Binding("t", "toggle_targets", "Targets", id="app.targets"),
        Binding("m", "mode_menu", "Mode", id="app.mode"),
        Binding("p", "ports", "Ports", id="app.ports"),
        Binding("f", "edit_filter", "Filter", id="app.filter"),
        Binding("slash", "search", "Search", id="app.search"),
        Binding("space", "toggle_pause", "Pause", id="app.pause"),
        Binding("c", "clear", "Clear", id="app.clear"),
        Binding("l", "toggle_log", "Log", id="app.log"),
        Binding("e", "export_har", "HAR", id="app.export_har"),
        Binding("ctrl+o", "load_config", "Load config", show=False, id="app.load_config"),
        Binding("ctrl+s", "save_config", "Save config", show=False, id="app.save_config"),
        Binding("d", "detach", "Detach", show=False, id="app.detach"),
    ]

    def __init__(self, *, target: str | None = None, config: Config | None = None,
                 config_path: str | None = None, cli_ports: dict[int, int | None] | None
                 = None, attach_fn: AttachFn | None = None,
                 targets_source: Callable[[], list[LocalTarget]] = list_local_targets,
                 kube: KubeBrowser | None = None,
                 clock: Callable[[], float] = time.time, capacity: int = CAPACITY,
                 ttl: float = 30.0, clean_on_start: bool = False,
                 batch_interval: float | None = None, freeze_gc: bool = False) -> None:
        super().__init__()
        self.freeze_gc = freeze_gc
        self.config = config or default_config()
        self.config_path = config_path
        self.initial_target = target or self.config.target
        self.targets_source = targets_source
        # Kubernetes discovery for the targets tree ($KUBECONFIG, else ~/.kube/config).
        self.kube = kube if kube is not None else KubeBrowser()
        self.clock = clock
        self.store = FlowStore(capacity=capacity)
        self.view = FlowView(self.store)
        self.rates = RateBuckets()
        client_kw: dict[str, Any] = {"ttl": ttl, "clean_on_start": clean_on_start,
                                     "agent": self.config.agent}
        if attach_fn is not None:
            client_kw["attach_fn"] = attach_fn
        if batch_interval is not None:
            client_kw["batch_interval"] = batch_interval
        self.client = SessionClient(self.post_message, **client_kw)
        self.client.incoming = self.config.incoming
        self.client.cli_ports = dict(cli_ports or {})
        self.bar = BarState(incoming=self.config.incoming)
        self.errors = 0
        self.warnings = 0
        self.notice_gate = NoticeGate()
        self.last_preview: Preview | None = None
        self._preview_at = 0.0
        self._draft_incoming: IncomingConfig | None = None
        self._search_timer: Timer | None = None

    # --- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="≋")
        yield SessionBar(id="bar")
        with Horizontal(id="main"):
            # Opened by itself when the command line names a place in Kubernetes.
            start = kube_place(self.initial_target, context=self.config.kube_context,
                               namespace=self.config.namespace)
            yield TargetsPane(kube=self.kube, start=start, id="targets")
            with Vertical(id="traffic-area"):
                yield Input(placeholder="search: words, or field:value (v:stolen s:5xx "
                            "m:POST path:/api -v:passed)", id="search", compact=True)
                yield TrafficTable(self.view, id="table")
                yield FilterEditor(id="editor")
        yield StatsPanel(id="stats")
        yield LogPanel(clock=self.clock, id="log")
        yield Footer()

    async def on_mount(self) -> None:
        # The main screen's widgets, held here: once a dialog or the detail is pushed,
        # App.query_one would search that screen instead.
        self.table = self.query_one(TrafficTable)
        self.editor = self.query_one(FilterEditor)
        self.targets_pane = self.query_one(TargetsPane)
        self.session_bar = self.query_one(SessionBar)
        self.stats = self.query_one(StatsPanel)
        self.log_panel = self.query_one("#log", LogPanel)
        self.search_box = self.query_one("#search", Input)
        self.sub_title = "no target"
        self.search_box.display = False
        self.editor.display = False
        self.log_panel.display = False
        table = self.table
        table.border_title = "traffic"
        table.empty_text = "no session: pick a target on the left and press Enter (t toggles " \
                           "the pane)"
        self.log_panel.border_title = "log"
        self._refresh_bar()
        self._refresh_stats()
        self.set_interval(1.0, self._every_second, name="stats")
        for warning in self.config.warnings:
            self._record("warning", warning)
        self.load_targets()
        if self.freeze_gc:
            self.call_after_refresh(_freeze_startup_objects)
        if self.initial_target:
            self.targets_pane.display = False
            table.focus()
            self.start_session(self.initial_target)
        else:
            self.targets_pane.query_one("#targets-tree").focus()

    # --- sessions -----------------------------------------------------------------------

    def start_session(self, target_text: str, *, kube_context: str | None = None,
                      kube_namespace: str | None = None) -> None:
        """Start a session on ``target_text`` (stopping the current one first); a
        Kubernetes target is looked up in ``kube_context`` / ``kube_namespace`` (default:
        the config's, from --context / -n, else the kubeconfig's)."""
        try:
            target = parse_target(target_text,
                                  namespace=kube_namespace or self.config.namespace)
        except WaylayError as exc:
            self.notify(str(exc), title="bad target", severity="error")
            return
        self._switch_session(target_text, target, kube_context or self.config.kube_context)

    @work(exclusive=True, group="session-switch")
    async def _switch_session(self, target_text: str, target: Target,
                              kube_context: str | None = None) -> None:
        if self.client.busy:
            await self.client.shutdown()
        self.bar = dataclasses.replace(self.bar, link="starting", target=target_text,
                                       detail="starting", plans=(), refused=None)
        self.sub_title = target_text
        self.targets_pane.set_active(target_text, context=kube_context,
                                     namespace=target.namespace)
        self.table.empty_text = f"starting a session on {target_text}…"
        self.table.refresh()
        self._refresh_bar()
        self.client.start(target, self.client.incoming, self.client.cli_ports,
                          kube_context=kube_context)

    def on_session_progress(self, message: SessionProgress) -> None:
        if message.session != self.client.session_no:
            return
        if message.text == "attached":
            return
        self.bar = dataclasses.replace(self.bar, link="starting", detail=message.text)
        self.table.empty_text = f"{message.text}…"
        self.table.refresh()
        self._record("info", f"{message.target}: {message.text}")
        self._refresh_bar()

    def on_session_state(self, message: SessionState) -> None:
        if message.session != self.client.session_no:
            return
        self.bar = dataclasses.replace(
            self.bar, link="attached", target=message.target, detail="",
            incoming=message.incoming, plans=tuple(message.plans),
            listening=message.listening)
        table = self.table
        ports = " ".join(str(p.remote) for p in message.plans) or "none"
        table.empty_text = (f"attached to {message.target}: waiting for requests "
                            f"(intercepting {ports})")
        table.refresh()
        self._refresh_bar()

    def on_session_ended(self, message: SessionEnded) -> None:
        if message.session != self.client.session_no:
            return
        failed = message.error is not None
        self.bar = dataclasses.replace(self.bar, link="failed" if failed else "ended",
                                       detail=message.error or "", plans=())
        self.targets_pane.set_active(None)
        table = self.table
        table.empty_text = (f"session failed: {message.error}" if failed
                            else "session ended: pick a target to start another")
        table.refresh()
        if failed:
            self.errors += 1
            self._record("error", f"{message.target}: {message.error}")
            self.notify(str(message.error), title=f"session on {message.target} failed",
                        severity="error", timeout=10)
        else:
            self._record("info", f"{message.target}: session ended")
        self._refresh_bar()

    def on_update_result(self, message: UpdateResult) -> None:
        refused = None
        if message.accepted:
            if self.client.attached:
                later = ""
            elif self.client.busy:
                later = ": sent to the agent once it is up"
            else:
                later = ": no session yet, used when one starts"
            self._record("info", f"{message.what} applied{later}")
            if not message.quiet:
                self.notify(f"{message.what} applied{later}",
                            title="applied", timeout=3)
        else:
            why = "; ".join(message.errors) or "refused by the agent"
            if message.incoming.mode is not message.previous.mode:
                refused = str(message.incoming.mode)
            kept = message.previous.http_filter
            self._record("error", f"{message.what} not applied: {why}")
            self.notify(f"{why}\nkept: mode {message.previous.mode}, filter "
                        f"{kept.text if kept else 'none'}",
                        title=f"{message.what} refused", severity="error", timeout=10)
        self.bar = dataclasses.replace(self.bar, incoming=self.client.incoming,
                                       refused=refused)
        self._refresh_bar()

    async def apply_settings(self, incoming: IncomingConfig,
                             cli_ports: dict[int, int | None] | None = None, *,
                             what: str) -> bool:
        """Apply settings to the running session (or keep them for the next one)."""
        return await self.client.apply(incoming, cli_ports, what=what)

    @work(group="apply")
    async def _apply_worker(self, incoming: IncomingConfig,
                            cli_ports: dict[int, int | None] | None, what: str) -> None:
        await self.apply_settings(incoming, cli_ports, what=what)

    # --- traffic ------------------------------------------------------------------------

    def on_traffic_batch(self, message: TrafficBatch) -> None:
        self.ingest(message.events, message.session)

    def ingest(self, events: list[Event], session: int = 0) -> None:
        """Fold a batch of engine events into the store, table, stats and log."""
        ingested = self.store.ingest(events, session)
        gained, lost = self.view.sync(ingested)
        if ingested.added:
            self.rates.add_all((row.event.ts, row.verdict) for row in ingested.added)
        self.table.rows_changed(gained, ingested.updated, lost)
        notices: list[WarningEvent | ErrorEvent] = []
        for event in events:
            match event:
                case RequestEvent() | StartedEvent():
                    pass  # rows of the store
                case WarningEvent() | ErrorEvent():
                    notices.append(event)
                case SubscribedEvent(port=port, mode=mode, filter=flt):
                    self._record("info", f"{mode} port {port}: {flt or 'whole port'}")
                case _:
                    assert_never(event)
        if notices:
            self._notices(notices)
        if self._draft_incoming is not None and ingested.added:
            now = time.monotonic()
            if now - self._preview_at >= PREVIEW_REFRESH_S:
                self._start_preview(self._draft_incoming)

    def _notices(self, notices: list[WarningEvent | ErrorEvent]) -> None:
        # Each one is logged and counted; toasts go through the gate (a flood of errors
        # becomes a few toasts and one summary per window, waylay.tui.notices).
        now = self.clock()
        for event in notices:
            if isinstance(event, ErrorEvent):
                level = "error"
                self.errors += 1
            else:
                level = "warning"
                self.warnings += 1
            self._record(level, event.message)
            self._toast(self.notice_gate.offer(level, event.message, now))

    def flush_notices(self) -> None:
        """Sum up the notices the gate held back, once their window is over (the app
        calls this every second)."""
        self._toast(self.notice_gate.tick(self.clock()))

    def _toast(self, toasts: list[Toast]) -> None:
        for toast in toasts:
            self.notify(toast.message, title=toast.title, severity=toast.severity,
                        timeout=NOTIFY_TIMEOUT_S)

    def _every_second(self) -> None:
        self._refresh_stats()
        self.flush_notices()

    def _refresh_stats(self) -> None:
        self.stats.show(
            self.rates, self.clock(), errors=self.errors, warnings=self.warnings,
            total=self.store.received, dropped=self.store.dropped + self.client.overflow)

    def _refresh_bar(self) -> None:
        # A session's last messages may arrive while the app is closing: its widgets
        # are gone by then, and there is nothing left to show.
        with contextlib.suppress(NoMatches):
            self.session_bar.show(self.bar)

    def _record(self, level: str, message: str) -> None:
        self.log_panel.add(level, message)

    # --- the table ----------------------------------------------------------------------

    @on(TrafficTable.Opened)
    def _open_detail(self, message: TrafficTable.Opened) -> None:
        self.push_screen(DetailScreen(message.row, self.current_plan(), self._step_row))

    def _step_row(self, row: FlowRow, delta: int) -> FlowRow | None:
        index = self.view.index_of(row.key)
        if index is None or not 0 <= index + delta < len(self.view):
            return None
        found = self.view[index + delta]
        self.table.move_to(found.key)
        return found

    def current_plan(self, incoming: IncomingConfig | None = None) -> Plan:
        """How the session (would) intercept ports, for previews and "why"."""
        listening: Iterable[int] = self.client.listening or sorted(
            {r.event.port for r in self.store.recent(PREVIEW_WINDOW)})
        return Plan.of(incoming or self.client.incoming, self.client.cli_ports,
                       list(listening))

    def action_search(self) -> None:
        box = self.search_box
        box.display = True
        box.focus()

    @on(Input.Changed, "#search")
    def _search_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(SEARCH_DEBOUNCE_S,
                                            lambda: self._set_query(event.value))

    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._set_query(event.value)
        self.table.focus()

    def _set_query(self, text: str) -> None:
        self.view.set_query(RowQuery(text) if text.strip() else None)
        table = self.table
        table.border_title = f"traffic · search: {text.strip()}" if text.strip() else "traffic"
        table.reset()

    def key_escape(self) -> None:
        box = self.search_box
        if box.display:
            box.value = ""
            box.display = False
            self._set_query("")
            self.table.focus()

    def action_toggle_pause(self) -> None:
        table = self.table
        table.set_paused(not table.paused)
        self.bar = dataclasses.replace(self.bar, paused=table.paused)
        self._refresh_bar()

    def action_clear(self) -> None:
        n = self.store.clear()
        self.view.reset()
        self.table.reset()
        self._record("info", f"cleared {n:,} requests from the table")

    # --- panes (the filter editor: waylay.tui.filter_actions; dialogs: dialog_actions) ---

    def action_toggle_targets(self) -> None:
        pane = self.targets_pane
        pane.display = not pane.display
        if pane.display:
            self.targets_pane.query_one("#targets-tree").focus()
        else:
            self.table.focus()

    def action_toggle_log(self) -> None:
        log = self.log_panel
        log.display = not log.display

    # --- targets ------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="targets")
    def load_targets(self) -> None:
        try:
            targets, error = self.targets_source(), None
        except Exception as exc:  # procfs surprises must not break the dashboard
            targets, error = [], f"cannot list targets: {exc}"
        self.call_from_thread(self.targets_pane.show_targets, targets, error)

    @on(TargetsPane.Chosen)
    def _target_chosen(self, message: TargetsPane.Chosen) -> None:
        self.table.focus()
        self.start_session(message.target, kube_context=message.context,
                           kube_namespace=message.kube_namespace)

    @on(TargetsPane.RefreshRequested)
    def _targets_refresh(self) -> None:
        self.load_targets()

    # --- quitting -----------------------------------------------------------------------

    async def action_detach(self) -> None:
        if self.client.busy:
            self.notify("stopping the session (the agent removes its rules)…", timeout=3)
            await self.client.shutdown()

    async def action_quit(self) -> None:
        if self.client.busy:
            self.notify("stopping the session (the agent removes its rules)…", timeout=10)
            await self.client.shutdown()
        self.exit(0)

    async def on_unmount(self) -> None:
        # However the app ends, the agent is stopped so that it removes its rules.
        await self.client.shutdown()
        await asyncio.to_thread(self.kube.close)  # ends the namespace watch

    # --- the command palette ------------------------------------------------------------

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield from waylay_commands(self)


def _freeze_startup_objects() -> None:
    """Exempt what exists once the UI is up (Textual's ~70,000 objects) from collections,
    and make full collections rarer.

    Full collections walk every tracked object; under a flood of traffic they ran every
    few seconds and, walking Textual's own objects each time, paused the UI for 100 ms
    and more. Frozen objects are never collected, so this is for the process that runs
    the dashboard (``waylay ui``), not for tests that create many apps.

    The traffic buffer is the other large set of long-lived objects (a FlowRow and its
    event per request, up to 50,000 rows). CPython runs a full collection once the
    objects promoted since the last one reach a quarter of those it kept, and at most
    every 10 collections of the middle generation: at 5,000 requests/s that was a full
    collection every second or so once the buffer held its 50,000 rows, each walking all
    of them (20 in 16 s, 25-45 ms of CPU each: 3.6 % of the time, in pauses the user
    feels). The rows hold no reference cycles (evicted ones are freed by reference
    counting), so little is gained by walking them that often: after 100 collections of
    the middle generation (about every 15 s under that flood, far less often when idle)
    there are 2 in 16 s, each longer (75-85 ms of CPU), 140 ms in all.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_GC_THRESHOLD)
