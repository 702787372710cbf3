"""A worker's life around its jobs: its start, the loops that run beside the job path, its stop.

- The start: refuse an id a live process on this host runs as (IdInUse), say we are here,
  take back what a previous run of this id left in its processing list, connect.
- The loops: the heartbeat (and the reaper, which moves the messages of workers whose
  heartbeat expired back to the queue: requeue_orphans), the promotion of due retries from
  the delayed set, and the reconciler's turn.
- The stop: a job in hand pending again, what our processing list holds back on the queue,
  our heartbeat gone, every step bounded so that a backend that is away does not hold the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

import psycopg
import redis.asyncio as aioredis
import redis.exceptions

from mqlab import db
from mqlab.backend_errors import BACKEND_DOWN
from mqlab.procs import pid_alive
from mqlab.protocol import delayed, events, keys
from mqlab.protocol.events import EventKind, WorkerState
from mqlab.protocol.messages import one_line
from mqlab.protocol.scans import heartbeat_of, live_worker_ids, processing_lists, worker_of
from mqlab.system.outages import Outages
from mqlab.system.reconciler import Reconciler

# The worker's logger: these lines are the worker's, under one name wherever they are written.
log = logging.getLogger("mqlab.system.worker")

#: At a stop, each clean-up step (a held job marked pending in PostgreSQL; messages handed
#: back and the heartbeat removed on Redis) gets this long, so that a backend that is away
#: does not hold the exit. What Redis did not take back stays in our processing list and goes
#: back to the queue once our heartbeat has expired.
STOP_STEP_SECONDS = 0.75

#: A heartbeat pass this long after the one before (its interval is HEARTBEAT_INTERVAL) came
#: late: this process or Redis stalled, and the reaper holds off as after an outage.
LATE_PASS = 2.0


class IdInUse(Exception):
    """A live process on this host already runs as this worker id (its heartbeat says so)."""


class KeptWorker(Protocol):
    """What the upkeep reads and sets of its worker (mqlab.system.worker.Worker, which
    imports this module: named here, not imported)."""

    id: str
    pid: int
    host: str
    reliable: bool
    processing: str
    state: WorkerState
    #: job -> attempt of the jobs claimed whose claim has not ended: what a stop hands back.
    claims: dict[str, int]
    #: The live workers it shares the queue with.
    peers: int
    last_beat_sent: float
    redis: aioredis.Redis
    pg: db.LazyConnection
    reconciler: Reconciler
    outages: Outages

    @property
    def most(self) -> int:
        """The most messages it takes at once."""
        ...

    async def beat(self) -> None: ...

    async def hand_back_own(self) -> int: ...


class Upkeep:
    """The start, the background loops and the stop of one worker."""

    def __init__(self, worker: KeptWorker) -> None:
        self.worker = worker
        #: Cleared when the consuming ends: the heartbeat loop checks it as well as being
        #: cancelled, because redis-py's asyncio client can swallow a cancellation that comes
        #: mid-command (seen with redis 8.1: about one in three), which kept the loop, and so
        #: the process, alive after a SIGTERM.
        self.consuming = True
        #: False when another live process runs as this id: what Redis holds under the id
        #: (its heartbeat, its processing list) is that process's, and the stop leaves it be.
        self.owns_id = True
        self._last_pass = 0.0  # time.monotonic() of the heartbeat loop's last pass

    async def start(self) -> None:
        """Say we are here, take back what a previous life of this id left, connect."""
        w, retry = self.worker, self.worker.outages.retry
        # race=True throughout: a stop while a backend is still away must not wait for it.
        await retry("Redis", self._check_id, race=True)
        await retry("Redis", w.beat, race=True)
        moved = await retry("Redis", w.hand_back_own, race=True)
        if moved:
            log.info("%s: handed %d job(s) of a previous run back to the queue", w.id, moved)
        await retry("PostgreSQL", w.pg.get, race=True)
        w.state = WorkerState.IDLE
        await retry("Redis", w.beat, race=True)
        await events.emit(w.redis, EventKind.WORKER_UP, worker=w.id, pid=w.pid)

    async def _check_id(self) -> None:
        """IdInUse when a live process on this host beats as this id: the processing list of
        the id is then that process's, not a previous life's to take back (taking it would
        make its jobs look abandoned, and run them twice). Another host's process cannot be
        checked: ids are unique per deployment."""
        w = self.worker
        beat = await w.redis.hgetall(keys.worker_key(w.id))
        pid, host = beat.get(b"pid", b""), beat.get(b"host", b"")
        if host.decode(errors="replace") != w.host or not pid.isdigit():
            return
        other = int(pid)
        if other != w.pid and pid_alive(other, "worker"):
            raise IdInUse(
                f"{w.id}: worker id {w.id!r} is in use by pid {other} on this host; "
                "give this worker another --id"
            )

    def loops(self) -> list[asyncio.Task[None]]:
        """Start the loops that run beside the job path, until `consuming` is cleared (and
        they are cancelled): heartbeat and reaper, promotion, and (reliable fetch) the
        reconciler's turn."""
        tasks = [
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._promote_loop()),
        ]
        if self.worker.reliable:
            tasks.append(asyncio.create_task(self._reconcile_loop()))
        return tasks

    async def _heartbeat_loop(self) -> None:
        # Sleep first: run() has just beaten. A beat sent now would race the first job's
        # "busy" beat on a second, still connecting, connection and could land after it,
        # showing the worker idle for a second while it works.
        w, outages = self.worker, self.worker.outages
        while self.consuming:
            await asyncio.sleep(keys.HEARTBEAT_INTERVAL)
            now = time.monotonic()
            if self._last_pass and now - self._last_pass > LATE_PASS:
                outages.lost_sight = now  # we, or Redis, stalled: the others may have too
            self._last_pass = now
            try:
                # Jobs beat as they start and finish: no need to add one when they did lately.
                if now - w.last_beat_sent >= keys.HEARTBEAT_INTERVAL / 2:
                    await w.beat()
                if w.most > 1:  # a batch is a fair share of the queue among the live
                    w.peers = len(await live_worker_ids(w.redis)) or 1
                if w.reliable and now - outages.lost_sight >= keys.HEARTBEAT_TTL:
                    await requeue_orphans(w.redis, exclude=w.id)
            except BACKEND_DOWN:
                outages.lost_sight = time.monotonic()

    async def _reconcile_loop(self) -> None:
        """Offer to run the reconciler once a second (it runs when its interval has passed
        and no other worker holds its lock). A task of its own, not a step of the heartbeat
        loop: a long run (a queue of 100,000 to scan) must not delay our beats past their
        TTL, or the job in our hands would be taken for a dead worker's."""
        while self.consuming:
            await asyncio.sleep(keys.HEARTBEAT_INTERVAL)
            await self.worker.reconciler.tick()  # raises nothing for a backend that is away

    async def _promote_loop(self) -> None:
        """Move due retries from the delayed set to the queue, every PROMOTE_INTERVAL (every
        live worker does: the script runs alone on the server, so none is moved twice)."""
        w = self.worker
        while self.consuming:
            await asyncio.sleep(delayed.PROMOTE_INTERVAL)
            with contextlib.suppress(*BACKEND_DOWN):
                moved, _ = await delayed.promote(w.redis)
                if moved:
                    log.info("%s: %d retr%s due: back on the queue", w.id, moved,
                             "y" if moved == 1 else "ies")  # fmt: skip

    async def shutdown(self) -> None:
        """Leave nothing behind: a job in hand pending again in PostgreSQL and, like a message
        taken but not worked, back on the queue; our heartbeat gone. Each step is bounded
        (STOP_STEP_SECONDS), so that a backend that is away does not hold the exit."""
        w = self.worker
        w.state = WorkerState.STOPPING
        if not self.owns_id:
            await self._close()
            return
        # Before the messages are back on the queue: a job there is never shown as ours.
        # One step for them all (a batch's), each released on its own guard.
        try:
            async with asyncio.timeout(STOP_STEP_SECONDS):
                for job_id, attempt in list(w.claims.items()):
                    async with w.pg.use() as conn:
                        await conn.execute(
                            db.RELEASE_JOB,
                            {"job": job_id, "status": "processing", "worker": w.id,
                             "attempt": attempt},
                        )  # fmt: skip
                    del w.claims[job_id]
        except (TimeoutError, psycopg.Error) as exc:
            log.warning("%s: could not mark %s pending again (%s); the next worker to take "
                        "them claims them all the same", w.id, ", ".join(w.claims),
                        exc)  # fmt: skip
        try:
            async with asyncio.timeout(STOP_STEP_SECONDS):
                # The heartbeat first: a message handed back while it still named this run
                # would be dropped by the worker that took it, as a live worker's duplicate.
                await w.redis.delete(keys.worker_key(w.id))
                moved = await w.hand_back_own()
                if moved:
                    log.info("%s: handed %d unfinished job(s) back to the queue", w.id, moved)
                await events.emit(w.redis, EventKind.WORKER_DOWN, worker=w.id)
        except (TimeoutError, *BACKEND_DOWN, redis.exceptions.OutOfMemoryError) as exc:
            # Away, or full (it refuses LMOVE under maxmemory): nothing is lost either way.
            log.warning("%s: Redis did not take the stop (%s): what %s holds goes back "
                        "to the queue once our heartbeat has expired", w.id, exc,
                        w.processing)  # fmt: skip
        await self._close()

    async def _close(self) -> None:
        w = self.worker
        await w.reconciler.aclose()
        with contextlib.suppress(*BACKEND_DOWN):
            await w.redis.aclose()
        await w.pg.drop()


