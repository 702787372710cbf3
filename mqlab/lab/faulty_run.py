"""One run of a Kata 4 row: its workers with their failures, the orders (plain, poison,
crash-loop; one burst or paced), the lab's actions beside them (mqlab.lab.scenarios), a wait that
survives the outages it causes, the replay after a poison row, and the ledger
(mqlab.figures.ledger).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import psycopg
import redis
import redis.asyncio as aioredis

from mqlab import db
from mqlab.experiments import CRASH_PRODUCT, PLAIN_PRODUCT, POISON_PRODUCT, Row
from mqlab.figures.ledger import Attempt, Marks, Replay, build
from mqlab.figures.results import JobTiming, RunResult
from mqlab.figures.shot import Shot
from mqlab.lab.loadgen import fire, pace
from mqlab.lab.scenarios import EmbeddedPostgres, Scenario, skip_reason
from mqlab.lab.supervisor import Supervisor
from mqlab.protocol import keys
from mqlab.protocol.events import EventKind
from mqlab.settings import Settings
from mqlab.system import dead_letters
from mqlab.system.faults import Faults
from mqlab.system.resetting import reset_all


class Runner(Protocol):
    """What a faulty row needs of mqlab.lab.runner.Runner (which calls run_faulty, so this
    module may not import it): the servers, the supervisor, the embedded PostgreSQL it may
    stop, and its pool of workers."""

    settings: Settings
    sup: Supervisor
    pg: EmbeddedPostgres | None
    restart_ids: bool

    @property
    def pool(self) -> PoolLike: ...

    async def ensure_workers(self, row: Row) -> float: ...


class PoolLike(Protocol):
    ids: list[str]


#: At most this many connections fire a burst, split over its kinds of order.
MAX_CONCURRENCY = 100
#: The BLPOP row's wait ends when the queue is empty and nothing moved for this long.
STALL_SECONDS = 3.0
POLL_SECONDS = 0.1


async def fire_orders(api_url: str, row: Row) -> list[Shot]:
    """The row's orders: plain, poison and crash-loop products, at once or paced."""
    batches = [
        (n, product)
        for n, product in (
            (row.plain_orders, PLAIN_PRODUCT),
            (row.poison_orders, POISON_PRODUCT),
            (row.crash_orders, CRASH_PRODUCT),
        )
        if n
    ]
    if row.fire_seconds:
        sent = [pace(api_url, n, row.fire_seconds / n, product=p) for n, p in batches]
    else:
        share = min(row.orders, MAX_CONCURRENCY) / row.orders
        sent = [fire(api_url, n, max(1, round(n * share)), product=p) for n, p in batches]
    return [s for shots in await asyncio.gather(*sent) for s in shots]


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


async def finished_events(client: aioredis.Redis) -> dict[str, int]:
    """job id -> job_finished events in mqlab:events (more than one: completed twice)."""
    counts: Counter[str] = Counter()
    for _, entry in await client.xrange(keys.EVENTS, "-", "+"):
        if entry.get("type") == EventKind.JOB_FINISHED and "job" in entry:
            counts[entry["job"]] += 1
    return dict(counts)


async def run_faulty(runner: Runner, row: Row, report: Callable[..., None]) -> RunResult:
    """One run of a Kata 4 row, its ledger included."""
    skipped = skip_reason(row, runner.pg)
    if skipped:
        ledger = build(row, [], {}, [], {}, Marks(skipped=skipped))
        report("done", total=row.orders)
        return RunResult([], [], time.time(), 0.0, False, [], ledger=ledger)
    settings, sup = runner.settings, runner.sup
    assert sup.api_url is not None
    report("workers", total=row.orders)
    startup = await runner.ensure_workers(row)
    await asyncio.to_thread(reset_all, settings, runner.restart_ids)
    policy, faults = row.policy(), row.faults()

    def start_worker() -> str:
        child = sup.start_worker(
            None, row.job_seconds, row.work, False, policy=policy, faults=faults, fetch=row.fetch
        )
        return child.name

    pool = runner.pool
    scenario = Scenario(row, sup, pool.ids, start_worker, settings.redis_url, runner.pg, row.seed)
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    dbc = db.LazyConnection(settings.database_url)
    replay: Replay | None = None
    report("firing", total=row.orders)
    first_sent = time.time()
    actions = asyncio.create_task(scenario.run(first_sent))
    try:
        shots = await fire_orders(sup.api_url, row)
        accepted = sum(1 for s in shots if s.status == 202)
        timed_out = await wait_settled(row, accepted, dbc, client, report)
        actions.cancel()
        await asyncio.gather(actions, return_exceptions=True)
        # Before the replay, which stops these workers on purpose.
        crashed = len(scenario.marks.restarts) + len(scenario.died_on_their_own())
        if row.replay_without_poison and not timed_out:
            replay, timed_out = await _replay(runner, row, accepted, dbc, client, report)
    finally:
        actions.cancel()
        outcome = (await asyncio.gather(actions, return_exceptions=True))[0]
        pool.ids[:] = [w for w in pool.ids if sup.children[w].alive()]
    if isinstance(outcome, Exception):
        raise outcome  # a scenario that could not do its part: the row means nothing
    try:
        conn = await dbc.get()
        jobs = [JobTiming.from_row(r) for r in await db.job_timings(conn)]
        attempts = [Attempt.from_row(r) for r in await db.attempt_times(conn)]
        events = await finished_events(client)
    finally:
        await dbc.drop()
        await client.aclose()
    ledger = build(
        row,
        shots,
        {j.job_id: j.status for j in jobs},
        attempts,
        events,
        scenario.marks,
        timed_out=timed_out,
        crashed_workers=crashed,
        replay=replay,
    )
    report("done", done=ledger.completed, total=row.orders)
    return RunResult(
        shots=shots,
        jobs=jobs,
        first_sent=min((s.sent_at for s in shots), default=first_sent),
        startup_seconds=startup,
        timed_out=timed_out,
        worker_ids=list(scenario.ids),
        history=attempts,
        kills=list(scenario.marks.kills),
        ledger=ledger,
    )


async def _replay(
    runner: Runner,
    row: Row,
    accepted: int,
    dbc: db.LazyConnection,
    client: aioredis.Redis,
    report: Callable[..., None],
) -> tuple[Replay, bool]:
    """Workers with the poison pattern switched off, every dead job queued again, and the
    wait until they are all completed."""
    _, dead_before = await db.count_settled(await dbc.get())
    report("replay", total=accepted)
    clean = replace(row.faults() or Faults(), poison="")
    await runner.ensure_workers(row, faults=clean)
    replayed = await dead_letters.replay(client, await dbc.get(), None)
    timed_out = await wait_settled(row, accepted, dbc, client, report)
    completed, _ = await db.count_settled(await dbc.get())
    return Replay(dead_before, len(replayed), completed), timed_out
