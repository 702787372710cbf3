"""The reconciler: PostgreSQL is the truth when Redis loses its data.

A run finds the jobs PostgreSQL has as pending, retrying or processing, longer than a grace
period, that no Redis structure holds (the queue, the delayed set, a processing list) and no
live worker names as its job, and queues them again: a pending job back on the queue, a
retrying one in the delayed set at its due time (the queue when due), and a processing one
whose worker is gone reclaimed (its attempt 'reclaimed', the job and order pending) first.

Order matters. PostgreSQL is asked first and Redis scanned after, so a job that finishes in
between is missing from Redis but re-checked in PostgreSQL (a guarded statement) before it is
queued. Redis is scanned in the direction jobs flow (delayed set, queue, processing lists,
heartbeats), so a job that moves forward during the scan is seen where it went. What remains
is a job that moves backwards mid-scan (a dead worker's job requeued by another): it may be
delivered twice, and the claim guard drops a delivery of a job that is already completed.

One run at a time across all workers: the lock keys.RECONCILER_LOCK (SET NX PX). A run
leaves the lock as a rest mark for the interval, so that the runs of all workers together
come once an interval, not once an interval per worker. `mqlab reconcile` takes a rest mark
over; it waits for a run in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import redis.asyncio as aioredis
import redis.exceptions

from mqlab import db
from mqlab.backend_errors import REDIS_FAILURE
from mqlab.protocol import events, keys
from mqlab.protocol.events import EventKind
from mqlab.protocol.messages import InvalidMessage, encode_message, parse_message
from mqlab.protocol.scans import SCAN_COUNT, processing_lists
from mqlab.system.reconciler_record import write_run
from mqlab.system.redis_clients import async_client

log = logging.getLogger("mqlab.system.reconciler")

ENV_GRACE = "MQLAB_RECONCILE_GRACE"
ENV_INTERVAL = "MQLAB_RECONCILE_INTERVAL"
DEFAULT_GRACE = 10.0
DEFAULT_INTERVAL = 5.0
#: Bounds of both (seconds). A grace under a second would race the API, which commits a job
#: before it pushes its message, and a worker between its claim's steps.
MIN_SECONDS, MAX_SECONDS = 1.0, 86_400.0

#: Entries read per LRANGE / ZSCAN call. Each call costs Redis O(page) plus LRANGE's seek to
#: its start (it walks the list's nodes, each holding many entries, from the nearer end), so
#: no call holds the server for long, however long the queue; a queue of Q entries costs us
#: Q/page round trips and a JSON parse per entry.
SCAN_PAGE = 1000
#: Messages pushed per script call (each call runs alone on the server, O(batch)).
PUSH_BATCH = 500
#: A run holds the lock at most this long: far above a run (tens of milliseconds for
#: hundreds of jobs, about a second for 100,000), so that a worker that dies mid-run frees
#: it soon enough.
LOCK_TTL = 60.0
#: A worker whose last try found the lock taken tries again this much later.
RETRY_LOCK_EVERY = 1.0
#: `mqlab reconcile` waits this long for a run in progress.
CLI_WAIT = 5.0
#: Releasing the lock gets this long at most (a worker's stop must not wait on it).
RELEASE_SECONDS = 1.0

#: What a run may fail with when a backend is away or refuses: tick() logs it, never raises.
FAILURES: tuple[type[Exception], ...] = (*REDIS_FAILURE, psycopg.Error, TimeoutError)

_REST = "rest:"

#: KEYS: the lock. ARGV: the token, the TTL in ms. Takes the lock when it is free or only a
#: rest mark (the CLI's way in); returns 1 when taken, else the holder's value.
ACQUIRE_OVER_REST = f"""
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, {len(_REST)}) ~= '{_REST}' then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
#: KEYS: the lock. ARGV: the token, the rest in ms, the rest mark. Only the owner releases:
#: the lock becomes the rest mark (or goes, with no rest). Returns 1 when it was ours.
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
else
    redis.call('DEL', KEYS[1])
end
return 1
"""
#: KEYS: the queue, the delayed set. ARGV: pairs of (message, seconds until due). Due ones
#: join the queue's tail in the order given (the oldest is taken first), the others the
#: delayed set at Redis's clock plus their delay (as mqlab.protocol.delayed scores it).
PUSH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, #ARGV, 2 do
    local delay = tonumber(ARGV[i + 1])
    if delay > 0 then
        redis.call('ZADD', KEYS[2], now + delay, ARGV[i])
    else
        redis.call('LPUSH', KEYS[1], ARGV[i])
    end
end
return #ARGV / 2
"""


