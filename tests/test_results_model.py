"""The results model on fixed data (no servers): the overhead breakdown, the table's cells,
and how the markdown report and run-experiment's terminal table lay them out."""

from __future__ import annotations

import io
import math

import orjson
import pytest
from rich.console import Console

from mqlab.experiments import load
from mqlab.faces.experiment_cli import ProgressLine, summary_table
from mqlab.figures.ledger import Attempt
from mqlab.figures.progress import Progress
from mqlab.figures.report import render_markdown, to_json
from mqlab.figures.results import SuiteResult, Verdict
from mqlab.figures.results_table import api_planned, ms, planned, row_cells, table
from mqlab.figures.stats import PERCENTILES, label
from tests.results_data import T0, kata, row_result, serial_run, suite_result, waves_run


def test_the_overhead_breakdown_adds_up_on_the_last_lane() -> None:
    row = load("kata3").rows[2]  # 10 orders, 4 workers: w1 and w2 run three jobs each
    run = waves_run(row, last_overrun=0.005)  # job 10, on w2, finishes last
    b = run.breakdown(row.spec.job_seconds)
    assert b is not None
    assert b.jobs == 3
    assert b.to_first_start == pytest.approx(0.012)
    assert b.job_overrun == pytest.approx(0.001 + 0.001 + 0.005)
    assert b.gaps == pytest.approx(2 * 0.003)
    # The parts are the lane's makespan beyond its three jobs' nominal time.
    assert b.total == pytest.approx(run.makespan - 3 * row.spec.job_seconds)
    assert run.makespan == pytest.approx(6.025)


def test_no_finished_job_no_breakdown() -> None:
    row = load("kata3").rows[0]
    assert serial_run(row, 2.0, [1.0], completed=0).breakdown(row.spec.job_seconds) is None


def test_a_rows_cells() -> None:
    suite = load("kata3")
    row = suite.rows[1]
    result = suite_result(
        suite,
        [
            [serial_run(suite.rows[0], 2.013, [3.0])],
            [serial_run(row, 10.04, [3.0] * 5), serial_run(row, 10.06, [3.0] * 5)],
            [serial_run(suite.rows[2], 6.1, [3.0] * 9 + [75.0])],
        ],
    )
    cells = table(result)
    five = cells[1]
    assert (five.name, five.expected, five.ideal) == ("5 órdenes, 1 worker", "10 s", "10 s")
    assert (five.measured, five.spread) == ("10.050 s", "10.040 s - 10.060 s")
    assert (five.overhead, five.share) == ("+50 ms", "+0.5%")
    assert five.verdict is Verdict.OK and five.style == Verdict.OK.style
    assert cells[2].verdict is Verdict.SLOW and cells[2].overhead == "+100 ms"
    api = cells[3]
    assert (api.name, api.expected, api.ideal) == ("API responds (202)", "< 50 ms", "-")
    assert (api.measured, api.spread, api.overhead) == ("max 75 ms", "21 x 202 of 21", "p50 3.0 ms")
    assert api.verdict is Verdict.SLOW and api.style == Verdict.SLOW.style
    assert api.reason == result.api.reason if result.api else False


def test_cells_before_a_run_show_what_is_expected() -> None:
    suite = load("kata3").with_job_seconds(0.1)
    first = planned(suite.rows[2])
    assert (first.expected, first.ideal, first.measured, first.verdict) == (
        "0.3 s",
        "0.3 s",
        "",
        None,
    )
    assert first.verdict is None and first.style == "" and first.verdict_text == ""
    assert api_planned(suite).expected == "< 50 ms"
    assert api_planned(load("kata3").with_job_seconds(0.02)).expected == "< 20 ms"


@pytest.mark.parametrize(
    ("value", "text"),
    [(2.04, "2.0 ms"), (9.94, "9.9 ms"), (75.2, "75 ms"), (123.4, "123 ms"), (-3.0, "-3.0 ms"),
     (math.nan, "-"), (None, "-")],
)  # fmt: skip
def test_milliseconds_keep_three_digits(value: float | None, text: str) -> None:
    assert ms(value) == text


def fixed_suite() -> SuiteResult:
    """kata3 with the second row run twice, the third late, one slow answer."""
    suite = load("kata3")
    rows = suite.rows
    return suite_result(
        suite,
        [
            [serial_run(rows[0], 2.013, [3.0])],
            [serial_run(rows[1], 10.04, [3.0] * 5), serial_run(rows[1], 10.06, [3.0] * 5)],
            [waves_run(rows[2], last_overrun=0.081)],
        ],
    )


