"""Event-loop lag of the dashboard under a flood of request events (a benchmark, not a test).

    .venv/bin/python bench/tui_lag.py                    # 1,000 requests/s for 10 s
    .venv/bin/python bench/tui_lag.py --rate 5000 --duration 20 --editor

The real app (``waylay.tui.app.WaylayApp``, headless via ``App.run_test`` at 160x45) attaches
through the real session interface: a ``waylay.core.client.session.Session`` whose link is served by
``waylay.tui.fake_agent.FakeAgent`` from its own thread (as an agent runs in its own process),
sending flow records in the agent's batches (at most 200 records or 50 ms per frame). So
every event goes through the session's decoder and ``on_event`` into the dashboard's
client, its coalesced batches, the store, the table and the stats, exactly as with a real
agent. Requests are routed by the engine's filter (a header filter stealing some of them)
and carry captured headers and bodies.

The flood's records are made and routed *before* it starts: a real agent does that work in
a process of its own, while here it would share the dashboard's interpreter lock (at
5,000 requests/s making them took about two thirds of a core, which showed as the UI's
lag and kept the feeder from sending the rate asked for). During the flood a feeder
thread hands the due records to the fake agent every 50 ms by the wall clock, whatever
the UI's loop is doing; the fake agent's thread encodes and writes them (that, about a
tenth of a core at 5,000/s, is the one piece of the agent's work still in this process;
it is printed as "other threads").

While the flood runs, a probe sleeps 10 ms in a loop on the UI's event loop and records
how late it wakes up (the event-loop lag), and every 250 ms a key is posted whose effect
is visible in the state of the moment: with ``--keys nav`` (the default) Up while the
table follows the newest row (it stops following), End while it does not (it follows
again), nothing while the table has fewer than two rows (Up would have nowhere to go);
with ``--keys layout`` "l" shows or hides the log panel (a relayout of the screen). Two
times per key: key -> action, until the app's state shows the key's effect (polled every
millisecond), and key -> screen, until the screen was refreshed after it
(``call_after_refresh``). A key without effect within 2 s counts as 2 s and is counted
apart ("no effect"): with keys chosen by state, only a stalled UI does that.

Printed: what was sent and what became of it (received, dropped by the client and
counted, evicted from the full buffer and counted, lost: never silently), the lag and key
percentiles, the UI thread's CPU share and the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual import events

from waylay.core.engine.config import parse_config
from waylay.tui.app import WaylayApp
from waylay.tui.fake_agent import FakeAgent, synthetic

CONFIG = ('{"feature": {"network": {"incoming": {"mode": "steal", '
          '"http_filter": {"header_filter": "^x-user: alice$"}}}}}')
PROBE_S = 0.010
KEY_EVERY_S = 0.25
KEY_TIMEOUT_S = 2.0
KEY_POLL_S = 0.001
# The agent's flow batching (agent/link.py): records leave at least every 50 ms.
FEED_TICK_S = 0.05
DRAIN_S = 10.0


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99),
            "max_ms": ordered[-1] * 1000, "mean_ms": statistics.fmean(ordered) * 1000,
            "n": len(ordered)}


class Feeder(threading.Thread):
    """Hands ``records`` to the fake agent at ``rate`` per second, every 50 ms, on a
    thread of its own: a stalled UI does not slow the flood down, as with a real agent."""

    def __init__(self, fake: FakeAgent, records: Sequence[Any], rate: float) -> None:
        super().__init__(name="bench-feeder", daemon=True)
        self.fake, self.records, self.rate = fake, records, rate
        self.sent = 0
        self.started = self.ended = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        self.started = time.monotonic()
        total = len(self.records)
        tick = 0
        while self.sent < total and not self.stop.is_set():
            tick += 1
            # What the agent would have batched by the end of this tick.
            due = min(total, round(self.rate * tick * FEED_TICK_S))
            if due > self.sent:
                self.fake.send_records(self.records[self.sent:due])
                self.sent = due
            self.stop.wait(max(0.0, self.started + tick * FEED_TICK_S - time.monotonic()))
        self.ended = time.monotonic()


def make_records(fake: FakeAgent, n: int) -> list[Any]:
    """The flood's flow records, routed by the live subscriptions (see the docstring)."""
    return [fake.route(synthetic(i)) for i in range(n)]