class ReconcilerError(ValueError):
    """A setting the reconciler cannot run with; the text says which and why."""


class LockBusy(RuntimeError):
    """Another run holds the lock (the text names its holder)."""


def check_seconds(name: str, value: float) -> float:
    """`value` if it is a number of seconds within the bounds, else ReconcilerError."""
    if not MIN_SECONDS <= value <= MAX_SECONDS:  # nan fails this too
        raise ReconcilerError(
            f"{name} must be from {MIN_SECONDS:g} to {MAX_SECONDS:g} seconds, not {value}"
        )
    return value


@dataclass(frozen=True)
class ReconcileConfig:
    """The grace (how old a job must be to be queued again) and the interval between runs."""

    grace: float = DEFAULT_GRACE
    interval: float = DEFAULT_INTERVAL

    def __post_init__(self) -> None:
        check_seconds("the reconciler's grace", self.grace)
        check_seconds("the reconciler's interval", self.interval)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReconcileConfig:
        """The defaults, with what MQLAB_RECONCILE_GRACE / _INTERVAL say."""
        env = os.environ if environ is None else environ
        values: dict[str, float] = {}
        for name, var in (("grace", ENV_GRACE), ("interval", ENV_INTERVAL)):
            text = env.get(var)
            if text is None:
                continue
            try:
                values[name] = check_seconds(var, float(text))
            except ValueError as exc:
                if isinstance(exc, ReconcilerError):
                    raise
                raise ReconcilerError(f"{var} takes a number of seconds, not {text!r}") from None
        return cls(**values)


@dataclass(frozen=True)
class Result:
    """One run: its time, owner and duration, and what it found and queued again."""

    at: float  # epoch seconds
    by: str
    took: float  # seconds
    checked: int  # jobs PostgreSQL expected to run, older than the grace
    found: int  # of those, held by no Redis structure and no live worker
    requeued: tuple[str, ...]  # the ids queued again (oldest first)


@dataclass(frozen=True)
class _Candidate:
    id: str
    order_id: int
    status: str
    worker: str | None
    attempts: int
    enqueued_at: Any  # a datetime
    delay: float | None  # seconds until due (retrying)

    def message(self) -> bytes:
        return encode_message(self.id, self.order_id, db.iso(self.enqueued_at) or "")


async def _list_pages(
    client: aioredis.Redis, key: str | bytes, add: Callable[[bytes], None]
) -> None:
    # From the head (where LPUSH adds) to the tail (where workers take): a push shifts what
    # is left to read by one, so an entry may be read twice, never missed.
    start = 0
    while True:
        page: list[bytes] = await client.lrange(key, start, start + SCAN_PAGE - 1)  # type: ignore[misc]
        for raw in page:
            add(raw)
        if len(page) < SCAN_PAGE:
            return
        start += SCAN_PAGE


async def held_job_ids(client: aioredis.Redis) -> set[str]:
    """Ids of the jobs Redis holds anywhere: the delayed set, the queue, the processing lists
    (entries that are not job messages are skipped), and live workers' current jobs."""
    # In the order jobs flow (see the module's docstring): a job moving forward mid-scan is
    # seen where it went. The processing lists are listed after the queue is read, so one a
    # worker's BLMOVE creates meanwhile is among them.
    held: set[str] = set()

    def add(raw: bytes) -> None:
        with contextlib.suppress(InvalidMessage):
            held.add(parse_message(raw).job_id)

    # ZSCAN, not ZRANGE by rank: promotions remove the lowest scores mid-scan, which would
    # shift ranks and skip entries; a full ZSCAN returns all that stayed throughout.
    async for member, _ in client.zscan_iter(keys.DELAYED, count=SCAN_PAGE):
        add(member)
    await _list_pages(client, keys.QUEUE, add)
    for key in await processing_lists(client):
        with contextlib.suppress(redis.exceptions.ResponseError):  # not a list: not ours
            await _list_pages(client, key, add)
    held.update(await running_job_ids(client))
    return held


