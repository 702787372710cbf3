"""A fixed data source and a simulated lab: the same screen every time, for snapshot tests.

FixedSource shows one moment of a typical session (a second burst of orders being worked off
by four workers, one worker killed earlier). FixedLab carries out the keys without any
process: it records them, and "runs" experiment rows by computing perfect waves, so that the
experiments panel fills in through the same code path as with the real Runner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from mqlab.experiments import Row, Suite
from mqlab.faces.tui.model import (
    DeadLetterRow,
    Frame,
    JobBar,
    Kill,
    LineHandler,
    RowHandler,
    Service,
    WorkerRow,
)
from mqlab.figures.progress import Progress, ProgressHandler
from mqlab.figures.results import JobTiming, RowResult, RunResult, SuiteResult
from mqlab.figures.shot import Shot
from mqlab.protocol.events import WorkerState
from mqlab.system.observe import HostInfo

#: "Now" in the fixed world (2023-11-14 22:13:20 UTC); everything is relative to it.
NOW = 1_700_000_000.0


def _depth_history() -> tuple[float, ...]:
    """120 half-second bins: a burst of 10 drained in three waves 20 s ago, and one now."""
    bins = [0.0] * 120
    for start, levels in ((80, (10, 6, 2)), (114, (10, 10, 8))):
        for wave, level in enumerate(levels):
            for i in range(start + wave * 4, min(120, start + wave * 4 + 4)):
                bins[i] = level
    return tuple(bins)


def _bars() -> tuple[JobBar, ...]:
    """Ten orders on four workers in three waves, 20 s ago; four jobs under way now."""
    bars = []
    t0 = NOW - 20.0
    for i in range(10):
        worker, wave = f"w{i % 4 + 1}", i // 4
        start = t0 + wave * 2.004
        pid = 41001 + i % 4
        bars.append(JobBar(worker, f"job-{i + 1}", i + 1, start, start + 2.0, pid))
    # w5 killed mid-job: its bar ends with the cut mark.
    bars.append(JobBar("w5", "job-0", 0, NOW - 28.0, NOW - 26.5, 41005, cut=True))
    # Kata 4: job-16 failed on w2 (a 3 s backoff), its retry ran on w3; job-15 was poison and
    # died on w1 at its first attempt.
    bars.append(JobBar("w2", "job-16", 16, NOW - 12.0, NOW - 11.0, 41002, ending="failed",
                       retry_in=3.0))  # fmt: skip
    bars.append(JobBar("w3", "job-16", 16, NOW - 7.8, NOW - 5.8, 41003, attempt=2))
    bars.append(JobBar("w1", "job-15", 15, NOW - 6.0, NOW - 5.8, 41001, ending="dead"))
    for i, worker in enumerate(("w1", "w2", "w3", "w4")):
        bars.append(JobBar(worker, f"job-{11 + i}", 11 + i, NOW - 1.2, None, 41001 + i))
    return tuple(bars)


def fixed_frame() -> Frame:
    return Frame(
        at=NOW,
        services=(
            Service("Redis", "redis://127.0.0.1:6390/0", True),
            Service("PostgreSQL", "postgresql://postgres@127.0.0.1:5439/mqlab", True),
            Service("API", "http://127.0.0.1:3000", True),
        ),
        depth=6,
        trend=-1,
        depth_history=_depth_history(),
        processing=4,
        dead_letters=1,
        jobs_per_second=2.0,
        orders={"pending": 6, "processing": 4, "retrying": 2, "completed": 10, "failed": 1},
        jobs={"pending": 6, "processing": 4, "retrying": 2, "completed": 10, "dead": 1},
        attempts={"completed": 11, "failed": 3, "crashed": 1},
        delayed=2,
        next_retry_in=1.4,
        dead=(
            DeadLetterRow(
                "job-15", "poison order: product 'poison #3' matches 'poison'", "w1", NOW - 5.8
            ),
        ),
        kills=(Kill("w5", 41005, NOW - 26.4),),
        workers=(
            WorkerRow("w1", 41001, WorkerState.BUSY, "job-11", 1.2, 3),
            WorkerRow("w2", 41002, WorkerState.BUSY, "job-12", 1.2, 3),
            WorkerRow("w3", 41003, WorkerState.BUSY, "job-13", 1.2, 2),
            WorkerRow("w4", 41004, WorkerState.STOPPING, "job-14", 1.2, 2),
            WorkerRow("w5", 41005, WorkerState.DEAD, "SIGKILL", None, 0),
            # Another terminal's worker, named host-pid as `mqlab worker` does by default.
            WorkerRow("lab-vm-52114", 52114, WorkerState.IDLE, "", None, 0, ours=False),
        ),
        bars=_bars(),
        timeline_seconds=30.0,
    )


#: The fixed frame's lab workers on two hosts (issue 21): w1, w2 on hosta, the others on hostb.
_ON_HOSTS = {"w1": "hosta-w1", "w2": "hosta-w2", "w3": "hostb-w1", "w4": "hostb-w2",
             "w5": "hostb-w3"}  # fmt: skip


def two_hosts_frame() -> Frame:
    """The fixed frame with its lab's workers on two hosts, named `<host>-w<n>` as the lab
    names them there, and each host's jobs/s."""
    frame = fixed_frame()
    workers = tuple(
        replace(w, id=_ON_HOSTS[w.id], host=_ON_HOSTS[w.id].split("-")[0])
        for w in frame.workers
        if w.id in _ON_HOSTS
    )
    return replace(
        frame,
        workers=workers,
        bars=tuple(replace(b, worker=_ON_HOSTS[b.worker]) for b in frame.bars),
        kills=tuple(replace(k, worker=_ON_HOSTS[k.worker]) for k in frame.kills),
        hosts=(HostInfo("hosta", 2, 2, 6, 1.2), HostInfo("hostb", 2, 1, 4, 0.8)),
    )


