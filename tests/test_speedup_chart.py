"""The speedup-against-workers chart: one line per kind of work a suite scales, measured
against its 1-worker row; the picture and its text."""

from __future__ import annotations

import pytest

from mqlab.experiments import load, parse
from mqlab.figures import speedup_chart
from mqlab.figures.report import render_markdown
from mqlab.figures.results import SuiteResult
from tests.results_data import serial_run, suite_result


def _scaling(makespans: dict[str, float]) -> SuiteResult:
    suite = load("scaling")
    return suite_result(
        suite, [[serial_run(row, makespans[row.name], [3.0] * row.orders)] for row in suite.rows]
    )


def test_each_kind_of_work_is_a_line_measured_against_its_one_worker_row() -> None:
    suite = load("scaling")
    # Sleep-bound: halves with each doubling; CPU-bound: stops at 2 (the cores).
    times = {}
    for row in suite.rows:
        if row.spec.work == "sleep":
            times[row.name] = 20.0 / row.workers
        else:
            times[row.name] = 20.0 / min(row.workers, 2)
    result = _scaling(times)
    lines = {line.label: dict(line.points) for line in speedup_chart.lines(result)}
    assert set(lines) == {"sleep 0.5 s", "cpu 0.5 s"}
    assert lines["sleep 0.5 s"] == {1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0, 16: 16.0}
    assert lines["cpu 0.5 s"] == {1: 1.0, 2: 2.0, 4: 2.0, 8: 2.0, 16: 2.0}
    text = speedup_chart.text(result)
    assert text[0].split() == ["workers/slots", "1", "2", "4", "8", "16"]
    assert text[-1].split() == ["cpu", "0.5", "s", "1.00x", "2.00x", "2.00x", "2.00x", "2.00x"]
    picture = speedup_chart.svg(result)
    assert picture is not None and picture.count("<polyline") == 2
    assert "ideal (W x)" in picture and "cpu 0.5 s: 16 workers, 2.00x" in picture


def test_a_suite_with_nothing_to_scale_draws_nothing() -> None:
    kata4 = load("kata4")
    result = suite_result(kata4, [[serial_run(row, 1.0, [3.0])] for row in kata4.rows])
    assert speedup_chart.lines(result) == []
    assert speedup_chart.svg(result) is None and speedup_chart.text(result) == []


def test_drain_rows_get_their_rate_and_a_line_named_for_how_they_take() -> None:
    suite = parse({
        "suite": {"name": "d", "job_seconds": 0},
        "row": [
            {"name": "drain 1", "orders": 1000, "workers": 1, "prefill": True},
            {"name": "drain 2", "orders": 1000, "workers": 2, "prefill": True},
            {"name": "drain 1, 1 by 1", "orders": 1000, "workers": 1, "prefill": True,
             "batch": 1},
        ],
    })  # fmt: skip
    times = (0.5, 0.4, 2.0)
    runs = [[serial_run(row, t, [3.0])] for row, t in zip(suite.rows, times, strict=True)]
    result = suite_result(suite, runs)
    md = render_markdown(result, ["a.svg", "b.svg", "c.svg"], {})
    assert "| drain 1 | 1 | 1000 | 0.500 s | 2,000 |" in md
    assert "| drain 1, 1 by 1 | 1 | 1000 | 2.000 s | 500 |" in md
    assert [line.label for line in speedup_chart.lines(result)] == ["drain, batches"]


def test_slots_of_one_process_are_a_line_of_their_own() -> None:
    suite = load("throughput")
    times = {r.name: 1.0 for r in suite.rows}
    times |= {"sleep, 1 slot": 10.0, "sleep, 4 slots": 3.0, "sleep, 10 slots": 1.0}
    times |= {"cpu, 1 slot": 2.5, "cpu, 4 slots": 2.5, "cpu, 10 slots": 2.5, "cpu, 2 workers": 1.25}
    runs = [[serial_run(row, times[row.name], [3.0])] for row in suite.rows]
    drawn = speedup_chart.lines(suite_result(suite, runs))
    lines = {line.label: dict(line.points) for line in drawn}
    assert lines["sleep 1 s, slots"] == {1: 1.0, 4: pytest.approx(10 / 3), 10: 10.0}
    assert lines["cpu 0.25 s, slots"] == {1: 1.0, 4: 1.0, 10: 1.0}
    assert lines["cpu 0.25 s"] == {1: 1.0, 2: 2.0}  # over processes
