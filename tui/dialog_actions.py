"""The dashboard's dialogs that change the session or explain the keys: the mode menu, the
ports dialog and the help screen; and ``set_mode``, which the menu and the command palette
share.

A mixin of :class:`waylay.tui.app.WaylayApp`, which holds the state named below.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from textual.app import App
from textual.binding import Binding

from waylay.core.engine.config import IncomingConfig, Mode
from waylay.tui.detail import DetailScreen
from waylay.tui.dialogs import HelpScreen, ModeScreen, PortsScreen
from waylay.tui.filter_editor import FilterEditor
from waylay.tui.session_bar import BarState
from waylay.tui.targets_pane import TargetsPane
from waylay.tui.traffic_table import TrafficTable

if TYPE_CHECKING:
    from waylay.tui.client import SessionClient


class DialogActions(App[int]):
    """Needs the attributes below, which WaylayApp sets."""

    client: SessionClient
    bar: BarState

    if TYPE_CHECKING:
        def _apply_worker(self, incoming: IncomingConfig,
                          cli_ports: dict[int, int | None] | None, what: str) -> Any: ...

    def action_mode_menu(self) -> None:
        def chosen(mode: Mode | None) -> None:
            if mode is not None:
                self.set_mode(mode)

        self.push_screen(ModeScreen(self.client.incoming.mode), chosen)

    def action_ports(self) -> None:
        def chosen(ports: dict[int, int | None] | None) -> None:
            if ports is not None:
                shown = " ".join(f"{remote}:{local}" if local else str(remote)
                                 for remote, local in ports.items())
                self._apply_worker(self.client.incoming, ports,
                                   f"ports {shown or 'default'}")

        self.push_screen(PortsScreen(self.bar.plans, self.client.listening,
                                     self.client.cli_ports), chosen)

    def action_help(self) -> None:
        sections = [
            ("everywhere", self.BINDINGS),
            ("traffic table", TrafficTable.BINDINGS),
            ("filter editor", FilterEditor.BINDINGS),
            ("targets pane", TargetsPane.BINDINGS),
            ("request detail", DetailScreen.BINDINGS),
        ]
        self.push_screen(HelpScreen([(t, [b for b in bs if isinstance(b, Binding)])
                                     for t, bs in sections]))

    def set_mode(self, mode: Mode) -> None:
        """Switch steal / mirror / off on the running session (in place)."""
        if mode is not self.client.incoming.mode:
            self._apply_worker(dataclasses.replace(self.client.incoming, mode=mode), None,
                               f"mode {mode}")
