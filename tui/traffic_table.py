"""The traffic table: a line-API scroll view that caches one rendered line per row.

Textual's DataTable re-renders cells on every change and deletes rows in O(n); at 1,000
requests/s it cannot keep up (measured: ~96 % of a core at 500 rows/s, with ~230 ms of
event-loop lag). This widget, like Textual's toolong, renders only the lines on screen,
from an LRU cache of :class:`Strip` keyed by the row's key and
version, the width and the row's highlight state. Rows come from a ``FlowView`` (the
store, or its search results); the app tells the widget when a batch changed it, so the
layout and scrollbar are updated a few times a second, not per request.

The table follows the newest row unless the user moves up (keys or wheel) or pauses;
then the border shows "+N new" until they press End. Line 0 is a fixed header.
"""

from __future__ import annotations

from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from waylay.core.engine.flow import Verdict
from waylay.tui.cells import cell_style, cell_text, fit, layout
from waylay.tui.flows import FlowRow, FlowView

# Rendered lines kept: a few screens' worth, so scrolling back and forth near the
# cursor re-renders nothing, while memory stays bounded whatever the row count. Not more:
# a Strip is ~15 objects the garbage collector walks on every full collection.
LINE_CACHE_SIZE = 256
_MUTED = frozenset({"time", "protocol", "duration", "size", "matched"})