class FixedSource:
    """Always the same frame."""

    def __init__(self, frame: Frame | None = None) -> None:
        self.frame = frame or fixed_frame()

    async def sample(self) -> Frame:
        return self.frame

    async def close(self) -> None:
        return None


def simulated_run(row: Row, t0: float = NOW) -> RunResult:
    """A run of `row` as a perfect lab would record it: waves of W jobs, 4 ms apart."""
    shots = [
        Shot(i, 202, t0 + i * 1e-4, 0.002, i + 1, f"job-{i + 1}", None) for i in range(row.orders)
    ]
    jobs = []
    for i in range(row.orders):
        wave = i // row.workers
        started = t0 + 0.012 + wave * (row.spec.job_seconds + 0.004)
        jobs.append(
            JobTiming(
                f"job-{i + 1}",
                i + 1,
                f"w{i % row.workers + 1}",
                1,
                t0 + 0.003,
                started,
                started + row.spec.job_seconds,
                "completed",
            )
        )
    workers = [f"w{k + 1}" for k in range(row.workers)]
    return RunResult(shots, jobs, t0, 0.5, False, workers)


class FixedLab:
    """The controls, without processes: each call is recorded in `calls`."""

    def __init__(self, suite: Suite, job_seconds: float = 2.0, step_seconds: float = 0.0) -> None:
        self.suite = suite
        self.job_seconds = job_seconds
        self.step_seconds = step_seconds  # how long each simulated phase lasts
        self.state = "up"
        self.error = ""
        self.calls: list[str] = []
        self._handler: LineHandler = lambda _name, _line: None
        self._workers = 5
        self.fail_rate = 0.0
        self.poison_share = 0.0
        #: Why stop_postgres would refuse (None: it would run), as LiveLab says it.
        self.postgres_refusal: str | None = None

    def set_line_handler(self, handler: LineHandler) -> None:
        self._handler = handler

    def open(self) -> None:
        self.calls.append("open")
        for name, line in (
            ("lab", "API on http://127.0.0.1:3000"),
            ("w1", "12:00:00.000 INFO    w1: ready (pid 41001, job 2s sleep)"),
            ("api", "12:00:00.000 INFO    API on http://127.0.0.1:3000 (docs at /docs)"),
        ):
            self._handler(name, line)

    def close(self) -> None:
        self.calls.append("close")
        self.state = "closed"

    def add_worker(self) -> str:
        self._workers += 1
        self.calls.append(f"add w{self._workers}")
        return f"w{self._workers}"

    def stop_worker(self, worker_id: str) -> int | None:
        self.calls.append(f"stop {worker_id}")
        return 0

    def kill_worker(self, worker_id: str) -> int | None:
        self.calls.append(f"kill {worker_id}")
        return -9

    def reset(self) -> None:
        self.calls.append("reset")

    def set_fail_rate(self, rate: float) -> None:
        self.fail_rate = rate
        self.calls.append(f"fail rate {rate:g}")

    def set_poison_share(self, share: float) -> None:
        self.poison_share = share
        self.calls.append(f"poison {share:g}")

    def flush_redis(self) -> None:
        self.calls.append("flush redis")

    def postgres_stoppable(self) -> str | None:
        return self.postgres_refusal

    def stop_postgres(self, seconds: float) -> None:
        self.calls.append(f"stop postgres {seconds:g}")

    async def replay_dead(self) -> int:
        self.calls.append("replay")
        return 1

    async def fire(self, orders: int) -> dict[int, int]:
        self.calls.append(f"fire {orders}")
        return {202: orders}

    async def run_rows(
        self, rows: Sequence[Row], on_progress: ProgressHandler, on_row: RowHandler
    ) -> SuiteResult:
        self.calls.append(f"run {len(rows)}")
        suite = replace(self.suite, rows=tuple(rows))
        result = SuiteResult(suite=suite, repeat=1, started_at=NOW)
        for index, row in enumerate(rows, 1):
            start = Progress(suite.name, row, index, len(rows), 1, 1, "workers", 0, row.orders)
            for phase, done in (("workers", 0), ("waiting", row.orders // 2)):
                on_progress(replace(start, phase=phase, done=done, elapsed=row.ideal_seconds / 2))
                await asyncio.sleep(self.step_seconds)
            run = simulated_run(row)
            on_progress(replace(start, phase="done", done=row.orders, elapsed=run.makespan))
            done = RowResult(row=row, runs=[run])
            done.compute()
            result.rows.append(done)
            on_row(done)
        result.finished_at = NOW + 60
        result.compute()
        return result
