"""Render the dashboard on the real demo: the README's picture (needs root or user namespaces).

    .venv/bin/python screenshots/render_demo.py      # writes screenshots/demo.svg and demo.png

Starts what ``waylay demo`` starts (the sample shop in a private namespace, the traffic
generator, the local dev app), opens the real dashboard headless at 160x45 on it with
the alice steal filter, waits for live traffic and saves a picture; then removes it all.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from render import SIZE, save, wait  # noqa: E402

from waylay.cli.demo.runner import Demo  # noqa: E402
from waylay.cli.demo.sandbox import SHOP_PORT  # noqa: E402
from waylay.core.engine.config import load_config  # noqa: E402
from waylay.tui.app import WaylayApp  # noqa: E402

CONFIG = HERE.parent / "examples" / "steal-alice.json"


async def picture(demo: Demo) -> None:
    assert demo.sandbox is not None
    app = WaylayApp(target=demo.sandbox.target, config=demo.config, config_path=str(CONFIG),
                    cli_ports={SHOP_PORT: demo.local_port})
    async with app.run_test(size=SIZE) as pilot:
        await wait(pilot, lambda: app.bar.link == "attached" and app.bar.plans,
                   "the session", timeout=30.0)
        await wait(pilot, lambda: app.store.received >= 120, "traffic", timeout=60.0)
        await pilot.pause(1.1)  # a whole second of rates for the stats line
        app.clear_notifications()
        await pilot.pause(0.3)
        save(app, "demo", f"waylay demo: waylay ui -t {demo.sandbox.target}")
        await pilot.press("q")


def main() -> None:
    demo = Demo(config=load_config(CONFIG), config_path=str(CONFIG), seconds=None)
    try:
        demo._start()
        demo._start_generator(120)
        asyncio.run(picture(demo))
    finally:
        demo._teardown()


if __name__ == "__main__":
    main()