async def key_probe(app: WaylayApp, keys_mode: str, running: Callable[[], bool],
                    action: list[float], screen: list[float], counts: dict[str, int]) -> None:
    """Every 250 ms a key with a visible effect in the current state (module docstring)."""
    loop = asyncio.get_running_loop()

    def state() -> bool:
        return bool(app.log_panel.display) if keys_mode == "layout" else app.table.follow

    while running():
        await asyncio.sleep(KEY_EVERY_S)
        if keys_mode == "layout":
            key, char = "l", "l"
        elif len(app.view) < 2:
            counts["skipped"] += 1  # Up has no row to move to: no effect to wait for
            continue
        else:
            key, char = ("up" if app.table.follow else "end"), None
        before = state()
        start = loop.time()
        app.post_message(events.Key(key, char))
        while state() == before and loop.time() - start < KEY_TIMEOUT_S:
            await asyncio.sleep(KEY_POLL_S)
        if state() == before:
            counts["no_effect"] += 1
            action.append(KEY_TIMEOUT_S)
            screen.append(KEY_TIMEOUT_S)
            continue
        action.append(loop.time() - start)
        refreshed = asyncio.Event()
        app.call_after_refresh(refreshed.set)
        try:
            await asyncio.wait_for(refreshed.wait(), KEY_TIMEOUT_S)
            screen.append(loop.time() - start)
        except TimeoutError:
            screen.append(KEY_TIMEOUT_S)


async def measure(rate: float, duration: float, size: tuple[int, int],
                  editor: bool, keys_mode: str = "nav") -> dict[str, Any]:
    fake = FakeAgent(listening_ports=(80, 8080))
    app = WaylayApp(target="netns/bench", config=parse_config(CONFIG, fmt="json"),
                    attach_fn=fake.attach, targets_source=list, freeze_gc=True)
    lags: list[float] = []
    action: list[float] = []
    screen: list[float] = []
    counts = {"no_effect": 0, "skipped": 0}
    feeder: Feeder | None = None
    try:
        async with app.run_test(size=size) as pilot:
            deadline = time.monotonic() + 20
            while app.bar.link != "attached" or not app.bar.plans:
                if time.monotonic() > deadline:
                    raise SystemExit("the dashboard did not attach to the fake agent")
                await pilot.pause(0.05)
            total = round(rate * duration)
            print(f"making {total:,} flow records before the flood…", file=sys.stderr)
            records = await asyncio.to_thread(make_records, fake, total)
            # The bench's own records are no garbage to look for: keep the collector off
            # them (the app freezes its startup objects the same way).
            gc.collect()
            gc.freeze()
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
            load0 = os.getloadavg()[0]
            cpu0, proc0, wall0 = time.thread_time(), time.process_time(), time.monotonic()
            renders0 = app.table.renders
            tasks = [asyncio.create_task(probe())]
            if keys_mode != "none":
                tasks.append(asyncio.create_task(
                    key_probe(app, keys_mode, lambda: running, action, screen, counts)))
            feeder = Feeder(fake, records, rate)
            feeder.start()
            while feeder.is_alive():
                await asyncio.sleep(0.05)
            sent = feeder.sent
            drain_deadline = time.monotonic() + DRAIN_S
            while (app.store.received + app.client.overflow < sent
                   and time.monotonic() < drain_deadline):
                await asyncio.sleep(0.01)
            caught_up = time.monotonic() - feeder.ended
            wall = time.monotonic() - wall0
            cpu = time.thread_time() - cpu0
            proc = time.process_time() - proc0
            running = False
            gc.callbacks.remove(on_gc)
            await asyncio.gather(*tasks)
            received, overflow = app.store.received, app.client.overflow
            # What the user is told about drops: the table's border and the stats line.
            app._refresh_stats()
            shown = {"table": str(app.table.border_subtitle),
                     "stats": str(app.stats.query_one("#counters").render())}
            result = {
                "rate_per_s": rate, "duration_s": duration, "editor_open": editor,
                "keys": keys_mode,
                "sent": sent, "sent_rate_per_s": sent / max(1e-9, feeder.ended - feeder.started),
                "received": received, "rows": len(app.store),
                "dropped": app.store.dropped, "overflow": overflow,
                "lost": sent - received - overflow, "shown": shown,
                "caught_up_s": caught_up,
                "ui_thread_cpu_share": cpu / wall,
                "other_threads_cpu_share": max(0.0, proc - cpu) / wall,
                "rows_rendered": app.table.renders - renders0,
                "lag": percentiles(lags), "key_latency": percentiles(action),
                "key_to_screen": percentiles(screen),
                "keys_without_effect": counts["no_effect"],
                "keys_skipped": counts["skipped"],
                "full_gc": {"count": len(gc_pauses),
                            "max_ms": max(gc_pauses, default=0.0) * 1000},
                "load_average": {"start": load0, "end": os.getloadavg()[0],
                                 "cpus": os.cpu_count()},
            }
            await pilot.press("q")
    finally:
        if feeder is not None:
            feeder.stop.set()
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
                        help="a key every 250 ms meanwhile: nav (Up while the table follows the "
                        "newest row, else End; the default), layout (show / hide the log "
                        "panel) or none")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if lag p95 exceeds 50 ms or events were lost silently")
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    result = asyncio.run(measure(args.rate, args.duration, (width, height), args.editor,
                                 args.keys))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report(result, args.size))
    ok = result["lag"]["p95_ms"] <= 50 and result["lost"] <= 0
    return 1 if args.check and not ok else 0


