"""The experiment runner: one engine for `mqlab run-experiment` and the TUI (no UI in here).

For each row, one skeleton (Runner.run_row): make the worker pool match it (started and ready
before any order is sent), reset the data, fire the orders concurrently over HTTP, wait for
the last job, and read every job's timestamps back from PostgreSQL, the one clock all
processes share. Its steps are a plain row's (mqlab.lab.row_run.PlainRun) or a faulty row's
(mqlab.lab.faulty_run.FaultyRun: the scenario beside, the replay, the ledger).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import psycopg
import redis.asyncio as aioredis

from mqlab import db
from mqlab.experiments import Row, Suite
from mqlab.figures.progress import Progress, ProgressHandler
from mqlab.figures.results import RowResult, RunResult, SuiteResult
from mqlab.lab.faulty_run import FaultyRun
from mqlab.lab.row_run import DrainRun, PlainRun, Pool, Report
from mqlab.lab.scenarios import EmbeddedPostgres, LabHosts
from mqlab.lab.supervisor import Supervisor
from mqlab.protocol import keys
from mqlab.protocol.scans import live_worker_ids
from mqlab.settings import Settings
from mqlab.system.redis_clients import async_client
from mqlab.system.resetting import reset_all
from mqlab.system.spec import WorkerSpec


class ForeignWorkers(RuntimeError):
    """Workers this run did not start consume the queue: they would steal and skew its jobs."""


class Runner:
    """Runs suites against an API and workers owned by `supervisor`."""

    def __init__(
        self,
        settings: Settings,
        supervisor: Supervisor,
        on_progress: ProgressHandler | None = None,
        pg: EmbeddedPostgres | None = None,
        restart_ids: bool = True,
        hosts: LabHosts | None = None,
    ) -> None:
        self.settings = settings
        #: Whether each row's reset starts the order ids at 1 again: each row's report then
        #: numbers its orders from #1; the TUI, whose lanes span rows, keeps counting.
        self.restart_ids = restart_ids
        self.sup = supervisor
        self.on_progress = on_progress or (lambda _: None)
        #: Control of PostgreSQL (rows that stop it); None: such rows are skipped.
        self.pg = pg
        #: The lab hosts a suite with a [hosts] table runs on (None: this machine).
        self.hosts = hosts
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
        client = async_client(self.settings.redis_url, decode_responses=True)
        try:
            async with await psycopg.AsyncConnection.connect(
                self.settings.database_url, autocommit=True, **db.connect_options()
            ) as conn:
                await self.check_no_foreign_workers(client)
                for index, row in enumerate(suite.rows, 1):
                    runs = []
                    for run in range(1, repeat + 1):
                        report = self.reporter(suite, row, index, run, repeat)
                        runs.append(await self.run_row(row, report, conn, client))
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

    async def ensure_workers(self, spec: WorkerSpec, workers: int) -> float:
        """Make the pool `workers` workers of `spec` (a row's, or its replay's); returns the
        seconds it took (reported, not counted)."""
        start = time.monotonic()
        pool = self.pool
        pool.ids = [w for w in pool.ids if self.sup.children[w].alive()]
        if pool.spec != spec:
            # Every live worker the supervisor has, not only the pool's: any worker left from
            # an earlier row (a replacement a scenario started as its row ended, recorded
            # after the pool was taken) would take this row's jobs with that row's faults
            # (seen: a replayed poison order dead again).
            live = [c.name for c in self.sup.workers()]
            await asyncio.to_thread(self.sup.stop_many, live)
            pool.ids, pool.spec = [], spec
        extra = pool.ids[workers:]
        await asyncio.to_thread(self.sup.stop_many, extra)
        del pool.ids[workers:]
        missing = workers - len(pool.ids)
        if missing > 0:
            started = await asyncio.to_thread(self.sup.start_workers, missing, spec)
            pool.ids += [c.name for c in started]
        await asyncio.to_thread(self.sup.wait_workers_ready, pool.ids)
        return time.monotonic() - start

    async def run_row(
        self,
        row: Row,
        report: Report,
        conn: psycopg.AsyncConnection[Any],
        client: aioredis.Redis,
    ) -> RunResult:
        """One run of a row, the skeleton of every row: workers, reset, fire, wait, collect,
        report; the steps (plain or faulty) say how each is done for this row."""
        restart = functools.partial(self.ensure_workers, workers=row.workers)
        steps: PlainRun | FaultyRun
        on_hosts = self.hosts is not None
        if row.faulty:
            steps = FaultyRun(row, self.pool, self.settings, self.sup, client, self.pg, self.hosts)
        elif row.prefill:
            steps = DrainRun(row, self.pool, conn, client, self.ensure_workers, on_hosts)
        else:
            steps = PlainRun(row, self.pool, conn, client, on_hosts)
        if (skipped := steps.skipped()) is not None:
            report("done", total=row.orders)
            return skipped
        api_urls = list(self.sup.api_urls)
        assert api_urls
        report("workers", total=row.orders)
        rtt = None
        if self.hosts is not None:
            await asyncio.to_thread(self.hosts.set_links, row.link_delay_ms, row.link_jitter_ms)
            rtt = await asyncio.to_thread(self.hosts.round_trip_ms)
        startup = await restart(row.spec)
        await asyncio.to_thread(reset_all, self.settings, self.restart_ids)
        report("firing", total=row.orders)
        first_sent = time.time()
        async with steps.beside(first_sent):
            accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            waiting = asyncio.create_task(steps.wait(accepted, report))
            try:
                shots = await steps.fire(api_urls)
            except BaseException:
                waiting.cancel()
                raise
            accepted.set_result(sum(1 for s in shots if s.status == 202))
            timed_out = await waiting
            timed_out = await steps.after_wait(timed_out, accepted.result(), report, restart)
        result = await steps.result(shots, first_sent, startup, timed_out, report)
        result.link_rtt_ms = rtt
        return result
