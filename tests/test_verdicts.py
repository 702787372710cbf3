"""The verdicts and the exit status of a run, from results built by hand (no servers)."""

from __future__ import annotations

import pytest

from mqlab.experiments import load
from mqlab.loadgen import Shot
from mqlab.results import JobTiming, RowResult, RunResult, SuiteResult


def run_of(
    row_index: int, makespan: float, latencies_ms: list[float], status: int = 202
) -> RunResult:
    row = load("kata3").rows[row_index]
    shots = [
        Shot(i, status, 1000.0, ms / 1000, i + 1, f"job-{i + 1}-1", None)
        for i, ms in enumerate(latencies_ms)
    ]
    jobs = [
        JobTiming(f"job-{i + 1}-1", i + 1, "w1", 1, 1000.0, 1000.0, 1000.0 + makespan, "completed")
        for i in range(row.orders)
    ]
    return RunResult(shots, jobs, 1000.0, 0.1, False, ["w1"])


def suite_result(
    makespans: list[float], latencies_ms: list[float], status: int = 202
) -> SuiteResult:
    suite = load("kata3")
    result = SuiteResult(suite, 1, 0.0)
    for index, (row, makespan) in enumerate(zip(suite.rows, makespans, strict=True)):
        lat = latencies_ms[: row.orders]
        result.rows.append(RowResult(row, [run_of(index, makespan, lat, status)]))
    result.compute()
    return result


ON_TIME = [2.01, 10.05, 6.04]
TEN_MS = [10.0] * 10


def test_a_slow_median_fails_nothing_a_slow_max_is_reported() -> None:
    # A burst whose median is 12 ms (the Node.js kata's figure) still answers "at once".
    result = suite_result(ON_TIME, [12.0] * 10)
    assert [r.verdict for r in result.rows] == ["ok", "ok", "ok"]
    assert result.api is not None and result.api.verdict == "ok"
    assert result.passed
    slow = suite_result(ON_TIME, [*TEN_MS[:9], 75.0])
    assert slow.api is not None and slow.api.verdict == "slow"
    assert "75.0 ms" in slow.api.reason and "under 50 ms" in slow.api.reason
    assert slow.passed, "a slow answer is reported, it does not fail the run"


def test_a_row_over_its_tolerance_or_a_refused_order_fails_the_run() -> None:
    late = suite_result([2.01, 10.2, 6.04], TEN_MS)
    assert [r.verdict for r in late.rows] == ["ok", "slow", "ok"]
    assert not late.passed
    refused = suite_result(ON_TIME, TEN_MS, status=503)
    assert refused.api is not None and refused.api.verdict == "fail"
    assert not refused.passed


@pytest.mark.parametrize(("job_seconds", "bar_ms"), [(2.0, 50.0), (0.02, 20.0)])
def test_the_api_bar_is_the_job_time_when_a_job_is_shorter(
    job_seconds: float, bar_ms: float
) -> None:
    assert load("kata3").with_job_seconds(job_seconds).api_bar_ms() == pytest.approx(bar_ms)
