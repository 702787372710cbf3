"""Results built by hand, as the runner would record them: figures known in advance."""

from __future__ import annotations

from mqlab.experiments import Row, Suite, load
from mqlab.figures.results import JobTiming, RowResult, RunResult, SuiteResult
from mqlab.figures.shot import Shot

#: Every run starts at this epoch second (the first request sent).
T0 = 1000.0


def serial_run(
    row: Row,
    makespan: float,
    latencies_ms: list[float],
    status: int = 202,
    completed: int | None = None,
    timed_out: bool = False,
) -> RunResult:
    """A run whose jobs all start at T0 and end at T0 + makespan on w1; `completed` of them
    (all by default) completed, the rest still processing."""
    shots = [
        Shot(i, status, T0, ms / 1000, i + 1, f"job-{i + 1}-1", None)
        for i, ms in enumerate(latencies_ms)
    ]
    done = row.orders if completed is None else completed
    jobs = [
        JobTiming(
            f"job-{i + 1}-1", i + 1, "w1", 1, T0, T0,
            T0 + makespan if i < done else None, "completed" if i < done else "processing",
        )
        for i in range(row.orders)
    ]  # fmt: skip
    return RunResult(shots, jobs, T0, 0.1, timed_out, ["w1"])


def row_result(row: Row, *runs: RunResult) -> RowResult:
    result = RowResult(row, list(runs))
    result.compute()
    return result


def suite_result(suite: Suite, rows: list[list[RunResult]]) -> SuiteResult:
    """The suite with these runs per row, every figure computed."""
    result = SuiteResult(suite, max(len(r) for r in rows), started_at=T0)
    result.rows = [RowResult(row, runs) for row, runs in zip(suite.rows, rows, strict=True)]
    result.compute()
    return result


def kata(makespans: list[float], latencies_ms: list[float], status: int = 202) -> SuiteResult:
    """kata3, one run per row with these makespans; each row's orders answered in the first
    latencies_ms."""
    suite = load("kata3")
    runs = [
        [serial_run(row, makespan, latencies_ms[: row.orders], status)]
        for row, makespan in zip(suite.rows, makespans, strict=True)
    ]
    return suite_result(suite, runs)


def waves_run(row: Row, last_overrun: float) -> RunResult:
    """`row` on its workers in waves, as a good lab records it: each worker's first job
    starts 12 ms after the first request, each job runs 1 ms over T (`last_overrun` for the
    very last one), and the next job starts 3 ms after the previous one finished."""
    t = row.spec.job_seconds
    shots = [Shot(i, 202, T0, 0.003, i + 1, f"job-{i + 1}-1", None) for i in range(row.orders)]
    jobs = []
    for i in range(row.orders):
        wave = i // row.workers
        started = T0 + 0.012 + wave * (t + 0.001 + 0.003)
        overrun = last_overrun if i == row.orders - 1 else 0.001
        worker = f"w{i % row.workers + 1}"
        jobs.append(
            JobTiming(
                f"job-{i + 1}-1", i + 1, worker, 1, T0, started, started + t + overrun, "completed"
            )
        )
    workers = [f"w{k + 1}" for k in range(row.workers)]
    return RunResult(shots, jobs, T0, 0.5, False, workers)
