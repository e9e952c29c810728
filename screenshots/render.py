"""Render the dashboard's main screens as SVG and PNG (no root needed).

    .venv/bin/python screenshots/render.py            # writes screenshots/*.svg and *.png

The real app runs headless at 160x45 against ``waylay.tui.fake_agent.FakeAgent`` (the real
session and wire protocol, synthetic traffic routed by the engine's filters), with
traffic streaming at 300 requests/s while the pictures are taken, so the rates and
sparklines are live. Three pictures:

- ``main``: the traffic table with traffic flowing, steal with a header filter;
- ``filter-editor``: an any_of filter being edited, with its live preview;
- ``detail``: a stolen request's detail (why, headers, JSON bodies, curl).

PNGs are made with cairosvg from Textual's SVG (not simplified, so every cell is placed
exactly); the SVG names Fira Code, which Debian's ``fonts-firacode`` provides so the box
drawing aligns.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import cairosvg  # noqa: E402
from textual.widgets import Input  # noqa: E402

from waylay.core.engine.config import parse_config  # noqa: E402
from waylay.core.system.local_targets import LocalTarget  # noqa: E402
from waylay.tui.app import WaylayApp  # noqa: E402
from waylay.tui.fake_agent import FakeAgent, synthetic  # noqa: E402

SIZE = (160, 45)
CONFIG = ('{"feature": {"network": {"incoming": {"mode": "steal", '
          '"http_filter": {"header_filter": "^x-user: alice$"}, '
          '"port_mapping": [[3000, 80]]}}}}')
TARGETS = [
    LocalTarget(target="netns/shop", kind="netns", description="named network namespace",
                ports=(80, 8080), netns_inode=1),
    LocalTarget(target="netns/payments", kind="netns", description="named network namespace",
                ports=(443,), netns_inode=2),
    LocalTarget(target="pid/31337", kind="pid", description="node server.js", ports=(3000,),
                netns_inode=3),
]


def save(app: WaylayApp, name: str, title: str) -> None:
    svg = app.export_screenshot(title=title, simplify=False)
    (HERE / f"{name}.svg").write_text(svg)
    cairosvg.svg2png(bytestring=svg.encode(), write_to=str(HERE / f"{name}.png"))
    print(f"screenshots/{name}.svg, screenshots/{name}.png")


async def wait(pilot, predicate, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def main() -> None:
    fake = FakeAgent(listening_ports=(80, 8080))
    app = WaylayApp(target="netns/shop", config=parse_config(CONFIG, fmt="json"),
                    attach_fn=fake.attach, targets_source=lambda: list(TARGETS))
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait(pilot, lambda: app.bar.link == "attached" and app.bar.plans,
                       "the session")
            app.action_toggle_targets()  # show the targets pane beside the traffic
            app.table.focus()
            # Traffic keeps flowing while the pictures are taken.
            fake.stream(300, 60.0, synthetic)
            await wait(pilot, lambda: app.store.received >= 1500, "traffic")
            await pilot.pause(1.1)  # a whole second of rates for the stats line
            app._refresh_stats()
            app.clear_notifications()
            await pilot.pause(0.3)
            save(app, "main", "waylay ui -t netns/shop")

            await pilot.press("f")
            await pilot.pause(0.2)
            app.editor.query_one("#filter-kind").value = "any_of"
            await pilot.pause(0.2)
            app.editor.query("ClauseRow").first().query_one(Input).focus()
            await pilot.press("ctrl+n")
            await pilot.pause(0.2)
            row = list(app.editor.query("ClauseRow"))[1]
            row.query_one("Select").value = "path"
            box = row.query_one(Input)
            box.value = ""
            box.focus()
            await pilot.press(*"^/api/cart")
            await wait(pilot, lambda: app.last_preview is not None
                       and "path" in str(app.editor.query_one("#filter-status").render()),
                       "the preview")
            await pilot.pause(0.5)
            app.clear_notifications()
            await pilot.pause(0.1)
            save(app, "filter-editor", "waylay ui: filter editor with live preview")

            await pilot.press("escape")
            await pilot.pause(0.2)
            index = max(i for i in range(len(app.view)) if app.view[i].verdict == "stolen"
                        and app.view[i].get("method") == "POST")
            app.table.move_to(app.view[index].key)
            await pilot.press("enter")
            await pilot.pause(0.3)
            save(app, "detail", "waylay ui: request detail")
            await pilot.press("escape", "q")
    finally:
        fake.close()


if __name__ == "__main__":
    asyncio.run(main())
