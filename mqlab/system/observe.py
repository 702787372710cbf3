"""One snapshot of the system (queue, workers, counts): for /stats, `mqlab status`, the lab."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis.asyncio as aioredis
from redis.client import NEVER_DECODE

from mqlab import db
from mqlab.protocol import keys
from mqlab.protocol.delayed import next_due
from mqlab.protocol.events import WorkerState
from mqlab.protocol.ids import host_by_prefix
from mqlab.protocol.messages import DeadLetter, read_dead_letter
from mqlab.protocol.scans import live_worker_ids, processing_lists


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker, from its heartbeat hash."""

    id: str
    pid: int
    host: str
    state: str  # a WorkerState; as the hash says, whatever it says
    job: str
    job_started: float  # epoch seconds; 0 when idle
    jobs_done: int
    started: float
    last_beat: float
    in_flight: int  # length of its processing list


#: A host's throughput counts the jobs its workers completed over this many seconds.
THROUGHPUT_SECONDS = 10.0
#: Where the jobs of a worker that is no longer live, and not known by its id's host, count.
#: No host is named so: MQLAB_HOST refuses the parentheses (mqlab.system.host).
GONE = "(gone)"


@dataclass(frozen=True)
class HostInfo:
    """One host: its live workers, how many are busy, the sum of their jobs done, and the
    jobs completed per second over the last THROUGHPUT_SECONDS by its workers."""

    host: str
    workers: int
    busy: int
    jobs_done: int
    per_second: float


def host_of(worker_id: str, live: dict[str, str]) -> str:
    """The host a worker's completed jobs count under: its heartbeat's (`live`: live worker
    id -> host); a worker no longer live, the live host its id starts with (`<host>-w3`,
    `<host>-<pid>`; the longest such host, so `a-b-w1` is `a-b`'s, not `a`'s), else GONE."""
    if worker_id in live:
        return live[worker_id]
    return host_by_prefix(worker_id, set(live.values())) or GONE


def hosts(workers: list[WorkerInfo], completed: dict[str, int]) -> list[HostInfo]:
    """Each host of a live worker, sorted by name, with its throughput from `completed`
    (worker id -> jobs completed in the last THROUGHPUT_SECONDS); GONE last, and only when
    workers no longer live completed any (then the hosts' rates add up to the system's)."""
    live = {w.id: w.host for w in workers}
    done: dict[str, int] = {}
    for worker_id, n in completed.items():
        host = host_of(worker_id, live)
        done[host] = done.get(host, 0) + n
    rows = []
    for host in sorted(set(live.values())):
        mine = [w for w in workers if w.host == host]
        rows.append(
            HostInfo(
                host,
                workers=len(mine),
                busy=sum(1 for w in mine if w.state == WorkerState.BUSY),
                jobs_done=sum(w.jobs_done for w in mine),
                per_second=done.get(host, 0) / THROUGHPUT_SECONDS,
            )
        )
    if done.get(GONE):
        rows.append(HostInfo(GONE, 0, 0, 0, done[GONE] / THROUGHPUT_SECONDS))
    return rows


async def host_snapshot(
    conn: psycopg.AsyncConnection[Any], workers: list[WorkerInfo]
) -> list[HostInfo]:
    """hosts() of these live workers and PostgreSQL's count of the last seconds' completions
    (one query)."""
    return hosts(workers, await db.completed_by_worker(conn, THROUGHPUT_SECONDS))


@dataclass(frozen=True)
class Snapshot:
    """Queue depth, in-flight and dead messages, live workers, counts by status."""

    taken_at: float
    queue_depth: int
    processing: int
    dead: int
    workers: list[WorkerInfo] = field(default_factory=list)
    orders: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)
    delayed: int = 0  # retries waiting out their backoff (ZCARD orders:delayed)
    next_retry_at: float | None = None  # epoch seconds, Redis's clock; None when none waits
    next_retry_in: float | None = None  # seconds from the snapshot to it, by Redis's clock
    hosts: list[HostInfo] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            # ISO-8601 UTC, as every other answer of the API gives its times.
            "takenAt": db.iso_epoch(self.taken_at),
            "queueDepth": self.queue_depth,
            "processing": self.processing,
            "dead": self.dead,
            "delayed": self.delayed,
            "nextRetryAt": db.iso_epoch(self.next_retry_at),
            "workers": [
                {
                    "id": w.id,
                    "pid": w.pid,
                    "host": w.host,
                    "state": w.state,
                    "currentJob": w.job or None,
                    "jobStarted": db.iso_epoch(w.job_started or None),
                    "jobsDone": w.jobs_done,
                    "started": db.iso_epoch(w.started),
                    "lastBeat": db.iso_epoch(w.last_beat),
                    "inFlight": w.in_flight,
                }
                for w in self.workers
            ],
            "hosts": [
                {
                    "host": h.host,
                    "workers": h.workers,
                    "busy": h.busy,
                    "jobsDone": h.jobs_done,
                    "perSecond": h.per_second,
                }
                for h in self.hosts
            ],
            "orders": self.orders,
            "jobs": self.jobs,
        }