async def running_job_ids(client: aioredis.Redis) -> set[str]:
    """Ids of the jobs live workers say they run (their heartbeats' `job`)."""
    beats = [k async for k in client.scan_iter(match=f"{keys.WORKER_PREFIX}*", count=SCAN_COUNT)]
    if not beats:
        return set()
    async with client.pipeline(transaction=False) as pipe:
        for key in beats:
            pipe.hget(key, "job")
        jobs = await pipe.execute(raise_on_error=False)
    return {j.decode(errors="replace") for j in jobs if isinstance(j, bytes) and j}


async def _push(client: aioredis.Redis, found: list[_Candidate]) -> None:
    for i in range(0, len(found), PUSH_BATCH):
        args: list[bytes | str] = []
        for c in found[i : i + PUSH_BATCH]:
            due = c.delay if c.status == "retrying" and c.delay is not None else 0.0
            args += [c.message(), repr(max(0.0, due))]
        await client.eval(PUSH, 2, keys.QUEUE, keys.DELAYED, *args)  # type: ignore[misc]


async def _still(
    conn: psycopg.AsyncConnection[Any], query: str, found: list[_Candidate], **more: list[Any]
) -> set[str]:
    """The ids `query` returns for `found` (passed as arrays: ids, attempts, and `more`): the
    candidates PostgreSQL still has as they were read. No statement for none."""
    if not found:
        return set()
    params = {"ids": [c.id for c in found], "attempts": [c.attempts for c in found], **more}
    cur = await conn.execute(query, params)
    return {row[0] for row in await cur.fetchall()}


async def reconcile(
    client: aioredis.Redis, conn: psycopg.AsyncConnection[Any], owner: str, grace: float
) -> Result:
    """One run, without the lock (see Reconciler): find, re-check, queue again, record."""
    at, began = time.time(), time.monotonic()
    rows = await (await conn.execute(db.RECONCILE_CANDIDATES, {"grace": grace})).fetchall()
    # Nothing PostgreSQL expects to run for longer than the grace: Redis need not be read (a
    # long queue is read in pages, and parsed, by a worker that has jobs to do).
    held = await held_job_ids(client) if rows else set()
    missing = [_Candidate(*row) for row in rows if row[0] not in held]
    waiting = [c for c in missing if c.status != "processing"]
    taken = [c for c in missing if c.status == "processing"]
    if taken:
        # When Redis has just lost its data (a flush, a restart), live workers' heartbeats are
        # missing until their next beat: a job one of them runs would be reclaimed and run
        # twice. Their beats are waited for (a TTL: what "gone" means), then looked at again.
        await asyncio.sleep(keys.HEARTBEAT_TTL)
        running = await running_job_ids(client)
        taken = [c for c in taken if c.id not in running]
    still = await _still(conn, db.RECHECK_WAITING, waiting, statuses=[c.status for c in waiting])
    # Reclaimed in PostgreSQL before the push: should the push fail, the job is pending there
    # with an old enqueued_at, and the next run queues it.
    still |= await _still(conn, db.RECLAIM_JOBS, taken, workers=[c.worker for c in taken])
    chosen = [c for c in missing if c.id in still]  # oldest first, as the query sorted them
    await _push(client, chosen)
    requeued = tuple(c.id for c in chosen)
    result = Result(at, owner, time.monotonic() - began, len(rows), len(missing), requeued)
    await write_run(
        client,
        at=at,
        by=owner,
        took=result.took,
        checked=result.checked,
        found=result.found,
        requeued=requeued,
    )
    if requeued:
        shown = ", ".join(requeued[:5]) + (" ..." if len(requeued) > 5 else "")
        log.warning("%s: reconciler requeued %d job(s) Redis had lost: %s",
                    owner, len(requeued), shown)  # fmt: skip
        await events.emit(
            client, EventKind.RECONCILED, worker=owner, requeued=len(requeued), found=len(missing)
        )
    return result


