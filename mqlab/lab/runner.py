"""The experiment runner: one engine for `mqlab run-experiment` and the TUI (no UI in here).

For each row: make the worker pool match it (started and ready before any order is sent),
reset the data, fire the orders concurrently over HTTP, wait for the last job, and read
every job's timestamps back from PostgreSQL, the one clock all processes share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis.asyncio as aioredis

from mqlab import db
from mqlab.experiments import Row, Suite
from mqlab.figures.ledger import Attempt
from mqlab.figures.progress import Progress, ProgressHandler
from mqlab.figures.results import JobTiming, RowResult, RunResult, SuiteResult
from mqlab.lab.completion import wait_completed
from mqlab.lab.faulty_run import run_faulty
from mqlab.lab.loadgen import fire
from mqlab.lab.scenarios import EmbeddedPostgres
from mqlab.lab.supervisor import Supervisor
from mqlab.protocol import keys
from mqlab.protocol.scans import live_worker_ids
from mqlab.settings import Settings
from mqlab.system.faults import Faults
from mqlab.system.resetting import reset_all

#: At most this many connections fire a batch (a batch of N orders uses min(N, this)).
MAX_CONCURRENCY = 100


class ForeignWorkers(RuntimeError):
    """Workers this run did not start consume the queue: they would steal and skew its jobs."""


@dataclass
class Pool:
    """The workers the runner keeps between rows, and the settings they were started with."""

    job_seconds: float | None = None
    work: str | None = None
    ids: list[str] = field(default_factory=list)
    #: A Kata 4 row's worker flags (policy, faults, fetch); None for kata3's plain workers.
    flags: tuple[object, ...] | None = None


class Runner:
    """Runs suites against an API and workers owned by `supervisor`."""

    def __init__(
        self,
        settings: Settings,
        supervisor: Supervisor,
        on_progress: ProgressHandler | None = None,
        pg: EmbeddedPostgres | None = None,
        restart_ids: bool = True,
    ) -> None:
        self.settings = settings
        #: Whether each row's reset starts the order ids at 1 again: each row's report then
        #: numbers its orders from #1; the TUI, whose lanes span rows, keeps counting.
        self.restart_ids = restart_ids
        self.sup = supervisor
        self.on_progress = on_progress or (lambda _: None)
        #: Control of PostgreSQL (rows that stop it); None: such rows are skipped.
        self.pg = pg
        self.pool = Pool()

    async def check_no_foreign_workers(self, client: aioredis.Redis) -> None:
        ours = set(self.sup.children)
        foreign = [wid for wid in await live_worker_ids(client) if wid not in ours]
        if foreign:
            raise ForeignWorkers(
                f"workers not started by this run are consuming {keys.QUEUE}: "
                f"{', '.join(foreign)}. Stop them (Ctrl-C in their terminals), or run "
                "the experiment on servers of its own (another MQLAB_HOME)."
            )

    async def run_suite(
        self,
        suite: Suite,
        repeat: int = 1,
        on_row: Callable[[RowResult], None] | None = None,
        leave_clean: bool = False,
    ) -> SuiteResult:
        """Every row of the suite, `repeat` times each; on_row gets each row as it ends
        (its own figures computed; speedups, which need the other rows, come at the end).
        leave_clean: empty the data again at the end (see clean_after)."""
        if self.sup.api_url is None:
            raise RuntimeError("start the API (Supervisor.start_api) before running a suite")
        result = SuiteResult(suite=suite, repeat=repeat, started_at=time.time())
        client = aioredis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        try:
            async with await psycopg.AsyncConnection.connect(
                self.settings.database_url, autocommit=True
            ) as conn:
                await self.check_no_foreign_workers(client)
                for index, row in enumerate(suite.rows, 1):
                    runs = []
                    for run in range(1, repeat + 1):
                        if row.faulty:
                            report = self.reporter(suite, row, index, run, repeat)
                            runs.append(await run_faulty(self, row, report))
                        else:
                            runs.append(
                                await self._run(suite, row, index, run, repeat, conn, client)
                            )
                    done = RowResult(row=row, runs=runs)
                    done.compute()
                    result.rows.append(done)
                    if on_row is not None:
                        on_row(done)
        finally:
            await client.aclose()
        result.finished_at = time.time()
        result.compute()
        if leave_clean:
            await self.clean_after(result)
        return result

    async def clean_after(self, result: SuiteResult) -> bool:
        """What the tables hold after a run is its last row's orders, made by the run (it reset
        before each row) and kept in `result`: empty them, so ids start at 1 again. Not after
        a row that timed out: its jobs may still be in a worker's hands, and are worth a look.
        Returns whether it emptied them."""
        if any(run.timed_out for row in result.rows for run in row.runs):
            return False
        await asyncio.to_thread(reset_all, self.settings, self.restart_ids)
        return True

    def reporter(
        self, suite: Suite, row: Row, index: int, run: int, runs: int
    ) -> Callable[..., None]:
        """report(phase, **fields): a Progress of this row's run to the front end."""

        def report(phase: str, **fields: Any) -> None:
            self.on_progress(
                Progress(suite.name, row, index, len(suite.rows), run, runs, phase, **fields)
            )

        return report

    async def ensure_workers(self, row: Row, faults: Faults | None = None) -> float:
        """Make the pool match the row; returns the seconds it took (reported, not counted).
        `faults`: other than the row's (the replay after a poison row)."""
        start = time.monotonic()
        pool = self.pool
        faults = faults or row.faults()
        flags = (row.policy(), faults, row.fetch) if row.faulty or faults else None
        pool.ids = [w for w in pool.ids if self.sup.children[w].alive()]
        if (pool.job_seconds, pool.work, pool.flags) != (row.job_seconds, row.work, flags):
            # Every live worker the supervisor has, not only the pool's: any worker left from
            # an earlier row (a replacement a scenario started as its row ended, recorded
            # after the pool was taken) would take this row's jobs with that row's faults
            # (seen: a replayed poison order dead again).
            live = [c.name for c in self.sup.workers()]
            await asyncio.to_thread(self.sup.stop_many, live)
            pool.ids, pool.job_seconds, pool.work = [], row.job_seconds, row.work
            pool.flags = flags
        extra = pool.ids[row.workers :]
        await asyncio.to_thread(self.sup.stop_many, extra)
        del pool.ids[row.workers :]
        missing = row.workers - len(pool.ids)
        if missing > 0:
            kwargs = {} if flags is None else {"policy": flags[0], "faults": flags[1]}
            kwargs |= {} if flags is None else {"fetch": row.fetch}
            started = await asyncio.to_thread(
                self.sup.start_workers, missing, row.job_seconds, row.work, **kwargs
            )
            pool.ids += [c.name for c in started]
        await asyncio.to_thread(self.sup.wait_workers_ready, pool.ids)
        return time.monotonic() - start

    async def _run(
        self,
        suite: Suite,
        row: Row,
        index: int,
        run: int,
        runs: int,
        conn: psycopg.AsyncConnection[Any],
        client: aioredis.Redis,
    ) -> RunResult:
        def report(phase: str, **fields: Any) -> None:
            self.on_progress(
                Progress(suite.name, row, index, len(suite.rows), run, runs, phase, **fields)
            )

        report("workers", total=row.orders)
        startup = await self.ensure_workers(row)
        await asyncio.to_thread(reset_all, self.settings, self.restart_ids)
        report("firing", total=row.orders)
        assert self.sup.api_url is not None
        concurrency = min(row.orders, MAX_CONCURRENCY)
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        waiting = asyncio.create_task(self._wait(row, accepted, conn, client, report))
        try:
            shots = await fire(self.sup.api_url, row.orders, concurrency, product=f"{row.name} #")
        except BaseException:
            waiting.cancel()
            raise
        accepted.set_result(sum(1 for s in shots if s.status == 202))
        timed_out = await waiting
        jobs = [JobTiming.from_row(r) for r in await db.job_timings(conn)]
        history = [Attempt.from_row(r) for r in await db.attempt_times(conn)]
        first_sent = min((s.sent_at for s in shots), default=time.time())
        report("done", done=sum(1 for j in jobs if j.status == "completed"), total=row.orders)
        return RunResult(
            shots=shots,
            jobs=jobs,
            first_sent=first_sent,
            startup_seconds=startup,
            timed_out=timed_out,
            worker_ids=list(self.pool.ids),
            history=history,
        )

    async def _wait(
        self,
        row: Row,
        accepted: asyncio.Future[int],
        conn: psycopg.AsyncConnection[Any],
        client: aioredis.Redis,
        report: Callable[..., None],
    ) -> bool:
        """Poll until every accepted job is completed (False) or the row times out (True).

        It starts polling once the burst has been answered: polls running in the same loop
        while the load generator waits for answers delay its reads and inflate the API
        latency it records (measured: p50 7 ms against 3 ms for a single order).
        """
        start = time.monotonic()
        await accepted

        async def show(done: int) -> None:
            depth = int(await client.llen(keys.QUEUE))
            elapsed = time.monotonic() - start
            report("waiting", done=done, total=row.orders, elapsed=elapsed, queue_depth=depth)

        left = start + row.timeout - time.monotonic()
        return not await wait_completed(conn, accepted.result(), left, on_count=show)
