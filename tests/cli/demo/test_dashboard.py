"""The demo's dashboard: Ctrl-C quits, and quitting stops the traffic generator first."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from waylay.cli.demo.dashboard import DemoApp


@pytest.fixture(autouse=True)
def no_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The developer's own ~/.kube/config is never read."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))


def _quit_with(key: str) -> tuple[list[str], int | None]:
    calls: list[str] = []

    async def before_quit() -> None:
        calls.append("generator stopped")

    async def run() -> int | None:
        app = DemoApp(before_quit=before_quit, targets_source=list)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press(key)
            await pilot.pause()
        return app.return_value

    return calls, asyncio.run(run())


def test_ctrl_c_quits_after_stopping_the_generator() -> None:
    """Ctrl-C (a priority binding) runs the demo's quit: generator first, then exit 0."""
    assert _quit_with("ctrl+c") == (["generator stopped"], 0)


def test_q_quits_the_same_way() -> None:
    """The app's own quit key goes through the demo's quit too."""
    assert _quit_with("q") == (["generator stopped"], 0)


def test_help_lists_the_apps_bindings() -> None:
    """The demo keeps every binding of ``waylay ui`` (its help screen lists them)."""
    from waylay.tui.app import WaylayApp

    assert DemoApp.BINDINGS[:len(WaylayApp.BINDINGS)] == WaylayApp.BINDINGS


def test_the_hint_is_a_line_that_covers_nothing_and_x_hides_it() -> None:
    """The demo's hint takes a row of its own (never over the table or the filter editor);
    the log keeps all of it; x hides the line."""
    from textual.widgets import Static

    from waylay.cli.demo.runner import HINT

    async def before_quit() -> None:
        return None

    async def run() -> None:
        app = DemoApp(before_quit=before_quit, hint=HINT, targets_source=list)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            hint = app.query_one("#demo-hint", Static)
            assert hint.display and HINT[0] in str(hint.render())
            await pilot.press("f")  # the filter editor opens over the table's area
            await pilot.pause()
            for covered in ("#table", "#editor", "#stats"):
                region = app.query_one(covered).region
                assert not hint.region.overlaps(region), covered
            assert [m for level, m in app.log_panel.entries if level == "info"][-len(HINT):] \
                == list(HINT)
            await pilot.press("escape", "x")
            await pilot.pause()
            assert not hint.display

    asyncio.run(run())
