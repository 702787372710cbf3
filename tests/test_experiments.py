"""Experiment files: the shipped suites load, and a bad file says clearly what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqlab.experiments import ExperimentError, load


def test_kata3_is_the_katas_table() -> None:
    suite = load("kata3")
    table = [(r.orders, r.workers, r.spec.job_seconds, r.expected_seconds) for r in suite.rows]
    assert table == [(1, 1, 2.0, 2.0), (5, 1, 2.0, 10.0), (10, 4, 2.0, 6.0)]
    assert [r.ideal_seconds for r in suite.rows] == [2.0, 10.0, 6.0]
    assert suite.api.max_latency_ms == 50


def test_kata3_holds_the_fidelity_bars() -> None:
    # 1/1 <= 2.02 s, 5/1 <= 10.07 s, 10/4 <= 6.06 s; at another job time, 30 ms per row.
    assert [r.tolerance for r in load("kata3").rows] == pytest.approx([0.02, 0.07, 0.06])
    assert [r.tolerance for r in load("kata3").with_job_seconds(0.1).rows] == pytest.approx(
        [0.03, 0.03, 0.03]
    )
    assert load("kata3").with_job_seconds(2.0).rows == load("kata3").rows


def test_job_seconds_override_scales_the_expected_times() -> None:
    suite = load("kata3").with_job_seconds(0.1)
    assert [r.expected_seconds for r in suite.rows] == pytest.approx([0.1, 0.5, 0.3])
    assert [r.ideal_seconds for r in suite.rows] == pytest.approx([0.1, 0.5, 0.3])


def test_scaling_covers_sleep_and_cpu_over_1_to_16_workers() -> None:
    suite = load("scaling")
    for work in ("sleep", "cpu"):
        rows = [r for r in suite.rows if r.spec.work == work]
        assert [r.workers for r in rows] == [1, 2, 4, 8, 16]
        assert {r.orders for r in rows} == {40}
    assert all(r.expected_seconds is None for r in suite.rows if r.spec.work == "cpu")


def test_throughput_counts_slots_for_sleep_and_not_for_cpu() -> None:
    rows = {r.name: r for r in load("throughput").rows}
    assert rows["sleep, 10 slots"].ideal_seconds == 1.0  # 10 orders of 1 s, 10 at once
    assert rows["sleep, 4 slots"].ideal_seconds == 3.0
    assert rows["cpu, 10 slots"].ideal_seconds == rows["cpu, 1 slot"].ideal_seconds == 2.5
    trap = [r for r in rows.values() if r.long_orders]
    assert [(r.long_orders, r.spec.long_seconds, r.spec.batch) for r in trap] == [
        (2, 1.0, 32), (2, 1.0, 1)
    ]  # fmt: skip
    assert trap[0].products("x") == [(2, "long #"), (398, "x"), (0, "poison #"), (0, "crash #")]


def test_the_api_bar_is_the_shortest_job_that_works_unless_the_suite_says_not() -> None:
    assert load("kata3").api_bar_ms() == 50  # jobs of 2 s: the suite's bar
    assert load("kata3").with_job_seconds(0.01).api_bar_ms() == 10  # under the job time
    assert load("kata3").with_job_seconds(0).api_bar_ms() == 50  # no work to wait for
    assert load("throughput").api_bar_ms() == 500  # under_job_time = false


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[suite]\nname = 'x'\n", "no [[row]] tables"),
        ("[[row]]\norders = 0\nworkers = 1\n", "orders must be a whole number >= 1"),
        ("[[row]]\norders = 2\nworkers = 0\n", "workers must be a whole number from 1 to 64"),
        (
            "[[row]]\norders = 2\nworkers = 1\njob_seconds = 'two'\n",
            "job_seconds must be a number, not 'two'",
        ),
        ("[[row]]\norders = 2\nworkers = 1\nwork = 'dance'\n", "work must be one of sleep, cpu"),
        ("[[row]]\norders = 2\nworkers = 1\nworkerz = 3\n", "unknown key(s) ['workerz']"),
        ("[[row]]\norders = 2.5\nworkers = 1\n", "orders must be a whole number, not 2.5"),
        (
            "[[row]]\norders = 2\nworkers = 1\nexpected_seconds = -1\n",
            "expected_seconds must be >= 0",
        ),
        (
            "[[row]]\nname='a'\norders = 1\nworkers = 1\n[[row]]\nname='a'\norders=1\nworkers=1\n",
            "unique",
        ),
        ("[rows]\n", "unknown table(s) ['rows']"),
        (
            "[api]\nunder_job_time = 1\n[[row]]\norders = 1\nworkers = 1\n",
            "under_job_time must be",
        ),
        (
            "[suite]\nscaled_tolerance_seconds = -1\n[[row]]\norders = 1\nworkers = 1\n",
            "scaled_tolerance_seconds must be >= 0",
        ),
        ("[[row]\n", "not valid TOML"),
        ("[[row]]\norders = 2\nworkers = 1\nlong_orders = 1\n", "long_orders needs long_seconds"),
    ],
)
def test_a_bad_file_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ExperimentError) as info:
        load(str(path))
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_suite_lists_the_available_ones() -> None:
    with pytest.raises(ExperimentError, match=r"no suite named 'nope' \(available: .*kata3"):
        load("nope")