def report(result: dict[str, Any], size: str) -> str:
    lag, key, screen = result["lag"], result["key_latency"], result["key_to_screen"]
    load = result["load_average"]
    lines = [
        f"waylay dashboard under {result['rate_per_s']:,.0f} requests/s for "
        f"{result['duration_s']:g} s ({size}, keys: {result['keys']}"
        f"{', filter editor open' if result['editor_open'] else ''})",
        f"  events     sent {result['sent']:,} ({result['sent_rate_per_s']:,.0f}/s)  "
        f"received {result['received']:,}  dropped by the client {result['overflow']:,} "
        f"(counted)  evicted {result['dropped']:,} (counted)  lost {result['lost']:,};  "
        f"all in {result['caught_up_s'] * 1000:.0f} ms after the last send",
        f"  shown      table \"{result['shown']['table']}\"; stats "
        f"\"{result['shown']['stats']}\"",
        f"  loop lag   p50 {lag['p50_ms']:.1f} ms  p95 {lag['p95_ms']:.1f} ms  "
        f"p99 {lag['p99_ms']:.1f} ms  max {lag['max_ms']:.1f} ms  ({lag['n']} probes)",
    ]
    if key:
        lines.append(
            f"  key→action p50 {key['p50_ms']:.1f} ms  p95 {key['p95_ms']:.1f} ms  "
            f"max {key['max_ms']:.1f} ms  ({key['n']} keys, "
            f"{result['keys_without_effect']} without effect in 2 s, "
            f"{result['keys_skipped']} not pressed: fewer than 2 rows)")
        lines.append(
            f"  key→screen p50 {screen['p50_ms']:.1f} ms  p95 {screen['p95_ms']:.1f} ms  "
            f"max {screen['max_ms']:.1f} ms  (until the screen was refreshed)")
    lines += [
        f"  UI thread  {result['ui_thread_cpu_share']:.0%} of a core (other threads: the fake "
        f"agent's encoding, {result['other_threads_cpu_share']:.0%});  "
        f"{result['rows_rendered']:,} row lines rendered;  {result['full_gc']['count']} "
        f"full GCs (longest {result['full_gc']['max_ms']:.0f} ms)",
        f"  machine    load average {load['start']:.2f} -> {load['end']:.2f} on "
        f"{load['cpus']} CPUs (the lag is wall time: other processes' load shows in it)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
