"""Every statistic the reports and the lab show, computed in one place."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

#: The percentiles reported everywhere (report, JSON, TUI, bench).
PERCENTILES = (50, 95, 99)
#: The one shown where a single cell has room for one: the median.
HEADLINE = PERCENTILES[0]


def label(p: int) -> str:
    """The key of percentile p in summary() and its column title: label(95) == "p95"."""
    return f"p{p}"


def json_number(value: float | None) -> float | None:
    """A figure as the JSON reports hold it: NaN (nothing measured) is not JSON, so None."""
    return None if value is None or math.isnan(value) else value


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile with linear interpolation between closest ranks (numpy's default).

    percentile([1, 2, 3, 4], 50) == 2.5; an empty sequence gives NaN.
    """
    if not values:
        return math.nan
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, not {p}")
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """The PERCENTILES (keyed by label()), "max", "min" and "mean" of values times scale
    (e.g. 1000 for ms)."""
    if not values:
        return {}
    out = {label(p): percentile(values, p) * scale for p in PERCENTILES}
    out["max"] = max(values) * scale
    out["min"] = min(values) * scale
    out["mean"] = statistics.fmean(values) * scale
    return out


def samples_for(p: int) -> int:
    """The fewest values for which percentile p says more than the min or max does: p95 needs
    20 (one value in 20 above it), p99 100, p50 2. Below that, show min and max instead."""
    return math.ceil(100 / (100 - p))


def speedup(baseline_seconds: float, seconds: float) -> float:
    """How many times faster than the baseline (one worker)."""
    return baseline_seconds / seconds if seconds > 0 else math.nan


def most_speedup(orders: int, workers: int) -> float:
    """The most W workers can gain on N jobs of one length: they need ceil(N/W) rounds where
    one worker needs N (10 jobs on 4 workers: 3 rounds, 3.33x at most)."""
    return orders / math.ceil(orders / workers) if orders > 0 and workers > 0 else math.nan


def efficiency(speedup_value: float, workers: int) -> float:
    """Speedup per worker: 1.0 is perfect linear scaling."""
    return speedup_value / workers if workers > 0 else math.nan


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan
