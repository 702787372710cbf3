"""--concurrency N: N jobs at once in one worker process, for sleep-bound work."""

from __future__ import annotations

import asyncio
import signal

import httpx
import psycopg
import pytest

from mqlab import db
from mqlab.lab.supervisor import Supervisor
from mqlab.settings import Settings
from mqlab.system.spec import SpecError, WorkerSpec
from tests.helpers import eventually, post_order


def _span(pg: psycopg.Connection) -> tuple[int, int, float, int]:
    """(completed, distinct workers, first start -> last finish in s, most attempts)."""
    row = pg.execute(
        "SELECT count(*) FILTER (WHERE status = 'completed'), count(DISTINCT worker_id),"
        " extract(epoch FROM max(finished_at) - min(started_at))::float8, max(attempts)"
        " FROM jobs"
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2] or 0.0, row[3] or 0


@pytest.mark.slow
def test_one_process_with_ten_slots_runs_the_katas_ten_orders_at_once(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection
) -> None:
    """The kata's 10 orders, of 1 s here: one worker with --concurrency 10 works them all at
    once (about 1 s, not the 10 s of one slot), each once."""
    sup.start_worker(WorkerSpec(worker_id="c1", job_seconds=1.0, concurrency=10))
    for i in range(10):
        post_order(client, f"Item{i}")
    eventually(lambda: _span(pg)[0] == 10, timeout=20, what="10 jobs completed")
    completed, workers, span, attempts = _span(pg)
    assert (completed, workers, attempts) == (10, 1, 1)
    assert 1.0 <= span < 2.5, span  # one slot would take 10 s


@pytest.mark.slow
def test_a_stop_finishes_every_slots_job_and_exits_0(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection
) -> None:
    """SIGTERM with 4 jobs in hand: all four finish, then the worker exits 0."""
    child = sup.start_worker(WorkerSpec(worker_id="c2", job_seconds=1.0, concurrency=4))
    for i in range(4):
        post_order(client, f"Item{i}")
    eventually(
        lambda: (
            pg.execute("SELECT count(*) FROM jobs WHERE status = 'processing'").fetchone() == (4,)
        ),
        timeout=10,
        what="4 jobs processing at once",
    )
    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(timeout=10) == 0
    assert _span(pg)[0] == 4


def test_slots_that_share_the_workers_connection_take_turns(settings: Settings) -> None:
    """Twenty queries at once through one LazyConnection, as a worker's slots claim at once:
    each gets its own answer. Without the turns, one task's check for a connection the
    server closed read the socket that another's answer had made readable, and closed the
    connection under it (a claim failed, and its message was dead-lettered)."""

    async def main() -> list[int]:
        shared = db.LazyConnection(settings.database_url)

        async def query(n: int) -> int:
            async with shared.use() as conn:
                cursor = await conn.execute("SELECT %s::int, pg_sleep(0.005)", [n])
                row = await cursor.fetchone()
                assert row is not None
                return int(row[0])

        try:
            return await asyncio.gather(*(query(n) for n in range(20)))
        finally:
            await shared.drop()

    assert asyncio.run(main()) == list(range(20))


def test_concurrency_is_checked() -> None:
    assert WorkerSpec(concurrency=7).to_args() == ["--concurrency", "7"]
    with pytest.raises(SpecError, match="--concurrency must be 1 to 100, not 0"):
        WorkerSpec(concurrency=0)
