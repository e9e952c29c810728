"""Requests per second, and the table's cell texts and column layout."""

from __future__ import annotations

from tests.tui.events import mirrored, request, started
from waylay.core.engine.flow import Verdict
from waylay.tui.cells import cell_style, cell_text, fit, fmt_duration, fmt_size, layout
from waylay.tui.rates import RateBuckets


def test_rates_per_second_over_a_bounded_window() -> None:
    rates = RateBuckets(window=5)
    for i in range(30):
        rates.add(100.0 + i / 10, "stolen")
    rates.add(102.5, "passed")
    assert rates.series("stolen", 102.9) == [0, 0, 10, 10, 10]
    assert rates.rate("stolen", 102.9) == 10
    assert rates.series("passed", 102.9) == [0, 0, 0, 0, 1]
    rates.add(200.0, "stolen")
    rates.add(100.0, "stolen")  # older than the window: ignored
    assert len(rates._buckets) == 1


def test_cells_fit_their_width() -> None:
    assert fit("abcdef", 4) == "abc…"
    assert fit("ab", 4, right=True) == "  ab"
    assert fit("ünï\x00", 3) == "ün…"
    assert fmt_duration(0.25) == "250 µs" and fmt_duration(12.34) == "12.3 ms"
    assert fmt_duration(2500) == "2.50 s" and fmt_size(512) == "512 B"
    assert fmt_size(2048) == "2.0 KiB"
    event = request(1, protocol="tcp", method=None, path=None, authority=None, port=7000,
                    verdict=Verdict.STOLEN)
    assert cell_text("verdict", event) == "STOLEN" and cell_text("method", event) == "TCP"
    assert cell_text("host", event) == ":7000" and cell_text("protocol", event) == "tcp"
    assert cell_text("host", request(2, pod="web-a")) == "web-a · shop.local"


def test_layout_fills_the_width_and_drops_columns_when_narrow() -> None:
    for width in (80, 120, 160, 240):
        cols = layout(width)
        assert sum(c.width + 1 for c in cols) - 1 == width
    assert "matched" not in [c.name for c in layout(80)]
    assert "matched" in [c.name for c in layout(160)]


def test_a_request_in_flight_shows_an_ellipsis_for_its_status() -> None:
    """A "started" row has no status yet: "…"; a finished one without status stays blank."""
    assert cell_text("status", started(1)) == "…"
    assert cell_text("duration", started(1)) == "" and cell_text("matched", started(1)) == ""
    assert cell_text("status", request(1, verdict=Verdict.STOLEN, status=None)) == ""
    assert cell_text("status", request(1, verdict=Verdict.STOLEN, status=504)) == "504"


def test_a_mirrored_status_shows_the_remote_then_a_different_local_answer() -> None:
    """Mirrored: the remote's status, then the local app's when it differs ("err" for an
    error), flagged with the error style."""
    same = request(1, verdict=Verdict.MIRRORED, status=200, mirror=mirrored(200))
    other = request(2, verdict=Verdict.MIRRORED, status=500, mirror=mirrored(200))
    failed = request(3, verdict=Verdict.MIRRORED, status=None,
                     mirror=mirrored(200, error="refused"))
    assert [cell_text("status", e) for e in (same, other, failed)] == [
        "200", "200→500", "200→err"]
    assert [cell_style("status", e) for e in (same, other, failed)] == [
        None, "status-error", "status-error"]
    assert cell_style("status", request(4, status=404)) == "status-warning"
    assert cell_style("verdict", same) == "mirrored"


def test_a_batch_of_rates_counts_as_its_requests_one_by_one() -> None:
    """add_all (a batch, counted per second first) ends as add called for each."""
    samples = [(100.0 + i / 7, "stolen" if i % 3 else "passed") for i in range(40)]
    samples += [(99.5, None), (50.0, "stolen")]  # in flight; older than the window
    one, batch = RateBuckets(window=5), RateBuckets(window=5)
    for ts, verdict in samples:
        one.add(ts, verdict)
    batch.add_all(samples)
    for verdict in ("stolen", "passed", "pending"):
        assert batch.series(verdict, 105.0) == one.series(verdict, 105.0)