async def requeue_orphans(client: aioredis.Redis, exclude: str | None = None) -> int:
    """Move the jobs of workers whose heartbeat expired back to the queue. Returns how many.

    Nothing while the server has been up for less than a heartbeat TTL: started again (its
    append-only file keeps the processing lists, while the heartbeats expired meanwhile),
    it has not heard from every live worker yet. A worker also holds off for a TTL after it
    lost sight of Redis itself (Outages.lost_sight). `client` answers bytes (no
    decode_responses): a key is handled whatever its name. LMOVE moves one element
    atomically, so two workers reaping at once never duplicate one.
    """
    mine = keys.processing_key(exclude).encode() if exclude is not None else None
    orphans = [
        key
        for key in await processing_lists(client)
        if key != mine and not await client.exists(heartbeat_of(key))
    ]
    if not orphans or await _up_for(client) < keys.HEARTBEAT_TTL:
        return 0
    moved = 0
    for key in orphans:
        while await client.lmove(key, keys.QUEUE, "RIGHT", "RIGHT") is not None:
            moved += 1
            owner = worker_of(key)
            if isinstance(owner, bytes):
                owner = owner.decode(errors="backslashreplace")
            log.warning("requeued a job of dead worker %s", one_line(owner, 80))
    return moved


async def _up_for(client: aioredis.Redis) -> float:
    """How long the Redis server has been up (seconds); infinite when INFO is refused."""
    try:
        info = await client.info("server")
    except redis.exceptions.ResponseError:  # an ACL without INFO: judged without it
        return float("inf")
    return float(info.get("uptime_in_seconds", float("inf")))
