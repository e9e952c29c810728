"""The stats line (requests/s stolen vs passed, as sparklines, and counters) and the log."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import RichLog, Sparkline, Static

from waylay.tui.rates import RateBuckets

# Lines the log panel keeps (RichLog drops the oldest beyond this).
LOG_LINES = 1_000


class StatsPanel(Horizontal):
    """STOLEN n/s ▁▂▅ · PASSED n/s ▁▁▂ · MIRRORED n/s · errors · warnings · dropped."""

    def compose(self) -> ComposeResult:
        yield Static("", id="rate-stolen", classes="rate-label")
        yield Sparkline([0.0], id="spark-stolen")
        yield Static("", id="rate-passed", classes="rate-label")
        yield Sparkline([0.0], id="spark-passed")
        yield Static("", id="rate-mirrored", classes="rate-label")
        yield Static("", id="counters")

    def on_mount(self) -> None:
        # Held, not queried: the panel is refreshed by a timer that may fire while the app
        # is already taking its widgets down.
        self._sparks = {v: self.query_one(f"#spark-{v}", Sparkline) for v in ("stolen", "passed")}
        self._labels = {v: self.query_one(f"#rate-{v}", Static)
                        for v in ("stolen", "passed", "mirrored")}
        self._counters = self.query_one("#counters", Static)

    def show(self, rates: RateBuckets, now: float, *, errors: int, warnings: int,
             total: int, dropped: int) -> None:
        if not self.is_mounted:
            return
        for verdict, spark in self._sparks.items():
            spark.data = rates.series(verdict, now)
        for verdict, widget in self._labels.items():
            label = Text(f"{verdict.upper()} {rates.rate(verdict, now):,.0f}/s ")
            label.stylize("bold", 0, len(verdict))
            # Fixed widths (app.tcss): no layout pass, which would re-render the screen.
            widget.update(label, layout=False)
        counters = Text()
        counters.append(f"errors {errors:,}", style="bold red" if errors else "dim")
        counters.append(" · ")
        counters.append(f"warnings {warnings:,}", style="bold yellow" if warnings else "dim")
        counters.append(f" · total {total:,}", style="dim")
        if dropped:
            counters.append(f" · dropped {dropped:,}", style="yellow")
        self._counters.update(counters, layout=False)


class LogPanel(RichLog):
    """Agent warnings and errors, session progress; newest at the bottom."""

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 id: str | None = None) -> None:
        super().__init__(id=id, max_lines=LOG_LINES, wrap=True, markup=False)
        self._clock = clock
        self.entries: deque[tuple[str, str]] = deque(maxlen=LOG_LINES)

    def add(self, level: str, message: str) -> None:
        self.entries.append((level, message))
        style = {"error": "bold red", "warning": "yellow", "info": "cyan"}.get(level, "")
        stamp = time.strftime("%H:%M:%S", time.localtime(self._clock()))
        self.write(Text.assemble((stamp, "dim"), " ", (f"{level:7}", style), " ", message))