def _worker(worker_id: str, raw: dict[str, str], in_flight: int) -> WorkerInfo:
    def num(name: str) -> float:
        try:
            return float(raw.get(name, 0) or 0)
        except ValueError:
            return 0.0

    return WorkerInfo(
        id=worker_id,
        pid=int(num("pid")),
        host=raw.get("host", ""),
        state=raw.get("state", "?"),
        job=raw.get("job", ""),
        job_started=num("job_started"),
        jobs_done=int(num("jobs_done")),
        started=num("started"),
        last_beat=num("last_beat"),
        in_flight=in_flight,
    )


async def queue_snapshot(client: aioredis.Redis) -> tuple[int, int, int, list[WorkerInfo]]:
    """(queue depth, in-flight, dead, workers) from Redis alone; workers in worker_sort_key
    order."""
    worker_ids = await live_worker_ids(client)
    processing_keys = await processing_lists(client)
    async with client.pipeline(transaction=False) as pipe:
        pipe.llen(keys.QUEUE)
        pipe.llen(keys.DEAD)
        for key in processing_keys:
            pipe.llen(key)
        for wid in worker_ids:
            pipe.hgetall(keys.worker_key(wid))
        results = await pipe.execute()
    depth, dead = int(results[0]), int(results[1])
    lengths = dict(zip(processing_keys, results[2 : 2 + len(processing_keys)], strict=True))
    hashes = results[2 + len(processing_keys) :]
    workers = [
        _worker(wid, raw, int(lengths.get(keys.processing_key(wid), 0)))
        for wid, raw in zip(worker_ids, hashes, strict=True)
        if raw  # expired between SCAN and HGETALL
    ]
    return depth, sum(int(n) for n in lengths.values()), dead, workers


async def delayed_snapshot(client: aioredis.Redis) -> tuple[int, float | None, float | None]:
    """(delayed retries, when the next is due, seconds until then): both times by Redis's
    clock, which scores the delayed set (mqlab.protocol.delayed), not this machine's."""
    due = await next_due(client)
    async with client.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.DELAYED)
        pipe.time()
        count, (seconds, micros) = await pipe.execute()
    return int(count), due, None if due is None else due - (seconds + micros / 1e6)


async def snapshot(client: aioredis.Redis, conn: psycopg.AsyncConnection[Any]) -> Snapshot:
    """Everything `mqlab status` and /stats show."""
    depth, processing, dead, workers = await queue_snapshot(client)
    delayed, next_at, next_in = await delayed_snapshot(client)
    cur = await conn.execute(db.COUNT_BY_STATUS)
    counts = db.counts_by_status(await cur.fetchall())
    by_host = await host_snapshot(conn, workers)
    return Snapshot(
        taken_at=time.time(),
        queue_depth=depth,
        processing=processing,
        dead=dead,
        workers=workers,
        orders=counts["orders"],
        jobs=counts["jobs"],
        delayed=delayed,
        next_retry_at=next_at,
        next_retry_in=next_in,
        hosts=by_host,
    )


async def latest_dead_letters(client: aioredis.Redis, count: int = 5) -> list[DeadLetter]:
    """The newest `count` dead letters (workers LPUSH them: newest first).

    Read as bytes whatever the client decodes: an entry is whatever was pushed there, and
    one that is not UTF-8 would make a decoding client fail.
    """
    entries = await client.execute_command(
        "LRANGE", keys.DEAD, 0, count - 1, **{NEVER_DECODE: True}
    )
    return [read_dead_letter(entry) for entry in entries]
