"""The report's timelines draw attempts: a failure and its backoff, the retry, a crash with
the lab's kill, a dead end. Built from fixed data, as the runner records it."""

from __future__ import annotations

import pytest

from mqlab import timeline
from mqlab.ledger import Attempt
from mqlab.results import JobTiming, RunResult
from tests.results_data import T0


def run_with_failures() -> RunResult:
    jobs = [
        JobTiming("job-1", 1, "w2", 2, T0, T0 + 0.35, T0 + 0.45, "completed"),
        JobTiming("job-2", 2, "w1", 2, T0, T0 + 0.5, T0 + 0.6, "dead"),
    ]
    history = [
        Attempt("job-1", 1, "w1", T0 + 0.0, T0 + 0.1, "failed", "x", T0 + 0.3),
        Attempt("job-2", 1, "w2", T0 + 0.05, T0 + 0.5, "crashed", None, None),
        Attempt("job-1", 2, "w2", T0 + 0.35, T0 + 0.45, "completed", None, None),
        Attempt("job-2", 2, "w1", T0 + 0.5, T0 + 0.6, "failed", "x", None),
    ]
    return RunResult([], jobs, T0, 0.1, False, ["w1", "w2"], history=history,
                     kills=[(T0 + 0.2, "w2")])  # fmt: skip


def test_the_text_timeline_marks_each_attempt_that_did_not_complete() -> None:
    lines = timeline.text(run_with_failures(), width=20).splitlines()
    assert lines[0].startswith("  w1 |") and lines[1].startswith("  w2 |")
    assert lines[0].endswith("#1 0.00-0.10s ✗, #2 0.50-0.60s †")
    # The crashed attempt ends at the kill, not when the next delivery found it (0.50 s).
    crash = f"#2 0.05-0.20s {timeline.CRASHED}"
    assert lines[1].endswith(f"{crash}, #1 0.35-0.45s, kill -9 at 0.20s")
    assert "▒" in lines[0] and "█" in lines[1]


def test_the_svg_draws_the_marks_the_backoff_and_the_kill() -> None:
    picture = timeline.svg(run_with_failures(), "faults")
    for mark in ("✗", "†", timeline.CRASHED):
        assert f'font-weight="bold">{mark}</text>' in picture
    assert 'stroke-dasharray="2,3"><title>backoff: due 0.200s after the failure' in picture
    assert "<title>kill -9 w2 at 0.200s</title>" in picture


def test_a_run_without_history_draws_its_jobs_as_before() -> None:
    run = run_with_failures()
    plain = RunResult([], run.jobs, T0, 0.1, False, ["w1", "w2"])
    lines = timeline.text(plain, width=20).splitlines()
    assert lines[0].endswith("#2 0.50-0.60s") and lines[1].endswith("#1 0.35-0.45s")


def test_a_crowded_run_draws_only_the_waits_of_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hundreds of orders queued at once would paint every lane pale from the start: above
    WAITS_SHOWN bars, only a retry's wait (from its due time) is drawn."""
    run = run_with_failures()
    assert timeline.svg(run, "t").count('opacity="0.3"/>') == 4
    monkeypatch.setattr(timeline, "WAITS_SHOWN", 2)
    assert timeline.svg(run, "t").count('opacity="0.3"/>') == 1  # job 1's retry
