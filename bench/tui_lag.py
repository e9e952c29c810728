"""Event-loop lag of the dashboard under a flood of request events (a benchmark, not a test).

    .venv/bin/python bench/tui_lag.py                    # 1,000 requests/s for 10 s
    .venv/bin/python bench/tui_lag.py --rate 2000 --duration 20 --editor

The real app (``tui.app.WaylayApp``, headless via ``App.run_test`` at 160x45) attaches
through the real session interface: a ``core.session.Session`` whose link is served by
``tui.fake_agent.FakeAgent`` from its own thread (as an agent runs in its own process),
sending flow records in the agent's batches (at most 200 records or 50 ms per frame). So
every event goes through the session's decoder and ``on_event`` into the dashboard's
client, its coalesced batches, the store, the table and the stats, exactly as with a real
agent. Requests are routed by the engine's filter (a header filter stealing some of them)
and carry captured headers and bodies.

While the flood runs, a probe sleeps 10 ms in a loop on the UI's event loop and records
how late it wakes up (the event-loop lag), and every 250 ms a key is posted and the time
until the app acted on it is recorded (key latency): by default Up and End alternately
(the table leaves follow mode and comes back), with ``--keys layout`` the log panel is
shown and hidden (a relayout of the screen each time). Printed: lag and
key-latency percentiles, the UI thread's CPU share, and what reached the table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual import events

from core.config import parse_config
from tui.app import WaylayApp
from tui.fake_agent import FakeAgent, synthetic

CONFIG = ('{"feature": {"network": {"incoming": {"mode": "steal", '
          '"http_filter": {"header_filter": "^x-user: alice$"}}}}}')
PROBE_S = 0.010
KEY_EVERY_S = 0.25


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99),
            "max_ms": ordered[-1] * 1000, "mean_ms": statistics.fmean(ordered) * 1000,
            "n": len(ordered)}


async def measure(rate: float, duration: float, size: tuple[int, int],
                  editor: bool, keys_mode: str = "nav") -> dict[str, Any]:
    fake = FakeAgent(listening_ports=(80, 8080))
    app = WaylayApp(target="netns/bench", config=parse_config(CONFIG, fmt="json"),
                    attach_fn=fake.attach, targets_source=list, freeze_gc=True)
    lags: list[float] = []
    keys: list[float] = []
    try:
        async with app.run_test(size=size) as pilot:
            deadline = time.monotonic() + 20
            while app.bar.link != "attached" or not app.bar.plans:
                if time.monotonic() > deadline:
                    raise SystemExit("the dashboard did not attach to the fake agent")
                await pilot.pause(0.05)
            if editor:
                await pilot.press("f")  # the preview re-runs on new traffic while open
                await pilot.pause(0.2)
                app.table.focus()
            loop = asyncio.get_running_loop()
            running = True

            async def probe() -> None:
                while running:
                    start = loop.time()
                    await asyncio.sleep(PROBE_S)
                    lags.append(max(0.0, loop.time() - start - PROBE_S))

            async def press_keys() -> None:
                # nav: Up then End, alternately (the table leaves follow mode and comes
                # back, so most of the time it follows the newest rows, its costliest
                # state); layout: "l" shows / hides the log panel, a relayout each time.
                step = 0
                while running:
                    await asyncio.sleep(KEY_EVERY_S)
                    if keys_mode == "layout":
                        key, changed = "l", app.log_panel.display
                        probe_state = lambda: app.log_panel.display  # noqa: E731
                    else:
                        key = "up" if step % 2 == 0 else "end"
                        changed = app.table.follow
                        probe_state = lambda: app.table.follow  # noqa: E731
                    step += 1
                    start = loop.time()
                    app.post_message(events.Key(key, "l" if key == "l" else None))
                    while probe_state() == changed and loop.time() - start < 2:
                        await asyncio.sleep(0)
                    keys.append(loop.time() - start)

            gc_pauses: list[float] = []
            gc_started = [0.0]

            def on_gc(phase: str, info: dict[str, int]) -> None:
                if info.get("generation") != 2:
                    return
                if phase == "start":
                    gc_started[0] = time.perf_counter()
                else:
                    gc_pauses.append(time.perf_counter() - gc_started[0])

            gc.callbacks.append(on_gc)
            cpu0, wall0 = time.thread_time(), time.monotonic()
            renders0 = app.table.renders
            tasks = [asyncio.create_task(probe())]
            if keys_mode != "none":
                tasks.append(asyncio.create_task(press_keys()))
            sent_future = fake.stream(rate, duration, synthetic)
            while not sent_future.done():
                await asyncio.sleep(0.05)
            sent = sent_future.result()
            drain_deadline = time.monotonic() + 10
            while app.store.received < sent and time.monotonic() < drain_deadline:
                await asyncio.sleep(0.05)
            wall = time.monotonic() - wall0
            cpu = time.thread_time() - cpu0
            running = False
            gc.callbacks.remove(on_gc)
            await asyncio.gather(*tasks)
            result = {
                "rate_per_s": rate, "duration_s": duration, "editor_open": editor,
                "keys": keys_mode,
                "sent": sent, "received": app.store.received, "rows": len(app.store),
                "dropped": app.store.dropped, "overflow": app.client.overflow,
                "ui_thread_cpu_share": cpu / wall,
                "rows_rendered": app.table.renders - renders0,
                "lag": percentiles(lags), "key_latency": percentiles(keys),
                "full_gc": {"count": len(gc_pauses),
                            "max_ms": max(gc_pauses, default=0.0) * 1000},
            }
            await pilot.press("q")
    finally:
        fake.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s (1000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (10)")
    parser.add_argument("--size", default="160x45", help="terminal WxH (160x45)")
    parser.add_argument("--editor", action="store_true",
                        help="keep the filter editor (live preview) open during the flood")
    parser.add_argument("--keys", choices=["nav", "layout", "none"], default="nav",
                        help="keys pressed every 250 ms meanwhile: nav (Up / End, default), "
                        "layout (show / hide the log panel) or none")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if lag p95 exceeds 50 ms or events were lost")
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    result = asyncio.run(measure(args.rate, args.duration, (width, height), args.editor,
                                 args.keys))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lag, key = result["lag"], result["key_latency"]
        print(f"waylay dashboard under {args.rate:,.0f} requests/s for {args.duration:g} s "
              f"({width}x{height}, keys: {args.keys}"
              f"{', filter editor open' if args.editor else ''})")
        print(f"  events     sent {result['sent']:,}  received {result['received']:,}  "
              f"rows {result['rows']:,}  dropped {result['dropped']:,}")
        print(f"  loop lag   p50 {lag['p50_ms']:.1f} ms  p95 {lag['p95_ms']:.1f} ms  "
              f"p99 {lag['p99_ms']:.1f} ms  max {lag['max_ms']:.1f} ms  ({lag['n']} probes)")
        if key:
            print(f"  key→action p50 {key['p50_ms']:.1f} ms  p95 {key['p95_ms']:.1f} ms  "
                  f"max {key['max_ms']:.1f} ms  ({key['n']} keys)")
        print(f"  UI thread  {result['ui_thread_cpu_share']:.0%} of a core;  "
              f"{result['rows_rendered']:,} row lines rendered;  "
              f"{result['full_gc']['count']} full GCs (longest "
              f"{result['full_gc']['max_ms']:.0f} ms)")
        load = os.getloadavg()[0]
        print(f"  machine    load average {load:.2f} on {os.cpu_count()} CPUs (the lag is "
              "wall time: other processes' load shows in it)")
    ok = result["lag"]["p95_ms"] <= 50 and result["received"] >= result["sent"]
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    raise SystemExit(main())
