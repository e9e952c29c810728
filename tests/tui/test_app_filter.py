"""The filter editor: inline validation, live preview, apply in place, revert."""

from __future__ import annotations

from typing import Any

from textual.widgets import Input, Select

from tests.tui.conftest import SIZE, attached, make_app, requests, send, wait_for
from waylay.tui.fake_agent import FakeAgent
from waylay.tui.filter_editor import ClauseRow, FilterEditor


def editor(app: Any) -> FilterEditor:
    return app.editor  # type: ignore[no-any-return]


def status(app: Any) -> str:
    return str(editor(app).query_one("#filter-status").render())


def preview_text(app: Any) -> str:
    return str(editor(app).query_one("#filter-preview").render())


async def type_into(pilot: Any, widget: Input, text: str) -> None:
    widget.value = ""
    widget.focus()
    await pilot.press(*text)
    await pilot.pause()


async def pick(pilot: Any, select: Select[str], value: str) -> None:
    """Choose ``value`` in a Select with the keyboard, as a user would."""
    select.focus()
    await pilot.press("enter")
    await pilot.pause()
    options = [v for _, v in select._options]
    steps = options.index(value) - options.index(select.value)
    await pilot.press(*(["down"] * steps if steps > 0 else ["up"] * -steps), "enter")
    await pilot.pause()
    assert select.value == value


async def test_an_invalid_regex_shows_its_error_and_is_not_applied(fake: FakeAgent) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        log_before = list(fake.subscribe_log)
        await pilot.press("f")
        await pilot.pause()
        assert editor(app).display
        value = editor(app).query_one("#filter-value", Input)
        assert value.value == "^x-user: alice$" and value.has_focus
        await type_into(pilot, value, "^x-user: (alice")
        assert "invalid regex" in status(app) and "missing )" in status(app)
        assert value.has_class("-invalid")
        assert "fix the filter" in preview_text(app)
        await pilot.press("enter")
        await pilot.pause()
        assert "not applied" in status(app) and editor(app).display
        assert fake.subscribe_log == log_before
        assert app.client.incoming.http_filter is not None
        assert app.client.incoming.http_filter.text == "header_filter: ^x-user: alice$"


async def test_a_valid_filter_is_applied_in_place_and_previewed_exactly(
        fake: FakeAgent) -> None:
    """The preview count is what the agent then steals of the same requests."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(150))
        await pilot.press("f")
        await pick(pilot, editor(app).query_one("#filter-kind", Select), "path_filter")
        await type_into(pilot, editor(app).query_one("#filter-value", Input), "^/api/(orders|cart)")
        await wait_for(pilot, lambda: app.last_preview is not None
                       and "would steal" in preview_text(app), "the preview")
        predicted = app.last_preview.taken
        assert f"would steal {predicted} of 150" in preview_text(app)
        assert 0 < predicted < 150
        assert app.table.marks == app.last_preview.taken_keys
        marked = [y for y in range(1, 40) if app.table.render_line(y).text.startswith("▌")]
        assert marked
        await pilot.press("enter")
        await wait_for(pilot, lambda: fake.subscriptions().get(80)
                       == ("steal", "path_filter: ^/api/(orders|cart)"), "the new filter")
        assert not editor(app).display and app.table.marks is None
        assert fake.attaches == 1  # the session was not restarted
        before = len(app.store)
        await send(pilot, fake, requests(150))  # the very same requests again
        stolen = sum(1 for r in list(app.store)[before:] if r.verdict == "stolen")
        assert stolen == predicted
        assert "path_filter: ^/api/(orders|cart)" in str(
            app.session_bar.query_one("#chip-filter").render())


async def test_escape_reverts_the_draft(fake: FakeAgent) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        log_before = list(fake.subscribe_log)
        await pilot.press("f")
        await type_into(pilot, editor(app).query_one("#filter-value", Input), "^x-user: bob$")
        assert "^x-user: bob$" in status(app)
        await pilot.press("escape")
        await pilot.pause()
        assert not editor(app).display and app.table.has_focus
        assert fake.subscribe_log == log_before
        await pilot.press("f")
        await pilot.pause()
        assert editor(app).query_one("#filter-value", Input).value == "^x-user: alice$"


async def test_any_of_clauses_are_edited_checked_and_applied(fake: FakeAgent) -> None:
    """ctrl+n adds a clause; a bad clause is marked on its row; the list is applied."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await pilot.press("f")
        await pick(pilot, editor(app).query_one("#filter-kind", Select), "any_of")
        rows = list(editor(app).query(ClauseRow))
        assert len(rows) == 1 and rows[0].clause == ("header", "^x-user: alice$")
        await pilot.press("ctrl+n")
        await pilot.pause()
        rows = list(editor(app).query(ClauseRow))
        assert len(rows) == 2
        await pick(pilot, rows[1].query_one(Select), "method")
        await type_into(pilot, rows[1].query_one(Input), "GE T")
        assert "any_of[1].method" in status(app) and "not an HTTP method" in status(app)
        assert rows[1].query_one(Input).has_class("-invalid")
        await type_into(pilot, rows[1].query_one(Input), "POST")
        assert "✓ any_of[header: ^x-user: alice$, method: POST]" in status(app)
        assert '"any_of": [{"header": "^x-user: alice$"}, {"method": "POST"}]' in str(
            editor(app).query_one("#filter-json").render())
        await pilot.press("enter")
        await wait_for(pilot, lambda: fake.subscriptions().get(80, ("", ""))[1]
                       == "any_of[header: ^x-user: alice$, method: POST]", "the list")
        await pilot.press("f")
        await pilot.pause()
        rows = list(editor(app).query(ClauseRow))
        assert [r.clause for r in rows] == [("header", "^x-user: alice$"), ("method", "POST")]
        rows[0].query_one(Input).focus()
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert [r.clause for r in editor(app).query(ClauseRow)] == [("method", "POST")]


