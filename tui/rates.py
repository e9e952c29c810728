"""Requests per second by verdict, over a sliding window of whole seconds (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

# Seconds of history the sparklines show; older buckets are dropped (bounded memory).
WINDOW_S = 60


class RateBuckets:
    """Counts of requests per (second, verdict), for the last ``window`` seconds."""

    def __init__(self, window: int = WINDOW_S) -> None:
        self.window = window
        self._buckets: dict[int, Counter[str]] = {}
        self._newest = 0

    def add(self, ts: float, verdict: str | None, n: int = 1) -> None:
        second = int(ts)
        if second <= self._newest - self.window:
            return  # older than the window: nothing shows it
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = Counter()
        bucket[verdict or "pending"] += n
        if second > self._newest:
            self._newest = second
            floor = second - self.window
            for old in [s for s in self._buckets if s <= floor]:
                del self._buckets[old]

    def add_all(self, samples: Iterable[tuple[float, str | None]]) -> None:
        """``add`` for each (timestamp, verdict) of a batch, counted per second first."""
        counts: Counter[tuple[int, str | None]] = Counter()
        for ts, verdict in samples:
            counts[int(ts), verdict] += 1
        for (second, verdict), n in counts.items():
            self.add(second, verdict, n)

    def series(self, verdict: str, now: float) -> list[float]:
        """Per-second counts for the window ending at ``now`` (oldest first)."""
        end = int(now)
        return [float(self._buckets.get(s, Counter())[verdict])
                for s in range(end - self.window + 1, end + 1)]

    def rate(self, verdict: str, now: float) -> float:
        """Requests in the last complete second."""
        return float(self._buckets.get(int(now) - 1, Counter())[verdict])

    def clear(self) -> None:
        self._buckets.clear()
