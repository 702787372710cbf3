"""Batches (a worker takes up to --batch messages at once while the queue is deep): kill -9
in the middle of batches loses nothing and completes nothing twice, the Kata 4 ledger's way;
and a worker takes no more than it starts soon."""

from __future__ import annotations

import asyncio

import pytest

from mqlab.experiments import parse
from mqlab.lab.runner import Runner
from mqlab.lab.supervisor import Supervisor
from mqlab.settings import Settings
from mqlab.system.spec import BATCH_HORIZON, DEFAULT_BATCH, SpecError, WorkerSpec

SUITE = {
    "suite": {"name": "batches-small", "job_seconds": 0.01},
    "api": {"max_latency_ms": 1000},
    "row": [
        {"name": "kill -9 mid-batch", "orders": 400, "workers": 3, "kill_every": 0.25,
         "seed": 3, "fire_seconds": 1.0},
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_in_the_middle_of_batches_loses_nothing_and_completes_nothing_twice(
    settings: Settings, sup: Supervisor
) -> None:
    """Jobs of 10 ms: 400 orders in 1 s come faster than 3 workers take them (300/s), so the
    queue stays deep and each worker holds a batch of up to 5 (its 50 ms) all along: a kill
    every 0.25 s lands in the middle of one; the reaper hands the batch back and the guarded
    claims sort out which of its jobs were done. (With jobs of 5 ms the workers kept up, and
    a fresh clone saw 21 kills all land between batches: no job ran twice.)"""
    sup.start_api()
    result = asyncio.run(Runner(settings, sup).run_suite(parse(SUITE)))
    (row,) = result.rows
    ledger = row.ledger
    assert ledger is not None and ledger.kills >= 2, ledger
    # Kills landed in the middle of batches: jobs whose attempt was cut off ran again.
    assert ledger.work_twice >= 1, ledger
    # Every order answered 202 is completed, once. (A few may be refused with 503 while the
    # workers are killed and started again on 2 cores: refused, not lost.)
    assert ledger.accepted >= 330 and ledger.accepted + ledger.refused == 400, ledger
    assert (ledger.completed, ledger.lost, ledger.completed_twice) == (ledger.accepted, 0, 0)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_drain_row_queues_everything_first_and_times_the_workers_alone(
    settings: Settings, sup: Supervisor
) -> None:
    """prefill: 300 orders wait in the queue before the row's 2 workers start; the row's time
    runs from when they get the queue, not from the first order."""
    sup.start_api()
    suite = parse({
        "suite": {"name": "drain-small", "job_seconds": 0},
        "row": [{"name": "drain", "orders": 300, "workers": 2, "prefill": True}],
    })  # fmt: skip
    result = asyncio.run(Runner(settings, sup).run_suite(suite))
    (row,) = result.rows
    (run,) = row.runs
    assert sum(1 for j in run.jobs if j.status == "completed") == 300
    # The row starts once every order was answered (and the workers were up), and no job
    # started before it: all 300 were waiting in the queue.
    assert run.first_sent > max(s.sent_at + s.latency for s in run.shots)
    assert min(j.started_at or 0 for j in run.jobs) >= run.first_sent - 0.01
    assert len(run.worker_ids) == 2


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_short_jobs_behind_a_long_one_in_a_batch_go_to_a_free_worker(
    settings: Settings, sup: Supervisor
) -> None:
    """The prefetch trap: 1 job of 1 s among 80 of 5 ms, 2 workers taking batches of up to
    10. The short jobs in the long one's batch are handed back once it has run 50 ms, and the
    other worker takes them: only the long job takes a second (two runs)."""
    sup.start_api()
    suite = parse({
        "suite": {"name": "trap-small", "job_seconds": 0.005},
        "api": {"max_latency_ms": 1000, "under_job_time": False},
        "row": [{"name": "trap", "orders": 80, "long_orders": 1, "long_seconds": 1.0,
                 "workers": 2}],
    })  # fmt: skip
    result = asyncio.run(Runner(settings, sup).run_suite(suite, repeat=2))
    (row,) = result.rows
    for run in row.runs:
        assert len(run.jobs) == 80 and all(j.status == "completed" for j in run.jobs)
        # A job's time runs from its claim, which for a batch is the whole batch's: a short
        # job held behind the long one would take a second too.
        held = [a for a in run.history if a.outcome == "completed"
                and (a.finished_at or 0) - (a.started_at or 0) > 0.5]  # fmt: skip
        assert len(held) == 1, f"{len(held) - 1} short job(s) waited behind the long one"


def test_a_worker_takes_no_more_than_it_starts_within_the_horizon() -> None:
    assert WorkerSpec(job_seconds=0).most_taken() == DEFAULT_BATCH
    assert WorkerSpec(job_seconds=2.0).most_taken() == 1  # the kata's jobs: one at a time
    assert WorkerSpec(job_seconds=BATCH_HORIZON / 4).most_taken() == 4
    assert WorkerSpec(job_seconds=0, batch=1).most_taken() == 1
    assert WorkerSpec(job_seconds=0, fetch="blpop").most_taken() == 1  # no processing list
    with pytest.raises(SpecError, match="--batch must be 1 to"):
        WorkerSpec(batch=0)