async def test_removing_the_filter_takes_whole_ports(fake: FakeAgent) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(40))
        await pilot.press("f")
        await pick(pilot, editor(app).query_one("#filter-kind", Select), "none")
        await wait_for(pilot, lambda: "would steal 40 of 40 (40 on ports taken whole)"
                       in preview_text(app), "the preview")
        editor(app).query_one("#filter-ports", Input).focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: fake.subscriptions().get(80) == ("steal", None),
                       "no filter")


async def test_filter_ports_limit_where_the_filter_applies(fake: FakeAgent) -> None:
    app = make_app(fake, config_text='{"feature": {"network": {"incoming": {"mode": "steal", '
                   '"http_filter": {"method_filter": "POST"}}}}}', cli_ports={80: None,
                                                                              8080: None})
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await pilot.press("f")
        await type_into(pilot, editor(app).query_one("#filter-ports", Input), "80")
        await pilot.press("enter")
        await wait_for(pilot, lambda: fake.subscriptions().get(8080) == ("steal", None),
                       "8080 taken whole")
        assert fake.subscriptions()[80] == ("steal", "method_filter: POST")
        assert "on 80" in str(app.session_bar.query_one("#chip-filter").render())


async def test_the_preview_says_when_headers_were_not_captured(fake: FakeAgent) -> None:
    fake.capture = False
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(30))
        await pilot.press("f")
        await type_into(pilot, editor(app).query_one("#filter-value", Input), "^host: api")
        await wait_for(pilot, lambda: "captured with headers" in preview_text(app),
                       "the note")
        expected = sum(1 for r in app.store if r.event.authority == "api.shop.local")
        assert app.last_preview is not None and app.last_preview.taken == expected


async def test_tab_follows_reading_order_kind_value_ports(fake: FakeAgent) -> None:
    """After choosing a kind, Tab lands in its value, and the next Tab in the ports."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await pilot.press("f")
        await pick(pilot, editor(app).query_one("#filter-kind", Select), "path_filter")
        await pilot.press("tab")
        await pilot.pause()
        assert app.focused is editor(app).query_one("#filter-value", Input)
        await pilot.press(*"^/api", "tab")
        await pilot.pause()
        assert app.focused is editor(app).query_one("#filter-ports", Input)
        assert editor(app).query_one("#filter-value", Input).value == "^/api"
