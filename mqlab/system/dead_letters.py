"""Dead letters: list them, show one job's story, replay dead jobs, purge them for good.

PostgreSQL is the truth about dead jobs (`jobs.status = 'dead'`, with the last error and
every attempt); `orders:dead` holds their messages (entries naming a `jobId`) and the queue
entries that were never jobs (no `jobId`, only a reason). So the list is the dead jobs from
PostgreSQL plus the entries that are not a job's.

Written once, async: the API awaits these, and `mqlab dead` runs them under asyncio.run
(as `mqlab status` does). Each takes a Redis client and/or an autocommit connection.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
import redis.asyncio as aioredis
from redis.client import NEVER_DECODE
from redis.exceptions import WatchError

from mqlab import db
from mqlab.protocol import keys
from mqlab.protocol.messages import DeadLetter, encode_message, read_dead_letter

#: What a replay did to one job id.
ReplayOutcome = Literal["replayed", "not dead", "no such job"]


@dataclass(frozen=True)
class DeadJob:
    """A dead job as PostgreSQL has it."""

    job_id: str
    order_id: int
    product: str | None  # None: its order row is gone (the worker buried it for that)
    attempts: int
    last_error: str | None
    finished_at: dt.datetime | None  # when it was buried


@dataclass(frozen=True)
class DeadList:
    """`mqlab dead list`: the dead jobs (newest first) and the entries that are no job's."""

    jobs: list[DeadJob]
    dead_jobs: int  # how many jobs are dead in all (jobs may be fewer: the limit)
    others: list[DeadLetter]  # orders:dead entries without a jobId, newest first
    entries: int  # LLEN orders:dead


@dataclass(frozen=True)
class JobStory:
    """`mqlab dead show JOB`: the job, its order, every attempt and its dead letters."""

    job: dict[str, Any]  # db.job_json
    order: dict[str, Any] | None  # db.order_json (None only if deleted meanwhile)
    attempts: list[dict[str, Any]]  # db.attempt_json, in order
    letters: list[DeadLetter] = field(default_factory=list)  # its orders:dead entries
    #: The attempts before its last replay (jobs.replay_base; 0: never replayed).
    replayed_after: int = 0


@dataclass(frozen=True)
class Replayed:
    """What a replay did to one id: `status` is the job's status when it was not dead."""

    job_id: str
    outcome: ReplayOutcome
    status: str | None = None


@dataclass(frozen=True)
class Purged:
    """What a purge deleted: the dead jobs' orders (and so the jobs and their attempts) and
    the dead-letter entries (unparseable ones included)."""

    orders: list[int]
    entries: int


async def _entries(client: aioredis.Redis) -> list[bytes]:
    """Every orders:dead entry, newest first, as bytes whatever the client decodes (an entry
    is whatever was pushed there)."""
    found: list[bytes] = await client.execute_command(
        "LRANGE", keys.DEAD, 0, -1, **{NEVER_DECODE: True}
    )
    return found


async def list_dead(
    client: aioredis.Redis, conn: psycopg.AsyncConnection[Any], limit: int = 100
) -> DeadList:
    """The newest `limit` dead jobs, and the orders:dead entries that are not a job's."""
    rows = await (await conn.execute(db.LIST_DEAD_JOBS, [limit])).fetchall()
    count = await (await conn.execute(db.COUNT_DEAD_JOBS)).fetchone()
    entries = await _entries(client)
    others = [letter for letter in map(read_dead_letter, entries) if letter.job_id is None]
    return DeadList(
        jobs=[DeadJob(*row) for row in rows],
        dead_jobs=int(count[0]) if count else 0,
        others=others[:limit],
        entries=len(entries),
    )


async def job_history(conn: psycopg.AsyncConnection[Any], job_id: str) -> list[dict[str, Any]]:
    """Every attempt of a job, in order, as the API's JSON."""
    rows = await (await conn.execute(db.JOB_ATTEMPTS, {"job": job_id})).fetchall()
    return [db.attempt_json(row) for row in rows]


