"""The filter editor's side of the dashboard: open it, preview a draft filter over recent
traffic (marking the rows it would take), apply or drop the draft.

A mixin of :class:`waylay.tui.app.WaylayApp`, which holds the state named below. The preview
runs in slices in a worker, so keys and traffic go on while it judges the rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import App

from waylay.core.engine.config import IncomingConfig
from waylay.tui.filter_editor import FilterEditor
from waylay.tui.flows import FlowRow, FlowStore
from waylay.tui.preview import PREVIEW_WINDOW, Plan, Preview, preview_steps

if TYPE_CHECKING:
    from waylay.tui.client import SessionClient
    from waylay.tui.traffic_table import TrafficTable


class FilterActions(App[int]):
    """Needs the attributes below, which WaylayApp sets."""

    store: FlowStore
    client: SessionClient
    editor: FilterEditor
    table: TrafficTable
    last_preview: Preview | None
    _preview_at: float
    _draft_incoming: IncomingConfig | None

    if TYPE_CHECKING:
        def current_plan(self, incoming: IncomingConfig | None = None) -> Plan: ...
        def _apply_worker(self, incoming: IncomingConfig,
                          cli_ports: dict[int, int | None] | None, what: str) -> Any: ...

    async def action_edit_filter(self) -> None:
        editor = self.editor
        if editor.display:
            editor.focus_first()
            return
        editor.display = True
        await editor.load(self.client.incoming)
        editor.focus_first()

    @on(FilterEditor.Changed)
    def _draft_changed(self, message: FilterEditor.Changed) -> None:
        editor = self.editor
        if not editor.display:
            return
        if message.compiled is None:
            self._draft_incoming = None
            self.table.set_marks(None)
            editor.show_preview("fix the filter to see what it would take", [])
            return
        self._draft_incoming = dataclasses.replace(
            self.client.incoming, http_filter=message.compiled.http_filter,
            filter_ports=message.compiled.filter_ports)
        self._start_preview(self._draft_incoming)

    def _start_preview(self, incoming: IncomingConfig) -> None:
        self._preview_at = time.monotonic()
        rows = self.store.recent(PREVIEW_WINDOW)
        self._preview_worker(rows, self.current_plan(incoming))

    @work(exclusive=True, group="preview")
    async def _preview_worker(self, rows: list[FlowRow], plan: Plan) -> None:
        steps = preview_steps(rows, plan)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                result: Preview = done.value
                break
            await asyncio.sleep(0)  # a slice is done: let keys and traffic through
        self._show_preview(result)

    def _show_preview(self, result: Preview) -> None:
        editor = self.editor
        if not editor.display or self._draft_incoming is None:
            return
        self.last_preview = result
        editor.show_preview(result.summary() + " recent requests", result.notes())
        self.table.set_marks(result.taken_keys)

    @on(FilterEditor.Apply)
    def _filter_apply(self, message: FilterEditor.Apply) -> None:
        incoming = dataclasses.replace(self.client.incoming,
                                       http_filter=message.compiled.http_filter,
                                       filter_ports=message.compiled.filter_ports)
        self._close_editor()
        what = "filter " + (message.compiled.http_filter.text
                            if message.compiled.http_filter else "removed")
        self._apply_worker(incoming, None, what)

    @on(FilterEditor.Closed)
    def _filter_closed(self) -> None:
        self._close_editor()

    def _close_editor(self) -> None:
        self.editor.display = False
        self._draft_incoming = None
        self.table.set_marks(None)
        self.table.focus()
