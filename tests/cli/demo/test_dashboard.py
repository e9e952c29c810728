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
