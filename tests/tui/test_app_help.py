"""Help, the command palette, themes, and the footer's bindings."""

from __future__ import annotations

from textual.command import CommandPalette

from tests.tui.conftest import SIZE, attached, make_app, plain, wait_for
from waylay.tui.app import WaylayApp
from waylay.tui.dialogs import HelpScreen
from waylay.tui.fake_agent import FakeAgent


def test_every_binding_has_an_id() -> None:
    """Bindings carry ids so users can remap them in a keymap."""
    from waylay.tui.detail import DetailScreen
    from waylay.tui.dialogs import ModeScreen, PathScreen, PortsScreen
    from waylay.tui.filter_editor import FilterEditor
    from waylay.tui.targets_pane import TargetsPane
    from waylay.tui.traffic_table import TrafficTable

    for owner in (WaylayApp, TrafficTable, FilterEditor, TargetsPane, DetailScreen,
                  ModeScreen, PortsScreen, PathScreen, HelpScreen):
        for binding in owner.BINDINGS:
            assert getattr(binding, "id", None), f"{owner.__name__}: {binding}"


async def test_question_mark_shows_every_binding(fake: FakeAgent) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = plain(app.screen.query_one("#help-dialog Static"))
        for words in ("Mode", "Filter", "Copy as curl", "Add clause", "Filter targets",
                      "Follow", "HAR", "STOLEN", "field:value", "ctrl+p"):
            assert words in text, words
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


async def test_the_command_palette_offers_waylay_commands(fake: FakeAgent) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        assert isinstance(app.screen, CommandPalette)
        await pilot.press(*"mode: off")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: fake.subscriptions() == {}, "mode off")
        assert str(app.client.incoming.mode) == "off"


async def test_the_light_theme_reads(fake: FakeAgent) -> None:
    """Switching to a light theme keeps verdict colours distinct from the background."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        app.theme = "textual-light"
        await pilot.pause()
        stolen = app.table.get_component_rich_style("traffic-table--stolen")
        assert stolen.color is not None and stolen.bgcolor != stolen.color
        assert app.table.render_line(0).text.split()[0] == "TIME"
