"""The filter editor: mirrord's http_filter, validated as you type, previewed live.

Every change recompiles the draft with the engine (``FilterDraft.compile``); an error is
shown under the fields, the wrong input is marked, and Enter refuses to apply. A valid
draft is posted as :class:`FilterEditor.Changed` so the app can preview it against recent
traffic; Enter posts :class:`FilterEditor.Apply`; Escape restores the filter in force and
posts :class:`FilterEditor.Closed`.
"""

from __future__ import annotations

import json
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, Static

from waylay.core.engine.config import IncomingConfig
from waylay.tui.filter_draft import (
    CLAUSE_KINDS,
    GROUP_KINDS,
    KIND_LABELS,
    KINDS,
    NONE,
    PLACEHOLDERS,
    SINGLE_KINDS,
    CompiledDraft,
    DraftError,
    FilterDraft,
)


class ClauseRow(Horizontal):
    """One entry of an any_of / all_of list."""

    def __init__(self, kind: str, value: str) -> None:
        super().__init__(classes="clause-row")
        self._kind, self._value = kind, value

    def compose(self) -> ComposeResult:
        yield Select([(k, k) for k in CLAUSE_KINDS], value=self._kind, allow_blank=False,
                     compact=True, classes="clause-kind")
        yield Input(self._value, placeholder=PLACEHOLDERS[self._kind], compact=True,
                    classes="clause-value")
        yield Button("\u00d7", compact=True, classes="clause-remove",  # multiplication sign
                     tooltip="remove clause")

    @property
    def clause(self) -> tuple[str, str]:
        kind = self.query_one(".clause-kind", Select).value
        return str(kind), self.query_one(".clause-value", Input).value


