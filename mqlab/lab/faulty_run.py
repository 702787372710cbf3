"""One run of a Kata 4 row, as steps of mqlab.lab.runner's skeleton (FaultyRun): its workers
with their failures, the orders (plain, poison, crash-loop; one burst or paced), the lab's
actions beside them (mqlab.lab.scenarios), a wait that survives the outages it causes, the
replay after a poison row, and the ledger (mqlab.figures.ledger).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace

import psycopg
import redis
import redis.asyncio as aioredis

from mqlab import db
from mqlab.experiments import PLAIN_PRODUCT, Row
from mqlab.figures.ledger import Attempt, Marks, Replay, build
from mqlab.figures.results import JobTiming, RunResult
from mqlab.figures.shot import Shot
from mqlab.lab.row_run import Pool, Report, Restart, finished_events, fire_products, run_result
from mqlab.lab.scenarios import EmbeddedPostgres, LabHosts, Scenario, skip_reason
from mqlab.lab.supervisor import Supervisor
from mqlab.protocol import keys
from mqlab.settings import Settings
from mqlab.system import dead_letters

#: The BLPOP row's wait ends when the queue is empty and nothing moved for this long.
STALL_SECONDS = 3.0
POLL_SECONDS = 0.1


async def wait_settled(
    row: Row,
    accepted: int,
    dbc: db.LazyConnection,
    client: aioredis.Redis,
    report: Callable[..., None],
) -> bool:
    """Poll until every accepted job is completed or dead (False), or, for the BLPOP row,
    until the queue is empty and nothing moved for STALL_SECONDS (False); True on timeout."""
    start = time.monotonic()
    deadline = start + row.timeout
    last, moved = (-1, -1), start
    while True:
        now = time.monotonic()
        try:
            settled = await db.count_settled(await dbc.get())
        except psycopg.OperationalError:
            await dbc.drop()  # PostgreSQL is away (the row stopped it): ask again soon
            settled = last
        try:
            depth = int(await client.llen(keys.QUEUE))
        except redis.RedisError:
            depth = -1
        report("waiting", done=sum(settled), total=accepted, elapsed=now - start,
               queue_depth=max(depth, 0))  # fmt: skip
        if settled != last:
            last, moved = settled, now
        if sum(settled) >= accepted:
            return False
        if row.expect_loss and depth == 0 and now - moved > STALL_SECONDS:
            return False
        if now > deadline:
            return True
        await asyncio.sleep(POLL_SECONDS)


class FaultyRun:
    """The steps of one run of a Kata 4 row (see mqlab.lab.row_run.PlainRun for the plain
    row's): the orders of each kind, the row's scenario beside them, the wait until each is
    completed or dead, the replay, and the ledger."""

    def __init__(
        self,
        row: Row,
        pool: Pool,
        settings: Settings,
        sup: Supervisor,
        client: aioredis.Redis,
        pg: EmbeddedPostgres | None,
        hosts: LabHosts | None = None,
    ) -> None:
        self.row = row
        self.hosts = hosts
        self.pool = pool
        self.settings = settings
        self.sup = sup
        self.client = client
        self.pg = pg
        #: Its own connection, which a PostgreSQL restart (the row's) does not end.
        self.dbc = db.LazyConnection(settings.database_url)
        self.scenario: Scenario | None = None
        self.actions: asyncio.Task[None] | None = None
        self.crashed = 0
        self.replay: Replay | None = None

    def skipped(self) -> RunResult | None:
        skipped = skip_reason(self.row, self.pg, self.hosts)
        if not skipped:
            return None
        ledger = build(self.row, [], {}, [], {}, Marks(skipped=skipped))
        return RunResult([], [], time.time(), 0.0, False, [], ledger=ledger)

    @contextlib.asynccontextmanager
    async def beside(self, first_sent: float) -> AsyncIterator[None]:
        """The row's scenario (kills, restarts, FLUSHALL, a PostgreSQL outage), from the first
        order on; its failure fails the run (a row whose actions did not happen means nothing)."""
        row, sup, pool = self.row, self.sup, self.pool

        def start_worker() -> str:
            return sup.start_worker(row.spec, wait=False).name

        self.scenario = Scenario(
            row, sup, pool.ids, start_worker, self.settings.redis_url, self.pg, row.spec.seed,
            self.hosts,
        )  # fmt: skip
        self.actions = asyncio.create_task(self.scenario.run(first_sent))
        try:
            yield
        finally:
            self.actions.cancel()
            outcome = (await asyncio.gather(self.actions, return_exceptions=True))[0]
            pool.ids[:] = [w for w in pool.ids if sup.children[w].alive()]
        if isinstance(outcome, Exception):
            raise outcome

    async def fire(self, api_urls: Sequence[str]) -> list[Shot]:
        """The row's orders: plain, poison and crash-loop products, at once or paced."""
        row = self.row
        return await fire_products(api_urls, row.products(PLAIN_PRODUCT), row.fire_seconds)

    async def wait(self, accepted: asyncio.Future[int], report: Report) -> bool:
        return await wait_settled(self.row, await accepted, self.dbc, self.client, report)

    async def after_wait(
        self, timed_out: bool, accepted: int, report: Report, restart: Restart
    ) -> bool:
        """The scenario stopped and the workers that crashed counted (before the replay, which
        stops them on purpose); then the replay, if the row asks for one."""
        assert self.actions is not None and self.scenario is not None
        self.actions.cancel()
        await asyncio.gather(self.actions, return_exceptions=True)
        self.crashed = len(self.scenario.marks.restarts) + len(self.scenario.died_on_their_own())
        if self.row.replay_without_poison and not timed_out:
            self.replay, timed_out = await self._replay(accepted, report, restart)
        return timed_out

    async def _replay(self, accepted: int, report: Report, restart: Restart) -> tuple[Replay, bool]:
        """Workers with the poison pattern switched off, every dead job queued again, and the
        wait until they are all completed."""
        dbc = self.dbc
        _, dead_before = await db.count_settled(await dbc.get())
        report("replay", total=accepted)
        await restart(replace(self.row.spec, poison=""))
        replayed = await dead_letters.replay(self.client, await dbc.get(), None)
        timed_out = await wait_settled(self.row, accepted, dbc, self.client, report)
        completed, _ = await db.count_settled(await dbc.get())
        return Replay(dead_before, len(replayed), completed), timed_out

    async def result(
        self, shots: list[Shot], first_sent: float, startup: float, timed_out: bool, report: Report
    ) -> RunResult:
        """Every job's times and outcome read back, and the ledger they make."""
        assert self.scenario is not None
        try:
            conn = await self.dbc.get()
            jobs = [JobTiming.from_row(r) for r in await db.job_timings(conn)]
            attempts = [Attempt.from_row(r) for r in await db.attempt_times(conn)]
            events = await finished_events(self.client)
        finally:
            await self.dbc.drop()
        ledger = build(
            self.row,
            shots,
            {j.job_id: j.status for j in jobs},
            attempts,
            events.completions,
            self.scenario.marks,
            timed_out=timed_out,
            crashed_workers=self.crashed,
            replay=self.replay,
            refused_late=events.refused_late,
            reconciled=events.reconciled,
        )
        report("done", done=ledger.completed, total=self.row.orders)
        scenario = self.scenario
        return run_result(shots, first_sent, startup, timed_out, jobs, attempts, scenario.ids,
                          kills=list(scenario.marks.kills), ledger=ledger)  # fmt: skip