async def show(
    client: aioredis.Redis, conn: psycopg.AsyncConnection[Any], job_id: str
) -> JobStory | None:
    """One job with its order, its attempts and its dead-letter entries; None if no such job."""
    if "\x00" in job_id:  # PostgreSQL text cannot hold NUL, so no job has it
        return None
    row = await (await conn.execute(db.JOB_AND_REPLAY_BY_ID, [job_id])).fetchone()
    if row is None:
        return None
    job = db.job_json(row[:-1])
    order = await (await conn.execute(db.ORDER_BY_ID, [job["orderId"]])).fetchone()
    letters = map(read_dead_letter, await _entries(client))
    return JobStory(
        job=job,
        order=db.order_json(order) if order else None,
        attempts=await job_history(conn, job_id),
        letters=[letter for letter in letters if letter.job_id == job_id],
        replayed_after=int(row[-1]),
    )


async def _requeue(client: aioredis.Redis, rows: list[tuple[Any, ...]]) -> None:
    """In one MULTI: drop the replayed jobs' entries from orders:dead, push their messages.

    WATCHed, so that an entry pushed between reading the list and the MULTI (a worker
    burying another job) is not lost and this one's are not missed: the MULTI is retried.
    """
    ids = {row[0] for row in rows}
    messages = [encode_message(jid, oid, db.iso(enqueued) or "") for jid, oid, enqueued in rows]
    async with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(keys.DEAD)
                entries: list[bytes] = await pipe.execute_command(
                    "LRANGE", keys.DEAD, 0, -1, **{NEVER_DECODE: True}
                )
                theirs = {e for e in entries if read_dead_letter(e).job_id in ids}
                pipe.multi()
                for entry in theirs:
                    pipe.lrem(keys.DEAD, 0, entry)
                # Oldest first onto the end workers take from last: they run in enqueue order.
                pipe.lpush(keys.QUEUE, *messages)
                await pipe.execute()
                return
            except WatchError:
                continue


async def replay(
    client: aioredis.Redis, conn: psycopg.AsyncConnection[Any], job_ids: list[str] | None
) -> list[Replayed]:
    """Queue dead jobs again: the given ids, or every dead job when `job_ids` is None.

    One guarded UPDATE makes the dead ones pending (see db.REPLAY_JOBS), and only the rows
    it returned are queued, so replaying twice queues once. Redis is asked first, so that
    with Redis away nothing changes (the caller gets the RedisError). Should Redis fail
    between the UPDATE and the MULTI, the jobs are pending in PostgreSQL with no message:
    the reconciler (PostgreSQL is the truth) queues them again.

    Returns one Replayed per id given (in their order, duplicates once), or per job replayed.
    """
    await client.ping()
    wanted = None if job_ids is None else list(dict.fromkeys(j for j in job_ids if "\x00" not in j))
    rows = await (await conn.execute(db.REPLAY_JOBS, {"ids": wanted})).fetchall()
    if rows:
        await _requeue(client, rows)
    done = {row[0] for row in rows}
    if job_ids is None:
        return [Replayed(row[0], "replayed") for row in rows]
    rest = [j for j in dict.fromkeys(job_ids) if j not in done]
    statuses: dict[str, str] = {}
    if rest:
        found = await conn.execute(db.STATUS_OF_JOBS, [[j for j in rest if "\x00" not in j]])
        statuses = {jid: status for jid, status in await found.fetchall()}
    return [
        Replayed(j, "replayed")
        if j in done
        else Replayed(j, "not dead", statuses[j])
        if j in statuses
        else Replayed(j, "no such job")
        for j in dict.fromkeys(job_ids)
    ]


async def counts(client: aioredis.Redis, conn: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
    """(dead jobs in PostgreSQL, entries on orders:dead): what a purge would delete."""
    row = await (await conn.execute(db.COUNT_DEAD_JOBS)).fetchone()
    return (int(row[0]) if row else 0), int(await client.llen(keys.DEAD))


async def purge(client: aioredis.Redis, conn: psycopg.AsyncConnection[Any]) -> Purged:
    """Forget the dead for good: delete the dead jobs' orders (their jobs and attempts go
    with them) and empty orders:dead, unparseable entries too."""
    await client.ping()  # with Redis away, delete nothing
    orders = [row[0] for row in await (await conn.execute(db.PURGE_DEAD)).fetchall()]
    async with client.pipeline(transaction=True) as pipe:
        pipe.llen(keys.DEAD)
        pipe.delete(keys.DEAD)
        entries, _ = await pipe.execute()
    return Purged(orders=sorted(orders), entries=int(entries))
