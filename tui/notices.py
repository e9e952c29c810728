"""Which agent errors and warnings become toasts: a few per window of time, the rest summed.

Every error and warning is logged and counted (the log panel, the stats line); a toast is
only there to make the user look. So a flood of them (a local app that is down fails
every stolen request) must not become a flood of toasts, each a widget on the screen for
seconds. :class:`NoticeGate` lets at most ``per_window`` toasts through per window of
``window_s`` seconds of the clock it is given; what it holds back is counted and said in
one summary toast once that window is over (at the next notice, or at the next ``tick``:
the app ticks it every second).

Windows are measured on the app's clock, passed in on every call, and never on how the
events happened to be batched: the same notices give the same toasts however they were
split, and tests decide what time it is.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

# Toasts shown per window; the notices beyond them are summed up when the window ends.
PER_WINDOW = 2
WINDOW_S = 5.0

Severity = Literal["information", "warning", "error"]


@dataclass(frozen=True)
class Toast:
    """One notification to show."""

    message: str
    title: str
    severity: Severity


class NoticeGate:
    """At most ``per_window`` toasts per ``window_s`` seconds, then one summary."""

    def __init__(self, per_window: int = PER_WINDOW, window_s: float = WINDOW_S) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._opened: float | None = None  # when the current window began
        self._shown = 0
        self._held: Counter[str] = Counter()

    @property
    def held(self) -> int:
        """Notices of the current window that got no toast of their own (yet)."""
        return sum(self._held.values())

    def offer(self, level: str, message: str, now: float) -> list[Toast]:
        """A notice (``level`` "error" or "warning") at ``now``: the toasts to show."""
        toasts = self.tick(now)
        if self._opened is None:
            self._opened = now
        if self._shown < self.per_window:
            self._shown += 1
            toasts.append(Toast(message, f"agent {level}",
                                "error" if level == "error" else "warning"))
        else:
            self._held[level] += 1
        return toasts

    def tick(self, now: float) -> list[Toast]:
        """The summary of what the window held back, once it is over (else nothing)."""
        if self._opened is None or now - self._opened < self.window_s:
            return []
        held, self._held = self._held, Counter()
        self._opened, self._shown = None, 0
        if not held:
            return []
        parts = [f"{n:,} more {level}{'s' if n > 1 else ''}"
                 for level, n in sorted(held.items())]
        return [Toast(" and ".join(parts) + ": see the log (l)", "agent notices",
                      "error" if held["error"] else "warning")]
