"""The traffic table: streaming, in-place updates, follow, pause, clear, search, bounds."""

from __future__ import annotations

from typing import Any

from textual import events

from tests.tui.conftest import FIXED_NOW, SIZE, attached, make_app, requests, send, wait_for
from waylay.core.engine.events import RequestEvent
from waylay.core.engine.flow import Verdict
from waylay.tui.fake_agent import FakeAgent
from waylay.tui.notices import WINDOW_S as NOTICE_WINDOW_S
from waylay.tui.traffic_table import TrafficTable


def table(app: Any) -> TrafficTable:
    return app.table  # type: ignore[no-any-return]


def shown_lines(app: Any) -> list[str]:
    t = table(app)
    return [t.render_line(y).text for y in range(t.scrollable_content_region.height)]


async def test_requests_stream_into_the_table(fake: FakeAgent) -> None:
    """Rows appear with verdict, method, host, path, status, duration, size, clause."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(120))
        t = table(app)
        assert len(app.view) == 120
        lines = shown_lines(app)
        assert lines[0].split()[:4] == ["TIME", "VERDICT", "PROTO", "METHOD"]
        stolen = [line for line in lines if "STOLEN" in line]
        assert stolen and all("header_filter: ^x-use" in line
                              for line in stolen)
        last = app.view[-1].finished
        assert last is not None and last.path is not None
        assert last.path[:20] in lines[-1] and str(last.status) in lines[-1]
        assert t.follow and t.cursor_key == app.view[-1].key
        assert "120 requests" in str(t.border_subtitle)
        assert t.renders <= 2 * t.scrollable_content_region.height  # only what is shown


async def test_a_row_is_updated_in_place_when_its_response_arrives(fake: FakeAgent) -> None:
    """A started request shows as pending; the finished event fills the same row."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        fake.start_request(flow_id=99, port=80, method="GET", path="/slow",
                           authority="shop.local")
        await wait_for(pilot, lambda: len(app.store) == 1, "the started row")
        await pilot.pause()
        assert "…" in shown_lines(app)[1] and "/slow" in shown_lines(app)[1]
        fake.send_records([RequestEvent(
            id=99, ts=FIXED_NOW, port=80, protocol="http/1.1", method="GET",
            authority="shop.local", path="/slow", verdict=Verdict.STOLEN, status=200,
            duration_ms=1500.0, bytes_in=0, bytes_out=9, matched="path: slow")])
        await wait_for(pilot, lambda: app.store[0].complete, "the update")
        await pilot.pause()
        assert len(app.store) == 1
        line = shown_lines(app)[1]
        assert "STOLEN" in line and "1.50 s" in line and "path: slow" in line


async def test_scrolling_up_stops_following_and_counts_new_rows(fake: FakeAgent) -> None:
    """Up leaves follow mode; new rows show as "+N new"; End follows again."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(100))
        t = table(app)
        await pilot.press("up", "up", "up")
        assert not t.follow
        key = t.cursor_key
        assert key == app.view[-4].key
        top = t.scroll_offset.y
        await send(pilot, fake, requests(30, start=100))
        assert t.cursor_key == key and t.scroll_offset.y == top
        assert t.new_count == 30 and "+30 new" in str(t.border_subtitle)
        await pilot.press("end")
        assert t.follow and t.new_count == 0 and t.cursor_key == app.view[-1].key
        await pilot.press("home")
        assert t.cursor_key == app.view[0].key and t.scroll_offset.y == 0
        await pilot.press("pagedown")
        assert t.cursor_key == app.view[t._body_height() - 1].key


async def test_the_mouse_wheel_also_stops_following(fake: FakeAgent) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(100))
        t = table(app)
        for _ in range(3):
            t.post_message(events.MouseScrollUp(t, 10, 10, 0, -1, 0, False, False, False))
        await pilot.pause()
        assert not t.follow
        await send(pilot, fake, requests(5, start=100))
        assert t.new_count == 5


async def test_pause_freezes_the_view_and_resume_catches_up(fake: FakeAgent) -> None:
    """Space pauses: traffic is still recorded, the table waits; space again resumes."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(10))
        await pilot.press("space")
        t = table(app)
        assert t.paused and "paused" in str(app.session_bar.query_one("#chip-pause").render())
        await send(pilot, fake, requests(15, start=10))
        assert len(app.store) == 25 and t._shown() == 10
        assert "⏸ paused · +15 new" in str(t.border_subtitle)
        assert t.cursor_key == app.view[9].key
        await pilot.press("space")
        assert not t.paused and t._shown() == 25 and t.cursor_key == app.view[-1].key


