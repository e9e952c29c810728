"""The session bar: link, mode, ports, filter and pause as chips, each with its key."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from waylay.core.client.session import PortPlan
from waylay.core.engine.config import IncomingConfig, Mode


@dataclass(frozen=True, kw_only=True)
class BarState:
    """Everything the bar shows; the app builds it from what the client reported."""

    link: str = "none"  # "none" | "starting" | "attached" | "ended" | "failed"
    target: str | None = None
    detail: str = ""  # progress text while starting, the error when failed
    incoming: IncomingConfig = field(default_factory=IncomingConfig)
    plans: tuple[PortPlan, ...] = ()
    listening: tuple[int, ...] = ()
    refused: str | None = None  # the last change the agent refused, e.g. "mirror"
    paused: bool = False


_LINK = {
    "none": ("○", "no session", "-idle"),
    "starting": ("◌", "starting", "-busy"),
    "attached": ("●", "attached", "-ok"),
    "ended": ("○", "ended", "-idle"),
    "failed": ("✖", "failed", "-failed"),
}


def ports_text(state: BarState) -> str:
    if state.plans:
        return " ".join(f"{p.remote}" if p.local == p.remote else f"{p.remote}→{p.local}"
                        for p in state.plans)
    if state.link != "attached":
        return "-"
    return "none" if state.incoming.mode is not Mode.OFF else "none (off)"


def filter_text(incoming: IncomingConfig) -> str:
    if incoming.http_filter is None:
        return "none · whole ports"
    text = incoming.http_filter.text
    if incoming.filter_ports is not None:
        text += f" · on {','.join(str(p) for p in sorted(incoming.filter_ports))}"
    return text


class Chip(Static):
    """One chip; clicking it runs the same action as its key."""

    def __init__(self, key: str, action: str, *, id: str) -> None:
        super().__init__(id=id, classes="chip", markup=False)
        self.hotkey = key
        self.action = action

    def show(self, label: str, value: str, value_class: str = "") -> None:
        text = Text.assemble((f" {self.hotkey} ", "reverse") if self.hotkey else "",
                             f" {label} " if label else " ", (value, "bold"), " ")
        self.update(text)
        self.set_classes(f"chip {value_class}".strip())

    async def on_click(self, event: events.Click) -> None:
        event.stop()
        await self.app.run_action(self.action)


class SessionBar(Horizontal):
    """Always visible, above the traffic."""

    def compose(self) -> ComposeResult:
        yield Chip("t", "app.toggle_targets", id="chip-link")
        yield Chip("m", "app.mode_menu", id="chip-mode")
        yield Chip("p", "app.ports", id="chip-ports")
        yield Chip("f", "app.edit_filter", id="chip-filter")
        yield Chip("space", "app.toggle_pause", id="chip-pause")

    def show(self, state: BarState) -> None:
        mark, word, cls = _LINK[state.link]
        link = f"{mark} {state.target} {word}" if state.target else f"{mark} {word}"
        if state.detail and state.link in ("starting", "failed"):
            link += f": {state.detail}"
        self.query_one("#chip-link", Chip).show("", link, cls)
        mode = str(state.incoming.mode).upper()
        if state.refused:
            mode += f" · {state.refused} refused"
        self.query_one("#chip-mode", Chip).show(
            "mode", mode, f"-{state.incoming.mode}" + (" -refused" if state.refused else ""))
        self.query_one("#chip-ports", Chip).show("ports", ports_text(state))
        self.query_one("#chip-filter", Chip).show(
            "filter", filter_text(state.incoming),
            "-filtered" if state.incoming.http_filter is not None else "")
        self.query_one("#chip-pause", Chip).show(
            "", "⏸ paused" if state.paused else "▶ live",
            "-paused" if state.paused else "-live")