class TrafficTable(ScrollView, can_focus=True):
    """One row per request; Enter opens it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False, id="table.up"),
        Binding("down,j", "cursor(1)", "Down", show=False, id="table.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="table.page_up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="table.page_down"),
        Binding("home,g", "first", "Oldest", show=False, id="table.first"),
        Binding("end,G", "follow", "Follow", id="table.follow"),
        Binding("enter", "open", "Detail", id="table.open"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "traffic-table--header", "traffic-table--stolen", "traffic-table--passed",
        "traffic-table--mirrored", "traffic-table--pending", "traffic-table--cursor",
        "traffic-table--mark", "traffic-table--dim", "traffic-table--status-error",
        "traffic-table--status-warning", "traffic-table--empty",
    }

    DEFAULT_CSS = """
    TrafficTable {
        background: $surface;
        overflow-x: hidden;
        overflow-y: scroll;
        & > .traffic-table--header { color: $foreground 70%; text-style: bold; }
        & > .traffic-table--stolen { color: $text-success; text-style: bold; }
        & > .traffic-table--passed { color: $foreground 60%; }
        & > .traffic-table--mirrored { color: $text-secondary; text-style: bold; }
        & > .traffic-table--pending { color: $text-warning; }
        & > .traffic-table--cursor {
            color: $block-cursor-blurred-foreground;
            background: $block-cursor-blurred-background;
        }
        & > .traffic-table--mark { color: $text-accent; text-style: bold; }
        & > .traffic-table--dim { color: $foreground 60%; }
        & > .traffic-table--status-error { color: $text-error; text-style: bold; }
        & > .traffic-table--status-warning { color: $text-warning; }
        & > .traffic-table--empty { color: $foreground 60%; text-style: italic; }
    }
    TrafficTable:focus > .traffic-table--cursor {
        color: $block-cursor-foreground;
        background: $block-cursor-background;
    }
    """

    class Opened(Message):
        """The user asked for a row's detail."""

        def __init__(self, row: FlowRow) -> None:
            super().__init__()
            self.row = row

    def __init__(self, view: FlowView, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.view = view
        self.follow = True
        self.paused = False
        self.marks: frozenset[int] | None = None  # preview: keys the draft filter takes
        self.empty_text = "no traffic yet"
        self.cursor_key: int | None = None
        self._frozen_key: int | None = None  # paused: the last key shown
        self._seen_key: int | None = None  # not following: the newest key the user saw
        self._auto_scroll = False
        self._cache: LRUCache[tuple[object, ...], Strip] = LRUCache(LINE_CACHE_SIZE)
        self._styles: dict[str, Style] = {}
        self.renders = 0  # rows rendered (cache misses), for the benchmark

    # --- what the app calls -------------------------------------------------------------

    def rows_changed(self, gained: int, updated: list[FlowRow] | None = None,
                     lost: int = 0) -> None:
        """After a batch: ``gained`` rows at the end of the view, ``lost`` at its start
        (the buffer is full), ``updated`` in place."""
        if gained or lost or self._shown() != self.virtual_size.height - 1:
            self._resize_virtual()
            if self.follow and not self.paused:
                self._jump_to_end()
                self.refresh()
                return
            if lost:
                # Keep the rows the user is reading where they are on the screen.
                self._scroll_y(max(0, int(self.scroll_offset.y) - lost))
                self._clamp_cursor()
                self.refresh()
        if updated:
            top = int(self.scroll_offset.y)
            for row in updated:
                index = self.view.index_of(row.key)
                if index is not None and top <= index < top + self._body_height():
                    self.refresh_line(index + 1)  # virtual line: the header is line 0
        if gained and not self.follow:
            self._update_subtitle()

    def reset(self) -> None:
        """The view was rebuilt (search, clear): start over at the newest row."""
        self._cache.clear()
        self._seen_key = None
        self._resize_virtual()
        if self.follow and not self.paused:
            self._jump_to_end()
        else:
            self._clamp_cursor()
        self.refresh()

    def set_marks(self, marks: frozenset[int] | None) -> None:
        if marks != self.marks:
            self.marks = marks
            self.refresh()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        if paused:
            self._frozen_key = self.view[-1].key if len(self.view) else -1
        else:
            self._frozen_key = None
            self._resize_virtual()
            if self.follow:
                self._jump_to_end()
        self._update_subtitle()
        self.refresh()

    @property
    def new_count(self) -> int:
        """Rows the user has not been shown (paused or scrolled up)."""
        if self._seen_key is None and self._frozen_key is None:
            return 0
        marker = self._frozen_key if self._frozen_key is not None else self._seen_key
        assert marker is not None
        return len(self.view) - self._rank(marker + 1)

    @property
    def cursor_row(self) -> FlowRow | None:
        if self.cursor_key is None:
            return None
        index = self.view.index_of(self.cursor_key)
        return self.view[index] if index is not None else None

    def move_to(self, key: int) -> None:
        """Put the cursor on the row with ``key`` (or the nearest after it)."""
        if not self._shown():
            return
        index = min(self.view.nearest_index(key), self._shown() - 1)
        self._set_cursor(index, user=True)

    # --- actions ----------------------------------------------------------------------

    def action_cursor(self, delta: int) -> None:
        shown = self._shown()
        if not shown:
            return
        index = self._cursor_index()
        index = shown - 1 if index is None else index + delta
        self._set_cursor(max(0, min(index, shown - 1)), user=True)

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(1, self._body_height() - 1))

    def action_first(self) -> None:
        if self._shown():
            self._set_cursor(0, user=True)

    def action_follow(self) -> None:
        self.follow = True
        self._seen_key = None
        if self.paused:
            self.set_paused(False)
        self._resize_virtual()
        self._jump_to_end()
        self._update_subtitle()
        self.refresh()

    def action_open(self) -> None:
        row = self.cursor_row
        if row is not None:
            self.post_message(self.Opened(row))

    # --- cursor and scrolling ---------------------------------------------------------

    def _shown(self) -> int:
        if self._frozen_key is None:
            return len(self.view)
        return self._rank(self._frozen_key + 1)

    def _rank(self, key: int) -> int:
        """How many view rows have a key below ``key``."""
        if not len(self.view):
            return 0
        index = self.view.nearest_index(key)
        return index + (self.view[index].key < key)

    def _body_height(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _cursor_index(self) -> int | None:
        if self.cursor_key is None:
            return None
        index = self.view.index_of(self.cursor_key)
        return index if index is not None else self.view.nearest_index(self.cursor_key)

    def _clamp_cursor(self) -> None:
        shown = self._shown()
        if not shown:
            self.cursor_key = None
        elif self.cursor_key is not None and self.view.index_of(self.cursor_key) is None:
            self.cursor_key = self.view[min(self.view.nearest_index(self.cursor_key),
                                            shown - 1)].key

    def _set_cursor(self, index: int, *, user: bool) -> None:
        shown = self._shown()
        self.cursor_key = self.view[index].key
        at_end = index == shown - 1 and not self.paused
        if user:
            if at_end:
                self.follow, self._seen_key = True, None
            elif self.follow:
                self.follow = False
                self._seen_key = self.view[shown - 1].key
        top = int(self.scroll_offset.y)
        body = self._body_height()
        if index < top:
            self._scroll_y(index)
        elif index >= top + body:
            self._scroll_y(index - body + 1)
        self._update_subtitle()
        self.refresh()

    def _jump_to_end(self) -> None:
        shown = self._shown()
        self.cursor_key = self.view[shown - 1].key if shown else None
        self._scroll_y(self.max_scroll_y)

    def _scroll_y(self, y: float) -> None:
        self._auto_scroll = True
        try:
            self.scroll_to(y=y, animate=False, force=True)
        finally:
            self._auto_scroll = False

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self._auto_scroll or not self.is_mounted:
            return
        # The wheel or the scrollbar moved the view: follow only while at the bottom.
        at_bottom = new_value >= self.max_scroll_y
        if at_bottom and not self.paused:
            if not self.follow:
                self.follow, self._seen_key = True, None
                self._jump_to_end()
        elif self.follow:
            self.follow = False
            shown = self._shown()
            self._seen_key = self.view[shown - 1].key if shown else None
        self._update_subtitle()

    def _resize_virtual(self) -> None:
        # Columns always fit the width (overflow-x is hidden): only the height scrolls.
        size = Size(0, self._shown() + 1)
        if size != self.virtual_size:
            # Assigning virtual_size asks for a layout of the whole screen (the reactive
            # has layout=True), five times a second under traffic. The scrollbar is
            # always shown (overflow-y: scroll), so nothing outside this widget moves:
            # set the value quietly and update the scrollbar only (through its public
            # reactives, as Textual's own size update does).
            self.set_reactive(TrafficTable.virtual_size, size)
            if self.is_mounted:
                bar = self.vertical_scrollbar
                bar.window_virtual_size = size.height
                bar.window_size = self.container_size.height - self.scrollbar_size_horizontal
                self._auto_scroll = True  # a clamped scroll_y is not the user scrolling
                try:
                    self.scroll_y = self.validate_scroll_y(self.scroll_y)
                finally:
                    self._auto_scroll = False
        self._update_subtitle()

    def _update_subtitle(self) -> None:
        store = self.view.store
        parts = [f"{len(self.view):,}" + (f" of {len(store):,}" if self.view.query else "")
                 + " requests"]
        if store.dropped:
            parts.append(f"{store.dropped:,} dropped (buffer {store.capacity:,})")
        new = self.new_count
        if self.paused:
            parts.append(f"⏸ paused · +{new:,} new" if new else "⏸ paused")
        elif new:
            parts.append(f"+{new:,} new · End to follow")
        self.border_subtitle = " · ".join(parts)

    def on_resize(self, event: events.Resize) -> None:
        self._cache.clear()
        self._resize_virtual()
        if self.follow and not self.paused:
            self._jump_to_end()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles = {}
        self._cache.clear()

    # --- mouse ------------------------------------------------------------------------

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y == 0:
            return
        index = int(self.scroll_offset.y) + offset.y - 1
        if 0 <= index < self._shown():
            self._set_cursor(index, user=True)
            if event.chain >= 2:
                self.action_open()

    # --- rendering --------------------------------------------------------------------

    def _style(self, name: str) -> Style:
        style = self._styles.get(name)
        if style is None:
            style = self.get_component_rich_style(f"traffic-table--{name}", partial=True)
            self._styles[name] = style
        return style

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        if y == 0:
            return self._header(width, base)
        index = int(self.scroll_offset.y) + y - 1
        shown = self._shown()
        if index >= shown:
            if shown == 0 and y == 2:
                text = fit("  " + self.empty_text, width)
                return Strip([Segment(text, base + self._style("empty"))], width)
            return Strip.blank(width, base)
        row = self.view[index]
        cursor = row.key == self.cursor_key
        marked = self.marks is not None and row.key in self.marks
        key = (row.key, row.version, width, cursor, marked, self.has_focus)
        strip = self._cache.get(key)
        if strip is None:
            strip = self._render_row(row, width, base, cursor=cursor, marked=marked)
            self._cache.set(key, strip)
        return strip

    def _header(self, width: int, base: Style) -> Strip:
        style = base + self._style("header")
        text = " ".join(fit(c.title, c.width, c.right) for c in layout(width))
        return Strip([Segment(fit(text, width), style)], width)

    def _render_row(self, row: FlowRow, width: int, base: Style, *, cursor: bool,
                    marked: bool) -> Strip:
        self.renders += 1
        if cursor:
            base = base + self._style("cursor")
        event = row.event
        segments = []
        for column in layout(width):
            if column.name == "mark":
                text, style = ("▌", base + self._style("mark")) if marked else (" ", base)
            else:
                text = fit(cell_text(column.name, event), column.width, column.right)
                name = cell_style(column.name, event)
                cell = self._style(name) if name is not None else Style()
                # On the cursor row only meaningful colours (verdict, status) stay: muted
                # ones would not read on the cursor's background.
                muted = column.name in _MUTED or (column.name == "verdict"
                                                   and event.verdict is Verdict.PASSED)
                style = base if cursor and muted else base + cell
            segments.append(Segment(text, style))
            segments.append(Segment(" ", base))
        segments.pop()
        return Strip(segments).adjust_cell_length(width, base)