def test_the_markdown_lays_out_the_table_rows() -> None:
    md = render_markdown(fixed_suite(), ["a.svg", "b.svg", "c.svg"], {"cores": 2})
    lines = md.splitlines()
    start = lines.index("## The kata's table") + 2
    assert lines[start : start + 7] == [
        "| Experiment | Expected | Ideal | Measured | min - max | Overhead | Verdict |",
        "|---|---|---|---|---|---|---|",
        "| 1 orden, 1 worker | 2 s | 2 s | **2.013 s** | 2.013 s - 2.013 s | +13 ms (+0.7%) | ok |",
        "| 5 órdenes, 1 worker | 10 s | 10 s | **10.050 s** | 10.040 s - 10.060 s | +50 ms (+0.5%) "
        "| ok |",
        "| 10 órdenes, 4 workers | 6 s | 6 s | **6.101 s** | 6.101 s - 6.101 s | +101 ms (+1.7%) "
        "| slow |",
        "| API responds (202) | < 50 ms | - | **max 3.0 ms** | 21 x 202 of 21 | p50 3.0 ms | ok |",
        "",
    ]
    assert "**Verdict: FAIL**" in lines
    assert lines[lines.index("**Verdict: FAIL**") + 2].startswith("- 10 órdenes, 4 workers: slow:")
    # The latency tables have a column per percentile of stats.PERCENTILES, between min and
    # max; one of fewer values than it needs is '-' (10 answers: a median, no p95 or p99).
    assert "| Row | n | min | " + " | ".join(label(p) for p in PERCENTILES) + " | max |" in lines
    assert "| 5 órdenes, 1 worker | 10 | 3.0 ms | 3.0 ms | - | - | 3.0 ms |" in lines
    assert "| 1 orden, 1 worker | 1 | 3.0 ms | - | - | - | 3.0 ms |" in lines
    # The overhead breakdown of the late row: 12 ms to the first start, 1 + 1 + 81 ms over
    # T on w2's three jobs, two gaps of 3 ms; the workers took 0.5 s to start.
    assert "| 10 órdenes, 4 workers | 3 | 12 ms | 83 ms | 6.0 ms | 0.500 s |" in lines


def test_scaling_says_what_each_speedup_is_against_and_the_most_it_could_be() -> None:
    """It compared the 1-worker rows with themselves (1.00x, 100 %) and gave row 3 83 %
    without saying that 10 jobs on 4 workers take 3 rounds (3.33x at most)."""
    lines = render_markdown(fixed_suite(), ["a.svg", "b.svg", "c.svg"], {}).splitlines()
    top = lines.index("## Scaling") + 2
    assert lines[top].startswith("| Row | Workers | Makespan | Speedup | Most possible |")
    assert lines[top + 2] == (
        "| 1 orden, 1 worker | 1 | 2.013 s | - | - | - | - | (one worker: a baseline) |"
    )
    assert lines[top + 4].startswith(
        "| 10 órdenes, 4 workers | 4 | 6.101 s | 3.28x | 3.33x (10 jobs in 3 rounds) | 98% | 82% "
        "| ideal serial time (N x T)"
    )
    assert "N / ceil(N/W) at most" in lines[top + 6]


def test_a_kata4_report_has_no_scaling_table_and_its_pass_words_name_ledgers() -> None:
    from mqlab.figures.results import pass_words

    suite = load("kata4")
    result = SuiteResult(suite, 1, started_at=T0)
    assert "## Scaling" not in render_markdown(result, [], {})
    assert pass_words(fixed_suite().rows) == (
        "every row within its tolerance, every order answered as expected"
    )
    assert "ledger" not in pass_words(fixed_suite().rows)
    kata4 = [row_result(row) for row in suite.rows]
    assert pass_words(kata4).startswith("every row's ledger as the row expects")


def test_the_json_carries_the_same_verdicts() -> None:
    result = fixed_suite()
    data = orjson.loads(orjson.dumps(to_json(result, {}, "test")))
    assert [r["verdict"] for r in data["rows"]] == ["ok", "ok", "slow"]
    assert data["api"]["verdict"] == "ok" and not data["passed"]
    assert set(data["api"]["latencyMs"]) >= {label(p) for p in PERCENTILES}
    assert data["rows"][2]["mostSpeedup"] == pytest.approx(10 / 3)