def _holder(value: bytes | str | int | None) -> str:
    """Who a lock's value names: `<owner> <nonce>`, or `rest:<owner>` after a run."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value or "?")
    return text.removeprefix(_REST).rsplit(" ", 1)[0]


class Reconciler:
    """The reconciler as a worker (or the CLI) runs it: tick() every heartbeat, aclose() at
    the end. Its PostgreSQL connection is its own (the worker's claims jobs), opened at the
    first run that needs it."""

    def __init__(
        self,
        client: aioredis.Redis,
        database_url: str,
        owner: str,
        grace: float = DEFAULT_GRACE,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        config = ReconcileConfig(grace, interval)  # checks both
        self.client, self.database_url, self.owner = client, database_url, owner
        self.grace, self.interval = config.grace, config.interval
        self.pg = db.LazyConnection(database_url, connect_timeout=3)
        self.runs = 0
        self.requeued = 0
        self._next_try = 0.0  # time.monotonic(): the first tick tries at once

    def __repr__(self) -> str:
        return f"<Reconciler {self.owner} runs={self.runs} requeued={self.requeued}>"

    async def _db(self) -> psycopg.AsyncConnection[Any]:
        return await self.pg.get()

    async def _drop_pg(self) -> None:
        await self.pg.drop()

    async def _acquire(self, token: str, over_rest: bool, wait: float) -> None:
        """Take the lock, or LockBusy once `wait` seconds have passed."""
        deadline = time.monotonic() + wait
        while True:
            if over_rest:
                got = await self.client.eval(  # type: ignore[misc]
                    ACQUIRE_OVER_REST, 1, keys.RECONCILER_LOCK, token, int(LOCK_TTL * 1000)
                )
                if got == 1:
                    return
                holder = got
            else:
                lock_ttl = int(LOCK_TTL * 1000)
                if await self.client.set(keys.RECONCILER_LOCK, token, nx=True, px=lock_ttl):
                    return
                holder = await self.client.get(keys.RECONCILER_LOCK)
            if time.monotonic() >= deadline:
                raise LockBusy(f"the reconciler is running in {_holder(holder)}")
            await asyncio.sleep(0.1)

    async def _release(self, token: str) -> None:
        rest = int(self.interval * 1000)
        with contextlib.suppress(*FAILURES):
            async with asyncio.timeout(RELEASE_SECONDS):
                await self.client.eval(  # type: ignore[misc]
                    RELEASE, 1, keys.RECONCILER_LOCK, token, rest, f"{_REST}{self.owner}"
                )

    async def run(self, *, over_rest: bool = False, wait: float = 0.0) -> Result:
        """One run under the lock (LockBusy when another holds it for `wait` seconds more).

        Backend failures propagate: tick() swallows them, `mqlab reconcile` reports them.
        """
        token = f"{self.owner} {uuid.uuid4().hex}"
        await self._acquire(token, over_rest, wait)
        try:
            result = await reconcile(self.client, await self._db(), self.owner, self.grace)
        except psycopg.Error:
            await self._drop_pg()
            raise
        finally:
            await self._release(token)
        self.runs += 1
        self.requeued += len(result.requeued)
        return result

    async def tick(self) -> Result | None:
        """Run when this reconciler's interval has passed and the lock is free; None when it
        did not run. Never raises for a backend that is away: it logs, and tries later."""
        now = time.monotonic()
        if now < self._next_try:
            return None
        try:
            result = await self.run()
        except LockBusy:
            self._next_try = now + min(self.interval, RETRY_LOCK_EVERY)
            return None
        except FAILURES as exc:
            self._next_try = now + self.interval
            log.warning("%s: reconciler run failed (%s); next try in %gs",
                        self.owner, exc, self.interval)  # fmt: skip
            return None
        except Exception:
            # A side duty must not take its worker down (tick runs in its heartbeat loop).
            self._next_try = now + self.interval
            log.exception("%s: reconciler run failed unexpectedly", self.owner)
            return None
        self._next_try = now + self.interval
        return result

    async def aclose(self) -> None:
        """Close its PostgreSQL connection (the Redis client is the caller's)."""
        await self._drop_pg()


async def reconcile_now(
    redis_url: str, database_url: str, grace: float, wait: float = CLI_WAIT
) -> Result:
    """`mqlab reconcile`: one run as "cli", taking a rest mark over and waiting up to `wait`
    seconds for a run in progress (LockBusy after). Backend failures propagate."""
    interval = ReconcileConfig.from_env().interval
    client = async_client(redis_url, decode_responses=False, socket_timeout=5)
    reconciler = Reconciler(client, database_url, "cli", grace, interval)
    try:
        return await reconciler.run(over_rest=True, wait=wait)
    finally:
        await reconciler.aclose()
        with contextlib.suppress(*REDIS_FAILURE):
            await client.aclose()
