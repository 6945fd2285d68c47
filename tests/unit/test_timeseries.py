"""The dashboard's 15-minute per-second series (fluxgw.timeseries), on a fake clock."""

from __future__ import annotations

import pytest

from fluxgw.testing import FakeClock
from fluxgw.timeseries import RequestSeries


def test_counts_by_second_and_status_class() -> None:
    clock = FakeClock(1_000_000.0)
    series = RequestSeries(window_s=60, clock=clock)
    for status in (200, 201, 404, 429, 500, 302):
        series.observe(status, 0.002)
    clock.now += 1
    series.observe(200, 0.004)
    clock.now += 1
    points = series.points()
    assert len(points) == 59
    last, before = points[-1], points[-2]
    assert last["t"] == 1_000_001 and last["count"] == 1 and last["c2xx"] == 1
    assert before["count"] == 6
    assert (before["c2xx"], before["c3xx"], before["c4xx"], before["c5xx"]) == (2, 1, 2, 1)
    assert before["c429"] == 1
    assert points[0]["count"] == 0 and points[0]["p50_ms"] is None
    assert series.totals()["count"] == 7


def test_latency_percentiles_are_within_a_bucket() -> None:
    clock = FakeClock(1_000_000.0)
    series = RequestSeries(window_s=60, clock=clock)
    for ms in range(1, 101):  # 1..100 ms
        series.observe(200, ms / 1000)
    totals = series.totals()
    assert totals["p50_ms"] == pytest.approx(50, rel=0.25)
    assert totals["p95_ms"] == pytest.approx(95, rel=0.25)
    assert totals["p50_ms"] < totals["p95_ms"]


def test_old_seconds_leave_the_window() -> None:
    clock = FakeClock(1_000_000.0)
    series = RequestSeries(window_s=60, clock=clock)
    series.observe(200, 0.001)
    clock.now += 30
    assert series.totals()["count"] == 1
    clock.now += 60  # the slot is reused by a later second: the old count is gone
    series.observe(500, 0.001)
    assert series.totals() == {**series.totals(), "count": 1, "c2xx": 0, "c5xx": 1}
    assert sum(p["count"] for p in series.points()) == 0  # the current second is not shown yet
