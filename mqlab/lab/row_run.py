"""The steps of one run of a plain (Kata 3) row, which mqlab.lab.runner's skeleton takes in
order (workers, reset, fire, wait, collect, report); mqlab.lab.faulty_run.FaultyRun adds a
faulty row's parts to them. Here too: the pool of workers the runner keeps between rows, and
the firing of a row's orders."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis.asyncio as aioredis

from mqlab import db
from mqlab.experiments import Row
from mqlab.figures.ledger import Attempt, Marks, build
from mqlab.figures.results import JobTiming, RunResult
from mqlab.figures.shot import Shot
from mqlab.lab.completion import wait_completed
from mqlab.lab.loadgen import fire, pace
from mqlab.protocol import keys
from mqlab.protocol.events import EventKind
from mqlab.system.spec import WorkerSpec

#: At most this many connections fire a burst (split over its kinds of order).
MAX_CONCURRENCY = 100

#: report(phase, **fields): a row's progress, for the front end.
Report = Callable[..., None]
#: Make the pool match a spec; returns the seconds it took (Runner.ensure_workers).
Restart = Callable[[WorkerSpec], Awaitable[float]]
#: The same, with how many workers (Runner.ensure_workers itself).
SizePool = Callable[[WorkerSpec, int], Awaitable[float]]


@dataclass
class Pool:
    """The workers the runner keeps between rows, and the spec they were started with."""

    spec: WorkerSpec | None = None
    ids: list[str] = field(default_factory=list)


async def fire_products(
    api_urls: Sequence[str], batches: Sequence[tuple[int, str]], over_seconds: float | None = None
) -> list[Shot]:
    """Orders of each (count, product) at once, in one burst of at most MAX_CONCURRENCY
    connections shared by the products in proportion; or each paced over `over_seconds`.
    Each product's orders are shared out among the APIs (a lab on several hosts has one on
    each of two)."""
    batches = [
        (share, product, url)
        for n, product in batches
        for i, url in enumerate(api_urls)
        if (share := n // len(api_urls) + (i < n % len(api_urls)))
    ]
    if over_seconds:
        sent = [pace(url, n, over_seconds / n, product=p) for n, p, url in batches]
    else:
        orders = sum(n for n, _, _ in batches)
        share = min(orders, MAX_CONCURRENCY) / orders if orders else 0
        sent = [fire(url, n, max(1, round(n * share)), product=p) for n, p, url in batches]
    return [s for shots in await asyncio.gather(*sent) for s in shots]


@dataclass
class EventCounts:
    """What the events stream (mqlab:events) says of a run."""

    #: job id -> its completions: job_finished events of distinct (attempt, worker). The
    #: same one twice is one announcement sent again (its reply lost: Redis failed over, a
    #: connection broke), not a second completion. More than one: completed twice.
    completions: dict[str, int] = field(default_factory=dict)
    #: job_lost events: completions refused because the claim had been taken over.
    refused_late: int = 0
    #: Jobs the reconciler queued again (Redis had lost their messages).
    reconciled: int = 0


async def finished_events(client: aioredis.Redis) -> EventCounts:
    """The run's EventCounts, read from mqlab:events."""
    seen: dict[str, set[tuple[str, str]]] = {}
    counts = EventCounts()
    for _, entry in await client.xrange(keys.EVENTS, "-", "+"):
        kind = entry.get("type")
        if kind == EventKind.JOB_FINISHED and "job" in entry:
            done = (entry.get("attempt", ""), entry.get("worker", ""))
            seen.setdefault(entry["job"], set()).add(done)
        counts.refused_late += kind == EventKind.JOB_LOST
        if kind == EventKind.RECONCILED and entry.get("requeued", "").isdigit():
            counts.reconciled += int(entry["requeued"])
    counts.completions = {job: len(done) for job, done in seen.items()}
    return counts


