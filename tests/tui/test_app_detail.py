"""Request detail, copy as curl, HAR export, the mirror comparison."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from textual.widgets import Input

from tests.tui.conftest import (
    FIXED_NOW,
    SIZE,
    attached,
    make_app,
    plain,
    requests,
    send,
    wait_for,
)
from waylay.core.engine.events import Capture, MirrorOutcome, RequestEvent
from waylay.core.engine.flow import Verdict
from waylay.tui.detail import DetailScreen
from waylay.tui.export import to_curl
from waylay.tui.fake_agent import FakeAgent


def text_of(screen: Any, selector: str) -> str:
    return plain(screen.query_one(selector))


async def open_detail(pilot: Any, up: int = 0) -> DetailScreen:
    await pilot.press(*(["up"] * up), "enter")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, DetailScreen)
    return screen


async def test_detail_shows_headers_bodies_and_why(fake: FakeAgent) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(60))
        index = next(i for i in range(len(app.view) - 1, -1, -1)
                     if app.view[i].verdict is Verdict.STOLEN
                     and app.view[i].event.method == "POST")
        screen = await open_detail(pilot, up=len(app.view) - 1 - index)
        row = app.view[index]
        assert screen.row is row
        assert "STOLEN" in text_of(screen, "#detail-summary")
        assert "POST" in text_of(screen, "#detail-summary")
        why = text_of(screen, "#detail-why")
        assert "stolen by the agent: clause «header_filter: ^x-user: alice$» matched" in why
        assert "✓ header_filter: ^x-user: alice$" in why
        request = text_of(screen, "#detail-request")
        assert "x-user:" in request and "alice" in request
        assert '"qty":' in request  # the JSON body, pretty-printed
        response = text_of(screen, "#detail-response")
        assert "x-served-by:" in response and "local" in response and '"items": [' in response
        assert "curl -X POST" in text_of(screen, "#detail-curl")
        assert not screen.query_one("#detail-mirror").display


async def test_copy_as_curl_and_step_through_requests(fake: FakeAgent) -> None:
    """c copies the curl command; ] and [ move to the next and previous request."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(10))
        screen = await open_detail(pilot, up=3)
        assert screen.row is app.view[6]
        await pilot.press("c")
        assert app.clipboard == to_curl(app.view[6].event)
        assert app.clipboard.startswith("curl ")
        await pilot.press("right_square_bracket")
        assert screen.row is app.view[7] and app.table.cursor_key == app.view[7].key
        await pilot.press("left_square_bracket", "left_square_bracket")
        assert screen.row is app.view[5]
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, DetailScreen)


async def test_export_visible_requests_as_har(fake: FakeAgent, tmp_path: Path) -> None:
    """e writes the requests the table shows (after a search) as HAR."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(80))
        await pilot.press("slash", *"m:POST", "enter")
        visible = len(app.view)
        assert 0 < visible < 80
        await pilot.press("e")
        await pilot.pause()
        path = tmp_path / "out.har"
        app.screen.query_one(Input).value = str(path)
        await pilot.press("enter")
        await wait_for(pilot, path.exists, "the HAR file")
        await wait_for(pilot, lambda: path.stat().st_size > 0
                       and json.loads(path.read_text()), "the HAR content")
        entries = json.loads(path.read_text())["log"]["entries"]
        assert len(entries) == visible
        assert {e["request"]["method"] for e in entries} == {"POST"}


async def test_a_mirrored_request_compares_both_responses(fake: FakeAgent) -> None:
    """The remote's and your app's answers side by side, differences flagged."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        record = RequestEvent(
            id=1, ts=FIXED_NOW, port=80, protocol="http/1.1", method="GET",
            authority="shop.local", path="/api/price", verdict=Verdict.MIRRORED, status=500,
            duration_ms=2.0, bytes_in=0, bytes_out=13, matched="path: price",
            mirror=MirrorOutcome(remote_status=200, remote_duration_ms=3.5),
            capture=Capture(request_headers=(("host", "shop.local"),), request_body="",
                            response_headers=(("content-type", "application/json"),),
                            response_body='{"price": 10}'))
        fake.send_records([record])
        await wait_for(pilot, lambda: len(app.store) == 1, "the row")
        await pilot.pause()
        assert "200→500" in app.table.render_line(1).text
        screen = await open_detail(pilot)
        mirror = text_of(screen, "#detail-mirror")
        assert screen.query_one("#detail-mirror").display
        assert "status 200" in mirror and "status 500" in mirror and "≠" in mirror
        assert "3.5 ms" in mirror and "2.0 ms" in mirror
        assert "body not captured" in mirror
        assert "200 (remote) · 500 (local)" in text_of(screen, "#detail-summary")
        await pilot.press("escape")
        fake.send_records([dataclasses.replace(record, id=2, mirror=MirrorOutcome(
            remote_status=200, remote_duration_ms=3.5, local_body='{"price": 12}',
            local_headers=(("content-type", "application/json"),)))])
        await wait_for(pilot, lambda: len(app.store) == 2, "the second row")
        await pilot.pause()
        screen = await open_detail(pilot)
        mirror = text_of(screen, "#detail-mirror")
        assert "body differences" in mirror
        assert '-  "price": 10' in mirror and '+  "price": 12' in mirror


async def test_missing_captures_are_said(fake: FakeAgent) -> None:
    fake.capture = False
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await send(pilot, fake, requests(3))
        screen = await open_detail(pilot)
        assert "headers not captured by this engine version" in text_of(screen,
                                                                         "#detail-request")
        why = text_of(screen, "#detail-why")
        assert "header clauses saw only the Host" in why


async def test_a_body_the_filter_could_not_read_is_explained(fake: FakeAgent) -> None:
    """A passed request whose body a body filter could not read says why in "why"."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        fake.send_records([RequestEvent(
            id=1, ts=FIXED_NOW, port=80, protocol="http/1.1", method="POST",
            authority="shop.local", path="/api/orders", verdict=Verdict.PASSED, status=200,
            duration_ms=2.0, bytes_in=5, bytes_out=2, matched=None,
            body_skipped="not JSON (content-type text/plain)")])
        await wait_for(pilot, lambda: len(app.store) == 1, "the row")
        screen = await open_detail(pilot)
        assert ("could not read the body for its body filter: not JSON (content-type "
                "text/plain)") in text_of(screen, "#detail-why")
