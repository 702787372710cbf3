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