class PlainRun:
    """One run of a plain row: one burst of its orders, a wait for each to be completed, and
    every job's times read back."""

    def __init__(
        self,
        row: Row,
        pool: Pool,
        conn: psycopg.AsyncConnection[Any],
        client: aioredis.Redis,
        keep_ledger: bool = False,
    ) -> None:
        self.row = row
        self.pool = pool
        self.conn = conn
        self.client = client
        #: Keep the row's ledger too (a row on several hosts, where what crossed a network
        #: is worth counting): judged beside its time.
        self.keep_ledger = keep_ledger

    def skipped(self) -> RunResult | None:
        """The run's result when the row cannot run here (None: it can)."""
        return None

    @contextlib.asynccontextmanager
    async def beside(self, first_sent: float) -> AsyncIterator[None]:
        """What the lab does while the orders are fired and waited for: nothing here."""
        yield

    async def fire(self, api_urls: Sequence[str]) -> list[Shot]:
        return await fire_products(api_urls, self.row.products(f"{self.row.name} #"))

    async def wait(self, accepted: asyncio.Future[int], report: Report) -> bool:
        """Poll until every accepted job is completed (False) or the row times out (True).

        It starts polling once the burst has been answered: polls running in the same loop
        while the load generator waits for answers delay its reads and inflate the API
        latency it records (measured: p50 7 ms against 3 ms for a single order).
        """
        start = time.monotonic()
        await accepted
        row = self.row

        async def show(done: int) -> None:
            depth = int(await self.client.llen(keys.QUEUE))
            elapsed = time.monotonic() - start
            report("waiting", done=done, total=row.orders, elapsed=elapsed, queue_depth=depth)

        left = start + row.timeout - time.monotonic()
        return not await wait_completed(self.conn, accepted.result(), left, on_count=show)

    async def after_wait(
        self, timed_out: bool, accepted: int, report: Report, restart: Restart
    ) -> bool:
        """What follows the wait (a faulty row's replay); whether the row timed out."""
        return timed_out

    async def result(
        self, shots: list[Shot], first_sent: float, startup: float, timed_out: bool, report: Report
    ) -> RunResult:
        """Every job's times read back, the row's end reported."""
        jobs = [JobTiming.from_row(r) for r in await db.job_timings(self.conn)]
        history = [Attempt.from_row(r) for r in await db.attempt_times(self.conn)]
        report("done", done=sum(1 for j in jobs if j.status == "completed"), total=self.row.orders)
        run = run_result(shots, first_sent, startup, timed_out, jobs, history, self.pool.ids)
        if self.keep_ledger:
            events = await finished_events(self.client)
            statuses = {j.job_id: j.status for j in jobs}
            run.ledger = build(self.row, shots, statuses, history, events.completions, Marks(),
                               timed_out=timed_out, refused_late=events.refused_late,
                               reconciled=events.reconciled)  # fmt: skip
        return run


class DrainRun(PlainRun):
    """A drain row (prefill): its orders are all queued with no worker running, then its
    workers start with the queue parked, and get it at once. The row's time runs from that
    moment (not from the first order), so its rate is the workers', not the API's."""

    def __init__(
        self,
        row: Row,
        pool: Pool,
        conn: psycopg.AsyncConnection[Any],
        client: aioredis.Redis,
        size_pool: SizePool,
        keep_ledger: bool = False,
    ) -> None:
        super().__init__(row, pool, conn, client, keep_ledger)
        self.size_pool = size_pool
        self.released = 0.0

    async def fire(self, api_urls: Sequence[str]) -> list[Shot]:
        spec = self.row.spec
        await self.size_pool(spec, 0)
        shots = await super().fire(api_urls)
        accepted = any(s.status == 202 for s in shots)
        if accepted:
            await self.client.rename(keys.QUEUE, keys.PARKED)
        await self.size_pool(spec, self.row.workers)
        if accepted:
            await self.client.rename(keys.PARKED, keys.QUEUE)  # wakes the blocked BLMOVEs
        self.released = time.time()
        return shots

    async def result(
        self, shots: list[Shot], first_sent: float, startup: float, timed_out: bool, report: Report
    ) -> RunResult:
        run = await super().result(shots, first_sent, startup, timed_out, report)
        run.first_sent = self.released or run.first_sent
        return run


def run_result(
    shots: list[Shot],
    first_sent: float,
    startup: float,
    timed_out: bool,
    jobs: list[JobTiming],
    history: list[Attempt],
    worker_ids: list[str],
    **more: Any,
) -> RunResult:
    """A run's result: its first order's time is the first shot's (`first_sent` if none)."""
    return RunResult(
        shots=shots,
        jobs=jobs,
        first_sent=min((s.sent_at for s in shots), default=first_sent),
        startup_seconds=startup,
        timed_out=timed_out,
        worker_ids=list(worker_ids),
        history=history,
        **more,
    )
