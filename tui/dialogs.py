"""Small modal screens: the mode menu, the ports dialog, a path prompt and the help."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, SelectionList, Static
from textual.widgets.option_list import Option

from waylay.core.client.session import PortPlan
from waylay.core.engine.config import Mode

MODE_HELP = {
    Mode.STEAL: "your app answers: matching requests, or whole ports without a filter",
    Mode.MIRROR: "the remote app answers, your app gets a copy (needs agent support)",
    Mode.OFF: "nothing is intercepted: traffic reaches the remote app untouched",
}


class ModeScreen(ModalScreen[Mode | None]):
    """Pick steal / mirror / off (s, m, o, or arrows and Enter)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_none", "Cancel", id="mode.cancel"),
        Binding("s", "pick('steal')", "Steal", id="mode.steal"),
        Binding("m", "pick('mirror')", "Mirror", id="mode.mirror"),
        Binding("o", "pick('off')", "Off", id="mode.off"),
    ]

    def __init__(self, current: Mode) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="mode-dialog"):
            options = []
            for mode in Mode:
                label = Text.assemble((f" {str(mode)[0]} ", "reverse"), " ",
                                      (str(mode).upper(), "bold"), "  ",
                                      (MODE_HELP[mode], "dim"))
                options.append(Option(label, id=str(mode)))
            yield OptionList(*options, id="mode-options")
            yield Label("enter select · esc cancel", classes="dialog-help")

    def on_mount(self) -> None:
        self.query_one("#mode-dialog").border_title = "mode"
        options = self.query_one(OptionList)
        options.highlighted = list(Mode).index(self.current)
        options.focus()

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(Mode(str(event.option.id)))

    def action_pick(self, mode: str) -> None:
        self.dismiss(Mode(mode))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


def parse_port_pairs(text: str) -> dict[int, int | None]:
    """``"80:8080 7000"`` -> {80: 8080, 7000: None}; ValueError naming the bad word."""
    out: dict[int, int | None] = {}
    for word in text.replace(",", " ").split():
        remote, _, local = word.partition(":")
        try:
            pair = (int(remote), int(local) if local else None)
        except ValueError:
            raise ValueError(f"{word!r} is not REMOTE[:LOCAL]") from None
        for port in pair:
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"port {port} is out of range 1-65535")
        out[pair[0]] = pair[1]
    return out


class PortsScreen(ModalScreen[dict[int, int | None] | None]):
    """Which remote ports to intercept, and where each is delivered locally."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_none", "Cancel", id="ports.cancel"),
        Binding("enter", "apply", "Apply", priority=True, id="ports.apply"),
    ]

    def __init__(self, plans: Sequence[PortPlan], listening: Iterable[int],
                 cli_ports: dict[int, int | None]) -> None:
        super().__init__()
        self.plans = list(plans)
        self.listening = sorted(set(listening))
        self.cli_ports = dict(cli_ports)

    def compose(self) -> ComposeResult:
        chosen = {p.remote for p in self.plans} | set(self.cli_ports)
        known = sorted(set(self.listening) | chosen)
        with Vertical(classes="dialog", id="ports-dialog"):
            yield Label("remote ports (space toggles; ★ listening in the target)")
            yield SelectionList[int](
                *[(f"{'★' if p in self.listening else ' '} {p}", p, p in chosen)
                  for p in known], id="ports-list")
            yield Label("more ports and local mapping (REMOTE[:LOCAL] ...)")
            mapping = " ".join(f"{p.remote}:{p.local}" for p in self.plans
                               if p.local != p.remote)
            yield Input(mapping, placeholder="e.g. 80:8080 9000", id="ports-mapping")
            yield Static("", id="ports-error", markup=False)
            yield Label("space toggle · enter apply · esc cancel · none selected: the "
                        "config's ports, else every listening port", classes="dialog-help")

    def on_mount(self) -> None:
        self.query_one("#ports-dialog").border_title = "ports"
        self.query_one(SelectionList).focus()

    def _result(self) -> dict[int, int | None] | None:
        try:
            extra = parse_port_pairs(self.query_one("#ports-mapping", Input).value)
        except ValueError as exc:
            self.query_one("#ports-error", Static).update(f"✖ {exc}")
            return None
        selected = self.query_one("#ports-list", SelectionList).selected
        result: dict[int, int | None] = {int(p): None for p in selected}
        result.update(extra)
        return result

    def action_apply(self) -> None:
        result = self._result()
        if result is not None:
            self.dismiss(result)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class PathScreen(ModalScreen[str | None]):
    """Ask for a file path (load / save the config, export HAR)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_none", "Cancel", id="path.cancel"),
    ]

    def __init__(self, title: str, value: str, hint: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="path-dialog"):
            yield Input(self.value, id="path-input")
            yield Label(self.hint or "enter confirm · esc cancel", classes="dialog-help")

    def on_mount(self) -> None:
        self.query_one("#path-dialog").border_title = self.title_text
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def _submit(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(event.value.strip())

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


HELP_CONCEPTS = (
    ("STOLEN", "your local app answered (the request matched, or its port is taken whole)"),
    ("PASSED", "the remote app answered; waylay only watched"),
    ("MIRRORED", "the remote app answered; your app got a copy"),
    ("▌", "in the margin while editing a filter: the draft would take this request"),
)
SEARCH_HELP = ("words are searched in every column; field:value tests one column: "
               "verdict: (v:) method: (m:) status: (s:, e.g. s:5xx) port: (p:) host: (h:) "
               "path: proto: match:; a leading - negates (-v:passed)")


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "Close", id="help.close"),
    ]

    def __init__(self, sections: Sequence[tuple[str, Sequence[Binding]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog", id="help-dialog"):
            yield Static(self._render_help(), markup=False)

    def on_mount(self) -> None:
        self.query_one("#help-dialog").border_title = "waylay · help"

    def _render_help(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for title, bindings in self.sections:
            table.add_row(Text(title, style="bold underline"), "")
            for binding in bindings:
                keys = ", ".join(self.app.get_key_display(binding.with_key(k))
                                 for k in binding.key.split(","))
                table.add_row(keys, binding.description)
            table.add_row("", "")
        table.add_row(Text("verdicts", style="bold underline"), "")
        for word, meaning in HELP_CONCEPTS:
            table.add_row(word, meaning)
        table.add_row("", "")
        table.add_row(Text("search (/)", style="bold underline"), SEARCH_HELP)
        table.add_row(Text("palette", style="bold underline"),
                      "ctrl+p: every command by name (mode, load/save config, export, theme)")
        return table

    def action_close(self) -> None:
        self.dismiss(None)
