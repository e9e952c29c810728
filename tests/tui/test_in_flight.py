"""Stolen requests in flight: a row as soon as one arrives, updated when it completes."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.tui.conftest import FIXED_NOW, SIZE, attached, make_app, wait_for
from waylay.core.engine.events import RequestEvent
from waylay.core.engine.flow import Verdict
from waylay.tui.cells import cell_text
from waylay.tui.fake_agent import FakeAgent


class HangingApp:
    """The developer's local app, stuck: it reads each request and never answers."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.requests = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        await reader.read()  # until the session lets the connection go
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def shown_lines(app: Any) -> list[str]:
    table = app.table
    return [table.render_line(y).text for y in range(table.scrollable_content_region.height)]


async def test_a_hanging_stolen_request_shows_in_flight_then_its_outcome(
        fake: FakeAgent) -> None:
    """The session's ``started`` event puts a STOLEN row with status "…" in the table while
    the local app hangs; the request event with the same id fills that row (504)."""
    local = HangingApp()
    port = await local.start()
    app = make_app(fake, cli_ports={80: port})
    try:
        async with app.run_test(size=SIZE) as pilot:
            await attached(pilot)
            fake.start_request(flow_id=99, port=80, method="GET", path="/slow",
                               authority="shop.local")
            await wait_for(pilot, lambda: len(app.store) == 1, "the in-flight row")
            await wait_for(pilot, lambda: local.requests == 1, "the local app to get it")
            await pilot.pause()
            row = app.store[0]
            assert cell_text("status", row.event) == "…" and not row.complete
            line = shown_lines(app)[1]
            # Nothing in the row is cut short, so its one "…" is the status column's.
            assert "STOLEN" in line and "/slow" in line and "shop.local" in line
            assert line.count("…") == 1
            assert app.store.received == 0  # counted once, when it completes

            fake.send_records([RequestEvent(
                id=99, ts=FIXED_NOW, port=80, protocol="http/1.1", method="GET",
                authority="shop.local", path="/slow", verdict=Verdict.STOLEN, status=504,
                duration_ms=2000.0, bytes_in=0, bytes_out=60, matched=None)])
            await wait_for(pilot, lambda: app.store[0].complete, "the update")
            await pilot.pause()
            assert len(app.store) == 1 and app.store[0] is row and row.complete
            assert app.store.received == 1
            line = shown_lines(app)[1]
            assert "STOLEN" in line and "504" in line and "2.00 s" in line
            assert "…" not in line
    finally:
        local.close()
