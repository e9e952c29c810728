"""waylay's entries in the command palette (ctrl+p): every action, by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from textual.app import SystemCommand

from waylay.core.engine.config import Mode
from waylay.tui.dialogs import MODE_HELP

if TYPE_CHECKING:
    from waylay.tui.app import WaylayApp


def waylay_commands(app: WaylayApp) -> Iterator[SystemCommand]:
    for mode in Mode:
        yield SystemCommand(f"Mode: {mode}", f"switch to {mode}: {MODE_HELP[mode]}",
                            lambda mode=mode: app.set_mode(mode))
    yield SystemCommand("Edit filter", "header / path / method filters with a live preview",
                        app.action_edit_filter)
    yield SystemCommand("Ports", "which remote ports, delivered to which local ports",
                        app.action_ports)
    yield SystemCommand("Pause / resume", "freeze the table (traffic is still recorded)",
                        app.action_toggle_pause)
    yield SystemCommand("Clear traffic", "forget every request in the table", app.action_clear)
    yield SystemCommand("Export HAR", "write the visible requests as a HAR file",
                        app.action_export_har)
    yield SystemCommand("Load config", "read a mirrord config file and apply it",
                        app.action_load_config)
    yield SystemCommand("Save config", "write the current settings as a mirrord config",
                        app.action_save_config)
    yield SystemCommand("Targets pane", "show or hide the targets", app.action_toggle_targets)
    yield SystemCommand("Log panel", "show or hide agent warnings and errors",
                        app.action_toggle_log)
    yield SystemCommand("Reload targets", "scan local targets again", app.load_targets)
    yield SystemCommand("Detach", "end the session (its agent removes its rules) and stay",
                        app.action_detach)
