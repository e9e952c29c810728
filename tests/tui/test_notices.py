"""Which agent notices become toasts: a few per window of the app's clock, then a sum."""

from __future__ import annotations

from waylay.tui.notices import NoticeGate, Toast


def messages(toasts: list[Toast]) -> list[str]:
    return [t.message for t in toasts]


def test_a_window_lets_a_few_through_and_sums_up_the_rest_when_it_ends() -> None:
    """Two toasts per window; the others are counted and summed once the window is over."""
    gate = NoticeGate(per_window=2, window_s=5.0)
    shown = [t for i in range(10) for t in gate.offer("error", f"e{i}", 100.0 + i * 0.1)]
    shown += gate.offer("warning", "w", 101.0)
    assert messages(shown) == ["e0", "e1"]
    assert [t.severity for t in shown] == ["error", "error"]
    assert [t.title for t in shown] == ["agent error", "agent error"]
    assert gate.held == 9
    assert gate.tick(104.9) == []  # the window (opened at 100.0) is not over
    summary = gate.tick(105.0)
    assert messages(summary) == ["8 more errors and 1 more warning: see the log (l)"]
    assert summary[0].severity == "error"
    assert gate.held == 0 and gate.tick(200.0) == []  # said once


def test_the_next_notice_after_a_window_gets_the_sum_and_its_own_toast() -> None:
    """Without a tick, the notice after the window brings the sum, then opens a new one."""
    gate = NoticeGate(per_window=1, window_s=5.0)
    assert messages(gate.offer("warning", "a", 0.0)) == ["a"]
    assert gate.offer("warning", "b", 1.0) == []
    shown = gate.offer("warning", "c", 7.0)
    assert messages(shown) == ["1 more warning: see the log (l)", "c"]
    assert [t.severity for t in shown] == ["warning", "warning"]
    assert gate.offer("warning", "d", 8.0) == []  # "c" opened the window at 7.0


def test_a_quiet_window_needs_no_summary() -> None:
    """Notices within the budget: no summary at the end of their window."""
    gate = NoticeGate(per_window=3, window_s=1.0)
    shown = gate.offer("error", "x", 0.0) + gate.offer("warning", "y", 0.5)
    assert messages(shown) == ["x", "y"]
    assert gate.tick(10.0) == []


def test_batching_changes_nothing() -> None:
    """The same notices at the same times give the same toasts however they are split."""
    times = [0.0, 0.1, 0.2, 3.0, 5.5, 5.6, 5.7, 5.8, 12.0]

    def run(ticks: list[float]) -> list[str]:
        gate = NoticeGate(per_window=2, window_s=5.0)
        out: list[str] = []
        for i, t in enumerate(times):
            for tick in [x for x in ticks if times[i - 1] < x <= t] if i else []:
                out += messages(gate.tick(tick))
            out += messages(gate.offer("error", f"e{i}", t))
        return out + messages(gate.tick(100.0))

    assert run([]) == run([1.0, 2.0, 5.1, 11.0]) == [
        "e0", "e1", "2 more errors: see the log (l)", "e4", "e5",
        "2 more errors: see the log (l)", "e8"]
