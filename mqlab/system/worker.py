"""The worker (consumer): reliable fetch, guarded claims, retries, heartbeats, crash recovery.

Loop: BLMOVE a message from the queue into this worker's own processing list (the keys and
messages are mqlab.protocol's), claim the job in PostgreSQL (a guarded UPDATE that also
counts the attempt), do the work, record the outcome, and only then remove the message from
the processing list (the ack). A worker that dies keeps its message in its processing list;
when its heartbeat key expires, any other worker moves it back to the queue.

An attempt that fails is recorded first in PostgreSQL and then moved in Redis: a transient
failure makes the job `retrying` and moves its message to the delayed set, due after the
retry policy's backoff (every worker promotes due jobs back to the queue); a permanent one
(poison), or a failure with no attempts left, makes it `dead` and its message a dead letter.
A job whose worker dies on it every time ends dead too: its claims count its attempts.

No queue entry stops a worker: one that is not a job (see mqlab.protocol.messages) or whose
claim PostgreSQL refuses is dead-lettered, and the worker goes on. A stop request is obeyed
at once when no job is in hand, also while a backend is away.

This module is the job path: take, claim, work, record, ack. What the worker does besides
(its start, the heartbeat and the reaper, the promotion of due retries, the reconciler's
turn, its stop) is mqlab.system.upkeep's; its calls through outages, mqlab.system.outages'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mqlab import db
from mqlab.backend_errors import BACKEND_DOWN
from mqlab.protocol import batch, dead, delayed, events, keys
from mqlab.protocol.events import EventKind, WorkerState
from mqlab.protocol.messages import (
    REASON_CHARS,
    InvalidMessage,
    dead_letter,
    one_line,
    parse_message,
)
from mqlab.protocol.messages import preview as message_preview
from mqlab.protocol.scans import runs
from mqlab.settings import Settings
from mqlab.system.faults import Fault, FaultKind, JobFailed
from mqlab.system.host import host_name
from mqlab.system.outages import Outages, Rejected, Stopped, forget
from mqlab.system.reconciler import ReconcileConfig, Reconciler
from mqlab.system.redis_clients import async_client
from mqlab.system.retry_policy import RetryPolicy
from mqlab.system.spec import BATCH_HORIZON, LONG_PREFIX, WorkerSpec
from mqlab.system.upkeep import STOP_STEP_SECONDS, IdInUse, Upkeep
from mqlab.system.work import do_work

log = logging.getLogger("mqlab.system.worker")

#: BLMOVE blocks at most this long, so that a stop request is seen within it when idle.
POP_TIMEOUT = 1.0
#: A job this short (seconds) is announced when it ends: its "started" beat and event go out
#: with its ack, in the same round trip as the "finished" ones, and it logs one line, not two.
#: Nobody could have watched it busy anyway (the lab refreshes about once a second).
SHORT_JOB = 0.05
#: How far each job's work time moves the worker's average of them (Worker._worked).
JOB_AVG_WEIGHT = 0.2
#: The exit status of a worker that crashes on purpose (--crash-rate): what a supervisor sees.
CRASH_EXIT = 70


#: A happening for the event stream: (type, fields).
Event = tuple[EventKind, dict[str, str | int | float]]


class JobLook(NamedTuple):
    """A job as db.JOB_STATUS shows it, when a claim matched nothing."""

    status: str
    owner: str | None  # the worker of its last claim
    attempts: int
    since_replay: int  # attempts since the last replay (what the retry policy counts)
    started: Any  # a datetime, or None
    instance: str | None  # the run of `owner` that made that claim
    order_id: int
    order_exists: bool


class Worker:
    """One consumer process. `run()` until stopped; `request_stop()` from a signal handler."""

    def __init__(self, settings: Settings, spec: WorkerSpec) -> None:
        self.settings = settings
        self.reliable = spec.fetch == "reliable"
        # Looked up once: they are in every beat, and a beat goes out with every job.
        self.pid, self.host = os.getpid(), host_name()
        self.id = spec.worker_id or f"{self.host}-{self.pid}"
        #: This run of the worker: in every beat, and in each claim it makes (see _not_claimed).
        self.instance = f"{self.pid}-{secrets.token_hex(6)}"
        self.job_seconds = spec.job_seconds
        self.work = spec.work
        self.policy = spec.policy or RetryPolicy()
        self.faults = spec.faults
        self.dice = self.faults.dice(self.id)
        # The backoff's jitter: seeded apart from the dice, so that the delays drawn do not
        # change which attempts fail.
        seed = self.faults.seed
        self.jitter = random.Random(f"{seed}:{self.id}:jitter") if seed is not None else None
        self.processing = keys.processing_key(self.id)
        self.jobs_done = 0
        self.jobs_failed = 0
        self.state = WorkerState.STARTING
        #: job -> time.time() it started, of the jobs in hand (one, a batch's, or one per
        #: --concurrency slot): the beat shows the newest and how many.
        self.in_hand: dict[str, float] = {}
        self.started = time.time()
        self.last_beat_sent = 0.0  # time.monotonic() of the last beat queued
        #: job -> attempt of the jobs claimed whose claim has not ended: what a stop hands
        #: back. One job, or the jobs of a batch.
        self.claims: dict[str, int] = {}
        self.spec = spec
        #: The jobs' work time, a moving average (seconds): a batch is what the worker starts
        #: within the horizon at it (see most), so that a long job shrinks the batches after it.
        self.job_avg = spec.job_seconds
        #: The live workers at the last heartbeat pass: a batch is a fair share of the queue.
        self.peers = 1
        self._stop = asyncio.Event()
        self._cold_stop = asyncio.Event()
        self.redis: aioredis.Redis = async_client(
            settings.redis_url,
            # Bytes, not str: a queue entry need not be UTF-8 (decoding it made BLMOVE itself
            # fail), and its ack, LREM, must name its exact bytes.
            decode_responses=False,
            socket_timeout=POP_TIMEOUT + 5,
            socket_connect_timeout=2,
            # No retries inside redis-py: self.outages does them, watching for stop requests and
            # knowing what a lost reply means (redis-py re-sends a whole pipeline, whose
            # BLMOVE may then move a second message unseen); redis-py's own 10, backing off
            # up to 1 s, also held each call for seconds while Redis was away.
            retry=Retry(NoBackoff(), 0),
        )
        # Prepared from the first use: a worker runs the same three statements all its life,
        # and planning them unprepared costs PostgreSQL CPU the API needs in a burst.
        # (Or never, behind a pooler that cannot keep them: db.prepare_threshold.)
        self.pg = db.LazyConnection(
            settings.database_url, connect_timeout=3, prepare_threshold=db.prepare_threshold()
        )
        self.outages = Outages(self.id, self.pg, self._stop_for_now)
        config = ReconcileConfig.from_env()
        self.reconciler = Reconciler(
            self.redis, settings.database_url, self.id, config.grace, config.interval
        )
        self.upkeep = Upkeep(self)

    def __repr__(self) -> str:
        return (
            f"<Worker {self.id} state={self.state} j_done={self.jobs_done} "
            f"j_failed={self.jobs_failed}>"
        )

    def request_stop(self) -> None:
        """First call: finish the current job, then exit. Second call: hand it back now."""
        if self._stop.is_set():
            log.warning("%s: second stop request: handing the current job back", self.id)
            self._cold_stop.set()
        else:
            log.info("%s: stopping after the current job (again to stop at once)", self.id)
            self.state = WorkerState.STOPPING
            self._stop.set()

    def _stop_for_now(self) -> asyncio.Event:
        """The stop request that ends a wait on a backend: the first one when no job is in
        hand (there is nothing to finish), the second one when a job is (it is finished first,
        which needs the backends)."""
        return self._cold_stop if self.claims else self._stop

    # -- beats and events ------------------------------------------------------------------

    def _beat_fields(self) -> dict[str, str | int | float]:
        return {
            "pid": self.pid,
            "host": self.host,
            "state": self.state,
            "job": next(reversed(self.in_hand), ""),
            "job_started": next(reversed(self.in_hand.values()), 0.0),
            "jobs_in_hand": len(self.in_hand),
            "jobs_done": self.jobs_done,
            "jobs_failed": self.jobs_failed,
            "started": self.started,
            "last_beat": time.time(),
            "job_seconds": self.job_seconds,
            keys.INSTANCE_FIELD: self.instance,
        }

    def _queue_beat(self, pipe: Any) -> None:
        self.last_beat_sent = time.monotonic()
        pipe.hset(keys.worker_key(self.id), mapping=self._beat_fields())
        pipe.expire(keys.worker_key(self.id), keys.HEARTBEAT_TTL)

    async def beat(self) -> None:
        """Write the liveness hash with its TTL."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self._queue_beat(pipe)
            await pipe.execute()

    async def _publish(
        self, kind: EventKind, ack: bytes | None = None, **fields: str | int | float
    ) -> None:
        """One round trip: the ack (if any), our new state, and the event for the lab."""
        move = None if ack is None else (lambda pipe: pipe.lrem(self.processing, 1, ack))
        await self._announce([(kind, fields)], move)

    async def _announce(
        self, happened: list[Event], move: Callable[[Any], object] | None = None
    ) -> None:
        """One round trip: `move` our message (queued on the pipeline: the ack, or its way to
        the delayed set or the dead letters), our new state, and the events for the lab.
        Retried through outages when it moves the message, which must happen; a beat or an
        event alone is let go when Redis is away."""

        async def op() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                if move is not None:
                    move(pipe)
                self._queue_beat(pipe)
                for kind, fields in happened:
                    events.queue(pipe, kind, worker=self.id, **fields)
                await pipe.execute()

        if move is not None:
            await self.outages.retry("Redis", op)
        else:
            with contextlib.suppress(*BACKEND_DOWN):
                await op()

    async def hand_back_own(self) -> int:
        """Move whatever sits in our own processing list back to the queue's front."""
        moved = 0
        while await self.redis.lmove(self.processing, keys.QUEUE, "RIGHT", "RIGHT") is not None:
            moved += 1
        return moved

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> int:
        """Consume until stopped. Returns the exit code: 0 on a requested stop, also when it
        came while a backend was away."""
        # One waiter for the whole run, not one per job: jobs can be thousands a second.
        cold = asyncio.create_task(self._cold_stop.wait())
        loops: list[asyncio.Task[None]] = []
        try:
            await self._start()
            loops = self.upkeep.loops()
            if self.spec.concurrency == 1:
                await self._consume(cold)
            else:
                await self._slots(cold)
        except Stopped:
            log.info("%s: stopping without waiting further for Redis or PostgreSQL", self.id)
        except IdInUse as exc:
            log.error("%s", exc)
            self.upkeep.owns_id = False
        finally:
            self.upkeep.consuming = False
            helpers = [cold, *loops]
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.upkeep.shutdown()
        log.info("%s: stopped after %d job(s)", self.id, self.jobs_done)
        return 0 if self.upkeep.owns_id else 1

    async def _start(self) -> None:
        """Say we are here (Upkeep.start), then what we are."""
        await self.upkeep.start()
        fetch = "" if self.reliable else "; fetch blpop: no processing list, no recovery"
        log.info("%s: ready (pid %d, job %.3gs %s; %s%s%s)", self.id, self.pid,
                 self.job_seconds, self.work, self.policy, self._faults_said(), fetch)  # fmt: skip

    def _faults_said(self) -> str:
        f = self.faults
        said = [f"fail-rate {f.fail_rate:g}"] if f.fail_rate else []
        said += [f"crash-rate {f.crash_rate:g}"] if f.crash_rate else []
        said += [f"poison /{f.poison}/"] if f.poison else []
        said += [f"crash on /{f.crash_on}/"] if f.crash_on else []
        said += [f"seed {f.seed}"] if f.seed is not None else []
        return "; " + ", ".join(said) if said else ""

    async def _consume(self, cold: asyncio.Task[Any]) -> None:
        taken: list[bytes] = []
        while not self._stop.is_set():
            if not taken:
                # _pop returns None at a stop; Outages.retry races the attempts that follow a
                # failure.
                raw = await self.outages.retry("Redis", self._pop)
                if raw is None:
                    continue
                taken = [raw]
            job = asyncio.create_task(
                self.handle(taken[0]) if len(taken) == 1 else self.handle_batch(taken)
            )
            await asyncio.wait({job, cold}, return_when=asyncio.FIRST_COMPLETED)
            if not job.done():
                # A second stop: leave the job where it is; Upkeep.shutdown hands it back. A query
                # cancelled mid-flight is cancelled in PostgreSQL too, which can take a while
                # when PostgreSQL is away: not waited for beyond a step.
                job.cancel()
                job.add_done_callback(forget)
                await asyncio.wait({job}, timeout=STOP_STEP_SECONDS)
                return
            # The next messages, when they came with this one's ack (see _finish).
            taken = job.result()

    async def _slots(self, cold: asyncio.Task[Any]) -> None:
        """--concurrency N: N job paths at once, each its own _consume (a BLMOVE of its own,
        its own jobs in hand), sharing the processing list, the claims and the beat. Stopped
        (from any of them) once all have ended; a slot that fails takes the others with it."""

        async def slot() -> bool:
            try:
                await self._consume(cold)
            except Stopped:
                return True
            return False

        slots = [asyncio.create_task(slot()) for _ in range(self.spec.concurrency)]
        try:
            stopped = await asyncio.gather(*slots)
        finally:
            for task in slots:
                task.cancel()
            await asyncio.gather(*slots, return_exceptions=True)
        if any(stopped):
            raise Stopped

    async def _pop(self) -> bytes | None:
        """The next message, or None when none came within POP_TIMEOUT or a stop came."""
        if not self.reliable:
            # The kata's BLPOP; our API LPUSHes, so the oldest message is at the other end.
            # Not raced against a stop: a BLPOP cut short may have popped a message whose
            # reply is lost, and the message with it. A stop is seen within POP_TIMEOUT.
            popped = await self.redis.brpop([keys.QUEUE], POP_TIMEOUT)
            return None if popped is None else popped[1]  # type: ignore[no-any-return]
        # Raced against a stop, so that an idle worker stops at once rather than when
        # POP_TIMEOUT runs out. A BLMOVE cut short closes its connection (redis-py's way with
        # a cancelled read); a message it did move is in our processing list, which
        # Upkeep.shutdown hands back to the queue (or, moved after that, the reaper does, as
        # for a worker killed).
        try:
            return await self.outages.unless_stopped(self._blmove)
        except Stopped:
            return None

    async def _blmove(self) -> bytes | None:
        raw: bytes | None = await self.redis.blmove(
            keys.QUEUE, self.processing, POP_TIMEOUT, "RIGHT", "LEFT"
        )
        return raw

    async def handle(self, raw: bytes, *, take: bool = True) -> list[bytes]:
        """One delivery: claim, work, record, ack; or dead-letter it, whatever its bytes.

        Returns the next messages when they were taken in the same round trip as the ack
        (take=False: none are).
        """
        try:
            job_id, order_id = parse_message(raw)
        except InvalidMessage as exc:
            await self._dead_letter(raw, str(exc))
            return []
        try:
            return await self._handle_job(raw, job_id, order_id, take)
        except Rejected as exc:
            # This message, or its row, is what PostgreSQL refuses (a value out of range, a
            # trigger's veto): it would be refused again on every delivery.
            self._end_job(job_id)
            await self._dead_letter(raw, str(exc))
            return []

    async def _handle_job(self, raw: bytes, job_id: str, order_id: int, take: bool) -> list[bytes]:
        claim = await self.outages.sql(
            db.CLAIM_JOB,
            {"worker": self.id, "instance": self.instance, "job": job_id, "order": order_id},
            "claim",
        )
        if claim is None:
            claim = await self._not_claimed(raw, job_id, order_id)
            if claim is None:
                return []
        _, _, attempt, since_replay, product = claim
        self.claims[job_id] = attempt
        fields = {"job": job_id, "order": order_id, "attempt": attempt, "at": self._begin(job_id)}
        started: Event = (EventKind.JOB_STARTED, fields)
        again = f" ({self.policy.attempt(attempt, since_replay)})" if attempt > 1 else ""
        short = self.job_seconds < SHORT_JOB
        if not short:
            await self._publish(started[0], **started[1])
            log.info("%s: started %s (order %d)%s", self.id, job_id, order_id, again)
        try:
            await self._work(product, job_id)
        except JobFailed as exc:
            await self._failed(
                raw, job_id, order_id, (attempt, since_replay), exc, [started] * short
            )
            return []
        done = await self.outages.sql(
            db.COMPLETE_JOB, {"job": job_id, "worker": self.id, "attempt": attempt}, "completion"
        )
        # The claim has ended in PostgreSQL (completed, or not ours any more): nothing is left
        # for a stop to hand back, so a first stop no longer waits on Redis for the ack. If
        # Redis is away, the message stays in our processing list, and the worker that gets
        # it after the reaper finds the job completed and drops it.
        self._end_job(job_id)
        if done is None:
            await self._not_completed(raw, job_id, order_id, attempt)
            return []
        self.jobs_done += 1
        took = float(done[1])
        # Logged before the ack: _finish may then wait up to POP_TIMEOUT for the next message.
        log.info("%s: completed %s (order %d) in %.3fs%s", self.id, job_id, order_id, took,
                 again if short else "")  # fmt: skip
        # The attempt, so that a re-sent announcement (its reply lost, a failover) is not
        # counted as a second completion.
        finished: Event = (
            EventKind.JOB_FINISHED, {"job": job_id, "order": order_id, "attempt": attempt}
        )  # fmt: skip
        happened = [started, finished] if short else [finished]
        return await self._finish([raw], job_id, happened, take)

    async def handle_batch(self, raws: list[bytes]) -> list[bytes]:
        """Several deliveries taken at once (a deep queue): claimed in one statement, worked
        one after another, completed in one statement and acked in one round trip, which
        takes the next batch. A message that is not a job, or whose job the batch's claim did
        not get (a second copy of a job in the batch, too), goes the single way (handle) after
        the others. A failed job's outcome is recorded on its own, as handle does. A worker
        killed in the middle leaves the batch in its processing list: each message is
        redelivered, and its guarded claim tells what is left to do."""
        parsed: list[tuple[bytes, str, int]] = []
        alone: list[bytes] = []
        for raw in raws:
            try:
                parsed.append((raw, *parse_message(raw)))
            except InvalidMessage:
                alone.append(raw)
        params = {"worker": self.id, "instance": self.instance,
                  "jobs": [p[1] for p in parsed], "orders": [p[2] for p in parsed]}  # fmt: skip
        try:
            rows = await self.outages.rows(db.CLAIM_JOBS, params, "claim") if parsed else []
        except Rejected:
            rows = []  # one of them is refused for its data: each on its own finds which
        claimed = {row[0]: row for row in rows}
        work: list[tuple[bytes, str, int, tuple[Any, ...]]] = []
        for raw, job_id, order_id in parsed:
            row = claimed.pop(job_id, None)
            if row is None:
                alone.append(raw)
            else:
                self.claims[job_id] = row[2]
                work.append((raw, job_id, order_id, row))
        done: list[tuple[bytes, str, int, int]] = []
        happened: list[Event] = []
        for index, (raw, job_id, order_id, row) in enumerate(work):
            _, _, attempt, since_replay, product = row
            at = self._begin(job_id)
            fields = {"job": job_id, "order": order_id, "attempt": attempt, "at": at}
            started: Event = (EventKind.JOB_STARTED, fields)
            rest = work[index + 1 :]
            try:
                await self._work_or_give_back(product, job_id, rest, done, happened)
            except JobFailed as exc:
                await self._failed(raw, job_id, order_id, (attempt, since_replay), exc, [started])
            else:
                done.append((raw, job_id, order_id, attempt))
                happened.append(started)
            if rest and rest[0][1] not in self.claims:
                break  # the rest was given back while this job worked
        acks = await self._complete_batch(done, happened)
        for raw in alone:
            await self.handle(raw, take=False)
        return await self._finish(acks, f"a batch of {len(acks)}", happened)

    async def _work_or_give_back(
        self,
        product: str,
        job_id: str,
        rest: list[tuple[bytes, str, int, tuple[Any, ...]]],
        done: list[tuple[bytes, str, int, int]],
        happened: list[Event],
    ) -> None:
        """The job's work. If it runs past BATCH_HORIZON, its batch does not wait on it (the
        prefetch trap: a batch is sized at the average job, and this one is long): the `rest`
        behind it goes back to the queue for another worker, and the jobs `done` before it
        are completed and acked now (then emptied, with their events in `happened`)."""
        working = asyncio.ensure_future(self._work(product, job_id))
        try:
            if rest or done:
                await asyncio.wait({working}, timeout=BATCH_HORIZON)
                if not working.done():
                    if rest:
                        await self._give_back(job_id, rest)
                    if done:
                        acks = await self._complete_batch(done, happened)
                        await self._finish(acks, f"a batch of {len(acks)}", happened, take=False)
                        done.clear()
                        happened.clear()
            await working
        finally:
            if not working.done():  # cancelled (a second stop): the work stops with us
                working.cancel()

    async def _give_back(
        self, long_job: str, rest: list[tuple[bytes, str, int, tuple[Any, ...]]]
    ) -> None:
        """Claims of jobs not started released in PostgreSQL (pending again, each claim
        recorded as handed back), then their messages moved from our processing list to the
        queue's head (the end workers take first), as a stop hands back a job."""
        log.info("%s: %s runs long: handing the %d job(s) behind it in its batch back to the "
                 "queue", self.id, long_job, len(rest))  # fmt: skip
        for _, job_id, _, row in rest:
            await self.outages.sql(
                db.RELEASE_JOB,
                {"job": job_id, "status": "processing", "worker": self.id, "attempt": row[2]},
                "release",
            )
            self.claims.pop(job_id, None)
        raws = [raw for raw, _, _, _ in rest]
        await self.outages.retry(
            "Redis", lambda: batch.give_back(self.redis, self.processing, raws)
        )

    async def _complete_batch(
        self, done: list[tuple[bytes, str, int, int]], happened: list[Event]
    ) -> list[bytes]:
        """The batch's worked jobs completed in one statement; returns the messages to ack
        (and adds their events to `happened`). One the completion did not take goes the way
        handle's does (_not_completed); one PostgreSQL refuses, as handle's, a dead letter."""
        params = {"worker": self.id, "jobs": [d[1] for d in done],
                  "attempts": [d[3] for d in done]}  # fmt: skip
        refused: str | None = None
        try:
            rows = await self.outages.rows(db.COMPLETE_JOBS, params, "completion") if done else []
        except Rejected as exc:
            rows, refused = [], str(exc)
        for _, job_id, _, _ in done:
            self._end_job(job_id)  # ended in PostgreSQL: see _handle_job
        took = {row[0]: float(row[1]) for row in rows}
        acks: list[bytes] = []
        for raw, job_id, order_id, attempt in done:
            if refused is not None:
                await self._dead_letter(raw, refused)
            elif job_id not in took:
                await self._not_completed(raw, job_id, order_id, attempt)
            else:
                self.jobs_done += 1
                log.info("%s: completed %s (order %d) in %.3fs", self.id, job_id, order_id,
                         took[job_id])  # fmt: skip
                acks.append(raw)
                finished = {"job": job_id, "order": order_id, "attempt": attempt}
                happened.append((EventKind.JOB_FINISHED, finished))
        return acks

    async def _work(self, product: str, job_id: str) -> None:
        """The job's work, with the faults this worker injects (mqlab.system.faults)."""
        if self.dice.poisoned(product):
            raise JobFailed(
                f"poison order: product {one_line(product, 60)!r} matches /{self.faults.poison}/",
                permanent=True,
            )
        seconds = self.job_seconds
        if self.spec.long_seconds and product.startswith(LONG_PREFIX):
            seconds = self.spec.long_seconds
        fault = self.dice.roll()
        if self.dice.crashes_on(product):
            fault = Fault(FaultKind.CRASH, fault.at if fault else 0.5)
        if fault is None:
            began = time.monotonic()
            await do_work(self.work, seconds)
            self._worked(time.monotonic() - began)
            return
        await do_work(self.work, seconds * fault.at)
        if fault.kind is FaultKind.CRASH:
            log.critical("%s: crashing on purpose at %.0f%% of %s (--crash-rate/--crash-on)",
                         self.id, fault.at * 100, job_id)  # fmt: skip
            logging.shutdown()  # flush the line above: os._exit skips it
            os._exit(CRASH_EXIT)
        raise JobFailed(
            f"injected transient failure at {fault.at:.0%} of the work (--fail-rate)",
            permanent=False,
        )

    async def _finish(
        self, acks: list[bytes], job_id: str, happened: list[Event], take: bool = True
    ) -> list[bytes]:
        """Acks, beat and events in one round trip, which also takes the next messages (queued
        behind them) unless a stop was asked for, or take=False: one round trip less per job.
        `job_id` names what is acked in a warning.

        Returns those next messages (none when the queue stayed empty).
        """
        take = take and not self._stop.is_set()
        try:
            return await self._finish_once(acks, happened, take)
        except BACKEND_DOWN as exc:
            log.warning("%s: ack of %s failed (%s); retrying", self.id, job_id, exc)
        # The reply was lost: the acks may or may not have happened, and messages may have
        # been moved into our processing list that we never saw. Ack again (LREM of a message
        # no longer there is a no-op), then hand back whatever else the list holds.
        await self.outages.retry(
            "Redis", lambda: self._finish_once(acks, happened, take=False), race=True
        )
        if take:
            await self.outages.retry("Redis", self.hand_back_own, race=True)
        return []

    async def _finish_once(
        self, acks: list[bytes], happened: list[Event], take: bool
    ) -> list[bytes]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for raw in acks:
                pipe.lrem(self.processing, 1, raw)
            self._queue_beat(pipe)
            for kind, fields in happened:
                events.queue(pipe, kind, worker=self.id, **fields)
            taking = take and self.most > 1  # read once: another slot may change it
            if take:
                if taking:
                    # Whatever waits, up to a batch; none: the next _pop waits for one.
                    batch.take(pipe, self.processing, self.most, self.peers)
                elif self.reliable:
                    pipe.blmove(keys.QUEUE, self.processing, POP_TIMEOUT, "RIGHT", "LEFT")
                else:
                    pipe.brpop([keys.QUEUE], POP_TIMEOUT)
            results = await pipe.execute()
        if not take:
            return []
        last = results[-1]
        if taking:
            return list(last)
        if self.reliable:
            return [] if last is None else [last]
        return [] if last is None else [last[1]]

    async def _ack(self, raw: bytes) -> None:
        await self.outages.retry("Redis", lambda: self.redis.lrem(self.processing, 1, raw))

    @property
    def most(self) -> int:
        """The most messages taken at once (1: one at a time, BLMOVE; see _finish_once)."""
        return self.spec.most_taken(self.job_avg)

    def _worked(self, seconds: float) -> None:
        """A job's work took `seconds`: the average moves a fifth of the way (one long job in
        a run of short ones takes the batches to 1, and they grow back over tens of jobs)."""
        self.job_avg += (seconds - self.job_avg) * JOB_AVG_WEIGHT

    def _begin(self, job_id: str) -> float:
        """A claimed job starts its work: in hand, and the worker busy. Returns when."""
        self.in_hand[job_id] = started = time.time()
        self.state = WorkerState.BUSY
        return started

    def _end_job(self, job_id: str) -> None:
        """The job's claim has ended in PostgreSQL: nothing of it is left for a stop to hand
        back, and the worker is idle unless it holds others."""
        self.claims.pop(job_id, None)
        self.in_hand.pop(job_id, None)
        if self._stop.is_set():
            self.state = WorkerState.STOPPING
        else:
            self.state = WorkerState.BUSY if self.in_hand else WorkerState.IDLE

    # -- when a delivery does not go as planned: a claim that matched nothing, a job that
    # failed, a completion PostgreSQL did not take, a message that cannot be worked.

    async def _not_claimed(self, raw: bytes, job_id: str, order_id: int) -> tuple[Any, ...] | None:
        """The claim matched nothing; a look at the job says why, and what to do.

        - No such job, a job of another order, or a job whose order row is gone: the message
          is dead-lettered at once with that reason (the job, if any, dead for it), and no
          attempt is counted.
        - Processing by a run of a worker that is alive (its heartbeat names that run): a
          duplicate delivery, dropped unworked. That worker finishes the job; should it die
          first, its own copy in its processing list comes back through the reaper (or, if
          Redis lost that copy, the reconciler queues the job again).
        - Processing by this very run: our claim, whose reply was lost; we go on with it.
        - Processing by a run that is gone (a crash, or this id's previous run): taken over
          (the claim returned), or dead when its attempts are spent.
        - Otherwise (completed, dead, claimed meanwhile): a duplicate delivery, dropped."""
        found = await self.outages.sql(db.JOB_STATUS, [job_id], "lookup")
        if found is None:
            await self._dead_letter(raw, await self._no_job(job_id, order_id))
            return None
        look = JobLook(*found)
        if look.order_id != order_id:
            # Not the job's message (its own names its order): the job is left alone.
            reason = f"job {job_id} is order {look.order_id}'s, not order {order_id}'s"
            await self._dead_letter(raw, reason)
            return None
        processing = look.status == "processing"
        mine = processing and look.instance == self.instance
        alive = processing and not mine and await self._runs(look.owner, look.instance)
        if not look.order_exists and look.status in db.CLAIMABLE and not alive:
            reason = (
                f"order {order_id} of job {job_id} does not exist in PostgreSQL (deleted while "
                f"the job was {look.status})"
            )
            bury = {"job": job_id, "status": look.status, "attempt": look.attempts,
                    "worker": look.owner}  # fmt: skip
            await self._bury(raw, job_id, order_id, reason, bury, [], db.BURY_ORPHAN)
            return None
        if mine:
            claim = await self.outages.sql(
                db.OWN_CLAIM, {"job": job_id, "instance": self.instance}, "claim"
            )
            if claim is not None:
                log.warning("%s: %s is already ours (attempt %d): the reply to our claim was "
                            "lost; going on with it", self.id, job_id, look.attempts)  # fmt: skip
                return claim
        elif processing and not alive:
            return await self._take_over(raw, job_id, order_id, look)
        if alive:
            log.info("%s: %s is being run by %s (alive, attempt %d): dropping this duplicate "
                     "delivery", self.id, job_id, look.owner, look.attempts)  # fmt: skip
        else:
            log.info("%s: %s is already %s (by %s, attempt %s): dropping this delivery",
                     self.id, job_id, look.status, look.owner, look.attempts)  # fmt: skip
        await self._ack(raw)
        return None

    async def _take_over(
        self, raw: bytes, job_id: str, order_id: int, look: JobLook
    ) -> tuple[Any, ...] | None:
        """A job whose claim a run that is gone never ended: ours (that claim `crashed`), or
        dead when its attempts are spent."""
        if self.policy.exhausted(look.since_replay):
            # Its last claim never ended: its worker died on it, as on every one before.
            reason = f"its worker died during each of its {look.since_replay} attempts"
            bury = {"job": job_id, "worker": look.owner, "attempt": look.attempts,
                    "outcome": "crashed"}  # fmt: skip
            await self._bury(raw, job_id, order_id, reason, bury, [])
            return None
        claim = await self.outages.sql(
            db.TAKE_OVER_JOB,
            {"worker": self.id, "instance": self.instance, "job": job_id,
             "was_worker": look.owner, "was_instance": look.instance,
             "was_attempt": look.attempts, "was_started": look.started},
            "claim",
        )  # fmt: skip
        if claim is not None:
            log.warning("%s: took over %s from %s (attempt %d never ended)", self.id,
                        job_id, look.owner, look.attempts)  # fmt: skip
            return claim
        log.info("%s: %s was claimed by another worker meanwhile: dropping this delivery",
                 self.id, job_id)  # fmt: skip
        await self._ack(raw)
        return None

    async def _runs(self, worker: str | None, instance: str | None) -> bool:
        """Is that run of that worker alive (its heartbeat names it)? Asked of Redis."""
        return await self.outages.retry("Redis", lambda: runs(self.redis, worker, instance))

    async def _no_job(self, job_id: str, order_id: int) -> str:
        """Why a message naming no job is dead: and whether the order it names exists."""
        found = await self.outages.sql(db.ORDER_EXISTS, [order_id], "lookup")
        order = "exists" if found is not None and found[0] else "does not exist either"
        return f"no job {job_id} in PostgreSQL (order {order_id} {order})"

    async def _failed(
        self,
        raw: bytes,
        job_id: str,
        order_id: int,
        claim: tuple[int, int],
        exc: JobFailed,
        happened: list[Event],
    ) -> None:
        """Record a failed attempt: retrying after a backoff, or dead (permanent, or no
        attempts left). PostgreSQL first, then Redis: a crash between the two leaves the
        message in our processing list, and the job is redelivered (early) when we are gone."""
        attempt, since_replay = claim
        error = one_line(str(exc), REASON_CHARS)
        self.jobs_failed += 1
        guard = {"job": job_id, "worker": self.id, "attempt": attempt}
        if exc.permanent or self.policy.exhausted(since_replay):
            reason = error if exc.permanent else (
                f"{error}; attempt {since_replay} of {self.policy.max_attempts}: no attempts left"
            )  # fmt: skip
            bury = {**guard, "outcome": "failed"}
            await self._bury(raw, job_id, order_id, reason, bury, happened)
            return
        delay = self.policy.delay(since_replay, self.jitter)
        row = await self.outages.sql(
            db.RETRY_JOB, {**guard, "error": error, "delay": delay}, "retry"
        )
        self._end_job(job_id)  # ended in PostgreSQL: see _handle_job
        if row is None:
            await self._not_completed(raw, job_id, order_id, attempt)
            return
        log.warning("%s: %s (order %d) failed on %s: %s; retrying in %.2fs", self.id,
                    job_id, order_id, self.policy.attempt(attempt, since_replay), error,
                    delay)  # fmt: skip
        failed: Event = (
            EventKind.JOB_FAILED,
            {"job": job_id, "order": order_id, "attempt": attempt, "error": error,
             "delay": round(delay, 3)},
        )  # fmt: skip

        await self._announce(
            [*happened, failed], lambda pipe: delayed.defer(pipe, self.processing, raw, delay)
        )

    async def _bury(
        self,
        raw: bytes,
        job_id: str,
        order_id: int,
        reason: str,
        bury: dict[str, str | int | None],
        happened: list[Event],
        statement: str = db.BURY_JOB,
    ) -> None:
        """The job dead in PostgreSQL (its order failed), then its message a dead letter.
        `statement`: BURY_JOB (its `bury` parameters), or BURY_ORPHAN (its order is gone)."""
        reason = one_line(reason, REASON_CHARS)
        row = await self.outages.sql(statement, {**bury, "error": reason}, "dead end")
        self._end_job(job_id)
        if row is None:  # someone else's claim came between: theirs owns the outcome
            log.warning("%s: %s changed hands before it could be marked dead; dropping this "
                        "delivery", self.id, job_id)  # fmt: skip
            await self._ack(raw)
            return
        log.error("%s: %s (order %d) is dead: %s", self.id, job_id, order_id, reason)
        entry = dead_letter(raw, reason, self.id, time.time(), job_id=job_id)
        died: Event = (
            EventKind.JOB_DEAD,
            {"job": job_id, "order": order_id, "attempt": int(bury["attempt"] or 0),
             "reason": reason},
        )  # fmt: skip

        await self._announce([*happened, died], lambda pipe: self._bury_message(pipe, raw, entry))

    async def _not_completed(self, raw: bytes, job_id: str, order_id: int, attempt: int) -> None:
        """Our completion matched no claim: our claim was lost, or the job was taken over."""
        found = await self.outages.sql(db.JOB_STATUS, [job_id], "lookup")
        if found is not None and (
            found[0] == "pending" or (found[0] == "processing" and found[2] < attempt)
        ):
            # The claim commits asynchronously: a PostgreSQL crash can lose it, leaving the
            # row as it was before it: pending, or the claim of an earlier delivery (fewer
            # attempts) whose worker is gone. Only our processing list holds the message: hand
            # it back, so that it is redelivered (and worked again) rather than lost, with the
            # job pending again first (guarded on the row as we just saw it).
            status, owner, attempts = found[:3]
            log.warning("%s: the claim of %s was lost (PostgreSQL restarted?); handing it back",
                        self.id, job_id)  # fmt: skip
            if status != "pending" or owner is not None:
                await self.outages.sql(
                    db.RELEASE_JOB,
                    {"job": job_id, "status": status, "worker": owner, "attempt": attempts},
                    "release",
                )
            # Only `raw` is there (the next message is taken with the ack): move it back. LMOVE,
            # unlike LREM + RPUSH, cannot queue it twice when a retry follows a lost reply.
            await self.outages.retry("Redis", self.hand_back_own)
            await self._publish(EventKind.JOB_REQUEUED, job=job_id, order=order_id)
            return
        if found is None:
            # Its row is gone: a reset (`mqlab reset`, the lab's X) deleted it while it ran.
            log.warning("%s: %s was deleted while it ran (a reset?); dropping it", self.id, job_id)
            await self._publish(EventKind.JOB_LOST, ack=raw, job=job_id, order=order_id)
            return
        # Presumed dead and taken over (or done by another): that delivery owns the outcome.
        log.warning("%s: %s was taken over by another worker; not completing it",
                    self.id, job_id)  # fmt: skip
        await self._publish(EventKind.JOB_LOST, ack=raw, job=job_id, order=order_id)

    async def _dead_letter(self, raw: bytes, reason: str) -> None:
        """Move a message that cannot be worked to `orders:dead`, with the reason (both cut
        to a size: see mqlab.protocol.messages), and say so in the log and the event stream."""
        reason = one_line(reason, REASON_CHARS)
        entry = dead_letter(raw, reason, self.id, time.time())

        await self.outages.retry("Redis", lambda: self._bury_message(self.redis, raw, entry))
        self.jobs_failed += 1
        log.error("%s: dead-lettered a message (%s): %s", self.id, reason,
                  message_preview(raw))  # fmt: skip
        await events.emit(self.redis, EventKind.JOB_DEAD, worker=self.id, reason=reason)

    def _bury_message(self, pipe: Any, raw: bytes, entry: bytes) -> Any:
        """The message onto the dead letters: out of our processing list, or (blpop: it is in
        no list any more) pushed as it is."""
        if self.reliable:
            return dead.bury(pipe, self.processing, raw, entry)
        return pipe.lpush(keys.DEAD, entry)


async def serve(settings: Settings, spec: WorkerSpec) -> int:
    """Run one worker with SIGTERM / SIGINT wired to its graceful stop."""
    worker = Worker(settings, spec)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    return await worker.run()
