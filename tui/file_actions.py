"""Loading and saving the mirrord config, and exporting HAR: the app's file actions.

A mixin of :class:`waylay.tui.app.WaylayApp`. Each action asks for a path (``PathScreen``) and
does the file I/O in a thread worker; results and errors come back as notifications.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable
from typing import Any

from textual import work
from textual.app import App

from waylay.core.engine.config import Config, IncomingConfig, load_config
from waylay.core.engine.errors import WaylayError
from waylay.core.engine.events import FlowEvent
from waylay.tui.client import SessionClient
from waylay.tui.config_file import save_config
from waylay.tui.dialogs import PathScreen
from waylay.tui.export import write_har
from waylay.tui.flows import FlowView
from waylay.tui.session_bar import BarState


def _version() -> str:
    try:
        return importlib.metadata.version("waylay")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


class FileActions(App[int]):
    """Needs the attributes below, which WaylayApp sets."""

    view: FlowView
    clock: Callable[[], float]
    config: Config
    config_path: str | None
    client: SessionClient
    bar: BarState

    def _record(self, level: str, message: str) -> None:
        raise NotImplementedError

    def _apply_worker(self, incoming: IncomingConfig,
                      cli_ports: dict[int, int | None] | None, what: str) -> Any:
        raise NotImplementedError

    def action_export_har(self) -> None:
        default = time.strftime("waylay-%Y%m%d-%H%M%S.har", time.localtime(self.clock()))

        def chosen(path: str | None) -> None:
            if path:
                self._export_worker(path, [self.view[i].event for i in range(len(self.view))])

        self.push_screen(PathScreen(f"export {len(self.view):,} visible requests as HAR",
                                    default), chosen)

    @work(thread=True, group="files")
    def _export_worker(self, path: str, events: list[FlowEvent]) -> None:
        try:
            n = write_har(path, events, version=_version())
        except OSError as exc:
            self.call_from_thread(self.notify, f"cannot write {path}: {exc.strerror or exc}",
                                  title="export failed", severity="error")
            return
        self.call_from_thread(self.notify, f"{n:,} requests → {path}", title="HAR exported")

    def action_load_config(self) -> None:
        def chosen(path: str | None) -> None:
            if path:
                self._load_worker(path)

        self.push_screen(PathScreen("load a mirrord config", self.config_path or "waylay.json",
                                    "JSON, TOML or YAML · enter load · esc cancel"), chosen)

    @work(thread=True, group="files")
    def _load_worker(self, path: str) -> None:
        try:
            config = load_config(path)
        except WaylayError as exc:
            self.call_from_thread(self.notify, str(exc), title="config not loaded",
                                  severity="error", timeout=10)
            return
        self.call_from_thread(self._config_loaded, path, config)

    def _config_loaded(self, path: str, config: Config) -> None:
        self.config, self.config_path = config, path
        for warning in config.warnings:
            self._record("warning", warning)
        self._apply_worker(config.incoming, None, f"config {path}")

    def action_save_config(self) -> None:
        def chosen(path: str | None) -> None:
            if path:
                self._save_worker(path, self.client.incoming, self.bar.target)

        self.push_screen(PathScreen("save as a mirrord config", self.config_path or
                                    "waylay.json", "JSON or YAML; other keys of an existing "
                                    "file are kept · enter save · esc cancel"), chosen)

    @work(thread=True, group="files")
    def _save_worker(self, path: str, incoming: IncomingConfig, target: str | None) -> None:
        try:
            save_config(path, incoming, target)
        except (WaylayError, OSError) as exc:
            self.call_from_thread(self.notify, str(exc), title="config not saved",
                                  severity="error", timeout=10)
            return
        self.call_from_thread(self.notify, path, title="config saved")
