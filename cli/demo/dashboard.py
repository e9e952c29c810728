"""The demo's dashboard: ``waylay ui`` where Ctrl-C quits and quitting stops the traffic first.

Imported only when the demo opens the dashboard (it imports Textual).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

from textual.binding import Binding, BindingType
from textual.widgets import Static

from waylay.tui import app as tui_app
from waylay.tui.app import WaylayApp


class DemoApp(WaylayApp):
    """``WaylayApp`` with the demo's two differences, through Textual's public API."""

    # Textual reads a relative CSS_PATH next to the subclass's module: name the app's own.
    CSS_PATH = str(Path(tui_app.__file__).with_name("app.tcss"))
    CSS = "#demo-hint { height: 1; padding: 0 1; background: $boost; color: $text-accent; }"

    # In the demo Ctrl-C quits too (Textual's own ctrl+c only says how to quit): a
    # priority binding is checked before the app's and the focused widget's. The app's
    # own bindings are repeated so that its help screen lists them as in ``waylay ui``.
    BINDINGS: ClassVar[list[BindingType]] = [
        *WaylayApp.BINDINGS,
        Binding("ctrl+c", "quit", show=False, priority=True, id="demo.quit"),
        Binding("x", "hide_hint", "Hide hint", id="demo.hide_hint"),
    ]

    def __init__(self, *, before_quit: Callable[[], Awaitable[None]],
                 hint: tuple[str, ...] = (), **kwargs: Any) -> None:
        """``before_quit`` runs once per quit, before the session stops. ``hint``: what to
        try, one line shown above the footer (the rest goes to the log)."""
        super().__init__(**kwargs)
        self._before_quit = before_quit
        self._hint = hint

    async def on_mount(self) -> None:
        await super().on_mount()
        if not self._hint:
            return
        # A line in the layout takes a row of its own instead of floating over the table
        # and the filter editor, as a toast would: both stay fully visible.
        line = Static(f"{self._hint[0]}  · x hides this", id="demo-hint", markup=False)
        await self.mount(line, before=self.query_one("#stats"))
        for text in self._hint:
            self.log_panel.add("info", text)

    def action_hide_hint(self) -> None:
        """Hide the hint line (the log keeps the hint)."""
        for line in self.query("#demo-hint"):
            line.display = False

    async def action_quit(self) -> None:
        # Quitting stops the traffic first: requests in flight when the session (and its
        # agent) goes would be cut off, and counted as failures in the generator's view.
        self.notify("stopping the traffic generator…", timeout=3)
        await self._before_quit()
        await super().action_quit()
