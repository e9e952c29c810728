"""The demo's dashboard: ``waylay ui`` where Ctrl-C quits and quitting stops the traffic first.

Imported only when the demo opens the dashboard (it imports Textual).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

from textual.binding import Binding, BindingType

from waylay.tui import app as tui_app
from waylay.tui.app import WaylayApp


class DemoApp(WaylayApp):
    """``WaylayApp`` with the demo's two differences, through Textual's public API."""

    # Textual reads a relative CSS_PATH next to the subclass's module: name the app's own.
    CSS_PATH = str(Path(tui_app.__file__).with_name("app.tcss"))

    # In the demo Ctrl-C quits too (Textual's own ctrl+c only says how to quit): a
    # priority binding is checked before the app's and the focused widget's. The app's
    # own bindings are repeated so that its help screen lists them as in ``waylay ui``.
    BINDINGS: ClassVar[list[BindingType]] = [
        *WaylayApp.BINDINGS,
        Binding("ctrl+c", "quit", show=False, priority=True, id="demo.quit"),
    ]

    def __init__(self, *, before_quit: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        """``before_quit`` runs once per quit, before the session stops."""
        super().__init__(**kwargs)
        self._before_quit = before_quit

    async def action_quit(self) -> None:
        # Quitting stops the traffic first: requests in flight when the session (and its
        # agent) goes would be cut off, and counted as failures in the generator's view.
        self.notify("stopping the traffic generator…", timeout=3)
        await self._before_quit()
        await super().action_quit()
