"""Every verdict and the exit status of a run, from results built by hand (no servers)."""

from __future__ import annotations

import pytest

from mqlab.experiments import load, parse
from mqlab.figures.results import SuiteResult, Verdict
from tests.results_data import kata, row_result, serial_run, suite_result

ON_TIME = [2.01, 10.05, 6.04]  # within 2.02, 10.07 and 6.06 s
TEN_MS = [10.0] * 10


def verdicts(result: SuiteResult) -> list[Verdict | None]:
    return [r.verdict for r in result.rows]


def test_rows_within_their_tolerance_are_ok_and_the_run_passes() -> None:
    result = kata(ON_TIME, TEN_MS)
    assert verdicts(result) == [Verdict.OK] * 3
    assert result.rows[1].reason == "within 0.07 s of the expected 10 s"
    assert result.api is not None and result.api.verdict is Verdict.OK
    assert result.api.reason == "all 16 orders answered 202; p50 10.0 ms, max 10.0 ms"
    assert result.passed and result.failures() == []


def test_a_row_over_its_tolerance_is_slow_and_fails_the_run() -> None:
    late = kata([2.01, 10.2, 6.04], TEN_MS)
    assert verdicts(late) == [Verdict.OK, Verdict.SLOW, Verdict.OK]
    reason = "median 10.200 s is 0.200 s over the expected 10 s (tolerance 0.07 s)"
    assert late.rows[1].reason == reason
    assert not late.passed
    assert late.failures() == [f"5 órdenes, 1 worker: slow: {reason}"]


@pytest.mark.parametrize(
    ("run_kwargs", "reason"),
    [
        ({"status": 503}, "not every order got 202: {503: 5}"),
        ({"completed": 3}, "3 of 5 jobs completed"),
        ({"timed_out": True}, "timed out waiting for the last job"),
    ],
)
def test_a_refused_lost_or_late_order_fails_its_row(run_kwargs: dict, reason: str) -> None:
    row = load("kata3").rows[1]
    # On time, yet failed: a missing order outweighs any makespan.
    result = row_result(row, serial_run(row, 10.0, [5.0] * 5, **run_kwargs))
    assert result.verdict is Verdict.FAIL
    assert result.reason == reason
    assert not Verdict.FAIL.passes


def test_a_row_without_an_expected_time_is_measured_and_passes() -> None:
    suite = parse({"row": [{"name": "free", "orders": 2, "workers": 1, "job_seconds": 1.0}]})
    result = suite_result(suite, [[serial_run(suite.rows[0], 99.0, [1.0, 1.0])]])
    assert verdicts(result) == [Verdict.MEASURED]
    assert result.rows[0].reason == "no expected time: measured, not judged"
    assert result.passed


def test_a_slow_answer_is_reported_and_fails_nothing() -> None:
    # A burst whose median is 12 ms (the Node.js kata's figure) still answers "at once".
    typical = kata(ON_TIME, [12.0] * 10)
    assert typical.api is not None and typical.api.verdict is Verdict.OK
    slow = kata(ON_TIME, [*TEN_MS[:9], 75.0])
    assert slow.api is not None and slow.api.verdict is Verdict.SLOW
    assert slow.api.reason == (
        "the slowest answer took 75.0 ms; expected under 50 ms (p50 10.0 ms)"
    )
    assert slow.passed, "a slow answer is reported, it does not fail the run"
    assert slow.failures() == [f"API: slow: {slow.api.reason}"]


def test_the_bar_itself_is_slow() -> None:
    at_bar = kata(ON_TIME, [*TEN_MS[:9], 50.0])
    assert at_bar.api is not None and at_bar.api.verdict is Verdict.SLOW


def test_a_refused_order_fails_the_api_and_the_run() -> None:
    refused = kata(ON_TIME, TEN_MS, status=503)
    assert refused.api is not None and refused.api.verdict is Verdict.FAIL
    assert refused.api.reason == "not every order got 202: {'503': 16}"
    assert verdicts(refused) == [Verdict.FAIL] * 3
    assert not refused.passed


def test_no_request_at_all_fails_the_api() -> None:
    suite = load("kata3")
    result = suite_result(suite, [[serial_run(row, 1.0, [])] for row in suite.rows])
    assert result.api is not None and result.api.verdict is Verdict.FAIL
    assert result.api.reason == "no request was sent"
    assert not result.passed


def test_a_suite_not_yet_computed_has_not_passed() -> None:
    result = SuiteResult(load("kata3"), 1, 0.0)
    assert result.api is None and not result.passed


def test_each_verdict_has_its_own_style() -> None:
    styles = {v: v.style for v in Verdict}
    assert len(set(styles.values())) == len(Verdict)
    assert "red" in Verdict.FAIL.style and "yellow" in Verdict.SLOW.style
    # A skipped row (a server the lab may not stop) is said, not failed.
    assert [v for v in Verdict if v.passes] == [Verdict.OK, Verdict.MEASURED, Verdict.SKIPPED]


@pytest.mark.parametrize(("job_seconds", "bar_ms"), [(2.0, 50.0), (0.02, 20.0)])
def test_the_api_bar_is_the_job_time_when_a_job_is_shorter(
    job_seconds: float, bar_ms: float
) -> None:
    assert load("kata3").with_job_seconds(job_seconds).api_bar_ms() == pytest.approx(bar_ms)