def terminal_lines(result: SuiteResult, width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(summary_table(result))
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue().splitlines()


@pytest.mark.parametrize("width", [80, 120])
def test_the_terminal_table_has_one_line_per_row_within_80_columns(width: int) -> None:
    result = fixed_suite()
    lines = terminal_lines(result, width)
    assert max(len(line) for line in lines) <= 80
    # The title, the header, its rule, then exactly one line per row.
    assert lines[0].startswith("Kata 3")
    body = lines[3:]
    assert len(body) == len(result.rows) + 1
    for line, t in zip(body, table(result), strict=True):
        cells = (t.name, t.expected, t.ideal, t.measured, t.overhead, t.verdict_text)
        assert line.split() == " ".join(cells).split()


def test_the_terminal_table_colours_each_verdict_with_its_style() -> None:
    result = kata([2.01, 10.2, 6.04], [10.0] * 9 + [75.0], status=202)
    console = Console(width=80)
    segments = console.render(summary_table(result))
    styles = {seg.text.strip(): seg.style for seg in segments if seg.text.strip()}
    assert str(styles["slow"]) == Verdict.SLOW.style
    assert str(styles["ok"]) == Verdict.OK.style


def test_a_row_with_no_finished_job_still_fits() -> None:
    suite = load("kata3")
    runs = [[serial_run(r, 2.0, [1.0] * r.orders)] for r in suite.rows[:2]]
    runs.append([serial_run(suite.rows[2], 6.0, [1.0] * 10, completed=0)])
    lines = terminal_lines(suite_result(suite, runs), 80)
    assert len(lines) == 3 + 4 and max(map(len, lines)) <= 80
    assert lines[5].split()[-3:] == ["-", "-", "fail"]


@pytest.mark.parametrize("runs", [1, 3])
@pytest.mark.parametrize("phase", ["workers", "firing", "waiting", "done"])
def test_run_experiments_progress_is_one_line_at_80_columns(phase: str, runs: int) -> None:
    row = load("kata3").rows[2]
    display = ProgressLine()
    display.update(Progress("kata3", row, 3, 3, runs, runs, phase, 7, 10, 4.5, 3))
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(display)
    assert isinstance(console.file, io.StringIO)
    lines = console.file.getvalue().splitlines()
    assert len(lines) == 1 and len(lines[0]) <= 80
    assert lines[0].startswith("kata3 row 3/3: 10 órdenes, 4 workers") and " 7/10 " in lines[0]


def attempts(*outcomes: str) -> list[Attempt]:
    """A run's history with attempts that ended so (the report counts them by outcome)."""
    return [
        Attempt(f"job-{n}", 1, "w1", T0, T0 + 1, outcome, None, None)
        for n, outcome in enumerate(outcomes)
    ]


def test_the_report_says_how_attempts_ended_when_any_did_not_just_complete() -> None:
    """Retries, crashes and dead ends show under their row's timeline and in the JSON; a
    row whose attempts all completed at once says nothing more."""
    suite = load("kata3")
    plain = serial_run(suite.rows[0], 2.01, [3.0])
    plain.history = attempts("completed")
    retried = serial_run(suite.rows[1], 10.05, [3.0] * 5)
    retried.history = attempts(*["completed"] * 5, "crashed", "failed", "failed", "handed_back")
    late = serial_run(suite.rows[2], 6.05, [3.0] * 10)
    result = suite_result(suite, [[plain], [retried], [late]])
    md = render_markdown(result, ["a.svg", "b.svg", "c.svg"], {})
    assert [line for line in md.splitlines() if line.startswith("Attempts:")] == [
        "Attempts: 9 (5 completed, 1 crashed, 2 failed, 1 handed back)"
    ]
    data = orjson.loads(orjson.dumps(to_json(result, {}, "test")))
    assert [r["runs"][0]["attempts"] for r in data["rows"]] == [
        {"completed": 1},
        {"completed": 5, "crashed": 1, "failed": 2, "handed_back": 1},
        {},
    ]


def test_a_faulty_rows_cells_show_no_overhead() -> None:
    """Retries and recoveries make a kata4 row slower than its ideal on purpose: its time is
    shown, its ledger judges it, and no 'overhead' is claimed."""
    row = load("kata4").rows[0]
    assert row.faulty
    result = row_result(row, serial_run(row, 5.5, [3.0] * row.orders))
    cells = row_cells(result)
    assert (cells.measured, cells.overhead, cells.share) == ("5.500 s", "-", "")
