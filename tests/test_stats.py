"""Statistics against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from mqlab.experiments import ideal_seconds
from mqlab.figures.stats import (
    HEADLINE,
    PERCENTILES,
    efficiency,
    label,
    median,
    percentile,
    speedup,
    summary,
)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([4, 1, 3, 2], 0) == 1
    assert percentile([4, 1, 3, 2], 100) == 4
    # rank = 0.95 * 9 = 8.55 -> 9 + 0.55 * (10 - 9)
    assert percentile(list(range(1, 11)), 95) == pytest.approx(9.55)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_scales_to_milliseconds() -> None:
    s = summary([0.001, 0.002, 0.003, 0.004, 0.010], scale=1000)
    assert s["p50"] == pytest.approx(3.0)
    # rank = 0.99 * 4 = 3.96 -> 4 + 0.96 * 6
    assert s["p99"] == pytest.approx(9.76)
    assert s["max"] == pytest.approx(10.0)
    assert s["min"] == pytest.approx(1.0)
    assert s["mean"] == pytest.approx(4.0)
    assert summary([]) == {}


def test_summary_is_keyed_by_the_one_percentile_list() -> None:
    assert set(summary([1.0, 2.0])) == {*map(label, PERCENTILES), "max", "min", "mean"}
    assert label(HEADLINE) == "p50"  # a single cell shows the median


def test_ideal_is_waves_of_job_time() -> None:
    assert ideal_seconds(1, 1, 2.0) == 2.0
    assert ideal_seconds(5, 1, 2.0) == 10.0
    assert ideal_seconds(10, 4, 2.0) == 6.0  # 3 waves: 4 + 4 + 2
    assert ideal_seconds(40, 16, 0.5) == 1.5
    assert ideal_seconds(0, 3, 2.0) == 0.0
    with pytest.raises(ValueError):
        ideal_seconds(3, 0, 1.0)


def test_speedup_and_efficiency() -> None:
    assert speedup(20.0, 5.0) == 4.0
    assert efficiency(4.0, 4) == 1.0
    assert efficiency(speedup(20.0, 10.0), 4) == 0.5
    assert math.isnan(speedup(1.0, 0.0))
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0, 3.0, 10.0]) == 2.5