async def test_clear_empties_the_table(fake: FakeAgent) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(10))
        await pilot.press("c")
        assert len(app.view) == 0 and table(app).cursor_key is None
        assert "waiting for requests" in shown_lines(app)[2]
        await send(pilot, fake, requests(3, start=10))
        assert len(app.view) == 3


async def test_search_filters_the_table(fake: FakeAgent) -> None:
    """/ then a query shows only matching rows; Escape shows all again."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(200))
        stolen = sum(1 for r in app.store if r.verdict == "stolen")
        await pilot.press("slash", *"v:stolen", "enter")
        assert len(app.view) == stolen > 0
        assert all("STOLEN" in line for line in shown_lines(app)[1:stolen + 1])
        assert f"{stolen} of 200 requests" in str(table(app).border_subtitle)
        await send(pilot, fake, requests(50, start=200))
        assert len(app.view) == sum(1 for r in app.store if r.verdict == "stolen")
        await pilot.press("slash", "escape")
        assert len(app.view) == 250


async def test_the_buffer_is_bounded_and_says_what_it_dropped(fake: FakeAgent) -> None:
    app = make_app(fake, capacity=100)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(250))
        assert len(app.view) == 100
        assert app.view[0].event.path == app.store[0].event.path
        assert "150 dropped (buffer 100)" in str(table(app).border_subtitle)


async def test_agent_errors_become_notifications_and_log_lines(fake: FakeAgent) -> None:
    """A flood of errors and warnings: each logged and counted, a few toasts, one sum."""
    now = [FIXED_NOW]
    app = make_app(fake, clock=lambda: now[0])
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        toasts: list[str] = []
        notify = app.notify

        def recorded(message: str, **kw: Any) -> None:
            toasts.append(message)
            notify(message, **kw)

        app.notify = recorded  # type: ignore[method-assign]
        for i in range(40):
            fake.notice("error", f"local app unreachable #{i}")
        fake.notice("warning", "filter timed out")
        await wait_for(pilot, lambda: app.errors == 40 and app.warnings == 1, "the notices")
        # However the 41 notices were batched, the app's clock has not moved: one window.
        assert toasts == ["local app unreachable #0", "local app unreachable #1"]
        assert ("warning", "filter timed out") in app.log_panel.entries
        now[0] += NOTICE_WINDOW_S
        app.flush_notices()  # the app's 1-s timer may have done it already: once either way
        app.flush_notices()
        assert toasts[2:] == ["38 more errors and 1 more warning: see the log (l)"]
        await pilot.press("l")
        assert app.log_panel.display
        app._refresh_stats()
        counters = str(app.stats.query_one("#counters").render())
        assert "errors 40" in counters and "warnings 1" in counters


async def test_up_and_end_change_nothing_where_there_is_nowhere_to_go(
        fake: FakeAgent) -> None:
    """Up needs two rows to leave follow mode, and End while following is a no-op (what
    bench/tui_lag.py's key probe has to respect)."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        t = table(app)
        await pilot.press("up", "end")
        assert t.follow and t.cursor_key is None
        await send(pilot, fake, requests(1))
        await pilot.press("up")
        assert t.follow and t.cursor_key == app.view[0].key
        await send(pilot, fake, requests(1, start=1))
        await pilot.press("up")
        assert not t.follow and t.cursor_key == app.view[0].key
        await pilot.press("end")
        assert t.follow and t.cursor_key == app.view[1].key


async def test_enter_opens_the_row_under_the_cursor(fake: FakeAgent) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(5))
        await pilot.press("up", "enter")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "DetailScreen"
        assert app.screen.row is app.view[3]  # type: ignore[attr-defined]


async def test_the_rows_being_read_stay_put_when_old_ones_are_dropped(
        fake: FakeAgent) -> None:
    """Not following, a full buffer drops rows above the view without moving it."""
    app = make_app(fake, capacity=200)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(200))
        await pilot.press(*["up"] * 60)
        t = table(app)
        top_row = app.view[int(t.scroll_offset.y)].key
        cursor = t.cursor_key
        await send(pilot, fake, requests(50, start=200))
        assert app.store.dropped == 50
        assert app.view[int(t.scroll_offset.y)].key == top_row
        assert t.cursor_key == cursor and t.new_count == 50