class FilterEditor(Vertical):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "revert", "Revert & close", id="filter.revert"),
        Binding("ctrl+n", "add_clause", "Add clause", id="filter.add_clause"),
        Binding("ctrl+r", "remove_clause", "Remove clause", id="filter.remove_clause"),
    ]

    class Changed(Message):
        """The draft changed; ``compiled`` is None when it does not compile."""

        def __init__(self, draft: FilterDraft, compiled: CompiledDraft | None) -> None:
            super().__init__()
            self.draft = draft
            self.compiled = compiled

    class Apply(Message):
        def __init__(self, compiled: CompiledDraft, draft: FilterDraft) -> None:
            super().__init__()
            self.compiled = compiled
            self.draft = draft

    class Closed(Message):
        pass

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._revert_to = FilterDraft()
        self._loading = False
        self._kind = NONE
        self.compiled: CompiledDraft | None = CompiledDraft(http_filter=None,
                                                            filter_ports=None)
        self.error: DraftError | None = None

    def compose(self) -> ComposeResult:
        # Fields in reading order, which is also Tab's order: kind, then its value (or the
        # clauses), then the ports the filter applies to.
        with Horizontal(classes="editor-row"):
            yield Label("kind", classes="editor-label")
            yield Select([(KIND_LABELS[k], k) for k in KINDS], value=NONE, allow_blank=False,
                         compact=True, id="filter-kind")
        with Horizontal(classes="editor-row", id="single-row"):
            yield Label("value", classes="editor-label")
            yield Input(compact=True, id="filter-value")
        yield Vertical(id="clauses")
        with Horizontal(classes="editor-row", id="clause-buttons"):
            yield Button("+ clause", compact=True, id="add-clause")
        with Horizontal(classes="editor-row"):
            yield Label("ports", classes="editor-label")
            yield Input(placeholder="http_filter.ports: empty = every intercepted port",
                        compact=True, id="filter-ports")
        yield Static("", id="filter-status", markup=False)
        yield Static("", id="filter-json", markup=False)
        yield Static("", id="filter-preview", markup=False)
        yield Static("enter apply · esc revert · ctrl+n add clause · ctrl+r remove clause · "
                     "tab next field", id="filter-help", markup=False)

    def on_mount(self) -> None:
        self.border_title = "filter"
        self._show_kind(NONE)

    # --- loading and reading ------------------------------------------------------------

    async def load(self, incoming: IncomingConfig) -> None:
        """Show the filter in force (also the point Escape returns to)."""
        self._revert_to = FilterDraft.from_incoming(incoming)
        await self._fill(self._revert_to)

    async def _fill(self, draft: FilterDraft) -> None:
        self._loading = True
        try:
            self.query_one("#filter-kind", Select).value = draft.kind
            self.query_one("#filter-ports", Input).value = draft.ports
            self.query_one("#filter-value", Input).value = draft.value
            clauses = self.query_one("#clauses", Vertical)
            await clauses.remove_children()
            rows = draft.clauses or ([("header", "")] if draft.kind in GROUP_KINDS else [])
            await clauses.mount_all([ClauseRow(k, v) for k, v in rows])
            self._show_kind(draft.kind)
        finally:
            self._loading = False
        self.validate()

    @property
    def draft(self) -> FilterDraft:
        kind = str(self.query_one("#filter-kind", Select).value)
        return FilterDraft(
            kind=kind,
            value=self.query_one("#filter-value", Input).value,
            clauses=[row.clause for row in self.query(ClauseRow)],
            ports=self.query_one("#filter-ports", Input).value,
        )

    def focus_first(self) -> None:
        kind = str(self.query_one("#filter-kind", Select).value)
        if kind in GROUP_KINDS and self.query(ClauseRow):
            self.query(ClauseRow).last().query_one(".clause-value", Input).focus()
        elif kind != NONE:
            self.query_one("#filter-value", Input).focus()
        else:
            self.query_one("#filter-kind", Select).focus()

    # --- validation ---------------------------------------------------------------------

    def validate(self) -> CompiledDraft | None:
        draft = self.draft
        for widget in self.query(".-invalid"):
            widget.remove_class("-invalid")
        status = self.query_one("#filter-status", Static)
        try:
            self.compiled, self.error = draft.compile(), None
        except DraftError as exc:
            self.compiled, self.error = None, exc
            self._mark_invalid(exc.field)
            status.update(f"✖ {exc.message}")
            status.set_classes("-error")
        else:
            text = (self.compiled.http_filter.text if self.compiled.http_filter is not None
                    else "no filter: intercepted ports are taken whole")
            status.update(f"✓ {text}")
            status.set_classes("-ok")
        self._show_json(draft)
        self.post_message(self.Changed(draft, self.compiled))
        return self.compiled

    def _show_json(self, draft: FilterDraft) -> None:
        try:
            obj = draft.to_mirrord()
        except DraftError:
            obj = None
        self.query_one("#filter-json", Static).update(
            f'"http_filter": {json.dumps(obj, ensure_ascii=False)}' if obj else "")

    def _mark_invalid(self, field: str) -> None:
        if field == "ports":
            self.query_one("#filter-ports").add_class("-invalid")
        elif field == "value":
            self.query_one("#filter-value").add_class("-invalid")
        elif field.startswith("clause:"):
            rows = list(self.query(ClauseRow))
            index = int(field.split(":")[1])
            if index < len(rows):
                rows[index].query_one(".clause-value").add_class("-invalid")
        elif field == "clauses":
            self.query_one("#clauses").add_class("-invalid")

    def show_preview(self, text: str, notes: list[str]) -> None:
        self.query_one("#filter-preview", Static).update(
            "▌ " + text + "".join(f"\n  {n}" for n in notes))

    # --- events -------------------------------------------------------------------------

    def _show_kind(self, kind: str) -> None:
        self._kind = kind
        self.query_one("#single-row").display = kind not in GROUP_KINDS and kind != NONE
        self.query_one("#clauses").display = kind in GROUP_KINDS
        self.query_one("#clause-buttons").display = kind in GROUP_KINDS
        value = self.query_one("#filter-value", Input)
        value.placeholder = PLACEHOLDERS.get(kind, "")

    @on(Select.Changed, "#filter-kind")
    async def _kind_changed(self, event: Select.Changed) -> None:
        event.stop()
        if self._loading:
            return
        kind, previous = str(event.value), self._kind
        if kind in GROUP_KINDS and not self.query(ClauseRow):
            # Turning a single filter into a list keeps it as the first clause.
            value = self.query_one("#filter-value", Input).value
            first = (previous.removesuffix("_filter"), value) \
                if value and previous in SINGLE_KINDS else ("header", "")
            await self.query_one("#clauses").mount(ClauseRow(*first))
        self._show_kind(kind)
        self.validate()

    @on(Select.Changed, ".clause-kind")
    def _clause_kind_changed(self, event: Select.Changed) -> None:
        event.stop()
        row = event.select.parent
        if isinstance(row, ClauseRow):
            row.query_one(".clause-value", Input).placeholder = PLACEHOLDERS[str(event.value)]
        if not self._loading:
            self.validate()

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if not self._loading:
            self.validate()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.apply()

    @on(Button.Pressed, "#add-clause")
    async def _add_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        await self.action_add_clause()

    @on(Button.Pressed, ".clause-remove")
    async def _remove_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        row = event.button.parent
        if isinstance(row, ClauseRow):
            await row.remove()
            self.validate()

    def apply(self) -> bool:
        compiled = self.validate()
        if compiled is None:
            assert self.error is not None
            status = self.query_one("#filter-status", Static)
            status.update(f"✖ not applied: {self.error.message}")
            return False
        draft = self.draft
        self._revert_to = draft
        self.post_message(self.Apply(compiled, draft))
        return True

    async def action_revert(self) -> None:
        await self._fill(self._revert_to)
        self.post_message(self.Closed())

    async def action_add_clause(self) -> None:
        if str(self.query_one("#filter-kind", Select).value) not in GROUP_KINDS:
            self.query_one("#filter-kind", Select).value = "any_of"
            return  # the kind change adds the first clause
        row = ClauseRow("header", "")
        await self.query_one("#clauses").mount(row)
        row.query_one(".clause-value", Input).focus()
        self.validate()

    async def action_remove_clause(self) -> None:
        focused = self.app.focused
        row = next((a for a in (focused.ancestors if focused else [])
                    if isinstance(a, ClauseRow)), None)
        if row is None and self.query(ClauseRow):
            row = self.query(ClauseRow).last()
        if row is not None:
            await row.remove()
            self.validate()
