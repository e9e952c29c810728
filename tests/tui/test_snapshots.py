"""The main screens at a fixed size with a fixed clock (pytest-textual-snapshot).

Update after a deliberate change with ``pytest tests/tui/test_snapshots.py
--snapshot-update`` and look at the SVGs before committing them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from tests.tui.conftest import SIZE, attached, make_app, requests, send, wait_for
from waylay.tui.fake_agent import FakeAgent


@pytest.fixture
def snap_fake() -> Iterator[FakeAgent]:
    agent = FakeAgent(listening_ports=(80, 8080))
    yield agent
    agent.close()


def traffic(fake: FakeAgent, n: int = 300,
            then: Callable[[Pilot[Any]], Awaitable[None]] | None = None
            ) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run_before(pilot: Pilot[Any]) -> None:
        await attached(pilot)
        await send(pilot, fake, requests(n))
        pilot.app._refresh_stats()  # type: ignore[attr-defined]
        if then is not None:
            await then(pilot)
        pilot.app.clear_notifications()
        await pilot.pause()

    return run_before


def test_main_view_with_traffic(snap_compare: Any, snap_fake: FakeAgent) -> None:
    app = make_app(snap_fake)
    assert snap_compare(app, terminal_size=SIZE, run_before=traffic(snap_fake))


def test_filter_editor_with_preview(snap_compare: Any, snap_fake: FakeAgent) -> None:
    async def edit(pilot: Pilot[Any]) -> None:
        app: Any = pilot.app
        await pilot.press("f")
        await pilot.pause()
        app.editor.query_one("#filter-kind").value = "any_of"
        await pilot.pause()
        app.editor.query("ClauseRow").first().query_one(Input).focus()
        await pilot.press("ctrl+n")
        await pilot.pause()
        rows = list(app.editor.query("ClauseRow"))
        rows[1].query_one("Select").value = "path"
        box = rows[1].query_one(Input)
        box.value = ""
        box.focus()
        await pilot.press(*"^/api/cart")
        await wait_for(pilot, lambda: app.last_preview is not None
                       and app.last_preview.considered == 300
                       and "any_of" in str(app.editor.query_one("#filter-status").render()),
                       "the preview")
        await pilot.pause()

    app = make_app(snap_fake)
    assert snap_compare(app, terminal_size=SIZE, run_before=traffic(snap_fake, then=edit))


def test_request_detail(snap_compare: Any, snap_fake: FakeAgent) -> None:
    async def open_stolen_post(pilot: Pilot[Any]) -> None:
        app: Any = pilot.app
        index = max(i for i in range(len(app.view))
                    if app.view[i].verdict == "stolen" and app.view[i].event.method == "POST")
        await pilot.press(*(["up"] * (len(app.view) - 1 - index)), "enter")
        await pilot.pause()

    app = make_app(snap_fake)
    assert snap_compare(app, terminal_size=SIZE,
                        run_before=traffic(snap_fake, then=open_stolen_post))


def test_targets_pane_before_a_session(snap_compare: Any, snap_fake: FakeAgent) -> None:
    async def loaded(pilot: Pilot[Any]) -> None:
        app: Any = pilot.app
        await wait_for(pilot, lambda: not app.targets_pane.loading, "the targets")
        await pilot.pause()

    app = make_app(snap_fake, target=None)
    assert snap_compare(app, terminal_size=SIZE, run_before=loaded)


def test_help(snap_compare: Any, snap_fake: FakeAgent) -> None:
    async def help_(pilot: Pilot[Any]) -> None:
        await pilot.press("question_mark")
        await pilot.pause()

    app = make_app(snap_fake)
    assert snap_compare(app, terminal_size=SIZE, run_before=traffic(snap_fake, 20, help_))


def test_light_theme(snap_compare: Any, snap_fake: FakeAgent) -> None:
    async def light(pilot: Pilot[Any]) -> None:
        pilot.app.theme = "textual-light"
        await pilot.pause()

    app = make_app(snap_fake)
    assert snap_compare(app, terminal_size=SIZE, run_before=traffic(snap_fake, then=light))
